//! The embedded default: an SQLite file (tables `ingest_*`) shared with
//! the jobs tables. A batch is one `BEGIN IMMEDIATE` transaction, so
//! batches are written one at a time and need no lock order; readings go
//! in multi-row statements.

use std::{
    borrow::Borrow,
    collections::{BTreeMap, HashSet},
};

use chrono::{DateTime, Utc};
use sqlx::{SqliteConnection, SqlitePool};

use super::{
    DeadLetter, DeadLetterQuery, DeadLetterRow, DeadLetterTuple, ReadingStore, ResultQuery,
    ResultRow, StoreError, StoredDeadLetter, StoredDeadLetterTuple, StoredReading, StoredResult,
    WindowQuery, dead_letters_from_rows, results_from_rows, statistics_json,
    stored_dead_letters_from_rows, time_from_micros,
};
use crate::{
    reading::Reading,
    sink::{self, Series, SinkError, WriteReport},
    window::Windowing,
};

/// Readings per `INSERT` statement: 8 parameters each, well under
/// SQLite's 32,766.
const READINGS_PER_INSERT: usize = 500;

/// Series per watermark statement: 4 parameters each.
const SERIES_PER_STATEMENT: usize = 1_000;

/// Dead letters per `INSERT` statement: 7 parameters each.
const LETTERS_PER_INSERT: usize = 500;

/// The ingest app's SQLite migrations (versions 200000+).
pub fn migrator() -> sqlx::migrate::Migrator {
    jobs::embedded_migrations(&[
        (
            200_001,
            "ingest",
            include_str!("../../migrations/sqlite/200001_ingest.sql"),
        ),
        (
            200_002,
            "ingest tenant keys",
            include_str!("../../migrations/sqlite/200002_tenant_keys.sql"),
        ),
        (
            200_003,
            "ingest deleted tenants",
            include_str!("../../migrations/sqlite/200003_deleted_tenants.sql"),
        ),
    ])
}

/// A [`ReadingStore`] on an SQLite pool.
#[derive(Debug, Clone)]
pub struct SqliteReadingStore {
    pub(super) pool: SqlitePool,
}

impl SqliteReadingStore {
    /// Opens the file, creating it and its folder if needed (see
    /// `jobs::sqlite::connect`).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Ok(Self::new(jobs::sqlite::connect(url).await?))
    }

    /// Wraps a pool.
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }

    /// The pool, for the jobs store on the same file.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

impl ReadingStore for SqliteReadingStore {
    /// Under the lock file that keeps apps sharing the file from migrating
    /// it at the same time.
    async fn migrate(&self) -> Result<(), StoreError> {
        jobs::sqlite::run_migrations(&self.pool, &[jobs::sqlite::migrator(), migrator()]).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(jobs::sqlite::ping(&self.pool).await?)
    }

