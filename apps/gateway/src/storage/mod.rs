//! Where the gateway keeps tenants and API keys, in the workspace's one
//! pattern for "PostgreSQL or SQLite": the trait [`GatewayStore`],
//! implemented in [`postgres`] (schema `gateway`) and [`sqlite`] (tables
//! `gateway_*` in the shared file), one behaviour suite for both.

pub mod operators;
pub mod postgres;
pub mod sqlite;

use std::future::Future;

use chrono::{DateTime, Utc};

use crate::keys::{KeyId, TenantId};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed or is unreachable.
    #[error("gateway database: {0}")]
    Database(#[from] sqlx::Error),
    /// Connecting or migrating failed (the shared helpers' errors).
    #[error("gateway database: {0}")]
    Jobs(#[from] jobs::JobsError),
    /// The tenant exists already.
    #[error("tenant {0} exists already")]
    TenantExists(TenantId),
    /// No such tenant.
    #[error("no tenant {0}")]
    NoTenant(TenantId),
    /// No such key in that tenant.
    #[error("no key {key} in tenant {tenant}")]
    NoKey {
        /// The tenant asked.
        tenant: TenantId,
        /// The key asked.
        key: KeyId,
    },
    /// The tenant is deleted or being deleted: nothing about it changes
    /// but the deletion, and its id is not given again.
    #[error("tenant {0} is deleted or being deleted")]
    TenantDeleted(TenantId),
    /// The operator name is taken.
    #[error("operator {0} exists already")]
    OperatorExists(String),
    /// No such operator.
    #[error("no operator {0}")]
    NoOperator(String),
    /// A stored row does not read back (a fault on our side).
    #[error("corrupt gateway row: {0}")]
    Corrupt(String),
}

/// Whether a tenant may use the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantState {
    /// Its keys work.
    Active,
    /// Every key refused at once; data kept.
    Suspended,
    /// Its deletion began: keys refused, its data being deleted in the
    /// apps (`gateway tenants delete` resumes an interrupted one).
    Deleting,
    /// Its data is gone everywhere; the row stays so the id is not reused.
    Deleted,
}

impl TenantState {
    /// `active`, `suspended`, `deleting` or `deleted`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Deleting => "deleting",
            Self::Deleted => "deleted",
        }
    }

    /// The state of a row: its stored `state` (active or suspended), then
    /// its deletion times, which override it.
    fn of_row(
        stored: &str,
        delete_requested: Option<DateTime<Utc>>,
        deleted: Option<DateTime<Utc>>,
    ) -> Result<Self, StoreError> {
        if deleted.is_some() {
            return Ok(Self::Deleted);
        }
        if delete_requested.is_some() {
            return Ok(Self::Deleting);
        }
        match stored {
            "active" => Ok(Self::Active),
            "suspended" => Ok(Self::Suspended),
            other => Err(StoreError::Corrupt(format!("tenant.state {other:?}"))),
        }
    }
}

/// A per-tenant limit an operator sets (`gateway tenants quota`); a tenant
/// without its own uses the gateway's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantLimit {
    /// Readings accepted per UTC day.
    ReadingsPerDay,
    /// Distinct (device, metric) series.
    Series,
    /// Days readings and window results are kept.
    RetentionDays,
}

impl TenantLimit {
    /// Its column in both databases.
    fn column(self) -> &'static str {
        match self {
            Self::ReadingsPerDay => "readings_per_day",
            Self::Series => "max_series",
            Self::RetentionDays => "retention_days",
        }
    }
}

/// A tenant as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Its id.
    pub id: TenantId,
    /// A display name.
    pub name: String,
    /// Active, suspended, or (being) deleted.
    pub state: TenantState,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Readings it may publish per UTC day; `None` for the gateway's
    /// default (`GATEWAY_READINGS_PER_DAY`).
    pub readings_per_day: Option<u64>,
    /// Series it may have; `None` for the default
    /// (`GATEWAY_SERIES_PER_TENANT`).
    pub max_series: Option<u64>,
    /// Days its readings are kept; `None` for the platform's retention.
    pub retention_days: Option<u64>,
}

/// The columns a [`Tenant`] is read from, in both databases.
const TENANT_COLUMNS: &str = "tenant_id, name, state, created_at, readings_per_day, max_series, \
     retention_days, delete_requested_at, deleted_at";

/// A stored limit read back (never negative: the schema checks).
fn limit(raw: Option<i64>) -> Option<u64> {
    raw.map(|q| u64::try_from(q).unwrap_or(0))
}

/// The answer to a reservation of readings against a daily quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// Whether the readings fit (and were counted).
    pub allowed: bool,
    /// Readings counted for the day, after this reservation if allowed.
    pub used: u64,
    /// The tenant's quota for the day.
    pub quota: u64,
    /// The tenant's own series limit, read with the reservation (`None`:
    /// the default).
    pub max_series: Option<u64>,
}

