//! The jobs pages, as Oban Web shows them: every queue's depth by state
//! with its oldest waiting job, a filterable and paginated job list, a
//! job's detail with its arguments, attempts and errors, and the actions
//! (cancel, retry, discard; pause and resume a queue), each confirmed on its own
//! page and recorded in the audit log. Everything goes through the
//! worker's `platform.jobs.v1` API, acting for the signed-in operator
//! (`x-platform-principal: operator:<name>`): the worker applies and audits
//! it too.

use askama::Template;
use axum::{
    Extension, Form,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Redirect, Response},
};
use chrono::{DateTime, Utc};
use contracts::jobs::v1::{self as pb, jobs_service_client::JobsServiceClient};
use serde::Deserialize;

use super::{
    ConsoleState,
    guard::Nonce,
    pages::{
        ConfirmPage, Nav, TokenOnly, as_operator, audit, backend_error, bad_csrf, csrf_ok, page,
        signed_in, unavailable,
    },
    session::SignedIn,
};
use crate::storage::{GatewayStore, operators::Role};

/// Jobs per page of the list.
const PAGE_SIZE: u32 = 50;

/// The states a filter may name, in the order the pages show them.
const STATES: [(&str, pb::JobState); 7] = [
    ("available", pb::JobState::Available),
    ("scheduled", pb::JobState::Scheduled),
    ("executing", pb::JobState::Executing),
    ("retryable", pb::JobState::Retryable),
    ("completed", pb::JobState::Completed),
    ("discarded", pb::JobState::Discarded),
    ("cancelled", pb::JobState::Cancelled),
];

fn state_name(raw: i32) -> &'static str {
    STATES
        .iter()
        .find(|(_, state)| *state as i32 == raw)
        .map_or("unknown", |(name, _)| *name)
}

fn client<S>(state: &ConsoleState<S>) -> JobsServiceClient<service_runtime::TracedChannel> {
    JobsServiceClient::new(state.worker.clone())
}

fn worker_error(status: &tonic::Status) -> Response {
    backend_error("worker", status)
}

