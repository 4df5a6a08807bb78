//! Elementwise arithmetic with numpy broadcasting, the usual functions,
//! reductions along any axes, and batched matmul (faer for floats).

use std::sync::atomic::{AtomicUsize, Ordering};

use faer::{Accum, MatMut, MatRef, Par};

use crate::{
    Data, EngineError, Tensor,
    shape::{axis, broadcast_shapes, broadcast_strides, strides, walk},
    tensor::element_count,
};

/// Elementwise binary operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    /// a + b
    Add,
    /// a - b
    Sub,
    /// a * b
    Mul,
    /// a / b (true division: integers give f64)
    Div,
    /// a ^ b
    Pow,
    /// max(a, b)
    Maximum,
    /// min(a, b)
    Minimum,
}

/// Elementwise unary operations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unary {
    /// -x
    Neg,
    /// |x|
    Abs,
    /// e^x (floats)
    Exp,
    /// ln x (floats)
    Log,
    /// √x (floats)
    Sqrt,
    /// tanh x (floats)
    Tanh,
    /// 1 / (1 + e^-x) (floats)
    Sigmoid,
    /// max(x, 0)
    Relu,
    /// x limited to [min, max] (either bound optional)
    Clamp(Option<f64>, Option<f64>),
}

/// Reductions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduce {
    /// Sum.
    Sum,
    /// Arithmetic mean (floats out).
    Mean,
    /// Smallest.
    Min,
    /// Largest.
    Max,
    /// Position of the largest along one axis, or in the flattened tensor.
    Argmax,
    /// Variance with `ddof` delta degrees of freedom (floats out).
    Variance(u32),
}

/// Threads matmul may use (the service sets it from its CPU pool size).
static MATMUL_THREADS: AtomicUsize = AtomicUsize::new(1);

/// Sets how many threads a large matmul uses.
pub fn set_matmul_threads(threads: usize) {
    MATMUL_THREADS.store(threads.max(1), Ordering::Relaxed);
}

fn float_name(op: Unary) -> &'static str {
    match op {
        Unary::Exp => "exp",
        Unary::Log => "log",
        Unary::Sqrt => "sqrt",
        Unary::Tanh => "tanh",
        Unary::Sigmoid => "sigmoid",
        _ => "this operation",
    }
}

fn zip_broadcast<T: Copy, U>(
    a: &[T],
    a_shape: &[usize],
    b: &[T],
    b_shape: &[usize],
    out_shape: &[usize],
    mut f: impl FnMut(T, T) -> U,
) -> Vec<U> {
    if a_shape == b_shape {
        return a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect();
    }
    let mut out = Vec::with_capacity(element_count(out_shape).unwrap_or(0));
    if b.len() == 1 {
        let y = b[0];
        if a_shape == out_shape {
            return a.iter().map(|&x| f(x, y)).collect();
        }
    }
    let sa = broadcast_strides(a_shape, out_shape);
    let sb = broadcast_strides(b_shape, out_shape);
    walk(out_shape, [&sa, &sb], |[i, j]| out.push(f(a[i], b[j])));
    out
}

fn int_result<T>(values: Vec<Option<T>>, what: &str) -> Result<Vec<T>, EngineError> {
    let mut out = Vec::with_capacity(values.len());
    for (i, v) in values.into_iter().enumerate() {
        out.push(v.ok_or_else(|| {
            EngineError::invalid("result", format!("integer {what} at element {i}"))
        })?);
    }
    Ok(out)
}

/// Both operands of one dtype, or an error naming the second.
fn same_dtype(a: &Tensor, b: &Tensor) -> Result<(), EngineError> {
    if a.dtype() == b.dtype() {
        return Ok(());
    }
    Err(EngineError::invalid(
        "operands[1]",
        format!(
            "dtype {} does not match operands[0]'s {}",
            b.dtype().name(),
            a.dtype().name()
        ),
    ))
}

