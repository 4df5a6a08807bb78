//! The one place numerics' errors become gRPC statuses: a wrong request
//! (`INVALID_ARGUMENT` naming the operand), a computation that does not
//! converge (`FAILED_PRECONDITION`), a full queue (`RESOURCE_EXHAUSTED`),
//! a deadline passed while queued (`DEADLINE_EXCEEDED`) and a stopping
//! server (`UNAVAILABLE`).

use numerics_engine::{EngineError, ErrorKind};
use tonic::Status;

use crate::{pool::PoolError, serving::ScoreError};

/// Any error an RPC of this app can end with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// From the engine (including request checks, named by operand).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// From the CPU pool.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// From the model server.
    #[error(transparent)]
    Score(#[from] ScoreError),
}

/// The status for any of this app's errors.
pub fn status(error: impl Into<ApiError>) -> Status {
    let error = error.into();
    match &error {
        ApiError::Engine(engine) => match engine.kind {
            ErrorKind::Invalid | ErrorKind::TooLarge => Status::invalid_argument(error.to_string()),
            ErrorKind::NotConverged => Status::failed_precondition(error.to_string()),
        },
        ApiError::Pool(PoolError::Full(_)) | ApiError::Score(ScoreError::Full(_)) => {
            Status::resource_exhausted(error.to_string())
        }
        ApiError::Pool(PoolError::Lost(_)) | ApiError::Score(ScoreError::Stopped) => {
            Status::unavailable(error.to_string())
        }
        ApiError::Score(ScoreError::Invalid(_)) => Status::invalid_argument(error.to_string()),
        ApiError::Score(ScoreError::Expired) => Status::deadline_exceeded(error.to_string()),
    }
}
