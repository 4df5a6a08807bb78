//! The anomalies page: a tenant's recent anomalous windows, each with its
//! statistics, its score and a small chart of the window's readings drawn
//! as SVG on the server (no script, no chart library: a polyline and the
//! mean, with a text alternative). Results come from ingest's
//! `ListWindowResults`, the readings from `ReadWindow`, both acting for the
//! operator and naming the tenant (an operator asks, so the tenant is
//! explicit in every call).

use askama::Template;
use axum::{
    Extension,
    extract::{Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use contracts::ingest::v1 as pb;
use serde::Deserialize;

use super::{
    ConsoleState,
    guard::Nonce,
    jobs::time,
    pages::{Nav, as_operator, backend_error, page, signed_in, unavailable},
    session::SignedIn,
};
use crate::{
    keys::TenantId,
    storage::{GatewayStore, operators::Role},
};

/// Windows shown per page.
const WINDOWS: u32 = 20;
/// Readings drawn per chart (a window has at most this many points drawn).
const POINTS: u32 = 500;
/// The chart's size in SVG user units.
const WIDTH: f64 = 240.0;
const HEIGHT: f64 = 60.0;

/// A chart of one window's readings.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Chart {
    /// `x,y x,y ...` of the readings in time order.
    pub(super) points: String,
    /// The mean's height.
    pub(super) mean_y: String,
    /// What the chart shows, for screen readers and no-SVG browsers.
    pub(super) summary: String,
}

/// Draws `readings` (seconds into the window, value) over a window
/// `length` seconds long; `None` without readings.
pub(super) fn chart(readings: &[(f64, f64)], length: f64, mean: f64) -> Option<Chart> {
    let (lowest, highest) =
        readings
            .iter()
            .map(|r| r.1)
            .chain([mean])
            .fold(None, |range: Option<(f64, f64)>, v| match range {
                None => Some((v, v)),
                Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
            })?;
    if readings.is_empty() {
        return None;
    }
    let span = if highest > lowest {
        highest - lowest
    } else {
        1.0
    };
    // A margin of 2 units so the line never touches the edge.
    let y = |v: f64| HEIGHT - 2.0 - (v - lowest) / span * (HEIGHT - 4.0);
    let x = |t: f64| (t / length.max(f64::EPSILON)).clamp(0.0, 1.0) * WIDTH;
    let points = readings
        .iter()
        .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
        .collect::<Vec<_>>()
        .join(" ");
    Some(Chart {
        points,
        mean_y: format!("{:.1}", y(mean)),
        summary: format!(
            "{} readings from {} to {}, mean {}",
            readings.len(),
            number(lowest.min(mean)),
            number(highest.max(mean)),
            number(mean)
        ),
    })
}

/// A value with at most four significant decimals.
fn number(value: f64) -> String {
    let text = format!("{value:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text.is_empty() || text == "-" || text == "-0" {
        "0".to_owned()
    } else {
        text.to_owned()
    }
}

/// One anomalous window's row.
struct WindowRow {
    device: String,
    metric: String,
    start: String,
    length: String,
    count: u64,
    mean: String,
    min: String,
    max: String,
    score: String,
    chart: Option<Chart>,
}

#[derive(Template)]
#[template(path = "console/anomalies.html")]
struct AnomaliesPage {
    nonce: String,
    csrf: String,
    username: String,
    role: Role,
    admin: bool,
    tenants: Vec<(String, bool)>,
    tenant: String,
    device: String,
    windows: Vec<WindowRow>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct Filters {
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    device: String,
}

/// The readings of one window as (seconds into it, value).
async fn readings<S>(
    state: &ConsoleState<S>,
    signed: &SignedIn,
    window: &pb::WindowKey,
) -> Result<Vec<(f64, f64)>, tonic::Status> {
    let start = window.window_start.unwrap_or_default();
    let answer = state
        .ingest
        .clone()
        .read_window(as_operator(
            signed,
            pb::ReadWindowRequest {
                window: Some(window.clone()),
                page_size: POINTS,
                page_token: String::new(),
            },
        ))
        .await?
        .into_inner();
    Ok(answer
        .readings
        .iter()
        .map(|r| {
            let at = r.observed_at.unwrap_or_default();
            let seconds =
                (at.seconds - start.seconds) as f64 + f64::from(at.nanos - start.nanos) / 1e9;
            (seconds, r.value)
        })
        .collect())
}

pub(super) async fn show<S: GatewayStore>(
    State(state): State<ConsoleState<S>>,
    Extension(nonce): Extension<Nonce>,
    Query(filters): Query<Filters>,
    headers: HeaderMap,
) -> Response {
    let signed = match signed_in(&state, &headers, Role::Viewer).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let tenants = match state.store.list_tenants().await {
        Ok(tenants) => tenants,
        Err(error) => return unavailable(&error),
    };
    let chosen = if filters.tenant.is_empty() {
        tenants
            .first()
            .map(|t| t.id.to_string())
            .unwrap_or_default()
    } else {
        filters.tenant.clone()
    };
    if !chosen.is_empty() && TenantId::parse(&chosen).is_err() {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("tenant: {chosen:?} is not a tenant id\n"),
        )
            .into_response();
    }
    let mut windows = Vec::new();
    if !chosen.is_empty() {
        let results = match state
            .ingest
            .clone()
            .list_window_results(as_operator(
                &signed,
                pb::ListWindowResultsRequest {
                    tenant_id: chosen.clone(),
                    device_id: filters.device.clone(),
                    anomalous_only: true,
                    page_size: WINDOWS,
                    ..Default::default()
                },
            ))
            .await
        {
            Ok(results) => results.into_inner().results,
            Err(status) => return backend_error("ingest", &status),
        };
        // The charts' readings, fetched together.
        let reads = futures_util::future::join_all(results.iter().map(|result| async {
            match &result.window {
                Some(window) => readings(&state, &signed, window).await.ok(),
                None => None,
            }
        }))
        .await;
        for (result, points) in results.into_iter().zip(reads) {
            let window = result.window.unwrap_or_default();
            let stats = result.statistics.unwrap_or_default();
            let length = window
                .window_length
                .map_or(0.0, |d| d.seconds as f64 + f64::from(d.nanos) / 1e9);
            windows.push(WindowRow {
                chart: points.and_then(|p| chart(&p, length, stats.mean)),
                device: window.device_id,
                metric: window.metric,
                start: time(window.window_start.as_ref()),
                length: super::pages::duration_words(length as i64),
                count: stats.count,
                mean: number(stats.mean),
                min: number(stats.min),
                max: number(stats.max),
                score: format!("{:.3}", result.anomaly_score),
            });
        }
    }
    let nav = Nav::of(&signed);
    page(&AnomaliesPage {
        nonce: nonce.0,
        csrf: nav.csrf,
        username: nav.username,
        role: nav.role,
        admin: nav.admin,
        tenants: tenants
            .iter()
            .map(|t| (t.id.to_string(), t.id.as_str() == chosen))
            .collect(),
        tenant: chosen,
        device: filters.device,
        windows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::pages::{HOSTILE, assert_escaped};

    #[test]
    fn hostile_device_ids_metrics_and_tenants_are_escaped() {
        let h = || HOSTILE.to_owned();
        assert_escaped(&AnomaliesPage {
            nonce: "n".into(),
            csrf: "t".into(),
            username: h(),
            role: Role::Viewer,
            admin: false,
            tenants: vec![(h(), true)],
            tenant: h(),
            device: h(),
            windows: vec![WindowRow {
                device: h(),
                metric: h(),
                start: h(),
                length: h(),
                count: 3,
                mean: h(),
                min: h(),
                max: h(),
                score: h(),
                chart: Some(Chart {
                    points: h(),
                    mean_y: h(),
                    summary: h(),
                }),
            }],
        });
    }

    #[test]
    fn a_chart_spans_its_box_and_says_what_it_shows() {
        let chart = chart(&[(0.0, 1.0), (30.0, 3.0), (60.0, 2.0)], 60.0, 2.0).unwrap();
        assert_eq!(chart.points, "0.0,58.0 120.0,2.0 240.0,30.0");
        assert_eq!(chart.mean_y, "30.0");
        assert_eq!(chart.summary, "3 readings from 1 to 3, mean 2");
        // One flat reading still draws, mid-free of division by zero.
        let flat = super::chart(&[(10.0, 5.0)], 60.0, 5.0).unwrap();
        assert_eq!(flat.points, "40.0,58.0");
        assert_eq!(super::chart(&[], 60.0, 0.0), None);
    }

    #[test]
    fn numbers_keep_four_decimals_at_most() {
        assert_eq!(number(2.0), "2");
        assert_eq!(number(21.456_789), "21.4568");
        assert_eq!(number(-0.000_01), "0");
        assert_eq!(number(-1.5), "-1.5");
    }
}
