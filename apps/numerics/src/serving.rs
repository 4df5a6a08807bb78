//! Nx.Serving's job: concurrent score requests are gathered into batches
//! of up to `max_batch_size` rows, run as one forward pass on one of
//! `replicas` blocking workers, and answered one by one. A batch leaves as
//! soon as a replica is free; it grows only while every replica is busy
//! (for at most `max_wait`), so batching costs a lone caller nothing. The queue is bounded (`RESOURCE_EXHAUSTED` when
//! full); a request whose deadline passes while queued is dropped, not run.
//! The model sits behind an `Arc` swapped on reload, so a batch in flight
//! finishes on the weights it started with.

use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, Instant, SystemTime},
};

use numerics_engine::{EngineError, model::AnomalyModel, weights::Weights};
use opentelemetry::{
    KeyValue,
    metrics::{Counter, Histogram},
};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// The weights shipped with the service (`numerics train` output).
pub const SHIPPED_WEIGHTS: &[u8] = include_bytes!("../model/anomaly.safetensors");

/// Batching and concurrency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingConfig {
    /// Most rows in one forward pass (1 turns batching off).
    pub max_batch_size: usize,
    /// Longest a batch keeps growing while every replica is busy (a batch
    /// never waits while a replica is free).
    pub max_wait: Duration,
    /// Forward passes running at once.
    pub replicas: usize,
    /// Requests waiting before `RESOURCE_EXHAUSTED`.
    pub queue: usize,
    /// Weights file, relative to `model_dir` or absolute inside it;
    /// `None` means the shipped weights.
    pub weights_path: Option<PathBuf>,
    /// The only folder weights are loaded from (start-up and
    /// `ReloadModel`); see [`crate::model_dir`].
    pub model_dir: PathBuf,
}

/// Why a score request was not answered with scores.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScoreError {
    /// The request itself is wrong.
    #[error("{0}")]
    Invalid(String),
    /// The queue is full.
    #[error("the scoring queue is full ({0} waiting); retry later")]
    Full(usize),
    /// Its deadline passed before it ran.
    #[error("the deadline passed while queued; not run")]
    Expired,
    /// The server is stopping.
    #[error("the model server is stopping")]
    Stopped,
}

/// The served model and when it was loaded.
#[derive(Debug)]
pub struct Loaded {
    /// The model.
    pub model: AnomalyModel,
    /// When.
    pub loaded_at: SystemTime,
}

struct Pending {
    features: Vec<f32>,
    rows: usize,
    deadline: Option<Instant>,
    enqueued: Instant,
    reply: oneshot::Sender<Result<(Vec<f32>, String), ScoreError>>,
}

#[derive(Clone)]
struct Metrics {
    batch_size: Histogram<u64>,
    queue_wait: Histogram<f64>,
    compute: Histogram<f64>,
    flops: Counter<u64>,
    expired: Counter<u64>,
}

impl Metrics {
    fn new() -> Self {
        let meter = opentelemetry::global::meter("platform.numerics");
        Self {
            batch_size: meter
                .u64_histogram("numerics.serving.batch.size")
                .with_description("Rows per forward pass")
                .with_boundaries(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0])
                .build(),
            queue_wait: meter
                .f64_histogram("numerics.serving.queue_wait")
                .with_unit("s")
                .with_description("Time a request waited before its batch ran")
                .build(),
            compute: meter
                .f64_histogram("numerics.serving.compute")
                .with_unit("s")
                .with_description("Time of one batched forward pass")
                .build(),
            flops: meter
                .u64_counter("numerics.flops")
                .with_description("Floating-point operations served")
                .build(),
            expired: meter
                .u64_counter("numerics.serving.expired")
                .with_description("Requests dropped because their deadline passed while queued")
                .build(),
        }
    }
}

/// The serving side: submit requests, read and swap the model.
#[derive(Clone)]
pub struct ModelServer {
    queue: mpsc::Sender<Pending>,
    model: Arc<RwLock<Arc<Loaded>>>,
    config: ServingConfig,
    counts: Arc<BatchCounts>,
    _depth: Option<Arc<opentelemetry::metrics::ObservableGauge<u64>>>,
}

