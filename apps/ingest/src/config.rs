//! The ingest app's settings, read from `INGEST_*` environment variables.

use std::{net::SocketAddr, time::Duration};

use pipeline::PipelineConfig;
use service_runtime::{CommonConfig, DatabaseUrl, EnvReader};

use crate::{reading::Limits, window::Windowing};

/// Everything the ingest app can be told at start-up.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `INGEST_GRPC_ADDR`: where the gRPC API listens.
    pub grpc_addr: SocketAddr,
    /// `INGEST_DATABASE_URL`: `postgres://...` in production, or
    /// `sqlite://path` (the embedded default, shared with the worker).
    pub database_url: DatabaseUrl,
    /// `INGEST_MIGRATE_DATABASE_URL`: on PostgreSQL, the migrator credential
    /// that runs migrations and creates and grants this app's role; the
    /// app itself then connects with `INGEST_DATABASE_URL`, as a member of
    /// that role only. Unset: one credential does both (development).
    pub migrate_database_url: Option<DatabaseUrl>,
    /// `INGEST_MIGRATE_AT_START` (default true): false when a migrations
    /// Job migrates (see `EnvReader::migrate_at_start`); the app then waits
    /// for its schema instead.
    pub migrate_at_start: bool,
    /// `INGEST_DATABASE_POOL`: connections to the database.
    pub database_pool: u32,
    /// `INGEST_WINDOW` and `INGEST_ALLOWED_LATENESS`: aggregation windows.
    pub windowing: Windowing,
    /// Validation bounds (defaults; not configurable yet).
    pub limits: Limits,
    /// `INGEST_PROCESSORS`, `INGEST_BATCH_SIZE`, `INGEST_BATCH_TIMEOUT`,
    /// `INGEST_SINK_CONCURRENCY`, `INGEST_MAX_IN_FLIGHT`,
    /// `INGEST_MAX_IN_FLIGHT_BYTES`: the pipeline's shape and bounds.
    pub pipeline: PipelineConfig,
    /// `INGEST_QUEUE_BYTES`: published readings waiting to enter the
    /// pipeline; beyond it unary publishes get `RESOURCE_EXHAUSTED` and
    /// streams are slowed by flow control.
    pub queue_bytes: u32,
    /// `INGEST_MAX_BATCH_READINGS`: most readings in one published batch.
    pub max_batch_readings: usize,
    /// `INGEST_NATS_*`: the JetStream source, off unless `INGEST_NATS_URL`
    /// is set.
    pub nats: Option<NatsConfig>,
    /// Admin port, shutdown and logging settings.
    pub common: CommonConfig,
}

/// Where and how to consume readings from NATS JetStream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// `INGEST_NATS_URL`, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// `INGEST_NATS_STREAM`: the stream (created if missing).
    pub stream: String,
    /// `INGEST_NATS_SUBJECTS`: the stream's subjects, comma-separated, each
    /// `<prefix>.>`; the token after the prefix is the tenant.
    pub subjects: Vec<String>,
    /// `INGEST_NATS_CONSUMER`: the durable pull consumer's name.
    pub consumer: String,
    /// `INGEST_NATS_ACK_WAIT`: redelivery after this long without an ack;
    /// longer than the shutdown grace, so a drain finishes first.
    pub ack_wait: Duration,
    /// `INGEST_NATS_NAK_DELAY`: redelivery delay after a transient failure.
    pub nak_delay: Duration,
    /// TLS to the server, required when the URL starts with `tls://`.
    pub tls: Option<NatsTls>,
}

