use std::{sync::atomic::AtomicU64, time::Duration};

use contracts::jobs::v1::jobs_service_client::JobsServiceClient;
use service_runtime::{Running, ServiceUrl, TracedChannel, traced_channel};
use sqlx::{Connection as _, Executor as _};

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique_name() -> String {
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "worker_test_{}_{n}_{:x}",
        std::process::id(),
        nanos & 0xffff_ffff
    )
}

/// A scratch database: an SQLite file or a PostgreSQL database.
pub enum Scratch {
    Sqlite(std::path::PathBuf),
    Postgres { admin_url: String, name: String },
}

impl Scratch {
    pub fn sqlite() -> Self {
        Self::Sqlite(std::env::temp_dir().join(format!("{}.db", unique_name())))
    }

    /// `None`, saying so, when `DATABASE_URL` is unset.
    pub async fn postgres() -> Option<Self> {
        let Ok(admin_url) = std::env::var("DATABASE_URL") else {
            eprintln!("skipping the PostgreSQL run: DATABASE_URL is not set");
            return None;
        };
        let name = unique_name();
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .expect("DATABASE_URL is set but unreachable");
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        Some(Self::Postgres { admin_url, name })
    }

    pub fn url(&self) -> String {
        match self {
            Self::Sqlite(path) => format!("sqlite://{}", path.display()),
            Self::Postgres { admin_url, name } => {
                let base = admin_url
                    .rsplit_once('/')
                    .map_or(admin_url.as_str(), |(b, _)| b);
                format!("{base}/{name}")
            }
        }
    }

    pub async fn remove(self) {
        match self {
            Self::Sqlite(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
            Self::Postgres { admin_url, name } => {
                let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
                admin
                    .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                    .await
                    .unwrap();
            }
        }
    }
}

/// The worker on `scratch`, with fast polling and webhook retries.
pub async fn start_worker(scratch: &Scratch) -> Running {
    let mut config = worker::Config::for_tests(&scratch.url());
    config.webhook_backoff = Duration::from_millis(50);
    worker::start(config).await.unwrap()
}

pub fn client(running: &Running) -> JobsServiceClient<TracedChannel> {
    let timeout = Duration::from_secs(10);
    let url = ServiceUrl::local(running.grpc_addr.unwrap().port());
    JobsServiceClient::new(traced_channel(&url, timeout, timeout).unwrap())
}

/// Runs `test` against the worker on SQLite, then on PostgreSQL if set.
pub async fn on_both<F, Fut>(test: F)
where
    F: Fn(Running) -> Fut,
    Fut: std::future::Future<Output = Running>,
{
    let sqlite = Scratch::sqlite();
    let running = test(start_worker(&sqlite).await).await;
    running.shutdown().await;
    sqlite.remove().await;
    if let Some(postgres) = Scratch::postgres().await {
        let running = test(start_worker(&postgres).await).await;
        running.shutdown().await;
        postgres.remove().await;
    }
}

/// Polls (bounded) until the job's state satisfies `done`.
pub async fn wait_for_job(
    client: &mut JobsServiceClient<TracedChannel>,
    id: i64,
    done: impl Fn(contracts::jobs::v1::JobState) -> bool,
) -> contracts::jobs::v1::Job {
    use contracts::jobs::v1::GetJobRequest;
    for _ in 0..200 {
        let job = client
            .get_job(GetJobRequest { id })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        if done(job.state()) {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("job {id} never reached the expected state");
}
