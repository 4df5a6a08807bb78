//! The public HTTP routes: the status, and the authenticated `/v1` API.

use std::time::Duration;

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    response::IntoResponse,
    routing::{get, post},
};
use contracts::ingest::v1::ingest_service_client::IngestServiceClient;
use service_runtime::TracedChannel;

use crate::{
    auth::{self, AuthState},
    backends::Backends,
    readings, results,
    status::platform_status,
    storage::GatewayStore,
};

/// What every handler can reach.
#[derive(Debug, Clone)]
pub(crate) struct AppState<S> {
    pub(crate) backends: Backends,
    pub(crate) status_timeout: Duration,
    /// Ingest, called for the key's tenant.
    pub(crate) ingest: IngestServiceClient<TracedChannel>,
    pub(crate) auth: AuthState<S>,
}

/// The gateway's public API.
pub(crate) fn router<S: GatewayStore>(state: AppState<S>) -> Router {
    let authenticated = Router::new()
        .route("/v1/readings", post(readings::publish::<S>))
        .route("/v1/results", get(results::list::<S>))
        .route_layer(axum::middleware::from_fn_with_state(
            state.auth.clone(),
            auth::require_key::<S>,
        ));
    Router::new()
        .route("/v1/status", get(status::<S>))
        .merge(authenticated)
        .fallback(not_found)
        .layer(axum::middleware::from_fn(crate::headers::secure_headers))
        .with_state(state)
}

/// 200 when every app serves, 503 otherwise; the body always says which.
async fn status<S: GatewayStore>(State(state): State<AppState<S>>) -> impl IntoResponse {
    let status = platform_status(&state.backends.all, state.status_timeout).await;
    let code = if status.serving {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(status))
}

async fn not_found() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({ "error": "no such route" })),
    )
}
