//! JSON for `google.protobuf.Struct`, the one mapping the platform uses:
//! job arguments are stored as JSON, and the jobs API carries them as
//! `Struct`. Whole numbers within ±2^53 become JSON integers, so typed
//! arguments with integer fields decode; everything else maps as the
//! protobuf JSON mapping says.

use prost_types::{ListValue, Struct, Value, value::Kind};

/// A protobuf `Struct` as a JSON object.
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

/// A JSON value as a protobuf `Struct` (a non-object is wrapped as
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

/// serde for an `Option<Struct>` field of a generated message: a JSON
/// object (or `null` for `None`).
pub mod optional_struct {
    use prost_types::Struct;
    use serde::{Deserialize as _, Deserializer, Serialize as _, Serializer};

    /// Writes the struct as a JSON object.
    pub fn serialize<S: Serializer>(
        value: &Option<Struct>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        value
            .clone()
            .map(super::struct_to_json)
            .serialize(serializer)
    }

    /// Reads a JSON object (or `null`) into a struct.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Struct>, D::Error> {
        Ok(Option::<serde_json::Value>::deserialize(deserializer)?
            .filter(|v| !v.is_null())
            .map(|v| super::json_to_struct(&v)))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value as Json, json};

    use super::*;

    #[test]
    fn json_round_trips_through_struct_keeping_integers() {
        let args = json!({"n": 3, "x": 1.5, "s": "t", "l": [1, null, true], "o": {"k": -2}});
        assert_eq!(struct_to_json(json_to_struct(&args)), args);
    }

    /// Jobs already queued hold JSON written before the args were
    /// contracts; they must read, and the JSON written now must be the same
    /// bytes' worth of fields (unique keys hash it).
    #[test]
    fn job_args_read_and_write_the_json_queued_jobs_already_hold() {
        use crate::jobs::v1::{AggregateWindowArgs, DeliverWebhookArgs};
        let window = json!({
            "tenant_id": "acme", "device_id": "d1", "metric": "temperature_c",
            "window_start": "2026-11-24T10:00:00+00:00", "window_seconds": 60, "late": false,
        });
        let args: AggregateWindowArgs = serde_json::from_value(window.clone()).unwrap();
        assert_eq!(args.window_seconds, 60);
        assert_eq!(serde_json::to_value(&args).unwrap(), window);

        let webhook = json!({
            "url": "https://example.test/hook", "event": "window.anomalous",
            "payload": {"window": "acme/d1", "window_seconds": 60, "anomaly_score": 0.75,
                        "statistics": {"count": 30, "max": 95.5}},
        });
        let args: DeliverWebhookArgs = serde_json::from_value(webhook.clone()).unwrap();
        assert_eq!(serde_json::to_value(&args).unwrap(), webhook);

        // A field this version does not know is ignored; a missing one is
        // named (the worker refuses such a job at enqueue).
        let mut newer = window.clone();
        newer["added_later"] = json!(1);
        assert!(serde_json::from_value::<AggregateWindowArgs>(newer).is_ok());
        let error = serde_json::from_value::<AggregateWindowArgs>(json!({"tenant_id": "acme"}))
            .unwrap_err();
        assert_eq!(error.to_string(), "missing field `device_id`");
    }

    /// JSON a job's args can hold: integers within ±2^53, finite
    /// fractions, strings, nesting.
    fn json_value() -> impl Strategy<Value = Json> {
        let leaf = prop_oneof![
            Just(Json::Null),
            any::<bool>().prop_map(Json::Bool),
            (-(1i64 << 53)..=(1i64 << 53)).prop_map(Json::from),
            (-1e12f64..1e12)
                .prop_filter("a fraction", |x| x.fract() != 0.0)
                .prop_map(Json::from),
            ".{0,12}".prop_map(Json::String),
        ];
        leaf.prop_recursive(4, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
                prop::collection::btree_map(".{0,8}", inner, 0..6)
                    .prop_map(|m| Json::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_json_object_round_trips(fields in prop::collection::btree_map(".{0,8}", json_value(), 0..8)) {
            let object = Json::Object(fields.into_iter().collect());
            prop_assert_eq!(struct_to_json(json_to_struct(&object)), object);
        }
    }
}
