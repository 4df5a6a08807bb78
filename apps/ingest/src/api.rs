//! `platform.ingest.v1.IngestService`: publishing into the pipeline (unary
//! and streaming, answered when durable), pipeline stats, and the window
//! read, result and prune RPCs over the store.
//! Errors become gRPC statuses in one place, [`crate::error`].

use std::{ops::ControlFlow, pin::Pin, sync::Arc};

use chrono::{DateTime, Duration, Utc};
use contracts::ingest::v1::{
    self as pb,
    ingest_service_server::{IngestService, IngestServiceServer},
};
use futures_util::{Stream, StreamExt as _, stream::FuturesUnordered};
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::AbortOnDropHandle;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

use crate::{
    error::ApiError,
    handler::{self, ReadingsHandler, ResubmitError},
    source::grpc::{Admission, Outcome, Ticket, WhenFull},
    stats::Pipelines,
    store::{
        DeadLetterQuery, ReadingStore, ResultQuery, Statistics, StoredDeadLetter, StoredResult,
        WindowQuery,
    },
};

/// Most batches of one stream waiting for their acknowledgement; beyond it
/// the stream is not read (flow control slows the client).
const STREAM_WINDOW: usize = 64;

/// Default and largest page of a window read.
const DEFAULT_PAGE: u32 = 1_000;
const MAX_PAGE: u32 = 10_000;
/// Default and largest prune batch.
const DEFAULT_PRUNE: u32 = 10_000;
const MAX_PRUNE: u32 = 100_000;
/// Default and largest page of dead letters.
const DEFAULT_DEAD_LETTERS: u32 = 50;
const MAX_DEAD_LETTERS: u32 = 500;

/// The gRPC handler over the pipeline and the store.
#[derive(Debug, Clone)]
pub(crate) struct IngestApi<S> {
    store: S,
    series: Arc<crate::series::SeriesQuota>,
    admission: Admission,
    pipelines: Pipelines,
    max_batch_readings: usize,
    handler: Arc<ReadingsHandler<S>>,
}

pub(crate) fn server<S: ReadingStore>(
    store: S,
    admission: Admission,
    pipelines: Pipelines,
    max_batch_readings: usize,
    handler: Arc<ReadingsHandler<S>>,
) -> IngestServiceServer<IngestApi<S>> {
    IngestServiceServer::new(IngestApi {
        handler,
        store,
        series: Arc::default(),
        admission,
        pipelines,
        max_batch_readings,
    })
}

impl<S: ReadingStore> IngestApi<S> {
    fn check_size(&self, readings: usize) -> Result<(), ApiError> {
        if readings > self.max_batch_readings {
            return Err(ApiError::invalid(
                "readings",
                format!(
                    "at most {} per batch, got {readings}",
                    self.max_batch_readings
                ),
            ));
        }
        Ok(())
    }

    /// Queues one batch, refusing readings that would pass `max_series`
    /// (0: no quota); the receiver answers when it is durable.
    async fn publish(
        &self,
        sequence: u64,
        readings: Vec<pb::Reading>,
        max_series: u32,
        when_full: WhenFull,
    ) -> Result<tokio::sync::oneshot::Receiver<Outcome>, ApiError> {
        let (ticket, answer) = Ticket::new(sequence, readings.len());
        if readings.is_empty() {
            pipeline::Acknowledger::ack(&*ticket, &[], &[]);
            return Ok(answer);
        }
        let refused = self
            .series
            .check(&self.store, &readings, max_series)
            .await?;
        let trace = Arc::new(telemetry::current_trace_carrier());
        self.admission
            .admit(readings, refused, &ticket, Some(trace), when_full)
            .await?;
        Ok(answer)
    }
}

/// The tenant a call is limited to: set when the gateway acts for a tenant
/// (see `security::policy`), `None` for services and operators.
fn scoped_tenant<T>(request: &Request<T>) -> Option<String> {
    security::policy::Caller::of(request)
        .and_then(|caller| caller.tenant())
        .map(str::to_owned)
}

