//! The gateway's store in the shared SQLite file: tables `gateway_*`,
//! times as microseconds since the epoch, scopes as a JSON array.

use chrono::{DateTime, Utc};
use sqlx::{Row as _, SqlitePool, sqlite::SqliteRow};

use super::{
    GatewayStore, StoreError, StoredKey, TENANT_COLUMNS, Tenant, TenantLimit, TenantState, key_id,
    limit, postgres::no_key_unless, tenant_id,
};
use crate::keys::{KeyId, TenantId};

/// The gateway's SQLite migrations (versions 400000+).
pub fn migrator() -> sqlx::migrate::Migrator {
    jobs::embedded_migrations(&[
        (
            400_001,
            "gateway",
            include_str!("../../migrations/sqlite/400001_gateway.sql"),
        ),
        (
            400_002,
            "quotas",
            include_str!("../../migrations/sqlite/400002_quotas.sql"),
        ),
        (
            400_003,
            "tenant lifecycle",
            include_str!("../../migrations/sqlite/400003_tenant_lifecycle.sql"),
        ),
        (
            400_004,
            "console",
            include_str!("../../migrations/sqlite/400004_console.sql"),
        ),
        (
            400_005,
            "gateway totp replay",
            include_str!("../../migrations/sqlite/400005_totp_replay.sql"),
        ),
    ])
}

/// A [`GatewayStore`] on the embedded SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteGatewayStore {
    pool: SqlitePool,
}

impl SqliteGatewayStore {
    /// Opens the file, creating it and its folder if needed.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Ok(Self {
            pool: jobs::sqlite::connect(url).await?,
        })
    }
}

pub(super) fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

pub(super) fn time(row: &SqliteRow, column: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
    let raw: Option<i64> = row.try_get(column)?;
    raw.map(|m| {
        DateTime::from_timestamp_micros(m)
            .ok_or_else(|| StoreError::Corrupt(format!("{column} {m} is not a time")))
    })
    .transpose()
}

const KEY_COLUMNS: &str = "k.tenant_id, k.key_id, k.digest, k.pepper_id, k.scopes, k.name, \
     k.created_at, k.expires_at, k.revoked_at, k.last_used_at";

fn key_from(row: &SqliteRow) -> Result<StoredKey, StoreError> {
    let scopes: String = row.try_get("scopes")?;
    Ok(StoredKey {
        tenant: tenant_id(row.try_get("tenant_id")?)?,
        id: key_id(row.try_get("key_id")?)?,
        digest: row.try_get("digest")?,
        pepper_id: row.try_get("pepper_id")?,
        scopes: serde_json::from_str(&scopes)
            .map_err(|e| StoreError::Corrupt(format!("api_key.scopes: {e}")))?,
        name: row.try_get("name")?,
        created_at: time(row, "created_at")?
            .ok_or_else(|| StoreError::Corrupt("api_key.created_at is null".into()))?,
        expires_at: time(row, "expires_at")?,
        revoked_at: time(row, "revoked_at")?,
        last_used_at: time(row, "last_used_at")?,
    })
}

fn tenant_from(row: &SqliteRow) -> Result<Tenant, StoreError> {
    Ok(Tenant {
        id: tenant_id(row.try_get("tenant_id")?)?,
        name: row.try_get("name")?,
        state: tenant_state(row)?,
        created_at: time(row, "created_at")?
            .ok_or_else(|| StoreError::Corrupt("tenant.created_at is null".into()))?,
        readings_per_day: limit(row.try_get("readings_per_day")?),
        max_series: limit(row.try_get("max_series")?),
        retention_days: limit(row.try_get("retention_days")?),
    })
}

fn tenant_state(row: &SqliteRow) -> Result<TenantState, StoreError> {
    TenantState::of_row(
        row.try_get("state")?,
        time(row, "delete_requested_at")?,
        time(row, "deleted_at")?,
    )
}

