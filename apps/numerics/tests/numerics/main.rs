//! The numerics service over gRPC, in-process on port 0.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is the test failure report"
)]
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one scenario, start to finish"
)]

mod api;
mod build_stamp;
mod otlp;
mod reload;
mod serving;
mod wire;
