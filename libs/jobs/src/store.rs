//! The storage boundary: everything the engine asks of a database. One
//! trait, two implementations ([`crate::PgStore`], [`crate::SqliteStore`]),
//! and one behaviour test suite run against both.

use std::{future::Future, time::Duration};

use chrono::{DateTime, Utc};

use crate::{Inserted, Job, JobState, JobsError, NewJob};

/// How one attempt ended, as the engine records it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done.
    Completed,
    /// Failed; runs again at `at` (the caller already checked attempts).
    Retry {
        /// When to run again.
        at: DateTime<Utc>,
        /// What went wrong.
        error: String,
    },
    /// Failed for good.
    Discard {
        /// What went wrong.
        error: String,
    },
    /// Run again at `until` without spending an attempt.
    Snooze {
        /// When to run again.
        until: DateTime<Utc>,
    },
    /// Stopped on request (operator or handler).
    Cancelled {
        /// Why.
        reason: String,
    },
    /// Not finished when its node shut down: available again now, without
    /// spending the attempt.
    Released,
}

/// The end of one attempt of one job. The store applies it only if the job
/// is still executing that attempt, so a stale node can never overwrite a
/// newer attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The job.
    pub id: i64,
    /// The attempt that ended.
    pub attempt: i32,
    /// How it ended.
    pub outcome: Outcome,
}

/// Filters for listing jobs; empty filters match everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListFilter {
    /// Any of these states.
    pub states: Vec<JobState>,
    /// Exactly this queue.
    pub queue: Option<String>,
    /// Exactly this kind.
    pub kind: Option<String>,
    /// Carrying this tag.
    pub tag: Option<String>,
    /// Only ids below this (the cursor: newest first).
    pub before_id: Option<i64>,
    /// At most this many (capped at 500).
    pub limit: u32,
}

/// Jobs one page of the list searches, newest first, when its filter has
/// no index of its own (a queue or a kind, without a state that has one):
/// bounds what a page costs however many jobs the table holds; the next
/// page goes on below.
pub const LIST_WINDOW: i64 = 50_000;

/// States whose jobs have an index of their own (`job_claim`,
/// `job_executing`, `job_failed`): a list filtered to these needs no
/// window. Completed jobs are most of a busy table and have none.
const INDEXED_STATES: [JobState; 6] = [
    JobState::Available,
    JobState::Scheduled,
    JobState::Retryable,
    JobState::Executing,
    JobState::Discarded,
    JobState::Cancelled,
];

/// Whether a page of `filter` searches only [`LIST_WINDOW`] jobs: a queue
/// or kind filter scanned newest first, unless a state or a tag with an
/// index of its own narrows the rows first.
pub(crate) fn list_needs_window(filter: &ListFilter) -> bool {
    let indexed_states =
        !filter.states.is_empty() && filter.states.iter().all(|s| INDEXED_STATES.contains(s));
    (filter.queue.is_some() || filter.kind.is_some()) && filter.tag.is_none() && !indexed_states
}

/// One page of the job list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobPage {
    /// Matching jobs, newest first.
    pub jobs: Vec<Job>,
    /// Where the next page starts (its `before_id`); `None` on the last.
    pub next_before: Option<i64>,
    /// Set when this page searched only the jobs from this id up (see
    /// [`LIST_WINDOW`]): fewer jobs than asked do not mean there are no
    /// older matches.
    pub searched_from: Option<i64>,
}

impl JobPage {
    /// The page for `jobs` found below `before` by a query for `limit`,
    /// searching from `floor` up when windowed.
    pub(crate) fn new(jobs: Vec<Job>, limit: u32, floor: Option<i64>) -> Self {
        let next_before = match (jobs.last(), floor) {
            (Some(last), _) if jobs.len() >= limit as usize => Some(last.id),
            (_, Some(floor)) if floor > 1 => Some(floor),
            _ => None,
        };
        Self {
            jobs,
            next_before,
            searched_from: floor.filter(|f| *f > 1),
        }
    }
}

/// How far back the completion rate looks.
pub(crate) const RATE_WINDOW_SECONDS: f64 = 60.0;
/// The most completions the rate is computed from: at a higher rate the
/// window shrinks to the time these took.
pub const RATE_SAMPLE: i64 = 10_000;

/// A queue's completions per second: `n` of the `total` completions
/// sampled, the oldest of them `span` seconds ago. A full sample covers
/// only its span; a partial one covers the whole window.
pub(crate) fn completion_rate(n: i64, total: i64, span: f64) -> f64 {
    let window = if total >= RATE_SAMPLE && span > 0.0 {
        span
    } else {
        RATE_WINDOW_SECONDS
    };
    n as f64 / window
}