    async fn write_batch<R: Borrow<Reading> + Sync>(
        &self,
        readings: &[R],
        windowing: &Windowing,
    ) -> Result<WriteReport, SinkError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let report = write_in(&mut tx, readings, windowing).await?;
        tx.commit().await?;
        Ok(report)
    }

    async fn read_window(&self, query: &WindowQuery) -> Result<Vec<StoredReading>, StoreError> {
        let (after_at, after_id) = query
            .after
            .clone()
            .map_or((None, None), |(at, id)| (Some(at), Some(id)));
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
        .bind(i64::from(query.limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(event_id, value, at)| {
                Ok(StoredReading {
                    event_id,
                    value,
                    observed_at: time_from_micros("reading.observed_at", at)?,
                })
            })
            .collect()
    }

    async fn prune(
        &self,
        older_than: DateTime<Utc>,
        batch: u32,
        tenant: Option<&str>,
    ) -> Result<(u64, u64), StoreError> {
        let readings = sqlx::query(
            "DELETE FROM ingest_reading WHERE (tenant_id, event_id) IN (
                    SELECT tenant_id, event_id FROM ingest_reading
                    WHERE observed_at < ?1 AND (?3 IS NULL OR tenant_id = ?3)
                    ORDER BY observed_at LIMIT ?2)",
        )
        .bind(older_than.timestamp_micros())
        .bind(i64::from(batch))
        .bind(tenant)
        .execute(&self.pool)
        .await?
        .rows_affected();
        let Some(tenant) = tenant else {
            return Ok((readings, 0));
        };
        let results = sqlx::query(
            "DELETE FROM ingest_window_result
             WHERE (tenant_id, device_id, metric, window_start, window_seconds) IN (
                    SELECT tenant_id, device_id, metric, window_start, window_seconds
                    FROM ingest_window_result WHERE tenant_id = ?3 AND window_start < ?1
                    ORDER BY window_start LIMIT ?2)",
        )
        .bind(older_than.timestamp_micros())
        .bind(i64::from(batch))
        .bind(tenant)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok((readings, results))
    }

    async fn series_of(&self, tenant: &str) -> Result<Vec<(String, String)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT device_id, metric FROM ingest_series_watermark WHERE tenant_id = ?1",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn deleted_tenants(&self) -> Result<Vec<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT tenant_id FROM ingest_deleted_tenant ORDER BY tenant_id")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn record_result(&self, result: &StoredResult) -> Result<bool, StoreError> {
        // One writer at a time: a deletion commits before or after this.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let deleted: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM ingest_deleted_tenant WHERE tenant_id = ?1)",
        )
        .bind(&result.tenant_id)
        .fetch_one(&mut *tx)
        .await?;
        if deleted {
            return Err(StoreError::TenantDeleted {
                tenant_id: result.tenant_id.clone(),
            });
        }
        let changed = sqlx::query(
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
        .bind(statistics_json(result)?)
        .bind(result.anomaly_score)
        .bind(result.anomalous)
        .bind(&result.model_version)
        .bind(Utc::now().timestamp_micros())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(changed == 1)
    }

    async fn list_results(&self, query: &ResultQuery) -> Result<Vec<StoredResult>, StoreError> {
        let (after_at, after_device, after_metric) = query
            .after
            .clone()
            .map_or((None, None, None), |(at, d, m)| {
                (Some(at), Some(d), Some(m))
            });
        let rows: Vec<ResultRow> = sqlx::query_as(
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
        .bind(i64::from(query.limit))
        .fetch_all(&self.pool)
        .await?;
        results_from_rows(rows)
    }

    async fn dead_letter(&self, letters: &[DeadLetter]) -> Result<(), StoreError> {
        if letters.is_empty() {
            return Ok(());
        }
        let now = Utc::now().timestamp_micros();
        let mut tx = self.pool.begin().await?;
        for chunk in letters.chunks(LETTERS_PER_INSERT) {
            let sql = format!(
                "INSERT INTO ingest_dead_letter (received_at, source, event_id, field, reason, payload, tenant_id)
                 VALUES {}",
                jobs::sqlite::placeholders(chunk.len(), 7)
            );
            let mut query = sqlx::query(&sql);
            for letter in chunk {
                query = query
                    .bind(now)
                    .bind(letter.source)
                    .bind(letter.event_id.as_deref())
                    .bind(&letter.field)
                    .bind(&letter.reason)
                    .bind(letter.payload.to_string())
                    .bind(letter.tenant_id.as_deref());
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetterRow>, StoreError> {
        let rows: Vec<DeadLetterTuple> = sqlx::query_as(
            "SELECT source, tenant_id, event_id, field, reason, payload
             FROM ingest_dead_letter ORDER BY id LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(dead_letters_from_rows(rows))
    }

    async fn list_dead_letters(
        &self,
        query: &DeadLetterQuery,
    ) -> Result<Vec<StoredDeadLetter>, StoreError> {
        let sql = format!(
            "SELECT {DEAD_LETTER_COLUMNS} FROM ingest_dead_letter
             WHERE {} AND id < ?2 ORDER BY id DESC LIMIT ?3",
            letter_of(query.tenant_id.as_deref())
        );
        let rows: Vec<StoredDeadLetterTuple> = sqlx::query_as(&sql)
            .bind(query.tenant_id.as_deref())
            .bind(query.before_id.unwrap_or(i64::MAX))
            .bind(i64::from(query.limit))
            .fetch_all(&self.pool)
            .await?;
        stored_dead_letters_from_rows(rows)
    }

    async fn get_dead_letter(
        &self,
        tenant_id: Option<&str>,
        id: i64,
    ) -> Result<Option<StoredDeadLetter>, StoreError> {
        let sql = format!(
            "SELECT {DEAD_LETTER_COLUMNS} FROM ingest_dead_letter WHERE {} AND id = ?2",
            letter_of(tenant_id)
        );
        let rows: Vec<StoredDeadLetterTuple> = sqlx::query_as(&sql)
            .bind(tenant_id)
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        Ok(stored_dead_letters_from_rows(rows)?.pop())
    }

    async fn discard_dead_letter(
        &self,
        tenant_id: Option<&str>,
        id: i64,
    ) -> Result<bool, StoreError> {
        Ok(delete_letter(&self.pool, tenant_id, id).await? > 0)
    }

    async fn resubmit_dead_letter(
        &self,
        tenant_id: Option<&str>,
        id: i64,
        reading: &Reading,
        windowing: &Windowing,
    ) -> Result<Option<WriteReport>, SinkError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        if delete_letter(&mut *tx, tenant_id, id).await? == 0 {
            return Ok(None);
        }
        let report = write_in(&mut tx, std::slice::from_ref(reading), windowing).await?;
        tx.commit().await?;
        Ok(Some(report))
    }
}

/// Deletes dead letter `id` of `tenant_id`; how many rows went (0 or 1).
async fn delete_letter<'c>(
    executor: impl sqlx::Executor<'c, Database = sqlx::Sqlite>,
    tenant_id: Option<&str>,
    id: i64,
) -> Result<u64, sqlx::Error> {
    let sql = format!(
        "DELETE FROM ingest_dead_letter WHERE {} AND id = ?2",
        letter_of(tenant_id)
    );
    Ok(sqlx::query(&sql)
        .bind(tenant_id)
        .bind(id)
        .execute(executor)
        .await?
        .rows_affected())
}

/// A stored dead letter's columns, as [`StoredDeadLetterTuple`] reads them.
const DEAD_LETTER_COLUMNS: &str =
    "id, received_at, source, tenant_id, event_id, field, reason, payload";

/// The predicate holding a dead-letter statement to one tenant (`?1`), or
/// to the letters whose tenant is unknown; either way the `(tenant_id, id)`
/// index answers it.
fn letter_of(tenant_id: Option<&str>) -> &'static str {
    match tenant_id {
        Some(_) => "tenant_id = ?1",
        None => "tenant_id IS NULL AND ?1 IS NULL",
    }
}

/// One batch in an open write transaction: the new readings, then their
/// series' watermarks, then the jobs of the windows they close.
async fn write_in<R: Borrow<Reading> + Sync>(
    conn: &mut SqliteConnection,
    readings: &[R],
    windowing: &Windowing,
) -> Result<WriteReport, SinkError> {
    let stored = insert_readings(conn, readings).await?;
    let (by_series, mut report) = sink::fold_stored(readings, &stored);
    if report.inserted == 0 {
        return Ok(report);
    }
    let series: Vec<&Series> = by_series.keys().collect();
    let before = read_watermarks(conn, &series).await?;
    let (marks, jobs) = sink::plan(&by_series, &before, windowing)?;
    advance_watermarks(conn, &series, &marks).await?;
    if !jobs.is_empty() {
        let enqueued = jobs::sqlite::insert_many(conn, &jobs).await?;
        report.jobs_enqueued = enqueued.iter().filter(|i| !i.duplicate).count();
    }
    Ok(report)
}

/// Inserts the readings not stored yet, [`READINGS_PER_INSERT`] to a
/// statement, and returns their keys (tenant, event id), each once, in
/// batch order.
///
/// The keys come from a read of the few already stored, not from
/// `RETURNING`: sqlx hands every returned row from SQLite's thread to the
/// task separately, and that wake-up per row cost more than the insert
/// (`perf`: 40% of the time in futex wake and switch). Within the
/// `BEGIN IMMEDIATE` transaction no other writer can change the answer.
async fn insert_readings<R: Borrow<Reading>>(
    conn: &mut SqliteConnection,
    readings: &[R],
) -> Result<Vec<(String, String)>, SinkError> {
    let already = stored_keys(conn, readings).await?;
    let existing: HashSet<(&str, &str)> = already
        .iter()
        .map(|(tenant, event)| (tenant.as_str(), event.as_str()))
        .collect();
    let now = Utc::now().timestamp_micros();
    let mut inserted = 0;
    for chunk in readings.chunks(READINGS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO ingest_reading (event_id, tenant_id, device_id, metric, value, observed_at, attributes, ingested_at)
             VALUES {}
             ON CONFLICT (tenant_id, event_id) DO NOTHING",
            jobs::sqlite::placeholders(chunk.len(), 8)
        );
        let mut query = sqlx::query(&sql);
        for r in chunk {
            let r: &Reading = r.borrow();
            query = query
                .bind(&r.event_id)
                .bind(&r.tenant_id)
                .bind(&r.device_id)
                .bind(&r.metric)
                .bind(r.value)
                .bind(r.observed_at.timestamp_micros())
                .bind(serde_json::json!(r.attributes).to_string())
                .bind(now);
        }
        inserted += query.execute(&mut *conn).await?.rows_affected();
    }
    let mut new = HashSet::with_capacity(readings.len());
    let stored: Vec<(String, String)> = readings
        .iter()
        .map(|r| {
            let r: &Reading = r.borrow();
            (r.tenant_id.as_str(), r.event_id.as_str())
        })
        .filter(|key| !existing.contains(key) && new.insert(*key))
        .map(|(tenant, event)| (tenant.to_owned(), event.to_owned()))
        .collect();
    if stored.len() as u64 != inserted {
        return Err(SinkError::Database(sqlx::Error::Protocol(format!(
            "{inserted} readings inserted where {} were new",
            stored.len()
        ))));
    }
    Ok(stored)
}

