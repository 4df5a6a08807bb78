//! The `platform.service.v1.ServiceInfoService` every app serves.

use std::time::Instant;

use contracts::service::v1::{
    GetServiceInfoRequest, GetServiceInfoResponse, service_info_service_server::ServiceInfoService,
};
use tonic::{Request, Response, Status};

use crate::{BuildInfo, instance_id};

/// Answers with the build and process identity of this app.
#[derive(Debug, Clone)]
pub(crate) struct ServiceInfo {
    info: BuildInfo,
    started: Instant,
}

impl ServiceInfo {
    pub(crate) fn new(info: BuildInfo) -> Self {
        Self {
            info,
            started: Instant::now(),
        }
    }
}

#[tonic::async_trait]
impl ServiceInfoService for ServiceInfo {
    async fn get_service_info(
        &self,
        _request: Request<GetServiceInfoRequest>,
    ) -> Result<Response<GetServiceInfoResponse>, Status> {
        let uptime = self.started.elapsed();
        let totals = telemetry::request_totals();
        Ok(Response::new(GetServiceInfoResponse {
            name: self.info.name.to_owned(),
            version: self.info.version.to_owned(),
            git_revision: self.info.git_revision.to_owned(),
            build_time: self.info.build_time.to_owned(),
            uptime: Some(prost_types::Duration {
                seconds: i64::try_from(uptime.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(uptime.subsec_nanos()).unwrap_or(0),
            }),
            instance_id: instance_id().to_owned(),
            requests_served: totals.served,
            requests_failed: totals.failed,
        }))
    }
}
