//! `noop`: does nothing; the benchmark measures the engine with it.

use jobs::{Done, JobContext, JobError, Worker};
use serde::Deserialize;

/// Completes at once.
#[derive(Debug, Clone, Copy)]
pub struct Noop;

/// Any object; the fields are ignored.
#[derive(Debug, Deserialize)]
pub struct NoopArgs {}

impl Worker for Noop {
    type Args = NoopArgs;
    const KIND: &'static str = "noop";

    async fn work(&self, _ctx: JobContext, _args: NoopArgs) -> Result<Done, JobError> {
        Ok(Done::Completed)
    }
}
