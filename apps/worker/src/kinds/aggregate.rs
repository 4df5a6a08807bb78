//! `readings.aggregate_window`: ingest enqueues it (in the transaction that
//! stored the reading closing the window); this reads the window through
//! ingest's API, asks numerics for its statistics and the model's anomaly
//! score (behind a circuit breaker: when numerics is down the job fails
//! fast and retries later instead of holding its queue), stores the
//! result through ingest's API, and, when the window is anomalous, queues
//! one `window.anomalous` delivery to each of the tenant's enabled
//! endpoints that receives it. Every step is idempotent, so a retry after
//! any failure repeats nothing visible: the result is stored once per
//! window and each endpoint's delivery id is derived from the window.

use std::time::Duration;

use chrono::{DateTime, Utc};
use contracts::{JobArgs as _, jobs::v1::AggregateWindowArgs};
use contracts::{
    ingest::v1::{self as pb, ingest_service_client::IngestServiceClient},
    numerics::v1 as numerics_pb,
};
use jobs::{Done, JobContext, JobError, Worker};
use service_runtime::TracedChannel;
use tonic::Code;

use crate::{
    numerics::{Numerics, NumericsError, features},
    webhooks::{self, WebhookStore},
};

/// Most readings one window may hold before the job gives up.
const MAX_READINGS: usize = 1_000_000;

/// The quantiles asked of numerics: the result's p50, p95 and p99 (the
/// model's features use p50 and p99 of the same answer).
const QUANTILES: [f64; 3] = [0.5, 0.95, 0.99];

/// Readings per `ReadWindow` page (ingest's largest).
const READ_PAGE: u32 = 10_000;

/// A window is anomalous from this model score up.
pub const ANOMALOUS_FROM: f64 = 0.5;

/// Aggregates windows.
pub struct AggregateWindow<S> {
    pub(crate) ingest: IngestServiceClient<TracedChannel>,
    pub(crate) numerics: Numerics,
    /// The tenant's webhook endpoints, and where deliveries are queued.
    pub(crate) store: S,
}

/// gRPC failures: transient ones are retried, the rest discarded.
fn rpc_error(what: &str, status: &tonic::Status) -> JobError {
    let reason = format!("{what}: {} ({:?})", status.message(), status.code());
    match status.code() {
        Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition | Code::Unimplemented => {
            JobError::Discard(reason)
        }
        _ => JobError::Retry(reason),
    }
}

fn stamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

impl<S: WebhookStore> AggregateWindow<S> {
    async fn read_window(
        &self,
        key: &pb::WindowKey,
        start: DateTime<Utc>,
    ) -> Result<Vec<(f64, f64)>, JobError> {
        let mut points = Vec::new();
        let mut token = String::new();
        loop {
            let page = self
                .ingest
                .clone()
                .read_window(pb::ReadWindowRequest {
                    window: Some(key.clone()),
                    page_size: READ_PAGE,
                    page_token: token,
                })
                .await
                .map_err(|status| rpc_error("reading the window", &status))?
                .into_inner();
            for reading in page.readings {
                let at = reading.observed_at.unwrap_or_default();
                let offset = (at.seconds - start.timestamp()) as f64
                    + (f64::from(at.nanos) - f64::from(start.timestamp_subsec_nanos())) / 1e9;
                points.push((offset, reading.value));
            }
            if points.len() > MAX_READINGS {
                return Err(JobError::Discard(format!(
                    "the window holds more than {MAX_READINGS} readings"
                )));
            }
            if page.next_page_token.is_empty() {
                return Ok(points);
            }
            token = page.next_page_token;
        }
    }
}

/// A window's arguments, checked: what the job works on.
struct Window {
    args: AggregateWindowArgs,
    start: DateTime<Utc>,
    key: pb::WindowKey,
}

impl Window {
    /// Names the first argument that cannot work (the job is discarded:
    /// retrying cannot fix its args).
    fn parse(args: AggregateWindowArgs) -> Result<Self, JobError> {
        for (field, value) in [
            ("tenant_id", &args.tenant_id),
            ("device_id", &args.device_id),
            ("metric", &args.metric),
        ] {
            if value.is_empty() {
                return Err(JobError::Discard(format!("{field}: is required")));
            }
        }
        let start = DateTime::parse_from_rfc3339(&args.window_start)
            .map_err(|error| {
                JobError::Discard(format!(
                    "window_start: {:?} is not an RFC 3339 time ({error})",
                    args.window_start
                ))
            })?
            .with_timezone(&Utc);
        if !(1..=86_400).contains(&args.window_seconds) {
            return Err(JobError::Discard(format!(
                "window_seconds: must be 1 to 86400, got {}",
                args.window_seconds
            )));
        }
        let key = pb::WindowKey {
            tenant_id: args.tenant_id.clone(),
            device_id: args.device_id.clone(),
            metric: args.metric.clone(),
            window_start: Some(stamp(start)),
            window_length: Some(prost_types::Duration {
                seconds: args.window_seconds,
                nanos: 0,
            }),
        };
        Ok(Self { args, start, key })
    }

    /// `tenant/device/metric/start/seconds[/late]`: names the window in the
    /// webhook and keeps its delivery unique.
    fn id(&self) -> String {
        let args = &self.args;
        format!(
            "{}/{}/{}/{}/{}{}",
            args.tenant_id,
            args.device_id,
            args.metric,
            self.start.to_rfc3339(),
            args.window_seconds,
            if args.late { "/late" } else { "" }
        )
    }
}

/// The window's statistics and the model's verdict on them.
struct Scored {
    statistics: pb::WindowStatistics,
    score: f64,
    anomalous: bool,
    model_version: String,
}

