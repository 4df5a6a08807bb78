use std::time::Duration;

use contracts::jobs::v1::jobs_service_client::JobsServiceClient;
use service_runtime::{Running, ServiceUrl, TracedChannel, traced_channel};

/// A scratch database: an SQLite file or a PostgreSQL database.
pub enum Scratch {
    Sqlite(jobs::testing::ScratchSqlite),
    Postgres(jobs::testing::ScratchPostgres),
}

impl Scratch {
    pub async fn sqlite() -> Self {
        Self::Sqlite(jobs::testing::ScratchSqlite::create("worker_test").await)
    }

    /// `None`, saying so, when `DATABASE_URL` is unset.
    pub async fn postgres() -> Option<Self> {
        jobs::testing::ScratchPostgres::create("worker_test")
            .await
            .map(Self::Postgres)
    }

    pub fn url(&self) -> String {
        match self {
            Self::Sqlite(db) => db.url.clone(),
            Self::Postgres(db) => db.url.clone(),
        }
    }

    pub async fn remove(self) {
        match self {
            Self::Sqlite(db) => db.remove().await,
            Self::Postgres(db) => db.drop_database().await,
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
    client_at(running.grpc_addr.unwrap().port())
}

/// A client of the worker listening on `port` (an in-process app or the
/// shipped binary).
pub fn client_at(port: u16) -> JobsServiceClient<TracedChannel> {
    let timeout = Duration::from_secs(10);
    JobsServiceClient::new(
        traced_channel(
            &ServiceUrl::local(port),
            &service_runtime::Transport::Plaintext,
            "worker",
            timeout,
            timeout,
        )
        .unwrap(),
    )
}

/// Runs `test` against the worker on SQLite, then on PostgreSQL if set.
pub async fn on_both<F, Fut>(test: F)
where
    F: Fn(Running) -> Fut,
    Fut: std::future::Future<Output = Running>,
{
    let sqlite = Scratch::sqlite().await;
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
    let done = &done;
    service_runtime::testing::wait_until(
        &format!("job {id} in the expected state"),
        Duration::from_secs(10),
        || {
            let mut client = client.clone();
            async move {
                let job = client
                    .get_job(GetJobRequest { id })
                    .await
                    .unwrap()
                    .into_inner()
                    .job
                    .unwrap();
                done(job.state()).then_some(job)
            }
        },
    )
    .await
}

/// The `worker` binary as a real process on `database_url` (plaintext on
/// loopback, free ports, `RUST_LOG=warn`) with `settings` on top; stopped
/// with SIGTERM when dropped.
pub struct WorkerProcess(std::process::Child);

impl WorkerProcess {
    pub fn start(database_url: &str, settings: &[(&str, &str)]) -> Self {
        let free = || {
            service_runtime::testing::free_local_addr()
                .unwrap()
                .to_string()
        };
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_worker"))
            .env_clear()
            .env("WORKER_DATABASE_URL", database_url)
            .env("WORKER_GRPC_PLAINTEXT", "true")
            .env("WORKER_GRPC_ADDR", free())
            .env("WORKER_ADMIN_ADDR", free())
            .env("RUST_LOG", "warn")
            .envs(settings.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Self(child)
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.0.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let _ = self.0.wait();
    }
}