/// Holds `value` (a tenant id from the request) to `scope`: empty becomes
/// the scoped tenant, another tenant is refused naming `field`.
fn hold_to_tenant(scope: Option<&str>, field: &str, value: &mut String) -> Result<(), ApiError> {
    match scope {
        None => Ok(()),
        Some(tenant) if value.is_empty() => {
            tenant.clone_into(value);
            Ok(())
        }
        Some(tenant) if value == tenant => Ok(()),
        Some(_) => Err(ApiError::OtherTenant {
            field: field.to_owned(),
        }),
    }
}

/// [`hold_to_tenant`] for every reading of a batch.
fn hold_readings_to_tenant(
    scope: Option<&str>,
    readings: &mut [pb::Reading],
) -> Result<(), ApiError> {
    for (i, reading) in readings.iter_mut().enumerate() {
        hold_to_tenant(
            scope,
            &format!("readings[{i}].tenant_id"),
            &mut reading.tenant_id,
        )?;
    }
    Ok(())
}

type AckStream = Pin<Box<dyn Stream<Item = Result<pb::StreamReadingsResponse, Status>> + Send>>;

fn timestamp(
    field: &str,
    value: Option<prost_types::Timestamp>,
) -> Result<DateTime<Utc>, ApiError> {
    let value = value.ok_or_else(|| ApiError::invalid(field, "is required"))?;
    u32::try_from(value.nanos)
        .ok()
        .and_then(|nanos| DateTime::from_timestamp(value.seconds, nanos))
        .ok_or_else(|| ApiError::invalid(field, "is not a valid timestamp"))
}

/// `<micros>:<event id>` of the last reading on a page.
fn page_token(at: DateTime<Utc>, event_id: &str) -> String {
    format!("{}:{event_id}", at.timestamp_micros())
}

fn parse_token(token: &str) -> Result<Option<(DateTime<Utc>, String)>, ApiError> {
    if token.is_empty() {
        return Ok(None);
    }
    let malformed = || ApiError::invalid("page_token", "malformed");
    let (micros, event_id) = token.split_once(':').ok_or_else(malformed)?;
    let at = micros
        .parse()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(malformed)?;
    Ok(Some((at, event_id.to_owned())))
}

/// The contract's statistics, each value finite (JSON has no NaN, and a
/// stored NaN would read back as a corrupt row).
fn statistics_from_wire(s: &pb::WindowStatistics) -> Result<Statistics, ApiError> {
    let values = [
        ("mean", s.mean),
        ("variance", s.variance),
        ("min", s.min),
        ("max", s.max),
        ("p50", s.p50),
        ("p95", s.p95),
        ("p99", s.p99),
        ("trend_slope", s.trend_slope),
        ("trend_r_squared", s.trend_r_squared),
    ];
    if let Some((field, value)) = values.iter().find(|(_, v)| !v.is_finite()) {
        return Err(ApiError::invalid(
            format!("result.statistics.{field}"),
            format!("must be finite, got {value}"),
        ));
    }
    Ok(Statistics {
        count: s.count,
        mean: s.mean,
        variance: s.variance,
        min: s.min,
        max: s.max,
        p50: s.p50,
        p95: s.p95,
        p99: s.p99,
        trend_slope: s.trend_slope,
        trend_r_squared: s.trend_r_squared,
    })
}

fn statistics_to_wire(s: &Statistics) -> pb::WindowStatistics {
    pb::WindowStatistics {
        count: s.count,
        mean: s.mean,
        variance: s.variance,
        min: s.min,
        max: s.max,
        p50: s.p50,
        p95: s.p95,
        p99: s.p99,
        trend_slope: s.trend_slope,
        trend_r_squared: s.trend_r_squared,
    }
}

