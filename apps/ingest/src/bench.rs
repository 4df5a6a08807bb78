//! `ingest bench`: what the pipeline does on this machine, printed with its
//! method. (a) the stage kit alone, in memory, on one core; (b) readings
//! streamed over gRPC into PostgreSQL through the whole app, against the
//! same rows written by a raw binary `COPY` into the same table in the same
//! run (the physical limit); (c) readings consumed from NATS JetStream into
//! PostgreSQL with explicit acks; (d) the embedded SQLite store's batch
//! write against the row-by-row statements it used before, in the same run
//! on the same rows. Each PostgreSQL phase uses a scratch database created
//! and dropped on the given server; (d) a scratch file in the temp folder.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use async_nats::jetstream;
use chrono::Utc;
use clap::Args;
use contracts::ingest::v1::{self as pb, ingest_service_client::IngestServiceClient};
use prost::Message as _;
use service_runtime::{DatabaseUrl, EnvValue as _, ServiceUrl};
use sqlx::{Connection as _, Executor as _, PgConnection};

use crate::{Config, NatsConfig};

/// What to measure and how hard.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Messages through the in-memory pipeline in (a).
    #[arg(long, default_value_t = 5_000_000)]
    pub kit_messages: u64,
    /// Readings written in (b) and (c).
    #[arg(long, default_value_t = 200_000)]
    pub readings: usize,
    /// Readings per streamed batch in (b).
    #[arg(long, default_value_t = 1_000)]
    pub batch: usize,
    /// PostgreSQL server for (b) and (c) (default: `DATABASE_URL`).
    #[arg(long)]
    pub database_url: Option<String>,
    /// NATS server for (c) (default: `NATS_URL`).
    #[arg(long)]
    pub nats_url: Option<String>,
    /// Readings per JetStream message in (c)'s second round
    /// (`platform.ingest.v1.ReadingBatch`).
    #[arg(long, default_value_t = 100)]
    pub nats_batch: usize,
    /// Rounds of a raw COPY followed by `--nats-batch` readings per
    /// message in (c); the median ratio is reported.
    #[arg(long, default_value_t = 3)]
    pub nats_rounds: usize,
    /// Run only these parts (a, b, c, d); all by default.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

impl BenchArgs {
    fn wants(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == part)
    }
}

/// Why the benchmark stopped.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A database step failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The app or a client failed.
    #[error("{0}")]
    Other(String),
}

fn other(context: &'static str) -> impl Fn(String) -> BenchError {
    move |message| BenchError::Other(format!("{context}: {message}"))
}

/// (a): the kit on a single-threaded runtime, so the figure is per core.
#[allow(clippy::print_stdout, reason = "the benchmark's report")]
pub fn kit(args: &BenchArgs) -> Result<(), BenchError> {
    if !args.wants("a") {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::Other(e.to_string()))?;
    let config = pipeline::PipelineConfig {
        processors: 2,
        batchers: 2,
        batch_processors: 2,
        batch_size: 1_000,
        max_demand: 5_000,
        max_in_flight: 50_000,
        ..pipeline::PipelineConfig::default()
    };
    println!(
        "(a) stage kit, in memory: {} no-op messages, producer -> 2 processors -> 2 batchers \
         (16 keys, batch 1000) -> 2 batch processors, every message acknowledged; \
         one thread (tokio current_thread), so the rate is per core",
        args.kit_messages
    );
    for run in 1..=3 {
        let result = runtime
            .block_on(pipeline::bench::in_memory(
                args.kit_messages,
                config.clone(),
            ))
            .map_err(|e| BenchError::Other(e.to_string()))?;
        println!(
            "    run {run}: {} acknowledged in {:.2} s = {:.0} messages/s per core",
            result.messages,
            result.elapsed.as_secs_f64(),
            result.rate()
        );
    }
    Ok(())
}

/// A scratch database on the server at `admin_url`.
struct Scratch {
    admin_url: String,
    name: String,
    url: String,
}

