//! The ingest gRPC API in-process, on SQLite and (when configured) PostgreSQL.

use std::{collections::BTreeMap, time::Duration};

use chrono::{DateTime, Utc};
use contracts::ingest::v1::{self as pb, ingest_service_client::IngestServiceClient};
use ingest::{reading::Reading, store::ReadingStore as _, window::Windowing};
use service_runtime::{ServiceUrl, traced_channel};
use tonic::Code;

/// `seconds` after a fixed point of this test run: the start of the hour a
/// day ago, so readings stay inside ingest's age limit whatever the date and
/// windows stay aligned.
fn at(seconds: i64) -> DateTime<Utc> {
    static ORIGIN: std::sync::LazyLock<DateTime<Utc>> = std::sync::LazyLock::new(|| {
        let day_ago = Utc::now() - chrono::Duration::days(1);
        DateTime::from_timestamp(day_ago.timestamp() - day_ago.timestamp() % 3600, 0).unwrap()
    });
    *ORIGIN + chrono::Duration::seconds(seconds)
}

fn reading(id: &str, seconds: i64) -> Reading {
    Reading {
        event_id: id.into(),
        tenant_id: "acme".into(),
        device_id: "d1".into(),
        metric: "temperature_c".into(),
        value: seconds as f64,
        observed_at: at(seconds),
        attributes: BTreeMap::new(),
    }
}

fn stamp(value: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: value.timestamp(),
        nanos: 0,
    }
}

fn window(start: i64, length: i64) -> pb::WindowKey {
    pb::WindowKey {
        tenant_id: "acme".into(),
        device_id: "d1".into(),
        metric: "temperature_c".into(),
        window_start: Some(stamp(at(start))),
        window_length: Some(prost_types::Duration {
            seconds: length,
            nanos: 0,
        }),
    }
}

