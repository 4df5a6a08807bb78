use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use contracts::service::v1::{
    GetServiceInfoRequest, service_info_service_client::ServiceInfoServiceClient,
};
use service_runtime::{BuildInfo, CommonConfig, ServiceBuilder, testing::http_get};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::channel_to;

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

#[tokio::test]
async fn readyz_follows_dependency_checks_and_names_the_failing_one() {
    let database_up = Arc::new(AtomicBool::new(true));
    let flag = database_up.clone();
    let running = ServiceBuilder::new(BuildInfo::new("probe-test"), CommonConfig::for_tests())
        .grpc(any_port())
        .readiness_check("database", move || {
            let up = flag.load(Ordering::SeqCst);
            async move {
                if up {
                    Ok(())
                } else {
                    Err("connection refused".into())
                }
            }
        })
        .start()
        .await
        .unwrap();
    let admin = running.admin_addr;

    let ready = http_get(admin, "/readyz", &[]).await.unwrap();
    assert_eq!(ready.status, 200, "{}", ready.body);
    database_up.store(false, Ordering::SeqCst);
    let not_ready = http_get(admin, "/readyz", &[]).await.unwrap();
    assert_eq!(not_ready.status, 503);
    let body: serde_json::Value = serde_json::from_str(&not_ready.body).unwrap();
    assert_eq!(body["ready"], false);
    assert_eq!(body["checks"][0]["name"], "database");
    assert_eq!(body["checks"][0]["error"], "connection refused");

    // Liveness does not depend on dependencies.
    assert_eq!(http_get(admin, "/healthz", &[]).await.unwrap().status, 200);
    running.shutdown().await;
}

#[tokio::test]
async fn grpc_health_and_service_info_answer() {
    let info = BuildInfo::new("info-test");
    let running = ServiceBuilder::new(info, CommonConfig::for_tests())
        .grpc(any_port())
        .start()
        .await
        .unwrap();
    let channel = channel_to(running.grpc_addr.unwrap());

    let mut health = HealthClient::new(channel.clone());
    let status = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.status(), ServingStatus::Serving);

    let mut client = ServiceInfoServiceClient::new(channel);
    let answer = client
        .get_service_info(GetServiceInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.name, "info-test");
    assert_eq!(answer.version, info.version);
    assert_eq!(answer.git_revision, info.git_revision);
    assert!(!answer.instance_id.is_empty());
    running.shutdown().await;
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let running = ServiceBuilder::new(BuildInfo::new("metrics-test"), CommonConfig::for_tests())
        .start()
        .await
        .unwrap();
    let metrics = http_get(running.admin_addr, "/metrics", &[]).await.unwrap();
    assert_eq!(metrics.status, 200);
    let content_type = metrics
        .headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .map(|(_, v)| v.as_str());
    assert_eq!(
        content_type,
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    running.shutdown().await;
}

#[tokio::test]
async fn a_port_in_use_fails_start_naming_the_listener() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut common = CommonConfig::for_tests();
    common.admin_addr = taken.local_addr().unwrap();
    let error = ServiceBuilder::new(BuildInfo::new("bind-test"), common)
        .start()
        .await
        .err()
        .unwrap();
    assert!(
        error.to_string().starts_with(&format!(
            "cannot listen on {} for admin",
            common_addr(&taken)
        )),
        "{error}"
    );
}

fn common_addr(listener: &std::net::TcpListener) -> SocketAddr {
    listener.local_addr().unwrap()
}
