//! Broadcasting, reductions, matmul and shape operations against naive
//! loops over random shapes and values.

use numerics_engine::{
    Data, Tensor,
    ops::{self, Binary, Reduce},
    shape::{self, Range},
};
use proptest::prelude::*;

/// An output shape and two operand shapes that broadcast to it.
fn broadcastable() -> impl Strategy<Value = (Vec<usize>, Vec<usize>, Vec<usize>)> {
    prop::collection::vec(1usize..4, 0..4).prop_flat_map(|out| {
        let rank = out.len();
        (
            Just(out.clone()),
            prop::collection::vec(any::<bool>(), rank),
            prop::collection::vec(any::<bool>(), rank),
            0..=rank,
            0..=rank,
        )
            .prop_map(|(out, ones_a, ones_b, drop_a, drop_b)| {
                let a: Vec<usize> = out
                    .iter()
                    .zip(&ones_a)
                    .map(|(&d, &one)| if one { 1 } else { d })
                    .collect();
                let b: Vec<usize> = out
                    .iter()
                    .zip(&ones_b)
                    .map(|(&d, &one)| if one { 1 } else { d })
                    .collect();
                (out, a[drop_a..].to_vec(), b[drop_b..].to_vec())
            })
    })
}

fn values(shape: &[usize], seed: u64) -> Vec<f64> {
    let n: usize = shape.iter().product();
    (0..n)
        .map(|i| ((i as u64 * 2654435761 + seed) % 1000) as f64 / 10.0 - 50.0)
        .collect()
}

/// Reads `data` of `shape` at the broadcast position `index` of `out`.
fn at(data: &[f64], shape: &[usize], out: &[usize], index: &[usize]) -> f64 {
    let offset = out.len() - shape.len();
    let mut flat = 0;
    for (d, &dim) in shape.iter().enumerate() {
        let i = if dim == 1 { 0 } else { index[d + offset] };
        flat = flat * dim + i;
    }
    data[flat]
}

fn indexes(shape: &[usize]) -> Vec<Vec<usize>> {
    let mut all = vec![Vec::new()];
    for &dim in shape {
        all = all
            .into_iter()
            .flat_map(|prefix| (0..dim).map(move |i| [prefix.clone(), vec![i]].concat()))
            .collect();
    }
    all
}

