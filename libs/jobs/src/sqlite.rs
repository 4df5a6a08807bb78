//! The embedded store: SQLite, tables prefixed `jobs_`, for the local quick
//! start and tests without a server. Like Oban's Lite engine it keeps the
//! same guarantees with SQLite's single writer instead of row locks: every
//! write runs in a `BEGIN IMMEDIATE` transaction, so a claim's select and
//! update are atomic without `SKIP LOCKED`. Wake-ups are in-process only;
//! other processes sharing the file rely on polling.

use std::{str::FromStr as _, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::{
    Row as _, SqliteConnection, SqlitePool,
    migrate::Migrator,
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
    },
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

const JOB_COLUMNS: &str = "id, state, queue, kind, args, meta, tags, errors, priority, attempt, max_attempts, \
     attempted_by, inserted_at, scheduled_at, attempted_at, finalized_at, cancel_requested_at";

/// The unique index's predicate, repeated verbatim where SQLite needs it.
const UNIQUE_HELD: &str = "unique_key IS NOT NULL AND (unique_states & (CASE state \
     WHEN 'available' THEN 1 WHEN 'scheduled' THEN 2 WHEN 'executing' THEN 4 \
     WHEN 'retryable' THEN 8 WHEN 'completed' THEN 16 WHEN 'discarded' THEN 32 \
     WHEN 'cancelled' THEN 64 END)) <> 0";

/// The engine's SQLite migrations (versions in the 100000 range; other
/// owners' versions are ignored).
pub fn migrator() -> Migrator {
    crate::store::embedded_migrator(
        100_001,
        "jobs",
        include_str!("../migrations/sqlite/100001_jobs.sql"),
    )
}

/// How long start-up waits for another process's set-up of the same file
/// before giving up.
const SETUP_LOCK_PATIENCE: Duration = Duration::from_secs(60);

/// Applies `migrators` in order, all under one exclusive lock on a file
/// beside the database (`<database>.setup.lock`, left in place).
///
/// Several apps share the embedded file and each applies the jobs tables
/// as well as its own. sqlx runs each migration in a transaction but
/// checks what is applied before taking the write lock, so two processes
/// starting together both try to create `jobs_job` and one fails. The lock
/// file makes the whole chain one critical section across processes
/// (`flock`, released when the process exits, even by a crash); PostgreSQL
/// gets the same from sqlx's advisory lock. In-memory databases are
/// private to their process and take no lock.
///
/// Every migrator runs on one connection. SQLite connections cache the
/// schema, and a connection that last read it before a migration can fail
/// to prepare a statement the new schema allows (an `ON CONFLICT` target
/// that only the new key matches is refused without a schema re-check).
/// Run this at start-up, before the pool serves anything else.
pub async fn run_migrations(pool: &SqlitePool, migrators: &[Migrator]) -> Result<(), JobsError> {
    let _lock = SetupLock::acquire(pool.connect_options().get_filename()).await?;
    let mut connection = pool.acquire().await?;
    for migrator in migrators {
        // `run(&mut *connection)` is refused in a `Send` future ("Acquire
        // is not general enough"); sqlx's own `run` calls `run_direct`.
        migrator.run_direct(&mut *connection).await?;
    }
    Ok(())
}

/// An exclusive lock on `<database>.setup.lock`, held until dropped, around
/// what must not run in two processes at once on one file: creating it
/// and switching it to WAL (SQLite answers a second process doing the same
/// `database is locked` at once, without waiting), and migrating it.
struct SetupLock(Option<std::fs::File>);

impl SetupLock {
    /// Takes the lock, polling (so no thread blocks) for up to
    /// [`SETUP_LOCK_PATIENCE`]; no lock for an in-memory database.
    async fn acquire(database: &std::path::Path) -> Result<Self, JobsError> {
        // sqlx names an in-memory database (`sqlite::memory:`) by a
        // `file:sqlx-in-memory-N` URI, not a path: no file, no lock (a
        // lock file named after it was left in the working directory).
        if database.as_os_str().is_empty()
            || database.to_str() == Some(":memory:")
            || database
                .to_str()
                .is_some_and(|name| name.starts_with("file:"))
        {
            return Ok(Self(None));
        }
        let mut path = database.as_os_str().to_owned();
        path.push(".setup.lock");
        let path = std::path::PathBuf::from(path);
        let failed = |problem: String| JobsError::MigrationLock {
            path: path.display().to_string(),
            problem,
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|error| failed(error.to_string()))?;
        let deadline = tokio::time::Instant::now() + SETUP_LOCK_PATIENCE;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Self(Some(file))),
                Err(std::fs::TryLockError::WouldBlock) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(failed(format!(
                            "another process has been setting up this database for over {} s",
                            SETUP_LOCK_PATIENCE.as_secs()
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(std::fs::TryLockError::Error(error)) => return Err(failed(error.to_string())),
            }
        }
    }
}

impl Drop for SetupLock {
    fn drop(&mut self) {
        // Closing the file releases the lock too; unlocking first makes the
        // release independent of when the descriptor is closed.
        if let Some(file) = &self.0 {
            let _ = file.unlock();
        }
    }
}

/// Answers when the database does: the readiness check of every app on
/// SQLite.
pub async fn ping(pool: &SqlitePool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(drop)
}

/// Opens (creating if needed) an SQLite database tuned for a job queue:
/// WAL, `synchronous = NORMAL` (durable across process crashes; a power
/// loss may drop the last transactions), a busy timeout for the writer.
pub async fn connect(url: &str) -> Result<SqlitePool, JobsError> {
    // Create the folder of a file database (`sqlite://data/platform.db`).
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let path = std::path::Path::new(path.split('?').next().unwrap_or(path));
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
        && !path.as_os_str().is_empty()
        && path.to_str() != Some(":memory:")
    {
        std::fs::create_dir_all(parent).map_err(|e| JobsError::Database(sqlx::Error::Io(e)))?;
    }
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10));
    // The first connection creates the file and switches it to WAL; once
    // it is in WAL mode, later connections only read that setting.
    let _lock = SetupLock::acquire(options.get_filename()).await?;
    Ok(SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await?)
}

