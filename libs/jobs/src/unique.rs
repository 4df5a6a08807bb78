//! Unique jobs, River's way: a hash of the kind and chosen args (and,
//! optionally, the queue and a time bucket) stored on the row, and a partial
//! unique index over the rows whose state is in the job's unique-states
//! mask. The database enforces it, so it is race-free and holds for bulk
//! inserts; no advisory locks, no look-up before insert.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::{JobState, JobsError, NewJob};

/// Which fields make a job unique, and in which states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UniqueOpts {
    /// Top-level arg keys in the hash; `None` means all args.
    pub by_args: Option<Vec<String>>,
    /// Include the queue.
    pub by_queue: bool,
    /// Bucket by this period (one job per period); `None` means no bucket.
    pub by_period: Option<Duration>,
    /// States in which an existing job blocks a new one.
    pub states: Vec<JobState>,
    /// Extra text in the hash (cron puts its name and tick here).
    pub salt: Option<String>,
}

impl Default for UniqueOpts {
    /// Unique by kind and all args while the job is runnable or completed
    /// (a discarded or cancelled job does not block a new one).
    fn default() -> Self {
        Self {
            by_args: None,
            by_queue: false,
            by_period: None,
            states: vec![
                JobState::Available,
                JobState::Scheduled,
                JobState::Executing,
                JobState::Retryable,
                JobState::Completed,
            ],
            salt: None,
        }
    }
}

impl UniqueOpts {
    /// Unique in every state, for ever: cron ticks use this.
    pub fn forever() -> Self {
        Self {
            states: JobState::ALL.to_vec(),
            ..Self::default()
        }
    }

    /// The mask stored in `unique_states`.
    pub fn states_mask(&self) -> i32 {
        self.states.iter().fold(0, |mask, s| mask | s.bit())
    }

    pub(crate) fn validate(&self) -> Result<(), JobsError> {
        // A key that is not held while the job runs would let a duplicate
        // run concurrently: the runnable states are mandatory.
        for required in [
            JobState::Available,
            JobState::Scheduled,
            JobState::Executing,
            JobState::Retryable,
        ] {
            if !self.states.contains(&required) {
                return Err(JobsError::InvalidJob {
                    field: "unique.states",
                    problem: format!(
                        "must include {required} (a unique job must stay unique while it can run)"
                    ),
                });
            }
        }
        if self.by_period.is_some_and(|p| p.as_secs() == 0) {
            return Err(JobsError::InvalidJob {
                field: "unique.by_period",
                problem: "must be at least 1s".into(),
            });
        }
        Ok(())
    }
}

/// The unique key of `job` at `now`: SHA-256 over a canonical text.
pub fn unique_key(job: &NewJob, opts: &UniqueOpts, now: DateTime<Utc>) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(b"kind=");
    hasher.update(job.kind.as_bytes());
    if opts.by_queue {
        hasher.update(b"&queue=");
        hasher.update(job.queue.as_bytes());
    }
    hasher.update(b"&args=");
    // serde_json maps are ordered (BTreeMap), so this text is canonical.
    let args = match (&opts.by_args, job.args.as_object()) {
        (Some(keys), Some(object)) => {
            let picked: serde_json::Map<_, _> = object
                .iter()
                .filter(|(k, _)| keys.contains(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            serde_json::Value::Object(picked)
        }
        _ => job.args.clone(),
    };
    hasher.update(args.to_string().as_bytes());
    if let Some(salt) = &opts.salt {
        hasher.update(b"&salt=");
        hasher.update(salt.as_bytes());
    }
    if let Some(period) = opts.by_period {
        let at = job.scheduled_at.unwrap_or(now).timestamp();
        let period = i64::try_from(period.as_secs()).unwrap_or(i64::MAX).max(1);
        hasher.update(format!("&period={}", at.div_euclid(period)).as_bytes());
    }
    hasher.finalize().to_vec()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn key(job: &NewJob, opts: &UniqueOpts) -> Vec<u8> {
        unique_key(job, opts, Utc::now())
    }

    #[test]
    fn keys_depend_on_the_chosen_fields_only() {
        let a = NewJob::new("webhook", json!({"url": "u", "nonce": 1}));
        let b = NewJob::new("webhook", json!({"url": "u", "nonce": 2})).with_queue("other");
        let all = UniqueOpts::default();
        assert_ne!(key(&a, &all), key(&b, &all));
        let by_url = UniqueOpts {
            by_args: Some(vec!["url".into()]),
            ..UniqueOpts::default()
        };
        assert_eq!(key(&a, &by_url), key(&b, &by_url));
        let by_url_and_queue = UniqueOpts {
            by_queue: true,
            ..by_url
        };
        assert_ne!(key(&a, &by_url_and_queue), key(&b, &by_url_and_queue));
    }

    #[test]
    fn periods_bucket_by_scheduled_time() {
        let opts = UniqueOpts {
            by_period: Some(Duration::from_secs(3600)),
            ..UniqueOpts::default()
        };
        let at = |s| DateTime::from_timestamp(s, 0).unwrap();
        let job = |s| NewJob::new("report", json!({})).scheduled_at(at(s));
        assert_eq!(key(&job(7200), &opts), key(&job(10_799), &opts));
        assert_ne!(key(&job(7200), &opts), key(&job(10_800), &opts));
    }

    #[test]
    fn unique_states_must_cover_runnable_states() {
        let opts = UniqueOpts {
            states: vec![JobState::Available],
            ..UniqueOpts::default()
        };
        let error = opts.validate().unwrap_err().to_string();
        assert!(
            error.starts_with("invalid job: unique.states must include scheduled"),
            "{error}"
        );
    }
}
