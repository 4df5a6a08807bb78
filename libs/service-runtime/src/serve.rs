//! Binds an app's listeners, serves them with health, info, reflection and
//! tracing, and shuts them down in order.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use contracts::service::v1::service_info_service_server::ServiceInfoServiceServer;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::{
    server::NamedService,
    service::{Routes, RoutesBuilder},
    transport::server::TcpIncoming,
};
use tonic_health::{ServingStatus, server::HealthReporter};
use tracing::Instrument as _;

use security::{
    policy::{Policy, PolicyLayer},
    tls::MutualTls,
};

use crate::{BuildInfo, CommonConfig, GrpcLimits, admin, info::ServiceInfo};

/// How often dependency checks refresh the gRPC health status.
const HEALTH_REFRESH: Duration = Duration::from_secs(5);
/// How long one readiness check may take before it counts as failed.
pub(crate) const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a dependency is not ready: any error of the app's (a database
/// error, a connection state), shown by `/readyz` through its `Display`.
pub type CheckError = Box<dyn std::error::Error + Send + Sync>;

/// A readiness check: `Ok` when the dependency is reachable, otherwise why not.
pub type CheckFuture = Pin<Box<dyn Future<Output = Result<(), CheckError>> + Send>>;
type CheckFn = Arc<dyn Fn() -> CheckFuture + Send + Sync>;
type TaskFn = Box<dyn FnOnce(CancellationToken) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// Why an app could not start serving.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not bind (address in use, permission).
    #[error("cannot listen on {addr} for {listener}: {source}")]
    Bind {
        /// "grpc", "http" or "admin".
        listener: &'static str,
        /// The configured address.
        addr: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The TLS certificates could not be loaded.
    #[error("TLS: {0}")]
    Tls(#[from] security::tls::TlsError),
    /// Plaintext gRPC was asked for on an address that is not loopback.
    #[error(
        "cannot serve plaintext gRPC on {0}: plaintext is allowed only on loopback (use mutual TLS)"
    )]
    PlaintextNotLoopback(SocketAddr),
    /// gRPC reflection could not load the contracts' descriptors.
    #[error("gRPC reflection: {0}")]
    Reflection(String),
    /// An app-specific dependency failed at start (database, broker).
    #[error("{what}: {message}")]
    Dependency {
        /// Which dependency, e.g. "database".
        what: &'static str,
        /// What went wrong.
        message: String,
    },
}

/// A named readiness check run by `/readyz` and the gRPC health refresher.
#[derive(Clone)]
pub(crate) struct ReadinessCheck {
    pub(crate) name: &'static str,
    pub(crate) check: CheckFn,
}

/// Shared between the admin endpoint and the shutdown sequence.
#[derive(Clone)]
pub(crate) struct Readiness {
    pub(crate) accepting: Arc<AtomicBool>,
    pub(crate) checks: Arc<Vec<ReadinessCheck>>,
}

impl Readiness {
    /// Runs every check concurrently; `(name, result)` per check.
    pub(crate) async fn run_checks(&self) -> Vec<(&'static str, Result<(), CheckError>)> {
        let runs = self.checks.iter().map(|c| async move {
            let result = match tokio::time::timeout(CHECK_TIMEOUT, (c.check)()).await {
                Ok(result) => result,
                Err(_) => Err(format!("timed out after {CHECK_TIMEOUT:?}").into()),
            };
            (c.name, result)
        });
        futures_util::future::join_all(runs).await
    }
}

