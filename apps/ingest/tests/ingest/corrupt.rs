//! A row the store cannot read is an internal error, named and counted,
//! never a plausible zero or 1970 handed to a tenant, and never mistaken
//! for the database being down. Run against the `ingest` binary, so the
//! count is read from its own `/metrics`.

use std::time::Duration;

use contracts::ingest::v1::{self as pb, ingest_service_client::IngestServiceClient};
use service_runtime::{ServiceUrl, TracedChannel, traced_channel};
use tonic::Code;

use crate::support::{IngestProcess, start_ingest};

fn client(process: &IngestProcess) -> IngestServiceClient<TracedChannel> {
    let timeout = Duration::from_secs(10);
    let channel = traced_channel(
        &ServiceUrl::local(process.grpc_addr.port()),
        &service_runtime::Transport::Plaintext,
        "ingest",
        timeout,
        timeout,
    )
    .unwrap();
    IngestServiceClient::new(channel)
}

/// Lists `tenant`'s results and expects an internal error naming `column`.
async fn expect_corrupt(process: &IngestProcess, tenant: &str, column: &str) {
    let status = client(process)
        .list_window_results(pb::ListWindowResultsRequest {
            tenant_id: tenant.into(),
            ..Default::default()
        })
        .await
        .expect_err("a corrupt row is not an answer");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(
        status.message().contains(column),
        "names {column}: {}",
        status.message()
    );
}

const CORRUPT_ROWS: &str = "ingest_store_corrupt_rows";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_rows_are_internal_errors_named_and_counted_on_sqlite() {
    let sqlite = jobs::testing::ScratchSqlite::create("ingest_corrupt").await;
    let process = start_ingest(&sqlite.url, Vec::new());
    process.ready().await;
    let insert = "INSERT INTO ingest_window_result (tenant_id, device_id, metric, window_start,
                      window_seconds, statistics, anomaly_score, anomalous, model_version, computed_at)
                  VALUES (?, 'd1', 'temperature_c', ?, 60, ?, 0.1, 0, 'v1', 0)";
    // Statistics that are JSON but not statistics.
    sqlx::query(insert)
        .bind("bad-statistics")
        .bind(1_000_000_i64)
        .bind(r#"{"count": 3, "mean": "oops"}"#)
        .execute(&sqlite.pool)
        .await
        .unwrap();
    // A window start no calendar holds.
    sqlx::query(insert)
        .bind("bad-start")
        .bind(i64::MAX)
        .bind(r#"{"count": 3, "mean": 1.0, "variance": 0.0, "min": 1.0, "max": 1.0, "p50": 1.0, "p95": 1.0, "p99": 1.0, "trend_slope": 0.0, "trend_r_squared": 0.0}"#)
        .execute(&sqlite.pool)
        .await
        .unwrap();
    expect_corrupt(&process, "bad-statistics", "window_result.statistics").await;
    expect_corrupt(&process, "bad-start", "window_result.window_start").await;
    assert_eq!(
        process.metric(CORRUPT_ROWS).await,
        2.0,
        "each corrupt row is counted"
    );
    drop(process);
    sqlite.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_rows_are_internal_errors_named_and_counted_on_postgres() {
    let Some(postgres) = jobs::testing::ScratchPostgres::create("ingest_corrupt").await else {
        return;
    };
    let process = start_ingest(&postgres.url, Vec::new());
    process.ready().await;
    sqlx::query(
        "INSERT INTO ingest.window_result (tenant_id, device_id, metric, window_start, window_seconds,
                                          statistics, anomaly_score, anomalous, model_version)
         VALUES ('bad-statistics', 'd1', 'temperature_c', now(), 60, '{\"count\": 3, \"mean\": \"oops\"}', 0.1, false, 'v1')",
    )
    .execute(&postgres.pool)
    .await
    .unwrap();
    expect_corrupt(&process, "bad-statistics", "window_result.statistics").await;
    assert_eq!(process.metric(CORRUPT_ROWS).await, 1.0);
    drop(process);
    postgres.drop_database().await;
}
