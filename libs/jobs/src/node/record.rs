//! Recording attempt ends in batches.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::{RECORD_RETRY, Shared};
use crate::store::{Completion, JobStore};

/// Records attempt ends in batches: one statement for up to
/// `completion_batch` ends. A failed write is retried with the same batch
/// until it succeeds; ends are never dropped while the process lives.
pub(super) async fn record_completions<S: JobStore>(
    shared: Arc<Shared<S>>,
    mut rx: mpsc::Receiver<Completion>,
) -> u64 {
    let store = shared.store.clone();
    let batch_size = shared.config.completion_batch.max(1);
    let linger = shared.config.completion_linger;
    drop(shared);
    let mut recorded = 0u64;
    let mut batch = Vec::with_capacity(batch_size);
    while let Some(first) = rx.recv().await {
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
        let mut failures = 0u32;
        loop {
            match store.complete_many(&batch).await {
                Ok(_) => {
                    recorded += batch.len() as u64;
                    break;
                }
                Err(error) => {
                    failures += 1;
                    tracing::warn!(%error, jobs = batch.len(), "recording job results failed; retrying");
                    tokio::time::sleep(RECORD_RETRY.delay(failures)).await;
                }
            }
        }
        batch.clear();
    }
    recorded
}
