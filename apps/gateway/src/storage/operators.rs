//! The console's operators, their sessions and the audit log, in both
//! databases: the trait [`OperatorStore`] (a part of every
//! [`super::GatewayStore`]) and its two implementations. Operators are the
//! platform's people, not a tenant's: nothing here carries a tenant.

use std::future::Future;

use chrono::{DateTime, Utc};
use sqlx::Row as _;

use super::{StoreError, postgres::PgGatewayStore, sqlite::SqliteGatewayStore};

/// What an operator may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads every page; changes nothing.
    Viewer,
    /// Also acts on jobs, queues, dead letters and tenants' keys.
    Operator,
    /// Also manages operators; must use a second factor.
    Admin,
}

impl Role {
    /// `viewer`, `operator` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }

    /// Every role, weakest first (for forms and help texts).
    pub const ALL: [Self; 3] = [Self::Viewer, Self::Operator, Self::Admin];
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|role| role.as_str() == raw)
            .ok_or_else(|| format!("{raw:?} is not a role (viewer, operator or admin)"))
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An operator as stored, password hash included (it never leaves the
/// gateway).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorAccount {
    /// Its id.
    pub id: i64,
    /// The name it logs in with.
    pub username: String,
    /// What it may do.
    pub role: Role,
    /// argon2id, as a PHC string.
    pub password_hash: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its password last changed.
    pub password_changed_at: DateTime<Utc>,
    /// When it was disabled; a disabled operator cannot log in.
    pub disabled_at: Option<DateTime<Utc>>,
    /// Its TOTP secret once enrolled.
    pub totp_secret: Option<Vec<u8>>,
}

/// A live session as stored, with its operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    /// Whose.
    pub operator: OperatorAccount,
    /// The token forms must carry back (bound to this session).
    pub csrf_token: String,
    /// When it began (login); sets the absolute expiry.
    pub created_at: DateTime<Utc>,
    /// When it was last used; sets the idle expiry.
    pub last_seen_at: DateTime<Utc>,
    /// When the operator gave the second factor in it, if it did.
    pub second_factor_at: Option<DateTime<Utc>>,
}

/// One recorded action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// When.
    pub at: DateTime<Utc>,
    /// Who (the operator's name, or `cli` for the command line).
    pub operator: String,
    /// What, e.g. `job.cancel`.
    pub action: String,
    /// On what, e.g. `job 42`.
    pub target: String,
    /// Anything else worth keeping.
    pub detail: String,
}

