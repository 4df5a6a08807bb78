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

/// A window's statistics as stored (JSON with these field names). Every
/// field is required when read back: a row missing one is corrupt, not a
/// window of zeros.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statistics {
    /// Readings in the window.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Variance.
    pub variance: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Trend slope per second.
    pub trend_slope: f64,
    /// Trend fit.
    pub trend_r_squared: f64,
}

/// A computed window result as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResult {
    /// Tenant.
    pub tenant_id: String,
    /// Device.
    pub device_id: String,
    /// Metric.
    pub metric: String,
    /// Window start.
    pub window_start: DateTime<Utc>,
    /// Window length in seconds.
    pub window_seconds: i32,
    /// The window's statistics (the contract's `WindowStatistics`).
    pub statistics: Statistics,
    /// Anomaly score in [0, 1].
    pub anomaly_score: f64,
    /// Whether the window is anomalous.
    pub anomalous: bool,
    /// Model that scored it.
    pub model_version: String,
}

/// Filters for listing results of one tenant, oldest window first.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultQuery {
    /// Required.
    pub tenant_id: String,
    /// Optional filters.
    pub device_id: Option<String>,
    /// Optional metric.
    pub metric: Option<String>,
    /// Only anomalous windows.
    pub anomalous_only: bool,
    /// Windows starting at or after this.
    pub since: DateTime<Utc>,
    /// Resume after this (window_start, device_id, metric).
    pub after: Option<(DateTime<Utc>, String, String)>,
    /// Most results returned.
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
    Database(sqlx::Error),
    /// A stored row cannot be read back (a bug or a foreign write): an
    /// internal error, never a default value handed to a caller.
    #[error("corrupt row: {column}: {problem}")]
    Corrupt {
        /// `table.column`, e.g. `window_result.statistics`.
        column: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A migration failed.
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Connecting (or the jobs tables) failed.
    #[error("{0}")]
    Jobs(#[from] jobs::JobsError),
}

impl From<sqlx::Error> for StoreError {
    /// Decoding failures are corrupt rows; everything else is the database.
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::ColumnDecode { index, source } => corrupt(&index, source.to_string()),
            sqlx::Error::Decode(source) => corrupt("row", source.to_string()),
            other => Self::Database(other),
        }
    }
}

/// A corrupt-row error for `column`, counted (`ingest.store.corrupt_rows`)
/// so operators see it even when a caller swallows the error.
pub fn corrupt(column: &str, problem: impl Into<String>) -> StoreError {
    opentelemetry::global::meter("platform.ingest")
        .u64_counter("ingest.store.corrupt_rows")
        .with_description("Stored rows that could not be read back")
        .build()
        .add(1, &[]);
    let error = StoreError::Corrupt {
        column: column.to_owned(),
        problem: problem.into(),
    };
    tracing::error!(%error, "a stored row cannot be read");
    error
}

/// Microseconds since the epoch as stored in SQLite, or a corrupt-row
/// error naming `column` (never 1970).
fn time_from_micros(column: &str, micros: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| corrupt(column, format!("{micros} is not a time")))
}

impl IngestStore {
    /// Connects (creating an SQLite file and its folder if needed).
    pub async fn connect(url: &DatabaseUrl, pool_size: u32) -> Result<Self, StoreError> {
        if url.is_postgres() {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(pool_size.max(2))
                .acquire_timeout(service_runtime::CONNECT_TIMEOUT)
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
            // Under the lock file that keeps apps sharing the file from
            // migrating it at the same time.
            Self::Sqlite(pool) => {
                jobs::sqlite::run_migrations(
                    pool,
                    &[jobs::sqlite::migrator(), crate::sink::sqlite::migrator()],
                )
                .await?;
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
                        Ok((id, value, time_from_micros("reading.observed_at", at)?))
                    })
                    .collect::<Result<_, StoreError>>()?
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
            Self::Postgres(pool) => sqlx::query(
                "DELETE FROM ingest.reading WHERE (tenant_id, event_id) IN (
                        SELECT tenant_id, event_id FROM ingest.reading WHERE observed_at < $1
                        ORDER BY observed_at LIMIT $2)",
            )
            .bind(older_than)
            .bind(i64::from(batch))
            .execute(pool)
            .await?
            .rows_affected(),
            Self::Sqlite(pool) => sqlx::query(
                "DELETE FROM ingest_reading WHERE (tenant_id, event_id) IN (
                        SELECT tenant_id, event_id FROM ingest_reading WHERE observed_at < ?1
                        ORDER BY observed_at LIMIT ?2)",
            )
            .bind(older_than.timestamp_micros())
            .bind(i64::from(batch))
            .execute(pool)
            .await?
            .rows_affected(),
        };
        Ok(result)
    }
}

type ResultRow = (String, String, String, i64, i32, String, f64, bool, String);

