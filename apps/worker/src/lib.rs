//! The worker app: runs the platform's background jobs on the jobs engine
//! (`libs/jobs`) and serves `platform.jobs.v1.JobsService` so other apps
//! and operators can enqueue, inspect and steer them. PostgreSQL in
//! production, an SQLite file (`data/platform.db`) by default.
//!
//! The library is the whole server, so tests start it in-process on port 0;
//! `main.rs` adds the `migrate`, `enqueue`, `stats` and `bench` commands.

mod api;
pub mod bench;
pub mod cli;
mod config;
mod convert;
pub mod error;
pub mod kinds;
pub mod numerics;
pub mod storage;
pub mod webhooks;

use contracts::{
    ingest::v1::ingest_service_client::IngestServiceClient,
    jobs::v1::jobs_service_server::JobsServiceServer,
    webhooks::v1::webhooks_service_server::WebhooksServiceServer,
};
use jobs::{Node, NodeConfig};
use service_runtime::{AppMain, BuildInfo, Running, ServiceBuilder, StartError};

pub use api::JobsApi;
pub use config::{Config, Queues};
pub use service_runtime::DatabaseUrl;
pub use storage::WorkerStore;

/// This app's name and build, as reported by `--version` and ServiceInfo.
pub const INFO: BuildInfo = BuildInfo::new("worker");

fn dependency(what: &'static str) -> impl Fn(jobs::JobsError) -> StartError {
    move |error| StartError::Dependency {
        what,
        message: error.to_string(),
    }
}

/// Connects to the database, applies migrations, then serves the jobs API
/// and (unless `WORKER_RUN_JOBS=false`) runs a jobs node.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let url = config.database_url.as_str();
    if config.database_url.is_postgres() {
        let store = match &config.migrate_database_url {
            Some(migrator) => {
                storage::postgres::provision(migrator.as_str(), url, config.database_pool)
                    .await
                    .map_err(dependency("database"))?
            }
            None if !config.migrate_at_start => {
                storage::postgres::connect_when_migrated(url, config.database_pool)
                    .await
                    .map_err(dependency("database"))?
            }
            None => {
                let store = storage::postgres::connect(url, config.database_pool).await;
                migrated(store.map_err(dependency("database"))?).await?
            }
        };
        serve(config, store).await
    } else {
        let store = storage::sqlite::connect(url).await;
        serve(
            config,
            migrated(store.map_err(dependency("database"))?).await?,
        )
        .await
    }
}

/// `store` after its migrations ran with its own credential.
async fn migrated<S: WorkerStore>(store: S) -> Result<S, StartError> {
    store
        .migrate_all()
        .await
        .map_err(dependency("migrations"))?;
    Ok(store)
}

/// [`start`] on a connected, migrated store.
async fn serve<S: WorkerStore>(config: Config, store: S) -> Result<Running, StartError> {
    let node_id = jobs::new_node_id();
    let webhooks =
        kinds::webhook::WebhookClient::new(config.webhook_secret.clone(), config.webhook_policy())
            .map_err(|message| StartError::Dependency {
                what: "webhooks",
                message,
            })?;
    let ingest = service_runtime::traced_channel(
        &config.ingest_url,
        &config.common.transport,
        "ingest",
        config.ingest_timeout.min(service_runtime::CONNECT_TIMEOUT),
        config.ingest_timeout,
    )
    .map_err(|error| StartError::Dependency {
        what: "ingest client",
        message: error.to_string(),
    })?;
    let numerics = service_runtime::traced_channel(
        &config.numerics_url,
        &config.common.transport,
        "numerics",
        config
            .numerics_timeout
            .min(service_runtime::CONNECT_TIMEOUT),
        config.numerics_timeout,
    )
    .map_err(|error| StartError::Dependency {
        what: "numerics client",
        message: error.to_string(),
    })?;
    let registry = kinds::registry(kinds::Dependencies {
        numerics: numerics::Numerics::new(numerics),
        node_id: node_id.clone(),
        webhooks,
        webhook_backoff: config.webhook_backoff,
        ingest: IngestServiceClient::new(ingest),
        store: store.clone(),
        webhook_disable_after: config.webhook_disable_after,
        webhook_in_flight: kinds::webhook::InFlight::default(),
        environment: config.common.environment,
    });
    let outbound = security::OutboundClient::new(
        config.webhook_policy(),
        concat!("platform-worker/", env!("CARGO_PKG_VERSION")),
    )
    .map_err(|error| StartError::Dependency {
        what: "webhooks",
        message: error.to_string(),
    })?;
    let webhooks_api =
        webhooks::api::WebhooksApi::new(store.clone(), config.webhook_secret.clone(), outbound);
    let api = JobsApi::new(store.clone(), registry.clone(), config.queues.0.clone());
    let ping = store.clone();
    let mut builder = ServiceBuilder::new(INFO, config.common.clone())
        .grpc(config.grpc_addr)
        .add_grpc_service(JobsServiceServer::new(api))
        .add_grpc_service(WebhooksServiceServer::new(webhooks_api))
        .add_grpc_service(service_runtime::tenant_data::tenant_data_service(
            webhooks::WorkerTenantData(store.clone()),
        ))
        .readiness_check("database", move || {
            let store = ping.clone();
            async move { store.ping().await.map_err(Into::into) }
        });
    let log = store.clone();
    let retention = config.webhook_log_retention;
    builder = builder.background("webhook log retention", move |stop| async move {
        loop {
            let before = chrono::Utc::now()
                - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
            match log.prune_deliveries(before).await {
                Ok(0) => {}
                Ok(pruned) => tracing::info!(pruned, "webhook deliveries past retention deleted"),
                Err(error) => tracing::warn!(%error, "pruning the webhook delivery log failed"),
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
            }
        }
    });
    if config.run_jobs {
        let mut node = NodeConfig::new(config.queues.0.clone());
        node.node_id = node_id;
        node.poll_interval = config.poll_interval;
        node.lease = config.lease;
        node.prune_age = config.prune_age;
        // Leave a fifth of the runtime's grace for recording and leaving.
        node.shutdown_grace = config.common.shutdown_grace.mul_f64(0.8);
        node.cron = vec![
            readings_prune(&config).map_err(|error| StartError::Dependency {
                what: "cron",
                message: error.to_string(),
            })?,
        ];
        builder = builder.background("jobs node", move |stop| async move {
            if let Err(error) = Node::new(store, registry, node).run(stop).await {
                tracing::error!(%error, "jobs node stopped with an error");
            }
        });
    }
    builder.start().await
}

/// The cron entry that prunes readings past their retention (through
/// ingest's API; the worker never touches ingest's tables).
fn readings_prune(config: &Config) -> Result<jobs::CronJob, jobs::CronError> {
    let args = kinds::PruneArgs {
        retention_seconds: config.readings_retention.as_secs(),
    };
    jobs::CronJob::new(
        "readings.prune",
        &config.readings_prune_cron,
        "UTC",
        jobs::NewJob::new(
            kinds::prune::KIND,
            serde_json::to_value(args).unwrap_or_default(),
        )
        .with_queue("maintenance"),
    )
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
