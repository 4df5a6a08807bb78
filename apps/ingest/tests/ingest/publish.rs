//! Publishing through the pipeline over gRPC, on SQLite and (when
//! configured) PostgreSQL: answers only after the readings are durable,
//! duplicates and rejections counted per batch, dead letters kept, a full
//! queue pushes back.

use std::time::Duration;

use chrono::Utc;
use contracts::ingest::v1::{self as pb, ingest_service_client::IngestServiceClient};
use service_runtime::{EnvValue as _, Running, ServiceUrl, TracedChannel, traced_channel};
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
            .publish_readings(pb::PublishReadingsRequest { readings })
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

        let store = ingest::store::IngestStore::connect(
            &service_runtime::DatabaseUrl::parse_env(&url).unwrap(),
            2,
        )
        .await
        .unwrap();
        let letters = store.dead_letters(10).await.unwrap();
        assert_eq!(letters.len(), 2);
        assert_eq!(
            (
                letters[0].0.as_str(),
                letters[0].1.as_deref(),
                letters[0].2.as_str()
            ),
            ("grpc", Some("bad"), "value")
        );
        let payload: serde_json::Value = serde_json::from_str(&letters[0].4).unwrap();
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
            },
            pb::StreamReadingsRequest {
                sequence: 5,
                readings: vec![now_reading("b2", "d2", 1, 1.0)],
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
        };
        let publish = |request: pb::PublishReadingsRequest| {
            let mut client = client.clone();
            tokio::spawn(async move { client.publish_readings(request).await })
        };
        let first = publish(batch("a"));
        let mut probe = client.clone();
        loop {
            let stats = probe
                .get_pipeline_stats(pb::GetPipelineStatsRequest {})
                .await
                .unwrap()
                .into_inner();
            if stats
                .stages
                .iter()
                .any(|s| s.stage == "grpc.producer" && s.messages_in == 10)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
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
