//! The ingest app: accepts sensor readings over gRPC and NATS JetStream,
//! runs them through the stage kit (validate, batch, store with the
//! aggregation jobs of closed windows in the same transaction) and answers
//! or acks each source only once its readings are durable. It owns readings and window results; other
//! apps reach them only through `platform.ingest.v1.IngestService`.
//!
//! The library is the whole server, so tests start it in-process on port 0;
//! `main.rs` only hands [`app`] to the shared runtime.

mod api;
pub mod bench;
mod config;
pub mod demo;
pub mod error;
pub mod handler;
pub mod reading;
pub mod series;
pub mod sink;
pub mod source;
mod stats;
pub mod store;
pub mod tenants;
pub mod window;

use std::sync::Arc;

use store::ReadingStore;

use service_runtime::{AppMain, BuildInfo, CancellationToken, Running, ServiceBuilder, StartError};

pub use config::{Config, NatsConfig, NatsTls};

/// This app's name and build, as reported by `--version` and ServiceInfo.
pub const INFO: BuildInfo = BuildInfo::new("ingest");

/// Connects to the database, applies migrations, starts the pipeline(s),
/// then serves gRPC. At shutdown the pipelines drain within
/// [`Config::drain_budget`]: what was not stored is not acknowledged.
pub async fn start(config: Config) -> Result<Running, StartError> {
    // `serve` is boxed: its future holds the config and every pipeline, and
    // callers (tests, the launcher) keep theirs small.
    let url = config.database_url.as_str();
    if config.database_url.is_postgres() {
        let store = match &config.migrate_database_url {
            Some(migrator) => {
                store::PgReadingStore::provision(migrator.as_str(), url, config.database_pool).await
            }
            None if !config.migrate_at_start => {
                store::PgReadingStore::connect_when_migrated(url, config.database_pool).await
            }
            None => store::PgReadingStore::connect(url, config.database_pool).await,
        };
        Box::pin(serve(config, store.map_err(dependency("database"))?)).await
    } else {
        let store = store::SqliteReadingStore::connect(url).await;
        Box::pin(serve(config, store.map_err(dependency("database"))?)).await
    }
}

/// `ingest migrate`: applies the jobs engine's and ingest's migrations and,
/// with `INGEST_MIGRATE_DATABASE_URL`, creates and grants the login's role,
/// then returns; what a deployment's migrations Job runs.
pub async fn migrate(config: &Config) -> Result<(), store::StoreError> {
    let url = config.database_url.as_str();
    if config.database_url.is_postgres() {
        match &config.migrate_database_url {
            Some(migrator) => {
                store::PgReadingStore::provision(migrator.as_str(), url, 1).await?;
            }
            None => {
                store::PgReadingStore::connect(url, 1)
                    .await?
                    .migrate()
                    .await?
            }
        }
    } else {
        store::SqliteReadingStore::connect(url)
            .await?
            .migrate()
            .await?;
    }
    Ok(())
}

/// A start-up error naming the dependency `what` that failed.
fn dependency(what: &'static str) -> impl Fn(store::StoreError) -> StartError {
    move |error| StartError::Dependency {
        what,
        message: error.to_string(),
    }
}

