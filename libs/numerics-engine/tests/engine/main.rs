//! The engine against straightforward reference implementations.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is the test failure report"
)]

mod linalg;
mod model;
mod properties;
mod stats;
