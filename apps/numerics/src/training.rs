//! `numerics train`: trains the anomaly model (engine's `train`) and writes
//! its weights with a version into the model folder (`NUMERICS_MODEL_DIR`,
//! the only place the service loads weights from), ready for
//! `NUMERICS_MODEL_PATH` or `ReloadModel` by file name. Updating the
//! weights compiled into the binary is `--out apps/numerics/model/anomaly.safetensors`.

use std::path::PathBuf;

use clap::Args;
use numerics_engine::train::{TrainConfig, train};

/// How to train and where to write.
#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// Where to write the weights (default: `<version>.safetensors` in
    /// `NUMERICS_MODEL_DIR`, or `data/models` when it is unset).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Version recorded in the weights' metadata.
    #[arg(long, default_value = "mlp-8-16-1-v1")]
    pub version: String,
    /// Generated windows.
    #[arg(long, default_value_t = 5_000)]
    pub samples: usize,
    /// Epochs.
    #[arg(long, default_value_t = 60)]
    pub epochs: usize,
    /// Seed (same seed, same weights).
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

/// Trains, prints the loss and held-out accuracy, writes the file.
#[allow(clippy::print_stdout, reason = "the command's report")]
pub fn run(args: &TrainArgs) -> Result<(), String> {
    let started = std::time::Instant::now();
    let report = train(
        &TrainConfig {
            samples: args.samples,
            epochs: args.epochs,
            seed: args.seed,
            ..TrainConfig::default()
        },
        &args.version,
    );
    let bytes = report.model.to_weights().to_bytes();
    let out = args.out.clone().unwrap_or_else(|| {
        let dir = std::env::var_os("NUMERICS_MODEL_DIR")
            .filter(|d| !d.is_empty())
            .map_or_else(
                || PathBuf::from(crate::model_dir::DEFAULT_MODEL_DIR),
                PathBuf::from,
            );
        dir.join(format!("{}.safetensors", args.version))
    });
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    std::fs::write(&out, &bytes).map_err(|e| format!("{}: {e}", out.display()))?;
    println!(
        "trained {} on {} generated windows ({} epochs) in {:.1} s: loss {:.3} -> {:.3}, \
         held-out accuracy {:.1}%; wrote {} ({} bytes)",
        args.version,
        args.samples,
        args.epochs,
        started.elapsed().as_secs_f64(),
        report.loss.0,
        report.loss.1,
        100.0 * report.held_out_accuracy,
        out.display(),
        bytes.len()
    );
    Ok(())
}
