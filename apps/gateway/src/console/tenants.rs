//! The tenants pages: every tenant with its state and limits, and one
//! tenant's API keys, which operators create, revoke and rotate (the new
//! secret shown once, on a page no cache keeps). The gateway owns tenants
//! and keys, so these act on its own store, with the same functions the
//! `gateway keys` commands use; every change is in the audit log.

use askama::Template;
use axum::{
    Form,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};

use super::{
    ConsoleState,
    pages::{
        ConfirmPage, Nav, TokenOnly, as_operator, audit, bad_csrf, csrf_ok, page, signed_in,
        unavailable,
    },
    session::SignedIn,
};
use crate::{
    keys::{KeyId, SCOPES, TenantId},
    storage::{GatewayStore, StoreError, operators::Role},
    tenancy::{self, TenancyError},
};

/// How long a rotated key keeps working beside its replacement.
const ROTATION_OVERLAP: chrono::TimeDelta = chrono::TimeDelta::hours(24);

fn when(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(String::new, |t| t.format("%Y-%m-%d %H:%M").to_string())
}

fn limit(value: Option<u64>) -> String {
    value.map_or_else(|| "default".to_owned(), |v| v.to_string())
}

/// One tenant's row.
struct TenantRow {
    id: String,
    name: String,
    state: &'static str,
    created: String,
    readings_per_day: String,
    max_series: String,
    retention_days: String,
}

#[derive(Template)]
#[template(path = "console/tenants.html")]
struct TenantsPage {
    csrf: String,
    username: String,
    role: Role,
    admin: bool,
    tenants: Vec<TenantRow>,
}

pub(super) async fn list<S: GatewayStore>(
    State(state): State<ConsoleState<S>>,
    headers: HeaderMap,
) -> Response {
    let signed = match signed_in(&state, &headers, Role::Viewer).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let tenants = match state.store.list_tenants().await {
        Ok(tenants) => tenants,
        Err(error) => return unavailable(&error),
    };
    let nav = Nav::of(&signed);
    page(&TenantsPage {
        csrf: nav.csrf,
        username: nav.username,
        role: nav.role,
        admin: nav.admin,
        tenants: tenants
            .into_iter()
            .map(|t| TenantRow {
                id: t.id.to_string(),
                name: t.name,
                state: t.state.as_str(),
                created: when(Some(t.created_at)),
                readings_per_day: limit(t.readings_per_day),
                max_series: limit(t.max_series),
                retention_days: limit(t.retention_days),
            })
            .collect(),
    })
}

/// One webhook delivery's row.
struct DeliveryRow {
    id: String,
    event: String,
    state: String,
    attempts: i32,
    last_status: String,
    last_error: String,
    updated: String,
}

/// One webhook endpoint with its latest deliveries.
struct EndpointRow {
    id: String,
    url: String,
    description: String,
    events: String,
    enabled: bool,
    disabled_reason: String,
    deliveries: Vec<DeliveryRow>,
}

/// Deliveries shown per endpoint.
const DELIVERIES: u32 = 10;

/// The tenant's webhook endpoints with their latest deliveries, from the
/// worker acting for the operator; `Err` names why they could not be read
/// (the page shows the keys anyway).
async fn webhooks<S>(
    state: &ConsoleState<S>,
    signed: &SignedIn,
    tenant: &TenantId,
) -> Result<Vec<EndpointRow>, String> {
    use contracts::webhooks::v1::{self as hooks, webhooks_service_client::WebhooksServiceClient};
    let mut client = WebhooksServiceClient::new(state.worker.clone());
    let unreadable =
        |status: tonic::Status| format!("webhooks: the worker did not answer ({})", status.code());
    let endpoints = client
        .list_endpoints(as_operator(
            signed,
            hooks::ListEndpointsRequest {
                tenant_id: tenant.to_string(),
            },
        ))
        .await
        .map_err(unreadable)?
        .into_inner()
        .endpoints;
    let mut rows = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        let deliveries = client
            .list_deliveries(as_operator(
                signed,
                hooks::ListDeliveriesRequest {
                    tenant_id: tenant.to_string(),
                    endpoint_id: endpoint.endpoint_id.clone(),
                    page_size: DELIVERIES,
                    page_token: String::new(),
                },
            ))
            .await
            .map_err(unreadable)?
            .into_inner()
            .deliveries;
        rows.push(EndpointRow {
            id: endpoint.endpoint_id,
            url: endpoint.url,
            description: endpoint.description,
            events: endpoint.events.join(", "),
            enabled: endpoint.enabled,
            disabled_reason: endpoint.disabled_reason,
            deliveries: deliveries
                .into_iter()
                .map(|d| DeliveryRow {
                    id: d.delivery_id,
                    event: d.event,
                    state: d.state,
                    attempts: d.attempts,
                    last_status: if d.last_status == 0 {
                        String::new()
                    } else {
                        d.last_status.to_string()
                    },
                    last_error: d.last_error,
                    updated: super::jobs::time(d.updated_at.as_ref()),
                })
                .collect(),
        });
    }
    Ok(rows)
}