/// `op(a, b)` with broadcasting; both operands of one dtype.
pub fn binary(op: Binary, a: &Tensor, b: &Tensor) -> Result<Tensor, EngineError> {
    same_dtype(a, b)?;
    let shape = broadcast_shapes(a.shape(), b.shape())
        .map_err(|p| EngineError::invalid("operands", p.to_string()))?;
    let (sa, sb) = (a.shape(), b.shape());
    macro_rules! float {
        ($x:expr, $y:expr, $variant:ident, $t:ty) => {{
            let f: fn($t, $t) -> $t = match op {
                Binary::Add => |x, y| x + y,
                Binary::Sub => |x, y| x - y,
                Binary::Mul => |x, y| x * y,
                Binary::Div => |x, y| x / y,
                Binary::Pow => |x, y| x.powf(y),
                Binary::Maximum => |x, y| {
                    if x.is_nan() || y.is_nan() {
                        <$t>::NAN
                    } else {
                        x.max(y)
                    }
                },
                Binary::Minimum => |x, y| {
                    if x.is_nan() || y.is_nan() {
                        <$t>::NAN
                    } else {
                        x.min(y)
                    }
                },
            };
            Data::$variant(zip_broadcast($x, sa, $y, sb, &shape, f))
        }};
    }
    macro_rules! int {
        ($x:expr, $y:expr, $variant:ident, $t:ty) => {{
            if op == Binary::Div {
                let out = zip_broadcast($x, sa, $y, sb, &shape, |x: $t, y: $t| x as f64 / y as f64);
                Data::F64(out)
            } else {
                let f: fn($t, $t) -> Option<$t> = match op {
                    Binary::Add => |x, y| x.checked_add(y),
                    Binary::Sub => |x, y| x.checked_sub(y),
                    Binary::Mul => |x, y| x.checked_mul(y),
                    Binary::Pow => |x, y| u32::try_from(y).ok().and_then(|e| x.checked_pow(e)),
                    Binary::Maximum => |x, y| Some(x.max(y)),
                    Binary::Minimum => |x, y| Some(x.min(y)),
                    Binary::Div => |_, _| None,
                };
                Data::$variant(int_result(
                    zip_broadcast($x, sa, $y, sb, &shape, f),
                    "overflow or negative exponent",
                )?)
            }
        }};
    }
    let data = match (a.data(), b.data()) {
        (Data::F32(x), Data::F32(y)) => float!(x, y, F32, f32),
        (Data::F64(x), Data::F64(y)) => float!(x, y, F64, f64),
        (Data::I32(x), Data::I32(y)) => int!(x, y, I32, i32),
        (Data::I64(x), Data::I64(y)) => int!(x, y, I64, i64),
        _ => return Err(EngineError::invalid("operands", "dtypes differ")),
    };
    Tensor::new(shape, data)
}

/// `op(x)` elementwise.
pub fn unary(op: Unary, x: &Tensor) -> Result<Tensor, EngineError> {
    if let Unary::Clamp(Some(low), Some(high)) = op
        && low > high
    {
        return Err(EngineError::invalid(
            "attributes.clamp_min",
            format!("{low} is above clamp_max {high}"),
        ));
    }
    macro_rules! float {
        ($v:expr, $t:ty) => {{
            let f: Box<dyn Fn($t) -> $t> = match op {
                Unary::Neg => Box::new(|x| -x),
                Unary::Abs => Box::new(|x: $t| x.abs()),
                Unary::Exp => Box::new(|x: $t| x.exp()),
                Unary::Log => Box::new(|x: $t| x.ln()),
                Unary::Sqrt => Box::new(|x: $t| x.sqrt()),
                Unary::Tanh => Box::new(|x: $t| x.tanh()),
                Unary::Sigmoid => Box::new(|x: $t| 1.0 / (1.0 + (-x).exp())),
                Unary::Relu => Box::new(|x: $t| if x > 0.0 { x } else { 0.0 }),
                Unary::Clamp(low, high) => {
                    let (low, high) = (low.map(|l| l as $t), high.map(|h| h as $t));
                    Box::new(move |x: $t| {
                        let x = low.map_or(x, |l| if x < l { l } else { x });
                        high.map_or(x, |h| if x > h { h } else { x })
                    })
                }
            };
            $v.iter().map(|&x| f(x)).collect()
        }};
    }
    macro_rules! int {
        ($v:expr, $t:ty) => {{
            let f: Box<dyn Fn($t) -> Option<$t>> = match op {
                Unary::Neg => Box::new(|x: $t| x.checked_neg()),
                Unary::Abs => Box::new(|x: $t| x.checked_abs()),
                Unary::Relu => Box::new(|x: $t| Some(x.max(0))),
                Unary::Clamp(low, high) => Box::new(move |x: $t| {
                    let x = low.map_or(x, |l| if (x as f64) < l { l.ceil() as $t } else { x });
                    Some(high.map_or(x, |h| if (x as f64) > h { h.floor() as $t } else { x }))
                }),
                _ => {
                    return Err(EngineError::invalid(
                        "operands[0]",
                        format!(
                            "{} needs f32 or f64, got {}",
                            float_name(op),
                            x.dtype().name()
                        ),
                    ));
                }
            };
            int_result($v.iter().map(|&x| f(x)).collect(), "overflow")?
        }};
    }
    let data = match x.data() {
        Data::F32(v) => Data::F32(float!(v, f32)),
        Data::F64(v) => Data::F64(float!(v, f64)),
        Data::I32(v) => Data::I32(int!(v, i32)),
        Data::I64(v) => Data::I64(int!(v, i64)),
    };
    Tensor::new(x.shape().to_vec(), data)
}

