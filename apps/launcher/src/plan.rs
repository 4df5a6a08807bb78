//! Which apps run, where they listen, and how a child runs one of them.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use service_runtime::{ConfigError, StandardArgs, load_config_from, run_with_args};

/// The apps the launcher knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AppName {
    /// The public HTTP API.
    Gateway,
    /// Readings intake.
    Ingest,
    /// Background jobs.
    Worker,
    /// Numerical computing.
    Numerics,
}

impl AppName {
    /// Start order: backends first, so the gateway finds them up.
    pub const ALL: [Self; 4] = [Self::Ingest, Self::Worker, Self::Numerics, Self::Gateway];

    /// The name used on the command line and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Ingest => "ingest",
            Self::Worker => "worker",
            Self::Numerics => "numerics",
        }
    }
}

/// Where one app will listen, read from its own validated config.
#[derive(Debug, Clone)]
pub struct AppPlan {
    /// Which app.
    pub name: AppName,
    /// Its public listener: gRPC for backends, HTTP for the gateway.
    pub serving: String,
    /// Its admin listener, probed for readiness.
    pub admin_addr: SocketAddr,
    /// How long it may take to drain at shutdown.
    pub shutdown_grace: Duration,
}

/// Validates every app's config (as each child will read it) and returns
/// where each listens, or every problem of every app.
pub fn plan(env: &[(String, String)]) -> Result<Vec<AppPlan>, Vec<(AppName, ConfigError)>> {
    let mut plans = Vec::new();
    let mut problems = Vec::new();
    for name in AppName::ALL {
        let planned = match name {
            AppName::Gateway => {
                load_config_from(&gateway::app(), env.iter().cloned()).map(|c| AppPlan {
                    name,
                    serving: format!(
                        "{}://{}",
                        if c.http.tls.is_some() {
                            "https"
                        } else {
                            "http"
                        },
                        c.http.addr
                    ),
                    admin_addr: c.common.admin_addr,
                    shutdown_grace: c.common.shutdown_grace,
                })
            }
            AppName::Ingest => {
                load_config_from(&ingest::app(), env.iter().cloned()).map(|c| AppPlan {
                    name,
                    serving: format!("grpc://{}", c.grpc_addr),
                    admin_addr: c.common.admin_addr,
                    shutdown_grace: c.common.shutdown_grace,
                })
            }
            AppName::Worker => {
                load_config_from(&worker::app(), env.iter().cloned()).map(|c| AppPlan {
                    name,
                    serving: format!("grpc://{}", c.grpc_addr),
                    admin_addr: c.common.admin_addr,
                    shutdown_grace: c.common.shutdown_grace,
                })
            }
            AppName::Numerics => {
                load_config_from(&numerics::app(), env.iter().cloned()).map(|c| AppPlan {
                    name,
                    serving: format!("grpc://{}", c.grpc_addr),
                    admin_addr: c.common.admin_addr,
                    shutdown_grace: c.common.shutdown_grace,
                })
            }
        };
        match planned {
            Ok(plan) => plans.push(plan),
            Err(error) => problems.push((name, error)),
        }
    }
    if problems.is_empty() {
        Ok(plans)
    } else {
        Err(problems)
    }
}

/// The environment every child gets: the launcher's own, plus the gateway
/// and the worker pointed at the backends' configured gRPC addresses unless
/// the operator set those URLs explicitly.
pub fn child_environment() -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    let get = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let mut derived = Vec::new();
    for (backend, url_var) in [
        ("INGEST_GRPC_ADDR", "GATEWAY_INGEST_URL"),
        ("WORKER_GRPC_ADDR", "GATEWAY_WORKER_URL"),
        ("NUMERICS_GRPC_ADDR", "GATEWAY_NUMERICS_URL"),
        ("INGEST_GRPC_ADDR", "WORKER_INGEST_URL"),
        ("NUMERICS_GRPC_ADDR", "WORKER_NUMERICS_URL"),
    ] {
        if get(url_var).is_none()
            && let Some(addr) = get(backend)
            && let Ok(addr) = addr.parse::<SocketAddr>()
        {
            let host = if addr.ip().is_unspecified() {
                "127.0.0.1".to_owned()
            } else {
                addr.ip().to_string()
            };
            derived.push((url_var.to_owned(), format!("http://{host}:{}", addr.port())));
        }
    }
    // Children write to a pipe the launcher relays; keep their colours
    // when the launcher itself writes to a terminal.
    {
        use std::io::IsTerminal as _;
        if std::io::stderr().is_terminal() && get("CLICOLOR_FORCE").is_none() {
            derived.push(("CLICOLOR_FORCE".to_owned(), "1".to_owned()));
        }
    }
    env.extend(derived);
    env
}

/// Runs one app in this process until SIGTERM, as a child of `platform up`.
pub fn serve(app: AppName) -> ExitCode {
    crate::supervisor::exit_with_parent();
    let args = StandardArgs {
        version: false,
        check_config: false,
    };
    match app {
        AppName::Gateway => run_with_args(gateway::app(), &args),
        AppName::Ingest => run_with_args(ingest::app(), &args),
        AppName::Worker => run_with_args(worker::app(), &args),
        AppName::Numerics => run_with_args(numerics::app(), &args),
    }
}
