//! The stage kit's behaviour, driven through the testing helpers.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is the test failure report"
)]

mod behaviour;
mod properties;
