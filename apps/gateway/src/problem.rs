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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
    /// Fields of the request are wrong; every one is listed.
    #[error("the request is invalid")]
    Invalid(Vec<FieldError>),
    /// A backend is unavailable or shedding load: retry later.
    #[error("the platform is unavailable; retry later")]
    Unavailable,
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

    fn status_and_type(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            Self::MissingScope(_) => (StatusCode::FORBIDDEN, "missing-scope"),
            Self::OtherTenant { .. } => (StatusCode::FORBIDDEN, "other-tenant"),
            Self::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-request"),
            Self::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// The problem document.
#[derive(Debug, Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: String,
    status: u16,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    errors: &'a [FieldError],
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
            errors: &fields,
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
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
