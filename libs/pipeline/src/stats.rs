//! Live figures of a pipeline, read by stats endpoints and `/metrics`.

use std::sync::{
    Arc, Weak,
    atomic::{AtomicU64, Ordering},
};

use opentelemetry::{
    KeyValue,
    metrics::{Histogram, ObservableCounter, ObservableGauge},
};

/// Counters of one stage.
#[derive(Debug, Default)]
pub(crate) struct StageCounters {
    pub(crate) messages_in: AtomicU64,
    pub(crate) messages_out: AtomicU64,
    pub(crate) failed: AtomicU64,
}

/// Every stage's counters, plus what is in flight.
#[derive(Debug)]
pub(crate) struct Counters {
    pub(crate) producer: StageCounters,
    pub(crate) processors: StageCounters,
    pub(crate) batchers: StageCounters,
    pub(crate) batch_processors: StageCounters,
    pub(crate) in_flight: AtomicU64,
    pub(crate) in_flight_bytes: AtomicU64,
    pub(crate) dead_letters: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) batch_size: Histogram<u64>,
    pub(crate) batch_latency: Histogram<f64>,
    pub(crate) name: String,
}

impl Counters {
    pub(crate) fn new(name: &str) -> Self {
        let meter = opentelemetry::global::meter("platform.pipeline");
        Self {
            producer: StageCounters::default(),
            processors: StageCounters::default(),
            batchers: StageCounters::default(),
            batch_processors: StageCounters::default(),
            in_flight: AtomicU64::new(0),
            in_flight_bytes: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            batch_size: meter
                .u64_histogram("pipeline.batch.size")
                .with_description("Messages per handled batch")
                .with_boundaries(vec![
                    1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
                ])
                .build(),
            batch_latency: meter
                .f64_histogram("pipeline.batch.latency")
                .with_unit("s")
                .with_description("Time from a batch's first message to its acknowledgement")
                .build(),
            name: name.to_owned(),
        }
    }

    pub(crate) fn attributes(&self) -> [KeyValue; 1] {
        [KeyValue::new("pipeline", self.name.clone())]
    }
}

/// Figures of one stage at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageSnapshot {
    /// Messages that entered the stage.
    pub messages_in: u64,
    /// Messages that left it onward.
    pub messages_out: u64,
    /// Messages that failed in it.
    pub failed: u64,
}

/// Figures of the whole pipeline at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PipelineStats {
    /// The producer stage (pulled messages).
    pub producer: StageSnapshot,
    /// The processors.
    pub processors: StageSnapshot,
    /// The batchers.
    pub batchers: StageSnapshot,
    /// The batch processors (the sink).
    pub batch_processors: StageSnapshot,
    /// Messages pulled and not yet acknowledged.
    pub in_flight: u64,
    /// Their bytes.
    pub in_flight_bytes: u64,
    /// Messages dead-lettered (failed as invalid).
    pub dead_letters: u64,
    /// Batches the sink handled: with its messages in, the mean batch
    /// size (an operator sees batches fill or trickle).
    pub batches: u64,
}

impl StageCounters {
    fn snapshot(&self) -> StageSnapshot {
        StageSnapshot {
            messages_in: self.messages_in.load(Ordering::Relaxed),
            messages_out: self.messages_out.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

impl Counters {
    pub(crate) fn snapshot(&self) -> PipelineStats {
        PipelineStats {
            producer: self.producer.snapshot(),
            processors: self.processors.snapshot(),
            batchers: self.batchers.snapshot(),
            batch_processors: self.batch_processors.snapshot(),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            in_flight_bytes: self.in_flight_bytes.load(Ordering::Relaxed),
            dead_letters: self.dead_letters.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
        }
    }
}

/// The pipeline's counters and gauges on `/metrics`, read from the live
/// counters at each collection; a dropped pipeline reports nothing.
pub(crate) struct Observers {
    _messages: ObservableCounter<u64>,
    _in_flight: ObservableGauge<u64>,
}

impl Observers {
    pub(crate) fn register(counters: &Arc<Counters>) -> Self {
        let meter = opentelemetry::global::meter("platform.pipeline");
        let weak: Weak<Counters> = Arc::downgrade(counters);
        let messages = meter
            .u64_observable_counter("pipeline.messages")
            .with_description("Messages per stage and outcome (in, out, failed)")
            .with_callback(move |observer| {
                let Some(counters) = weak.upgrade() else {
                    return;
                };
                let stats = counters.snapshot();
                let stages = [
                    ("producer", stats.producer),
                    ("processor", stats.processors),
                    ("batcher", stats.batchers),
                    ("batch_processor", stats.batch_processors),
                ];
                for (stage, figures) in stages {
                    for (outcome, value) in [
                        ("in", figures.messages_in),
                        ("out", figures.messages_out),
                        ("failed", figures.failed),
                    ] {
                        let attributes = [
                            KeyValue::new("pipeline", counters.name.clone()),
                            KeyValue::new("stage", stage),
                            KeyValue::new("outcome", outcome),
                        ];
                        observer.observe(value, &attributes);
                    }
                }
                let attributes = [
                    KeyValue::new("pipeline", counters.name.clone()),
                    KeyValue::new("stage", "dead_letter"),
                    KeyValue::new("outcome", "in"),
                ];
                observer.observe(stats.dead_letters, &attributes);
            })
            .build();
        let weak: Weak<Counters> = Arc::downgrade(counters);
        let in_flight = meter
            .u64_observable_gauge("pipeline.in_flight")
            .with_description("Messages and bytes pulled and not yet acknowledged")
            .with_callback(move |observer| {
                let Some(counters) = weak.upgrade() else {
                    return;
                };
                for (unit, value) in [
                    ("messages", counters.in_flight.load(Ordering::Relaxed)),
                    ("bytes", counters.in_flight_bytes.load(Ordering::Relaxed)),
                ] {
                    let attributes = [
                        KeyValue::new("pipeline", counters.name.clone()),
                        KeyValue::new("unit", unit),
                    ];
                    observer.observe(value, &attributes);
                }
            })
            .build();
        Self {
            _messages: messages,
            _in_flight: in_flight,
        }
    }
}
