//! The console's pipeline, anomalies and webhook pages in front of the
//! real apps: a window with a spike is published, aggregated and scored;
//! the anomalies page shows it with a server-drawn chart of its readings,
//! the pipeline page shows ingest's stages, and the tenant's page shows
//! its webhook endpoint with the anomaly's delivery.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use contracts::{
    ingest::v1::{self as pb, ingest_service_client::IngestServiceClient},
    webhooks::v1::{self as hooks, webhooks_service_client::WebhooksServiceClient},
};
use gateway::{
    keys::TenantId,
    storage::{GatewayStore as _, operators::Role, sqlite::SqliteGatewayStore},
};
use service_runtime::{Transport, testing::http_request, traced_channel};

use crate::{
    readings::{first_window_result, readings},
    support::{Backends, ScratchDb, url_of},
};

const PASSWORD: &str = "correct horse battery staple";
const PATIENCE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anomalies_pipeline_and_webhook_deliveries_are_seen_in_the_console() {
    let backends = Backends::start_connected().await;
    let (ingest, worker, numerics) = (&backends.ingest, &backends.worker, &backends.numerics);
    let gateway_db = ScratchDb::new();
    let gateway = gateway::start(gateway::Config::for_tests(
        &gateway_db.url(),
        url_of(ingest),
        url_of(worker),
        url_of(numerics),
    ))
    .await
    .unwrap();
    let store = SqliteGatewayStore::connect(&gateway_db.url())
        .await
        .unwrap();
    store
        .create_tenant(&TenantId::parse("acme").unwrap(), "Acme")
        .await
        .unwrap();
    gateway::console::create_operator(&store, "eve", PASSWORD, Role::Viewer, "test")
        .await
        .unwrap();

    let channel = |running: &service_runtime::Running, name: &str| {
        traced_channel(
            &url_of(running),
            &Transport::Plaintext,
            name,
            Duration::from_secs(20),
            Duration::from_secs(20),
        )
        .unwrap()
    };
    // A receiver that answers 503: the delivery is recorded, failing.
    let mut webhooks = WebhooksServiceClient::new(channel(worker, "worker"));
    let receiver = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hook = format!("http://{}/hook", receiver.local_addr().unwrap());
    drop(receiver);
    webhooks
        .create_endpoint(hooks::CreateEndpointRequest {
            tenant_id: "acme".into(),
            url: hook.clone(),
            events: vec!["window.anomalous".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let mut client = IngestServiceClient::new(channel(ingest, "ingest"));
    let now = Utc::now() - chrono::Duration::minutes(10);
    let window =
        DateTime::from_timestamp(now.timestamp() - now.timestamp().rem_euclid(60), 0).unwrap();
    client
        .publish_readings(pb::PublishReadingsRequest {
            readings: readings(window),
            ..Default::default()
        })
        .await
        .unwrap();
    let result = first_window_result(&mut client, Instant::now()).await;
    assert!(result.anomalous, "score {}", result.anomaly_score);

    let addr = gateway.http_addr.unwrap();
    let login = http_request(
        addr,
        "POST",
        "/console/login",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Sec-Fetch-Site", "same-origin"),
        ],
        &format!("username=eve&password={}", PASSWORD.replace(' ', "+")),
    )
    .await
    .unwrap();
    let cookie = login
        .headers
        .iter()
        .find(|(n, _)| n == "set-cookie")
        .map(|(_, v)| v.split(';').next().unwrap().to_owned())
        .unwrap();
    let get = |path: &'static str| {
        let cookie = cookie.clone();
        async move {
            http_request(addr, "GET", path, &[("Cookie", &cookie)], "")
                .await
                .unwrap()
        }
    };

    let anomalies = get("/console/anomalies?tenant=acme").await;
    assert_eq!(anomalies.status, 200, "{}", anomalies.body);
    assert!(
        anomalies.body.contains("<th scope=\"row\">boiler-7</th>"),
        "{}",
        anomalies.body
    );
    assert!(
        anomalies.body.contains("<svg class=\"chart\""),
        "{}",
        anomalies.body
    );
    let summary = "aria-label=\"30 readings from 20 to 95, mean";
    assert!(anomalies.body.contains(summary), "{}", anomalies.body);
    let points = anomalies.body.split("<polyline points=\"").nth(1).unwrap();
    let points = points.split('"').next().unwrap();
    assert_eq!(
        points.split(' ').count(),
        30,
        "one point per reading: {points}"
    );
    let other = get("/console/anomalies?tenant=nobody").await;
    assert!(
        other.body.contains("No anomalous window for nobody."),
        "{}",
        other.body
    );

    let pipeline = get("/console/pipeline").await;
    assert_eq!(pipeline.status, 200, "{}", pipeline.body);
    assert!(
        pipeline.body.contains("<meter id=\"bytes\""),
        "{}",
        pipeline.body
    );
    assert!(
        pipeline.body.matches("<tr><th scope=\"row\">").count() >= 3,
        "{}",
        pipeline.body
    );
    // The sink's batches: the readings went in at least one, against
    // ingest's batch size.
    assert!(
        pipeline.body.contains(" batches, ") && pipeline.body.contains(" per batch</td>"),
        "{}",
        pipeline.body
    );
    assert!(
        !pipeline.body.contains("<td>0 batches, "),
        "{}",
        pipeline.body
    );
    // Messages in flight against their ceiling, beside the bytes.
    assert!(
        pipeline
            .body
            .contains("<meter id=\"messages\" min=\"0\" max=\"")
            && !pipeline
                .body
                .contains("<meter id=\"messages\" min=\"0\" max=\"0\""),
        "{}",
        pipeline.body
    );

    // The overview: each app's request rate and failed share, measured
    // between two looks a second apart.
    let first = get("/console").await;
    assert_eq!(first.status, 200, "{}", first.body);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let overview = get("/console").await;
    assert!(
        overview.body.contains("Requests per second"),
        "{}",
        overview.body
    );
    let rates = overview.body.matches("/s</td>").count();
    assert_eq!(rates, 4, "a rate for every app: {}", overview.body);
    assert!(overview.body.contains("%</td>"), "{}", overview.body);

    // The anomaly's delivery shows on the tenant's page once attempted.
    let started = Instant::now();
    loop {
        let tenant = get("/console/tenants/acme").await;
        assert_eq!(tenant.status, 200);
        assert!(tenant.body.contains(&hook), "{}", tenant.body);
        if tenant.body.contains("<td>window.anomalous</td>") {
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "no delivery shown: {}",
            tenant.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    gateway.shutdown().await;
    backends.shutdown().await;
}
