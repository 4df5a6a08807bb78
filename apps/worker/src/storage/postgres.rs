//! The worker on PostgreSQL: `jobs::PgStore` and schema `worker`.

use jobs::{JobStore as _, JobsError, PgStore};

use super::{WorkerStore, worker_migrator};

/// Connects a pool of `pool_size` connections named `worker`.
pub async fn connect(url: &str, pool_size: u32) -> Result<PgStore, JobsError> {
    let pool =
        jobs::postgres::connect(url, "worker", pool_size, service_runtime::CONNECT_TIMEOUT).await?;
    Ok(PgStore::new(pool))
}

/// Connects as the login of a deployment whose migrations Job migrates
/// (`WORKER_MIGRATE_AT_START=false`): waits until every migration this
/// build knows is applied.
pub async fn connect_when_migrated(url: &str, pool_size: u32) -> Result<PgStore, JobsError> {
    let store = connect(url, pool_size).await?;
    jobs::postgres::wait_for_migrations(
        store.pool(),
        &[jobs::postgres::migrator(), worker_migrator(MIGRATIONS)],
        "worker",
    )
    .await;
    Ok(store)
}

/// The worker's own migrations (versions 300000+).
const MIGRATIONS: [&str; 2] = [
    include_str!("../../migrations/postgres/300001_worker.sql"),
    include_str!("../../migrations/postgres/300002_webhooks.sql"),
];

/// Least privilege: with the migrator credential at `migrator_url`,
/// applies every migration and gives the user of `app_url` the role
/// `<database>_worker` (its own schema and the jobs tables; nothing of
/// ingest's), then connects as that user.
pub async fn provision(
    migrator_url: &str,
    app_url: &str,
    pool_size: u32,
) -> Result<PgStore, JobsError> {
    let migrator = jobs::postgres::connect(
        migrator_url,
        "worker-migrator",
        2,
        service_runtime::CONNECT_TIMEOUT,
    )
    .await?;
    PgStore::new(migrator.clone()).migrate_all().await?;
    let login = jobs::roles::login_of(app_url)?;
    jobs::roles::provision_app_role(
        &migrator,
        "worker",
        Some("worker"),
        jobs::roles::JobsAccess::Run,
        &login,
    )
    .await?;
    migrator.close().await;
    connect(app_url, pool_size).await
}

impl WorkerStore for PgStore {
    async fn migrate_all(&self) -> Result<(), JobsError> {
        self.migrate().await?;
        worker_migrator(MIGRATIONS).run(self.pool()).await?;
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
