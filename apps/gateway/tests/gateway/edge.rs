//! The gateway's edge, in-process with no backends behind it: rate limits
//! per key, per client and for failed authentications, `X-Forwarded-For`
//! believed only from trusted proxies, load shedding and the request
//! deadline, CORS refused unless allowed.

use std::{net::SocketAddr, time::Duration};

use gateway::{
    keys::TenantId,
    limits::Quota,
    storage::{GatewayStore as _, sqlite::SqliteGatewayStore},
    tenancy,
};
use service_runtime::{
    Running, ServiceUrl,
    testing::{TestResponse, http_request},
};

/// A gateway on a scratch SQLite file with tenant `acme`; `configure`
/// adjusts the limits. Backends are addresses where nothing answers,
/// unless the test passes its own ingest.
struct Edge {
    gateway: Running,
    store: SqliteGatewayStore,
    config: gateway::Config,
    sqlite: jobs::testing::ScratchSqlite,
}

fn nowhere() -> ServiceUrl {
    let addr = service_runtime::testing::free_local_addr().unwrap();
    ServiceUrl::local(addr.port())
}

impl Edge {
    async fn start(ingest: ServiceUrl, configure: impl FnOnce(&mut gateway::Config)) -> Self {
        let sqlite = jobs::testing::ScratchSqlite::create("gateway_edge").await;
        let mut config = gateway::Config::for_tests(&sqlite.url, ingest, nowhere(), nowhere());
        configure(&mut config);
        let gateway = gateway::start(config.clone()).await.unwrap();
        let store = SqliteGatewayStore::connect(&sqlite.url).await.unwrap();
        store
            .create_tenant(&TenantId::parse("acme").unwrap(), "")
            .await
            .unwrap();
        Self {
            gateway,
            store,
            config,
            sqlite,
        }
    }

    async fn key(&self, scope: &str) -> String {
        tenancy::create_key(
            &self.store,
            &self.config.peppers,
            &TenantId::parse("acme").unwrap(),
            vec![scope.to_owned()],
            "edge test",
            None,
        )
        .await
        .unwrap()
        .0
        .reveal()
    }