fn proto_stamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// One `StreamReadings` call: admits each batch as it arrives (at most
/// [`STREAM_WINDOW`] awaiting their acknowledgement) and sends the acks in
/// order of durability. A batch that was not stored is acknowledged with
/// its error and the stream goes on; a malformed batch ends the stream
/// with a status naming the field.
struct StreamSession<S> {
    api: IngestApi<S>,
    acks: mpsc::Sender<Result<pb::StreamReadingsResponse, Status>>,
    pending: FuturesUnordered<oneshot::Receiver<Outcome>>,
    last_sequence: Option<u64>,
    /// The tenant the stream acts for, if the gateway opened it for one.
    tenant: Option<String>,
}

impl<S: ReadingStore> StreamSession<S> {
    async fn run(mut self, mut inbound: Streaming<pb::StreamReadingsRequest>) {
        let mut inbound_open = true;
        loop {
            let flow = tokio::select! {
                Some(outcome) = self.pending.next(), if !self.pending.is_empty() => {
                    self.acknowledge(outcome).await
                }
                next = inbound.next(), if inbound_open && self.pending.len() < STREAM_WINDOW => {
                    match next {
                        None => {
                            inbound_open = false;
                            ControlFlow::Continue(())
                        }
                        Some(Err(status)) => {
                            tracing::debug!(%status, "publisher stream broke");
                            ControlFlow::Break(())
                        }
                        Some(Ok(batch)) => self.admit(batch).await,
                    }
                }
                else => ControlFlow::Break(()),
            };
            if flow.is_break() {
                return;
            }
        }
    }

    /// Sends one batch's acknowledgement; the stream ends if the client is
    /// gone or the app is shutting down.
    async fn acknowledge(
        &self,
        outcome: Result<Outcome, oneshot::error::RecvError>,
    ) -> ControlFlow<()> {
        let message = match outcome {
            Ok(ack) => Ok(pb::StreamReadingsResponse { ack: Some(ack) }),
            Err(_) => Err(ApiError::ShuttingDown.into()),
        };
        let failed = message.is_err();
        if self.acks.send(message).await.is_err() || failed {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    /// Checks one batch (size, increasing sequence) and admits it; a bad
    /// batch ends the stream with its error.
    async fn admit(&mut self, mut batch: pb::StreamReadingsRequest) -> ControlFlow<()> {
        let checked = hold_readings_to_tenant(self.tenant.as_deref(), &mut batch.readings)
            .and_then(|()| self.api.check_size(batch.readings.len()))
            .and_then(|()| match self.last_sequence {
                Some(last) if batch.sequence <= last => Err(ApiError::invalid(
                    "sequence",
                    format!(
                        "must increase within a stream, got {} after {last}",
                        batch.sequence
                    ),
                )),
                _ => Ok(()),
            });
        let admitted = match checked {
            Ok(()) => {
                self.last_sequence = Some(batch.sequence);
                self.api
                    .publish(
                        batch.sequence,
                        batch.readings,
                        batch.max_series,
                        WhenFull::Wait,
                    )
                    .await
            }
            Err(error) => Err(error),
        };
        match admitted {
            Ok(answer) => {
                self.pending.push(answer);
                ControlFlow::Continue(())
            }
            Err(error) => {
                let _ = self.acks.send(Err(error.into())).await;
                ControlFlow::Break(())
            }
        }
    }
}

#[tonic::async_trait]
impl<S: ReadingStore> IngestService for IngestApi<S> {
    async fn publish_readings(
        &self,
        request: Request<pb::PublishReadingsRequest>,
    ) -> Result<Response<pb::PublishReadingsResponse>, Status> {
        let tenant = scoped_tenant(&request);
        let pb::PublishReadingsRequest {
            mut readings,
            max_series,
        } = request.into_inner();
        hold_readings_to_tenant(tenant.as_deref(), &mut readings)?;
        self.check_size(readings.len())?;
        let answer = self
            .publish(0, readings, max_series, WhenFull::Reject)
            .await?;
        let ack = answer.await.map_err(|_| ApiError::ShuttingDown)?;
        // A unary caller resends the whole request on UNAVAILABLE; only
        // streams carry the failure inside the acknowledgement.
        if let Some(error) = ack.error {
            return Err(ApiError::NotStored(error.message).into());
        }
        Ok(Response::new(pb::PublishReadingsResponse {
            ack: Some(ack),
        }))
    }

    async fn stream_readings(
        &self,
        request: Request<Streaming<pb::StreamReadingsRequest>>,
    ) -> Result<Response<AckStream>, Status> {
        let (acks, rx) = mpsc::channel(STREAM_WINDOW);
        let session = StreamSession {
            api: self.clone(),
            acks,
            pending: FuturesUnordered::new(),
            last_sequence: None,
            tenant: scoped_tenant(&request),
        };
        let span = tracing::info_span!("ingest.stream");
        // Owned by the response: when the client goes away tonic drops the
        // stream, and with it the session.
        let task = AbortOnDropHandle::new(tokio::spawn(
            session.run(request.into_inner()).instrument(span),
        ));
        let acks = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(futures_util::stream::unfold(
            (acks, task),
            |(mut acks, task)| async move { acks.next().await.map(|ack| (ack, (acks, task))) },
        ))))
    }

