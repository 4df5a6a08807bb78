//! `GetPipelineStats`: each pipeline's live figures plus its throughput
//! over the last minute, from samples taken every few seconds.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use contracts::ingest::v1 as pb;
use pipeline::{PipelineMonitor, PipelineStats, StageSnapshot};

/// How often throughput is sampled, and over how long it is averaged.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// One running pipeline as the stats RPC sees it.
pub struct PipelineView {
    name: &'static str,
    monitor: PipelineMonitor,
    history: Mutex<VecDeque<(Instant, PipelineStats)>>,
}

impl PipelineView {
    /// A view named `name` (`grpc`, `nats`).
    pub fn new(name: &'static str, monitor: PipelineMonitor) -> Arc<Self> {
        let view = Arc::new(Self {
            name,
            monitor,
            history: Mutex::new(VecDeque::new()),
        });
        view.sample();
        view
    }

    fn history(&self) -> std::sync::MutexGuard<'_, VecDeque<(Instant, PipelineStats)>> {
        self.history.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn sample(&self) {
        let now = Instant::now();
        let mut history = self.history();
        history.push_back((now, self.monitor.stats()));
        while history
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > RATE_WINDOW + SAMPLE_EVERY)
        {
            history.pop_front();
        }
    }
}

/// Reads one stage's figures from a past sample.
type StagePick = fn(&PipelineStats) -> StageSnapshot;

/// Every pipeline of this process.
#[derive(Clone, Default)]
pub struct Pipelines(Vec<Arc<PipelineView>>);

impl std::fmt::Debug for Pipelines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|v| v.name))
            .finish()
    }
}

impl Pipelines {
    /// Adds a pipeline.
    pub fn push(&mut self, view: Arc<PipelineView>) {
        self.0.push(view);
    }

    /// Samples every pipeline until `stop`.
    pub async fn sample_until(self, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => self.0.iter().for_each(|view| view.sample()),
            }
        }
    }

    /// The contract's answer: stages named `<pipeline>.<stage>`.
    pub fn response(&self) -> pb::GetPipelineStatsResponse {
        let mut response = pb::GetPipelineStatsResponse::default();
        for view in &self.0 {
            let now = Instant::now();
            let stats = view.monitor.stats();
            let oldest = view.history().front().copied();
            let (limit_messages, limit_bytes) = view.monitor.limits();
            let stages: [(&str, StageSnapshot, StagePick); 4] = [
                ("producer", stats.producer, |s| s.producer),
                ("processor", stats.processors, |s| s.processors),
                ("batcher", stats.batchers, |s| s.batchers),
                ("sink", stats.batch_processors, |s| s.batch_processors),
            ];
            for (stage, now_figures, pick) in stages {
                // Per second since the oldest sample of the last minute.
                let rate = |figure: fn(&StageSnapshot) -> u64| {
                    oldest.map_or(0.0, |(at, then)| {
                        let seconds = now.duration_since(at).as_secs_f64();
                        if seconds < 0.5 {
                            return 0.0;
                        }
                        figure(&now_figures).saturating_sub(figure(&pick(&then))) as f64 / seconds
                    })
                };
                response.stages.push(pb::StageStats {
                    stage: format!("{}.{stage}", view.name),
                    messages_in: now_figures.messages_in,
                    messages_out: now_figures.messages_out,
                    messages_failed: now_figures.failed,
                    in_flight: now_figures
                        .messages_in
                        .saturating_sub(now_figures.messages_out + now_figures.failed),
                    messages_per_second: rate(|s| s.messages_out),
                    in_per_second: rate(|s| s.messages_in),
                    failed_per_second: rate(|s| s.failed),
                    ..Default::default()
                });
                if stage == "sink"
                    && let Some(sink) = response.stages.last_mut()
                {
                    sink.batches = stats.batches;
                    sink.mean_batch_size = if stats.batches == 0 {
                        0.0
                    } else {
                        now_figures.messages_in as f64 / stats.batches as f64
                    };
                    sink.batch_size_limit = view.monitor.batch_size() as u64;
                }
            }
            response.in_flight += stats.in_flight;
            response.in_flight_limit += limit_messages;
            response.in_flight_bytes += stats.in_flight_bytes;
            response.in_flight_bytes_limit += limit_bytes;
            response.dead_letters += stats.dead_letters;
        }
        response
    }
}