/// Jobs per state in one queue.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueCounts {
    /// Queue name.
    pub queue: String,
    /// Paused on every node.
    pub paused: bool,
    /// Count per state, in [`JobState::ALL`] order.
    pub counts: [u64; 7],
    /// The completed count is the planner's estimate, not a count: on a
    /// big table (PostgreSQL) counting them would take longer than a page
    /// or a metrics scrape should.
    pub completed_estimated: bool,
    /// Jobs completed per second over the last minute (from at most the
    /// latest [`RATE_SAMPLE`] completions, so the cost stays bounded
    /// however fast jobs finish).
    pub completed_per_second: f64,
    /// When the longest-waiting available job became runnable: how far
    /// behind the queue is (`jobs.queue.oldest_available_age`), which a
    /// depth alone does not say.
    pub oldest_available: Option<DateTime<Utc>>,
}

impl QueueCounts {
    /// The count of one state.
    pub fn count(&self, state: JobState) -> u64 {
        self.counts[state as usize]
    }
}

/// A message from the database (or, embedded, from this process) that
/// wakes a node up before its next poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// Jobs were inserted into this queue.
    Inserted(String),
    /// Cancellation was requested for this executing job.
    CancelRequested(i64),
    /// A queue was paused or resumed.
    QueueChanged(String),
}

/// What the engine needs from a database.
pub trait JobStore: Clone + Send + Sync + 'static {
    /// Applies the engine's migrations (idempotent).
    fn migrate(&self) -> impl Future<Output = Result<(), JobsError>> + Send;

    /// Inserts jobs in one transaction, in order; unique jobs that already
    /// exist are returned flagged as duplicates.
    fn insert_many(
        &self,
        jobs: &[NewJob],
    ) -> impl Future<Output = Result<Vec<Inserted>, JobsError>> + Send;

    /// Claims up to `limit` runnable jobs of `queue` for `node`, first by
    /// priority then by scheduled time; none while the queue is paused. With
    /// a global limit, never more than that many execute across nodes.
    fn claim(
        &self,
        queue: &str,
        limit: u32,
        node: &str,
        global_limit: Option<u32>,
    ) -> impl Future<Output = Result<Vec<Job>, JobsError>> + Send;

    /// Records many attempts' ends in one statement; returns how many
    /// applied (stale ones are skipped).
    fn complete_many(
        &self,
        completions: &[Completion],
    ) -> impl Future<Output = Result<u64, JobsError>> + Send;

    /// One job.
    fn get(&self, id: i64) -> impl Future<Output = Result<Option<Job>, JobsError>> + Send;

    /// Jobs matching `filter`, newest first.
    fn list(&self, filter: &ListFilter)
    -> impl Future<Output = Result<Vec<Job>, JobsError>> + Send;

    /// One page of jobs matching `filter`, newest first, at a cost bounded
    /// whatever the table holds (what a console or API lists with): see
    /// [`LIST_WINDOW`].
    fn list_page(
        &self,
        filter: &ListFilter,
    ) -> impl Future<Output = Result<JobPage, JobsError>> + Send;

    /// Cancels a job in any non-terminal state; an executing job is only
    /// marked (its node stops the handler and records the cancellation).
    fn cancel(&self, id: i64) -> impl Future<Output = Result<Job, JobsError>> + Send;

    /// Makes a discarded, cancelled, retryable or scheduled job available
    /// now, granting an attempt if it had none left.
    fn retry(&self, id: i64) -> impl Future<Output = Result<Job, JobsError>> + Send;

    /// Gives up on a job that is waiting (available, scheduled or
    /// retryable): it becomes `discarded`, keeps its history, and can be
    /// retried by hand later. An executing job is cancelled instead.
    fn discard(&self, id: i64) -> impl Future<Output = Result<Job, JobsError>> + Send;

    /// Per-queue counts by state.
    fn queue_counts(&self) -> impl Future<Output = Result<Vec<QueueCounts>, JobsError>> + Send;

    /// Pauses or resumes a queue on every node.
    fn set_paused(
        &self,
        queue: &str,
        paused: bool,
    ) -> impl Future<Output = Result<(), JobsError>> + Send;

    /// Registers the node or refreshes its heartbeat.
    fn heartbeat(&self, node: &str) -> impl Future<Output = Result<(), JobsError>> + Send;

    /// Forgets a node that stopped cleanly.
    fn remove_node(&self, node: &str) -> impl Future<Output = Result<(), JobsError>> + Send;

    /// Ids among `ids` whose cancellation was requested (the polling
    /// fallback for lost notifications).
    fn cancel_requested(
        &self,
        ids: &[i64],
    ) -> impl Future<Output = Result<Vec<i64>, JobsError>> + Send;

    /// Returns executing jobs of nodes silent for longer than `lease` to
    /// available (or discarded, or cancelled); never touches a job that
    /// finished meanwhile. Returns the rescued ids.
    fn rescue(
        &self,
        lease: Duration,
    ) -> impl Future<Output = Result<Vec<Rescued>, JobsError>> + Send;

    /// Deletes up to `batch` finished jobs finalized more than `age` ago.
    fn prune(
        &self,
        age: Duration,
        batch: u32,
    ) -> impl Future<Output = Result<u64, JobsError>> + Send;

    /// Takes or extends the lease `name` for `node`; true while it holds it.
    fn try_lead(
        &self,
        name: &str,
        node: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, JobsError>> + Send;

    /// Gives up the lease `name` if `node` holds it.
    fn resign(&self, name: &str, node: &str) -> impl Future<Output = Result<(), JobsError>> + Send;

    /// Subscribes to wake-up signals.
    fn signals(&self) -> tokio::sync::broadcast::Receiver<Signal>;

    /// Feeds [`JobStore::signals`] from the database until `stop` (a node
    /// runs this for its whole life); returns at once for stores whose
    /// signals are in-process only.
    fn listen(&self, stop: tokio_util::sync::CancellationToken) -> impl Future<Output = ()> + Send;
}

