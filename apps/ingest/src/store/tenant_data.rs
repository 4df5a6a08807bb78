//! A tenant's data in ingest, for `platform.tenancy.v1`: export every
//! reading, window result and dead letter as JSON, or delete them all with
//! the tenant's series and remember the tenant as deleted, in one
//! transaction. Both stores side by side, as in the rest of this module.

use service_runtime::tenant_data::{
    CollectionCount, TenantData, TenantDataError, TenantRecord, forward_rows,
};
use tokio::sync::mpsc;

use super::{PgReadingStore, SqliteReadingStore, StoreError};

/// What ingest exports, in order: (collection, PostgreSQL query). Each
/// query takes the tenant as `$1` and returns one JSON object per row.
const PG_EXPORTS: [(&str, &str); 3] = [
    (
        "readings",
        "SELECT json_build_object('event_id', event_id, 'device_id', device_id, 'metric', metric,
                'value', value, 'observed_at', observed_at, 'attributes', attributes,
                'ingested_at', ingested_at)::text
         FROM ingest.reading WHERE tenant_id = $1 ORDER BY device_id, metric, observed_at, event_id",
    ),
    (
        "window_results",
        "SELECT json_build_object('device_id', device_id, 'metric', metric, 'window_start', window_start,
                'window_seconds', window_seconds, 'statistics', statistics,
                'anomaly_score', anomaly_score, 'anomalous', anomalous,
                'model_version', model_version, 'computed_at', computed_at)::text
         FROM ingest.window_result WHERE tenant_id = $1
         ORDER BY device_id, metric, window_start, window_seconds",
    ),
    (
        "dead_letters",
        "SELECT json_build_object('received_at', received_at, 'source', source, 'event_id', event_id,
                'field', field, 'reason', reason, 'payload', payload)::text
         FROM ingest.dead_letter WHERE tenant_id = $1 ORDER BY id",
    ),
];

/// What deleting a tenant removes: (collection, table), PostgreSQL names.
const PG_TABLES: [(&str, &str); 4] = [
    ("readings", "ingest.reading"),
    ("series", "ingest.series_watermark"),
    ("window_results", "ingest.window_result"),
    ("dead_letters", "ingest.dead_letter"),
];

/// The advisory lock key of a tenant's data: deletion holds it exclusively,
/// recording a window result shares it, so a result recorded while the
/// tenant is deleted either lands before (and is deleted) or sees the
/// tombstone.
pub(crate) const PG_TENANT_LOCK: &str = "hashtextextended('ingest.tenant:' || $1, 0)";

impl TenantData for PgReadingStore {
    async fn export(
        &self,
        tenant: &str,
        out: mpsc::Sender<TenantRecord>,
    ) -> Result<(), TenantDataError> {
        let mut tx = self.pool.begin().await.map_err(StoreError::from)?;
        // One snapshot for every collection; times in UTC.
        for setting in [
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
            "SET LOCAL TimeZone = 'UTC'",
        ] {
            sqlx::query(setting)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
        }
        for (collection, query) in PG_EXPORTS {
            let rows = sqlx::query_scalar::<_, String>(query)
                .bind(tenant)
                .fetch(&mut *tx);
            if !forward_rows(collection, rows, &out)
                .await
                .map_err(StoreError::from)?
            {
                break;
            }
        }
        Ok(())
    }

    async fn delete(&self, tenant: &str) -> Result<Vec<CollectionCount>, TenantDataError> {
        let mut tx = self.pool.begin().await.map_err(StoreError::from)?;
        sqlx::query(&format!("SELECT pg_advisory_xact_lock({PG_TENANT_LOCK})"))
            .bind(tenant)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        sqlx::query(
            "INSERT INTO ingest.deleted_tenant (tenant_id) VALUES ($1) ON CONFLICT DO NOTHING",
        )
        .bind(tenant)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        let mut deleted = Vec::with_capacity(PG_TABLES.len());
        for (collection, table) in PG_TABLES {
            let rows = sqlx::query(&format!("DELETE FROM {table} WHERE tenant_id = $1"))
                .bind(tenant)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?
                .rows_affected();
            deleted.push(count(collection, rows));
        }
        tx.commit().await.map_err(StoreError::from)?;
        Ok(deleted)
    }
}

