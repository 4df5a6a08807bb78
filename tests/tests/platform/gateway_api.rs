//! The gateway's public API with API keys, in front of a real ingest: the
//! key decides the tenant, scopes decide the route, every failure is one
//! problem document, and a refused key looks the same whatever the reason.

use gateway::{
    keys::{Pepper, TenantId},
    storage::{GatewayStore as _, TenantLimit, TenantState, sqlite::SqliteGatewayStore},
    tenancy::{self, Peppers},
};
use service_runtime::testing::{TestResponse, http_request};

use crate::support::{ScratchDb, nothing_listening, url_of};

async fn post(gateway: std::net::SocketAddr, key: Option<&str>, body: &str) -> TestResponse {
    let bearer = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(bearer) = &bearer {
        headers.push(("Authorization", bearer.as_str()));
    }
    http_request(gateway, "POST", "/v1/readings", &headers, body)
        .await
        .unwrap()
}

/// A problem document without its request id (which differs per request).
fn without_request_id(body: &str) -> serde_json::Value {
    let mut problem: serde_json::Value = serde_json::from_str(body).unwrap();
    let id = problem.as_object_mut().unwrap().remove("request_id");
    assert!(id.is_some(), "every problem names its request: {body}");
    problem
}

fn header<'a>(response: &'a TestResponse, name: &str) -> Option<&'a str> {
    response
        .headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn reading(event: &str, tenant: Option<&str>, observed_at: &str) -> serde_json::Value {
    let mut reading = serde_json::json!({
        "event_id": event,
        "device_id": "boiler-1",
        "metric": "temperature_c",
        "value": 21.5,
        "observed_at": observed_at,
    });
    if let Some(tenant) = tenant {
        reading["tenant_id"] = tenant.into();
    }
    reading
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_decides_the_tenant_and_the_scope_decides_the_route() {
    let (ingest_db, gateway_db) = (ScratchDb::new(), ScratchDb::new());
    let ingest = ingest::start(ingest::Config::for_tests(&ingest_db.url()))
        .await
        .unwrap();
    let config = gateway::Config::for_tests(
        &gateway_db.url(),
        url_of(&ingest),
        nothing_listening(),
        nothing_listening(),
    );
    let peppers: Peppers = config.peppers.clone();
    let gateway = gateway::start(config).await.unwrap();
    let addr = gateway.http_addr.unwrap();

    let store = SqliteGatewayStore::connect(&gateway_db.url())
        .await
        .unwrap();
    let (acme, globex) = (
        TenantId::parse("acme").unwrap(),
        TenantId::parse("globex").unwrap(),
    );
    for tenant in [&acme, &globex] {
        store.create_tenant(tenant, "").await.unwrap();
    }
    let key = |tenant: &TenantId, scope: &str| {
        let (store, peppers, tenant, scope) = (
            store.clone(),
            peppers.clone(),
            tenant.clone(),
            scope.to_owned(),
        );
        async move {
            tenancy::create_key(&store, &peppers, &tenant, vec![scope], "test", None)
                .await
                .unwrap()
                .0
                .reveal()
        }
    };
    let writer = key(&acme, "readings:write").await;
    let reader = key(&acme, "results:read").await;
    let now = chrono::Utc::now().to_rfc3339();
    let batch =
        |readings: Vec<serde_json::Value>| serde_json::json!({ "readings": readings }).to_string();

    // No key, a wrong key, another pepper's key: one answer, 401.
    let missing = post(addr, None, &batch(vec![])).await;
    assert_eq!(missing.status, 401, "{}", missing.body);
    // Every answer, refusals included, carries the secure headers and a
    // request id.
    for (name, value) in [
        (
            "content-security-policy",
            "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
        ("cache-control", "no-store"),
    ] {
        assert_eq!(header(&missing, name), Some(value), "{name}");
    }
    assert!(header(&missing, "permissions-policy").is_some_and(|v| v.contains("camera=()")));
    assert_eq!(header(&missing, "x-request-id").map(str::len), Some(16));
    assert_eq!(
        header(&missing, "content-type"),
        Some("application/problem+json")
    );
    assert_eq!(header(&missing, "www-authenticate"), Some("Bearer"));
    let mut wrong = writer.clone();
    wrong.truncate(wrong.len() - 2);
    wrong.push_str("AA");
    let forged = {
        let other = Peppers {
            current: Pepper {
                id: "p1".into(),
                key: security::Secret::new("not the gateway's pepper"),
            },
            previous: None,
        };
        tenancy::create_key(
            &store,
            &other,
            &acme,
            vec!["readings:write".into()],
            "",
            None,
        )
        .await
        .unwrap()
        .0
        .reveal()
    };
    for key in [
        wrong.as_str(),
        forged.as_str(),
        "plk.acme.0000000000000000.AAAA",
    ] {
        let refused = post(addr, Some(key), &batch(vec![])).await;
        assert_eq!(
            (refused.status, without_request_id(&refused.body)),
            (401, without_request_id(&missing.body)),
            "{key}"
        );
    }

    // The wrong scope: 403.
    // A body is an object, readings are objects: serde would otherwise
    // take a struct written as an array of its fields (schemathesis found
    // `[[]]` answered 200).
    for (body, field) in [
        ("[[]]", "body"),
        (r#"{"readings": [["e1"]]}"#, "readings[0]"),
    ] {
        let refused = post(addr, Some(&writer), body).await;
        assert_eq!(refused.status, 422, "{body}: {}", refused.body);
        let problem: serde_json::Value = serde_json::from_str(&refused.body).unwrap();
        assert_eq!(problem["errors"][0]["field"], field, "{}", refused.body);
    }
    let scope = post(addr, Some(&reader), &batch(vec![reading("e0", None, &now)])).await;
    assert_eq!(scope.status, 403, "{}", scope.body);
    assert!(scope.body.contains("missing-scope"), "{}", scope.body);

    // Accepted for the key's tenant, named or not.
    let ok = post(
        addr,
        Some(&writer),
        &batch(vec![
            reading("e1", None, &now),
            reading("e2", Some("acme"), &now),
        ]),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let ack: serde_json::Value = serde_json::from_str(&ok.body).unwrap();
    assert_eq!(
        (ack["accepted"].as_u64(), ack["duplicates"].as_u64()),
        (Some(2), Some(0))
    );

    // Another tenant in the body: refused, naming the field.
    let other = post(
        addr,
        Some(&writer),
        &batch(vec![reading("e3", Some("globex"), &now)]),
    )
    .await;
    assert_eq!(other.status, 403, "{}", other.body);
    assert!(
        other.body.contains("readings[0].tenant_id"),
        "{}",
        other.body
    );

    // Every bad field at once; nothing stored.
    let invalid = post(
        addr,
        Some(&writer),
        &batch(vec![
            reading("e4", None, "yesterday"),
            reading("e5", None, "soon"),
        ]),
    )
    .await;
    assert_eq!(invalid.status, 422, "{}", invalid.body);
    for field in ["readings[0].observed_at", "readings[1].observed_at"] {
        assert!(invalid.body.contains(field), "{}", invalid.body);
    }
    let garbage = post(addr, Some(&writer), "{\"readings\": 7}").await;
    assert_eq!(garbage.status, 422, "{}", garbage.body);
    assert_eq!(
        header(&garbage, "content-type"),
        Some("application/problem+json")
    );

    // Results: a tenant sees its own and nothing of another's; the wrong
    // scope and a bad page size are refused.
    let mut ingest_client = contracts::ingest::v1::ingest_service_client::IngestServiceClient::new(
        service_runtime::traced_channel(
            &url_of(&ingest),
            &service_runtime::Transport::Plaintext,
            "ingest",
            std::time::Duration::from_secs(5),
            std::time::Duration::from_secs(5),
        )
        .unwrap(),
    );
    let window_start = chrono::Utc::now().timestamp() / 60 * 60 - 600;
    ingest_client
        .record_window_result(contracts::ingest::v1::RecordWindowResultRequest {
            result: Some(contracts::ingest::v1::WindowResult {
                window: Some(contracts::ingest::v1::WindowKey {
                    tenant_id: "acme".into(),
                    device_id: "boiler-1".into(),
                    metric: "temperature_c".into(),
                    window_start: Some(prost_types::Timestamp {
                        seconds: window_start,
                        nanos: 0,
                    }),
                    window_length: Some(prost_types::Duration {
                        seconds: 60,
                        nanos: 0,
                    }),
                }),
                statistics: Some(contracts::ingest::v1::WindowStatistics {
                    count: 30,
                    mean: 21.0,
                    max: 95.0,
                    ..Default::default()
                }),
                anomaly_score: 0.97,
                anomalous: true,
                model_version: "test".into(),
                computed_at: None,
            }),
        })
        .await
        .unwrap();
    let globex_reader = key(&globex, "results:read").await;
    let get = |key: String, query: &'static str| async move {
        let bearer = format!("Bearer {key}");
        http_request(
            addr,
            "GET",
            &format!("/v1/results{query}"),
            &[("Authorization", &bearer)],
            "",
        )
        .await
        .unwrap()
    };
    let own = get(reader.clone(), "?anomalous_only=true").await;
    assert_eq!(own.status, 200, "{}", own.body);
    let page: serde_json::Value = serde_json::from_str(&own.body).unwrap();
    assert_eq!(page["results"].as_array().map(Vec::len), Some(1), "{page}");
    assert_eq!(page["results"][0]["anomalous"], true);
    let theirs = get(globex_reader, "").await;
    assert_eq!(theirs.status, 200, "{}", theirs.body);
    assert!(!theirs.body.contains("boiler-1"), "{}", theirs.body);
    assert_eq!(get(writer.clone(), "").await.status, 403);
    let bad = get(reader.clone(), "?page_size=0&since=yesterday").await;
    assert_eq!(bad.status, 422, "{}", bad.body);
    assert!(
        bad.body.contains("page_size") && bad.body.contains("since"),
        "{}",
        bad.body
    );

    // One series' readings in a time range, for the key's tenant only.
    let globex_series_reader = key(&globex, "results:read").await;
    let series = |key: String, query: String| async move {
        let bearer = format!("Bearer {key}");
        http_request(
            addr,
            "GET",
            &format!("/v1/readings{query}"),
            &[("Authorization", &bearer)],
            "",
        )
        .await
        .unwrap()
    };
    let range = {
        let from = (chrono::Utc::now() - chrono::Duration::hours(2)).to_rfc3339();
        let to = (chrono::Utc::now() + chrono::Duration::minutes(1)).to_rfc3339();
        format!(
            "?device_id=boiler-1&metric=temperature_c&from={}&to={}",
            from.replace('+', "%2B"),
            to.replace('+', "%2B")
        )
    };
    let own = series(reader.clone(), range.clone()).await;
    assert_eq!(own.status, 200, "{}", own.body);
    let page: serde_json::Value = serde_json::from_str(&own.body).unwrap();
    let stored_events: Vec<&str> = page["readings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["event_id"].as_str())
        .collect();
    assert!(!stored_events.is_empty(), "{page}");
    let theirs = series(globex_series_reader, range).await;
    assert_eq!(theirs.status, 200, "{}", theirs.body);
    let theirs: serde_json::Value = serde_json::from_str(&theirs.body).unwrap();
    assert_eq!(
        theirs["readings"],
        serde_json::json!([]),
        "another tenant's series is empty"
    );
    let bad = series(
        reader.clone(),
        "?device_id=&metric=m&from=2026-01-01T00:00:00Z&to=2026-01-03T00:00:00Z".into(),
    )
    .await;
    assert_eq!(bad.status, 422, "{}", bad.body);
    assert!(bad.body.contains(r#""field":"device_id""#), "{}", bad.body);
    let too_long = series(
        reader.clone(),
        "?device_id=d&metric=m&from=2026-01-01T00:00:00Z&to=2026-01-03T00:00:00Z".into(),
    )
    .await;
    assert_eq!(too_long.status, 200, "{}", too_long.body);
    let too_long: serde_json::Value = serde_json::from_str(&too_long.body).unwrap();
    assert_eq!(too_long["to"], "2026-01-02T00:00:00+00:00", "cut to a day");

    // The daily readings quota: a batch that would pass it is refused
    // whole (nothing published), with the time until it renews; readings
    // that were not stored (duplicates) do not count. Two readings were
    // stored today before the quota was set, and counted.
    store.set_readings_quota(&acme, Some(6)).await.unwrap();
    let counted = post(
        addr,
        Some(&writer),
        &batch(vec![reading("q1", None, &now), reading("e1", None, &now)]),
    )
    .await;
    assert_eq!(counted.status, 200, "{}", counted.body);
    assert!(
        counted.body.contains(r#""duplicates":1"#),
        "{}",
        counted.body
    );
    let over = post(
        addr,
        Some(&writer),
        &batch(vec![
            reading("q2", None, &now),
            reading("q3", None, &now),
            reading("q4", None, &now),
            reading("q5", None, &now),
        ]),
    )
    .await;
    assert_eq!(over.status, 429, "{}", over.body);
    assert!(over.body.contains("quota-exceeded"), "{}", over.body);
    let retry_after: i64 = header(&over, "retry-after").unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry_after), "{retry_after}");
    let fits = post(
        addr,
        Some(&writer),
        &batch(vec![
            reading("q2", None, &now),
            reading("q3", None, &now),
            reading("q4", None, &now),
        ]),
    )
    .await;
    assert_eq!(
        fits.status, 200,
        "the duplicate was given back: {}",
        fits.body
    );
    store.set_readings_quota(&acme, None).await.unwrap();

    // The series quota: acme has one series (boiler-1); with a quota of
    // one, a reading of a new series is rejected naming device_id, and
    // readings of the existing series still go in.
    store
        .set_limit(&acme, TenantLimit::Series, Some(1))
        .await
        .unwrap();
    let mut new_series = reading("s2", None, &now);
    new_series["device_id"] = "boiler-2".into();
    let limited = post(
        addr,
        Some(&writer),
        &batch(vec![reading("s1", None, &now), new_series]),
    )
    .await;
    assert_eq!(limited.status, 200, "{}", limited.body);
    let limited: serde_json::Value = serde_json::from_str(&limited.body).unwrap();
    assert_eq!(limited["accepted"], 1, "{limited}");
    assert_eq!(limited["rejected"][0]["event_id"], "s2", "{limited}");
    assert_eq!(limited["rejected"][0]["field"], "device_id", "{limited}");

    // Suspension refuses the tenant's keys at once.
    store
        .set_tenant_state(&acme, TenantState::Suspended)
        .await
        .unwrap();
    let suspended = post(addr, Some(&writer), &batch(vec![reading("e6", None, &now)])).await;
    assert_eq!(
        (suspended.status, without_request_id(&suspended.body)),
        (401, without_request_id(&missing.body))
    );

    let stored: Vec<(String, i64)> =
        sqlx::query_as("SELECT tenant_id, count(*) FROM ingest_reading GROUP BY tenant_id")
            .fetch_all(&jobs::sqlite::connect(&ingest_db.url()).await.unwrap())
            .await
            .unwrap();
    assert_eq!(stored, vec![("acme".to_owned(), 7)]);
    tokio::join!(gateway.shutdown(), ingest.shutdown());
}
