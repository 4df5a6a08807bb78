//! `POST /v1/readings`: a batch of readings for the key's tenant, answered
//! once durable with exactly what ingest answers (accepted, duplicates,
//! rejected with the field at fault).

use axum::{Extension, Json, extract::State};
use chrono::{DateTime, Utc};
use contracts::ingest::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::{
    auth::with_scope,
    json_object::Object,
    problem::{ApiError, FieldError, Problem},
    routes::AppState,
    storage::GatewayStore,
    tenancy::Authenticated,
    timestamps::{rfc3339, timestamp},
};

/// The most readings one request may carry (ingest's own default limit).
pub const MAX_READINGS: usize = 10_000;
/// The largest body `POST /v1/readings` takes: room for the most readings
/// with a few attributes each.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// One reading as a client sends it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadingIn {
    /// Producer-chosen unique id; a redelivery is stored once.
    event_id: String,
    /// Optional: when present it must be the key's tenant.
    #[serde(default)]
    tenant_id: Option<String>,
    device_id: String,
    metric: String,
    value: f64,
    /// RFC 3339.
    #[schema(format = DateTime)]
    observed_at: String,
    #[serde(default)]
    attributes: std::collections::HashMap<String, String>,
}

/// The request body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishIn {
    /// At most 10,000.
    #[schema(max_items = 10_000)]
    #[serde(deserialize_with = "crate::json_object::objects")]
    readings: Vec<ReadingIn>,
}

/// One refused reading.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RejectedOut {
    index: u32,
    event_id: String,
    field: String,
    reason: String,
}

/// The answer, once every accepted reading is durable.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PublishOut {
    accepted: u32,
    duplicates: u32,
    rejected: Vec<RejectedOut>,
}

/// What to tell a client whose `observed_at` does not parse.
const OBSERVED_AT_PROBLEM: &str = "must be an RFC 3339 time, e.g. 2026-11-29T10:00:00Z";

/// `reading` as the contract's, for `tenant`.
fn wire(tenant: &str, reading: ReadingIn, observed_at: Option<DateTime<Utc>>) -> pb::Reading {
    pb::Reading {
        event_id: reading.event_id,
        tenant_id: tenant.to_owned(),
        device_id: reading.device_id,
        metric: reading.metric,
        value: reading.value,
        observed_at: observed_at.map(timestamp),
        attributes: reading.attributes,
    }
}

/// One streamed reading as `tenant`'s, or why not: (event id, field,
/// reason). Ingest checks the rest, as for a batch.
pub(crate) fn to_reading(
    tenant: &str,
    reading: ReadingIn,
) -> Result<pb::Reading, (String, String, String)> {
    if reading
        .tenant_id
        .as_deref()
        .is_some_and(|named| named != tenant)
    {
        return Err((
            reading.event_id,
            "tenant_id".into(),
            "names another tenant than the key's".into(),
        ));
    }
    match DateTime::parse_from_rfc3339(&reading.observed_at) {
        Ok(at) => Ok(wire(tenant, reading, Some(at.with_timezone(&Utc)))),
        Err(_) => Err((
            reading.event_id,
            "observed_at".into(),
            OBSERVED_AT_PROBLEM.into(),
        )),
    }
}

/// The body as readings of `tenant`, or every field at fault.
fn to_readings(tenant: &str, body: PublishIn) -> Result<Vec<pb::Reading>, ApiError> {
    if body.readings.len() > MAX_READINGS {
        return Err(ApiError::invalid(
            "readings",
            format!(
                "at most {MAX_READINGS} per request, got {}",
                body.readings.len()
            ),
        ));
    }
    let mut errors = Vec::new();
    let mut readings = Vec::with_capacity(body.readings.len());
    for (i, reading) in body.readings.into_iter().enumerate() {
        if let Some(named) = &reading.tenant_id
            && named != tenant
        {
            return Err(ApiError::OtherTenant {
                field: format!("readings[{i}].tenant_id"),
            });
        }
        let observed_at = match DateTime::parse_from_rfc3339(&reading.observed_at) {
            Ok(at) => Some(at.with_timezone(&Utc)),
            Err(_) => {
                errors.push(FieldError {
                    field: format!("readings[{i}].observed_at"),
                    problem: OBSERVED_AT_PROBLEM.into(),
                });
                None
            }
        };
        readings.push(wire(tenant, reading, observed_at));
    }
    if errors.is_empty() {
        Ok(readings)
    } else {
        Err(ApiError::Invalid(errors))
    }
}

