//! The pipeline page, as Broadway Dashboard shows a pipeline: each stage's
//! messages in, out and failed with its current rate and in-flight count,
//! the bytes held against the pipeline's ceiling, and the readings refused
//! as invalid. From ingest's `GetPipelineStats`, acting for the operator.

use askama::Template;
use axum::{Extension, extract::State, http::HeaderMap, response::Response};
use contracts::ingest::v1 as pb;

use super::{
    ConsoleState,
    guard::Nonce,
    pages::{Nav, as_operator, backend_error, page, signed_in},
};
use crate::storage::{GatewayStore, operators::Role};

/// One stage's row.
struct StageRow {
    stage: String,
    messages_in: u64,
    messages_out: u64,
    failed: u64,
    in_flight: u64,
    /// In, out and failed per second over the last minute.
    in_rate: String,
    per_second: String,
    failed_rate: String,
    /// The sink's mean batch against its limit (empty for other stages).
    batches: String,
}

#[derive(Template)]
#[template(path = "console/pipeline.html")]
struct PipelinePage {
    nonce: String,
    csrf: String,
    username: String,
    role: Role,
    admin: bool,
    stages: Vec<StageRow>,
    bytes: u64,
    bytes_limit: u64,
    bytes_share: String,
    messages: u64,
    messages_limit: u64,
    messages_share: String,
    dead_letters: u64,
}

/// `bytes` as a share of `limit`, for people (`12.5%`).
fn share(bytes: u64, limit: u64) -> String {
    if limit == 0 {
        return "no ceiling".to_owned();
    }
    format!("{:.1}%", bytes as f64 * 100.0 / limit as f64)
}

pub(super) async fn show<S: GatewayStore>(
    State(state): State<ConsoleState<S>>,
    Extension(nonce): Extension<Nonce>,
    headers: HeaderMap,
) -> Response {
    let signed = match signed_in(&state, &headers, Role::Viewer).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let stats = match state
        .ingest
        .clone()
        .get_pipeline_stats(as_operator(&signed, pb::GetPipelineStatsRequest {}))
        .await
    {
        Ok(stats) => stats.into_inner(),
        Err(status) => return backend_error("ingest", &status),
    };
    let nav = Nav::of(&signed);
    page(&PipelinePage {
        nonce: nonce.0,
        csrf: nav.csrf,
        username: nav.username,
        role: nav.role,
        admin: nav.admin,
        stages: stats
            .stages
            .into_iter()
            .map(|s| StageRow {
                stage: s.stage,
                messages_in: s.messages_in,
                messages_out: s.messages_out,
                failed: s.messages_failed,
                in_flight: s.in_flight,
                in_rate: format!("{:.1}", s.in_per_second),
                per_second: format!("{:.1}", s.messages_per_second),
                failed_rate: format!("{:.1}", s.failed_per_second),
                batches: if s.batch_size_limit == 0 {
                    String::new()
                } else {
                    format!(
                        "{} batches, {:.1} of at most {} per batch",
                        s.batches, s.mean_batch_size, s.batch_size_limit
                    )
                },
            })
            .collect(),
        bytes_share: share(stats.in_flight_bytes, stats.in_flight_bytes_limit),
        messages_share: share(stats.in_flight, stats.in_flight_limit),
        messages: stats.in_flight,
        messages_limit: stats.in_flight_limit,
        bytes: stats.in_flight_bytes,
        bytes_limit: stats.in_flight_bytes_limit,
        dead_letters: stats.dead_letters,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_share_of_the_ceiling_reads_as_a_percentage() {
        assert_eq!(super::share(1, 8), "12.5%");
        assert_eq!(super::share(0, 1024), "0.0%");
        assert_eq!(super::share(5, 0), "no ceiling");
    }
}
