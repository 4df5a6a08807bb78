//! Endpoints and deliveries on either database, in the jobs engine's
//! pattern: one trait, implemented for `jobs::PgStore` (schema `worker`)
//! and `jobs::SqliteStore` (tables `worker_*`) side by side. Every query
//! names the tenant; a delivery row and its `webhook.deliver` job are
//! written in one transaction, so neither exists without the other.

use std::future::Future;

use chrono::{DateTime, Utc};
use jobs::{JobsError, NewJob, PgStore, SqliteStore};
use sqlx::Row as _;

use service_runtime::tenant_data::TenantRecord;

use super::{Delivery, DeliveryState, Endpoint};

/// What the webhooks need from the worker's database.
pub trait WebhookStore: jobs::JobStore {
    /// Registers `endpoint` (its id chosen by the caller).
    fn create_endpoint(
        &self,
        endpoint: &Endpoint,
    ) -> impl Future<Output = Result<(), JobsError>> + Send;

    /// The tenant's endpoints, oldest first.
    fn list_endpoints(
        &self,
        tenant: &str,
    ) -> impl Future<Output = Result<Vec<Endpoint>, JobsError>> + Send;

    /// One of the tenant's endpoints.
    fn get_endpoint(
        &self,
        tenant: &str,
        endpoint: &str,
    ) -> impl Future<Output = Result<Option<Endpoint>, JobsError>> + Send;

    /// Removes an endpoint and its deliveries; false when there was none.
    fn delete_endpoint(
        &self,
        tenant: &str,
        endpoint: &str,
    ) -> impl Future<Output = Result<bool, JobsError>> + Send;

    /// Enables the endpoint again, clearing why it was disabled and when it
    /// started failing; the endpoint after, if it exists.
    fn enable_endpoint(
        &self,
        tenant: &str,
        endpoint: &str,
    ) -> impl Future<Output = Result<Option<Endpoint>, JobsError>> + Send;

    /// Moves the endpoint to its next secret generation, the previous one
    /// signing until `previous_until`; the endpoint after, if it exists.
    fn rotate_secret(
        &self,
        tenant: &str,
        endpoint: &str,
        previous_until: DateTime<Utc>,
    ) -> impl Future<Output = Result<Option<Endpoint>, JobsError>> + Send;

    /// Stores `delivery` (pending) and enqueues `job` to send it, in one
    /// transaction; with `retry` the delivery exists and is reset to
    /// pending instead. False (and nothing written) when a new delivery's
    /// id is already taken: it was queued before.
    fn enqueue_delivery(
        &self,
        delivery: &Delivery,
        job: &NewJob,
        retry: bool,
    ) -> impl Future<Output = Result<bool, JobsError>> + Send;

    /// One of the tenant's deliveries.
    fn get_delivery(
        &self,
        tenant: &str,
        delivery: &str,
    ) -> impl Future<Output = Result<Option<Delivery>, JobsError>> + Send;

