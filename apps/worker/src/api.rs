//! `platform.jobs.v1.JobsService`. Every RPC answers `UNIMPLEMENTED` (the
//! contract's default) until the worker issue implements it.

use contracts::jobs::v1::jobs_service_server::{JobsService, JobsServiceServer};

/// The gRPC handler; it will hold the app's engine handles.
#[derive(Debug, Clone, Default)]
pub(crate) struct JobsApi;

impl JobsService for JobsApi {}

pub(crate) fn server() -> JobsServiceServer<JobsApi> {
    JobsServiceServer::new(JobsApi)
}
