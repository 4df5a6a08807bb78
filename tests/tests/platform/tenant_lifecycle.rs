//! A tenant's end of life across the apps, on SQLite and on PostgreSQL:
//! `gateway tenants export` writes everything it has in every app (and no
//! secret, and nothing of another tenant); `gateway tenants delete` removes
//! it everywhere through `platform.tenancy.v1`, after which its keys are
//! refused, its id cannot be taken again, late work for it (a window
//! result, a reading) stores nothing, and the other tenant keeps all its
//! data.

use std::time::Duration;

use chrono::{DateTime, Utc};
use contracts::ingest::v1::{self as pb, ingest_service_client::IngestServiceClient};
use gateway::{
    keys::TenantId,
    lifecycle::{self, TenantDataApps},
    storage::{
        GatewayStore, StoreError, TenantLimit, TenantState, postgres::PgGatewayStore,
        sqlite::SqliteGatewayStore,
    },
    tenancy,
};
use service_runtime::{Transport, testing::http_request, traced_channel};

use crate::support::url_of;

fn stamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: 0,
    }
}

fn window_key(tenant: &str, start: DateTime<Utc>) -> pb::WindowKey {
    pb::WindowKey {
        tenant_id: tenant.into(),
        device_id: "boiler-1".into(),
        metric: "temperature_c".into(),
        window_start: Some(stamp(start)),
        window_length: Some(prost_types::Duration {
            seconds: 3_600,
            nanos: 0,
        }),
    }
}

fn result_for(tenant: &str, start: DateTime<Utc>) -> pb::RecordWindowResultRequest {
    pb::RecordWindowResultRequest {
        result: Some(pb::WindowResult {
            window: Some(pb::WindowKey {
                window_length: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
                ..window_key(tenant, start)
            }),
            statistics: Some(pb::WindowStatistics {
                count: 3,
                mean: 21.5,
                ..Default::default()
            }),
            anomaly_score: 0.1,
            anomalous: false,
            model_version: "v1".into(),
            computed_at: None,
        }),
    }
}