    /// An endpoint's deliveries, newest first, after the cursor
    /// `(created_at, delivery_id)` of the previous page.
    fn list_deliveries(
        &self,
        tenant: &str,
        endpoint: &str,
        after: Option<(DateTime<Utc>, String)>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<Delivery>, JobsError>> + Send;

    /// Records an attempt's outcome on the delivery, and on its endpoint:
    /// a success clears `failing_since`; a failure sets it if unset, and
    /// disables the endpoint when it was set before `disable_before`.
    /// Returns the reason when this outcome disabled the endpoint.
    #[allow(clippy::too_many_arguments, reason = "one row's columns")]
    fn record_attempt(
        &self,
        tenant: &str,
        delivery: &str,
        endpoint: &str,
        state: DeliveryState,
        status: u16,
        error: &str,
        disable_before: DateTime<Utc>,
    ) -> impl Future<Output = Result<Option<String>, JobsError>> + Send;

    /// Deletes deliveries queued before `before` (the log's retention).
    fn prune_deliveries(
        &self,
        before: DateTime<Utc>,
    ) -> impl Future<Output = Result<u64, JobsError>> + Send;

    /// Sends the tenant's endpoints, then its deliveries, as JSON records
    /// (`webhook_endpoints`, `webhook_deliveries`) to `out`, in one read
    /// transaction; stops early when `out` is closed.
    fn export_tenant(
        &self,
        tenant: &str,
        out: tokio::sync::mpsc::Sender<TenantRecord>,
    ) -> impl Future<Output = Result<(), JobsError>> + Send;

    /// Deletes the tenant's endpoints and deliveries in one transaction:
    /// (endpoints, deliveries) deleted. Queued `webhook.deliver` jobs then
    /// find no delivery and are dropped.
    fn delete_tenant(
        &self,
        tenant: &str,
    ) -> impl Future<Output = Result<(u64, u64), JobsError>> + Send;
}

/// What the worker exports, in order: (collection, PostgreSQL query with
/// the tenant as `$1`, SQLite query with it as `?1`), one JSON object per
/// row. Secrets are derived, never stored, so none can be exported.
const EXPORTS: [(&str, &str, &str); 2] = [
    (
        "webhook_endpoints",
        "SELECT json_build_object('endpoint_id', endpoint_id, 'url', url, 'description', description,
                'events', events::json, 'enabled', enabled, 'disabled_reason', disabled_reason,
                'max_in_flight', max_in_flight, 'secret_generation', secret_generation,
                'failing_since', failing_since, 'created_at', created_at)::text
         FROM worker.webhook_endpoint WHERE tenant_id = $1 ORDER BY created_at, endpoint_id",
        "SELECT json_object('endpoint_id', endpoint_id, 'url', url, 'description', description,
                'events', json(events), 'enabled', json(iif(enabled, 'true', 'false')),
                'disabled_reason', disabled_reason, 'max_in_flight', max_in_flight,
                'secret_generation', secret_generation,
                'failing_since', strftime('%Y-%m-%dT%H:%M:%f+00:00', failing_since / 1e6, 'unixepoch'),
                'created_at', strftime('%Y-%m-%dT%H:%M:%f+00:00', created_at / 1e6, 'unixepoch'))
         FROM worker_webhook_endpoint WHERE tenant_id = ?1 ORDER BY created_at, endpoint_id",
    ),
    (
        "webhook_deliveries",
        "SELECT json_build_object('delivery_id', delivery_id, 'endpoint_id', endpoint_id,
                'event', event, 'payload', payload::json, 'state', state, 'attempts', attempts,
                'last_status', last_status, 'last_error', last_error,
                'created_at', created_at, 'updated_at', updated_at)::text
         FROM worker.webhook_delivery WHERE tenant_id = $1 ORDER BY created_at, delivery_id",
        "SELECT json_object('delivery_id', delivery_id, 'endpoint_id', endpoint_id,
                'event', event, 'payload', json(payload), 'state', state, 'attempts', attempts,
                'last_status', last_status, 'last_error', last_error,
                'created_at', strftime('%Y-%m-%dT%H:%M:%f+00:00', created_at / 1e6, 'unixepoch'),
                'updated_at', strftime('%Y-%m-%dT%H:%M:%f+00:00', updated_at / 1e6, 'unixepoch'))
         FROM worker_webhook_delivery WHERE tenant_id = ?1 ORDER BY created_at, delivery_id",
    ),
];

fn events_json(events: &[String]) -> String {
    serde_json::to_string(events).unwrap_or_else(|_| "[]".into())
}

fn events_of(raw: &str) -> Vec<String> {
    serde_json::from_str(raw).unwrap_or_default()
}

fn disabled_reason(failing_since: DateTime<Utc>) -> String {
    format!(
        "disabled automatically: every delivery has failed since {}",
        failing_since.to_rfc3339()
    )
}