/// A [`JobStore`] on an SQLite pool.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    signals: broadcast::Sender<Signal>,
}

impl SqliteStore {
    /// Jobs matching `filter` below its cursor and, when given, from
    /// `floor` up, newest first.
    async fn list_from(
        &self,
        filter: &ListFilter,
        floor: Option<i64>,
    ) -> Result<Vec<Job>, JobsError> {
        let states =
            serde_json::Value::from(filter.states.iter().map(|s| s.as_str()).collect::<Vec<_>>())
                .to_string();
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs_job
             WHERE (json_array_length(?1) = 0 OR state IN (SELECT value FROM json_each(?1)))
               AND (?2 IS NULL OR queue = ?2)
               AND (?3 IS NULL OR kind = ?3)
               AND (?4 IS NULL OR EXISTS (SELECT 1 FROM json_each(tags) WHERE value = ?4))
               AND (?5 IS NULL OR id < ?5)
               AND (?7 IS NULL OR id >= ?7)
             ORDER BY id DESC LIMIT ?6"
        );
        let rows = sqlx::query(&sql)
            .bind(states)
            .bind(&filter.queue)
            .bind(&filter.kind)
            .bind(&filter.tag)
            .bind(filter.before_id)
            .bind(i64::from(filter.limit.clamp(1, MAX_LIST)))
            .bind(floor)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Wraps a pool (see [`connect`]).
    pub fn new(pool: SqlitePool) -> Self {
        let (signals, _) = broadcast::channel(1024);
        Self { pool, signals }
    }

