//! The engine's behaviour, run against PostgreSQL (one database per test,
//! when `DATABASE_URL` is set) and SQLite (one file per test, always).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is the test failure report"
)]
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one scenario, start to finish"
)]

mod support;

mod claim_ahead;
mod connect;
mod console;
mod cron_properties;
mod insert;
mod lifecycle;
mod maintenance;
mod node;
mod properties;
mod unique;
