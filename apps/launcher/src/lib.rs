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

mod dev_tenant;
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
        #[arg(long, default_value = service_runtime::DEFAULT_CERT_DIR)]
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

/// Writes the development PKI to `data/certs` when the apps will use the
/// default certificate folder and any file there is missing, so `platform`
/// on a fresh clone runs mutual TLS with nothing to set up. Nothing is
/// written in production, nor for an app given its own `TLS_DIR`,
/// certificate files or plaintext. Returns the folder when it wrote one.
pub fn ensure_development_certs(
    env: &[(String, String)],
) -> Result<Option<std::path::PathBuf>, security::tls::TlsError> {
    let set = |name: &str| env.iter().any(|(k, v)| k == name && !v.trim().is_empty());
    let production = env
        .iter()
        .any(|(k, v)| k == "PLATFORM_ENV" && v.trim() == "production")
        || (set("KUBERNETES_SERVICE_HOST") && !set("PLATFORM_ENV"));
    let dir = std::path::Path::new(service_runtime::DEFAULT_CERT_DIR);
    let defaults_used = plan::AppName::ALL.iter().any(|app| {
        let prefix = app.as_str().to_ascii_uppercase();
        !["GRPC_PLAINTEXT", "TLS_DIR", "TLS_CERT", "TLS_KEY", "TLS_CA"]
            .iter()
            .any(|setting| set(&format!("{prefix}_{setting}")))
    });
    let missing = std::iter::once("ca.pem".to_owned())
        .chain(
            CERTIFIED
                .iter()
                .flat_map(|name| [format!("{name}.pem"), format!("{name}.key")]),
        )
        .any(|file| !dir.join(file).is_file());
    if production || !defaults_used || !missing {
        return Ok(None);
    }
    security::tls::dev_pki::generate(dir, &CERTIFIED)?;
    Ok(Some(dir.to_path_buf()))
}

/// Entry point of the `platform` binary.
pub fn main() -> ExitCode {
    match Cli::parse().command.unwrap_or(Command::Up) {
        Command::Up => supervisor::up(),
        Command::Serve { app } => plan::serve(app),
        Command::Certs { dir } => certs(&dir),
    }
}
