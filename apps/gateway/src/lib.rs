//! The gateway: the platform's public HTTP API and its ops console
//! ([`console`]). It owns tenants and their API keys ([`storage`], [`keys`],
//! [`tenancy`], managed with the operator commands in [`cli`]) and reaches
//! the other apps only over gRPC through the contracts; authentication,
//! rate limits and hardened headers live here as they land.
//!
//! The library is the whole server, so tests start it in-process on port 0;
//! `main.rs` only hands [`app`] to the shared runtime.

mod auth;
mod backends;
pub mod bench;
pub mod cli;
mod config;
pub mod console;
mod cors;
mod headers;
mod json_object;
pub mod keys;
pub mod lifecycle;
pub mod limits;
pub mod openapi;
mod problem;
mod readings;
mod results;
mod routes;
mod status;
pub mod storage;
mod stream;
pub mod tenancy;
mod timestamps;
mod webhooks;

use service_runtime::{AppMain, BuildInfo, Running, ServiceBuilder, StartError};
use storage::GatewayStore as _;

pub use config::Config;

/// This app's name and build, as reported by `--version` and `/v1/status`.
pub const INFO: BuildInfo = BuildInfo::new("gateway");

/// Connects to the key store (migrating it), then binds the public HTTP
/// and admin listeners and starts serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let database = |e: storage::StoreError| StartError::Dependency {
        what: "database",
        message: e.to_string(),
    };
    let url = config.database_url.as_str();
    if config.database_url.is_postgres() {
        let store = match &config.migrate_database_url {
            Some(migrator) => {
                storage::postgres::provision(migrator.as_str(), url, config.database_pool).await
            }
            None if !config.migrate_at_start => {
                storage::postgres::PgGatewayStore::connect_when_migrated(url, config.database_pool)
                    .await
            }
            None => {
                match storage::postgres::PgGatewayStore::connect(url, config.database_pool).await {
                    Ok(store) => store.migrate().await.map(|()| store),
                    Err(error) => Err(error),
                }
            }
        };
        Box::pin(serve(config, store.map_err(database)?)).await
    } else {
        let store = match storage::sqlite::SqliteGatewayStore::connect(url).await {
            Ok(store) => store.migrate().await.map(|()| store),
            Err(error) => Err(error),
        };
        Box::pin(serve(config, store.map_err(database)?)).await
    }
}

/// [`start`] on a connected, migrated store.
async fn serve<S: storage::GatewayStore>(config: Config, store: S) -> Result<Running, StartError> {
    let backends = backends::Backends::connect(&config).map_err(|e| StartError::Dependency {
        what: "backend channels",
        message: e.to_string(),
    })?;
    let ingest = backends
        .all
        .iter()
        .find(|b| b.name == "ingest")
        .map(|b| {
            contracts::ingest::v1::ingest_service_client::IngestServiceClient::new(
                b.channel.clone(),
            )
        })
        .ok_or_else(|| StartError::Dependency {
            what: "backend channels",
            message: "no ingest channel".into(),
        })?;
    let limits = limits::Limits::new(&config.limits);
    let auth = auth::AuthState {
        store: store.clone(),
        peppers: std::sync::Arc::new(config.peppers.clone()),
        usage: auth::UsageLog::default(),
        limits: limits.clone(),
        cache: tenancy::KeyCache::new(config.key_cache_ttl),
    };
    let usage = auth.usage.clone();
    let idle = limits.clone();
    let worker = backends
        .all
        .iter()
        .find(|b| b.name == "worker")
        .map(|b| b.channel.clone())
        .ok_or_else(|| StartError::Dependency {
            what: "backend channels",
            message: "no worker channel".into(),
        })?;
    let state = routes::AppState {
        worker,
        readings_per_day: config.readings_per_day,
        series_per_tenant: config.series_per_tenant,
        backends,
        status_timeout: config.status_timeout,
        ingest,
        auth,
        cors: cors::AllowedOrigins::new(config.cors_origins.clone()),
        tls: headers::ServedOverTls(config.http.tls.is_some()),
    };
    let retention = (
        store.clone(),
        state.ingest.clone(),
        config.retention_sweep_every,
    );
    let admin = routes::admin_router(state.clone());
    let console = console_state(&config, &store, &state)?;
    let admin = match &console {
        Some(console) => admin.merge(console::admin_routes(console.csp_reports.clone())),
        None => admin,
    };
    let sweep = console.clone();
    let router = routes::router(state, console);
    let ping = store.clone();
    ServiceBuilder::new(INFO, config.common)
        .http(config.http.clone(), router)
        .admin_routes(admin)
        .readiness_check("database", move || {
            let store = ping.clone();
            async move { store.ping().await.map_err(Into::into) }
        })
        .background("rate limit memory", move |stop| async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(std::time::Duration::from_secs(60)) => idle.forget_idle(),
                }
            }
        })
        .background("console session sweep", move |stop| async move {
            let Some(console) = sweep else { return };
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(console::SWEEP_EVERY) => console.sweep().await,
                }
            }
        })
        .background("tenant retention", move |stop| {
            let (store, ingest, every) = retention;
            lifecycle::retention_until(store, ingest, every, stop)
        })
        .background("key usage", move |stop| async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(auth::LAST_USED_EVERY) => usage.flush(&store).await,
                }
            }
            usage.flush(&store).await;
        })
        .start()
        .await
}

/// The console's state when it may be served (see [`console_allowed`]).
fn console_state<S: storage::GatewayStore>(
    config: &Config,
    store: &S,
    api: &routes::AppState<S>,
) -> Result<Option<console::ConsoleState<S>>, StartError> {
    if !console_allowed(config) {
        tracing::warn!(
            addr = %config.http.addr,
            "the ops console is not served: its Secure cookie needs TLS (GATEWAY_HTTP_TLS_*) or a loopback address"
        );
        return Ok(None);
    }
    console::ConsoleState::new(store.clone(), config, api)
        .map(Some)
        .map_err(|e| StartError::Dependency {
            what: "console password hasher",
            message: e.to_string(),
        })
}

/// Whether the console may be served: its `Secure` cookie reaches the
/// server only over TLS or on a loopback address.
fn console_allowed(config: &Config) -> bool {
    config.http.tls.is_some() || config.http.addr.ip().is_loopback()
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
