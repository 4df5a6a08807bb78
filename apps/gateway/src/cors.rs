//! CORS: nothing by default (a browser page on another origin can neither
//! read an answer nor send a preflighted request), and exactly the origins
//! in `GATEWAY_CORS_ORIGINS` when set. API keys travel in the
//! `Authorization` header, never in cookies, so credentials are never
//! allowed.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

/// The origins allowed to call the API from a browser.
#[derive(Debug, Clone, Default)]
pub struct AllowedOrigins(Arc<Vec<String>>);

impl AllowedOrigins {
    /// Exactly these origins (`https://app.example`, no path).
    pub fn new(origins: Vec<String>) -> Self {
        Self(Arc::new(origins))
    }

    fn allows<'a>(&self, headers: &'a HeaderMap) -> Option<&'a HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        let text = origin.to_str().ok()?;
        self.0.iter().any(|o| o == text).then_some(origin)
    }
}

/// What a preflight may ask for.
const ALLOW_METHODS: &str = "GET, POST, DELETE";
const ALLOW_HEADERS: &str = "authorization, content-type, x-request-id";
/// Headers a page may read from an answer.
const EXPOSE_HEADERS: &str = "x-request-id, ratelimit, ratelimit-policy, retry-after";
/// How long a browser may cache a preflight.
const MAX_AGE_SECONDS: &str = "600";

/// Answers preflights from allowed origins and marks their answers
/// readable; every other origin gets no CORS header at all.
pub async fn cors(State(allowed): State<AllowedOrigins>, request: Request, next: Next) -> Response {
    let Some(origin) = allowed.allows(request.headers()).cloned() else {
        return next.run(request).await;
    };
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOW_METHODS),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(MAX_AGE_SECONDS),
        );
        response
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSE_HEADERS),
    );
    headers.append(header::VARY, HeaderValue::from_static("origin"));
    response
}
