//! Console sessions: a random token in a `__Host-` cookie, the session
//! row found by the token's SHA-256, idle and absolute expiry, and the
//! signed-in operator handed to pages with its role checked.

use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use sha2::Digest as _;

use super::ConsoleState;
use crate::storage::{
    GatewayStore, StoreError,
    operators::{OperatorAccount, Role},
};

/// The cookie's name. `__Host-`: the browser keeps it only if it is
/// `Secure`, has `Path=/` and no `Domain`, so no subdomain can set or
/// overwrite it.
pub(super) const COOKIE: &str = "__Host-console";

/// A session unused for less than this is not written back on every
/// request (one write per minute of activity, not per page).
const TOUCH_EVERY: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// A new session token (256 bits) as it goes into the cookie.
pub(super) fn new_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// What the database keeps of a token.
pub(super) fn digest(token: &str) -> [u8; 32] {
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// The `Set-Cookie` value that gives the browser `token` (a session
/// cookie: it ends with the browser, and the server ends it sooner).
pub(super) fn set_cookie(token: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Lax"
    ))
    .ok()
}

/// The `Set-Cookie` value that removes the cookie.
pub(super) fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("__Host-console=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0")
}

/// The session token a request carries, if any.
pub(super) fn token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| *name == COOKIE && !value.is_empty())
        .map(|(_, value)| value.to_owned())
}

/// A valid username: 1 to 64 of `a-z 0-9 . _ -`, starting with a letter
/// or digit (the same rule the PostgreSQL schema checks).
pub(super) fn check_username(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if valid {
        Ok(())
    } else {
        Err(format!(
            "username: {name:?} must be 1 to 64 of a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
        ))
    }
}

/// A live session and its operator, as a page sees it.
#[derive(Debug, Clone)]
pub(super) struct SignedIn {
    /// Who.
    pub(super) operator: OperatorAccount,
    /// The token forms carry back.
    pub(super) csrf_token: String,
    /// The session's key in the database.
    pub(super) digest: [u8; 32],
    /// Whether the second factor was given in this session.
    pub(super) second_factor: bool,
}

impl SignedIn {
    /// Whether the operator may act as `role`: its role is at least that,
    /// and an admin's powers need the second factor given.
    pub(super) fn may(&self, role: Role) -> bool {
        self.operator.role >= role && (role < Role::Admin || self.second_factor)
    }

    /// Whether this session must give (or enrol) a second factor before
    /// any other page: admins always.
    pub(super) fn needs_second_factor(&self) -> bool {
        self.operator.role == Role::Admin && !self.second_factor
    }
}

/// Why a request has no usable session.
#[derive(Debug)]
pub(super) enum NoSession {
    /// No cookie, an unknown token, or an ended session: log in.
    SignedOut,
    /// The database failed.
    Store(StoreError),
}

/// The session a request's cookie names, if it is live at `now`; an
/// expired one is deleted. Marks it used (at most once a minute).
pub(super) async fn current<S: GatewayStore>(
    state: &ConsoleState<S>,
    headers: &HeaderMap,
    now: DateTime<Utc>,
) -> Result<SignedIn, NoSession> {
    let token = token(headers).ok_or(NoSession::SignedOut)?;
    let digest = digest(&token);
    let stored = state
        .store
        .session(&digest)
        .await
        .map_err(NoSession::Store)?
        .ok_or(NoSession::SignedOut)?;
    let idle =
        chrono::TimeDelta::from_std(state.settings.idle_timeout).unwrap_or(chrono::TimeDelta::MAX);
    let lifetime = chrono::TimeDelta::from_std(state.settings.session_lifetime)
        .unwrap_or(chrono::TimeDelta::MAX);
    let ended = now - stored.last_seen_at >= idle
        || now - stored.created_at >= lifetime
        || stored.operator.disabled_at.is_some();
    if ended {
        state
            .store
            .end_session(&digest)
            .await
            .map_err(NoSession::Store)?;
        return Err(NoSession::SignedOut);
    }
    if now - stored.last_seen_at >= TOUCH_EVERY {
        state
            .store
            .touch_session(&digest, now, false)
            .await
            .map_err(NoSession::Store)?;
    }
    Ok(SignedIn {
        operator: stored.operator,
        csrf_token: stored.csrf_token,
        digest,
        second_factor: stored.second_factor_at.is_some(),
    })
}

/// Starts a session for `operator` at `now`: a new token (never one the
/// browser brought, so a planted cookie cannot become a signed-in
/// session) and a new CSRF token. Returns the cookie's token.
pub(super) async fn start<S: GatewayStore>(
    state: &ConsoleState<S>,
    operator: &OperatorAccount,
    now: DateTime<Utc>,
) -> Result<String, StartError> {
    let token = new_token()?;
    let csrf = new_token()?;
    state
        .store
        .create_session(&digest(&token), operator.id, &csrf, now)
        .await?;
    Ok(token)
}

/// Why a session could not start.
#[derive(Debug, thiserror::Error)]
pub(super) enum StartError {
    /// The OS gave no random bytes.
    #[error("random source: {0}")]
    Random(#[from] getrandom::Error),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_read_from_among_other_cookies() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("theme=dark; __Host-console=abc_-1; other=x"),
        );
        assert_eq!(token(&headers).as_deref(), Some("abc_-1"));
        headers.insert(header::COOKIE, HeaderValue::from_static("console=abc"));
        assert_eq!(token(&headers), None);
    }

    #[test]
    fn the_cookie_is_host_only_secure_http_only_and_lax() {
        let cookie = set_cookie("t0k3n").unwrap();
        assert_eq!(
            cookie.to_str().unwrap(),
            "__Host-console=t0k3n; Path=/; Secure; HttpOnly; SameSite=Lax"
        );
        let tokens: std::collections::HashSet<String> =
            (0..1000).map(|_| new_token().unwrap()).collect();
        assert_eq!(tokens.len(), 1000);
        assert!(tokens.iter().all(|t| t.len() == 43));
    }

    #[test]
    fn usernames_follow_the_schema_rule() {
        assert!(check_username("ada.lovelace-1").is_ok());
        for bad in ["", "Ada", "-ada", "ada lovelace", &"a".repeat(65)] {
            let error = check_username(bad).unwrap_err();
            assert!(error.starts_with("username: "), "{error}");
        }
    }
}
