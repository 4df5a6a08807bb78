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
    let public: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    assert_eq!(public["serving"], true);
    for name in ["gateway", "ingest", "worker", "numerics"] {
        // Publicly: the state, and nothing about addresses or builds.
        let app = service(&public, name);
        assert_eq!(app["state"], "serving", "{name}: {app}");
        assert_eq!(app.as_object().unwrap().len(), 2, "{name}: {app}");
    }

    // The admin port has the detail.
    let response = http_get(gateway.admin_addr, "/status", &[]).await.unwrap();
    assert_eq!(response.status, 200, "{}", response.body);
    let body: serde_json::Value = serde_json::from_str(&response.body).unwrap();
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
    let public: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    assert_eq!(public["serving"], false);
    assert_eq!(service(&public, "worker")["state"], "down");
    assert!(
        !response.body.contains("127.0.0.1") && !response.body.contains("error"),
        "the public status names no address or error: {}",
        response.body
    );
    let response = http_get(gateway.admin_addr, "/status", &[]).await.unwrap();
    assert_eq!(response.status, 503, "{}", response.body);
    let body: serde_json::Value = serde_json::from_str(&response.body).unwrap();
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
async fn unknown_routes_answer_a_problem_document_naming_the_request() {
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
    let problem: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    assert_eq!(
        problem["type"],
        "https://platform.example/problems/not-found"
    );
    assert_eq!(problem["status"], 404);
    let request_id = response
        .headers
        .iter()
        .find(|(name, _)| name == "x-request-id")
        .map(|(_, value)| value.clone())
        .unwrap();
    assert_eq!(
        problem["request_id"], request_id,
        "the problem names its request"
    );
    gateway.shutdown().await;
}