/// Describes what an app serves; [`ServiceBuilder::start`] binds it all.
pub struct ServiceBuilder {
    info: BuildInfo,
    common: CommonConfig,
    grpc: Option<(SocketAddr, RoutesBuilder, Vec<&'static str>)>,
    http: Option<(crate::PublicHttp, axum::Router)>,
    admin_routes: axum::Router,
    checks: Vec<ReadinessCheck>,
    tasks: Vec<(&'static str, TaskFn)>,
}

impl ServiceBuilder {
    /// Starts describing the app identified by `info`.
    pub fn new(info: BuildInfo, common: CommonConfig) -> Self {
        Self {
            info,
            common,
            grpc: None,
            http: None,
            admin_routes: axum::Router::new(),
            checks: Vec::new(),
            tasks: Vec::new(),
        }
    }

    /// Serves gRPC on `addr` (port 0 picks a free port).
    pub fn grpc(mut self, addr: SocketAddr) -> Self {
        self.grpc = Some((addr, RoutesBuilder::default(), Vec::new()));
        self
    }

    /// Adds a gRPC service; its health status follows the readiness checks.
    /// Call [`Self::grpc`] first.
    pub fn add_grpc_service<S>(mut self, service: S) -> Self
    where
        S: tower::Service<http::Request<tonic::body::Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        if let Some((_, routes, names)) = &mut self.grpc {
            routes.add_service(service);
            names.push(S::NAME);
        }
        self
    }

    /// Serves an HTTP router on a public listener (the gateway's API),
    /// under the listener's limits and with its TLS when configured.
    pub fn http(mut self, listener: crate::PublicHttp, router: axum::Router) -> Self {
        self.http = Some((listener, router));
        self
    }

    /// Adds operator-only routes to the admin listener (which is never
    /// exposed publicly), beside `/healthz`, `/readyz` and `/metrics`.
    pub fn admin_routes(mut self, routes: axum::Router) -> Self {
        self.admin_routes = self.admin_routes.merge(routes);
        self
    }

    /// Adds a dependency check to `/readyz` and gRPC health.
    pub fn readiness_check<F, Fut>(mut self, name: &'static str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), CheckError>> + Send + 'static,
    {
        self.checks.push(ReadinessCheck {
            name,
            check: Arc::new(move || Box::pin(check())),
        });
        self
    }

    /// Runs an app task (a pipeline, a job runner) until the token is
    /// cancelled at shutdown; the task then drains within the grace period.
    pub fn background<F, Fut>(mut self, name: &'static str, task: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.tasks
            .push((name, Box::new(move |token| Box::pin(task(token)))));
        self
    }

    /// The certificates the gRPC server serves with, or `None` for
    /// plaintext, which only a loopback address may serve.
    fn grpc_transport(&self) -> Result<Option<MutualTls>, StartError> {
        let Some((addr, ..)) = &self.grpc else {
            return Ok(None);
        };
        let tls = self.common.transport.load()?;
        if tls.is_none() && !addr.ip().is_loopback() {
            return Err(StartError::PlaintextNotLoopback(*addr));
        }
        Ok(tls)
    }

    /// The public HTTP listener's certificate, when it serves TLS.
    fn public_tls(&self) -> Result<Option<security::tls::PublicTls>, StartError> {
        match self.http.as_ref().and_then(|(http, _)| http.tls.as_ref()) {
            Some(files) => Ok(Some(security::tls::PublicTls::load(
                &files.cert,
                &files.key,
            )?)),
            None => Ok(None),
        }
    }

    /// Binds every listener (failing before serving anything if one cannot
    /// bind), then serves them all.
    pub async fn start(self) -> Result<Running, StartError> {
        crate::build_info::mark_started();
        let tls = self.grpc_transport()?;
        let public_tls = self.public_tls()?;
        let admin_listener = bind("admin", self.common.admin_addr).await?;
        let grpc_listener = match &self.grpc {
            Some((addr, ..)) => Some(bind("grpc", *addr).await?),
            None => None,
        };
        let http_listener = match &self.http {
            Some((http, _)) => Some(bind("http", http.addr).await?),
            None => None,
        };
        let local = |l: &TcpListener| l.local_addr().ok();
        let admin_addr = local(&admin_listener).unwrap_or(self.common.admin_addr);
        let grpc_addr = grpc_listener.as_ref().and_then(local);
        let http_addr = http_listener.as_ref().and_then(local);

        let readiness = Readiness {
            accepting: Arc::new(AtomicBool::new(true)),
            checks: Arc::new(self.checks),
        };
        // `stop_serving` closes the app's listeners; `stop_admin` comes last
        // so probes keep seeing "not ready" while work drains.
        let stop_serving = CancellationToken::new();
        let stop_admin = CancellationToken::new();
        let failed = CancellationToken::new();
        let mut servers = Vec::new();
        let mut health = None;

        if let (Some((_, mut routes, names)), Some(listener)) = (self.grpc, grpc_listener) {
            let (reporter, health_service) = tonic_health::server::health_reporter();
            routes.add_service(health_service);
            routes.add_service(ServiceInfoServiceServer::new(ServiceInfo::new(self.info)));
            if self.common.grpc_reflection {
                let reflection = tonic_reflection::server::Builder::configure()
                    .register_encoded_file_descriptor_set(contracts::FILE_DESCRIPTOR_SET)
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                    .build_v1()
                    .map_err(|e| StartError::Reflection(e.to_string()))?;
                routes.add_service(reflection);
            }
            let names = Arc::new(names);
            refresh_health(&reporter, &names, &readiness).await;
            servers.push(spawn_server(
                "grpc",
                serve_grpc(
                    listener,
                    tls,
                    routes.routes(),
                    self.common.grpc_limits,
                    stop_serving.clone(),
                ),
                failed.clone(),
            ));
            let refresher = tokio::spawn(
                health_refresher(
                    reporter.clone(),
                    names.clone(),
                    readiness.clone(),
                    stop_serving.clone(),
                )
                .instrument(tracing::info_span!("health refresher")),
            );
            health = Some(HealthPublisher {
                reporter,
                names,
                refresher,
            });
        }
        if let (Some((settings, router)), Some(listener)) = (self.http, http_listener) {
            let serve = crate::http_listener::serve(
                listener,
                router,
                settings,
                public_tls,
                stop_serving.clone(),
            );
            servers.push(spawn_server("http", serve, failed.clone()));
        }
        let admin_server = spawn_server(
            "admin",
            admin::serve(
                admin_listener,
                readiness.clone(),
                self.admin_routes,
                stop_admin.clone(),
            ),
            failed.clone(),
        );
        let background = spawn_background(self.tasks, &stop_serving);

        Ok(Running {
            info: self.info,
            grpc_addr,
            http_addr,
            admin_addr,
            grace: self.common.shutdown_grace,
            delay: self.common.shutdown_delay,
            readiness,
            health,
            stop_serving,
            stop_admin,
            failed,
            servers,
            admin_server,
            background,
        })
    }
}

/// Starts the app's background tasks, each in its own span.
fn spawn_background(
    tasks: Vec<(&'static str, TaskFn)>,
    stop: &CancellationToken,
) -> Vec<(&'static str, JoinHandle<()>)> {
    tasks
        .into_iter()
        .map(|(name, task)| {
            let span = tracing::info_span!("background task", task = name);
            (name, tokio::spawn(task(stop.clone()).instrument(span)))
        })
        .collect()
}

async fn bind(listener: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            listener,
            addr,
            source,
        })
}

/// Serves gRPC under `limits` (see [`GrpcLimits`]), over mutual TLS with
/// the per-RPC policy enforced when `tls` is set.
async fn serve_grpc(
    listener: TcpListener,
    tls: Option<MutualTls>,
    routes: Routes,
    limits: GrpcLimits,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let policy = if tls.is_some() {
        PolicyLayer::new(Policy::from_contracts())
    } else {
        tracing::warn!(
            "gRPC is plaintext: callers are not identified and the per-RPC policy is not enforced (loopback only)"
        );
        PolicyLayer::not_enforced()
    };
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_streams_per_connection)
        .concurrency_limit_per_connection(limits.max_streams_per_connection as usize)
        .timeout(limits.max_deadline)
        .http2_max_header_list_size(limits.max_header_list_bytes)
        .http2_max_pending_accept_reset_streams(Some(limits.max_pending_resets))
        .http2_keepalive_interval(Some(limits.keepalive.0))
        .http2_keepalive_timeout(Some(limits.keepalive.1))
        .layer(telemetry::ServerTraceLayer::new())
        .layer(policy)
        .add_routes(routes);
    match tls {
        Some(tls) => {
            let incoming = crate::handshake::tls_incoming(listener, tls, stop.clone());
            server
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await
        }
        None => {
            let incoming = TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .with_keepalive(Some(limits.keepalive.0));
            server
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await
        }
    }
}

