//! The public HTTP routes: the status, and the authenticated `/v1` API.

use std::time::Duration;

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, State},
    http::StatusCode,
    response::IntoResponse,
    routing::{delete, get, post},
};
use contracts::ingest::v1::ingest_service_client::IngestServiceClient;
use service_runtime::TracedChannel;

use crate::{
    auth::{self, AuthState},
    backends::Backends,
    problem::{ApiError, Problem},
    readings, results,
    status::{PublicStatus, platform_status},
    storage::GatewayStore,
    webhooks,
};

/// The largest body a route takes unless it says otherwise.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub(crate) struct AppState<S> {
    pub(crate) backends: Backends,
    pub(crate) status_timeout: Duration,
    /// Ingest, called for the key's tenant.
    pub(crate) ingest: IngestServiceClient<TracedChannel>,
    /// The worker (webhooks), called for the key's tenant.
    pub(crate) worker: TracedChannel,
    /// Readings a tenant may publish per UTC day unless it has its own quota.
    pub(crate) readings_per_day: u64,
    /// Series a tenant may have unless it has its own quota (0: no limit).
    pub(crate) series_per_tenant: u64,
    pub(crate) auth: AuthState<S>,
    /// Whether the public listener serves TLS.
    pub(crate) tls: crate::headers::ServedOverTls,
    /// Origins whose pages may call the API.
    pub(crate) cors: crate::cors::AllowedOrigins,
}

/// The gateway's public API.
pub(crate) fn router<S: GatewayStore>(
    state: AppState<S>,
    console: Option<crate::console::ConsoleState<S>>,
) -> Router {
    use crate::openapi::route;
    let authenticated = Router::new();
    let authenticated = route::<readings::__path_publish, _>(
        authenticated,
        post(readings::publish::<S>)
            .layer(DefaultBodyLimit::max(readings::MAX_BODY_BYTES))
            .get(readings::series::<S>),
    );
    // The streaming form reads its body itself, bounded by its own limit.
    let authenticated = route::<crate::stream::__path_publish_stream, _>(
        authenticated,
        post(crate::stream::publish_stream::<S>).layer(DefaultBodyLimit::disable()),
    );
    let authenticated = route::<results::__path_list, _>(authenticated, get(results::list::<S>));
    let authenticated = route::<webhooks::__path_create, _>(
        authenticated,
        post(webhooks::create::<S>).get(webhooks::list::<S>),
    );
    let authenticated =
        route::<webhooks::__path_delete, _>(authenticated, delete(webhooks::delete::<S>));
    let authenticated = route::<webhooks::__path_rotate_secret, _>(
        authenticated,
        post(webhooks::rotate_secret::<S>),
    );
    let authenticated =
        route::<webhooks::__path_enable, _>(authenticated, post(webhooks::enable::<S>));
    let authenticated =
        route::<webhooks::__path_send_test, _>(authenticated, post(webhooks::send_test::<S>));
    let authenticated =
        route::<webhooks::__path_deliveries, _>(authenticated, get(webhooks::deliveries::<S>));
    let authenticated =
        route::<webhooks::__path_retry, _>(authenticated, post(webhooks::retry::<S>)).route_layer(
            // Shared: the state is cloned per request.
            axum::middleware::from_fn_with_state(
                std::sync::Arc::new(state.auth.clone()),
                auth::require_key::<S>,
            ),
        );
    let mut api = route::<__path_status, _>(Router::new(), get(status::<S>))
        .merge(authenticated)
        .with_state(state.clone());
    if let Some(console) = console {
        api = api.merge(crate::console::router(console));
    }
    edge_layers(
        api.merge(crate::openapi::docs_router()).fallback(not_found),
        &state.auth.limits,
        &state.cors,
        state.tls,
    )
}

/// What every public answer passes through, outermost last: the body
/// limit, load shedding with the deadline and the per-client rate limit,
/// CORS, then the secure headers and the request id. (The listener adds
/// tracing and metrics; keyed routes add authentication themselves.)
pub(crate) fn edge_layers(
    router: Router,
    limits: &crate::limits::Limits,
    cors: &crate::cors::AllowedOrigins,
    tls: crate::headers::ServedOverTls,
) -> Router {
    router
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            limits.clone(),
            crate::limits::guard,
        ))
        .layer(axum::middleware::from_fn_with_state(
            cors.clone(),
            crate::cors::cors,
        ))
        .layer(axum::middleware::from_fn_with_state(
            tls,
            crate::headers::secure_headers,
        ))
}

/// Operator-only routes for the admin listener: `GET /status` with every
/// app's address, build, instance and latency.
pub(crate) fn admin_router<S: GatewayStore>(state: AppState<S>) -> Router {
    Router::new()
        .route("/status", get(detailed_status::<S>))
        .with_state(state)
}

/// Whether the platform serves: 200 when every app does, 503 otherwise,
/// naming each app's state (and nothing about where or what build it
/// runs). No key needed.
#[utoipa::path(
    get,
    path = "/v1/status",
    tag = "platform",
    responses(
        (status = 200, description = "Every app serves", body = PublicStatus),
        (status = 429, description = "This client's rate limit is used up", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "An app does not serve (a status body), or the gateway sheds load (a problem)", content(
            (PublicStatus = "application/json"),
            (Problem = "application/problem+json"),
        )),
        (status = 504, description = "The request took longer than the gateway's deadline", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn status<S: GatewayStore>(State(state): State<AppState<S>>) -> impl IntoResponse {
    let status = platform_status(&state.backends.all, state.status_timeout).await;
    (
        status_code(status.serving),
        Json(PublicStatus::from(&status)),
    )
}

/// The status with addresses, builds, instances and errors (admin port).
async fn detailed_status<S: GatewayStore>(State(state): State<AppState<S>>) -> impl IntoResponse {
    let status = platform_status(&state.backends.all, state.status_timeout).await;
    (status_code(status.serving), Json(status))
}

fn status_code(serving: bool) -> StatusCode {
    if serving {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}
