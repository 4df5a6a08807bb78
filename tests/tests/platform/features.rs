//! The worker builds the anomaly model's input from numerics' statistics
//! response; the numerics engine defines it. They must agree exactly, or
//! the served model scores something it was not trained on.

use contracts::numerics::v1 as pb;
use numerics_engine::{
    model::{FEATURE_QUANTILES, features_from},
    stats::{WindowRequest, window_statistics},
};

#[test]
fn the_worker_and_the_engine_compute_the_same_features() {
    for seed in 0u64..200 {
        let n = 3 + (seed as usize * 7) % 150;
        let values: Vec<f64> = (0..n)
            .map(|i| {
                let x = ((i as u64 * 2654435761 + seed * 40503) % 1000) as f64 / 100.0;
                if i == n / 2 && seed % 3 == 0 {
                    x * 20.0
                } else {
                    x + seed as f64 * 0.01 * i as f64
                }
            })
            .collect();
        let stats = window_statistics(&WindowRequest {
            values: &values,
            offsets: None,
            quantiles: &FEATURE_QUANTILES,
            ewma_alpha: 0.3,
            z_threshold: 3.0,
            approximate: false,
        })
        .unwrap();
        let response = pb::ComputeWindowStatisticsResponse {
            count: stats.count,
            mean: stats.mean,
            variance: stats.variance,
            min: stats.min,
            max: stats.max,
            quantiles: stats
                .quantiles
                .iter()
                .map(|&(q, value)| pb::Quantile { q, value })
                .collect(),
            ewma: stats.ewma,
            trend_slope: stats.trend_slope,
            trend_intercept: stats.trend_intercept,
            trend_r_squared: stats.trend_r_squared,
            anomalous_indexes: stats.anomalous.clone(),
        };
        assert_eq!(
            worker::numerics::features(&response),
            features_from(&stats),
            "seed {seed}"
        );
    }
}
