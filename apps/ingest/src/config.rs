//! The ingest app's settings, read from `INGEST_*` environment variables.

use std::net::SocketAddr;

use service_runtime::{CommonConfig, DatabaseUrl, EnvReader};

/// Everything the ingest app can be told at start-up.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `INGEST_GRPC_ADDR`: where the gRPC API listens.
    pub grpc_addr: SocketAddr,
    /// `INGEST_DATABASE_URL`: `postgres://...` in production, or
    /// `sqlite://path` (the embedded default, shared with the worker).
    pub database_url: DatabaseUrl,
    /// `INGEST_DATABASE_POOL`: connections to the database.
    pub database_pool: u32,
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
            database_url: env.get_or("DATABASE_URL", DatabaseUrl::embedded_default()),
            database_pool: env.get_or("DATABASE_POOL", 10),
            common: CommonConfig::from_env(env, 9182),
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
}
