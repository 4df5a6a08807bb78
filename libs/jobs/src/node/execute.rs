//! Executing one job: its handler under timeout, cancellation and panic
//! catching, and the outcome it ends with.

use std::{
    panic::AssertUnwindSafe,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use chrono::Utc;
use futures_util::FutureExt as _;
use opentelemetry::KeyValue;
use tokio_util::sync::CancellationToken;

use super::{Shared, lock};
use crate::{
    Job,
    store::{Completion, JobStore, Outcome},
    worker::{Done, JobContext, JobError},
};

/// Runs one claimed job and hands its end to the recorder.
pub(super) async fn execute<S: JobStore>(
    shared: Arc<Shared<S>>,
    job: Job,
    cancel: CancellationToken,
) {
    let started = Instant::now();
    let queue_attr = KeyValue::new("queue", job.queue.clone());
    if let Some(claimed) = job.attempted_at {
        let waited = (Utc::now() - claimed).to_std().unwrap_or_default();
        shared
            .metrics
            .claim_to_start
            .record(waited.as_secs_f64(), std::slice::from_ref(&queue_attr));
    }
    let outcome = match shared.registry.get(&job.kind) {
        // A kind this node does not know may be known to a newer node
        // (rolling deploy): retry rather than discard.
        None => failure(
            &job,
            format!("no worker for kind {:?} on this node", job.kind),
            None,
        ),
        Some(worker) => {
            let ctx = JobContext {
                id: job.id,
                attempt: job.attempt,
                max_attempts: job.max_attempts,
                queue: job.queue.clone(),
                inserted_at: job.inserted_at,
                cancel: cancel.clone(),
            };
            let timeout = worker.timeout();
            let backoff = worker.clone();
            let work = AssertUnwindSafe(worker.run(ctx, job.args.clone())).catch_unwind();
            let result = tokio::select! {
                // A handler that returns because it saw the cancellation
                // still counts as cancelled.
                biased;
                () = cancel.cancelled() => None,
                result = async {
                    match timeout {
                        Some(limit) => tokio::time::timeout(limit, work).await.map_err(|_| limit),
                        None => Ok(work.await),
                    }
                } => Some(result),
            };
            match result {
                None => Outcome::Cancelled {
                    reason: "cancelled on request".into(),
                },
                Some(Err(limit)) => {
                    failure(&job, format!("timed out after {limit:?}"), Some(&*backoff))
                }
                Some(Ok(Err(panic))) => failure(
                    &job,
                    format!("panicked: {}", panic_message(&panic)),
                    Some(&*backoff),
                ),
                Some(Ok(Ok(Ok(Done::Completed)))) => Outcome::Completed,
                Some(Ok(Ok(Ok(Done::Snooze(delay))))) => Outcome::Snooze {
                    until: Utc::now() + chrono_delay(delay),
                },
                Some(Ok(Ok(Ok(Done::Cancel(reason))))) => Outcome::Cancelled { reason },
                Some(Ok(Ok(Err(JobError::Discard(error))))) => Outcome::Discard { error },
                Some(Ok(Ok(Err(JobError::Retry(error))))) => failure(&job, error, Some(&*backoff)),
            }
        }
    };
    let label = match &outcome {
        Outcome::Completed => "completed",
        Outcome::Retry { .. } => "retry",
        Outcome::Discard { .. } => "discard",
        Outcome::Snooze { .. } => "snooze",
        Outcome::Cancelled { .. } => "cancelled",
        Outcome::Released => "released",
    };
    tracing::Span::current().record("job.outcome", label);
    if let Outcome::Retry { error, .. } | Outcome::Discard { error } = &outcome {
        tracing::warn!(%error, "attempt failed");
    }
    let kind_attr = KeyValue::new("kind", job.kind.clone());
    shared.metrics.run_time.record(
        started.elapsed().as_secs_f64(),
        &[queue_attr.clone(), kind_attr.clone()],
    );
    shared
        .metrics
        .attempts
        .add(1, &[queue_attr, kind_attr, KeyValue::new("outcome", label)]);
    // Recorded before the slot is freed, so shutdown sees it as done.
    let _ = shared
        .completions
        .send(Completion {
            id: job.id,
            attempt: job.attempt,
            outcome,
        })
        .await;
    let index = lock(&shared.running).remove(&job.id).map(|r| r.queue);
    if let Some(index) = index {
        let queue = &shared.per_queue[index];
        queue.running.fetch_sub(1, Ordering::AcqRel);
        queue.wake.notify_one();
    }
}

fn chrono_delay(delay: Duration) -> chrono::Duration {
    chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX)
}

/// A failed attempt: retried after backoff while attempts remain.
fn failure(job: &Job, error: String, worker: Option<&dyn crate::worker::ErasedWorker>) -> Outcome {
    if job.attempt >= job.max_attempts {
        return Outcome::Discard {
            error: format!("{error} (attempt {} of {})", job.attempt, job.max_attempts),
        };
    }
    let delay = worker.map_or_else(
        || crate::backoff::default_backoff(job.attempt),
        |w| w.backoff(job.attempt),
    );
    Outcome::Retry {
        at: Utc::now() + chrono_delay(delay),
        error,
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