/// [`start`] on a connected store.
async fn serve<S: ReadingStore>(config: Config, store: S) -> Result<Running, StartError> {
    store.migrate().await.map_err(dependency("migrations"))?;
    let deleted = tenants::DeletedTenants::default();
    deleted.load(&store).await.map_err(dependency("database"))?;
    let handler = Arc::new(handler::ReadingsHandler::new(
        store.clone(),
        config.windowing,
        config.limits.clone(),
        deleted.clone(),
    ));
    let resubmitter = handler.clone();
    let (admission, producer) = source::grpc::queue(config.queue_bytes);
    let grpc_pipeline = pipeline::start(
        "ingest.grpc",
        config.pipeline.clone(),
        producer,
        handler.clone(),
    )
    .map_err(pipeline_error)?;
    let mut pipelines = stats::Pipelines::default();
    pipelines.push(stats::PipelineView::new("grpc", grpc_pipeline.monitor()));
    let budget = config.drain_budget();
    let mut service = ServiceBuilder::new(INFO, config.common.clone());
    if let Some(nats) = &config.nats {
        let source = NatsPipeline::start(nats, &config.pipeline, handler).await?;
        pipelines.push(stats::PipelineView::new("nats", source.pipeline.monitor()));
        service = source.serve(service, budget);
    }
    let ping = store.clone();
    let sampler = pipelines.clone();
    let refresher = (deleted.clone(), store.clone());
    service
        .grpc(config.grpc_addr)
        .add_grpc_service(service_runtime::tenant_data::tenant_data_service(
            tenants::IngestTenantData::new(store.clone(), deleted),
        ))
        .add_grpc_service(api::server(
            store,
            admission,
            pipelines,
            config.max_batch_readings,
            resubmitter,
        ))
        .readiness_check("database", move || {
            let store = ping.clone();
            async move { store.ping().await.map_err(Into::into) }
        })
        .background("pipeline.grpc", move |stop| async move {
            stop.cancelled().await;
            let report = grpc_pipeline.drain(budget).await;
            tracing::info!(
                complete = report.complete,
                unacknowledged = report.unacknowledged,
                "gRPC pipeline drained"
            );
        })
        .background("pipeline stats", move |stop| sampler.sample_until(stop))
        .background("deleted tenants", move |stop| {
            let (deleted, store) = refresher;
            deleted.refresh_until(store, stop)
        })
        .start()
        .await
}

fn pipeline_error(error: pipeline::PipelineError) -> StartError {
    StartError::Dependency {
        what: "pipeline",
        message: error.to_string(),
    }
}

/// The JetStream source with its own pipeline, when `INGEST_NATS_URL` is set.
struct NatsPipeline {
    client: async_nats::Client,
    acker: source::nats::AckSender,
    pipeline: pipeline::PipelineHandle,
}

impl NatsPipeline {
    /// Connects the durable consumer and starts its pipeline.
    async fn start(
        nats: &NatsConfig,
        settings: &pipeline::PipelineConfig,
        handler: Arc<handler::ReadingsHandler<impl ReadingStore>>,
    ) -> Result<Self, StartError> {
        let source = source::nats::connect(nats, settings.max_in_flight, settings.max_demand)
            .await
            .map_err(|error| StartError::Dependency {
                what: "nats",
                message: error.to_string(),
            })?;
        let pipeline = pipeline::start("ingest.nats", settings.clone(), source.producer, handler)
            .map_err(pipeline_error)?;
        Ok(Self {
            client: source.client,
            acker: source.acker,
            pipeline,
        })
    }

    /// Adds its readiness check (the connection) and its background task:
    /// at shutdown drain the pipeline, then flush the acks, then close.
    fn serve(self, service: ServiceBuilder, budget: std::time::Duration) -> ServiceBuilder {
        let Self {
            client,
            acker,
            pipeline,
        } = self;
        let state = client.clone();
        service
            .readiness_check("nats", move || {
                let state = state.connection_state();
                async move {
                    match state {
                        async_nats::connection::State::Connected => Ok(()),
                        other => Err(format!("NATS connection is {other}").into()),
                    }
                }
            })
            .background("pipeline.nats", move |stop| async move {
                let acks_done = CancellationToken::new();
                let acks = tokio::spawn(tracing::Instrument::instrument(
                    acker.run(acks_done.clone()),
                    tracing::info_span!("ingest.nats.acker"),
                ));
                stop.cancelled().await;
                let report = pipeline.drain(budget).await;
                acks_done.cancel();
                let _ = acks.await;
                // Flush the acks to the server before the connection goes.
                let _ = client.flush().await;
                tracing::info!(
                    complete = report.complete,
                    unacknowledged = report.unacknowledged,
                    "NATS pipeline drained; unacknowledged messages are redelivered"
                );
            })
    }
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
