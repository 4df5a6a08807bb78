//! The running pipeline: one producer task, N processors, K batchers and M
//! batch processors, joined by bounded channels that carry chunks (so a
//! channel hop costs per chunk, not per message), under in-flight budgets
//! by count and by bytes that are only returned when messages are acked.

use std::{
    collections::{HashMap, VecDeque},
    panic::AssertUnwindSafe,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use futures_util::FutureExt as _;
use tokio::{
    sync::{Semaphore, mpsc, watch},
    task::JoinHandle,
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{
    AckRef, Failure, FailureKind, Handler, Incoming, PipelineConfig, PipelineStats, Producer,
    RateLimit,
    message::{TraceCarrier, deliver_acks},
    stats::{Counters, Observers},
};

/// The in-flight budgets; permits go back when messages are acknowledged.
struct Budget {
    count: Semaphore,
    bytes: Semaphore,
    max_bytes: u32,
}

impl Budget {
    fn release(&self, counters: &Counters, messages: usize, bytes: u64) {
        self.count.add_permits(messages);
        self.bytes.add_permits(bytes as usize);
        counters
            .in_flight
            .fetch_sub(messages as u64, Ordering::Relaxed);
        counters.in_flight_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// A processed message bound for a batch.
struct Routed<T> {
    data: T,
    key: u64,
    ack: AckRef,
    bytes: u32,
    trace: Option<TraceCarrier>,
}

/// A batch on its way to a batch processor.
struct Batch<T> {
    key: u64,
    data: Vec<T>,
    acks: Vec<AckRef>,
    bytes: u64,
    traces: Vec<TraceCarrier>,
    started: Instant,
}

impl<T> Batch<T> {
    fn new(key: u64, capacity: usize) -> Self {
        Self {
            key,
            data: Vec::with_capacity(capacity),
            acks: Vec::with_capacity(capacity),
            bytes: 0,
            traces: Vec::new(),
            started: Instant::now(),
        }
    }
}

/// Why a pipeline could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pipeline {name}: {problem}")]
pub struct PipelineError {
    /// The pipeline.
    pub name: String,
    /// The setting that cannot work.
    pub problem: crate::InvalidConfig,
}

/// What draining did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// True when every stage finished within the budget; false when some
    /// were aborted (their messages were not acknowledged and will be
    /// redelivered by their source).
    pub complete: bool,
    /// Messages still unacknowledged at the end.
    pub unacknowledged: u64,
}

/// A running pipeline.
pub struct PipelineHandle {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    monitor: PipelineMonitor,
    _observers: Observers,
}

/// A cheap, cloneable view of a running pipeline for stats endpoints and
/// operators: its figures, its ceilings and its rate limit.
#[derive(Clone)]
pub struct PipelineMonitor {
    counters: Arc<Counters>,
    rate: Arc<watch::Sender<Option<RateLimit>>>,
    limits: (u64, u64),
    batch_size: usize,
}

impl std::fmt::Debug for PipelineMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineMonitor")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl PipelineMonitor {
    /// Live figures.
    pub fn stats(&self) -> PipelineStats {
        self.counters.snapshot()
    }

    /// The in-flight ceilings: (messages, bytes).
    pub fn limits(&self) -> (u64, u64) {
        self.limits
    }

    /// The most messages a batch holds (`batch_size`).
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Changes (or removes) the producer's rate limit at runtime.
    pub fn set_rate_limit(&self, limit: Option<RateLimit>) {
        self.rate.send_replace(limit);
    }
}

impl std::fmt::Debug for PipelineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineHandle")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl PipelineHandle {
    /// Live figures.
    pub fn stats(&self) -> PipelineStats {
        self.monitor.stats()
    }

    /// A view that outlives borrowing the handle (stats RPCs, `/metrics`).
    pub fn monitor(&self) -> PipelineMonitor {
        self.monitor.clone()
    }

    /// Changes (or removes) the producer's rate limit at runtime.
    pub fn set_rate_limit(&self, limit: Option<RateLimit>) {
        self.monitor.set_rate_limit(limit);
    }

    /// Stops pulling, lets every stage flush its partial batches and every
    /// acknowledgement complete, within `budget`; what is left is aborted,
    /// unacknowledged, so its source redelivers it.
    pub async fn drain(self, budget: Duration) -> DrainReport {
        self.stop.cancel();
        self.finish(budget).await
    }

    /// Waits (at most `budget`) for a finished producer's messages to drain.
    pub async fn finish(self, budget: Duration) -> DrainReport {
        let deadline = Instant::now() + budget;
        let mut complete = true;
        for mut task in self.tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
                complete = false;
            }
        }
        DrainReport {
            complete,
            unacknowledged: self.monitor.counters.in_flight.load(Ordering::Relaxed),
        }
    }
}