impl SqliteGatewayStore {
    /// The pool, for the console's half of the store (`operators`).
    pub(super) fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

impl SqliteGatewayStore {
    /// Why an update of a tenant touched no row.
    async fn missing_or_deleted(&self, id: &TenantId) -> StoreError {
        match self.get_tenant(id).await {
            Ok(Some(_)) => StoreError::TenantDeleted(id.clone()),
            Ok(None) => StoreError::NoTenant(id.clone()),
            Err(error) => error,
        }
    }
}

impl GatewayStore for SqliteGatewayStore {
    /// Under the lock file that keeps apps sharing the file from migrating
    /// it at the same time.
    async fn migrate(&self) -> Result<(), StoreError> {
        Ok(jobs::sqlite::run_migrations(&self.pool, &[migrator()]).await?)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(jobs::sqlite::ping(&self.pool).await?)
    }

    async fn create_tenant(&self, id: &TenantId, name: &str) -> Result<Tenant, StoreError> {
        let now = Utc::now();
        let inserted = sqlx::query(
            "INSERT INTO gateway_tenant (tenant_id, name, state, created_at, updated_at)
             VALUES (?, ?, 'active', ?, ?) ON CONFLICT (tenant_id) DO NOTHING",
        )
        .bind(id.as_str())
        .bind(name)
        .bind(micros(now))
        .bind(micros(now))
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(match self.get_tenant(id).await? {
                Some(t) if matches!(t.state, TenantState::Deleting | TenantState::Deleted) => {
                    StoreError::TenantDeleted(id.clone())
                }
                _ => StoreError::TenantExists(id.clone()),
            });
        }
        Ok(Tenant {
            id: id.clone(),
            name: name.to_owned(),
            state: TenantState::Active,
            created_at: DateTime::from_timestamp_micros(micros(now)).unwrap_or(now),
            readings_per_day: None,
            max_series: None,
            retention_days: None,
        })
    }

