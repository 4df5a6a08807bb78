//! The one place the gateway's errors become HTTP: RFC 9457
//! `application/problem+json` with a stable `type` per kind, the fields at
//! fault and the request's id; never a stack trace, SQL or a backend's
//! address.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

/// A field at fault and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// A JSON path into the request, e.g. `readings[3].observed_at`.
    pub field: String,
    /// What is wrong, e.g. `must be an RFC 3339 time`.
    pub problem: String,
}

/// Every way a request can fail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// No key, or one that is refused (the same answer for every reason).
    #[error("a valid API key is required")]
    Unauthenticated,
    /// The key lacks the scope the route needs.
    #[error("this key lacks the scope {0}")]
    MissingScope(&'static str),
    /// The request names another tenant's data.
    #[error("{field}: names another tenant than the key's")]
    OtherTenant {
        /// Where.
        field: String,
    },
    /// No such route or object (also the answer for another tenant's).
    #[error("not found")]
    NotFound,
    /// The object's state or a per-tenant limit does not allow this.
    #[error("{0}")]
    Conflict(String),
    /// Fields of the request are wrong; every one is listed.
    #[error("the request is invalid")]
    Invalid(Vec<FieldError>),
    /// A backend is unavailable or shedding load: retry later.
    #[error("the platform is unavailable; retry later")]
    Unavailable,
    /// A rate limit is used up (the `RateLimit` headers say which).
    #[error("too many requests; retry after the time in Retry-After")]
    RateLimited,
    /// The tenant's daily readings quota would be passed: retry tomorrow
    /// (UTC) or ask for more.
    #[error(
        "this batch would pass the tenant's quota of {quota} readings a day ({used} used today)"
    )]
    QuotaExceeded {
        /// The quota.
        quota: u64,
        /// Readings counted today.
        used: u64,
    },
    /// The gateway has as many requests in flight as it takes: retry later.
    #[error("the gateway is overloaded; retry later")]
    Overloaded,
    /// The request took longer than the gateway's deadline.
    #[error("the request took too long and was abandoned")]
    Timeout,
    /// The body is not JSON (`Content-Type` must be `application/json`).
    #[error("the request body must be application/json")]
    UnsupportedMediaType,
    /// The body is larger than the route takes.
    #[error("the request body is larger than this route accepts")]
    TooLarge,
    /// A fault on our side.
    #[error("an internal error occurred; it was logged")]
    Internal,
}

impl ApiError {
    /// One invalid field.
    pub fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldError {
            field: field.into(),
            problem: problem.into(),
        }])
    }

    /// A JSON body axum could not take: too large, not JSON, or a field
    /// of the wrong shape (named by its path, e.g. `readings[2].value`).
    pub fn from_json(rejection: &axum::extract::rejection::JsonRejection) -> Self {
        use axum::extract::rejection::JsonRejection;
        match rejection {
            JsonRejection::MissingJsonContentType(_) => Self::UnsupportedMediaType,
            _ if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => Self::TooLarge,
            JsonRejection::JsonDataError(error) => {
                // "...target type: <path>: <problem> at line 1 column 9"
                let text = error.body_text();
                let detail = text
                    .split_once("target type: ")
                    .map_or(text.as_str(), |(_, d)| d);
                let detail = detail.rsplit_once(" at line ").map_or(detail, |(d, _)| d);
                match detail.split_once(": ") {
                    Some((path, problem)) if !path.contains(' ') => Self::invalid(path, problem),
                    _ => Self::invalid("body", detail),
                }
            }
            _ => Self::invalid("body", "is not valid JSON"),
        }
    }

    fn status_and_type(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            Self::MissingScope(_) => (StatusCode::FORBIDDEN, "missing-scope"),
            Self::OtherTenant { .. } => (StatusCode::FORBIDDEN, "other-tenant"),
            Self::NotFound => (StatusCode::NOT_FOUND, "not-found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-request"),
            Self::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate-limited"),
            Self::QuotaExceeded { .. } => (StatusCode::TOO_MANY_REQUESTS, "quota-exceeded"),
            Self::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            Self::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            Self::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "too-large"),
            Self::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type")
            }
            Self::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// An RFC 9457 problem document: every error the API answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A stable URI per kind of error, e.g.
    /// `https://platform.example/problems/rate-limited`.
    #[serde(rename = "type")]
    kind: String,
    /// What went wrong, for people.
    title: String,
    /// The HTTP status, repeated.
    status: u16,
    /// Every field at fault (invalid requests).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<FieldError>,
    /// The request's `X-Request-Id`, to quote when reporting it.
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<String>,
}

/// Where problem types are documented.
const PROBLEM_BASE: &str = "https://platform.example/problems/";

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind) = self.status_and_type();
        let fields = match &self {
            Self::Invalid(fields) => fields.clone(),
            Self::OtherTenant { field } => vec![FieldError {
                field: field.clone(),
                problem: "names another tenant than the key's".into(),
            }],
            _ => Vec::new(),
        };
        let problem = Problem {
            kind: format!("{PROBLEM_BASE}{kind}"),
            title: self.to_string(),
            status: status.as_u16(),
            errors: fields,
            request_id: crate::headers::current_request_id(),
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Self::QuotaExceeded { .. } = &self {
            // The quota renews at midnight UTC.
            let now = chrono::Utc::now();
            let midnight = (now.date_naive() + chrono::Days::new(1))
                .and_hms_opt(0, 0, 0)
                .map(|t| t.and_utc());
            let wait = midnight.map_or(3600, |m| (m - now).num_seconds().max(1));
            if let Ok(value) = HeaderValue::from_str(&wait.to_string()) {
                headers.insert(header::RETRY_AFTER, value);
            }
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
