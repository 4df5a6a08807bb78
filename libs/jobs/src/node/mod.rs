//! A node: claims jobs from its queues, runs them, records how each attempt
//! ended in batches, heartbeats, and (while it holds the lease) rescues
//! orphans and prunes finished jobs. Many nodes may share one database.
//!
//! [`Node::run`] starts the node's tasks, each owned by the node and named
//! in a `jobs.node` span, and at shutdown stops them in order:
//!
//! - [`claim`]: one producer per queue claims jobs (a short run ahead of
//!   its free slots when it starts jobs fast) and spawns them;
//! - [`execute`]: one claimed job under timeout, cancellation and panic
//!   catching;
//! - [`record`]: attempt ends written in batches;
//! - [`maintain`]: heartbeat, store signals, the cancellation poll, and the
//!   leader's rescue, queue depth and prune;
//! - [`cron`]: the leader's periodic jobs;
//! - [`config`] and [`metrics`]: what the node is told and what it reports.

mod claim;
mod config;
mod cron;
mod execute;
mod maintain;
mod metrics;
mod record;

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex, atomic::AtomicU32},
    time::{Duration, Instant},
};

use tokio::{
    sync::{Notify, mpsc},
    task::{JoinHandle, JoinSet},
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

pub use config::{NodeConfig, QueueConfig, new_node_id};

use crate::{
    JobsError,
    store::{Completion, JobStore, Outcome},
    worker::Registry,
};

/// Waits between claims after the store failed: 200 ms doubling to 6.4 s.
const CLAIM_RETRY: crate::Backoff =
    crate::Backoff::exponential(Duration::from_millis(200), Duration::from_millis(6_400));
/// Waits between attempts to record finished jobs: 100 ms doubling to 6.4 s.
const RECORD_RETRY: crate::Backoff =
    crate::Backoff::exponential(Duration::from_millis(100), Duration::from_millis(6_400));

/// What a node did before it stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeReport {
    /// Attempts that ended and were recorded.
    pub recorded: u64,
    /// Jobs released back to available at shutdown: claimed but not yet
    /// started, or still running when the grace period ended.
    pub released: u64,
}

/// Lease names for the periodic duties.
const MAINTENANCE_LEASE: &str = "maintenance";
const CRON_LEASE: &str = "cron";
/// A cron tick missed by less than this (a leader change, a restart) is
/// still enqueued; older ones are skipped.
const CRON_LOOKBACK: Duration = Duration::from_secs(60);

/// A job running on this node.
struct Running {
    attempt: i32,
    cancel: CancellationToken,
    queue: usize,
}

/// State shared by a node's tasks.
struct Shared<S> {
    store: S,
    registry: Registry,
    config: NodeConfig,
    running: Mutex<HashMap<i64, Running>>,
    per_queue: Vec<QueueState>,
    completions: mpsc::Sender<Completion>,
    metrics: metrics::Metrics,
}

/// One queue's live state on this node.
struct QueueState {
    config: QueueConfig,
    running: AtomicU32,
    wake: Notify,
}

/// A node over a store and a registry of job types.
pub struct Node<S: JobStore> {
    store: S,
    registry: Registry,
    config: NodeConfig,
}

impl<S: JobStore> Node<S> {
    /// A node that will run `config.queues` with the job types in `registry`.
    pub fn new(store: S, registry: Registry, config: NodeConfig) -> Self {
        Self {
            store,
            registry,
            config,
        }
    }

    /// Runs until `stop` is cancelled, then shuts down: stops claiming,
    /// lets executing jobs finish within the grace period, releases the
    /// rest back to available, records every end, leaves the cluster.
    pub async fn run(self, stop: CancellationToken) -> Result<NodeReport, JobsError> {
        let node_id = self.config.node_id.clone();
        self.store.heartbeat(&node_id).await?;
        let (shared, completions) = self.into_shared();
        let tasks = Tasks::spawn(&shared, completions, &stop);
        stop.cancelled().await;
        tracing::info!(node = %node_id, "stopping: no new claims, draining executing jobs");
        tasks.shut_down(shared, &node_id).await
    }

    /// The state the node's tasks share, and the receiving end of the
    /// completions channel: room for two rounds of every queue's slots, and
    /// at least for one whole completion batch. Why the batch: ends pile up
    /// there while the writes are on their way and form the next batch;
    /// with room for 128 (the default limits) a no-op burn-down recorded
    /// about 55 ends per statement and ran a transaction per 100 jobs,
    /// twice graphile-worker's count.
    fn into_shared(self) -> (Arc<Shared<S>>, mpsc::Receiver<Completion>) {
        let slots = self
            .config
            .queues
            .iter()
            .map(|q| q.local_limit as usize)
            .sum::<usize>();
        let capacity = (slots.max(64) * 2).max(self.config.completion_batch);
        let (completions, receiver) = mpsc::channel(capacity);
        let shared = Arc::new(Shared {
            per_queue: self
                .config
                .queues
                .iter()
                .map(|q| QueueState {
                    config: q.clone(),
                    running: AtomicU32::new(0),
                    wake: Notify::new(),
                })
                .collect(),
            store: self.store,
            registry: self.registry,
            config: self.config,
            running: Mutex::new(HashMap::new()),
            completions,
            metrics: metrics::Metrics::new(),
        });
        // Every queue's rescue count exists from the start (at 0), so a
        // rate over it, and the alert on it, have a series to read before
        // the first rescue.
        for queue in &shared.per_queue {
            shared.metrics.rescued.add(
                0,
                &[opentelemetry::KeyValue::new(
                    "queue",
                    queue.config.name.clone(),
                )],
            );
        }
        (shared, receiver)
    }
}

