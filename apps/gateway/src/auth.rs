//! Authentication at the edge: every `/v1` route but the status needs an
//! API key (`Authorization: Bearer plk...`), checked against the store; a
//! refused key gets the same `401` whatever the reason, and the reason
//! goes to the audit log (never the secret). The key's tenant, not the
//! request body, decides whose data a request may touch.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    extract::{Request, State},
    http::header,
    middleware::Next,
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use security::audit::{AuditEvent, AuditOutcome};

use crate::{
    keys::{KeyId, TenantId},
    limits::{ClientAddr, Decision, Limits, with_key_headers},
    problem::ApiError,
    storage::GatewayStore,
    tenancy::{self, Authenticated, Peppers},
};

/// How often a key's last use is written: at most once a minute per key,
/// off the request path.
pub const LAST_USED_EVERY: Duration = Duration::from_secs(60);

/// What authentication needs.
#[derive(Debug, Clone)]
pub struct AuthState<S> {
    /// Tenants and keys.
    pub store: S,
    /// The peppers keys are checked under (shared: the state is cloned
    /// per request, the secrets are not).
    pub peppers: Arc<Peppers>,
    /// Last-use times waiting to be written.
    pub usage: UsageLog,
    /// The per-key and failed-authentication rate limits.
    pub limits: Limits,
    /// Stored keys read recently (`GATEWAY_KEY_CACHE_TTL`).
    pub cache: tenancy::KeyCache,
}

/// Keys used since the last write, and when each was last written.
#[derive(Debug, Clone, Default)]
pub struct UsageLog(Arc<Mutex<Usage>>);

#[derive(Debug, Default)]
struct Usage {
    pending: HashMap<(TenantId, KeyId), DateTime<Utc>>,
    written: HashMap<(TenantId, KeyId), DateTime<Utc>>,
}

impl UsageLog {
    /// Notes a use; cheap, never touches the database.
    pub fn record(&self, tenant: &TenantId, key: &KeyId, at: DateTime<Utc>) {
        let mut usage = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let id = (tenant.clone(), key.clone());
        let due = usage.written.get(&id).is_none_or(|last| {
            at.signed_duration_since(*last).to_std().unwrap_or_default() >= LAST_USED_EVERY
        });
        if due {
            usage.pending.insert(id, at);
        }
    }

    /// Writes the pending uses (the background task calls this once a
    /// minute, and once more at shutdown).
    pub async fn flush(&self, store: &impl GatewayStore) {
        let pending: Vec<(TenantId, KeyId, DateTime<Utc>)> = {
            let mut usage = self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let pending: Vec<_> = usage.pending.drain().collect();
            for ((tenant, key), at) in &pending {
                usage.written.insert((tenant.clone(), key.clone()), *at);
            }
            pending.into_iter().map(|((t, k), at)| (t, k, at)).collect()
        };
        if let Err(error) = store.touch_keys(&pending).await {
            // Last-use times are a convenience: losing a minute's worth is
            // better than failing requests over it.
            tracing::warn!(%error, keys = pending.len(), "could not record API key use");
        }
    }
}

/// The middleware: authenticates the bearer key and hands the handler an
/// [`Authenticated`] in the request's extensions. A refused request's body
/// is read and discarded before the answer (see [`discard_body`]).
pub async fn require_key<S: GatewayStore>(
    State(state): State<Arc<AuthState<S>>>,
    mut request: Request,
    next: Next,
) -> Response {
    let client = request.extensions().get::<ClientAddr>().map(|c| c.0);
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let authenticated = authenticate(&state, client, presented).await;
    match authenticated {
        Ok((caller, decision)) => {
            request.extensions_mut().insert(caller);
            with_key_headers(next.run(request).await, &state.limits, decision)
        }
        Err(refusal) => {
            discard_body(request.into_body()).await;
            refusal
        }
    }
}

/// The caller and its key's rate-limit state, or the answer refusing it.
async fn authenticate<S: GatewayStore>(
    state: &AuthState<S>,
    client: Option<std::net::IpAddr>,
    presented: Option<&str>,
) -> Result<(Authenticated, Decision), Response> {
    if let Some(client) = client {
        state
            .limits
            .may_authenticate(client)
            .map_err(IntoResponse::into_response)?;
    }
    let presented = presented.ok_or_else(|| ApiError::Unauthenticated.into_response())?;
    let now = Utc::now();
    match tenancy::authenticate_cached(&state.store, &state.cache, &state.peppers, presented, now)
        .await
    {
        Ok(Ok(caller)) => {
            let decision = state
                .limits
                .check_key(&caller.tenant, &caller.key)
                .map_err(IntoResponse::into_response)?;
            state.usage.record(&caller.tenant, &caller.key, now);
            Ok((caller, decision))
        }
        Ok(Err(refusal)) => {
            if let Some(client) = client {
                state.limits.failed_authentication(client);
            }
            // The key's public part names what was tried; the secret never
            // leaves this function.
            let tried = crate::keys::ApiKey::parse(presented).map_or_else(
                |_| "a malformed key".to_owned(),
                |key| format!("key {}/{}", key.tenant, key.id),
            );
            let actor =
                client.map_or_else(|| "unknown client".to_owned(), |c| format!("client {c}"));
            security::audit::record(&AuditEvent {
                actor: &actor,
                action: "api.authenticate",
                target: &format!("{tried} ({})", refusal.as_str()),
                outcome: AuditOutcome::Denied,
            });
            Err(ApiError::Unauthenticated.into_response())
        }
        Err(error) => {
            tracing::error!(%error, "the key store failed");
            Err(ApiError::Unavailable.into_response())
        }
    }
}

/// The most of a refused request's body read before answering, and for
/// how long.
const DISCARD_BYTES: usize = 8 * 1024 * 1024;
const DISCARD_FOR: Duration = Duration::from_secs(5);

/// Reads and drops what is left of a refused request's body (up to the
/// largest body a route takes, for at most a few seconds), as nginx's
/// lingering close does: an HTTP/1.1 client still sending a large body
/// when the answer comes would otherwise see the connection reset and
/// lose the `401` it should read.
pub(crate) async fn discard_body(body: axum::body::Body) {
    let _ = tokio::time::timeout(DISCARD_FOR, axum::body::to_bytes(body, DISCARD_BYTES)).await;
}

/// [`discard_body`] for a body a handler was reading as a stream when it
/// refused the request (the streaming publish).
pub(crate) async fn discard_rest(
    chunks: &mut (impl futures_util::Stream<Item = Result<axum::body::Bytes, axum::Error>> + Unpin),
) {
    use futures_util::StreamExt as _;
    let drain = async {
        let mut dropped = 0;
        while let Some(Ok(chunk)) = chunks.next().await {
            dropped += chunk.len();
            if dropped > DISCARD_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DISCARD_FOR, drain).await;
}

/// The authenticated caller, refused with `403` unless its key has `scope`.
pub fn with_scope<'a>(
    caller: &'a Authenticated,
    scope: &'static str,
) -> Result<&'a Authenticated, ApiError> {
    if caller.scopes.iter().any(|s| s == scope) {
        Ok(caller)
    } else {
        Err(ApiError::MissingScope(scope))
    }
}
