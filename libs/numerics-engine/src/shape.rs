//! Shapes: broadcasting, strided walks, and the operations that only move
//! elements (transpose, reshape, slice, concatenate).

use crate::{Data, EngineError, Tensor, tensor::element_count};

/// Row-major strides (in elements) of `shape`.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
    let mut step = 1;
    for (stride, &dim) in strides.iter_mut().zip(shape).rev() {
        *stride = step;
        step *= dim;
    }
    strides
}

/// Two shapes that do not broadcast, and the first axis where they clash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("shapes {a:?} and {b:?} do not broadcast (axis {axis}: {left} vs {right})")]
pub struct ShapeMismatch {
    /// The left shape.
    pub a: Vec<usize>,
    /// The right shape.
    pub b: Vec<usize>,
    /// The axis of the broadcast result where they clash.
    pub axis: usize,
    /// The left dimension there.
    pub left: usize,
    /// The right dimension there.
    pub right: usize,
}

/// numpy's broadcast of two shapes: aligned on the right, each pair of
/// dimensions equal or one of them 1.
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Result<Vec<usize>, ShapeMismatch> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i < rank - a.len() {
            1
        } else {
            a[i - (rank - a.len())]
        };
        let db = if i < rank - b.len() {
            1
        } else {
            b[i - (rank - b.len())]
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(ShapeMismatch {
                    a: a.to_vec(),
                    b: b.to_vec(),
                    axis: i,
                    left: da,
                    right: db,
                });
            }
        };
    }
    Ok(out)
}

/// Strides that read `shape` as if it had `out` (a broadcast of it): 0
/// along broadcast axes.
pub fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let own = strides(shape);
    let offset = out.len() - shape.len();
    (0..out.len())
        .map(|i| {
            if i < offset || shape[i - offset] == 1 && out[i] != 1 {
                0
            } else {
                own[i - offset]
            }
        })
        .collect()
}

/// Calls `visit` with the offsets into each of `K` arrays for every index of
/// `shape`, in row-major order. The innermost axis runs as a plain loop.
pub fn walk<const K: usize>(
    shape: &[usize],
    strides: [&[usize]; K],
    mut visit: impl FnMut([usize; K]),
) {
    let Some(total) = element_count(shape) else {
        return;
    };
    if total == 0 {
        return;
    }
    let rank = shape.len();
    if rank == 0 {
        visit([0; K]);
        return;
    }
    let inner = shape[rank - 1];
    let inner_strides: [usize; K] = std::array::from_fn(|k| strides[k][rank - 1]);
    let mut index = vec![0usize; rank - 1];
    let mut base = [0usize; K];
    for _ in 0..total / inner {
        let mut offsets = base;
        for _ in 0..inner {
            visit(offsets);
            for k in 0..K {
                offsets[k] += inner_strides[k];
            }
        }
        // Advance the outer odometer.
        for d in (0..rank - 1).rev() {
            index[d] += 1;
            for k in 0..K {
                base[k] += strides[k][d];
            }
            if index[d] < shape[d] {
                break;
            }
            for k in 0..K {
                base[k] -= strides[k][d] * shape[d];
            }
            index[d] = 0;
        }
    }
}

/// Gathers `data` read through `strides` over `shape` into a new vector.
pub(crate) fn gather<T: Copy>(
    data: &[T],
    shape: &[usize],
    strides: &[usize],
    base: usize,
) -> Vec<T> {
    let mut out = Vec::with_capacity(element_count(shape).unwrap_or(0));
    walk(shape, [strides], |[i]| out.push(data[base + i]));
    out
}

macro_rules! map_data {
    ($data:expr, |$v:ident| $body:expr) => {
        match $data {
            Data::F32($v) => Data::F32($body),
            Data::F64($v) => Data::F64($body),
            Data::I32($v) => Data::I32($body),
            Data::I64($v) => Data::I64($body),
        }
    };
}
#[allow(unused_imports, reason = "exported for sibling modules")]
pub(crate) use map_data;

/// Normalises a possibly negative axis of a rank-`rank` tensor.
pub fn axis(field: &str, axis: i64, rank: usize) -> Result<usize, EngineError> {
    let rank_i = rank as i64;
    let normal = if axis < 0 { axis + rank_i } else { axis };
    if (0..rank_i).contains(&normal) {
        Ok(normal as usize)
    } else {
        Err(EngineError::invalid(
            field,
            format!("axis {axis} is out of range for rank {rank}"),
        ))
    }
}

/// Permutes axes; an empty `perm` reverses them (numpy's `transpose`).
pub fn transpose(tensor: &Tensor, perm: &[i64]) -> Result<Tensor, EngineError> {
    let rank = tensor.shape().len();
    let perm: Vec<usize> = if perm.is_empty() {
        (0..rank).rev().collect()
    } else {
        if perm.len() != rank {
            return Err(EngineError::invalid(
                "attributes.axes",
                format!("a permutation of {rank} axes is needed, got {}", perm.len()),
            ));
        }
        let mut seen = vec![false; rank];
        let mut out = Vec::with_capacity(rank);
        for &p in perm {
            let a = axis("attributes.axes", p, rank)?;
            if std::mem::replace(&mut seen[a], true) {
                return Err(EngineError::invalid(
                    "attributes.axes",
                    format!("axis {p} appears twice"),
                ));
            }
            out.push(a);
        }
        out
    };
    let own = strides(tensor.shape());
    let shape: Vec<usize> = perm.iter().map(|&a| tensor.shape()[a]).collect();
    let read: Vec<usize> = perm.iter().map(|&a| own[a]).collect();
    let data = map_data!(tensor.data(), |v| gather(v, &shape, &read, 0));
    Tensor::new(shape, data)
}

