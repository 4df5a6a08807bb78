//! Solve, least squares and the decompositions, on faer, in f64 (f32
//! inputs are widened and the factors narrowed back). Singular,
//! non-square, non-symmetric and non-positive-definite inputs are named
//! errors, never garbage.

use faer::{Mat, MatRef, Side, linalg::solvers::Solve as _};

use crate::{DType, Data, EngineError, Tensor};

/// Which decomposition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decomposition {
    /// `x` with `a x = b`, `a` square and not singular.
    Solve,
    /// `x` minimising `|a x - b|` (any shape, via the SVD).
    LeastSquares,
    /// `l` lower-triangular with `a = l lᵀ`.
    Cholesky,
    /// Reduced `q`, `r` with `a = q r`.
    Qr,
    /// Thin `u`, `s`, `vt` with `a = u diag(s) vt`, `s` descending.
    Svd,
    /// `values` ascending and `vectors` (columns) of symmetric `a`.
    Eigh,
}

/// Named factors, in a fixed order.
pub type Factors = Vec<(&'static str, Tensor)>;

fn matrix(name: &str, t: &Tensor) -> Result<Mat<f64>, EngineError> {
    if !t.dtype().is_float() {
        return Err(EngineError::invalid(
            name,
            format!("needs f32 or f64, got {}", t.dtype().name()),
        ));
    }
    if t.shape().len() != 2 {
        return Err(EngineError::invalid(
            name,
            format!("needs a matrix (rank 2), got shape {:?}", t.shape()),
        ));
    }
    if let Some(i) = t.first_nan() {
        return Err(EngineError::invalid(name, format!("element {i} is NaN")));
    }
    let (rows, cols) = (t.shape()[0], t.shape()[1]);
    let values = t.to_f64_vec();
    if values.iter().any(|v| v.is_infinite()) {
        return Err(EngineError::invalid(name, "holds an infinity"));
    }
    Ok(MatRef::from_row_major_slice(&values, rows, cols).to_owned())
}

/// `b` as a matrix, remembering whether it was a vector.
fn right_side(b: &Tensor, rows: usize) -> Result<(Mat<f64>, bool), EngineError> {
    let vector = b.shape().len() == 1;
    let as_matrix = if vector {
        Tensor::new(vec![b.len(), 1], b.data().clone())?
    } else {
        b.clone()
    };
    let m = matrix("b", &as_matrix)?;
    if m.nrows() != rows {
        return Err(EngineError::invalid(
            "b",
            format!("has {} rows, a has {rows}", m.nrows()),
        ));
    }
    Ok((m, vector))
}

fn tensor(m: MatRef<'_, f64>, dtype: DType, shape: Vec<usize>) -> Result<Tensor, EngineError> {
    let mut values = Vec::with_capacity(m.nrows() * m.ncols());
    for i in 0..m.nrows() {
        for j in 0..m.ncols() {
            values.push(m[(i, j)]);
        }
    }
    let data = match dtype {
        DType::F32 => Data::F32(values.iter().map(|&v| v as f32).collect()),
        _ => Data::F64(values),
    };
    Tensor::new(shape, data)
}

fn vector(values: Vec<f64>, dtype: DType) -> Result<Tensor, EngineError> {
    let n = values.len();
    let data = match dtype {
        DType::F32 => Data::F32(values.iter().map(|&v| v as f32).collect()),
        _ => Data::F64(values),
    };
    Tensor::new(vec![n], data)
}

fn square(a: &Mat<f64>) -> Result<(), EngineError> {
    if a.nrows() != a.ncols() {
        return Err(EngineError::invalid(
            "a",
            format!("must be square, got {}x{}", a.nrows(), a.ncols()),
        ));
    }
    Ok(())
}

fn symmetric(a: &Mat<f64>) -> Result<(), EngineError> {
    square(a)?;
    let n = a.nrows();
    let scale = (0..n)
        .flat_map(|i| (0..n).map(move |j| (i, j)))
        .fold(0.0f64, |m, (i, j)| m.max(a[(i, j)].abs()));
    for i in 0..n {
        for j in 0..i {
            if (a[(i, j)] - a[(j, i)]).abs() > 1e-10 * scale.max(1.0) {
                return Err(EngineError::invalid(
                    "a",
                    format!("must be symmetric; a[{i},{j}] != a[{j},{i}]"),
                ));
            }
        }
    }
    Ok(())
}

/// Runs `kind` on `a` (and `b` for solve and least squares).
pub fn decompose(
    kind: Decomposition,
    a: &Tensor,
    b: Option<&Tensor>,
) -> Result<Factors, EngineError> {
    let dtype = a.dtype();
    let m = matrix("a", a)?;
    let (rows, cols) = (m.nrows(), m.ncols());
    let needs_b =
        || b.ok_or_else(|| EngineError::invalid("b", "is required for solve and least squares"));
    match kind {
        Decomposition::Solve => {
            square(&m)?;
            let b = needs_b()?;
            let (rhs, was_vector) = right_side(b, rows)?;
            let lu = m.full_piv_lu();
            // Singular: a zero (or negligible) pivot on U's diagonal.
            let u = lu.U();
            let largest = (0..rows).map(|i| u[(i, i)].abs()).fold(0.0f64, f64::max);
            let smallest = (0..rows)
                .map(|i| u[(i, i)].abs())
                .fold(f64::INFINITY, f64::min);
            if rows > 0 && (largest == 0.0 || smallest <= largest * rows as f64 * f64::EPSILON) {
                return Err(EngineError::invalid(
                    "a",
                    "matrix is singular (or nearly so); try least squares",
                ));
            }
            let x = lu.solve(&rhs);
            let shape = if was_vector {
                vec![cols]
            } else {
                vec![cols, rhs.ncols()]
            };
            Ok(vec![("x", tensor(x.as_ref(), dtype, shape)?)])
        }
        Decomposition::LeastSquares => {
            let b = needs_b()?;
            let (rhs, was_vector) = right_side(b, rows)?;
            let svd = m.thin_svd().map_err(|_| not_converged("svd"))?;
            let (u, s, v) = (svd.U(), svd.S().column_vector(), svd.V());
            let k = s.nrows();
            let cutoff =
                (0..k).map(|i| s[i]).fold(0.0f64, f64::max) * rows.max(cols) as f64 * f64::EPSILON;
            // x = V S⁺ Uᵀ b
            let mut x = Mat::<f64>::zeros(cols, rhs.ncols());
            for c in 0..rhs.ncols() {
                for i in 0..k {
                    if s[i] <= cutoff {
                        continue;
                    }
                    let coefficient =
                        (0..rows).map(|r| u[(r, i)] * rhs[(r, c)]).sum::<f64>() / s[i];
                    for j in 0..cols {
                        x[(j, c)] += v[(j, i)] * coefficient;
                    }
                }
            }
            let shape = if was_vector {
                vec![cols]
            } else {
                vec![cols, rhs.ncols()]
            };
            Ok(vec![("x", tensor(x.as_ref(), dtype, shape)?)])
        }
        Decomposition::Cholesky => {
            symmetric(&m)?;
            let llt = m
                .llt(Side::Lower)
                .map_err(|_| EngineError::invalid("a", "matrix is not positive definite"))?;
            let l = llt.L();
            Ok(vec![("l", tensor(l, dtype, vec![rows, rows])?)])
        }
        Decomposition::Qr => {
            let qr = m.qr();
            let q = qr.compute_thin_Q();
            let r = qr.thin_R();
            let k = rows.min(cols);
            Ok(vec![
                ("q", tensor(q.as_ref(), dtype, vec![rows, k])?),
                ("r", tensor(r, dtype, vec![k, cols])?),
            ])
        }
        Decomposition::Svd => {
            let svd = m.thin_svd().map_err(|_| not_converged("svd"))?;
            let k = rows.min(cols);
            let s: Vec<f64> = (0..k).map(|i| svd.S().column_vector()[i]).collect();
            let vt = svd.V().transpose().to_owned();
            Ok(vec![
                ("u", tensor(svd.U(), dtype, vec![rows, k])?),
                ("s", vector(s, dtype)?),
                ("vt", tensor(vt.as_ref(), dtype, vec![k, cols])?),
            ])
        }
        Decomposition::Eigh => {
            symmetric(&m)?;
            let evd = m
                .self_adjoint_eigen(Side::Lower)
                .map_err(|_| not_converged("eigh"))?;
            let values: Vec<f64> = (0..rows).map(|i| evd.S().column_vector()[i]).collect();
            let mut order: Vec<usize> = (0..rows).collect();
            order.sort_by(|&x, &y| values[x].total_cmp(&values[y]));
            let u = evd.U();
            let sorted = Mat::from_fn(rows, rows, |i, j| u[(i, order[j])]);
            Ok(vec![
                (
                    "values",
                    vector(order.iter().map(|&i| values[i]).collect(), dtype)?,
                ),
                ("vectors", tensor(sorted.as_ref(), dtype, vec![rows, rows])?),
            ])
        }
    }
}

fn not_converged(what: &str) -> EngineError {
    EngineError {
        operand: "a".into(),
        problem: format!("{what} did not converge"),
        kind: crate::ErrorKind::NotConverged,
    }
}
