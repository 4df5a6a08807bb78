//! The production store: PostgreSQL, schema `ingest`.
//!
//! A batch's transaction takes its row locks in one global order —
//! readings by (tenant, event id), then watermarks by series, then jobs by
//! series and window — so two batches holding the same readings (a batch
//! and its resend, JetStream redelivery beside a slow commit) wait for each
//! other instead of deadlocking; one PostgreSQL still aborts as a deadlock
//! or serialization failure is run again, up to [`CONFLICT_ATTEMPTS`]
//! times.

use std::{borrow::Borrow, collections::BTreeMap};

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use super::{
    DeadLetter, DeadLetterQuery, DeadLetterRow, DeadLetterTuple, ReadingStore, ResultQuery,
    ResultRow, StoreError, StoredDeadLetter, StoredDeadLetterTuple, StoredReading, StoredResult,
    WindowQuery, dead_letters_from_rows, results_from_rows, statistics_json,
    stored_dead_letters_from_rows,
};
use crate::{
    reading::Reading,
    sink::{self, Series, SinkError, WriteReport},
    window::Windowing,
};

/// Attempts of one batch's transaction when PostgreSQL aborts it as a
/// deadlock or serialization failure.
pub const CONFLICT_ATTEMPTS: u32 = 4;

/// The wait before running an aborted transaction again: a few
/// milliseconds, growing; the other transaction usually commits within one.
const CONFLICT_RETRY: jobs::Backoff = jobs::Backoff::exponential(
    std::time::Duration::from_millis(10),
    std::time::Duration::from_millis(100),
);

/// The ingest app's PostgreSQL migrations (versions 200000+).
pub fn migrator() -> sqlx::migrate::Migrator {
    jobs::embedded_migrations(&[
        (
            200_001,
            "ingest",
            include_str!("../../migrations/postgres/200001_ingest.sql"),
        ),
        (
            200_002,
            "ingest tenant keys",
            include_str!("../../migrations/postgres/200002_tenant_keys.sql"),
        ),
        (
            200_003,
            "ingest deleted tenants",
            include_str!("../../migrations/postgres/200003_deleted_tenants.sql"),
        ),
    ])
}

/// A [`ReadingStore`] on a PostgreSQL pool.
#[derive(Debug, Clone)]
pub struct PgReadingStore {
    pub(super) pool: PgPool,
    /// False when a migrator credential already migrated the database and
    /// this pool's role may not (see [`Self::provision`]).
    migrates: bool,
}

impl PgReadingStore {
    /// Connects a pool of `pool_size` connections named `ingest`.
    pub async fn connect(url: &str, pool_size: u32) -> Result<Self, StoreError> {
        let pool =
            jobs::postgres::connect(url, "ingest", pool_size, service_runtime::CONNECT_TIMEOUT)
                .await?;
        Ok(Self::new(pool))
    }

    /// Wraps a pool.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            migrates: true,
        }
    }

    /// Connects as the login of a deployment whose migrations Job migrates
    /// (`INGEST_MIGRATE_AT_START=false`): waits until every migration this
    /// build knows is applied, then runs none itself.
    pub async fn connect_when_migrated(url: &str, pool_size: u32) -> Result<Self, StoreError> {
        let mut store = Self::connect(url, pool_size).await?;
        jobs::postgres::wait_for_migrations(
            &store.pool,
            &[jobs::postgres::migrator(), migrator()],
            "ingest",
        )
        .await;
        store.migrates = false;
        Ok(store)
    }

    /// Least privilege: with the migrator credential at `migrator_url`,
    /// applies the migrations and gives the user of `app_url` the role
    /// `<database>_ingest` (its own schema, and enqueueing through
    /// `jobs.enqueue` only); then connects as that user, which runs no
    /// migrations.
    pub async fn provision(
        migrator_url: &str,
        app_url: &str,
        pool_size: u32,
    ) -> Result<Self, StoreError> {
        let migrator = jobs::postgres::connect(
            migrator_url,
            "ingest-migrator",
            2,
            service_runtime::CONNECT_TIMEOUT,
        )
        .await?;
        Self::new(migrator.clone()).migrate().await?;
        let login = jobs::roles::login_of(app_url)?;
        jobs::roles::provision_app_role(
            &migrator,
            "ingest",
            Some("ingest"),
            jobs::roles::JobsAccess::Enqueue,
            &login,
        )
        .await?;
        migrator.close().await;
        let mut store = Self::connect(app_url, pool_size).await?;
        store.migrates = false;
        Ok(store)
    }

    /// The pool, for the jobs store on the same database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

