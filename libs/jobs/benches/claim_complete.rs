//! The engine's two hot paths, claim and batched completion, per batch
//! size, on SQLite and (when `DATABASE_URL` is set) PostgreSQL.
//!
//! `cargo bench -p jobs --bench claim_complete`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    reason = "benchmark harness"
)]

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use jobs::{Completion, JobStore, NewJob, Outcome, PgStore, SqliteStore};
use sqlx::{Connection as _, Executor as _};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Claims `batch` jobs, then completes them in one statement; each path is
/// timed on its own, the other is set-up.
fn bench_store<S: JobStore>(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    name: &str,
    store: &S,
) {
    let mut group = c.benchmark_group(name);
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20);
    for batch in [1u32, 100, 1_000] {
        group.throughput(Throughput::Elements(u64::from(batch)));
        group.bench_with_input(BenchmarkId::new("claim", batch), &batch, |b, &batch| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut timed = Duration::ZERO;
                    for _ in 0..iters {
                        let jobs = vec![
                            NewJob::new("bench", serde_json::json!({}))
                                .with_queue("claim");
                            batch as usize
                        ];
                        store.insert_many(&jobs).await.unwrap();
                        let started = Instant::now();
                        let claimed = store
                            .claim("claim", batch, "bench-node", None)
                            .await
                            .unwrap();
                        timed += started.elapsed();
                        let ends: Vec<_> = claimed
                            .iter()
                            .map(|j| Completion {
                                id: j.id,
                                attempt: j.attempt,
                                outcome: Outcome::Completed,
                            })
                            .collect();
                        store.complete_many(&ends).await.unwrap();
                    }
                    timed
                })
            });
        });
        group.bench_with_input(BenchmarkId::new("complete", batch), &batch, |b, &batch| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut timed = Duration::ZERO;
                    for _ in 0..iters {
                        let jobs = vec![
                            NewJob::new("bench", serde_json::json!({}))
                                .with_queue("complete");
                            batch as usize
                        ];
                        store.insert_many(&jobs).await.unwrap();
                        let claimed = store
                            .claim("complete", batch, "bench-node", None)
                            .await
                            .unwrap();
                        let ends: Vec<_> = claimed
                            .iter()
                            .map(|j| Completion {
                                id: j.id,
                                attempt: j.attempt,
                                outcome: Outcome::Completed,
                            })
                            .collect();
                        let started = Instant::now();
                        store.complete_many(&ends).await.unwrap();
                        timed += started.elapsed();
                    }
                    timed
                })
            });
        });
    }
    group.finish();
}

fn claim_and_complete(c: &mut Criterion) {
    let rt = runtime();
    let path = std::env::temp_dir().join(format!("jobs-bench-{}.db", std::process::id()));
    let sqlite = rt.block_on(async {
        let store = SqliteStore::new(
            jobs::sqlite::connect(&format!("sqlite://{}", path.display()))
                .await
                .unwrap(),
        );
        store.migrate().await.unwrap();
        store
    });
    bench_store(c, &rt, "sqlite", &sqlite);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }

    let Ok(admin_url) = std::env::var("DATABASE_URL") else {
        eprintln!("skipping PostgreSQL: DATABASE_URL is not set");
        return;
    };
    let name = format!("jobs_bench_{}", std::process::id());
    let url = format!(
        "{}/{name}",
        admin_url
            .rsplit_once('/')
            .map_or(admin_url.as_str(), |(base, _)| base)
    );
    let postgres = rt.block_on(async {
        let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        let store = PgStore::new(sqlx::PgPool::connect(&url).await.unwrap());
        store.migrate().await.unwrap();
        store
    });
    bench_store(c, &rt, "postgres", &postgres);
    rt.block_on(async {
        postgres.pool().close().await;
        let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
        admin
            .execute(format!("DROP DATABASE {name} WITH (FORCE)").as_str())
            .await
            .unwrap();
    });
}

criterion_group!(benches, claim_and_complete);
criterion_main!(benches);
