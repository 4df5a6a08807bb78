//! Limits that keep one client from taking the gateway from the others:
//! rate limits per client address (before authentication) and per API key
//! (after), a separate budget for failed authentications per address, a
//! cap on requests in flight (load shedding) and a deadline per request.
//!
//! Refusals are `429` with `Retry-After` and the `RateLimit` and
//! `RateLimit-Policy` fields of draft-ietf-httpapi-ratelimit-headers-11,
//! or `503` with `Retry-After` when the gateway sheds load. The limits are
//! per replica: with several replicas, divide the quotas by their number
//! (a shared limit in PostgreSQL is the next step, see the runbook).
//!
//! The client address is the TCP peer's, unless the peer is one of the
//! configured trusted proxies: then it is the right-most address in
//! `X-Forwarded-For` that is not itself a trusted proxy.

pub mod gcra;

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderValue},
    middleware::Next,
    response::{IntoResponse, Response},
};
use security::AllowedNet;
use tokio::sync::Semaphore;

use crate::{
    keys::{KeyId, TenantId},
    problem::ApiError,
};
pub use gcra::{Decision, Limiter, Quota};

/// The gateway's limits, shared by every request.
#[derive(Debug, Clone)]
pub struct Limits(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    per_client: Limiter<IpAddr>,
    per_key: Limiter<(TenantId, KeyId)>,
    failed_auth: Limiter<IpAddr>,
    in_flight: Semaphore,
    request_timeout: Duration,
    trusted_proxies: Vec<AllowedNet>,
}

/// The limits' settings (see the gateway's configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitSettings {
    /// Requests per minute from one client address.
    pub per_client: Quota,
    /// Requests per minute with one API key.
    pub per_key: Quota,
    /// Failed authentications per minute from one client address.
    pub failed_auth: Quota,
    /// Requests in flight at once; more are shed with `503`.
    pub max_in_flight: usize,
    /// The longest one request may take.
    pub request_timeout: Duration,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<AllowedNet>,
}

/// The policy names in the `RateLimit` headers.
const CLIENT_POLICY: &str = "per-client";
const KEY_POLICY: &str = "per-key";
const FAILED_AUTH_POLICY: &str = "failed-auth";

/// The client address a request came from, after trusted proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

impl Limits {
    /// The limits from their settings.
    pub fn new(settings: &LimitSettings) -> Self {
        Self(Arc::new(Shared {
            per_client: Limiter::new(settings.per_client),
            per_key: Limiter::new(settings.per_key),
            failed_auth: Limiter::new(settings.failed_auth),
            in_flight: Semaphore::new(settings.max_in_flight),
            request_timeout: settings.request_timeout,
            trusted_proxies: settings.trusted_proxies.clone(),
        }))
    }

    /// The client address of a request from `peer` with these headers.
    pub fn client_addr(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        client_addr(peer, headers, &self.0.trusted_proxies)
    }

    /// Counts a request with the tenant's API key `key` (its public id);
    /// `Err` is the `429` to send.
    pub fn check_key(&self, tenant: &TenantId, key: &KeyId) -> Result<Decision, Refused> {
        let decision = self
            .0
            .per_key
            .check(&(tenant.clone(), key.clone()), Instant::now());
        if decision.allowed {
            Ok(decision)
        } else {
            Err(Refused {
                policy: KEY_POLICY,
                quota: self.0.per_key.quota(),
                decision,
            })
        }
    }

    /// Whether `client` may try to authenticate; `Err` is the `429` once it
    /// has failed too often.
    pub fn may_authenticate(&self, client: IpAddr) -> Result<(), Refused> {
        let decision = self
            .0
            .failed_auth
            .peek(&client_bucket(client), Instant::now());
        if decision.allowed {
            Ok(())
        } else {
            Err(Refused {
                policy: FAILED_AUTH_POLICY,
                quota: self.0.failed_auth.quota(),
                decision,
            })
        }
    }

    /// Counts a failed authentication from `client`.
    pub fn failed_authentication(&self, client: IpAddr) {
        self.0
            .failed_auth
            .check(&client_bucket(client), Instant::now());
    }

    /// Forgets idle clients and keys; the gateway runs it once a minute.
    pub fn forget_idle(&self) {
        let now = Instant::now();
        self.0.per_client.forget_idle(now);
        self.0.per_key.forget_idle(now);
        self.0.failed_auth.forget_idle(now);
    }
}

/// A rate limit refused a request: the `429` to send.
#[derive(Debug, Clone, Copy)]
pub struct Refused {
    policy: &'static str,
    quota: Quota,
    decision: Decision,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        too_many(self.policy, self.quota, self.decision)
    }
}

