//! What an app supplies: how to process one message and how to write a
//! batch (Broadway's `handle_message` and `handle_batch`).

use std::future::Future;

use crate::Failure;

/// A processed message and the batch it belongs in.
#[derive(Debug, Clone, PartialEq)]
pub struct Processed<T> {
    /// The processed payload.
    pub data: T,
    /// Messages with equal keys are batched together.
    pub batch_key: u64,
}

/// A failed batch item: its position in the batch and why.
pub type ItemFailure = (usize, Failure);

/// The app's logic around the stage kit.
pub trait Handler: Send + Sync + 'static {
    /// What the producer yields.
    type In: Send + 'static;
    /// What batches hold.
    type Out: Send + 'static;

    /// Per message, on a processor: validate and transform. An error fails
    /// the message (dead-lettered when [`crate::FailureKind::Invalid`]).
    fn process(&self, input: &Self::In) -> Result<Processed<Self::Out>, Failure>;

    /// Per batch, on a batch processor: write durably. `Ok` lists the items
    /// that failed (the rest succeeded); `Err` fails the whole batch. Every
    /// item is acknowledged only after this returns.
    fn handle_batch(
        &self,
        batch_key: u64,
        items: &[Self::Out],
    ) -> impl Future<Output = Result<Vec<ItemFailure>, Failure>> + Send;

    /// Before messages that failed processing are reported to their source
    /// (Broadway's `handle_failed`): the place to dead-letter invalid ones.
    /// An `Err` (the dead-letter store is down) reports every one of them as
    /// retryable with that failure instead, so the source redelivers them and
    /// no poison message is dropped without a record.
    fn handle_failed(
        &self,
        failed: Vec<(Self::In, Failure)>,
    ) -> impl Future<Output = Result<(), Failure>> + Send {
        let _ = failed;
        async { Ok(()) }
    }
}
