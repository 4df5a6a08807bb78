//! The production store: PostgreSQL, schema `jobs`.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use chrono::{DateTime, Utc};
use sqlx::{
    PgConnection, PgPool, Row as _,
    migrate::Migrator,
    postgres::{PgListener, PgRow},
};
use tokio::sync::broadcast;

use crate::{
    AttemptError, Inserted, Job, JobState, JobsError, NewJob,
    store::{
        Completion, JobPage, JobStore, LIST_WINDOW, ListFilter, MAX_LIST, QueueCounts, RATE_SAMPLE,
        Rescued, Signal, outcome_error, outcome_next_run, outcome_refunds_attempt, outcome_state,
    },
    unique::unique_key,
};

/// NOTIFY channel for inserts; the payload is the queue name. PostgreSQL
/// folds identical notifications within one transaction into one, so a
/// transaction that inserts a thousand jobs into a queue wakes nodes once.
const INSERT_CHANNEL: &str = "jobs_insert";
/// NOTIFY channel for cancellations (`cancel:<id>`) and pause changes
/// (`queue:<name>`).
const CONTROL_CHANNEL: &str = "jobs_control";

/// Columns of a job row, in the order [`job_from_row`] reads them.
const JOB_COLUMNS: &str = "id, state::text AS state, queue, kind, args, meta, tags, errors, priority, attempt, \
     max_attempts, attempted_by, inserted_at, scheduled_at, attempted_at, finalized_at, cancel_requested_at";

/// What an insert reads back: the id and time the database chose, and the
/// unique key. State and scheduled time follow from them: both use the
/// statement's `now()`, which is `inserted_at`.
type InsertedRow = (i64, DateTime<Utc>, Option<Vec<u8>>);

/// The engine's migrations, embedded. Versions are in the 100000 range and
/// the migrator ignores versions it does not know, so other owners' sqlx
/// migrations can share the database's `_sqlx_migrations` table.
pub fn migrator() -> Migrator {
    crate::store::embedded_migrations(&[
        (
            100_001,
            "jobs",
            include_str!("../migrations/postgres/100001_jobs.sql"),
        ),
        (
            100_002,
            "jobs enqueue functions",
            include_str!("../migrations/postgres/100002_enqueue_functions.sql"),
        ),
        (
            100_003,
            "jobs claim function",
            include_str!("../migrations/postgres/100003_claim_function.sql"),
        ),
        (
            100_004,
            "jobs console indexes",
            include_str!("../migrations/postgres/100004_console_indexes.sql"),
        ),
        (
            100_005,
            "jobs enqueue without keys",
            include_str!("../migrations/postgres/100005_enqueue_without_keys.sql"),
        ),
    ])
}

/// Opens a pool of at least two connections, each named
/// `application_name` in `pg_stat_activity` and the server log (so an
/// operator sees which app holds a lock), waiting at most
/// `acquire_timeout` for a connection. Every app's PostgreSQL pool comes
/// from here.
pub async fn connect(
    url: &str,
    application_name: &str,
    max_connections: u32,
    acquire_timeout: Duration,
) -> Result<PgPool, JobsError> {
    let options: sqlx::postgres::PgConnectOptions = url.parse()?;
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(max_connections.max(2))
        .acquire_timeout(acquire_timeout)
        .connect_with(options.application_name(application_name))
        .await?)
}

/// Answers when the database does: the readiness check of every app on
/// PostgreSQL.
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(drop)
}

/// The versions of `migrators` not yet applied to the database, oldest
/// first: empty when the schema an app needs is all there. A newer release
/// may have applied more (expand/contract keeps them compatible).
pub async fn pending_migrations(
    pool: &PgPool,
    migrators: &[Migrator],
) -> Result<Vec<i64>, sqlx::Error> {
    let table: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('public._sqlx_migrations')::text")
            .fetch_one(pool)
            .await?;
    let applied: std::collections::HashSet<i64> = if table.is_some() {
        sqlx::query_scalar("SELECT version FROM public._sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect()
    } else {
        std::collections::HashSet::new()
    };
    let mut pending: Vec<i64> = migrators
        .iter()
        .flat_map(|migrator| migrator.iter())
        .filter(|migration| migration.migration_type.is_up_migration())
        .map(|migration| migration.version)
        .filter(|version| !applied.contains(version))
        .collect();
    pending.sort_unstable();
    Ok(pending)
}

/// How often an app that does not migrate looks for its schema again.
const SCHEMA_POLL: Duration = Duration::from_secs(2);
/// How often it says it is still waiting.
const SCHEMA_WAIT_LOG: Duration = Duration::from_secs(30);

/// Waits until every migration of `migrators` is applied: an app started
/// with migrations off (`<APP>_MIGRATE_AT_START=false`) does this before
/// it serves, so it is not ready until the release's migrations Job has
/// run. Waits as long as it takes (the orchestrator's start-up probe
/// bounds it), saying what it waits for every 30 s.
pub async fn wait_for_migrations(pool: &PgPool, migrators: &[Migrator], app: &str) {
    let mut said = None::<tokio::time::Instant>;
    loop {
        let due = said.is_none_or(|at| at.elapsed() >= SCHEMA_WAIT_LOG);
        match pending_migrations(pool, migrators).await {
            Ok(pending) if pending.is_empty() => {
                if said.is_some() {
                    tracing::info!(app, "schema present: starting");
                }
                return;
            }
            Ok(pending) if due => {
                tracing::info!(
                    app,
                    ?pending,
                    "waiting for migrations: run `{app} migrate` with the migrator credential (the release's migrations Job)"
                );
                said = Some(tokio::time::Instant::now());
            }
            Err(error) if due => {
                tracing::warn!(app, %error, "cannot read which migrations ran; trying again");
                said = Some(tokio::time::Instant::now());
            }
            Ok(_) | Err(_) => {}
        }
        tokio::time::sleep(SCHEMA_POLL).await;
    }
}

/// Replaces the database name in a PostgreSQL URL, keeping its query.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_end..].find('/').map(|i| i + authority_end);
    let base = path_start.map_or(base, |i| &base[..i]);
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

/// A [`JobStore`] on a PostgreSQL pool.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    signals: broadcast::Sender<Signal>,
}

