//! The contract's `Tensor` to the engine's and back: dtype, shape and
//! little-endian bytes checked against each other and against the limits
//! before any element is read. One copy each way (a chunked read that
//! compiles to a memcpy on little-endian machines): the zero-copy
//! alternative would reinterpret prost's `Vec<u8>` (alignment 1) as `f32`s
//! (alignment 4), which safe Rust cannot do, and this crate forbids
//! `unsafe`.

use contracts::numerics::v1::{self as pb, DType as WireType};
use numerics_engine::{DType, Data, EngineError, Tensor, program::Limits};

/// Decodes `wire`, naming it `name` in errors; `allow_nan` is false where a
/// NaN would poison the result (decompositions, statistics).
pub fn decode(
    name: &str,
    wire: &pb::Tensor,
    limits: &Limits,
    allow_nan: bool,
) -> Result<Tensor, EngineError> {
    let dtype = match WireType::try_from(wire.dtype) {
        Ok(WireType::F32) => DType::F32,
        Ok(WireType::F64) => DType::F64,
        Ok(WireType::I32) => DType::I32,
        Ok(WireType::I64) => DType::I64,
        Ok(WireType::Unspecified) => {
            return Err(EngineError::invalid(format!("{name}.dtype"), "is required"));
        }
        Err(_) => {
            return Err(EngineError::invalid(
                format!("{name}.dtype"),
                format!("{} is not a known dtype", wire.dtype),
            ));
        }
    };
    if wire.shape.len() > limits.max_rank {
        return Err(EngineError::too_large(
            format!("{name}.shape"),
            format!(
                "rank {} is above the limit of {}",
                wire.shape.len(),
                limits.max_rank
            ),
        ));
    }
    let mut elements: usize = 1;
    let mut shape = Vec::with_capacity(wire.shape.len());
    for &d in &wire.shape {
        let d = usize::try_from(d).map_err(|_| {
            EngineError::too_large(format!("{name}.shape"), "a dimension overflows")
        })?;
        elements = elements
            .checked_mul(d)
            .filter(|&n| n <= limits.max_elements)
            .ok_or_else(|| {
                EngineError::too_large(
                    format!("{name}.shape"),
                    format!(
                        "{:?} holds more than the limit of {} elements",
                        wire.shape, limits.max_elements
                    ),
                )
            })?;
        shape.push(d);
    }
    let needed = elements * dtype.size();
    if wire.data.len() != needed {
        return Err(EngineError::invalid(
            format!("{name}.data"),
            format!(
                "{} bytes for shape {:?} of {} (needs {needed})",
                wire.data.len(),
                wire.shape,
                dtype.name()
            ),
        ));
    }
    let bytes = &wire.data;
    let data = match dtype {
        DType::F32 => Data::F32(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        DType::F64 => Data::F64(
            bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        ),
        DType::I32 => Data::I32(
            bytes
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        DType::I64 => Data::I64(
            bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        ),
    };
    let tensor = Tensor::new(shape, data).map_err(|e| e.renamed(name))?;
    if !allow_nan && let Some(i) = tensor.first_nan() {
        return Err(EngineError::invalid(
            format!("{name}.data"),
            format!("element {i} is NaN"),
        ));
    }
    Ok(tensor)
}

/// Encodes `tensor` for the wire.
pub fn encode(tensor: &Tensor) -> pb::Tensor {
    let (dtype, data) = match tensor.data() {
        Data::F32(v) => (
            WireType::F32,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        Data::F64(v) => (
            WireType::F64,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        Data::I32(v) => (
            WireType::I32,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        Data::I64(v) => (
            WireType::I64,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
    };
    pb::Tensor {
        dtype: dtype as i32,
        shape: tensor.shape().iter().map(|&d| d as u64).collect(),
        data,
    }
}
