//! The `gateway` binary: serves by default; `migrate`, `tenants` and `keys`
//! act on the configured database and exit; `openapi` prints the document.

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let cli = gateway::cli::Cli::parse();
    match cli.command {
        None => service_runtime::run_with_args(gateway::app(), &cli.standard),
        Some(command) => gateway::cli::run(command),
    }
}