/// The console's part of the gateway's database.
pub trait OperatorStore: Clone + Send + Sync + 'static {
    /// Creates an operator; [`StoreError::OperatorExists`] if the name is
    /// taken.
    fn create_operator(
        &self,
        username: &str,
        password_hash: &str,
        role: Role,
    ) -> impl Future<Output = Result<OperatorAccount, StoreError>> + Send;

    /// The operator with this name, if any.
    fn operator(
        &self,
        username: &str,
    ) -> impl Future<Output = Result<Option<OperatorAccount>, StoreError>> + Send;

    /// Every operator, by name.
    fn operators(&self) -> impl Future<Output = Result<Vec<OperatorAccount>, StoreError>> + Send;

    /// Sets an operator's password and ends all its sessions (a changed
    /// password logs every other browser out).
    fn set_password(
        &self,
        operator_id: i64,
        password_hash: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Sets an operator's role, or disables (`Some`) / enables (`None`)
    /// it; disabling ends its sessions.
    fn set_role(
        &self,
        operator_id: i64,
        role: Role,
        disabled: Option<DateTime<Utc>>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Stores a confirmed TOTP secret with fresh recovery codes (by
    /// digest), replacing any earlier ones.
    fn enrol_totp(
        &self,
        operator_id: i64,
        secret: &[u8],
        recovery_digests: &[[u8; 32]],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Spends the TOTP time step `step`: true if it is later than every
    /// step the operator used before (a code works once, and never after a
    /// later one).
    fn use_totp_step(
        &self,
        operator_id: i64,
        step: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Spends a recovery code: true if it was the operator's and unused.
    fn use_recovery_code(
        &self,
        operator_id: i64,
        digest: &[u8; 32],
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Records a one-time password-reset link for an operator, found by
    /// `token_digest`, valid until `expires_at`.
    fn create_reset(
        &self,
        token_digest: &[u8; 32],
        operator_id: i64,
        expires_at: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Spends a reset link at `now`: its operator if the link exists, is
    /// unused and unexpired, and belongs to `username` (the link is then
    /// used up); `None` otherwise.
    fn use_reset(
        &self,
        token_digest: &[u8; 32],
        username: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Option<OperatorAccount>, StoreError>> + Send;

    /// Starts a session found by `token_digest`.
    fn create_session(
        &self,
        token_digest: &[u8; 32],
        operator_id: i64,
        csrf_token: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The session and its operator, if the session exists.
    fn session(
        &self,
        token_digest: &[u8; 32],
    ) -> impl Future<Output = Result<Option<StoredSession>, StoreError>> + Send;

    /// Marks a session used at `now` (and, with `second_factor`, that the
    /// second factor was given now).
    fn touch_session(
        &self,
        token_digest: &[u8; 32],
        now: DateTime<Utc>,
        second_factor: bool,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Ends one session (logout).
    fn end_session(
        &self,
        token_digest: &[u8; 32],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Ends every session of an operator ("log out everywhere"); returns
    /// how many.
    fn end_sessions(
        &self,
        operator_id: i64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Deletes sessions idle since `idle_before` or begun before
    /// `begun_before`; returns how many.
    fn sweep_sessions(
        &self,
        idle_before: DateTime<Utc>,
        begun_before: DateTime<Utc>,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Records an action.
    fn record(&self, entry: &AuditEntry) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The latest `limit` actions, newest first.
    fn audit_log(
        &self,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<AuditEntry>, StoreError>> + Send;
}

/// An operator's columns, bare (one table) or qualified `o.` (in a join).
const OPERATOR_COLUMNS: &str = "operator_id, username, role, password_hash, created_at, \
     password_changed_at, disabled_at, totp_secret";
const OPERATOR_COLUMNS_IN_JOIN: &str = "o.operator_id, o.username, o.role, o.password_hash, \
     o.created_at, o.password_changed_at, o.disabled_at, o.totp_secret";

fn role(raw: &str) -> Result<Role, StoreError> {
    raw.parse()
        .map_err(|e| StoreError::Corrupt(format!("operator.role: {e}")))
}

/// A unique violation on the operator's name.
fn name_taken(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

fn required<T>(value: Option<T>, column: &str) -> Result<T, StoreError> {
    value.ok_or_else(|| StoreError::Corrupt(format!("{column} is null")))
}

mod pg {
    use super::*;
    use sqlx::postgres::PgRow;

    pub(super) fn operator(row: &PgRow) -> Result<OperatorAccount, StoreError> {
        Ok(OperatorAccount {
            id: row.try_get("operator_id")?,
            username: row.try_get("username")?,
            role: role(row.try_get("role")?)?,
            password_hash: row.try_get("password_hash")?,
            created_at: row.try_get("created_at")?,
            password_changed_at: row.try_get("password_changed_at")?,
            disabled_at: row.try_get("disabled_at")?,
            totp_secret: row.try_get("totp_secret")?,
        })
    }
}

impl OperatorStore for PgGatewayStore {
    async fn create_reset(
        &self,
        token_digest: &[u8; 32],
        operator_id: i64,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO gateway.operator_reset (token_digest, operator_id, expires_at)
             VALUES ($1, $2, $3)",
        )
        .bind(token_digest.as_slice())
        .bind(operator_id)
        .bind(expires_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn use_reset(
        &self,
        token_digest: &[u8; 32],
        username: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<OperatorAccount>, StoreError> {
        let sql = format!(
            "WITH spent AS (
               UPDATE gateway.operator_reset r SET used_at = $3
               FROM gateway.operator o
               WHERE r.token_digest = $1 AND r.operator_id = o.operator_id AND o.username = $2
                 AND r.used_at IS NULL AND r.expires_at > $3
               RETURNING r.operator_id)
             SELECT {OPERATOR_COLUMNS_IN_JOIN} FROM spent JOIN gateway.operator o USING (operator_id)"
        );
        sqlx::query(&sql)
            .bind(token_digest.as_slice())
            .bind(username)
            .bind(now)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(pg::operator)
            .transpose()
    }

    async fn create_operator(
        &self,
        username: &str,
        password_hash: &str,
        role: Role,
    ) -> Result<OperatorAccount, StoreError> {
        let sql = format!(
            "INSERT INTO gateway.operator (username, password_hash, role) VALUES ($1, $2, $3)
             RETURNING {OPERATOR_COLUMNS}"
        );
        match sqlx::query(&sql)
            .bind(username)
            .bind(password_hash)
            .bind(role.as_str())
            .fetch_one(self.pool())
            .await
        {
            Ok(row) => pg::operator(&row),
            Err(e) if name_taken(&e) => Err(StoreError::OperatorExists(username.to_owned())),
            Err(e) => Err(e.into()),
        }
    }

    async fn operator(&self, username: &str) -> Result<Option<OperatorAccount>, StoreError> {
        let sql = format!("SELECT {OPERATOR_COLUMNS} FROM gateway.operator WHERE username = $1");
        sqlx::query(&sql)
            .bind(username)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(pg::operator)
            .transpose()
    }

    async fn operators(&self) -> Result<Vec<OperatorAccount>, StoreError> {
        let sql = format!("SELECT {OPERATOR_COLUMNS} FROM gateway.operator ORDER BY username");
        sqlx::query(&sql)
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(pg::operator)
            .collect()
    }

    async fn set_password(&self, operator_id: i64, password_hash: &str) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        let changed = sqlx::query(
            "UPDATE gateway.operator SET password_hash = $2, password_changed_at = now()
             WHERE operator_id = $1",
        )
        .bind(operator_id)
        .bind(password_hash)
        .execute(&mut *tx)
        .await?;
        if changed.rows_affected() == 0 {
            return Err(StoreError::NoOperator(operator_id.to_string()));
        }
        sqlx::query("DELETE FROM gateway.operator_session WHERE operator_id = $1")
            .bind(operator_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn set_role(
        &self,
        operator_id: i64,
        role: Role,
        disabled: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        let changed = sqlx::query(
            "UPDATE gateway.operator SET role = $2, disabled_at = $3 WHERE operator_id = $1",
        )
        .bind(operator_id)
        .bind(role.as_str())
        .bind(disabled)
        .execute(&mut *tx)
        .await?;
        if changed.rows_affected() == 0 {
            return Err(StoreError::NoOperator(operator_id.to_string()));
        }
        if disabled.is_some() {
            sqlx::query("DELETE FROM gateway.operator_session WHERE operator_id = $1")
                .bind(operator_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn enrol_totp(
        &self,
        operator_id: i64,
        secret: &[u8],
        recovery_digests: &[[u8; 32]],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        let changed =
            sqlx::query("UPDATE gateway.operator SET totp_secret = $2 WHERE operator_id = $1")
                .bind(operator_id)
                .bind(secret)
                .execute(&mut *tx)
                .await?;
        if changed.rows_affected() == 0 {
            return Err(StoreError::NoOperator(operator_id.to_string()));
        }
        sqlx::query("DELETE FROM gateway.operator_recovery_code WHERE operator_id = $1")
            .bind(operator_id)
            .execute(&mut *tx)
            .await?;
        let digests: Vec<Vec<u8>> = recovery_digests.iter().map(|d| d.to_vec()).collect();
        sqlx::query(
            "INSERT INTO gateway.operator_recovery_code (operator_id, code_digest)
             SELECT $1, d FROM unnest($2::bytea[]) AS d",
        )
        .bind(operator_id)
        .bind(&digests)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn use_totp_step(&self, operator_id: i64, step: i64) -> Result<bool, StoreError> {
        let used = sqlx::query(
            "UPDATE gateway.operator SET totp_last_step = $2
             WHERE operator_id = $1 AND (totp_last_step IS NULL OR totp_last_step < $2)",
        )
        .bind(operator_id)
        .bind(step)
        .execute(self.pool())
        .await?;
        Ok(used.rows_affected() == 1)
    }

    async fn use_recovery_code(
        &self,
        operator_id: i64,
        digest: &[u8; 32],
    ) -> Result<bool, StoreError> {
        let used = sqlx::query(
            "UPDATE gateway.operator_recovery_code SET used_at = now()
             WHERE operator_id = $1 AND code_digest = $2 AND used_at IS NULL",
        )
        .bind(operator_id)
        .bind(digest.as_slice())
        .execute(self.pool())
        .await?;
        Ok(used.rows_affected() == 1)
    }

    async fn create_session(
        &self,
        token_digest: &[u8; 32],
        operator_id: i64,
        csrf_token: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO gateway.operator_session
               (token_digest, operator_id, csrf_token, created_at, last_seen_at)
             VALUES ($1, $2, $3, $4, $4)",
        )
        .bind(token_digest.as_slice())
        .bind(operator_id)
        .bind(csrf_token)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn session(&self, token_digest: &[u8; 32]) -> Result<Option<StoredSession>, StoreError> {
        let sql = format!(
            "SELECT {OPERATOR_COLUMNS_IN_JOIN}, s.csrf_token, s.created_at AS session_created_at,
                    s.last_seen_at, s.second_factor_at
             FROM gateway.operator_session s JOIN gateway.operator o USING (operator_id)
             WHERE s.token_digest = $1"
        );
        let Some(row) = sqlx::query(&sql)
            .bind(token_digest.as_slice())
            .fetch_optional(self.pool())
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(StoredSession {
            operator: pg::operator(&row)?,
            csrf_token: row.try_get("csrf_token")?,
            created_at: row.try_get("session_created_at")?,
            last_seen_at: row.try_get("last_seen_at")?,
            second_factor_at: row.try_get("second_factor_at")?,
        }))
    }

    async fn touch_session(
        &self,
        token_digest: &[u8; 32],
        now: DateTime<Utc>,
        second_factor: bool,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE gateway.operator_session
             SET last_seen_at = $2,
                 second_factor_at = CASE WHEN $3 THEN $2 ELSE second_factor_at END
             WHERE token_digest = $1",
        )
        .bind(token_digest.as_slice())
        .bind(now)
        .bind(second_factor)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn end_session(&self, token_digest: &[u8; 32]) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM gateway.operator_session WHERE token_digest = $1")
            .bind(token_digest.as_slice())
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn end_sessions(&self, operator_id: i64) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM gateway.operator_session WHERE operator_id = $1")
                .bind(operator_id)
                .execute(self.pool())
                .await?
                .rows_affected(),
        )
    }

    async fn sweep_sessions(
        &self,
        idle_before: DateTime<Utc>,
        begun_before: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "DELETE FROM gateway.operator_session WHERE last_seen_at < $1 OR created_at < $2",
        )
        .bind(idle_before)
        .bind(begun_before)
        .execute(self.pool())
        .await?
        .rows_affected())
    }

    async fn record(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO gateway.audit_log (at, operator, action, target, detail)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(entry.at)
        .bind(&entry.operator)
        .bind(&entry.action)
        .bind(&entry.target)
        .bind(&entry.detail)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn audit_log(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        sqlx::query(
            "SELECT at, operator, action, target, detail FROM gateway.audit_log
             ORDER BY audit_id DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(|row| {
            Ok(AuditEntry {
                at: row.try_get("at")?,
                operator: row.try_get("operator")?,
                action: row.try_get("action")?,
                target: row.try_get("target")?,
                detail: row.try_get("detail")?,
            })
        })
        .collect()
    }
}

mod lite {
    use super::*;
    pub(super) use crate::storage::sqlite::{micros, time};
    use sqlx::sqlite::SqliteRow;

    pub(super) fn operator(row: &SqliteRow) -> Result<OperatorAccount, StoreError> {
        Ok(OperatorAccount {
            id: row.try_get("operator_id")?,
            username: row.try_get("username")?,
            role: role(row.try_get("role")?)?,
            password_hash: row.try_get("password_hash")?,
            created_at: required(time(row, "created_at")?, "operator.created_at")?,
            password_changed_at: required(
                time(row, "password_changed_at")?,
                "operator.password_changed_at",
            )?,
            disabled_at: time(row, "disabled_at")?,
            totp_secret: row.try_get("totp_secret")?,
        })
    }
}

impl OperatorStore for SqliteGatewayStore {
    async fn create_reset(
        &self,
        token_digest: &[u8; 32],
        operator_id: i64,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO gateway_operator_reset (token_digest, operator_id, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(token_digest.as_slice())
        .bind(operator_id)
        .bind(lite::micros(Utc::now()))
        .bind(lite::micros(expires_at))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn use_reset(
        &self,
        token_digest: &[u8; 32],
        username: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<OperatorAccount>, StoreError> {
        let mut tx = self.pool().begin().await?;
        let spent: Option<i64> = sqlx::query_scalar(
            "UPDATE gateway_operator_reset SET used_at = ?3
             WHERE token_digest = ?1 AND used_at IS NULL AND expires_at > ?3
               AND operator_id = (SELECT operator_id FROM gateway_operator WHERE username = ?2)
             RETURNING operator_id",
        )
        .bind(token_digest.as_slice())
        .bind(username)
        .bind(lite::micros(now))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(operator_id) = spent else {
            return Ok(None);
        };
        let sql = format!("SELECT {OPERATOR_COLUMNS} FROM gateway_operator WHERE operator_id = ?1");
        let row = sqlx::query(&sql)
            .bind(operator_id)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        lite::operator(&row).map(Some)
    }

    async fn create_operator(
        &self,
        username: &str,
        password_hash: &str,
        role: Role,
    ) -> Result<OperatorAccount, StoreError> {
        let now = lite::micros(Utc::now());
        let sql = format!(
            "INSERT INTO gateway_operator
               (username, password_hash, role, created_at, password_changed_at)
             VALUES (?1, ?2, ?3, ?4, ?4)
             RETURNING {OPERATOR_COLUMNS}"
        );
        match sqlx::query(&sql)
            .bind(username)
            .bind(password_hash)
            .bind(role.as_str())
            .bind(now)
            .fetch_one(self.pool())
            .await
        {
            Ok(row) => lite::operator(&row),
            Err(e) if name_taken(&e) => Err(StoreError::OperatorExists(username.to_owned())),
            Err(e) => Err(e.into()),
        }
    }

    async fn operator(&self, username: &str) -> Result<Option<OperatorAccount>, StoreError> {
        let sql = format!("SELECT {OPERATOR_COLUMNS} FROM gateway_operator WHERE username = ?1");
        sqlx::query(&sql)
            .bind(username)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(lite::operator)
            .transpose()
    }

    async fn operators(&self) -> Result<Vec<OperatorAccount>, StoreError> {
        let sql = format!("SELECT {OPERATOR_COLUMNS} FROM gateway_operator ORDER BY username");
        sqlx::query(&sql)
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(lite::operator)
            .collect()
    }

    async fn set_password(&self, operator_id: i64, password_hash: &str) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        let changed = sqlx::query(
            "UPDATE gateway_operator SET password_hash = ?2, password_changed_at = ?3
             WHERE operator_id = ?1",
        )
        .bind(operator_id)
        .bind(password_hash)
        .bind(lite::micros(Utc::now()))
        .execute(&mut *tx)
        .await?;
        if changed.rows_affected() == 0 {
            return Err(StoreError::NoOperator(operator_id.to_string()));
        }
        sqlx::query("DELETE FROM gateway_operator_session WHERE operator_id = ?1")
            .bind(operator_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn set_role(
        &self,
        operator_id: i64,
        role: Role,
        disabled: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        let changed = sqlx::query(
            "UPDATE gateway_operator SET role = ?2, disabled_at = ?3 WHERE operator_id = ?1",
        )
        .bind(operator_id)
        .bind(role.as_str())
        .bind(disabled.map(lite::micros))
        .execute(&mut *tx)
        .await?;
        if changed.rows_affected() == 0 {
            return Err(StoreError::NoOperator(operator_id.to_string()));
        }
        if disabled.is_some() {
            sqlx::query("DELETE FROM gateway_operator_session WHERE operator_id = ?1")
                .bind(operator_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn enrol_totp(
        &self,
        operator_id: i64,
        secret: &[u8],
        recovery_digests: &[[u8; 32]],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        let changed =
            sqlx::query("UPDATE gateway_operator SET totp_secret = ?2 WHERE operator_id = ?1")
                .bind(operator_id)
                .bind(secret)
                .execute(&mut *tx)
                .await?;
        if changed.rows_affected() == 0 {
            return Err(StoreError::NoOperator(operator_id.to_string()));
        }
        sqlx::query("DELETE FROM gateway_operator_recovery_code WHERE operator_id = ?1")
            .bind(operator_id)
            .execute(&mut *tx)
            .await?;
        for digest in recovery_digests {
            sqlx::query(
                "INSERT INTO gateway_operator_recovery_code (operator_id, code_digest)
                 VALUES (?1, ?2)",
            )
            .bind(operator_id)
            .bind(digest.as_slice())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn use_totp_step(&self, operator_id: i64, step: i64) -> Result<bool, StoreError> {
        let used = sqlx::query(
            "UPDATE gateway_operator SET totp_last_step = ?2
             WHERE operator_id = ?1 AND (totp_last_step IS NULL OR totp_last_step < ?2)",
        )
        .bind(operator_id)
        .bind(step)
        .execute(self.pool())
        .await?;
        Ok(used.rows_affected() == 1)
    }

    async fn use_recovery_code(
        &self,
        operator_id: i64,
        digest: &[u8; 32],
    ) -> Result<bool, StoreError> {
        let used = sqlx::query(
            "UPDATE gateway_operator_recovery_code SET used_at = ?3
             WHERE operator_id = ?1 AND code_digest = ?2 AND used_at IS NULL",
        )
        .bind(operator_id)
        .bind(digest.as_slice())
        .bind(lite::micros(Utc::now()))
        .execute(self.pool())
        .await?;
        Ok(used.rows_affected() == 1)
    }

    async fn create_session(
        &self,
        token_digest: &[u8; 32],
        operator_id: i64,
        csrf_token: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO gateway_operator_session
               (token_digest, operator_id, csrf_token, created_at, last_seen_at)
             VALUES (?1, ?2, ?3, ?4, ?4)",
        )
        .bind(token_digest.as_slice())
        .bind(operator_id)
        .bind(csrf_token)
        .bind(lite::micros(now))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn session(&self, token_digest: &[u8; 32]) -> Result<Option<StoredSession>, StoreError> {
        let sql = format!(
            "SELECT {OPERATOR_COLUMNS_IN_JOIN}, s.csrf_token, s.created_at AS session_created_at,
                    s.last_seen_at, s.second_factor_at
             FROM gateway_operator_session s JOIN gateway_operator o USING (operator_id)
             WHERE s.token_digest = ?1"
        );
        let Some(row) = sqlx::query(&sql)
            .bind(token_digest.as_slice())
            .fetch_optional(self.pool())
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(StoredSession {
            operator: lite::operator(&row)?,
            csrf_token: row.try_get("csrf_token")?,
            created_at: required(
                lite::time(&row, "session_created_at")?,
                "session.created_at",
            )?,
            last_seen_at: required(lite::time(&row, "last_seen_at")?, "session.last_seen_at")?,
            second_factor_at: lite::time(&row, "second_factor_at")?,
        }))
    }

    async fn touch_session(
        &self,
        token_digest: &[u8; 32],
        now: DateTime<Utc>,
        second_factor: bool,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE gateway_operator_session
             SET last_seen_at = ?2,
                 second_factor_at = CASE WHEN ?3 THEN ?2 ELSE second_factor_at END
             WHERE token_digest = ?1",
        )
        .bind(token_digest.as_slice())
        .bind(lite::micros(now))
        .bind(second_factor)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn end_session(&self, token_digest: &[u8; 32]) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM gateway_operator_session WHERE token_digest = ?1")
            .bind(token_digest.as_slice())
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn end_sessions(&self, operator_id: i64) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM gateway_operator_session WHERE operator_id = ?1")
                .bind(operator_id)
                .execute(self.pool())
                .await?
                .rows_affected(),
        )
    }

    async fn sweep_sessions(
        &self,
        idle_before: DateTime<Utc>,
        begun_before: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "DELETE FROM gateway_operator_session WHERE last_seen_at < ?1 OR created_at < ?2",
        )
        .bind(lite::micros(idle_before))
        .bind(lite::micros(begun_before))
        .execute(self.pool())
        .await?
        .rows_affected())
    }

    async fn record(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO gateway_audit_log (at, operator, action, target, detail)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(lite::micros(entry.at))
        .bind(&entry.operator)
        .bind(&entry.action)
        .bind(&entry.target)
        .bind(&entry.detail)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn audit_log(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        sqlx::query(
            "SELECT at, operator, action, target, detail FROM gateway_audit_log
             ORDER BY audit_id DESC LIMIT ?1",
        )
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(|row| {
            Ok(AuditEntry {
                at: required(lite::time(row, "at")?, "audit_log.at")?,
                operator: row.try_get("operator")?,
                action: row.try_get("action")?,
                target: row.try_get("target")?,
                detail: row.try_get("detail")?,
            })
        })
        .collect()
    }
}
