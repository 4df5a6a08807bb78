//! Which database the worker runs on, and the worker's own table.

use std::str::FromStr as _;

use jobs::{JobStore as _, JobsError, PgStore, SqliteStore};
use sqlx::{
    PgPool, SqlitePool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use service_runtime::DatabaseUrl;

/// The jobs store and the worker's own pool, on one database.
#[derive(Debug, Clone)]
pub enum Storage {
    /// Production.
    Postgres(PgStore),
    /// Embedded default.
    Sqlite(SqliteStore),
}

impl Storage {
    /// Connects (creating an SQLite file and its folder if needed).
    pub async fn connect(url: &DatabaseUrl, pool_size: u32) -> Result<Self, JobsError> {
        if url.is_postgres() {
            let options = PgConnectOptions::from_str(url.as_str())?.application_name("worker");
            let pool = PgPoolOptions::new()
                .max_connections(pool_size.max(2))
                .acquire_timeout(service_runtime::CONNECT_TIMEOUT)
                .connect_with(options)
                .await?;
            Ok(Self::Postgres(PgStore::new(pool)))
        } else {
            Ok(Self::Sqlite(SqliteStore::new(
                jobs::sqlite::connect(url.as_str()).await?,
            )))
        }
    }

    /// Applies the jobs engine's migrations, then the worker's own.
    pub async fn migrate(&self) -> Result<(), JobsError> {
        match self {
            Self::Postgres(store) => {
                store.migrate().await?;
                worker_migrator(include_str!("../migrations/postgres/300001_worker.sql"))
                    .run(store.pool())
                    .await?;
            }
            // Under the lock file that keeps apps sharing the file from
            // migrating it at the same time.
            Self::Sqlite(store) => {
                jobs::sqlite::run_migrations(
                    store.pool(),
                    &[
                        jobs::sqlite::migrator(),
                        worker_migrator(include_str!("../migrations/sqlite/300001_worker.sql")),
                    ],
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Answers when the database does (the readiness check).
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        match self {
            Self::Postgres(store) => sqlx::query("SELECT 1")
                .execute(store.pool())
                .await
                .map(drop),
            Self::Sqlite(store) => sqlx::query("SELECT 1")
                .execute(store.pool())
                .await
                .map(drop),
        }
    }

    /// The log of `record_run` executions.
    pub fn run_log(&self) -> RunLog {
        match self {
            Self::Postgres(store) => RunLog::Postgres(store.pool().clone()),
            Self::Sqlite(store) => RunLog::Sqlite(store.pool().clone()),
        }
    }
}

fn worker_migrator(sql: &'static str) -> Migrator {
    jobs::embedded_migrator(300_001, "worker", sql)
}

/// Where `record_run` jobs write their runs.
#[derive(Debug, Clone)]
pub enum RunLog {
    /// `worker.job_runs`.
    Postgres(PgPool),
    /// `worker_job_runs`.
    Sqlite(SqlitePool),
}

impl RunLog {
    /// Records one run of one attempt.
    pub async fn record(&self, job_id: i64, attempt: i32, node: &str) -> Result<(), sqlx::Error> {
        match self {
            Self::Postgres(pool) => {
                sqlx::query(
                    "INSERT INTO worker.job_runs (job_id, attempt, node) VALUES ($1, $2, $3)",
                )
                .bind(job_id)
                .bind(attempt)
                .bind(node)
                .execute(pool)
                .await?;
            }
            Self::Sqlite(pool) => {
                sqlx::query("INSERT INTO worker_job_runs (job_id, attempt, node, ran_at) VALUES (?, ?, ?, ?)")
                    .bind(job_id)
                    .bind(attempt)
                    .bind(node)
                    .bind(chrono::Utc::now().timestamp_micros())
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }
}
