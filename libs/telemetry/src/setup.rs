//! Process-wide set-up and orderly shutdown of logs, traces and metrics.

use std::{env, time::Duration};

use opentelemetry::{KeyValue, global, trace::TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::{
    Resource, metrics::SdkMeterProvider, propagation::TraceContextPropagator,
    trace::SdkTracerProvider,
};
use tracing_subscriber::{
    EnvFilter, Layer as _, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

use crate::prometheus::PrometheusReader;

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for log shippers in production.
    Json,
    /// Human-readable lines, for a developer's terminal.
    Pretty,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "json" => Ok(Self::Json),
            "pretty" => Ok(Self::Pretty),
            other => Err(format!("expected \"json\" or \"pretty\", got {other:?}")),
        }
    }
}

/// Who is emitting telemetry; becomes the OpenTelemetry resource.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `service.name`, e.g. "ingest".
    pub service_name: &'static str,
    /// `service.version`.
    pub service_version: &'static str,
    /// `vcs.ref.head.revision`: the git revision the binary was built from.
    pub git_revision: &'static str,
    /// `build.time` (RFC 3339): when the binary was built, so a release's
    /// artefacts can be told apart from a developer's build.
    pub build_time: &'static str,
    /// `service.instance.id`: unique per boot.
    pub instance_id: String,
    /// Log line format.
    pub log_format: LogFormat,
}

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `RUST_LOG` does not parse as a filter.
    #[error("RUST_LOG is not a valid filter: {0}")]
    InvalidFilter(String),
    /// The OTLP exporter could not be built from the `OTEL_*` variables.
    #[error("OTLP exporter for {signal}: {message}")]
    Exporter {
        /// "traces" or "metrics".
        signal: &'static str,
        /// What the exporter reported.
        message: String,
    },
    /// A TLS setting for the OTLP exporter is missing or unreadable.
    #[error("{variable}: {problem}")]
    ExporterTls {
        /// The `OTEL_EXPORTER_OTLP_*` variable at fault.
        variable: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// A global subscriber was already installed in this process.
    #[error("telemetry is already initialised in this process")]
    AlreadyInitialised,
}

/// Owns the providers; [`Telemetry::shutdown`] flushes them in order.
#[derive(Debug)]
pub struct Telemetry {
    tracer_provider: SdkTracerProvider,
    meter_provider: SdkMeterProvider,
    exporting: bool,
}

impl Telemetry {
    /// Whether spans and metrics leave the process over OTLP.
    pub fn is_exporting(&self) -> bool {
        self.exporting
    }

    /// Flushes and stops exporters: traces first (they reference the
    /// request that produced the last metrics), then metrics.
    pub fn shutdown(self) {
        if let Err(error) = self.tracer_provider.shutdown() {
            tracing::warn!(%error, "flushing traces at shutdown failed");
        }
        if let Err(error) = self.meter_provider.shutdown() {
            tracing::warn!(%error, "flushing metrics at shutdown failed");
        }
    }
}

/// Colour when stderr is a terminal, or when a parent that relays our
/// output to a terminal asks for it (`CLICOLOR_FORCE=1`); never with
/// `NO_COLOR` set.
fn use_colour() -> bool {
    use std::io::IsTerminal as _;
    if env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()) {
        return false;
    }
    env::var_os("CLICOLOR_FORCE").is_some_and(|v| v != "0") || std::io::stderr().is_terminal()
}

/// Keeps the audit log's events whatever `RUST_LOG` says of others.
const AUDIT_DIRECTIVE: &str = "audit=info";

/// TLS for an `https://` OTLP endpoint, from the standard variables:
/// `OTEL_EXPORTER_OTLP_CERTIFICATE` (the collector's CA, required: no
/// system roots are built in), and `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`
/// with `OTEL_EXPORTER_OTLP_CLIENT_KEY` for a collector that verifies
/// clients (a platform service can present its own certificate). `None`
/// for `http://` endpoints.
fn otlp_tls() -> Result<Option<tonic::transport::ClientTlsConfig>, TelemetryError> {
    let endpoint = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .into_iter()
    .find_map(|name| env::var(name).ok().filter(|v| !v.trim().is_empty()))
    .unwrap_or_default();
    let read = |variable: &'static str| -> Result<Option<Vec<u8>>, TelemetryError> {
        match env::var_os(variable).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(path) => std::fs::read(&path)
                .map(Some)
                .map_err(|e| TelemetryError::ExporterTls {
                    variable,
                    problem: format!("cannot read {}: {e}", path.to_string_lossy()),
                }),
        }
    };
    let ca = read("OTEL_EXPORTER_OTLP_CERTIFICATE")?;
    let client = (
        read("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE")?,
        read("OTEL_EXPORTER_OTLP_CLIENT_KEY")?,
    );
    if !endpoint.trim_start().starts_with("https://") {
        return Ok(None);
    }
    let Some(ca) = ca else {
        return Err(TelemetryError::ExporterTls {
            variable: "OTEL_EXPORTER_OTLP_CERTIFICATE",
            problem: "an https:// OTLP endpoint needs the collector's CA certificate (a PEM file)"
                .into(),
        });
    };
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca));
    match client {
        (Some(cert), Some(key)) => {
            tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        (None, None) => {}
        (Some(_), None) | (None, Some(_)) => {
            return Err(TelemetryError::ExporterTls {
                variable: "OTEL_EXPORTER_OTLP_CLIENT_KEY",
                problem: "set both OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY, or neither".into(),
            });
        }
    }
    Ok(Some(tls))
}