// ---------------------------------------------------------------- PostgreSQL

const PG_ENDPOINT_COLUMNS: &str = "tenant_id, endpoint_id, url, description, events, enabled, \
    disabled_reason, max_in_flight, secret_generation, previous_secret_until, failing_since, created_at";
const PG_DELIVERY_COLUMNS: &str = "tenant_id, delivery_id, endpoint_id, event, payload, state, \
    attempts, last_status, last_error, created_at, updated_at";

fn pg_endpoint(row: &sqlx::postgres::PgRow) -> Result<Endpoint, sqlx::Error> {
    Ok(Endpoint {
        tenant_id: row.try_get("tenant_id")?,
        endpoint_id: row.try_get("endpoint_id")?,
        url: row.try_get("url")?,
        description: row.try_get("description")?,
        events: events_of(row.try_get("events")?),
        enabled: row.try_get("enabled")?,
        disabled_reason: row.try_get("disabled_reason")?,
        max_in_flight: u32::try_from(row.try_get::<i32, _>("max_in_flight")?).unwrap_or(1),
        secret_generation: u32::try_from(row.try_get::<i32, _>("secret_generation")?).unwrap_or(1),
        previous_secret_until: row.try_get("previous_secret_until")?,
        failing_since: row.try_get("failing_since")?,
        created_at: row.try_get("created_at")?,
    })
}