/// Numerics failures: a refused request is discarded, the rest retried.
fn numerics_failed(error: NumericsError) -> JobError {
    match error {
        NumericsError::Rejected(reason) => JobError::Discard(format!("numerics: {reason}")),
        other => JobError::Retry(other.to_string()),
    }
}

impl<S: WebhookStore> AggregateWindow<S> {
    /// Statistics of `points` (offset, value) and the anomaly score, from
    /// numerics.
    async fn score(&self, points: Vec<(f64, f64)>) -> Result<Scored, JobError> {
        let (offsets, values): (Vec<f64>, Vec<f64>) = points.into_iter().unzip();
        let computed = self
            .numerics
            .window_statistics(numerics_pb::ComputeWindowStatisticsRequest {
                values,
                offsets_seconds: offsets,
                quantiles: QUANTILES.to_vec(),
                ..Default::default()
            })
            .await
            .map_err(numerics_failed)?;
        let input = features(&computed);
        let scored = self
            .numerics
            .score(numerics_pb::ScoreAnomaliesRequest {
                features: Some(numerics_pb::Tensor {
                    dtype: numerics_pb::DType::F32 as i32,
                    shape: vec![1, input.len() as u64],
                    data: input.iter().flat_map(|v| v.to_le_bytes()).collect(),
                }),
            })
            .await
            .map_err(numerics_failed)?;
        let score = scored
            .scores
            .first()
            .copied()
            .unwrap_or(0.0)
            .clamp(0.0, 1.0);
        let quantile = |q: f64| {
            computed
                .quantiles
                .iter()
                .find(|x| x.q == q)
                .map_or(0.0, |x| x.value)
        };
        Ok(Scored {
            statistics: pb::WindowStatistics {
                count: computed.count,
                mean: computed.mean,
                variance: computed.variance,
                min: computed.min,
                max: computed.max,
                p50: quantile(QUANTILES[0]),
                p95: quantile(QUANTILES[1]),
                p99: quantile(QUANTILES[2]),
                trend_slope: computed.trend_slope,
                trend_r_squared: computed.trend_r_squared,
            },
            score,
            anomalous: computed.count >= 3 && score >= ANOMALOUS_FROM,
            model_version: scored.model_version,
        })
    }

    /// Stores the result through ingest's API (idempotent per window).
    async fn record(&self, window: &Window, scored: &Scored) -> Result<(), JobError> {
        self.ingest
            .clone()
            .record_window_result(pb::RecordWindowResultRequest {
                result: Some(pb::WindowResult {
                    window: Some(window.key.clone()),
                    statistics: Some(scored.statistics),
                    anomaly_score: scored.score,
                    anomalous: scored.anomalous,
                    model_version: scored.model_version.clone(),
                    computed_at: Some(stamp(Utc::now())),
                }),
            })
            .await
            .map_err(|status| rpc_error("storing the result", &status))?;
        Ok(())
    }

    /// Queues the window's `window.anomalous` delivery to each of the
    /// tenant's enabled endpoints that receives it.
    async fn notify(&self, window: &Window, scored: &Scored) -> Result<(), JobError> {
        let args = &window.args;
        let endpoints = self
            .store
            .list_endpoints(&args.tenant_id)
            .await
            .map_err(|error| JobError::Retry(format!("reading the webhook endpoints: {error}")))?;
        let payload = serde_json::json!({
            "window": window.id(),
            "tenant_id": args.tenant_id,
            "device_id": args.device_id,
            "metric": args.metric,
            "window_start": window.start.to_rfc3339(),
            "window_seconds": args.window_seconds,
            "late": args.late,
            "anomaly_score": scored.score,
            "statistics": {
                "count": scored.statistics.count, "mean": scored.statistics.mean,
                "min": scored.statistics.min, "max": scored.statistics.max,
            },
        });
        for endpoint in endpoints
            .iter()
            .filter(|e| e.enabled && e.receives(webhooks::WINDOW_ANOMALOUS))
        {
            // One delivery per window and endpoint, whatever a retry
            // recomputes.
            let id = webhooks::stable_id(&format!("{}\0{}", window.id(), endpoint.endpoint_id));
            webhooks::queue_delivery(
                &self.store,
                endpoint,
                webhooks::WINDOW_ANOMALOUS,
                payload.clone(),
                Some(id),
            )
            .await
            .map_err(|error| JobError::Retry(format!("queueing the webhook: {error}")))?;
        }
        Ok(())
    }
}

impl<S: WebhookStore> Worker for AggregateWindow<S> {
    type Args = AggregateWindowArgs;
    const KIND: &'static str = AggregateWindowArgs::KIND;

    fn timeout(&self) -> Option<Duration> {
        Some(Duration::from_secs(120))
    }

    async fn work(&self, _ctx: JobContext, args: AggregateWindowArgs) -> Result<Done, JobError> {
        let window = Window::parse(args)?;
        let points = self.read_window(&window.key, window.start).await?;
        if points.is_empty() {
            // Pruned before its aggregation ran: there is nothing to
            // measure, and numerics refuses statistics of no values.
            return Ok(Done::Cancel(
                "the window holds no readings (pruned before it was aggregated)".to_owned(),
            ));
        }
        let scored = self.score(points).await?;
        tracing::info!(
            readings = scored.statistics.count,
            anomaly_score = scored.score,
            anomalous = scored.anomalous,
            model = %scored.model_version,
            "window aggregated"
        );
        self.record(&window, &scored).await?;
        if scored.anomalous {
            self.notify(&window, &scored).await?;
        }
        Ok(Done::Completed)
    }
}
