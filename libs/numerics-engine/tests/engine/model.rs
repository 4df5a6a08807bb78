//! The tape's gradients against finite differences, the weights file, and
//! training that actually learns.

use numerics_engine::{
    autodiff::{Matrix, Tape},
    model::{AnomalyModel, FEATURES, features},
    train::{TrainConfig, train},
    weights::Weights,
};
use proptest::prelude::*;

/// loss(relu(x @ w + b) @ v, targets) for the given parameters.
fn loss(x: &Matrix, params: &[Matrix; 3], targets: &[f32]) -> (f32, Vec<Vec<f32>>) {
    let mut tape = Tape::default();
    let x = tape.leaf(x.clone());
    let vars: Vec<_> = params.iter().map(|p| tape.leaf(p.clone())).collect();
    let h = tape.matmul(x, vars[0]);
    let h = tape.add_row(h, vars[1]);
    let h = tape.relu(h);
    let z = tape.matmul(h, vars[2]);
    let l = tape.bce_with_logits(z, targets.to_vec());
    tape.backward(l);
    (
        tape.value(l).values[0],
        vars.iter().map(|v| tape.grad(*v).values.clone()).collect(),
    )
}

proptest! {
    #[test]
    fn gradients_match_finite_differences(seed in 0u64..200) {
        let value = |i: u64| (((i * 2654435761 + seed * 97) % 1000) as f32 / 500.0) - 1.0;
        let x = Matrix { rows: 4, cols: 3, values: (0..12).map(value).collect() };
        let params = [
            Matrix { rows: 3, cols: 5, values: (20..35).map(value).collect() },
            Matrix { rows: 1, cols: 5, values: (40..45).map(value).collect() },
            Matrix { rows: 5, cols: 1, values: (50..55).map(value).collect() },
        ];
        let targets = [1.0, 0.0, 1.0, 0.0];
        let (_, grads) = loss(&x, &params, &targets);
        let h = 1e-3f32;
        for (p, grad) in grads.iter().enumerate() {
            for (i, &analytic) in grad.iter().enumerate() {
                let mut up = params.clone();
                up[p].values[i] += h;
                let mut down = params.clone();
                down[p].values[i] -= h;
                let numeric = (loss(&x, &up, &targets).0 - loss(&x, &down, &targets).0) / (2.0 * h);
                // ReLU kinks make single points non-differentiable; allow slack.
                prop_assert!((numeric - analytic).abs() < 2e-2, "param {p}[{i}]: {numeric} vs {analytic}");
            }
        }
    }
}

#[test]
fn training_learns_to_tell_anomalous_windows_and_the_weights_round_trip() {
    let report = train(
        &TrainConfig {
            samples: 2_000,
            epochs: 40,
            ..TrainConfig::default()
        },
        "test-1",
    );
    assert!(
        report.loss.1 < report.loss.0 * 0.6,
        "loss {:?}",
        report.loss
    );
    assert!(
        report.held_out_accuracy >= 0.9,
        "held-out accuracy {}",
        report.held_out_accuracy
    );

    let bytes = report.model.to_weights().to_bytes();
    let back = AnomalyModel::from_weights(&Weights::from_bytes(&bytes).unwrap()).unwrap();
    assert_eq!(back, report.model);
    assert_eq!(back.version(), "test-1");

    let spiky: Vec<f64> = (0..60)
        .map(|i| {
            if i == 30 {
                60.0
            } else {
                20.0 + (i % 3) as f64 * 0.2
            }
        })
        .collect();
    let steady: Vec<f64> = (0..60).map(|i| 20.0 + ((i * 7) % 5) as f64 * 0.2).collect();
    let rows: Vec<f32> = [features(&spiky).unwrap(), features(&steady).unwrap()].concat();
    let scores = back.forward(&rows, 2).unwrap();
    assert!(scores[0] > 0.5 && scores[1] < 0.5, "{scores:?}");
}

#[test]
fn bad_weight_files_and_inputs_are_named() {
    assert!(
        Weights::from_bytes(b"short")
            .unwrap_err()
            .to_string()
            .contains("8-byte")
    );
    let mut bytes = train(
        &TrainConfig {
            samples: 200,
            epochs: 1,
            ..TrainConfig::default()
        },
        "v",
    )
    .model
    .to_weights()
    .to_bytes();
    bytes.truncate(bytes.len() - 4);
    let error = Weights::from_bytes(&bytes).unwrap_err().to_string();
    assert!(error.contains("do not hold shape"), "{error}");
    let mut weights = Weights::default();
    weights.metadata.insert("version".into(), "v".into());
    assert_eq!(
        AnomalyModel::from_weights(&weights)
            .unwrap_err()
            .to_string(),
        "weights: layer1.bias is missing or empty"
    );
    let model = train(
        &TrainConfig {
            samples: 200,
            epochs: 1,
            ..TrainConfig::default()
        },
        "v",
    )
    .model;
    assert!(
        model
            .forward(&[0.0; FEATURES + 1], 1)
            .unwrap_err()
            .to_string()
            .contains("for 1 rows of 8")
    );
}