impl Scratch {
    async fn create(admin_url: &str, part: &str) -> Result<Self, BenchError> {
        let name = format!("ingest_bench_{part}_{}", std::process::id());
        let mut admin = PgConnection::connect(admin_url).await?;
        admin
            .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
            .await?;
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await?;
        Ok(Self {
            admin_url: admin_url.to_owned(),
            url: jobs::postgres::with_database(admin_url, &name),
            name,
        })
    }

    async fn drop(self) -> Result<(), BenchError> {
        let mut admin = PgConnection::connect(&self.admin_url).await?;
        admin
            .execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str())
            .await?;
        Ok(())
    }
}

/// `n` readings over 100 devices, in event-time order, 0.6 s apart per
/// device, ending a minute ago: windows close as they go.
fn readings(n: usize, prefix: &str) -> Vec<pb::Reading> {
    const DEVICES: usize = 100;
    let per_device = n.div_ceil(DEVICES);
    let start = Utc::now() - chrono::Duration::milliseconds(600 * per_device as i64 + 60_000);
    let mut out = Vec::with_capacity(n);
    'all: for i in 0..per_device {
        let at = start + chrono::Duration::milliseconds(600 * i as i64);
        for device in 0..DEVICES {
            if out.len() == n {
                break 'all;
            }
            out.push(pb::Reading {
                event_id: format!("{prefix}-{device}-{i}"),
                tenant_id: "bench".into(),
                device_id: format!("device-{device}"),
                metric: "temperature_c".into(),
                value: 20.0 + (i % 17) as f64 * 0.25,
                observed_at: Some(prost_types::Timestamp {
                    seconds: at.timestamp(),
                    nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
                }),
                attributes: Default::default(),
            });
        }
    }
    out
}

