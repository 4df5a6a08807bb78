//! The batch write on the embedded SQLite database (tables `ingest_*`), in
//! one `BEGIN IMMEDIATE` transaction with the jobs it enqueues.

use std::{borrow::Borrow, collections::BTreeMap};

use chrono::{DateTime, Utc};
use sqlx::{Row as _, SqlitePool};

use super::{Series, SinkError, WriteReport, plan};
use crate::{reading::Reading, window::Windowing};

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
    ])
}

fn from_micros(value: i64) -> Result<DateTime<Utc>, SinkError> {
    DateTime::from_timestamp_micros(value).ok_or_else(|| {
        SinkError::Database(sqlx::Error::Decode(
            format!("time {value} out of range").into(),
        ))
    })
}

/// Writes `readings` in one transaction (see the parent module).
pub async fn write_batch<R: Borrow<Reading> + Sync>(
    pool: &SqlitePool,
    readings: &[R],
    windowing: &Windowing,
) -> Result<WriteReport, SinkError> {
    let now = Utc::now().timestamp_micros();
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let mut by_series: BTreeMap<Series, Vec<DateTime<Utc>>> = BTreeMap::new();
    let mut inserted = 0;
    let mut duplicate_at = Vec::new();
    for (index, r) in readings.iter().enumerate() {
        let r: &Reading = r.borrow();
        let attributes = serde_json::json!(r.attributes).to_string();
        let result = sqlx::query(
            "INSERT INTO ingest_reading (event_id, tenant_id, device_id, metric, value, observed_at, attributes, ingested_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (tenant_id, event_id) DO NOTHING",
        )
        .bind(&r.event_id)
        .bind(&r.tenant_id)
        .bind(&r.device_id)
        .bind(&r.metric)
        .bind(r.value)
        .bind(r.observed_at.timestamp_micros())
        .bind(attributes)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if result.rows_affected() == 0 {
            duplicate_at.push(index);
        } else {
            inserted += 1;
            by_series
                .entry((r.tenant_id.clone(), r.device_id.clone(), r.metric.clone()))
                .or_default()
                .push(r.observed_at);
        }
    }
    let mut report = WriteReport {
        inserted,
        duplicates: duplicate_at.len(),
        duplicate_at,
        jobs_enqueued: 0,
    };
    if inserted == 0 {
        tx.commit().await?;
        return Ok(report);
    }
    let mut before = BTreeMap::new();
    for series in by_series.keys() {
        let row = sqlx::query(
            "SELECT watermark FROM ingest_series_watermark WHERE tenant_id = ? AND device_id = ? AND metric = ?",
        )
        .bind(&series.0)
        .bind(&series.1)
        .bind(&series.2)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = row {
            before.insert(series.clone(), from_micros(row.try_get("watermark")?)?);
        }
    }
    let (marks, jobs) = plan(&by_series, &before, windowing)?;
    for (series, mark) in by_series.keys().zip(marks) {
        sqlx::query(
            "INSERT INTO ingest_series_watermark (tenant_id, device_id, metric, watermark) VALUES (?, ?, ?, ?)
             ON CONFLICT (tenant_id, device_id, metric)
             DO UPDATE SET watermark = max(watermark, excluded.watermark)",
        )
        .bind(&series.0)
        .bind(&series.1)
        .bind(&series.2)
        .bind(mark.timestamp_micros())
        .execute(&mut *tx)
        .await?;
    }
    if !jobs.is_empty() {
        let enqueued = jobs::sqlite::insert_many(&mut tx, &jobs).await?;
        report.jobs_enqueued = enqueued.iter().filter(|i| !i.duplicate).count();
    }
    tx.commit().await?;
    Ok(report)
}
