//! Renders the process's OpenTelemetry metrics as Prometheus text, so the
//! same instruments feed both `/metrics` and the OTLP exporter.

use std::{
    fmt::Write as _,
    sync::{Arc, OnceLock, Weak},
    time::Duration,
};

use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::{
    error::OTelSdkResult,
    metrics::{
        InstrumentKind, ManualReader, Pipeline, Temporality,
        data::{AggregatedMetrics, Metric, MetricData, ResourceMetrics},
        reader::MetricReader,
    },
};

/// The reader registered with the process's meter provider; `/metrics`
/// collects from it on every scrape.
static READER: OnceLock<Arc<ManualReader>> = OnceLock::new();

/// A cloneable handle on the process-wide [`ManualReader`].
#[derive(Debug, Clone)]
pub(crate) struct PrometheusReader(Arc<ManualReader>);

impl PrometheusReader {
    /// Returns the process-wide reader, creating it on first use.
    pub(crate) fn install() -> Self {
        Self(Arc::clone(READER.get_or_init(|| {
            Arc::new(
                ManualReader::builder()
                    .with_temporality(Temporality::Cumulative)
                    .build(),
            )
        })))
    }
}

impl MetricReader for PrometheusReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline);
    }

    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

/// Prometheus text exposition (format 0.0.4) of every instrument in the
/// process; empty when telemetry was not initialised.
pub fn render_metrics() -> String {
    let mut out = String::new();
    let Some(reader) = READER.get() else {
        return out;
    };
    let mut collected = ResourceMetrics::default();
    if let Err(error) = reader.collect(&mut collected) {
        tracing::debug!(%error, "metrics collection failed");
        return out;
    }
    for scope in collected.scope_metrics() {
        for metric in scope.metrics() {
            render_metric(&mut out, metric);
        }
    }
    out
}

fn render_metric(out: &mut String, metric: &Metric) {
    let name = metric_name(metric.name(), metric.unit());
    match metric.data() {
        AggregatedMetrics::F64(data) => render_data(out, &name, metric.description(), data),
        AggregatedMetrics::U64(data) => render_data(out, &name, metric.description(), data),
        AggregatedMetrics::I64(data) => render_data(out, &name, metric.description(), data),
    }
}

fn render_data<T: Copy + Into<Number>>(
    out: &mut String,
    name: &str,
    help: &str,
    data: &MetricData<T>,
) {
    match data {
        MetricData::Gauge(gauge) => {
            header(out, name, help, "gauge");
            for point in gauge.data_points() {
                sample(
                    out,
                    name,
                    "",
                    point.attributes(),
                    None,
                    point.value().into(),
                );
            }
        }
        MetricData::Sum(sum) => {
            let (name, kind) = if sum.is_monotonic() {
                (format!("{name}_total"), "counter")
            } else {
                (name.to_owned(), "gauge")
            };
            header(out, &name, help, kind);
            for point in sum.data_points() {
                sample(
                    out,
                    &name,
                    "",
                    point.attributes(),
                    None,
                    point.value().into(),
                );
            }
        }
        MetricData::Histogram(histogram) => {
            header(out, name, help, "histogram");
            for point in histogram.data_points() {
                let mut cumulative = 0u64;
                let counts: Vec<u64> = point.bucket_counts().collect();
                for (bound, count) in point.bounds().zip(counts.iter()) {
                    cumulative += count;
                    let le = KeyValue::new("le", bound.to_string());
                    sample(
                        out,
                        name,
                        "_bucket",
                        point.attributes(),
                        Some(&le),
                        Number::U(cumulative),
                    );
                }
                let inf = KeyValue::new("le", "+Inf");
                sample(
                    out,
                    name,
                    "_bucket",
                    point.attributes(),
                    Some(&inf),
                    Number::U(point.count()),
                );
                sample(
                    out,
                    name,
                    "_sum",
                    point.attributes(),
                    None,
                    point.sum().into(),
                );
                sample(
                    out,
                    name,
                    "_count",
                    point.attributes(),
                    None,
                    Number::U(point.count()),
                );
            }
        }
        // Exponential histograms are not configured anywhere in the platform.
        MetricData::ExponentialHistogram(_) => {}
    }
}

/// A sample value in any of the SDK's number types.
#[derive(Debug, Clone, Copy)]
enum Number {
    F(f64),
    U(u64),
    I(i64),
}

impl From<f64> for Number {
    fn from(value: f64) -> Self {
        Self::F(value)
    }
}
impl From<u64> for Number {
    fn from(value: u64) -> Self {
        Self::U(value)
    }
}
impl From<i64> for Number {
    fn from(value: i64) -> Self {
        Self::I(value)
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    if !help.is_empty() {
        let _ = writeln!(
            out,
            "# HELP {name} {}",
            help.replace('\\', "\\\\").replace('\n', "\\n")
        );
    }
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample<'a>(
    out: &mut String,
    name: &str,
    suffix: &str,
    attributes: impl Iterator<Item = &'a KeyValue>,
    extra: Option<&'a KeyValue>,
    value: Number,
) {
    let _ = write!(out, "{name}{suffix}");
    let mut labels = attributes.chain(extra).peekable();
    if labels.peek().is_some() {
        out.push('{');
        for (i, label) in labels.enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(
                out,
                "{}=\"{}\"",
                sanitize(label.key.as_str()),
                escape(&label.value)
            );
        }
        out.push('}');
    }
    let _ = match value {
        Number::F(v) if v.is_nan() => writeln!(out, " NaN"),
        Number::F(v) if v.is_infinite() => writeln!(out, " {}Inf", if v > 0.0 { "+" } else { "-" }),
        Number::F(v) => writeln!(out, " {v}"),
        Number::U(v) => writeln!(out, " {v}"),
        Number::I(v) => writeln!(out, " {v}"),
    };
}

/// `http.server.request.duration` with unit `s` becomes
/// `http_server_request_duration_seconds`.
fn metric_name(name: &str, unit: &str) -> String {
    let mut name = sanitize(name);
    let suffix = match unit {
        "s" => "_seconds",
        "ms" => "_milliseconds",
        "By" => "_bytes",
        _ => "",
    };
    if !suffix.is_empty() && !name.ends_with(suffix) {
        name.push_str(suffix);
    }
    name
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn escape(value: &Value) -> String {
    value
        .as_str()
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        assert_eq!(
            metric_name("http.server.request.duration", "s"),
            "http_server_request_duration_seconds"
        );
        assert_eq!(metric_name("queue_wait_seconds", "s"), "queue_wait_seconds");
        assert_eq!(metric_name("jobs.completed", "{job}"), "jobs_completed");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(&Value::from("a\"b\\c\nd")), "a\\\"b\\\\c\\nd");
    }
}
