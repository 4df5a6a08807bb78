//! The ops console: server-rendered pages for the platform's operators,
//! served by the gateway under `/console`.
//!
//! - [`password`]: the password policy and argon2id hashing off the runtime;
//! - [`totp`]: the second factor admins must use, and recovery codes;
//! - `session`: server-side sessions behind a `__Host-` cookie, idle and
//!   absolute expiry, roles checked per page;
//! - `guard`: the browser-side security every console answer carries (a
//!   per-request CSP nonce, no framing, no caching) and the cross-site
//!   request check with a session-bound CSRF token on every form;
//! - `jobs`: the jobs pages (queues, the filtered list, a job's detail,
//!   confirmed actions), through the worker's `platform.jobs.v1` API acting
//!   for the operator;
//! - `pipeline`: ingest's stages (in, out, failed, in flight, rate) and the
//!   bytes held against the ceiling, as Broadway Dashboard shows them;
//! - `anomalies`: a tenant's anomalous windows with server-drawn SVG charts
//!   of their readings;
//! - `tenants`: tenants and their API keys (create, revoke, rotate; a new
//!   secret shown once), on the gateway's own store;
//! - `pages`: the handlers and their askama templates (escaped by
//!   default), and the CSP report endpoint.
//!
//! Why the console needs TLS or loopback: its cookie is `Secure` (the
//! `__Host-` prefix requires it), which browsers send only over HTTPS or
//! to a loopback address. A gateway serving plain HTTP on any other
//! address does not mount the console at all (and says so at start).

mod anomalies;
mod dead_letters;
mod guard;
mod jobs;
mod pages;
pub mod password;
mod pipeline;
mod session;
mod tenants;
pub mod totp;

use std::{sync::Arc, time::Duration};

use axum::Router;

use crate::{backends::Backends, limits::Limiter, storage::GatewayStore};

pub use pages::CspReports;

/// How long sessions live; from `GATEWAY_CONSOLE_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleSettings {
    /// `GATEWAY_CONSOLE_IDLE_TIMEOUT` (30 min): a session unused this long
    /// has ended.
    pub idle_timeout: Duration,
    /// `GATEWAY_CONSOLE_SESSION_LIFETIME` (12 h): a session this old has
    /// ended, however busy.
    pub session_lifetime: Duration,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30 * 60),
            session_lifetime: Duration::from_secs(12 * 3600),
        }
    }
}

/// Failed logins allowed per account in [`LOGIN_WINDOW`].
const LOGIN_FAILURES_PER_ACCOUNT: u32 = 5;
/// Login attempts allowed per client address in [`LOGIN_WINDOW`].
const LOGIN_ATTEMPTS_PER_CLIENT: u32 = 20;
/// The window both login limits count over.
const LOGIN_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Hashes computed at once (each takes a core for tens of milliseconds).
const HASHING_PERMITS: usize = 2;

/// What the console's handlers share.
#[derive(Debug, Clone)]
pub(crate) struct ConsoleState<S> {
    pub(crate) store: S,
    pub(crate) hasher: password::Hasher,
    pub(crate) settings: ConsoleSettings,
    pub(crate) backends: Backends,
    /// The worker's channel (the jobs pages, webhooks).
    pub(crate) worker: service_runtime::TracedChannel,
    /// Ingest (the pipeline and anomalies pages).
    pub(crate) ingest: contracts::ingest::v1::ingest_service_client::IngestServiceClient<
        service_runtime::TracedChannel,
    >,
    /// The key peppers (creating and rotating tenants' keys).
    pub(crate) peppers: Arc<crate::tenancy::Peppers>,
    pub(crate) status_timeout: Duration,
    /// Failed logins per account name.
    pub(crate) account_failures: Arc<Limiter<String>>,
    /// Login attempts per client address.
    pub(crate) client_attempts: Arc<Limiter<std::net::IpAddr>>,
    pub(crate) csp_reports: CspReports,
    /// Whether the public listener serves TLS (the scheme of links shown).
    pub(crate) tls: bool,
    /// Each app's request totals at the last overview, for its rates.
    pub(crate) request_samples: pages::RequestSamples,
}

