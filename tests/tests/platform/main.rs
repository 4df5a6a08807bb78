//! Cross-app tests: the apps started in-process on port 0, talking to each
//! other over real gRPC on loopback.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is the test failure report"
)]
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one scenario, start to finish"
)]

mod backup;
mod console_browser;
mod console_dead_letters;
mod console_insight;
mod console_jobs;
mod database_roles;
mod features;
mod gateway_api;
mod gateway_stream;
mod gateway_webhooks;
mod policy;
mod readings;
mod startup;
mod status;
mod support;
mod tenant_lifecycle;
mod trace;