/// Batches run and rows scored since start (for stats and tests).
#[derive(Debug, Default)]
pub struct BatchCounts {
    /// Forward passes.
    pub batches: std::sync::atomic::AtomicU64,
    /// Rows in them.
    pub rows: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for ModelServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelServer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The model compiled into the binary (`model/anomaly.safetensors`).
pub fn shipped_model() -> Result<AnomalyModel, EngineError> {
    AnomalyModel::from_weights(&Weights::from_bytes(SHIPPED_WEIGHTS)?)
}

/// Reads a weights file inside `model_dir` (or the shipped weights) into a
/// model. A file that is not weights is refused without its contents
/// showing in the error.
pub fn load(
    model_dir: &std::path::Path,
    path: Option<&std::path::Path>,
) -> Result<AnomalyModel, EngineError> {
    let Some(path) = path else {
        return shipped_model();
    };
    let bytes = crate::model_dir::read_weights(model_dir, path).map_err(|error| {
        // The message already starts with `weights_path: `.
        let message = error.to_string();
        let problem = message
            .strip_prefix("weights_path: ")
            .unwrap_or(&message)
            .to_owned();
        EngineError::invalid("weights_path", problem)
    })?;
    let weights = Weights::from_bytes(&bytes).map_err(|error| {
        EngineError::invalid(
            "weights_path",
            format!(
                "{} is not a weights file: {}",
                path.display(),
                error.problem
            ),
        )
    })?;
    AnomalyModel::from_weights(&weights)
}

/// The batching loop of a [`ModelServer`], for the app's runtime to own:
/// [`Batcher::run`] serves until shutdown, then answers what is queued and
/// waits for the forward passes in flight.
pub struct Batcher {
    requests: mpsc::Receiver<Pending>,
    model: Arc<RwLock<Arc<Loaded>>>,
    config: ServingConfig,
    counts: Arc<BatchCounts>,
}

impl Batcher {
    /// Batches until `stop`, then drains (see the type's doc).
    pub async fn run(self, stop: service_runtime::CancellationToken) {
        batcher(
            self.requests,
            self.model,
            self.config,
            Metrics::new(),
            self.counts,
            stop,
        )
        .await;
    }
}

impl ModelServer {
    /// Loads the configured weights and starts the batcher on its own task,
    /// stopped when every handle to the server is dropped (benchmarks and
    /// tests; the app hands the batcher to its runtime with [`Self::new`]).
    pub fn start(config: ServingConfig) -> Result<Self, EngineError> {
        let (server, batcher) = Self::new(config)?;
        tokio::spawn(tracing::Instrument::instrument(
            batcher.run(service_runtime::CancellationToken::new()),
            tracing::info_span!("numerics.batcher"),
        ));
        Ok(server)
    }

    /// Loads the configured weights; the returned batcher must be run for
    /// requests to be answered.
    pub fn new(config: ServingConfig) -> Result<(Self, Batcher), EngineError> {
        let (server, requests) = Self::unstarted(config)?;
        let weak = server.queue.downgrade();
        let depth = opentelemetry::global::meter("platform.numerics")
            .u64_observable_gauge("numerics.serving.queue.depth")
            .with_description("Score requests waiting for a batch")
            .with_callback(move |observer| {
                if let Some(queue) = weak.upgrade() {
                    observer.observe((queue.max_capacity() - queue.capacity()) as u64, &[]);
                }
            })
            .build();
        let server = Self {
            _depth: Some(Arc::new(depth)),
            ..server
        };
        let batcher = Batcher {
            requests,
            model: server.model.clone(),
            config: server.config.clone(),
            counts: server.counts.clone(),
        };
        Ok((server, batcher))
    }

    /// The server with its queue's receiving end, not yet batching.
    fn unstarted(config: ServingConfig) -> Result<(Self, mpsc::Receiver<Pending>), EngineError> {
        let model = load(&config.model_dir, config.weights_path.as_deref())?;
        let model = Arc::new(RwLock::new(Arc::new(Loaded {
            model,
            loaded_at: SystemTime::now(),
        })));
        let (queue, requests) = mpsc::channel(config.queue.max(1));
        let counts = Arc::default();
        Ok((
            Self {
                queue,
                model,
                config,
                counts,
                _depth: None,
            },
            requests,
        ))
    }

