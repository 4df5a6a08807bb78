//! Statistics of one window of values, for the platform's aggregation
//! jobs: count, mean, population variance, min, max, quantiles (exact by
//! selection, or from a streaming relative-error sketch), EWMA, the
//! least-squares trend against time with its r², and the values whose
//! z-score exceeds a threshold. Plain loops over the slice, a few passes,
//! no allocation beyond the quantile copy.

use std::collections::BTreeMap;

use crate::EngineError;

/// What to compute.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowRequest<'a> {
    /// The values, finite.
    pub values: &'a [f64],
    /// Seconds since the window's start per value (same length), or `None`
    /// for evenly spaced values (the trend's x is then the index).
    pub offsets: Option<&'a [f64]>,
    /// Quantiles to report, each within [0, 1].
    pub quantiles: &'a [f64],
    /// EWMA smoothing factor in (0, 1].
    pub ewma_alpha: f64,
    /// |z| above which a value is flagged (> 0).
    pub z_threshold: f64,
    /// Quantiles from the sketch instead of exact selection.
    pub approximate: bool,
}

/// What a window's values say.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WindowStatistics {
    /// Number of values.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Population variance.
    pub variance: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// `(q, value)` per requested quantile, in request order.
    pub quantiles: Vec<(f64, f64)>,
    /// Exponentially weighted moving average at the last value.
    pub ewma: f64,
    /// Trend slope (value units per second, or per index).
    pub trend_slope: f64,
    /// Trend value at x = 0.
    pub trend_intercept: f64,
    /// Coefficient of determination of the trend.
    pub trend_r_squared: f64,
    /// Positions of values with |z| above the threshold.
    pub anomalous: Vec<u64>,
}

fn check(request: &WindowRequest<'_>) -> Result<(), EngineError> {
    // Statistics of nothing have no value that could not be mistaken for
    // a measurement (a count of 0 beside a mean of 0): refuse instead.
    if request.values.is_empty() {
        return Err(EngineError::invalid(
            "values",
            "must hold at least one value",
        ));
    }
    if let Some(i) = request.values.iter().position(|v| !v.is_finite()) {
        return Err(EngineError::invalid(
            format!("values[{i}]"),
            format!("must be finite, got {}", request.values[i]),
        ));
    }
    if let Some(offsets) = request.offsets {
        if offsets.len() != request.values.len() {
            return Err(EngineError::invalid(
                "offsets_seconds",
                format!(
                    "has {} entries for {} values",
                    offsets.len(),
                    request.values.len()
                ),
            ));
        }
        if let Some(i) = offsets.iter().position(|v| !v.is_finite()) {
            return Err(EngineError::invalid(
                format!("offsets_seconds[{i}]"),
                "must be finite",
            ));
        }
    }
    if let Some(i) = request
        .quantiles
        .iter()
        .position(|q| !(0.0..=1.0).contains(q))
    {
        return Err(EngineError::invalid(
            format!("quantiles[{i}]"),
            format!("must be within [0, 1], got {}", request.quantiles[i]),
        ));
    }
    if !(request.ewma_alpha > 0.0 && request.ewma_alpha <= 1.0) {
        return Err(EngineError::invalid(
            "ewma_alpha",
            format!("must be within (0, 1], got {}", request.ewma_alpha),
        ));
    }
    if !(request.z_threshold > 0.0 && request.z_threshold.is_finite()) {
        return Err(EngineError::invalid(
            "z_threshold",
            format!("must be positive, got {}", request.z_threshold),
        ));
    }
    Ok(())
}

/// Sum, min and max with four independent accumulators (the compiler
/// vectorises the inner loop).
fn sum_min_max(values: &[f64]) -> (f64, f64, f64) {
    let mut sums = [0.0f64; 4];
    let mut mins = [f64::INFINITY; 4];
    let mut maxs = [f64::NEG_INFINITY; 4];
    let chunks = values.chunks_exact(4);
    let rest = chunks.remainder();
    for chunk in chunks {
        for k in 0..4 {
            sums[k] += chunk[k];
            mins[k] = mins[k].min(chunk[k]);
            maxs[k] = maxs[k].max(chunk[k]);
        }
    }
    for &v in rest {
        sums[0] += v;
        mins[0] = mins[0].min(v);
        maxs[0] = maxs[0].max(v);
    }
    (
        sums.iter().sum(),
        mins.iter().copied().fold(f64::INFINITY, f64::min),
        maxs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    )
}

