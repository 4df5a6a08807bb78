//! The gateway's store on PostgreSQL: schema `gateway`.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row as _, postgres::PgRow};

use super::{
    GatewayStore, StoreError, StoredKey, TENANT_COLUMNS, Tenant, TenantLimit, TenantState, key_id,
    limit, tenant_id,
};
use crate::keys::{KeyId, TenantId};

/// The gateway's PostgreSQL migrations (versions 400000+).
pub fn migrator() -> sqlx::migrate::Migrator {
    jobs::embedded_migrations(&[
        (
            400_001,
            "gateway",
            include_str!("../../migrations/postgres/400001_gateway.sql"),
        ),
        (
            400_002,
            "quotas",
            include_str!("../../migrations/postgres/400002_quotas.sql"),
        ),
        (
            400_003,
            "tenant lifecycle",
            include_str!("../../migrations/postgres/400003_tenant_lifecycle.sql"),
        ),
        (
            400_004,
            "console",
            include_str!("../../migrations/postgres/400004_console.sql"),
        ),
        (
            400_005,
            "gateway totp replay",
            include_str!("../../migrations/postgres/400005_totp_replay.sql"),
        ),
    ])
}

/// A [`GatewayStore`] on a PostgreSQL pool.
#[derive(Debug, Clone)]
pub struct PgGatewayStore {
    pool: PgPool,
}

impl PgGatewayStore {
    /// Connects a pool of `pool_size` connections named `gateway`.
    pub async fn connect(url: &str, pool_size: u32) -> Result<Self, StoreError> {
        let pool =
            jobs::postgres::connect(url, "gateway", pool_size, service_runtime::CONNECT_TIMEOUT)
                .await?;
        Ok(Self { pool })
    }

    /// Wraps a pool.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Connects as the login of a deployment whose migrations Job migrates
    /// (`GATEWAY_MIGRATE_AT_START=false`): waits until every migration
    /// this build knows is applied.
    pub async fn connect_when_migrated(url: &str, pool_size: u32) -> Result<Self, StoreError> {
        let store = Self::connect(url, pool_size).await?;
        jobs::postgres::wait_for_migrations(&store.pool, &[migrator()], "gateway").await;
        Ok(store)
    }
}

impl PgGatewayStore {
    /// The pool, for the console's half of the store (`operators`).
    pub(super) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Why an update of a tenant touched no row.
    async fn missing_or_deleted(&self, id: &TenantId) -> StoreError {
        match self.get_tenant(id).await {
            Ok(Some(_)) => StoreError::TenantDeleted(id.clone()),
            Ok(None) => StoreError::NoTenant(id.clone()),
            Err(error) => error,
        }
    }
}

/// Least privilege: with the migrator credential, migrates and gives the
/// user of `app_url` the role `<database>_gateway` (the `gateway` schema
/// only), then connects as that user.
pub async fn provision(
    migrator_url: &str,
    app_url: &str,
    pool_size: u32,
) -> Result<PgGatewayStore, StoreError> {
    let migrator = jobs::postgres::connect(
        migrator_url,
        "gateway-migrator",
        2,
        service_runtime::CONNECT_TIMEOUT,
    )
    .await?;
    PgGatewayStore::new(migrator.clone()).migrate().await?;
    let login = jobs::roles::login_of(app_url)?;
    jobs::roles::provision_app_role(
        &migrator,
        "gateway",
        Some("gateway"),
        jobs::roles::JobsAccess::None,
        &login,
    )
    .await?;
    migrator.close().await;
    PgGatewayStore::connect(app_url, pool_size).await
}

const KEY_COLUMNS: &str = "k.tenant_id, k.key_id, k.digest, k.pepper_id, k.scopes, k.name, \
     k.created_at, k.expires_at, k.revoked_at, k.last_used_at";

fn key_from(row: &PgRow) -> Result<StoredKey, StoreError> {
    Ok(StoredKey {
        tenant: tenant_id(row.try_get("tenant_id")?)?,
        id: key_id(row.try_get("key_id")?)?,
        digest: row.try_get("digest")?,
        pepper_id: row.try_get("pepper_id")?,
        scopes: row.try_get("scopes")?,
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        last_used_at: row.try_get("last_used_at")?,
    })
}

fn tenant_from(row: &PgRow) -> Result<Tenant, StoreError> {
    Ok(Tenant {
        id: tenant_id(row.try_get("tenant_id")?)?,
        name: row.try_get("name")?,
        state: TenantState::of_row(
            row.try_get("state")?,
            row.try_get("delete_requested_at")?,
            row.try_get("deleted_at")?,
        )?,
        created_at: row.try_get("created_at")?,
        readings_per_day: limit(row.try_get("readings_per_day")?),
        max_series: limit(row.try_get("max_series")?),
        retention_days: limit(row.try_get("retention_days")?),
    })
}

