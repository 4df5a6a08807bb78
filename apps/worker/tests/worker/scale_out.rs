//! Two worker processes on one PostgreSQL, as two replicas of a
//! Deployment: a queue's cluster-wide limit (`WORKER_QUEUES=name=local/global`)
//! holds across both, both take work, and every job completes once.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use jobs::{JobStore as _, NewJob, PgStore};
use sqlx::PgPool;

use crate::support::{Scratch, WorkerProcess};

const JOBS: i64 = 40;
/// Each node may run 4 at once; together they may run only 3.
const QUEUES: &str = "default=4/3";
const GLOBAL: i64 = 3;
/// Hang guard, not a timing claim.
const PATIENCE: Duration = Duration::from_secs(120);

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_queue_limit_holds_across_two_worker_processes() {
    let Some(scratch) = Scratch::postgres().await else {
        return;
    };
    let migrated = Command::new(env!("CARGO_BIN_EXE_worker"))
        .arg("migrate")
        .env_clear()
        .env("WORKER_DATABASE_URL", scratch.url())
        .env("WORKER_GRPC_PLAINTEXT", "true")
        .status()
        .unwrap();
    assert!(migrated.success());
    let pool = PgPool::connect(&scratch.url()).await.unwrap();
    // Jobs long enough that both nodes hold some at once.
    let job = NewJob::new("record_run", serde_json::json!({"sleep_ms": 150}));
    PgStore::new(pool.clone())
        .insert_many(&vec![job; JOBS as usize])
        .await
        .unwrap();

    let settings = [("WORKER_QUEUES", QUEUES), ("WORKER_POLL_INTERVAL", "100ms")];
    let replicas = [
        WorkerProcess::start(&scratch.url(), &settings),
        WorkerProcess::start(&scratch.url(), &settings),
    ];
    let executing =
        "SELECT count(*) FROM jobs.job WHERE kind = 'record_run' AND state = 'executing'";
    let completed =
        "SELECT count(*) FROM jobs.job WHERE kind = 'record_run' AND state = 'completed'";
    let (mut most, mut samples) = (0, 0);
    let deadline = Instant::now() + PATIENCE;
    while count(&pool, completed).await < JOBS {
        assert!(Instant::now() < deadline, "the jobs did not all complete");
        let now = count(&pool, executing).await;
        assert!(
            now <= GLOBAL,
            "{now} jobs executing at once across the replicas; the global limit is {GLOBAL}"
        );
        most = most.max(now);
        samples += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(replicas);

    let nodes: Vec<(String, i64)> =
        sqlx::query_as("SELECT node, count(*) FROM worker.job_runs GROUP BY node ORDER BY node")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(nodes.len(), 2, "both replicas ran jobs: {nodes:?}");
    let runs: i64 = nodes.iter().map(|(_, n)| n).sum();
    assert_eq!(runs, JOBS, "every job ran exactly once: {nodes:?}");
    assert!(
        most >= 2,
        "the replicas ran jobs side by side (at most {most} seen)"
    );
    eprintln!(
        "global limit {GLOBAL}: at most {most} executing over {samples} samples; runs per node {nodes:?}"
    );
    pool.close().await;
    scratch.remove().await;
}
