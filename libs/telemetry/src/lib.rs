//! Logs, traces and metrics for every platform service.
//!
//! One call, [`init`], sets up `tracing` (JSON logs in production, readable
//! logs in development, `RUST_LOG` honoured), OpenTelemetry traces and metrics
//! exported over OTLP when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` is set,
//! and a Prometheus text rendering of the same metrics for `/metrics`.
//! [`ServerTraceLayer`] and [`ClientTraceLayer`] carry W3C `traceparent`
//! across every HTTP and gRPC hop and record request metrics.
//!
//! Architecture invariant: this is the only crate that names the OpenTelemetry
//! SDK or an exporter; other crates use `tracing` and the `opentelemetry` API.
//! It knows nothing about the apps, their config or their protocols beyond
//! HTTP and gRPC framing.

mod carrier;
mod http_layer;
mod prometheus;
mod setup;
#[cfg(feature = "testing")]
pub mod testing;

pub use carrier::{continue_trace, current_trace_carrier, link_trace};
pub use http_layer::{
    ClientTraceLayer, ClientTraceService, RequestTotals, ServerTraceLayer, ServerTraceService,
    request_totals,
};
pub use prometheus::render_metrics;
pub use setup::{LogFormat, Telemetry, TelemetryConfig, TelemetryError, init};

/// Meter for instruments owned by platform code (not by a single app).
pub fn meter() -> opentelemetry::metrics::Meter {
    opentelemetry::global::meter("platform")
}
