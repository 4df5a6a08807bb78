//! The running story end to end: readings published to ingest close a
//! window; ingest enqueued its aggregation job in the same transaction; the
//! worker runs it (reading the window through ingest's API, statistics and
//! the anomaly score from numerics), the result can
//! be read back through ingest's API, and the anomalous window's webhook
//! reaches a local HTTP server exactly once, all on the publisher's trace;
//! then the worker's prune job deletes them through ingest's API.
//! On the embedded SQLite file, and on PostgreSQL when `DATABASE_URL` is set.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, extract::State, http::HeaderMap, routing::post};
use chrono::{DateTime, Utc};
use contracts::{
    ingest::v1::{self as pb, ingest_service_client::IngestServiceClient},
    jobs::v1::{self as jobs_pb, jobs_service_client::JobsServiceClient},
    webhooks::v1::{self as webhooks_pb, webhooks_service_client::WebhooksServiceClient},
};
use service_runtime::{ServiceUrl, Transport, traced_channel};
use telemetry::testing::capture_spans;
use tracing::Instrument as _;

use crate::support::url_of;

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
/// Hang guard, not a timing claim.
const PATIENCE: Duration = Duration::from_secs(60);

type Received = Arc<Mutex<Vec<(HeaderMap, serde_json::Value, String)>>>;

async fn receive(
    State(received): State<Received>,
    headers: HeaderMap,
    raw: String,
) -> &'static str {
    let body = serde_json::from_str(&raw).unwrap_or(serde_json::Value::Null);
    received.lock().unwrap().push((headers, body, raw));
    "ok"
}

/// Whether `headers` carry a Standard Webhooks signature of `body` made
/// with `secret` (`whsec_<base64 key>`).
fn signed_with(secret: &str, headers: &HeaderMap, body: &str) -> bool {
    use base64::Engine as _;
    use hmac::Mac as _;
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();
    let header = |name: &str| headers[name].to_str().unwrap().to_owned();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(
        format!(
            "{}.{}.{body}",
            header("webhook-id"),
            header("webhook-timestamp")
        )
        .as_bytes(),
    );
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    header("webhook-signature")
        .split(' ')
        .any(|s| s == expected)
}

/// A webhook receiver on a free port: its URL and what it received.
async fn webhook_receiver() -> (String, Received) {
    let received: Received = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/anomaly", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/hooks/anomaly", post(receive))
        .with_state(received.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

fn stamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: 0,
    }
}

/// 30 steady readings with one spike in a one-minute window ten minutes
/// ago, and one reading 75 s after its start that closes it.
pub(crate) fn readings(window: DateTime<Utc>) -> Vec<pb::Reading> {
    let reading = |i: i64, at: DateTime<Utc>, value: f64| pb::Reading {
        event_id: format!("e2e-{i}"),
        tenant_id: "acme".into(),
        device_id: "boiler-7".into(),
        metric: "temperature_c".into(),
        value,
        observed_at: Some(stamp(at)),
        attributes: Default::default(),
    };
    let mut readings: Vec<pb::Reading> = (0..30)
        .map(|i| {
            let value = if i == 17 {
                95.0
            } else {
                20.0 + (i % 3) as f64 * 0.1
            };
            reading(i, window + chrono::Duration::seconds(2 * i), value)
        })
        .collect();
    readings.push(reading(99, window + chrono::Duration::seconds(75), 20.0));
    readings
}