    /// The pool, for callers that enqueue inside their own transactions.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, JobsError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

fn from_micros(value: i64) -> Result<DateTime<Utc>, JobsError> {
    DateTime::from_timestamp_micros(value)
        .ok_or_else(|| JobsError::Corrupt(format!("time {value} out of range")))
}

fn opt_from_micros(value: Option<i64>) -> Result<Option<DateTime<Utc>>, JobsError> {
    value.map(from_micros).transpose()
}

fn json(text: &str) -> Result<serde_json::Value, JobsError> {
    serde_json::from_str(text).map_err(|e| JobsError::Corrupt(e.to_string()))
}

fn job_from_row(row: &SqliteRow) -> Result<Job, JobsError> {
    let state: String = row.try_get("state")?;
    let tags: String = row.try_get("tags")?;
    let errors: String = row.try_get("errors")?;
    Ok(Job {
        id: row.try_get("id")?,
        state: state.parse().map_err(JobsError::Corrupt)?,
        queue: row.try_get("queue")?,
        kind: row.try_get("kind")?,
        args: json(row.try_get("args")?)?,
        meta: json(row.try_get("meta")?)?,
        tags: serde_json::from_str(&tags).map_err(|e| JobsError::Corrupt(e.to_string()))?,
        errors: serde_json::from_str::<Vec<AttemptError>>(&errors)
            .map_err(|e| JobsError::Corrupt(e.to_string()))?,
        priority: row.try_get("priority")?,
        attempt: row.try_get("attempt")?,
        max_attempts: row.try_get("max_attempts")?,
        attempted_by: row.try_get("attempted_by")?,
        inserted_at: from_micros(row.try_get("inserted_at")?)?,
        scheduled_at: from_micros(row.try_get("scheduled_at")?)?,
        attempted_at: opt_from_micros(row.try_get("attempted_at")?)?,
        finalized_at: opt_from_micros(row.try_get("finalized_at")?)?,
        cancel_requested_at: opt_from_micros(row.try_get("cancel_requested_at")?)?,
    })
}

/// Inserts jobs on `conn`, which may be inside the caller's transaction;
/// they become visible when it commits (nodes find them by polling).
pub async fn insert_many(
    conn: &mut SqliteConnection,
    jobs: &[NewJob],
) -> Result<Vec<Inserted>, JobsError> {
    let now = Utc::now();
    let carrier = crate::trace::current_carrier();
    let mut out = Vec::with_capacity(jobs.len());
    // Runs of jobs without a unique key go in multi-row statements; a
    // unique job goes alone, as it may resolve to an existing job.
    let mut rest = jobs;
    while let Some(first) = rest.first() {
        let run = if first.unique.is_some() {
            1
        } else {
            rest.iter()
                .take(ROWS_PER_INSERT)
                .take_while(|job| job.unique.is_none())
                .count()
        };
        let (chunk, tail) = rest.split_at(run);
        if first.unique.is_some() {
            out.push(insert_unique(conn, first, now, &carrier).await?);
        } else {
            out.extend(insert_plain(conn, chunk, now, &carrier).await?);
        }
        rest = tail;
    }
    Ok(out)
}

/// Rows per multi-row insert: 12 parameters a row stays well under
/// SQLite's 32,766 bound parameters per statement.
const ROWS_PER_INSERT: usize = 1_000;

const INSERT_COLUMNS: &str = "INSERT INTO jobs_job (kind, queue, args, meta, tags, priority, max_attempts, state, \
     inserted_at, scheduled_at, unique_key, unique_states)";

/// The state a new job starts in.
fn initial_state(job: &NewJob, now: DateTime<Utc>) -> (JobState, DateTime<Utc>) {
    let scheduled_at = job.scheduled_at.unwrap_or(now);
    if scheduled_at > now {
        (JobState::Scheduled, scheduled_at)
    } else {
        (JobState::Available, scheduled_at)
    }
}

/// Binds one job's twelve values, in `INSERT_COLUMNS` order.
fn bind_job<'q>(
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    job: &'q NewJob,
    now: DateTime<Utc>,
    meta: &serde_json::Value,
    key: Option<Vec<u8>>,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    let (state, scheduled_at) = initial_state(job, now);
    query
        .bind(&job.kind)
        .bind(&job.queue)
        .bind(job.args.to_string())
        .bind(meta.to_string())
        .bind(serde_json::Value::from(job.tags.clone()).to_string())
        .bind(job.priority)
        .bind(job.max_attempts)
        .bind(state.as_str())
        .bind(micros(now))
        .bind(micros(scheduled_at))
        .bind(key)
        .bind(job.unique.as_ref().map(crate::UniqueOpts::states_mask))
}

/// The `VALUES` list of a multi-row insert: `rows` tuples of `columns`
/// anonymous parameters, `(?, ?), (?, ?)`. Callers keep
/// `rows * columns` under SQLite's limit of 32,766 parameters.
pub fn placeholders(rows: usize, columns: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    vec![row.as_str(); rows].join(", ")
}

