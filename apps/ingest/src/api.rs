//! `platform.ingest.v1.IngestService`. Every RPC answers `UNIMPLEMENTED` (the
//! contract's default) until the ingest issue implements it.

use contracts::ingest::v1::ingest_service_server::{IngestService, IngestServiceServer};

/// The gRPC handler; it will hold the app's engine handles.
#[derive(Debug, Clone, Default)]
pub(crate) struct IngestApi;

impl IngestService for IngestApi {}

pub(crate) fn server() -> IngestServiceServer<IngestApi> {
    IngestServiceServer::new(IngestApi)
}
