//! What a job is: its states, the row as stored, and a job to be inserted.

use std::{fmt, str::FromStr, time::Duration};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::unique::UniqueOpts;

/// Where a job is in its life. Terminal states are `Completed`,
/// `Discarded` and `Cancelled`; every other state is still runnable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Ready to run now.
    Available,
    /// Waiting for its `scheduled_at`.
    Scheduled,
    /// Claimed by a node and running.
    Executing,
    /// Failed an attempt; runs again at `scheduled_at`.
    Retryable,
    /// Finished successfully.
    Completed,
    /// Failed for good: out of attempts or a permanent error.
    Discarded,
    /// Cancelled by an operator or by its handler.
    Cancelled,
}

impl JobState {
    /// Every state, in the order of its bit in a unique-states mask.
    pub const ALL: [Self; 7] = [
        Self::Available,
        Self::Scheduled,
        Self::Executing,
        Self::Retryable,
        Self::Completed,
        Self::Discarded,
        Self::Cancelled,
    ];

    /// The state's name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Available => "available",
            Self::Scheduled => "scheduled",
            Self::Executing => "executing",
            Self::Retryable => "retryable",
            Self::Completed => "completed",
            Self::Discarded => "discarded",
            Self::Cancelled => "cancelled",
        }
    }

    /// The state's bit in a unique-states mask (see the unique index).
    pub fn bit(self) -> i32 {
        1 << (self as i32)
    }

    /// Whether the job will never run again without an operator's retry.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Discarded | Self::Cancelled)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == value)
            .ok_or_else(|| format!("unknown job state {value:?}"))
    }
}

/// The error recorded for one failed attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptError {
    /// Which attempt failed (1-based).
    pub attempt: i32,
    /// When it failed.
    pub at: DateTime<Utc>,
    /// What the handler (or the engine) said.
    pub error: String,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Unique id, increasing with insertion.
    pub id: i64,
    /// Current state.
    pub state: JobState,
    /// Queue it runs on.
    pub queue: String,
    /// Registered job type.
    pub kind: String,
    /// Payload, decoded by the job type.
    pub args: serde_json::Value,
    /// Engine metadata: the enqueuer's trace context, cron origin.
    pub meta: serde_json::Value,
    /// Free-form labels.
    pub tags: Vec<String>,
    /// One entry per failed attempt.
    pub errors: Vec<AttemptError>,
    /// 0 (first) to 4 (last).
    pub priority: i16,
    /// Attempts started so far.
    pub attempt: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// Node that ran the latest attempt.
    pub attempted_by: Option<String>,
    /// When the job was inserted.
    pub inserted_at: DateTime<Utc>,
    /// When it may run (next).
    pub scheduled_at: DateTime<Utc>,
    /// When the latest attempt started.
    pub attempted_at: Option<DateTime<Utc>>,
    /// When it reached a terminal state.
    pub finalized_at: Option<DateTime<Utc>>,
    /// Set when cancellation was asked while it was executing.
    pub cancel_requested_at: Option<DateTime<Utc>>,
}

/// A job to insert. Build it with [`NewJob::new`] and the `with_*` methods.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    /// Registered job type.
    pub kind: String,
    /// Payload.
    pub args: serde_json::Value,
    /// Queue name.
    pub queue: String,
    /// 0 (first) to 4 (last).
    pub priority: i16,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// When to run; `None` means now.
    pub scheduled_at: Option<DateTime<Utc>>,
    /// Uniqueness, if any.
    pub unique: Option<UniqueOpts>,
    /// Free-form labels.
    pub tags: Vec<String>,
    /// Engine metadata (trace context is added at insert).
    pub meta: serde_json::Value,
}

/// Default queue for jobs that name none.
pub const DEFAULT_QUEUE: &str = "default";
/// Default attempts, as Oban and River.
pub const DEFAULT_MAX_ATTEMPTS: i32 = 20;
/// Default priority (0 is first).
pub const DEFAULT_PRIORITY: i16 = 1;

impl NewJob {
    /// A job of `kind` with `args`, on the default queue, now.
    pub fn new(kind: impl Into<String>, args: serde_json::Value) -> Self {
        Self {
            kind: kind.into(),
            args,
            queue: DEFAULT_QUEUE.to_owned(),
            priority: DEFAULT_PRIORITY,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            scheduled_at: None,
            unique: None,
            tags: Vec::new(),
            meta: serde_json::Value::Object(serde_json::Map::new()),
        }
    }

