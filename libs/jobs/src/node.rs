//! A node: claims jobs from its queues, runs them, records how each attempt
//! ended in batches, heartbeats, and (while it holds the lease) rescues
//! orphans and prunes finished jobs. Many nodes may share one database.

use std::{
    collections::HashMap,
    panic::AssertUnwindSafe,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::Utc;
use futures_util::FutureExt as _;
use opentelemetry::{
    KeyValue,
    metrics::{Counter, Histogram},
};
use tokio::{
    sync::{Notify, mpsc},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{
    Job, JobsError,
    store::{Completion, JobStore, Outcome, Signal},
    worker::{Done, JobContext, JobError, Registry},
};

/// Waits between claims after the store failed: 200 ms doubling to 6.4 s.
const CLAIM_RETRY: crate::Backoff =
    crate::Backoff::exponential(Duration::from_millis(200), Duration::from_millis(6_400));
/// Waits between attempts to record finished jobs: 100 ms doubling to 6.4 s.
const RECORD_RETRY: crate::Backoff =
    crate::Backoff::exponential(Duration::from_millis(100), Duration::from_millis(6_400));

/// One queue as a node runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// Queue name.
    pub name: String,
    /// Most jobs of this queue running at once on this node.
    pub local_limit: u32,
    /// Most jobs of this queue running at once across all nodes.
    pub global_limit: Option<u32>,
}

impl QueueConfig {
    /// A queue with a per-node limit and no global limit.
    pub fn new(name: impl Into<String>, local_limit: u32) -> Self {
        Self {
            name: name.into(),
            local_limit: local_limit.max(1),
            global_limit: None,
        }
    }
}

/// How a node behaves; [`NodeConfig::new`] gives production defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// Unique per boot (two processes never share one).
    pub node_id: String,
    /// The queues this node runs.
    pub queues: Vec<QueueConfig>,
    /// Longest a node waits before looking for jobs without a wake-up.
    pub poll_interval: Duration,
    /// A node silent this long is presumed dead and its jobs rescued.
    pub lease: Duration,
    /// Most attempt ends recorded in one statement.
    pub completion_batch: usize,
    /// How long the first end in a batch waits for company.
    pub completion_linger: Duration,
    /// Finished jobs older than this are pruned.
    pub prune_age: Duration,
    /// Most jobs deleted per prune statement.
    pub prune_batch: u32,
    /// How often the leader rescues and prunes.
    pub maintenance_interval: Duration,
    /// How long executing jobs may finish after shutdown begins.
    pub shutdown_grace: Duration,
    /// Periodic jobs, inserted by whichever node holds the `cron` lease.
    pub cron: Vec<crate::CronJob>,
}

impl NodeConfig {
    /// Defaults: poll every second, 30 s lease, batches of up to 1,000,
    /// prune after 7 days, 15 s grace.
    pub fn new(queues: Vec<QueueConfig>) -> Self {
        Self {
            node_id: new_node_id(),
            queues,
            poll_interval: Duration::from_secs(1),
            lease: Duration::from_secs(30),
            completion_batch: 1_000,
            completion_linger: Duration::from_millis(1),
            prune_age: Duration::from_secs(7 * 86_400),
            prune_batch: 10_000,
            maintenance_interval: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(15),
            cron: Vec::new(),
        }
    }
}

/// `<host>-<pid>-<boot nanos>`: unique per boot.
pub fn new_node_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".to_owned());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{host}-{}-{:x}", std::process::id(), nanos)
}

/// What a node did before it stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeReport {
    /// Attempts that ended and were recorded.
    pub recorded: u64,
    /// Jobs released back to available at shutdown.
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
    metrics: Metrics,
}

struct QueueState {
    config: QueueConfig,
    running: AtomicU32,
    wake: Notify,
}

struct Metrics {
    attempts: Counter<u64>,
    run_time: Histogram<f64>,
    claim_to_start: Histogram<f64>,
    rescued: Counter<u64>,
    /// Latest counts per queue and state, refreshed by the maintenance
    /// leader (so only one node reports depth and sums stay right).
    depth: Arc<Mutex<Vec<crate::QueueCounts>>>,
    _depth_gauge: opentelemetry::metrics::ObservableGauge<u64>,
}