    async fn set_tenant_state(&self, id: &TenantId, state: TenantState) -> Result<(), StoreError> {
        let updated = sqlx::query(
            "UPDATE gateway_tenant SET state = ?, updated_at = ?
             WHERE tenant_id = ? AND delete_requested_at IS NULL",
        )
        .bind(state.as_str())
        .bind(micros(Utc::now()))
        .bind(id.as_str())
        .execute(&self.pool)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(self.missing_or_deleted(id).await);
        }
        Ok(())
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {TENANT_COLUMNS} FROM gateway_tenant ORDER BY tenant_id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(tenant_from).collect()
    }

    async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {TENANT_COLUMNS} FROM gateway_tenant WHERE tenant_id = ?"
        ))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(tenant_from).transpose()
    }

    async fn begin_deletion(&self, id: &TenantId, at: DateTime<Utc>) -> Result<Tenant, StoreError> {
        let row = sqlx::query(&format!(
            "UPDATE gateway_tenant SET state = 'suspended', updated_at = ?2,
                    delete_requested_at = COALESCE(delete_requested_at, ?2)
             WHERE tenant_id = ?1 RETURNING {TENANT_COLUMNS}"
        ))
        .bind(id.as_str())
        .bind(micros(at))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref()
            .map(tenant_from)
            .transpose()?
            .ok_or_else(|| StoreError::NoTenant(id.clone()))
    }

    async fn finish_deletion(&self, id: &TenantId, at: DateTime<Utc>) -> Result<(), StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        for table in ["gateway_api_key", "gateway_daily_usage"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE tenant_id = ?"))
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        let updated = sqlx::query(
            "UPDATE gateway_tenant SET name = '', updated_at = ?2,
                    deleted_at = COALESCE(deleted_at, ?2)
             WHERE tenant_id = ?1 AND delete_requested_at IS NOT NULL",
        )
        .bind(id.as_str())
        .bind(micros(at))
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NoTenant(id.clone()));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn insert_key(&self, key: &StoredKey) -> Result<(), StoreError> {
        let scopes = serde_json::to_string(&key.scopes)
            .map_err(|e| StoreError::Corrupt(format!("scopes: {e}")))?;
        let inserted = sqlx::query(
            "INSERT INTO gateway_api_key
                 (tenant_id, key_id, digest, pepper_id, scopes, name, created_at, expires_at)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8
             WHERE EXISTS (SELECT 1 FROM gateway_tenant WHERE tenant_id = ?1)",
        )
        .bind(key.tenant.as_str())
        .bind(key.id.as_str())
        .bind(&key.digest)
        .bind(&key.pepper_id)
        .bind(scopes)
        .bind(&key.name)
        .bind(micros(key.created_at))
        .bind(key.expires_at.map(micros))
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
            "SELECT {KEY_COLUMNS}, t.state, t.delete_requested_at, t.deleted_at FROM gateway_api_key k
             JOIN gateway_tenant t ON t.tenant_id = k.tenant_id
             WHERE k.tenant_id = ? AND k.key_id = ?"
        ))
        .bind(tenant.as_str())
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| Ok((key_from(&row)?, tenant_state(&row)?)))
            .transpose()
    }

    async fn list_keys(&self, tenant: &TenantId) -> Result<Vec<StoredKey>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM gateway_api_key k WHERE k.tenant_id = ?
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
            "UPDATE gateway_api_key SET revoked_at = COALESCE(revoked_at, ?)
             WHERE tenant_id = ? AND key_id = ?",
        )
        .bind(micros(at))
        .bind(tenant.as_str())
        .bind(id.as_str())
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
            "UPDATE gateway_api_key SET expires_at = min(COALESCE(expires_at, ?1), ?1)
             WHERE tenant_id = ?2 AND key_id = ?3",
        )
        .bind(micros(at))
        .bind(tenant.as_str())
        .bind(id.as_str())
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
            "UPDATE gateway_tenant SET {} = ?, updated_at = ?
             WHERE tenant_id = ? AND delete_requested_at IS NULL",
            limit.column()
        ))
        .bind(value.map(|q| i64::try_from(q).unwrap_or(i64::MAX)))
        .bind(micros(Utc::now()))
        .bind(id.as_str())
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
        let day = day.to_string();
        let (quota, max_series): (i64, Option<i64>) = sqlx::query_as(
            "SELECT coalesce(readings_per_day, ?), max_series FROM gateway_tenant WHERE tenant_id = ?",
        )
        .bind(default)
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NoTenant(id.clone()))?;
        let counted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO gateway_daily_usage AS u (tenant_id, day, readings) \
             SELECT ?1, ?2, ?3 WHERE ?3 <= ?4 \
             ON CONFLICT (tenant_id, day) DO UPDATE SET readings = u.readings + excluded.readings \
               WHERE u.readings + excluded.readings <= ?4 \
             RETURNING readings",
        )
        .bind(id.as_str())
        .bind(&day)
        .bind(n)
        .bind(quota)
        .fetch_optional(&self.pool)
        .await?;
        let used = match counted {
            Some(used) => used,
            None => sqlx::query_scalar(
                "SELECT readings FROM gateway_daily_usage WHERE tenant_id = ? AND day = ?",
            )
            .bind(id.as_str())
            .bind(&day)
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
            "UPDATE gateway_daily_usage SET readings = max(readings - ?, 0) \
             WHERE tenant_id = ? AND day = ?",
        )
        .bind(i64::try_from(n).unwrap_or(i64::MAX))
        .bind(id.as_str())
        .bind(day.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn touch_keys(
        &self,
        used: &[(TenantId, KeyId, DateTime<Utc>)],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for (tenant, id, at) in used {
            sqlx::query(
                "UPDATE gateway_api_key SET last_used_at = max(COALESCE(last_used_at, ?1), ?1)
                 WHERE tenant_id = ?2 AND key_id = ?3",
            )
            .bind(micros(*at))
            .bind(tenant.as_str())
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
