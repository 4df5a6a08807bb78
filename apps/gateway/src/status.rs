//! `GET /v1/status`: asks every app, concurrently and within a deadline,
//! whether it is serving and which build it runs. The public answer names
//! each app's state only; addresses, builds, instances and errors are on
//! the admin port's `GET /status`.

use std::time::{Duration, Instant};

use contracts::service::v1::{
    GetServiceInfoRequest, service_info_service_client::ServiceInfoServiceClient,
};
use serde::Serialize;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{INFO, backends::Backend};

/// One app's answer as the status page shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ServiceStatus {
    pub(crate) name: &'static str,
    /// `serving`, `not_serving` or `down`.
    pub(crate) state: &'static str,
    pub(crate) version: Option<String>,
    pub(crate) git_revision: Option<String>,
    pub(crate) instance_id: Option<String>,
    pub(crate) uptime_seconds: Option<i64>,
    /// Requests served since the app started, and those that failed on
    /// its side (the console's overview; not on the status pages).
    #[serde(skip)]
    pub(crate) requests: Option<service_runtime::RequestTotals>,
    pub(crate) latency_ms: f64,
    pub(crate) address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

/// The whole platform as the status page shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PlatformStatus {
    /// True when every app is serving.
    pub(crate) serving: bool,
    pub(crate) services: Vec<ServiceStatus>,
}

/// What anyone may see: whether the platform serves, and each app's state.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct PublicStatus {
    serving: bool,
    services: Vec<PublicServiceStatus>,
}

/// One app, publicly: its name and state only.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
struct PublicServiceStatus {
    name: &'static str,
    state: &'static str,
}

impl From<&PlatformStatus> for PublicStatus {
    fn from(status: &PlatformStatus) -> Self {
        Self {
            serving: status.serving,
            services: status
                .services
                .iter()
                .map(|s| PublicServiceStatus {
                    name: s.name,
                    state: s.state,
                })
                .collect(),
        }
    }
}

/// Asks every backend at once; each answer is bounded by `timeout`.
pub(crate) async fn platform_status(backends: &[Backend], timeout: Duration) -> PlatformStatus {
    let checks = backends
        .iter()
        .map(|backend| service_status(backend, timeout));
    let mut services = vec![ServiceStatus {
        name: INFO.name,
        state: "serving",
        version: Some(INFO.version.to_owned()),
        git_revision: Some(INFO.git_revision.to_owned()),
        instance_id: Some(service_runtime::instance_id().to_owned()),
        uptime_seconds: i64::try_from(service_runtime::uptime().as_secs()).ok(),
        requests: Some(service_runtime::request_totals()),
        latency_ms: 0.0,
        address: None,
        error: None,
    }];
    services.extend(futures_util::future::join_all(checks).await);
    let serving = services.iter().all(|s| s.state == "serving");
    PlatformStatus { serving, services }
}

async fn service_status(backend: &Backend, timeout: Duration) -> ServiceStatus {
    let started = Instant::now();
    let mut health = HealthClient::new(backend.channel.clone());
    let mut info = ServiceInfoServiceClient::new(backend.channel.clone());
    let both = async {
        tokio::join!(
            health.check(HealthCheckRequest {
                service: String::new()
            }),
            info.get_service_info(GetServiceInfoRequest {}),
        )
    };
    let mut status = ServiceStatus {
        name: backend.name,
        state: "down",
        version: None,
        git_revision: None,
        instance_id: None,
        uptime_seconds: None,
        requests: None,
        latency_ms: 0.0,
        address: Some(backend.url.to_string()),
        error: None,
    };
    match tokio::time::timeout(timeout, both).await {
        Err(_) => status.error = Some(format!("no answer within {} ms", timeout.as_millis())),
        Ok((Err(error), _)) => {
            status.error = Some(format!("health check failed: {}", error.message()))
        }
        Ok((Ok(health), info)) => {
            status.state = match health.into_inner().status() {
                ServingStatus::Serving => "serving",
                _ => "not_serving",
            };
            match info {
                Ok(info) => {
                    let info = info.into_inner();
                    status.version = Some(info.version);
                    status.git_revision = Some(info.git_revision);
                    status.instance_id = Some(info.instance_id);
                    status.uptime_seconds = info.uptime.map(|d| d.seconds);
                    status.requests = Some(service_runtime::RequestTotals {
                        served: info.requests_served,
                        failed: info.requests_failed,
                    });
                }
                Err(error) => {
                    status.error = Some(format!("service info failed: {}", error.message()))
                }
            }
        }
    }
    status.latency_ms = (started.elapsed().as_secs_f64() * 1_000.0 * 100.0).round() / 100.0;
    status
}