/// Starts ingest on `url`, writes readings at 0..10 s and 70 s, then checks
/// the window reads (paged) and pruning.
async fn exercise(url: &str, write: impl std::future::Future<Output = ()>) {
    let running = ingest::start(ingest::Config::for_tests(url)).await.unwrap();
    write.await;
    let timeout = Duration::from_secs(10);
    let channel = traced_channel(
        &ServiceUrl::local(running.grpc_addr.unwrap().port()),
        &service_runtime::Transport::Plaintext,
        "ingest",
        timeout,
        timeout,
    )
    .unwrap();
    let mut client = IngestServiceClient::new(channel);

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .read_window(pb::ReadWindowRequest {
                window: Some(window(0, 60)),
                page_size: 4,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.readings.iter().map(|r| r.value));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(
        seen,
        (0..10).map(f64::from).collect::<Vec<_>>(),
        "the window [0, 60) in event-time order, paged"
    );

    let bad = client
        .read_window(pb::ReadWindowRequest {
            window: Some(pb::WindowKey {
                metric: String::new(),
                ..window(0, 60)
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (bad.code(), bad.message()),
        (Code::InvalidArgument, "window.metric: is required")
    );

    let pruned = client
        .prune_readings(pb::PruneReadingsRequest {
            older_than: Some(stamp(at(5))),
            batch_size: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pruned.deleted, 3, "bounded batch");
    let pruned = client
        .prune_readings(pb::PruneReadingsRequest {
            older_than: Some(stamp(at(5))),
            batch_size: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pruned.deleted, 2);
    let rest = client
        .read_window(pb::ReadWindowRequest {
            window: Some(window(0, 3_600)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.readings.len(), 6, "5..10 s and 70 s remain");

    // Window results: idempotent per window, listed oldest first, paged.
    let result = |start: i64, device: &str, score: f64| pb::WindowResult {
        window: Some(pb::WindowKey {
            device_id: device.into(),
            ..window(start, 60)
        }),
        statistics: Some(pb::WindowStatistics {
            count: 3,
            mean: 1.5,
            ..Default::default()
        }),
        anomaly_score: score,
        anomalous: score > 0.8,
        model_version: "v1".into(),
        computed_at: None,
    };
    let record = |r: pb::WindowResult| {
        let mut client = client.clone();
        async move {
            client
                .record_window_result(pb::RecordWindowResultRequest { result: Some(r) })
                .await
                .map(|r| r.into_inner().created)
        }
    };
    assert!(
        record(result(0, "d1", 0.1)).await.unwrap(),
        "a new window result is created"
    );
    assert!(
        !record(result(0, "d1", 0.1)).await.unwrap(),
        "the same result again changes nothing"
    );
    assert!(
        record(result(0, "d1", 0.9)).await.unwrap(),
        "a re-aggregation replaces it"
    );
    assert!(record(result(60, "d1", 0.2)).await.unwrap());
    assert!(record(result(60, "d2", 0.95)).await.unwrap());
    let bad = record(result(0, "d1", 1.5)).await.unwrap_err();
    assert_eq!(bad.message(), "result.anomaly_score: must be within [0, 1]");

    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_window_results(pb::ListWindowResultsRequest {
                tenant_id: "acme".into(),
                page_size: 2,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        listed.extend(page.results.iter().map(|r| {
            let w = r.window.as_ref().unwrap();
            (
                w.window_start.as_ref().unwrap().seconds - at(0).timestamp(),
                w.device_id.clone(),
                r.anomaly_score,
            )
        }));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(
        listed,
        [
            (0, "d1".to_owned(), 0.9),
            (60, "d1".to_owned(), 0.2),
            (60, "d2".to_owned(), 0.95)
        ]
    );
    let anomalous = client
        .list_window_results(pb::ListWindowResultsRequest {
            tenant_id: "acme".into(),
            anomalous_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(anomalous.results.len(), 2);
    assert_eq!(anomalous.results[0].statistics.as_ref().unwrap().count, 3);
    running.shutdown().await;
}

fn readings() -> Vec<Reading> {
    let mut readings: Vec<Reading> = (0..10)
        .rev()
        .map(|s| reading(&format!("e{s}"), s))
        .collect();
    readings.push(reading("late", 70));
    readings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_reads_page_in_event_time_and_pruning_is_bounded() {
    let sqlite = jobs::testing::ScratchSqlite::create("ingest_api").await;
    let pool = sqlite.pool.clone();
    exercise(&sqlite.url, async move {
        ingest::store::SqliteReadingStore::new(pool)
            .write_batch(&readings(), &Windowing::default())
            .await
            .unwrap();
    })
    .await;
    sqlite.remove().await;

    if let Some(postgres) = jobs::testing::ScratchPostgres::create("ingest_api").await {
        let pool = postgres.pool.clone();
        exercise(&postgres.url, async move {
            ingest::store::PgReadingStore::new(pool)
                .write_batch(&readings(), &Windowing::default())
                .await
                .unwrap();
        })
        .await;
        postgres.drop_database().await;
    }
}

/// The series quota the gateway passes: new series past it are rejected
/// naming `device_id` (and not dead-lettered), readings of series that
/// exist always pass, and a larger quota lets the next one in.
async fn series_quota_on(url: &str, store: impl ingest::store::ReadingStore) {
    let running = ingest::start(ingest::Config::for_tests(url)).await.unwrap();
    let timeout = Duration::from_secs(10);
    let client = IngestServiceClient::new(
        traced_channel(
            &ServiceUrl::local(running.grpc_addr.unwrap().port()),
            &service_runtime::Transport::Plaintext,
            "ingest",
            timeout,
            timeout,
        )
        .unwrap(),
    );
    let wire = |id: &str, device: &str| pb::Reading {
        event_id: id.into(),
        tenant_id: "acme".into(),
        device_id: device.into(),
        metric: "temperature_c".into(),
        value: 1.0,
        observed_at: Some(stamp(at(0))),
        attributes: Default::default(),
    };
    let publish = |readings: Vec<pb::Reading>, max_series: u32| {
        let mut client = client.clone();
        async move {
            client
                .publish_readings(pb::PublishReadingsRequest {
                    readings,
                    max_series,
                })
                .await
                .unwrap()
                .into_inner()
                .ack
                .unwrap()
        }
    };
    let ack = publish(
        vec![
            wire("a", "d1"),
            wire("b", "d2"),
            wire("c", "d3"),
            wire("d", "d1"),
        ],
        2,
    )
    .await;
    assert_eq!(ack.accepted, 3, "two series, one of them twice: {ack:?}");
    assert_eq!(ack.rejected.len(), 1);
    let rejected = &ack.rejected[0];
    assert_eq!((rejected.index, rejected.field.as_str()), (2, "device_id"));
    assert!(
        rejected.reason.contains("quota of 2 series"),
        "{}",
        rejected.reason
    );
    let ack = publish(vec![wire("e", "d2"), wire("f", "d4")], 2).await;
    assert_eq!((ack.accepted, ack.rejected.len()), (1, 1));
    let ack = publish(vec![wire("g", "d3")], 3).await;
    assert_eq!((ack.accepted, ack.rejected.len()), (1, 0), "a larger quota");
    let ack = publish(vec![wire("h", "d5")], 0).await;
    assert_eq!(ack.accepted, 1, "0: no quota");
    assert_eq!(
        store.dead_letters(100).await.unwrap(),
        [],
        "a quota refusal is not stored as a dead letter"
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_series_past_the_tenants_quota_are_rejected_naming_the_device() {
    let sqlite = jobs::testing::ScratchSqlite::create("ingest_series").await;
    let store = ingest::store::SqliteReadingStore::new(sqlite.pool.clone());
    series_quota_on(&sqlite.url, store).await;
    sqlite.remove().await;
    if let Some(postgres) = jobs::testing::ScratchPostgres::create("ingest_series").await {
        let store = ingest::store::PgReadingStore::new(postgres.pool.clone());
        series_quota_on(&postgres.url, store).await;
        postgres.drop_database().await;
    }
}

/// Dead letters through the RPCs: listed per tenant newest first and
/// paged, never another tenant's; a replay that fails again names the field
/// and keeps the letter; a correction for another tenant is refused; a
/// good one is stored (window read) and removes the letter; a letter whose
/// event id is already stored is removed without storing twice; discard.
async fn dead_letters_on(url: &str) {
    let running = ingest::start(ingest::Config::for_tests(url)).await.unwrap();
    let timeout = Duration::from_secs(10);
    let client = IngestServiceClient::new(
        traced_channel(
            &ServiceUrl::local(running.grpc_addr.unwrap().port()),
            &service_runtime::Transport::Plaintext,
            "ingest",
            timeout,
            timeout,
        )
        .unwrap(),
    );
    let wire = |tenant: &str, id: &str, value: f64| pb::Reading {
        event_id: id.into(),
        tenant_id: tenant.into(),
        device_id: "d1".into(),
        metric: "temperature_c".into(),
        value,
        observed_at: Some(stamp(at(5))),
        attributes: [("site".to_owned(), "north".to_owned())].into(),
    };
    let ack = client
        .clone()
        .publish_readings(pb::PublishReadingsRequest {
            readings: vec![
                wire("acme", "a", f64::NAN),
                wire("acme", "b", f64::INFINITY),
                wire("globex", "c", f64::NAN),
                wire("acme", "d", 1.0),
                wire("acme", "d", f64::NAN),
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .ack
        .unwrap();
    assert_eq!((ack.accepted, ack.rejected.len()), (1, 4), "{ack:?}");

    let list = |tenant: &str, page_size: u32, page_token: String| {
        let mut client = client.clone();
        let tenant = tenant.to_owned();
        async move {
            client
                .list_dead_letters(pb::ListDeadLettersRequest {
                    tenant_id: tenant,
                    page_size,
                    page_token,
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let first = list("acme", 2, String::new()).await;
    let second = list("acme", 2, first.next_page_token.clone()).await;
    let events: Vec<&str> = first
        .dead_letters
        .iter()
        .chain(&second.dead_letters)
        .map(|l| l.event_id.as_str())
        .collect();
    assert_eq!(events, ["d", "b", "a"], "acme's, newest first, paged");
    assert!(second.next_page_token.is_empty());
    let letter_a = second.dead_letters[0].clone();
    assert_eq!(
        (letter_a.field.as_str(), letter_a.source.as_str()),
        ("value", "grpc")
    );
    let reading = letter_a.reading.clone().unwrap();
    assert!(reading.value.is_nan(), "NaN comes back as NaN (JSON null)");
    assert_eq!(reading.attributes["site"], "north");
    let globex = list("globex", 0, String::new()).await;
    assert_eq!(globex.dead_letters.len(), 1);
    let letter_c = globex.dead_letters[0].id;
    assert!(
        list("nobody", 0, String::new())
            .await
            .dead_letters
            .is_empty()
    );
    let malformed = client
        .clone()
        .list_dead_letters(pb::ListDeadLettersRequest {
            tenant_id: "acme".into(),
            page_token: "yesterday".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument);
    assert!(
        malformed.message().starts_with("page_token:"),
        "{malformed}"
    );

    // Another tenant's letter is not found, for reading and for acting.
    for tenant in ["acme", ""] {
        let crossed = client
            .clone()
            .get_dead_letter(pb::GetDeadLetterRequest {
                tenant_id: tenant.into(),
                id: letter_c,
            })
            .await
            .unwrap_err();
        assert_eq!(crossed.code(), Code::NotFound, "{crossed}");
    }
    let crossed = client
        .clone()
        .discard_dead_letter(pb::DiscardDeadLetterRequest {
            tenant_id: "acme".into(),
            id: letter_c,
        })
        .await
        .unwrap_err();
    assert_eq!(crossed.code(), Code::NotFound);

    // A replay of the NaN as received fails again; the letter stays.
    let resubmit = |id: i64, corrected: Option<pb::Reading>| {
        let mut client = client.clone();
        async move {
            client
                .resubmit_dead_letter(pb::ResubmitDeadLetterRequest {
                    tenant_id: "acme".into(),
                    id,
                    corrected,
                })
                .await
        }
    };
    let again = resubmit(letter_a.id, None).await.unwrap_err();
    assert_eq!(again.code(), Code::InvalidArgument);
    assert!(again.message().starts_with("reading.value: "), "{again}");
    let stolen = resubmit(letter_a.id, Some(wire("globex", "a", 2.0)))
        .await
        .unwrap_err();
    assert_eq!(stolen.code(), Code::InvalidArgument);
    assert!(
        stolen.message().starts_with("corrected.tenant_id: "),
        "{stolen}"
    );
    let too_old = pb::Reading {
        observed_at: Some(stamp(Utc::now() - chrono::Duration::days(400))),
        ..wire("acme", "a", 2.0)
    };
    let old = resubmit(letter_a.id, Some(too_old)).await.unwrap_err();
    assert!(
        old.message().starts_with("corrected.observed_at: "),
        "{old}"
    );
    assert_eq!(list("acme", 0, String::new()).await.dead_letters.len(), 3);

    // Corrected (naming no tenant: it takes the letter's), stored, gone.
    let corrected = pb::Reading {
        tenant_id: String::new(),
        ..wire("acme", "a", 21.5)
    };
    let stored = resubmit(letter_a.id, Some(corrected)).await.unwrap();
    assert!(stored.into_inner().stored);
    let gone = resubmit(letter_a.id, None).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound, "{gone}");
    let window = client
        .clone()
        .read_window(pb::ReadWindowRequest {
            window: Some(window(0, 60)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let values: Vec<(&str, f64)> = window
        .readings
        .iter()
        .map(|r| (r.event_id.as_str(), r.value))
        .collect();
    assert_eq!(values, [("a", 21.5), ("d", 1.0)]);

    // `d` was stored before its NaN twin was refused: correcting the twin
    // stores nothing twice, and the letter goes.
    let letter_d = first.dead_letters[0].id;
    let twin = resubmit(letter_d, Some(wire("acme", "d", 3.0)))
        .await
        .unwrap();
    assert!(!twin.into_inner().stored);

    let letter_b = first.dead_letters[1].id;
    client
        .clone()
        .discard_dead_letter(pb::DiscardDeadLetterRequest {
            tenant_id: "acme".into(),
            id: letter_b,
        })
        .await
        .unwrap();
    assert!(list("acme", 0, String::new()).await.dead_letters.is_empty());
    assert_eq!(list("globex", 0, String::new()).await.dead_letters.len(), 1);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_corrected_and_discarded_within_their_tenant() {
    let sqlite = jobs::testing::ScratchSqlite::create("ingest_dead_letters").await;
    dead_letters_on(&sqlite.url).await;
    sqlite.remove().await;
    if let Some(postgres) = jobs::testing::ScratchPostgres::create("ingest_dead_letters").await {
        dead_letters_on(&postgres.url).await;
        postgres.drop_database().await;
    }
}
