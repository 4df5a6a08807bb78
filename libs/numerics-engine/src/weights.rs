//! Weights on disk in the safetensors format (an 8-byte little-endian
//! header length, a JSON header naming each tensor's dtype, shape and byte
//! range, then the bytes), so any ML toolchain can read or produce them.
//! Written here in a few lines rather than through the `safetensors` crate,
//! whose no-std build pulls a third `hashbrown`; only f32 is needed.

use std::collections::BTreeMap;

use crate::EngineError;

/// Largest header accepted (the format's own guard against hostile files).
const MAX_HEADER: usize = 100 * 1024 * 1024;

/// Named f32 tensors and free-form string metadata.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Weights {
    /// Tensors by name: shape and row-major values.
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    /// `__metadata__` (e.g. the model version).
    pub metadata: BTreeMap<String, String>,
}

fn bad(problem: impl Into<String>) -> EngineError {
    EngineError::invalid("weights", problem)
}

impl Weights {
    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        if !self.metadata.is_empty() {
            header.insert("__metadata__".into(), serde_json::json!(self.metadata));
        }
        let mut offset = 0usize;
        for (name, (shape, values)) in &self.tensors {
            let end = offset + values.len() * 4;
            header.insert(
                name.clone(),
                serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}),
            );
            offset = end;
        }
        let mut json = serde_json::Value::Object(header).to_string().into_bytes();
        // Pad the header with spaces to 8 bytes, as the format recommends.
        while !json.len().is_multiple_of(8) {
            json.push(b' ');
        }
        let mut out = Vec::with_capacity(8 + json.len() + offset);
        out.extend_from_slice(&(json.len() as u64).to_le_bytes());
        out.extend_from_slice(&json);
        for (_, values) in self.tensors.values() {
            for v in values {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out
    }

    /// Parses a file's bytes, checking every range and shape. Errors say
    /// where the file is wrong (positions, sizes, tensor numbers) but never
    /// repeat what it holds: a caller may point this at a file that is not
    /// weights, and its bytes must not come back in a message.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EngineError> {
        let length: [u8; 8] = bytes
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("shorter than the 8-byte header length"))?;
        let header_len = usize::try_from(u64::from_le_bytes(length))
            .map_err(|_| bad("header length overflows"))?;
        if header_len > MAX_HEADER || 8 + header_len > bytes.len() {
            return Err(bad(format!(
                "the header length in the first 8 bytes does not fit the file ({} bytes); \
                 not a safetensors file",
                bytes.len()
            )));
        }
        // serde_json's messages may quote the input: report the position only.
        let header: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&bytes[8..8 + header_len]).map_err(|e| {
                bad(format!(
                    "the header is not a JSON object (line {}, column {})",
                    e.line(),
                    e.column()
                ))
            })?;
        let data = &bytes[8 + header_len..];
        let mut weights = Self::default();
        for (number, (name, entry)) in header.into_iter().enumerate() {
            if name == "__metadata__" {
                let map = entry
                    .as_object()
                    .ok_or_else(|| bad("__metadata__ is not an object"))?;
                for (k, v) in map {
                    let v = v
                        .as_str()
                        .ok_or_else(|| bad("a __metadata__ value is not a string"))?;
                    weights.metadata.insert(k.clone(), v.to_owned());
                }
                continue;
            }
            // Tensors are named by their place in the header, not by name.
            let tensor = format!("header entry {number}");
            if entry["dtype"] != "F32" {
                return Err(bad(format!("{tensor}: dtype is not F32")));
            }
            let shape: Vec<usize> = entry["shape"]
                .as_array()
                .ok_or_else(|| bad(format!("{tensor}: shape is missing")))?
                .iter()
                .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                .collect::<Option<_>>()
                .ok_or_else(|| bad(format!("{tensor}: shape is not a list of sizes")))?;
            let offsets: Vec<usize> = entry["data_offsets"]
                .as_array()
                .map(|o| {
                    o.iter()
                        .filter_map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                        .collect()
                })
                .unwrap_or_default();
            let [start, end] = offsets[..] else {
                return Err(bad(format!("{tensor}: data_offsets must be [start, end]")));
            };
            let elements = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
            if end < start || end > data.len() || elements.map(|n| n * 4) != Some(end - start) {
                return Err(bad(format!(
                    "{tensor}: bytes {start}..{end} do not hold shape {shape:?} in {} data bytes",
                    data.len()
                )));
            }
            let values = data[start..end]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            weights.tensors.insert(name, (shape, values));
        }
        Ok(weights)
    }
}
