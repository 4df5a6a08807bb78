//! `/v1/webhooks`: the key's tenant's webhook endpoints and their delivery
//! log, proxied to the worker's `platform.webhooks.v1` as the gateway
//! acting for that tenant (scope `webhooks:manage`). The worker owns
//! endpoints, secrets and deliveries; another tenant's ids are `404`,
//! exactly as ids that do not exist.

use axum::{
    Extension, Json,
    extract::{Path, Query, State},
    http::StatusCode,
};
use contracts::webhooks::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::{
    auth::with_scope,
    json_object::Object,
    problem::{ApiError, Problem},
    readings::act_for_tenant,
    routes::AppState,
    storage::GatewayStore,
    tenancy::Authenticated,
    timestamps::rfc3339,
};

/// The scope every webhook route needs.
const SCOPE: &str = "webhooks:manage";

/// A new endpoint.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointIn {
    /// Where deliveries go: `https://...`. A private, loopback or metadata
    /// address is refused (422), as is plain `http://` in production.
    #[schema(max_length = 2048, pattern = "^https?://[^\\s/?#]+([/?#]\\S*)?$")]
    url: String,
    /// For people; at most 200 characters.
    #[serde(default)]
    #[schema(max_length = 200)]
    description: String,
    /// Event types to receive (`window.anomalous`, `webhook.test`); all
    /// when absent or empty.
    #[serde(default)]
    events: Vec<EventType>,
    /// Deliveries in flight at once, 1 to 16 (4 when absent).
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 16)]
    max_in_flight: Option<u32>,
}

/// The event types an endpoint can receive.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
pub enum EventType {
    /// A window's statistics were anomalous.
    #[serde(rename = "window.anomalous")]
    WindowAnomalous,
    /// A test event, sent on request.
    #[serde(rename = "webhook.test")]
    WebhookTest,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            Self::WindowAnomalous => "window.anomalous",
            Self::WebhookTest => "webhook.test",
        }
    }
}

/// An endpoint as the API shows it (never its secret).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EndpointOut {
    /// `we_` and 16 hex digits.
    endpoint_id: String,
    url: String,
    description: String,
    events: Vec<String>,
    /// False once disabled (automatically, after failing for too long).
    enabled: bool,
    /// Why it was disabled; empty while enabled.
    disabled_reason: String,
    max_in_flight: u32,
    /// RFC 3339.
    created_at: Option<String>,
    /// Since when every delivery has failed, if they do (RFC 3339).
    failing_since: Option<String>,
}

/// A new endpoint with its signing secret, shown only here.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedOut {
    endpoint: EndpointOut,
    /// `whsec_` and base64: verify each delivery's `webhook-signature`
    /// with it (Standard Webhooks).
    secret: String,
}

/// The tenant's endpoints.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EndpointsOut {
    endpoints: Vec<EndpointOut>,
}

/// A secret rotation.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateIn {
    /// How long the previous secret still signs, in seconds (0 to 604800);
    /// 86400 when absent.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(value_type = Option<u32>, minimum = 0, maximum = 604_800)]
    overlap_seconds: Option<u32>,
}

/// The new secret: deliveries carry signatures of both secrets until the
/// overlap ends.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SecretOut {
    secret: String,
}

/// One event on its way to one endpoint.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryOut {
    /// `wd_` and 16 hex digits: the `webhook-id` the receiver sees.
    delivery_id: String,
    endpoint_id: String,
    event: String,
    /// `pending`, `succeeded`, `failed` (will retry) or `discarded`.
    state: String,
    attempts: i32,
    /// The receiver's last status; 0 when there was none.
    last_status: i32,
    last_error: String,
    created_at: Option<String>,
    updated_at: Option<String>,
}

/// A delivery just queued.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QueuedOut {
    delivery: DeliveryOut,
}

/// One page of deliveries, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveriesOut {
    deliveries: Vec<DeliveryOut>,
    /// Pass as `page_token` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_page_token: Option<String>,
}

/// Query of the delivery log.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    /// 1 to 100; 20 by default.
    #[param(minimum = 1, maximum = 100)]
    page_size: Option<u32>,
    /// `next_page_token` of the previous page.
    page_token: Option<String>,
}

/// A JSON integer as JSON Schema counts integers: `7` and `7.0` alike.
fn whole_number<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u32>, D::Error> {
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    let whole = number.as_u64().or_else(|| {
        number
            .as_f64()
            .filter(|v| v.fract() == 0.0 && *v >= 0.0 && *v <= f64::from(u32::MAX))
            .map(|v| v as u64)
    });
    whole
        .and_then(|v| u32::try_from(v).ok())
        .map(Some)
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "expected a whole number from 0 to {}, got {number}",
                u32::MAX
            ))
        })
}

