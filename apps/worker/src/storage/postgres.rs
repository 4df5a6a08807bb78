//! The worker on PostgreSQL: `jobs::PgStore` and schema `worker`.

use jobs::{JobStore as _, JobsError, PgStore};

use super::{WorkerStore, worker_migrator};

/// Connects a pool of `pool_size` connections named `worker`.
pub async fn connect(url: &str, pool_size: u32) -> Result<PgStore, JobsError> {
    let pool =
        jobs::postgres::connect(url, "worker", pool_size, service_runtime::CONNECT_TIMEOUT).await?;
    Ok(PgStore::new(pool))
}

impl WorkerStore for PgStore {
    async fn migrate_all(&self) -> Result<(), JobsError> {
        self.migrate().await?;
        worker_migrator(include_str!("../../migrations/postgres/300001_worker.sql"))
            .run(self.pool())
            .await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), sqlx::Error> {
        jobs::postgres::ping(self.pool()).await
    }

    async fn record_run(&self, job_id: i64, attempt: i32, node: &str) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO worker.job_runs (job_id, attempt, node) VALUES ($1, $2, $3)")
            .bind(job_id)
            .bind(attempt)
            .bind(node)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
