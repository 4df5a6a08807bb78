//! The `worker` binary: serves by default; `migrate`, `enqueue`, `stats`
//! and `bench` act on the configured database and exit.

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let cli = worker::cli::Cli::parse();
    match cli.command {
        None => service_runtime::run_with_args(worker::app(), &cli.standard),
        Some(command) => worker::cli::run(command),
    }
}
