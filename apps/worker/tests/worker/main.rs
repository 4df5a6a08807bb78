//! The worker app started in-process: its gRPC API, its job types, and the
//! binary's commands. Runs on SQLite always and on PostgreSQL when
//! `DATABASE_URL` is set (CI sets it).

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
mod crash;
mod endpoints;
mod scale_out;
mod storage;
mod support;
mod webhooks;