/// Publishes a batch of readings for the key's tenant; answered once every
/// accepted reading is durable. Scope `readings:write`.
#[utoipa::path(
    post,
    path = "/v1/readings",
    tag = "readings",
    request_body(content = PublishIn, content_type = "application/json"),
    responses(
        (status = 200, description = "Every reading is accepted, a duplicate of one already stored, or rejected with the field at fault (a reading that would start a series beyond the tenant's series quota is rejected with field device_id)", body = PublishOut),
        (status = 413, description = "The body is larger than 8 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The body is invalid; every bad field is listed", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No key, or a key that is refused", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks the route's scope, or the request names another tenant", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "A rate limit or the tenant's daily readings quota is used up (problem type rate-limited or quota-exceeded); see Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "A fault on our side (logged)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backend is unavailable or the gateway sheds load; retry after Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "The request took longer than the gateway's deadline", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn publish<S: GatewayStore>(
    State(state): State<AppState<S>>,
    Extension(caller): Extension<Authenticated>,
    body: Result<Json<Object<PublishIn>>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<PublishOut>, ApiError> {
    let caller = with_scope(&caller, "readings:write")?;
    let Json(Object(body)) = body.map_err(|rejection| ApiError::from_json(&rejection))?;
    let readings = to_readings(caller.tenant.as_str(), body)?;
    // The batch is counted against the tenant's daily quota before it is
    // published, and what was not stored is given back after.
    let count = readings.len() as u64;
    let day = Utc::now().date_naive();
    let mut max_series = state.series_per_tenant;
    if count > 0 {
        let reservation = reserve(&state, caller, day, count).await?;
        if !reservation.allowed {
            return Err(ApiError::QuotaExceeded {
                quota: reservation.quota,
                used: reservation.used,
            });
        }
        max_series = reservation.max_series.unwrap_or(max_series);
    }
    // Ingest holds the series quota: only it knows which series exist.
    let mut request = tonic::Request::new(pb::PublishReadingsRequest {
        readings,
        max_series: u32::try_from(max_series).unwrap_or(u32::MAX),
    });
    act_for_tenant(&mut request, caller)?;
    let ack = state
        .ingest
        .clone()
        .publish_readings(request)
        .await
        .map_err(from_ingest)
        .and_then(|r| r.into_inner().ack.ok_or(ApiError::Internal));
    let stored = ack.as_ref().map_or(0, |ack| u64::from(ack.accepted));
    give_back(&state, caller, day, count.saturating_sub(stored)).await;
    let ack = ack?;
    Ok(Json(PublishOut {
        accepted: ack.accepted,
        duplicates: ack.duplicates,
        rejected: ack
            .rejected
            .into_iter()
            .map(|r| RejectedOut {
                index: r.index,
                event_id: r.event_id,
                field: r.field,
                reason: r.reason,
            })
            .collect(),
    }))
}

/// Counts `count` readings of the caller's tenant against its daily quota
/// for `day`, before they are published (and reads its series quota).
pub(crate) async fn reserve<S: GatewayStore>(
    state: &AppState<S>,
    caller: &Authenticated,
    day: chrono::NaiveDate,
    count: u64,
) -> Result<crate::storage::Reservation, ApiError> {
    state
        .auth
        .store
        .reserve_readings(&caller.tenant, day, count, state.readings_per_day)
        .await
        .map_err(|error| {
            tracing::error!(%error, "the quota store failed");
            ApiError::Unavailable
        })
}

/// Gives back quota counted for `n` readings that were not stored
/// (duplicates, refused, a failed publish). A failure is logged: counting
/// too much errs on the tenant's side only until midnight.
pub(crate) async fn give_back<S: GatewayStore>(
    state: &AppState<S>,
    caller: &Authenticated,
    day: chrono::NaiveDate,
    n: u64,
) {
    if n == 0 {
        return;
    }
    if let Err(error) = state
        .auth
        .store
        .release_readings(&caller.tenant, day, n)
        .await
    {
        tracing::warn!(%error, "could not give back unused quota");
    }
}

/// Marks a backend call as the gateway acting for the key's tenant, which
/// backends hold every tenant field to.
pub(crate) fn act_for_tenant<T>(
    request: &mut tonic::Request<T>,
    caller: &Authenticated,
) -> Result<(), ApiError> {
    let principal = format!("tenant:{}", caller.tenant);
    request.metadata_mut().insert(
        security::policy::PRINCIPAL_METADATA,
        principal.parse().map_err(|_| ApiError::Internal)?,
    );
    Ok(())
}

/// Ingest's refusals, as the client's problem: invalid fields and another
/// tenant stay theirs; everything else is ours to retry or log.
pub(crate) fn from_ingest(status: tonic::Status) -> ApiError {
    match status.code() {
        tonic::Code::InvalidArgument => {
            let (field, problem) = status
                .message()
                .split_once(": ")
                .unwrap_or(("readings", status.message()));
            ApiError::invalid(field, problem)
        }
        tonic::Code::PermissionDenied => ApiError::OtherTenant {
            field: status
                .message()
                .split_once(':')
                .map_or("readings", |(field, _)| field)
                .to_owned(),
        },
        tonic::Code::Unavailable
        | tonic::Code::ResourceExhausted
        | tonic::Code::DeadlineExceeded => ApiError::Unavailable,
        _ => {
            tracing::error!(status = %status, "ingest failed a publish");
            ApiError::Internal
        }
    }
}

/// The longest time range one series query may cover (ingest reads at most
/// a day per request).
const MAX_RANGE: chrono::Duration = chrono::Duration::days(1);

/// Query of one series' readings.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SeriesQuery {
    /// The device.
    #[param(min_length = 1)]
    device_id: String,
    /// The metric.
    #[param(min_length = 1)]
    metric: String,
    /// RFC 3339, inclusive; an hour before `to` by default.
    #[param(format = DateTime)]
    from: Option<String>,
    /// RFC 3339, exclusive; now by default. A range longer than a day is
    /// cut to its first day; one that ends before it starts is empty.
    #[param(format = DateTime)]
    to: Option<String>,
    /// 1 to 10,000; 1,000 by default.
    #[param(minimum = 1, maximum = 10_000)]
    page_size: Option<u32>,
    /// `next_page_token` of the previous page.
    page_token: Option<String>,
}

/// One stored reading.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SeriesReadingOut {
    event_id: String,
    value: f64,
    /// RFC 3339.
    observed_at: Option<String>,
}

/// One page of a series, oldest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SeriesOut {
    /// The range read, RFC 3339: `from` inclusive, `to` exclusive (cut to
    /// a day after `from` when the request asked for more).
    from: String,
    /// See `from`.
    to: String,
    readings: Vec<SeriesReadingOut>,
    /// Pass as `page_token` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_page_token: Option<String>,
}