fn spawn_server<E: std::fmt::Display>(
    name: &'static str,
    serve: impl Future<Output = Result<(), E>> + Send + 'static,
    failed: CancellationToken,
) -> (&'static str, JoinHandle<()>) {
    let span = tracing::info_span!("server", listener = name);
    let task = async move {
        if let Err(error) = serve.await {
            tracing::error!(%error, "server stopped with an error");
            failed.cancel();
        }
    };
    (name, tokio::spawn(task.instrument(span)))
}

async fn refresh_health(reporter: &HealthReporter, names: &[&'static str], readiness: &Readiness) {
    let healthy = readiness.accepting.load(Ordering::Acquire)
        && readiness.run_checks().await.iter().all(|(_, r)| r.is_ok());
    let status = if healthy {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    reporter.set_service_status("", status).await;
    for name in names {
        reporter.set_service_status(name, status).await;
    }
}

async fn health_refresher(
    reporter: HealthReporter,
    names: Arc<Vec<&'static str>>,
    readiness: Readiness,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(HEALTH_REFRESH) => refresh_health(&reporter, &names, &readiness).await,
        }
    }
}

/// The gRPC health reporter, the service names it reports on, and the task
/// that refreshes their status from the readiness checks.
struct HealthPublisher {
    reporter: HealthReporter,
    names: Arc<Vec<&'static str>>,
    refresher: JoinHandle<()>,
}