impl IngestStore {
    /// Stores a window's result; `false` when an identical one was already
    /// stored (a re-run of the same aggregation changes nothing).
    pub async fn record_result(&self, result: &StoredResult) -> Result<bool, StoreError> {
        let statistics = serde_json::to_string(&result.statistics)
            .map_err(|e| corrupt("window_result.statistics", e.to_string()))?;
        let changed = match self {
            Self::Postgres(pool) => sqlx::query(
                "INSERT INTO ingest.window_result (tenant_id, device_id, metric, window_start, window_seconds,
                                                  statistics, anomaly_score, anomalous, model_version)
                 VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9)
                 ON CONFLICT (tenant_id, device_id, metric, window_start, window_seconds) DO UPDATE
                 SET statistics = excluded.statistics, anomaly_score = excluded.anomaly_score,
                     anomalous = excluded.anomalous, model_version = excluded.model_version, computed_at = now()
                 WHERE (ingest.window_result.statistics, ingest.window_result.anomaly_score,
                        ingest.window_result.anomalous, ingest.window_result.model_version)
                   IS DISTINCT FROM (excluded.statistics, excluded.anomaly_score, excluded.anomalous, excluded.model_version)",
            )
            .bind(&result.tenant_id)
            .bind(&result.device_id)
            .bind(&result.metric)
            .bind(result.window_start)
            .bind(result.window_seconds)
            .bind(&statistics)
            .bind(result.anomaly_score)
            .bind(result.anomalous)
            .bind(&result.model_version)
            .execute(pool)
            .await?
            .rows_affected(),
            Self::Sqlite(pool) => sqlx::query(
                "INSERT INTO ingest_window_result (tenant_id, device_id, metric, window_start, window_seconds,
                                                  statistics, anomaly_score, anomalous, model_version, computed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, json(?6), ?7, ?8, ?9, ?10)
                 ON CONFLICT (tenant_id, device_id, metric, window_start, window_seconds) DO UPDATE
                 SET statistics = excluded.statistics, anomaly_score = excluded.anomaly_score,
                     anomalous = excluded.anomalous, model_version = excluded.model_version,
                     computed_at = excluded.computed_at
                 WHERE statistics IS NOT excluded.statistics OR anomaly_score IS NOT excluded.anomaly_score
                    OR anomalous IS NOT excluded.anomalous OR model_version IS NOT excluded.model_version",
            )
            .bind(&result.tenant_id)
            .bind(&result.device_id)
            .bind(&result.metric)
            .bind(result.window_start.timestamp_micros())
            .bind(result.window_seconds)
            .bind(&statistics)
            .bind(result.anomaly_score)
            .bind(result.anomalous)
            .bind(&result.model_version)
            .bind(Utc::now().timestamp_micros())
            .execute(pool)
            .await?
            .rows_affected(),
        };
        Ok(changed == 1)
    }

    /// One tenant's results, oldest window first, keyset-paged.
    pub async fn list_results(&self, query: &ResultQuery) -> Result<Vec<StoredResult>, StoreError> {
        let (after_at, after_device, after_metric) = query
            .after
            .clone()
            .map_or((None, None, None), |(at, d, m)| {
                (Some(at), Some(d), Some(m))
            });
        let limit = i64::from(query.limit);
        let rows: Vec<ResultRow> = match self {
            Self::Postgres(pool) => sqlx::query_as(
                "SELECT tenant_id, device_id, metric, (extract(epoch FROM window_start) * 1000000)::bigint,
                        window_seconds, statistics::text, anomaly_score, anomalous, model_version
                 FROM ingest.window_result
                 WHERE tenant_id = $1 AND ($2::text IS NULL OR device_id = $2) AND ($3::text IS NULL OR metric = $3)
                   AND (NOT $4 OR anomalous) AND window_start >= $5
                   AND ($6::timestamptz IS NULL OR (window_start, device_id, metric) > ($6, $7, $8))
                 ORDER BY window_start, device_id, metric LIMIT $9",
            )
            .bind(&query.tenant_id)
            .bind(&query.device_id)
            .bind(&query.metric)
            .bind(query.anomalous_only)
            .bind(query.since)
            .bind(after_at)
            .bind(after_device)
            .bind(after_metric)
            .bind(limit)
            .fetch_all(pool)
            .await?,
            Self::Sqlite(pool) => sqlx::query_as(
                "SELECT tenant_id, device_id, metric, window_start, window_seconds, statistics, anomaly_score,
                        anomalous, model_version
                 FROM ingest_window_result
                 WHERE tenant_id = ?1 AND (?2 IS NULL OR device_id = ?2) AND (?3 IS NULL OR metric = ?3)
                   AND (NOT ?4 OR anomalous) AND window_start >= ?5
                   AND (?6 IS NULL OR (window_start, device_id, metric) > (?6, ?7, ?8))
                 ORDER BY window_start, device_id, metric LIMIT ?9",
            )
            .bind(&query.tenant_id)
            .bind(&query.device_id)
            .bind(&query.metric)
            .bind(query.anomalous_only)
            .bind(query.since.timestamp_micros())
            .bind(after_at.map(|at| at.timestamp_micros()))
            .bind(after_device)
            .bind(after_metric)
            .bind(limit)
            .fetch_all(pool)
            .await?,
        };
        rows.into_iter()
            .map(
                |(
                    tenant_id,
                    device_id,
                    metric,
                    start,
                    window_seconds,
                    statistics,
                    anomaly_score,
                    anomalous,
                    model_version,
                )| {
                    Ok(StoredResult {
                        tenant_id,
                        device_id,
                        metric,
                        window_start: time_from_micros("window_result.window_start", start)?,
                        window_seconds,
                        statistics: serde_json::from_str(&statistics)
                            .map_err(|e| corrupt("window_result.statistics", e.to_string()))?,
                        anomaly_score,
                        anomalous,
                        model_version,
                    })
                },
            )
            .collect()
    }
}

