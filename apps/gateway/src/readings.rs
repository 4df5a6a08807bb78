//! `POST /v1/readings`: a batch of readings for the key's tenant, answered
//! once durable with exactly what ingest answers (accepted, duplicates,
//! rejected with the field at fault).

use axum::{Extension, Json, extract::State};
use chrono::{DateTime, Utc};
use contracts::ingest::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::{
    auth::with_scope,
    problem::{ApiError, FieldError, Problem},
    routes::AppState,
    storage::GatewayStore,
    tenancy::Authenticated,
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
                    problem: "must be an RFC 3339 time, e.g. 2026-11-29T10:00:00Z".into(),
                });
                None
            }
        };
        readings.push(pb::Reading {
            event_id: reading.event_id,
            tenant_id: tenant.to_owned(),
            device_id: reading.device_id,
            metric: reading.metric,
            value: reading.value,
            observed_at: observed_at.map(|at| prost_types::Timestamp {
                seconds: at.timestamp(),
                nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
            }),
            attributes: reading.attributes,
        });
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
        (status = 200, description = "Every reading is accepted, a duplicate of one already stored, or rejected with the field at fault", body = PublishOut),
        (status = 413, description = "The body is larger than 8 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The body is invalid; every bad field is listed", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No key, or a key that is refused", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks the route's scope, or the request names another tenant", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "A rate limit is used up; see Retry-After and RateLimit", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "A fault on our side (logged)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backend is unavailable or the gateway sheds load; retry after Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "The request took longer than the gateway's deadline", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn publish<S: GatewayStore>(
    State(state): State<AppState<S>>,
    Extension(caller): Extension<Authenticated>,
    body: Result<Json<PublishIn>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<PublishOut>, ApiError> {
    let caller = with_scope(&caller, "readings:write")?;
    let Json(body) = body.map_err(|rejection| ApiError::from_json(&rejection))?;
    let readings = to_readings(caller.tenant.as_str(), body)?;
    let mut request = tonic::Request::new(pb::PublishReadingsRequest { readings });
    act_for_tenant(&mut request, caller)?;
    let ack = state
        .ingest
        .clone()
        .publish_readings(request)
        .await
        .map_err(from_ingest)?
        .into_inner()
        .ack
        .ok_or(ApiError::Internal)?;
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