/// A job handed back by rescue, with its queue (for per-queue metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rescued {
    /// The job.
    pub id: i64,
    /// Its queue.
    pub queue: String,
}

/// Most rows one list call returns.
pub const MAX_LIST: u32 = 500;

/// The state a finished attempt moves its job to.
pub(crate) fn outcome_state(outcome: &Outcome) -> JobState {
    match outcome {
        Outcome::Completed => JobState::Completed,
        Outcome::Retry { .. } => JobState::Retryable,
        Outcome::Discard { .. } => JobState::Discarded,
        Outcome::Snooze { .. } => JobState::Scheduled,
        Outcome::Cancelled { .. } => JobState::Cancelled,
        Outcome::Released => JobState::Available,
    }
}

/// The error text an outcome records, if any.
pub(crate) fn outcome_error(outcome: &Outcome) -> Option<&str> {
    match outcome {
        Outcome::Retry { error, .. } | Outcome::Discard { error } => Some(error),
        Outcome::Cancelled { reason } => Some(reason),
        Outcome::Released => Some("released at shutdown before it finished"),
        Outcome::Completed | Outcome::Snooze { .. } => None,
    }
}

/// When an outcome runs the job next, if it does.
pub(crate) fn outcome_next_run(outcome: &Outcome) -> Option<DateTime<Utc>> {
    match outcome {
        Outcome::Retry { at, .. } => Some(*at),
        Outcome::Snooze { until } => Some(*until),
        Outcome::Released => Some(Utc::now()),
        _ => None,
    }
}

/// Whether an outcome gives the attempt back.
pub(crate) fn outcome_refunds_attempt(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Snooze { .. } | Outcome::Released)
}

/// Why cancelling matched no row.
pub(crate) const ALREADY_FINISHED: &str = "it has already finished";
/// Why discarding matched no row.
pub(crate) const NOT_WAITING: &str =
    "only an available, scheduled or retryable job can be discarded (cancel an executing one)";
/// Why retrying matched no row.
pub(crate) const NOT_RETRYABLE: &str =
    "only a discarded, cancelled, retryable or scheduled job can be retried";

/// Why a guarded update of job `id` matched no row: the job does not
/// exist, or its state rules the operation out (`problem` says why).
pub(crate) async fn unmatched<S: JobStore>(store: &S, id: i64, problem: &'static str) -> JobsError {
    match store.get(id).await {
        Ok(None) => JobsError::NotFound(id),
        Ok(Some(job)) => JobsError::WrongState {
            id,
            state: job.state,
            problem,
        },
        Err(error) => error,
    }
}

/// An embedded sqlx migrator for one owner's migration. Versions are ranged
/// per owner (jobs 100000+, worker 300000+, ...) and `ignore_missing` lets
/// several owners share the database's `_sqlx_migrations` table.
pub fn embedded_migrator(
    version: i64,
    description: &'static str,
    sql: &'static str,
) -> sqlx::migrate::Migrator {
    embedded_migrations(&[(version, description, sql)])
}

/// [`embedded_migrator`] for an owner with several migrations, given as
/// `(version, description, sql)` in the order they apply.
pub fn embedded_migrations(
    migrations: &[(i64, &'static str, &'static str)],
) -> sqlx::migrate::Migrator {
    use std::borrow::Cow;
    let migrations = migrations
        .iter()
        .map(|&(version, description, sql)| {
            sqlx::migrate::Migration::new(
                version,
                Cow::Borrowed(description),
                sqlx::migrate::MigrationType::Simple,
                Cow::Borrowed(sql),
                false,
            )
        })
        .collect();
    sqlx::migrate::Migrator {
        migrations: Cow::Owned(migrations),
        ignore_missing: true,
        locking: true,
        no_tx: false,
    }
}

/// Puts claimed jobs in the order the claim chose them (priority, due time,
/// id): both stores' statements return them unordered.
pub(crate) fn sort_in_claim_order(jobs: &mut [Job]) {
    jobs.sort_by_key(|j| (j.priority, j.scheduled_at, j.id));
}
