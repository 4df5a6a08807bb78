//! `gateway bench ...`: the two halves of the gateway's benchmark that need
//! its code; `apps/gateway/bench/run.sh` drives them with an outside load
//! generator and prints the method with the numbers.
//!
//! - `bench edge` serves one fixed-body route twice: behind the gateway's
//!   whole stack (the runtime's listener with tracing and metrics, secure
//!   headers, CORS, load shedding, the per-client limit, key lookup and the
//!   per-key limit) and on a bare axum server, so a load generator can
//!   measure what the stack costs.
//! - `bench readings` publishes the same batches through `POST
//!   /v1/readings` and straight to ingest's gRPC API, alternating, and
//!   prints readings per second for each and their ratio.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, routing::get};
use clap::{Args, Subcommand};
use contracts::ingest::v1::{self as pb, ingest_service_client::IngestServiceClient};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use service_runtime::{CommonConfig, PublicHttp, ServiceBuilder, ServiceUrl, Transport};

use crate::{
    auth::{AuthState, UsageLog},
    keys::TenantId,
    limits::{LimitSettings, Limits, Quota},
    storage::{GatewayStore as _, sqlite::SqliteGatewayStore},
    tenancy,
};

/// `gateway bench ...`
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Serve `GET /bench` behind the whole stack and on a bare server,
    /// until interrupted; prints the key the stacked one takes.
    Edge {
        /// Address of the stacked server.
        #[arg(long, default_value = "127.0.0.1:38180")]
        stacked: SocketAddr,
        /// Address of the bare server.
        #[arg(long, default_value = "127.0.0.1:38181")]
        bare: SocketAddr,
    },
    /// Publish the same batches through the gateway and straight to ingest.
    Readings(ReadingsArgs),
}

/// `gateway bench readings`
#[derive(Debug, Clone, Args)]
pub struct ReadingsArgs {
    /// The gateway's public address.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub gateway: String,
    /// An API key with `readings:write`.
    #[arg(long)]
    pub key: String,
    /// The key's tenant (the direct path names it in each reading).
    #[arg(long, default_value = "dev")]
    pub tenant: String,
    /// Ingest's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub ingest: String,
    /// Where the operator certificate is (the direct path connects as the
    /// operator, as `ingest publish` does).
    #[arg(long, default_value = "data/certs")]
    pub tls_dir: std::path::PathBuf,
    /// Batches per measured round.
    #[arg(long, default_value_t = 200)]
    pub batches: usize,
    /// Readings per batch.
    #[arg(long, default_value_t = 500)]
    pub batch_size: usize,
    /// Batches in flight at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Rounds of each path, alternating.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

/// Runs a bench command.
pub async fn run(command: BenchCommand) -> Result<(), String> {
    match command {
        BenchCommand::Edge { stacked, bare } => edge(stacked, bare).await,
        BenchCommand::Readings(args) => readings(&args).await,
    }
}

/// The fixed answer both servers give.
const FIXED: &str = r#"{"ok":true}"#;

#[allow(clippy::print_stdout, reason = "the command's output")]
async fn edge(stacked: SocketAddr, bare: SocketAddr) -> Result<(), String> {
    let store = SqliteGatewayStore::connect("sqlite::memory:")
        .await
        .map_err(|e| e.to_string())?;
    store.migrate().await.map_err(|e| e.to_string())?;
    let tenant = TenantId::parse("bench").map_err(|e| e.to_string())?;
    store
        .create_tenant(&tenant, "benchmark")
        .await
        .map_err(|e| e.to_string())?;
    let peppers = crate::Config::for_tests(
        "sqlite::memory:",
        ServiceUrl::local(1),
        ServiceUrl::local(1),
        ServiceUrl::local(1),
    )
    .peppers;
    let (key, _) = tenancy::create_key(
        &store,
        &peppers,
        &tenant,
        vec!["results:read".into()],
        "bench",
        None,
    )
    .await
    .map_err(|e| e.to_string())?;
    // The limits run in full but never refuse: the load is one client.
    let unlimited = Quota::per_minute(u32::MAX / 2);
    let limits = Limits::new(&LimitSettings {
        per_client: unlimited,
        per_key: unlimited,
        failed_auth: unlimited,
        max_in_flight: 100_000,
        request_timeout: Duration::from_secs(30),
        trusted_proxies: Vec::new(),
    });
    let auth = AuthState {
        store,
        peppers: std::sync::Arc::new(peppers),
        usage: UsageLog::default(),
        limits: limits.clone(),
        cache: tenancy::KeyCache::new(Duration::from_secs(1)),
    };
    let keyed = Router::new()
        .route("/bench", get(|| async { FIXED }))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::new(auth),
            crate::auth::require_key::<SqliteGatewayStore>,
        ));
    let router = crate::routes::edge_layers(
        keyed,
        &limits,
        &crate::cors::AllowedOrigins::default(),
        crate::headers::ServedOverTls(false),
    );
    let mut common = CommonConfig::for_tests();
    common.admin_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    let running = ServiceBuilder::new(crate::INFO, common)
        .http(PublicHttp::on(stacked), router)
        .start()
        .await
        .map_err(|e| e.to_string())?;
    let bare_listener = tokio::net::TcpListener::bind(bare)
        .await
        .map_err(|e| format!("{bare}: {e}"))?;
    let bare_server = tokio::spawn(async move {
        let router = Router::new().route("/bench", get(|| async { FIXED }));
        let _ = axum::serve(bare_listener, router).await;
    });
    println!("stacked http://{stacked}/bench");
    println!("bare http://{bare}/bench");
    println!("key {}", key.reveal());
    let _ = tokio::signal::ctrl_c().await;
    bare_server.abort();
    running.shutdown().await;
    Ok(())
}

