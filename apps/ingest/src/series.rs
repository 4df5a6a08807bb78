//! The series quota: the most distinct (device, metric) series a tenant
//! may have, as the gateway passes it with each publish (`max_series`).
//! Each replica keeps the tenant's known series in memory, loaded from the
//! store and reloaded after [`RELOAD_AFTER`], and counts a new series the
//! moment a reading starts it, so one request cannot pass the quota with
//! many new series at once. Readings of known series always pass. Across
//! replicas the count is approximate: each may start new series up to the
//! quota before it sees the others' (documented with the contract).

use std::{
    collections::{HashMap, HashSet},
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use contracts::ingest::v1 as pb;

use crate::{
    reading::Rejection,
    store::{ReadingStore, StoreError},
};

/// How long a replica trusts its copy of a tenant's series.
pub const RELOAD_AFTER: Duration = Duration::from_secs(60);

/// Known series per tenant.
#[derive(Debug, Default)]
pub struct SeriesQuota {
    tenants: Mutex<HashMap<String, KnownSeries>>,
}

#[derive(Debug)]
struct KnownSeries {
    series: HashSet<(String, String)>,
    loaded_at: Instant,
}

impl SeriesQuota {
    /// For each reading, the rejection it gets for starting a series beyond
    /// `max` (`None`: within the quota); every `None` when `max` is 0.
    /// Counts the new series it lets through.
    pub async fn check(
        &self,
        store: &impl ReadingStore,
        readings: &[pb::Reading],
        max: u32,
    ) -> Result<Vec<Option<Rejection>>, StoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let tenants: HashSet<&str> = readings.iter().map(|r| r.tenant_id.as_str()).collect();
        for tenant in tenants {
            if self.stale(tenant) {
                let series = store.series_of(tenant).await?;
                self.lock().insert(
                    tenant.to_owned(),
                    KnownSeries {
                        series: series.into_iter().collect(),
                        loaded_at: Instant::now(),
                    },
                );
            }
        }
        let mut tenants = self.lock();
        Ok(readings
            .iter()
            .map(|reading| {
                // An incomplete reading is rejected by validation; it
                // starts no series.
                if reading.device_id.is_empty() || reading.metric.is_empty() {
                    return None;
                }
                let known = tenants.get_mut(&reading.tenant_id)?;
                let key = (reading.device_id.clone(), reading.metric.clone());
                if known.series.contains(&key) {
                    return None;
                }
                if known.series.len() < max as usize {
                    known.series.insert(key);
                    return None;
                }
                Some(Rejection {
                    field: "device_id",
                    reason: format!(
                        "the tenant's quota of {max} series is reached; {}/{} would be a new one",
                        reading.device_id, reading.metric
                    ),
                })
            })
            .collect())
    }

    fn stale(&self, tenant: &str) -> bool {
        self.lock()
            .get(tenant)
            .is_none_or(|known| known.loaded_at.elapsed() >= RELOAD_AFTER)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, KnownSeries>> {
        self.tenants.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