/// `column` (microseconds since the epoch) as RFC 3339 UTC with all six
/// digits, the way PostgreSQL's export writes it.
fn iso(column: &str) -> String {
    format!(
        "(strftime('%Y-%m-%dT%H:%M:%S', {column} / 1000000, 'unixepoch') \
         || printf('.%06d+00:00', {column} % 1000000))"
    )
}

/// What ingest exports from SQLite, in the order and shape of
/// [`PG_EXPORTS`].
fn sqlite_exports() -> [(&'static str, String); 3] {
    [
        (
            "readings",
            format!(
                "SELECT json_object('event_id', event_id, 'device_id', device_id, 'metric', metric,
                        'value', value, 'observed_at', {}, 'attributes', json(attributes),
                        'ingested_at', {})
                 FROM ingest_reading WHERE tenant_id = ?1 ORDER BY device_id, metric, observed_at, event_id",
                iso("observed_at"),
                iso("ingested_at"),
            ),
        ),
        (
            "window_results",
            format!(
                "SELECT json_object('device_id', device_id, 'metric', metric, 'window_start', {},
                        'window_seconds', window_seconds, 'statistics', json(statistics),
                        'anomaly_score', anomaly_score, 'anomalous', json(iif(anomalous, 'true', 'false')),
                        'model_version', model_version, 'computed_at', {})
                 FROM ingest_window_result WHERE tenant_id = ?1
                 ORDER BY device_id, metric, window_start, window_seconds",
                iso("window_start"),
                iso("computed_at"),
            ),
        ),
        (
            "dead_letters",
            format!(
                "SELECT json_object('received_at', {}, 'source', source, 'event_id', event_id,
                        'field', field, 'reason', reason, 'payload', json(payload))
                 FROM ingest_dead_letter WHERE tenant_id = ?1 ORDER BY id",
                iso("received_at"),
            ),
        ),
    ]
}

/// [`PG_TABLES`] in SQLite.
const SQLITE_TABLES: [(&str, &str); 4] = [
    ("readings", "ingest_reading"),
    ("series", "ingest_series_watermark"),
    ("window_results", "ingest_window_result"),
    ("dead_letters", "ingest_dead_letter"),
];

impl TenantData for SqliteReadingStore {
    async fn export(
        &self,
        tenant: &str,
        out: mpsc::Sender<TenantRecord>,
    ) -> Result<(), TenantDataError> {
        // A read transaction: one snapshot (WAL) for every collection.
        let mut tx = self.pool.begin().await.map_err(StoreError::from)?;
        for (collection, query) in sqlite_exports() {
            let rows = sqlx::query_scalar::<_, String>(&query)
                .bind(tenant)
                .fetch(&mut *tx);
            if !forward_rows(collection, rows, &out)
                .await
                .map_err(StoreError::from)?
            {
                break;
            }
        }
        Ok(())
    }

    async fn delete(&self, tenant: &str) -> Result<Vec<CollectionCount>, TenantDataError> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(StoreError::from)?;
        sqlx::query(
            "INSERT INTO ingest_deleted_tenant (tenant_id, deleted_at) VALUES (?1, ?2)
             ON CONFLICT DO NOTHING",
        )
        .bind(tenant)
        .bind(chrono::Utc::now().timestamp_micros())
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        let mut deleted = Vec::with_capacity(SQLITE_TABLES.len());
        for (collection, table) in SQLITE_TABLES {
            let rows = sqlx::query(&format!("DELETE FROM {table} WHERE tenant_id = ?1"))
                .bind(tenant)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?
                .rows_affected();
            deleted.push(count(collection, rows));
        }
        tx.commit().await.map_err(StoreError::from)?;
        Ok(deleted)
    }
}

fn count(collection: &str, rows: u64) -> CollectionCount {
    CollectionCount {
        collection: collection.to_owned(),
        rows,
    }
}
