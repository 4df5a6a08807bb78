//! The one place the worker's errors become gRPC statuses: a wrong
//! request (`INVALID_ARGUMENT` naming the field), a missing job
//! (`NOT_FOUND`), an operation the job's state does not allow
//! (`FAILED_PRECONDITION`), the database unreachable (`UNAVAILABLE`) and
//! faults on our side (`INTERNAL`).

use jobs::JobsError;
use tonic::Status;

/// Any error an RPC of this app can end with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A field of the request is missing or wrong.
    #[error("{field}: {problem}")]
    Invalid {
        /// The field, e.g. `jobs[3].priority`.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
    /// No such object for the caller's tenant (also the answer for
    /// another tenant's: its existence is not confirmed).
    #[error("{field}: no {what} {id}")]
    NotFound {
        /// The request field naming it.
        field: &'static str,
        /// What kind of object.
        what: &'static str,
        /// The id asked for.
        id: String,
    },
    /// The request names another tenant than the one the caller acts for.
    #[error("{0}: names another tenant than the caller's")]
    OtherTenant(&'static str),
    /// A per-tenant limit is reached.
    #[error("{0}")]
    LimitReached(String),
    /// The object's state does not allow the operation.
    #[error("{0}")]
    WrongState(String),
    /// From the jobs engine.
    #[error(transparent)]
    Jobs(#[from] JobsError),
    /// Something that cannot happen did.
    #[error("internal error: {0}")]
    Internal(&'static str),
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

/// The status for any of this app's errors.
pub fn status(error: impl Into<ApiError>) -> Status {
    let error = error.into();
    match &error {
        ApiError::Invalid { .. } | ApiError::Jobs(JobsError::InvalidJob { .. }) => {
            Status::invalid_argument(error.to_string())
        }
        ApiError::Jobs(JobsError::NotFound(_)) | ApiError::NotFound { .. } => {
            Status::not_found(error.to_string())
        }
        ApiError::OtherTenant(_) => Status::permission_denied(error.to_string()),
        ApiError::LimitReached(_) => Status::resource_exhausted(error.to_string()),
        ApiError::WrongState(_) => Status::failed_precondition(error.to_string()),
        ApiError::Jobs(JobsError::WrongState { .. }) => {
            Status::failed_precondition(error.to_string())
        }
        ApiError::Jobs(JobsError::Database(_)) => {
            tracing::warn!(%error, "database error");
            Status::unavailable("the jobs database is unavailable; retry later")
        }
        ApiError::Jobs(
            JobsError::Migrate(_) | JobsError::MigrationLock { .. } | JobsError::Corrupt(_),
        )
        | ApiError::Internal(_) => {
            tracing::error!(%error, "internal error");
            Status::internal("internal error")
        }
    }
}

/// A failed export or deletion of a tenant's data, as
/// `platform.tenancy.v1` reports it.
pub fn tenant_data_error(error: JobsError) -> service_runtime::tenant_data::TenantDataError {
    use service_runtime::tenant_data::TenantDataError;
    match error {
        JobsError::Database(_) => TenantDataError::Unavailable(error.to_string()),
        other => {
            tracing::error!(error = %other, "a tenant's data could not be read or deleted");
            TenantDataError::Internal(other.to_string())
        }
    }
}