/// A serving app: its bound addresses and the handle to stop it.
pub struct Running {
    info: BuildInfo,
    /// Where gRPC is served, if the app serves gRPC.
    pub grpc_addr: Option<SocketAddr>,
    /// Where plain HTTP is served, if the app serves HTTP.
    pub http_addr: Option<SocketAddr>,
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub admin_addr: SocketAddr,
    grace: Duration,
    delay: Duration,
    readiness: Readiness,
    health: Option<HealthPublisher>,
    stop_serving: CancellationToken,
    stop_admin: CancellationToken,
    failed: CancellationToken,
    servers: Vec<(&'static str, JoinHandle<()>)>,
    admin_server: (&'static str, JoinHandle<()>),
    background: Vec<(&'static str, JoinHandle<()>)>,
}

/// What happened during shutdown, for the final log line and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Listeners and tasks that finished draining within the grace period.
    pub drained: Vec<&'static str>,
    /// Listeners and tasks aborted when the grace period ran out.
    pub aborted: Vec<&'static str>,
}

impl Running {
    /// The build this app reports.
    pub fn info(&self) -> BuildInfo {
        self.info
    }

    /// Resolves if a listener fails while serving (the process should exit
    /// non-zero after shutting down the rest).
    pub async fn failed(&self) {
        self.failed.cancelled().await;
    }

    /// Marks the app not ready, waits the configured delay, stops accepting,
    /// lets in-flight requests and background tasks drain within the grace
    /// period, aborts what is left, then stops the admin listener.
    pub async fn shutdown(self) -> ShutdownReport {
        let started = Instant::now();
        self.readiness.accepting.store(false, Ordering::Release);
        if let Some(HealthPublisher {
            reporter,
            names,
            refresher,
        }) = &self.health
        {
            refresher.abort();
            reporter
                .set_service_status("", ServingStatus::NotServing)
                .await;
            for name in names.iter() {
                reporter
                    .set_service_status(name, ServingStatus::NotServing)
                    .await;
            }
        }
        tokio::time::sleep(self.delay).await;
        self.stop_serving.cancel();

        let deadline = started + self.grace;
        let mut report = ShutdownReport {
            drained: Vec::new(),
            aborted: Vec::new(),
        };
        for (name, mut handle) in self.servers.into_iter().chain(self.background) {
            match tokio::time::timeout_at(deadline.into(), &mut handle).await {
                Ok(_) => report.drained.push(name),
                Err(_) => {
                    handle.abort();
                    report.aborted.push(name);
                }
            }
        }
        self.stop_admin.cancel();
        let (name, handle) = self.admin_server;
        match tokio::time::timeout(Duration::from_secs(1), handle).await {
            Ok(_) => report.drained.push(name),
            Err(_) => report.aborted.push(name),
        }
        tracing::info!(
            drained = ?report.drained,
            aborted = ?report.aborted,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "shutdown complete"
        );
        report
    }
}