/// Jobs without unique keys, in one statement. Rowids are assigned in
/// `VALUES` order within the statement, so the returned ids sorted are the
/// input in order; only the ids come back, the rest is the caller's own.
async fn insert_plain(
    conn: &mut SqliteConnection,
    jobs: &[NewJob],
    now: DateTime<Utc>,
    carrier: &std::collections::HashMap<String, String>,
) -> Result<Vec<Inserted>, JobsError> {
    for job in jobs {
        job.validate()?;
    }
    // Stored to the microsecond: the returned jobs say what a read says.
    let now = from_micros(micros(now))?;
    let sql = format!(
        "{INSERT_COLUMNS} VALUES {} RETURNING id",
        placeholders(jobs.len(), 12)
    );
    let mut query = sqlx::query(&sql);
    let metas: Vec<serde_json::Value> = jobs
        .iter()
        .map(|job| crate::trace::meta_with_trace(&job.meta, carrier))
        .collect();
    for (job, meta) in jobs.iter().zip(&metas) {
        query = bind_job(query, job, now, meta, None);
    }
    let mut ids = query
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|row| row.try_get::<i64, _>("id"))
        .collect::<Result<Vec<_>, _>>()?;
    if ids.len() != jobs.len() {
        return Err(JobsError::Corrupt(format!(
            "{} jobs inserted, {} ids returned",
            jobs.len(),
            ids.len()
        )));
    }
    ids.sort_unstable();
    Ok(jobs
        .iter()
        .zip(ids)
        .zip(metas)
        .map(|((job, id), meta)| Inserted {
            job: crate::job::inserted_job(job, id, now, meta),
            duplicate: false,
        })
        .collect())
}

/// One unique job: inserted, or the live job already holding its key.
async fn insert_unique(
    conn: &mut SqliteConnection,
    job: &NewJob,
    now: DateTime<Utc>,
    carrier: &std::collections::HashMap<String, String>,
) -> Result<Inserted, JobsError> {
    job.validate()?;
    let key = job.unique.as_ref().map(|u| unique_key(job, u, now));
    let sql = format!(
        "{INSERT_COLUMNS} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (unique_key) WHERE {UNIQUE_HELD} DO NOTHING
         RETURNING {JOB_COLUMNS}"
    );
    let meta = crate::trace::meta_with_trace(&job.meta, carrier);
    let row = bind_job(sqlx::query(&sql), job, now, &meta, key.clone())
        .fetch_optional(&mut *conn)
        .await?;
    match (row, key) {
        (Some(row), _) => Ok(Inserted {
            job: job_from_row(&row)?,
            duplicate: false,
        }),
        (None, Some(key)) => {
            let existing = format!(
                "SELECT {JOB_COLUMNS} FROM jobs_job WHERE unique_key = ? AND {UNIQUE_HELD}"
            );
            let row = sqlx::query(&existing)
                .bind(key)
                .fetch_one(&mut *conn)
                .await?;
            Ok(Inserted {
                job: job_from_row(&row)?,
                duplicate: true,
            })
        }
        (None, None) => Err(JobsError::Corrupt(
            "an inserted job was not returned".into(),
        )),
    }
}

