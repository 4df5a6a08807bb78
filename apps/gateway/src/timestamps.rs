//! Times between the API's RFC 3339 strings and the contracts' protobuf
//! timestamps, in one place.

use chrono::{DateTime, Utc};

/// A protobuf timestamp as RFC 3339; `None` when absent or out of range.
pub(crate) fn rfc3339(at: Option<prost_types::Timestamp>) -> Option<String> {
    at.and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
        .map(|t| t.to_rfc3339())
}

/// A time as a protobuf timestamp.
pub(crate) fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}
