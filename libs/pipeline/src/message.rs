//! What flows through a pipeline, and how its fate goes back to its source.

use std::{collections::HashMap, fmt, sync::Arc};

/// Why a message did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What went wrong, naming the field where there is one.
    pub reason: String,
    /// Whether trying again can help.
    pub kind: FailureKind,
}

/// Whether a failed message should come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Transient (a sink error): the source should redeliver it.
    Retryable,
    /// It can never succeed (invalid input): dead-lettered, not redelivered.
    Invalid,
}

impl Failure {
    /// A transient failure.
    pub fn retryable(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            kind: FailureKind::Retryable,
        }
    }

    /// A permanent failure.
    pub fn invalid(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            kind: FailureKind::Invalid,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Receives the fate of its messages, in bulk: once per batch (or per
/// failed group), never twice for one message.
pub trait Acknowledger: Send + Sync + 'static {
    /// `succeeded` and `failed` carry the ids the source gave its messages.
    fn ack(&self, succeeded: &[u64], failed: &[(u64, Failure)]);
}

/// A message's way home: its source's acknowledger and its id there.
#[derive(Clone)]
pub struct AckRef {
    pub(crate) acker: Arc<dyn Acknowledger>,
    pub(crate) id: u64,
}

impl AckRef {
    /// Message `id` of the source `acker`.
    pub fn new(acker: Arc<dyn Acknowledger>, id: u64) -> Self {
        Self { acker, id }
    }
}

impl fmt::Debug for AckRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AckRef")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// W3C trace context of the request that produced a message.
pub type TraceCarrier = Arc<HashMap<String, String>>;

/// A message as a producer hands it to the pipeline.
#[derive(Debug)]
pub struct Incoming<T> {
    /// The payload.
    pub data: T,
    /// Where its fate goes.
    pub ack: AckRef,
    /// Its size, counted against the in-flight byte ceiling.
    pub bytes: u32,
    /// Messages with equal partitions keep their order (with `partitioned`).
    pub partition: u64,
    /// The producing request's trace, linked from the batch span.
    pub trace: Option<TraceCarrier>,
}

type AckGroup = (Arc<dyn Acknowledger>, Vec<u64>, Vec<(u64, Failure)>);

fn group_of(groups: &mut Vec<AckGroup>, acker: &Arc<dyn Acknowledger>) -> usize {
    match groups.iter().position(|(a, _, _)| Arc::ptr_eq(a, acker)) {
        Some(i) => i,
        None => {
            groups.push((acker.clone(), Vec::new(), Vec::new()));
            groups.len() - 1
        }
    }
}

/// Groups acknowledgements by acknowledger and delivers them in bulk.
pub(crate) fn deliver_acks(succeeded: Vec<AckRef>, failed: Vec<(AckRef, Failure)>) {
    let mut groups: Vec<AckGroup> = Vec::new();
    for ack in succeeded {
        let i = group_of(&mut groups, &ack.acker);
        groups[i].1.push(ack.id);
    }
    for (ack, failure) in failed {
        let i = group_of(&mut groups, &ack.acker);
        groups[i].2.push((ack.id, failure));
    }
    for (acker, ok, failed) in groups {
        acker.ack(&ok, &failed);
    }
}
