//! Numerics scaled out: two replicas (processes on 127.0.0.2 and 127.0.0.3,
//! one port) behind the one name the worker is configured with, over
//! mutual TLS checked by service name. The worker's aggregation spreads
//! its calls over both; one replica is stopped mid-run and every window is
//! still aggregated.

use std::{net::SocketAddr, time::Duration};

use chrono::{DateTime, Utc};
use contracts::ingest::v1::{self as pb, ingest_service_client::IngestServiceClient};
use service_runtime::{
    EnvValue as _, ServiceUrl, Transport,
    testing::{AppProcess, http_get, resolve_name_to, wait_until},
    traced_channel,
};

/// The gRPC URL of an app running in this process.
fn url_of(running: &service_runtime::Running) -> ServiceUrl {
    ServiceUrl::local(running.grpc_addr.unwrap().port())
}

/// Hang guard, not a timing claim. A job whose call failed as the replica
/// went away is retried after the engine's backoff (16, 31, 96 s for the
/// first three attempts); a job can fail more than once while the worker's
/// breaker is half open, so the guard covers three retries (143 s).
const PATIENCE: Duration = Duration::from_secs(240);

/// NumericsService calls a replica has answered, from its own /metrics.
async fn numerics_calls(replica: SocketAddr) -> f64 {
    let Ok(metrics) = http_get(replica, "/metrics", &[]).await else {
        return 0.0;
    };
    metrics
        .body
        .lines()
        .filter(|line| {
            line.starts_with("rpc_server_duration_seconds_count{")
                && line.contains("rpc_service=\"platform.numerics.v1.NumericsService\"")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `count` readings an hour apart in the past for `device`, then one now
/// (its watermark closes their windows).
fn readings(device: &str, count: i64) -> Vec<pb::Reading> {
    let start = Utc::now() - chrono::Duration::hours(count + 1);
    let start =
        DateTime::from_timestamp(start.timestamp() - start.timestamp().rem_euclid(3_600), 0)
            .unwrap();
    (0..=count)
        .map(|i| {
            let at = if i == count {
                Utc::now()
            } else {
                start + chrono::Duration::hours(i)
            };
            pb::Reading {
                event_id: format!("{device}-{i}"),
                tenant_id: "acme".into(),
                device_id: device.into(),
                metric: "temperature_c".into(),
                value: 20.0 + i as f64,
                observed_at: Some(prost_types::Timestamp {
                    seconds: at.timestamp(),
                    nanos: 0,
                }),
                attributes: Default::default(),
            }
        })
        .collect()
}

/// Aggregation jobs not yet completed (available, scheduled to retry, or
/// running), and those completed.
async fn aggregation(pool: &sqlx::SqlitePool) -> (i64, i64) {
    sqlx::query_as(
        "SELECT coalesce(sum(state <> 'completed'), 0), coalesce(sum(state = 'completed'), 0)
         FROM jobs_job WHERE kind = 'readings.aggregate_window'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The aggregation jobs not completed, with their state, attempt, when
/// they are due and their errors: what a failure report needs.
async fn unfinished(pool: &sqlx::SqlitePool) -> Vec<(i64, String, i64, i64, String)> {
    sqlx::query_as(
        "SELECT id, state, attempt, scheduled_at, errors FROM jobs_job
         WHERE kind = 'readings.aggregate_window' AND state <> 'completed' ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_spreads_numerics_calls_over_two_replicas_and_survives_losing_one() {
    let pki = std::env::temp_dir().join(format!("platform-scale-out-{}", std::process::id()));
    security::tls::dev_pki::generate(&pki, &["ingest", "worker", "numerics", "operator"]).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.2:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let replica = |last: u8| {
        // `platform serve numerics`: the numerics app as its own process.
        AppProcess::start_with_args(
            env!("CARGO_BIN_EXE_platform"),
            &["serve", "numerics"],
            "NUMERICS_",
            vec![
                (
                    "NUMERICS_GRPC_ADDR".to_owned(),
                    SocketAddr::from(([127, 0, 0, last], port)).to_string(),
                ),
                ("NUMERICS_TLS_DIR".to_owned(), pki.display().to_string()),
            ],
        )
    };
    let (a, b) = (replica(2), replica(3));
    a.ready().await;
    b.ready().await;
    let name = "numerics.replicas.test";
    resolve_name_to(
        name,
        vec![
            SocketAddr::from(([127, 0, 0, 2], port)),
            SocketAddr::from(([127, 0, 0, 3], port)),
        ],
    );

    let db = jobs::testing::ScratchSqlite::create("launcher_scale_out").await;
    let mut ingest_config = ingest::Config::for_tests(&db.url);
    ingest_config.common.transport = Transport::mutual_tls_in(&pki, "ingest");
    let ingest = ingest::start(ingest_config).await.unwrap();
    let mut worker_config = worker::Config::for_tests(&db.url);
    worker_config.common.transport = Transport::mutual_tls_in(&pki, "worker");
    worker_config.ingest_url = url_of(&ingest);
    worker_config.numerics_url = ServiceUrl::parse_env(&format!("https://{name}:{port}")).unwrap();
    let worker = worker::start(worker_config).await.unwrap();
    let pool = db.pool.clone();

    let timeout = Duration::from_secs(10);
    let mut client = IngestServiceClient::new(
        traced_channel(
            &url_of(&ingest),
            &Transport::mutual_tls_in(&pki, "operator"),
            "ingest",
            timeout,
            timeout,
        )
        .unwrap(),
    );
    let publish = |device: &'static str| {
        let mut client = client.clone();
        async move {
            let ack = client
                .publish_readings(pb::PublishReadingsRequest {
                    readings: readings(device, 12),
                    max_series: 0,
                })
                .await
                .unwrap()
                .into_inner()
                .ack
                .unwrap();
            assert_eq!(ack.accepted, 13, "{ack:?}");
        }
    };

    // Twelve closed windows: the worker asks numerics for each one's
    // statistics and score, over both replicas.
    publish("boiler-1").await;
    wait_until("both replicas to answer the worker", PATIENCE, || async {
        (numerics_calls(a.admin_addr).await > 0.0 && numerics_calls(b.admin_addr).await > 0.0)
            .then_some(())
    })
    .await;

    // One replica goes away mid-run; twelve more windows.
    let (a_before, b_before) = (
        numerics_calls(a.admin_addr).await,
        numerics_calls(b.admin_addr).await,
    );
    drop(b);
    publish("boiler-2").await;
    // The outer timeout fires first so the failure can list the jobs left
    // (wait_until's own guard only names what it waited for).
    let every_window = wait_until("every window aggregated", PATIENCE * 2, || async {
        let (left, done) = aggregation(&pool).await;
        (left == 0 && done >= 24).then_some(done)
    });
    let Ok(completed) = tokio::time::timeout(PATIENCE, every_window).await else {
        panic!(
            "not every window aggregated within {PATIENCE:?}; jobs left: {:#?}",
            unfinished(&pool).await
        );
    };
    let a_after = numerics_calls(a.admin_addr).await;
    assert!(
        a_after > a_before,
        "the remaining replica took the calls: {a_before} then {a_after}"
    );
    eprintln!(
        "{completed} windows aggregated; numerics calls before the stop: a {a_before}, b {b_before}; after: a {a_after}"
    );
    let _ = client
        .get_pipeline_stats(pb::GetPipelineStatsRequest {})
        .await;
    tokio::join!(ingest.shutdown(), worker.shutdown());
    db.remove().await;
    drop(a);
    let _ = std::fs::remove_dir_all(pki);
}