/// One key's row.
struct KeyRow {
    id: String,
    name: String,
    scopes: String,
    created: String,
    expires: String,
    revoked: String,
    last_used: String,
    live: bool,
}

#[derive(Template)]
#[template(path = "console/tenant.html")]
struct TenantPage {
    csrf: String,
    username: String,
    role: Role,
    admin: bool,
    operator: bool,
    id: String,
    name: String,
    state: &'static str,
    keys: Vec<KeyRow>,
    endpoints: Vec<EndpointRow>,
    webhooks_error: Option<String>,
    scopes: Vec<&'static str>,
    error: Option<String>,
    /// A secret just made: shown on this answer only.
    secret: Option<String>,
    notice: Option<String>,
}

/// A tenant id from a path; `None` answers 404 (see [`no_tenant`]).
fn tenant_id(raw: &str) -> Option<TenantId> {
    TenantId::parse(raw).ok()
}

fn no_tenant(raw: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        format!("tenant: no tenant {raw:?}\n"),
    )
        .into_response()
}

/// What the tenant page shows after an action.
#[derive(Default)]
struct Outcome {
    error: Option<String>,
    secret: Option<String>,
    notice: Option<String>,
}

async fn tenant_page<S: GatewayStore>(
    state: &ConsoleState<S>,
    signed: &SignedIn,
    id: &TenantId,
    outcome: Outcome,
) -> Response {
    let tenant = match state.store.get_tenant(id).await {
        Ok(Some(tenant)) => tenant,
        Ok(None) => return (StatusCode::NOT_FOUND, format!("no tenant {id}\n")).into_response(),
        Err(error) => return unavailable(&error),
    };
    let keys = match state.store.list_keys(id).await {
        Ok(keys) => keys,
        Err(error) => return unavailable(&error),
    };
    let (endpoints, webhooks_error) = match webhooks(state, signed, id).await {
        Ok(endpoints) => (endpoints, None),
        Err(error) => (Vec::new(), Some(error)),
    };
    let now = Utc::now();
    let nav = Nav::of(signed);
    let status = if outcome.error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let mut response = page(&TenantPage {
        csrf: nav.csrf,
        username: nav.username,
        role: nav.role,
        admin: nav.admin,
        operator: signed.may(Role::Operator),
        id: tenant.id.to_string(),
        name: tenant.name,
        state: tenant.state.as_str(),
        keys: keys
            .into_iter()
            .map(|k| KeyRow {
                live: k.revoked_at.is_none() && k.expires_at.is_none_or(|e| e > now),
                id: k.id.to_string(),
                name: k.name,
                scopes: k.scopes.join(", "),
                created: when(Some(k.created_at)),
                expires: when(k.expires_at),
                revoked: when(k.revoked_at),
                last_used: when(k.last_used_at),
            })
            .collect(),
        endpoints,
        webhooks_error,
        scopes: SCOPES.to_vec(),
        error: outcome.error,
        secret: outcome.secret,
        notice: outcome.notice,
    });
    *response.status_mut() = status;
    response
}

pub(super) async fn detail<S: GatewayStore>(
    State(state): State<ConsoleState<S>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    let signed = match signed_in(&state, &headers, Role::Viewer).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    match tenant_id(&tenant) {
        Some(id) => tenant_page(&state, &signed, &id, Outcome::default()).await,
        None => no_tenant(&tenant),
    }
}

/// The create-key form: `scope` repeats, one per checked box.
pub(super) struct NewKeyForm {
    csrf: String,
    name: String,
    scope: Vec<String>,
    /// Days until it expires; empty for never.
    expires_in_days: String,
}

