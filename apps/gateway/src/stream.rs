//! `POST /v1/readings/stream`: the streaming form of publishing, for
//! high-rate producers. The body is NDJSON (`application/x-ndjson`), one
//! reading per line in the shape of `POST /v1/readings`. The gateway reads
//! it as it arrives, cuts it into batches of [`BATCH_READINGS`] and sends
//! them over one `StreamReadings` call to ingest, acting for the key's
//! tenant, while reading ingest's acknowledgements; memory stays bounded
//! by the batches in flight, not by the body. The answer comes once every
//! accepted reading is durable: totals, and each refused reading with its
//! line number, field and reason (what ingest refuses, a batch past the
//! daily quota). A line that is not a reading at all (not JSON, another
//! shape, a time that does not parse, another tenant) is the producer's
//! bug, as in Elasticsearch's bulk API: reading stops there and the answer
//! is `422` (`403` for another tenant) naming the line, after the lines
//! before it were stored.
//!
//! So a client never needs to know how far a failed request got: on `503`
//! (ingest could not store a batch, or went away) or a `4xx` it resends
//! the whole body, fixed; the readings already stored come back as
//! duplicates.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use axum::{
    Extension, Json,
    body::Body,
    extract::State,
    http::{HeaderMap, header::CONTENT_TYPE},
};
use chrono::Utc;
use contracts::ingest::v1 as pb;
use futures_util::StreamExt as _;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::{
    auth::with_scope,
    json_object::Object,
    problem::{ApiError, Problem},
    readings::{ReadingIn, act_for_tenant, from_ingest, give_back, reserve, to_reading},
    routes::AppState,
    storage::GatewayStore,
    tenancy::Authenticated,
};

/// Readings per batch sent to ingest.
pub const BATCH_READINGS: usize = 1_000;
/// The longest line taken (a reading with many attributes fits).
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// The largest body one stream request may carry; past it the request is
/// answered `413` (what was before is stored: resend the rest).
pub const MAX_STREAM_BYTES: usize = 256 * 1024 * 1024;
/// Batches sent and not yet acknowledged; beyond it the body is not read
/// (TCP flow control slows the producer).
const BATCHES_IN_FLIGHT: usize = 8;

/// A refused line.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RejectedLine {
    /// 1-based line number in the body.
    line: u64,
    /// The reading's event id, when the line had one.
    event_id: String,
    /// The field at fault, as ingest names it (`readings` for a batch past
    /// the daily quota).
    field: String,
    reason: String,
}

/// The answer, once every accepted reading is durable.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StreamOut {
    /// Lines read (empty lines not counted).
    lines: u64,
    accepted: u64,
    duplicates: u64,
    rejected: Vec<RejectedLine>,
    /// Batches sent to ingest.
    batches: u64,
}

/// What the producer and the acknowledgement reader share: per batch
/// sequence, the line of each reading, the day its quota was counted on.
#[derive(Debug, Default)]
struct InFlight {
    batches: HashMap<u64, (Vec<u64>, Vec<String>, chrono::NaiveDate)>,
    out: Totals,
}

#[derive(Debug, Default)]
struct Totals {
    accepted: u64,
    duplicates: u64,
    rejected: Vec<RejectedLine>,
    failed: bool,
}

