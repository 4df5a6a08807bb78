//! Tenants' API keys in use: making one (shown once), rotating one with an
//! overlap, and authenticating a presented key. Storage is
//! [`crate::storage`]'s; this module holds the rules.

use chrono::{DateTime, Utc};

use crate::{
    keys::{ApiKey, KeyError, KeyId, Pepper, TenantId},
    storage::{GatewayStore, StoreError, StoredKey, TenantState},
};

/// The peppers a gateway knows: the current one makes new keys; the
/// previous one, while configured, still checks keys made under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peppers {
    /// Makes and checks keys.
    pub current: Pepper,
    /// Checks keys made before the last pepper rotation.
    pub previous: Option<Pepper>,
}

impl Peppers {
    fn by_id(&self, id: &str) -> Option<&Pepper> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|pepper| pepper.id == id)
    }
}

/// Why a key or tenant operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TenancyError {
    /// The store failed, or the tenant or key is missing.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A key could not be generated.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// A new key of `tenant`: stored as its digest, returned whole to be shown
/// once.
pub async fn create_key(
    store: &impl GatewayStore,
    peppers: &Peppers,
    tenant: &TenantId,
    scopes: Vec<String>,
    name: &str,
    expires_at: Option<DateTime<Utc>>,
) -> Result<(ApiKey, StoredKey), TenancyError> {
    let key = ApiKey::generate(tenant.clone())?;
    let stored = StoredKey {
        tenant: tenant.clone(),
        id: key.id.clone(),
        digest: key.digest(&peppers.current),
        pepper_id: peppers.current.id.clone(),
        scopes,
        name: name.to_owned(),
        created_at: Utc::now(),
        expires_at,
        revoked_at: None,
        last_used_at: None,
    };
    store.insert_key(&stored).await?;
    Ok((key, stored))
}

/// Replaces a key: a new one with the same scopes and name, and the old
/// one expiring after `overlap` so clients can switch without an outage.
pub async fn rotate_key(
    store: &impl GatewayStore,
    peppers: &Peppers,
    tenant: &TenantId,
    old: &KeyId,
    overlap: chrono::Duration,
) -> Result<(ApiKey, StoredKey), TenancyError> {
    let current = store
        .list_keys(tenant)
        .await?
        .into_iter()
        .find(|k| &k.id == old)
        .ok_or_else(|| StoreError::NoKey {
            tenant: tenant.clone(),
            key: old.clone(),
        })?;
    let fresh = create_key(
        store,
        peppers,
        tenant,
        current.scopes.clone(),
        &current.name,
        current.expires_at,
    )
    .await?;
    store.expire_key(tenant, old, Utc::now() + overlap).await?;
    Ok(fresh)
}

/// Who a request is, once its key checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// The tenant the key belongs to: the only tenant the request may touch.
    pub tenant: TenantId,
    /// The key used.
    pub key: KeyId,
    /// What it may do.
    pub scopes: Vec<String>,
}

/// Why a presented key was refused. Callers answer every one the same way
/// (no hint whether the tenant or key exists); the reason is for the audit
/// log, and never contains the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not a platform key at all.
    Malformed,
    /// No such key in that tenant.
    Unknown,
    /// The secret does not match.
    WrongSecret,
    /// Made under a pepper no longer configured.
    RetiredPepper,
    /// Revoked.
    Revoked,
    /// Past its expiry.
    Expired,
    /// Its tenant is suspended.
    Suspended,
}

impl Refusal {
    /// A word for the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Unknown => "unknown key",
            Self::WrongSecret => "wrong secret",
            Self::RetiredPepper => "retired pepper",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::Suspended => "tenant suspended",
        }
    }
}

/// Checks a presented key: it parses, exists in its tenant, matches under
/// its pepper in constant time, is neither revoked nor expired, and its
/// tenant is active.
pub async fn authenticate(
    store: &impl GatewayStore,
    peppers: &Peppers,
    presented: &str,
    now: DateTime<Utc>,
) -> Result<Result<Authenticated, Refusal>, StoreError> {
    authenticate_cached(store, &KeyCache::disabled(), peppers, presented, now).await
}