fn endpoint_out(e: pb::Endpoint) -> EndpointOut {
    EndpointOut {
        endpoint_id: e.endpoint_id,
        url: e.url,
        description: e.description,
        events: e.events,
        enabled: e.enabled,
        disabled_reason: e.disabled_reason,
        max_in_flight: e.max_in_flight,
        created_at: rfc3339(e.created_at),
        failing_since: rfc3339(e.failing_since),
    }
}

fn delivery_out(d: pb::Delivery) -> DeliveryOut {
    DeliveryOut {
        delivery_id: d.delivery_id,
        endpoint_id: d.endpoint_id,
        event: d.event,
        state: d.state,
        attempts: d.attempts,
        last_status: d.last_status,
        last_error: d.last_error,
        created_at: rfc3339(d.created_at),
        updated_at: rfc3339(d.updated_at),
    }
}

/// The worker's refusals, as the client's problem.
fn from_worker(status: tonic::Status) -> ApiError {
    let split = |message: &str| {
        message
            .split_once(": ")
            .map(|(f, p)| (f.to_owned(), p.to_owned()))
            .unwrap_or_else(|| ("body".to_owned(), message.to_owned()))
    };
    match status.code() {
        tonic::Code::NotFound => ApiError::NotFound,
        tonic::Code::InvalidArgument => {
            let (field, problem) = split(status.message());
            ApiError::invalid(field, problem)
        }
        tonic::Code::PermissionDenied => ApiError::OtherTenant {
            field: split(status.message()).0,
        },
        tonic::Code::ResourceExhausted | tonic::Code::FailedPrecondition => {
            ApiError::Conflict(status.message().to_owned())
        }
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => ApiError::Unavailable,
        _ => {
            tracing::error!(status = %status, "the worker failed a webhook call");
            ApiError::Internal
        }
    }
}

/// A request to the worker acting for the caller's tenant.
fn for_tenant<T>(caller: &Authenticated, message: T) -> Result<tonic::Request<T>, ApiError> {
    let mut request = tonic::Request::new(message);
    act_for_tenant(&mut request, caller)?;
    Ok(request)
}

fn client<S>(
    state: &AppState<S>,
) -> pb::webhooks_service_client::WebhooksServiceClient<service_runtime::TracedChannel> {
    pb::webhooks_service_client::WebhooksServiceClient::new(state.worker.clone())
}

/// Registers a receiver for the key's tenant; the answer carries its
/// signing secret, which is never shown again. Scope `webhooks:manage`.
#[utoipa::path(
    post,
    path = "/v1/webhooks",
    tag = "webhooks",
    request_body(content = EndpointIn, content_type = "application/json"),
    responses(
        (status = 201, description = "The endpoint and its secret (shown once)", body = CreatedOut),
        (status = 409, description = "The tenant has as many endpoints as it may (20)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is invalid (a private address, an unknown event type)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No key, or a key that is refused", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks webhooks:manage", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "A rate limit is used up", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "A fault on our side (logged)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The worker is unavailable or the gateway sheds load", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "The request took longer than the gateway's deadline", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn create<S: GatewayStore>(
    State(state): State<AppState<S>>,
    Extension(caller): Extension<Authenticated>,
    body: Result<Json<Object<EndpointIn>>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<CreatedOut>), ApiError> {
    let caller = with_scope(&caller, SCOPE)?;
    let Json(Object(body)) = body.map_err(|rejection| ApiError::from_json(&rejection))?;
    if body.max_in_flight.is_some_and(|n| !(1..=16).contains(&n)) {
        return Err(ApiError::invalid("max_in_flight", "must be 1 to 16"));
    }
    let request = for_tenant(
        caller,
        pb::CreateEndpointRequest {
            tenant_id: caller.tenant.to_string(),
            url: body.url,
            description: body.description,
            events: body.events.iter().map(|e| e.as_str().to_owned()).collect(),
            // 0 asks the worker for its default.
            max_in_flight: body.max_in_flight.unwrap_or(0),
        },
    )?;
    let created = client(&state)
        .create_endpoint(request)
        .await
        .map_err(from_worker)?
        .into_inner();
    let endpoint = created.endpoint.ok_or(ApiError::Internal)?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedOut {
            endpoint: endpoint_out(endpoint),
            secret: created.secret,
        }),
    ))
}

