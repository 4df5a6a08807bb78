//! The console's pages and forms. Every handler finds the session itself
//! (`signed_in`), checks the role its page needs, and checks the form's
//! CSRF token before it changes anything; every change is recorded in the
//! audit log with who made it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use askama::Template;
use axum::{
    Extension, Form, Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{Html, IntoResponse, Redirect, Response},
    routing::{get, post},
};
use chrono::Utc;
use serde::Deserialize;

use super::{
    ConsoleState,
    guard::{self, Nonce},
    password, session,
    session::{NoSession, SignedIn},
    totp,
};
use crate::{
    limits::ClientAddr,
    status::platform_status,
    storage::{
        GatewayStore,
        operators::{AuditEntry, Role},
    },
};

/// The console's routes with their guard.
pub(super) fn routes<S: GatewayStore>(state: ConsoleState<S>) -> Router {
    Router::new()
        .route("/console", get(overview::<S>))
        .route("/console/login", get(login_page::<S>).post(login::<S>))
        .route("/console/logout", post(logout::<S>))
        .route("/console/logout-everywhere", post(logout_everywhere::<S>))
        .route(
            "/console/second-factor",
            get(second_factor_page::<S>).post(second_factor::<S>),
        )
        .route(
            "/console/second-factor/enrol",
            get(enrol_page::<S>).post(enrol::<S>),
        )
        .route(
            "/console/password",
            get(password_page::<S>).post(change_password::<S>),
        )
        .route(
            "/console/operators",
            get(operators_page::<S>).post(create_operator::<S>),
        )
        .route("/console/operators/role", post(set_role::<S>))
        .route("/console/operators/reset", post(make_reset_link::<S>))
        .route("/console/reset", get(reset_page).post(reset_password::<S>))
        .route("/console/static/reset.js", get(reset_script))
        .route("/console/audit", get(audit_page::<S>))
        .route("/console/pipeline", get(super::pipeline::show::<S>))
        .route("/console/anomalies", get(super::anomalies::show::<S>))
        .route("/console/dead-letters", get(super::dead_letters::list::<S>))
        .route(
            "/console/dead-letters/{id}",
            get(super::dead_letters::detail::<S>),
        )
        .route(
            "/console/dead-letters/{id}/discard",
            get(super::dead_letters::confirm_discard::<S>).post(super::dead_letters::discard::<S>),
        )
        .route(
            "/console/dead-letters/{id}/{action}",
            post(super::dead_letters::resubmit::<S>),
        )
        .route("/console/tenants", get(super::tenants::list::<S>))
        .route(
            "/console/tenants/{tenant}",
            get(super::tenants::detail::<S>),
        )
        .route(
            "/console/tenants/{tenant}/keys",
            post(super::tenants::create_key::<S>),
        )
        .route(
            "/console/tenants/{tenant}/keys/{key}/{action}",
            get(super::tenants::confirm_key::<S>).post(super::tenants::act_on_key::<S>),
        )
        .route("/console/jobs", get(super::jobs::list::<S>))
        .route("/console/jobs/{id}", get(super::jobs::detail::<S>))
        .route(
            "/console/jobs/{id}/{action}",
            get(super::jobs::confirm_job::<S>).post(super::jobs::act_on_job::<S>),
        )
        .route(
            "/console/queues/{queue}/{action}",
            get(super::jobs::confirm_queue::<S>).post(super::jobs::act_on_queue::<S>),
        )
        .route(guard::REPORT_PATH, post(csp_report::<S>))
        .route("/console/static/console.css", get(stylesheet))
        .route("/console/static/refresh.js", get(refresh_script))
        .route("/console/static/favicon.svg", get(favicon))
        .layer(axum::middleware::from_fn(guard::guard))
        .with_state(state)
}

// ---- plumbing -----------------------------------------------------------

/// A template as an HTML answer (a render failure is our fault: 500).
pub(super) fn page(template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(error) => {
            tracing::error!(%error, "console template failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page failed to render\n",
            )
                .into_response()
        }
    }
}

/// The answer when the database fails mid-request.
pub(super) fn unavailable(error: &dyn std::fmt::Display) -> Response {
    tracing::error!(%error, "console: database");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "the console's database is unavailable; try again shortly\n",
    )
        .into_response()
}

fn forbidden() -> Response {
    (
        StatusCode::FORBIDDEN,
        "your role does not allow this page or action\n",
    )
        .into_response()
}

/// The session, or the answer to give instead: to the login page when
/// signed out, to the second factor while an admin has not given it.
pub(super) async fn signed_in<S: GatewayStore>(
    state: &ConsoleState<S>,
    headers: &HeaderMap,
    role: Role,
) -> Result<SignedIn, Response> {
    match session::current(state, headers, Utc::now()).await {
        Ok(signed) if signed.needs_second_factor() => {
            Err(Redirect::to(if signed.operator.totp_secret.is_some() {
                "/console/second-factor"
            } else {
                "/console/second-factor/enrol"
            })
            .into_response())
        }
        Ok(signed) if signed.may(role) => Ok(signed),
        Ok(_) => Err(forbidden()),
        Err(NoSession::SignedOut) => {
            let mut response = Redirect::to("/console/login").into_response();
            response
                .headers_mut()
                .insert(header::SET_COOKIE, session::clear_cookie());
            Err(response)
        }
        Err(NoSession::Store(error)) => Err(unavailable(&error)),
    }
}

