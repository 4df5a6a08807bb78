//! Claiming: one producer per queue claims jobs whenever there is room and
//! reason to, and spawns each claimed job's execution.

use std::sync::{Arc, atomic::Ordering};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::{CLAIM_RETRY, Running, Shared, execute::execute, lock};
use crate::{Job, store::JobStore};

/// Claims jobs for one queue whenever there is room and reason to.
pub(super) async fn produce<S: JobStore>(
    shared: Arc<Shared<S>>,
    index: usize,
    stop: CancellationToken,
    executions: Arc<tokio::sync::Mutex<JoinSet<()>>>,
) {
    let queue = &shared.per_queue[index];
    let limit = queue.config.local_limit;
    let mut failures = 0u32;
    loop {
        if stop.is_cancelled() {
            return;
        }
        let free = limit.saturating_sub(queue.running.load(Ordering::Acquire));
        let mut saturated = false;
        if free > 0 {
            match shared
                .store
                .claim(
                    &queue.config.name,
                    free,
                    &shared.config.node_id,
                    queue.config.global_limit,
                )
                .await
            {
                Ok(jobs) => {
                    failures = 0;
                    saturated = jobs.len() as u32 == free;
                    if !jobs.is_empty() {
                        let mut set = executions.lock().await;
                        for job in jobs {
                            start(&shared, index, job, &mut set);
                        }
                        // Reap finished executions so the set stays small.
                        while set.try_join_next().is_some() {}
                    }
                }
                Err(error) => {
                    failures += 1;
                    tracing::warn!(queue = %queue.config.name, %error, "claim failed");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(CLAIM_RETRY.delay(failures)) => continue,
                    }
                }
            }
        }
        // More may be waiting when the claim filled every free slot: claim
        // again once half the slots are free (batched claims), else wait for
        // an insert, a freed slot or the poll interval.
        let poll = tokio::time::sleep(shared.config.poll_interval);
        tokio::pin!(poll);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = &mut poll => break,
                () = queue.wake.notified() => {
                    let running = queue.running.load(Ordering::Acquire);
                    if !saturated || running <= limit / 2 {
                        break;
                    }
                }
            }
        }
    }
}

/// Spawns the execution of one claimed job.
fn start<S: JobStore>(shared: &Arc<Shared<S>>, index: usize, job: Job, set: &mut JoinSet<()>) {
    let cancel = CancellationToken::new();
    shared.per_queue[index]
        .running
        .fetch_add(1, Ordering::AcqRel);
    lock(&shared.running).insert(
        job.id,
        Running {
            attempt: job.attempt,
            cancel: cancel.clone(),
            queue: index,
        },
    );
    let span = tracing::info_span!(
        "job",
        otel.name = %format!("job {}", job.kind),
        job.id = job.id,
        job.kind = %job.kind,
        job.queue = %job.queue,
        job.attempt = job.attempt,
        job.outcome = tracing::field::Empty,
    );
    crate::trace::continue_trace(&span, &job.meta);
    let shared = shared.clone();
    set.spawn(async move { execute(shared, job, cancel).await }.instrument(span));
}