/// The key's tenant's endpoints, oldest first. Scope `webhooks:manage`.
#[utoipa::path(
    get,
    path = "/v1/webhooks",
    tag = "webhooks",
    responses(
        (status = 200, description = "Every endpoint of the tenant", body = EndpointsOut),
        (status = 401, description = "No key, or a key that is refused", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks webhooks:manage", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "A rate limit is used up", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "A fault on our side (logged)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The worker is unavailable or the gateway sheds load", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "The request took longer than the gateway's deadline", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn list<S: GatewayStore>(
    State(state): State<AppState<S>>,
    Extension(caller): Extension<Authenticated>,
) -> Result<Json<EndpointsOut>, ApiError> {
    let caller = with_scope(&caller, SCOPE)?;
    let request = for_tenant(
        caller,
        pb::ListEndpointsRequest {
            tenant_id: caller.tenant.to_string(),
        },
    )?;
    let endpoints = client(&state)
        .list_endpoints(request)
        .await
        .map_err(from_worker)?
        .into_inner()
        .endpoints;
    Ok(Json(EndpointsOut {
        endpoints: endpoints.into_iter().map(endpoint_out).collect(),
    }))
}

/// Removes an endpoint and its delivery log. Scope `webhooks:manage`.
#[utoipa::path(
    delete,
    path = "/v1/webhooks/{endpoint_id}",
    tag = "webhooks",
    params(("endpoint_id" = String, Path, description = "The endpoint's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such endpoint for this tenant", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No key, or a key that is refused", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks webhooks:manage", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "A rate limit is used up", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "A fault on our side (logged)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The worker is unavailable or the gateway sheds load", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "The request took longer than the gateway's deadline", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn delete<S: GatewayStore>(
    State(state): State<AppState<S>>,
    Extension(caller): Extension<Authenticated>,
    Path(endpoint_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let caller = with_scope(&caller, SCOPE)?;
    let request = for_tenant(
        caller,
        pb::DeleteEndpointRequest {
            tenant_id: caller.tenant.to_string(),
            endpoint_id,
        },
    )?;
    client(&state)
        .delete_endpoint(request)
        .await
        .map_err(from_worker)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Enables an endpoint again after it was disabled (its receiver failed
/// for too long and is fixed now); check it first with a test event.
/// Scope `webhooks:manage`.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{endpoint_id}/enable",
    tag = "webhooks",
    params(("endpoint_id" = String, Path, description = "The endpoint's id")),
    responses(
        (status = 200, description = "The endpoint, enabled", body = EndpointOut),
        (status = 404, description = "No such endpoint for this tenant", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No key, or a key that is refused", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks webhooks:manage", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "A rate limit is used up", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "A fault on our side (logged)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The worker is unavailable or the gateway sheds load", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "The request took longer than the gateway's deadline", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn enable<S: GatewayStore>(
    State(state): State<AppState<S>>,
    Extension(caller): Extension<Authenticated>,
    Path(endpoint_id): Path<String>,
) -> Result<Json<EndpointOut>, ApiError> {
    let caller = with_scope(&caller, SCOPE)?;
    let request = for_tenant(
        caller,
        pb::EnableEndpointRequest {
            tenant_id: caller.tenant.to_string(),
            endpoint_id,
        },
    )?;
    let endpoint = client(&state)
        .enable_endpoint(request)
        .await
        .map_err(from_worker)?
        .into_inner()
        .endpoint
        .ok_or(ApiError::Internal)?;
    Ok(Json(endpoint_out(endpoint)))
}

/// A new signing secret, shown once; both secrets sign deliveries until
/// the overlap ends. Scope `webhooks:manage`.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{endpoint_id}/rotate-secret",
    tag = "webhooks",
    params(("endpoint_id" = String, Path, description = "The endpoint's id")),
    request_body(content = RotateIn, content_type = "application/json"),
    responses(
        (status = 200, description = "The new secret", body = SecretOut),
        (status = 404, description = "No such endpoint for this tenant", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "overlap_seconds is out of range", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No key, or a key that is refused", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks webhooks:manage", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "A rate limit is used up", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "A fault on our side (logged)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The worker is unavailable or the gateway sheds load", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "The request took longer than the gateway's deadline", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn rotate_secret<S: GatewayStore>(
    State(state): State<AppState<S>>,
    Extension(caller): Extension<Authenticated>,
    Path(endpoint_id): Path<String>,
    body: Result<Json<Object<RotateIn>>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<SecretOut>, ApiError> {
    let caller = with_scope(&caller, SCOPE)?;
    let Json(Object(body)) = body.map_err(|rejection| ApiError::from_json(&rejection))?;
    let overlap = body.overlap_seconds.unwrap_or(86_400);
    if overlap > 604_800 {
        return Err(ApiError::invalid(
            "overlap_seconds",
            "must be at most 604800 (7 days)",
        ));
    }
    let request = for_tenant(
        caller,
        pb::RotateSecretRequest {
            tenant_id: caller.tenant.to_string(),
            endpoint_id,
            // 0 would mean "the default" to the worker: one second is the
            // shortest overlap asked for as zero.
            overlap_seconds: overlap.max(1),
        },
    )?;
    let secret = client(&state)
        .rotate_secret(request)
        .await
        .map_err(from_worker)?
        .into_inner()
        .secret;
    Ok(Json(SecretOut { secret }))
}

/// Queues a `webhook.test` event to the endpoint (also when disabled).
/// Scope `webhooks:manage`.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{endpoint_id}/test",
    tag = "webhooks",
    params(("endpoint_id" = String, Path, description = "The endpoint's id")),
    responses(
        (status = 202, description = "The delivery, queued", body = QueuedOut),
        (status = 404, description = "No such endpoint for this tenant", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No key, or a key that is refused", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks webhooks:manage", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "A rate limit is used up", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "A fault on our side (logged)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The worker is unavailable or the gateway sheds load", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "The request took longer than the gateway's deadline", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn send_test<S: GatewayStore>(
    State(state): State<AppState<S>>,
    Extension(caller): Extension<Authenticated>,
    Path(endpoint_id): Path<String>,
) -> Result<(StatusCode, Json<QueuedOut>), ApiError> {
    let caller = with_scope(&caller, SCOPE)?;
    let request = for_tenant(
        caller,
        pb::SendTestEventRequest {
            tenant_id: caller.tenant.to_string(),
            endpoint_id,
        },
    )?;
    let delivery = client(&state)
        .send_test_event(request)
        .await
        .map_err(from_worker)?
        .into_inner()
        .delivery
        .ok_or(ApiError::Internal)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(QueuedOut {
            delivery: delivery_out(delivery),
        }),
    ))
}

/// The endpoint's recent deliveries, newest first. Scope
/// `webhooks:manage`.
#[utoipa::path(
    get,
    path = "/v1/webhooks/{endpoint_id}/deliveries",
    tag = "webhooks",
    params(("endpoint_id" = String, Path, description = "The endpoint's id"), DeliveriesQuery),
    responses(
        (status = 200, description = "One page of deliveries", body = DeliveriesOut),
        (status = 404, description = "No such endpoint for this tenant", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A query parameter is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No key, or a key that is refused", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks webhooks:manage", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "A rate limit is used up", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "A fault on our side (logged)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The worker is unavailable or the gateway sheds load", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "The request took longer than the gateway's deadline", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn deliveries<S: GatewayStore>(
    State(state): State<AppState<S>>,
    Extension(caller): Extension<Authenticated>,
    Path(endpoint_id): Path<String>,
    query: Result<Query<DeliveriesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DeliveriesOut>, ApiError> {
    let caller = with_scope(&caller, SCOPE)?;
    let Query(query) =
        query.map_err(|rejection| ApiError::invalid("query", rejection.body_text()))?;
    let page_size = query.page_size.unwrap_or(20);
    if !(1..=100).contains(&page_size) {
        return Err(ApiError::invalid("page_size", "must be 1 to 100"));
    }
    let request = for_tenant(
        caller,
        pb::ListDeliveriesRequest {
            tenant_id: caller.tenant.to_string(),
            endpoint_id,
            page_size,
            page_token: query.page_token.unwrap_or_default(),
        },
    )?;
    let page = client(&state)
        .list_deliveries(request)
        .await
        .map_err(from_worker)?
        .into_inner();
    Ok(Json(DeliveriesOut {
        deliveries: page.deliveries.into_iter().map(delivery_out).collect(),
        next_page_token: Some(page.next_page_token).filter(|t| !t.is_empty()),
    }))
}

/// Sends a discarded delivery again, now (a failed one is already
/// scheduled to retry). Scope `webhooks:manage`.
#[utoipa::path(
    post,
    path = "/v1/deliveries/{delivery_id}/retry",
    tag = "webhooks",
    params(("delivery_id" = String, Path, description = "The delivery's id")),
    responses(
        (status = 202, description = "The delivery, queued again", body = QueuedOut),
        (status = 404, description = "No such delivery for this tenant", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The delivery is not discarded", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No key, or a key that is refused", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks webhooks:manage", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "A rate limit is used up", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "A fault on our side (logged)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The worker is unavailable or the gateway sheds load", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "The request took longer than the gateway's deadline", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn retry<S: GatewayStore>(
    State(state): State<AppState<S>>,
    Extension(caller): Extension<Authenticated>,
    Path(delivery_id): Path<String>,
) -> Result<(StatusCode, Json<QueuedOut>), ApiError> {
    let caller = with_scope(&caller, SCOPE)?;
    let request = for_tenant(
        caller,
        pb::RetryDeliveryRequest {
            tenant_id: caller.tenant.to_string(),
            delivery_id,
        },
    )?;
    let delivery = client(&state)
        .retry_delivery(request)
        .await
        .map_err(from_worker)?
        .into_inner()
        .delivery
        .ok_or(ApiError::Internal)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(QueuedOut {
            delivery: delivery_out(delivery),
        }),
    ))
}
