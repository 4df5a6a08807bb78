//! Keeping the node in the cluster and the tables tidy: heartbeats, store
//! signals turned into wake-ups and cancellations, the cancellation poll,
//! and (while this node holds the lease) rescue, queue depth and prune.

use std::{collections::HashMap, sync::Arc};

use opentelemetry::KeyValue;
use tokio_util::sync::CancellationToken;

use super::{MAINTENANCE_LEASE, Shared, lock};
use crate::store::{JobStore, Signal};

/// Keeps this node's heartbeat fresh (three times per lease).
pub(super) async fn heartbeat<S: JobStore>(shared: Arc<Shared<S>>, stop: CancellationToken) {
    let every = shared.config.lease / 3;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        if let Err(error) = shared.store.heartbeat(&shared.config.node_id).await {
            tracing::warn!(%error, "heartbeat failed");
        }
    }
}

/// Turns store signals into queue wake-ups and handler cancellations.
pub(super) async fn route_signals<S: JobStore>(shared: Arc<Shared<S>>, stop: CancellationToken) {
    let mut signals = shared.store.signals();
    loop {
        let signal = tokio::select! {
            () = stop.cancelled() => return,
            signal = signals.recv() => signal,
        };
        match signal {
            Ok(Signal::Inserted(queue) | Signal::QueueChanged(queue)) => {
                for state in shared.per_queue.iter().filter(|q| q.config.name == queue) {
                    state.wake.notify_one();
                }
            }
            Ok(Signal::CancelRequested(id)) => {
                if let Some(running) = lock(&shared.running).get(&id) {
                    running.cancel.cancel();
                }
            }
            // Missed signals: wake every queue, polling catches the rest.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                for state in &shared.per_queue {
                    state.wake.notify_one();
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// The polling fallback for cancellation notifications that were lost.
pub(super) async fn poll_cancellations<S: JobStore>(
    shared: Arc<Shared<S>>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(shared.config.poll_interval) => {}
        }
        let ids: Vec<i64> = lock(&shared.running).keys().copied().collect();
        match shared.store.cancel_requested(&ids).await {
            Ok(cancelled) => {
                let running = lock(&shared.running);
                for id in cancelled {
                    if let Some(job) = running.get(&id) {
                        job.cancel.cancel();
                    }
                }
            }
            Err(error) => tracing::debug!(%error, "cancellation poll failed"),
        }
    }
}

/// While this node holds the maintenance lease: rescue orphans and prune.
pub(super) async fn maintain<S: JobStore>(shared: Arc<Shared<S>>, stop: CancellationToken) {
    let node = shared.config.node_id.clone();
    let every = shared.config.maintenance_interval;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        match shared
            .store
            .try_lead(MAINTENANCE_LEASE, &node, every * 3)
            .await
        {
            Ok(true) => {}
            Ok(false) => continue,
            Err(error) => {
                tracing::debug!(%error, "leader election failed");
                continue;
            }
        }
        match shared.store.rescue(shared.config.lease).await {
            Ok(rescued) if !rescued.is_empty() => {
                let ids: Vec<i64> = rescued.iter().map(|r| r.id).collect();
                tracing::warn!(
                    count = ids.len(),
                    ?ids,
                    "rescued jobs of nodes that stopped heartbeating"
                );
                let mut per_queue: HashMap<&str, u64> = HashMap::new();
                for job in &rescued {
                    *per_queue.entry(job.queue.as_str()).or_default() += 1;
                }
                for (queue, count) in per_queue {
                    shared
                        .metrics
                        .rescued
                        .add(count, &[KeyValue::new("queue", queue.to_owned())]);
                }
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "rescue failed"),
        }
        match shared.store.queue_counts().await {
            Ok(counts) => *lock(&shared.metrics.depth) = counts,
            Err(error) => tracing::debug!(%error, "queue depth refresh failed"),
        }
        match shared
            .store
            .prune(shared.config.prune_age, shared.config.prune_batch)
            .await
        {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "pruned finished jobs"),
            Err(error) => tracing::warn!(%error, "prune failed"),
        }
    }
}
