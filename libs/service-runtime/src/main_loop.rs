//! What every app binary's `main` does: standard flags, config validated
//! before anything binds, telemetry, serve until a signal, drain, flush.

use std::{future::Future, pin::Pin, process::ExitCode};

use clap::Parser;

use crate::{BuildInfo, CommonConfig, ConfigError, EnvReader, Running, StartError, instance_id};

/// Exit code for configuration errors (sysexits' EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

/// The flags every app binary accepts.
#[derive(Debug, Clone, Parser)]
#[command(disable_version_flag = true)]
pub struct StandardArgs {
    /// Print version, git revision and build time, then exit.
    #[arg(short = 'V', long)]
    pub version: bool,
    /// Validate the configuration from the environment, then exit.
    #[arg(long)]
    pub check_config: bool,
}

/// The future an app's `start` returns: its listeners bound and serving.
pub type StartFuture = Pin<Box<dyn Future<Output = Result<Running, StartError>> + Send>>;

/// An app as its binary sees it: how to read its config and start it.
pub struct AppMain<C> {
    /// Name and build of the app.
    pub info: BuildInfo,
    /// Environment prefix, e.g. `"WORKER_"`.
    pub env_prefix: &'static str,
    /// Reads the app's config; problems are recorded in the reader.
    pub load_config: fn(&mut EnvReader) -> C,
    /// The runtime settings inside the app's config.
    pub common: fn(&C) -> &CommonConfig,
    /// Binds and starts serving.
    pub start: fn(C) -> StartFuture,
}

/// Reads `<prefix>*` variables into the app's config, or every problem.
pub fn load_config<C>(app: &AppMain<C>) -> Result<C, ConfigError> {
    load_config_from(app, std::env::vars())
}

/// Reads the app's config from the given variables (the launcher validates
/// each child's environment before starting any child).
pub fn load_config_from<C>(
    app: &AppMain<C>,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<C, ConfigError> {
    let mut env = EnvReader::from_vars(app.env_prefix, vars);
    let config = (app.load_config)(&mut env);
    env.finish().map(|()| config)
}

/// The whole life of an app binary; `main` is one call to this.
pub fn run_main<C: std::fmt::Debug + Send + 'static>(app: AppMain<C>) -> ExitCode {
    let args = StandardArgs::parse();
    run_with_args(app, &args)
}

/// [`run_main`] with already-parsed flags, for binaries that add their own
/// subcommands around the standard ones.
#[allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the binary's own output"
)]
pub fn run_with_args<C: std::fmt::Debug + Send + 'static>(
    app: AppMain<C>,
    args: &StandardArgs,
) -> ExitCode {
    if args.version {
        println!("{}", app.info);
        return ExitCode::SUCCESS;
    }
    let config = match load_config(&app) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{}: {error}", app.info.name);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.check_config {
        println!("{}: configuration is valid\n{config:#?}", app.info.name);
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{}: cannot start the async runtime: {error}", app.info.name);
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve_until_signal(app, config))
}

/// Telemetry for a one-shot command of an app's binary (an operator
/// command such as `gateway keys create`): the same log format, audit
/// stream and exporters as the server, flushed when dropped.
pub struct CommandTelemetry(Option<telemetry::Telemetry>);

impl Drop for CommandTelemetry {
    fn drop(&mut self) {
        if let Some(telemetry) = self.0.take() {
            telemetry.shutdown();
        }
    }
}

/// Sets up [`CommandTelemetry`] for `app` with its loaded `config`.
pub fn command_telemetry<C>(
    app: &AppMain<C>,
    config: &C,
) -> Result<CommandTelemetry, telemetry::TelemetryError> {
    telemetry::init(telemetry::TelemetryConfig {
        service_name: app.info.name,
        service_version: app.info.version,
        git_revision: app.info.git_revision,
        build_time: app.info.build_time,
        instance_id: instance_id().to_owned(),
        log_format: (app.common)(config).log_format,
    })
    .map(|t| CommandTelemetry(Some(t)))
}

#[allow(clippy::print_stderr, reason = "errors before logging is set up")]
async fn serve_until_signal<C: Send + 'static>(app: AppMain<C>, config: C) -> ExitCode {
    let name = app.info.name;
    let telemetry = match telemetry::init(telemetry::TelemetryConfig {
        service_name: name,
        service_version: app.info.version,
        git_revision: app.info.git_revision,
        build_time: app.info.build_time,
        instance_id: instance_id().to_owned(),
        log_format: (app.common)(&config).log_format,
    }) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("{name}: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // The first line of every log says which build is starting, before
    // anything can fail: an on-call person reading a crash loop sees it.
    tracing::info!(
        version = app.info.version,
        revision = app.info.git_revision,
        build_time = app.info.build_time,
        instance = instance_id(),
        "{name} starting"
    );
    let code = match (app.start)(config).await {
        Ok(running) => {
            tracing::info!(
                version = app.info.version,
                revision = app.info.git_revision,
                grpc = ?running.grpc_addr,
                http = ?running.http_addr,
                admin = %running.admin_addr,
                otlp = telemetry.is_exporting(),
                "{name} ready"
            );
            let outcome = tokio::select! {
                signal = shutdown_signal() => {
                    tracing::info!(signal, "shutting down");
                    ExitCode::SUCCESS
                }
                () = running.failed() => ExitCode::FAILURE,
            };
            running.shutdown().await;
            outcome
        }
        Err(error) => {
            tracing::error!(%error, "{name} failed to start");
            ExitCode::FAILURE
        }
    };
    // Exporters block while flushing; keep that off the async workers.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    code
}

/// Resolves on SIGTERM (orchestrators) or SIGINT (Ctrl-C), naming it.
pub async fn shutdown_signal() -> &'static str {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = terminate => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}