    async fn get_pipeline_stats(
        &self,
        _request: Request<pb::GetPipelineStatsRequest>,
    ) -> Result<Response<pb::GetPipelineStatsResponse>, Status> {
        Ok(Response::new(self.pipelines.response()))
    }

    async fn record_window_result(
        &self,
        request: Request<pb::RecordWindowResultRequest>,
    ) -> Result<Response<pb::RecordWindowResultResponse>, Status> {
        let result = request
            .into_inner()
            .result
            .ok_or_else(|| ApiError::invalid("result", "is required"))?;
        let window = result
            .window
            .ok_or_else(|| ApiError::invalid("result.window", "is required"))?;
        for (field, value) in [
            ("result.window.tenant_id", &window.tenant_id),
            ("result.window.device_id", &window.device_id),
            ("result.window.metric", &window.metric),
        ] {
            if value.is_empty() {
                return Err(ApiError::invalid(field, "is required").into());
            }
        }
        let window_seconds = window
            .window_length
            .map(|d| d.seconds)
            .and_then(|s| i32::try_from(s).ok())
            .filter(|s| (1..=86_400).contains(s))
            .ok_or_else(|| {
                ApiError::invalid(
                    "result.window.window_length",
                    "must be 1 s to 1 day, in whole seconds",
                )
            })?;
        if !(0.0..=1.0).contains(&result.anomaly_score) {
            return Err(ApiError::invalid("result.anomaly_score", "must be within [0, 1]").into());
        }
        let statistics = result
            .statistics
            .ok_or_else(|| ApiError::invalid("result.statistics", "is required"))?;
        let stored = StoredResult {
            tenant_id: window.tenant_id,
            device_id: window.device_id,
            metric: window.metric,
            window_start: timestamp("result.window.window_start", window.window_start)?,
            window_seconds,
            statistics: statistics_from_wire(&statistics)?,
            anomaly_score: result.anomaly_score,
            anomalous: result.anomalous,
            model_version: result.model_version,
        };
        let created = self.store.record_result(&stored).await?;
        Ok(Response::new(pb::RecordWindowResultResponse { created }))
    }

