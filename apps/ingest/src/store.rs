//! Ingest's database: PostgreSQL (schema `ingest`) or the embedded SQLite
//! file (tables `ingest_*`), next to the jobs tables it enqueues into.

use chrono::{DateTime, Utc};
use service_runtime::DatabaseUrl;
use sqlx::{PgPool, SqlitePool};

/// One stored reading as a window read returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredReading {
    /// Event id.
    pub event_id: String,
    /// Value.
    pub value: f64,
    /// Event time.
    pub observed_at: DateTime<Utc>,
}

/// Which series and range a window read covers, and where a page starts.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowQuery {
    /// Tenant.
    pub tenant_id: String,
    /// Device.
    pub device_id: String,
    /// Metric.
    pub metric: String,
    /// Inclusive start.
    pub start: DateTime<Utc>,
    /// Exclusive end.
    pub end: DateTime<Utc>,
    /// Resume after this (observed_at, event_id).
    pub after: Option<(DateTime<Utc>, String)>,
    /// Most readings returned.
    pub limit: u32,
}

/// The store, on either database.
#[derive(Debug, Clone)]
pub enum IngestStore {
    /// Production.
    Postgres(PgPool),
    /// Embedded default.
    Sqlite(SqlitePool),
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed or is unreachable.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Connecting (or the jobs tables) failed.
    #[error("{0}")]
    Jobs(#[from] jobs::JobsError),
}

impl IngestStore {
    /// Connects (creating an SQLite file and its folder if needed).
    pub async fn connect(url: &DatabaseUrl, pool_size: u32) -> Result<Self, StoreError> {
        if url.is_postgres() {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(pool_size.max(2))
                .acquire_timeout(std::time::Duration::from_secs(5))
                .connect(url.as_str())
                .await?;
            Ok(Self::Postgres(pool))
        } else {
            Ok(Self::Sqlite(jobs::sqlite::connect(url.as_str()).await?))
        }
    }

    /// Applies the jobs engine's migrations (ingest enqueues into its
    /// tables) and then ingest's own.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Self::Postgres(pool) => {
                jobs::postgres::migrator().run(pool).await?;
                crate::sink::migrator().run(pool).await?;
            }
            Self::Sqlite(pool) => {
                jobs::sqlite::migrator().run(pool).await?;
                crate::sink::sqlite::migrator().run(pool).await?;
            }
        }
        Ok(())
    }

    /// Answers when the database does (the readiness check).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Self::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop)?,
            Self::Sqlite(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop)?,
        }
        Ok(())
    }

    /// A page of one series' readings in `[start, end)`, by event time.
    pub async fn read_window(&self, query: &WindowQuery) -> Result<Vec<StoredReading>, StoreError> {
        let (after_at, after_id) = query
            .after
            .clone()
            .map_or((None, None), |(at, id)| (Some(at), Some(id)));
        let limit = i64::from(query.limit);
        let rows: Vec<(String, f64, DateTime<Utc>)> = match self {
            Self::Postgres(pool) => {
                sqlx::query_as(
                    "SELECT event_id, value, observed_at FROM ingest.reading
                     WHERE tenant_id = $1 AND device_id = $2 AND metric = $3
                       AND observed_at >= $4 AND observed_at < $5
                       AND ($6::timestamptz IS NULL OR (observed_at, event_id) > ($6, $7))
                     ORDER BY observed_at, event_id LIMIT $8",
                )
                .bind(&query.tenant_id)
                .bind(&query.device_id)
                .bind(&query.metric)
                .bind(query.start)
                .bind(query.end)
                .bind(after_at)
                .bind(after_id)
                .bind(limit)
                .fetch_all(pool)
                .await?
            }
            Self::Sqlite(pool) => {
                let rows: Vec<(String, f64, i64)> = sqlx::query_as(
                    "SELECT event_id, value, observed_at FROM ingest_reading
                     WHERE tenant_id = ?1 AND device_id = ?2 AND metric = ?3
                       AND observed_at >= ?4 AND observed_at < ?5
                       AND (?6 IS NULL OR observed_at > ?6 OR (observed_at = ?6 AND event_id > ?7))
                     ORDER BY observed_at, event_id LIMIT ?8",
                )
                .bind(&query.tenant_id)
                .bind(&query.device_id)
                .bind(&query.metric)
                .bind(query.start.timestamp_micros())
                .bind(query.end.timestamp_micros())
                .bind(after_at.map(|at| at.timestamp_micros()))
                .bind(after_id)
                .bind(limit)
                .fetch_all(pool)
                .await?;
                rows.into_iter()
                    .map(|(id, value, at)| {
                        (
                            id,
                            value,
                            DateTime::from_timestamp_micros(at).unwrap_or_default(),
                        )
                    })
                    .collect()
            }
        };
        Ok(rows
            .into_iter()
            .map(|(event_id, value, observed_at)| StoredReading {
                event_id,
                value,
                observed_at,
            })
            .collect())
    }

    /// Deletes up to `batch` readings observed before `older_than`.
    pub async fn prune(&self, older_than: DateTime<Utc>, batch: u32) -> Result<u64, StoreError> {
        let result = match self {
            Self::Postgres(pool) => {
                sqlx::query(
                    "DELETE FROM ingest.reading WHERE event_id IN (
                        SELECT event_id FROM ingest.reading WHERE observed_at < $1 ORDER BY observed_at LIMIT $2)",
                )
                .bind(older_than)
                .bind(i64::from(batch))
                .execute(pool)
                .await?
                .rows_affected()
            }
            Self::Sqlite(pool) => {
                sqlx::query(
                    "DELETE FROM ingest_reading WHERE event_id IN (
                        SELECT event_id FROM ingest_reading WHERE observed_at < ?1 ORDER BY observed_at LIMIT ?2)",
                )
                .bind(older_than.timestamp_micros())
                .bind(i64::from(batch))
                .execute(pool)
                .await?
                .rows_affected()
            }
        };
        Ok(result)
    }
}