/// Normalised, sorted, distinct axes (empty = all).
fn reduced_axes(axes: &[i64], rank: usize) -> Result<Vec<usize>, EngineError> {
    if axes.is_empty() {
        return Ok((0..rank).collect());
    }
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let a = axis("attributes.axes", a, rank)?;
        if out.contains(&a) {
            return Err(EngineError::invalid(
                "attributes.axes",
                format!("axis {a} appears twice"),
            ));
        }
        out.push(a);
    }
    out.sort_unstable();
    Ok(out)
}

/// `op` over `axes` (empty = all), keeping reduced axes as 1 if asked.
pub fn reduce(
    op: Reduce,
    x: &Tensor,
    axes: &[i64],
    keep_dims: bool,
) -> Result<Tensor, EngineError> {
    let rank = x.shape().len();
    let axes = reduced_axes(axes, rank)?;
    if op == Reduce::Argmax && axes.len() > 1 && axes.len() != rank {
        return Err(EngineError::invalid(
            "attributes.axes",
            "argmax takes one axis (or none for all)",
        ));
    }
    let plan = Reduction::plan(x, &axes);
    if plan.reduced == 0 && !matches!(op, Reduce::Sum) {
        return Err(EngineError::invalid(
            "operands[0]",
            "reduction over an empty axis",
        ));
    }
    let data = match op {
        Reduce::Sum => plan.sum()?,
        Reduce::Mean => plan.mean(),
        Reduce::Variance(ddof) => plan.variance(ddof)?,
        Reduce::Min | Reduce::Max | Reduce::Argmax => plan.pick(op),
    };
    let shape = if keep_dims {
        plan.out_shape_kept
    } else {
        (0..rank)
            .filter(|d| !axes.contains(d))
            .map(|d| x.shape()[d])
            .collect()
    };
    Tensor::new(shape, data)
}

/// How a reduction walks its input: each input element's offset, the
/// output cell it lands in, and its position along the reduced axes.
struct Reduction<'a> {
    x: &'a Tensor,
    values: Vec<f64>,
    in_strides: Vec<usize>,
    /// 0 on reduced axes, so every element of a group lands in one cell.
    out_strides: Vec<usize>,
    /// The position along the reduced axes (argmax's answer).
    reduced_strides: Vec<usize>,
    out_shape_kept: Vec<usize>,
    out_len: usize,
    /// Elements per output cell.
    reduced: usize,
}

impl<'a> Reduction<'a> {
    fn plan(x: &'a Tensor, axes: &[usize]) -> Self {
        let rank = x.shape().len();
        let out_shape_kept: Vec<usize> = (0..rank)
            .map(|d| if axes.contains(&d) { 1 } else { x.shape()[d] })
            .collect();
        let out_strides: Vec<usize> = {
            let s = strides(&out_shape_kept);
            (0..rank)
                .map(|d| if axes.contains(&d) { 0 } else { s[d] })
                .collect()
        };
        // Argmax needs the position along the reduced axes: the in-offset
        // minus the out-offset's base, read through the reduced axes' strides.
        let reduced_strides: Vec<usize> = {
            let shape_r: Vec<usize> = axes.iter().map(|&a| x.shape()[a]).collect();
            let s = strides(&shape_r);
            (0..rank)
                .map(|d| axes.iter().position(|&a| a == d).map_or(0, |p| s[p]))
                .collect()
        };
        Self {
            x,
            values: x.to_f64_vec(),
            in_strides: strides(x.shape()),
            out_strides,
            reduced_strides,
            out_len: element_count(&out_shape_kept).unwrap_or(0),
            out_shape_kept,
            reduced: axes.iter().map(|&a| x.shape()[a]).product(),
        }
    }

