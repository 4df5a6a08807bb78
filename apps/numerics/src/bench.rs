//! `numerics bench`: the engine and the service on this machine, side by
//! side with numpy (OpenBLAS) run by the same command with the same thread
//! count, printed with the method. The numpy script is
//! `apps/numerics/bench/numpy_bench.py`.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use clap::Args;
use contracts::numerics::v1::{self as pb, numerics_service_client::NumericsServiceClient};
use numerics_engine::{
    Tensor, ops,
    stats::{WindowRequest, window_statistics},
};
use service_runtime::ServiceUrl;

mod bare;

/// What to measure.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Threads for matmul (and for numpy's OpenBLAS).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Square f32 matmul sizes.
    #[arg(long, value_delimiter = ',', default_value = "1024,2048")]
    pub sizes: Vec<usize>,
    /// Values in the window-statistics run.
    #[arg(long, default_value_t = 1_000_000)]
    pub window: usize,
    /// Small requests timed over gRPC.
    #[arg(long, default_value_t = 10_000)]
    pub requests: usize,
    /// Python with numpy (empty: skip the comparison).
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// The numpy script.
    #[arg(long, default_value = "apps/numerics/bench/numpy_bench.py")]
    pub script: String,
}

/// A deterministic pseudo-random f32 in [-1, 1).
fn noise(i: usize, seed: u64) -> f64 {
    let x = (i as u64)
        .wrapping_mul(6364136223846793005)
        .wrapping_add(seed)
        .rotate_left(17);
    (x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
}

fn best_of(reps: usize, mut f: impl FnMut()) -> Duration {
    (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn median_of(reps: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

/// numpy's figures, when python and numpy are there.
fn numpy(args: &BenchArgs) -> Option<serde_json::Value> {
    if args.python.is_empty() {
        return None;
    }
    let sizes: Vec<String> = args.sizes.iter().map(ToString::to_string).collect();
    let output = Command::new(&args.python)
        .arg(&args.script)
        .arg(sizes.join(","))
        .arg(args.window.to_string())
        .env("OPENBLAS_NUM_THREADS", args.threads.to_string())
        .env("OMP_NUM_THREADS", args.threads.to_string())
        .output()
        .ok()?;
    if !output.status.success() {
        #[allow(clippy::print_stderr, reason = "the benchmark's report")]
        {
            eprintln!(
                "numpy comparison skipped: {} (install with `{} -m pip install numpy`)",
                String::from_utf8_lossy(&output.stderr)
                    .lines()
                    .last()
                    .unwrap_or("failed"),
                args.python
            );
        }
        return None;
    }
    serde_json::from_slice(&output.stdout).ok()
}

fn ratio(ours: f64, theirs: Option<f64>) -> String {
    theirs.map_or_else(String::new, |t| format!(" ({:.2}x numpy)", ours / t))
}

/// Runs the measurements and prints them.
#[allow(clippy::print_stdout, reason = "the benchmark's report")]
pub fn run(args: &BenchArgs) -> Result<(), String> {
    let reference = numpy(args);
    numerics_engine::ops::set_matmul_threads(args.threads);
    println!(
        "numerics bench: {} threads for matmul (numpy: OPENBLAS_NUM_THREADS={}){}",
        args.threads,
        args.threads,
        reference
            .as_ref()
            .and_then(|r| r["numpy"].as_str())
            .map_or_else(|| ", numpy not run".to_owned(), |v| format!(", numpy {v}"))
    );
    for &n in &args.sizes {
        let a = Tensor::f32(vec![n, n], (0..n * n).map(|i| noise(i, 1) as f32).collect())
            .map_err(|e| e.to_string())?;
        let b = Tensor::f32(vec![n, n], (0..n * n).map(|i| noise(i, 2) as f32).collect())
            .map_err(|e| e.to_string())?;
        ops::matmul(&a, &b).map_err(|e| e.to_string())?;
        let time = best_of(if n <= 1024 { 10 } else { 4 }, || {
            let _ = ops::matmul(&a, &b);
        });
        let gflops = 2.0 * (n as f64).powi(3) / time.as_secs_f64() / 1e9;
        let theirs = reference
            .as_ref()
            .and_then(|r| r["matmul_gflops"][n.to_string()].as_f64());
        println!(
            "  f32 matmul {n}x{n} (faer, best of runs): {gflops:.1} GFLOP/s{}{}",
            theirs.map_or_else(String::new, |t| format!(", numpy {t:.1} GFLOP/s")),
            ratio(gflops, theirs)
        );
    }
    let values: Vec<f64> = (0..args.window).map(|i| 20.0 + 3.0 * noise(i, 3)).collect();
    let request = WindowRequest {
        values: &values,
        offsets: None,
        quantiles: &[0.5, 0.95, 0.99],
        ewma_alpha: 0.3,
        z_threshold: 3.0,
        approximate: false,
    };
    let time = median_of(21, || {
        let _ = window_statistics(&request);
    });
    let ms = time.as_secs_f64() * 1e3;
    let theirs = reference
        .as_ref()
        .and_then(|r| r["window_stats_ms"].as_f64());
    println!(
        "  window statistics of {} values (count, mean, variance, min, max, p50/p95/p99 exact, \
         trend with r², |z|>3 flags, plus EWMA), one thread, median of 21: {ms:.2} ms{}{}",
        args.window,
        theirs.map_or_else(String::new, |t| format!(", numpy {t:.2} ms")),
        theirs.map_or_else(String::new, |t| format!(" ({:.2}x numpy's speed)", t / ms))
    );
    forward(&reference)?;
    grpc_overhead(args)?;
    serving(args)
}

/// The model's forward pass per row, at batch sizes 1, 64 and 1024.
#[allow(clippy::print_stdout, reason = "the benchmark's report")]
fn forward(reference: &Option<serde_json::Value>) -> Result<(), String> {
    let model = crate::serving::shipped_model().map_err(|e| e.to_string())?;
    for rows in [1usize, 64, 1024] {
        let x: Vec<f32> = (0..rows * 8).map(|i| noise(i, 5) as f32).collect();
        let reps = (200_000 / rows).max(200);
        let time = median_of(7, || {
            for _ in 0..reps {
                let _ = model.forward(&x, rows);
            }
        });
        let ns = time.as_secs_f64() / reps as f64 / rows as f64 * 1e9;
        let theirs = reference
            .as_ref()
            .and_then(|r| r["forward_ns_per_row"][rows.to_string()].as_f64());
        println!(
            "  model forward (8-16-1, bias+ReLU+output+sigmoid fused), batch {rows}: {ns:.1} ns/row{}{}",
            theirs.map_or_else(String::new, |t| format!(", numpy {t:.1} ns/row")),
            theirs.map_or_else(String::new, |t| format!(" ({:.2}x numpy's speed)", t / ns))
        );
    }
    Ok(())
}

/// Throughput and latency of ScoreAnomalies at 1, 8 and 64 concurrent
/// callers, batching on (max 64 rows, 2 ms) and off (batches of 1).
#[allow(clippy::print_stdout, reason = "the benchmark's report")]
fn serving(args: &BenchArgs) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    println!(
        "  ScoreAnomalies (one 8-feature row per call) over loopback, callers in this process,          {} threads: batching on = up to 64 rows while the replicas are busy (2 ms at most), off = batches of 1",
        args.threads
    );
    runtime.block_on(in_process(args))?;
    runtime.block_on(async {
        for batching in [true, false] {
            let mut config = crate::Config::for_tests();
            config.serving.max_batch_size = if batching { 64 } else { 1 };
            config.serving.max_wait = Duration::from_millis(2);
            config.serving.replicas = args.threads;
            let running = crate::start(config).await.map_err(|e| e.to_string())?;
            let port = running.grpc_addr.map(|a| a.port()).unwrap_or_default();
            let channel = service_runtime::traced_channel(
                &ServiceUrl::local(port),
                &service_runtime::Transport::Plaintext,
                "numerics",
                Duration::from_secs(5),
                Duration::from_secs(30),
            )
            .map_err(|e| e.to_string())?;
            let client = NumericsServiceClient::new(channel);
            let features = crate::wire::encode(
                &Tensor::f32(vec![1, 8], vec![0.3; 8]).map_err(|e| e.to_string())?,
            );
            for callers in [1usize, 8, 64] {
                let per_caller = (4_000 / callers).max(100);
                let started = Instant::now();
                let tasks: Vec<_> = (0..callers)
                    .map(|_| {
                        let mut client = client.clone();
                        let request = pb::ScoreAnomaliesRequest {
                            features: Some(features.clone()),
                        };
                        tokio::spawn(async move {
                            let mut latencies = Vec::with_capacity(per_caller);
                            for _ in 0..per_caller {
                                let start = Instant::now();
                                if client.score_anomalies(request.clone()).await.is_err() {
                                    return Err("a score request failed".to_owned());
                                }
                                latencies.push(start.elapsed());
                            }
                            Ok(latencies)
                        })
                    })
                    .collect();
                let mut latencies = Vec::new();
                for task in tasks {
                    latencies.extend(task.await.map_err(|e| e.to_string())??);
                }
                let elapsed = started.elapsed();
                latencies.sort();
                let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
                println!(
                    "    batching {:<3} {callers:>2} callers: {:>8.0} requests/s, p50 {:.2} ms, p99 {:.2} ms",
                    if batching { "on" } else { "off" },
                    latencies.len() as f64 / elapsed.as_secs_f64(),
                    at(0.5),
                    at(0.99)
                );
            }
            running.shutdown().await;
        }
        Ok(())
    })
}

/// What gRPC itself costs on a tiny call, and what mutual TLS adds to it:
/// numerics served twice in this process (plaintext, and mutual TLS with a
/// development PKI), called over loopback in interleaved rounds so both
/// see the same machine state; then the first call on a fresh connection,
/// which pays for TCP, the HTTP/2 preface and, with TLS, the handshake.
#[allow(clippy::print_stdout, reason = "the benchmark's report")]
/// `Compute(add)` of two 2x2 f64 tensors: the tiny call timed between apps.
fn compute_request() -> Result<pb::ComputeRequest, String> {
    let operand = crate::wire::encode(
        &Tensor::f64(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]).map_err(|e| e.to_string())?,
    );
    let request = pb::ComputeRequest {
        op: pb::Op::Add as i32,
        operands: vec![operand.clone(), operand],
        attributes: None,
    };
    Ok(request)
}

fn grpc_overhead(args: &BenchArgs) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let pki = std::env::temp_dir().join(format!("numerics-bench-pki-{}", std::process::id()));
    security::tls::dev_pki::generate(&pki, &["numerics", "operator"]).map_err(|e| e.to_string())?;
    let result = runtime.block_on(async {
        let transports = [
            (
                "plaintext",
                service_runtime::Transport::Plaintext,
                service_runtime::Transport::Plaintext,
            ),
            (
                "mutual TLS",
                service_runtime::Transport::mutual_tls_in(&pki, "numerics"),
                service_runtime::Transport::mutual_tls_in(&pki, "operator"),
            ),
        ];
        let mut servers = Vec::new();
        for (_, server, client) in &transports {
            let mut config = crate::Config::for_tests();
            config.common.transport = server.clone();
            let running = crate::start(config).await.map_err(|e| e.to_string())?;
            let url = ServiceUrl::local(running.grpc_addr.map(|a| a.port()).unwrap_or_default());
            servers.push((running, url, client.clone()));
        }
        let channel = |url: &ServiceUrl, client: &service_runtime::Transport| {
            service_runtime::traced_channel(
                url,
                client,
                "numerics",
                Duration::from_secs(5),
                Duration::from_secs(5),
            )
            .map(NumericsServiceClient::new)
            .map_err(|e| e.to_string())
        };
        let request = compute_request()?;
        let mut clients = Vec::new();
        for (_, url, client) in &servers {
            let mut client = channel(url, client)?;
            for _ in 0..1_000 {
                client
                    .compute(request.clone())
                    .await
                    .map_err(|e| e.to_string())?;
            }
            clients.push(client);
        }
        let mut bare_clients = bare::warm_clients(&pki, &request).await?;
        // Interleaved rounds of 100 calls per transport, platform then bare.
        let mut latencies = vec![Vec::with_capacity(args.requests); clients.len()];
        let mut bare_latencies = vec![Vec::with_capacity(args.requests); bare_clients.len()];
        for _ in 0..args.requests.div_ceil(100) {
            for ((client, times), (bare_client, bare_times)) in clients
                .iter_mut()
                .zip(&mut latencies)
                .zip(bare_clients.iter_mut().zip(&mut bare_latencies))
            {
                for _ in 0..100 {
                    let start = Instant::now();
                    client
                        .compute(request.clone())
                        .await
                        .map_err(|e| e.to_string())?;
                    times.push(start.elapsed());
                }
                for _ in 0..100 {
                    let start = Instant::now();
                    bare_client
                        .compute(request.clone())
                        .await
                        .map_err(|e| e.to_string())?;
                    bare_times.push(start.elapsed());
                }
            }
        }
        // A new connection per call, alternating transports.
        let mut first_calls = vec![Vec::new(); servers.len()];
        for _ in 0..200 {
            for ((_, url, client), times) in servers.iter().zip(&mut first_calls) {
                let mut fresh = channel(url, client)?;
                let start = Instant::now();
                fresh
                    .compute(request.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                times.push(start.elapsed());
            }
        }
        let names: Vec<&str> = transports.iter().map(|(name, ..)| *name).collect();
        report_overhead(
            &names,
            &mut latencies,
            &mut first_calls,
            &mut bare_latencies,
        );
        for (running, ..) in servers {
            running.shutdown().await;
        }
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&pki);
    result
}

/// Prints the per-call figures of each transport, the bare server's next
/// to them, and what mutual TLS adds.
#[allow(clippy::print_stdout, reason = "the benchmark's report")]
fn report_overhead(
    names: &[&str],
    latencies: &mut [Vec<Duration>],
    first_calls: &mut [Vec<Duration>],
    bare_latencies: &mut [Vec<Duration>],
) {
    let at = |times: &mut Vec<Duration>, q: f64| {
        times.sort();
        times[((times.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6
    };
    println!(
        "  gRPC Compute(add, 2x2 f64) on loopback, client and server in this process, {} \
         sequential calls per transport after 1,000 warm-up, interleaved in rounds of 100:",
        latencies[0].len()
    );
    let mut p50 = Vec::new();
    for ((name, times), first) in names
        .iter()
        .zip(latencies.iter_mut())
        .zip(first_calls.iter_mut())
    {
        let (median, tail) = (at(times, 0.5), at(times, 0.99));
        let (first_median, first_tail) = (at(first, 0.5), at(first, 0.99));
        println!(
            "    {name:<10} p50 {median:.0} us, p99 {tail:.0} us; first call on a new connection \
             (200): p50 {first_median:.0} us, p99 {first_tail:.0} us"
        );
        p50.push((median, tail, first_median));
    }
    bare::report(names, bare_latencies, &p50);
    if let [plain, tls] = p50[..] {
        println!(
            "    mutual TLS adds {:.0} us at p50 ({:.2}x), {:.0} us at p99 per call; \
             {:.0} us per new connection (handshake, p50 of first calls minus plaintext's)",
            tls.0 - plain.0,
            tls.0 / plain.0,
            tls.1 - plain.1,
            tls.2 - plain.2
        );
    }
}

/// The batcher alone: callers in this process submit straight to the model
/// server, so the figures show what batching saves without transport.
#[allow(clippy::print_stdout, reason = "the benchmark's report")]
async fn in_process(args: &BenchArgs) -> Result<(), String> {
    println!("    model server in process (no gRPC), 20,000 single-row requests per setting:");
    for batching in [true, false] {
        let server = crate::serving::ModelServer::start(crate::serving::ServingConfig {
            max_batch_size: if batching { 64 } else { 1 },
            max_wait: Duration::from_millis(2),
            replicas: args.threads,
            queue: 4_096,
            weights_path: None,
            model_dir: crate::model_dir::DEFAULT_MODEL_DIR.into(),
        })
        .map_err(|e| e.to_string())?;
        for callers in [1usize, 8, 64] {
            let per_caller = 20_000 / callers;
            let (batches_before, rows_before) = server.counts();
            let started = Instant::now();
            let tasks: Vec<_> = (0..callers)
                .map(|_| {
                    let server = server.clone();
                    tokio::spawn(async move {
                        let mut latencies = Vec::with_capacity(per_caller);
                        for _ in 0..per_caller {
                            let start = Instant::now();
                            server
                                .score(vec![0.3; 8], 1, None)
                                .await
                                .map_err(|e| e.to_string())?;
                            latencies.push(start.elapsed());
                        }
                        Ok::<_, String>(latencies)
                    })
                })
                .collect();
            let mut latencies = Vec::new();
            for task in tasks {
                latencies.extend(task.await.map_err(|e| e.to_string())??);
            }
            let elapsed = started.elapsed();
            latencies.sort();
            let at =
                |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
            let (batches, rows) = server.counts();
            let (batches, rows) = (batches - batches_before, rows - rows_before);
            println!(
                "    batching {:<3} {callers:>2} callers: {:>8.0} requests/s, p50 {:.3} ms, p99 {:.3} ms (mean batch {:.1} rows)",
                if batching { "on" } else { "off" },
                latencies.len() as f64 / elapsed.as_secs_f64(),
                at(0.5),
                at(0.99),
                rows as f64 / batches.max(1) as f64
            );
        }
    }
    println!("    over gRPC (one channel, callers in this process):");
    Ok(())
}