fn time(field: &str, raw: Option<&str>) -> Result<Option<DateTime<Utc>>, FieldError> {
    raw.map(|raw| {
        DateTime::parse_from_rfc3339(raw)
            .map(|at| at.with_timezone(&Utc))
            .map_err(|_| FieldError {
                field: field.to_owned(),
                problem: "must be an RFC 3339 time, e.g. 2026-11-29T10:00:00Z".into(),
            })
    })
    .transpose()
}

/// The stored readings of one series (device and metric) of the key's
/// tenant in a time range of at most a day, oldest first. Scope
/// `results:read`.
#[utoipa::path(
    get,
    path = "/v1/readings",
    tag = "readings",
    params(SeriesQuery),
    responses(
        (status = 200, description = "One page of the series", body = SeriesOut),
        (status = 422, description = "A query parameter is invalid (every bad one is listed)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No key, or a key that is refused", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks results:read", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "A rate limit is used up", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "A fault on our side (logged)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Ingest is unavailable or the gateway sheds load", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "The request took longer than the gateway's deadline", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn series<S: GatewayStore>(
    State(state): State<AppState<S>>,
    Extension(caller): Extension<Authenticated>,
    query: Result<axum::extract::Query<SeriesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SeriesOut>, ApiError> {
    let caller = with_scope(&caller, "results:read")?;
    let axum::extract::Query(query) =
        query.map_err(|rejection| ApiError::invalid("query", rejection.body_text()))?;
    let mut errors = Vec::new();
    for (field, value) in [("device_id", &query.device_id), ("metric", &query.metric)] {
        if value.is_empty() {
            errors.push(FieldError {
                field: field.into(),
                problem: "is required".into(),
            });
        }
    }
    let page_size = query.page_size.unwrap_or(1_000);
    if !(1..=10_000).contains(&page_size) {
        errors.push(FieldError {
            field: "page_size".into(),
            problem: "must be 1 to 10000".into(),
        });
    }
    let (from, to) = match (
        time("from", query.from.as_deref()),
        time("to", query.to.as_deref()),
    ) {
        (Ok(from), Ok(to)) => {
            let to = to.unwrap_or_else(Utc::now);
            (from.unwrap_or(to - chrono::Duration::hours(1)), to)
        }
        (from, to) => {
            errors.extend(from.err());
            errors.extend(to.err());
            (Utc::now(), Utc::now())
        }
    };
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    // An empty range holds nothing; a range longer than a day is cut to its
    // first day, and the answer's `to` says where it stopped.
    if to <= from {
        return Ok(Json(SeriesOut {
            from: from.to_rfc3339(),
            to: to.to_rfc3339(),
            readings: Vec::new(),
            next_page_token: None,
        }));
    }
    let to = to.min(from + MAX_RANGE);
    let length = (to - from).to_std().unwrap_or_default();
    let mut request = tonic::Request::new(pb::ReadWindowRequest {
        window: Some(pb::WindowKey {
            tenant_id: caller.tenant.to_string(),
            device_id: query.device_id,
            metric: query.metric,
            window_start: Some(timestamp(from)),
            window_length: Some(prost_types::Duration {
                seconds: i64::try_from(length.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(length.subsec_nanos()).unwrap_or(0),
            }),
        }),
        page_size,
        page_token: query.page_token.unwrap_or_default(),
    });
    act_for_tenant(&mut request, caller)?;
    let page = state
        .ingest
        .clone()
        .read_window(request)
        .await
        .map_err(from_ingest)?
        .into_inner();
    Ok(Json(SeriesOut {
        from: from.to_rfc3339(),
        to: to.to_rfc3339(),
        readings: page
            .readings
            .into_iter()
            .map(|r| SeriesReadingOut {
                event_id: r.event_id,
                value: r.value,
                observed_at: rfc3339(r.observed_at),
            })
            .collect(),
        next_page_token: Some(page.next_page_token).filter(|t| !t.is_empty()),
    }))
}