/// Computes everything `request` asks for.
pub fn window_statistics(request: &WindowRequest<'_>) -> Result<WindowStatistics, EngineError> {
    check(request)?;
    let values = request.values;
    let n = values.len();
    let count = n as f64;
    let (sum, min, max) = sum_min_max(values);
    let mean = sum / count;

    // Second pass: squared deviations and the trend's cross products.
    let (mut syy, mut sxy) = ([0.0f64; 4], [0.0f64; 4]);
    let (mean_x, sxx) = match request.offsets {
        None => {
            let mean_x = (count - 1.0) / 2.0;
            for (i, &y) in values.iter().enumerate() {
                let dy = y - mean;
                syy[i % 4] += dy * dy;
                sxy[i % 4] += (i as f64 - mean_x) * dy;
            }
            (mean_x, count * (count * count - 1.0) / 12.0)
        }
        Some(offsets) => {
            let mean_x = sum_min_max(offsets).0 / count;
            let mut sxx = 0.0;
            for (i, (&x, &y)) in offsets.iter().zip(values).enumerate() {
                let (dx, dy) = (x - mean_x, y - mean);
                syy[i % 4] += dy * dy;
                sxy[i % 4] += dx * dy;
                sxx += dx * dx;
            }
            (mean_x, sxx)
        }
    };
    let (syy, sxy): (f64, f64) = (syy.iter().sum(), sxy.iter().sum());
    let variance = syy / count;
    let (slope, r_squared) = if sxx > 0.0 && syy > 0.0 {
        (sxy / sxx, (sxy * sxy / (sxx * syy)).clamp(0.0, 1.0))
    } else {
        (0.0, 0.0)
    };

    let deviation = variance.sqrt();
    let anomalous = if deviation > 0.0 {
        let limit = request.z_threshold * deviation;
        values
            .iter()
            .enumerate()
            .filter(|(_, v)| (**v - mean).abs() > limit)
            .map(|(i, _)| i as u64)
            .collect()
    } else {
        Vec::new()
    };

    let alpha = request.ewma_alpha;
    let ewma = values[1..]
        .iter()
        .fold(values[0], |s, &v| alpha * v + (1.0 - alpha) * s);

    let quantiles = if request.approximate {
        let mut sketch = Sketch::new(0.01);
        values.iter().for_each(|&v| sketch.add(v));
        request
            .quantiles
            .iter()
            .map(|&q| (q, sketch.quantile(q)))
            .collect()
    } else {
        exact_quantiles(values, request.quantiles)
    };

    Ok(WindowStatistics {
        count: n as u64,
        mean,
        variance,
        min,
        max,
        quantiles,
        ewma,
        trend_slope: slope,
        trend_intercept: mean - slope * mean_x,
        trend_r_squared: r_squared,
        anomalous,
    })
}

/// numpy's default ("linear") quantiles by selection: O(n) per quantile,
/// each one narrowing the slice for the next.
pub fn exact_quantiles(values: &[f64], quantiles: &[f64]) -> Vec<(f64, f64)> {
    let n = values.len();
    if n == 0 {
        return quantiles.iter().map(|&q| (q, 0.0)).collect();
    }
    let mut work = values.to_vec();
    let mut order: Vec<usize> = (0..quantiles.len()).collect();
    order.sort_by(|&a, &b| quantiles[a].total_cmp(&quantiles[b]));
    let mut out = vec![(0.0, 0.0); quantiles.len()];
    let mut from = 0;
    for i in order {
        let q = quantiles[i];
        let position = q * (n - 1) as f64;
        let low = position.floor() as usize;
        let (_, &mut at_low, right) =
            work[from..].select_nth_unstable_by(low - from, f64::total_cmp);
        let value = if low + 1 < n && position > low as f64 {
            let next = right.iter().copied().fold(f64::INFINITY, f64::min);
            at_low + (next - at_low) * (position - low as f64)
        } else {
            at_low
        };
        out[i] = (q, value);
        from = low;
    }
    out
}

/// A relative-error quantile sketch (DDSketch): every value lands in a
/// logarithmic bucket, so any quantile is within `accuracy` of a true value
/// of that rank, in memory that grows with the log of the value range, not
/// with the count.
#[derive(Debug, Clone)]
pub struct Sketch {
    gamma_ln: f64,
    gamma: f64,
    positive: BTreeMap<i32, u64>,
    negative: BTreeMap<i32, u64>,
    zeros: u64,
    count: u64,
}

/// Values closer to zero than this count as zero.
const SKETCH_MIN: f64 = 1e-9;

impl Sketch {
    /// A sketch with relative accuracy `accuracy` (e.g. 0.01).
    pub fn new(accuracy: f64) -> Self {
        let gamma = (1.0 + accuracy) / (1.0 - accuracy);
        Self {
            gamma_ln: gamma.ln(),
            gamma,
            positive: BTreeMap::new(),
            negative: BTreeMap::new(),
            zeros: 0,
            count: 0,
        }
    }

    fn bucket(&self, magnitude: f64) -> i32 {
        (magnitude.ln() / self.gamma_ln).ceil() as i32
    }

    /// Adds a finite value.
    pub fn add(&mut self, value: f64) {
        self.count += 1;
        if value.abs() < SKETCH_MIN {
            self.zeros += 1;
        } else if value > 0.0 {
            *self.positive.entry(self.bucket(value)).or_default() += 1;
        } else {
            *self.negative.entry(self.bucket(-value)).or_default() += 1;
        }
    }

    fn value_of(&self, bucket: i32) -> f64 {
        2.0 * self.gamma.powi(bucket) / (self.gamma + 1.0)
    }

    /// The `q` quantile (0 when empty).
    pub fn quantile(&self, q: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let rank = (q.clamp(0.0, 1.0) * (self.count - 1) as f64).round() as u64;
        let mut seen = 0u64;
        // Most negative first: negative buckets by descending magnitude.
        for (&bucket, &n) in self.negative.iter().rev() {
            seen += n;
            if seen > rank {
                return -self.value_of(bucket);
            }
        }
        seen += self.zeros;
        if seen > rank {
            return 0.0;
        }
        for (&bucket, &n) in &self.positive {
            seen += n;
            if seen > rank {
                return self.value_of(bucket);
            }
        }
        self.positive
            .keys()
            .next_back()
            .map_or(0.0, |&b| self.value_of(b))
    }
}
