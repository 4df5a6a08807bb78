//! Trace context as a plain map, for hops that are not HTTP: a job row,
//! a NATS message header, a webhook body.

use std::collections::HashMap;

use opentelemetry::{global, propagation::Extractor};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The current span's W3C trace context (`traceparent`, `tracestate`);
/// empty when there is no active trace.
pub fn current_trace_carrier() -> HashMap<String, String> {
    let mut carrier = HashMap::new();
    let context = tracing::Span::current().context();
    global::get_text_map_propagator(|p| p.inject_context(&context, &mut carrier));
    carrier
}

/// Makes `span` continue the trace in `carrier` (as its child); does
/// nothing for an empty or malformed carrier.
pub fn continue_trace(span: &tracing::Span, carrier: &HashMap<String, String>) {
    if carrier.is_empty() {
        return;
    }
    let context = global::get_text_map_propagator(|p| p.extract(&MapExtractor(carrier)));
    let _ = span.set_parent(context);
}

/// Adds a link from `span` to the trace in `carrier`: a batch span links
/// the traces of the messages it holds. Does nothing for an empty carrier.
pub fn link_trace(span: &tracing::Span, carrier: &HashMap<String, String>) {
    use opentelemetry::trace::TraceContextExt as _;
    if carrier.is_empty() {
        return;
    }
    let context = global::get_text_map_propagator(|p| p.extract(&MapExtractor(carrier)));
    let linked = context.span().span_context().clone();
    if linked.is_valid() {
        span.add_link(linked);
    }
}

struct MapExtractor<'a>(&'a HashMap<String, String>);

impl Extractor for MapExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}
