//! A tenant's end of life, across the platform: export everything it has
//! and delete it everywhere. The gateway owns the tenant; every app that
//! holds tenant data serves `platform.tenancy.v1.TenantDataService`, which
//! the gateway calls acting for the operator (`gateway tenants
//! export|delete`). Deletion is resumable: the tenant is marked first (its
//! keys refused at once), each app deletes in its own transaction and
//! idempotently, and the gateway's own rows go last; a run interrupted
//! anywhere is finished by running it again. Tenants' own retention is
//! applied here too: a background sweep prunes each tenant's old data
//! through ingest, acting for that tenant.

use std::{io::Write, time::Duration};

use chrono::Utc;
use contracts::{
    ingest::v1::{self as ingest_pb, ingest_service_client::IngestServiceClient},
    tenancy::v1::{
        self as pb, CollectionCount, tenant_data_service_client::TenantDataServiceClient,
    },
};
use service_runtime::{ChannelError, TracedChannel, traced_channel};

use crate::{
    Config,
    keys::TenantId,
    storage::{GatewayStore, StoreError, TenantState},
};

/// Longest a single export or deletion call to one app may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(3_600);

/// The apps that hold tenant data, by name.
#[derive(Debug, Clone)]
pub struct TenantDataApps {
    apps: Vec<(&'static str, TracedChannel)>,
}

impl TenantDataApps {
    /// Channels to ingest and the worker, as the gateway's configuration
    /// names them.
    pub fn connect(config: &Config) -> Result<Self, ChannelError> {
        let transport = &config.common.transport;
        let channel = |name, url| {
            traced_channel(url, transport, name, config.status_timeout, CALL_TIMEOUT)
                .map(|channel| (name, channel))
        };
        Ok(Self {
            apps: vec![
                channel("ingest", &config.ingest_url)?,
                channel("worker", &config.worker_url)?,
            ],
        })
    }