    async fn list_window_results(
        &self,
        request: Request<pb::ListWindowResultsRequest>,
    ) -> Result<Response<pb::ListWindowResultsResponse>, Status> {
        let tenant = scoped_tenant(&request);
        let mut request = request.into_inner();
        hold_to_tenant(tenant.as_deref(), "tenant_id", &mut request.tenant_id)?;
        if request.tenant_id.is_empty() {
            return Err(ApiError::invalid("tenant_id", "is required").into());
        }
        let after = if request.page_token.is_empty() {
            None
        } else {
            let malformed = || ApiError::invalid("page_token", "malformed");
            let mut parts = request.page_token.splitn(3, '|');
            let at = parts
                .next()
                .and_then(|m| m.parse().ok())
                .and_then(DateTime::from_timestamp_micros)
                .ok_or_else(malformed)?;
            let device = parts.next().ok_or_else(malformed)?.to_owned();
            let metric = parts.next().ok_or_else(malformed)?.to_owned();
            Some((at, device, metric))
        };
        let limit = match request.page_size {
            0 => 100,
            n => n.min(1_000),
        };
        let some = |s: String| (!s.is_empty()).then_some(s);
        let query = ResultQuery {
            tenant_id: request.tenant_id,
            device_id: some(request.device_id),
            metric: some(request.metric),
            anomalous_only: request.anomalous_only,
            since: request.since.map_or(Ok(DateTime::<Utc>::UNIX_EPOCH), |s| {
                timestamp("since", Some(s))
            })?,
            after,
            limit,
        };
        let results = self.store.list_results(&query).await?;
        let next_page_token = match results.last() {
            Some(last) if results.len() == limit as usize => {
                format!(
                    "{}|{}|{}",
                    last.window_start.timestamp_micros(),
                    last.device_id,
                    last.metric
                )
            }
            _ => String::new(),
        };
        let results = results
            .into_iter()
            .map(|r| pb::WindowResult {
                window: Some(pb::WindowKey {
                    tenant_id: r.tenant_id,
                    device_id: r.device_id,
                    metric: r.metric,
                    window_start: Some(proto_stamp(r.window_start)),
                    window_length: Some(prost_types::Duration {
                        seconds: i64::from(r.window_seconds),
                        nanos: 0,
                    }),
                }),
                statistics: Some(statistics_to_wire(&r.statistics)),
                anomaly_score: r.anomaly_score,
                anomalous: r.anomalous,
                model_version: r.model_version,
                computed_at: None,
            })
            .collect();
        Ok(Response::new(pb::ListWindowResultsResponse {
            results,
            next_page_token,
        }))
    }