proptest! {
    #[test]
    fn broadcasting_matches_index_arithmetic((_, a_shape, b_shape) in broadcastable(), seed in 0u64..100) {
        // Compatible by construction, so the broadcast is the larger of
        // each aligned pair (a missing axis counts as 1).
        let rank = a_shape.len().max(b_shape.len());
        let dim = |s: &[usize], i: usize| if i < rank - s.len() { 1 } else { s[i - (rank - s.len())] };
        let out: Vec<usize> = (0..rank).map(|i| dim(&a_shape, i).max(dim(&b_shape, i))).collect();
        let (a, b) = (values(&a_shape, seed), values(&b_shape, seed + 7));
        let ta = Tensor::f64(a_shape.clone(), a.clone()).unwrap();
        let tb = Tensor::f64(b_shape.clone(), b.clone()).unwrap();
        let got = ops::binary(Binary::Sub, &ta, &tb).unwrap();
        prop_assert_eq!(got.shape(), out.as_slice());
        let expected: Vec<f64> = indexes(&out).iter().map(|ix| at(&a, &a_shape, &out, ix) - at(&b, &b_shape, &out, ix)).collect();
        prop_assert_eq!(got.to_f64_vec(), expected);
    }

    #[test]
    fn reductions_over_random_axes_match_naive_loops(
        shape in prop::collection::vec(1usize..5, 1..4),
        pick in prop::collection::vec(any::<bool>(), 4),
        keep in any::<bool>(),
        seed in 0u64..100,
    ) {
        let rank = shape.len();
        let axes: Vec<i64> = (0..rank).filter(|&d| pick[d]).map(|d| d as i64).collect();
        let data = values(&shape, seed);
        let t = Tensor::f64(shape.clone(), data.clone()).unwrap();
        let reduced: Vec<usize> = if axes.is_empty() { (0..rank).collect() } else { axes.iter().map(|&a| a as usize).collect() };
        let out_shape: Vec<usize> = (0..rank).filter(|d| !reduced.contains(d)).map(|d| shape[d]).collect();
        // Group values by their kept coordinates.
        let mut groups: std::collections::BTreeMap<Vec<usize>, Vec<f64>> = Default::default();
        for ix in indexes(&shape) {
            let key: Vec<usize> = (0..rank).filter(|d| !reduced.contains(d)).map(|d| ix[d]).collect();
            let flat = ix.iter().zip(&shape).fold(0, |f, (&i, &dim)| f * dim + i);
            groups.entry(key).or_default().push(data[flat]);
        }
        let sum = ops::reduce(Reduce::Sum, &t, &axes, keep).unwrap();
        let max = ops::reduce(Reduce::Max, &t, &axes, false).unwrap();
        let var = ops::reduce(Reduce::Variance(0), &t, &axes, false).unwrap();
        if keep {
            prop_assert_eq!(sum.shape().len(), rank);
        } else {
            prop_assert_eq!(sum.shape(), out_shape.as_slice());
        }
        for (i, group) in groups.values().enumerate() {
            let s: f64 = group.iter().sum();
            let m = s / group.len() as f64;
            let v = group.iter().map(|x| (x - m).powi(2)).sum::<f64>() / group.len() as f64;
            prop_assert!((sum.to_f64_vec()[i] - s).abs() < 1e-9 * (1.0 + s.abs()));
            prop_assert_eq!(max.to_f64_vec()[i], group.iter().copied().fold(f64::NEG_INFINITY, f64::max));
            prop_assert!((var.to_f64_vec()[i] - v).abs() < 1e-9 * (1.0 + v));
        }
    }

    #[test]
    fn matmul_matches_a_triple_loop(
        batch in 1usize..3, m in 1usize..9, k in 1usize..9, n in 1usize..9, seed in 0u64..100,
    ) {
        let a = values(&[batch, m, k], seed);
        let b = values(&[k, n], seed + 3);
        let ta = Tensor::f64(vec![batch, m, k], a.clone()).unwrap();
        let tb = Tensor::f64(vec![k, n], b.clone()).unwrap();
        let got = ops::matmul(&ta, &tb).unwrap();
        prop_assert_eq!(got.shape(), &[batch, m, n]);
        let got = got.to_f64_vec();
        for p in 0..batch {
            for r in 0..m {
                for c in 0..n {
                    let expected: f64 = (0..k).map(|i| a[p * m * k + r * k + i] * b[i * n + c]).sum();
                    prop_assert!((got[p * m * n + r * n + c] - expected).abs() < 1e-9 * (1.0 + expected.abs()));
                }
            }
        }
        // f32 through faer within f32 tolerance.
        let fa = Tensor::f32(vec![batch, m, k], a.iter().map(|&x| x as f32).collect()).unwrap();
        let fb = Tensor::f32(vec![k, n], b.iter().map(|&x| x as f32).collect()).unwrap();
        let single = ops::matmul(&fa, &fb).unwrap().to_f64_vec();
        for (x, y) in single.iter().zip(&got) {
            prop_assert!((x - y).abs() < 1e-3 * (1.0 + y.abs()));
        }
    }

    #[test]
    fn transpose_slice_and_concat_move_the_right_elements(
        shape in prop::collection::vec(1usize..5, 2..4), seed in 0u64..100, start in 0i64..3, step in 1i64..3,
    ) {
        let data = values(&shape, seed);
        let t = Tensor::f64(shape.clone(), data.clone()).unwrap();
        let twice = shape::transpose(&shape::transpose(&t, &[]).unwrap(), &[]).unwrap();
        prop_assert_eq!(&twice, &t);
        let sliced = shape::slice(&t, &[Range { start, stop: i64::MAX, step }]).unwrap();
        let rows: Vec<usize> = (start as usize..shape[0]).step_by(step as usize).collect();
        prop_assert_eq!(sliced.shape()[0], rows.len());
        let row_len: usize = shape[1..].iter().product();
        let expected: Vec<f64> = rows.iter().flat_map(|&r| data[r * row_len..(r + 1) * row_len].to_vec()).collect();
        prop_assert_eq!(sliced.to_f64_vec(), expected);
        let joined = shape::concat(&[&t, &t], 0).unwrap();
        prop_assert_eq!(joined.shape()[0], shape[0] * 2);
        prop_assert_eq!(joined.to_f64_vec(), [data.clone(), data].concat());
    }

    #[test]
    fn malformed_tensors_are_rejected_never_a_panic(
        shape in prop::collection::vec(0usize..6, 0..5), len in 0usize..40,
    ) {
        let result = Tensor::f64(shape.clone(), vec![1.0; len]);
        let expected: usize = shape.iter().product();
        prop_assert_eq!(result.is_ok(), expected == len);
    }
}

#[test]
fn errors_name_the_operand_and_the_problem() {
    let a = Tensor::f64(vec![2, 3], vec![0.0; 6]).unwrap();
    let b = Tensor::f64(vec![4, 2], vec![0.0; 8]).unwrap();
    let error = ops::binary(Binary::Add, &a, &b).unwrap_err();
    assert_eq!(error.operand, "operands");
    assert!(error.problem.contains("do not broadcast"), "{error}");
    let error = ops::matmul(&a, &b).unwrap_err();
    assert!(
        error.problem.contains("inner dimensions 3 and 4 differ"),
        "{error}"
    );
    let ints = Tensor::new(vec![2], Data::I32(vec![1, 2])).unwrap();
    let error = ops::unary(ops::Unary::Exp, &ints).unwrap_err();
    assert_eq!(
        error.to_string(),
        "operands[0]: exp needs f32 or f64, got i32"
    );
    let f32s = Tensor::f32(vec![2], vec![1.0, 2.0]).unwrap();
    let error = ops::binary(Binary::Add, &ints, &f32s).unwrap_err();
    assert_eq!(error.operand, "operands[1]");
    let error = ops::reduce(Reduce::Sum, &a, &[2], false).unwrap_err();
    assert_eq!(
        error.to_string(),
        "attributes.axes: axis 2 is out of range for rank 2"
    );
}