async fn lifecycle_on(database_url: &str, store: impl GatewayStore) {
    let ingest = ingest::start(ingest::Config::for_tests(database_url))
        .await
        .unwrap();
    let worker = worker::start(worker::Config::for_tests(database_url))
        .await
        .unwrap();
    let config = gateway::Config::for_tests(
        database_url,
        url_of(&ingest),
        url_of(&worker),
        crate::support::nothing_listening(),
    );
    let peppers = config.peppers.clone();
    let apps = TenantDataApps::connect(&config).unwrap();
    let gateway = gateway::start(config).await.unwrap();
    let addr = gateway.http_addr.unwrap();

    let (acme, globex) = (
        TenantId::parse("acme").unwrap(),
        TenantId::parse("globex").unwrap(),
    );
    let mut keys = Vec::new();
    for tenant in [&acme, &globex] {
        store.create_tenant(tenant, "A tenant").await.unwrap();
        let scopes = ["readings:write", "results:read", "webhooks:manage"]
            .map(str::to_owned)
            .to_vec();
        let (key, _) = tenancy::create_key(&store, &peppers, tenant, scopes, "ci", None)
            .await
            .unwrap();
        keys.push(format!("Bearer {}", key.reveal()));
    }
    let (acme_key, globex_key) = (keys[0].clone(), keys[1].clone());
    let call = |method: &'static str, path: &'static str, bearer: String, body: String| async move {
        http_request(
            addr,
            method,
            path,
            &[
                ("Authorization", &bearer),
                ("Content-Type", "application/json"),
            ],
            &body,
        )
        .await
        .unwrap()
    };

    // Each tenant publishes through the gateway; acme has a webhook and a
    // stored window result too.
    let hour = Utc::now() - chrono::Duration::hours(2);
    let hour =
        DateTime::from_timestamp(hour.timestamp() - hour.timestamp().rem_euclid(3_600), 0).unwrap();
    for (bearer, prefix, n) in [(&acme_key, "a", 5), (&globex_key, "g", 3)] {
        let readings: Vec<_> = (0..n)
            .map(|i| {
                serde_json::json!({
                    "event_id": format!("{prefix}{i}"),
                    "device_id": "boiler-1",
                    "metric": "temperature_c",
                    "value": 21.5,
                    "observed_at": (hour + chrono::Duration::seconds(i)).to_rfc3339(),
                    "attributes": {"site": "north"},
                })
            })
            .collect();
        let published = call(
            "POST",
            "/v1/readings",
            bearer.clone(),
            serde_json::json!({ "readings": readings }).to_string(),
        )
        .await;
        assert_eq!(published.status, 200, "{}", published.body);
    }
    let hook = call(
        "POST",
        "/v1/webhooks",
        acme_key.clone(),
        serde_json::json!({"url": "http://127.0.0.1:9/hook", "events": ["window.anomalous"]})
            .to_string(),
    )
    .await;
    assert_eq!(hook.status, 201, "{}", hook.body);
    let secret = serde_json::from_str::<serde_json::Value>(&hook.body).unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let timeout = Duration::from_secs(10);
    let mut ingest_client = IngestServiceClient::new(
        traced_channel(
            &url_of(&ingest),
            &Transport::Plaintext,
            "ingest",
            timeout,
            timeout,
        )
        .unwrap(),
    );
    ingest_client
        .record_window_result(result_for("acme", hour))
        .await
        .unwrap();

    // Export: the gateway's part, then every app's; acme's only.
    let mut exported = Vec::new();
    let counts = lifecycle::export_tenant(&store, &apps, &acme, "alice", &mut exported)
        .await
        .unwrap();
    let text = String::from_utf8(exported).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let of = |app: &str, collection: &str| -> Vec<&serde_json::Value> {
        lines
            .iter()
            .filter(|l| l["app"] == app && l["collection"] == collection)
            .map(|l| &l["record"])
            .collect()
    };
    assert_eq!(of("gateway", "tenant").len(), 1);
    assert_eq!(of("gateway", "tenant")[0]["state"], "active");
    assert_eq!(of("gateway", "api_keys").len(), 1);
    let readings = of("ingest", "readings");
    let mut ids: Vec<&str> = readings
        .iter()
        .map(|r| r["event_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        ["a0", "a1", "a2", "a3", "a4"],
        "acme's readings, no one else's"
    );
    assert_eq!(readings[0]["attributes"]["site"], "north");
    assert_eq!(readings[0]["value"], 21.5);
    let observed: DateTime<Utc> = readings[0]["observed_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(observed, hour, "times read back as RFC 3339");
    assert_eq!(of("ingest", "window_results").len(), 1);
    assert_eq!(
        of("ingest", "window_results")[0]["statistics"]["mean"],
        21.5
    );
    assert_eq!(of("worker", "webhook_endpoints").len(), 1);
    assert_eq!(
        of("worker", "webhook_endpoints")[0]["url"],
        "http://127.0.0.1:9/hook"
    );
    assert!(!text.contains(&secret), "no webhook secret is exported");
    assert!(!text.contains("digest"), "no key digest is exported");
    assert!(!text.contains("globex") && !text.contains("\"g0\""));
    assert!(
        counts.contains(&("ingest", "readings".to_owned(), 5)),
        "{counts:?}"
    );

    // Delete: every app's rows go, the gateway keeps a tombstone.
    let report = lifecycle::delete_tenant(&store, &apps, &acme, Duration::ZERO, "alice")
        .await
        .unwrap();
    assert!(!report.already_deleted);
    let deleted = |app: &str, collection: &str| {
        report
            .deleted
            .iter()
            .filter(|(a, _)| *a == app)
            .flat_map(|(_, counts)| counts)
            .find(|c| c.collection == collection)
            .map(|c| c.rows)
    };
    assert_eq!(deleted("ingest", "readings"), Some(5));
    assert_eq!(deleted("ingest", "series"), Some(1));
    assert_eq!(deleted("ingest", "window_results"), Some(1));
    assert_eq!(deleted("ingest", "dead_letters"), Some(0));
    assert_eq!(deleted("worker", "webhook_endpoints"), Some(1));

    let tenant = store.get_tenant(&acme).await.unwrap().unwrap();
    assert_eq!(tenant.state, TenantState::Deleted);
    assert_eq!(tenant.name, "", "the tombstone keeps no name");
    assert!(store.list_keys(&acme).await.unwrap().is_empty());
    let refused = call("GET", "/v1/results", acme_key.clone(), String::new()).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(matches!(
        store.create_tenant(&acme, "").await,
        Err(StoreError::TenantDeleted(_))
    ));
    assert!(matches!(
        store.set_tenant_state(&acme, TenantState::Active).await,
        Err(StoreError::TenantDeleted(_))
    ));

    // Late work stores nothing: a window result, a reading sent straight
    // to ingest.
    let late = ingest_client
        .record_window_result(result_for("acme", hour))
        .await
        .unwrap_err();
    assert_eq!(late.code(), tonic::Code::FailedPrecondition, "{late:?}");
    assert!(late.message().starts_with("tenant_id: "), "{late:?}");
    let direct = ingest_client
        .publish_readings(pb::PublishReadingsRequest {
            readings: vec![pb::Reading {
                event_id: "late".into(),
                tenant_id: "acme".into(),
                device_id: "boiler-1".into(),
                metric: "temperature_c".into(),
                value: 1.0,
                observed_at: Some(stamp(hour)),
                attributes: Default::default(),
            }],
            max_series: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let ack = direct.ack.unwrap();
    assert_eq!(ack.accepted, 0);
    assert_eq!(ack.rejected.len(), 1);
    assert_eq!(ack.rejected[0].field, "tenant_id");
    let read = |tenant: &'static str| {
        let mut client = ingest_client.clone();
        async move {
            client
                .read_window(pb::ReadWindowRequest {
                    window: Some(window_key(tenant, hour)),
                    page_size: 100,
                    page_token: String::new(),
                })
                .await
                .unwrap()
                .into_inner()
                .readings
                .len()
        }
    };
    assert_eq!(read("acme").await, 0);
    assert_eq!(read("globex").await, 3, "the other tenant keeps its data");
    let globex_still = call("GET", "/v1/results", globex_key.clone(), String::new()).await;
    assert_eq!(globex_still.status, 200, "{}", globex_still.body);

    // Again: nothing to do. An export now holds the tombstone only.
    let again = lifecycle::delete_tenant(&store, &apps, &acme, Duration::ZERO, "alice")
        .await
        .unwrap();
    assert!(again.already_deleted);
    let mut after = Vec::new();
    lifecycle::export_tenant(&store, &apps, &acme, "alice", &mut after)
        .await
        .unwrap();
    let after = String::from_utf8(after).unwrap();
    assert_eq!(after.lines().count(), 1, "{after}");
    assert!(after.contains(r#""state":"deleted""#), "{after}");

    tokio::join!(gateway.shutdown(), ingest.shutdown(), worker.shutdown());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_tenant_is_gone_from_every_app_and_its_export_held_everything() {
    let sqlite = jobs::testing::ScratchSqlite::create("platform_lifecycle").await;
    let store = SqliteGatewayStore::connect(&sqlite.url).await.unwrap();
    lifecycle_on(&sqlite.url, store).await;
    sqlite.remove().await;
    if let Some(postgres) = jobs::testing::ScratchPostgres::create("platform_lifecycle").await {
        let store = PgGatewayStore::new(postgres.pool.clone());
        store.migrate().await.unwrap();
        lifecycle_on(&postgres.url, store).await;
        postgres.drop_database().await;
    }
}

/// A tenant's own retention, applied by the gateway's sweep through
/// ingest acting for the tenant: its readings and window results older
/// than its retention go; its newer ones, and every other tenant's, stay.
async fn retention_on(database_url: &str, store: impl GatewayStore) {
    let ingest = ingest::start(ingest::Config::for_tests(database_url))
        .await
        .unwrap();
    let timeout = Duration::from_secs(10);
    let mut client = IngestServiceClient::new(
        traced_channel(
            &url_of(&ingest),
            &Transport::Plaintext,
            "ingest",
            timeout,
            timeout,
        )
        .unwrap(),
    );
    let (acme, globex) = (
        TenantId::parse("acme").unwrap(),
        TenantId::parse("globex").unwrap(),
    );
    for tenant in [&acme, &globex] {
        store.create_tenant(tenant, "").await.unwrap();
    }
    store
        .set_limit(&acme, TenantLimit::RetentionDays, Some(1))
        .await
        .unwrap();
    let now = Utc::now();
    let hour = |at: DateTime<Utc>| {
        DateTime::from_timestamp(at.timestamp() - at.timestamp().rem_euclid(3_600), 0).unwrap()
    };
    let (old, recent) = (
        hour(now - chrono::Duration::days(3)),
        hour(now) - chrono::Duration::hours(1),
    );
    let wire = |id: &str, tenant: &str, at: DateTime<Utc>| pb::Reading {
        event_id: id.into(),
        tenant_id: tenant.into(),
        device_id: "boiler-1".into(),
        metric: "temperature_c".into(),
        value: 1.0,
        observed_at: Some(stamp(at)),
        attributes: Default::default(),
    };
    let ack = client
        .publish_readings(pb::PublishReadingsRequest {
            readings: vec![
                wire("a-old-1", "acme", old),
                wire("a-old-2", "acme", old + chrono::Duration::seconds(1)),
                wire("a-new", "acme", recent),
                wire("g-old", "globex", old),
            ],
            max_series: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .ack
        .unwrap();
    assert_eq!(ack.accepted, 4, "{ack:?}");
    for (tenant, at) in [("acme", old), ("acme", recent), ("globex", old)] {
        client
            .record_window_result(result_for(tenant, at))
            .await
            .unwrap();
    }

    let report = lifecycle::apply_retention(&store, &client, now)
        .await
        .unwrap();
    assert_eq!(
        report,
        vec![(acme.clone(), 2, 1)],
        "only acme has a retention"
    );

    let read = |tenant: &'static str, at: DateTime<Utc>| {
        let mut client = client.clone();
        async move {
            client
                .read_window(pb::ReadWindowRequest {
                    window: Some(window_key(tenant, at)),
                    page_size: 100,
                    page_token: String::new(),
                })
                .await
                .unwrap()
                .into_inner()
                .readings
                .len()
        }
    };
    assert_eq!(read("acme", old).await, 0, "older than a day: gone");
    assert_eq!(read("acme", recent).await, 1, "newer: kept");
    assert_eq!(read("globex", old).await, 1, "another tenant's: kept");
    let results = |tenant: &'static str| {
        let mut client = client.clone();
        async move {
            client
                .list_window_results(pb::ListWindowResultsRequest {
                    tenant_id: tenant.into(),
                    since: Some(stamp(old - chrono::Duration::days(1))),
                    page_size: 100,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .results
                .len()
        }
    };
    assert_eq!(results("acme").await, 1);
    assert_eq!(results("globex").await, 1);
    let again = lifecycle::apply_retention(&store, &client, now)
        .await
        .unwrap();
    assert_eq!(again, vec![(acme, 0, 0)], "nothing left to prune");
    ingest.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_own_retention_prunes_only_its_old_data() {
    let sqlite = jobs::testing::ScratchSqlite::create("platform_retention").await;
    let store = SqliteGatewayStore::connect(&sqlite.url).await.unwrap();
    store.migrate().await.unwrap();
    retention_on(&sqlite.url, store).await;
    sqlite.remove().await;
    if let Some(postgres) = jobs::testing::ScratchPostgres::create("platform_retention").await {
        let store = PgGatewayStore::new(postgres.pool.clone());
        store.migrate().await.unwrap();
        retention_on(&postgres.url, store).await;
        postgres.drop_database().await;
    }
}
