//! Response headers every gateway answer carries, as Phoenix's
//! `put_secure_browser_headers` and stricter (this is a JSON API: nothing
//! may be framed, scripted, sniffed or cached), plus a request id that
//! ties a client's report to the gateway's logs.

use axum::{
    extract::{Request, State},
    http::{HeaderName, HeaderValue, header},
    middleware::Next,
    response::Response,
};

/// The header naming a request, on every response.
pub const REQUEST_ID: &str = "x-request-id";

tokio::task_local! {
    /// The id of the request being answered, for the problem documents
    /// built deep inside handlers.
    static CURRENT_REQUEST_ID: String;
}

/// The id of the request this task is answering, if any.
pub fn current_request_id() -> Option<String> {
    CURRENT_REQUEST_ID.try_with(Clone::clone).ok()
}

/// The headers, in the order they are set.
const SECURE: [(HeaderName, &str); 7] = [
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    ),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
    (
        HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    ),
    (
        HeaderName::from_static("cross-origin-resource-policy"),
        "same-origin",
    ),
    (
        HeaderName::from_static("permissions-policy"),
        "accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), microphone=(), payment=(), usb=()",
    ),
    // API answers are per caller: no shared or browser cache keeps them.
    (header::CACHE_CONTROL, "no-store"),
];

/// Whether the public listener serves TLS (then every answer carries
/// `Strict-Transport-Security`).
#[derive(Debug, Clone, Copy)]
pub struct ServedOverTls(pub bool);

/// Adds the secure headers (unless a handler set its own) and a request
/// id: the client's `x-request-id` when it is short and printable, else a
/// new random one.
pub async fn secure_headers(
    State(tls): State<ServedOverTls>,
    request: Request,
    next: Next,
) -> Response {
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
        .map(str::to_owned)
        .unwrap_or_else(new_request_id);
    // No span of its own: the server span stays the parent of the calls
    // the handler makes (one trace from the edge to the backends).
    let mut response = CURRENT_REQUEST_ID
        .scope(id.clone(), next.run(request))
        .await;
    let headers = response.headers_mut();
    for (name, value) in SECURE {
        headers
            .entry(name)
            .or_insert_with(|| HeaderValue::from_static(value));
    }
    if tls.0 {
        // Two years, subdomains included: the public name is HTTPS only.
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=63072000; includeSubDomains"),
        );
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        headers.insert(REQUEST_ID, value);
    }
    response
}

/// 16 random hex digits: request ids need to be unique, not secret, so a
/// per-thread generator seeded once from the OS stands in for a system
/// call per request.
fn new_request_id() -> String {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    // splitmix64: every state gives a distinct, well-mixed output.
    let mut z = STATE.with(|state| {
        let next = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(next);
        next
    });
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    format!("{z:016x}")
}

/// A seed from the OS's random source (or the time, should it fail).
fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes = nanos.to_be_bytes();
    }
    u64::from_be_bytes(bytes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_16_hex_digits_and_do_not_repeat() {
        let ids: std::collections::HashSet<String> =
            (0..10_000).map(|_| super::new_request_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(
            ids.iter()
                .all(|id| id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit()))
        );
    }
}