/// A request to another app acting for the signed-in operator
/// (`x-platform-principal: operator:<name>`): the app's policy grants the
/// operator's calls and its audit log names them.
pub(super) fn as_operator<T>(signed: &SignedIn, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    // Usernames are `a-z 0-9 . _ -`: always a valid header value.
    if let Ok(value) = format!("operator:{}", signed.operator.username).parse() {
        request
            .metadata_mut()
            .insert(security::policy::PRINCIPAL_METADATA, value);
    }
    request
}

/// Another app's refusal as a page shows it: what the operator can act on
/// (not found, invalid, unavailable), anything else logged.
pub(super) fn backend_error(app: &'static str, status: &tonic::Status) -> Response {
    let (code, text) = match status.code() {
        tonic::Code::NotFound => (StatusCode::NOT_FOUND, format!("{app}: not found")),
        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{app}: {}", status.message()),
        ),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{app}: unavailable; the page will work again once it is back"),
        ),
        _ => {
            tracing::error!(%status, app, "console: a backend call failed");
            (
                StatusCode::BAD_GATEWAY,
                format!("{app}: the call failed; see the gateway's log"),
            )
        }
    };
    (code, format!("{text}\n")).into_response()
}

/// Whether a form's token is this session's (constant time).
pub(super) fn csrf_ok(signed: &SignedIn, token: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    bool::from(signed.csrf_token.as_bytes().ct_eq(token.as_bytes()))
}

pub(super) fn bad_csrf() -> Response {
    (
        StatusCode::FORBIDDEN,
        "csrf: the form's token does not match your session; reload the page and try again\n",
    )
        .into_response()
}

pub(super) async fn audit<S: GatewayStore>(
    state: &ConsoleState<S>,
    who: &str,
    action: &str,
    target: String,
    detail: String,
) -> Result<(), Response> {
    state
        .store
        .record(&AuditEntry {
            at: Utc::now(),
            operator: who.to_owned(),
            action: action.to_owned(),
            target,
            detail,
        })
        .await
        .map_err(|e| unavailable(&e))
}

/// What the navigation shows.
pub(super) struct Nav {
    pub(super) csrf: String,
    pub(super) username: String,
    pub(super) role: Role,
    pub(super) admin: bool,
}

impl Nav {
    pub(super) fn of(signed: &SignedIn) -> Self {
        Self {
            csrf: signed.csrf_token.clone(),
            username: signed.operator.username.clone(),
            role: signed.operator.role,
            admin: signed.may(Role::Admin),
        }
    }
}

/// One of the console's own files (compiled in: no file system access;
/// the guard marks it `no-store` like every console answer).
fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn stylesheet() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("static/console.css"),
    )
}

async fn favicon() -> Response {
    asset("image/svg+xml", include_str!("static/favicon.svg"))
}

async fn reset_script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("static/reset.js"),
    )
}

async fn refresh_script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("static/refresh.js"),
    )
}

// ---- login and sessions ---------------------------------------------------

#[derive(Template)]
#[template(path = "console/login.html")]
struct LoginPage {
    error: Option<String>,
    username: String,
}

