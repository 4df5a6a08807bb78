//! Dead letters, as Broadway Dashboard would show failed messages: one
//! tenant's readings that validation refused, newest first, each with the
//! field at fault and the message as received; an operator replays one as
//! it was (its cause fixed elsewhere), corrects and resubmits it, or
//! discards it. Everything goes through ingest's dead-letter RPCs acting
//! for the operator and naming the tenant; ingest revalidates, stores the
//! reading and removes the letter in one transaction, or keeps the letter
//! and names the field still at fault. Actions are recorded in the audit
//! log.

use askama::Template;
use axum::{
    Extension, Form,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Redirect, Response},
};
use chrono::{DateTime, SecondsFormat, Utc};
use contracts::ingest::v1 as pb;
use serde::Deserialize;

use super::{
    ConsoleState,
    guard::Nonce,
    jobs::time,
    pages::{
        ConfirmPage, Nav, as_operator, audit, backend_error, bad_csrf, csrf_ok, page, signed_in,
        unavailable,
    },
    session::SignedIn,
};
use crate::{
    keys::TenantId,
    storage::{GatewayStore, operators::Role},
};

/// Letters per page.
const PAGE: u32 = 50;
/// The `tenant` value for letters whose tenant is unknown (no tenant id
/// starts with `-`).
const UNKNOWN_TENANT: &str = "-";

/// Whose letters a request is about, as ingest's RPCs name it: a tenant,
/// or the empty string for letters whose tenant is unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Whose(String);

impl Whose {
    /// From the `tenant` parameter: a tenant id, or [`UNKNOWN_TENANT`];
    /// otherwise what is wrong with it.
    fn parse(raw: &str) -> Result<Self, String> {
        if raw == UNKNOWN_TENANT {
            return Ok(Self(String::new()));
        }
        TenantId::parse(raw)
            .map(|t| Self(t.as_str().to_owned()))
            .map_err(|problem| format!("tenant: {raw:?} {problem}"))
    }

    /// The `tenant` parameter that names it again.
    fn param(&self) -> &str {
        if self.0.is_empty() {
            UNKNOWN_TENANT
        } else {
            &self.0
        }
    }

    /// For people: `acme`, or `no known tenant`.
    fn label(&self) -> &str {
        if self.0.is_empty() {
            "no known tenant"
        } else {
            &self.0
        }
    }
}

/// The signed-in operator (at least `role`; with `csrf`, the form's token
/// checked) and whose letters `tenant` names, or the answer that says why
/// not.
async fn signed_for<S: GatewayStore>(
    state: &ConsoleState<S>,
    headers: &HeaderMap,
    role: Role,
    tenant: &str,
    csrf: Option<&str>,
) -> Result<(SignedIn, Whose), Response> {
    let signed = signed_in(state, headers, role).await?;
    if csrf.is_some_and(|token| !csrf_ok(&signed, token)) {
        return Err(bad_csrf());
    }
    let whose = Whose::parse(tenant).map_err(refuse)?;
    Ok((signed, whose))
}

/// A request naming no valid tenant.
fn refuse(problem: String) -> Response {
    (StatusCode::UNPROCESSABLE_ENTITY, format!("{problem}\n")).into_response()
}

/// One letter's row.
struct LetterRow {
    id: i64,
    received: String,
    source: String,
    event_id: String,
    field: String,
    reason: String,
}