    /// Sums in f64, one per output cell.
    fn sums(&self) -> Vec<f64> {
        let mut sums = vec![0.0f64; self.out_len];
        walk(
            self.x.shape(),
            [&self.in_strides, &self.out_strides],
            |[i, o]| sums[o] += self.values[i],
        );
        sums
    }

    /// Sums in the input's dtype; integers exactly (i64), overflow named.
    fn sum(&self) -> Result<Data, EngineError> {
        let walk_exact = |add: &mut dyn FnMut(usize, usize)| {
            walk(
                self.x.shape(),
                [&self.in_strides, &self.out_strides],
                |[i, o]| add(i, o),
            );
        };
        Ok(match self.x.data() {
            Data::F32(_) => Data::F32(self.sums().iter().map(|&s| s as f32).collect()),
            Data::F64(_) => Data::F64(self.sums()),
            Data::I32(v) => {
                let mut exact = vec![0i64; self.out_len];
                walk_exact(&mut |i, o| exact[o] += i64::from(v[i]));
                Data::I64(exact)
            }
            Data::I64(v) => {
                let mut exact = vec![Some(0i64); self.out_len];
                walk_exact(&mut |i, o| exact[o] = exact[o].and_then(|s| s.checked_add(v[i])));
                Data::I64(int_result(exact, "overflow")?)
            }
        })
    }

    /// Floats stay in their width; integers give f64 means.
    fn float_result(&self, values: Vec<f64>) -> Data {
        match self.x.data() {
            Data::F32(_) => Data::F32(values.iter().map(|&m| m as f32).collect()),
            _ => Data::F64(values),
        }
    }

    fn means(&self) -> Vec<f64> {
        self.sums()
            .iter()
            .map(|s| s / self.reduced as f64)
            .collect()
    }

    fn mean(&self) -> Data {
        self.float_result(self.means())
    }

    /// Two passes (mean, then squared deviations), with `ddof` as numpy.
    fn variance(&self, ddof: u32) -> Result<Data, EngineError> {
        let reduced = self.reduced;
        if reduced <= ddof as usize {
            return Err(EngineError::invalid(
                "attributes.ddof",
                format!("{ddof} leaves no degrees of freedom for {reduced} values"),
            ));
        }
        let means = self.means();
        let mut squares = vec![0.0f64; self.out_len];
        walk(
            self.x.shape(),
            [&self.in_strides, &self.out_strides],
            |[i, o]| {
                let d = self.values[i] - means[o];
                squares[o] += d * d;
            },
        );
        let var = squares
            .iter()
            .map(|s| s / (reduced - ddof as usize) as f64)
            .collect();
        Ok(self.float_result(var))
    }

    /// Min, max (the first, NaN winning as numpy) or argmax.
    fn pick(&self, op: Reduce) -> Data {
        let better = |candidate: f64, best: f64| match op {
            Reduce::Min => candidate < best || candidate.is_nan() && !best.is_nan(),
            _ => candidate > best || candidate.is_nan() && !best.is_nan(),
        };
        let mut best: Vec<Option<(f64, usize, usize)>> = vec![None; self.out_len];
        walk(
            self.x.shape(),
            [&self.in_strides, &self.out_strides, &self.reduced_strides],
            |[i, o, r]| {
                let v = self.values[i];
                match best[o] {
                    Some((b, _, _)) if !better(v, b) => {}
                    _ => best[o] = Some((v, i, r)),
                }
            },
        );
        let picks: Vec<(f64, usize, usize)> = best
            .into_iter()
            .map(|b| b.unwrap_or((f64::NAN, 0, 0)))
            .collect();
        if op == Reduce::Argmax {
            return Data::I64(picks.iter().map(|&(_, _, r)| r as i64).collect());
        }
        match self.x.data() {
            Data::F32(v) => Data::F32(picks.iter().map(|&(_, i, _)| v[i]).collect()),
            Data::F64(v) => Data::F64(picks.iter().map(|&(_, i, _)| v[i]).collect()),
            Data::I32(v) => Data::I32(picks.iter().map(|&(_, i, _)| v[i]).collect()),
            Data::I64(v) => Data::I64(picks.iter().map(|&(_, i, _)| v[i]).collect()),
        }
    }
}

