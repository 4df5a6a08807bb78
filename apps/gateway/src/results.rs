//! `GET /v1/results`: the key's tenant's window results (statistics and
//! anomaly scores), newest first, with filters and cursor pagination.

use axum::{
    Extension, Json,
    extract::{Query, State},
};
use chrono::{DateTime, Utc};
use contracts::ingest::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::{
    auth::with_scope,
    problem::{ApiError, Problem},
    routes::AppState,
    storage::GatewayStore,
    tenancy::Authenticated,
    timestamps::{rfc3339, timestamp},
};

/// The most results one page may hold.
pub const MAX_PAGE: u32 = 1_000;

/// Query parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ResultsQuery {
    device_id: Option<String>,
    metric: Option<String>,
    /// Only windows the model called anomalous.
    #[serde(default)]
    anomalous_only: bool,
    /// RFC 3339: only windows starting at or after it.
    #[param(format = DateTime)]
    since: Option<String>,
    /// 1 to 1,000; 100 by default.
    #[param(minimum = 1, maximum = 1000)]
    page_size: Option<u32>,
    /// `next_page_token` of the previous page.
    page_token: Option<String>,
}

/// One window's result.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ResultOut {
    device_id: String,
    metric: String,
    window_start: Option<String>,
    window_seconds: Option<i64>,
    count: u64,
    mean: f64,
    min: f64,
    max: f64,
    p50: f64,
    p95: f64,
    p99: f64,
    anomaly_score: f64,
    anomalous: bool,
    model_version: String,
}

/// One page.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ResultsOut {
    results: Vec<ResultOut>,
    /// Pass as `page_token` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_page_token: Option<String>,
}

/// Lists the key's tenant's window results, newest first. Scope
/// `results:read`.
#[utoipa::path(
    get,
    path = "/v1/results",
    tag = "results",
    params(ResultsQuery),
    responses(
        (status = 200, description = "One page of results", body = ResultsOut),
        (status = 422, description = "A query parameter is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No key, or a key that is refused", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks the route's scope, or the request names another tenant", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "A rate limit is used up; see Retry-After and RateLimit", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "A fault on our side (logged)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backend is unavailable or the gateway sheds load; retry after Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "The request took longer than the gateway's deadline", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn list<S: GatewayStore>(
    State(state): State<AppState<S>>,
    Extension(caller): Extension<Authenticated>,
    query: Result<Query<ResultsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ResultsOut>, ApiError> {
    let caller = with_scope(&caller, "results:read")?;
    let Query(query) =
        query.map_err(|rejection| ApiError::invalid("query", rejection.body_text()))?;
    let mut errors = Vec::new();
    let page_size = query.page_size.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&page_size) {
        errors.push(crate::problem::FieldError {
            field: "page_size".into(),
            problem: format!("must be 1 to {MAX_PAGE}"),
        });
    }
    let since = match query.since.as_deref().map(DateTime::parse_from_rfc3339) {
        None => None,
        Some(Ok(at)) => Some(at.with_timezone(&Utc)),
        Some(Err(_)) => {
            errors.push(crate::problem::FieldError {
                field: "since".into(),
                problem: "must be an RFC 3339 time".into(),
            });
            None
        }
    };
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    let mut request = tonic::Request::new(pb::ListWindowResultsRequest {
        tenant_id: caller.tenant.to_string(),
        device_id: query.device_id.unwrap_or_default(),
        metric: query.metric.unwrap_or_default(),
        anomalous_only: query.anomalous_only,
        since: since.map(timestamp),
        page_size,
        page_token: query.page_token.unwrap_or_default(),
    });
    crate::readings::act_for_tenant(&mut request, caller)?;
    let page = state
        .ingest
        .clone()
        .list_window_results(request)
        .await
        .map_err(crate::readings::from_ingest)?
        .into_inner();
    Ok(Json(ResultsOut {
        results: page
            .results
            .into_iter()
            .map(|r| {
                let window = r.window.unwrap_or_default();
                let stats = r.statistics.unwrap_or_default();
                ResultOut {
                    device_id: window.device_id,
                    metric: window.metric,
                    window_start: rfc3339(window.window_start),
                    window_seconds: window.window_length.map(|d| d.seconds),
                    count: stats.count,
                    mean: stats.mean,
                    min: stats.min,
                    max: stats.max,
                    p50: stats.p50,
                    p95: stats.p95,
                    p99: stats.p99,
                    anomaly_score: r.anomaly_score,
                    anomalous: r.anomalous,
                    model_version: r.model_version,
                }
            })
            .collect(),
        next_page_token: Some(page.next_page_token).filter(|t| !t.is_empty()),
    }))
}
