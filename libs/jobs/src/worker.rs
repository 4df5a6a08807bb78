//! Job types: the [`Worker`] trait an app implements per kind, and the
//! [`Registry`] the node looks kinds up in.

use std::{collections::HashMap, future::Future, pin::Pin, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::backoff::default_backoff;

/// What a handler knows about the attempt it runs.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// The job's id (stable across attempts: an idempotency key).
    pub id: i64,
    /// This attempt, from 1.
    pub attempt: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// The job's queue.
    pub queue: String,
    /// When the job was inserted.
    pub inserted_at: DateTime<Utc>,
    /// Cancelled when an operator cancels the job or the node shuts down;
    /// long handlers should check it between steps.
    pub cancel: CancellationToken,
}

/// A successful end other than plain completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// Finished.
    Completed,
    /// Run again after this delay without spending an attempt.
    Snooze(Duration),
    /// Stop for good, recorded as cancelled with this reason.
    Cancel(String),
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// Transient: retried with backoff while attempts remain.
    #[error("{0}")]
    Retry(String),
    /// Permanent: discarded at once, never retried.
    #[error("{0}")]
    Discard(String),
}

/// One job type. The engine decodes `Args` from the stored JSON before
/// calling [`Worker::work`]; a payload that does not decode is discarded at
/// once (retrying cannot fix it).
pub trait Worker: Send + Sync + 'static {
    /// The typed payload.
    type Args: DeserializeOwned + Send + 'static;

    /// The kind name stored on jobs of this type.
    const KIND: &'static str;

    /// Longest an attempt may run before it is cancelled and retried.
    fn timeout(&self) -> Option<Duration> {
        None
    }

    /// Delay before attempt `attempt + 1` after attempt `attempt` failed.
    fn backoff(&self, attempt: i32) -> Duration {
        default_backoff(attempt)
    }

    /// Runs one attempt.
    fn work(
        &self,
        ctx: JobContext,
        args: Self::Args,
    ) -> impl Future<Output = Result<Done, JobError>> + Send;
}

type WorkFuture = Pin<Box<dyn Future<Output = Result<Done, JobError>> + Send>>;

/// A worker with its argument type erased, so kinds share one map.
pub(crate) trait ErasedWorker: Send + Sync {
    fn run(self: Arc<Self>, ctx: JobContext, args: serde_json::Value) -> WorkFuture;
    fn validate(&self, args: &serde_json::Value) -> Result<(), serde_json::Error>;
    fn timeout(&self) -> Option<Duration>;
    fn backoff(&self, attempt: i32) -> Duration;
}

impl<W: Worker> ErasedWorker for W {
    fn run(self: Arc<Self>, ctx: JobContext, args: serde_json::Value) -> WorkFuture {
        match serde_json::from_value::<W::Args>(args) {
            Ok(args) => Box::pin(async move { self.work(ctx, args).await }),
            Err(error) => Box::pin(std::future::ready(Err(JobError::Discard(format!(
                "args do not decode as {}: {error}",
                W::KIND
            ))))),
        }
    }

    fn validate(&self, args: &serde_json::Value) -> Result<(), serde_json::Error> {
        W::Args::deserialize(args).map(|_| ())
    }

    fn timeout(&self) -> Option<Duration> {
        Worker::timeout(self)
    }

    fn backoff(&self, attempt: i32) -> Duration {
        Worker::backoff(self, attempt)
    }
}

use serde::Deserialize as _;

/// Why a job cannot be enqueued as given: a caller fixes the field named.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    /// No job type of that kind is registered.
    #[error("unknown job kind {kind:?} (known: {})", known.join(", "))]
    UnknownKind {
        /// The kind asked for.
        kind: String,
        /// The kinds this node runs.
        known: Vec<&'static str>,
    },
    /// The args do not decode as the kind's typed args.
    #[error("{0}")]
    Invalid(serde_json::Error),
}

/// The job types a node can run, by kind.
#[derive(Clone, Default)]
pub struct Registry {
    workers: HashMap<&'static str, Arc<dyn ErasedWorker>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("kinds", &self.kinds())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a job type (a later registration of the same kind replaces it).
    pub fn register<W: Worker>(mut self, worker: W) -> Self {
        self.workers.insert(W::KIND, Arc::new(worker));
        self
    }

    /// The registered kinds, sorted.
    pub fn kinds(&self) -> Vec<&'static str> {
        let mut kinds: Vec<_> = self.workers.keys().copied().collect();
        kinds.sort_unstable();
        kinds
    }

    /// Checks, before enqueueing, that `kind` exists and `args` decode.
    pub fn validate(&self, kind: &str, args: &serde_json::Value) -> Result<(), ArgsError> {
        match self.workers.get(kind) {
            None => Err(ArgsError::UnknownKind {
                kind: kind.to_owned(),
                known: self.kinds(),
            }),
            Some(worker) => worker.validate(args).map_err(ArgsError::Invalid),
        }
    }

    pub(crate) fn get(&self, kind: &str) -> Option<Arc<dyn ErasedWorker>> {
        self.workers.get(kind).cloned()
    }
}
