//! The `numerics` binary: serves by default; `bench` measures the engine
//! and the service on this machine next to numpy, and exits.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use service_runtime::StandardArgs;

/// Command line of the `numerics` binary.
#[derive(Debug, Parser)]
#[command(
    name = "numerics",
    about = "Serves tensors, statistics, linear algebra and the anomaly model"
)]
struct Cli {
    /// `--version`, `--check-config`.
    #[command(flatten)]
    standard: StandardArgs,
    /// What to do instead of serving.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Ask this app's admin port whether it is ready (`/readyz`), with the
    /// server's configuration: exit 0 when it is. The container image's
    /// health check (distroless images have no curl).
    HealthCheck,
    /// Train the anomaly model on generated windows and write its weights
    /// (safetensors) with a version.
    Train(numerics::training::TrainArgs),
    /// Measure matmul, window statistics and gRPC overhead next to numpy.
    Bench(numerics::bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => service_runtime::run_with_args(numerics::app(), &cli.standard),
        Some(Command::HealthCheck) => service_runtime::run_health_check(&numerics::app()),
        Some(Command::Train(args)) => match numerics::training::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                #[allow(clippy::print_stderr, reason = "the binary's edge")]
                {
                    eprintln!("numerics train: {error}");
                }
                ExitCode::FAILURE
            }
        },
        Some(Command::Bench(args)) => match numerics::bench::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                #[allow(clippy::print_stderr, reason = "the binary's edge")]
                {
                    eprintln!("numerics bench: {error}");
                }
                ExitCode::FAILURE
            }
        },
    }
}