/// Starts a pipeline named `name` pulling from `producer` into `handler`.
pub fn start<P, H>(
    name: &str,
    config: PipelineConfig,
    producer: P,
    handler: Arc<H>,
) -> Result<PipelineHandle, PipelineError>
where
    P: Producer,
    H: Handler<In = P::Item>,
{
    config.validate().map_err(|problem| PipelineError {
        name: name.to_owned(),
        problem,
    })?;
    let counters = Arc::new(Counters::new(name));
    let observers = Observers::register(&counters);
    let limits = (
        config.max_in_flight as u64,
        config.max_in_flight_bytes as u64,
    );
    let config_batch_size = config.batch_size;
    let budget = Arc::new(Budget {
        count: Semaphore::new(config.max_in_flight),
        bytes: Semaphore::new(config.max_in_flight_bytes),
        max_bytes: config.max_in_flight_bytes as u32,
    });
    let stop = CancellationToken::new();
    let (rate, rate_rx) = watch::channel(config.rate_limit);
    let mut tasks = Vec::new();

    let (bp_txs, bp_rxs): (Vec<_>, Vec<_>) = (0..config.batch_processors)
        .map(|_| mpsc::channel::<Batch<H::Out>>(config.channel_capacity))
        .unzip();
    for (i, rx) in bp_rxs.into_iter().enumerate() {
        let span = tracing::info_span!("batch processor", pipeline = name, index = i);
        tasks.push(tokio::spawn(
            process_batches(rx, handler.clone(), budget.clone(), counters.clone()).instrument(span),
        ));
    }
    let (batcher_txs, batcher_rxs): (Vec<_>, Vec<_>) = (0..config.batchers)
        .map(|_| mpsc::channel::<Vec<Routed<H::Out>>>(config.channel_capacity))
        .unzip();
    for (i, rx) in batcher_rxs.into_iter().enumerate() {
        let span = tracing::info_span!("batcher", pipeline = name, index = i);
        tasks.push(tokio::spawn(
            batch(rx, bp_txs.clone(), config.clone(), counters.clone()).instrument(span),
        ));
    }
    drop(bp_txs);
    let (proc_txs, proc_rxs): (Vec<_>, Vec<_>) = (0..config.processors)
        .map(|_| mpsc::channel::<Vec<Incoming<P::Item>>>(config.channel_capacity))
        .unzip();
    for (i, rx) in proc_rxs.into_iter().enumerate() {
        let span = tracing::info_span!("processor", pipeline = name, index = i);
        tasks.push(tokio::spawn(
            process(
                rx,
                batcher_txs.clone(),
                handler.clone(),
                budget.clone(),
                counters.clone(),
            )
            .instrument(span),
        ));
    }
    drop(batcher_txs);
    let span = tracing::info_span!("producer", pipeline = name);
    // The producer goes first in the list: draining waits for it before the
    // stages downstream, which end as their inputs close.
    tasks.insert(
        0,
        tokio::spawn(
            produce(
                producer,
                proc_txs,
                config,
                budget,
                rate_rx,
                stop.clone(),
                counters.clone(),
            )
            .instrument(span),
        ),
    );
    Ok(PipelineHandle {
        stop,
        tasks,
        monitor: PipelineMonitor {
            counters,
            rate: Arc::new(rate),
            limits,
            batch_size: config_batch_size,
        },
        _observers: observers,
    })
}

