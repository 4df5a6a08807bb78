//! The platform's durable jobs engine, in the manner of Oban and River: an
//! app inserts jobs (alone, in bulk, or inside its own database
//! transaction); nodes claim them from queues with per-node and global
//! limits and priorities, run them with timeouts and cooperative
//! cancellation, retry failures with backoff, keep unique jobs unique in the
//! database, rescue the jobs of nodes that died, and prune finished jobs.
//!
//! PostgreSQL is the production store ([`PgStore`]); SQLite is the embedded
//! default ([`SqliteStore`]). Both implement [`JobStore`], and one behaviour
//! suite runs against both.
//!
//! Architecture invariant: the engine knows nothing of gRPC or of any job
//! type. Apps supply [`Worker`]s; the engine owns its tables and migrations.

mod backoff;
mod cron;
mod error;
mod job;
mod node;
pub mod postgres;
pub mod roles;
pub mod sqlite;
mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod trace;
mod unique;
mod worker;

pub use backoff::{Backoff, default_backoff};
pub use cron::{CronError, CronJob, CronSchedule};
pub use error::JobsError;
pub use job::{
    AttemptError, DEFAULT_MAX_ATTEMPTS, DEFAULT_PRIORITY, DEFAULT_QUEUE, Inserted, Job, JobState,
    NewJob,
};
pub use node::{Node, NodeConfig, NodeReport, QueueConfig, new_node_id};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;
pub use store::{
    Completion, JobPage, JobStore, LIST_WINDOW, ListFilter, MAX_LIST, Outcome, QueueCounts,
    RATE_SAMPLE, Rescued, Signal, embedded_migrations, embedded_migrator,
};
pub use unique::{UniqueOpts, unique_key};
pub use worker::{ArgsError, Done, JobContext, JobError, Registry, Worker};