impl GatewayStore for PgGatewayStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        migrator()
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Jobs(jobs::JobsError::from(e)))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(jobs::postgres::ping(&self.pool).await?)
    }

    async fn create_tenant(&self, id: &TenantId, name: &str) -> Result<Tenant, StoreError> {
        let created: Option<DateTime<Utc>> = sqlx::query_scalar(
            "INSERT INTO gateway.tenant (tenant_id, name) VALUES ($1, $2)
             ON CONFLICT (tenant_id) DO NOTHING RETURNING created_at",
        )
        .bind(id.as_str())
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        let Some(created_at) = created else {
            return Err(match self.get_tenant(id).await? {
                Some(t) if matches!(t.state, TenantState::Deleting | TenantState::Deleted) => {
                    StoreError::TenantDeleted(id.clone())
                }
                _ => StoreError::TenantExists(id.clone()),
            });
        };
        Ok(Tenant {
            id: id.clone(),
            name: name.to_owned(),
            state: TenantState::Active,
            created_at,
            readings_per_day: None,
            max_series: None,
            retention_days: None,
        })
    }

    async fn set_tenant_state(&self, id: &TenantId, state: TenantState) -> Result<(), StoreError> {
        let updated = sqlx::query(
            "UPDATE gateway.tenant SET state = $2, updated_at = now()
             WHERE tenant_id = $1 AND delete_requested_at IS NULL",
        )
        .bind(id.as_str())
        .bind(state.as_str())
        .execute(&self.pool)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(self.missing_or_deleted(id).await);
        }
        Ok(())
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {TENANT_COLUMNS} FROM gateway.tenant ORDER BY tenant_id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(tenant_from).collect()
    }

    async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {TENANT_COLUMNS} FROM gateway.tenant WHERE tenant_id = $1"
        ))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(tenant_from).transpose()
    }

    async fn begin_deletion(&self, id: &TenantId, at: DateTime<Utc>) -> Result<Tenant, StoreError> {
        let row = sqlx::query(&format!(
            "UPDATE gateway.tenant SET state = 'suspended', updated_at = now(),
                    delete_requested_at = COALESCE(delete_requested_at, $2)
             WHERE tenant_id = $1 RETURNING {TENANT_COLUMNS}"
        ))
        .bind(id.as_str())
        .bind(at)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref()
            .map(tenant_from)
            .transpose()?
            .ok_or_else(|| StoreError::NoTenant(id.clone()))
    }

    async fn finish_deletion(&self, id: &TenantId, at: DateTime<Utc>) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for table in ["gateway.api_key", "gateway.daily_usage"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE tenant_id = $1"))
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        let updated = sqlx::query(
            "UPDATE gateway.tenant SET name = '', updated_at = now(),
                    deleted_at = COALESCE(deleted_at, $2)
             WHERE tenant_id = $1 AND delete_requested_at IS NOT NULL",
        )
        .bind(id.as_str())
        .bind(at)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NoTenant(id.clone()));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn insert_key(&self, key: &StoredKey) -> Result<(), StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO gateway.api_key
                 (tenant_id, key_id, digest, pepper_id, scopes, name, created_at, expires_at)
             SELECT $1, $2, $3, $4, $5, $6, $7, $8
             WHERE EXISTS (SELECT 1 FROM gateway.tenant WHERE tenant_id = $1)",
        )
        .bind(key.tenant.as_str())
        .bind(key.id.as_str())
        .bind(&key.digest)
        .bind(&key.pepper_id)
        .bind(&key.scopes)
        .bind(&key.name)
        .bind(key.created_at)
        .bind(key.expires_at)
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::NoTenant(key.tenant.clone()));
        }
        Ok(())
    }

    async fn find_key(
        &self,
        tenant: &TenantId,
        id: &KeyId,
    ) -> Result<Option<(StoredKey, TenantState)>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS}, t.state, t.delete_requested_at, t.deleted_at
             FROM gateway.api_key k JOIN gateway.tenant t USING (tenant_id)
             WHERE k.tenant_id = $1 AND k.key_id = $2"
        ))
        .bind(tenant.as_str())
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            let state = TenantState::of_row(
                row.try_get("state")?,
                row.try_get("delete_requested_at")?,
                row.try_get("deleted_at")?,
            )?;
            Ok((key_from(&row)?, state))
        })
        .transpose()
    }

    async fn list_keys(&self, tenant: &TenantId) -> Result<Vec<StoredKey>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM gateway.api_key k WHERE k.tenant_id = $1
             ORDER BY k.created_at DESC, k.key_id"
        ))
        .bind(tenant.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_from).collect()
    }

    async fn revoke_key(
        &self,
        tenant: &TenantId,
        id: &KeyId,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let updated = sqlx::query(
            "UPDATE gateway.api_key SET revoked_at = COALESCE(revoked_at, $3)
             WHERE tenant_id = $1 AND key_id = $2",
        )
        .bind(tenant.as_str())
        .bind(id.as_str())
        .bind(at)
        .execute(&self.pool)
        .await?;
        no_key_unless(updated.rows_affected(), tenant, id)
    }

    async fn expire_key(
        &self,
        tenant: &TenantId,
        id: &KeyId,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let updated = sqlx::query(
            "UPDATE gateway.api_key SET expires_at = LEAST(COALESCE(expires_at, $3), $3)
             WHERE tenant_id = $1 AND key_id = $2",
        )
        .bind(tenant.as_str())
        .bind(id.as_str())
        .bind(at)
        .execute(&self.pool)
        .await?;
        no_key_unless(updated.rows_affected(), tenant, id)
    }

    async fn set_limit(
        &self,
        id: &TenantId,
        limit: TenantLimit,
        value: Option<u64>,
    ) -> Result<(), StoreError> {
        let updated = sqlx::query(&format!(
            "UPDATE gateway.tenant SET {} = $2, updated_at = now()
             WHERE tenant_id = $1 AND delete_requested_at IS NULL",
            limit.column()
        ))
        .bind(id.as_str())
        .bind(value.map(|q| i64::try_from(q).unwrap_or(i64::MAX)))
        .execute(&self.pool)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(self.missing_or_deleted(id).await);
        }
        Ok(())
    }

    async fn reserve_readings(
        &self,
        id: &TenantId,
        day: chrono::NaiveDate,
        n: u64,
        default: u64,
    ) -> Result<super::Reservation, StoreError> {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let default = i64::try_from(default).unwrap_or(i64::MAX);
        let (quota, max_series): (i64, Option<i64>) = sqlx::query_as(
            "SELECT coalesce(readings_per_day, $2), max_series FROM gateway.tenant WHERE tenant_id = $1",
        )
        .bind(id.as_str())
        .bind(default)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NoTenant(id.clone()))?;
        let counted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO gateway.daily_usage AS u (tenant_id, day, readings) \
             SELECT $1, $2, $3 WHERE $3 <= $4 \
             ON CONFLICT (tenant_id, day) DO UPDATE SET readings = u.readings + EXCLUDED.readings \
               WHERE u.readings + EXCLUDED.readings <= $4 \
             RETURNING readings",
        )
        .bind(id.as_str())
        .bind(day)
        .bind(n)
        .bind(quota)
        .fetch_optional(&self.pool)
        .await?;
        let used = match counted {
            Some(used) => used,
            None => sqlx::query_scalar(
                "SELECT readings FROM gateway.daily_usage WHERE tenant_id = $1 AND day = $2",
            )
            .bind(id.as_str())
            .bind(day)
            .fetch_optional(&self.pool)
            .await?
            .unwrap_or(0),
        };
        Ok(super::Reservation {
            allowed: counted.is_some(),
            used: u64::try_from(used).unwrap_or(0),
            quota: u64::try_from(quota).unwrap_or(0),
            max_series: limit(max_series),
        })
    }

    async fn release_readings(
        &self,
        id: &TenantId,
        day: chrono::NaiveDate,
        n: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE gateway.daily_usage SET readings = greatest(readings - $3, 0) \
             WHERE tenant_id = $1 AND day = $2",
        )
        .bind(id.as_str())
        .bind(day)
        .bind(i64::try_from(n).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn touch_keys(
        &self,
        used: &[(TenantId, KeyId, DateTime<Utc>)],
    ) -> Result<(), StoreError> {
        if used.is_empty() {
            return Ok(());
        }
        let tenants: Vec<&str> = used.iter().map(|(t, ..)| t.as_str()).collect();
        let ids: Vec<&str> = used.iter().map(|(_, k, _)| k.as_str()).collect();
        let times: Vec<DateTime<Utc>> = used.iter().map(|(.., at)| *at).collect();
        sqlx::query(
            "UPDATE gateway.api_key k SET last_used_at = GREATEST(k.last_used_at, u.at)
             FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS u(tenant_id, key_id, at)
             WHERE k.tenant_id = u.tenant_id AND k.key_id = u.key_id",
        )
        .bind(&tenants)
        .bind(&ids)
        .bind(&times)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// `NoKey` when an update touched no row.
pub(super) fn no_key_unless(rows: u64, tenant: &TenantId, id: &KeyId) -> Result<(), StoreError> {
    if rows == 0 {
        Err(StoreError::NoKey {
            tenant: tenant.clone(),
            key: id.clone(),
        })
    } else {
        Ok(())
    }
}