async fn login_page<S: GatewayStore>(
    State(state): State<ConsoleState<S>>,
    headers: HeaderMap,
) -> Response {
    if session::current(&state, &headers, Utc::now()).await.is_ok() {
        return Redirect::to("/console").into_response();
    }
    page(&LoginPage {
        error: None,
        username: String::new(),
    })
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

/// One answer for every failed login, so it does not say which part was
/// wrong or whether the account exists.
const LOGIN_FAILED: &str = "username or password: not recognised";

async fn login<S: GatewayStore>(
    State(state): State<ConsoleState<S>>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let now = std::time::Instant::now();
    // The edge's guard puts the client address on every request.
    let client = client.map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0.0);
    let username = form.username.trim().to_lowercase();
    let refused = |error: String, status: StatusCode| {
        let mut response = page(&LoginPage {
            error: Some(error),
            username: username.clone(),
        });
        *response.status_mut() = status;
        response
    };
    if !state.client_attempts.check(&client, now).allowed {
        return refused(
            "login: too many attempts from your address; wait a few minutes".into(),
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    if !state.account_failures.peek(&username, now).allowed {
        return refused(
            "login: too many failed attempts for this account; wait a few minutes".into(),
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    let account = match state.store.operator(&username).await {
        Ok(account) => account.filter(|a| a.disabled_at.is_none()),
        Err(error) => return unavailable(&error),
    };
    let matched = match state
        .hasher
        .verify(
            &form.password,
            account.as_ref().map(|a| a.password_hash.as_str()),
        )
        .await
    {
        Ok(matched) => matched,
        Err(error) => return unavailable(&error),
    };
    let Some(account) = account.filter(|_| matched) else {
        state.account_failures.check(&username, now);
        tracing::warn!(%client, username = %username, "console login failed");
        return refused(LOGIN_FAILED.into(), StatusCode::UNAUTHORIZED);
    };
    // Whatever session the browser brought ends here: the signed-in one
    // is always new (no fixation).
    if let Some(old) = session::token(&headers)
        && let Err(error) = state.store.end_session(&session::digest(&old)).await
    {
        return unavailable(&error);
    }
    let token = match session::start(&state, &account, Utc::now()).await {
        Ok(token) => token,
        Err(error) => return unavailable(&error),
    };
    if let Err(response) = audit(
        &state,
        &account.username,
        "operator.login",
        format!("operator {}", account.username),
        format!("from {client}"),
    )
    .await
    {
        return response;
    }
    let next = if account.role == Role::Admin {
        if account.totp_secret.is_some() {
            "/console/second-factor"
        } else {
            "/console/second-factor/enrol"
        }
    } else {
        "/console"
    };
    let mut response = Redirect::to(next).into_response();
    if let Some(cookie) = session::set_cookie(&token) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

/// A form that carries only the session's CSRF token (logout, confirmed
/// actions).
#[derive(Deserialize)]
pub(super) struct TokenOnly {
    #[serde(default)]
    pub(super) csrf: String,
}

/// The page that confirms an action before it is taken: its question, a
/// form posting to `action`, and a way back.
#[derive(Template)]
#[template(path = "console/confirm.html")]
pub(super) struct ConfirmPage {
    pub(super) csrf: String,
    pub(super) username: String,
    pub(super) role: Role,
    pub(super) admin: bool,
    pub(super) question: String,
    pub(super) action: String,
    pub(super) button: &'static str,
    pub(super) back: String,
}

async fn logout<S: GatewayStore>(
    State(state): State<ConsoleState<S>>,
    headers: HeaderMap,
    Form(form): Form<TokenOnly>,
) -> Response {
    // Any live session may log out, second factor or not.
    let signed = match session::current(&state, &headers, Utc::now()).await {
        Ok(signed) => signed,
        Err(NoSession::SignedOut) => return Redirect::to("/console/login").into_response(),
        Err(NoSession::Store(error)) => return unavailable(&error),
    };
    if !csrf_ok(&signed, &form.csrf) {
        return bad_csrf();
    }
    if let Err(error) = state.store.end_session(&signed.digest).await {
        return unavailable(&error);
    }
    let mut response = Redirect::to("/console/login").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::clear_cookie());
    response
}

async fn logout_everywhere<S: GatewayStore>(
    State(state): State<ConsoleState<S>>,
    headers: HeaderMap,
    Form(form): Form<TokenOnly>,
) -> Response {
    let signed = match signed_in(&state, &headers, Role::Viewer).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    if !csrf_ok(&signed, &form.csrf) {
        return bad_csrf();
    }
    let ended = match state.store.end_sessions(signed.operator.id).await {
        Ok(n) => n,
        Err(error) => return unavailable(&error),
    };
    if let Err(response) = audit(
        &state,
        &signed.operator.username,
        "operator.logout_everywhere",
        format!("operator {}", signed.operator.username),
        format!("{ended} session(s) ended"),
    )
    .await
    {
        return response;
    }
    let mut response = Redirect::to("/console/login").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::clear_cookie());
    response
}

// ---- second factor --------------------------------------------------------

#[derive(Template)]
#[template(path = "console/second_factor.html")]
struct SecondFactorPage {
    csrf: String,
    error: Option<String>,
}

/// The session of an operator who still has to give the second factor.
async fn pending<S: GatewayStore>(
    state: &ConsoleState<S>,
    headers: &HeaderMap,
) -> Result<SignedIn, Response> {
    match session::current(state, headers, Utc::now()).await {
        Ok(signed) if signed.second_factor => Err(Redirect::to("/console").into_response()),
        Ok(signed) => Ok(signed),
        Err(NoSession::SignedOut) => Err(Redirect::to("/console/login").into_response()),
        Err(NoSession::Store(error)) => Err(unavailable(&error)),
    }
}

async fn second_factor_page<S: GatewayStore>(
    State(state): State<ConsoleState<S>>,
    headers: HeaderMap,
) -> Response {
    match pending(&state, &headers).await {
        Ok(signed) if signed.operator.totp_secret.is_none() => {
            Redirect::to("/console/second-factor/enrol").into_response()
        }
        Ok(signed) => page(&SecondFactorPage {
            csrf: signed.csrf_token,
            error: None,
        }),
        Err(response) => response,
    }
}

#[derive(Deserialize)]
struct CodeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    code: String,
    #[serde(default)]
    secret: String,
}

fn unix_now() -> u64 {
    u64::try_from(Utc::now().timestamp()).unwrap_or(0)
}

async fn second_factor<S: GatewayStore>(
    State(state): State<ConsoleState<S>>,
    headers: HeaderMap,
    Form(form): Form<CodeForm>,
) -> Response {
    let signed = match pending(&state, &headers).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    if !csrf_ok(&signed, &form.csrf) {
        return bad_csrf();
    }
    let now = std::time::Instant::now();
    let name = signed.operator.username.clone();
    if !state.account_failures.peek(&name, now).allowed {
        return second_factor_refused(
            &signed,
            "code: too many failed attempts; wait a few minutes",
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    let Some(secret) = signed.operator.totp_secret.as_deref() else {
        return Redirect::to("/console/second-factor/enrol").into_response();
    };
    let step = totp::matching_step(secret, &form.code, unix_now());
    let by_app = match step {
        Some(step) => match state
            .store
            .use_totp_step(signed.operator.id, step_number(step))
            .await
        {
            Ok(fresh) => fresh,
            Err(error) => return unavailable(&error),
        },
        None => false,
    };
    if step.is_some() && !by_app {
        state.account_failures.check(&name, now);
        return second_factor_refused(
            &signed,
            "code: already used; wait for your authenticator's next code",
            StatusCode::UNAUTHORIZED,
        );
    }
    let by_recovery = !by_app
        && match state
            .store
            .use_recovery_code(signed.operator.id, &totp::recovery_digest(&form.code))
            .await
        {
            Ok(used) => used,
            Err(error) => return unavailable(&error),
        };
    if !(by_app || by_recovery) {
        state.account_failures.check(&name, now);
        return second_factor_refused(
            &signed,
            "code: not recognised (a six-digit code from your authenticator, or a recovery code)",
            StatusCode::UNAUTHORIZED,
        );
    }
    if let Err(error) = state
        .store
        .touch_session(&signed.digest, Utc::now(), true)
        .await
    {
        return unavailable(&error);
    }
    if by_recovery
        && let Err(response) = audit(
            &state,
            &name,
            "operator.recovery_code_used",
            format!("operator {name}"),
            String::new(),
        )
        .await
    {
        return response;
    }
    Redirect::to("/console").into_response()
}

/// A time step as the store keeps it (steps since 1970 fit an `i64`).
fn step_number(step: u64) -> i64 {
    i64::try_from(step).unwrap_or(i64::MAX)
}

fn second_factor_refused(signed: &SignedIn, error: &str, status: StatusCode) -> Response {
    let mut response = page(&SecondFactorPage {
        csrf: signed.csrf_token.clone(),
        error: Some(error.to_owned()),
    });
    *response.status_mut() = status;
    response
}

#[derive(Template)]
#[template(path = "console/enrol.html")]
struct EnrolPage {
    csrf: String,
    secret: String,
    uri: String,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "console/recovery_codes.html")]
struct RecoveryCodesPage {
    codes: Vec<String>,
}

fn enrol_form(signed: &SignedIn, secret: &[u8], error: Option<String>) -> Response {
    page(&EnrolPage {
        csrf: signed.csrf_token.clone(),
        secret: totp::base32(secret),
        uri: totp::provisioning_uri(secret, &signed.operator.username),
        error,
    })
}

async fn enrol_page<S: GatewayStore>(
    State(state): State<ConsoleState<S>>,
    headers: HeaderMap,
) -> Response {
    let signed = match pending(&state, &headers).await {
        Ok(signed) if signed.operator.totp_secret.is_some() => {
            return Redirect::to("/console/second-factor").into_response();
        }
        Ok(signed) => signed,
        Err(response) => return response,
    };
    match totp::new_secret() {
        Ok(secret) => enrol_form(&signed, &secret, None),
        Err(error) => unavailable(&error),
    }
}

async fn enrol<S: GatewayStore>(
    State(state): State<ConsoleState<S>>,
    headers: HeaderMap,
    Form(form): Form<CodeForm>,
) -> Response {
    let signed = match pending(&state, &headers).await {
        Ok(signed) if signed.operator.totp_secret.is_some() => {
            // Enrolled already: a new secret only through an admin reset.
            return Redirect::to("/console/second-factor").into_response();
        }
        Ok(signed) => signed,
        Err(response) => return response,
    };
    if !csrf_ok(&signed, &form.csrf) {
        return bad_csrf();
    }
    let Some(secret) = totp::secret_from_base32(&form.secret) else {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            "secret: not the key this page showed; reload the page\n",
        )
            .into_response();
    };
    let Some(step) = totp::matching_step(&secret, &form.code, unix_now()) else {
        let mut response = enrol_form(
            &signed,
            &secret,
            Some("code: does not match this key; check the authenticator's clock and try the next code".into()),
        );
        *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
        return response;
    };
    let codes = match totp::new_recovery_codes() {
        Ok(codes) => codes,
        Err(error) => return unavailable(&error),
    };
    let digests: Vec<[u8; 32]> = codes.iter().map(|(_, digest)| *digest).collect();
    let name = &signed.operator.username;
    let stored = state
        .store
        .enrol_totp(signed.operator.id, &secret, &digests)
        .await
        // The enrolment's code is spent: it cannot sign in afterwards.
        .and(
            state
                .store
                .use_totp_step(signed.operator.id, step_number(step))
                .await
                .map(drop),
        )
        .and(
            state
                .store
                .touch_session(&signed.digest, Utc::now(), true)
                .await,
        );
    if let Err(error) = stored {
        return unavailable(&error);
    }
    if let Err(response) = audit(
        &state,
        name,
        "operator.totp_enrol",
        format!("operator {name}"),
        String::new(),
    )
    .await
    {
        return response;
    }
    page(&RecoveryCodesPage {
        codes: codes.into_iter().map(|(code, _)| code).collect(),
    })
}

// ---- overview ---------------------------------------------------------------

/// One app's row on the overview.
struct AppRow {
    name: &'static str,
    state: &'static str,
    version: String,
    uptime: String,
    /// Requests per second, and the share that failed on the app's side.
    rate: String,
    errors: String,
    latency: String,
}

/// Each app's request totals when the overview last asked, so the next
/// overview shows rates over the time between (every 10 s while it is
/// open) rather than since the app started.
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestSamples(Arc<Mutex<HashMap<&'static str, RequestSample>>>);

/// An app's instance, when its totals were read, and the totals.
type RequestSample = (Option<String>, Instant, service_runtime::RequestTotals);

impl RequestSamples {
    /// Rate and failed share of `app` now, against its previous sample when
    /// that is of the same instance and at least a second old, else since
    /// it started; records this sample.
    fn rates(
        &self,
        app: &crate::status::ServiceStatus,
        now: Instant,
    ) -> (Option<f64>, Option<f64>) {
        let Some(totals) = app.requests else {
            return (None, None);
        };
        let mut samples = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let previous = samples
            .get(app.name)
            .filter(|(instance, at, _)| {
                *instance == app.instance_id && now.duration_since(*at) >= Duration::from_secs(1)
            })
            .map(|(_, at, totals)| (now.duration_since(*at), *totals));
        let since_start = app.uptime_seconds.map(|s| {
            (
                Duration::from_secs(u64::try_from(s).unwrap_or(0)),
                service_runtime::RequestTotals::default(),
            )
        });
        // A sample under a second old is kept: views in a burst all
        // measure against the one before it.
        let recent = samples.get(app.name).is_some_and(|(instance, at, _)| {
            *instance == app.instance_id && now.duration_since(*at) < Duration::from_secs(1)
        });
        if !recent {
            samples.insert(app.name, (app.instance_id.clone(), now, totals));
        }
        request_rates(previous.or(since_start), totals)
    }
}

/// Requests per second and the failed share between `before` (how long
/// ago, and the totals then) and `now`; `None` where it cannot be said.
fn request_rates(
    before: Option<(Duration, service_runtime::RequestTotals)>,
    now: service_runtime::RequestTotals,
) -> (Option<f64>, Option<f64>) {
    let Some((elapsed, then)) = before else {
        return (None, None);
    };
    let served = now.served.checked_sub(then.served);
    let failed = now.failed.checked_sub(then.failed);
    let rate = served
        .filter(|_| !elapsed.is_zero())
        .map(|n| n as f64 / elapsed.as_secs_f64());
    let share = match (served, failed) {
        (Some(n), Some(f)) if n > 0 => Some(f as f64 / n as f64),
        _ => None,
    };
    (rate, share)
}

#[derive(Template)]
#[template(path = "console/overview.html")]
struct OverviewPage {
    nonce: String,
    csrf: String,
    username: String,
    role: Role,
    admin: bool,
    serving: bool,
    apps: Vec<AppRow>,
}

/// `3d 4h`, `4h 12m`, `12m 5s` or `5s`.
pub(super) fn duration_words(seconds: i64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds % 86_400 / 3600,
        seconds % 3600 / 60,
        seconds % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

async fn overview<S: GatewayStore>(
    State(state): State<ConsoleState<S>>,
    Extension(nonce): Extension<Nonce>,
    headers: HeaderMap,
) -> Response {
    let signed = match signed_in(&state, &headers, Role::Viewer).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let status = platform_status(&state.backends.all, state.status_timeout).await;
    let sampled = Instant::now();
    let nav = Nav::of(&signed);
    page(&OverviewPage {
        nonce: nonce.0,
        csrf: nav.csrf,
        username: nav.username,
        role: nav.role,
        admin: nav.admin,
        serving: status.serving,
        apps: status
            .services
            .iter()
            .map(|app| {
                let (rate, errors) = state.request_samples.rates(app, sampled);
                AppRow {
                    name: app.name,
                    state: app.state,
                    version: app.version.clone().unwrap_or_else(|| "unknown".into()),
                    uptime: app
                        .uptime_seconds
                        .map_or_else(|| "unknown".into(), duration_words),
                    rate: rate.map_or_else(|| "unknown".into(), |r| format!("{r:.1}/s")),
                    errors: errors
                        .map_or_else(|| "none served".into(), |e| format!("{:.2}%", e * 100.0)),
                    latency: format!("{:.1} ms", app.latency_ms),
                }
            })
            .collect(),
    })
}

// ---- own password -----------------------------------------------------------

#[derive(Template)]
#[template(path = "console/password.html")]
struct PasswordPage {
    csrf: String,
    username: String,
    role: Role,
    admin: bool,
    error: Option<String>,
    changed: bool,
}

fn password_form(signed: &SignedIn, error: Option<String>, changed: bool) -> Response {
    let nav = Nav::of(signed);
    page(&PasswordPage {
        csrf: nav.csrf,
        username: nav.username,
        role: nav.role,
        admin: nav.admin,
        error,
        changed,
    })
}

#[derive(Deserialize)]
struct Changed {
    changed: Option<String>,
}

async fn password_page<S: GatewayStore>(
    State(state): State<ConsoleState<S>>,
    axum::extract::Query(query): axum::extract::Query<Changed>,
    headers: HeaderMap,
) -> Response {
    match signed_in(&state, &headers, Role::Viewer).await {
        Ok(signed) => password_form(&signed, None, query.changed.is_some()),
        Err(response) => response,
    }
}

#[derive(Deserialize)]
struct PasswordForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    current: String,
    #[serde(default)]
    new: String,
}

async fn change_password<S: GatewayStore>(
    State(state): State<ConsoleState<S>>,
    headers: HeaderMap,
    Form(form): Form<PasswordForm>,
) -> Response {
    let signed = match signed_in(&state, &headers, Role::Viewer).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    if !csrf_ok(&signed, &form.csrf) {
        return bad_csrf();
    }
    let refuse = |error: String| {
        let mut response = password_form(&signed, Some(error), false);
        *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
        response
    };
    match state
        .hasher
        .verify(&form.current, Some(&signed.operator.password_hash))
        .await
    {
        Ok(true) => {}
        Ok(false) => return refuse("current: not your current password".into()),
        Err(error) => return unavailable(&error),
    }
    if let Err(weak) = password::check_policy(&form.new, &signed.operator.username) {
        return refuse(weak.to_string());
    }
    let hash = match state.hasher.hash(&form.new).await {
        Ok(hash) => hash,
        Err(error) => return unavailable(&error),
    };
    // Ends every session, this one too; this browser gets a new one.
    if let Err(error) = state.store.set_password(signed.operator.id, &hash).await {
        return unavailable(&error);
    }
    let name = &signed.operator.username;
    if let Err(response) = audit(
        &state,
        name,
        "operator.password_change",
        format!("operator {name}"),
        String::new(),
    )
    .await
    {
        return response;
    }
    let token = match session::start(&state, &signed.operator, Utc::now()).await {
        Ok(token) => token,
        Err(error) => return unavailable(&error),
    };
    // The new session keeps the second factor this one had.
    if signed.second_factor {
        let digest = session::digest(&token);
        if let Err(error) = state.store.touch_session(&digest, Utc::now(), true).await {
            return unavailable(&error);
        }
    }
    let mut response = Redirect::to("/console/password?changed=1").into_response();
    if let Some(cookie) = session::set_cookie(&token) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

// ---- operators (admins) -----------------------------------------------------

/// One operator's row.
struct OperatorRow {
    username: String,
    role: &'static str,
    /// Each role, and whether it is this operator's.
    choices: Vec<(&'static str, bool)>,
    totp: bool,
    disabled: bool,
}

#[derive(Template)]
#[template(path = "console/operators.html")]
struct OperatorsPage {
    csrf: String,
    username: String,
    role: Role,
    admin: bool,
    rows: Vec<OperatorRow>,
    roles: Vec<&'static str>,
    error: Option<String>,
    notice: Option<String>,
}

async fn operators_form<S: GatewayStore>(
    state: &ConsoleState<S>,
    signed: &SignedIn,
    error: Option<String>,
    notice: Option<String>,
) -> Response {
    let operators = match state.store.operators().await {
        Ok(operators) => operators,
        Err(error) => return unavailable(&error),
    };
    let nav = Nav::of(signed);
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let mut response = page(&OperatorsPage {
        csrf: nav.csrf,
        username: nav.username,
        role: nav.role,
        admin: nav.admin,
        rows: operators
            .iter()
            .map(|o| OperatorRow {
                username: o.username.clone(),
                role: o.role.as_str(),
                choices: Role::ALL
                    .iter()
                    .map(|r| (r.as_str(), *r == o.role))
                    .collect(),
                totp: o.totp_secret.is_some(),
                disabled: o.disabled_at.is_some(),
            })
            .collect(),
        roles: Role::ALL.iter().map(|r| r.as_str()).collect(),
        error,
        notice,
    });
    *response.status_mut() = status;
    response
}

async fn operators_page<S: GatewayStore>(
    State(state): State<ConsoleState<S>>,
    headers: HeaderMap,
) -> Response {
    match signed_in(&state, &headers, Role::Admin).await {
        Ok(signed) => operators_form(&state, &signed, None, None).await,
        Err(response) => response,
    }
}

#[derive(Deserialize)]
struct NewOperatorForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    role: String,
}

async fn create_operator<S: GatewayStore>(
    State(state): State<ConsoleState<S>>,
    headers: HeaderMap,
    Form(form): Form<NewOperatorForm>,
) -> Response {
    let signed = match signed_in(&state, &headers, Role::Admin).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    if !csrf_ok(&signed, &form.csrf) {
        return bad_csrf();
    }
    let username = form.username.trim().to_owned();
    let role: Role = match form.role.parse() {
        Ok(role) => role,
        Err(error) => {
            return operators_form(&state, &signed, Some(format!("role: {error}")), None).await;
        }
    };
    if let Err(error) = session::check_username(&username) {
        return operators_form(&state, &signed, Some(error), None).await;
    }
    if let Err(weak) = password::check_policy(&form.password, &username) {
        return operators_form(&state, &signed, Some(weak.to_string()), None).await;
    }
    let hash = match state.hasher.hash(&form.password).await {
        Ok(hash) => hash,
        Err(error) => return unavailable(&error),
    };
    match state.store.create_operator(&username, &hash, role).await {
        Ok(_) => {}
        Err(crate::storage::StoreError::OperatorExists(name)) => {
            return operators_form(
                &state,
                &signed,
                Some(format!("username: {name} is taken")),
                None,
            )
            .await;
        }
        Err(error) => return unavailable(&error),
    }
    if let Err(response) = audit(
        &state,
        &signed.operator.username,
        "operator.create",
        format!("operator {username}"),
        format!("role {role}"),
    )
    .await
    {
        return response;
    }
    operators_form(
        &state,
        &signed,
        None,
        Some(format!("{username} added as {role}")),
    )
    .await
}

#[derive(Deserialize)]
struct RoleForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    role: String,
}

async fn set_role<S: GatewayStore>(
    State(state): State<ConsoleState<S>>,
    headers: HeaderMap,
    Form(form): Form<RoleForm>,
) -> Response {
    let signed = match signed_in(&state, &headers, Role::Admin).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    if !csrf_ok(&signed, &form.csrf) {
        return bad_csrf();
    }
    if form.username == signed.operator.username {
        return operators_form(
            &state,
            &signed,
            Some("username: you cannot change your own role (another admin can)".into()),
            None,
        )
        .await;
    }
    let target = match state.store.operator(&form.username).await {
        Ok(Some(target)) => target,
        Ok(None) => {
            return operators_form(
                &state,
                &signed,
                Some(format!("username: no operator {:?}", form.username)),
                None,
            )
            .await;
        }
        Err(error) => return unavailable(&error),
    };
    let (role, disabled) = if form.role == "disabled" {
        (target.role, Some(Utc::now()))
    } else {
        match form.role.parse() {
            Ok(role) => (role, None),
            Err(error) => {
                return operators_form(&state, &signed, Some(format!("role: {error}")), None).await;
            }
        }
    };
    if let Err(error) = state.store.set_role(target.id, role, disabled).await {
        return unavailable(&error);
    }
    let what = if disabled.is_some() {
        "disabled".to_owned()
    } else {
        format!("role {role}")
    };
    if let Err(response) = audit(
        &state,
        &signed.operator.username,
        "operator.set_role",
        format!("operator {}", target.username),
        what.clone(),
    )
    .await
    {
        return response;
    }
    operators_form(
        &state,
        &signed,
        None,
        Some(format!("{}: {what}", target.username)),
    )
    .await
}

// ---- audit log --------------------------------------------------------------

/// One recorded action as shown.
struct AuditRow {
    at: String,
    operator: String,
    action: String,
    target: String,
    detail: String,
}

#[derive(Template)]
#[template(path = "console/audit.html")]
struct AuditPage {
    csrf: String,
    username: String,
    role: Role,
    admin: bool,
    entries: Vec<AuditRow>,
}

async fn audit_page<S: GatewayStore>(
    State(state): State<ConsoleState<S>>,
    headers: HeaderMap,
) -> Response {
    let signed = match signed_in(&state, &headers, Role::Admin).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let entries = match state.store.audit_log(200).await {
        Ok(entries) => entries,
        Err(error) => return unavailable(&error),
    };
    let nav = Nav::of(&signed);
    page(&AuditPage {
        csrf: nav.csrf,
        username: nav.username,
        role: nav.role,
        admin: nav.admin,
        entries: entries
            .into_iter()
            .map(|e| AuditRow {
                at: e.at.format("%Y-%m-%d %H:%M:%S").to_string(),
                operator: e.operator,
                action: e.action,
                target: e.target,
                detail: e.detail,
            })
            .collect(),
    })
}

// ---- password reset links (admins make them, the operator spends one) -------

/// How long a reset link works.
const RESET_VALID: chrono::TimeDelta = chrono::TimeDelta::hours(24);

#[derive(Deserialize)]
struct ResetLinkForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    username: String,
}

/// Makes a one-time reset link for another operator and shows it once.
/// The token travels in the link's fragment (`#...`), which browsers never
/// send to a server or put in a `Referer`: no secret in any URL a server
/// or proxy logs.
async fn make_reset_link<S: GatewayStore>(
    State(state): State<ConsoleState<S>>,
    headers: HeaderMap,
    Form(form): Form<ResetLinkForm>,
) -> Response {
    let signed = match signed_in(&state, &headers, Role::Admin).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    if !csrf_ok(&signed, &form.csrf) {
        return bad_csrf();
    }
    let target = match state.store.operator(&form.username).await {
        Ok(Some(target)) => target,
        Ok(None) => {
            return operators_form(
                &state,
                &signed,
                Some(format!("username: no operator {:?}", form.username)),
                None,
            )
            .await;
        }
        Err(error) => return unavailable(&error),
    };
    let token = match session::new_token() {
        Ok(token) => token,
        Err(error) => return unavailable(&error),
    };
    let expires = Utc::now() + RESET_VALID;
    if let Err(error) = state
        .store
        .create_reset(&session::digest(&token), target.id, expires)
        .await
    {
        return unavailable(&error);
    }
    if let Err(response) = audit(
        &state,
        &signed.operator.username,
        "operator.reset_link",
        format!("operator {}", target.username),
        format!("valid until {}", expires.format("%Y-%m-%d %H:%M UTC")),
    )
    .await
    {
        return response;
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("this-console");
    let scheme = if state.tls { "https" } else { "http" };
    operators_form(
        &state,
        &signed,
        None,
        Some(format!(
            "One-time link for {} (works once, for {} hours; shown only now): {scheme}://{host}/console/reset#{token}",
            target.username,
            RESET_VALID.num_hours()
        )),
    )
    .await
}

#[derive(Template)]
#[template(path = "console/reset.html")]
struct ResetPage {
    nonce: String,
    error: Option<String>,
    username: String,
}

async fn reset_page(Extension(nonce): Extension<Nonce>) -> Response {
    page(&ResetPage {
        nonce: nonce.0,
        error: None,
        username: String::new(),
    })
}

#[derive(Deserialize)]
struct ResetForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    code: String,
    #[serde(default)]
    new: String,
}

async fn reset_password<S: GatewayStore>(
    State(state): State<ConsoleState<S>>,
    Extension(nonce): Extension<Nonce>,
    client: Option<Extension<ClientAddr>>,
    Form(form): Form<ResetForm>,
) -> Response {
    let client = client.map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0.0);
    let username = form.username.trim().to_lowercase();
    let refuse = |error: String, status: StatusCode| {
        let mut response = page(&ResetPage {
            nonce: nonce.0.clone(),
            error: Some(error),
            username: username.clone(),
        });
        *response.status_mut() = status;
        response
    };
    if !state
        .client_attempts
        .check(&client, std::time::Instant::now())
        .allowed
    {
        return refuse(
            "reset: too many attempts from your address; wait a few minutes".into(),
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    // The policy first, so a weak password does not spend the link.
    if let Err(weak) = password::check_policy(&form.new, &username) {
        return refuse(weak.to_string(), StatusCode::UNPROCESSABLE_ENTITY);
    }
    let digest = session::digest(form.code.trim());
    let operator = match state.store.use_reset(&digest, &username, Utc::now()).await {
        Ok(Some(operator)) => operator,
        Ok(None) => {
            return refuse(
                "code: not a valid reset link for this username (used, expired, or mistyped); ask an admin for a new one".into(),
                StatusCode::UNPROCESSABLE_ENTITY,
            );
        }
        Err(error) => return unavailable(&error),
    };
    let hash = match state.hasher.hash(&form.new).await {
        Ok(hash) => hash,
        Err(error) => return unavailable(&error),
    };
    // Ends every session of the account.
    if let Err(error) = state.store.set_password(operator.id, &hash).await {
        return unavailable(&error);
    }
    if let Err(response) = audit(
        &state,
        &operator.username,
        "operator.password_reset",
        format!("operator {}", operator.username),
        format!("from {client}"),
    )
    .await
    {
        return response;
    }
    Redirect::to("/console/login").into_response()
}

// ---- CSP reports ------------------------------------------------------------

/// The latest CSP violation reports browsers sent (at most
/// [`CspReports::KEPT`]), for operators and the browser tests; each is
/// also logged as a warning.
#[derive(Debug, Clone, Default)]
pub struct CspReports(Arc<Mutex<std::collections::VecDeque<String>>>);

impl CspReports {
    /// How many reports are kept.
    pub const KEPT: usize = 100;

    /// The kept reports, oldest first.
    pub fn all(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|reports| reports.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn push(&self, report: String) {
        if let Ok(mut reports) = self.0.lock() {
            if reports.len() == Self::KEPT {
                reports.pop_front();
            }
            reports.push_back(report);
        }
    }
}

/// Longest report body kept (browsers send a few hundred bytes).
const MAX_REPORT_BYTES: usize = 8 * 1024;

async fn csp_report<S: GatewayStore>(
    State(state): State<ConsoleState<S>>,
    body: axum::body::Bytes,
) -> Response {
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX_REPORT_BYTES)]).into_owned();
    tracing::warn!(report = %text, "CSP violation reported by a browser");
    state.csp_reports.push(text);
    StatusCode::NO_CONTENT.into_response()
}

/// What a hostile tenant, producer or job enqueuer might put in any text
/// the console shows: markup, a script, an attribute break-out.
#[cfg(test)]
pub(super) const HOSTILE: &str = "\"'><script>alert(1)</script><img src=x onerror=alert(2)>";

/// Renders `template` and checks that [`HOSTILE`] shows only escaped: no
/// tag or attribute of its own reaches the page.
#[cfg(test)]
pub(super) fn assert_escaped(template: &impl Template) {
    let html = template.render().expect("the template renders");
    for raw in ["<script>alert", "<img src=x", "'><", "\"><script"] {
        assert!(
            !html.contains(raw),
            "{raw:?} reached the page unescaped:\n{html}"
        );
    }
    assert!(
        html.contains("&#60;script&#62;alert(1)&#60;/script&#62;"),
        "the hostile text is shown, escaped:\n{html}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_rates_come_from_two_samples() {
        let totals = |served, failed| service_runtime::RequestTotals { served, failed };
        let (rate, share) = request_rates(
            Some((Duration::from_secs(10), totals(100, 1))),
            totals(600, 6),
        );
        assert_eq!(rate, Some(50.0));
        assert_eq!(share, Some(0.01));
        // Nothing served between: a rate of zero, no share to speak of.
        assert_eq!(
            request_rates(Some((Duration::from_secs(10), totals(5, 0))), totals(5, 0)),
            (Some(0.0), None)
        );
        // A restarted app (totals went down) or no sample: unknown.
        assert_eq!(
            request_rates(
                Some((Duration::from_secs(10), totals(500, 0))),
                totals(5, 0)
            ),
            (None, None)
        );
        assert_eq!(request_rates(None, totals(5, 0)), (None, None));
    }

    #[test]
    fn durations_read_in_two_units() {
        assert_eq!(duration_words(5), "5s");
        assert_eq!(duration_words(725), "12m 5s");
        assert_eq!(duration_words(4 * 3600 + 720), "4h 12m");
        assert_eq!(duration_words(3 * 86_400 + 4 * 3600), "3d 4h");
    }
}
