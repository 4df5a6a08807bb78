use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, routing::get};
use service_runtime::{
    BuildInfo, CommonConfig, ServiceBuilder,
    testing::{http_get, wait_until},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::channel_to;

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Requests that have reached the slow handler.
type Arrived = Arc<AtomicUsize>;

/// A handler that counts its request in `arrived`, then holds it open until
/// the test releases it.
fn slow_router(release: tokio::sync::watch::Receiver<bool>, arrived: Arrived) -> Router {
    Router::new().route(
        "/slow",
        get(move || {
            let mut release = release.clone();
            let arrived = arrived.clone();
            async move {
                arrived.fetch_add(1, Ordering::SeqCst);
                let _ = release.wait_for(|go| *go).await;
                "finished"
            }
        }),
    )
}

/// Waits until a request is inside the slow handler.
async fn until_arrived(arrived: &Arrived) {
    wait_until(
        "the request to reach its handler",
        Duration::from_secs(10),
        || async { (arrived.load(Ordering::SeqCst) > 0).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn in_flight_requests_finish_before_the_app_stops() {
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let arrived = Arrived::default();
    let running = ServiceBuilder::new(BuildInfo::new("drain-test"), CommonConfig::for_tests())
        .http(
            service_runtime::PublicHttp::on(any_port()),
            slow_router(release_rx, arrived.clone()),
        )
        .start()
        .await
        .unwrap();
    let http = running.http_addr.unwrap();
    let admin = running.admin_addr;
    let in_flight = tokio::spawn(async move { http_get(http, "/slow", &[]).await });
    until_arrived(&arrived).await;
    let shutdown = tokio::spawn(running.shutdown());

    // Draining: not ready, but still answering probes and in-flight work.
    wait_until("/readyz to answer 503", Duration::from_secs(10), || async {
        (http_get(admin, "/readyz", &[]).await.unwrap().status == 503).then_some(())
    })
    .await;
    // Then the listener closes: a new connection is refused (a path the
    // router does not hold, so an accepted one would answer 404 at once).
    wait_until(
        "new connections to be refused while draining",
        Duration::from_secs(10),
        || async {
            http_get(http, "/elsewhere", &[])
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    assert!(
        !in_flight.is_finished(),
        "the in-flight request is still held"
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
    let arrived = Arrived::default();
    let mut common = CommonConfig::for_tests();
    common.shutdown_grace = Duration::from_millis(300);
    let running = ServiceBuilder::new(BuildInfo::new("abort-test"), common)
        .http(
            service_runtime::PublicHttp::on(any_port()),
            slow_router(release_rx, arrived.clone()),
        )
        .start()
        .await
        .unwrap();
    let http = running.http_addr.unwrap();
    let stuck = tokio::spawn(async move { http_get(http, "/slow", &[]).await });
    until_arrived(&arrived).await;
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
    // Within the shutdown delay the listener is still open and says so.
    wait_until(
        "health to turn NOT_SERVING",
        Duration::from_secs(10),
        || {
            let mut health = health.clone();
            async move {
                let status = health.check(check()).await.unwrap().into_inner().status();
                (status == ServingStatus::NotServing).then_some(())
            }
        },
    )
    .await;
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
