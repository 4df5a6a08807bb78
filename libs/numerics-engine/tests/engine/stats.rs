//! Window statistics against sorting and two-pass references.

use numerics_engine::stats::{Sketch, WindowRequest, exact_quantiles, window_statistics};
use proptest::prelude::*;

fn request<'a>(values: &'a [f64], quantiles: &'a [f64]) -> WindowRequest<'a> {
    WindowRequest {
        values,
        offsets: None,
        quantiles,
        ewma_alpha: 0.3,
        z_threshold: 3.0,
        approximate: false,
    }
}

fn sorted_quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let position = q * (sorted.len() - 1) as f64;
    let (low, high) = (position.floor() as usize, position.ceil() as usize);
    sorted[low] + (sorted[high] - sorted[low]) * (position - low as f64)
}

proptest! {
    #[test]
    fn quantiles_match_sorting(
        values in prop::collection::vec(-1e6f64..1e6, 1..500),
        quantiles in prop::collection::vec(0.0f64..=1.0, 1..6),
    ) {
        for (q, got) in exact_quantiles(&values, &quantiles) {
            let expected = sorted_quantile(&values, q);
            prop_assert!((got - expected).abs() <= 1e-9 * (1.0 + expected.abs()), "q={q}: {got} vs {expected}");
        }
    }

    #[test]
    fn the_sketch_is_within_its_relative_accuracy(values in prop::collection::vec(0.001f64..1e6, 1..2000), q in 0.0f64..=1.0) {
        let mut sketch = Sketch::new(0.01);
        values.iter().for_each(|&v| sketch.add(v));
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        let rank = (q * (sorted.len() - 1) as f64).round() as usize;
        let truth = sorted[rank];
        let got = sketch.quantile(q);
        prop_assert!((got - truth).abs() <= 0.0101 * truth, "q={q}: {got} vs {truth}");
    }

    #[test]
    fn moments_trend_and_flags_match_references(values in prop::collection::vec(-1e3f64..1e3, 2..300)) {
        let s = window_statistics(&request(&values, &[0.5])).unwrap();
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        prop_assert!((s.mean - mean).abs() < 1e-9 * (1.0 + mean.abs()));
        prop_assert!((s.variance - var).abs() < 1e-9 * (1.0 + var));
        let flagged: Vec<u64> = values.iter().enumerate().filter(|(_, v)| var > 0.0 && (*v - mean).abs() > 3.0 * var.sqrt()).map(|(i, _)| i as u64).collect();
        prop_assert_eq!(&s.anomalous, &flagged);
        let ewma = values[1..].iter().fold(values[0], |e, &v| 0.3 * v + 0.7 * e);
        prop_assert!((s.ewma - ewma).abs() < 1e-9 * (1.0 + ewma.abs()));
        prop_assert!((0.0..=1.0).contains(&s.trend_r_squared));
    }
}

#[test]
fn a_line_has_its_slope_intercept_and_a_perfect_fit() {
    let offsets: Vec<f64> = (0..50).map(|i| i as f64 * 2.0).collect();
    let values: Vec<f64> = offsets.iter().map(|x| 3.0 + 0.5 * x).collect();
    let s = window_statistics(&WindowRequest {
        offsets: Some(&offsets),
        ..request(&values, &[])
    })
    .unwrap();
    assert!((s.trend_slope - 0.5).abs() < 1e-12 && (s.trend_intercept - 3.0).abs() < 1e-9);
    assert!((s.trend_r_squared - 1.0).abs() < 1e-12);
}

#[test]
fn bad_requests_name_the_field() {
    let error = window_statistics(&request(&[], &[0.5])).unwrap_err();
    assert_eq!(error.to_string(), "values: must hold at least one value");
    let error = window_statistics(&request(&[1.0, f64::NAN], &[])).unwrap_err();
    assert_eq!(error.to_string(), "values[1]: must be finite, got NaN");
    let error = window_statistics(&request(&[1.0], &[0.5, 1.5])).unwrap_err();
    assert_eq!(
        error.to_string(),
        "quantiles[1]: must be within [0, 1], got 1.5"
    );
    let error = window_statistics(&WindowRequest {
        offsets: Some(&[0.0]),
        ..request(&[1.0, 2.0], &[])
    })
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "offsets_seconds: has 1 entries for 2 values"
    );
    let error = window_statistics(&WindowRequest {
        ewma_alpha: 0.0,
        ..request(&[1.0], &[])
    })
    .unwrap_err();
    assert_eq!(error.operand, "ewma_alpha");
}
