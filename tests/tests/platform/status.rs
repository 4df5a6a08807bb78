use service_runtime::testing::http_get;

use crate::support::{Backends, nothing_listening, start_gateway, url_of};

fn service<'a>(body: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    body["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()
}

#[tokio::test]
async fn status_shows_every_app_serving_with_its_version() {
    let backends = Backends::start().await;
    let gateway = start_gateway(
        url_of(&backends.ingest),
        url_of(&backends.worker),
        url_of(&backends.numerics),
    )
    .await;

    let response = http_get(gateway.http_addr.unwrap(), "/v1/status", &[])
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.body);
    let body: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    assert_eq!(body["serving"], true);
    for name in ["gateway", "ingest", "worker", "numerics"] {
        let app = service(&body, name);
        assert_eq!(app["state"], "serving", "{name}: {app}");
        assert_eq!(app["version"], env!("CARGO_PKG_VERSION"), "{name}");
        assert!(
            app["latency_ms"].as_f64().is_some_and(f64::is_finite),
            "{name}: every app reports how long it took to answer, as a number: {app}"
        );
    }
    gateway.shutdown().await;
    backends.shutdown().await;
}

#[tokio::test]
async fn an_app_that_is_down_shows_as_down_and_the_platform_as_not_serving() {
    let backends = Backends::start().await;
    let gateway = start_gateway(
        url_of(&backends.ingest),
        nothing_listening(),
        url_of(&backends.numerics),
    )
    .await;

    let response = http_get(gateway.http_addr.unwrap(), "/v1/status", &[])
        .await
        .unwrap();
    assert_eq!(response.status, 503, "{}", response.body);
    let body: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    assert_eq!(body["serving"], false);
    let worker = service(&body, "worker");
    assert_eq!(worker["state"], "down");
    assert!(
        worker["error"]
            .as_str()
            .unwrap()
            .contains("health check failed"),
        "{worker}"
    );
    assert_eq!(service(&body, "ingest")["state"], "serving");
    assert_eq!(service(&body, "numerics")["state"], "serving");
    gateway.shutdown().await;
    backends.shutdown().await;
}

#[tokio::test]
async fn an_app_draining_shows_as_not_serving() {
    let backends = Backends::start().await;
    // A worker that keeps its listener open while it reports NOT_SERVING.
    let draining_db = crate::support::ScratchDb::new();
    let mut config = worker::Config::for_tests(&draining_db.url());
    config.common.shutdown_delay = std::time::Duration::from_millis(800);
    let draining_worker = worker::start(config).await.unwrap();
    let gateway = start_gateway(
        url_of(&backends.ingest),
        url_of(&draining_worker),
        url_of(&backends.numerics),
    )
    .await;
    let shutdown = tokio::spawn(draining_worker.shutdown());
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    let response = http_get(gateway.http_addr.unwrap(), "/v1/status", &[])
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    assert_eq!(service(&body, "worker")["state"], "not_serving", "{body}");
    assert_eq!(body["serving"], false);
    shutdown.await.unwrap();
    gateway.shutdown().await;
    backends.shutdown().await;
}

#[tokio::test]
async fn unknown_routes_answer_json_404() {
    let gateway = start_gateway(
        nothing_listening(),
        nothing_listening(),
        nothing_listening(),
    )
    .await;
    let response = http_get(gateway.http_addr.unwrap(), "/v1/nope", &[])
        .await
        .unwrap();
    assert_eq!(response.status, 404);
    assert_eq!(response.body, r#"{"error":"no such route"}"#);
    gateway.shutdown().await;
}