    /// Batches and rows so far.
    pub fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.counts.batches.load(Relaxed),
            self.counts.rows.load(Relaxed),
        )
    }

    /// The served model.
    pub fn current(&self) -> Arc<Loaded> {
        self.model
            .read()
            .map_or_else(|p| p.into_inner().clone(), |m| m.clone())
    }

    /// The settings.
    pub fn config(&self) -> &ServingConfig {
        &self.config
    }

    /// Swaps in the weights at `path` (or the configured ones); returns the
    /// previous and the new version. Requests already batched finish on the
    /// old weights.
    pub async fn reload(&self, path: Option<PathBuf>) -> Result<(String, String), EngineError> {
        let path = path.or_else(|| self.config.weights_path.clone());
        let dir = self.config.model_dir.clone();
        let model = tokio::task::spawn_blocking(move || load(&dir, path.as_deref()))
            .await
            .map_err(|e| EngineError::invalid("weights_path", e.to_string()))??;
        let version = model.version().to_owned();
        let loaded = Arc::new(Loaded {
            model,
            loaded_at: SystemTime::now(),
        });
        let previous = match self.model.write() {
            Ok(mut slot) => std::mem::replace(&mut *slot, loaded),
            Err(poisoned) => std::mem::replace(&mut *poisoned.into_inner(), loaded),
        };
        Ok((previous.model.version().to_owned(), version))
    }

    /// Scores `rows` feature vectors; answers when their batch has run.
    pub async fn score(
        &self,
        features: Vec<f32>,
        rows: usize,
        deadline: Option<Instant>,
    ) -> Result<(Vec<f32>, String), ScoreError> {
        let width = self.current().model.input_width();
        if rows == 0 || features.len() != rows * width {
            return Err(ScoreError::Invalid(format!(
                "features: shape must be [n, {width}] with n >= 1, got {} values",
                features.len()
            )));
        }
        if let Some(i) = features.iter().position(|v| !v.is_finite()) {
            return Err(ScoreError::Invalid(format!(
                "features.data: element {i} is not finite"
            )));
        }
        let (reply, answer) = oneshot::channel();
        self.queue
            .try_send(Pending {
                features,
                rows,
                deadline,
                enqueued: Instant::now(),
                reply,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => ScoreError::Full(self.config.queue),
                mpsc::error::TrySendError::Closed(_) => ScoreError::Stopped,
            })?;
        answer.await.map_err(|_| ScoreError::Stopped)?
    }
}