/// Pulls what the budgets and the rate limit allow, and routes it.
async fn produce<P: Producer>(
    mut producer: P,
    processors: Vec<mpsc::Sender<Vec<Incoming<P::Item>>>>,
    config: PipelineConfig,
    budget: Arc<Budget>,
    mut rate: watch::Receiver<Option<RateLimit>>,
    stop: CancellationToken,
    counters: Arc<Counters>,
) {
    let mut next = 0usize;
    let mut tokens = TokenBucket::new(*rate.borrow());
    loop {
        let want = config
            .max_demand
            .min(budget.count.available_permits())
            .max(1);
        let permits = tokio::select! {
            () = stop.cancelled() => return,
            permits = budget.count.acquire_many(want as u32) => permits,
        };
        let Ok(permits) = permits else { return };
        permits.forget();
        let allowed = tokio::select! {
            () = stop.cancelled() => {
                budget.count.add_permits(want);
                return;
            }
            // A new limit applies at once, even to a producer waiting for
            // tokens under the old one.
            () = async {
                if rate.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            } => {
                tokens = TokenBucket::new(*rate.borrow_and_update());
                budget.count.add_permits(want);
                continue;
            }
            allowed = tokens.take(want) => allowed,
        };
        let pulled = tokio::select! {
            () = stop.cancelled() => None,
            pulled = producer.pull(allowed) => pulled,
        };
        let Some(mut messages) = pulled else {
            budget.count.add_permits(want);
            return;
        };
        messages.truncate(allowed);
        budget.count.add_permits(want - messages.len());
        if messages.is_empty() {
            continue;
        }
        let mut bytes = 0u64;
        for message in &mut messages {
            message.bytes = message.bytes.min(budget.max_bytes);
            bytes += u64::from(message.bytes);
        }
        // Back-pressure by bytes: wait here, holding what was pulled, until
        // acknowledgements free room. Never on `stop`: these messages are
        // pulled and will be drained.
        let mut left = bytes;
        while left > 0 {
            let step = left.min(u64::from(u32::MAX)) as u32;
            let Ok(permits) = budget.bytes.acquire_many(step).await else {
                return;
            };
            permits.forget();
            left -= u64::from(step);
        }
        let n = messages.len() as u64;
        counters.in_flight.fetch_add(n, Ordering::Relaxed);
        counters.in_flight_bytes.fetch_add(bytes, Ordering::Relaxed);
        counters
            .producer
            .messages_in
            .fetch_add(n, Ordering::Relaxed);
        if config.partitioned {
            let mut parts: Vec<Vec<Incoming<P::Item>>> =
                (0..processors.len()).map(|_| Vec::new()).collect();
            for message in messages {
                let index = (message.partition % processors.len() as u64) as usize;
                parts[index].push(message);
            }
            for (index, part) in parts.into_iter().enumerate() {
                if !part.is_empty() && processors[index].send(part).await.is_err() {
                    return;
                }
            }
        } else {
            let index = next % processors.len();
            next = next.wrapping_add(1);
            if processors[index].send(messages).await.is_err() {
                return;
            }
        }
        counters
            .producer
            .messages_out
            .fetch_add(n, Ordering::Relaxed);
    }
}