/// Inserts one job on `conn` (see [`insert_many`]).
pub async fn insert(conn: &mut SqliteConnection, job: &NewJob) -> Result<Inserted, JobsError> {
    let mut inserted = insert_many(conn, std::slice::from_ref(job)).await?;
    inserted
        .pop()
        .ok_or_else(|| JobsError::Corrupt("insert returned no row".into()))
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

impl JobStore for SqliteStore {
    async fn migrate(&self) -> Result<(), JobsError> {
        run_migrations(&self.pool, &[migrator()]).await
    }

    async fn insert_many(&self, jobs: &[NewJob]) -> Result<Vec<Inserted>, JobsError> {
        let mut tx = self.write().await?;
        let inserted = insert_many(&mut tx, jobs).await?;
        tx.commit().await?;
        let queues: std::collections::BTreeSet<&str> = inserted
            .iter()
            .filter(|i| !i.duplicate)
            .map(|i| i.job.queue.as_str())
            .collect();
        for queue in queues {
            let _ = self.signals.send(Signal::Inserted(queue.to_owned()));
        }
        Ok(inserted)
    }

    async fn claim(
        &self,
        queue: &str,
        limit: u32,
        node: &str,
        global_limit: Option<u32>,
    ) -> Result<Vec<Job>, JobsError> {
        let now = micros(Utc::now());
        let mut tx = self.write().await?;
        let mut limit = i64::from(limit);
        if let Some(global) = global_limit {
            // The write lock is already held: the count cannot change under us.
            let executing: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM jobs_job WHERE queue = ? AND state = 'executing'",
            )
            .bind(queue)
            .fetch_one(&mut *tx)
            .await?;
            limit = limit.min(i64::from(global) - executing).max(0);
        }
        if limit == 0 {
            return Ok(Vec::new());
        }
        let sql = format!(
            "UPDATE jobs_job
             SET state = 'executing', attempt = attempt + 1, attempted_at = ?1, attempted_by = ?2
             WHERE id IN (
                SELECT id FROM jobs_job
                WHERE queue = ?3 AND state IN ('available', 'scheduled', 'retryable') AND scheduled_at <= ?1
                  AND NOT EXISTS (SELECT 1 FROM jobs_queue q WHERE q.name = ?3 AND q.paused)
                ORDER BY priority, scheduled_at, id
                LIMIT ?4)
             RETURNING {JOB_COLUMNS}"
        );
        let rows = sqlx::query(&sql)
            .bind(now)
            .bind(node)
            .bind(queue)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut jobs = rows
            .iter()
            .map(job_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        crate::store::sort_in_claim_order(&mut jobs);
        Ok(jobs)
    }

    async fn complete_many(&self, completions: &[Completion]) -> Result<u64, JobsError> {
        if completions.is_empty() {
            return Ok(0);
        }
        let now = Utc::now();
        let mut tx = self.write().await?;
        let mut applied = 0;
        for completion in completions {
            let state = outcome_state(&completion.outcome);
            let error = outcome_error(&completion.outcome).map(|error| {
                serde_json::json!(AttemptError {
                    attempt: completion.attempt,
                    at: now,
                    error: error.to_owned()
                })
                .to_string()
            });
            // Guarded as in PostgreSQL: only the attempt still executing.
            let result = sqlx::query(
                "UPDATE jobs_job
                 SET state = ?1,
                     finalized_at = CASE WHEN ?1 IN ('completed', 'discarded', 'cancelled') THEN ?2 END,
                     scheduled_at = coalesce(?3, scheduled_at),
                     errors = CASE WHEN ?4 IS NULL THEN errors ELSE json_insert(errors, '$[#]', json(?4)) END,
                     attempt = attempt - ?5
                 WHERE id = ?6 AND state = 'executing' AND attempt = ?7",
            )
            .bind(state.as_str())
            .bind(micros(now))
            .bind(outcome_next_run(&completion.outcome).map(micros))
            .bind(error)
            .bind(i32::from(outcome_refunds_attempt(&completion.outcome)))
            .bind(completion.id)
            .bind(completion.attempt)
            .execute(&mut *tx)
            .await?;
            applied += result.rows_affected();
        }
        tx.commit().await?;
        Ok(applied)
    }

    async fn get(&self, id: i64) -> Result<Option<Job>, JobsError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs_job WHERE id = ?");
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
        let floor = if crate::store::list_needs_window(filter) {
            let top = match filter.before_id {
                Some(before) => before,
                None => {
                    sqlx::query_scalar::<_, Option<i64>>("SELECT max(id) FROM jobs_job")
                        .fetch_one(&self.pool)
                        .await?
                        .unwrap_or(0)
                        + 1
                }
            };
            Some(top - LIST_WINDOW)
        } else {
            None
        };
        let jobs = self.list_from(filter, floor).await?;
        Ok(JobPage::new(jobs, filter.limit.clamp(1, MAX_LIST), floor))
    }

    async fn cancel(&self, id: i64) -> Result<Job, JobsError> {
        let now = micros(Utc::now());
        let mut tx = self.write().await?;
        let sql = format!(
            "UPDATE jobs_job
             SET state = CASE WHEN state = 'executing' THEN state ELSE 'cancelled' END,
                 finalized_at = CASE WHEN state = 'executing' THEN NULL ELSE ?1 END,
                 cancel_requested_at = CASE WHEN state = 'executing' THEN ?1 ELSE cancel_requested_at END
             WHERE id = ?2 AND state NOT IN ('completed', 'discarded', 'cancelled')
             RETURNING {JOB_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(now)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        let Some(row) = row else {
            return Err(crate::store::unmatched(self, id, crate::store::ALREADY_FINISHED).await);
        };
        let job = job_from_row(&row)?;
        if job.state == JobState::Executing {
            let _ = self.signals.send(Signal::CancelRequested(id));
        }
        Ok(job)
    }

    async fn retry(&self, id: i64) -> Result<Job, JobsError> {
        let now = micros(Utc::now());
        let sql = format!(
            "UPDATE jobs_job
             SET state = 'available', scheduled_at = ?1, finalized_at = NULL, cancel_requested_at = NULL,
                 max_attempts = max(max_attempts, attempt + 1)
             WHERE id = ?2 AND state IN ('discarded', 'cancelled', 'retryable', 'scheduled')
             RETURNING {JOB_COLUMNS}"
        );
        let mut tx = self.write().await?;
        let row = match sqlx::query(&sql)
            .bind(now)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
        {
            Ok(row) => row,
            Err(error) if is_unique_violation(&error) => {
                drop(tx);
                let state = self.get(id).await?.map_or(JobState::Discarded, |j| j.state);
                return Err(JobsError::WrongState {
                    id,
                    state,
                    problem: "a live job holds its unique key",
                });
            }
            Err(error) => return Err(error.into()),
        };
        tx.commit().await?;
        let Some(row) = row else {
            return Err(crate::store::unmatched(self, id, crate::store::NOT_RETRYABLE).await);
        };
        let job = job_from_row(&row)?;
        let _ = self.signals.send(Signal::Inserted(job.queue.clone()));
        Ok(job)
    }

    async fn discard(&self, id: i64) -> Result<Job, JobsError> {
        let sql = format!(
            "UPDATE jobs_job SET state = 'discarded', finalized_at = ?1
             WHERE id = ?2 AND state IN ('available', 'scheduled', 'retryable')
             RETURNING {JOB_COLUMNS}"
        );
        let mut tx = self.write().await?;
        let row = sqlx::query(&sql)
            .bind(micros(Utc::now()))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        let Some(row) = row else {
            return Err(crate::store::unmatched(self, id, crate::store::NOT_WAITING).await);
        };
        job_from_row(&row)
    }

    async fn queue_counts(&self) -> Result<Vec<QueueCounts>, JobsError> {
        let rows = sqlx::query(
            "SELECT queue, state, count(*) AS n, min(scheduled_at) AS oldest
             FROM jobs_job GROUP BY queue, state
             UNION ALL SELECT name, NULL, 0, NULL FROM jobs_queue
             ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await?;
        let paused: Vec<String> = sqlx::query_scalar("SELECT name FROM jobs_queue WHERE paused")
            .fetch_all(&self.pool)
            .await?;
        let mut out: Vec<QueueCounts> = Vec::new();
        for row in rows {
            let queue: String = row.try_get("queue")?;
            if out.last().is_none_or(|q| q.queue != queue) {
                let is_paused = paused.contains(&queue);
                out.push(QueueCounts {
                    queue,
                    paused: is_paused,
                    ..QueueCounts::default()
                });
            }
            if let (Some(state), Some(counts)) =
                (row.try_get::<Option<String>, _>("state")?, out.last_mut())
            {
                let state: JobState = state.parse().map_err(JobsError::Corrupt)?;
                counts.counts[state as usize] =
                    u64::try_from(row.try_get::<i64, _>("n")?).unwrap_or(0);
                if state == JobState::Available {
                    counts.oldest_available = row
                        .try_get::<Option<i64>, _>("oldest")?
                        .map(from_micros)
                        .transpose()?;
                }
            }
        }
        let now = Utc::now();
        let since = micros(now - chrono::Duration::seconds(60));
        let rates: Vec<(String, i64, i64, i64)> = sqlx::query_as(
            "WITH recent AS (
               SELECT queue, finalized_at FROM jobs_job
                WHERE finalized_at > ?1 AND state = 'completed'
                ORDER BY finalized_at DESC LIMIT ?2)
             SELECT queue, count(*), (SELECT count(*) FROM recent),
                    (SELECT min(finalized_at) FROM recent)
               FROM recent GROUP BY queue",
        )
        .bind(since)
        .bind(RATE_SAMPLE)
        .fetch_all(&self.pool)
        .await?;
        for (queue, n, total, oldest) in rates {
            let span = (micros(now) - oldest) as f64 / 1e6;
            if let Some(counts) = out.iter_mut().find(|c| c.queue == queue) {
                counts.completed_per_second = crate::store::completion_rate(n, total, span);
            }
        }
        Ok(out)
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> Result<(), JobsError> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO jobs_queue (name, paused, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at",
        )
        .bind(queue)
        .bind(paused)
        .bind(micros(Utc::now()))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let _ = self.signals.send(Signal::QueueChanged(queue.to_owned()));
        Ok(())
    }

    async fn heartbeat(&self, node: &str) -> Result<(), JobsError> {
        let now = micros(Utc::now());
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO jobs_node (id, started_at, heartbeat_at) VALUES (?1, ?2, ?2)
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
        )
        .bind(node)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn remove_node(&self, node: &str) -> Result<(), JobsError> {
        let mut tx = self.write().await?;
        sqlx::query("DELETE FROM jobs_node WHERE id = ?")
            .bind(node)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn cancel_requested(&self, ids: &[i64]) -> Result<Vec<i64>, JobsError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = serde_json::Value::from(ids.to_vec()).to_string();
        Ok(sqlx::query_scalar(
            "SELECT id FROM jobs_job WHERE id IN (SELECT value FROM json_each(?))
               AND state = 'executing' AND cancel_requested_at IS NOT NULL",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn rescue(&self, lease: Duration) -> Result<Vec<Rescued>, JobsError> {
        let now = Utc::now();
        let cutoff = micros(now) - i64::try_from(lease.as_micros()).unwrap_or(i64::MAX);
        let mut tx = self.write().await?;
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "UPDATE jobs_job
             SET state = CASE
                   WHEN cancel_requested_at IS NOT NULL THEN 'cancelled'
                   WHEN attempt >= max_attempts THEN 'discarded'
                   ELSE 'available' END,
                 finalized_at = CASE WHEN cancel_requested_at IS NOT NULL OR attempt >= max_attempts THEN ?1 END,
                 scheduled_at = ?1,
                 errors = json_insert(errors, '$[#]', json_object(
                   'attempt', attempt, 'at', ?2,
                   'error', 'rescued: node ' || attempted_by || ' stopped heartbeating'))
             WHERE state = 'executing'
               AND NOT EXISTS (SELECT 1 FROM jobs_node n WHERE n.id = attempted_by AND n.heartbeat_at > ?3)
             RETURNING id, queue",
        )
        .bind(micros(now))
        .bind(now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .bind(cutoff)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows
            .into_iter()
            .map(|(id, queue)| Rescued { id, queue })
            .collect())
    }

    async fn prune(&self, age: Duration, batch: u32) -> Result<u64, JobsError> {
        let cutoff = micros(Utc::now()) - i64::try_from(age.as_micros()).unwrap_or(i64::MAX);
        let mut tx = self.write().await?;
        let result = sqlx::query(
            "DELETE FROM jobs_job WHERE id IN (
                SELECT id FROM jobs_job WHERE finalized_at < ?1 ORDER BY finalized_at LIMIT ?2)",
        )
        .bind(cutoff)
        .bind(i64::from(batch))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(result.rows_affected())
    }

    async fn try_lead(&self, name: &str, node: &str, ttl: Duration) -> Result<bool, JobsError> {
        let now = micros(Utc::now());
        let expires = now + i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX / 2);
        let mut tx = self.write().await?;
        let holder: Option<String> = sqlx::query_scalar(
            "INSERT INTO jobs_leader (name, node_id, expires_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET node_id = excluded.node_id, expires_at = excluded.expires_at
             WHERE jobs_leader.node_id = excluded.node_id OR jobs_leader.expires_at < ?4
             RETURNING node_id",
        )
        .bind(name)
        .bind(node)
        .bind(expires)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(holder.as_deref() == Some(node))
    }

    async fn resign(&self, name: &str, node: &str) -> Result<(), JobsError> {
        let mut tx = self.write().await?;
        sqlx::query("DELETE FROM jobs_leader WHERE name = ? AND node_id = ?")
            .bind(name)
            .bind(node)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    fn signals(&self) -> broadcast::Receiver<Signal> {
        self.signals.subscribe()
    }

    async fn listen(&self, _stop: tokio_util::sync::CancellationToken) {}
}