/// Gathers batches and hands them to replicas.
async fn batcher(
    mut requests: mpsc::Receiver<Pending>,
    model: Arc<RwLock<Arc<Loaded>>>,
    config: ServingConfig,
    metrics: Metrics,
    counts: Arc<BatchCounts>,
    stop: service_runtime::CancellationToken,
) {
    let replicas = Arc::new(Semaphore::new(config.replicas.max(1)));
    let mut carried: Option<Pending> = None;
    let mut stopping = false;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => tokio::select! {
                next = requests.recv() => match next {
                    Some(p) => p,
                    None => break,
                },
                // At shutdown: refuse new requests (their senders hear
                // `Stopped`) and answer the ones already queued.
                () = stop.cancelled(), if !stopping => {
                    stopping = true;
                    requests.close();
                    continue;
                }
            },
        };
        // What is already queued joins at once; then the batch leaves as
        // soon as a replica is free. It grows (up to `max_batch_size`, for
        // at most `max_wait`) only while every replica is busy, so
        // batching never makes a request wait for an idle model: a lone
        // caller is answered as fast as with batching off.
        let mut rows = first.rows;
        let mut batch = vec![first];
        while rows < config.max_batch_size && carried.is_none() {
            match requests.try_recv() {
                Ok(p) if rows + p.rows <= config.max_batch_size => {
                    rows += p.rows;
                    batch.push(p);
                }
                // Too big to join: it opens the next batch.
                Ok(p) => carried = Some(p),
                Err(_) => break,
            }
        }
        let close_at = tokio::time::Instant::now() + config.max_wait;
        let mut gathering = rows < config.max_batch_size && carried.is_none();
        let permit = loop {
            if let Ok(permit) = replicas.clone().try_acquire_owned() {
                break Some(permit);
            }
            tokio::select! {
                // A replica first: while all are busy, requests keep
                // queueing (and the bounded queue pushes back).
                permit = replicas.clone().acquire_owned() => break permit.ok(),
                next = requests.recv(), if gathering => match next {
                    Some(p) if rows + p.rows <= config.max_batch_size => {
                        rows += p.rows;
                        batch.push(p);
                        gathering = rows < config.max_batch_size;
                    }
                    Some(p) => { carried = Some(p); gathering = false; }
                    None => gathering = false,
                },
                () = tokio::time::sleep_until(close_at), if gathering => gathering = false,
                // Shutdown while a batch gathers: close the queue, so the
                // batch takes what is queued and runs as soon as it can.
                () = stop.cancelled(), if !stopping => {
                    stopping = true;
                    requests.close();
                }
            }
        };
        let Some(permit) = permit else {
            break;
        };
        let now = Instant::now();
        let (live, expired): (Vec<Pending>, Vec<Pending>) = batch
            .into_iter()
            .partition(|p| p.deadline.is_none_or(|d| d > now));
        for p in expired {
            metrics.expired.add(1, &[]);
            let _ = p.reply.send(Err(ScoreError::Expired));
        }
        if live.is_empty() {
            continue;
        }
        let loaded = model
            .read()
            .map_or_else(|p| p.into_inner().clone(), |m| m.clone());
        let metrics = metrics.clone();
        counts
            .batches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        counts.rows.fetch_add(
            live.iter().map(|p| p.rows as u64).sum(),
            std::sync::atomic::Ordering::Relaxed,
        );
        tokio::task::spawn_blocking(move || {
            let _replica = permit;
            run_batch(live, &loaded.model, &metrics);
        });
    }
    // Every replica back: the forward passes in flight have answered.
    let all = u32::try_from(config.replicas.max(1)).unwrap_or(u32::MAX);
    let _ = replicas.acquire_many(all).await;
}

