//! The gateway: the platform's public HTTP API and (later) its ops
//! dashboard. It owns tenants and their API keys ([`storage`], [`keys`],
//! [`tenancy`], managed with the operator commands in [`cli`]) and reaches
//! the other apps only over gRPC through the contracts; authentication,
//! rate limits and hardened headers live here as they land.
//!
//! The library is the whole server, so tests start it in-process on port 0;
//! `main.rs` only hands [`app`] to the shared runtime.

mod backends;
pub mod cli;
mod config;
pub mod keys;
mod routes;
mod status;
pub mod storage;
pub mod tenancy;

use service_runtime::{AppMain, BuildInfo, Running, ServiceBuilder, StartError};

pub use config::Config;

/// This app's name and build, as reported by `--version` and `/v1/status`.
pub const INFO: BuildInfo = BuildInfo::new("gateway");

/// Binds the public HTTP and admin listeners and starts serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let backends = backends::Backends::connect(&config).map_err(|e| StartError::Dependency {
        what: "backend channels",
        message: e.to_string(),
    })?;
    let router = routes::router(routes::AppState {
        backends,
        status_timeout: config.status_timeout,
    });
    ServiceBuilder::new(INFO, config.common)
        .http(config.http_addr, router)
        .start()
        .await
}

/// The app as the shared runtime's `main` (and the launcher) runs it.
pub fn app() -> AppMain<Config> {
    AppMain {
        info: INFO,
        env_prefix: Config::ENV_PREFIX,
        load_config: Config::from_env,
        common: |config| &config.common,
        start: |config| Box::pin(start(config)),
    }
}
