//! Overload: publishers offer about ten times what the sink can write, for
//! 30 s, against the `ingest` process on PostgreSQL (mandatory when
//! `DATABASE_URL` is set). Its peak resident memory stays under the
//! configured ceiling (idle footprint plus the queue and in-flight byte
//! budgets plus fixed slack); publishers are pushed back with
//! `RESOURCE_EXHAUSTED`; every reading that was acknowledged is stored.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use contracts::ingest::v1::{self as pb, ingest_service_client::IngestServiceClient};
use service_runtime::{ServiceUrl, traced_channel};
use tonic::Code;

use crate::{publish::now_reading, support::start_ingest};
use ingest::store::ReadingStore as _;

const LOAD: Duration = Duration::from_secs(30);
/// 500 readings every 10 ms: 50,000 a second, about ten times the sink.
const OFFER_EVERY: Duration = Duration::from_millis(10);
const BATCH: usize = 500;
const QUEUE_BYTES: u64 = 16 * 1024 * 1024;
const IN_FLIGHT_BYTES: u64 = 16 * 1024 * 1024;
/// Runtime, allocator and connection buffers beyond the two budgets.
const SLACK: u64 = 48 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_times_the_sink_rate_for_30_s_stays_under_the_memory_ceiling_and_loses_nothing() {
    let Some(postgres) = jobs::testing::ScratchPostgres::create("ingest_overload").await else {
        return;
    };
    let pool = postgres.pool.clone();
    let store = ingest::store::PgReadingStore::new(pool.clone());
    store.migrate().await.unwrap();
    // A slow database: every insert statement into readings takes 50 ms
    // more, so the sink writes a few thousand readings a second.
    sqlx::query(
        "CREATE FUNCTION ingest.slow_sink() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN PERFORM pg_sleep(0.05); RETURN NULL; END $$",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "CREATE TRIGGER slow_sink AFTER INSERT ON ingest.reading
         FOR EACH STATEMENT EXECUTE FUNCTION ingest.slow_sink()",
    )
    .execute(&pool)
    .await
    .unwrap();

    let ingest = start_ingest(
        &postgres.url,
        vec![
            ("INGEST_QUEUE_BYTES", QUEUE_BYTES.to_string()),
            ("INGEST_MAX_IN_FLIGHT_BYTES", IN_FLIGHT_BYTES.to_string()),
            ("INGEST_BATCH_SIZE", "200".to_owned()),
            ("INGEST_SINK_CONCURRENCY", "1".to_owned()),
        ],
    );
    let timeout = Duration::from_secs(60);
    let channel = traced_channel(
        &ServiceUrl::local(ingest.grpc_addr.port()),
        &service_runtime::Transport::Plaintext,
        "ingest",
        timeout,
        timeout,
    )
    .unwrap();
    let client = IngestServiceClient::new(channel);
    ingest.ready().await;
    let (idle, _) = ingest.memory();

    // Open loop: a batch every OFFER_EVERY whatever the answers, each on
    // its own task, as independent devices would publish.
    let offered = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let load_started = Instant::now();
    let mut tick = tokio::time::interval(OFFER_EVERY);
    let mut publishes = Vec::new();
    let mut round = 0;
    while load_started.elapsed() < LOAD {
        tick.tick().await;
        round += 1;
        let readings: Vec<pb::Reading> = (0..BATCH)
            .map(|i| {
                now_reading(
                    &format!("o{round}-{i}"),
                    &format!("d{}", round % 16),
                    30,
                    1.0,
                )
            })
            .collect();
        offered.fetch_add(BATCH as u64, Ordering::Relaxed);
        let mut client = client.clone();
        let refused = refused.clone();
        publishes.push(tokio::spawn(async move {
            let ids: Vec<String> = readings.iter().map(|r| r.event_id.clone()).collect();
            match client
                .publish_readings(pb::PublishReadingsRequest {
                    readings,
                    ..Default::default()
                })
                .await
            {
                Ok(response) => {
                    assert_eq!(response.into_inner().ack.unwrap().accepted as usize, BATCH);
                    ids
                }
                Err(status) if status.code() == Code::ResourceExhausted => {
                    assert!(status.metadata().get("grpc-retry-pushback-ms").is_some());
                    refused.fetch_add(1, Ordering::Relaxed);
                    Vec::new()
                }
                Err(status) => panic!("publish failed: {status}"),
            }
        }));
    }
    let load_time = load_started.elapsed();
    let mut acked = HashSet::new();
    for publish in publishes {
        acked.extend(publish.await.unwrap());
    }
    let (_, peak) = ingest.memory();

    let stored: Vec<String> = sqlx::query_scalar("SELECT event_id FROM ingest.reading")
        .fetch_all(&pool)
        .await
        .unwrap();
    let stored: HashSet<String> = stored.into_iter().collect();
    let offered = offered.load(Ordering::Relaxed);
    eprintln!(
        "overload: offered {offered} readings in {:.1} s ({:.0}/s), stored {} ({:.0}/s, {:.1}x less), \
         {} batches pushed back; RSS idle {:.1} MiB, peak {:.1} MiB, ceiling {:.1} MiB",
        load_time.as_secs_f64(),
        offered as f64 / load_time.as_secs_f64(),
        stored.len(),
        stored.len() as f64 / load_time.as_secs_f64(),
        offered as f64 / stored.len().max(1) as f64,
        refused.load(Ordering::Relaxed),
        idle as f64 / 1048576.0,
        peak as f64 / 1048576.0,
        (idle + QUEUE_BYTES + IN_FLIGHT_BYTES + SLACK) as f64 / 1048576.0,
    );
    assert!(
        refused.load(Ordering::Relaxed) > 0,
        "the pipeline was never full: no overload"
    );
    assert!(
        peak <= idle + QUEUE_BYTES + IN_FLIGHT_BYTES + SLACK,
        "peak RSS {peak} above the ceiling"
    );
    let missing = acked.difference(&stored).count();
    assert_eq!(missing, 0, "acknowledged readings not stored");
    assert_eq!(
        stored.len(),
        acked.len(),
        "stored readings nobody was told about"
    );
    drop(ingest);
    postgres.drop_database().await;
}
