//! Between the contract's messages and the engine's types.

use chrono::{DateTime, Utc};
use contracts::jobs::v1 as pb;
pub use contracts::json::{json_to_struct, struct_to_json};

/// A protobuf timestamp, or `None` when out of range.
pub fn timestamp_to_chrono(value: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(value.seconds, u32::try_from(value.nanos).ok()?)
}

/// A chrono time as a protobuf timestamp.
pub fn chrono_to_timestamp(value: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: value.timestamp(),
        nanos: i32::try_from(value.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// The contract's state enum for an engine state.
pub fn state_to_pb(state: jobs::JobState) -> pb::JobState {
    match state {
        jobs::JobState::Available => pb::JobState::Available,
        jobs::JobState::Scheduled => pb::JobState::Scheduled,
        jobs::JobState::Executing => pb::JobState::Executing,
        jobs::JobState::Retryable => pb::JobState::Retryable,
        jobs::JobState::Completed => pb::JobState::Completed,
        jobs::JobState::Discarded => pb::JobState::Discarded,
        jobs::JobState::Cancelled => pb::JobState::Cancelled,
    }
}

/// The engine state for a contract state; `None` for UNSPECIFIED.
pub fn state_from_pb(state: pb::JobState) -> Option<jobs::JobState> {
    Some(match state {
        pb::JobState::Unspecified => return None,
        pb::JobState::Available => jobs::JobState::Available,
        pb::JobState::Scheduled => jobs::JobState::Scheduled,
        pb::JobState::Executing => jobs::JobState::Executing,
        pb::JobState::Retryable => jobs::JobState::Retryable,
        pb::JobState::Completed => jobs::JobState::Completed,
        pb::JobState::Discarded => jobs::JobState::Discarded,
        pb::JobState::Cancelled => jobs::JobState::Cancelled,
    })
}

/// A stored job as the contract shows it.
pub fn job_to_pb(job: jobs::Job) -> pb::Job {
    pb::Job {
        id: job.id,
        kind: job.kind,
        args: Some(json_to_struct(&job.args)),
        queue: job.queue,
        priority: i32::from(job.priority),
        state: state_to_pb(job.state) as i32,
        attempt: job.attempt,
        max_attempts: job.max_attempts,
        tags: job.tags,
        errors: job
            .errors
            .into_iter()
            .map(|e| pb::AttemptError {
                attempt: e.attempt,
                at: Some(chrono_to_timestamp(e.at)),
                error: e.error,
            })
            .collect(),
        inserted_at: Some(chrono_to_timestamp(job.inserted_at)),
        scheduled_at: Some(chrono_to_timestamp(job.scheduled_at)),
        attempted_at: job.attempted_at.map(chrono_to_timestamp),
        finalized_at: job.finalized_at.map(chrono_to_timestamp),
        attempted_by: job.attempted_by.unwrap_or_default(),
    }
}
