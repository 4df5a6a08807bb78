//! The one place ingest's errors become gRPC statuses: what a caller sent
//! wrong (`INVALID_ARGUMENT` naming the field), another tenant's data
//! (`PERMISSION_DENIED` naming the field), back-pressure
//! (`RESOURCE_EXHAUSTED` with a retry hint), shutting down and an
//! unreachable database (`UNAVAILABLE`: resend), and faults on our side
//! (`INTERNAL`: a corrupt row, a failing statement).

use std::time::Duration;

use tonic::{Code, Status};

use crate::store::StoreError;

/// How long a publisher told `RESOURCE_EXHAUSTED` should wait, sent in
/// gRPC's retry-pushback header.
pub const RETRY_PUSHBACK: Duration = Duration::from_millis(200);

/// Why a request was not answered with its result.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A field names a tenant other than the one the caller acts for.
    #[error("{field}: names another tenant than the one this call acts for")]
    OtherTenant {
        /// The field, e.g. `readings[3].tenant_id`.
        field: String,
    },
    /// A field of the request is missing or wrong.
    #[error("{field}: {problem}")]
    Invalid {
        /// The field, e.g. `window.window_length`.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The queue in front of the pipeline is full.
    #[error("the ingest pipeline is full; retry after {} ms", RETRY_PUSHBACK.as_millis())]
    Full,
    /// Ingest is shutting down before the batch was stored.
    #[error("ingest is shutting down; the batch was not stored, resend it")]
    ShuttingDown,
    /// Part of a unary publish was not stored (the acknowledgement's error).
    #[error("{0}")]
    NotStored(String),
    /// What the request names does not exist (or is another tenant's).
    #[error("{0}")]
    NotFound(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApiError {
    /// `field: problem`.
    pub fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// Failures that pass: the database unreachable, restarting, overloaded or
/// aborting a transaction for a conflict (SQLSTATE classes 08, 53, 57, 40;
/// SQLite busy or locked).
fn transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(database) => database.code().is_some_and(|code| {
            if code.len() == 5 {
                // A PostgreSQL SQLSTATE.
                ["08", "53", "57", "40"]
                    .iter()
                    .any(|class| code.starts_with(class))
            } else {
                // An SQLite result code: SQLITE_BUSY (5) or SQLITE_LOCKED
                // (6), extended or not.
                code.parse::<u32>()
                    .is_ok_and(|code| matches!(code & 0xff, 5 | 6))
            }
        }),
        _ => false,
    }
}

impl From<crate::sink::SinkError> for StoreError {
    /// A sink failure as the store's: the database's, or the jobs tables'.
    fn from(error: crate::sink::SinkError) -> Self {
        match error {
            crate::sink::SinkError::Database(error) => error.into(),
            crate::sink::SinkError::Jobs(error) => Self::Jobs(error),
        }
    }
}

impl From<StoreError> for Status {
    fn from(error: StoreError) -> Self {
        ApiError::Store(error).into()
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        match error {
            ApiError::Invalid { .. } => Status::invalid_argument(error.to_string()),
            ApiError::OtherTenant { .. } => Status::permission_denied(error.to_string()),
            ApiError::NotFound(_) => Status::not_found(error.to_string()),
            ApiError::Full => {
                let mut status = Status::resource_exhausted(error.to_string());
                if let Ok(value) = RETRY_PUSHBACK.as_millis().to_string().parse() {
                    status
                        .metadata_mut()
                        .insert("grpc-retry-pushback-ms", value);
                }
                status
            }
            ApiError::ShuttingDown | ApiError::NotStored(_) => {
                Status::new(Code::Unavailable, error.to_string())
            }
            ApiError::Store(StoreError::Database(ref database)) if transient(database) => {
                tracing::warn!(%error, "store unavailable");
                Status::unavailable("the readings database is unavailable; retry later")
            }
            ApiError::Store(StoreError::TenantDeleted { .. }) => {
                Status::failed_precondition(error.to_string())
            }
            ApiError::Store(StoreError::Corrupt { column, .. }) => Status::internal(format!(
                "a stored row cannot be read ({column}); this is a fault on our side, reported to operators"
            )),
            ApiError::Store(_) => {
                tracing::error!(%error, "store failed");
                Status::internal("the readings store failed; this is a fault on our side")
            }
        }
    }
}

impl From<StoreError> for service_runtime::tenant_data::TenantDataError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Database(ref database) if transient(database) => {
                Self::Unavailable(error.to_string())
            }
            other => {
                tracing::error!(error = %other, "a tenant's data could not be read or deleted");
                Self::Internal(other.to_string())
            }
        }
    }
}