    async fn read_window(
        &self,
        request: Request<pb::ReadWindowRequest>,
    ) -> Result<Response<pb::ReadWindowResponse>, Status> {
        let tenant = scoped_tenant(&request);
        let request = request.into_inner();
        let mut window = request
            .window
            .ok_or_else(|| ApiError::invalid("window", "is required"))?;
        hold_to_tenant(tenant.as_deref(), "window.tenant_id", &mut window.tenant_id)?;
        for (field, value) in [
            ("window.tenant_id", &window.tenant_id),
            ("window.device_id", &window.device_id),
            ("window.metric", &window.metric),
        ] {
            if value.is_empty() {
                return Err(ApiError::invalid(field, "is required").into());
            }
        }
        let start = timestamp("window.window_start", window.window_start)?;
        let length = window
            .window_length
            .and_then(|d| std::time::Duration::try_from(d).ok())
            .filter(|d| !d.is_zero() && d.as_secs() <= 86_400)
            .ok_or_else(|| {
                ApiError::invalid("window.window_length", "must be between 1 ns and 1 day")
            })?;
        let limit = match request.page_size {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let query = WindowQuery {
            tenant_id: window.tenant_id,
            device_id: window.device_id,
            metric: window.metric,
            start,
            end: start + Duration::from_std(length).unwrap_or(Duration::days(1)),
            after: parse_token(&request.page_token)?,
            limit,
        };
        let readings = self.store.read_window(&query).await?;
        let next_page_token = match readings.last() {
            Some(last) if readings.len() == limit as usize => {
                page_token(last.observed_at, &last.event_id)
            }
            _ => String::new(),
        };
        let readings = readings
            .into_iter()
            .map(|r| pb::WindowReading {
                event_id: r.event_id,
                value: r.value,
                observed_at: Some(prost_types::Timestamp {
                    seconds: r.observed_at.timestamp(),
                    nanos: i32::try_from(r.observed_at.timestamp_subsec_nanos()).unwrap_or(0),
                }),
            })
            .collect();
        Ok(Response::new(pb::ReadWindowResponse {
            readings,
            next_page_token,
        }))
    }

    async fn prune_readings(
        &self,
        request: Request<pb::PruneReadingsRequest>,
    ) -> Result<Response<pb::PruneReadingsResponse>, Status> {
        let actor = security::audit::peer_actor(&request);
        let scope = scoped_tenant(&request);
        let mut request = request.into_inner();
        hold_to_tenant(scope.as_deref(), "tenant_id", &mut request.tenant_id)?;
        let older_than = timestamp("older_than", request.older_than)?;
        let batch = match request.batch_size {
            0 => DEFAULT_PRUNE,
            n => n.min(MAX_PRUNE),
        };
        let tenant = Some(request.tenant_id.as_str()).filter(|t| !t.is_empty());
        let pruned = self.store.prune(older_than, batch, tenant).await;
        let whose = tenant.map_or_else(String::new, |t| format!(" of tenant {t}"));
        security::audit::record(&security::audit::AuditEvent {
            actor: &actor,
            action: "readings.prune",
            target: &format!(
                "readings{whose} observed before {}",
                older_than.to_rfc3339()
            ),
            outcome: security::audit::AuditOutcome::of(&pruned),
        });
        let (deleted, results_deleted) = pruned?;
        Ok(Response::new(pb::PruneReadingsResponse {
            deleted,
            results_deleted,
        }))
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let request = request.into_inner();
        let before_id = if request.page_token.is_empty() {
            None
        } else {
            Some(
                request
                    .page_token
                    .parse::<i64>()
                    .map_err(|_| ApiError::invalid("page_token", "malformed"))?,
            )
        };
        let limit = match request.page_size {
            0 => DEFAULT_DEAD_LETTERS,
            n => n.min(MAX_DEAD_LETTERS),
        };
        let letters = self
            .store
            .list_dead_letters(&DeadLetterQuery {
                tenant_id: Some(request.tenant_id).filter(|t| !t.is_empty()),
                before_id,
                limit,
            })
            .await?;
        let next_page_token = match letters.last() {
            Some(last) if letters.len() == limit as usize => last.id.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListDeadLettersResponse {
            dead_letters: letters.into_iter().map(dead_letter_to_wire).collect(),
            next_page_token,
        }))
    }

    async fn get_dead_letter(
        &self,
        request: Request<pb::GetDeadLetterRequest>,
    ) -> Result<Response<pb::GetDeadLetterResponse>, Status> {
        let request = request.into_inner();
        let tenant = Some(request.tenant_id.as_str()).filter(|t| !t.is_empty());
        let letter = self
            .store
            .get_dead_letter(tenant, request.id)
            .await?
            .ok_or_else(|| no_dead_letter(tenant, request.id))?;
        Ok(Response::new(pb::GetDeadLetterResponse {
            dead_letter: Some(dead_letter_to_wire(letter)),
        }))
    }