impl PgStore {
    /// Wraps a pool; a node LISTENs through it for wake-ups.
    pub fn new(pool: PgPool) -> Self {
        let (signals, _) = broadcast::channel(1024);
        Self { pool, signals }
    }

    /// The pool, for callers that enqueue inside their own transactions.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The planner's plan for choosing `limit` jobs of `queue` to claim
    /// (EXPLAIN, not executed), as `jobs.claimable_ids` runs it (bitmap
    /// scans off), for the runbook and the test that pins the index.
    pub async fn explain_claim(&self, queue: &str, limit: i64) -> Result<String, JobsError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET LOCAL enable_bitmapscan = off")
            .execute(&mut *tx)
            .await?;
        let lines: Vec<String> =
            sqlx::query_scalar(&format!("EXPLAIN (COSTS OFF) {CLAIMABLE_IDS_SQL}"))
                .bind(queue)
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?;
        tx.rollback().await?;
        Ok(lines.join("\n"))
    }

    /// Jobs matching `filter` below its cursor and, when given, from
    /// `floor` up.
    async fn list_from(
        &self,
        filter: &ListFilter,
        floor: Option<i64>,
    ) -> Result<Vec<Job>, JobsError> {
        let rows = list_statement("", filter, floor)
            .build()
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Where a page of `filter` starts searching when it is windowed (see
    /// [`LIST_WINDOW`]); `None` when an index of its own bounds it.
    async fn list_floor(&self, filter: &ListFilter) -> Result<Option<i64>, JobsError> {
        if !crate::store::list_needs_window(filter) {
            return Ok(None);
        }
        let top = match filter.before_id {
            Some(before) => before,
            None => {
                sqlx::query_scalar::<_, Option<i64>>("SELECT max(id) FROM jobs.job")
                    .fetch_one(&self.pool)
                    .await?
                    .unwrap_or(0)
                    + 1
            }
        };
        Ok(Some(top - LIST_WINDOW))
    }

    /// The planner's plan for one page of the job list with `filter`
    /// (EXPLAIN, not executed), for the runbook and the tests that pin each
    /// filter to an index.
    pub async fn explain_list(&self, filter: &ListFilter) -> Result<String, JobsError> {
        let floor = self.list_floor(filter).await?;
        let lines: Vec<String> = list_statement("EXPLAIN (COSTS OFF) ", filter, floor)
            .build_query_scalar()
            .fetch_all(&self.pool)
            .await?;
        Ok(lines.join("\n"))
    }

    /// The planner's plan for the per-state counts of jobs in any state but
    /// completed (EXPLAIN, not executed), for the test that pins them to
    /// the partial indexes.
    pub async fn explain_counts(&self) -> Result<String, JobsError> {
        let lines: Vec<String> =
            sqlx::query_scalar(&format!("EXPLAIN (COSTS OFF) {UNFINISHED_COUNTS_SQL}"))
                .fetch_all(&self.pool)
                .await?;
        Ok(lines.join("\n"))
    }

    /// LISTENs for insert and control notifications until `stop`, turning
    /// them into [`Signal`]s; reconnects after errors. Nodes also poll, so a
    /// lost notification (or PgBouncer in transaction mode, where LISTEN does
    /// not work) only costs latency.
    async fn listen_until(&self, stop: tokio_util::sync::CancellationToken) {
        loop {
            let session = async {
                let mut listener = PgListener::connect_with(&self.pool).await?;
                listener
                    .listen_all([INSERT_CHANNEL, CONTROL_CHANNEL])
                    .await?;
                loop {
                    let notification = listener.recv().await?;
                    let payload = notification.payload();
                    let signal = if notification.channel() == INSERT_CHANNEL {
                        Signal::Inserted(payload.to_owned())
                    } else if let Some(id) = payload
                        .strip_prefix("cancel:")
                        .and_then(|id| id.parse().ok())
                    {
                        Signal::CancelRequested(id)
                    } else if let Some(queue) = payload.strip_prefix("queue:") {
                        Signal::QueueChanged(queue.to_owned())
                    } else {
                        continue;
                    };
                    let _ = self.signals.send(signal);
                }
                #[allow(unreachable_code)]
                Ok::<(), sqlx::Error>(())
            };
            tokio::select! {
                () = stop.cancelled() => return,
                result = session => {
                    if let Err(error) = result {
                        tracing::warn!(%error, "LISTEN connection lost; relying on polling until it is back");
                    }
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

/// Inserts jobs on `conn`, which may be inside the caller's transaction
/// (`&mut *tx`): the jobs become visible, and nodes are notified, only when
/// that transaction commits. Unique jobs that already exist come back as
/// duplicates, with the job that holds their key.
pub async fn insert_many(
    conn: &mut PgConnection,
    jobs: &[NewJob],
) -> Result<Vec<Inserted>, JobsError> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let columns = InsertColumns::of(jobs)?;
    let rows = insert_rows(conn, &columns).await?;
    let mut matched = match_rows(jobs, &columns, rows);
    let missing: Vec<Vec<u8>> = std::mem::take(&mut matched.pending_keys)
        .into_iter()
        .filter(|k| !matched.by_key.contains_key(k))
        .collect();
    if !missing.is_empty() {
        matched.by_key.extend(unique_holders(conn, &missing).await?);
    }
    let out = matched.resolve(&columns.keys)?;
    notify_available(conn, &out).await?;
    Ok(out)
}

/// The jobs to insert, column by column, for one `unnest` statement.
struct InsertColumns<'a> {
    kinds: Vec<&'a str>,
    queues: Vec<&'a str>,
    args: Vec<String>,
    /// `meta` with the trace; `NULL` for the common empty case.
    metas: Vec<Option<String>>,
    meta_values: Vec<serde_json::Value>,
    tags: Vec<Option<String>>,
    priorities: Vec<i16>,
    max_attempts: Vec<i32>,
    scheduled: Vec<Option<DateTime<Utc>>>,
    keys: Vec<Option<Vec<u8>>>,
    masks: Vec<Option<i32>>,
}

impl<'a> InsertColumns<'a> {
    /// Validates every job and lays them out as columns.
    fn of(jobs: &'a [NewJob]) -> Result<Self, JobsError> {
        let now = Utc::now();
        let carrier = crate::trace::current_carrier();
        let mut columns = Self {
            kinds: Vec::with_capacity(jobs.len()),
            queues: Vec::with_capacity(jobs.len()),
            args: Vec::with_capacity(jobs.len()),
            metas: Vec::with_capacity(jobs.len()),
            meta_values: Vec::with_capacity(jobs.len()),
            tags: Vec::with_capacity(jobs.len()),
            priorities: Vec::with_capacity(jobs.len()),
            max_attempts: Vec::with_capacity(jobs.len()),
            scheduled: Vec::with_capacity(jobs.len()),
            keys: Vec::with_capacity(jobs.len()),
            masks: Vec::with_capacity(jobs.len()),
        };
        for job in jobs {
            job.validate()?;
            let meta = crate::trace::meta_with_trace(&job.meta, &carrier);
            columns.kinds.push(job.kind.as_str());
            columns.queues.push(job.queue.as_str());
            columns.args.push(job.args.to_string());
            // NULL for the common empty cases: no JSON or array to parse.
            columns.metas.push(
                meta.as_object()
                    .is_none_or(|m| !m.is_empty())
                    .then(|| meta.to_string()),
            );
            columns.meta_values.push(meta);
            columns
                .tags
                .push((!job.tags.is_empty()).then(|| array_literal(&job.tags)));
            columns.priorities.push(job.priority);
            columns.max_attempts.push(job.max_attempts);
            columns.scheduled.push(job.scheduled_at);
            columns
                .keys
                .push(job.unique.as_ref().map(|u| unique_key(job, u, now)));
            columns
                .masks
                .push(job.unique.as_ref().map(crate::UniqueOpts::states_mask));
        }
        Ok(columns)
    }
}

/// One statement for all the jobs. Rows are inserted in input order, so
/// identity values (and the returned rows sorted by id) follow it;
/// duplicates are skipped by the partial unique index and resolved by the
/// caller. Only the columns the database chose come back: the rest are the
/// caller's own values.
async fn insert_rows(
    conn: &mut PgConnection,
    columns: &InsertColumns<'_>,
) -> Result<Vec<InsertedRow>, JobsError> {
    // Through the SECURITY DEFINER function (migrations 100002 and 100005),
    // so a role that may only enqueue needs no rights on the table. With no
    // unique job in the batch the keys go as NULL: nothing can conflict, and
    // the function inserts without the ON CONFLICT arbiter (13% of the
    // statement's time on 10,000 jobs).
    let any_key = columns.keys.iter().any(Option::is_some);
    let mut rows: Vec<InsertedRow> = sqlx::query_as(
        "SELECT id, inserted_at, unique_key
         FROM jobs.enqueue($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::smallint[],
                           $7::integer[], $8::timestamptz[], $9::bytea[], $10::integer[])",
    )
    .bind(&columns.kinds)
    .bind(&columns.queues)
    .bind(&columns.args)
    .bind(&columns.metas)
    .bind(&columns.tags)
    .bind(&columns.priorities)
    .bind(&columns.max_attempts)
    .bind(&columns.scheduled)
    .bind(any_key.then_some(&columns.keys))
    .bind(any_key.then_some(&columns.masks))
    .fetch_all(&mut *conn)
    .await?;
    rows.sort_by_key(|row| row.0);
    Ok(rows)
}

/// Which input job each returned row belongs to.
struct Matched {
    /// Per input job: the inserted job, or `None` for a duplicate.
    results: Vec<Option<Inserted>>,
    /// The job holding each unique key, as far as known.
    by_key: HashMap<Vec<u8>, Job>,
    /// Keys of duplicates whose holder is not among the inserted rows.
    pending_keys: Vec<Vec<u8>>,
}

/// Walks the input in order: a job without a key was inserted; a job with a
/// key was inserted if it is the first of its key in this call and the next
/// returned row carries that key.
fn match_rows(jobs: &[NewJob], columns: &InsertColumns<'_>, rows: Vec<InsertedRow>) -> Matched {
    let mut inserted_rows = rows.into_iter().peekable();
    let mut matched = Matched {
        results: Vec::with_capacity(jobs.len()),
        by_key: HashMap::new(),
        pending_keys: Vec::new(),
    };
    for ((job, key), meta) in jobs
        .iter()
        .zip(&columns.keys)
        .zip(columns.meta_values.iter().cloned())
    {
        let takes_row = match key {
            None => inserted_rows.peek().is_some(),
            Some(key) => {
                !matched.by_key.contains_key(key)
                    && inserted_rows
                        .peek()
                        .is_some_and(|row| row.2.as_ref() == Some(key))
            }
        };
        match inserted_rows.next_if(|_| takes_row) {
            Some((id, inserted_at, _)) => {
                let job = crate::job::inserted_job(job, id, inserted_at, meta);
                if let Some(key) = key {
                    matched.by_key.insert(key.clone(), job.clone());
                }
                matched.results.push(Some(Inserted {
                    job,
                    duplicate: false,
                }));
            }
            None => {
                matched.results.push(None);
                if let Some(key) = key {
                    matched.pending_keys.push(key.clone());
                }
            }
        }
    }
    matched
}

/// The live jobs holding `keys` (the duplicates' originals).
async fn unique_holders(
    conn: &mut PgConnection,
    keys: &[Vec<u8>],
) -> Result<Vec<(Vec<u8>, Job)>, JobsError> {
    let sql = format!("SELECT {JOB_COLUMNS}, unique_key FROM jobs.unique_holders($1)");
    let mut holders = Vec::new();
    for row in sqlx::query(&sql).bind(keys).fetch_all(&mut *conn).await? {
        let key: Vec<u8> = row.try_get("unique_key")?;
        holders.push((key, job_from_row(&row)?));
    }
    Ok(holders)
}

impl Matched {
    /// One answer per input job, in order: inserted, or a duplicate with
    /// the job holding its key.
    fn resolve(self, keys: &[Option<Vec<u8>>]) -> Result<Vec<Inserted>, JobsError> {
        let mut out = Vec::with_capacity(keys.len());
        for (result, key) in self.results.into_iter().zip(keys) {
            match (result, key) {
                (Some(inserted), _) => out.push(inserted),
                (None, Some(key)) => match self.by_key.get(key) {
                    Some(job) => out.push(Inserted {
                        job: job.clone(),
                        duplicate: true,
                    }),
                    // The holder finished between our insert and our
                    // look-up: the caller may simply insert again.
                    None => {
                        return Err(JobsError::Database(sqlx::Error::Protocol(
                            "a unique job's holder changed state during insert; retry the insert"
                                .into(),
                        )));
                    }
                },
                (None, None) => {
                    return Err(JobsError::Corrupt(
                        "an inserted job was not returned".into(),
                    ));
                }
            }
        }
        Ok(out)
    }
}

/// One NOTIFY per queue that gained an available job (delivered when the
/// transaction commits).
async fn notify_available(conn: &mut PgConnection, inserted: &[Inserted]) -> Result<(), JobsError> {
    let woken: std::collections::BTreeSet<&str> = inserted
        .iter()
        .filter(|i| !i.duplicate && i.job.state == JobState::Available)
        .map(|i| i.job.queue.as_str())
        .collect();
    if !woken.is_empty() {
        let woken: Vec<&str> = woken.into_iter().collect();
        sqlx::query("SELECT pg_notify($1, q) FROM unnest($2::text[]) AS q")
            .bind(INSERT_CHANNEL)
            .bind(&woken)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// The job list's statement for `filter` after `prefix` (`EXPLAIN`): only
/// the conditions the filter uses, with the states written out (a fixed
/// set of names, never input), so the planner can match the partial
/// indexes (`job_claim`, `job_executing`, `job_failed`, `job_tags`)
/// whatever plan it caches; ids below the cursor and, when windowed, from
/// `floor` up.
fn list_statement<'a>(
    prefix: &str,
    filter: &'a ListFilter,
    floor: Option<i64>,
) -> sqlx::QueryBuilder<'a, sqlx::Postgres> {
    let mut sql = sqlx::QueryBuilder::new(format!(
        "{prefix}SELECT {JOB_COLUMNS} FROM jobs.job WHERE id < "
    ));
    sql.push_bind(filter.before_id.unwrap_or(i64::MAX));
    if let Some(floor) = floor {
        sql.push(" AND id >= ").push_bind(floor);
    }
    if !filter.states.is_empty() {
        let names: Vec<String> = filter
            .states
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        sql.push(format!(" AND state IN ({})", names.join(", ")));
    }
    if let Some(queue) = &filter.queue {
        sql.push(" AND queue = ").push_bind(queue);
    }
    if let Some(kind) = &filter.kind {
        sql.push(" AND kind = ").push_bind(kind);
    }
    if let Some(tag) = &filter.tag {
        // `tags <> '{}'` follows from the tag, and tells the planner so: it
        // is the predicate of `job_tags`.
        sql.push(" AND tags <> '{}' AND tags @> ARRAY[")
            .push_bind(tag)
            .push("]");
    }
    sql.push(" ORDER BY id DESC LIMIT ")
        .push_bind(i64::from(filter.limit.clamp(1, MAX_LIST)));
    sql
}

/// Counts by queue and state of every state but completed, each part
/// matching one partial index's predicate (`job_claim`, `job_executing`,
/// `job_failed`), so none reads the completed rows that fill a busy table.
/// The oldest available job rides along.
const UNFINISHED_COUNTS_SQL: &str = "\
SELECT queue, state::text AS state, count(*) AS n,
       min(scheduled_at) FILTER (WHERE state = 'available') AS oldest
  FROM jobs.job WHERE state IN ('available', 'scheduled', 'retryable') GROUP BY queue, state
UNION ALL
SELECT queue, 'executing', count(*), NULL FROM jobs.job WHERE state = 'executing' GROUP BY queue
UNION ALL
SELECT queue, state::text, count(*), NULL
  FROM jobs.job WHERE state IN ('discarded', 'cancelled') GROUP BY queue, state";

/// The counts of `queue` in `by_queue`, zero until set.
fn counts_of(by_queue: &mut BTreeMap<String, QueueCounts>, queue: String) -> &mut QueueCounts {
    by_queue
        .entry(queue.clone())
        .or_insert_with(|| QueueCounts {
            queue,
            ..QueueCounts::default()
        })
}

/// Per queue, how many of the latest `$1` completions of the last minute
/// are its, how many were sampled, and how long ago the oldest was: read
/// newest first from `job_finalized`, bounded however fast jobs finish.
const COMPLETION_RATE_SQL: &str = "\
WITH recent AS (
  SELECT queue, finalized_at FROM jobs.job
   WHERE finalized_at > now() - interval '60 seconds' AND state = 'completed'
   ORDER BY finalized_at DESC LIMIT $1)
SELECT queue, count(*) AS n, (SELECT count(*) FROM recent) AS total,
       extract(epoch FROM now() - (SELECT min(finalized_at) FROM recent))::float8 AS span
  FROM recent GROUP BY queue";

/// Above this many rows (the planner's count), completed jobs are
/// estimated per queue rather than counted: counting a million takes
/// longer than a page or a metrics scrape should.
const EXACT_COMPLETED_UP_TO: f32 = 100_000.0;

/// The body of `jobs.claimable_ids` (migration 100003) with `$1` queue and
/// `$2` limit: what [`PgStore::explain_claim`] shows. The migration is the
/// source of truth; a test checks the two agree.
const CLAIMABLE_IDS_SQL: &str = "SELECT job.id FROM jobs.job
    WHERE job.queue = $1
      AND job.state IN ('available', 'scheduled', 'retryable')
      AND job.scheduled_at <= now()
      AND NOT EXISTS (SELECT 1 FROM jobs.queue q WHERE q.name = $1 AND q.paused)
    ORDER BY job.priority, job.scheduled_at, job.id
    LIMIT $2
    FOR UPDATE SKIP LOCKED";

/// The claim statement: `$1` queue, `$2` limit, `$3` node. One statement,
/// so a claim outside a transaction is one round trip.
///
/// `synchronous_commit` off for this transaction only: if the database
/// crashes before the claim's WAL is flushed, the claim is lost and the
/// job is runnable again, exactly as if this node had died and been
/// rescued. No job is lost and only jobs that were executing at the crash
/// can run twice, the guarantee that holds anyway. Inserts and
/// completions stay synchronous. (`set_config(.., true)` lasts until the
/// statement's transaction commits.)
///
/// The chosen ids are an `ARRAY(...)` sub-select, evaluated once (an
/// init plan): the locked set is fixed before the UPDATE runs, so it
/// cannot claim more rows than the limit or other rows than it returns
/// (an inlined `LIMIT ... SKIP LOCKED` sub-query could be re-evaluated),
/// and `id = ANY(array)` is always primary-key look-ups (a join against
/// the function's result was planned as a full scan of the table).
fn claim_sql() -> String {
    format!(
        "UPDATE jobs.job j
         SET state = 'executing', attempt = j.attempt + 1, attempted_at = now(), attempted_by = $3
         WHERE j.id = ANY(ARRAY(SELECT jobs.claimable_ids($1, $2)))
           AND (SELECT set_config('synchronous_commit', 'off', true)) = 'off'
         RETURNING {}",
        JOB_COLUMNS.replace("id, state::text", "j.id, j.state::text")
    )
}

/// A PostgreSQL array literal (`{"a","b"}`), quoting every element.
fn array_literal(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|item| format!("\"{}\"", item.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("{{{}}}", quoted.join(","))
}

/// Inserts one job on `conn` (see [`insert_many`]).
pub async fn insert(conn: &mut PgConnection, job: &NewJob) -> Result<Inserted, JobsError> {
    let mut inserted = insert_many(conn, std::slice::from_ref(job)).await?;
    inserted
        .pop()
        .ok_or_else(|| JobsError::Corrupt("insert returned no row".into()))
}

fn job_from_row(row: &PgRow) -> Result<Job, JobsError> {
    let state: String = row.try_get("state")?;
    let errors: serde_json::Value = row.try_get("errors")?;
    Ok(Job {
        id: row.try_get("id")?,
        state: state.parse().map_err(JobsError::Corrupt)?,
        queue: row.try_get("queue")?,
        kind: row.try_get("kind")?,
        args: row.try_get("args")?,
        meta: row.try_get("meta")?,
        tags: row.try_get("tags")?,
        errors: serde_json::from_value::<Vec<AttemptError>>(errors)
            .map_err(|e| JobsError::Corrupt(e.to_string()))?,
        priority: row.try_get("priority")?,
        attempt: row.try_get("attempt")?,
        max_attempts: row.try_get("max_attempts")?,
        attempted_by: row.try_get("attempted_by")?,
        inserted_at: row.try_get("inserted_at")?,
        scheduled_at: row.try_get("scheduled_at")?,
        attempted_at: row.try_get("attempted_at")?,
        finalized_at: row.try_get("finalized_at")?,
        cancel_requested_at: row.try_get("cancel_requested_at")?,
    })
}

/// Claimed rows as jobs, in the order the claim chose them (RETURNING
/// does not keep it).
fn jobs_in_claim_order(rows: &[PgRow]) -> Result<Vec<Job>, JobsError> {
    let mut jobs = rows
        .iter()
        .map(job_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    crate::store::sort_in_claim_order(&mut jobs);
    Ok(jobs)
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

impl JobStore for PgStore {
    async fn migrate(&self) -> Result<(), JobsError> {
        migrator().run(&self.pool).await?;
        Ok(())
    }

    async fn insert_many(&self, jobs: &[NewJob]) -> Result<Vec<Inserted>, JobsError> {
        let mut tx = self.pool.begin().await?;
        let inserted = insert_many(&mut tx, jobs).await?;
        tx.commit().await?;
        Ok(inserted)
    }

    async fn claim(
        &self,
        queue: &str,
        limit: u32,
        node: &str,
        global_limit: Option<u32>,
    ) -> Result<Vec<Job>, JobsError> {
        let Some(global) = global_limit else {
            // One statement, one round trip (see `claim_sql`).
            let rows = sqlx::query(&claim_sql())
                .bind(queue)
                .bind(i64::from(limit))
                .bind(node)
                .fetch_all(&self.pool)
                .await?;
            return jobs_in_claim_order(&rows);
        };
        let mut tx = self.pool.begin().await?;
        // Serialise claimers of this queue so two nodes cannot both see
        // room under the global limit; held only for this transaction.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('jobs.queue.' || $1, 0))")
            .bind(queue)
            .execute(&mut *tx)
            .await?;
        let executing: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs.job WHERE queue = $1 AND state = 'executing'",
        )
        .bind(queue)
        .fetch_one(&mut *tx)
        .await?;
        let limit = i64::from(limit).min(i64::from(global) - executing).max(0);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(&claim_sql())
            .bind(queue)
            .bind(limit)
            .bind(node)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        jobs_in_claim_order(&rows)
    }

    async fn complete_many(&self, completions: &[Completion]) -> Result<u64, JobsError> {
        if completions.is_empty() {
            return Ok(0);
        }
        let now = Utc::now();
        let ids: Vec<i64> = completions.iter().map(|c| c.id).collect();
        let attempts: Vec<i32> = completions.iter().map(|c| c.attempt).collect();
        let states: Vec<&str> = completions
            .iter()
            .map(|c| outcome_state(&c.outcome).as_str())
            .collect();
        let next_runs: Vec<Option<DateTime<Utc>>> = completions
            .iter()
            .map(|c| outcome_next_run(&c.outcome))
            .collect();
        let errors: Vec<Option<String>> = completions
            .iter()
            .map(|c| {
                outcome_error(&c.outcome).map(|error| {
                    serde_json::json!([AttemptError {
                        attempt: c.attempt,
                        at: now,
                        error: error.to_owned()
                    }])
                    .to_string()
                })
            })
            .collect();
        let refunds: Vec<i32> = completions
            .iter()
            .map(|c| i32::from(outcome_refunds_attempt(&c.outcome)))
            .collect();
        // One statement for the whole batch. The WHERE clause is the guard:
        // only the attempt that is still executing can be ended, so a node
        // that lost its job to rescue cannot overwrite the newer attempt.
        // `j.id = ANY($1)` steers the plan to primary-key look-ups.
        let result = sqlx::query(
            "UPDATE jobs.job j
             SET state = u.state::jobs.job_state,
                 finalized_at = CASE WHEN u.state IN ('completed', 'discarded', 'cancelled') THEN now() END,
                 scheduled_at = COALESCE(u.next_run, j.scheduled_at),
                 errors = CASE WHEN u.error IS NULL THEN j.errors ELSE j.errors || u.error::jsonb END,
                 attempt = j.attempt - u.refund
             FROM unnest($1::bigint[], $2::integer[], $3::text[], $4::timestamptz[], $5::text[], $6::integer[])
                  AS u(id, attempt, state, next_run, error, refund)
             WHERE j.id = ANY($1) AND j.id = u.id AND j.state = 'executing' AND j.attempt = u.attempt",
        )
        .bind(&ids)
        .bind(&attempts)
        .bind(&states)
        .bind(&next_runs)
        .bind(&errors)
        .bind(&refunds)
        // Planned afresh each time: a cached generic plan cannot see the
        // array sizes and, past a few thousand finished rows, hashes the
        // whole table (seen: 200 ms instead of 7 ms for 1,000 ends).
        .persistent(false)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    async fn get(&self, id: i64) -> Result<Option<Job>, JobsError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs.job WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<Job>, JobsError> {
        self.list_from(filter, None).await
    }

    async fn list_page(&self, filter: &ListFilter) -> Result<JobPage, JobsError> {
        let floor = self.list_floor(filter).await?;
        let jobs = self.list_from(filter, floor).await?;
        Ok(JobPage::new(jobs, filter.limit.clamp(1, MAX_LIST), floor))
    }

    async fn cancel(&self, id: i64) -> Result<Job, JobsError> {
        let mut tx = self.pool.begin().await?;
        let sql = format!(
            "UPDATE jobs.job
             SET state = CASE WHEN state = 'executing' THEN state ELSE 'cancelled' END,
                 finalized_at = CASE WHEN state = 'executing' THEN NULL ELSE now() END,
                 cancel_requested_at = CASE WHEN state = 'executing' THEN now() ELSE cancel_requested_at END
             WHERE id = $1 AND state NOT IN ('completed', 'discarded', 'cancelled')
             RETURNING {JOB_COLUMNS}"
        );
        let Some(row) = sqlx::query(&sql).bind(id).fetch_optional(&mut *tx).await? else {
            drop(tx);
            return Err(crate::store::unmatched(self, id, crate::store::ALREADY_FINISHED).await);
        };
        let job = job_from_row(&row)?;
        if job.state == JobState::Executing {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CONTROL_CHANNEL)
                .bind(format!("cancel:{id}"))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(job)
    }

    async fn retry(&self, id: i64) -> Result<Job, JobsError> {
        let sql = format!(
            "UPDATE jobs.job
             SET state = 'available', scheduled_at = now(), finalized_at = NULL, cancel_requested_at = NULL,
                 max_attempts = GREATEST(max_attempts, attempt + 1)
             WHERE id = $1 AND state IN ('discarded', 'cancelled', 'retryable', 'scheduled')
             RETURNING {JOB_COLUMNS}"
        );
        let mut tx = self.pool.begin().await?;
        let row = match sqlx::query(&sql).bind(id).fetch_optional(&mut *tx).await {
            Ok(row) => row,
            Err(error) if is_unique_violation(&error) => {
                let state = self.get(id).await?.map_or(JobState::Discarded, |j| j.state);
                return Err(JobsError::WrongState {
                    id,
                    state,
                    problem: "a live job holds its unique key",
                });
            }
            Err(error) => return Err(error.into()),
        };
        let Some(row) = row else {
            drop(tx);
            return Err(crate::store::unmatched(self, id, crate::store::NOT_RETRYABLE).await);
        };
        let job = job_from_row(&row)?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(INSERT_CHANNEL)
            .bind(&job.queue)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(job)
    }

    async fn discard(&self, id: i64) -> Result<Job, JobsError> {
        let sql = format!(
            "UPDATE jobs.job SET state = 'discarded', finalized_at = now()
             WHERE id = $1 AND state IN ('available', 'scheduled', 'retryable')
             RETURNING {JOB_COLUMNS}"
        );
        let Some(row) = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Err(crate::store::unmatched(self, id, crate::store::NOT_WAITING).await);
        };
        job_from_row(&row)
    }

    async fn queue_counts(&self) -> Result<Vec<QueueCounts>, JobsError> {
        let mut by_queue = BTreeMap::new();
        for row in sqlx::query("SELECT name, paused FROM jobs.queue")
            .fetch_all(&self.pool)
            .await?
        {
            counts_of(&mut by_queue, row.try_get("name")?).paused = row.try_get("paused")?;
        }
        for row in sqlx::query(UNFINISHED_COUNTS_SQL)
            .fetch_all(&self.pool)
            .await?
        {
            let state: String = row.try_get("state")?;
            let state: JobState = state.parse().map_err(JobsError::Corrupt)?;
            let counts = counts_of(&mut by_queue, row.try_get("queue")?);
            counts.counts[state as usize] = u64::try_from(row.try_get::<i64, _>("n")?).unwrap_or(0);
            if state == JobState::Available {
                counts.oldest_available = row.try_get("oldest")?;
            }
        }
        // Completed jobs: counted while the table is small, estimated per
        // known queue once it is big (`jobs.estimated_completed`).
        let rows: f32 =
            sqlx::query_scalar("SELECT reltuples FROM pg_class WHERE oid = 'jobs.job'::regclass")
                .fetch_one(&self.pool)
                .await?;
        let estimated = rows >= EXACT_COMPLETED_UP_TO;
        let completed: Vec<(String, i64)> = if estimated {
            // The queues known so far, and the most common ones in the
            // statistics (a queue whose jobs have all completed).
            let queues: Vec<&str> = by_queue.keys().map(String::as_str).collect();
            sqlx::query_as(
                "SELECT q, coalesce(jobs.estimated_completed(q), 0)
                   FROM (SELECT unnest($1::text[])
                         UNION
                         SELECT unnest(most_common_vals::text::text[]) FROM pg_stats
                          WHERE schemaname = 'jobs' AND tablename = 'job' AND attname = 'queue') AS known(q)",
            )
            .bind(&queues)
            .fetch_all(&self.pool)
            .await?
        } else {
            sqlx::query_as(
                "SELECT queue, count(*) FROM jobs.job WHERE state = 'completed' GROUP BY queue",
            )
            .fetch_all(&self.pool)
            .await?
        };
        for (queue, n) in completed {
            let counts = counts_of(&mut by_queue, queue);
            counts.counts[JobState::Completed as usize] = u64::try_from(n).unwrap_or(0);
            counts.completed_estimated = estimated;
        }
        let rates: Vec<(String, i64, i64, f64)> = sqlx::query_as(COMPLETION_RATE_SQL)
            .bind(RATE_SAMPLE)
            .fetch_all(&self.pool)
            .await?;
        for (queue, n, total, span) in rates {
            counts_of(&mut by_queue, queue).completed_per_second =
                crate::store::completion_rate(n, total, span);
        }
        Ok(by_queue.into_values().collect())
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> Result<(), JobsError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO jobs.queue (name, paused, updated_at) VALUES ($1, $2, now())
             ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = now()",
        )
        .bind(queue)
        .bind(paused)
        .execute(&mut *tx)
        .await?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CONTROL_CHANNEL)
            .bind(format!("queue:{queue}"))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn heartbeat(&self, node: &str) -> Result<(), JobsError> {
        sqlx::query(
            "INSERT INTO jobs.node (id) VALUES ($1) ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
        )
        .bind(node)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn remove_node(&self, node: &str) -> Result<(), JobsError> {
        sqlx::query("DELETE FROM jobs.node WHERE id = $1")
            .bind(node)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn cancel_requested(&self, ids: &[i64]) -> Result<Vec<i64>, JobsError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(sqlx::query_scalar(
            "SELECT id FROM jobs.job WHERE id = ANY($1) AND state = 'executing' AND cancel_requested_at IS NOT NULL",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn rescue(&self, lease: Duration) -> Result<Vec<Rescued>, JobsError> {
        // An executing job whose node has not heartbeated within the lease
        // (or is gone) is orphaned. The UPDATE re-checks `state` so a job
        // that finished between the CTE and the update is left alone.
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "WITH orphans AS MATERIALIZED (
                SELECT j.id FROM jobs.job j
                WHERE j.state = 'executing'
                  AND NOT EXISTS (
                    SELECT 1 FROM jobs.node n
                    WHERE n.id = j.attempted_by AND n.heartbeat_at > now() - make_interval(secs => $1))
                FOR UPDATE SKIP LOCKED
             )
             UPDATE jobs.job j
             SET state = CASE
                   WHEN j.cancel_requested_at IS NOT NULL THEN 'cancelled'
                   WHEN j.attempt >= j.max_attempts THEN 'discarded'
                   ELSE 'available' END::jobs.job_state,
                 finalized_at = CASE
                   WHEN j.cancel_requested_at IS NOT NULL OR j.attempt >= j.max_attempts THEN now() END,
                 scheduled_at = now(),
                 errors = j.errors || jsonb_build_array(jsonb_build_object(
                   'attempt', j.attempt, 'at', now(),
                   'error', 'rescued: node ' || j.attempted_by || ' stopped heartbeating'))
             FROM orphans WHERE j.id = orphans.id AND j.state = 'executing'
             RETURNING j.id, j.queue",
        )
        .bind(lease.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, queue)| Rescued { id, queue })
            .collect())
    }

    async fn prune(&self, age: Duration, batch: u32) -> Result<u64, JobsError> {
        let result = sqlx::query(
            "DELETE FROM jobs.job WHERE id IN (
                SELECT id FROM jobs.job
                WHERE finalized_at < now() - make_interval(secs => $1)
                ORDER BY finalized_at LIMIT $2)",
        )
        .bind(age.as_secs_f64())
        .bind(i64::from(batch))
        .execute(&self.pool)
        .await?;
        sqlx::query("DELETE FROM jobs.node WHERE heartbeat_at < now() - interval '1 hour'")
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected())
    }

    async fn try_lead(&self, name: &str, node: &str, ttl: Duration) -> Result<bool, JobsError> {
        let holder: Option<String> = sqlx::query_scalar(
            "INSERT INTO jobs.leader (name, node_id, expires_at)
             VALUES ($1, $2, now() + make_interval(secs => $3))
             ON CONFLICT (name) DO UPDATE SET node_id = excluded.node_id, expires_at = excluded.expires_at
             WHERE jobs.leader.node_id = excluded.node_id OR jobs.leader.expires_at < now()
             RETURNING node_id",
        )
        .bind(name)
        .bind(node)
        .bind(ttl.as_secs_f64())
        .fetch_optional(&self.pool)
        .await?;
        Ok(holder.as_deref() == Some(node))
    }

    async fn resign(&self, name: &str, node: &str) -> Result<(), JobsError> {
        sqlx::query("DELETE FROM jobs.leader WHERE name = $1 AND node_id = $2")
            .bind(name)
            .bind(node)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    fn signals(&self) -> broadcast::Receiver<Signal> {
        self.signals.subscribe()
    }

    async fn listen(&self, stop: tokio_util::sync::CancellationToken) {
        self.listen_until(stop).await;
    }
}

#[cfg(test)]
mod tests {
    use super::CLAIMABLE_IDS_SQL;

    fn words(sql: &str) -> String {
        sql.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// `explain_claim` shows the plan of the query the migration's function
    /// runs: the two texts agree (parameters aside).
    #[test]
    fn the_explained_claim_is_the_migrations_query() {
        let migration = words(include_str!(
            "../migrations/postgres/100003_claim_function.sql"
        ))
        .replace("claim_queue", "$1")
        .replace("claim_limit", "$2");
        let query = words(CLAIMABLE_IDS_SQL);
        assert!(
            migration.contains(&format!("RETURN QUERY {query};")),
            "{query}\n---\n{migration}"
        );
    }
}
