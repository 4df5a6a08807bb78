//! In-memory span capture, so tests in any crate can assert on traces
//! without an OTLP collector and without naming the SDK themselves.

use std::sync::OnceLock;

use opentelemetry::{global, trace::TracerProvider as _};
use opentelemetry_sdk::{
    propagation::TraceContextPropagator,
    trace::{InMemorySpanExporter, SdkTracerProvider},
};
use tracing_subscriber::{layer::SubscriberExt as _, util::SubscriberInitExt as _};

/// A finished span as a test sees it.
#[derive(Debug, Clone)]
pub struct CapturedSpan {
    /// Span name (`otel.name` when set).
    pub name: String,
    /// Hex trace id.
    pub trace_id: String,
    /// Hex span id.
    pub span_id: String,
    /// Hex id of the parent span; all zeros for a root.
    pub parent_span_id: String,
    /// "Server", "Client" or "Internal".
    pub kind: String,
    /// Hex trace ids of the span's links.
    pub linked_trace_ids: Vec<String>,
    /// The span's attributes, values as text.
    pub attributes: Vec<(String, String)>,
    /// Whether the span ended with an error status.
    pub error: bool,
}

/// Handle on the process-wide in-memory exporter.
#[derive(Debug, Clone)]
pub struct SpanCapture {
    exporter: InMemorySpanExporter,
    provider: SdkTracerProvider,
}

static CAPTURE: OnceLock<SpanCapture> = OnceLock::new();

/// Installs (once per process) a global subscriber and tracer provider that
/// keep every finished span in memory, plus the W3C propagator.
pub fn capture_spans() -> SpanCapture {
    CAPTURE
        .get_or_init(|| {
            let exporter = InMemorySpanExporter::default();
            let provider = SdkTracerProvider::builder()
                .with_simple_exporter(exporter.clone())
                .build();
            let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("tests"));
            // Another subscriber may already be installed by the test binary;
            // then spans are not captured and the caller's assertions say so.
            let _ = tracing_subscriber::registry()
                .with(tracing_subscriber::EnvFilter::new("info"))
                .with(layer)
                .try_init();
            global::set_text_map_propagator(TraceContextPropagator::new());
            global::set_tracer_provider(provider.clone());
            SpanCapture { exporter, provider }
        })
        .clone()
}

impl SpanCapture {
    /// Every span finished so far in this process.
    pub fn finished_spans(&self) -> Vec<CapturedSpan> {
        let _ = self.provider.force_flush();
        self.exporter
            .get_finished_spans()
            .unwrap_or_default()
            .into_iter()
            .map(|span| CapturedSpan {
                name: span.name.to_string(),
                trace_id: span.span_context.trace_id().to_string(),
                span_id: span.span_context.span_id().to_string(),
                parent_span_id: span.parent_span_id.to_string(),
                kind: format!("{:?}", span.span_kind),
                linked_trace_ids: span
                    .links
                    .iter()
                    .map(|link| link.span_context.trace_id().to_string())
                    .collect(),
                attributes: span
                    .attributes
                    .iter()
                    .map(|kv| (kv.key.to_string(), kv.value.to_string()))
                    .collect(),
                error: matches!(span.status, opentelemetry::trace::Status::Error { .. }),
            })
            .collect()
    }
}
