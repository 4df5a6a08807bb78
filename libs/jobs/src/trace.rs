//! Carries the enqueuer's trace into the job, so the span of every attempt
//! continues the trace of the request that enqueued it.

use std::collections::HashMap;

/// Key under `meta` holding the W3C trace context.
const TRACE_KEY: &str = "trace";

/// The current span's trace context, read once per insert call.
pub(crate) fn current_carrier() -> HashMap<String, String> {
    telemetry::current_trace_carrier()
}

/// `meta` plus the trace context in `carrier` (if any).
pub(crate) fn meta_with_trace(
    meta: &serde_json::Value,
    carrier: &HashMap<String, String>,
) -> serde_json::Value {
    let mut meta = meta.clone();
    if !carrier.is_empty()
        && let Some(object) = meta.as_object_mut()
    {
        object.insert(TRACE_KEY.to_owned(), serde_json::json!(carrier));
    }
    meta
}

/// Makes `span` a child of the trace stored in `meta`, if there is one.
pub(crate) fn continue_trace(span: &tracing::Span, meta: &serde_json::Value) {
    let Some(stored) = meta.get(TRACE_KEY).and_then(|c| c.as_object()) else {
        return;
    };
    let carrier: HashMap<String, String> = stored
        .iter()
        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
        .collect();
    telemetry::continue_trace(span, &carrier);
}