/// Runs `handle_message` on each message of each chunk, then routes the
/// chunk's successes to batchers and reports its failures.
async fn process<H: Handler>(
    mut input: mpsc::Receiver<Vec<Incoming<H::In>>>,
    batchers: Vec<mpsc::Sender<Vec<Routed<H::Out>>>>,
    handler: Arc<H>,
    budget: Arc<Budget>,
    counters: Arc<Counters>,
) {
    let k = batchers.len() as u64;
    while let Some(chunk) = input.recv().await {
        counters
            .processors
            .messages_in
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        let mut routed: Vec<Vec<Routed<H::Out>>> =
            (0..batchers.len()).map(|_| Vec::new()).collect();
        let mut failed = Vec::new();
        for message in chunk {
            match handler.process(&message.data) {
                Ok(processed) => routed[(processed.batch_key % k) as usize].push(Routed {
                    data: processed.data,
                    key: processed.batch_key,
                    ack: message.ack,
                    bytes: message.bytes,
                    trace: message.trace,
                }),
                Err(failure) => failed.push((message, failure)),
            }
        }
        for (index, part) in routed.into_iter().enumerate() {
            if part.is_empty() {
                continue;
            }
            counters
                .processors
                .messages_out
                .fetch_add(part.len() as u64, Ordering::Relaxed);
            if batchers[index].send(part).await.is_err() {
                return;
            }
        }
        if !failed.is_empty() {
            let n = failed.len();
            let bytes: u64 = failed.iter().map(|(m, _)| u64::from(m.bytes)).sum();
            let mut invalid = failed
                .iter()
                .filter(|(_, f)| f.kind == FailureKind::Invalid)
                .count();
            let mut acks = Vec::with_capacity(n);
            let mut data = Vec::with_capacity(n);
            for (message, failure) in failed {
                acks.push((message.ack, failure.clone()));
                data.push((message.data, failure));
            }
            let recorded = AssertUnwindSafe(handler.handle_failed(data))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Err(Failure::retryable("the failure handler panicked")));
            if let Err(failure) = recorded {
                // Not dead-lettered: report them retryable so they come back.
                for (_, reported) in &mut acks {
                    *reported = failure.clone();
                }
                invalid = 0;
            }
            deliver_acks(Vec::new(), acks);
            counters
                .processors
                .failed
                .fetch_add(n as u64, Ordering::Relaxed);
            counters
                .dead_letters
                .fetch_add(invalid as u64, Ordering::Relaxed);
            budget.release(&counters, n, bytes);
        }
    }
}

