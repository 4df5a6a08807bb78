//! `platform.tenancy.v1.TenantDataService` over any app's store. Every app
//! that holds tenant data implements [`TenantData`] for its store and
//! registers [`tenant_data_service`]; checking the tenant id, paging the
//! export and writing the audit log happen here, once, the same in every
//! app.

use std::{future::Future, pin::Pin};

use contracts::tenancy::v1::{
    self as pb,
    tenant_data_service_server::{TenantDataService, TenantDataServiceServer},
};
use futures_util::{Stream, StreamExt as _};
use security::audit::{AuditEvent, AuditOutcome};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

pub use pb::{CollectionCount, TenantRecord};

/// Records sent in one response message of an export.
pub const EXPORT_PAGE: usize = 500;

/// Records an app's store may hold in flight ahead of the client.
const EXPORT_BUFFER: usize = 2 * EXPORT_PAGE;

/// One app's tenant data, as its store reaches it.
pub trait TenantData: Clone + Send + Sync + 'static {
    /// Sends every record of `tenant` to `out`, collection by collection,
    /// in one consistent read where the database allows. Returns early
    /// (successfully) when `out` is closed: the client went away.
    fn export(
        &self,
        tenant: &str,
        out: mpsc::Sender<TenantRecord>,
    ) -> impl Future<Output = Result<(), TenantDataError>> + Send;

    /// Deletes every record of `tenant` in one transaction; rows deleted
    /// per collection, every collection listed. Idempotent.
    fn delete(
        &self,
        tenant: &str,
    ) -> impl Future<Output = Result<Vec<CollectionCount>, TenantDataError>> + Send;
}

/// Why an export or a deletion failed.
#[derive(Debug, thiserror::Error)]
pub enum TenantDataError {
    /// The database failed or is unreachable: try again.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// A fault on the serving app's side (a failing statement, a row that
    /// cannot be read): logged there, not retried.
    #[error("{0}")]
    Internal(String),
}

impl From<TenantDataError> for Status {
    fn from(error: TenantDataError) -> Self {
        match error {
            TenantDataError::Unavailable(_) => Status::unavailable(error.to_string()),
            TenantDataError::Internal(_) => Status::internal(error.to_string()),
        }
    }
}

/// A record of `collection` holding `json`.
pub fn record(collection: &str, json: String) -> TenantRecord {
    TenantRecord {
        collection: collection.to_owned(),
        json,
    }
}

/// Sends each JSON row of `rows` to `out` as a record of `collection`:
/// the loop every store's export runs per collection. `Ok(false)` when
/// `out` is closed (the client went away: stop exporting).
pub async fn forward_rows<E>(
    collection: &str,
    rows: impl Stream<Item = Result<String, E>>,
    out: &mpsc::Sender<TenantRecord>,
) -> Result<bool, E> {
    let mut rows = std::pin::pin!(rows);
    while let Some(json) = rows.next().await.transpose()? {
        if out.send(record(collection, json)).await.is_err() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The gRPC service over `data`.
pub fn tenant_data_service<D: TenantData>(data: D) -> TenantDataServiceServer<TenantDataApi<D>> {
    TenantDataServiceServer::new(TenantDataApi { data })
}

/// The handler behind [`tenant_data_service`].
#[derive(Debug, Clone)]
pub struct TenantDataApi<D> {
    data: D,
}

/// The tenant id of a request: present, and the characters tenant ids
/// (and principals) are made of.
fn tenant_id(raw: &str) -> Result<&str, Status> {
    if raw.is_empty() {
        return Err(Status::invalid_argument("tenant_id: is required"));
    }
    let valid = raw.len() <= 128
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        return Err(Status::invalid_argument(
            "tenant_id: at most 128 letters, digits, '-', '_' or '.'",
        ));
    }
    Ok(raw)
}

type ExportStream =
    Pin<Box<dyn Stream<Item = Result<pb::ExportTenantDataResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<D: TenantData> TenantDataService for TenantDataApi<D> {
    async fn export_tenant_data(
        &self,
        request: Request<pb::ExportTenantDataRequest>,
    ) -> Result<Response<ExportStream>, Status> {
        let actor = security::audit::peer_actor(&request);
        let tenant = tenant_id(&request.get_ref().tenant_id)?.to_owned();
        let (records, received) = mpsc::channel(EXPORT_BUFFER);
        let (pages, answer) = mpsc::channel::<Result<pb::ExportTenantDataResponse, Status>>(2);
        let data = self.data.clone();
        tokio::spawn(async move {
            let export = data.export(&tenant, records);
            let forward = forward_pages(received, &pages);
            let (exported, ()) = tokio::join!(export, forward);
            security::audit::record(&AuditEvent {
                actor: &actor,
                action: "tenant.export",
                target: &tenant,
                outcome: AuditOutcome::of(&exported),
            });
            if let Err(error) = exported {
                tracing::error!(%error, tenant, "a tenant export failed");
                let _closed = pages.send(Err(error.into())).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(answer))))
    }

    async fn delete_tenant_data(
        &self,
        request: Request<pb::DeleteTenantDataRequest>,
    ) -> Result<Response<pb::DeleteTenantDataResponse>, Status> {
        let actor = security::audit::peer_actor(&request);
        let tenant = tenant_id(&request.get_ref().tenant_id)?;
        let deleted = self.data.delete(tenant).await;
        security::audit::record(&AuditEvent {
            actor: &actor,
            action: "tenant.delete_data",
            target: tenant,
            outcome: AuditOutcome::of(&deleted),
        });
        Ok(Response::new(pb::DeleteTenantDataResponse {
            deleted: deleted?,
        }))
    }
}

/// Groups records into pages of [`EXPORT_PAGE`] until the store stops
/// sending; stops early when the client goes away.
async fn forward_pages(
    received: mpsc::Receiver<TenantRecord>,
    pages: &mpsc::Sender<Result<pb::ExportTenantDataResponse, Status>>,
) {
    let mut chunks = ReceiverStream::new(received).ready_chunks(EXPORT_PAGE);
    while let Some(records) = chunks.next().await {
        let page = pb::ExportTenantDataResponse { records };
        if pages.send(Ok(page)).await.is_err() {
            return;
        }
    }
}
