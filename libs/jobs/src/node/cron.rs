//! Periodic jobs: while this node holds the cron lease, each due tick's
//! job is inserted.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::{CRON_LEASE, CRON_LOOKBACK, Shared};
use crate::store::JobStore;

/// While this node holds the cron lease: insert each due tick's job. A
/// tick's unique key makes a second insert (another leader, a restart) a
/// no-op, so ticks are enqueued at most once.
pub(super) async fn schedule_cron<S: JobStore>(shared: Arc<Shared<S>>, stop: CancellationToken) {
    let crons = &shared.config.cron;
    if crons.is_empty() {
        return;
    }
    let node = shared.config.node_id.clone();
    let lookback = chrono::Duration::from_std(CRON_LOOKBACK).unwrap_or(chrono::Duration::MAX);
    let start = Utc::now() - lookback;
    let mut next: Vec<Option<chrono::DateTime<Utc>>> = crons
        .iter()
        .map(|c| c.schedule.next_after(start, c.timezone))
        .collect();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        match shared
            .store
            .try_lead(CRON_LEASE, &node, Duration::from_secs(10))
            .await
        {
            Ok(true) => {}
            Ok(false) => continue,
            Err(error) => {
                tracing::debug!(%error, "cron leader election failed");
                continue;
            }
        }
        let now = Utc::now();
        for (cron, next) in crons.iter().zip(next.iter_mut()) {
            while let Some(tick) = *next
                && tick <= now
            {
                if now - tick <= lookback {
                    if let Err(error) = shared.store.insert_many(&[cron.job_for(tick)]).await {
                        // Not advanced: the next loop tries this tick again.
                        tracing::warn!(cron = %cron.name, %error, "cron insert failed");
                        break;
                    }
                    tracing::info!(cron = %cron.name, %tick, "cron tick enqueued");
                }
                *next = cron.schedule.next_after(tick, cron.timezone);
            }
        }
    }
}