fn pg_delivery(row: &sqlx::postgres::PgRow) -> Result<Delivery, sqlx::Error> {
    Ok(Delivery {
        tenant_id: row.try_get("tenant_id")?,
        delivery_id: row.try_get("delivery_id")?,
        endpoint_id: row.try_get("endpoint_id")?,
        event: row.try_get("event")?,
        payload: serde_json::from_str(row.try_get("payload")?).unwrap_or_default(),
        state: DeliveryState::parse(row.try_get("state")?),
        attempts: u32::try_from(row.try_get::<i32, _>("attempts")?).unwrap_or(0),
        last_status: u16::try_from(row.try_get::<i32, _>("last_status")?).unwrap_or(0),
        last_error: row.try_get("last_error")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

impl WebhookStore for PgStore {
    async fn create_endpoint(&self, e: &Endpoint) -> Result<(), JobsError> {
        sqlx::query(
            "INSERT INTO worker.webhook_endpoint (tenant_id, endpoint_id, url, description, \
             events, enabled, max_in_flight, secret_generation, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&e.tenant_id)
        .bind(&e.endpoint_id)
        .bind(&e.url)
        .bind(&e.description)
        .bind(events_json(&e.events))
        .bind(e.enabled)
        .bind(i32::try_from(e.max_in_flight).unwrap_or(i32::MAX))
        .bind(i32::try_from(e.secret_generation).unwrap_or(1))
        .bind(e.created_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn list_endpoints(&self, tenant: &str) -> Result<Vec<Endpoint>, JobsError> {
        let rows = sqlx::query(&format!(
            "SELECT {PG_ENDPOINT_COLUMNS} FROM worker.webhook_endpoint WHERE tenant_id = $1 \
             ORDER BY created_at, endpoint_id"
        ))
        .bind(tenant)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(pg_endpoint).collect::<Result<_, _>>()?)
    }

    async fn get_endpoint(
        &self,
        tenant: &str,
        endpoint: &str,
    ) -> Result<Option<Endpoint>, JobsError> {
        let row = sqlx::query(&format!(
            "SELECT {PG_ENDPOINT_COLUMNS} FROM worker.webhook_endpoint \
             WHERE tenant_id = $1 AND endpoint_id = $2"
        ))
        .bind(tenant)
        .bind(endpoint)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.as_ref().map(pg_endpoint).transpose()?)
    }

    async fn delete_endpoint(&self, tenant: &str, endpoint: &str) -> Result<bool, JobsError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "DELETE FROM worker.webhook_delivery WHERE tenant_id = $1 AND endpoint_id = $2",
        )
        .bind(tenant)
        .bind(endpoint)
        .execute(&mut *tx)
        .await?;
        let deleted = sqlx::query(
            "DELETE FROM worker.webhook_endpoint WHERE tenant_id = $1 AND endpoint_id = $2",
        )
        .bind(tenant)
        .bind(endpoint)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(deleted > 0)
    }

    async fn enable_endpoint(
        &self,
        tenant: &str,
        endpoint: &str,
    ) -> Result<Option<Endpoint>, JobsError> {
        let row = sqlx::query(&format!(
            "UPDATE worker.webhook_endpoint SET enabled = true, disabled_reason = '', \
             failing_since = NULL WHERE tenant_id = $1 AND endpoint_id = $2 \
             RETURNING {PG_ENDPOINT_COLUMNS}"
        ))
        .bind(tenant)
        .bind(endpoint)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.as_ref().map(pg_endpoint).transpose()?)
    }

    async fn rotate_secret(
        &self,
        tenant: &str,
        endpoint: &str,
        previous_until: DateTime<Utc>,
    ) -> Result<Option<Endpoint>, JobsError> {
        let row = sqlx::query(&format!(
            "UPDATE worker.webhook_endpoint SET secret_generation = secret_generation + 1, \
             previous_secret_until = $3 WHERE tenant_id = $1 AND endpoint_id = $2 \
             RETURNING {PG_ENDPOINT_COLUMNS}"
        ))
        .bind(tenant)
        .bind(endpoint)
        .bind(previous_until)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.as_ref().map(pg_endpoint).transpose()?)
    }

    async fn enqueue_delivery(
        &self,
        d: &Delivery,
        job: &NewJob,
        retry: bool,
    ) -> Result<bool, JobsError> {
        let mut tx = self.pool().begin().await?;
        let written = if retry {
            sqlx::query(
                "UPDATE worker.webhook_delivery SET state = 'pending', updated_at = now() \
                 WHERE tenant_id = $1 AND delivery_id = $2",
            )
            .bind(&d.tenant_id)
            .bind(&d.delivery_id)
            .execute(&mut *tx)
            .await?
        } else {
            sqlx::query(
                "INSERT INTO worker.webhook_delivery (tenant_id, delivery_id, endpoint_id, event, \
                 payload, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&d.tenant_id)
            .bind(&d.delivery_id)
            .bind(&d.endpoint_id)
            .bind(&d.event)
            .bind(d.payload.to_string())
            .bind(d.created_at)
            .execute(&mut *tx)
            .await?
        };
        if written.rows_affected() == 0 {
            return Ok(false);
        }
        jobs::postgres::insert(&mut tx, job).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn get_delivery(
        &self,
        tenant: &str,
        delivery: &str,
    ) -> Result<Option<Delivery>, JobsError> {
        let row = sqlx::query(&format!(
            "SELECT {PG_DELIVERY_COLUMNS} FROM worker.webhook_delivery \
             WHERE tenant_id = $1 AND delivery_id = $2"
        ))
        .bind(tenant)
        .bind(delivery)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.as_ref().map(pg_delivery).transpose()?)
    }

    async fn list_deliveries(
        &self,
        tenant: &str,
        endpoint: &str,
        after: Option<(DateTime<Utc>, String)>,
        limit: u32,
    ) -> Result<Vec<Delivery>, JobsError> {
        let (at, id) = after.unwrap_or((DateTime::<Utc>::MAX_UTC, String::new()));
        let rows = sqlx::query(&format!(
            "SELECT {PG_DELIVERY_COLUMNS} FROM worker.webhook_delivery \
             WHERE tenant_id = $1 AND endpoint_id = $2 \
               AND (created_at, delivery_id) < ($3, $4) \
             ORDER BY created_at DESC, delivery_id DESC LIMIT $5"
        ))
        .bind(tenant)
        .bind(endpoint)
        .bind(at)
        .bind(if id.is_empty() {
            "\u{10FFFF}".to_owned()
        } else {
            id
        })
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(pg_delivery).collect::<Result<_, _>>()?)
    }

    async fn record_attempt(
        &self,
        tenant: &str,
        delivery: &str,
        endpoint: &str,
        state: DeliveryState,
        status: u16,
        error: &str,
        disable_before: DateTime<Utc>,
    ) -> Result<Option<String>, JobsError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "UPDATE worker.webhook_delivery SET state = $3, attempts = attempts + 1, \
             last_status = $4, last_error = $5, updated_at = now() \
             WHERE tenant_id = $1 AND delivery_id = $2",
        )
        .bind(tenant)
        .bind(delivery)
        .bind(state.as_str())
        .bind(i32::from(status))
        .bind(error)
        .execute(&mut *tx)
        .await?;
        let disabled = if state == DeliveryState::Succeeded {
            sqlx::query(
                "UPDATE worker.webhook_endpoint SET failing_since = NULL \
                 WHERE tenant_id = $1 AND endpoint_id = $2",
            )
            .bind(tenant)
            .bind(endpoint)
            .execute(&mut *tx)
            .await?;
            None
        } else {
            let row = sqlx::query(
                "UPDATE worker.webhook_endpoint SET failing_since = coalesce(failing_since, now()) \
                 WHERE tenant_id = $1 AND endpoint_id = $2 RETURNING failing_since, enabled",
            )
            .bind(tenant)
            .bind(endpoint)
            .fetch_optional(&mut *tx)
            .await?;
            match row {
                Some(row) => {
                    let since: DateTime<Utc> = row.try_get("failing_since")?;
                    let enabled: bool = row.try_get("enabled")?;
                    if enabled && since < disable_before {
                        let reason = disabled_reason(since);
                        sqlx::query(
                            "UPDATE worker.webhook_endpoint SET enabled = false, disabled_reason = $3 \
                             WHERE tenant_id = $1 AND endpoint_id = $2",
                        )
                        .bind(tenant)
                        .bind(endpoint)
                        .bind(&reason)
                        .execute(&mut *tx)
                        .await?;
                        Some(reason)
                    } else {
                        None
                    }
                }
                None => None,
            }
        };
        tx.commit().await?;
        Ok(disabled)
    }

    async fn prune_deliveries(&self, before: DateTime<Utc>) -> Result<u64, JobsError> {
        Ok(
            sqlx::query("DELETE FROM worker.webhook_delivery WHERE created_at < $1")
                .bind(before)
                .execute(self.pool())
                .await?
                .rows_affected(),
        )
    }

    async fn export_tenant(
        &self,
        tenant: &str,
        out: tokio::sync::mpsc::Sender<TenantRecord>,
    ) -> Result<(), JobsError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        sqlx::query("SET LOCAL TimeZone = 'UTC'")
            .execute(&mut *tx)
            .await?;
        for (collection, query, _) in EXPORTS {
            let rows = sqlx::query_scalar::<_, String>(query)
                .bind(tenant)
                .fetch(&mut *tx);
            if !service_runtime::tenant_data::forward_rows(collection, rows, &out).await? {
                break;
            }
        }
        Ok(())
    }

    async fn delete_tenant(&self, tenant: &str) -> Result<(u64, u64), JobsError> {
        let mut tx = self.pool().begin().await?;
        let deliveries = sqlx::query("DELETE FROM worker.webhook_delivery WHERE tenant_id = $1")
            .bind(tenant)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let endpoints = sqlx::query("DELETE FROM worker.webhook_endpoint WHERE tenant_id = $1")
            .bind(tenant)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok((endpoints, deliveries))
    }
}