    fn addr(&self) -> SocketAddr {
        self.gateway.http_addr.unwrap()
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> TestResponse {
        http_request(self.addr(), "GET", path, headers, "")
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.gateway.shutdown().await;
        self.sqlite.remove().await;
    }
}

fn header<'a>(response: &'a TestResponse, name: &str) -> Option<&'a str> {
    response
        .headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn problem_type(response: &TestResponse) -> String {
    let problem: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    problem["type"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_key_over_its_quota_gets_429_with_the_draft_headers() {
    let edge = Edge::start(nowhere(), |config| {
        config.limits.per_key = Quota::per_minute(3);
    })
    .await;
    let (first, second) = (
        edge.key("results:read").await,
        edge.key("results:read").await,
    );
    let bearer = |key: &str| format!("Bearer {key}");
    for n in 0..3 {
        let response = edge
            .get("/v1/results", &[("Authorization", &bearer(&first))])
            .await;
        // The worker is absent: the request passes the limit, then fails.
        assert_ne!(response.status, 429, "request {n}: {}", response.body);
        assert_eq!(
            header(&response, "ratelimit"),
            Some(format!("\"per-key\";r={};t={}", 2 - n, 20 * (n + 1)).as_str()),
            "request {n}"
        );
    }
    let refused = edge
        .get("/v1/results", &[("Authorization", &bearer(&first))])
        .await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert!(problem_type(&refused).ends_with("/rate-limited"));
    assert_eq!(header(&refused, "retry-after"), Some("20"));
    assert_eq!(
        header(&refused, "ratelimit-policy"),
        Some("\"per-key\";q=3;w=60")
    );
    assert_eq!(header(&refused, "ratelimit"), Some("\"per-key\";r=0;t=60"));
    // Another key of the same tenant has its own quota.
    let other = edge
        .get("/v1/results", &[("Authorization", &bearer(&second))])
        .await;
    assert_ne!(other.status, 429, "{}", other.body);

    edge.stop().await;
}

#[tokio::test]
async fn failed_authentications_are_limited_per_client_before_keys_are_checked() {
    let edge = Edge::start(nowhere(), |config| {
        config.limits.failed_auth = Quota::per_minute(2);
    })
    .await;
    let good = edge.key("results:read").await;
    let bad = format!("{}x", &good[..good.len() - 1]);
    for _ in 0..2 {
        let response = edge
            .get(
                "/v1/results",
                &[("Authorization", &format!("Bearer {bad}"))],
            )
            .await;
        assert_eq!(response.status, 401, "{}", response.body);
    }
    // Now even a valid key from this address waits: guessing is over.
    let response = edge
        .get(
            "/v1/results",
            &[("Authorization", &format!("Bearer {good}"))],
        )
        .await;
    assert_eq!(response.status, 429, "{}", response.body);
    assert_eq!(
        header(&response, "ratelimit-policy"),
        Some("\"failed-auth\";q=2;w=60")
    );
    edge.stop().await;
}

#[tokio::test]
async fn forwarded_for_counts_only_from_a_trusted_proxy() {
    // Untrusted: every request is the peer's, whatever the header says.
    let edge = Edge::start(nowhere(), |config| {
        config.limits.per_client = Quota::per_minute(2);
    })
    .await;
    let statuses = |edge: &Edge| {
        let addr = edge.addr();
        async move {
            let mut statuses = Vec::new();
            for n in 0..3 {
                let forwarded = format!("203.0.113.{n}");
                let response = http_request(
                    addr,
                    "GET",
                    "/v1/nope",
                    &[("X-Forwarded-For", &forwarded)],
                    "",
                )
                .await
                .unwrap();
                statuses.push(response.status);
            }
            statuses
        }
    };
    assert_eq!(
        statuses(&edge).await,
        [404, 404, 429],
        "spoofed addresses are ignored"
    );
    edge.stop().await;

    // Trusted (the test's own loopback is the proxy): each forwarded
    // address has its own quota.
    let edge = Edge::start(nowhere(), |config| {
        config.limits.per_client = Quota::per_minute(2);
        config.limits.trusted_proxies = vec![security::AllowedNet::parse("127.0.0.1").unwrap()];
    })
    .await;
    assert_eq!(statuses(&edge).await, [404, 404, 404]);
    edge.stop().await;
}

#[tokio::test]
async fn in_flight_requests_beyond_the_cap_are_shed_and_slow_ones_time_out() {
    // An "ingest" that accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = ServiceUrl::local(silent.local_addr().unwrap().port());
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let edge = Edge::start(silent_url, |config| {
        config.limits.max_in_flight = 1;
        config.limits.request_timeout = Duration::from_millis(1500);
    })
    .await;
    let key = edge.key("readings:write").await;
    let addr = edge.addr();
    let body = r#"{"readings":[]}"#;
    let bearer = format!("Bearer {key}");
    let slow = {
        let bearer = bearer.clone();
        tokio::spawn(async move {
            http_request(
                addr,
                "POST",
                "/v1/readings",
                &[
                    ("Authorization", &bearer),
                    ("Content-Type", "application/json"),
                ],
                body,
            )
            .await
            .unwrap()
        })
    };
    // While the slow one holds the only slot, the next is shed.
    let shed = service_runtime::testing::wait_until(
        "a request to be shed",
        Duration::from_secs(10),
        || async {
            let response = http_request(addr, "GET", "/v1/nope", &[], "").await.ok()?;
            (response.status == 503).then_some(response)
        },
    )
    .await;
    assert!(
        problem_type(&shed).ends_with("/overloaded"),
        "{}",
        shed.body
    );
    assert_eq!(header(&shed, "retry-after"), Some("1"));
    let slow = slow.await.unwrap();
    assert_eq!(slow.status, 504, "{}", slow.body);
    assert!(problem_type(&slow).ends_with("/timeout"));
    hold.abort();
    edge.stop().await;
}

#[tokio::test]
async fn cross_origin_requests_are_refused_unless_the_origin_is_allowed() {
    let preflight = |edge: &Edge, origin: &'static str| {
        let addr = edge.addr();
        async move {
            http_request(
                addr,
                "OPTIONS",
                "/v1/readings",
                &[
                    ("Origin", origin),
                    ("Access-Control-Request-Method", "POST"),
                    (
                        "Access-Control-Request-Headers",
                        "authorization, content-type",
                    ),
                ],
                "",
            )
            .await
            .unwrap()
        }
    };
    let edge = Edge::start(nowhere(), |_| {}).await;
    let refused = preflight(&edge, "https://app.example").await;
    assert_eq!(header(&refused, "access-control-allow-origin"), None);
    let simple = edge
        .get("/v1/status", &[("Origin", "https://app.example")])
        .await;
    assert_eq!(header(&simple, "access-control-allow-origin"), None);
    edge.stop().await;

    let edge = Edge::start(nowhere(), |config| {
        config.cors_origins = vec!["https://app.example".to_owned()];
    })
    .await;
    let allowed = preflight(&edge, "https://app.example").await;
    assert_eq!(allowed.status, 204, "{}", allowed.body);
    assert_eq!(
        header(&allowed, "access-control-allow-origin"),
        Some("https://app.example")
    );
    assert!(
        header(&allowed, "access-control-allow-headers")
            .is_some_and(|h| h.contains("authorization")),
        "{:?}",
        allowed.headers
    );
    let other = preflight(&edge, "https://evil.example").await;
    assert_eq!(header(&other, "access-control-allow-origin"), None);
    edge.stop().await;
}

/// Bodies a client might send: any text, JSON of any shape, and readings
/// with fields of the wrong type, missing or extra.
fn any_body() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        ".{0,8}".prop_map(serde_json::Value::from),
    ];
    let json = leaf
        .prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::hash_map("[a-z_]{1,10}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
        .prop_map(|v| v.to_string());
    let reading = (
        proptest::option::of("[a-z0-9-]{0,12}"),
        proptest::option::of(any::<f64>().prop_map(|v| serde_json::json!(v))),
        proptest::option::of("[0-9T:Z+.-]{0,30}"),
        proptest::option::of("[a-z_]{1,8}"),
    )
        .prop_map(|(event, value, at, extra)| {
            let mut reading = serde_json::json!({"device_id": "d", "metric": "m"});
            if let Some(event) = event {
                reading["event_id"] = event.into();
            }
            if let Some(value) = value {
                reading["value"] = value;
            }
            if let Some(at) = at {
                reading["observed_at"] = at.into();
            }
            if let Some(extra) = extra {
                reading[extra] = 1.into();
            }
            serde_json::json!({ "readings": [reading] }).to_string()
        });
    prop_oneof![any::<String>(), json, reading]
}

