//! The ingest app: accepts sensor readings over gRPC (and, with the
//! pipeline issue, NATS JetStream), validates and de-duplicates them and
//! stores them in its own schema. It owns readings and window results; other
//! apps reach them only through `platform.ingest.v1.IngestService`.
//!
//! The library is the whole server, so tests start it in-process on port 0;
//! `main.rs` only hands [`app`] to the shared runtime.

mod api;
mod config;
pub mod reading;
pub mod sink;
pub mod store;
pub mod window;

use service_runtime::{AppMain, BuildInfo, Running, ServiceBuilder, StartError};

pub use config::Config;

/// This app's name and build, as reported by `--version` and ServiceInfo.
pub const INFO: BuildInfo = BuildInfo::new("ingest");

/// Connects to the database, applies migrations, then serves gRPC.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let dependency = |what| {
        move |error: store::StoreError| StartError::Dependency {
            what,
            message: error.to_string(),
        }
    };
    let store = store::IngestStore::connect(&config.database_url, config.database_pool)
        .await
        .map_err(dependency("database"))?;
    store.migrate().await.map_err(dependency("migrations"))?;
    let ping = store.clone();
    ServiceBuilder::new(INFO, config.common)
        .grpc(config.grpc_addr)
        .add_grpc_service(api::server(store))
        .readiness_check("database", move || {
            let store = ping.clone();
            async move { store.ping().await.map_err(|e| e.to_string()) }
        })
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