/// The node's tasks, owned here and stopped in order at shutdown.
struct Tasks {
    /// Stops the producers (a child of the node's stop token).
    claiming: CancellationToken,
    /// Stops the background services, after the executions are done.
    background: CancellationToken,
    services: JoinSet<()>,
    /// Each returns how many held jobs it handed back.
    producers: JoinSet<u64>,
    executions: Arc<tokio::sync::Mutex<JoinSet<()>>>,
    recorder: JoinHandle<u64>,
}

/// `future` instrumented with a `jobs.node` span naming the task.
fn named<F: Future>(
    task: &'static str,
    node: &str,
    future: F,
) -> tracing::instrument::Instrumented<F> {
    future.instrument(tracing::info_span!("jobs.node", task, node = %node))
}

impl Tasks {
    /// Starts the background services, the recorder and one producer per
    /// queue.
    fn spawn<S: JobStore>(
        shared: &Arc<Shared<S>>,
        completions: mpsc::Receiver<Completion>,
        stop: &CancellationToken,
    ) -> Self {
        let node = shared.config.node_id.as_str();
        let claiming = stop.child_token();
        let background = CancellationToken::new();
        let mut services = JoinSet::new();
        let store = shared.store.clone();
        let listen_stop = background.clone();
        services.spawn(named("listen", node, async move {
            store.listen(listen_stop).await;
        }));
        services.spawn(named(
            "heartbeat",
            node,
            maintain::heartbeat(shared.clone(), background.clone()),
        ));
        services.spawn(named(
            "signals",
            node,
            maintain::route_signals(shared.clone(), background.clone()),
        ));
        services.spawn(named(
            "maintenance",
            node,
            maintain::maintain(shared.clone(), background.clone()),
        ));
        services.spawn(named(
            "cron",
            node,
            cron::schedule_cron(shared.clone(), background.clone()),
        ));
        services.spawn(named(
            "cancellation poll",
            node,
            maintain::poll_cancellations(shared.clone(), background.clone()),
        ));
        let recorder = tokio::spawn(named(
            "recorder",
            node,
            record::record_completions(shared.clone(), completions),
        ));
        let executions = Arc::new(tokio::sync::Mutex::new(JoinSet::new()));
        let mut producers = JoinSet::new();
        for index in 0..shared.per_queue.len() {
            producers.spawn(named(
                "claim",
                node,
                claim::produce(shared.clone(), index, claiming.clone(), executions.clone()),
            ));
        }
        Self {
            claiming,
            background,
            services,
            producers,
            executions,
            recorder,
        }
    }

    /// Stops claiming, drains executions within the grace period and
    /// releases the rest, then stops the services, waits for the recorder
    /// to write every end, and leaves the cluster.
    async fn shut_down<S: JobStore>(
        mut self,
        shared: Arc<Shared<S>>,
        node_id: &str,
    ) -> Result<NodeReport, JobsError> {
        self.claiming.cancel();
        let mut released = 0;
        while let Some(handed_back) = self.producers.join_next().await {
            released += handed_back.unwrap_or(0);
        }
        released += self.drain_executions(&shared).await;
        // The recorder ends when every sender (held by `Shared`) is gone:
        // stop the services that hold it, then drop the last reference.
        self.background.cancel();
        while self.services.join_next().await.is_some() {}
        let Ok(shared) = Arc::try_unwrap(shared) else {
            return Err(JobsError::Corrupt(
                "node tasks still hold shared state at shutdown".into(),
            ));
        };
        let store = shared.store.clone();
        drop(shared);
        let recorded = self.recorder.await.unwrap_or(0);
        let _ = store.resign(MAINTENANCE_LEASE, node_id).await;
        let _ = store.resign(CRON_LEASE, node_id).await;
        store.remove_node(node_id).await?;
        tracing::info!(node = %node_id, recorded, released, "stopped");
        Ok(NodeReport { recorded, released })
    }

    /// Lets executing jobs finish within the grace period; past it, stops
    /// the stragglers and hands their jobs back now (so they need not wait
    /// for another node's rescue). Returns how many were handed back.
    async fn drain_executions<S: JobStore>(&self, shared: &Shared<S>) -> u64 {
        let deadline = Instant::now() + shared.config.shutdown_grace;
        let mut executions = self.executions.lock().await;
        while !executions.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, executions.join_next())
                .await
                .is_err()
            {
                break;
            }
        }
        let leftovers: Vec<(i64, i32)> = {
            let running = lock(&shared.running);
            running.iter().map(|(id, r)| (*id, r.attempt)).collect()
        };
        executions.abort_all();
        while executions.join_next().await.is_some() {}
        let released = leftovers.len() as u64;
        for (id, attempt) in leftovers {
            let _ = shared
                .completions
                .send(Completion {
                    id,
                    attempt,
                    outcome: Outcome::Released,
                })
                .await;
        }
        released
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the map inconsistent
    // (single inserts and removes), so a poisoned lock is still usable.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
