//! The start-up, serving and shutdown every platform app shares, as eShop's
//! ServiceDefaults: typed config from prefixed environment variables checked
//! before any port binds, `--version` and `--check-config`, gRPC health
//! (`grpc.health.v1`), service info and optional reflection, an admin port
//! with `/healthz`, `/readyz` and `/metrics`, and an orderly shutdown on
//! SIGTERM or SIGINT (not ready, stop accepting, drain, flush telemetry).
//!
//! Architecture invariant: the runtime knows no app and no domain. Apps hand
//! it their gRPC services, HTTP router, readiness checks and background tasks;
//! it never looks inside them.
//!
//! A public HTTP listener (the gateway's) is served by the runtime's own
//! accept loop: header-read timeout, connection caps in all and per client,
//! optional TLS ([`PublicHttp`]).

mod admin;
pub mod balance;
mod build_info;
mod client;
mod config;
mod handshake;
mod health_check;
mod http_listener;
mod info;
mod main_loop;
mod serve;
pub mod tenant_data;
#[cfg(feature = "testing")]
pub mod testing;
mod transport;

pub use build_info::{BuildInfo, instance_id, uptime};
pub use client::{
    CONNECT_TIMEOUT, ChannelError, TracedChannel, traced_channel, traced_channel_with_resolver,
};
pub use config::{
    CommonConfig, ConfigError, ConfigProblem, DatabaseUrl, EnvReader, EnvValue, Environment,
    GrpcLimits, InvalidValue, ServiceUrl,
};
pub use health_check::run_health_check;
pub use http_listener::{PublicHttp, PublicTlsFiles};
pub use main_loop::{
    AppMain, CommandTelemetry, StandardArgs, StartFuture, command_telemetry, load_config,
    load_config_from, run_main, run_with_args, shutdown_signal,
};
pub use serve::{CheckError, CheckFuture, Running, ServiceBuilder, ShutdownReport, StartError};
pub use telemetry::{RequestTotals, request_totals};
pub use tokio_util::sync::CancellationToken;
pub use transport::{DEFAULT_CERT_DIR, Transport};