/// The middleware on every route: load shedding, the deadline and the
/// per-client rate limit; hands the handlers the [`ClientAddr`].
pub async fn guard(State(limits): State<Limits>, mut request: Request, next: Next) -> Response {
    let Ok(_permit) = limits.0.in_flight.try_acquire() else {
        return ApiError::Overloaded.into_response();
    };
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    let client = limits.client_addr(peer, request.headers());
    let decision = limits
        .0
        .per_client
        .check(&client_bucket(client), Instant::now());
    if !decision.allowed {
        return too_many(CLIENT_POLICY, limits.0.per_client.quota(), decision);
    }
    request.extensions_mut().insert(ClientAddr(client));
    match tokio::time::timeout(limits.0.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout.into_response(),
    }
}

/// Adds the `RateLimit` fields of the key's quota to an allowed answer.
pub fn with_key_headers(mut response: Response, limits: &Limits, decision: Decision) -> Response {
    set_headers(
        response.headers_mut(),
        KEY_POLICY,
        limits.0.per_key.quota(),
        decision,
    );
    response
}

/// The `429` for `policy`.
fn too_many(policy: &str, quota: Quota, decision: Decision) -> Response {
    let mut response = ApiError::RateLimited.into_response();
    let headers = response.headers_mut();
    set_headers(headers, policy, quota, decision);
    headers.insert(
        axum::http::header::RETRY_AFTER,
        HeaderValue::from(ceil_secs(decision.retry_after).max(1)),
    );
    response
}

/// `RateLimit-Policy: "<policy>";q=<quota>;w=<window>` and
/// `RateLimit: "<policy>";r=<remaining>;t=<reset>` (seconds, rounded up).
fn set_headers(headers: &mut HeaderMap, policy: &str, quota: Quota, decision: Decision) {
    let policy_field = format!(
        "\"{policy}\";q={};w={}",
        quota.quota,
        quota.window.as_secs()
    );
    let state_field = format!(
        "\"{policy}\";r={};t={}",
        decision.remaining,
        ceil_secs(decision.reset)
    );
    for (name, value) in [
        ("ratelimit-policy", policy_field),
        ("ratelimit", state_field),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
}

fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// The key a client address is limited under: IPv4 addresses one by one,
/// IPv6 by their /64 (one host commonly holds a whole /64).
fn client_bucket(client: IpAddr) -> IpAddr {
    match client.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// The client behind `peer`: the peer itself unless it is a trusted proxy;
/// then the right-most `X-Forwarded-For` entry that is not a trusted proxy
/// (entries left of it were written by the client and prove nothing).
fn client_addr(peer: IpAddr, headers: &HeaderMap, trusted: &[AllowedNet]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for entry in forwarded.iter().rev() {
        match entry.parse::<IpAddr>() {
            Ok(ip) if is_trusted(ip) => continue,
            Ok(ip) => return ip,
            // A malformed entry ends what can be believed: the proxy
            // next to it is the last known hop.
            Err(_) => break,
        }
    }
    peer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in xff {
            headers.append("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn ip(raw: &str) -> IpAddr {
        raw.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
        let trusted = [AllowedNet::parse("10.0.0.0/8").unwrap()];
        let spoofed = headers(&["203.0.113.9"]);
        assert_eq!(
            client_addr(ip("198.51.100.7"), &spoofed, &trusted),
            ip("198.51.100.7"),
            "an untrusted peer's header is ignored"
        );
        assert_eq!(
            client_addr(ip("198.51.100.7"), &spoofed, &[]),
            ip("198.51.100.7"),
            "nothing is trusted by default"
        );
        // Through two trusted proxies; the client prepended a lie.
        let chain = headers(&["1.2.3.4, 203.0.113.9", "10.1.1.1"]);
        assert_eq!(
            client_addr(ip("10.0.0.2"), &chain, &trusted),
            ip("203.0.113.9")
        );
        let garbage = headers(&["not-an-ip"]);
        assert_eq!(
            client_addr(ip("10.0.0.2"), &garbage, &trusted),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        assert_eq!(
            client_bucket(ip("2001:db8:1:2:aaaa::1")),
            client_bucket(ip("2001:db8:1:2:bbbb::9"))
        );
        assert_ne!(
            client_bucket(ip("2001:db8:1:2::1")),
            client_bucket(ip("2001:db8:1:3::1"))
        );
        assert_eq!(client_bucket(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }

    #[test]
    fn a_refusal_carries_the_draft_headers() {
        let quota = Quota::per_minute(2);
        let limiter = Limiter::new(quota);
        let now = Instant::now();
        limiter.check(&1, now);
        limiter.check(&1, now);
        let response = too_many(KEY_POLICY, quota, limiter.check(&1, now));
        assert_eq!(response.status(), 429);
        let header = |name: &str| response.headers()[name].to_str().unwrap().to_owned();
        assert_eq!(header("retry-after"), "30");
        assert_eq!(header("ratelimit-policy"), "\"per-key\";q=2;w=60");
        assert_eq!(header("ratelimit"), "\"per-key\";r=0;t=60");
    }
}
