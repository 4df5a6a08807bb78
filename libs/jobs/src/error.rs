//! The engine's one error type.

/// What can go wrong inside the engine.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    /// A job to insert has a field the engine would reject.
    #[error("invalid job: {field} {problem}")]
    InvalidJob {
        /// The field, e.g. `priority` or `unique.states`.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// No job has that id.
    #[error("job {0} not found")]
    NotFound(i64),
    /// The operation does not apply to the job's current state.
    #[error("job {id} is {state}: {problem}")]
    WrongState {
        /// The job.
        id: i64,
        /// Its current state.
        state: crate::JobState,
        /// Why the operation does not apply.
        problem: &'static str,
    },
    /// The database failed or is unreachable; the operation can be retried.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying the engine's migrations failed.
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The embedded database's set-up lock (creation, migrations) could
    /// not be taken.
    #[error("set-up lock file {path}: {problem}")]
    MigrationLock {
        /// The lock file.
        path: String,
        /// Why.
        problem: String,
    },
    /// A stored row could not be decoded (a bug or a foreign write).
    #[error("corrupt row: {0}")]
    Corrupt(String),
}
