//! The worker on the embedded SQLite file: `jobs::SqliteStore` and the
//! table `worker_job_runs`.

use jobs::{JobsError, SqliteStore};

use super::{WorkerStore, worker_migrator};

/// Opens the file, creating it and its folder if needed.
pub async fn connect(url: &str) -> Result<SqliteStore, JobsError> {
    Ok(SqliteStore::new(jobs::sqlite::connect(url).await?))
}

impl WorkerStore for SqliteStore {
    /// Under the lock file that keeps apps sharing the file from migrating
    /// it at the same time.
    async fn migrate_all(&self) -> Result<(), JobsError> {
        jobs::sqlite::run_migrations(
            self.pool(),
            &[
                jobs::sqlite::migrator(),
                worker_migrator([
                    include_str!("../../migrations/sqlite/300001_worker.sql"),
                    include_str!("../../migrations/sqlite/300002_webhooks.sql"),
                ]),
            ],
        )
        .await
    }

    async fn ping(&self) -> Result<(), sqlx::Error> {
        jobs::sqlite::ping(self.pool()).await
    }

    async fn record_run(&self, job_id: i64, attempt: i32, node: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO worker_job_runs (job_id, attempt, node, ran_at) VALUES (?, ?, ?, ?)",
        )
        .bind(job_id)
        .bind(attempt)
        .bind(node)
        .bind(chrono::Utc::now().timestamp_micros())
        .execute(self.pool())
        .await?;
        Ok(())
    }
}