#[derive(Template)]
#[template(path = "console/dead_letters.html")]
struct ListPage {
    nonce: String,
    csrf: String,
    username: String,
    role: Role,
    admin: bool,
    /// (tenant parameter, label, chosen).
    tenants: Vec<(String, String, bool)>,
    tenant: String,
    tenant_label: String,
    notice: Option<String>,
    letters: Vec<LetterRow>,
    next: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct ListQuery {
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    before: String,
    #[serde(default)]
    done: String,
}

pub(super) async fn list<S: GatewayStore>(
    State(state): State<ConsoleState<S>>,
    Extension(nonce): Extension<Nonce>,
    Query(query): Query<ListQuery>,
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
    let chosen = if query.tenant.is_empty() {
        tenants
            .first()
            .map_or_else(|| UNKNOWN_TENANT.to_owned(), |t| t.id.to_string())
    } else {
        query.tenant.clone()
    };
    let whose = match Whose::parse(&chosen) {
        Ok(whose) => whose,
        Err(problem) => return refuse(problem),
    };
    let answer = match state
        .ingest
        .clone()
        .list_dead_letters(as_operator(
            &signed,
            pb::ListDeadLettersRequest {
                tenant_id: whose.0.clone(),
                page_size: PAGE,
                page_token: query.before.clone(),
            },
        ))
        .await
    {
        Ok(answer) => answer.into_inner(),
        Err(status) => return backend_error("ingest", &status),
    };
    let mut choices: Vec<(String, String, bool)> = tenants
        .iter()
        .map(|t| {
            let id = t.id.to_string();
            (id.clone(), id.clone(), id == whose.0)
        })
        .collect();
    choices.push((
        UNKNOWN_TENANT.to_owned(),
        "(no known tenant)".to_owned(),
        whose.0.is_empty(),
    ));
    let nav = Nav::of(&signed);
    page(&ListPage {
        nonce: nonce.0,
        csrf: nav.csrf,
        username: nav.username,
        role: nav.role,
        admin: nav.admin,
        tenants: choices,
        tenant: whose.param().to_owned(),
        tenant_label: whose.label().to_owned(),
        notice: done_notice(&query.done),
        letters: answer
            .dead_letters
            .into_iter()
            .map(|l| LetterRow {
                id: l.id,
                received: time(l.received_at.as_ref()),
                source: l.source,
                event_id: l.event_id,
                field: l.field,
                reason: l.reason,
            })
            .collect(),
        next: Some(answer.next_page_token).filter(|t| !t.is_empty()),
    })
}

/// What a finished action says on the list it returns to.
fn done_notice(done: &str) -> Option<String> {
    match done {
        "resubmitted" => Some("The reading was stored and its dead letter removed.".to_owned()),
        "duplicate" => Some(
            "The reading's event id was already stored; nothing was stored twice and the dead letter was removed."
                .to_owned(),
        ),
        "discarded" => Some("The dead letter was discarded.".to_owned()),
        _ => None,
    }
}

/// The correction form's fields, as shown and as posted.
#[derive(Debug, Default, Clone, Deserialize)]
pub(super) struct Correction {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    event_id: String,
    #[serde(default)]
    device_id: String,
    #[serde(default)]
    metric: String,
    #[serde(default)]
    value: String,
    #[serde(default)]
    observed_at: String,
    #[serde(default)]
    attributes: String,
}

impl Correction {
    /// The form filled with the letter's reading, for an operator to edit.
    fn of(reading: &pb::Reading) -> Self {
        let observed_at = reading
            .observed_at
            .and_then(|t| {
                DateTime::<Utc>::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
            })
            .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
            .unwrap_or_default();
        let mut attributes: Vec<_> = reading.attributes.iter().collect();
        attributes.sort();
        Self {
            csrf: String::new(),
            event_id: reading.event_id.clone(),
            device_id: reading.device_id.clone(),
            metric: reading.metric.clone(),
            value: if reading.value.is_finite() {
                reading.value.to_string()
            } else {
                String::new()
            },
            observed_at,
            attributes: attributes
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    /// The corrected reading, or the form field at fault.
    fn reading(&self, tenant_id: &str) -> Result<pb::Reading, String> {
        let value: f64 = self
            .value
            .trim()
            .parse()
            .map_err(|_| format!("value: {:?} is not a number", self.value))?;
        let observed_at = DateTime::parse_from_rfc3339(self.observed_at.trim())
            .map_err(|_| {
                format!(
                    "observed_at: {:?} is not an RFC 3339 time (2026-12-07T10:00:00Z)",
                    self.observed_at
                )
            })?
            .with_timezone(&Utc);
        let mut attributes = std::collections::HashMap::new();
        for (n, line) in self.attributes.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| format!("attributes: line {} is not key=value", n + 1))?;
            attributes.insert(key.trim().to_owned(), value.trim().to_owned());
        }
        Ok(pb::Reading {
            event_id: self.event_id.trim().to_owned(),
            tenant_id: tenant_id.to_owned(),
            device_id: self.device_id.trim().to_owned(),
            metric: self.metric.trim().to_owned(),
            value,
            observed_at: Some(prost_types::Timestamp {
                seconds: observed_at.timestamp(),
                nanos: i32::try_from(observed_at.timestamp_subsec_nanos()).unwrap_or(0),
            }),
            attributes,
        })
    }
}

#[derive(Template)]
#[template(path = "console/dead_letter.html")]
struct DetailPage {
    csrf: String,
    username: String,
    role: Role,
    admin: bool,
    operator: bool,
    id: i64,
    tenant: String,
    tenant_label: String,
    received: String,
    source: String,
    field: String,
    reason: String,
    payload: String,
    /// The form, when the payload decoded to a reading (or was corrected).
    correction: Option<Correction>,
    /// Why the last resubmission was refused.
    error: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct Scope {
    #[serde(default)]
    tenant: String,
}

/// Fetches one letter for `signed`, or the page that says why not.
async fn fetch<S>(
    state: &ConsoleState<S>,
    signed: &SignedIn,
    whose: &Whose,
    id: i64,
) -> Result<pb::DeadLetter, Response> {
    state
        .ingest
        .clone()
        .get_dead_letter(as_operator(
            signed,
            pb::GetDeadLetterRequest {
                tenant_id: whose.0.clone(),
                id,
            },
        ))
        .await
        .map_err(|status| backend_error("ingest", &status))?
        .into_inner()
        .dead_letter
        .ok_or_else(|| (StatusCode::NOT_FOUND, "ingest: not found\n").into_response())
}

/// The letter's page, with `correction` (the operator's last edit) and
/// `error` when a resubmission was refused.
fn detail_page(
    signed: &SignedIn,
    whose: &Whose,
    letter: pb::DeadLetter,
    correction: Option<Correction>,
    error: Option<String>,
) -> Response {
    let nav = Nav::of(signed);
    let payload = serde_json::from_str::<serde_json::Value>(&letter.payload_json)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or(letter.payload_json);
    let correction = correction.or_else(|| letter.reading.as_ref().map(Correction::of));
    let response = page(&DetailPage {
        csrf: nav.csrf,
        username: nav.username,
        role: nav.role,
        admin: nav.admin,
        operator: signed.operator.role >= Role::Operator,
        id: letter.id,
        tenant: whose.param().to_owned(),
        tenant_label: whose.label().to_owned(),
        received: time(letter.received_at.as_ref()),
        source: letter.source,
        field: letter.field,
        reason: letter.reason,
        payload,
        correction,
        error: error.clone(),
    });
    if error.is_some() {
        (StatusCode::UNPROCESSABLE_ENTITY, response).into_response()
    } else {
        response
    }
}

pub(super) async fn detail<S: GatewayStore>(
    State(state): State<ConsoleState<S>>,
    Path(id): Path<i64>,
    Query(scope): Query<Scope>,
    headers: HeaderMap,
) -> Response {
    let (signed, whose) =
        match signed_for(&state, &headers, Role::Viewer, &scope.tenant, None).await {
            Ok(both) => both,
            Err(response) => return response,
        };
    match fetch(&state, &signed, &whose, id).await {
        Ok(letter) => detail_page(&signed, &whose, letter, None, None),
        Err(response) => response,
    }
}

/// `replay` (as received) or `resubmit` (the posted correction).
pub(super) async fn resubmit<S: GatewayStore>(
    State(state): State<ConsoleState<S>>,
    Path((id, action)): Path<(i64, String)>,
    Query(scope): Query<Scope>,
    headers: HeaderMap,
    Form(form): Form<Correction>,
) -> Response {
    let (signed, whose) = match signed_for(
        &state,
        &headers,
        Role::Operator,
        &scope.tenant,
        Some(&form.csrf),
    )
    .await
    {
        Ok(both) => both,
        Err(response) => return response,
    };
    let letter = match fetch(&state, &signed, &whose, id).await {
        Ok(letter) => letter,
        Err(response) => return response,
    };
    let corrected = match action.as_str() {
        "replay" => None,
        "resubmit" => {
            // A letter of no known tenant keeps the tenant its reading named.
            let tenant = if whose.0.is_empty() {
                letter
                    .reading
                    .as_ref()
                    .map(|r| r.tenant_id.clone())
                    .unwrap_or_default()
            } else {
                whose.0.clone()
            };
            match form.reading(&tenant) {
                Ok(reading) => Some(reading),
                Err(problem) => {
                    return detail_page(&signed, &whose, letter, Some(form), Some(problem));
                }
            }
        }
        _ => return (StatusCode::NOT_FOUND, "no such action\n").into_response(),
    };
    let answer = state
        .ingest
        .clone()
        .resubmit_dead_letter(as_operator(
            &signed,
            pb::ResubmitDeadLetterRequest {
                tenant_id: whose.0.clone(),
                id,
                corrected,
            },
        ))
        .await;
    let stored = match answer {
        Ok(answer) => answer.into_inner().stored,
        Err(status) if status.code() == tonic::Code::InvalidArgument => {
            let kept = (action == "resubmit").then_some(form);
            return detail_page(
                &signed,
                &whose,
                letter,
                kept,
                Some(status.message().to_owned()),
            );
        }
        Err(status) => return backend_error("ingest", &status),
    };
    if let Err(response) = audit(
        &state,
        &signed.operator.username,
        &format!("dead_letter.{action}"),
        format!("dead letter {id} of {}", whose.label()),
        if stored {
            "stored".to_owned()
        } else {
            "already stored".to_owned()
        },
    )
    .await
    {
        return response;
    }
    let done = if stored { "resubmitted" } else { "duplicate" };
    Redirect::to(&format!(
        "/console/dead-letters?tenant={}&done={done}",
        whose.param()
    ))
    .into_response()
}

pub(super) async fn confirm_discard<S: GatewayStore>(
    State(state): State<ConsoleState<S>>,
    Path(id): Path<i64>,
    Query(scope): Query<Scope>,
    headers: HeaderMap,
) -> Response {
    let (signed, whose) =
        match signed_for(&state, &headers, Role::Operator, &scope.tenant, None).await {
            Ok(both) => both,
            Err(response) => return response,
        };
    let letter = match fetch(&state, &signed, &whose, id).await {
        Ok(letter) => letter,
        Err(response) => return response,
    };
    let nav = Nav::of(&signed);
    page(&ConfirmPage {
        csrf: nav.csrf,
        username: nav.username,
        role: nav.role,
        admin: nav.admin,
        question: format!(
            "Discard dead letter {id} of {} ({}: {}) for good?",
            whose.label(),
            letter.field,
            letter.reason
        ),
        action: format!(
            "/console/dead-letters/{id}/discard?tenant={}",
            whose.param()
        ),
        button: "Discard",
        back: format!("/console/dead-letters/{id}?tenant={}", whose.param()),
    })
}

pub(super) async fn discard<S: GatewayStore>(
    State(state): State<ConsoleState<S>>,
    Path(id): Path<i64>,
    Query(scope): Query<Scope>,
    headers: HeaderMap,
    Form(form): Form<super::pages::TokenOnly>,
) -> Response {
    let (signed, whose) = match signed_for(
        &state,
        &headers,
        Role::Operator,
        &scope.tenant,
        Some(&form.csrf),
    )
    .await
    {
        Ok(both) => both,
        Err(response) => return response,
    };
    if let Err(status) = state
        .ingest
        .clone()
        .discard_dead_letter(as_operator(
            &signed,
            pb::DiscardDeadLetterRequest {
                tenant_id: whose.0.clone(),
                id,
            },
        ))
        .await
    {
        return backend_error("ingest", &status);
    }
    if let Err(response) = audit(
        &state,
        &signed.operator.username,
        "dead_letter.discard",
        format!("dead letter {id} of {}", whose.label()),
        String::new(),
    )
    .await
    {
        return response;
    }
    Redirect::to(&format!(
        "/console/dead-letters?tenant={}&done=discarded",
        whose.param()
    ))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::pages::{HOSTILE, assert_escaped};

    #[test]
    fn hostile_dead_letter_payloads_and_reasons_are_escaped() {
        let h = || HOSTILE.to_owned();
        assert_escaped(&ListPage {
            nonce: "n".into(),
            csrf: "t".into(),
            username: h(),
            role: Role::Operator,
            admin: false,
            tenants: vec![(h(), h(), true)],
            tenant: h(),
            tenant_label: h(),
            notice: Some(h()),
            letters: vec![LetterRow {
                id: 1,
                received: h(),
                source: h(),
                event_id: h(),
                field: h(),
                reason: h(),
            }],
            next: Some(h()),
        });
        assert_escaped(&DetailPage {
            csrf: "t".into(),
            username: h(),
            role: Role::Operator,
            admin: false,
            operator: true,
            id: 1,
            tenant: h(),
            tenant_label: h(),
            received: h(),
            source: h(),
            field: h(),
            reason: h(),
            payload: format!("{{\"device_id\": {HOSTILE:?}}}"),
            correction: Some(Correction {
                csrf: String::new(),
                event_id: h(),
                device_id: h(),
                metric: h(),
                value: h(),
                observed_at: h(),
                attributes: h(),
            }),
            error: Some(h()),
        });
    }

    #[test]
    fn a_correction_round_trips_the_letters_reading() {
        let reading = pb::Reading {
            event_id: "e-1".into(),
            tenant_id: "acme".into(),
            device_id: "d-1".into(),
            metric: "temperature_c".into(),
            value: 21.5,
            observed_at: Some(prost_types::Timestamp {
                seconds: 1_796_000_000,
                nanos: 250_000_000,
            }),
            attributes: [("site".to_owned(), "north".to_owned())].into(),
        };
        let form = Correction::of(&reading);
        assert_eq!(form.observed_at, "2026-11-30T00:53:20.250Z");
        assert_eq!(form.attributes, "site=north");
        assert_eq!(form.reading("acme"), Ok(reading));
    }

    #[test]
    fn a_bad_correction_names_the_form_field() {
        let form = Correction {
            value: "warm".into(),
            observed_at: "2026-12-07T10:00:00Z".into(),
            ..Correction::default()
        };
        assert_eq!(
            form.reading("acme"),
            Err("value: \"warm\" is not a number".to_owned())
        );
        let form = Correction {
            value: "1".into(),
            observed_at: "yesterday".into(),
            ..Correction::default()
        };
        assert!(
            form.reading("acme")
                .unwrap_err()
                .starts_with("observed_at: ")
        );
        let form = Correction {
            value: "1".into(),
            observed_at: "2026-12-07T10:00:00Z".into(),
            attributes: "site=north\nnonsense".into(),
            ..Correction::default()
        };
        assert_eq!(
            form.reading("acme"),
            Err("attributes: line 2 is not key=value".to_owned())
        );
        // A non-finite value is left empty for the operator to fill in.
        let nan = pb::Reading {
            value: f64::NAN,
            ..pb::Reading::default()
        };
        assert_eq!(Correction::of(&nan).value, "");
    }

    #[test]
    fn the_unknown_tenant_has_its_own_parameter_and_no_tenant_id_collides() {
        let unknown = Whose::parse(UNKNOWN_TENANT).unwrap();
        assert_eq!(unknown.0, "");
        assert_eq!(unknown.param(), "-");
        assert!(TenantId::parse(UNKNOWN_TENANT).is_err());
        assert_eq!(Whose::parse("acme").unwrap().param(), "acme");
        assert!(Whose::parse("Not A Tenant").is_err());
    }
}
