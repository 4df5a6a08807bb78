use std::time::Duration;

use service_runtime::{Running, ServiceUrl, Transport};

/// The three gRPC apps, serving on free ports.
pub struct Backends {
    pub ingest: Running,
    pub worker: Running,
    pub numerics: Running,
    /// The embedded database ingest and the worker share (as in the quick
    /// start), held so it outlives them; deleted on drop.
    _worker_db: ScratchDb,
}

impl Backends {
    pub async fn start() -> Self {
        Self::start_with(|_| Transport::Plaintext).await
    }

    /// The three apps, each with the transport `transport(app name)`
    /// gives it.
    pub async fn start_with(transport: impl Fn(&str) -> Transport) -> Self {
        let worker_db = ScratchDb::new();
        let mut ingest = ingest::Config::for_tests(&worker_db.url());
        ingest.common.transport = transport("ingest");
        let mut worker = worker::Config::for_tests(&worker_db.url());
        worker.common.transport = transport("worker");
        let mut numerics = numerics::Config::for_tests();
        numerics.common.transport = transport("numerics");
        Self {
            ingest: ingest::start(ingest).await.unwrap(),
            worker: worker::start(worker).await.unwrap(),
            _worker_db: worker_db,
            numerics: numerics::start(numerics).await.unwrap(),
        }
    }

    /// The three apps wired as in production: the worker calls this
    /// ingest and this numerics (windows close, are aggregated and scored).
    pub async fn start_connected() -> Self {
        let worker_db = ScratchDb::new();
        let ingest = ingest::start(ingest::Config::for_tests(&worker_db.url()))
            .await
            .unwrap();
        let numerics = numerics::start(numerics::Config::for_tests())
            .await
            .unwrap();
        let mut worker = worker::Config::for_tests(&worker_db.url());
        worker.ingest_url = url_of(&ingest);
        worker.numerics_url = url_of(&numerics);
        Self {
            worker: worker::start(worker).await.unwrap(),
            ingest,
            numerics,
            _worker_db: worker_db,
        }
    }

    pub async fn shutdown(self) {
        tokio::join!(
            self.ingest.shutdown(),
            self.worker.shutdown(),
            self.numerics.shutdown()
        );
    }
}

/// A fresh SQLite file in the temp folder, deleted when dropped.
pub struct ScratchDb(std::path::PathBuf);

impl ScratchDb {
    pub fn new() -> Self {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(std::env::temp_dir().join(format!("platform-tests-{}-{n}.db", std::process::id())))
    }

    pub fn url(&self) -> String {
        format!("sqlite://{}", self.0.display())
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", ".setup.lock"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

/// The gRPC URL of a running app.
pub fn url_of(running: &Running) -> ServiceUrl {
    ServiceUrl::local(running.grpc_addr.unwrap().port())
}

/// A URL where nothing listens: a port that was free a moment ago.
pub fn nothing_listening() -> ServiceUrl {
    ServiceUrl::local(service_runtime::testing::free_local_addr().unwrap().port())
}

/// Starts the gateway pointed at the given backends.
pub async fn start_gateway(
    ingest: ServiceUrl,
    worker: ServiceUrl,
    numerics: ServiceUrl,
) -> Running {
    let mut config = gateway::Config::for_tests("sqlite::memory:", ingest, worker, numerics);
    config.status_timeout = Duration::from_secs(2);
    gateway::start(config).await.unwrap()
}