impl ReadingStore for PgReadingStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        if !self.migrates {
            return Ok(());
        }
        jobs::postgres::migrator().run(&self.pool).await?;
        migrator().run(&self.pool).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(jobs::postgres::ping(&self.pool).await?)
    }

    async fn write_batch<R: Borrow<Reading> + Sync>(
        &self,
        readings: &[R],
        windowing: &Windowing,
    ) -> Result<WriteReport, SinkError> {
        let mut attempt = 1;
        loop {
            let result = async {
                let mut tx = self.pool.begin().await?;
                let report = write_in(&mut tx, readings, windowing).await?;
                tx.commit().await?;
                Ok::<_, SinkError>(report)
            }
            .await;
            match result {
                Err(error) if error.is_transaction_conflict() && attempt < CONFLICT_ATTEMPTS => {
                    tracing::info!(%error, attempt, readings = readings.len(), "batch transaction aborted by a lock conflict; running it again");
                    opentelemetry::global::meter("platform.ingest")
                        .u64_counter("ingest.sink.conflict_retries")
                        .with_description(
                            "Batch transactions run again after a deadlock or serialization failure",
                        )
                        .build()
                        .add(1, &[]);
                    tokio::time::sleep(CONFLICT_RETRY.delay(attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn read_window(&self, query: &WindowQuery) -> Result<Vec<StoredReading>, StoreError> {
        let (after_at, after_id) = query
            .after
            .clone()
            .map_or((None, None), |(at, id)| (Some(at), Some(id)));
        let rows: Vec<(String, f64, DateTime<Utc>)> = sqlx::query_as(
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
        .bind(i64::from(query.limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(event_id, value, observed_at)| StoredReading {
                event_id,
                value,
                observed_at,
            })
            .collect())
    }

    async fn prune(
        &self,
        older_than: DateTime<Utc>,
        batch: u32,
        tenant: Option<&str>,
    ) -> Result<(u64, u64), StoreError> {
        let readings = sqlx::query(
            "DELETE FROM ingest.reading WHERE (tenant_id, event_id) IN (
                    SELECT tenant_id, event_id FROM ingest.reading
                    WHERE observed_at < $1 AND ($3::text IS NULL OR tenant_id = $3)
                    ORDER BY observed_at LIMIT $2)",
        )
        .bind(older_than)
        .bind(i64::from(batch))
        .bind(tenant)
        .execute(&self.pool)
        .await?
        .rows_affected();
        let Some(tenant) = tenant else {
            return Ok((readings, 0));
        };
        let results = sqlx::query(
            "DELETE FROM ingest.window_result
             WHERE (tenant_id, device_id, metric, window_start, window_seconds) IN (
                    SELECT tenant_id, device_id, metric, window_start, window_seconds
                    FROM ingest.window_result WHERE tenant_id = $3 AND window_start < $1
                    ORDER BY window_start LIMIT $2)",
        )
        .bind(older_than)
        .bind(i64::from(batch))
        .bind(tenant)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok((readings, results))
    }

    async fn series_of(&self, tenant: &str) -> Result<Vec<(String, String)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT device_id, metric FROM ingest.series_watermark WHERE tenant_id = $1",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn deleted_tenants(&self) -> Result<Vec<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT tenant_id FROM ingest.deleted_tenant ORDER BY tenant_id")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn record_result(&self, result: &StoredResult) -> Result<bool, StoreError> {
        // Shares the tenant's lock with deletion (see `tenant_data`): a
        // result is stored before the tenant's data is deleted, or not at all.
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!(
            "SELECT pg_advisory_xact_lock_shared({})",
            super::tenant_data::PG_TENANT_LOCK
        ))
        .bind(&result.tenant_id)
        .execute(&mut *tx)
        .await?;
        let deleted: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM ingest.deleted_tenant WHERE tenant_id = $1)",
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
        .bind(statistics_json(result)?)
        .bind(result.anomaly_score)
        .bind(result.anomalous)
        .bind(&result.model_version)
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
        .bind(i64::from(query.limit))
        .fetch_all(&self.pool)
        .await?;
        results_from_rows(rows)
    }

    async fn dead_letter(&self, letters: &[DeadLetter]) -> Result<(), StoreError> {
        if letters.is_empty() {
            return Ok(());
        }
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
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetterRow>, StoreError> {
        let rows: Vec<DeadLetterTuple> = sqlx::query_as(
            "SELECT source, tenant_id, event_id, field, reason, payload::text
             FROM ingest.dead_letter ORDER BY id LIMIT $1",
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
            "SELECT {DEAD_LETTER_COLUMNS} FROM ingest.dead_letter
             WHERE {} AND id < $2 ORDER BY id DESC LIMIT $3",
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
            "SELECT {DEAD_LETTER_COLUMNS} FROM ingest.dead_letter WHERE {} AND id = $2",
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
        let mut tx = self.pool.begin().await?;
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
    executor: impl sqlx::Executor<'c, Database = sqlx::Postgres>,
    tenant_id: Option<&str>,
    id: i64,
) -> Result<u64, sqlx::Error> {
    let sql = format!(
        "DELETE FROM ingest.dead_letter WHERE {} AND id = $2",
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
const DEAD_LETTER_COLUMNS: &str = "id, (extract(epoch FROM received_at) * 1000000)::int8, \
     source, tenant_id, event_id, field, reason, payload::text";

/// The predicate holding a dead-letter statement to one tenant (`$1`), or
/// to the letters whose tenant is unknown; either way the `(tenant_id, id)`
/// index answers it.
fn letter_of(tenant_id: Option<&str>) -> &'static str {
    match tenant_id {
        Some(_) => "tenant_id = $1",
        None => "tenant_id IS NULL AND $1::text IS NULL",
    }
}

/// One batch in an open transaction: the new readings, then their series'
/// watermarks, then the jobs of the windows they close.
async fn write_in<R: Borrow<Reading> + Sync>(
    conn: &mut PgConnection,
    readings: &[R],
    windowing: &Windowing,
) -> Result<WriteReport, SinkError> {
    let stored = insert_readings(conn, readings).await?;
    let (by_series, mut report) = sink::fold_stored(readings, &stored);
    if report.inserted == 0 {
        return Ok(report);
    }
    let series: Vec<&Series> = by_series.keys().collect();
    let before = lock_watermarks(conn, &series).await?;
    let (marks, jobs) = sink::plan(&by_series, &before, windowing)?;
    advance_watermarks(conn, &series, &marks).await?;
    if !jobs.is_empty() {
        let inserted = jobs::postgres::insert_many(conn, &jobs).await?;
        report.jobs_enqueued = inserted.iter().filter(|i| !i.duplicate).count();
    }
    Ok(report)
}

/// Inserts the readings not stored yet and returns their keys (tenant,
/// event id).
///
/// ON CONFLICT DO NOTHING: redelivered readings are skipped and not
/// returned, so only new readings move watermarks and windows. Key order:
/// rows are inserted (and their key locks taken) in (tenant, event id)
/// byte order, whatever order the batch holds them in. The arrays are
/// sorted here rather than by an ORDER BY: a function scan hands the rows
/// to the insert in array order, and the server's sort cost a tenth of the
/// statement (`docs/profiling/ingest-jetstream-2026-12-07.txt`); should two
/// batches still deadlock, the transaction is run again.
async fn insert_readings<R: Borrow<Reading>>(
    conn: &mut PgConnection,
    readings: &[R],
) -> Result<Vec<(String, String)>, SinkError> {
    let n = readings.len();
    let mut in_key_order: Vec<&Reading> = readings.iter().map(Borrow::borrow).collect();
    in_key_order.sort_unstable_by(|a, b| {
        (a.tenant_id.as_bytes(), a.event_id.as_bytes())
            .cmp(&(b.tenant_id.as_bytes(), b.event_id.as_bytes()))
    });
    let mut event_ids = Vec::with_capacity(n);
    let mut tenants = Vec::with_capacity(n);
    let mut devices = Vec::with_capacity(n);
    let mut metrics = Vec::with_capacity(n);
    let mut values = Vec::with_capacity(n);
    let mut observed = Vec::with_capacity(n);
    let mut attributes = Vec::with_capacity(n);
    for r in in_key_order {
        event_ids.push(r.event_id.as_str());
        tenants.push(r.tenant_id.as_str());
        devices.push(r.device_id.as_str());
        metrics.push(r.metric.as_str());
        values.push(r.value);
        observed.push(r.observed_at);
        attributes
            .push((!r.attributes.is_empty()).then(|| serde_json::json!(r.attributes).to_string()));
    }
    Ok(sqlx::query_as(
        "INSERT INTO ingest.reading (event_id, tenant_id, device_id, metric, value, observed_at, attributes)
         SELECT event_id, tenant_id, device_id, metric, value, observed_at, COALESCE(attributes::jsonb, '{}')
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::float8[], $6::timestamptz[], $7::text[])
              AS input(event_id, tenant_id, device_id, metric, value, observed_at, attributes)
         ON CONFLICT (tenant_id, event_id) DO NOTHING
         RETURNING tenant_id, event_id",
    )
    .bind(&event_ids)
    .bind(&tenants)
    .bind(&devices)
    .bind(&metrics)
    .bind(&values)
    .bind(&observed)
    .bind(&attributes)
    .fetch_all(&mut *conn)
    .await?)
}

/// The three key columns of `series`, as arrays for `unnest`.
fn series_columns<'a>(series: &[&'a Series]) -> (Vec<&'a str>, Vec<&'a str>, Vec<&'a str>) {
    (
        series.iter().map(|s| s.0.as_str()).collect(),
        series.iter().map(|s| s.1.as_str()).collect(),
        series.iter().map(|s| s.2.as_str()).collect(),
    )
}

/// Locks the existing watermarks of `series` (given in key order), so
/// concurrent batches over the same series serialise instead of
/// deadlocking, and returns them.
async fn lock_watermarks(
    conn: &mut PgConnection,
    series: &[&Series],
) -> Result<BTreeMap<Series, DateTime<Utc>>, SinkError> {
    let (t, d, m) = series_columns(series);
    let old: Vec<(String, String, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT w.tenant_id, w.device_id, w.metric, w.watermark
         FROM ingest.series_watermark w
         JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(tenant_id, device_id, metric)
           USING (tenant_id, device_id, metric)
         ORDER BY 1, 2, 3
         FOR UPDATE OF w",
    )
    .bind(&t)
    .bind(&d)
    .bind(&m)
    .fetch_all(&mut *conn)
    .await?;
    Ok(old.into_iter().map(|(t, d, m, w)| ((t, d, m), w)).collect())
}

/// Moves each series' watermark forward to its planned mark (never back),
/// creating new series' rows in the same order as the locks.
async fn advance_watermarks(
    conn: &mut PgConnection,
    series: &[&Series],
    marks: &[DateTime<Utc>],
) -> Result<(), SinkError> {
    let (t, d, m) = series_columns(series);
    sqlx::query(
        "INSERT INTO ingest.series_watermark (tenant_id, device_id, metric, watermark)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])
                       AS input(tenant_id, device_id, metric, watermark)
         ORDER BY tenant_id, device_id, metric
         ON CONFLICT (tenant_id, device_id, metric)
         DO UPDATE SET watermark = GREATEST(ingest.series_watermark.watermark, excluded.watermark)",
    )
    .bind(&t)
    .bind(&d)
    .bind(&m)
    .bind(marks)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
