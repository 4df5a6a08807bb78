//! `record_run`: writes one row per run to the worker's `job_runs` table,
//! so the crash tests can prove no job was lost and find duplicates.

use std::time::Duration;

use jobs::{Done, JobContext, JobError, Worker};
use serde::Deserialize;

use crate::WorkerStore;

/// Records its run, optionally after a pause (to be caught mid-run).
#[derive(Debug, Clone)]
pub struct RecordRun<S> {
    pub(crate) log: S,
    pub(crate) node_id: String,
}

/// How long to work before recording.
#[derive(Debug, Deserialize)]
pub struct RecordRunArgs {
    /// Milliseconds to sleep before recording (0 by default).
    #[serde(default)]
    pub sleep_ms: u64,
}

impl<S: WorkerStore> Worker for RecordRun<S> {
    type Args = RecordRunArgs;
    const KIND: &'static str = "record_run";

    async fn work(&self, ctx: JobContext, args: RecordRunArgs) -> Result<Done, JobError> {
        if args.sleep_ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.sleep_ms.min(60_000))).await;
        }
        self.log
            .record_run(ctx.id, ctx.attempt, &self.node_id)
            .await
            .map_err(|e| JobError::Retry(format!("recording the run failed: {e}")))?;
        Ok(Done::Completed)
    }
}
