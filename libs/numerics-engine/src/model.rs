//! The anomaly scorer: a small neural network over a window's feature
//! vector (8 features -> 16 ReLU units -> 1 sigmoid). The forward pass is
//! fused per row: hidden layer, bias, ReLU, output dot product and sigmoid
//! in one pass, nothing materialised per batch (at this size a general
//! matmul call costs more than the arithmetic).

use crate::{
    EngineError,
    stats::{WindowRequest, WindowStatistics, window_statistics},
    weights::Weights,
};

/// Features per window.
pub const FEATURES: usize = 8;
/// Hidden units of the shipped architecture.
pub const HIDDEN: usize = 16;
/// The quantiles [`features_from`] needs, in this order.
pub const FEATURE_QUANTILES: [f64; 2] = [0.5, 0.99];

/// A window's features, from its statistics (computed with
/// [`FEATURE_QUANTILES`]): how far the extremes and the upper tail sit from
/// the mean in standard deviations, how much of the window a straight line
/// explains and how far it moves, the share of flagged values, skew of the
/// median, and the window's size. Scale-free, so one model serves every
/// metric. Each is clamped to [-20, 20].
pub fn features_from(s: &WindowStatistics) -> [f32; FEATURES] {
    let deviation = s.variance.sqrt();
    let count = s.count as f64;
    let size = (count.ln_1p() / 5.0) as f32;
    if s.count < 3 || deviation <= f64::EPSILON * s.mean.abs().max(1.0) {
        return [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, size];
    }
    let quantile = |q: f64| {
        s.quantiles
            .iter()
            .find(|(x, _)| *x == q)
            .map_or(s.mean, |(_, v)| *v)
    };
    let (p50, p99) = (quantile(0.5), quantile(0.99));
    let z = |x: f64| (x / deviation).clamp(-20.0, 20.0) as f32;
    [
        z(s.max - s.mean),
        z(s.mean - s.min),
        s.trend_r_squared as f32,
        // The trend's total move across the window (x is the index).
        z((s.trend_slope * count).abs()),
        z(p99 - p50),
        z(p50 - s.mean),
        (s.anomalous.len() as f64 / count * 10.0) as f32,
        size,
    ]
}

/// Features of evenly spaced `values`.
pub fn features(values: &[f64]) -> Result<[f32; FEATURES], EngineError> {
    let stats = window_statistics(&WindowRequest {
        values,
        offsets: None,
        quantiles: &FEATURE_QUANTILES,
        ewma_alpha: 0.3,
        z_threshold: 3.0,
        approximate: false,
    })?;
    Ok(features_from(&stats))
}

/// A loaded model.
#[derive(Debug, Clone, PartialEq)]
pub struct AnomalyModel {
    /// [FEATURES, hidden], row-major.
    pub(crate) w1: Vec<f32>,
    /// [hidden].
    pub(crate) b1: Vec<f32>,
    /// [hidden].
    pub(crate) w2: Vec<f32>,
    pub(crate) b2: f32,
    pub(crate) hidden: usize,
    version: String,
}

fn tensor<'a>(weights: &'a Weights, name: &str, shape: &[usize]) -> Result<&'a [f32], EngineError> {
    let (found, values) = weights
        .tensors
        .get(name)
        .ok_or_else(|| EngineError::invalid("weights", format!("{name} is missing")))?;
    if found != shape {
        return Err(EngineError::invalid(
            "weights",
            format!("{name} has shape {found:?}, expected {shape:?}"),
        ));
    }
    if values.iter().any(|v| !v.is_finite()) {
        return Err(EngineError::invalid(
            "weights",
            format!("{name} holds a non-finite value"),
        ));
    }
    Ok(values)
}

impl AnomalyModel {
    /// A model from its parts (training builds it this way).
    pub(crate) fn new(w1: Vec<f32>, b1: Vec<f32>, w2: Vec<f32>, b2: f32, version: String) -> Self {
        let hidden = b1.len();
        Self {
            w1,
            b1,
            w2,
            b2,
            hidden,
            version,
        }
    }

