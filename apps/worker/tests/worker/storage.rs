//! The worker's store on both databases: migrations apply twice without
//! harm, the readiness ping answers, and every `record_run` call is a row.

use worker::WorkerStore;

/// Migrates twice, pings and records two runs of job 7.
async fn exercise(store: &impl WorkerStore) {
    store.migrate_all().await.unwrap();
    store.migrate_all().await.unwrap();
    store.ping().await.unwrap();
    store.record_run(7, 1, "node-a").await.unwrap();
    store.record_run(7, 2, "node-b").await.unwrap();
}

/// The runs [`exercise`] records, as read back.
fn expected_runs() -> [(i64, i32, String); 2] {
    [(7, 1, "node-a".to_owned()), (7, 2, "node-b".to_owned())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_store_migrates_idempotently_and_records_each_run() {
    let scratch = jobs::testing::ScratchSqlite::create("worker_store").await;
    scratch.pool.close().await;
    let store = worker::storage::sqlite::connect(&scratch.url)
        .await
        .unwrap();
    exercise(&store).await;
    let runs: Vec<(i64, i32, String)> =
        sqlx::query_as("SELECT job_id, attempt, node FROM worker_job_runs ORDER BY attempt")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(runs, expected_runs());
    store.pool().close().await;
    scratch.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_store_migrates_idempotently_and_records_each_run() {
    let Some(scratch) = jobs::testing::ScratchPostgres::create("worker_store").await else {
        return;
    };
    let store = worker::storage::postgres::connect(&scratch.url, 2)
        .await
        .unwrap();
    exercise(&store).await;
    let runs: Vec<(i64, i32, String)> =
        sqlx::query_as("SELECT job_id, attempt, node FROM worker.job_runs ORDER BY attempt")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(runs, expected_runs());
    let name: String = sqlx::query_scalar(
        "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(name, "worker", "connections are named after the app");
    store.pool().close().await;
    scratch.drop_database().await;
}
