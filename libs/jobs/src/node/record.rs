//! Recording attempt ends in batches.

use std::sync::Arc;

use tokio::{sync::mpsc, task::JoinSet};
use tracing::Instrument as _;

use super::{RECORD_RETRY, Shared};
use crate::store::{Completion, JobStore};

/// Most batches being written at once. A completion commits synchronously
/// (it waits for its WAL flush); with one write at a time the node waited
/// for every flush in turn and left the machine a third idle in a no-op
/// burn-down (54k jobs/s at the default limits; 62k with two writes, 62k
/// with three, 57k with six, whose smaller batches cost more CPU per job).
/// Writes of different jobs never touch the same row, so they may overlap,
/// and PostgreSQL flushes overlapping commits together.
pub(super) const WRITES_IN_FLIGHT: usize = 2;

/// Records attempt ends in batches: one statement for up to
/// `completion_batch` ends, up to [`WRITES_IN_FLIGHT`] statements at once.
/// A failed write is retried with the same batch until it succeeds; ends
/// are never dropped while the process lives. Returns how many were
/// recorded, once the channel is closed and every write is done.
pub(super) async fn record_completions<S: JobStore>(
    shared: Arc<Shared<S>>,
    mut rx: mpsc::Receiver<Completion>,
) -> u64 {
    let store = shared.store.clone();
    let batch_size = shared.config.completion_batch.max(1);
    let linger = shared.config.completion_linger;
    drop(shared);
    let mut recorded = 0u64;
    let mut writes: JoinSet<u64> = JoinSet::new();
    loop {
        // A write slot first, then the batch: what arrived while both
        // writes were on their way joins this one, so batches grow with
        // the load instead of being fixed while they wait for a slot.
        while writes.len() >= WRITES_IN_FLIGHT {
            recorded += joined(writes.join_next().await);
        }
        let Some(first) = rx.recv().await else { break };
        let mut batch = Vec::with_capacity(batch_size);
        batch.push(first);
        let deadline = tokio::time::Instant::now() + linger;
        while batch.len() < batch_size {
            match rx.try_recv() {
                Ok(completion) => batch.push(completion),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(completion)) => batch.push(completion),
                        Ok(None) | Err(_) => break,
                    }
                }
            }
        }
        writes.spawn(write_batch(store.clone(), batch).in_current_span());
        while let Some(done) = writes.try_join_next() {
            recorded += joined(Some(done));
        }
    }
    while let Some(done) = writes.join_next().await {
        recorded += joined(Some(done));
    }
    recorded
}

/// Writes one batch, retrying until it succeeds; returns its size.
async fn write_batch<S: JobStore>(store: S, batch: Vec<Completion>) -> u64 {
    let mut failures = 0u32;
    loop {
        match store.complete_many(&batch).await {
            Ok(_) => return batch.len() as u64,
            Err(error) => {
                failures += 1;
                tracing::warn!(%error, jobs = batch.len(), "recording job results failed; retrying");
                tokio::time::sleep(RECORD_RETRY.delay(failures)).await;
            }
        }
    }
}

/// The size of a finished write (0 if its task panicked, which the write
/// itself cannot do).
fn joined(done: Option<Result<u64, tokio::task::JoinError>>) -> u64 {
    done.and_then(Result::ok).unwrap_or(0)
}
