//! `readings.prune`: deletes readings past the retention age through
//! ingest's API, in bounded batches, until none are left. A cron entry
//! enqueues it (once per tick across every worker node).

use std::time::Duration;

use chrono::Utc;
use contracts::ingest::v1::{self as pb, ingest_service_client::IngestServiceClient};
use jobs::{Done, JobContext, JobError, Worker};
use serde::{Deserialize, Serialize};
use service_runtime::TracedChannel;

/// The kind the cron entry enqueues.
pub const KIND: &str = "readings.prune";

/// Rows per prune statement: short transactions, steady progress.
const BATCH: u32 = 10_000;

/// How old readings may get.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneArgs {
    /// Readings observed longer ago than this many seconds are deleted.
    pub retention_seconds: u64,
}

/// Prunes readings.
pub struct PruneReadings {
    pub(crate) ingest: IngestServiceClient<TracedChannel>,
}

impl Worker for PruneReadings {
    type Args = PruneArgs;
    const KIND: &'static str = KIND;

    fn timeout(&self) -> Option<Duration> {
        Some(Duration::from_secs(600))
    }

    async fn work(&self, ctx: JobContext, args: PruneArgs) -> Result<Done, JobError> {
        let retention = chrono::Duration::seconds(
            i64::try_from(args.retention_seconds).unwrap_or(i64::MAX / 2),
        );
        let cutoff = Utc::now() - retention;
        let mut deleted = 0u64;
        loop {
            if ctx.cancel.is_cancelled() {
                // What is deleted stays deleted; the next tick continues.
                break;
            }
            let page = self
                .ingest
                .clone()
                .prune_readings(pb::PruneReadingsRequest {
                    older_than: Some(prost_types::Timestamp {
                        seconds: cutoff.timestamp(),
                        nanos: 0,
                    }),
                    batch_size: BATCH,
                    ..Default::default()
                })
                .await
                .map_err(|status| {
                    JobError::Retry(format!(
                        "pruning: {} ({:?})",
                        status.message(),
                        status.code()
                    ))
                })?
                .into_inner();
            deleted += page.deleted;
            if page.deleted < u64::from(BATCH) {
                break;
            }
        }
        tracing::info!(deleted, cutoff = %cutoff, "readings pruned");
        Ok(Done::Completed)
    }
}
