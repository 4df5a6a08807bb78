use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{Router, body::Bytes, extract::State, http::HeaderMap, http::StatusCode, routing::post};
use base64::Engine as _;
use contracts::jobs::v1::{self as pb, JobState};
use hmac::{Hmac, Mac as _};
use prost_types::{Struct, Value, value::Kind};
use sha2::Sha256;

use crate::support::{client, on_both};

/// One received delivery.
#[derive(Debug, Clone)]
struct Delivery {
    headers: HeaderMap,
    body: Bytes,
}

/// A receiver that answers each request with the next scripted status.
#[derive(Clone)]
struct Receiver {
    script: Arc<Mutex<Vec<u16>>>,
    deliveries: Arc<Mutex<Vec<Delivery>>>,
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    receiver
        .deliveries
        .lock()
        .unwrap()
        .push(Delivery { headers, body });
    let mut script = receiver.script.lock().unwrap();
    let code = if script.is_empty() {
        200
    } else {
        script.remove(0)
    };
    StatusCode::from_u16(code).unwrap()
}

async fn start_receiver(script: Vec<u16>) -> (SocketAddr, Receiver) {
    let receiver = Receiver {
        script: Arc::new(Mutex::new(script)),
        deliveries: Arc::default(),
    };
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, receiver)
}

fn webhook_job(url: &str) -> pb::JobSpec {
    let s = |v: &str| Value {
        kind: Some(Kind::StringValue(v.to_owned())),
    };
    let payload = Struct {
        fields: [("window".to_owned(), s("w-1"))].into_iter().collect(),
    };
    pb::JobSpec {
        kind: "webhook.deliver".into(),
        args: Some(Struct {
            fields: [
                ("url".to_owned(), s(url)),
                ("event".to_owned(), s("window.anomalous")),
                (
                    "payload".to_owned(),
                    Value {
                        kind: Some(Kind::StructValue(payload)),
                    },
                ),
            ]
            .into_iter()
            .collect(),
        }),
        queue: "webhooks".into(),
        max_attempts: Some(3),
        ..pb::JobSpec::default()
    }
}