/// Groups messages by key into batches that close at `batch_size` or
/// `batch_timeout` after their first message; flushes everything when its
/// input closes (drain).
async fn batch<T: Send + 'static>(
    mut input: mpsc::Receiver<Vec<Routed<T>>>,
    outputs: Vec<mpsc::Sender<Batch<T>>>,
    config: PipelineConfig,
    counters: Arc<Counters>,
) {
    let mut open: HashMap<u64, (Batch<T>, u64)> = HashMap::new();
    // Deadlines in opening order, which is deadline order (fixed timeout).
    let mut deadlines: VecDeque<(Instant, u64, u64)> = VecDeque::new();
    let mut generation = 0u64;
    let mut next_output = 0usize;
    let m = outputs.len();
    let mut route = |key: u64| -> usize {
        if config.partitioned {
            (key % m as u64) as usize
        } else {
            next_output = next_output.wrapping_add(1);
            next_output % m
        }
    };
    loop {
        let deadline = deadlines.front().map(|(at, _, _)| *at);
        tokio::select! {
            chunk = input.recv() => {
                let Some(chunk) = chunk else { break };
                counters.batchers.messages_in.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                for item in chunk {
                    let (batch, _) = open.entry(item.key).or_insert_with(|| {
                        generation += 1;
                        deadlines.push_back((Instant::now() + config.batch_timeout, item.key, generation));
                        (Batch::new(item.key, config.batch_size.min(4_096)), generation)
                    });
                    batch.data.push(item.data);
                    batch.acks.push(item.ack);
                    batch.bytes += u64::from(item.bytes);
                    if let Some(trace) = item.trace {
                        batch.traces.push(trace);
                    }
                    if batch.data.len() >= config.batch_size
                        && let Some((full, _)) = open.remove(&item.key)
                    {
                        let n = full.data.len() as u64;
                        if outputs[route(full.key)].send(full).await.is_err() {
                            return;
                        }
                        counters.batchers.messages_out.fetch_add(n, Ordering::Relaxed);
                    }
                }
            }
            () = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                let now = Instant::now();
                while let Some(&(at, key, generation)) = deadlines.front() {
                    if at > now {
                        break;
                    }
                    deadlines.pop_front();
                    if open.get(&key).is_some_and(|(_, g)| *g == generation)
                        && let Some((due, _)) = open.remove(&key)
                    {
                        let n = due.data.len() as u64;
                        if outputs[route(due.key)].send(due).await.is_err() {
                            return;
                        }
                        counters.batchers.messages_out.fetch_add(n, Ordering::Relaxed);
                    }
                }
            }
        }
    }
    // Drain: flush partial batches, oldest first.
    while let Some((_, key, generation)) = deadlines.pop_front() {
        if open.get(&key).is_some_and(|(_, g)| *g == generation)
            && let Some((rest, _)) = open.remove(&key)
        {
            let n = rest.data.len() as u64;
            if outputs[route(rest.key)].send(rest).await.is_err() {
                return;
            }
            counters
                .batchers
                .messages_out
                .fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// Hands each batch to `handle_batch`, then acknowledges every message in
/// it: succeeded only after the handler returned.
async fn process_batches<H: Handler>(
    mut input: mpsc::Receiver<Batch<H::Out>>,
    handler: Arc<H>,
    budget: Arc<Budget>,
    counters: Arc<Counters>,
) {
    while let Some(batch) = input.recv().await {
        let n = batch.data.len();
        counters
            .batch_processors
            .messages_in
            .fetch_add(n as u64, Ordering::Relaxed);
        let span = tracing::info_span!("handle batch", batch.size = n, batch.key = batch.key);
        // A batch belongs to many traces: it continues its first message's
        // trace (so work it triggers, such as jobs it enqueues, stays on a
        // publisher's trace) and links the others.
        let mut traces = batch.traces.iter();
        if let Some(first) = traces.next() {
            telemetry::continue_trace(&span, first);
        }
        for trace in traces.take(31) {
            telemetry::link_trace(&span, trace);
        }
        let outcome = AssertUnwindSafe(handler.handle_batch(batch.key, &batch.data))
            .catch_unwind()
            .instrument(span)
            .await
            .unwrap_or_else(|_| Err(Failure::retryable("the batch handler panicked")));
        let (succeeded, failed) = match outcome {
            Ok(failures) => {
                let mut failed_at: Vec<Option<Failure>> = vec![None; n];
                for (index, failure) in failures {
                    if let Some(slot) = failed_at.get_mut(index) {
                        *slot = Some(failure);
                    }
                }
                let mut succeeded = Vec::with_capacity(n);
                let mut failed = Vec::new();
                for (ack, failure) in batch.acks.into_iter().zip(failed_at) {
                    match failure {
                        None => succeeded.push(ack),
                        Some(failure) => failed.push((ack, failure)),
                    }
                }
                (succeeded, failed)
            }
            Err(failure) => (
                Vec::new(),
                batch
                    .acks
                    .into_iter()
                    .map(|ack| (ack, failure.clone()))
                    .collect(),
            ),
        };
        counters
            .batch_processors
            .messages_out
            .fetch_add(succeeded.len() as u64, Ordering::Relaxed);
        counters
            .batch_processors
            .failed
            .fetch_add(failed.len() as u64, Ordering::Relaxed);
        deliver_acks(succeeded, failed);
        budget.release(&counters, n, batch.bytes);
        let attributes = counters.attributes();
        counters.batches.fetch_add(1, Ordering::Relaxed);
        counters.batch_size.record(n as u64, &attributes);
        counters
            .batch_latency
            .record(batch.started.elapsed().as_secs_f64(), &attributes);
    }
}

/// A token bucket for the producer's rate limit.
struct TokenBucket {
    limit: Option<RateLimit>,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    fn new(limit: Option<RateLimit>) -> Self {
        Self {
            limit,
            tokens: limit.map_or(0.0, |l| f64::from(l.messages)),
            refilled: Instant::now(),
        }
    }

    /// Up to `want` tokens, waiting until at least one is available.
    async fn take(&mut self, want: usize) -> usize {
        let Some(limit) = self.limit else { return want };
        let per_second = f64::from(limit.messages) / limit.interval.as_secs_f64();
        loop {
            let now = Instant::now();
            self.tokens = (self.tokens + (now - self.refilled).as_secs_f64() * per_second)
                .min(f64::from(limit.messages));
            self.refilled = now;
            if self.tokens >= 1.0 {
                let granted = (self.tokens.floor() as usize).min(want);
                self.tokens -= granted as f64;
                return granted;
            }
            tokio::time::sleep(Duration::from_secs_f64((1.0 - self.tokens) / per_second)).await;
        }
    }
}
