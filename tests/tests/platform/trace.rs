use std::time::Duration;

use service_runtime::testing::http_get;
use telemetry::testing::{CapturedSpan, capture_spans};

use crate::support::{Backends, start_gateway, url_of};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// Spans of one trace, waiting briefly for servers to close theirs.
async fn spans_of(trace_id: &str, at_least: usize) -> Vec<CapturedSpan> {
    let capture = capture_spans();
    let mut spans = Vec::new();
    for _ in 0..50 {
        spans = capture
            .finished_spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect();
        if spans.len() >= at_least {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    spans
}

/// The gateway, trusting the test's own address as a caller whose trace
/// it continues.
async fn gateway_trusting_loopback(backends: &Backends) -> service_runtime::Running {
    let mut config = gateway::Config::for_tests(
        "sqlite::memory:",
        url_of(&backends.ingest),
        url_of(&backends.worker),
        url_of(&backends.numerics),
    );
    config.status_timeout = Duration::from_secs(2);
    config.http.trusted_trace_callers = vec![security::AllowedNet::parse("127.0.0.0/8").unwrap()];
    gateway::start(config).await.unwrap()
}

#[tokio::test]
async fn an_untrusted_callers_trace_is_linked_not_continued() {
    capture_spans();
    let backends = Backends::start().await;
    // By default no caller is trusted.
    let gateway = start_gateway(
        url_of(&backends.ingest),
        url_of(&backends.worker),
        url_of(&backends.numerics),
    )
    .await;
    let untrusted_trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    let traceparent = format!("00-{untrusted_trace}-{CALLER_SPAN}-01");
    let response = http_get(
        gateway.http_addr.unwrap(),
        "/v1/status",
        &[("traceparent", &traceparent)],
    )
    .await
    .unwrap();
    assert_eq!(response.status, 200, "{}", response.body);
    let capture = capture_spans();
    let edge = service_runtime::testing::wait_until(
        "the gateway's span",
        Duration::from_secs(5),
        || async {
            capture
                .finished_spans()
                .into_iter()
                .find(|s| s.linked_trace_ids.iter().any(|t| t == untrusted_trace))
        },
    )
    .await;
    assert_eq!(edge.name, "GET /v1/status");
    assert_ne!(
        edge.trace_id, untrusted_trace,
        "a new trace starts at the edge"
    );
    assert_eq!(edge.parent_span_id, "0000000000000000", "{edge:?}");
    assert!(
        spans_of(untrusted_trace, 1).await.is_empty(),
        "nothing joined the caller's trace"
    );
    // The backends are in the gateway's new trace.
    assert!(spans_of(&edge.trace_id, 13).await.len() >= 13);
    gateway.shutdown().await;
    backends.shutdown().await;
}

#[tokio::test]
async fn one_trace_spans_the_gateway_request_and_every_grpc_call_it_makes() {
    capture_spans();
    let backends = Backends::start().await;
    let gateway = gateway_trusting_loopback(&backends).await;

    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    let response = http_get(
        gateway.http_addr.unwrap(),
        "/v1/status",
        &[("traceparent", &traceparent)],
    )
    .await
    .unwrap();
    assert_eq!(response.status, 200, "{}", response.body);

    // 1 gateway server span, 6 client calls (health + info per backend), 6 backend server spans.
    let spans = spans_of(TRACE_ID, 13).await;
    let names: Vec<_> = spans
        .iter()
        .map(|s| (s.kind.as_str(), s.name.as_str()))
        .collect();
    let gateway_span = spans
        .iter()
        .find(|s| s.kind == "Server" && s.name == "GET /v1/status")
        .unwrap_or_else(|| panic!("no gateway span in {names:?}"));
    assert_eq!(
        gateway_span.parent_span_id, CALLER_SPAN,
        "the caller's traceparent is the parent"
    );
    for (key, value) in [
        ("http.request.method", "GET"),
        ("http.route", "/v1/status"),
        ("http.response.status_code", "200"),
    ] {
        assert!(
            gateway_span
                .attributes
                .iter()
                .any(|(k, v)| k == key && v == value),
            "{key}={value} on the server span: {gateway_span:?}"
        );
    }
    assert!(!gateway_span.error, "a 200 is no error");

    let clients: Vec<_> = spans.iter().filter(|s| s.kind == "Client").collect();
    let servers: Vec<_> = spans
        .iter()
        .filter(|s| s.kind == "Server" && s.name != "GET /v1/status")
        .collect();
    assert_eq!(clients.len(), 6, "{names:?}");
    assert_eq!(servers.len(), 6, "{names:?}");
    for client in &clients {
        assert_eq!(
            client.parent_span_id, gateway_span.span_id,
            "client call under the request: {client:?}"
        );
    }
    for server in &servers {
        assert!(
            clients.iter().any(|c| c.span_id == server.parent_span_id),
            "backend span continues a gateway call: {server:?}"
        );
    }
    for rpc in [
        "grpc.health.v1.Health/Check",
        "platform.service.v1.ServiceInfoService/GetServiceInfo",
    ] {
        assert_eq!(
            servers.iter().filter(|s| s.name == rpc).count(),
            3,
            "{rpc} once per backend: {names:?}"
        );
    }
    gateway.shutdown().await;
    backends.shutdown().await;
}