/// A stored key: everything but the secret, which is never stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// Whose.
    pub tenant: TenantId,
    /// Which.
    pub id: KeyId,
    /// HMAC-SHA256 of the secret under the pepper `pepper_id`.
    pub digest: Vec<u8>,
    /// The pepper the digest was made under.
    pub pepper_id: String,
    /// What the key allows.
    pub scopes: Vec<String>,
    /// A label for people.
    pub name: String,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it stops working, if ever (rotation sets it on the old key).
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
    /// When it was last used, to the minute.
    pub last_used_at: Option<DateTime<Utc>>,
}

/// What the gateway needs from its database.
pub trait GatewayStore: operators::OperatorStore + Clone + Send + Sync + 'static {
    /// Applies the gateway's migrations; idempotent.
    fn migrate(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Answers when the database does (the readiness check).
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Creates an active tenant.
    fn create_tenant(
        &self,
        id: &TenantId,
        name: &str,
    ) -> impl Future<Output = Result<Tenant, StoreError>> + Send;

    /// Suspends or resumes a tenant (`Active` or `Suspended`; a tenant
    /// being deleted cannot be).
    fn set_tenant_state(
        &self,
        id: &TenantId,
        state: TenantState,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every tenant, by id.
    fn list_tenants(&self) -> impl Future<Output = Result<Vec<Tenant>, StoreError>> + Send;

    /// One tenant, deleted ones included.
    fn get_tenant(
        &self,
        id: &TenantId,
    ) -> impl Future<Output = Result<Option<Tenant>, StoreError>> + Send;

    /// Begins deleting a tenant: every key refused from now on (idempotent;
    /// the first time is kept). The tenant as it is now.
    fn begin_deletion(
        &self,
        id: &TenantId,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<Tenant, StoreError>> + Send;

    /// Ends a deletion once every app deleted the tenant's data: removes
    /// its keys, usage and name, keeping the row as a tombstone.
    fn finish_deletion(
        &self,
        id: &TenantId,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Stores a new key of an existing tenant.
    fn insert_key(&self, key: &StoredKey) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// One key of one tenant, with its tenant's state: what authentication
    /// reads. `None` when either is missing.
    fn find_key(
        &self,
        tenant: &TenantId,
        id: &KeyId,
    ) -> impl Future<Output = Result<Option<(StoredKey, TenantState)>, StoreError>> + Send;

    /// A tenant's keys, newest first.
    fn list_keys(
        &self,
        tenant: &TenantId,
    ) -> impl Future<Output = Result<Vec<StoredKey>, StoreError>> + Send;

    /// Revokes a key now (idempotent: a revoked key keeps its first time).
    fn revoke_key(
        &self,
        tenant: &TenantId,
        id: &KeyId,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Sets when a key expires (rotation's overlap); never later than an
    /// expiry it already has.
    fn expire_key(
        &self,
        tenant: &TenantId,
        id: &KeyId,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Sets one of a tenant's limits (`None`: the default).
    fn set_limit(
        &self,
        id: &TenantId,
        limit: TenantLimit,
        value: Option<u64>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Sets a tenant's daily readings quota (`None`: the default).
    fn set_readings_quota(
        &self,
        id: &TenantId,
        per_day: Option<u64>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.set_limit(id, TenantLimit::ReadingsPerDay, per_day)
    }

    /// Counts `n` readings against the tenant's quota for `day` (its own,
    /// or `default`) if they fit, atomically: concurrent requests cannot
    /// together pass the quota.
    fn reserve_readings(
        &self,
        id: &TenantId,
        day: chrono::NaiveDate,
        n: u64,
        default: u64,
    ) -> impl Future<Output = Result<Reservation, StoreError>> + Send;

    /// Gives back `n` reserved readings that were not stored (duplicates,
    /// rejected, or the publish failed).
    fn release_readings(
        &self,
        id: &TenantId,
        day: chrono::NaiveDate,
        n: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Records when keys were last used.
    fn touch_keys(
        &self,
        used: &[(TenantId, KeyId, DateTime<Utc>)],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Reads back a tenant id from a row.
fn tenant_id(raw: &str) -> Result<TenantId, StoreError> {
    TenantId::parse(raw).map_err(|e| StoreError::Corrupt(format!("tenant_id {raw:?}: {e}")))
}

/// Reads back a key id from a row.
fn key_id(raw: &str) -> Result<KeyId, StoreError> {
    KeyId::parse(raw).map_err(|e| StoreError::Corrupt(format!("key_id {raw:?}: {e}")))
}
