//! The gateway's settings, read from `GATEWAY_*` environment variables.

use std::{net::SocketAddr, time::Duration};

use service_runtime::{CommonConfig, EnvReader, ServiceUrl};

/// Everything the gateway can be told at start-up.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `GATEWAY_HTTP_ADDR`: the public HTTP API.
    pub http_addr: SocketAddr,
    /// `GATEWAY_INGEST_URL`: the ingest app's gRPC address.
    pub ingest_url: ServiceUrl,
    /// `GATEWAY_WORKER_URL`: the worker app's gRPC address.
    pub worker_url: ServiceUrl,
    /// `GATEWAY_NUMERICS_URL`: the numerics app's gRPC address.
    pub numerics_url: ServiceUrl,
    /// `GATEWAY_STATUS_TIMEOUT`: how long `/v1/status` waits for each app.
    pub status_timeout: Duration,
    /// Admin port, shutdown and logging settings.
    pub common: CommonConfig,
}

impl Config {
    /// Prefix of every variable the gateway reads.
    pub const ENV_PREFIX: &'static str = "GATEWAY_";

    /// Reads the settings, recording every problem in `env`.
    pub fn from_env(env: &mut EnvReader) -> Self {
        let status_timeout = env.get_or("STATUS_TIMEOUT", Duration::from_secs(1));
        if status_timeout.is_zero() || status_timeout > Duration::from_secs(30) {
            env.reject("STATUS_TIMEOUT", "must be between 1ms and 30s");
        }
        Self {
            http_addr: env.get_or("HTTP_ADDR", SocketAddr::from(([127, 0, 0, 1], 8080))),
            ingest_url: env.get_or("INGEST_URL", ServiceUrl::local(50051)),
            worker_url: env.get_or("WORKER_URL", ServiceUrl::local(50052)),
            numerics_url: env.get_or("NUMERICS_URL", ServiceUrl::local(50053)),
            status_timeout,
            common: CommonConfig::from_env(env, 9181),
        }
    }
}
