//! The engine against straightforward reference implementations.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is the test failure report"
)]
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one scenario, start to finish"
)]

mod linalg;
mod model;
mod properties;
mod stats;
