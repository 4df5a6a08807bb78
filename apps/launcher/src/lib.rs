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
}

/// Entry point of the `platform` binary.
pub fn main() -> ExitCode {
    match Cli::parse().command.unwrap_or(Command::Up) {
        Command::Up => supervisor::up(),
        Command::Serve { app } => plan::serve(app),
    }
}