    /// Over channels made elsewhere (tests).
    pub fn new(apps: Vec<(&'static str, TracedChannel)>) -> Self {
        Self { apps }
    }
}

/// Why an export or a deletion did not finish.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The gateway's database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An app refused or failed; for a deletion, the tenant stays
    /// `deleting` and running the command again resumes it.
    #[error("{app}: {status}")]
    App {
        /// Which app.
        app: &'static str,
        /// Its answer.
        status: tonic::Status,
    },
    /// An app sent a record that is not a JSON object.
    #[error("{app}: record of {collection} is not JSON: {problem}")]
    BadRecord {
        /// Which app.
        app: &'static str,
        /// Its collection.
        collection: String,
        /// The parse error.
        problem: String,
    },
    /// Writing the export failed.
    #[error("writing the export: {0}")]
    Write(#[from] std::io::Error),
    /// No such tenant.
    #[error("no tenant {0}")]
    NoTenant(TenantId),
    /// The operator's name cannot be sent as a principal.
    #[error("operator {0:?}: not a valid principal name")]
    BadOperator(String),
}

/// Marks a request as the gateway acting for `operator`.
fn as_operator<T>(message: T, operator: &str) -> Result<tonic::Request<T>, LifecycleError> {
    let mut request = tonic::Request::new(message);
    let principal = format!("operator:{operator}")
        .parse()
        .map_err(|_| LifecycleError::BadOperator(operator.to_owned()))?;
    request
        .metadata_mut()
        .insert(security::policy::PRINCIPAL_METADATA, principal);
    Ok(request)
}

/// What a deletion removed, app by app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletionReport {
    /// Whether the tenant was already fully deleted (nothing was done).
    pub already_deleted: bool,
    /// Rows deleted per collection, for each app.
    pub deleted: Vec<(&'static str, Vec<CollectionCount>)>,
}

/// Deletes `tenant` everywhere: refuses its keys, waits `drain` for its
/// requests in flight (the key cache's time to live and the request
/// timeout), deletes its data in every app, then its keys and usage here,
/// keeping the tenant's id as a tombstone.
pub async fn delete_tenant(
    store: &impl GatewayStore,
    apps: &TenantDataApps,
    tenant: &TenantId,
    drain: Duration,
    operator: &str,
) -> Result<DeletionReport, LifecycleError> {
    let before = store
        .get_tenant(tenant)
        .await?
        .ok_or_else(|| LifecycleError::NoTenant(tenant.clone()))?;
    if before.state == TenantState::Deleted {
        return Ok(DeletionReport {
            already_deleted: true,
            deleted: Vec::new(),
        });
    }
    store.begin_deletion(tenant, Utc::now()).await?;
    if before.state != TenantState::Deleting {
        tokio::time::sleep(drain).await;
    }
    let mut deleted = Vec::with_capacity(apps.apps.len());
    for (app, channel) in &apps.apps {
        let request = as_operator(
            pb::DeleteTenantDataRequest {
                tenant_id: tenant.to_string(),
            },
            operator,
        )?;
        let answer = TenantDataServiceClient::new(channel.clone())
            .delete_tenant_data(request)
            .await
            .map_err(|status| LifecycleError::App { app, status })?;
        deleted.push((*app, answer.into_inner().deleted));
    }
    store.finish_deletion(tenant, Utc::now()).await?;
    Ok(DeletionReport {
        already_deleted: false,
        deleted,
    })
}

/// Records written per collection, for each source.
pub type ExportCounts = Vec<(&'static str, String, u64)>;

/// Writes everything `tenant` has as JSON lines to `out`, one record a
/// line: `{"app": ..., "collection": ..., "record": {...}}`. The gateway's
/// part first (the tenant, its keys without digests), then each app's.
pub async fn export_tenant(
    store: &impl GatewayStore,
    apps: &TenantDataApps,
    tenant: &TenantId,
    operator: &str,
    out: &mut impl Write,
) -> Result<ExportCounts, LifecycleError> {
    let found = store
        .get_tenant(tenant)
        .await?
        .ok_or_else(|| LifecycleError::NoTenant(tenant.clone()))?;
    let mut counts: ExportCounts = Vec::new();
    let mut line = |app: &'static str, collection: &str, record: serde_json::Value| {
        let entry = serde_json::json!({"app": app, "collection": collection, "record": record});
        serde_json::to_writer(&mut *out, &entry).map_err(std::io::Error::from)?;
        out.write_all(b"\n")?;
        match counts.last_mut() {
            Some((a, c, n)) if *a == app && c == collection => *n += 1,
            _ => counts.push((app, collection.to_owned(), 1)),
        }
        Ok::<(), LifecycleError>(())
    };
    line(
        "gateway",
        "tenant",
        serde_json::json!({
            "tenant_id": found.id.as_str(),
            "name": found.name,
            "state": found.state.as_str(),
            "created_at": found.created_at.to_rfc3339(),
            "readings_per_day": found.readings_per_day,
            "max_series": found.max_series,
            "retention_days": found.retention_days,
        }),
    )?;
    for key in store.list_keys(tenant).await? {
        let time = |at: Option<chrono::DateTime<Utc>>| at.map(|at| at.to_rfc3339());
        line(
            "gateway",
            "api_keys",
            serde_json::json!({
                "key_id": key.id.as_str(),
                "scopes": key.scopes,
                "name": key.name,
                "created_at": key.created_at.to_rfc3339(),
                "expires_at": time(key.expires_at),
                "revoked_at": time(key.revoked_at),
                "last_used_at": time(key.last_used_at),
            }),
        )?;
    }
    for (app, channel) in &apps.apps {
        let request = as_operator(
            pb::ExportTenantDataRequest {
                tenant_id: tenant.to_string(),
            },
            operator,
        )?;
        let failed = |status| LifecycleError::App { app, status };
        let mut pages = TenantDataServiceClient::new(channel.clone())
            .export_tenant_data(request)
            .await
            .map_err(failed)?
            .into_inner();
        while let Some(page) = pages.message().await.map_err(failed)? {
            for record in page.records {
                let value: serde_json::Value =
                    serde_json::from_str(&record.json).map_err(|e| LifecycleError::BadRecord {
                        app,
                        collection: record.collection.clone(),
                        problem: e.to_string(),
                    })?;
                line(app, &record.collection, value)?;
            }
        }
    }
    out.flush()?;
    Ok(counts)
}

/// Most prune calls per tenant in one sweep (each deletes up to the batch
/// ingest allows); what is left is pruned at the next sweep.
const PRUNE_CALLS_PER_SWEEP: usize = 100;

/// What one retention sweep deleted, per tenant: (readings, results).
pub type RetentionReport = Vec<(TenantId, u64, u64)>;

/// Applies every tenant's own retention once: for each tenant that has
/// one (and is not deleted), deletes its readings observed, and its window
/// results starting, more than `retention_days` before `now`, through
/// ingest acting for the tenant. A failing tenant is logged and skipped.
pub async fn apply_retention(
    store: &impl GatewayStore,
    ingest: &IngestServiceClient<TracedChannel>,
    now: chrono::DateTime<Utc>,
) -> Result<RetentionReport, LifecycleError> {
    let mut report = Vec::new();
    for tenant in store.list_tenants().await? {
        let (Some(days), TenantState::Active | TenantState::Suspended) =
            (tenant.retention_days, tenant.state)
        else {
            continue;
        };
        let days = i64::try_from(days).unwrap_or(i64::MAX).min(365_000);
        let older_than = now - chrono::Duration::days(days);
        match prune_tenant(ingest, &tenant.id, older_than).await {
            Ok((readings, results)) => report.push((tenant.id, readings, results)),
            Err(error) => tracing::warn!(
                tenant = %tenant.id, %error,
                "could not apply the tenant's retention; trying again at the next sweep"
            ),
        }
    }
    Ok(report)
}

/// Prunes one tenant's data older than `older_than`, batch by batch.
async fn prune_tenant(
    ingest: &IngestServiceClient<TracedChannel>,
    tenant: &TenantId,
    older_than: chrono::DateTime<Utc>,
) -> Result<(u64, u64), LifecycleError> {
    let (mut readings, mut results) = (0, 0);
    for _ in 0..PRUNE_CALLS_PER_SWEEP {
        let mut request = tonic::Request::new(ingest_pb::PruneReadingsRequest {
            older_than: Some(prost_types::Timestamp {
                seconds: older_than.timestamp(),
                nanos: 0,
            }),
            batch_size: 0,
            tenant_id: tenant.to_string(),
        });
        let principal = format!("tenant:{tenant}")
            .parse()
            .map_err(|_| LifecycleError::BadOperator(tenant.to_string()))?;
        request
            .metadata_mut()
            .insert(security::policy::PRINCIPAL_METADATA, principal);
        let pruned = ingest
            .clone()
            .prune_readings(request)
            .await
            .map_err(|status| LifecycleError::App {
                app: "ingest",
                status,
            })?
            .into_inner();
        readings += pruned.deleted;
        results += pruned.results_deleted;
        if pruned.deleted == 0 && pruned.results_deleted == 0 {
            break;
        }
    }
    Ok((readings, results))
}

/// Sweeps every `every` until `stop` (the gateway's background task).
pub async fn retention_until(
    store: impl GatewayStore,
    ingest: IngestServiceClient<TracedChannel>,
    every: Duration,
    stop: service_runtime::CancellationToken,
) {
    if every.is_zero() {
        return;
    }
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        match apply_retention(&store, &ingest, Utc::now()).await {
            Ok(report) => {
                for (tenant, readings, results) in report {
                    if readings + results > 0 {
                        tracing::info!(%tenant, readings, results, "applied the tenant's retention");
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "the retention sweep failed; trying again later"),
        }
    }
}
