use std::{net::SocketAddr, time::Duration};

use axum::{Router, routing::get};
use service_runtime::{
    BuildInfo, CommonConfig, ServiceBuilder, ServiceUrl, TracedChannel, testing::http_get,
    traced_channel,
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A handler that holds the request open until the test releases it.
fn slow_router(release: tokio::sync::watch::Receiver<bool>) -> Router {
    Router::new().route(
        "/slow",
        get(move || {
            let mut release = release.clone();
            async move {
                let _ = release.wait_for(|go| *go).await;
                "finished"
            }
        }),
    )
}

#[tokio::test]
async fn in_flight_requests_finish_before_the_app_stops() {
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let running = ServiceBuilder::new(BuildInfo::new("drain-test"), CommonConfig::for_tests())
        .http(any_port(), slow_router(release_rx))
        .start()
        .await
        .unwrap();
    let http = running.http_addr.unwrap();
    let admin = running.admin_addr;
    let in_flight = tokio::spawn(async move { http_get(http, "/slow", &[]).await });
    // Let the request reach its handler before shutdown begins.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let shutdown = tokio::spawn(running.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Draining: not ready, but still answering probes and in-flight work.
    assert_eq!(http_get(admin, "/readyz", &[]).await.unwrap().status, 503);
    assert!(
        http_get(http, "/slow", &[]).await.is_err(),
        "new connections are refused while draining"
    );
    release_tx.send(true).unwrap();

    let response = in_flight.await.unwrap().unwrap();
    assert_eq!((response.status, response.body.as_str()), (200, "finished"));
    let report = shutdown.await.unwrap();
    assert_eq!(report.aborted, Vec::<&str>::new());
    assert_eq!(report.drained, ["http", "admin"]);
}

#[tokio::test]
async fn work_past_the_grace_period_is_aborted() {
    let (_never, release_rx) = tokio::sync::watch::channel(false);
    let mut common = CommonConfig::for_tests();
    common.shutdown_grace = Duration::from_millis(300);
    let running = ServiceBuilder::new(BuildInfo::new("abort-test"), common)
        .http(any_port(), slow_router(release_rx))
        .start()
        .await
        .unwrap();
    let http = running.http_addr.unwrap();
    let stuck = tokio::spawn(async move { http_get(http, "/slow", &[]).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let report = running.shutdown().await;
    assert_eq!(report.aborted, ["http"]);
    stuck.abort();
}

#[tokio::test]
async fn grpc_health_turns_not_serving_before_listeners_close() {
    let mut common = CommonConfig::for_tests();
    common.shutdown_delay = Duration::from_millis(500);
    let running = ServiceBuilder::new(BuildInfo::new("delay-test"), common)
        .grpc(any_port())
        .start()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel_to(running.grpc_addr.unwrap()));
    let check = || HealthCheckRequest {
        service: String::new(),
    };
    assert_eq!(
        health.check(check()).await.unwrap().into_inner().status(),
        ServingStatus::Serving
    );

    let shutdown = tokio::spawn(running.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        health.check(check()).await.unwrap().into_inner().status(),
        ServingStatus::NotServing
    );
    let report = shutdown.await.unwrap();
    assert!(report.aborted.is_empty(), "{report:?}");
}

#[tokio::test]
async fn background_tasks_are_told_to_stop_and_drain() {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let running = ServiceBuilder::new(BuildInfo::new("task-test"), CommonConfig::for_tests())
        .background("flusher", move |stop| async move {
            stop.cancelled().await;
            // Drain work after the stop signal, as a pipeline flushes a batch.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = done_tx.send("flushed");
        })
        .start()
        .await
        .unwrap();
    let report = running.shutdown().await;
    assert_eq!(done_rx.await.unwrap(), "flushed");
    assert_eq!(report.drained, ["flusher", "admin"]);
}

fn channel_to(addr: SocketAddr) -> TracedChannel {
    let timeout = Duration::from_secs(5);
    traced_channel(&ServiceUrl::local(addr.port()), timeout, timeout).unwrap()
}
