//! The numerics app's settings, read from `NUMERICS_*` environment variables.

use std::net::SocketAddr;

use numerics_engine::program::Limits;

use crate::serving::ServingConfig;
use service_runtime::{CommonConfig, EnvReader};

/// Everything the numerics app can be told at start-up.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `NUMERICS_GRPC_ADDR`: where the gRPC API listens.
    pub grpc_addr: SocketAddr,
    /// `NUMERICS_WORKERS`: computations running at once (default: cores).
    pub workers: usize,
    /// `NUMERICS_QUEUE`: computations waiting for a worker before
    /// `RESOURCE_EXHAUSTED`.
    pub queue: usize,
    /// `NUMERICS_MAX_ELEMENTS`, `NUMERICS_MAX_RANK`, `NUMERICS_MAX_STEPS`:
    /// bounds on operands, results and programs.
    pub limits: Limits,
    /// `NUMERICS_MAX_MESSAGE_BYTES`: largest request or response.
    pub max_message_bytes: usize,
    /// `NUMERICS_MODEL_DIR` (the only folder weights are read from,
    /// default `data/models`), `NUMERICS_MODEL_PATH` (inside it; unset: the
    /// shipped weights), `NUMERICS_MAX_BATCH`, `NUMERICS_MAX_WAIT`,
    /// `NUMERICS_REPLICAS`, `NUMERICS_SCORE_QUEUE`: the anomaly model and
    /// its batching.
    pub serving: ServingConfig,
    /// Admin port, shutdown and logging settings.
    pub common: CommonConfig,
}

impl Config {
    /// Prefix of every variable this app reads.
    pub const ENV_PREFIX: &'static str = "NUMERICS_";

    /// Reads the settings, recording every problem in `env`.
    pub fn from_env(env: &mut EnvReader) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let defaults = Limits::default();
        let config = Self {
            grpc_addr: env.get_or("GRPC_ADDR", SocketAddr::from(([127, 0, 0, 1], 50053))),
            workers: env.get_or("WORKERS", cores),
            queue: env.get_or("QUEUE", 64),
            limits: Limits {
                max_elements: env.get_or("MAX_ELEMENTS", defaults.max_elements),
                max_rank: env.get_or("MAX_RANK", defaults.max_rank),
                max_steps: env.get_or("MAX_STEPS", defaults.max_steps),
            },
            max_message_bytes: env.get_or("MAX_MESSAGE_BYTES", 64 * 1024 * 1024),
            serving: ServingConfig {
                weights_path: env.get("MODEL_PATH"),
                model_dir: env.get_or(
                    "MODEL_DIR",
                    std::path::PathBuf::from(crate::model_dir::DEFAULT_MODEL_DIR),
                ),
                max_batch_size: env.get_or("MAX_BATCH", 64),
                max_wait: env.get_or("MAX_WAIT", std::time::Duration::from_millis(2)),
                replicas: env.get_or("REPLICAS", cores),
                queue: env.get_or("SCORE_QUEUE", 1_024),
            },
            common: CommonConfig::from_env(env, 9184),
        };
        if config.serving.max_batch_size == 0
            || config.serving.replicas == 0
            || config.serving.queue == 0
        {
            env.reject(
                "MAX_BATCH",
                "batch size, replicas and queue must be at least 1",
            );
        }
        if config.workers == 0 {
            env.reject("WORKERS", "must be at least 1");
        }
        if config.limits.max_elements == 0
            || config.limits.max_rank == 0
            || config.limits.max_steps == 0
        {
            env.reject("MAX_ELEMENTS", "limits must be at least 1");
        }
        config
    }

    /// Port 0 everywhere, for tests that start the app in-process.
    pub fn for_tests() -> Self {
        let mut env = EnvReader::from_vars("NUMERICS_", std::iter::empty::<(&str, &str)>());
        let mut config = Self::from_env(&mut env);
        config.grpc_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        config.common = CommonConfig::for_tests();
        config
    }
}