type Shared = Arc<Mutex<InFlight>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, InFlight> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Publishes an NDJSON stream of readings for the key's tenant; answered
/// once every accepted reading is durable. Scope `readings:write`.
#[utoipa::path(
    post,
    path = "/v1/readings/stream",
    tag = "readings",
    request_body(
        content = ReadingIn,
        content_type = "application/x-ndjson",
        description = "One reading per line, each as in POST /v1/readings (at most 64 KiB a line, 256 MiB a request)"
    ),
    responses(
        (status = 200, description = "Every reading is accepted, a duplicate, or refused with its line number and the field at fault", body = StreamOut),
        (status = 413, description = "The body is larger than 256 MiB; the lines before the limit were stored (resend the whole body: they come back as duplicates)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A line is not a reading (not JSON, another shape, a time that does not parse, longer than 64 KiB), named in errors, the lines before it stored; or the body has no reading", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/x-ndjson", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No key, or a key that is refused", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks the route's scope, or a line names another tenant", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "A rate limit is reached; see Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "A fault on our side (logged)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Ingest could not store part of the stream, or the gateway sheds load: resend the whole body (stored readings come back as duplicates)", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "The request took longer than the gateway's deadline", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn publish_stream<S: GatewayStore>(
    State(state): State<AppState<S>>,
    Extension(caller): Extension<Authenticated>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<StreamOut>, ApiError> {
    let ndjson = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/x-ndjson"));
    let caller = match with_scope(&caller, "readings:write") {
        Ok(caller) if ndjson => caller,
        refused => {
            // Read and drop the body first (lingering close), so the
            // client reads this answer rather than a reset connection.
            crate::auth::discard_body(body).await;
            return Err(refused.err().unwrap_or(ApiError::UnsupportedMediaType));
        }
    };
    let shared = Shared::default();
    let (batches, outgoing) = mpsc::channel::<pb::StreamReadingsRequest>(BATCHES_IN_FLIGHT);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(outgoing));
    act_for_tenant(&mut request, caller)?;
    let mut ingest = state.ingest.clone();
    let acknowledgements = async {
        let mut acks = ingest
            .stream_readings(request)
            .await
            .map_err(from_ingest)?
            .into_inner();
        while let Some(response) = acks.message().await.map_err(from_ingest)? {
            if let Some(ack) = response.ack {
                settle(&state, caller, &shared, &ack).await;
            }
        }
        Ok::<(), ApiError>(())
    };
    let producer = produce(&state, caller, body, &shared, batches);
    let (produced, acknowledged) = tokio::join!(producer, acknowledgements);
    // A batch never acknowledged (ingest went away) was not stored.
    let unsettled: Vec<(u64, usize, chrono::NaiveDate)> = lock(&shared)
        .batches
        .drain()
        .map(|(sequence, (lines, _, day))| (sequence, lines.len(), day))
        .collect();
    for (_, count, day) in &unsettled {
        give_back(&state, caller, *day, *count as u64).await;
    }
    let lines = produced?;
    acknowledged?;
    let InFlight { out, .. } = std::mem::take(&mut *lock(&shared));
    if out.failed || !unsettled.is_empty() {
        return Err(ApiError::Unavailable);
    }
    let mut rejected = out.rejected;
    rejected.sort_by_key(|r| r.line);
    Ok(Json(StreamOut {
        lines: lines.lines,
        accepted: out.accepted,
        duplicates: out.duplicates,
        rejected,
        batches: lines.batches,
    }))
}

/// How much of the body was read.
#[derive(Debug, Default)]
struct Produced {
    lines: u64,
    batches: u64,
}

/// One batch being filled: readings and the line each came from.
#[derive(Debug, Default)]
struct Filling {
    readings: Vec<pb::Reading>,
    lines: Vec<u64>,
}

/// Reads the body line by line and sends full batches to ingest; returns
/// once the body ended (and every batch was sent) or failed. On a failure
/// the rest of the body is read and dropped (briefly), so the client
/// reads the answer instead of a reset connection.
async fn produce<S: GatewayStore>(
    state: &AppState<S>,
    caller: &Authenticated,
    body: Body,
    shared: &Shared,
    batches: mpsc::Sender<pb::StreamReadingsRequest>,
) -> Result<Produced, ApiError> {
    let mut chunks = body.into_data_stream();
    let read = read_lines(state, caller, &mut chunks, shared, batches).await;
    if read.is_err() {
        crate::auth::discard_rest(&mut chunks).await;
    }
    read
}

/// [`produce`]'s reading, up to the end of the body or the first failure.
async fn read_lines<S: GatewayStore>(
    state: &AppState<S>,
    caller: &Authenticated,
    chunks: &mut axum::body::BodyDataStream,
    shared: &Shared,
    batches: mpsc::Sender<pb::StreamReadingsRequest>,
) -> Result<Produced, ApiError> {
    let tenant = caller.tenant.as_str();
    let mut produced = Produced::default();
    let mut filling = Filling::default();
    let mut pending = Vec::new();
    let (mut line_no, mut total) = (0u64, 0usize);
    loop {
        let chunk = chunks.next().await;
        let last = chunk.is_none();
        match chunk {
            Some(Ok(bytes)) => {
                total += bytes.len();
                if total > MAX_STREAM_BYTES {
                    send(state, caller, shared, &batches, &mut filling, &mut produced).await?;
                    return Err(ApiError::TooLarge);
                }
                pending.extend_from_slice(&bytes);
            }
            Some(Err(error)) => {
                tracing::debug!(%error, "the stream's body broke off");
                return Err(ApiError::invalid("body", "the body ended early"));
            }
            None => pending.push(b'\n'),
        }
        // Lines are read in place; what is consumed is dropped once per
        // chunk, not copied out line by line.
        let mut start = 0;
        while let Some(end) = pending[start..].iter().position(|b| *b == b'\n') {
            let text = pending[start..start + end].trim_ascii();
            start += end + 1;
            line_no += 1;
            if text.is_empty() {
                continue;
            }
            produced.lines += 1;
            if let Err(error) = take_line(tenant, line_no, text, &mut filling) {
                // What came before it is sent, and stored, first.
                send(state, caller, shared, &batches, &mut filling, &mut produced).await?;
                return Err(error);
            }
            if filling.readings.len() >= BATCH_READINGS {
                send(state, caller, shared, &batches, &mut filling, &mut produced).await?;
            }
        }
        pending.drain(..start);
        if pending.len() > MAX_LINE_BYTES {
            send(state, caller, shared, &batches, &mut filling, &mut produced).await?;
            return Err(ApiError::invalid(
                format!("line {}", line_no + 1),
                format!("longer than {MAX_LINE_BYTES} bytes"),
            ));
        }
        if last {
            break;
        }
    }
    if produced.lines == 0 {
        return Err(ApiError::invalid(
            "body",
            "is empty: send at least one reading",
        ));
    }
    send(state, caller, shared, &batches, &mut filling, &mut produced).await?;
    Ok(produced)
}

/// One line: a reading for the batch, or the error that ends the request
/// (the line is not a reading of this tenant).
fn take_line(tenant: &str, line: u64, text: &[u8], filling: &mut Filling) -> Result<(), ApiError> {
    let Object(parsed): Object<ReadingIn> = serde_json::from_slice(text).map_err(|error| {
        ApiError::invalid(format!("line {line}"), format!("not a reading: {error}"))
    })?;
    let reading = to_reading(tenant, parsed).map_err(|(_, field, reason)| {
        if field == "tenant_id" {
            ApiError::OtherTenant {
                field: format!("line {line}.tenant_id"),
            }
        } else {
            ApiError::invalid(format!("line {line}.{field}"), reason)
        }
    })?;
    filling.readings.push(reading);
    filling.lines.push(line);
    Ok(())
}

fn refuse(shared: &Shared, line: u64, event_id: String, field: &str, reason: &str) {
    lock(shared).out.rejected.push(RejectedLine {
        line,
        event_id,
        field: field.to_owned(),
        reason: reason.to_owned(),
    });
}

/// Sends the batch being filled, after counting it against the tenant's
/// daily quota (a batch past the quota is refused line by line).
async fn send<S: GatewayStore>(
    state: &AppState<S>,
    caller: &Authenticated,
    shared: &Shared,
    batches: &mpsc::Sender<pb::StreamReadingsRequest>,
    filling: &mut Filling,
    produced: &mut Produced,
) -> Result<(), ApiError> {
    let Filling { readings, lines } = std::mem::take(filling);
    if readings.is_empty() {
        return Ok(());
    }
    let day = Utc::now().date_naive();
    let reservation = reserve(state, caller, day, readings.len() as u64).await?;
    if !reservation.allowed {
        let reason = format!(
            "the tenant's daily quota of {} readings is used up ({} today); retry after midnight UTC",
            reservation.quota, reservation.used
        );
        for (reading, line) in readings.into_iter().zip(lines) {
            refuse(shared, line, reading.event_id, "readings", &reason);
        }
        return Ok(());
    }
    produced.batches += 1;
    let sequence = produced.batches;
    let event_ids = readings.iter().map(|r| r.event_id.clone()).collect();
    lock(shared)
        .batches
        .insert(sequence, (lines, event_ids, day));
    let max_series = reservation.max_series.unwrap_or(state.series_per_tenant);
    let batch = pb::StreamReadingsRequest {
        sequence,
        readings,
        max_series: u32::try_from(max_series).unwrap_or(u32::MAX),
    };
    // A closed channel means the call to ingest ended; the answer says so.
    let _ended = batches.send(batch).await;
    Ok(())
}

/// Books one acknowledgement: totals, refused lines, unused quota back.
async fn settle<S: GatewayStore>(
    state: &AppState<S>,
    caller: &Authenticated,
    shared: &Shared,
    ack: &pb::BatchAck,
) {
    let (count, day) = {
        let mut in_flight = lock(shared);
        let Some((lines, event_ids, day)) = in_flight.batches.remove(&ack.sequence) else {
            return;
        };
        let out = &mut in_flight.out;
        if ack.error.is_some() {
            out.failed = true;
        } else {
            out.accepted += u64::from(ack.accepted);
            out.duplicates += u64::from(ack.duplicates);
            for rejected in &ack.rejected {
                let index = rejected.index as usize;
                out.rejected.push(RejectedLine {
                    line: lines.get(index).copied().unwrap_or_default(),
                    event_id: event_ids.get(index).cloned().unwrap_or_default(),
                    field: rejected.field.clone(),
                    reason: rejected.reason.clone(),
                });
            }
        }
        let stored = if ack.error.is_some() {
            0
        } else {
            ack.accepted as usize
        };
        (lines.len().saturating_sub(stored), day)
    };
    give_back(state, caller, day, count as u64).await;
}
