//! The numerics service over gRPC, in-process on port 0.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is the test failure report"
)]

mod api;
mod reload;
mod serving;
mod wire;
