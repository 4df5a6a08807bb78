//! The bounded CPU pool: numerical work runs on blocking threads, at most
//! one per core at a time, behind a bounded queue; a full queue answers
//! `RESOURCE_EXHAUSTED` at once. The async runtime only moves bytes, so a
//! slow request never delays health checks or other RPCs' I/O.

use std::sync::Arc;

use tokio::sync::Semaphore;

/// Why a job did not run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    /// Too many jobs are waiting.
    #[error("the compute queue is full ({0} waiting); retry later")]
    Full(usize),
    /// The pool is shutting down or the job panicked.
    #[error("the computation was lost: {0}")]
    Lost(String),
}

/// Runs closures on at most `workers` threads with at most `queue` waiting.
#[derive(Clone)]
pub struct CpuPool {
    running: Arc<Semaphore>,
    admitted: Arc<Semaphore>,
    queue: usize,
    _gauges: Arc<[opentelemetry::metrics::ObservableGauge<u64>; 2]>,
}

impl std::fmt::Debug for CpuPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuPool")
            .field("free_workers", &self.running.available_permits())
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl CpuPool {
    /// A pool of `workers` threads and `queue` waiting places.
    pub fn new(workers: usize, queue: usize) -> Self {
        let workers = workers.max(1);
        let running = Arc::new(Semaphore::new(workers));
        let admitted = Arc::new(Semaphore::new(workers + queue));
        let (weak_running, weak_admitted) = (Arc::downgrade(&running), Arc::downgrade(&admitted));
        let meter = opentelemetry::global::meter("platform.numerics");
        let weak_busy = Arc::downgrade(&running);
        let busy = meter
            .u64_observable_gauge("numerics.pool.busy")
            .with_description("CPU workers computing now")
            .with_callback(move |observer| {
                if let Some(running) = weak_busy.upgrade() {
                    observer.observe(
                        workers.saturating_sub(running.available_permits()) as u64,
                        &[],
                    );
                }
            })
            .build();
        let depth = meter
            .u64_observable_gauge("numerics.pool.waiting")
            .with_description("Computations admitted and waiting for a CPU worker")
            .with_callback(move |observer| {
                if let (Some(running), Some(admitted)) =
                    (weak_running.upgrade(), weak_admitted.upgrade())
                {
                    let inside = (workers + queue).saturating_sub(admitted.available_permits());
                    let busy = workers.saturating_sub(running.available_permits());
                    observer.observe(inside.saturating_sub(busy) as u64, &[]);
                }
            })
            .build();
        Self {
            running,
            admitted,
            queue,
            _gauges: Arc::new([busy, depth]),
        }
    }

    /// Runs `job` in place when it is tiny (`small`: a few microseconds of
    /// arithmetic cost less than the hop to a blocking thread), otherwise
    /// on the pool.
    pub async fn run_sized<T, F>(&self, small: bool, job: F) -> Result<T, PoolError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        if small {
            Ok(job())
        } else {
            self.run(job).await
        }
    }

    /// Runs `job` when a worker is free; fails fast when the queue is full.
    pub async fn run<T, F>(&self, job: F) -> Result<T, PoolError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let _admitted = self
            .admitted
            .clone()
            .try_acquire_owned()
            .map_err(|_| PoolError::Full(self.queue))?;
        // A caller that gives up while waiting here (deadline, cancel)
        // never starts its job.
        let running = self
            .running
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| PoolError::Lost(e.to_string()))?;
        // The permit travels with the job: a caller that goes away mid-run
        // does not free its worker before the work is done.
        tokio::task::spawn_blocking(move || {
            let _running = running;
            job()
        })
        .await
        .map_err(|e| PoolError::Lost(e.to_string()))
    }
}