/// A message that can never be stored, kept with the field at fault so an
/// operator can inspect, fix and replay it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Where it came from (`grpc`, `nats`).
    pub source: &'static str,
    /// Whose it is: the tenant it named or, for NATS, the tenant of its
    /// subject; `None` only when neither is known.
    pub tenant_id: Option<String>,
    /// Its event id, when it had one.
    pub event_id: Option<String>,
    /// The field at fault.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
    /// The message as received.
    pub payload: serde_json::Value,
}

impl IngestStore {
    /// Writes one batch of valid readings (see [`crate::sink`]).
    pub async fn write_batch<R: std::borrow::Borrow<crate::reading::Reading> + Sync>(
        &self,
        readings: &[R],
        windowing: &crate::window::Windowing,
    ) -> Result<crate::sink::WriteReport, crate::sink::SinkError> {
        match self {
            Self::Postgres(pool) => crate::sink::write_batch(pool, readings, windowing).await,
            Self::Sqlite(pool) => crate::sink::sqlite::write_batch(pool, readings, windowing).await,
        }
    }

    /// Stores dead letters, all or none.
    pub async fn dead_letter(&self, letters: &[DeadLetter]) -> Result<(), StoreError> {
        if letters.is_empty() {
            return Ok(());
        }
        match self {
            Self::Postgres(pool) => {
                let mut sources = Vec::with_capacity(letters.len());
                let mut tenants = Vec::with_capacity(letters.len());
                let mut event_ids = Vec::with_capacity(letters.len());
                let mut fields = Vec::with_capacity(letters.len());
                let mut reasons = Vec::with_capacity(letters.len());
                let mut payloads = Vec::with_capacity(letters.len());
                for letter in letters {
                    sources.push(letter.source);
                    tenants.push(letter.tenant_id.as_deref());
                    event_ids.push(letter.event_id.as_deref());
                    fields.push(letter.field.as_str());
                    reasons.push(letter.reason.as_str());
                    payloads.push(letter.payload.to_string());
                }
                sqlx::query(
                    "INSERT INTO ingest.dead_letter (source, event_id, field, reason, payload, tenant_id)
                     SELECT source, event_id, field, reason, payload::jsonb, tenant_id
                     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
                          AS input(source, event_id, field, reason, payload, tenant_id)",
                )
                .bind(&sources)
                .bind(&event_ids)
                .bind(&fields)
                .bind(&reasons)
                .bind(&payloads)
                .bind(&tenants)
                .execute(pool)
                .await?;
            }
            Self::Sqlite(pool) => {
                let now = Utc::now().timestamp_micros();
                let mut tx = pool.begin().await?;
                for letter in letters {
                    sqlx::query(
                        "INSERT INTO ingest_dead_letter (received_at, source, event_id, field, reason, payload, tenant_id)
                         VALUES (?, ?, ?, ?, ?, ?, ?)",
                    )
                    .bind(now)
                    .bind(letter.source)
                    .bind(letter.event_id.as_deref())
                    .bind(&letter.field)
                    .bind(&letter.reason)
                    .bind(letter.payload.to_string())
                    .bind(letter.tenant_id.as_deref())
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Dead letters stored so far (operators and tests).
    pub async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetterRow>, StoreError> {
        let rows: Vec<DeadLetterTuple> = match self {
            Self::Postgres(pool) => {
                sqlx::query_as(
                    "SELECT source, tenant_id, event_id, field, reason, payload::text
                     FROM ingest.dead_letter ORDER BY id LIMIT $1",
                )
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
            }
            Self::Sqlite(pool) => {
                sqlx::query_as(
                    "SELECT source, tenant_id, event_id, field, reason, payload
                     FROM ingest_dead_letter ORDER BY id LIMIT ?",
                )
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
            }
        };
        Ok(rows
            .into_iter()
            .map(
                |(source, tenant_id, event_id, field, reason, payload)| DeadLetterRow {
                    source,
                    tenant_id,
                    event_id,
                    field,
                    reason,
                    payload,
                },
            )
            .collect())
    }
}

/// A stored dead letter, as operators read it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterRow {
    /// `grpc` or `nats`.
    pub source: String,
    /// Whose it is, when known.
    pub tenant_id: Option<String>,
    /// Its event id, when it had one.
    pub event_id: Option<String>,
    /// The field at fault.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
    /// The message as received (JSON text).
    pub payload: String,
}

type DeadLetterTuple = (
    String,
    Option<String>,
    Option<String>,
    String,
    String,
    String,
);
