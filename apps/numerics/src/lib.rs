//! The numerics app: tensor operations, statistics, linear algebra and the
//! anomaly model of `libs/numerics-engine`, served over
//! `platform.numerics.v1.NumericsService`. The app decodes and checks
//! requests, runs them on a bounded CPU pool and encodes the answers; the
//! engine knows nothing of gRPC.
//!
//! The library is the whole server, so tests start it in-process on port 0;
//! `main.rs` only hands [`app`] to the shared runtime.

mod api;
pub mod bench;
mod config;
pub mod error;
pub mod model_dir;
pub mod pool;
pub mod serving;
pub mod training;
pub mod wire;

use service_runtime::{AppMain, BuildInfo, Running, ServiceBuilder, StartError};

pub use config::Config;

/// This app's name and build, as reported by `--version` and ServiceInfo.
pub const INFO: BuildInfo = BuildInfo::new("numerics");

/// Binds the gRPC and admin listeners and starts serving; computations run
/// on a pool of `NUMERICS_WORKERS` threads, matmul using all of them.
pub async fn start(config: Config) -> Result<Running, StartError> {
    numerics_engine::ops::set_matmul_threads(config.workers);
    let pool = pool::CpuPool::new(config.workers, config.queue);
    let (model, batcher) = serving::ModelServer::new(config.serving.clone()).map_err(|error| {
        StartError::Dependency {
            what: "model",
            message: error.to_string(),
        }
    })?;
    ServiceBuilder::new(INFO, config.common)
        .grpc(config.grpc_addr)
        .add_grpc_service(api::server(
            pool,
            model,
            config.limits,
            config.max_message_bytes,
        ))
        // Owned by the runtime: at shutdown it answers what is queued and
        // waits for the forward passes in flight.
        .background("model batcher", move |stop| batcher.run(stop))
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
