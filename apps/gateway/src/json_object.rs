//! JSON bodies as objects only. serde's derived `Deserialize` also takes a
//! struct written as an array of its fields in order (`[[]]` for
//! `{"readings": []}`), which no client means and the OpenAPI document
//! does not allow (schemathesis found it). [`Object`] and [`objects`]
//! refuse anything but an object, and the problem names the field.

use std::{fmt, marker::PhantomData};

use serde::{
    Deserialize, Deserializer,
    de::{MapAccess, Visitor, value::MapAccessDeserializer},
};

/// A `T` read from a JSON object only: the extractor's type for a body.
#[derive(Debug)]
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_map(ObjectVisitor(PhantomData))
            .map(Object)
    }
}

struct ObjectVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
    type Value = T;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map))
    }
}

/// `#[serde(deserialize_with = "objects")]` for a list of objects.
pub fn objects<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Vec<T>, D::Error> {
    let list: Vec<Object<T>> = Vec::deserialize(deserializer)?;
    Ok(list.into_iter().map(|Object(item)| item).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Point {
        x: i32,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Points {
        #[serde(deserialize_with = "objects")]
        points: Vec<Point>,
    }

    #[test]
    fn objects_are_taken_and_arrays_of_fields_are_not() {
        let Object(ok) =
            serde_json::from_str::<Object<Points>>(r#"{"points": [{"x": 1}]}"#).unwrap();
        assert_eq!(ok.points, [Point { x: 1 }]);
        let top = serde_json::from_str::<Object<Points>>("[[]]").unwrap_err();
        assert!(top.to_string().contains("expected a JSON object"), "{top}");
        let nested = serde_json::from_str::<Object<Points>>(r#"{"points": [[1]]}"#).unwrap_err();
        assert!(
            nested.to_string().contains("expected a JSON object"),
            "{nested}"
        );
    }
}