/// The first window result of tenant `acme`, polled until the worker has
/// stored one (failing after [`PATIENCE`] from `started`).
pub(crate) async fn first_window_result(
    client: &mut IngestServiceClient<service_runtime::TracedChannel>,
    started: Instant,
) -> pb::WindowResult {
    loop {
        let page = client
            .list_window_results(pb::ListWindowResultsRequest {
                tenant_id: "acme".into(),
                page_size: 10,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if let Some(result) = page.results.into_iter().next() {
            return result;
        }
        assert!(started.elapsed() < PATIENCE, "no window result");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn story(database_url: String, jobs_table: &str) {
    capture_spans();
    let (hook_url, received) = webhook_receiver().await;
    let ingest = ingest::start(ingest::Config::for_tests(&database_url))
        .await
        .unwrap();
    let numerics = numerics::start(numerics::Config::for_tests())
        .await
        .unwrap();
    let mut worker_config = worker::Config::for_tests(&database_url);
    worker_config.ingest_url = url_of(&ingest);
    worker_config.numerics_url = url_of(&numerics);
    let worker = worker::start(worker_config).await.unwrap();
    // The tenant's endpoint, registered with the worker (as the gateway
    // does for a tenant's key); its secret is shown once.
    let mut webhooks = WebhooksServiceClient::new(
        traced_channel(
            &url_of(&worker),
            &Transport::Plaintext,
            "worker",
            Duration::from_secs(20),
            Duration::from_secs(20),
        )
        .unwrap(),
    );
    let created = webhooks
        .create_endpoint(webhooks_pb::CreateEndpointRequest {
            tenant_id: "acme".into(),
            url: hook_url,
            events: vec!["window.anomalous".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let endpoint_id = created.endpoint.unwrap().endpoint_id;

    let timeout = Duration::from_secs(20);
    let channel = traced_channel(
        &ServiceUrl::local(ingest.grpc_addr.unwrap().port()),
        &Transport::Plaintext,
        "ingest",
        timeout,
        timeout,
    )
    .unwrap();
    let mut client = IngestServiceClient::new(channel);
    let now = Utc::now() - chrono::Duration::minutes(10);
    let window =
        DateTime::from_timestamp(now.timestamp() - now.timestamp().rem_euclid(60), 0).unwrap();
    // The publisher is itself on a trace (as the gateway's request will be).
    let publisher = tracing::info_span!("publisher");
    let caller = std::collections::HashMap::from([(
        "traceparent".to_owned(),
        format!("00-{TRACE_ID}-b7ad6b7169203331-01"),
    )]);
    telemetry::continue_trace(&publisher, &caller);
    let ack = client
        .publish_readings(pb::PublishReadingsRequest {
            readings: readings(window),
            ..Default::default()
        })
        .instrument(publisher)
        .await
        .unwrap()
        .into_inner()
        .ack
        .unwrap();
    assert_eq!(ack.accepted, 31);

    // The worker aggregates the window; its result comes back through ingest.
    let started = Instant::now();
    let result = first_window_result(&mut client, started).await;
    let statistics = result.statistics.unwrap();
    assert_eq!(
        statistics.count, 30,
        "the closing reading belongs to the next window"
    );
    assert_eq!(statistics.max, 95.0);
    assert!(result.anomalous, "score {}", result.anomaly_score);
    assert_eq!(
        result.model_version,
        numerics::serving::shipped_model().unwrap().version()
    );
    assert_eq!(
        result.window.unwrap().window_start.unwrap().seconds,
        window.timestamp()
    );

    // The webhook arrives once, signed, on the publisher's trace.
    while received.lock().unwrap().is_empty() {
        assert!(started.elapsed() < PATIENCE, "no webhook");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let jobs_done = |state: &'static str| {
        let url = database_url.clone();
        let table = jobs_table.to_owned();
        async move { count_jobs(&url, &table, state).await }
    };
    while jobs_done("completed").await < 2 {
        assert!(started.elapsed() < PATIENCE, "the jobs never completed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Pruning runs through ingest's API too: a one-minute retention deletes
    // every reading of this story (all ten minutes old).
    let jobs_channel = traced_channel(
        &url_of(&worker),
        &Transport::Plaintext,
        "worker",
        timeout,
        timeout,
    )
    .unwrap();
    let mut jobs_client = JobsServiceClient::new(jobs_channel);
    let mut args = prost_types::Struct::default();
    args.fields.insert(
        "retention_seconds".into(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::NumberValue(60.0)),
        },
    );
    run_to_completion(
        &mut jobs_client,
        "readings.prune",
        "maintenance",
        Some(args),
    )
    .await;
    let left = client
        .read_window(pb::ReadWindowRequest {
            window: Some(pb::WindowKey {
                tenant_id: "acme".into(),
                device_id: "boiler-7".into(),
                metric: "temperature_c".into(),
                window_start: Some(stamp(window)),
                window_length: Some(prost_types::Duration {
                    seconds: 600,
                    nanos: 0,
                }),
            }),
            page_size: 100,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .readings;
    assert!(left.is_empty(), "{} readings survived pruning", left.len());

    // The delivery log shows it, held to the tenant.
    let log = webhooks
        .list_deliveries(webhooks_pb::ListDeliveriesRequest {
            tenant_id: "acme".into(),
            endpoint_id: endpoint_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(
        (log[0].state.as_str(), log[0].attempts, log[0].last_status),
        ("succeeded", 1, 200)
    );
    let other_tenant = webhooks
        .list_deliveries(webhooks_pb::ListDeliveriesRequest {
            tenant_id: "globex".into(),
            endpoint_id,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(other_tenant.code(), tonic::Code::NotFound);

    worker.shutdown().await;
    ingest.shutdown().await;
    numerics.shutdown().await;
    let received = received.lock().unwrap().clone();
    assert_eq!(received.len(), 1, "exactly one delivery");
    let (headers, body, raw) = &received[0];
    assert_eq!(body["type"], "window.anomalous");
    assert_eq!(body["data"]["device_id"], "boiler-7");
    assert!(
        signed_with(&created.secret, headers, raw),
        "signed with the endpoint's secret: {headers:?}"
    );
    assert!(!signed_with(
        &format!("whsec_{}", "QUFB".repeat(8)),
        headers,
        raw
    ));
    let traceparent = headers["traceparent"].to_str().unwrap();
    assert!(
        traceparent.contains(TRACE_ID),
        "webhook on another trace: {traceparent}"
    );

    let spans: Vec<String> = capture_spans()
        .finished_spans()
        .into_iter()
        .filter(|s| s.trace_id == TRACE_ID)
        .map(|s| s.name)
        .collect();
    for expected in ["job readings.aggregate_window", "job webhook.deliver"] {
        assert!(
            spans.iter().any(|n| n == expected),
            "no {expected:?} span in {spans:?}"
        );
    }
}

async fn count_jobs(url: &str, table: &str, state: &str) -> i64 {
    let query = format!("SELECT count(*) FROM {table} WHERE CAST(state AS TEXT) = $1");
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let n = sqlx::query_scalar(&query)
            .bind(state)
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        n
    } else {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        let n = sqlx::query_scalar(&query)
            .bind(state)
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_closes_is_aggregated_stored_and_its_anomaly_delivered_once_on_one_trace() {
    let sqlite = jobs::testing::ScratchSqlite::create("platform_story").await;
    story(sqlite.url.clone(), "jobs_job").await;
    sqlite.remove().await;
    if let Some(postgres) = jobs::testing::ScratchPostgres::create("platform_story").await {
        story(postgres.url.clone(), "jobs.job").await;
        postgres.drop_database().await;
    }
}

/// With numerics down, the aggregation job fails fast with a retryable
/// error naming numerics (it is retried later with backoff), stores no
/// result, and does not hold its queue: another job on it still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_numerics_down_aggregation_fails_fast_for_a_later_retry_without_blocking_its_queue() {
    let sqlite = jobs::testing::ScratchSqlite::create("platform_numerics_down").await;
    let ingest = ingest::start(ingest::Config::for_tests(&sqlite.url))
        .await
        .unwrap();
    let mut worker_config = worker::Config::for_tests(&sqlite.url);
    worker_config.ingest_url = url_of(&ingest);
    worker_config.numerics_url = crate::support::nothing_listening();
    worker_config.numerics_timeout = Duration::from_secs(1);
    let worker = worker::start(worker_config).await.unwrap();

    let timeout = Duration::from_secs(20);
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

    let mut jobs_client = JobsServiceClient::new(
        traced_channel(
            &url_of(&worker),
            &Transport::Plaintext,
            "worker",
            timeout,
            timeout,
        )
        .unwrap(),
    );
    let started = Instant::now();
    let failed = loop {
        let listed = jobs_client
            .list_jobs(jobs_pb::ListJobsRequest {
                kind: "readings.aggregate_window".into(),
                states: vec![jobs_pb::JobState::Retryable as i32],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .jobs;
        if let Some(job) = listed.into_iter().next() {
            break job;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the aggregation job never failed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let error = &failed.errors.last().unwrap().error;
    assert!(error.contains("numerics unavailable"), "{error}");

    // The queue is free: a job behind it on the same queue completes.
    run_to_completion(&mut jobs_client, "noop", "aggregation", None).await;
    let results = client
        .list_window_results(pb::ListWindowResultsRequest {
            tenant_id: "acme".into(),
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert!(results.is_empty(), "no result without numerics");
    worker.shutdown().await;
    ingest.shutdown().await;
    sqlite.remove().await;
}

/// Enqueues a `kind` job on `queue` through the worker's API and waits for
/// it to complete.
async fn run_to_completion(
    jobs: &mut JobsServiceClient<service_runtime::TracedChannel>,
    kind: &str,
    queue: &str,
    args: Option<prost_types::Struct>,
) {
    let enqueued = jobs
        .enqueue_job(jobs_pb::EnqueueJobRequest {
            job: Some(jobs_pb::JobSpec {
                kind: kind.into(),
                args,
                queue: queue.into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let started = Instant::now();
    loop {
        let job = jobs
            .get_job(jobs_pb::GetJobRequest { id: enqueued.id })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        if job.state == jobs_pb::JobState::Completed as i32 {
            return;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{kind} on {queue} never completed: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
