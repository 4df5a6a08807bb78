//! The ingest app's settings, read from `INGEST_*` environment variables.

use std::net::SocketAddr;

use service_runtime::{CommonConfig, EnvReader};

/// Everything the ingest app can be told at start-up.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `INGEST_GRPC_ADDR`: where the gRPC API listens.
    pub grpc_addr: SocketAddr,
    /// Admin port, shutdown and logging settings.
    pub common: CommonConfig,
}

impl Config {
    /// Prefix of every variable this app reads.
    pub const ENV_PREFIX: &'static str = "INGEST_";

    /// Reads the settings, recording every problem in `env`.
    pub fn from_env(env: &mut EnvReader) -> Self {
        Self {
            grpc_addr: env.get_or("GRPC_ADDR", SocketAddr::from(([127, 0, 0, 1], 50051))),
            common: CommonConfig::from_env(env, 9182),
        }
    }

    /// Port 0 everywhere, for tests that start the app in-process.
    pub fn for_tests() -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            common: CommonConfig::for_tests(),
        }
    }
}
