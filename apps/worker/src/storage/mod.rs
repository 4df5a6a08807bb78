//! Which database the worker runs on, in the jobs engine's pattern: the
//! trait [`WorkerStore`] extends `jobs::JobStore` with what the worker adds
//! (its own migrations and table), implemented for `jobs::PgStore` in
//! [`postgres`] and `jobs::SqliteStore` in [`sqlite`], side by side. The app
//! picks one at start-up from the database URL and is generic from there.

pub mod postgres;
pub mod sqlite;

use std::future::Future;

use jobs::{JobStore, JobsError};

/// What the worker needs from its database beyond the jobs tables.
pub trait WorkerStore: JobStore + crate::webhooks::WebhookStore {
    /// Applies the jobs engine's migrations, then the worker's own
    /// (versions 300000+); idempotent.
    fn migrate_all(&self) -> impl Future<Output = Result<(), JobsError>> + Send;

    /// Answers when the database does (the readiness check).
    fn ping(&self) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// Records one run of one attempt in the worker's `job_runs` table
    /// (`record_run` jobs: the crash tests count runs per job).
    fn record_run(
        &self,
        job_id: i64,
        attempt: i32,
        node: &str,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

/// The worker's migrations on one database: its run log, then webhooks.
fn worker_migrator(sql: [&'static str; 2]) -> sqlx::migrate::Migrator {
    jobs::embedded_migrations(&[(300_001, "worker", sql[0]), (300_002, "webhooks", sql[1])])
}