/// numpy's `matmul`: 1-D operands are promoted (and the added axis
/// dropped), leading axes broadcast as batches.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor, EngineError> {
    same_dtype(a, b)?;
    for (i, t) in [a, b].iter().enumerate() {
        if t.shape().is_empty() {
            return Err(EngineError::invalid(
                format!("operands[{i}]"),
                "matmul needs at least one axis, got a scalar",
            ));
        }
    }
    let a_vec = a.shape().len() == 1;
    let b_vec = b.shape().len() == 1;
    let a_shape: Vec<usize> = if a_vec {
        vec![1, a.shape()[0]]
    } else {
        a.shape().to_vec()
    };
    let b_shape: Vec<usize> = if b_vec {
        vec![b.shape()[0], 1]
    } else {
        b.shape().to_vec()
    };
    let (m, k) = (a_shape[a_shape.len() - 2], a_shape[a_shape.len() - 1]);
    let (k2, n) = (b_shape[b_shape.len() - 2], b_shape[b_shape.len() - 1]);
    if k != k2 {
        return Err(EngineError::invalid(
            "operands",
            format!(
                "matmul of {:?} and {:?}: inner dimensions {k} and {k2} differ",
                a.shape(),
                b.shape()
            ),
        ));
    }
    let batch = broadcast_shapes(&a_shape[..a_shape.len() - 2], &b_shape[..b_shape.len() - 2])
        .map_err(|p| EngineError::invalid("operands", format!("batch axes: {p}")))?;
    let batches = element_count(&batch).unwrap_or(0);
    let a_batch = broadcast_strides(&a_shape[..a_shape.len() - 2], &batch);
    let b_batch = broadcast_strides(&b_shape[..b_shape.len() - 2], &batch);
    let mut pairs = Vec::with_capacity(batches);
    walk(&batch, [&a_batch, &b_batch], |[i, j]| {
        pairs.push((i * m * k, j * k * n))
    });
    let threads = MATMUL_THREADS.load(Ordering::Relaxed);
    let par = if m * n * k >= 64 * 64 * 64 && threads > 1 {
        Par::rayon(threads)
    } else {
        Par::Seq
    };
    macro_rules! float {
        ($x:expr, $y:expr, $variant:ident, $t:ty) => {{
            let mut out = vec![0 as $t; batches * m * n];
            for (o, &(ia, ib)) in pairs.iter().enumerate() {
                let lhs = MatRef::from_row_major_slice(&$x[ia..ia + m * k], m, k);
                let rhs = MatRef::from_row_major_slice(&$y[ib..ib + k * n], k, n);
                let dst =
                    MatMut::from_row_major_slice_mut(&mut out[o * m * n..(o + 1) * m * n], m, n);
                faer::linalg::matmul::matmul(dst, Accum::Replace, lhs, rhs, 1.0 as $t, par);
            }
            Data::$variant(out)
        }};
    }
    macro_rules! int {
        ($x:expr, $y:expr, $variant:ident, $t:ty) => {{
            let mut out: Vec<Option<$t>> = vec![Some(0); batches * m * n];
            for (o, &(ia, ib)) in pairs.iter().enumerate() {
                for r in 0..m {
                    for p in 0..k {
                        let left = $x[ia + r * k + p];
                        for c in 0..n {
                            let cell = &mut out[o * m * n + r * n + c];
                            *cell = cell.and_then(|s| {
                                left.checked_mul($y[ib + p * n + c])
                                    .and_then(|v| s.checked_add(v))
                            });
                        }
                    }
                }
            }
            Data::$variant(int_result(out, "overflow")?)
        }};
    }
    let data = match (a.data(), b.data()) {
        (Data::F32(x), Data::F32(y)) => float!(x, y, F32, f32),
        (Data::F64(x), Data::F64(y)) => float!(x, y, F64, f64),
        (Data::I32(x), Data::I32(y)) => int!(x, y, I32, i32),
        (Data::I64(x), Data::I64(y)) => int!(x, y, I64, i64),
        _ => return Err(EngineError::invalid("operands", "dtypes differ")),
    };
    let mut shape = batch;
    if !a_vec {
        shape.push(m);
    }
    if !b_vec {
        shape.push(n);
    }
    Tensor::new(shape, data)
}