/// [`authenticate`] reading stored keys through `cache`: a key found in
/// the store is reused for the cache's time to live, so revocation,
/// expiry and suspension take effect within that time (the secret is still
/// checked on every request; unknown keys are never cached).
pub async fn authenticate_cached(
    store: &impl GatewayStore,
    cache: &KeyCache,
    peppers: &Peppers,
    presented: &str,
    now: DateTime<Utc>,
) -> Result<Result<Authenticated, Refusal>, StoreError> {
    let Ok(key) = ApiKey::parse(presented) else {
        return Ok(Err(Refusal::Malformed));
    };
    let found = match cache.get(&key.tenant, &key.id) {
        Some(found) => Some(found),
        None => {
            let found = store
                .find_key(&key.tenant, &key.id)
                .await?
                .map(std::sync::Arc::new);
            if let Some(found) = &found {
                cache.put(std::sync::Arc::clone(found));
            }
            found
        }
    };
    let Some(found) = found else {
        return Ok(Err(Refusal::Unknown));
    };
    let (stored, state) = &*found;
    let Some(pepper) = peppers.by_id(&stored.pepper_id) else {
        return Ok(Err(Refusal::RetiredPepper));
    };
    let refusal = if !key.matches(pepper, &stored.digest) {
        Some(Refusal::WrongSecret)
    } else if stored.revoked_at.is_some_and(|at| at <= now) {
        Some(Refusal::Revoked)
    } else if stored.expires_at.is_some_and(|at| at <= now) {
        Some(Refusal::Expired)
    } else if *state != TenantState::Active {
        Some(Refusal::Suspended)
    } else {
        None
    };
    Ok(match refusal {
        Some(refusal) => Err(refusal),
        None => Ok(Authenticated {
            tenant: stored.tenant.clone(),
            key: stored.id.clone(),
            scopes: stored.scopes.clone(),
        }),
    })
}

/// Stored keys (with their tenant's state) read recently, so a busy key
/// costs one database read per time to live instead of one per request.
#[derive(Debug, Clone)]
pub struct KeyCache {
    ttl: std::time::Duration,
    keys: std::sync::Arc<std::sync::Mutex<CachedKeys>>,
}

/// A stored key with its tenant's state, as the store found it; shared,
/// so a cache hit costs a reference count, not a copy.
pub type FoundKey = std::sync::Arc<(StoredKey, TenantState)>;

/// By key id (random, so unique in practice; the tenant is checked on
/// every hit): a lookup needs no owned key.
type CachedKeys = std::collections::HashMap<KeyId, (std::time::Instant, FoundKey)>;

/// The most keys held; past it the cache starts over (a flood of distinct
/// valid keys cannot grow memory without bound).
const MAX_CACHED_KEYS: usize = 100_000;

impl KeyCache {
    /// Keys live `ttl`; zero caches nothing.
    pub fn new(ttl: std::time::Duration) -> Self {
        Self {
            ttl,
            keys: std::sync::Arc::default(),
        }
    }

    /// Caches nothing: every request reads the store.
    pub fn disabled() -> Self {
        Self::new(std::time::Duration::ZERO)
    }

    fn get(&self, tenant: &TenantId, id: &KeyId) -> Option<FoundKey> {
        self.get_at(tenant, id, std::time::Instant::now())
    }

    /// What the cache holds for the key at `now`.
    fn get_at(&self, tenant: &TenantId, id: &KeyId, now: std::time::Instant) -> Option<FoundKey> {
        if self.ttl.is_zero() {
            return None;
        }
        let keys = self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        keys.get(id)
            .filter(|(at, found)| {
                now.saturating_duration_since(*at) < self.ttl && found.0.tenant == *tenant
            })
            .map(|(_, found)| std::sync::Arc::clone(found))
    }

    fn put(&self, found: FoundKey) {
        if self.ttl.is_zero() {
            return;
        }
        let mut keys = self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if keys.len() >= MAX_CACHED_KEYS {
            keys.clear();
        }
        keys.insert(found.0.id.clone(), (std::time::Instant::now(), found));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(tenant: &str) -> (StoredKey, TenantState) {
        (
            StoredKey {
                tenant: TenantId::parse(tenant).unwrap(),
                id: KeyId::parse("0123456789abcdef").unwrap(),
                digest: vec![1, 2, 3],
                pepper_id: "p1".into(),
                scopes: vec![],
                name: String::new(),
                created_at: Utc::now(),
                expires_at: None,
                revoked_at: None,
                last_used_at: None,
            },
            TenantState::Active,
        )
    }

    #[test]
    fn the_cache_keeps_a_key_for_its_ttl_only_and_per_tenant() {
        let cache = KeyCache::new(std::time::Duration::from_millis(200));
        let found = stored("acme");
        let (tenant, id) = (found.0.tenant.clone(), found.0.id.clone());
        assert!(cache.get(&tenant, &id).is_none());
        cache.put(std::sync::Arc::new(found.clone()));
        assert_eq!(cache.get(&tenant, &id).as_deref(), Some(&found));
        assert!(
            cache
                .get(&TenantId::parse("globex").unwrap(), &id)
                .is_none()
        );
        let later = std::time::Instant::now() + std::time::Duration::from_millis(250);
        assert!(cache.get_at(&tenant, &id, later).is_none(), "expired");
        let off = KeyCache::disabled();
        off.put(std::sync::Arc::new(stored("acme")));
        assert!(off.get(&tenant, &id).is_none());
    }
}
