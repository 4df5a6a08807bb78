//! Publishing through the pipeline over gRPC, on SQLite and (when
//! configured) PostgreSQL: answers only after the readings are durable,
//! duplicates and rejections counted per batch, dead letters kept, a full
//! queue pushes back.

use std::time::Duration;

use chrono::Utc;
use contracts::ingest::v1::{self as pb, ingest_service_client::IngestServiceClient};
use ingest::store::{PgReadingStore, ReadingStore as _, SqliteReadingStore};
use service_runtime::{Running, ServiceUrl, TracedChannel, testing::wait_until, traced_channel};
use tonic::Code;

type Channel = TracedChannel;

pub fn now_reading(id: &str, device: &str, seconds_ago: i64, value: f64) -> pb::Reading {
    let at = Utc::now() - chrono::Duration::seconds(seconds_ago);
    pb::Reading {
        event_id: id.into(),
        tenant_id: "acme".into(),
        device_id: device.into(),
        metric: "temperature_c".into(),
        value,
        observed_at: Some(prost_types::Timestamp {
            seconds: at.timestamp(),
            nanos: 0,
        }),
        attributes: Default::default(),
    }
}

async fn client(running: &Running) -> IngestServiceClient<Channel> {
    let timeout = Duration::from_secs(20);
    let channel = traced_channel(
        &ServiceUrl::local(running.grpc_addr.unwrap().port()),
        &service_runtime::Transport::Plaintext,
        "ingest",
        timeout,
        timeout,
    )
    .unwrap();
    IngestServiceClient::new(channel)
}

/// Every database this run can use: SQLite always, PostgreSQL when set.
async fn on_each_store<F, Fut>(prefix: &str, test: F)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let sqlite = jobs::testing::ScratchSqlite::create(prefix).await;
    test(sqlite.url.clone()).await;
    sqlite.remove().await;
    if let Some(postgres) = jobs::testing::ScratchPostgres::create(prefix).await {
        test(postgres.url.clone()).await;
        postgres.drop_database().await;
    }
}

