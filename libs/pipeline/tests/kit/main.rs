//! The stage kit's behaviour, driven through the testing helpers.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is the test failure report"
)]
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one scenario, start to finish"
)]

mod behaviour;
mod properties;
