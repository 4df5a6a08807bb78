//! The node's metrics: attempts, run time, claim-to-start, rescues, and
//! queue depth as reported by the maintenance leader.

use std::sync::{Arc, Mutex};

use opentelemetry::{
    KeyValue,
    metrics::{Counter, Histogram},
};

use super::lock;

/// The node's instruments.
pub(super) struct Metrics {
    pub(super) attempts: Counter<u64>,
    pub(super) run_time: Histogram<f64>,
    pub(super) claim_to_start: Histogram<f64>,
    pub(super) rescued: Counter<u64>,
    /// Latest counts per queue and state, refreshed by the maintenance
    /// leader (so only one node reports depth and sums stay right).
    pub(super) depth: Arc<Mutex<Vec<crate::QueueCounts>>>,
    _depth_gauge: opentelemetry::metrics::ObservableGauge<u64>,
    _age_gauge: opentelemetry::metrics::ObservableGauge<f64>,
}

impl Metrics {
    pub(super) fn new() -> Self {
        let meter = opentelemetry::global::meter("platform.jobs");
        let depth: Arc<Mutex<Vec<crate::QueueCounts>>> = Arc::default();
        let observed = depth.clone();
        let depth_gauge = meter
            .u64_observable_gauge("jobs.queue.depth")
            .with_description("Jobs per queue and state (reported by the maintenance leader)")
            .with_callback(move |observer| {
                for queue in lock(&observed).iter() {
                    for state in crate::JobState::ALL {
                        let attributes = [
                            KeyValue::new("queue", queue.queue.clone()),
                            KeyValue::new("state", state.as_str()),
                        ];
                        observer.observe(queue.count(state), &attributes);
                    }
                }
            })
            .build();
        let observed = depth.clone();
        let age_gauge = meter
            .f64_observable_gauge("jobs.queue.oldest_available_age")
            .with_unit("s")
            .with_description(
                "How long the longest-waiting available job has waited, per queue (0 when none waits)",
            )
            .with_callback(move |observer| {
                let now = chrono::Utc::now();
                for queue in lock(&observed).iter() {
                    let age = queue.oldest_available.map_or(0.0, |since| {
                        (now - since).num_milliseconds().max(0) as f64 / 1000.0
                    });
                    observer.observe(age, &[KeyValue::new("queue", queue.queue.clone())]);
                }
            })
            .build();
        Self {
            depth,
            _depth_gauge: depth_gauge,
            _age_gauge: age_gauge,
            attempts: meter
                .u64_counter("jobs.attempts")
                .with_description(
                    "Attempts ended, by queue, kind and outcome (completed, retry, discard, ...)",
                )
                .build(),
            run_time: meter
                .f64_histogram("jobs.run.duration")
                .with_unit("s")
                .with_description("Time a handler ran, by queue and kind")
                .build(),
            claim_to_start: meter
                .f64_histogram("jobs.claim_to_start.duration")
                .with_unit("s")
                .with_description("Time from claim to handler start, by queue")
                .build(),
            rescued: meter
                .u64_counter("jobs.rescued")
                .with_description("Orphaned jobs rescued")
                .build(),
        }
    }
}
