//! `platform.ingest.v1.IngestService`. Implemented so far: `ReadWindow` and
//! `PruneReadings`; the publish, stats and window-result RPCs answer
//! `UNIMPLEMENTED` (the contract's default) until the pipeline is wired in.
//! Store errors become gRPC statuses in one place, [`status`].

use chrono::{DateTime, Duration, Utc};
use contracts::ingest::v1::{
    self as pb,
    ingest_service_server::{IngestService, IngestServiceServer},
};
use tonic::{Request, Response, Status};

use crate::store::{IngestStore, StoreError, WindowQuery};

/// Default and largest page of a window read.
const DEFAULT_PAGE: u32 = 1_000;
const MAX_PAGE: u32 = 10_000;
/// Default and largest prune batch.
const DEFAULT_PRUNE: u32 = 10_000;
const MAX_PRUNE: u32 = 100_000;

/// The gRPC handler over the store.
#[derive(Debug, Clone)]
pub(crate) struct IngestApi {
    store: IngestStore,
}

pub(crate) fn server(store: IngestStore) -> IngestServiceServer<IngestApi> {
    IngestServiceServer::new(IngestApi { store })
}

/// The one mapping from store errors to gRPC statuses.
fn status(error: StoreError) -> Status {
    tracing::warn!(%error, "store error");
    Status::unavailable("the readings database is unavailable; retry later")
}

fn timestamp(field: &str, value: Option<prost_types::Timestamp>) -> Result<DateTime<Utc>, Status> {
    let value = value.ok_or_else(|| Status::invalid_argument(format!("{field}: is required")))?;
    u32::try_from(value.nanos)
        .ok()
        .and_then(|nanos| DateTime::from_timestamp(value.seconds, nanos))
        .ok_or_else(|| Status::invalid_argument(format!("{field}: is not a valid timestamp")))
}

/// `<micros>:<event id>` of the last reading on a page.
fn page_token(at: DateTime<Utc>, event_id: &str) -> String {
    format!("{}:{event_id}", at.timestamp_micros())
}

fn parse_token(token: &str) -> Result<Option<(DateTime<Utc>, String)>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let malformed = || Status::invalid_argument("page_token: malformed");
    let (micros, event_id) = token.split_once(':').ok_or_else(malformed)?;
    let at = micros
        .parse()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(malformed)?;
    Ok(Some((at, event_id.to_owned())))
}

#[tonic::async_trait]
impl IngestService for IngestApi {
    async fn read_window(
        &self,
        request: Request<pb::ReadWindowRequest>,
    ) -> Result<Response<pb::ReadWindowResponse>, Status> {
        let request = request.into_inner();
        let window = request
            .window
            .ok_or_else(|| Status::invalid_argument("window: is required"))?;
        for (field, value) in [
            ("window.tenant_id", &window.tenant_id),
            ("window.device_id", &window.device_id),
            ("window.metric", &window.metric),
        ] {
            if value.is_empty() {
                return Err(Status::invalid_argument(format!("{field}: is required")));
            }
        }
        let start = timestamp("window.window_start", window.window_start)?;
        let length = window
            .window_length
            .and_then(|d| std::time::Duration::try_from(d).ok())
            .filter(|d| !d.is_zero() && d.as_secs() <= 86_400)
            .ok_or_else(|| {
                Status::invalid_argument("window.window_length: must be between 1 ns and 1 day")
            })?;
        let limit = match request.page_size {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let query = WindowQuery {
            tenant_id: window.tenant_id,
            device_id: window.device_id,
            metric: window.metric,
            start,
            end: start + Duration::from_std(length).unwrap_or(Duration::days(1)),
            after: parse_token(&request.page_token)?,
            limit,
        };
        let readings = self.store.read_window(&query).await.map_err(status)?;
        let next_page_token = match readings.last() {
            Some(last) if readings.len() == limit as usize => {
                page_token(last.observed_at, &last.event_id)
            }
            _ => String::new(),
        };
        let readings = readings
            .into_iter()
            .map(|r| pb::WindowReading {
                event_id: r.event_id,
                value: r.value,
                observed_at: Some(prost_types::Timestamp {
                    seconds: r.observed_at.timestamp(),
                    nanos: i32::try_from(r.observed_at.timestamp_subsec_nanos()).unwrap_or(0),
                }),
            })
            .collect();
        Ok(Response::new(pb::ReadWindowResponse {
            readings,
            next_page_token,
        }))
    }

    async fn prune_readings(
        &self,
        request: Request<pb::PruneReadingsRequest>,
    ) -> Result<Response<pb::PruneReadingsResponse>, Status> {
        let request = request.into_inner();
        let older_than = timestamp("older_than", request.older_than)?;
        let batch = match request.batch_size {
            0 => DEFAULT_PRUNE,
            n => n.min(MAX_PRUNE),
        };
        let deleted = self.store.prune(older_than, batch).await.map_err(status)?;
        Ok(Response::new(pb::PruneReadingsResponse { deleted }))
    }
}
