//! The durable write of a batch of readings: readings inserted
//! once per (tenant, event id), series watermarks advanced, and the
//! aggregation job of every window the batch closes enqueued, all in one
//! transaction. A batch redelivered after a crash inserts nothing and
//! enqueues nothing new. PostgreSQL here; the embedded SQLite store in
//! [`sqlite`].
//!
//! Concurrent batches often hold the same readings (a batch and its resend,
//! JetStream redelivery beside a slow commit), so lock order matters: every
//! transaction takes its row locks in one global order — readings by
//! (tenant, event id), then watermarks by series, then jobs by series and
//! window — and a transaction PostgreSQL still aborts as a deadlock or
//! serialization failure is run again, a bounded number of times.

pub mod sqlite;

use std::{
    borrow::Borrow,
    collections::{BTreeMap, HashSet},
};

use chrono::{DateTime, Utc};
use contracts::{JobArgs as _, jobs::v1::AggregateWindowArgs};
use jobs::{JobState, NewJob, UniqueOpts};
use sqlx::{PgConnection, PgPool};

use crate::{reading::Reading, window::Windowing};

/// What writing one batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteReport {
    /// Readings newly stored.
    pub inserted: usize,
    /// Readings whose event id was already stored.
    pub duplicates: usize,
    /// Their positions in the batch (a repeat within the batch counts from
    /// its second occurrence), so each source can tell its own duplicates.
    pub duplicate_at: Vec<usize>,
    /// Aggregation jobs newly enqueued.
    pub jobs_enqueued: usize,
}

/// Why a batch could not be written; the whole batch is retried.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The database failed or is unreachable.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Enqueueing the aggregation jobs failed.
    #[error("jobs: {0}")]
    Jobs(#[from] jobs::JobsError),
}

/// Attempts of one batch's transaction when PostgreSQL aborts it as a
/// deadlock or serialization failure.
pub const CONFLICT_ATTEMPTS: u32 = 4;

/// The wait before running an aborted transaction again: a few
/// milliseconds, growing; the other transaction usually commits within one.
const CONFLICT_RETRY: jobs::Backoff = jobs::Backoff::exponential(
    std::time::Duration::from_millis(10),
    std::time::Duration::from_millis(100),
);

impl SinkError {
    /// A deadlock (40P01) or serialization failure (40001): the transaction
    /// was rolled back whole and running it again is safe and likely to
    /// succeed.
    pub fn is_transaction_conflict(&self) -> bool {
        let database = match self {
            Self::Database(error) | Self::Jobs(jobs::JobsError::Database(error)) => error,
            Self::Jobs(_) => return false,
        };
        database
            .as_database_error()
            .and_then(|error| error.code())
            .is_some_and(|code| code == "40P01" || code == "40001")
    }
}

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
    ])
}

/// The aggregation job for one window (the worker's
/// `readings.aggregate_window`, whose kind, queue and args are the
/// contracts' `AggregateWindowArgs`), unique for ever per (series, window,
/// lateness), so redelivery never enqueues it twice and a late window is
/// re-aggregated once.
pub fn aggregation_job(
    series: &Series,
    start: DateTime<Utc>,
    windowing: &Windowing,
    late: bool,
) -> Result<NewJob, jobs::JobsError> {
    let args = AggregateWindowArgs {
        tenant_id: series.0.clone(),
        device_id: series.1.clone(),
        metric: series.2.clone(),
        window_start: start.to_rfc3339(),
        window_seconds: windowing.length.num_seconds(),
        late,
    };
    Ok(NewJob::with_args(AggregateWindowArgs::KIND, &args)?
        .with_queue(AggregateWindowArgs::QUEUE)
        .unique(UniqueOpts {
            states: JobState::ALL.to_vec(),
            ..UniqueOpts::default()
        }))
}

/// (tenant, device, metric).
pub type Series = (String, String, String);

/// For each series a batch touched (with the times it newly stored) and its
/// watermark before the batch: the new watermarks, in series order, and the
/// aggregation jobs to enqueue. Shared by both stores.
pub fn plan(
    by_series: &BTreeMap<Series, Vec<DateTime<Utc>>>,
    before: &BTreeMap<Series, DateTime<Utc>>,
    windowing: &Windowing,
) -> Result<(Vec<DateTime<Utc>>, Vec<NewJob>), jobs::JobsError> {
    let mut marks = Vec::with_capacity(by_series.len());
    let mut jobs = Vec::new();
    for (series, times) in by_series {
        let latest = times.iter().max().copied().unwrap_or_default();
        let before = before.get(series).copied();
        let after = before.map_or(windowing.watermark(latest), |b| {
            b.max(windowing.watermark(latest))
        });
        marks.push(after);
        for (start, late) in windowing.to_aggregate(before, after, times.iter().copied()) {
            jobs.push(aggregation_job(series, start, windowing, late)?);
        }
    }
    Ok((marks, jobs))
}

