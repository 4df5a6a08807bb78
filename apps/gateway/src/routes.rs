//! The public HTTP routes and how errors become HTTP responses.

use std::time::Duration;

use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};

use crate::{backends::Backends, status::platform_status};

/// What every handler can reach.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub(crate) backends: Backends,
    pub(crate) status_timeout: Duration,
}

/// The gateway's public API.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .fallback(not_found)
        .with_state(state)
}

/// 200 when every app serves, 503 otherwise; the body always says which.
async fn status(State(state): State<AppState>) -> impl IntoResponse {
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
