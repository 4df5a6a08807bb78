//! Decompositions reconstruct their input; solve and least squares leave
//! small residuals; bad inputs are named.

use numerics_engine::{
    Tensor,
    linalg::{Decomposition, decompose},
    ops,
};
use proptest::prelude::*;

fn matrix(rows: usize, cols: usize, seed: u64) -> Vec<f64> {
    (0..rows * cols)
        .map(|i| ((i as u64 * 40503 + seed * 17) % 97) as f64 / 9.7 - 5.0)
        .collect()
}

fn get<'a>(factors: &'a [(&str, Tensor)], name: &str) -> &'a Tensor {
    &factors.iter().find(|(n, _)| *n == name).unwrap().1
}

fn close(a: &[f64], b: &[f64], tolerance: f64) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= tolerance * (1.0 + y.abs()))
}

proptest! {
    #[test]
    fn solve_and_least_squares_leave_small_residuals(n in 1usize..8, extra in 0usize..5, seed in 0u64..50) {
        // Diagonally dominant: well conditioned.
        let mut a = matrix(n, n, seed);
        for i in 0..n {
            a[i * n + i] += 10.0 * n as f64;
        }
        let ta = Tensor::f64(vec![n, n], a).unwrap();
        let b = Tensor::f64(vec![n], matrix(n, 1, seed + 1)).unwrap();
        let x = decompose(Decomposition::Solve, &ta, Some(&b)).unwrap();
        let ax = ops::matmul(&ta, get(&x, "x")).unwrap();
        prop_assert!(close(&ax.to_f64_vec(), &b.to_f64_vec(), 1e-9));

        // Least squares on a tall matrix: the residual is orthogonal to A's columns.
        let rows = n + extra;
        let tall = Tensor::f64(vec![rows, n], matrix(rows, n, seed + 2)).unwrap();
        let rhs = Tensor::f64(vec![rows], matrix(rows, 1, seed + 3)).unwrap();
        let x = decompose(Decomposition::LeastSquares, &tall, Some(&rhs)).unwrap();
        let residual: Vec<f64> = ops::matmul(&tall, get(&x, "x")).unwrap().to_f64_vec().iter().zip(rhs.to_f64_vec()).map(|(p, r)| p - r).collect();
        let r = Tensor::f64(vec![rows], residual).unwrap();
        let at = numerics_engine::shape::transpose(&tall, &[]).unwrap();
        let normal = ops::matmul(&at, &r).unwrap().to_f64_vec();
        prop_assert!(normal.iter().all(|v| v.abs() < 1e-8), "{normal:?}");
    }

    #[test]
    fn qr_svd_cholesky_and_eigh_reconstruct(rows in 1usize..7, cols in 1usize..7, seed in 0u64..50) {
        let a = Tensor::f64(vec![rows, cols], matrix(rows, cols, seed)).unwrap();
        let qr = decompose(Decomposition::Qr, &a, None).unwrap();
        let back = ops::matmul(get(&qr, "q"), get(&qr, "r")).unwrap();
        prop_assert!(close(&back.to_f64_vec(), &a.to_f64_vec(), 1e-9));

        let svd = decompose(Decomposition::Svd, &a, None).unwrap();
        let k = rows.min(cols);
        let s = get(&svd, "s").to_f64_vec();
        prop_assert!(s.windows(2).all(|w| w[0] >= w[1] - 1e-12), "descending: {s:?}");
        let u = get(&svd, "u").to_f64_vec();
        let us = Tensor::f64(vec![rows, k], (0..rows * k).map(|i| u[i] * s[i % k]).collect()).unwrap();
        let back = ops::matmul(&us, get(&svd, "vt")).unwrap();
        prop_assert!(close(&back.to_f64_vec(), &a.to_f64_vec(), 1e-9));

        // A Aᵀ + I is symmetric positive definite.
        let at = numerics_engine::shape::transpose(&a, &[]).unwrap();
        let mut spd = ops::matmul(&a, &at).unwrap().to_f64_vec();
        for i in 0..rows {
            spd[i * rows + i] += 1.0;
        }
        let spd = Tensor::f64(vec![rows, rows], spd).unwrap();
        let l = decompose(Decomposition::Cholesky, &spd, None).unwrap();
        let lt = numerics_engine::shape::transpose(get(&l, "l"), &[]).unwrap();
        prop_assert!(close(&ops::matmul(get(&l, "l"), &lt).unwrap().to_f64_vec(), &spd.to_f64_vec(), 1e-9));

        let eig = decompose(Decomposition::Eigh, &spd, None).unwrap();
        let values = get(&eig, "values").to_f64_vec();
        prop_assert!(values.windows(2).all(|w| w[0] <= w[1] + 1e-12), "ascending: {values:?}");
        let v = get(&eig, "vectors").to_f64_vec();
        let scaled = Tensor::f64(vec![rows, rows], (0..rows * rows).map(|i| v[i] * values[i % rows]).collect()).unwrap();
        let vt = numerics_engine::shape::transpose(get(&eig, "vectors"), &[]).unwrap();
        prop_assert!(close(&ops::matmul(&scaled, &vt).unwrap().to_f64_vec(), &spd.to_f64_vec(), 1e-8));
    }
}

#[test]
fn singular_non_square_and_indefinite_inputs_are_named() {
    let singular = Tensor::f64(vec![2, 2], vec![1.0, 2.0, 2.0, 4.0]).unwrap();
    let b = Tensor::f64(vec![2], vec![1.0, 1.0]).unwrap();
    let error = decompose(Decomposition::Solve, &singular, Some(&b)).unwrap_err();
    assert!(
        error.to_string().starts_with("a: matrix is singular"),
        "{error}"
    );
    let wide = Tensor::f64(vec![2, 3], vec![0.0; 6]).unwrap();
    let error = decompose(Decomposition::Solve, &wide, Some(&b)).unwrap_err();
    assert_eq!(error.to_string(), "a: must be square, got 2x3");
    let indefinite = Tensor::f64(vec![2, 2], vec![1.0, 0.0, 0.0, -1.0]).unwrap();
    let error = decompose(Decomposition::Cholesky, &indefinite, None).unwrap_err();
    assert_eq!(error.to_string(), "a: matrix is not positive definite");
    let error = decompose(Decomposition::Solve, &singular, None).unwrap_err();
    assert_eq!(error.operand, "b");
    let nan = Tensor::f64(vec![1, 1], vec![f64::NAN]).unwrap();
    assert_eq!(
        decompose(Decomposition::Qr, &nan, None)
            .unwrap_err()
            .to_string(),
        "a: element 0 is NaN"
    );
}