/// TLS to NATS: whom to trust, and the certificate ingest presents (so a
/// server with `verify: true` knows it by its platform certificate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsTls {
    /// `INGEST_NATS_CA`: the CA that signed the server's certificate;
    /// defaults to the platform CA (`INGEST_TLS_CA`).
    pub ca: std::path::PathBuf,
    /// This app's certificate and key under mutual TLS (`INGEST_TLS_CERT`,
    /// `INGEST_TLS_KEY`); none on plaintext.
    pub client: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl Config {
    /// Prefix of every variable this app reads.
    pub const ENV_PREFIX: &'static str = "INGEST_";

    /// Reads the settings, recording every problem in `env`.
    pub fn from_env(env: &mut EnvReader) -> Self {
        let defaults = PipelineConfig::default();
        let window = env.get_or("WINDOW", Duration::from_secs(60));
        let lateness = env.get_or("ALLOWED_LATENESS", Duration::from_secs(10));
        let windowing = Windowing {
            length: chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX),
            allowed_lateness: chrono::Duration::from_std(lateness).unwrap_or(chrono::Duration::MAX),
            ..Windowing::default()
        };
        if window < Duration::from_secs(1) || window > Duration::from_secs(86_400) {
            env.reject("WINDOW", "must be between 1s and 24h");
        }
        if lateness > window.saturating_mul(10) {
            env.reject("ALLOWED_LATENESS", "must be at most 10 windows");
        }
        let pipeline = PipelineConfig {
            processors: env.get_or("PROCESSORS", defaults.processors),
            batch_size: env.get_or("BATCH_SIZE", 5_000),
            batch_timeout: env.get_or("BATCH_TIMEOUT", defaults.batch_timeout),
            batch_processors: env.get_or("SINK_CONCURRENCY", defaults.batch_processors),
            max_in_flight: env.get_or("MAX_IN_FLIGHT", defaults.max_in_flight),
            max_in_flight_bytes: env.get_or("MAX_IN_FLIGHT_BYTES", 32 * 1024 * 1024),
            max_demand: 2_000,
            ..defaults
        };
        if let Err(problem) = pipeline.validate() {
            // The variable that sets the setting at fault.
            let variable = match problem.setting() {
                "processors" => "PROCESSORS",
                "batch_size" => "BATCH_SIZE",
                "batch_timeout" => "BATCH_TIMEOUT",
                "batch_processors" => "SINK_CONCURRENCY",
                "max_in_flight_bytes" => "MAX_IN_FLIGHT_BYTES",
                _ => "MAX_IN_FLIGHT",
            };
            env.reject(variable, problem.to_string());
        }
        let queue_bytes: u32 = env.get_or("QUEUE_BYTES", 16 * 1024 * 1024);
        if queue_bytes < 1024 * 1024 {
            env.reject(
                "QUEUE_BYTES",
                "must be at least 1 MiB (one request's worth)",
            );
        }
        let max_batch_readings: usize = env.get_or("MAX_BATCH_READINGS", 10_000);
        if max_batch_readings == 0 {
            env.reject("MAX_BATCH_READINGS", "must be at least 1");
        }
        let common = CommonConfig::from_env(env, 9182);
        // Read every NATS setting even without a URL, so a stray one is not
        // reported as unknown and a typo in it still is.
        let url = env.get::<String>("NATS_URL");
        let nats = NatsConfig {
            url: url.clone().unwrap_or_default(),
            stream: env.get_or("NATS_STREAM", "READINGS".to_owned()),
            subjects: env
                .get_or("NATS_SUBJECTS", "readings.>".to_owned())
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            consumer: env.get_or("NATS_CONSUMER", "ingest".to_owned()),
            ack_wait: env.get_or("NATS_ACK_WAIT", Duration::from_secs(30)),
            nak_delay: env.get_or("NATS_NAK_DELAY", Duration::from_secs(1)),
            tls: None,
        };
        let nats = url.is_some().then_some(nats);
        let nats_ca = env.get::<std::path::PathBuf>("NATS_CA");
        let nats = nats.map(|mut nats| {
            nats.tls = nats_tls(env, &nats.url, nats_ca, &common.transport);
            nats
        });
        if let Some(nats) = &nats {
            if nats.ack_wait <= common.shutdown_grace {
                env.reject(
                    "NATS_ACK_WAIT",
                    "must be longer than SHUTDOWN_GRACE, so a drain acks before redelivery",
                );
            }
            if nats.subjects.is_empty() {
                env.reject("NATS_SUBJECTS", "needs at least one subject");
            }
            // The token after a subject's prefix is the tenant, so every
            // subject must be `<prefix>.>` with a literal prefix.
            if let Some(bad) = nats.subjects.iter().find(|subject| {
                subject
                    .strip_suffix(".>")
                    .is_none_or(|prefix| prefix.is_empty() || prefix.contains(['*', '>']))
            }) {
                env.reject(
                    "NATS_SUBJECTS",
                    format!(
                        "each subject must be <prefix>.> (the token after the prefix is the tenant), got {bad}"
                    ),
                );
            }
        }
        let database_url = env.get_or("DATABASE_URL", DatabaseUrl::embedded_default());
        Self {
            grpc_addr: env.get_or("GRPC_ADDR", SocketAddr::from(([127, 0, 0, 1], 50051))),
            migrate_database_url: env.migrate_database_url(&database_url),
            migrate_at_start: env.migrate_at_start(&database_url),
            database_url,
            database_pool: env.get_or("DATABASE_POOL", 10),
            windowing,
            limits: Limits::default(),
            pipeline,
            queue_bytes,
            max_batch_readings,
            nats,
            common,
        }
    }

    /// Port 0 everywhere and the given database, for in-process tests.
    pub fn for_tests(database_url: &str) -> Self {
        let mut env = EnvReader::from_vars("INGEST_", [("INGEST_DATABASE_URL", database_url)]);
        let mut config = Self::from_env(&mut env);
        config.grpc_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        config.common = CommonConfig::for_tests();
        config
    }

    /// How long the pipelines may take to drain at shutdown: most of the
    /// grace period, leaving the rest for the listeners.
    pub fn drain_budget(&self) -> Duration {
        self.common.shutdown_grace.mul_f64(0.8)
    }
}

