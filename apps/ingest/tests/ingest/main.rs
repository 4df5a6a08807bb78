//! The ingest app's storage on PostgreSQL (one database per test, when
//! `DATABASE_URL` is set; CI sets it).

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
mod corrupt;
mod migrate;
mod nats;
mod overload;
mod publish;
mod sink;
mod support;
