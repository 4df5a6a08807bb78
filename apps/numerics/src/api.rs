//! `platform.numerics.v1.NumericsService`. Every RPC answers `UNIMPLEMENTED` (the
//! contract's default) until the numerics issue implements it.

use contracts::numerics::v1::numerics_service_server::{NumericsService, NumericsServiceServer};

/// The gRPC handler; it will hold the app's engine handles.
#[derive(Debug, Clone, Default)]
pub(crate) struct NumericsApi;

impl NumericsService for NumericsApi {}

pub(crate) fn server() -> NumericsServiceServer<NumericsApi> {
    NumericsServiceServer::new(NumericsApi)
}