// -------------------------------------------------------------------- SQLite

const SQLITE_ENDPOINT_COLUMNS: &str = PG_ENDPOINT_COLUMNS;
const SQLITE_DELIVERY_COLUMNS: &str = PG_DELIVERY_COLUMNS;

fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

fn from_micros(raw: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(raw).unwrap_or_default()
}

fn sqlite_endpoint(row: &sqlx::sqlite::SqliteRow) -> Result<Endpoint, sqlx::Error> {
    Ok(Endpoint {
        tenant_id: row.try_get("tenant_id")?,
        endpoint_id: row.try_get("endpoint_id")?,
        url: row.try_get("url")?,
        description: row.try_get("description")?,
        events: events_of(row.try_get("events")?),
        enabled: row.try_get("enabled")?,
        disabled_reason: row.try_get("disabled_reason")?,
        max_in_flight: u32::try_from(row.try_get::<i64, _>("max_in_flight")?).unwrap_or(1),
        secret_generation: u32::try_from(row.try_get::<i64, _>("secret_generation")?).unwrap_or(1),
        previous_secret_until: row
            .try_get::<Option<i64>, _>("previous_secret_until")?
            .map(from_micros),
        failing_since: row
            .try_get::<Option<i64>, _>("failing_since")?
            .map(from_micros),
        created_at: from_micros(row.try_get("created_at")?),
    })
}