    /// Runs on `queue`.
    pub fn with_queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }

    /// A job of `kind` whose args are `args` serialised to JSON (typed
    /// args, such as the contracts' job-argument messages).
    pub fn with_args<A: serde::Serialize>(
        kind: impl Into<String>,
        args: &A,
    ) -> Result<Self, crate::JobsError> {
        let args = serde_json::to_value(args).map_err(|error| crate::JobsError::InvalidJob {
            field: "args",
            problem: format!("do not serialise to JSON: {error}"),
        })?;
        Ok(Self::new(kind, args))
    }

    /// Runs with `priority` (0 first, 4 last).
    pub fn with_priority(mut self, priority: i16) -> Self {
        self.priority = priority;
        self
    }

    /// Allows `max_attempts` attempts.
    pub fn with_max_attempts(mut self, max_attempts: i32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// Runs at `at`.
    pub fn scheduled_at(mut self, at: DateTime<Utc>) -> Self {
        self.scheduled_at = Some(at);
        self
    }

    /// Runs `delay` from now.
    pub fn scheduled_in(mut self, delay: Duration) -> Self {
        let delay = chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
        self.scheduled_at = Some(Utc::now() + delay);
        self
    }

    /// Is unique as `opts` says.
    pub fn unique(mut self, opts: UniqueOpts) -> Self {
        self.unique = Some(opts);
        self
    }

    /// Carries `tags`.
    pub fn with_tags(mut self, tags: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// Checks the fields the database would reject, naming the field.
    pub fn validate(&self) -> Result<(), crate::JobsError> {
        let invalid = |field: &'static str, problem: String| {
            Err(crate::JobsError::InvalidJob { field, problem })
        };
        if self.kind.is_empty() || self.kind.len() > 128 {
            return invalid("kind", "must be 1 to 128 characters".into());
        }
        if self.queue.is_empty() || self.queue.len() > 128 {
            return invalid("queue", "must be 1 to 128 characters".into());
        }
        if !(0..=4).contains(&self.priority) {
            return invalid(
                "priority",
                format!("must be from 0 to 4, got {}", self.priority),
            );
        }
        if self.max_attempts < 1 {
            return invalid(
                "max_attempts",
                format!("must be at least 1, got {}", self.max_attempts),
            );
        }
        if !self.args.is_object() {
            return invalid("args", "must be a JSON object".into());
        }
        if let Some(unique) = &self.unique {
            unique.validate()?;
        }
        Ok(())
    }
}

/// The result of inserting one job.
#[derive(Debug, Clone, PartialEq)]
pub struct Inserted {
    /// The job as stored: the new one, or the existing unique one.
    pub job: Job,
    /// True when a unique job already existed and was returned instead.
    pub duplicate: bool,
}

/// The job as stored, from the input and the columns the database chose.
pub(crate) fn inserted_job(
    job: &NewJob,
    id: i64,
    inserted_at: DateTime<Utc>,
    meta: serde_json::Value,
) -> Job {
    let scheduled_at = job.scheduled_at.unwrap_or(inserted_at);
    let state = if scheduled_at > inserted_at {
        JobState::Scheduled
    } else {
        JobState::Available
    };
    Job {
        id,
        state,
        queue: job.queue.clone(),
        kind: job.kind.clone(),
        args: job.args.clone(),
        meta,
        tags: job.tags.clone(),
        errors: Vec::new(),
        priority: job.priority,
        attempt: 0,
        max_attempts: job.max_attempts,
        attempted_by: None,
        inserted_at,
        scheduled_at,
        attempted_at: None,
        finalized_at: None,
        cancel_requested_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_have_distinct_bits() {
        let mut bits = 0;
        for state in JobState::ALL {
            assert_eq!(state.as_str().parse::<JobState>(), Ok(state));
            assert_eq!(bits & state.bit(), 0);
            bits |= state.bit();
        }
        assert_eq!(bits, 0b111_1111);
    }

    #[test]
    fn invalid_jobs_name_the_field() {
        let job = NewJob::new("noop", serde_json::json!({})).with_priority(9);
        let error = job.validate().unwrap_err().to_string();
        assert_eq!(error, "invalid job: priority must be from 0 to 4, got 9");
        let job = NewJob::new("noop", serde_json::json!([1]));
        assert_eq!(
            job.validate().unwrap_err().to_string(),
            "invalid job: args must be a JSON object"
        );
    }
}
