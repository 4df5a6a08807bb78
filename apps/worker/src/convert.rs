//! Between the contract's messages and the engine's types.

use chrono::{DateTime, Utc};
use contracts::jobs::v1 as pb;
use prost_types::{ListValue, Struct, Value, value::Kind};

/// A protobuf `Struct` as a JSON object. Whole numbers within ±2^53 become
/// JSON integers, so typed args with integer fields decode.
pub fn struct_to_json(value: Struct) -> serde_json::Value {
    serde_json::Value::Object(
        value
            .fields
            .into_iter()
            .map(|(k, v)| (k, value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(value: Value) -> serde_json::Value {
    match value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(b),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s),
        Some(Kind::NumberValue(n)) => {
            const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
            if n.fract() == 0.0 && n.abs() <= EXACT {
                serde_json::Value::from(n as i64)
            } else {
                serde_json::Number::from_f64(n)
                    .map_or(serde_json::Value::Null, serde_json::Value::Number)
            }
        }
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.into_iter().map(value_to_json).collect())
        }
    }
}

/// A JSON value as a protobuf `Struct` (non-objects are wrapped as
/// `{"value": ...}`, which job args never are).
pub fn json_to_struct(value: &serde_json::Value) -> Struct {
    match value {
        serde_json::Value::Object(map) => Struct {
            fields: map
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        },
        other => Struct {
            fields: [("value".to_owned(), json_to_value(other))]
                .into_iter()
                .collect(),
        },
    }
}

fn json_to_value(value: &serde_json::Value) -> Value {
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(_) => Kind::StructValue(json_to_struct(value)),
    };
    Value { kind: Some(kind) }
}

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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn json_round_trips_through_struct_keeping_integers() {
        let args = json!({"n": 3, "x": 1.5, "s": "t", "l": [1, null, true], "o": {"k": -2}});
        assert_eq!(struct_to_json(json_to_struct(&args)), args);
    }
}
