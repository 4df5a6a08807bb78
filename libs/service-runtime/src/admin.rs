//! The admin listener: `/healthz` (the process is alive), `/readyz` (it
//! accepts work and its dependencies answer) and `/metrics` (Prometheus),
//! plus any operator-only routes the app adds (the gateway's detailed
//! status).

use std::sync::atomic::Ordering;

use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::serve::Readiness;

pub(crate) async fn serve(
    listener: TcpListener,
    readiness: Readiness,
    app_routes: Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(readiness)
        .merge(app_routes);
    axum::serve(listener, router)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}

async fn ready(State(readiness): State<Readiness>) -> impl IntoResponse {
    if !readiness.accepting.load(Ordering::Acquire) {
        let body = serde_json::json!({ "ready": false, "reason": "shutting down" });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body));
    }
    let results = readiness.run_checks().await;
    let ready = results.iter().all(|(_, r)| r.is_ok());
    let checks: Vec<_> = results
        .into_iter()
        .map(|(name, result)| match result {
            Ok(()) => serde_json::json!({ "name": name, "ok": true }),
            Err(error) => {
                serde_json::json!({ "name": name, "ok": false, "error": error.to_string() })
            }
        })
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({ "ready": ready, "checks": checks })),
    )
}

async fn metrics() -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        telemetry::render_metrics(),
    )
}