pub(super) async fn create_key<S: GatewayStore>(
    State(state): State<ConsoleState<S>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let signed = match signed_in(&state, &headers, Role::Operator).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let Some(id) = tenant_id(&tenant) else {
        return no_tenant(&tenant);
    };
    // `scope` repeats, one per checked box: read as pairs, then gathered.
    let form = NewKeyForm::from_pairs(pairs);
    if !csrf_ok(&signed, &form.csrf) {
        return bad_csrf();
    }
    let refuse = |error: String| Outcome {
        error: Some(error),
        ..Outcome::default()
    };
    let scopes = match crate::keys::parse_scopes(&form.scope) {
        Ok(scopes) => scopes,
        Err(error) => {
            return tenant_page(&state, &signed, &id, refuse(format!("scope: {error}"))).await;
        }
    };
    let expires_at = match form.expires_in_days.trim() {
        "" => None,
        days => match days.parse::<u16>() {
            Ok(days) if (1..=3650).contains(&days) => {
                Some(Utc::now() + chrono::TimeDelta::days(i64::from(days)))
            }
            _ => {
                return tenant_page(
                    &state,
                    &signed,
                    &id,
                    refuse(format!("expires_in_days: {days:?} must be a whole number of days from 1 to 3650, or empty for never")),
                )
                .await;
            }
        },
    };
    let name = form.name.trim().chars().take(200).collect::<String>();
    let created =
        tenancy::create_key(&state.store, &state.peppers, &id, scopes, &name, expires_at).await;
    let (key, stored) = match created {
        Ok(created) => created,
        Err(error) => return key_error(&state, &signed, &id, error).await,
    };
    if let Err(response) = audit(
        &state,
        &signed.operator.username,
        "key.create",
        format!("tenant {id} key {}", stored.id),
        stored.scopes.join(","),
    )
    .await
    {
        return response;
    }
    tenant_page(
        &state,
        &signed,
        &id,
        Outcome {
            secret: Some(key.reveal()),
            notice: Some(format!(
                "Key {} created. Copy it now: it is shown only once.",
                stored.id
            )),
            ..Outcome::default()
        },
    )
    .await
}

impl NewKeyForm {
    fn from_pairs(pairs: Vec<(String, String)>) -> Self {
        let mut form = Self {
            csrf: String::new(),
            name: String::new(),
            scope: Vec::new(),
            expires_in_days: String::new(),
        };
        for (key, value) in pairs {
            match key.as_str() {
                "csrf" => form.csrf = value,
                "name" => form.name = value,
                "scope" => form.scope.push(value),
                "expires_in_days" => form.expires_in_days = value,
                _ => {}
            }
        }
        form
    }
}

async fn key_error<S: GatewayStore>(
    state: &ConsoleState<S>,
    signed: &SignedIn,
    id: &TenantId,
    error: TenancyError,
) -> Response {
    match error {
        TenancyError::Store(StoreError::NoKey { key, .. }) => {
            tenant_page(
                state,
                signed,
                id,
                Outcome {
                    error: Some(format!("key: no key {key} in tenant {id}")),
                    ..Outcome::default()
                },
            )
            .await
        }
        TenancyError::Store(StoreError::TenantDeleted(_)) => (
            StatusCode::CONFLICT,
            format!("tenant {id} is deleted or being deleted\n"),
        )
            .into_response(),
        other => unavailable(&other),
    }
}

fn key_action(action: &str) -> Option<&'static str> {
    match action {
        "revoke" => Some("Revoke"),
        "rotate" => Some("Rotate"),
        _ => None,
    }
}