    async fn resubmit_dead_letter(
        &self,
        request: Request<pb::ResubmitDeadLetterRequest>,
    ) -> Result<Response<pb::ResubmitDeadLetterResponse>, Status> {
        let actor = security::audit::peer_actor(&request);
        let request = request.into_inner();
        let tenant = Some(request.tenant_id.as_str()).filter(|t| !t.is_empty());
        let letter = self
            .store
            .get_dead_letter(tenant, request.id)
            .await?
            .ok_or_else(|| no_dead_letter(tenant, request.id))?;
        let (prefix, mut reading) = match request.corrected {
            Some(corrected) => ("corrected.", corrected),
            None => {
                let payload = serde_json::from_str(&letter.letter.payload)
                    .map_err(|e| crate::store::corrupt("dead_letter.payload", e.to_string()))?;
                let reading = handler::reading_from_payload(&payload).ok_or_else(|| {
                    ApiError::invalid(
                        "corrected",
                        "is required: this letter holds bytes that did not decode",
                    )
                })?;
                ("reading.", reading)
            }
        };
        // A letter's tenant binds its resubmission, as a subject binds a
        // NATS message: a reading naming no tenant takes the letter's.
        if let Some(tenant) = tenant {
            if reading.tenant_id.is_empty() {
                tenant.clone_into(&mut reading.tenant_id);
            } else if reading.tenant_id != tenant {
                return Err(ApiError::invalid(
                    format!("{prefix}tenant_id"),
                    format!("names another tenant than the letter's ({tenant})"),
                )
                .into());
            }
        }
        let target = format!(
            "dead letter {} of {}",
            request.id,
            tenant.map_or_else(|| "no known tenant".to_owned(), |t| format!("tenant {t}"))
        );
        let outcome = self.handler.resubmit(tenant, request.id, reading).await;
        security::audit::record(&security::audit::AuditEvent {
            actor: &actor,
            action: "dead_letter.resubmit",
            target: &target,
            outcome: security::audit::AuditOutcome::of(&outcome),
        });
        match outcome {
            Ok(Some(report)) => Ok(Response::new(pb::ResubmitDeadLetterResponse {
                stored: report.inserted > 0,
            })),
            Ok(None) => Err(no_dead_letter(tenant, request.id).into()),
            Err(ResubmitError::Invalid(rejection)) => Err(ApiError::invalid(
                format!("{prefix}{}", rejection.field),
                format!("{} (the letter is kept)", rejection.reason),
            )
            .into()),
            Err(ResubmitError::Store(error)) => Err(ApiError::Store(error.into()).into()),
        }
    }

    async fn discard_dead_letter(
        &self,
        request: Request<pb::DiscardDeadLetterRequest>,
    ) -> Result<Response<pb::DiscardDeadLetterResponse>, Status> {
        let actor = security::audit::peer_actor(&request);
        let request = request.into_inner();
        let tenant = Some(request.tenant_id.as_str()).filter(|t| !t.is_empty());
        let removed = self.store.discard_dead_letter(tenant, request.id).await;
        let target = format!(
            "dead letter {} of {}",
            request.id,
            tenant.map_or_else(|| "no known tenant".to_owned(), |t| format!("tenant {t}"))
        );
        security::audit::record(&security::audit::AuditEvent {
            actor: &actor,
            action: "dead_letter.discard",
            target: &target,
            outcome: security::audit::AuditOutcome::of(&removed),
        });
        if removed? {
            Ok(Response::new(pb::DiscardDeadLetterResponse {}))
        } else {
            Err(no_dead_letter(tenant, request.id).into())
        }
    }
}

/// Not found, and not told apart from another tenant's letter.
fn no_dead_letter(tenant: Option<&str>, id: i64) -> ApiError {
    ApiError::NotFound(match tenant {
        Some(tenant) => format!("id: no dead letter {id} of tenant {tenant}"),
        None => format!("id: no dead letter {id} without a known tenant"),
    })
}

/// A stored dead letter on the wire, with the reading it holds when its
/// payload decodes to one.
fn dead_letter_to_wire(stored: StoredDeadLetter) -> pb::DeadLetter {
    let letter = stored.letter;
    let reading = serde_json::from_str(&letter.payload)
        .ok()
        .and_then(|payload| handler::reading_from_payload(&payload));
    pb::DeadLetter {
        id: stored.id,
        tenant_id: letter.tenant_id.unwrap_or_default(),
        source: letter.source,
        event_id: letter.event_id.unwrap_or_default(),
        field: letter.field,
        reason: letter.reason,
        payload_json: letter.payload,
        received_at: Some(proto_stamp(stored.received_at)),
        reading,
    }
}
