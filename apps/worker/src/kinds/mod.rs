//! The platform's job types, each a [`jobs::Worker`] with typed args.

pub mod aggregate;
mod noop;
pub mod prune;
mod record_run;
pub mod webhook;

pub use aggregate::AggregateWindow;
pub use noop::Noop;
pub use prune::{PruneArgs, PruneReadings};
pub use record_run::RecordRun;
pub use webhook::DeliverWebhook;

use contracts::ingest::v1::ingest_service_client::IngestServiceClient;
use service_runtime::TracedChannel;

/// What the job types need from the rest of the app.
pub struct Dependencies<S> {
    /// This node's id.
    pub node_id: String,
    /// Signs and sends webhooks.
    pub webhooks: webhook::WebhookClient,
    /// First webhook retry delay.
    pub webhook_backoff: std::time::Duration,
    /// Ingest's API: windows, results, pruning.
    pub ingest: IngestServiceClient<TracedChannel>,
    /// Numerics: window statistics and anomaly scores.
    pub numerics: crate::numerics::Numerics,
    /// The jobs store, for jobs that enqueue jobs, and the worker's runs
    /// table (crash tests).
    pub store: S,
    /// An endpoint failing for this long is disabled.
    pub webhook_disable_after: std::time::Duration,
    /// Deliveries in flight per endpoint on this node.
    pub webhook_in_flight: webhook::InFlight,
    /// Production leaves out the kinds that exist for tests and benchmarks.
    pub environment: service_runtime::Environment,
}

/// Every job type this app runs. `noop` and `record_run` exist for tests,
/// the crash tests and benchmarks: production does not register them, so
/// the API refuses them as unknown kinds.
pub fn registry<S: crate::WorkerStore>(deps: Dependencies<S>) -> jobs::Registry {
    let mut registry = jobs::Registry::new();
    if deps.environment == service_runtime::Environment::Development {
        registry = registry.register(Noop).register(RecordRun {
            log: deps.store.clone(),
            node_id: deps.node_id,
        });
    }
    registry
        .register(DeliverWebhook {
            client: deps.webhooks,
            backoff: deps.webhook_backoff,
            store: deps.store.clone(),
            disable_after: deps.webhook_disable_after,
            in_flight: deps.webhook_in_flight,
        })
        .register(AggregateWindow {
            ingest: deps.ingest.clone(),
            numerics: deps.numerics,
            store: deps.store,
        })
        .register(PruneReadings {
            ingest: deps.ingest,
        })
}