/// Writes `readings` in one transaction (see the module doc), running it
/// again if PostgreSQL aborts it as a deadlock or serialization failure.
pub async fn write_batch<R: Borrow<Reading> + Sync>(
    pool: &PgPool,
    readings: &[R],
    windowing: &Windowing,
) -> Result<WriteReport, SinkError> {
    let mut attempt = 1;
    loop {
        let result = async {
            let mut tx = pool.begin().await?;
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

async fn write_in<R: Borrow<Reading> + Sync>(
    conn: &mut PgConnection,
    readings: &[R],
    windowing: &Windowing,
) -> Result<WriteReport, SinkError> {
    let n = readings.len();
    let mut event_ids = Vec::with_capacity(n);
    let mut tenants = Vec::with_capacity(n);
    let mut devices = Vec::with_capacity(n);
    let mut metrics = Vec::with_capacity(n);
    let mut values = Vec::with_capacity(n);
    let mut observed = Vec::with_capacity(n);
    let mut attributes = Vec::with_capacity(n);
    for r in readings {
        let r: &Reading = r.borrow();
        event_ids.push(r.event_id.as_str());
        tenants.push(r.tenant_id.as_str());
        devices.push(r.device_id.as_str());
        metrics.push(r.metric.as_str());
        values.push(r.value);
        observed.push(r.observed_at);
        attributes
            .push((!r.attributes.is_empty()).then(|| serde_json::json!(r.attributes).to_string()));
    }
    // ON CONFLICT DO NOTHING: redelivered readings are skipped and not
    // returned, so only new readings move watermarks and windows.
    // ORDER BY: rows are inserted (and their key locks taken) in key order,
    // whatever order the batch holds them in, so two batches sharing
    // readings wait for each other instead of deadlocking.
    let stored: Vec<(String, String)> = sqlx::query_as(
        "INSERT INTO ingest.reading (event_id, tenant_id, device_id, metric, value, observed_at, attributes)
         SELECT event_id, tenant_id, device_id, metric, value, observed_at, COALESCE(attributes::jsonb, '{}')
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::float8[], $6::timestamptz[], $7::text[])
              AS input(event_id, tenant_id, device_id, metric, value, observed_at, attributes)
         ORDER BY tenant_id, event_id
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
    .await?;
    // Only the keys come back; a reading is new at its first position among
    // the returned keys (a repeat within the batch is a duplicate).
    let mut new_ids: HashSet<(&str, &str)> = stored
        .iter()
        .map(|(tenant, event)| (tenant.as_str(), event.as_str()))
        .collect();
    let mut by_series: BTreeMap<Series, Vec<DateTime<Utc>>> = BTreeMap::new();
    let mut duplicate_at = Vec::new();
    for (index, r) in readings.iter().enumerate() {
        let r: &Reading = r.borrow();
        if new_ids.remove(&(r.tenant_id.as_str(), r.event_id.as_str())) {
            by_series
                .entry((r.tenant_id.clone(), r.device_id.clone(), r.metric.clone()))
                .or_default()
                .push(r.observed_at);
        } else {
            duplicate_at.push(index);
        }
    }
    let report = WriteReport {
        inserted: stored.len(),
        duplicates: duplicate_at.len(),
        duplicate_at,
        jobs_enqueued: 0,
    };
    if report.inserted == 0 {
        return Ok(report);
    }
    let mut report = report;

    // Lock the series' watermarks in key order (BTreeMap), so concurrent
    // batches over the same series serialise instead of deadlocking.
    let keys: Vec<&Series> = by_series.keys().collect();
    let (t, d, m): (Vec<&str>, Vec<&str>, Vec<&str>) = (
        keys.iter().map(|s| s.0.as_str()).collect(),
        keys.iter().map(|s| s.1.as_str()).collect(),
        keys.iter().map(|s| s.2.as_str()).collect(),
    );
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
    let old: BTreeMap<Series, DateTime<Utc>> =
        old.into_iter().map(|(t, d, m, w)| ((t, d, m), w)).collect();

    let (new_marks, jobs) = plan(&by_series, &old, windowing)?;
    sqlx::query(
        "INSERT INTO ingest.series_watermark (tenant_id, device_id, metric, watermark)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])
                       AS input(tenant_id, device_id, metric, watermark)
         -- New series' rows are created in the same order as the locks above.
         ORDER BY tenant_id, device_id, metric
         ON CONFLICT (tenant_id, device_id, metric)
         DO UPDATE SET watermark = GREATEST(ingest.series_watermark.watermark, excluded.watermark)",
    )
    .bind(&t)
    .bind(&d)
    .bind(&m)
    .bind(&new_marks)
    .execute(&mut *conn)
    .await?;
    if !jobs.is_empty() {
        let inserted = jobs::postgres::insert_many(conn, &jobs).await?;
        report.jobs_enqueued = inserted.iter().filter(|i| !i.duplicate).count();
    }
    Ok(report)
}