/// Same elements, new shape; one dimension may be -1 (inferred).
pub fn reshape(tensor: &Tensor, shape: &[i64]) -> Result<Tensor, EngineError> {
    let field = "attributes.shape";
    let mut inferred = None;
    let mut known = 1usize;
    for (i, &d) in shape.iter().enumerate() {
        match d {
            -1 if inferred.is_none() => inferred = Some(i),
            -1 => {
                return Err(EngineError::invalid(
                    field,
                    "at most one dimension may be -1",
                ));
            }
            d if d < 0 => {
                return Err(EngineError::invalid(
                    field,
                    format!("dimension {d} is negative"),
                ));
            }
            d => {
                known = known
                    .checked_mul(d as usize)
                    .ok_or_else(|| EngineError::too_large(field, "overflows"))?;
            }
        }
    }
    let mut out: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
    let n = tensor.len();
    if let Some(i) = inferred {
        if known == 0 || !n.is_multiple_of(known) {
            return Err(EngineError::invalid(
                field,
                format!("{shape:?} cannot hold {n} elements"),
            ));
        }
        out[i] = n / known;
    } else if known != n {
        return Err(EngineError::invalid(
            field,
            format!("{shape:?} holds {known} elements, the tensor has {n}"),
        ));
    }
    Tensor::new(out, tensor.data().clone())
}

/// One axis range `[start, stop)` with a positive step; negative bounds
/// count from the end, out-of-range bounds are clamped (numpy's rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// First index.
    pub start: i64,
    /// One past the last index.
    pub stop: i64,
    /// Positive step.
    pub step: i64,
}

/// Slices leading axes by `ranges`; later axes are kept whole.
pub fn slice(tensor: &Tensor, ranges: &[Range]) -> Result<Tensor, EngineError> {
    let dims = tensor.shape();
    if ranges.len() > dims.len() {
        return Err(EngineError::invalid(
            "attributes.slices",
            format!("{} ranges for a rank-{} tensor", ranges.len(), dims.len()),
        ));
    }
    let own = strides(dims);
    let mut base = 0;
    let mut shape = dims.to_vec();
    let mut read = own.clone();
    for (i, range) in ranges.iter().enumerate() {
        if range.step <= 0 {
            return Err(EngineError::invalid(
                format!("attributes.slices[{i}].step"),
                format!("must be positive, got {}", range.step),
            ));
        }
        let dim = dims[i] as i64;
        let clamp = |x: i64| if x < 0 { (x + dim).max(0) } else { x.min(dim) };
        let (start, stop) = (clamp(range.start), clamp(range.stop));
        let len = if stop > start {
            (stop - start + range.step - 1) / range.step
        } else {
            0
        };
        shape[i] = len as usize;
        base += start as usize * own[i];
        read[i] = own[i] * range.step as usize;
    }
    let data = map_data!(tensor.data(), |v| if shape.contains(&0) {
        Vec::new()
    } else {
        gather(v, &shape, &read, base)
    });
    Tensor::new(shape, data)
}

/// Joins tensors of one dtype along `axis`; other dimensions must agree.
pub fn concat(tensors: &[&Tensor], along: i64) -> Result<Tensor, EngineError> {
    let Some(first) = tensors.first() else {
        return Err(EngineError::invalid(
            "operands",
            "concat needs at least one operand",
        ));
    };
    let rank = first.shape().len();
    if rank == 0 {
        return Err(EngineError::invalid(
            "operands[0]",
            "cannot concatenate scalars",
        ));
    }
    let a = axis("attributes.axis", along, rank)?;
    let mut shape = first.shape().to_vec();
    shape[a] = 0;
    for (i, t) in tensors.iter().enumerate() {
        if t.dtype() != first.dtype() {
            return Err(EngineError::invalid(
                format!("operands[{i}]"),
                format!(
                    "dtype {} differs from operands[0]'s {}",
                    t.dtype().name(),
                    first.dtype().name()
                ),
            ));
        }
        let same_rank = t.shape().len() == rank;
        let others_match = same_rank
            && t.shape()
                .iter()
                .zip(first.shape())
                .enumerate()
                .all(|(d, (x, y))| d == a || x == y);
        if !others_match {
            return Err(EngineError::invalid(
                format!("operands[{i}]"),
                format!(
                    "shape {:?} does not match {:?} outside axis {a}",
                    t.shape(),
                    first.shape()
                ),
            ));
        }
        shape[a] += t.shape()[a];
    }
    let outer: usize = shape[..a].iter().product();
    macro_rules! join {
        ($variant:ident) => {{
            let parts: Vec<&Vec<_>> = tensors
                .iter()
                .map(|t| match t.data() {
                    Data::$variant(v) => v,
                    _ => unreachable!("dtypes checked above"),
                })
                .collect();
            let mut out = Vec::with_capacity(element_count(&shape).unwrap_or(0));
            for o in 0..outer {
                for (t, part) in tensors.iter().zip(&parts) {
                    let chunk: usize = t.shape()[a..].iter().product();
                    out.extend_from_slice(&part[o * chunk..(o + 1) * chunk]);
                }
            }
            Data::$variant(out)
        }};
    }
    let data = match first.data() {
        Data::F32(_) => join!(F32),
        Data::F64(_) => join!(F64),
        Data::I32(_) => join!(I32),
        Data::I64(_) => join!(I64),
    };
    Tensor::new(shape, data)
}