impl Metrics {
    fn new() -> Self {
        let meter = opentelemetry::global::meter("platform.jobs");
        let depth: Arc<Mutex<Vec<crate::QueueCounts>>> = Arc::default();
        let observed = depth.clone();
        let depth_gauge = meter
            .u64_observable_gauge("jobs.queue.depth")
            .with_description("Jobs per queue and state (reported by the maintenance leader)")
            .with_callback(move |observer| {
                for queue in lock(&observed).iter() {
                    for state in crate::JobState::ALL {
                        let attributes = [
                            KeyValue::new("queue", queue.queue.clone()),
                            KeyValue::new("state", state.as_str()),
                        ];
                        observer.observe(queue.count(state), &attributes);
                    }
                }
            })
            .build();
        Self {
            depth,
            _depth_gauge: depth_gauge,
            attempts: meter
                .u64_counter("jobs.attempts")
                .with_description(
                    "Attempts ended, by queue, kind and outcome (completed, retry, discard, ...)",
                )
                .build(),
            run_time: meter
                .f64_histogram("jobs.run.duration")
                .with_unit("s")
                .with_description("Time a handler ran, by queue and kind")
                .build(),
            claim_to_start: meter
                .f64_histogram("jobs.claim_to_start.duration")
                .with_unit("s")
                .with_description("Time from claim to handler start, by queue")
                .build(),
            rescued: meter
                .u64_counter("jobs.rescued")
                .with_description("Orphaned jobs rescued")
                .build(),
        }
    }
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
        let capacity = self
            .config
            .queues
            .iter()
            .map(|q| q.local_limit as usize)
            .sum::<usize>()
            .max(64)
            * 2;
        let (completions_tx, completions_rx) = mpsc::channel(capacity);
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
            completions: completions_tx,
            metrics: Metrics::new(),
        });

        let claiming = stop.child_token();
        let background = CancellationToken::new();
        let mut services = JoinSet::new();
        services.spawn({
            let store = shared.store.clone();
            let stop = background.clone();
            async move { store.listen(stop).await }
        });
        services.spawn(heartbeat(shared.clone(), background.clone()));
        services.spawn(route_signals(shared.clone(), background.clone()));
        services.spawn(maintain(shared.clone(), background.clone()));
        services.spawn(schedule_cron(shared.clone(), background.clone()));
        services.spawn(poll_cancellations(shared.clone(), background.clone()));
        let recorder = tokio::spawn(record_completions(shared.clone(), completions_rx));
        let executions = Arc::new(tokio::sync::Mutex::new(JoinSet::new()));
        let mut producers = JoinSet::new();
        for index in 0..shared.per_queue.len() {
            producers.spawn(produce(
                shared.clone(),
                index,
                claiming.clone(),
                executions.clone(),
            ));
        }

        stop.cancelled().await;
        tracing::info!(node = %node_id, "stopping: no new claims, draining executing jobs");
        while producers.join_next().await.is_some() {}

        // Let executing jobs finish within the grace period.
        let deadline = Instant::now() + shared.config.shutdown_grace;
        let mut executions = executions.lock().await;
        while !executions.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, executions.join_next())
                .await
                .is_err()
            {
                break;
            }
        }
        // Past the grace: stop the stragglers and hand their jobs back now,
        // so they need not wait for another node's rescue.
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
        drop(executions);
        let shared_for_exit = shared.clone();
        drop(shared);
        // The recorder ends when every sender (held by `Shared`) is gone.
        let recorder_done = {
            // Remaining senders live in background services; stop them.
            background.cancel();
            while services.join_next().await.is_some() {}
            let Ok(shared) = Arc::try_unwrap(shared_for_exit) else {
                return Err(JobsError::Corrupt(
                    "node tasks still hold shared state at shutdown".into(),
                ));
            };
            let store = shared.store.clone();
            drop(shared);
            let recorded = recorder.await.unwrap_or(0);
            (store, recorded)
        };
        let (store, recorded) = recorder_done;
        let _ = store.resign(MAINTENANCE_LEASE, &node_id).await;
        let _ = store.resign(CRON_LEASE, &node_id).await;
        store.remove_node(&node_id).await?;
        tracing::info!(node = %node_id, recorded, released, "stopped");
        Ok(NodeReport { recorded, released })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the map inconsistent
    // (single inserts and removes), so a poisoned lock is still usable.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Claims jobs for one queue whenever there is room and reason to.
async fn produce<S: JobStore>(
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

async fn execute<S: JobStore>(shared: Arc<Shared<S>>, job: Job, cancel: CancellationToken) {
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

/// Records attempt ends in batches: one statement for up to
/// `completion_batch` ends. A failed write is retried with the same batch
/// until it succeeds; ends are never dropped while the process lives.
async fn record_completions<S: JobStore>(
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

/// Keeps this node's heartbeat fresh (three times per lease).
async fn heartbeat<S: JobStore>(shared: Arc<Shared<S>>, stop: CancellationToken) {
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
async fn route_signals<S: JobStore>(shared: Arc<Shared<S>>, stop: CancellationToken) {
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
async fn poll_cancellations<S: JobStore>(shared: Arc<Shared<S>>, stop: CancellationToken) {
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
async fn maintain<S: JobStore>(shared: Arc<Shared<S>>, stop: CancellationToken) {
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

/// While this node holds the cron lease: insert each due tick's job. A
/// tick's unique key makes a second insert (another leader, a restart) a
/// no-op, so ticks are enqueued at most once.
async fn schedule_cron<S: JobStore>(shared: Arc<Shared<S>>, stop: CancellationToken) {
    let crons = &shared.config.cron;
    if crons.is_empty() {
        return;
    }
    let node = shared.config.node_id.clone();
    let lookback = chrono::Duration::from_std(CRON_LOOKBACK).unwrap_or(chrono::Duration::MAX);
    let start = Utc::now() - lookback;
    let mut next: Vec<Option<chrono::DateTime<Utc>>> = crons
        .iter()
        .map(|c| c.schedule.next_after(start, c.timezone))
        .collect();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        match shared
            .store
            .try_lead(CRON_LEASE, &node, Duration::from_secs(10))
            .await
        {
            Ok(true) => {}
            Ok(false) => continue,
            Err(error) => {
                tracing::debug!(%error, "cron leader election failed");
                continue;
            }
        }
        let now = Utc::now();
        for (cron, next) in crons.iter().zip(next.iter_mut()) {
            while let Some(tick) = *next
                && tick <= now
            {
                if now - tick <= lookback {
                    if let Err(error) = shared.store.insert_many(&[cron.job_for(tick)]).await {
                        // Not advanced: the next loop tries this tick again.
                        tracing::warn!(cron = %cron.name, %error, "cron insert failed");
                        break;
                    }
                    tracing::info!(cron = %cron.name, %tick, "cron tick enqueued");
                }
                *next = cron.schedule.next_after(tick, cron.timezone);
            }
        }
    }
}