    /// Reads `layer1.weight` [8, h], `layer1.bias` [h], `layer2.weight`
    /// [h, 1], `layer2.bias` [1] and the `version` metadata.
    pub fn from_weights(weights: &Weights) -> Result<Self, EngineError> {
        let hidden = weights
            .tensors
            .get("layer1.bias")
            .map(|(shape, _)| shape.first().copied().unwrap_or(0))
            .filter(|&h| h > 0)
            .ok_or_else(|| EngineError::invalid("weights", "layer1.bias is missing or empty"))?;
        let version = weights
            .metadata
            .get("version")
            .filter(|v| !v.is_empty())
            .ok_or_else(|| EngineError::invalid("weights", "metadata has no version"))?;
        Ok(Self::new(
            tensor(weights, "layer1.weight", &[FEATURES, hidden])?.to_vec(),
            tensor(weights, "layer1.bias", &[hidden])?.to_vec(),
            tensor(weights, "layer2.weight", &[hidden, 1])?.to_vec(),
            tensor(weights, "layer2.bias", &[1])?[0],
            version.clone(),
        ))
    }

    /// The weights file for this model.
    pub fn to_weights(&self) -> Weights {
        let mut weights = Weights::default();
        let h = self.hidden;
        weights
            .tensors
            .insert("layer1.weight".into(), (vec![FEATURES, h], self.w1.clone()));
        weights
            .tensors
            .insert("layer1.bias".into(), (vec![h], self.b1.clone()));
        weights
            .tensors
            .insert("layer2.weight".into(), (vec![h, 1], self.w2.clone()));
        weights
            .tensors
            .insert("layer2.bias".into(), (vec![1], vec![self.b2]));
        weights
            .metadata
            .insert("version".into(), self.version.clone());
        weights.metadata.insert(
            "architecture".into(),
            format!("mlp {FEATURES}-{h}-1 relu sigmoid"),
        );
        weights
    }

    /// The model's version (from its weights' metadata).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Floating-point operations of one row's forward pass.
    pub fn flops_per_row(&self) -> u64 {
        (2 * FEATURES * self.hidden + 4 * self.hidden + 4) as u64
    }

    /// Features per row.
    pub fn input_width(&self) -> usize {
        FEATURES
    }

    /// Scores `rows` feature vectors laid out row-major in `x`, one score in
    /// [0, 1] per row.
    pub fn forward(&self, x: &[f32], rows: usize) -> Result<Vec<f32>, EngineError> {
        if x.len() != rows * FEATURES {
            return Err(EngineError::invalid(
                "features",
                format!("{} values for {rows} rows of {FEATURES}", x.len()),
            ));
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(EngineError::invalid(
                "features",
                format!("element {i} is not finite"),
            ));
        }
        let h = self.hidden;
        // Fully fused per row: the hidden layer accumulates row by row of
        // w1 (a contiguous, vectorisable inner loop over the hidden units),
        // then bias, ReLU, the output dot product and the sigmoid, without
        // materialising the hidden activations of the batch.
        if h == HIDDEN {
            return Ok(self.forward_fixed(x));
        }
        let mut hidden = vec![0.0f32; h];
        Ok(x.chunks_exact(FEATURES)
            .map(|row| {
                hidden.copy_from_slice(&self.b1);
                for (k, &value) in row.iter().enumerate() {
                    for (acc, &w) in hidden.iter_mut().zip(&self.w1[k * h..(k + 1) * h]) {
                        *acc += value * w;
                    }
                }
                let logit = hidden
                    .iter()
                    .zip(&self.w2)
                    .fold(self.b2, |acc, (&v, &w)| acc + v.max(0.0) * w);
                1.0 / (1.0 + (-logit).exp())
            })
            .collect())
    }

    /// The shipped shape with sizes known at compile time: the weights sit
    /// in fixed arrays, every loop unrolls and vectorises, and the code is
    /// compiled per instruction set and picked at run time (AVX2/FMA where
    /// the CPU has them).
    fn forward_fixed(&self, x: &[f32]) -> Vec<f32> {
        self.forward_fixed_on(pulp::Arch::new(), x)
    }