fn sqlite_delivery(row: &sqlx::sqlite::SqliteRow) -> Result<Delivery, sqlx::Error> {
    Ok(Delivery {
        tenant_id: row.try_get("tenant_id")?,
        delivery_id: row.try_get("delivery_id")?,
        endpoint_id: row.try_get("endpoint_id")?,
        event: row.try_get("event")?,
        payload: serde_json::from_str(row.try_get("payload")?).unwrap_or_default(),
        state: DeliveryState::parse(row.try_get("state")?),
        attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(0),
        last_status: u16::try_from(row.try_get::<i64, _>("last_status")?).unwrap_or(0),
        last_error: row.try_get("last_error")?,
        created_at: from_micros(row.try_get("created_at")?),
        updated_at: from_micros(row.try_get("updated_at")?),
    })
}

impl WebhookStore for SqliteStore {
    async fn create_endpoint(&self, e: &Endpoint) -> Result<(), JobsError> {
        sqlx::query(
            "INSERT INTO worker_webhook_endpoint (tenant_id, endpoint_id, url, description, \
             events, enabled, max_in_flight, secret_generation, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&e.tenant_id)
        .bind(&e.endpoint_id)
        .bind(&e.url)
        .bind(&e.description)
        .bind(events_json(&e.events))
        .bind(e.enabled)
        .bind(i64::from(e.max_in_flight))
        .bind(i64::from(e.secret_generation))
        .bind(micros(e.created_at))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn list_endpoints(&self, tenant: &str) -> Result<Vec<Endpoint>, JobsError> {
        let rows = sqlx::query(&format!(
            "SELECT {SQLITE_ENDPOINT_COLUMNS} FROM worker_webhook_endpoint WHERE tenant_id = ? \
             ORDER BY created_at, endpoint_id"
        ))
        .bind(tenant)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(sqlite_endpoint).collect::<Result<_, _>>()?)
    }

    async fn get_endpoint(
        &self,
        tenant: &str,
        endpoint: &str,
    ) -> Result<Option<Endpoint>, JobsError> {
        let row = sqlx::query(&format!(
            "SELECT {SQLITE_ENDPOINT_COLUMNS} FROM worker_webhook_endpoint \
             WHERE tenant_id = ? AND endpoint_id = ?"
        ))
        .bind(tenant)
        .bind(endpoint)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.as_ref().map(sqlite_endpoint).transpose()?)
    }

