//! What writing a batch of readings means, whatever the database: readings
//! stored once per (tenant, event id), series watermarks advanced, and the
//! aggregation job of every window the batch closes enqueued, all in one
//! transaction. A batch redelivered after a crash inserts nothing and
//! enqueues nothing new. The stores do the writing
//! ([`crate::store::ReadingStore::write_batch`]); this module holds what
//! both share: the report, the error, the fold of stored keys and the plan
//! of watermarks and jobs.

use std::{
    borrow::Borrow,
    collections::{BTreeMap, HashSet},
};

use chrono::{DateTime, Utc};
use contracts::{JobArgs as _, jobs::v1::AggregateWindowArgs};
use jobs::{JobState, NewJob, UniqueOpts};

use crate::{reading::Reading, window::Windowing};

/// What writing one batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteReport {
    /// Readings newly stored.
    pub inserted: usize,
    /// Readings whose event id was already stored.
    pub duplicates: usize,
    /// Their positions in the batch (a repeat within the batch counts from
    /// its second occurrence), so each source can tell its own duplicates.
    pub duplicate_at: Vec<usize>,
    /// Aggregation jobs newly enqueued.
    pub jobs_enqueued: usize,
}

/// Why a batch could not be written; the whole batch is retried.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The database failed or is unreachable.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Enqueueing the aggregation jobs failed.
    #[error("jobs: {0}")]
    Jobs(#[from] jobs::JobsError),
}

impl SinkError {
    /// A deadlock (40P01) or serialization failure (40001): the transaction
    /// was rolled back whole and running it again is safe and likely to
    /// succeed.
    pub fn is_transaction_conflict(&self) -> bool {
        let database = match self {
            Self::Database(error) | Self::Jobs(jobs::JobsError::Database(error)) => error,
            Self::Jobs(_) => return false,
        };
        database
            .as_database_error()
            .and_then(|error| error.code())
            .is_some_and(|code| code == "40P01" || code == "40001")
    }
}

/// The aggregation job for one window (the worker's
/// `readings.aggregate_window`, whose kind, queue and args are the
/// contracts' `AggregateWindowArgs`), unique for ever per (series, window,
/// lateness), so redelivery never enqueues it twice and a late window is
/// re-aggregated once.
pub fn aggregation_job(
    series: &Series,
    start: DateTime<Utc>,
    windowing: &Windowing,
    late: bool,
) -> Result<NewJob, jobs::JobsError> {
    let args = AggregateWindowArgs {
        tenant_id: series.0.clone(),
        device_id: series.1.clone(),
        metric: series.2.clone(),
        window_start: start.to_rfc3339(),
        window_seconds: windowing.length.num_seconds(),
        late,
    };
    Ok(NewJob::with_args(AggregateWindowArgs::KIND, &args)?
        .with_queue(AggregateWindowArgs::QUEUE)
        .unique(UniqueOpts {
            states: JobState::ALL.to_vec(),
            ..UniqueOpts::default()
        }))
}

/// (tenant, device, metric).
pub type Series = (String, String, String);

/// For each series a batch touched (with the times it newly stored) and its
/// watermark before the batch: the new watermarks, in series order, and the
/// aggregation jobs to enqueue. Shared by both stores.
pub fn plan(
    by_series: &BTreeMap<Series, Vec<DateTime<Utc>>>,
    before: &BTreeMap<Series, DateTime<Utc>>,
    windowing: &Windowing,
) -> Result<(Vec<DateTime<Utc>>, Vec<NewJob>), jobs::JobsError> {
    let mut marks = Vec::with_capacity(by_series.len());
    let mut jobs = Vec::new();
    for (series, times) in by_series {
        let latest = times.iter().max().copied().unwrap_or_default();
        let before = before.get(series).copied();
        let after = before.map_or(windowing.watermark(latest), |b| {
            b.max(windowing.watermark(latest))
        });
        marks.push(after);
        for (start, late) in windowing.to_aggregate(before, after, times.iter().copied()) {
            jobs.push(aggregation_job(series, start, windowing, late)?);
        }
    }
    Ok((marks, jobs))
}

/// Folds the keys a batch's insert returned (the readings newly stored)
/// back onto the batch: the new readings' event times by series, and a
/// report counting them and naming the duplicates' positions. A reading is
/// new at its first position among the returned keys; a repeat within the
/// batch is a duplicate.
pub fn fold_stored<R: Borrow<Reading>>(
    readings: &[R],
    stored: &[(String, String)],
) -> (BTreeMap<Series, Vec<DateTime<Utc>>>, WriteReport) {
    let mut new_keys: HashSet<(&str, &str)> = stored
        .iter()
        .map(|(tenant, event)| (tenant.as_str(), event.as_str()))
        .collect();
    let mut by_series: BTreeMap<Series, Vec<DateTime<Utc>>> = BTreeMap::new();
    let mut duplicate_at = Vec::new();
    for (index, r) in readings.iter().enumerate() {
        let r: &Reading = r.borrow();
        if new_keys.remove(&(r.tenant_id.as_str(), r.event_id.as_str())) {
            by_series
                .entry((r.tenant_id.clone(), r.device_id.clone(), r.metric.clone()))
                .or_default()
                .push(r.observed_at);
        } else {
            duplicate_at.push(index);
        }
    }
    let report = WriteReport {
        inserted: stored.len(),
        duplicates: duplicate_at.len(),
        duplicate_at,
        jobs_enqueued: 0,
    };
    (by_series, report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(tenant: &str, event: &str, device: &str) -> Reading {
        Reading {
            event_id: event.into(),
            tenant_id: tenant.into(),
            device_id: device.into(),
            metric: "temperature_c".into(),
            value: 1.0,
            observed_at: DateTime::from_timestamp(1_000, 0).unwrap_or_default(),
            attributes: BTreeMap::new(),
        }
    }

    #[test]
    fn a_key_is_new_at_its_first_position_only_and_per_tenant() {
        let batch = [
            reading("acme", "e1", "d1"),
            reading("acme", "e1", "d1"),
            reading("globex", "e1", "d2"),
            reading("acme", "e2", "d1"),
        ];
        // e2 was stored before; acme/e1 and globex/e1 are new.
        let stored = [
            ("acme".to_owned(), "e1".to_owned()),
            ("globex".to_owned(), "e1".to_owned()),
        ];
        let (by_series, report) = fold_stored(&batch, &stored);
        assert_eq!(
            (report.inserted, report.duplicates, report.duplicate_at),
            (2, 2, vec![1, 3])
        );
        let series: Vec<_> = by_series
            .keys()
            .map(|s| (s.0.as_str(), s.1.as_str()))
            .collect();
        assert_eq!(series, [("acme", "d1"), ("globex", "d2")]);
        assert!(by_series.values().all(|times| times.len() == 1));
    }
}