/// TLS settings for a `tls://` NATS URL: `INGEST_NATS_CA` or the platform
/// CA, and this app's own certificate under mutual TLS. A `nats://` URL
/// with `INGEST_NATS_CA` set is a problem (the CA would be ignored).
fn nats_tls(
    env: &mut EnvReader,
    url: &str,
    ca: Option<std::path::PathBuf>,
    transport: &service_runtime::Transport,
) -> Option<NatsTls> {
    let platform = match transport {
        service_runtime::Transport::MutualTls { files, .. } => Some(files),
        service_runtime::Transport::Plaintext => None,
    };
    if !url.starts_with("tls://") {
        if ca.is_some() {
            env.reject("NATS_CA", "only used with a tls:// INGEST_NATS_URL");
        }
        return None;
    }
    let Some(ca) = ca.or_else(|| platform.map(|files| files.ca.clone())) else {
        env.reject(
            "NATS_CA",
            "a tls:// INGEST_NATS_URL needs the CA of the server's certificate (or mutual TLS, whose CA is the default)",
        );
        return None;
    };
    if !ca.is_file() {
        env.reject("NATS_CA", format!("{} does not exist", ca.display()));
    }
    Some(NatsTls {
        ca,
        client: platform.map(|files| (files.cert.clone(), files.key.clone())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(vars: &[(&str, &str)]) -> (Config, Result<(), service_runtime::ConfigError>) {
        let mut env = EnvReader::from_vars("INGEST_", vars.iter().copied());
        let config = Config::from_env(&mut env);
        (config, env.finish())
    }

    #[test]
    fn a_tls_nats_url_needs_a_ca_and_only_it_takes_one() {
        let (_, result) = read(&[
            ("INGEST_GRPC_PLAINTEXT", "true"),
            ("INGEST_NATS_URL", "tls://nats.internal:4222"),
        ]);
        let message = result.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains("INGEST_NATS_CA: a tls:// INGEST_NATS_URL needs"),
            "{message}"
        );

        let (_, result) = read(&[
            ("INGEST_GRPC_PLAINTEXT", "true"),
            ("INGEST_NATS_URL", "nats://127.0.0.1:4222"),
            ("INGEST_NATS_CA", "/etc/ssl/nats-ca.pem"),
        ]);
        let message = result.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains("INGEST_NATS_CA: only used with a tls://"),
            "{message}"
        );

        let (config, result) = read(&[
            ("INGEST_GRPC_PLAINTEXT", "true"),
            ("INGEST_NATS_URL", "nats://127.0.0.1:4222"),
        ]);
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(config.nats.and_then(|n| n.tls), None, "nats:// stays plain");
    }
}
