//! Ingest's database, in the jobs engine's pattern: one trait,
//! [`ReadingStore`], with a PostgreSQL store (schema `ingest`,
//! [`postgres`]) and an embedded SQLite one (tables `ingest_*`,
//! [`sqlite`]) side by side, next to the jobs tables ingest enqueues into.
//! The app picks one at start-up from the database URL and is generic over
//! it from there; both run the same behaviour suites.

pub mod postgres;
pub mod sqlite;
mod tenant_data;

use std::{borrow::Borrow, future::Future};

use chrono::{DateTime, Utc};

pub use postgres::PgReadingStore;
pub use sqlite::SqliteReadingStore;

use crate::{
    reading::Reading,
    sink::{SinkError, WriteReport},
    window::Windowing,
};

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

/// What ingest needs from a database (the jobs engine's `JobStore`
/// pattern: a trait, a PostgreSQL and an SQLite implementation).
pub trait ReadingStore: service_runtime::tenant_data::TenantData {
    /// Applies the jobs engine's migrations (ingest enqueues into its
    /// tables) and then ingest's own; idempotent.
    fn migrate(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Answers when the database does (the readiness check).
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Writes one batch of valid readings, with the aggregation jobs of the
    /// windows it closes, in one transaction (see [`crate::sink`]).
    fn write_batch<R: Borrow<Reading> + Sync>(
        &self,
        readings: &[R],
        windowing: &Windowing,
    ) -> impl Future<Output = Result<WriteReport, SinkError>> + Send;

    /// A page of one series' readings in `[start, end)`, by event time.
    fn read_window(
        &self,
        query: &WindowQuery,
    ) -> impl Future<Output = Result<Vec<StoredReading>, StoreError>> + Send;

    /// Deletes up to `batch` readings observed before `older_than`: every
    /// tenant's, or with `tenant` that tenant's, and then up to `batch` of
    /// its window results starting before it too (its own retention).
    /// Returns (readings, window results) deleted.
    fn prune(
        &self,
        older_than: DateTime<Utc>,
        batch: u32,
        tenant: Option<&str>,
    ) -> impl Future<Output = Result<(u64, u64), StoreError>> + Send;

    /// The (device, metric) series the tenant has (the series quota).
    fn series_of(
        &self,
        tenant: &str,
    ) -> impl Future<Output = Result<Vec<(String, String)>, StoreError>> + Send;

    /// Tenants whose data was deleted: their readings and results are
    /// refused from then on.
    fn deleted_tenants(&self) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Stores a window's result; `false` when an identical one was already
    /// stored (a re-run of the same aggregation changes nothing), and
    /// [`StoreError::TenantDeleted`] for a deleted tenant.
    fn record_result(
        &self,
        result: &StoredResult,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// One tenant's results, oldest window first, keyset-paged.
    fn list_results(
        &self,
        query: &ResultQuery,
    ) -> impl Future<Output = Result<Vec<StoredResult>, StoreError>> + Send;

    /// Stores dead letters, all or none.
    fn dead_letter(
        &self,
        letters: &[DeadLetter],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Dead letters stored so far, oldest first (operators and tests).
    fn dead_letters(
        &self,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<DeadLetterRow>, StoreError>> + Send;

    /// One tenant's dead letters (`None`: those whose tenant is unknown),
    /// newest first, keyset-paged by id.
    fn list_dead_letters(
        &self,
        query: &DeadLetterQuery,
    ) -> impl Future<Output = Result<Vec<StoredDeadLetter>, StoreError>> + Send;

    /// One dead letter, if it exists and is `tenant_id`'s.
    fn get_dead_letter(
        &self,
        tenant_id: Option<&str>,
        id: i64,
    ) -> impl Future<Output = Result<Option<StoredDeadLetter>, StoreError>> + Send;

    /// Removes one dead letter of `tenant_id`; false when there was none.
    fn discard_dead_letter(
        &self,
        tenant_id: Option<&str>,
        id: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Stores `reading` (validated by the caller) and removes the dead
    /// letter it replaces, in one transaction; `None` (and nothing
    /// written) when the letter is not there or not `tenant_id`'s.
    fn resubmit_dead_letter(
        &self,
        tenant_id: Option<&str>,
        id: i64,
        reading: &Reading,
        windowing: &Windowing,
    ) -> impl Future<Output = Result<Option<WriteReport>, SinkError>> + Send;
}

/// Which dead letters to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterQuery {
    /// Whose; `None` for the letters whose tenant is unknown.
    pub tenant_id: Option<String>,
    /// Only letters with a smaller id (the previous page's last).
    pub before_id: Option<i64>,
    /// At most this many.
    pub limit: u32,
}

/// A dead letter as the dead-letter RPCs read it: with its id and arrival.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDeadLetter {
    /// Its id, unique across tenants.
    pub id: i64,
    /// When it was stored.
    pub received_at: DateTime<Utc>,
    /// The letter.
    pub letter: DeadLetterRow,
}

/// A stored dead letter's columns: id, arrival in microseconds, then
/// [`DeadLetterTuple`]'s.
pub(crate) type StoredDeadLetterTuple = (
    i64,
    i64,
    String,
    Option<String>,
    Option<String>,
    String,
    String,
    String,
);

/// Folds stored dead-letter rows, arrival times read back or a corrupt-row
/// error.
pub(crate) fn stored_dead_letters_from_rows(
    rows: Vec<StoredDeadLetterTuple>,
) -> Result<Vec<StoredDeadLetter>, StoreError> {
    rows.into_iter()
        .map(
            |(id, received_at, source, tenant_id, event_id, field, reason, payload)| {
                Ok(StoredDeadLetter {
                    id,
                    received_at: time_from_micros("dead_letter.received_at", received_at)?,
                    letter: DeadLetterRow {
                        source,
                        tenant_id,
                        event_id,
                        field,
                        reason,
                        payload,
                    },
                })
            },
        )
        .collect()
}

/// A result row as both databases return it: window start in microseconds
/// and statistics as JSON text.
pub(crate) type ResultRow = (String, String, String, i64, i32, String, f64, bool, String);

/// Folds result rows into results; a row that does not read back is a
/// corrupt-row error naming its column.
pub(crate) fn results_from_rows(rows: Vec<ResultRow>) -> Result<Vec<StoredResult>, StoreError> {
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

/// Folds dead-letter rows into [`DeadLetterRow`]s.
pub(crate) fn dead_letters_from_rows(rows: Vec<DeadLetterTuple>) -> Vec<DeadLetterRow> {
    rows.into_iter()
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
        .collect()
}

/// The window-result statistics as stored (JSON text).
pub(crate) fn statistics_json(result: &StoredResult) -> Result<String, StoreError> {
    serde_json::to_string(&result.statistics)
        .map_err(|e| corrupt("window_result.statistics", e.to_string()))
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
    /// The tenant's data was deleted; nothing more is stored for it.
    #[error("tenant_id: the tenant {tenant_id:?} was deleted")]
    TenantDeleted {
        /// Whose.
        tenant_id: String,
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
pub(crate) fn time_from_micros(column: &str, micros: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| corrupt(column, format!("{micros} is not a time")))
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

pub(crate) type DeadLetterTuple = (
    String,
    Option<String>,
    Option<String>,
    String,
    String,
    String,
);
