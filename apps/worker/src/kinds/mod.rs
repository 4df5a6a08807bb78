//! The platform's job types, each a [`jobs::Worker`] with typed args.

mod noop;
mod record_run;
pub mod webhook;

pub use noop::Noop;
pub use record_run::RecordRun;
pub use webhook::{DeliverWebhook, WebhookArgs};

use crate::storage::RunLog;

/// Every job type this app runs.
pub fn registry(
    run_log: RunLog,
    node_id: String,
    webhooks: webhook::WebhookClient,
    webhook_backoff: std::time::Duration,
) -> jobs::Registry {
    jobs::Registry::new()
        .register(Noop)
        .register(RecordRun {
            log: run_log,
            node_id,
        })
        .register(DeliverWebhook {
            client: webhooks,
            backoff: webhook_backoff,
        })
}
