//! The stage kit alone, in memory, on one core: messages per second through
//! producer, processors, batchers and batch processors with no-op work.
//!
//! `cargo bench -p pipeline --bench in_memory`

#![allow(clippy::unwrap_used, missing_docs, reason = "benchmark harness")]

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pipeline::PipelineConfig;

const MESSAGES: u64 = 1_000_000;

fn in_memory(c: &mut Criterion) {
    // One core: a current-thread runtime runs every stage.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("pipeline_in_memory_one_core");
    group
        .throughput(Throughput::Elements(MESSAGES))
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    for (demand, batch_size) in [(100usize, 100usize), (1_000, 500), (4_000, 1_000)] {
        let config = PipelineConfig {
            max_demand: demand,
            batch_size,
            max_in_flight: 100_000,
            ..PipelineConfig::default()
        };
        group.bench_with_input(
            BenchmarkId::new("demand_batch", format!("{demand}_{batch_size}")),
            &config,
            |b, config| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let run = pipeline::bench::in_memory(MESSAGES, config.clone())
                                .await
                                .unwrap();
                            assert_eq!(run.messages, MESSAGES);
                            total += run.elapsed;
                        }
                        total
                    })
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, in_memory);
criterion_main!(benches);