async fn window_count(client: &mut IngestServiceClient<Channel>, device: &str) -> usize {
    let start = Utc::now() - chrono::Duration::hours(1);
    client
        .read_window(pb::ReadWindowRequest {
            window: Some(pb::WindowKey {
                tenant_id: "acme".into(),
                device_id: device.into(),
                metric: "temperature_c".into(),
                window_start: Some(prost_types::Timestamp {
                    seconds: start.timestamp(),
                    nanos: 0,
                }),
                window_length: Some(prost_types::Duration {
                    seconds: 7_200,
                    nanos: 0,
                }),
            }),
            page_size: 10_000,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .readings
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_publish_is_answered_once_durable_with_duplicates_and_rejections_named() {
    on_each_store("ingest_publish", |url| async move {
        let running = ingest::start(ingest::Config::for_tests(&url))
            .await
            .unwrap();
        let mut client = client(&running).await;
        let mut readings: Vec<pb::Reading> = (0..5)
            .map(|i| now_reading(&format!("u{i}"), "d1", 30, f64::from(i)))
            .collect();
        readings.push(now_reading("bad", "d1", 30, f64::NAN));
        readings.push(now_reading("u0", "d1", 30, 0.0));
        let ack = client
            .publish_readings(pb::PublishReadingsRequest {
                readings: readings.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .ack
            .unwrap();
        assert_eq!((ack.accepted, ack.duplicates), (5, 1), "{ack:?}");
        assert_eq!(ack.rejected.len(), 1);
        let rejected = &ack.rejected[0];
        assert_eq!(
            (
                rejected.index,
                rejected.event_id.as_str(),
                rejected.field.as_str()
            ),
            (5, "bad", "value")
        );
        assert!(rejected.reason.contains("finite"), "{}", rejected.reason);
        assert_eq!(
            window_count(&mut client, "d1").await,
            5,
            "stored before the answer"
        );

        let again = client
            .publish_readings(pb::PublishReadingsRequest {
                readings,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .ack
            .unwrap();
        assert_eq!(
            (again.accepted, again.duplicates, again.rejected.len()),
            (0, 6, 1)
        );
        assert_eq!(
            window_count(&mut client, "d1").await,
            5,
            "redelivery stores nothing"
        );

        let empty = client
            .publish_readings(pb::PublishReadingsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .ack
            .unwrap();
        assert_eq!((empty.accepted, empty.duplicates), (0, 0));

        let too_many = client
            .publish_readings(pb::PublishReadingsRequest {
                readings: (0..10_001)
                    .map(|i| now_reading(&format!("x{i}"), "d1", 1, 1.0))
                    .collect(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(too_many.code(), Code::InvalidArgument);
        assert!(
            too_many.message().starts_with("readings: at most 10000"),
            "{}",
            too_many.message()
        );

        let stats = client
            .get_pipeline_stats(pb::GetPipelineStatsRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(stats.dead_letters, 2);
        let sink = stats
            .stages
            .iter()
            .find(|s| s.stage == "grpc.sink")
            .unwrap();
        assert_eq!(
            sink.messages_out, 12,
            "every valid reading reached the sink: {stats:?}"
        );
        assert_eq!(stats.in_flight_bytes, 0);
        assert!(stats.in_flight_bytes_limit > 0);

        let letters = if url.starts_with("postgres") {
            let store = PgReadingStore::connect(&url, 2).await.unwrap();
            store.dead_letters(10).await.unwrap()
        } else {
            let store = SqliteReadingStore::connect(&url).await.unwrap();
            store.dead_letters(10).await.unwrap()
        };
        assert_eq!(letters.len(), 2);
        assert_eq!(
            (
                letters[0].source.as_str(),
                letters[0].tenant_id.as_deref(),
                letters[0].event_id.as_deref(),
                letters[0].field.as_str()
            ),
            ("grpc", Some("acme"), Some("bad"), "value")
        );
        let payload: serde_json::Value = serde_json::from_str(&letters[0].payload).unwrap();
        assert_eq!(
            (payload["event_id"].as_str(), payload["value"].is_null()),
            (Some("bad"), true)
        );
        running.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_gets_one_ack_per_batch_and_a_bad_sequence_is_named() {
    on_each_store("ingest_stream", |url| async move {
        let running = ingest::start(ingest::Config::for_tests(&url))
            .await
            .unwrap();
        let mut client = client(&running).await;
        let batches: Vec<pb::StreamReadingsRequest> = (1..=20u64)
            .map(|sequence| pb::StreamReadingsRequest {
                sequence,
                readings: (0..100)
                    .map(|i| now_reading(&format!("s{sequence}-{i}"), "d2", 60, 1.0))
                    .collect(),
                ..Default::default()
            })
            .collect();
        let mut acks = client
            .stream_readings(futures_util::stream::iter(batches))
            .await
            .unwrap()
            .into_inner();
        let mut sequences = Vec::new();
        let mut accepted = 0;
        while let Some(ack) = acks.message().await.unwrap() {
            let ack = ack.ack.unwrap();
            sequences.push(ack.sequence);
            accepted += ack.accepted;
        }
        sequences.sort_unstable();
        assert_eq!(sequences, (1..=20).collect::<Vec<u64>>());
        assert_eq!(accepted, 2_000);
        assert_eq!(window_count(&mut client, "d2").await, 2_000);

        let backwards = vec![
            pb::StreamReadingsRequest {
                sequence: 5,
                readings: vec![now_reading("b1", "d2", 1, 1.0)],
                ..Default::default()
            },
            pb::StreamReadingsRequest {
                sequence: 5,
                readings: vec![now_reading("b2", "d2", 1, 1.0)],
                ..Default::default()
            },
        ];
        let mut acks = client
            .stream_readings(futures_util::stream::iter(backwards))
            .await
            .unwrap()
            .into_inner();
        let error = loop {
            match acks.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without naming the bad sequence"),
                Err(status) => break status,
            }
        };
        assert_eq!(error.code(), Code::InvalidArgument);
        assert_eq!(
            error.message(),
            "sequence: must increase within a stream, got 5 after 5"
        );
        running.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_resource_exhausted_with_a_retry_hint_and_loses_nothing() {
    on_each_store("ingest_full", |url| async move {
        let mut config = ingest::Config::for_tests(&url);
        // Ten readings fill the pipeline and wait a second in their batch;
        // the queue ahead of it holds one more batch of ten, not two.
        config.pipeline.max_in_flight = 10;
        config.pipeline.max_demand = 10;
        config.pipeline.batch_timeout = Duration::from_secs(1);
        config.queue_bytes = 8_000;
        let running = ingest::start(config).await.unwrap();
        let client = client(&running).await;
        let batch = |name: &str| pb::PublishReadingsRequest {
            readings: (0..10)
                .map(|i| now_reading(&format!("{name}{i}"), "d3", 5, 1.0))
                .collect(),
            ..Default::default()
        };
        let publish = |request: pb::PublishReadingsRequest| {
            let mut client = client.clone();
            tokio::spawn(async move { client.publish_readings(request).await })
        };
        let first = publish(batch("a"));
        let probe = client.clone();
        wait_until(
            "the first batch to fill the queue",
            Duration::from_secs(10),
            || {
                let mut probe = probe.clone();
                async move {
                    let stats = probe
                        .get_pipeline_stats(pb::GetPipelineStatsRequest {})
                        .await
                        .unwrap()
                        .into_inner();
                    stats
                        .stages
                        .iter()
                        .any(|s| s.stage == "grpc.producer" && s.messages_in == 10)
                        .then_some(())
                }
            },
        )
        .await;
        let (second, third) = tokio::join!(publish(batch("b")), publish(batch("c")));
        let outcomes = [second.unwrap(), third.unwrap()];
        let refused: Vec<&tonic::Status> =
            outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
        assert_eq!(
            refused.len(),
            1,
            "exactly one of two batches fits the queue"
        );
        assert_eq!(refused[0].code(), Code::ResourceExhausted);
        assert_eq!(
            refused[0]
                .metadata()
                .get("grpc-retry-pushback-ms")
                .unwrap()
                .to_str()
                .unwrap(),
            "200"
        );
        assert!(first.await.unwrap().is_ok());
        let mut reader = client.clone();
        assert_eq!(
            window_count(&mut reader, "d3").await,
            20,
            "everything accepted is stored"
        );
        running.shutdown().await;
    })
    .await;
}

/// A client that resends each batch right after sending it (as one does
/// after a timeout while the first copy is still being written, and as
/// JetStream redelivery does next to a slow commit) is the normal case in
/// an at-least-once system: eight such streams at once, over series they
/// share, get every batch acknowledged and every reading stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_resending_every_batch_get_no_errors_and_store_each_reading_once() {
    let Some(postgres) = jobs::testing::ScratchPostgres::create("ingest_resend").await else {
        return;
    };
    // Several sink transactions at once, each a mix of streams' batches.
    let mut config = ingest::Config::for_tests(&postgres.url);
    config.pipeline.processors = 4;
    config.pipeline.batch_processors = 4;
    config.pipeline.batch_size = 300;
    let running = ingest::start(config).await.unwrap();
    const STREAMS: usize = 8;
    const BATCHES: usize = 25;
    const READINGS: usize = 200;
    let streams: Vec<_> = (0..STREAMS)
        .map(|stream| {
            let running_client = client(&running);
            async move {
                let mut client = running_client.await;
                let requests: Vec<pb::StreamReadingsRequest> = (0..BATCHES)
                    .flat_map(|batch| {
                        let readings: Vec<pb::Reading> = (0..READINGS)
                            .map(|i| {
                                let device = format!("d{}", (i + stream) % 4);
                                now_reading(&format!("s{stream}-b{batch}-r{i}"), &device, 60, 1.0)
                            })
                            .collect();
                        [2 * batch + 1, 2 * batch + 2].map(|sequence| pb::StreamReadingsRequest {
                            sequence: sequence as u64,
                            readings: readings.clone(),
                            ..Default::default()
                        })
                    })
                    .collect();
                let mut acks = client
                    .stream_readings(futures_util::stream::iter(requests))
                    .await
                    .unwrap()
                    .into_inner();
                let (mut answered, mut accepted) = (0, 0);
                while let Some(ack) = acks.message().await.unwrap_or_else(|status| {
                    panic!("stream {stream} torn down after {answered} acks: {status:?}")
                }) {
                    let ack = ack.ack.unwrap();
                    assert_eq!(ack.error, None, "stream {stream}, batch {}", ack.sequence);
                    answered += 1;
                    accepted += ack.accepted;
                }
                (answered, accepted)
            }
        })
        .collect();
    let results = futures_util::future::join_all(streams).await;
    for (stream, (answered, accepted)) in results.into_iter().enumerate() {
        assert_eq!(answered, 2 * BATCHES, "stream {stream}: one ack per batch");
        assert_eq!(
            accepted as usize,
            BATCHES * READINGS,
            "stream {stream}: each reading accepted once, its resend a duplicate"
        );
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM ingest.reading")
        .fetch_one(&postgres.pool)
        .await
        .unwrap();
    assert_eq!(stored as usize, STREAMS * BATCHES * READINGS);
    running.shutdown().await;
    postgres.drop_database().await;
}

/// Makes the database refuse readings whose event id starts with `poison`
/// (a failure the sink cannot retry away), or accept them again.
async fn poison(url: &str, on: bool) {
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let statements: &[&str] = if on {
            &[
                "CREATE FUNCTION ingest.refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN IF NEW.event_id LIKE 'poison%' THEN RAISE EXCEPTION 'poisoned for the test'; END IF;
                 RETURN NEW; END $$",
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON ingest.reading
                 FOR EACH ROW EXECUTE FUNCTION ingest.refuse_poison()",
            ]
        } else {
            &["DROP TRIGGER refuse_poison ON ingest.reading"]
        };
        for statement in statements {
            sqlx::query(statement).execute(&pool).await.unwrap();
        }
    } else {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        let statement = if on {
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON ingest_reading
             WHEN NEW.event_id LIKE 'poison%' BEGIN SELECT RAISE(ABORT, 'poisoned for the test'); END"
        } else {
            "DROP TRIGGER refuse_poison"
        };
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
}

/// A batch the database fails to store is answered on the stream with its
/// error, and the stream goes on: the publisher resends that one batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_the_database_fails_is_acknowledged_with_its_error_and_the_stream_goes_on() {
    on_each_store("ingest_batch_error", |url| async move {
        let running = ingest::start(ingest::Config::for_tests(&url))
            .await
            .unwrap();
        poison(&url, true).await;
        let mut client = client(&running).await;
        let (requests, outbound) = tokio::sync::mpsc::channel(4);
        let mut acks = client
            .stream_readings(tokio_stream::wrappers::ReceiverStream::new(outbound))
            .await
            .unwrap()
            .into_inner();
        let batch = |sequence: u64, prefix: &str| pb::StreamReadingsRequest {
            sequence,
            readings: (0..5)
                .map(|i| now_reading(&format!("{prefix}-{i}"), "d9", 30, 1.0))
                .collect(),
            ..Default::default()
        };
        // One batch at a time, so the failure touches that batch only.
        let mut send = async |request| {
            requests.send(request).await.unwrap();
            acks.message().await.unwrap().unwrap().ack.unwrap()
        };
        let failed = send(batch(1, "poison")).await;
        let error = failed.error.clone().expect("the batch was not stored");
        assert_eq!(error.code, Code::Unavailable as i32, "{failed:?}");
        assert_eq!((error.not_stored, failed.accepted), (5, 0));
        assert!(error.message.contains("resend"), "{}", error.message);
        let next = send(batch(2, "fine")).await;
        assert_eq!((next.accepted, next.error), (5, None), "the stream goes on");
        poison(&url, false).await;
        let resent = send(batch(3, "poison")).await;
        assert_eq!(
            (resent.accepted, resent.error),
            (5, None),
            "the resend is stored"
        );
        assert_eq!(window_count(&mut client, "d9").await, 10);
        drop(requests);
        running.shutdown().await;
    })
    .await;
}