/// The keys (tenant, event id) of the batch's readings already stored.
async fn stored_keys<R: Borrow<Reading>>(
    conn: &mut SqliteConnection,
    readings: &[R],
) -> Result<HashSet<(String, String)>, SinkError> {
    let mut existing = HashSet::new();
    for chunk in readings.chunks(READINGS_PER_INSERT) {
        let sql = format!(
            "SELECT r.tenant_id, r.event_id FROM (VALUES {}) AS k
             JOIN ingest_reading r ON r.tenant_id = k.column1 AND r.event_id = k.column2",
            jobs::sqlite::placeholders(chunk.len(), 2)
        );
        let mut query = sqlx::query_as::<_, (String, String)>(&sql);
        for r in chunk {
            let r: &Reading = r.borrow();
            query = query.bind(&r.tenant_id).bind(&r.event_id);
        }
        existing.extend(query.fetch_all(&mut *conn).await?);
    }
    Ok(existing)
}

/// The current watermarks of `series` that have one, in one statement
/// per [`SERIES_PER_STATEMENT`] series (a statement costs a thread
/// hand-off in sqlx, more than reading a row).
async fn read_watermarks(
    conn: &mut SqliteConnection,
    series: &[&Series],
) -> Result<BTreeMap<Series, DateTime<Utc>>, SinkError> {
    let mut before = BTreeMap::new();
    for chunk in series.chunks(SERIES_PER_STATEMENT) {
        let sql = format!(
            "SELECT w.tenant_id, w.device_id, w.metric, w.watermark FROM (VALUES {}) AS k
             JOIN ingest_series_watermark w
               ON w.tenant_id = k.column1 AND w.device_id = k.column2 AND w.metric = k.column3",
            jobs::sqlite::placeholders(chunk.len(), 3)
        );
        let mut query = sqlx::query_as::<_, (String, String, String, i64)>(&sql);
        for (tenant, device, metric) in chunk.iter().copied() {
            query = query.bind(tenant).bind(device).bind(metric);
        }
        for (tenant, device, metric, mark) in query.fetch_all(&mut *conn).await? {
            let mark = DateTime::from_timestamp_micros(mark).ok_or_else(|| {
                SinkError::Database(sqlx::Error::Decode(
                    format!("watermark {mark} out of range").into(),
                ))
            })?;
            before.insert((tenant, device, metric), mark);
        }
    }
    Ok(before)
}

/// Moves each series' watermark forward to its planned mark (never back).
async fn advance_watermarks(
    conn: &mut SqliteConnection,
    series: &[&Series],
    marks: &[DateTime<Utc>],
) -> Result<(), SinkError> {
    for (chunk, marks) in series
        .chunks(SERIES_PER_STATEMENT)
        .zip(marks.chunks(SERIES_PER_STATEMENT))
    {
        let sql = format!(
            "INSERT INTO ingest_series_watermark (tenant_id, device_id, metric, watermark) VALUES {}
             ON CONFLICT (tenant_id, device_id, metric)
             DO UPDATE SET watermark = max(watermark, excluded.watermark)",
            jobs::sqlite::placeholders(chunk.len(), 4)
        );
        let mut query = sqlx::query(&sql);
        for ((tenant, device, metric), mark) in chunk.iter().copied().zip(marks) {
            query = query
                .bind(tenant)
                .bind(device)
                .bind(metric)
                .bind(mark.timestamp_micros());
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}
