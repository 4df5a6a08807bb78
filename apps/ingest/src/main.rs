//! The `ingest` binary: serves by default; `migrate` applies its migrations,
//! `health-check` asks the running server whether it is ready, `bench`
//! measures the pipeline on this machine, `publish` sends synthetic readings
//! to a running ingest.

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
    /// Apply the jobs engine's and ingest's migrations (and, with
    /// INGEST_MIGRATE_DATABASE_URL, grant the login's role), then exit.
    Migrate,
    /// Ask this app's admin port whether it is ready (`/readyz`), with the
    /// server's configuration: exit 0 when it is. The container image's
    /// health check (distroless images have no curl).
    HealthCheck,
    /// Publish synthetic readings to a running ingest (try the platform
    /// locally: `--spike` makes one window per device anomalous).
    Publish(ingest::demo::PublishArgs),
    /// Measure the stage kit, gRPC into PostgreSQL (against raw COPY), NATS
    /// JetStream into PostgreSQL and the SQLite store (against its previous
    /// statements).
    Bench(ingest::bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => service_runtime::run_with_args(ingest::app(), &cli.standard),
        Some(Command::HealthCheck) => service_runtime::run_health_check(&ingest::app()),
        Some(Command::Migrate) => report("migrate", migrate()),
        Some(Command::Bench(args)) => report("bench", ingest::bench::run(&args)),
        Some(Command::Publish(args)) => report(
            "publish",
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
                .and_then(|runtime| runtime.block_on(ingest::demo::publish(&args))),
        ),
    }
}

/// `ingest migrate` with the server's configuration.
fn migrate() -> Result<(), String> {
    let config = service_runtime::load_config(&ingest::app()).map_err(|e| e.to_string())?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(ingest::migrate(&config))
        .map_err(|e| e.to_string())
}

/// Exit status and message of a one-shot command.
fn report<E: std::fmt::Display>(command: &str, outcome: Result<(), E>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            #[allow(clippy::print_stderr, reason = "the binary's edge")]
            {
                eprintln!("ingest {command}: {error}");
            }
            ExitCode::FAILURE
        }
    }
}