/// The `build_info` gauge, always 1, labelled with the build: dashboards
/// show which release each replica runs and alerts can join on it, the
/// Prometheus convention (`go_build_info`, `prometheus_build_info`).
fn record_build_info(config: &TelemetryConfig) {
    let attributes = [
        KeyValue::new("version", config.service_version),
        KeyValue::new("revision", config.git_revision),
        KeyValue::new("build_time", config.build_time),
    ];
    // The callback stays registered with the meter provider for the
    // process's life; the instrument handle itself need not be kept.
    let _gauge = crate::meter()
        .u64_observable_gauge("build_info")
        .with_description("The running build: version, git revision and build time (always 1)")
        .with_callback(move |observer| observer.observe(1, &attributes))
        .build();
}

/// tokio-console's layer, when built with the `tokio-console` feature (and
/// `--cfg tokio_unstable`): serves the console on `TOKIO_CONSOLE_BIND`
/// (default 127.0.0.1:6669) from a thread of its own.
#[cfg(feature = "tokio-console")]
fn console_layer<S>() -> Option<impl tracing_subscriber::Layer<S>>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    Some(
        console_subscriber::ConsoleLayer::builder()
            .with_default_env()
            .spawn(),
    )
}

/// Without the `tokio-console` feature: no layer.
#[cfg(not(feature = "tokio-console"))]
fn console_layer() -> Option<tracing_subscriber::layer::Identity> {
    None
}

/// Installs the global subscriber, tracer and meter providers and the W3C
/// propagator. Call once, from a binary's `main`, before serving.
pub fn init(config: TelemetryConfig) -> Result<Telemetry, TelemetryError> {
    let resource = Resource::builder()
        .with_service_name(config.service_name)
        .with_attributes([
            KeyValue::new("service.version", config.service_version),
            KeyValue::new("service.instance.id", config.instance_id.clone()),
            KeyValue::new("vcs.ref.head.revision", config.git_revision),
            KeyValue::new("build.time", config.build_time),
        ])
        .build();
    let exporting = env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some_and(|v| !v.is_empty())
        || env::var_os("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some_and(|v| !v.is_empty());

    let mut tracer_builder = SdkTracerProvider::builder().with_resource(resource.clone());
    let mut meter_builder = SdkMeterProvider::builder()
        .with_resource(resource)
        .with_reader(PrometheusReader::install());
    if exporting {
        // The exporters read OTEL_EXPORTER_OTLP_* themselves (endpoint,
        // headers, timeout, compression), so operators use standard names.
        let tls = otlp_tls()?;
        let mut spans = opentelemetry_otlp::SpanExporter::builder().with_tonic();
        if let Some(tls) = &tls {
            spans = spans.with_tls_config(tls.clone());
        }
        let spans = spans.build().map_err(|e| TelemetryError::Exporter {
            signal: "traces",
            message: e.to_string(),
        })?;
        tracer_builder = tracer_builder.with_batch_exporter(spans);
        let mut metrics = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .with_timeout(Duration::from_secs(10));
        if let Some(tls) = tls {
            metrics = metrics.with_tls_config(tls);
        }
        let metrics = metrics.build().map_err(|e| TelemetryError::Exporter {
            signal: "metrics",
            message: e.to_string(),
        })?;
        meter_builder = meter_builder.with_periodic_exporter(metrics);
    }
    let tracer_provider = tracer_builder.build();
    let meter_provider = meter_builder.build();

    let filter = EnvFilter::try_from_default_env().or_else(|error| match env::var("RUST_LOG") {
        Ok(_) => Err(TelemetryError::InvalidFilter(error.to_string())),
        Err(_) => Ok(EnvFilter::new("info")),
    })?;
    // The security audit stream (target `audit`) is kept at any log level
    // unless RUST_LOG names it.
    let filter = if env::var("RUST_LOG").is_ok_and(|raw| raw.contains("audit")) {
        filter
    } else {
        filter.add_directive(AUDIT_DIRECTIVE.parse().map_err(
            |e: tracing_subscriber::filter::ParseError| {
                TelemetryError::InvalidFilter(e.to_string())
            },
        )?)
    };
    let log_layer = match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_ansi(use_colour())
            .with_writer(std::io::stderr)
            .boxed(),
    };
    // Spans become OpenTelemetry spans only when they are exported: with no
    // OTLP endpoint the layer would build (and drop) one per request and per
    // job attempt, about a tenth of the worker's CPU in a no-op burn-down
    // (docs/profiling.md). Without it, trace context is not propagated
    // either: there is no trace to continue.
    let otel_layer = exporting.then(|| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer_provider.tracer(config.service_name))
            .with_tracked_inactivity(false)
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });
    // RUST_LOG filters the log only: spans go to OTLP at info and above
    // whatever the log level, so `RUST_LOG=warn` does not switch tracing
    // off.
    tracing_subscriber::registry()
        .with(console_layer())
        .with(log_layer.with_filter(filter))
        .with(otel_layer)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInitialised)?;

    global::set_text_map_propagator(TraceContextPropagator::new());
    global::set_tracer_provider(tracer_provider.clone());
    global::set_meter_provider(meter_provider.clone());
    record_build_info(&config);
    Ok(Telemetry {
        tracer_provider,
        meter_provider,
        exporting,
    })
}
