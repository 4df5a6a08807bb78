//! Deleted tenants, as the pipeline refuses them. Deleting a tenant
//! (`platform.tenancy.v1`, [`IngestTenantData`]) records it in the store;
//! every replica keeps the set in memory, refreshed every
//! [`REFRESH_EVERY`], so validation (synchronous, per reading) can refuse
//! a deleted tenant's readings without a query, and their dead letters are
//! dropped rather than stored.

use std::{
    collections::HashSet,
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use service_runtime::{
    CancellationToken,
    tenant_data::{CollectionCount, TenantData, TenantDataError, TenantRecord},
};
use tokio::sync::mpsc;

use crate::store::ReadingStore;

/// How often a replica re-reads the deleted tenants (a deletion made
/// through another replica is refused here within this).
pub const REFRESH_EVERY: Duration = Duration::from_secs(10);

/// The tenants whose data was deleted.
#[derive(Debug, Clone, Default)]
pub struct DeletedTenants(Arc<RwLock<HashSet<String>>>);

impl DeletedTenants {
    /// Whether `tenant` was deleted.
    pub fn contains(&self, tenant: &str) -> bool {
        !tenant.is_empty()
            && self
                .0
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(tenant)
    }

    fn insert(&self, tenant: &str) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(tenant.to_owned());
    }

    fn replace(&self, tenants: Vec<String>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = tenants.into_iter().collect();
    }

    /// Loads the set from `store` now.
    pub async fn load(&self, store: &impl ReadingStore) -> Result<(), crate::store::StoreError> {
        self.replace(store.deleted_tenants().await?);
        Ok(())
    }

    /// Reloads the set every [`REFRESH_EVERY`] until `stop`; a failed
    /// reload keeps the last set and is logged.
    pub async fn refresh_until(self, store: impl ReadingStore, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(REFRESH_EVERY) => {}
            }
            if let Err(error) = self.load(&store).await {
                tracing::warn!(%error, "could not reload the deleted tenants; keeping the last set");
            }
        }
    }
}

/// Ingest's `platform.tenancy.v1` data: the store's, and a deletion is
/// refused by this replica's pipeline at once.
#[derive(Debug, Clone)]
pub struct IngestTenantData<S> {
    store: S,
    deleted: DeletedTenants,
}

impl<S> IngestTenantData<S> {
    /// Over `store`, telling `deleted` of each deletion.
    pub fn new(store: S, deleted: DeletedTenants) -> Self {
        Self { store, deleted }
    }
}

impl<S: ReadingStore> TenantData for IngestTenantData<S> {
    async fn export(
        &self,
        tenant: &str,
        out: mpsc::Sender<TenantRecord>,
    ) -> Result<(), TenantDataError> {
        self.store.export(tenant, out).await
    }

    async fn delete(&self, tenant: &str) -> Result<Vec<CollectionCount>, TenantDataError> {
        // Refuse first: a reading validated from now on is not stored, and
        // one already past validation is in a batch the deletion waits for
        // or removes.
        self.deleted.insert(tenant);
        self.store.delete(tenant).await
    }
}
