//! What every console answer carries and every console request passes:
//! a fresh CSP nonce per request (the only scripts that run are ours,
//! served from `/console/static`, and carry it), no framing, no caching,
//! and the cross-origin check on state-changing requests (Go 1.25's
//! `CrossOriginProtection`, as tower-http 0.7's CSRF layer does it: the
//! browser's `Sec-Fetch-Site`, else `Origin` against `Host`). Forms also
//! carry the session's CSRF token, checked by each handler, so a browser
//! that sends neither header is covered too.

use axum::{
    extract::Request,
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse as _, Response},
};
use base64::Engine as _;

/// This request's CSP nonce, for the templates.
#[derive(Debug, Clone)]
pub(super) struct Nonce(pub(super) String);

/// Where browsers send CSP violation reports.
pub(super) const REPORT_PATH: &str = "/console/csp-report";

/// The policy for a page whose scripts carry `nonce`.
pub(super) fn content_security_policy(nonce: &str) -> String {
    format!(
        "default-src 'none'; script-src 'nonce-{nonce}' 'strict-dynamic'; style-src 'self'; \
         img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
         base-uri 'none'; object-src 'none'; report-uri {REPORT_PATH}; report-to csp"
    )
}

fn new_nonce() -> String {
    let mut bytes = [0u8; 16];
    // Without the OS's random source no page can be served safely.
    if getrandom::fill(&mut bytes).is_err() {
        return String::new();
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Whether a state-changing request comes from the console's own pages.
pub(super) fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        // `none`: the user acted directly (typed, bookmarked).
        return matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        // Neither header: not a browser of this decade; the form's CSRF
        // token still has to match.
        return true;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, rest)| rest);
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

/// The middleware on every console route.
pub(super) async fn guard(mut request: Request, next: Next) -> Response {
    let unsafe_method = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    // CSP reports come from the browser itself, cross-origin by nature.
    let exempt = request.uri().path() == REPORT_PATH;
    if unsafe_method && !exempt && !same_origin(request.headers()) {
        let mut refused = (
            StatusCode::FORBIDDEN,
            "cross-site request refused: console forms work only from the console's own pages\n",
        )
            .into_response();
        harden(refused.headers_mut(), &new_nonce());
        return refused;
    }
    let nonce = new_nonce();
    request.extensions_mut().insert(Nonce(nonce.clone()));
    let mut response = next.run(request).await;
    harden(response.headers_mut(), &nonce);
    response
}

fn harden(headers: &mut HeaderMap, nonce: &str) {
    if let Ok(csp) = HeaderValue::from_str(&content_security_policy(nonce)) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    headers.insert(
        HeaderName::from_static("reporting-endpoints"),
        HeaderValue::from_static("csp=\"/console/csp-report\""),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn cross_site_requests_are_told_apart_from_same_origin_ones() {
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(same_origin(&headers(&[("sec-fetch-site", "none")])));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "same-site")])));
        // Fetch metadata wins over Origin.
        assert!(!same_origin(&headers(&[
            ("sec-fetch-site", "cross-site"),
            ("origin", "https://console.example"),
            ("host", "console.example"),
        ])));
        assert!(same_origin(&headers(&[
            ("origin", "https://console.example:8443"),
            ("host", "console.example:8443"),
        ])));
        assert!(!same_origin(&headers(&[
            ("origin", "https://evil.example"),
            ("host", "console.example"),
        ])));
        assert!(!same_origin(&headers(&[
            ("origin", "null"),
            ("host", "console.example")
        ])));
        assert!(same_origin(&headers(&[("host", "console.example")])));
    }

    #[test]
    fn every_nonce_is_new_and_in_the_policy() {
        let (a, b) = (new_nonce(), new_nonce());
        assert_ne!(a, b);
        assert_eq!(a.len(), 24);
        let policy = content_security_policy(&a);
        assert!(policy.contains(&format!("script-src 'nonce-{a}' 'strict-dynamic'")));
        assert!(policy.contains("frame-ancestors 'none'"));
        assert!(policy.contains("object-src 'none'"));
        assert!(policy.contains("base-uri 'none'"));
    }
}
