//! `numerics train`: trains the anomaly model (engine's `train`) and writes
//! its weights with a version, ready for `NUMERICS_MODEL_PATH` or
//! `ReloadModel`.

use std::path::PathBuf;

use clap::Args;
use numerics_engine::train::{TrainConfig, train};

/// How to train and where to write.
#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// Where to write the weights.
    #[arg(long, default_value = "apps/numerics/model/anomaly.safetensors")]
    pub out: PathBuf,
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
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    std::fs::write(&args.out, &bytes).map_err(|e| format!("{}: {e}", args.out.display()))?;
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
        args.out.display(),
        bytes.len()
    );
    Ok(())
}