/// PostgreSQL's binary COPY encoding of readings into `ingest.reading`.
fn copy_binary(readings: &[pb::Reading]) -> Vec<u8> {
    const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;
    let mut out = Vec::with_capacity(readings.len() * 96 + 32);
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    let field = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    for r in readings {
        out.extend_from_slice(&7i16.to_be_bytes());
        field(&mut out, r.event_id.as_bytes());
        field(&mut out, r.tenant_id.as_bytes());
        field(&mut out, r.device_id.as_bytes());
        field(&mut out, r.metric.as_bytes());
        field(&mut out, &r.value.to_bits().to_be_bytes());
        let at = r.observed_at.unwrap_or_default();
        let micros = at.seconds * 1_000_000 + i64::from(at.nanos) / 1_000 - POSTGRES_EPOCH_MICROS;
        field(&mut out, &micros.to_be_bytes());
        field(&mut out, b"\x01{}");
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

async fn start_ingest(
    url: &str,
    nats: Option<NatsConfig>,
) -> Result<service_runtime::Running, BenchError> {
    let mut config = Config::for_tests(url);
    config.nats = nats;
    config.common.shutdown_grace = Duration::from_secs(20);
    crate::start(config)
        .await
        .map_err(|e| BenchError::Other(format!("starting ingest: {e}")))
}

async fn count_readings(url: &str) -> Result<i64, BenchError> {
    let mut conn = PgConnection::connect(url).await?;
    Ok(sqlx::query_scalar("SELECT count(*) FROM ingest.reading")
        .fetch_one(&mut conn)
        .await?)
}

/// The physical limit: one binary COPY of `rows` into `ingest.reading`
/// (same table, same indexes) in the database at `url`, emptied again for
/// the app's run; prints and returns how long the statement took.
#[allow(clippy::print_stdout, reason = "the benchmark's report")]
async fn raw_copy(url: &str, rows: &[pb::Reading]) -> Result<Duration, BenchError> {
    let encoded = copy_binary(rows);
    let mut conn = PgConnection::connect(url).await?;
    let started = Instant::now();
    let mut copy = conn
        .copy_in_raw(
            "COPY ingest.reading (event_id, tenant_id, device_id, metric, value, observed_at, attributes) \
             FROM STDIN (FORMAT binary)",
        )
        .await?;
    copy.send(encoded).await?;
    let copied = copy.finish().await?;
    let copy_time = started.elapsed();
    conn.execute("TRUNCATE ingest.reading").await?;
    println!(
        "    raw binary COPY, one statement: {copied} rows in {:.2} s = {:.0} rows/s",
        copy_time.as_secs_f64(),
        rate(rows.len(), copy_time)
    );
    Ok(copy_time)
}

/// (b): raw COPY, then the same rows streamed over gRPC through the app.
#[allow(clippy::print_stdout, reason = "the benchmark's report")]
pub async fn grpc(args: &BenchArgs) -> Result<(), BenchError> {
    if !args.wants("b") {
        return Ok(());
    }
    let Some(server) = &args.database_url else {
        println!("(b) skipped: no --database-url / DATABASE_URL");
        return Ok(());
    };
    let scratch = Scratch::create(server, "grpc").await?;
    let running = start_ingest(&scratch.url, None).await?;
    let rows = readings(args.readings, "r");
    println!(
        "(b) {} readings (100 devices, 0.6 s apart, windows closing as they go) into \
         ingest.reading on PostgreSQL at {}",
        rows.len(),
        DatabaseUrl::parse_env(server)
            .map(|u| format!("{u:?}"))
            .unwrap_or_default()
    );

    let copy_time = raw_copy(&scratch.url, &rows).await?;
    let mut conn = PgConnection::connect(&scratch.url).await?;

    let port = running.grpc_addr.map(|a| a.port()).unwrap_or_default();
    let channel = service_runtime::traced_channel(
        &ServiceUrl::local(port),
        &service_runtime::Transport::Plaintext,
        "ingest",
        Duration::from_secs(5),
        Duration::from_secs(600),
    )
    .map_err(|e| BenchError::Other(e.to_string()))?;
    let mut client = IngestServiceClient::new(channel);
    let batches: Vec<pb::StreamReadingsRequest> = rows
        .chunks(args.batch)
        .enumerate()
        .map(|(i, chunk)| pb::StreamReadingsRequest {
            sequence: i as u64 + 1,
            readings: chunk.to_vec(),
            ..Default::default()
        })
        .collect();
    let expected = batches.len();
    let started = Instant::now();
    let mut acks = client
        .stream_readings(futures_util::stream::iter(batches))
        .await
        .map_err(|s| BenchError::Other(format!("stream: {s}")))?
        .into_inner();
    let (mut acked, mut accepted) = (0usize, 0u64);
    while let Some(ack) = acks
        .message()
        .await
        .map_err(|s| BenchError::Other(format!("stream: {s}")))?
    {
        acked += 1;
        accepted += u64::from(ack.ack.map(|a| a.accepted).unwrap_or_default());
    }
    let stream_time = started.elapsed();
    let stored = count_readings(&scratch.url).await?;
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs.job")
        .fetch_one(&mut conn)
        .await?;
    let grpc_rate = rate(rows.len(), stream_time);
    println!(
        "    gRPC StreamReadings, batches of {}, each acknowledged after commit, through \
         validation, batching (1000 / 50 ms), the sink (insert ON CONFLICT, watermarks, \
         aggregation jobs in the same transaction): {acked}/{expected} batches acked, \
         {accepted} accepted, {stored} stored, {jobs} aggregation jobs, in {:.2} s = {:.0} \
         readings/s = {:.0}% of raw COPY",
        args.batch,
        stream_time.as_secs_f64(),
        grpc_rate,
        100.0 * grpc_rate / rate(rows.len(), copy_time)
    );
    drop(conn);
    running.shutdown().await;
    scratch.drop().await
}

/// (c): readings waiting in JetStream, consumed into PostgreSQL, against
/// a raw COPY of the same rows in the same run: first one reading per
/// message, then `--nats-rounds` rounds of a COPY and `--nats-batch`
/// readings per message (`platform.ingest.v1.ReadingBatch`) one after the
/// other. The figure is the median of the rounds' ratios: one COPY of a
/// second and a half moved by a fifth from run to run on its own (128k to
/// 166k rows/s on one machine), so a ratio against a single COPY said more
/// about the COPY than about the consumer.
#[allow(clippy::print_stdout, reason = "the benchmark's report")]
pub async fn nats(args: &BenchArgs) -> Result<(), BenchError> {
    if !args.wants("c") {
        return Ok(());
    }
    let (Some(server), Some(nats_url)) = (&args.database_url, &args.nats_url) else {
        println!("(c) skipped: needs --database-url and --nats-url (or DATABASE_URL, NATS_URL)");
        return Ok(());
    };
    let rows = readings(args.readings, "n");
    println!(
        "(c) {} readings published to JetStream first (the publish rate is not the figure), \
         then consumed by ingest's durable pull consumer (acks after commit) into PostgreSQL; \
         the rate runs from the first delivery to the last ack; each COPY and each consumer \
         run gets a fresh scratch database",
        rows.len()
    );
    let client = async_nats::connect(nats_url.as_str())
        .await
        .map_err(|e| other("nats")(e.to_string()))?;
    let js = jetstream::new(client);
    let per_message = args.nats_batch.max(1);
    let mut ratios = Vec::new();
    for round in 0..=args.nats_rounds.max(1) {
        // Round 0 is the one reading per message, against its own COPY.
        let per_message = if round == 0 { 1 } else { per_message };
        let copy_rate = {
            let scratch = Scratch::create(server, "nats").await?;
            // Ingest's migrations create the table the COPY writes.
            start_ingest(&scratch.url, None).await?.shutdown().await;
            let copied = raw_copy(&scratch.url, &rows).await;
            scratch.drop().await?;
            rate(rows.len(), copied?)
        };
        let scratch = Scratch::create(server, "nats").await?;
        let consumed = consume_from_jetstream(&js, &scratch, nats_url, &rows, per_message).await;
        scratch.drop().await?;
        let readings_per_second = rate(rows.len(), consumed?);
        let ratio = readings_per_second / copy_rate;
        if round > 0 {
            ratios.push(ratio);
        }
        println!(
            "    {per_message} reading(s) per message: {:.0} readings/s = {:.0}% of the COPY \
             just before",
            readings_per_second,
            100.0 * ratio
        );
    }
    ratios.sort_by(f64::total_cmp);
    if let (Some(low), Some(high)) = (ratios.first(), ratios.last()) {
        println!(
            "    {per_message} readings per message, median of {} rounds: {:.0}% of raw COPY \
             (rounds {:.0}%-{:.0}%)",
            ratios.len(),
            100.0 * ratios[ratios.len() / 2],
            100.0 * low,
            100.0 * high
        );
    }
    Ok(())
}

/// Publishes `rows` to a fresh stream `per_message` at a time, starts
/// ingest on `scratch` consuming it, and returns the time from the first
/// delivery to the last ack (every row stored is checked at the end).
async fn consume_from_jetstream(
    js: &jetstream::Context,
    scratch: &Scratch,
    nats_url: &str,
    rows: &[pb::Reading],
    per_message: usize,
) -> Result<Duration, BenchError> {
    let id = format!("ingest_bench_{}_{per_message}", std::process::id());
    let config = NatsConfig {
        url: nats_url.to_owned(),
        stream: id.to_uppercase(),
        subjects: vec![format!("{id}.>")],
        consumer: format!("{id}_consumer"),
        ack_wait: Duration::from_secs(60),
        nak_delay: Duration::from_secs(1),
        tls: None,
    };
    let _ = js.delete_stream(&config.stream).await;
    js.create_stream(jetstream::stream::Config {
        name: config.stream.clone(),
        subjects: config.subjects.clone(),
        retention: jetstream::stream::RetentionPolicy::WorkQueue,
        ..Default::default()
    })
    .await
    .map_err(|e| other("stream")(e.to_string()))?;
    let subject = format!("{id}.bench");
    let messages: Vec<Vec<u8>> = if per_message == 1 {
        rows.iter().map(prost::Message::encode_to_vec).collect()
    } else {
        rows.chunks(per_message)
            .map(|chunk| {
                pb::ReadingBatch {
                    readings: chunk.to_vec(),
                }
                .encode_to_vec()
            })
            .collect()
    };
    let message_count = messages.len() as u64;
    for chunk in messages.chunks(5_000) {
        let mut pending = Vec::with_capacity(chunk.len());
        for payload in chunk {
            let publish = if per_message == 1 {
                js.publish(subject.clone(), payload.clone().into()).await
            } else {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Content-Type", crate::source::nats::BATCH_CONTENT_TYPE);
                js.publish_with_headers(subject.clone(), headers, payload.clone().into())
                    .await
            };
            pending.push(publish.map_err(|e| other("publish")(e.to_string()))?);
        }
        for ack in pending {
            ack.await.map_err(|e| other("publish ack")(e.to_string()))?;
        }
    }
    let started = Instant::now();
    let running = start_ingest(&scratch.url, Some(config.clone())).await?;
    // Progress from the consumer's own counters (cheap, on NATS); the rows
    // are counted once at the end. Counting them while ingest writes would
    // scan the growing table every 20 ms on the same cores.
    let stream = js
        .get_stream(&config.stream)
        .await
        .map_err(|e| other("stream")(e.to_string()))?;
    let mut first_delivery = None;
    loop {
        let info = stream
            .get_consumer::<jetstream::consumer::pull::Config>(&config.consumer)
            .await
            .map_err(|e| other("consumer")(e.to_string()))?
            .cached_info()
            .clone();
        if first_delivery.is_none() && info.delivered.stream_sequence > 0 {
            first_delivery = Some(Instant::now());
        }
        if info.num_ack_pending == 0
            && info.num_pending == 0
            && info.delivered.stream_sequence >= message_count
        {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            return Err(BenchError::Other(
                "consumption did not finish in 10 minutes".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let consume_time = first_delivery.map_or(started.elapsed(), |at| at.elapsed());
    running.shutdown().await;
    let _ = js.delete_stream(&config.stream).await;
    let stored = count_readings(&scratch.url).await?;
    if stored < rows.len() as i64 {
        return Err(BenchError::Other(format!(
            "every message acked but {stored} of {} readings stored",
            rows.len()
        )));
    }
    Ok(consume_time)
}

/// (d): `--readings` readings in batches of `--batch` through
/// [`SqliteReadingStore::write_batch`] (multi-row statements, watermarks
/// and aggregation jobs included), against the same rows inserted one
/// statement per reading and two per series for its watermark, in one
/// `BEGIN IMMEDIATE` transaction per batch (the store's previous strategy;
/// without the aggregation jobs, which both write the same way, so the
/// ratio understates the gain), each into a fresh file.
#[allow(clippy::print_stdout, reason = "the benchmark's report")]
pub async fn sqlite(args: &BenchArgs) -> Result<(), BenchError> {
    use crate::store::ReadingStore as _;
    if !args.wants("d") {
        return Ok(());
    }
    let now = Utc::now();
    let limits = crate::reading::Limits::default();
    let readings = readings(args.readings, "sqlite")
        .into_iter()
        .map(|raw| crate::reading::Reading::parse(raw, now, &limits))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|rejection| BenchError::Other(format!("bench reading: {rejection}")))?;
    let windowing = crate::window::Windowing::default();
    let batch = args.batch.max(1);

    let store = ScratchStore::open("store").await?;
    let started = Instant::now();
    let mut jobs = 0;
    for chunk in readings.chunks(batch) {
        let report = store
            .store
            .write_batch(chunk, &windowing)
            .await
            .map_err(|e| BenchError::Other(e.to_string()))?;
        jobs += report.jobs_enqueued;
    }
    let multi_row = started.elapsed();
    store.remove().await;

    let store = ScratchStore::open("rows").await?;
    let started = Instant::now();
    write_row_by_row(&store.store, &readings, batch, now).await?;
    let row_by_row = started.elapsed();
    store.remove().await;

    println!(
        "(d) SQLite store, {} readings in batches of {}:\n    \
         write_batch (multi-row, with watermarks and {jobs} aggregation jobs) {:.2} s = {:.0} readings/s\n    \
         statement per reading and per series (previous, without jobs)      {:.2} s = {:.0} readings/s\n    \
         ratio {:.1}x",
        readings.len(),
        args.batch,
        multi_row.as_secs_f64(),
        rate(readings.len(), multi_row),
        row_by_row.as_secs_f64(),
        rate(readings.len(), row_by_row),
        row_by_row.as_secs_f64() / multi_row.as_secs_f64().max(f64::EPSILON),
    );
    Ok(())
}

/// The SQLite store's previous batch write, kept as (d)'s baseline: one
/// statement per reading and two per series for its watermark.
async fn write_row_by_row(
    store: &crate::store::SqliteReadingStore,
    readings: &[crate::reading::Reading],
    batch_size: usize,
    now: chrono::DateTime<Utc>,
) -> Result<(), BenchError> {
    for batch in readings.chunks(batch_size) {
        let mut tx = store.pool().begin_with("BEGIN IMMEDIATE").await?;
        for r in batch {
            sqlx::query(
                "INSERT INTO ingest_reading (event_id, tenant_id, device_id, metric, value, observed_at, attributes, ingested_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (tenant_id, event_id) DO NOTHING",
            )
            .bind(&r.event_id)
            .bind(&r.tenant_id)
            .bind(&r.device_id)
            .bind(&r.metric)
            .bind(r.value)
            .bind(r.observed_at.timestamp_micros())
            .bind(serde_json::json!(r.attributes).to_string())
            .bind(now.timestamp_micros())
            .execute(&mut *tx)
            .await?;
        }
        // And two statements per series for its watermark, as before.
        let mut latest: BTreeMap<(&str, &str, &str), i64> = BTreeMap::new();
        for r in batch {
            let at = latest
                .entry((&r.tenant_id, &r.device_id, &r.metric))
                .or_default();
            *at = (*at).max(r.observed_at.timestamp_micros());
        }
        for ((tenant, device, metric), at) in latest {
            let _: Option<i64> = sqlx::query_scalar(
                "SELECT watermark FROM ingest_series_watermark WHERE tenant_id = ? AND device_id = ? AND metric = ?",
            )
            .bind(tenant)
            .bind(device)
            .bind(metric)
            .fetch_optional(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO ingest_series_watermark (tenant_id, device_id, metric, watermark) VALUES (?, ?, ?, ?)
                 ON CONFLICT (tenant_id, device_id, metric)
                 DO UPDATE SET watermark = max(watermark, excluded.watermark)",
            )
            .bind(tenant)
            .bind(device)
            .bind(metric)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
    }
    Ok(())
}

/// A migrated SQLite store on a fresh file in the temp folder.
struct ScratchStore {
    store: crate::store::SqliteReadingStore,
    path: std::path::PathBuf,
}

impl ScratchStore {
    async fn open(name: &str) -> Result<Self, BenchError> {
        use crate::store::ReadingStore as _;
        let path =
            std::env::temp_dir().join(format!("ingest-bench-{name}-{}.db", std::process::id()));
        remove_sqlite(&path);
        let other = |e: crate::store::StoreError| BenchError::Other(e.to_string());
        let store =
            crate::store::SqliteReadingStore::connect(&format!("sqlite://{}", path.display()))
                .await
                .map_err(other)?;
        store.migrate().await.map_err(other)?;
        Ok(Self { store, path })
    }

    /// Closes the pool and deletes the file.
    async fn remove(self) {
        self.store.pool().close().await;
        remove_sqlite(&self.path);
    }
}

/// Deletes an SQLite file and its journals, if present.
fn remove_sqlite(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm", ".setup.lock"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// Runs the parts asked for, printing as it goes.
pub fn run(args: &BenchArgs) -> Result<(), BenchError> {
    let from_env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut args = args.clone();
    args.database_url = args.database_url.or_else(|| from_env("DATABASE_URL"));
    args.nats_url = args.nats_url.or_else(|| from_env("NATS_URL"));
    let args = &args;
    kit(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::Other(e.to_string()))?;
    runtime.block_on(async {
        grpc(args).await?;
        nats(args).await?;
        sqlite(args).await
    })
}