impl<S: GatewayStore> ConsoleState<S> {
    /// The console's state from the gateway's settings and the API's
    /// clients; makes the dummy password hash (one hash's time).
    pub(crate) fn new(
        store: S,
        config: &crate::Config,
        api: &crate::routes::AppState<S>,
    ) -> Result<Self, password::HashError> {
        let quota = |n| crate::limits::Quota {
            quota: n,
            window: LOGIN_WINDOW,
        };
        Ok(Self {
            store,
            hasher: password::Hasher::new(HASHING_PERMITS)?,
            settings: config.console,
            backends: api.backends.clone(),
            worker: api.worker.clone(),
            ingest: api.ingest.clone(),
            peppers: api.auth.peppers.clone(),
            status_timeout: config.status_timeout,
            account_failures: Arc::new(Limiter::new(quota(LOGIN_FAILURES_PER_ACCOUNT))),
            client_attempts: Arc::new(Limiter::new(quota(LOGIN_ATTEMPTS_PER_CLIENT))),
            csp_reports: CspReports::default(),
            tls: config.http.tls.is_some(),
            request_samples: pages::RequestSamples::default(),
        })
    }
}

/// How often ended sessions are deleted (an ended session is refused at
/// once anyway; this only keeps the table small).
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(600);

impl<S: GatewayStore> ConsoleState<S> {
    /// Deletes sessions past their idle or absolute expiry.
    pub(crate) async fn sweep(&self) {
        let now = chrono::Utc::now();
        let ago =
            |d: Duration| now - chrono::TimeDelta::from_std(d).unwrap_or(chrono::TimeDelta::MAX);
        match self
            .store
            .sweep_sessions(
                ago(self.settings.idle_timeout),
                ago(self.settings.session_lifetime),
            )
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::debug!(sessions = n, "ended console sessions deleted"),
            Err(error) => tracing::warn!(%error, "console session sweep failed"),
        }
        // Forget login counters of idle clients and accounts.
        let instant = std::time::Instant::now();
        self.account_failures.forget_idle(instant);
        self.client_attempts.forget_idle(instant);
    }
}

/// The console's routes, under `/console`.
pub(crate) fn router<S: GatewayStore>(state: ConsoleState<S>) -> Router {
    pages::routes(state)
}

/// The console's routes on the admin listener: `GET /console/csp-reports`,
/// the violation reports browsers sent (the browser tests read it).
pub(crate) fn admin_routes(reports: CspReports) -> Router {
    Router::new().route(
        "/console/csp-reports",
        axum::routing::get(move || {
            let reports = reports.clone();
            async move { axum::Json(reports.all()) }
        }),
    )
}

/// Creates an operator from the command line (the first admin), checking
/// the name and the password policy; records it in the audit log as
/// `actor`.
pub async fn create_operator<S: GatewayStore>(
    store: &S,
    username: &str,
    password: &str,
    role: crate::storage::operators::Role,
    actor: &str,
) -> Result<crate::storage::operators::OperatorAccount, CreateOperatorError> {
    use crate::storage::operators::AuditEntry;
    session::check_username(username).map_err(CreateOperatorError::Username)?;
    password::check_policy(password, username)?;
    let hash = password::Hasher::new(1)?.hash(password).await?;
    let operator = store.create_operator(username, &hash, role).await?;
    store
        .record(&AuditEntry {
            at: chrono::Utc::now(),
            operator: actor.to_owned(),
            action: "operator.create".to_owned(),
            target: format!("operator {username}"),
            detail: format!("role {role}"),
        })
        .await?;
    Ok(operator)
}

/// Why an operator could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateOperatorError {
    /// The name is not a valid username.
    #[error("{0}")]
    Username(String),
    /// The password does not meet the policy.
    #[error(transparent)]
    Weak(#[from] password::Weak),
    /// Hashing failed.
    #[error(transparent)]
    Hash(#[from] password::HashError),
    /// The database refused (a taken name among others).
    #[error(transparent)]
    Store(#[from] crate::storage::StoreError),
}