fn run_batch(batch: Vec<Pending>, model: &AnomalyModel, metrics: &Metrics) {
    let rows: usize = batch.iter().map(|p| p.rows).sum();
    let span = tracing::info_span!(
        "score batch",
        batch.size = rows,
        batch.requests = batch.len(),
        batch.queue_wait_us = tracing::field::Empty,
        batch.compute_us = tracing::field::Empty,
    );
    let _entered = span.enter();
    let started = Instant::now();
    let mut longest_wait = Duration::ZERO;
    for p in &batch {
        let waited = started.duration_since(p.enqueued);
        longest_wait = longest_wait.max(waited);
        metrics.queue_wait.record(waited.as_secs_f64(), &[]);
    }
    span.record("batch.queue_wait_us", longest_wait.as_micros() as u64);
    let mut features = Vec::with_capacity(rows * model.input_width());
    for p in &batch {
        features.extend_from_slice(&p.features);
    }
    let result = model.forward(&features, rows);
    let elapsed = started.elapsed();
    span.record("batch.compute_us", elapsed.as_micros() as u64);
    let attributes = [KeyValue::new("model", model.version().to_owned())];
    metrics.compute.record(elapsed.as_secs_f64(), &attributes);
    metrics.batch_size.record(rows as u64, &attributes);
    tracing::debug!(compute_us = elapsed.as_micros() as u64, "batch scored");
    match result {
        Ok(scores) => {
            metrics
                .flops
                .add(model.flops_per_row() * rows as u64, &attributes);
            let mut at = 0;
            for p in batch {
                let mine = scores[at..at + p.rows].to_vec();
                at += p.rows;
                let _ = p.reply.send(Ok((mine, model.version().to_owned())));
            }
        }
        Err(error) => {
            for p in batch {
                let _ = p.reply.send(Err(ScoreError::Invalid(error.to_string())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a panic is the test failure report")]

    use super::*;

    /// The runtime's shutdown: requests already queued are answered, not
    /// dropped, and the batcher returns only once they are; a request after
    /// it is refused as `Stopped`.
    #[tokio::test]
    async fn at_shutdown_queued_requests_are_answered_and_new_ones_refused() {
        let (server, batcher) = ModelServer::new(ServingConfig {
            // No batch would close by time during the test.
            max_wait: Duration::from_secs(3_600),
            ..config(16)
        })
        .unwrap();
        let queued: Vec<_> = (0..3)
            .map(|_| {
                let server = server.clone();
                tokio::spawn(async move { server.score(vec![0.1; 8], 1, None).await })
            })
            .collect();
        service_runtime::testing::wait_until(
            "three requests queued",
            Duration::from_secs(10),
            || {
                let waiting = server.queue.max_capacity() - server.queue.capacity();
                async move { (waiting == 3).then_some(()) }
            },
        )
        .await;
        let stop = service_runtime::CancellationToken::new();
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), batcher.run(stop))
            .await
            .expect("the batcher drains and returns (hang guard, not a timing claim)");
        for request in queued {
            let (scores, _) = request.await.unwrap().expect("answered at shutdown");
            assert_eq!(scores.len(), 1);
        }
        assert_eq!(
            server.score(vec![0.1; 8], 1, None).await,
            Err(ScoreError::Stopped)
        );
    }

    fn config(queue: usize) -> ServingConfig {
        ServingConfig {
            max_batch_size: 8,
            max_wait: Duration::from_millis(1),
            replicas: 1,
            queue,
            weights_path: None,
            model_dir: crate::model_dir::DEFAULT_MODEL_DIR.into(),
        }
    }

    /// A batch leaves as soon as a replica is free: with an hour's
    /// `max_wait` and room for eight rows, a lone request is still answered
    /// (batching never waits for company while the model is idle).
    #[tokio::test]
    async fn a_lone_request_does_not_wait_for_company() {
        let server = ModelServer::start(ServingConfig {
            max_wait: Duration::from_secs(3_600),
            ..config(16)
        })
        .unwrap();
        for _ in 0..3 {
            let answer =
                tokio::time::timeout(Duration::from_secs(10), server.score(vec![0.1; 8], 1, None))
                    .await
                    .expect("answered without waiting max_wait (hang guard, not a timing claim)");
            assert_eq!(answer.unwrap().0.len(), 1);
        }
        assert_eq!(server.counts(), (3, 3), "three batches of one row");
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_at_once() {
        // Nothing drains this queue: two fit, the third is refused.
        let (server, _requests) = ModelServer::unstarted(config(2)).unwrap();
        let row = vec![0.5f32; 8];
        let waiting: Vec<_> = (0..2)
            .map(|_| {
                let server = server.clone();
                let row = row.clone();
                tokio::spawn(async move { server.score(row, 1, None).await })
            })
            .collect();
        while server.queue.capacity() > 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(server.score(row, 1, None).await, Err(ScoreError::Full(2)));
        waiting.iter().for_each(|w| w.abort());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_forward_passes_and_get_their_own_rows() {
        let server = ModelServer::start(ServingConfig {
            max_batch_size: 32,
            max_wait: Duration::from_millis(20),
            ..config(256)
        })
        .unwrap();
        let model = server.current();
        let callers: Vec<_> = (0..64)
            .map(|tag| {
                let server = server.clone();
                tokio::spawn(async move {
                    let row: Vec<f32> = (0..8).map(|j| (tag * 8 + j) as f32 * 0.01).collect();
                    (row.clone(), server.score(row, 1, None).await.unwrap().0)
                })
            })
            .collect();
        for caller in callers {
            let (row, scores) = caller.await.unwrap();
            assert_eq!(
                scores,
                model.model.forward(&row, 1).unwrap(),
                "another caller's row"
            );
        }
        let (batches, rows) = server.counts();
        assert_eq!(rows, 64);
        assert!(
            batches < 64,
            "no batching: {batches} batches for 64 requests"
        );
    }

    #[tokio::test]
    async fn a_request_whose_deadline_passed_while_queued_is_not_run() {
        let server = ModelServer::start(config(16)).unwrap();
        let past = Instant::now()
            .checked_sub(Duration::from_millis(1))
            .unwrap();
        assert_eq!(
            server.score(vec![0.5; 8], 1, Some(past)).await,
            Err(ScoreError::Expired)
        );
        assert_eq!(server.counts(), (0, 0), "no forward pass ran");
        let (scores, _) = server.score(vec![0.5; 8], 1, None).await.unwrap();
        assert_eq!((scores.len(), server.counts()), (1, (1, 1)));
    }
}
