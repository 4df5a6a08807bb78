//! Training the anomaly scorer on generated windows, with the tape's
//! automatic differentiation and Adam. Windows are steady noise around a
//! random level and scale; anomalous ones carry a spike, a level shift or
//! a drift of a few standard deviations. Deterministic for a given seed.

use crate::{
    autodiff::{Matrix, Tape},
    model::{AnomalyModel, FEATURES, HIDDEN, features},
};

/// How to train.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainConfig {
    /// Generated windows (a fifth held out for evaluation).
    pub samples: usize,
    /// Passes over the training windows.
    pub epochs: usize,
    /// Windows per gradient step.
    pub batch: usize,
    /// Adam's step size.
    pub learning_rate: f32,
    /// Seed of the generator and the initial weights.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            samples: 5_000,
            epochs: 60,
            batch: 128,
            learning_rate: 0.01,
            seed: 7,
        }
    }
}

/// What training produced.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainReport {
    /// The model.
    pub model: AnomalyModel,
    /// Mean loss of the first and the last epoch.
    pub loss: (f32, f32),
    /// Accuracy on the held-out windows at a 0.5 threshold.
    pub held_out_accuracy: f32,
}

/// xorshift64*: small, deterministic, good enough for synthetic data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn range(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.next()
    }

    /// A standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u = self.next().max(1e-12);
        let v = self.next();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// One generated window and whether it is anomalous.
fn window(rng: &mut Rng) -> (Vec<f64>, bool) {
    let n = rng.range(30.0, 120.0) as usize;
    let level = rng.range(-50.0, 100.0);
    let scale = rng.range(0.1, 5.0);
    let mut values: Vec<f64> = (0..n).map(|_| level + scale * rng.normal()).collect();
    let anomalous = rng.next() < 0.4;
    if anomalous {
        match (rng.next() * 3.0) as u32 {
            0 => {
                let at = (rng.next() * n as f64) as usize % n;
                let sign = if rng.next() < 0.5 { -1.0 } else { 1.0 };
                values[at] += sign * scale * rng.range(6.0, 15.0);
            }
            1 => {
                let from = n / 2 + (rng.next() * (n / 4) as f64) as usize;
                let shift = scale * rng.range(3.0, 8.0);
                values[from..].iter_mut().for_each(|v| *v += shift);
            }
            _ => {
                let total = scale * rng.range(4.0, 10.0);
                for (i, v) in values.iter_mut().enumerate() {
                    *v += total * i as f64 / n as f64;
                }
            }
        }
    } else if rng.next() < 0.3 {
        // Harmless: a gentle slope well inside the noise.
        let total = scale * rng.range(0.0, 1.0);
        for (i, v) in values.iter_mut().enumerate() {
            *v += total * i as f64 / n as f64;
        }
    }
    (values, anomalous)
}

/// `samples` feature vectors and labels.
pub fn generate(samples: usize, seed: u64) -> (Vec<[f32; FEATURES]>, Vec<f32>) {
    let mut rng = Rng(seed.max(1));
    let mut xs = Vec::with_capacity(samples);
    let mut ys = Vec::with_capacity(samples);
    while xs.len() < samples {
        let (values, anomalous) = window(&mut rng);
        if let Ok(f) = features(&values) {
            xs.push(f);
            ys.push(if anomalous { 1.0 } else { 0.0 });
        }
    }
    (xs, ys)
}

/// Adam's moment estimates for one parameter.
struct Adam {
    m: Vec<f32>,
    v: Vec<f32>,
}

impl Adam {
    fn new(n: usize) -> Self {
        Self {
            m: vec![0.0; n],
            v: vec![0.0; n],
        }
    }

    fn step(&mut self, param: &mut [f32], grad: &[f32], rate: f32, t: i32) {
        let (b1, b2) = (0.9f32, 0.999f32);
        for i in 0..param.len() {
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * grad[i];
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * grad[i] * grad[i];
            let m = self.m[i] / (1.0 - b1.powi(t));
            let v = self.v[i] / (1.0 - b2.powi(t));
            param[i] -= rate * m / (v.sqrt() + 1e-8);
        }
    }
}

/// Trains a model named `version`.
pub fn train(config: &TrainConfig, version: &str) -> TrainReport {
    let (xs, ys) = generate(config.samples, config.seed);
    let split = xs.len() * 4 / 5;
    let mut rng = Rng(config.seed.wrapping_mul(31).max(1));
    let mut init = |n: usize, fan_in: usize| -> Vec<f32> {
        let scale = (2.0 / fan_in as f64).sqrt();
        (0..n).map(|_| (rng.normal() * scale) as f32).collect()
    };
    let mut params = [
        init(FEATURES * HIDDEN, FEATURES),
        vec![0.0; HIDDEN],
        init(HIDDEN, HIDDEN),
        vec![0.0],
    ];
    let shapes = [(FEATURES, HIDDEN), (1, HIDDEN), (HIDDEN, 1), (1, 1)];
    let mut adam: Vec<Adam> = params.iter().map(|p| Adam::new(p.len())).collect();
    let mut step = 0;
    let mut losses = Vec::with_capacity(config.epochs);
    for _ in 0..config.epochs {
        let mut total = 0.0;
        let mut batches = 0;
        for start in (0..split).step_by(config.batch.max(1)) {
            let end = (start + config.batch).min(split);
            let mut tape = Tape::default();
            let x = tape.leaf(Matrix {
                rows: end - start,
                cols: FEATURES,
                values: xs[start..end].iter().flatten().copied().collect(),
            });
            let vars: Vec<_> = params
                .iter()
                .zip(shapes)
                .map(|(p, (rows, cols))| {
                    tape.leaf(Matrix {
                        rows,
                        cols,
                        values: p.clone(),
                    })
                })
                .collect();
            let h = tape.matmul(x, vars[0]);
            let h = tape.add_row(h, vars[1]);
            let h = tape.relu(h);
            let z = tape.matmul(h, vars[2]);
            let z = tape.add_row(z, vars[3]);
            let loss = tape.bce_with_logits(z, ys[start..end].to_vec());
            tape.backward(loss);
            step += 1;
            for ((param, var), optimiser) in params.iter_mut().zip(&vars).zip(&mut adam) {
                optimiser.step(param, &tape.grad(*var).values, config.learning_rate, step);
            }
            total += tape.value(loss).values[0];
            batches += 1;
        }
        losses.push(total / batches.max(1) as f32);
    }
    let [w1, b1, w2, b2] = params;
    let model = AnomalyModel::new(w1, b1, w2, b2[0], version.to_owned());
    let held_out: Vec<f32> = xs[split..].iter().flatten().copied().collect();
    let scores = model
        .forward(&held_out, xs.len() - split)
        .unwrap_or_default();
    let correct = scores
        .iter()
        .zip(&ys[split..])
        .filter(|(s, y)| (**s >= 0.5) == (**y >= 0.5))
        .count();
    TrainReport {
        model,
        loss: (
            losses.first().copied().unwrap_or(0.0),
            losses.last().copied().unwrap_or(0.0),
        ),
        held_out_accuracy: correct as f32 / (xs.len() - split).max(1) as f32,
    }
}
