//! Statistics of one window's readings, computed in the worker until the
//! numerics service takes them over: count, mean, population variance,
//! min, max, exact quantiles (linear interpolation, numpy's default),
//! least-squares trend against time with its r², and a z-score anomaly
//! score. Pure functions, so property tests can check them against
//! straightforward references.

use contracts::ingest::v1 as pb;

/// Version reported with scores from [`anomaly_score`].
pub const MODEL_VERSION: &str = "worker-zscore-v1";

/// A window is anomalous from this score up (a reading 4 standard
/// deviations from the window's mean).
pub const ANOMALOUS_FROM: f64 = 0.5;

/// `(seconds since the window's start, value)` pairs to statistics.
pub fn statistics(points: &[(f64, f64)]) -> pb::WindowStatistics {
    let n = points.len();
    if n == 0 {
        return pb::WindowStatistics::default();
    }
    // Welford's update: stable where a naive sum of squares is not.
    let (mut mean_x, mut mean_y, mut m2_x, mut m2_y, mut co) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
    for (i, &(x, y)) in points.iter().enumerate() {
        let k = (i + 1) as f64;
        let dx = x - mean_x;
        let dy = y - mean_y;
        mean_x += dx / k;
        mean_y += dy / k;
        m2_x += dx * (x - mean_x);
        m2_y += dy * (y - mean_y);
        co += dx * (y - mean_y);
        min = min.min(y);
        max = max.max(y);
    }
    let count = n as f64;
    let (slope, r_squared) = if m2_x > 0.0 && m2_y > 0.0 {
        (co / m2_x, (co * co / (m2_x * m2_y)).clamp(0.0, 1.0))
    } else {
        (0.0, 0.0)
    };
    let mut sorted: Vec<f64> = points.iter().map(|&(_, y)| y).collect();
    sorted.sort_unstable_by(f64::total_cmp);
    pb::WindowStatistics {
        count: n as u64,
        mean: mean_y,
        variance: m2_y / count,
        min,
        max,
        p50: quantile(&sorted, 0.50),
        p95: quantile(&sorted, 0.95),
        p99: quantile(&sorted, 0.99),
        trend_slope: slope,
        trend_r_squared: r_squared,
    }
}

/// The `q` quantile of ascending `sorted`, interpolating linearly between
/// the two nearest ranks.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        1 => sorted[0],
        n => {
            let position = q.clamp(0.0, 1.0) * (n - 1) as f64;
            let low = position.floor() as usize;
            let high = (low + 1).min(n - 1);
            let weight = position - low as f64;
            sorted[low] + (sorted[high] - sorted[low]) * weight
        }
    }
}

/// A score in [0, 1] from the largest |z| in the window: 0 up to 2
/// standard deviations, 0.5 at 4, 1 from 6.
pub fn anomaly_score(statistics: &pb::WindowStatistics) -> f64 {
    let deviation = statistics.variance.sqrt();
    if statistics.count < 3 || deviation <= f64::EPSILON * statistics.mean.abs().max(1.0) {
        return 0.0;
    }
    let furthest = (statistics.max - statistics.mean)
        .abs()
        .max((statistics.min - statistics.mean).abs());
    ((furthest / deviation - 2.0) / 4.0).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn reference_quantile(values: &[f64], q: f64) -> f64 {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let position = q * (sorted.len() - 1) as f64;
        let (low, high) = (position.floor() as usize, position.ceil() as usize);
        sorted[low] + (sorted[high] - sorted[low]) * (position - low as f64)
    }

    proptest! {
        #[test]
        fn statistics_match_two_pass_references(
            values in prop::collection::vec(-1.0e6f64..1.0e6, 1..300),
        ) {
            let points: Vec<(f64, f64)> =
                values.iter().enumerate().map(|(i, v)| (i as f64, *v)).collect();
            let s = statistics(&points);
            let n = values.len() as f64;
            let mean = values.iter().sum::<f64>() / n;
            let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
            let scale = 1.0 + mean.abs() + variance;
            prop_assert_eq!(s.count, values.len() as u64);
            prop_assert!((s.mean - mean).abs() <= 1e-9 * scale);
            prop_assert!((s.variance - variance).abs() <= 1e-9 * scale);
            prop_assert_eq!(s.min, values.iter().copied().fold(f64::INFINITY, f64::min));
            prop_assert_eq!(s.max, values.iter().copied().fold(f64::NEG_INFINITY, f64::max));
            for (q, got) in [(0.5, s.p50), (0.95, s.p95), (0.99, s.p99)] {
                prop_assert!((got - reference_quantile(&values, q)).abs() <= 1e-9 * (1.0 + got.abs()));
            }
            prop_assert!((0.0..=1.0).contains(&s.trend_r_squared));
        }

        #[test]
        fn a_perfect_line_has_its_slope_and_r_squared_one(
            slope in -100.0f64..100.0,
            intercept in -100.0f64..100.0,
            n in 3usize..200,
        ) {
            prop_assume!(slope.abs() > 1e-6);
            let points: Vec<(f64, f64)> =
                (0..n).map(|i| (i as f64 * 0.5, intercept + slope * i as f64 * 0.5)).collect();
            let s = statistics(&points);
            prop_assert!((s.trend_slope - slope).abs() <= 1e-6 * (1.0 + slope.abs()));
            prop_assert!((s.trend_r_squared - 1.0).abs() <= 1e-9);
        }
    }

    #[test]
    fn a_spike_is_anomalous_and_steady_noise_is_not() {
        let steady: Vec<(f64, f64)> = (0..60)
            .map(|i| (i as f64, 20.0 + (i % 5) as f64 * 0.1))
            .collect();
        assert!(anomaly_score(&statistics(&steady)) < ANOMALOUS_FROM);
        let mut spiked = steady.clone();
        spiked[30].1 = 95.0;
        let score = anomaly_score(&statistics(&spiked));
        assert!(score >= ANOMALOUS_FROM, "{score}");
        assert_eq!(anomaly_score(&statistics(&[])), 0.0);
        assert_eq!(
            anomaly_score(&statistics(&[(0.0, 5.0); 10])),
            0.0,
            "flat is not anomalous"
        );
    }
}