    /// [`Self::forward_fixed`] compiled for `arch`: tests force every
    /// instruction set the CPU has, so each compiled copy is checked.
    fn forward_fixed_on(&self, arch: pulp::Arch, x: &[f32]) -> Vec<f32> {
        let mut w1 = [[0.0f32; HIDDEN]; FEATURES];
        for (k, row) in w1.iter_mut().enumerate() {
            row.copy_from_slice(&self.w1[k * HIDDEN..(k + 1) * HIDDEN]);
        }
        let mut b1 = [0.0f32; HIDDEN];
        b1.copy_from_slice(&self.b1);
        let mut w2 = [0.0f32; HIDDEN];
        w2.copy_from_slice(&self.w2);
        let b2 = self.b2;
        arch.dispatch(move || {
            let mut out = Vec::with_capacity(x.len() / FEATURES);
            for row in x.chunks_exact(FEATURES) {
                let mut hidden = b1;
                for k in 0..FEATURES {
                    let value = row[k];
                    for j in 0..HIDDEN {
                        hidden[j] += value * w1[k][j];
                    }
                }
                let mut logit = [0.0f32; HIDDEN];
                for j in 0..HIDDEN {
                    logit[j] = hidden[j].max(0.0) * w2[j];
                }
                // A tree sum: no chain of dependent additions.
                let mut width = HIDDEN / 2;
                while width > 0 {
                    for j in 0..width {
                        logit[j] += logit[j + width];
                    }
                    width /= 2;
                }
                out.push(logit[0] + b2);
            }
            // The sigmoids in a second pass, with an exp that vectorises.
            for z in &mut out {
                *z = 1.0 / (1.0 + exp(-*z));
            }
            out
        })
    }
}

/// e^x for f32 without a library call, so a loop of them vectorises:
/// x = n ln 2 + r with |r| <= ln 2 / 2, e^r by its degree-6 Taylor
/// polynomial (relative error below 3e-7), 2^n built in the exponent bits.
fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E).round();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::{AnomalyModel, FEATURES, HIDDEN};

    /// The model in f64 with the library's exp: what every compiled copy
    /// of the fixed-shape kernel must agree with.
    fn reference(model: &AnomalyModel, x: &[f32]) -> Vec<f64> {
        x.chunks_exact(FEATURES)
            .map(|row| {
                let logit = (0..HIDDEN).fold(f64::from(model.b2), |acc, j| {
                    let hidden = (0..FEATURES).fold(f64::from(model.b1[j]), |h, k| {
                        h + f64::from(row[k]) * f64::from(model.w1[k * HIDDEN + j])
                    });
                    acc + hidden.max(0.0) * f64::from(model.w2[j])
                });
                1.0 / (1.0 + (-logit).exp())
            })
            .collect()
    }

    /// Every instruction set this build can dispatch to and this CPU runs:
    /// scalar always, AVX2/FMA (x86-64-v3) where present. Named so a
    /// failure says which copy was wrong.
    fn instruction_sets() -> Vec<(&'static str, pulp::Arch)> {
        let mut sets = vec![("scalar", pulp::Arch::Scalar)];
        #[cfg(target_arch = "x86_64")]
        if let Some(v3) = pulp::x86::V3::try_new() {
            sets.push(("x86-64-v3 (AVX2, FMA)", pulp::Arch::V3(v3)));
        }
        sets
    }

    #[test]
    fn every_compiled_copy_of_the_fixed_kernel_agrees_with_the_reference() {
        // Deterministic weights and inputs of mixed sign and scale, so some
        // hidden units are cut by the ReLU and scores span (0, 1).
        let wave = |i: usize, scale: f32| ((i as f32 * 0.618_034).fract() - 0.5) * scale;
        let model = AnomalyModel::new(
            (0..FEATURES * HIDDEN).map(|i| wave(i, 1.5)).collect(),
            (0..HIDDEN).map(|i| wave(i + 7, 0.4)).collect(),
            (0..HIDDEN).map(|i| wave(i + 11, 2.0)).collect(),
            0.1,
            "test".to_owned(),
        );
        let rows = 257; // not a multiple of any vector width
        let x: Vec<f32> = (0..rows * FEATURES).map(|i| wave(i + 3, 8.0)).collect();
        let expected = reference(&model, &x);
        let sets = instruction_sets();
        for (name, arch) in &sets {
            let got = model.forward_fixed_on(*arch, &x);
            assert_eq!(got.len(), rows, "{name}: one score per row");
            for (row, (&g, &e)) in got.iter().zip(&expected).enumerate() {
                assert!(
                    (f64::from(g) - e).abs() <= 1e-5,
                    "{name}, row {row}: {g} against the reference {e}"
                );
            }
        }
        // Say which copies this machine could check, in the test output.
        let names: Vec<&str> = sets.iter().map(|(name, _)| *name).collect();
        eprintln!("fixed kernel checked on: {}", names.join(", "));
    }

    #[test]
    fn the_fast_exp_is_within_a_few_ulps_of_the_library_one() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (fast, exact) = (super::exp(x), x.exp());
            assert!(
                (fast - exact).abs() <= 3e-7 * exact,
                "exp({x}): {fast} vs {exact}"
            );
            x += 0.01;
        }
    }
}
