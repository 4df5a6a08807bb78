//! The `ingest` binary: serves by default; `bench` measures the pipeline on
//! this machine and exits.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use service_runtime::StandardArgs;

/// Command line of the `ingest` binary.
#[derive(Debug, Parser)]
#[command(
    name = "ingest",
    about = "Accepts sensor readings over gRPC and NATS JetStream and stores them"
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
    /// Measure the stage kit, gRPC into PostgreSQL (against raw COPY) and
    /// NATS JetStream into PostgreSQL.
    Bench(ingest::bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => service_runtime::run_with_args(ingest::app(), &cli.standard),
        Some(Command::Bench(args)) => match ingest::bench::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                #[allow(clippy::print_stderr, reason = "the binary's edge")]
                {
                    eprintln!("ingest bench: {error}");
                }
                ExitCode::FAILURE
            }
        },
    }
}
