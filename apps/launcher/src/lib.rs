//! The local launcher: one command that runs all four apps with embedded
//! defaults, each as a supervised child process (a crash of one restarts it
//! with backoff and leaves the others serving), and stops them all cleanly
//! on Ctrl-C or SIGTERM.
//!
//! The launcher is one binary holding all four apps; `platform serve NAME`
//! re-executes it as that app, so one `cargo run` builds everything.
//!
//! Architecture invariant: this is the only crate allowed to depend on app
//! crates. It composes them and knows their configs, never their domains.

mod plan;
mod probe;
mod supervisor;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Command-line interface of the `platform` binary.
#[derive(Debug, Parser)]
#[command(name = "platform", about = "Runs the platform's four apps locally")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start every app, supervise them, stop them on Ctrl-C (the default).
    Up,
    /// Run one app in this process (what `up` starts in each child).
    Serve {
        /// gateway, ingest, worker or numerics.
        app: plan::AppName,
    },
    /// Write a development PKI: a CA, a certificate and key per app and
    /// one for an operator, for mutual TLS on this machine only.
    Certs {
        /// Where to write them.
        #[arg(long, default_value = "data/certs")]
        dir: std::path::PathBuf,
    },
}

/// Who gets a development certificate: the four apps and an operator.
pub const CERTIFIED: [&str; 5] = ["gateway", "ingest", "worker", "numerics", "operator"];

/// `platform certs`: writes the development PKI and says where.
#[allow(clippy::print_stdout, reason = "the command's report")]
fn certs(dir: &std::path::Path) -> ExitCode {
    match security::tls::dev_pki::generate(dir, &CERTIFIED) {
        Ok(()) => {
            println!(
                "wrote {}/ca.pem and a certificate and key for each of {} (valid 90 days, development only)",
                dir.display(),
                CERTIFIED.join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("platform certs: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Entry point of the `platform` binary.
pub fn main() -> ExitCode {
    match Cli::parse().command.unwrap_or(Command::Up) {
        Command::Up => supervisor::up(),
        Command::Serve { app } => plan::serve(app),
        Command::Certs { dir } => certs(&dir),
    }
}