#[test]
fn any_body_is_accepted_or_answered_with_a_problem_never_a_panic_or_500() {
    use proptest::test_runner::{Config, TestRunner};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (edge, key) = runtime.block_on(async {
        let edge = Edge::start(nowhere(), |_| {}).await;
        let key = edge.key("readings:write").await;
        (edge, key)
    });
    let bearer = format!("Bearer {key}");
    let mut runner = TestRunner::new(Config {
        cases: 200,
        ..Config::default()
    });
    runner
        .run(&any_body(), |body| {
            let response = runtime.block_on(http_request(
                edge.addr(),
                "POST",
                "/v1/readings",
                &[
                    ("Authorization", &bearer),
                    ("Content-Type", "application/json"),
                ],
                &body,
            ));
            let response = response.unwrap();
            // Ingest is absent here: a valid batch gets as far as 503.
            proptest::prop_assert!(
                [422, 503].contains(&response.status),
                "{} for {body:?}: {}",
                response.status,
                response.body
            );
            proptest::prop_assert_eq!(
                header(&response, "content-type"),
                Some("application/problem+json")
            );
            let problem: serde_json::Value = serde_json::from_str(&response.body).unwrap();
            if response.status == 422 {
                proptest::prop_assert!(
                    problem["errors"][0]["field"].is_string(),
                    "a refusal names the field: {problem}"
                );
            }
            Ok(())
        })
        .unwrap();
    runtime.block_on(edge.stop());
}

#[tokio::test]
async fn a_refused_request_with_a_large_body_still_gets_its_answer() {
    let edge = Edge::start(nowhere(), |_| {}).await;
    // 4 MiB of readings without a key: refused before the body is needed,
    // yet the client, still sending, must read the 401 rather than a reset.
    let body = format!(
        "{{\"readings\":[{}]}}",
        vec![r#"{"event_id":"e","device_id":"d","metric":"m","value":1,"observed_at":"2026-11-29T00:00:00Z"}"#; 50_000].join(",")
    );
    assert!(body.len() > 4_000_000, "{}", body.len());
    for _ in 0..3 {
        let response = http_request(
            edge.addr(),
            "POST",
            "/v1/readings",
            &[("Content-Type", "application/json")],
            &body,
        )
        .await
        .expect("the answer, not a reset");
        assert_eq!(response.status, 401, "{}", response.body);
    }
    edge.stop().await;
}