async fn finished(
    client: &mut contracts::jobs::v1::jobs_service_client::JobsServiceClient<
        service_runtime::TracedChannel,
    >,
    id: i64,
) -> pb::Job {
    crate::support::wait_for_job(client, id, |s| {
        matches!(s, JobState::Completed | JobState::Discarded)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delivery_is_retried_then_delivered_once_signed() {
    on_both(|running| async move {
        let (addr, receiver) = start_receiver(vec![503]).await;
        let mut client = client(&running);
        let job = webhook_job(&format!("http://{addr}/hook"));
        let id = client
            .enqueue_job(pb::EnqueueJobRequest { job: Some(job) })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap()
            .id;
        let done = finished(&mut client, id).await;
        assert_eq!((done.state(), done.attempt), (JobState::Completed, 2));
        assert!(
            done.errors[0]
                .error
                .starts_with("receiver answered 503 Service Unavailable"),
            "{:?}",
            done.errors
        );

        let deliveries = receiver.deliveries.lock().unwrap().clone();
        assert_eq!(
            deliveries.len(),
            2,
            "one failed try, one success, nothing after"
        );
        let last = &deliveries[1];
        let header = |name: &str| last.headers.get(name).unwrap().to_str().unwrap().to_owned();
        assert_eq!(header("webhook-id"), format!("job_{id}"));
        assert_eq!(header("idempotency-key"), format!("job_{id}"));
        assert_eq!(
            header("webhook-id"),
            deliveries[0].headers["webhook-id"].to_str().unwrap(),
            "stable across retries"
        );
        // Standard Webhooks signature over "id.timestamp.body".
        let mut mac = Hmac::<Sha256>::new_from_slice(b"local-development-webhook-secret").unwrap();
        mac.update(format!("{}.{}.", header("webhook-id"), header("webhook-timestamp")).as_bytes());
        mac.update(&last.body);
        let expected = format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        );
        assert_eq!(header("webhook-signature"), expected);
        let body: serde_json::Value = serde_json::from_slice(&last.body).unwrap();
        assert_eq!(body["type"], "window.anomalous");
        assert_eq!(body["data"], serde_json::json!({"window": "w-1"}));
        running
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_error_is_discarded_at_once_with_the_reason() {
    on_both(|running| async move {
        let (addr, receiver) = start_receiver(vec![410]).await;
        let mut client = client(&running);
        let job = webhook_job(&format!("http://{addr}/hook"));
        let id = client
            .enqueue_job(pb::EnqueueJobRequest { job: Some(job) })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap()
            .id;
        let done = finished(&mut client, id).await;
        assert_eq!((done.state(), done.attempt), (JobState::Discarded, 1));
        assert!(
            done.errors[0]
                .error
                .starts_with("receiver answered 410 Gone"),
            "{:?}",
            done.errors
        );
        assert_eq!(receiver.deliveries.lock().unwrap().len(), 1);
        running
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_receiver_is_retried_until_attempts_run_out() {
    on_both(|running| async move {
        let closed = service_runtime::testing::free_local_addr().unwrap();
        let mut client = client(&running);
        let job = webhook_job(&format!("http://{closed}/hook"));
        let id = client
            .enqueue_job(pb::EnqueueJobRequest { job: Some(job) })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap()
            .id;
        let done = finished(&mut client, id).await;
        assert_eq!(
            (done.state(), done.attempt, done.errors.len()),
            (JobState::Discarded, 3, 3)
        );
        assert!(
            done.errors[2].error.contains("(attempt 3 of 3)"),
            "{:?}",
            done.errors
        );
        running
    })
    .await;
}

/// The SSRF guard: a webhook aimed at the cloud metadata address or at a
/// private network is discarded on its first attempt, naming the range,
/// and nothing is sent (the tests allow only loopback).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_to_a_non_public_address_is_discarded_naming_the_range() {
    on_both(|running| async move {
        let mut client = client(&running);
        for (url, range) in [
            (
                "http://169.254.169.254/latest/meta-data/",
                "link-local and cloud metadata (169.254.0.0/16)",
            ),
            ("http://10.0.0.7:8080/hook", "private (10.0.0.0/8)"),
            (
                "http://[::ffff:a9fe:a9fe]/",
                "link-local and cloud metadata (169.254.0.0/16)",
            ),
        ] {
            let id = client
                .enqueue_job(pb::EnqueueJobRequest {
                    job: Some(webhook_job(url)),
                })
                .await
                .unwrap()
                .into_inner()
                .job
                .unwrap()
                .id;
            let done = finished(&mut client, id).await;
            assert_eq!(
                (done.state(), done.attempt),
                (JobState::Discarded, 1),
                "{url}"
            );
            assert!(
                done.errors[0].error.contains(range),
                "{url}: {:?}",
                done.errors
            );
        }
        running
    })
    .await;
}

/// No secret reaches the log at any level: the shipped binary at
/// `RUST_LOG=trace` signs a webhook with the key, fails once and delivers;
/// its whole log holds neither the key nor its base64.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signing_key_never_reaches_the_log_at_any_level() {
    let key = "log-probe-7c1f0e9a2b4d6f8013579bdf2468ace0";
    let (addr, receiver) = start_receiver(vec![500]).await;
    let scratch = jobs::testing::ScratchSqlite::create("worker_log").await;
    let log_path = std::env::temp_dir().join(format!("worker-log-{}.txt", std::process::id()));
    let worker = service_runtime::testing::AppProcess::start_with_stderr(
        env!("CARGO_BIN_EXE_worker"),
        "WORKER_",
        [
            ("WORKER_DATABASE_URL", scratch.url.as_str()),
            ("WORKER_WEBHOOK_SECRET", key),
            ("WORKER_WEBHOOK_ALLOW", "127.0.0.1"),
            ("WORKER_WEBHOOK_ALLOW_HTTP", "true"),
            ("WORKER_WEBHOOK_BACKOFF", "50ms"),
            ("WORKER_POLL_INTERVAL", "100ms"),
            ("RUST_LOG", "trace"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
        std::fs::File::create(&log_path).unwrap(),
    );
    worker.ready().await;
    let mut client = crate::support::client_at(worker.grpc_addr.port());
    let id = client
        .enqueue_job(pb::EnqueueJobRequest {
            job: Some(webhook_job(&format!("http://{addr}/hook"))),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
        .id;
    let done = finished(&mut client, id).await;
    assert_eq!((done.state(), done.attempt), (JobState::Completed, 2));
    // The key was in use: the delivery verifies with it.
    let delivery = receiver.deliveries.lock().unwrap()[1].clone();
    let header = |name: &str| delivery.headers[name].to_str().unwrap().to_owned();
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(format!("{}.{}.", header("webhook-id"), header("webhook-timestamp")).as_bytes());
    mac.update(&delivery.body);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(header("webhook-signature"), format!("v1,{expected}"));
    drop(worker);
    scratch.remove().await;

    let log = std::fs::read_to_string(&log_path).unwrap();
    std::fs::remove_file(&log_path).unwrap();
    assert!(
        log.contains("TRACE") || log.contains("\"level\":\"TRACE\""),
        "trace level was on"
    );
    assert!(!log.contains(key), "the key is in the log");
    let encoded = base64::engine::general_purpose::STANDARD.encode(key);
    assert!(!log.contains(&encoded), "the key's base64 is in the log");
}
