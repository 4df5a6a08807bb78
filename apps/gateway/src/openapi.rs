//! The API's OpenAPI 3.1 document, generated from the handlers and types
//! (utoipa), served at `/openapi.json` with an offline docs page at
//! `/docs` (Swagger UI compiled into the binary). Routes are registered
//! under the paths the document gives them ([`route`]), so a route
//! cannot exist undocumented or at another path than documented.

use axum::{
    Router,
    http::{HeaderValue, header},
    routing::MethodRouter,
};
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use crate::{
    problem::{self, Problem},
    readings, results, routes, webhooks,
};

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Platform API",
        description = "Publish sensor readings and read their window statistics and anomaly scores. \
Every request but `GET /v1/status` needs an API key: `Authorization: Bearer plk.<tenant>.<id>.<secret>`. \
Errors are RFC 9457 problem documents.",
    ),
    paths(
        routes::status,
        readings::publish,
        crate::stream::publish_stream,
        readings::series,
        results::list,
        webhooks::create,
        webhooks::list,
        webhooks::delete,
        webhooks::rotate_secret,
        webhooks::enable,
        webhooks::send_test,
        webhooks::deliveries,
        webhooks::retry,
    ),
    components(schemas(Problem, problem::FieldError)),
    modifiers(&BearerKeys, &Links),
    tags(
        (name = "readings", description = "Publishing readings"),
        (name = "results", description = "Window statistics and anomaly scores"),
        (name = "webhooks", description = "Endpoints that receive events, and their delivery log"),
        (name = "platform", description = "The platform's state"),
    )
)]
pub struct ApiDoc;

/// Declares the bearer API key scheme.
struct BearerKeys;

impl Modify for BearerKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("plk.<tenant>.<id>.<secret>")
                    .description(Some(
                        "An API key of the tenant, with the scope the route names.",
                    ))
                    .build(),
            ),
        );
    }
}

/// OpenAPI links: where the ids a response carries can be used next, so
/// clients (and schemathesis' stateful phase) can follow them.
struct Links;

impl Modify for Links {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{RefOr, link::LinkBuilder};
        let endpoint = "$response.body#/endpoint/endpoint_id";
        let delivery = "$response.body#/delivery/delivery_id";
        let add = |openapi: &mut utoipa::openapi::OpenApi,
                   path: &str,
                   status: &str,
                   links: &[(&str, &str, &str, &str)]| {
            let Some(item) = openapi.paths.paths.get_mut(path) else {
                return;
            };
            let Some(operation) = item.post.as_mut() else {
                return;
            };
            let Some(RefOr::T(response)) = operation.responses.responses.get_mut(status) else {
                return;
            };
            for (name, operation_id, parameter, value) in links {
                response.links.insert(
                    (*name).to_owned(),
                    RefOr::T(
                        LinkBuilder::new()
                            .operation_id(*operation_id)
                            .parameter(*parameter, serde_json::Value::from(*value))
                            .build(),
                    ),
                );
            }
        };
        add(
            openapi,
            "/v1/webhooks",
            "201",
            &[
                ("DeleteEndpoint", "delete", "endpoint_id", endpoint),
                ("RotateSecret", "rotate_secret", "endpoint_id", endpoint),
                ("EnableEndpoint", "enable", "endpoint_id", endpoint),
                ("SendTestEvent", "send_test", "endpoint_id", endpoint),
                ("ListDeliveries", "deliveries", "endpoint_id", endpoint),
            ],
        );
        add(
            openapi,
            "/v1/webhooks/{endpoint_id}/test",
            "202",
            &[("RetryDelivery", "retry", "delivery_id", delivery)],
        );
    }
}

/// The document, with the package version.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut document = ApiDoc::openapi();
    document.info.version = env!("CARGO_PKG_VERSION").to_owned();
    document
}

/// Adds `handler` at the path `P` documents.
pub fn route<P: utoipa::Path, S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    handler: MethodRouter<S>,
) -> Router<S> {
    router.route(&P::path(), handler)
}

/// The Swagger UI page's policy: its own script and styles (inline styles
/// included, which Swagger UI sets), the document from this origin, and
/// still no framing.
const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// `/openapi.json` and the docs page under `/docs`.
pub fn docs_router() -> Router {
    let swagger = utoipa_swagger_ui::SwaggerUi::new("/docs").url("/openapi.json", document());
    Router::from(swagger).layer(axum::middleware::map_response(
        |mut response: axum::response::Response| async move {
            response.headers_mut().insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(DOCS_CSP),
            );
            // The page and document are public and the same for everyone.
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            );
            response
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_keyed_route_declares_every_error_the_edge_can_answer() {
        let document = document();
        let mut keyed = 0;
        for (path, item) in &document.paths.paths {
            for (method, operation) in [
                ("get", &item.get),
                ("post", &item.post),
                ("delete", &item.delete),
            ] {
                let Some(operation) = operation else { continue };
                let declared: Vec<&str> = operation
                    .responses
                    .responses
                    .keys()
                    .map(String::as_str)
                    .collect();
                let mut needed = vec!["429", "503", "504"];
                if operation.security.is_some() {
                    keyed += 1;
                    needed.extend(["401", "403", "500"]);
                }
                for status in needed {
                    assert!(
                        declared.contains(&status),
                        "{method} {path} does not declare {status}: {declared:?}"
                    );
                }
            }
        }
        assert!(keyed >= 2, "the keyed routes are in the document");
        let json = document.to_json().unwrap();
        assert!(json.starts_with(r#"{"openapi":"3.1.0""#), "{}", &json[..40]);
    }
}