pub(super) async fn confirm_key<S: GatewayStore>(
    State(state): State<ConsoleState<S>>,
    Path((tenant, key, action)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let signed = match signed_in(&state, &headers, Role::Operator).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let (Some(id), Ok(key), Some(button)) =
        (tenant_id(&tenant), KeyId::parse(&key), key_action(&action))
    else {
        return (StatusCode::NOT_FOUND, "no such tenant, key or action\n").into_response();
    };
    let nav = Nav::of(&signed);
    page(&ConfirmPage {
        csrf: nav.csrf,
        username: nav.username,
        role: nav.role,
        admin: nav.admin,
        question: if action == "revoke" {
            format!("Revoke key {key} of tenant {id}? Requests with it are refused at once.")
        } else {
            format!(
                "Rotate key {key} of tenant {id}? A new key with the same scopes is shown once; the old one keeps working for {} hours.",
                ROTATION_OVERLAP.num_hours()
            )
        },
        action: format!("/console/tenants/{id}/keys/{key}/{action}"),
        button,
        back: format!("/console/tenants/{id}"),
    })
}

pub(super) async fn act_on_key<S: GatewayStore>(
    State(state): State<ConsoleState<S>>,
    Path((tenant, key, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    Form(form): Form<TokenOnly>,
) -> Response {
    let signed = match signed_in(&state, &headers, Role::Operator).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    if !csrf_ok(&signed, &form.csrf) {
        return bad_csrf();
    }
    let (Some(id), Ok(key)) = (tenant_id(&tenant), KeyId::parse(&key)) else {
        return (StatusCode::NOT_FOUND, "no such tenant or key\n").into_response();
    };
    let outcome = match action.as_str() {
        "revoke" => match state.store.revoke_key(&id, &key, Utc::now()).await {
            Ok(()) => Outcome {
                notice: Some(format!("Key {key} revoked.")),
                ..Outcome::default()
            },
            Err(error) => return key_error(&state, &signed, &id, error.into()).await,
        },
        "rotate" => {
            match tenancy::rotate_key(&state.store, &state.peppers, &id, &key, ROTATION_OVERLAP)
                .await
            {
                Ok((fresh, _)) => Outcome {
                    notice: Some(format!(
                        "Key {} replaces {key}, which stops working in {} hours. Copy the new key now: it is shown only once.",
                        fresh.id,
                        ROTATION_OVERLAP.num_hours()
                    )),
                    secret: Some(fresh.reveal()),
                    ..Outcome::default()
                },
                Err(error) => return key_error(&state, &signed, &id, error).await,
            }
        }
        _ => return (StatusCode::NOT_FOUND, "no such key action\n").into_response(),
    };
    if let Err(response) = audit(
        &state,
        &signed.operator.username,
        &format!("key.{action}"),
        format!("tenant {id} key {key}"),
        String::new(),
    )
    .await
    {
        return response;
    }
    tenant_page(&state, &signed, &id, outcome).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::pages::{HOSTILE, assert_escaped};

    #[test]
    fn hostile_tenant_names_keys_and_webhooks_are_escaped() {
        let h = || HOSTILE.to_owned();
        assert_escaped(&TenantsPage {
            csrf: "t".into(),
            username: h(),
            role: Role::Admin,
            admin: true,
            tenants: vec![TenantRow {
                id: "acme".into(),
                name: h(),
                state: "active",
                created: h(),
                readings_per_day: h(),
                max_series: h(),
                retention_days: h(),
            }],
        });
        assert_escaped(&TenantPage {
            csrf: "t".into(),
            username: h(),
            role: Role::Admin,
            admin: true,
            operator: true,
            id: "acme".into(),
            name: h(),
            state: "active",
            keys: vec![KeyRow {
                id: "0123456789abcdef".into(),
                name: h(),
                scopes: h(),
                created: h(),
                expires: h(),
                revoked: h(),
                last_used: h(),
                live: true,
            }],
            endpoints: vec![EndpointRow {
                id: h(),
                url: h(),
                description: h(),
                events: h(),
                enabled: false,
                disabled_reason: h(),
                deliveries: vec![DeliveryRow {
                    id: h(),
                    event: h(),
                    state: h(),
                    attempts: 1,
                    last_status: h(),
                    last_error: h(),
                    updated: h(),
                }],
            }],
            webhooks_error: Some(h()),
            scopes: vec!["readings:write"],
            error: Some(h()),
            secret: Some(h()),
            notice: Some(h()),
        });
    }

    #[test]
    fn repeated_form_fields_are_all_kept() {
        let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let form = NewKeyForm::from_pairs(vec![
            pair("csrf", "t0k"),
            pair("name", "ci bot"),
            pair("scope", "readings:write"),
            pair("scope", "results:read"),
            pair("other", "ignored"),
        ]);
        assert_eq!(form.csrf, "t0k");
        assert_eq!(form.name, "ci bot");
        assert_eq!(form.scope, ["readings:write", "results:read"]);
        assert_eq!(form.expires_in_days, "");
    }
}