/// One path's measured round.
struct Round {
    accepted: u64,
    elapsed: Duration,
}

impl Round {
    fn rate(&self) -> f64 {
        self.accepted as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

#[allow(clippy::print_stdout, reason = "the command's output")]
async fn readings(args: &ReadingsArgs) -> Result<(), String> {
    let url = service_runtime::EnvValue::parse_env(&args.ingest)
        .map_err(|e: service_runtime::InvalidValue| format!("--ingest: {e}"))?;
    let channel = service_runtime::traced_channel(
        &url,
        &Transport::mutual_tls_in(&args.tls_dir, "operator"),
        "ingest",
        service_runtime::CONNECT_TIMEOUT,
        Duration::from_secs(60),
    )
    .map_err(|e| format!("--ingest: {e}"))?;
    let ingest = IngestServiceClient::new(channel);
    let http = Client::builder(TokioExecutor::new()).build_http::<axum::body::Body>();
    let run = format!("{:x}", chrono::Utc::now().timestamp_micros());
    println!(
        "{} batches of {} readings per round, {} in flight, {} rounds per path, alternating",
        args.batches, args.batch_size, args.concurrency, args.rounds
    );
    let (mut direct, mut through) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let batches = make_batches(args, &format!("{run}-d{round}"));
        let result = publish_direct(&ingest, batches, args.concurrency).await?;
        println!(
            "  direct to ingest (gRPC), round {}: {:.0} readings/s",
            round + 1,
            result.rate()
        );
        direct.push(result.rate());
        let batches = make_batches(args, &format!("{run}-g{round}"));
        let result = publish_through_gateway(&http, args, batches).await?;
        println!(
            "  through the gateway (HTTP), round {}: {:.0} readings/s",
            round + 1,
            result.rate()
        );
        through.push(result.rate());
    }
    let (direct, through) = (median(&mut direct), median(&mut through));
    println!(
        "median: direct {direct:.0} readings/s, gateway {through:.0} readings/s: gateway/direct = {:.2}",
        through / direct
    );
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or_default()
}

/// `batches` batches of unique readings (ids carry `run`, so every round
/// stores new rows), the same shape for both paths.
fn make_batches(args: &ReadingsArgs, run: &str) -> Vec<Vec<pb::Reading>> {
    let now = chrono::Utc::now();
    (0..args.batches)
        .map(|b| {
            (0..args.batch_size)
                .map(|i| pb::Reading {
                    event_id: format!("bench-{run}-{b}-{i}"),
                    tenant_id: args.tenant.clone(),
                    device_id: format!("bench-{}", b % 16),
                    metric: "bench_value".into(),
                    value: (i % 100) as f64,
                    observed_at: Some(crate::timestamps::timestamp(now)),
                    attributes: Default::default(),
                })
                .collect()
        })
        .collect()
}

/// Runs `send` over the batches with `concurrency` in flight, summing the
/// accepted counts it returns.
async fn drive<T, F, Fut>(items: Vec<T>, concurrency: usize, send: F) -> Result<Round, String>
where
    T: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<u64, String>> + Send,
{
    let items = Arc::new(std::sync::Mutex::new(items.into_iter()));
    let accepted = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (items, accepted, failed, send) = (
                items.clone(),
                accepted.clone(),
                failed.clone(),
                send.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let next = items
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .next();
                    let Some(item) = next else { break };
                    match send(item).await {
                        Ok(n) => {
                            accepted.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(error) => {
                            if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                                tracing::error!(%error, "a batch failed");
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.map_err(|e| e.to_string())?;
    }
    let elapsed = started.elapsed();
    match failed.load(Ordering::Relaxed) {
        0 => Ok(Round {
            accepted: accepted.load(Ordering::Relaxed),
            elapsed,
        }),
        n => Err(format!("{n} batches failed (the first is in the log)")),
    }
}

async fn publish_direct(
    ingest: &IngestServiceClient<service_runtime::TracedChannel>,
    batches: Vec<Vec<pb::Reading>>,
    concurrency: usize,
) -> Result<Round, String> {
    let ingest = ingest.clone();
    drive(batches, concurrency, move |readings| {
        let mut ingest = ingest.clone();
        async move {
            let ack = ingest
                .publish_readings(pb::PublishReadingsRequest {
                    readings,
                    ..Default::default()
                })
                .await
                .map_err(|s| s.to_string())?
                .into_inner()
                .ack
                .unwrap_or_default();
            Ok(u64::from(ack.accepted))
        }
    })
    .await
}

async fn publish_through_gateway(
    http: &Client<hyper_util::client::legacy::connect::HttpConnector, axum::body::Body>,
    args: &ReadingsArgs,
    batches: Vec<Vec<pb::Reading>>,
) -> Result<Round, String> {
    // Bodies are encoded before the clock starts, as the gRPC requests are.
    let bodies: Vec<Vec<u8>> = batches
        .iter()
        .map(|batch| {
            let readings: Vec<_> = batch
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "event_id": r.event_id,
                        "device_id": r.device_id,
                        "metric": r.metric,
                        "value": r.value,
                        "observed_at": chrono::DateTime::from_timestamp(
                            r.observed_at.map(|t| t.seconds).unwrap_or_default(), 0)
                            .unwrap_or_default()
                            .to_rfc3339(),
                    })
                })
                .collect();
            serde_json::to_vec(&serde_json::json!({ "readings": readings })).unwrap_or_default()
        })
        .collect();
    let url = format!("{}/v1/readings", args.gateway.trim_end_matches('/'));
    let bearer = format!("Bearer {}", args.key);
    let http = http.clone();
    drive(bodies, args.concurrency, move |body| {
        let (http, url, bearer) = (http.clone(), url.clone(), bearer.clone());
        async move {
            let request = http::Request::post(&url)
                .header("authorization", bearer)
                .header("content-type", "application/json")
                .body(axum::body::Body::from(body))
                .map_err(|e| e.to_string())?;
            let response = http.request(request).await.map_err(|e| e.to_string())?;
            let status = response.status();
            let bytes = axum::body::to_bytes(axum::body::Body::new(response.into_body()), 1 << 24)
                .await
                .map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!("{status}: {}", String::from_utf8_lossy(&bytes)));
            }
            let answer: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
            Ok(answer["accepted"].as_u64().unwrap_or_default())
        }
    })
    .await
}
