//! The shared runtime, started in-process on port 0: admin endpoints,
//! gRPC health and info, and the shutdown sequence.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is the test failure report"
)]
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one scenario, start to finish"
)]

mod admin;
mod shutdown;
