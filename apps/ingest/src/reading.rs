//! A sensor reading that passed validation ("parse, don't validate"): past
//! the edge, a value of [`Reading`] is valid by construction, and a rejected
//! one says which field is wrong and why.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use contracts::ingest::v1 as pb;

/// Bounds on what a reading may carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// How far in the future `observed_at` may be (clock skew).
    pub max_future: Duration,
    /// How far in the past `observed_at` may be (older is not ingested).
    pub max_age: Duration,
    /// Most attributes per reading.
    pub max_attributes: usize,
    /// Most bytes of all attribute keys and values together.
    pub max_attribute_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_future: Duration::minutes(5),
            max_age: Duration::days(7),
            max_attributes: 16,
            max_attribute_bytes: 2_048,
        }
    }
}

/// A valid reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Unique per event; redelivery of the same id is stored once.
    pub event_id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// Device within the tenant.
    pub device_id: String,
    /// Metric name, `snake_case`.
    pub metric: String,
    /// A finite value.
    pub value: f64,
    /// When it was measured.
    pub observed_at: DateTime<Utc>,
    /// Small labels.
    pub attributes: BTreeMap<String, String>,
}

/// Why a reading was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Rejection {
    /// The field at fault.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn reject(field: &'static str, reason: impl Into<String>) -> Rejection {
    Rejection {
        field,
        reason: reason.into(),
    }
}

/// Identifiers: 1 to `max` characters from `[A-Za-z0-9_.:-]`.
fn identifier(field: &'static str, value: String, max: usize) -> Result<String, Rejection> {
    if value.is_empty() {
        return Err(reject(field, "is required"));
    }
    if value.len() > max {
        return Err(reject(
            field,
            format!("must be at most {max} characters, got {}", value.len()),
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')))
    {
        return Err(reject(
            field,
            format!("contains {bad:?}; allowed are letters, digits and _ . : -"),
        ));
    }
    Ok(value)
}

impl Reading {
    /// Validates a reading from the wire against `limits` at `now`.
    pub fn parse(raw: pb::Reading, now: DateTime<Utc>, limits: &Limits) -> Result<Self, Rejection> {
        let event_id = identifier("event_id", raw.event_id, 128)?;
        let tenant_id = identifier("tenant_id", raw.tenant_id, 64)?;
        let device_id = identifier("device_id", raw.device_id, 64)?;
        let metric = raw.metric;
        if metric.is_empty() {
            return Err(reject("metric", "is required"));
        }
        if metric.len() > 64
            || !metric.starts_with(|c: char| c.is_ascii_lowercase())
            || !metric
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(reject(
                "metric",
                format!(
                    "{metric:?} must be snake_case, starting with a letter, at most 64 characters"
                ),
            ));
        }
        if !raw.value.is_finite() {
            return Err(reject(
                "value",
                format!("must be finite, got {}", raw.value),
            ));
        }
        let stamp = raw
            .observed_at
            .ok_or_else(|| reject("observed_at", "is required"))?;
        let observed_at = u32::try_from(stamp.nanos)
            .ok()
            .and_then(|nanos| DateTime::from_timestamp(stamp.seconds, nanos))
            .ok_or_else(|| reject("observed_at", "is not a valid timestamp"))?;
        if observed_at > now + limits.max_future {
            return Err(reject(
                "observed_at",
                format!(
                    "{observed_at} is more than {} s in the future",
                    limits.max_future.num_seconds()
                ),
            ));
        }
        if observed_at < now - limits.max_age {
            return Err(reject(
                "observed_at",
                format!(
                    "{observed_at} is older than {} s",
                    limits.max_age.num_seconds()
                ),
            ));
        }
        if raw.attributes.len() > limits.max_attributes {
            return Err(reject(
                "attributes",
                format!(
                    "at most {} entries, got {}",
                    limits.max_attributes,
                    raw.attributes.len()
                ),
            ));
        }
        let bytes: usize = raw.attributes.iter().map(|(k, v)| k.len() + v.len()).sum();
        if bytes > limits.max_attribute_bytes {
            return Err(reject(
                "attributes",
                format!(
                    "at most {} bytes in all, got {bytes}",
                    limits.max_attribute_bytes
                ),
            ));
        }
        if raw.attributes.keys().any(String::is_empty) {
            return Err(reject("attributes", "keys must not be empty"));
        }
        Ok(Self {
            event_id,
            tenant_id,
            device_id,
            metric,
            value: raw.value,
            observed_at,
            attributes: raw.attributes.into_iter().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn raw() -> pb::Reading {
        pb::Reading {
            event_id: "evt-1".into(),
            tenant_id: "acme".into(),
            device_id: "sensor-7".into(),
            metric: "temperature_c".into(),
            value: 21.5,
            observed_at: Some(prost_types::Timestamp {
                seconds: 1_800_000_000 - 30,
                nanos: 0,
            }),
            attributes: [("site".to_owned(), "berlin".to_owned())]
                .into_iter()
                .collect(),
        }
    }

    fn rejection(change: impl FnOnce(&mut pb::Reading)) -> String {
        let mut reading = raw();
        change(&mut reading);
        Reading::parse(reading, now(), &Limits::default())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_good_reading_parses() {
        let reading = Reading::parse(raw(), now(), &Limits::default()).unwrap();
        assert_eq!(reading.metric, "temperature_c");
        assert_eq!(reading.attributes["site"], "berlin");
    }

    #[test]
    fn rejections_name_the_field() {
        assert_eq!(
            rejection(|r| r.value = f64::NAN),
            "value: must be finite, got NaN"
        );
        assert_eq!(rejection(|r| r.tenant_id.clear()), "tenant_id: is required");
        assert_eq!(
            rejection(|r| r.device_id = "a b".into()),
            "device_id: contains ' '; allowed are letters, digits and _ . : -"
        );
        assert!(
            rejection(|r| r.metric = "Temp".into())
                .starts_with("metric: \"Temp\" must be snake_case")
        );
        assert_eq!(
            rejection(|r| r.observed_at = None),
            "observed_at: is required"
        );
        assert!(
            rejection(|r| r.observed_at = Some(prost_types::Timestamp {
                seconds: 1_800_000_000 + 3_600,
                nanos: 0
            }))
            .contains("in the future")
        );
        assert!(
            rejection(|r| r.observed_at = Some(prost_types::Timestamp {
                seconds: 1_000,
                nanos: 0
            }))
            .contains("is older than")
        );
        assert_eq!(
            rejection(|r| r
                .attributes
                .insert("x".repeat(3_000), String::new())
                .map_or((), drop)),
            "attributes: at most 2048 bytes in all, got 3010"
        );
    }

    proptest! {
        #[test]
        fn any_reading_parses_or_names_a_field(
            event_id in ".{0,140}",
            tenant_id in "[a-z ]{0,70}",
            metric in "[a-zA-Z_0-9]{0,70}",
            value in proptest::num::f64::ANY,
            seconds in proptest::num::i64::ANY,
            nanos in proptest::num::i32::ANY,
        ) {
            let raw = pb::Reading {
                event_id, tenant_id, device_id: "d".into(), metric, value,
                observed_at: Some(prost_types::Timestamp { seconds, nanos }), attributes: Default::default(),
            };
            match Reading::parse(raw, now(), &Limits::default()) {
                Ok(reading) => {
                    prop_assert!(reading.value.is_finite());
                    prop_assert!(!reading.event_id.is_empty());
                }
                Err(rejection) => prop_assert!(
                    ["event_id", "tenant_id", "metric", "value", "observed_at"].contains(&rejection.field)
                ),
            }
        }
    }
}