    async fn delete_endpoint(&self, tenant: &str, endpoint: &str) -> Result<bool, JobsError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM worker_webhook_delivery WHERE tenant_id = ? AND endpoint_id = ?")
            .bind(tenant)
            .bind(endpoint)
            .execute(&mut *tx)
            .await?;
        let deleted = sqlx::query(
            "DELETE FROM worker_webhook_endpoint WHERE tenant_id = ? AND endpoint_id = ?",
        )
        .bind(tenant)
        .bind(endpoint)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(deleted > 0)
    }

    async fn enable_endpoint(
        &self,
        tenant: &str,
        endpoint: &str,
    ) -> Result<Option<Endpoint>, JobsError> {
        let row = sqlx::query(&format!(
            "UPDATE worker_webhook_endpoint SET enabled = 1, disabled_reason = '', \
             failing_since = NULL WHERE tenant_id = ? AND endpoint_id = ? \
             RETURNING {SQLITE_ENDPOINT_COLUMNS}"
        ))
        .bind(tenant)
        .bind(endpoint)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.as_ref().map(sqlite_endpoint).transpose()?)
    }

    async fn rotate_secret(
        &self,
        tenant: &str,
        endpoint: &str,
        previous_until: DateTime<Utc>,
    ) -> Result<Option<Endpoint>, JobsError> {
        let row = sqlx::query(&format!(
            "UPDATE worker_webhook_endpoint SET secret_generation = secret_generation + 1, \
             previous_secret_until = ? WHERE tenant_id = ? AND endpoint_id = ? \
             RETURNING {SQLITE_ENDPOINT_COLUMNS}"
        ))
        .bind(micros(previous_until))
        .bind(tenant)
        .bind(endpoint)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.as_ref().map(sqlite_endpoint).transpose()?)
    }

    async fn enqueue_delivery(
        &self,
        d: &Delivery,
        job: &NewJob,
        retry: bool,
    ) -> Result<bool, JobsError> {
        let mut tx = self.pool().begin().await?;
        let now = micros(Utc::now());
        let written = if retry {
            sqlx::query(
                "UPDATE worker_webhook_delivery SET state = 'pending', updated_at = ? \
                 WHERE tenant_id = ? AND delivery_id = ?",
            )
            .bind(now)
            .bind(&d.tenant_id)
            .bind(&d.delivery_id)
            .execute(&mut *tx)
            .await?
        } else {
            sqlx::query(
                "INSERT OR IGNORE INTO worker_webhook_delivery (tenant_id, delivery_id, endpoint_id, \
                 event, payload, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&d.tenant_id)
            .bind(&d.delivery_id)
            .bind(&d.endpoint_id)
            .bind(&d.event)
            .bind(d.payload.to_string())
            .bind(micros(d.created_at))
            .bind(micros(d.created_at))
            .execute(&mut *tx)
            .await?
        };
        if written.rows_affected() == 0 {
            return Ok(false);
        }
        jobs::sqlite::insert(&mut tx, job).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn get_delivery(
        &self,
        tenant: &str,
        delivery: &str,
    ) -> Result<Option<Delivery>, JobsError> {
        let row = sqlx::query(&format!(
            "SELECT {SQLITE_DELIVERY_COLUMNS} FROM worker_webhook_delivery \
             WHERE tenant_id = ? AND delivery_id = ?"
        ))
        .bind(tenant)
        .bind(delivery)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.as_ref().map(sqlite_delivery).transpose()?)
    }

    async fn list_deliveries(
        &self,
        tenant: &str,
        endpoint: &str,
        after: Option<(DateTime<Utc>, String)>,
        limit: u32,
    ) -> Result<Vec<Delivery>, JobsError> {
        let (at, id) = after.map_or((i64::MAX, "\u{10FFFF}".to_owned()), |(at, id)| {
            (micros(at), id)
        });
        let rows = sqlx::query(&format!(
            "SELECT {SQLITE_DELIVERY_COLUMNS} FROM worker_webhook_delivery \
             WHERE tenant_id = ? AND endpoint_id = ? \
               AND (created_at < ? OR (created_at = ? AND delivery_id < ?)) \
             ORDER BY created_at DESC, delivery_id DESC LIMIT ?"
        ))
        .bind(tenant)
        .bind(endpoint)
        .bind(at)
        .bind(at)
        .bind(id)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(sqlite_delivery).collect::<Result<_, _>>()?)
    }

    async fn record_attempt(
        &self,
        tenant: &str,
        delivery: &str,
        endpoint: &str,
        state: DeliveryState,
        status: u16,
        error: &str,
        disable_before: DateTime<Utc>,
    ) -> Result<Option<String>, JobsError> {
        let now = Utc::now();
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "UPDATE worker_webhook_delivery SET state = ?, attempts = attempts + 1, \
             last_status = ?, last_error = ?, updated_at = ? \
             WHERE tenant_id = ? AND delivery_id = ?",
        )
        .bind(state.as_str())
        .bind(i64::from(status))
        .bind(error)
        .bind(micros(now))
        .bind(tenant)
        .bind(delivery)
        .execute(&mut *tx)
        .await?;
        let disabled = if state == DeliveryState::Succeeded {
            sqlx::query(
                "UPDATE worker_webhook_endpoint SET failing_since = NULL \
                 WHERE tenant_id = ? AND endpoint_id = ?",
            )
            .bind(tenant)
            .bind(endpoint)
            .execute(&mut *tx)
            .await?;
            None
        } else {
            let row = sqlx::query(
                "UPDATE worker_webhook_endpoint SET failing_since = coalesce(failing_since, ?) \
                 WHERE tenant_id = ? AND endpoint_id = ? RETURNING failing_since, enabled",
            )
            .bind(micros(now))
            .bind(tenant)
            .bind(endpoint)
            .fetch_optional(&mut *tx)
            .await?;
            match row {
                Some(row) => {
                    let since = from_micros(row.try_get("failing_since")?);
                    let enabled: bool = row.try_get("enabled")?;
                    if enabled && since < disable_before {
                        let reason = disabled_reason(since);
                        sqlx::query(
                            "UPDATE worker_webhook_endpoint SET enabled = 0, disabled_reason = ? \
                             WHERE tenant_id = ? AND endpoint_id = ?",
                        )
                        .bind(&reason)
                        .bind(tenant)
                        .bind(endpoint)
                        .execute(&mut *tx)
                        .await?;
                        Some(reason)
                    } else {
                        None
                    }
                }
                None => None,
            }
        };
        tx.commit().await?;
        Ok(disabled)
    }

    async fn prune_deliveries(&self, before: DateTime<Utc>) -> Result<u64, JobsError> {
        Ok(
            sqlx::query("DELETE FROM worker_webhook_delivery WHERE created_at < ?")
                .bind(micros(before))
                .execute(self.pool())
                .await?
                .rows_affected(),
        )
    }

    async fn export_tenant(
        &self,
        tenant: &str,
        out: tokio::sync::mpsc::Sender<TenantRecord>,
    ) -> Result<(), JobsError> {
        // A read transaction: one snapshot (WAL) for both collections.
        let mut tx = self.pool().begin().await?;
        for (collection, _, query) in EXPORTS {
            let rows = sqlx::query_scalar::<_, String>(query)
                .bind(tenant)
                .fetch(&mut *tx);
            if !service_runtime::tenant_data::forward_rows(collection, rows, &out).await? {
                break;
            }
        }
        Ok(())
    }

    async fn delete_tenant(&self, tenant: &str) -> Result<(u64, u64), JobsError> {
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
        let deliveries = sqlx::query("DELETE FROM worker_webhook_delivery WHERE tenant_id = ?1")
            .bind(tenant)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let endpoints = sqlx::query("DELETE FROM worker_webhook_endpoint WHERE tenant_id = ?1")
            .bind(tenant)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok((endpoints, deliveries))
    }
}
