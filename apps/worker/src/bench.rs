//! `worker bench`: the engine's throughput and latency on this machine, in
//! a scratch database (created and dropped on the configured PostgreSQL
//! server, or a temporary SQLite file), printed with its method.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Args;
use jobs::{
    Done, JobContext, JobError, JobStore, NewJob, Node, NodeConfig, QueueConfig, Registry, Worker,
};
use serde::Deserialize;
use sqlx::{Connection as _, Executor as _};
use tokio_util::sync::CancellationToken;

use crate::Config;

/// What to measure and how hard.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Jobs burned down in (a).
    #[arg(long, default_value_t = 100_000)]
    pub jobs: usize,
    /// Concurrency (per-node limit) for the burn-down.
    #[arg(long, default_value_t = 2_000)]
    pub concurrency: u32,
    /// Serial jobs timed in (b).
    #[arg(long, default_value_t = 1_000)]
    pub latency_jobs: usize,
    /// Jobs bulk-inserted in (c).
    #[arg(long, default_value_t = 100_000)]
    pub bulk_jobs: usize,
    /// Rows per bulk insert statement.
    #[arg(long, default_value_t = 10_000)]
    pub batch: usize,
    /// Database connections.
    #[arg(long, default_value_t = 10)]
    pub pool: u32,
}

/// Counts runs; reports each start for the latency run.
#[derive(Clone)]
struct BenchWorker {
    done: Arc<AtomicU64>,
    starts: Arc<Mutex<HashMap<i64, Instant>>>,
}

#[derive(Deserialize)]
struct BenchJob {}

impl Worker for BenchWorker {
    type Args = BenchJob;
    const KIND: &'static str = "bench";

    async fn work(&self, ctx: JobContext, _args: BenchJob) -> Result<Done, JobError> {
        if ctx.queue == "latency" {
            let now = Instant::now();
            if let Ok(mut starts) = self.starts.lock() {
                starts.insert(ctx.id, now);
            }
        }
        self.done.fetch_add(1, Ordering::Release);
        Ok(Done::Completed)
    }
}

/// Runs the three measurements and prints them.
pub async fn run(config: &Config, args: BenchArgs) -> anyhow::Result<()> {
    if config.database_url.is_postgres() {
        let admin_url = config.database_url.as_str().to_owned();
        let name = format!("worker_bench_{}", std::process::id());
        let mut admin = sqlx::PgConnection::connect(&admin_url).await?;
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await?;
        let pool = jobs::postgres::connect(
            &jobs::postgres::with_database(&admin_url, &name),
            "worker bench",
            args.pool,
            service_runtime::CONNECT_TIMEOUT,
        )
        .await?;
        let settings = postgres_settings(&pool).await?;
        let store = jobs::PgStore::new(pool.clone());
        let result = measure(
            store,
            &args,
            &format!("PostgreSQL ({settings})"),
            "LISTEN/NOTIFY",
        )
        .await;
        pool.close().await;
        admin
            .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
            .await?;
        result
    } else {
        let path = std::env::temp_dir().join(format!("worker_bench_{}.db", std::process::id()));
        let pool = jobs::sqlite::connect(&format!("sqlite://{}", path.display())).await?;
        let store = jobs::SqliteStore::new(pool.clone());
        let result = measure(
            store,
            &args,
            "SQLite (WAL, synchronous=NORMAL)",
            "in-process signal",
        )
        .await;
        pool.close().await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        result
    }
}

async fn postgres_settings(pool: &sqlx::PgPool) -> anyhow::Result<String> {
    let mut parts = Vec::new();
    for setting in [
        "server_version",
        "shared_buffers",
        "synchronous_commit",
        "fsync",
        "max_connections",
    ] {
        let value: String = sqlx::query_scalar(&format!("SHOW {setting}"))
            .fetch_one(pool)
            .await?;
        parts.push(format!("{setting}={value}"));
    }
    Ok(parts.join(", "))
}

#[allow(clippy::print_stdout, reason = "the benchmark's report")]
async fn measure<S: JobStore>(
    store: S,
    args: &BenchArgs,
    database: &str,
    wake_up: &str,
) -> anyhow::Result<()> {
    store.migrate().await?;
    let worker = BenchWorker {
        done: Arc::new(AtomicU64::new(0)),
        starts: Arc::new(Mutex::new(HashMap::new())),
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("worker bench on {cores} cores, {database}");
    println!(
        "pool: {} connections; completion batches of up to 1,000 in one statement\n",
        args.pool
    );

    // (a) Burn-down.
    let jobs: Vec<NewJob> = (0..args.jobs)
        .map(|_| NewJob::new("bench", serde_json::json!({})).with_queue("burn"))
        .collect();
    for chunk in jobs.chunks(args.batch.max(1)) {
        store.insert_many(chunk).await?;
    }
    let registry = Registry::new().register(worker.clone());
    let mut node_config = NodeConfig::new(vec![QueueConfig::new("burn", args.concurrency)]);
    node_config.poll_interval = Duration::from_millis(100);
    let stop = CancellationToken::new();
    let node = Node::new(store.clone(), registry.clone(), node_config);
    let started = Instant::now();
    let handle = tokio::spawn(node.run(stop.clone()));
    while worker.done.load(Ordering::Acquire) < args.jobs as u64 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    stop.cancel();
    let report = handle.await??;
    let elapsed = started.elapsed();
    println!(
        "(a) burn-down: {} no-op jobs, per-node limit {}, one node: {:.0} jobs/s ({:.2} s from start to the last end recorded; {} recorded)",
        args.jobs,
        args.concurrency,
        args.jobs as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        report.recorded
    );

    // (b) Insert-to-start latency, one job at a time.
    let mut node_config = NodeConfig::new(vec![QueueConfig::new("latency", 10)]);
    node_config.poll_interval = Duration::from_secs(1);
    let stop = CancellationToken::new();
    let node = Node::new(store.clone(), registry, node_config);
    let handle = tokio::spawn(node.run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut samples = Vec::with_capacity(args.latency_jobs);
    for _ in 0..args.latency_jobs {
        let before = Instant::now();
        let id = store
            .insert_many(&[NewJob::new("bench", serde_json::json!({})).with_queue("latency")])
            .await?[0]
            .job
            .id;
        let started_at = loop {
            if let Some(at) = worker.starts.lock().ok().and_then(|mut s| s.remove(&id)) {
                break at;
            }
            tokio::task::yield_now().await;
        };
        samples.push(started_at.duration_since(before));
    }
    stop.cancel();
    handle.await??;
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "(b) insert-to-start latency over {} serial jobs ({wake_up} wake-up, poll fallback 1 s): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        samples.len(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        samples.last().map_or(0.0, |d| d.as_secs_f64() * 1e3)
    );

    // (c) Bulk insert.
    let jobs: Vec<NewJob> = (0..args.bulk_jobs)
        .map(|i| NewJob::new("bench", serde_json::json!({"i": i})).with_queue("bulk"))
        .collect();
    let started = Instant::now();
    for chunk in jobs.chunks(args.batch.max(1)) {
        store.insert_many(chunk).await?;
    }
    let elapsed = started.elapsed();
    println!(
        "(c) bulk insert: {} jobs in statements of {}: {:.0} jobs/s ({:.2} s)",
        args.bulk_jobs,
        args.batch,
        args.bulk_jobs as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    Ok(())
}