pub(super) fn time(at: Option<&prost_types::Timestamp>) -> String {
    at.and_then(|t| DateTime::<Utc>::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
        .map_or_else(String::new, |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}

/// How long ago `at` was, in words (`3m 12s`).
fn age(at: Option<&prost_types::Timestamp>, now: DateTime<Utc>) -> String {
    at.and_then(|t| DateTime::<Utc>::from_timestamp(t.seconds, 0))
        .map_or_else(String::new, |t| {
            super::pages::duration_words((now - t).num_seconds().max(0))
        })
}

// ---- the list ---------------------------------------------------------------

/// The list's filters, as the query string carries them.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Filters {
    #[serde(default)]
    state: String,
    #[serde(default)]
    queue: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    tag: String,
    /// The cursor of the page after the previous one.
    #[serde(default)]
    after: String,
}

/// One queue's row.
struct QueueRow {
    name: String,
    paused: bool,
    /// Each state's count as shown: `≈` before an estimate.
    counts: Vec<String>,
    /// Completed per second over the last minute.
    throughput: String,
    limit: String,
    oldest: String,
}

/// One job's row.
struct JobRow {
    id: i64,
    kind: String,
    queue: String,
    state: &'static str,
    attempts: String,
    inserted: String,
    scheduled: String,
    tags: String,
}

#[derive(Template)]
#[template(path = "console/jobs.html")]
struct JobsPage {
    nonce: String,
    csrf: String,
    username: String,
    role: Role,
    admin: bool,
    operator: bool,
    states: Vec<(&'static str, bool)>,
    queues: Vec<QueueRow>,
    jobs: Vec<JobRow>,
    queue: String,
    kind: String,
    tag: String,
    /// The query string of the next page, if there is one.
    next: Option<String>,
    /// Whether this is a later page (the list's start is a link away).
    later_page: bool,
    /// Set when this page searched only jobs from this id up (a queue or
    /// kind filter on a big table): say so, since a short page is not the
    /// end.
    searched_from: Option<i64>,
    /// The filters' query string without the cursor.
    filtered: String,
}

/// `name=value&...` of the non-empty pairs, each escaped.
fn query_string(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", escape(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-escapes everything but unreserved characters (RFC 3986).
fn escape(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A queue's row: counts as shown, limits and the oldest wait in words.
fn queue_row(q: pb::QueueStats, now: DateTime<Utc>) -> QueueRow {
    QueueRow {
        counts: vec![
            q.available.to_string(),
            q.scheduled.to_string(),
            q.executing.to_string(),
            q.retryable.to_string(),
            if q.completed_estimated {
                format!("≈{}", q.completed)
            } else {
                q.completed.to_string()
            },
            q.discarded.to_string(),
            q.cancelled.to_string(),
        ],
        limit: match (q.local_limit, q.global_limit) {
            (0, _) => "not run here".to_owned(),
            (local, 0) => local.to_string(),
            (local, global) => format!("{local}/{global}"),
        },
        oldest: age(q.oldest_available_at.as_ref(), now),
        throughput: format!("{:.1}", q.completed_per_second),
        paused: q.paused,
        name: q.queue,
    }
}

pub(super) async fn list<S: GatewayStore>(
    State(state): State<ConsoleState<S>>,
    Extension(nonce): Extension<Nonce>,
    Query(filters): Query<Filters>,
    headers: HeaderMap,
) -> Response {
    let signed = match signed_in(&state, &headers, Role::Viewer).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let chosen = STATES.iter().find(|(name, _)| *name == filters.state);
    if !filters.state.is_empty() && chosen.is_none() {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("state: {:?} is not a job state\n", filters.state),
        )
            .into_response();
    }
    let mut jobs = client(&state);
    let stats = match jobs
        .get_queue_stats(as_operator(&signed, pb::GetQueueStatsRequest::default()))
        .await
    {
        Ok(stats) => stats.into_inner().queues,
        Err(status) => return worker_error(&status),
    };
    let listed = match jobs
        .list_jobs(as_operator(
            &signed,
            pb::ListJobsRequest {
                states: chosen.map(|(_, s)| vec![*s as i32]).unwrap_or_default(),
                queue: filters.queue.clone(),
                kind: filters.kind.clone(),
                tag: filters.tag.clone(),
                page_size: PAGE_SIZE,
                page_token: filters.after.clone(),
            },
        ))
        .await
    {
        Ok(listed) => listed.into_inner(),
        Err(status) => return worker_error(&status),
    };
    let now = Utc::now();
    let filter_pairs = [
        ("state", filters.state.as_str()),
        ("queue", filters.queue.as_str()),
        ("kind", filters.kind.as_str()),
        ("tag", filters.tag.as_str()),
    ];
    let filtered = query_string(&filter_pairs);
    let next = (!listed.next_page_token.is_empty()).then(|| {
        let mut pairs = filter_pairs.to_vec();
        pairs.push(("after", listed.next_page_token.as_str()));
        query_string(&pairs)
    });
    let nav = Nav::of(&signed);
    page(&JobsPage {
        nonce: nonce.0,
        csrf: nav.csrf,
        username: nav.username,
        role: nav.role,
        admin: nav.admin,
        operator: signed.may(Role::Operator),
        states: STATES
            .iter()
            .map(|(name, _)| (*name, *name == filters.state))
            .collect(),
        queues: stats.into_iter().map(|q| queue_row(q, now)).collect(),
        jobs: listed
            .jobs
            .into_iter()
            .map(|job| JobRow {
                id: job.id,
                state: state_name(job.state),
                attempts: format!("{}/{}", job.attempt, job.max_attempts),
                inserted: time(job.inserted_at.as_ref()),
                scheduled: time(job.scheduled_at.as_ref()),
                tags: job.tags.join(", "),
                kind: job.kind,
                queue: job.queue,
            })
            .collect(),
        queue: filters.queue,
        kind: filters.kind,
        tag: filters.tag,
        next,
        later_page: !filters.after.is_empty(),
        searched_from: Some(listed.searched_from_id).filter(|id| *id > 0),
        filtered,
    })
}

// ---- one job ----------------------------------------------------------------

/// One failed attempt.
struct ErrorRow {
    attempt: i32,
    at: String,
    error: String,
}

#[derive(Template)]
#[template(path = "console/job.html")]
struct JobPage {
    csrf: String,
    username: String,
    role: Role,
    admin: bool,
    operator: bool,
    id: i64,
    kind: String,
    queue: String,
    state: &'static str,
    priority: i32,
    attempts: String,
    attempted_by: String,
    tags: String,
    args: String,
    times: Vec<(&'static str, String)>,
    errors: Vec<ErrorRow>,
    can_cancel: bool,
    can_retry: bool,
    can_discard: bool,
    notice: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct Notice {
    #[serde(default)]
    done: String,
}

async fn fetch<S>(
    state: &ConsoleState<S>,
    signed: &SignedIn,
    id: i64,
) -> Result<pb::Job, Response> {
    client(state)
        .get_job(as_operator(signed, pb::GetJobRequest { id }))
        .await
        .map_err(|status| worker_error(&status))?
        .into_inner()
        .job
        .ok_or_else(|| unavailable(&"the worker answered without a job"))
}

pub(super) async fn detail<S: GatewayStore>(
    State(state): State<ConsoleState<S>>,
    Path(id): Path<i64>,
    Query(notice): Query<Notice>,
    headers: HeaderMap,
) -> Response {
    let signed = match signed_in(&state, &headers, Role::Viewer).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let job = match fetch(&state, &signed, id).await {
        Ok(job) => job,
        Err(response) => return response,
    };
    let state_now = state_name(job.state);
    let nav = Nav::of(&signed);
    let args = job
        .args
        .clone()
        .map_or(serde_json::Value::Null, contracts::json::struct_to_json);
    page(&JobPage {
        csrf: nav.csrf,
        username: nav.username,
        role: nav.role,
        admin: nav.admin,
        operator: signed.may(Role::Operator),
        id: job.id,
        state: state_now,
        priority: job.priority,
        attempts: format!("{} of {}", job.attempt, job.max_attempts),
        attempted_by: job.attempted_by.clone(),
        tags: job.tags.join(", "),
        args: serde_json::to_string_pretty(&args).unwrap_or_default(),
        times: vec![
            ("Inserted", time(job.inserted_at.as_ref())),
            ("Scheduled", time(job.scheduled_at.as_ref())),
            ("Last attempted", time(job.attempted_at.as_ref())),
            ("Finished", time(job.finalized_at.as_ref())),
        ],
        errors: job
            .errors
            .iter()
            .map(|e| ErrorRow {
                attempt: e.attempt,
                at: time(e.at.as_ref()),
                error: e.error.clone(),
            })
            .collect(),
        can_cancel: !matches!(state_now, "completed" | "discarded" | "cancelled"),
        can_retry: matches!(state_now, "discarded" | "cancelled" | "retryable"),
        can_discard: matches!(state_now, "available" | "scheduled" | "retryable"),
        notice: match notice.done.as_str() {
            "cancel" => Some("Cancelled (an executing job is told to stop).".to_owned()),
            "retry" => Some("Made available again.".to_owned()),
            "discard" => Some("Discarded (retry it to run it again).".to_owned()),
            _ => None,
        },
        kind: job.kind,
        queue: job.queue,
    })
}

// ---- actions, each confirmed --------------------------------------------------

/// What an action on a job does, by its path segment.
fn job_action(action: &str) -> Option<(&'static str, &'static str)> {
    match action {
        "cancel" => Some(("Cancel", "cancel")),
        "retry" => Some(("Retry now", "retry")),
        "discard" => Some(("Discard", "discard")),
        _ => None,
    }
}

pub(super) async fn confirm_job<S: GatewayStore>(
    State(state): State<ConsoleState<S>>,
    Path((id, action)): Path<(i64, String)>,
    headers: HeaderMap,
) -> Response {
    let signed = match signed_in(&state, &headers, Role::Operator).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let Some((button, verb)) = job_action(&action) else {
        return (StatusCode::NOT_FOUND, "no such action\n").into_response();
    };
    let job = match fetch(&state, &signed, id).await {
        Ok(job) => job,
        Err(response) => return response,
    };
    let nav = Nav::of(&signed);
    page(&ConfirmPage {
        csrf: nav.csrf,
        username: nav.username,
        role: nav.role,
        admin: nav.admin,
        question: format!(
            "{button} job {id} ({}, queue {}, {})?",
            job.kind,
            job.queue,
            state_name(job.state)
        ),
        action: format!("/console/jobs/{id}/{verb}"),
        button,
        back: format!("/console/jobs/{id}"),
    })
}

pub(super) async fn act_on_job<S: GatewayStore>(
    State(state): State<ConsoleState<S>>,
    Path((id, action)): Path<(i64, String)>,
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
    let mut jobs = client(&state);
    let done = match action.as_str() {
        "cancel" => jobs
            .cancel_job(as_operator(&signed, pb::CancelJobRequest { id }))
            .await
            .map(|r| r.into_inner().job),
        "retry" => jobs
            .retry_job(as_operator(&signed, pb::RetryJobRequest { id }))
            .await
            .map(|r| r.into_inner().job),
        "discard" => jobs
            .discard_job(as_operator(&signed, pb::DiscardJobRequest { id }))
            .await
            .map(|r| r.into_inner().job),
        _ => return (StatusCode::NOT_FOUND, "no such action\n").into_response(),
    };
    let job = match done {
        Ok(job) => job,
        Err(status) => return worker_error(&status),
    };
    let kind = job.map(|j| j.kind).unwrap_or_default();
    if let Err(response) = audit(
        &state,
        &signed.operator.username,
        &format!("job.{action}"),
        format!("job {id}"),
        kind,
    )
    .await
    {
        return response;
    }
    Redirect::to(&format!("/console/jobs/{id}?done={action}")).into_response()
}

/// A queue name from a path: what the worker accepts (1 to 128 bytes).
fn queue_name(raw: &str) -> Option<&str> {
    (!raw.is_empty() && raw.len() <= 128).then_some(raw)
}

pub(super) async fn confirm_queue<S: GatewayStore>(
    State(state): State<ConsoleState<S>>,
    Path((queue, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let signed = match signed_in(&state, &headers, Role::Operator).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let (Some(queue), Some(button)) = (
        queue_name(&queue),
        match action.as_str() {
            "pause" => Some("Pause"),
            "resume" => Some("Resume"),
            _ => None,
        },
    ) else {
        return (StatusCode::NOT_FOUND, "no such queue action\n").into_response();
    };
    let nav = Nav::of(&signed);
    page(&ConfirmPage {
        csrf: nav.csrf,
        username: nav.username,
        role: nav.role,
        admin: nav.admin,
        question: if action == "pause" {
            format!("Pause queue {queue} on every node? Executing jobs finish; no new ones start.")
        } else {
            format!("Resume queue {queue} on every node?")
        },
        action: format!("/console/queues/{}/{action}", escape(queue)),
        button,
        back: "/console/jobs".to_owned(),
    })
}

pub(super) async fn act_on_queue<S: GatewayStore>(
    State(state): State<ConsoleState<S>>,
    Path((queue, action)): Path<(String, String)>,
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
    let Some(queue) = queue_name(&queue) else {
        return (StatusCode::NOT_FOUND, "no such queue\n").into_response();
    };
    let mut jobs = client(&state);
    let done = match action.as_str() {
        "pause" => jobs
            .pause_queue(as_operator(
                &signed,
                pb::PauseQueueRequest {
                    queue: queue.to_owned(),
                },
            ))
            .await
            .map(drop),
        "resume" => jobs
            .resume_queue(as_operator(
                &signed,
                pb::ResumeQueueRequest {
                    queue: queue.to_owned(),
                },
            ))
            .await
            .map(drop),
        _ => return (StatusCode::NOT_FOUND, "no such queue action\n").into_response(),
    };
    if let Err(status) = done {
        return worker_error(&status);
    }
    if let Err(response) = audit(
        &state,
        &signed.operator.username,
        &format!("queue.{action}"),
        format!("queue {queue}"),
        String::new(),
    )
    .await
    {
        return response;
    }
    Redirect::to("/console/jobs").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::pages::{HOSTILE, assert_escaped};

    #[test]
    fn hostile_job_args_kinds_queues_tags_and_errors_are_escaped() {
        let h = || HOSTILE.to_owned();
        assert_escaped(&JobPage {
            csrf: "t".into(),
            username: h(),
            role: Role::Operator,
            admin: false,
            operator: true,
            id: 7,
            kind: h(),
            queue: h(),
            state: "discarded",
            priority: 1,
            attempts: "1/20".into(),
            attempted_by: h(),
            tags: h(),
            args: format!("{{\"note\": {HOSTILE:?}}}"),
            times: vec![("Inserted", h())],
            errors: vec![ErrorRow {
                attempt: 1,
                at: h(),
                error: h(),
            }],
            can_cancel: true,
            can_retry: true,
            can_discard: true,
            notice: Some(h()),
        });
        assert_escaped(&JobsPage {
            nonce: "n".into(),
            csrf: "t".into(),
            username: h(),
            role: Role::Operator,
            admin: false,
            operator: true,
            states: vec![("available", true)],
            queues: vec![QueueRow {
                name: h(),
                paused: true,
                counts: vec![h()],
                throughput: h(),
                limit: h(),
                oldest: h(),
            }],
            jobs: vec![JobRow {
                id: 7,
                kind: h(),
                queue: h(),
                state: "available",
                attempts: h(),
                inserted: h(),
                scheduled: h(),
                tags: h(),
            }],
            queue: h(),
            kind: h(),
            tag: h(),
            next: None,
            later_page: true,
            searched_from: Some(1),
            filtered: String::new(),
        });
    }

    #[test]
    fn filters_survive_the_query_string_escaped() {
        assert_eq!(
            query_string(&[
                ("state", "retryable"),
                ("queue", ""),
                ("kind", "a b&c=d"),
                ("tag", "é")
            ]),
            "state=retryable&kind=a%20b%26c%3Dd&tag=%C3%A9"
        );
    }

    #[test]
    fn only_known_actions_are_offered() {
        assert_eq!(job_action("cancel"), Some(("Cancel", "cancel")));
        assert_eq!(job_action("retry"), Some(("Retry now", "retry")));
        assert_eq!(job_action("discard"), Some(("Discard", "discard")));
        assert_eq!(job_action("delete"), None);
        assert_eq!(state_name(pb::JobState::Retryable as i32), "retryable");
        assert_eq!(state_name(99), "unknown");
    }
}
