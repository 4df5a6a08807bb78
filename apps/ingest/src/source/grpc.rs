//! The gRPC source: published batches wait in a queue bounded by bytes
//! ([`Admission`]) until the pipeline pulls them. A full queue answers a
//! unary publish with `RESOURCE_EXHAUSTED` and a retry hint, and makes a
//! streaming publisher wait (HTTP/2 flow control slows it). Each batch has a
//! [`Ticket`] that is its readings' acknowledger: when every reading's fate
//! is known the batch is answered, which is after the sink committed.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError},
};

use crate::{
    error::ApiError,
    handler::{Envelope, IN_MEMORY_OVERHEAD, Tally, TenantBinding},
    reading::Rejection,
};
use contracts::ingest::v1 as pb;
use pipeline::{AckRef, Acknowledger, Failure, FailureKind, Incoming, Producer, TraceCarrier};
use prost::Message as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

/// How a batch ended: its acknowledgement (with `error` set when readings
/// were not stored).
pub type Outcome = pb::BatchAck;

/// One published batch: the readings' acknowledger and the tally of
/// rejections and duplicates; answers once, when the last reading's fate is
/// known. Dropped unanswered (the server is draining), its caller hears
/// `UNAVAILABLE`.
pub struct Ticket {
    state: Mutex<TicketState>,
}

struct TicketState {
    sequence: u64,
    remaining: usize,
    succeeded: u32,
    duplicates: u32,
    rejected: Vec<pb::RejectedReading>,
    retry: Option<(u32, String)>,
    answer: Option<oneshot::Sender<Outcome>>,
}

impl Ticket {
    /// A ticket for `readings` readings of batch `sequence`.
    pub fn new(sequence: u64, readings: usize) -> (Arc<Self>, oneshot::Receiver<Outcome>) {
        let (answer, receiver) = oneshot::channel();
        let ticket = Arc::new(Self {
            state: Mutex::new(TicketState {
                sequence,
                remaining: readings,
                succeeded: 0,
                duplicates: 0,
                rejected: Vec::new(),
                retry: None,
                answer: Some(answer),
            }),
        });
        (ticket, receiver)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, TicketState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl TicketState {
    fn finish(&mut self) {
        let Some(answer) = self.answer.take() else {
            return;
        };
        self.rejected.sort_by_key(|r| r.index);
        let error = self.retry.take().map(|(failed, reason)| pb::BatchError {
            code: tonic::Code::Unavailable as i32,
            message: format!(
                "batch {}: {failed} readings were not stored ({reason}); resend the batch: \
                 readings already stored are not stored twice",
                self.sequence
            ),
            not_stored: failed,
        });
        let _ = answer.send(pb::BatchAck {
            sequence: self.sequence,
            accepted: self.succeeded - self.duplicates,
            duplicates: self.duplicates,
            rejected: std::mem::take(&mut self.rejected),
            error,
        });
    }
}

impl Acknowledger for Ticket {
    fn ack(&self, succeeded: &[u64], failed: &[(u64, Failure)]) {
        let mut state = self.state();
        state.succeeded += succeeded.len() as u32;
        for (_, failure) in failed {
            if failure.kind == FailureKind::Retryable {
                let (count, _) = state.retry.get_or_insert((0, failure.reason.clone()));
                *count += 1;
            }
        }
        state.remaining = state
            .remaining
            .saturating_sub(succeeded.len() + failed.len());
        if state.remaining == 0 {
            state.finish();
        }
    }
}

impl Tally for Ticket {
    fn rejected(&self, index: u32, event_id: &str, rejection: &Rejection) {
        self.state().rejected.push(pb::RejectedReading {
            index,
            event_id: event_id.to_owned(),
            field: rejection.field.to_owned(),
            reason: rejection.reason.clone(),
        });
    }

    fn duplicate(&self, _index: u32) {
        self.state().duplicates += 1;
    }
}

/// A batch waiting for the pipeline, holding its share of the queue.
struct Queued {
    messages: Vec<Incoming<Envelope>>,
    _room: OwnedSemaphorePermit,
}

/// The publishing side: admits batches into the bounded queue.
#[derive(Clone)]
pub struct Admission {
    queue: mpsc::Sender<Queued>,
    room: Arc<Semaphore>,
    capacity: u32,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("free_bytes", &self.room.available_permits())
            .field("capacity", &self.capacity)
            .finish()
    }
}

/// The pipeline's side: pulls admitted batches by demand.
pub struct GrpcProducer {
    queue: mpsc::Receiver<Queued>,
    leftover: VecDeque<Incoming<Envelope>>,
}

/// A queue of at most `bytes` of published readings.
pub fn queue(bytes: u32) -> (Admission, GrpcProducer) {
    // Requests are bounded by bytes through `room`; the channel's own
    // bound only has to be larger than any number of requests that fit.
    let (tx, rx) = mpsc::channel(4_096);
    (
        Admission {
            queue: tx,
            room: Arc::new(Semaphore::new(bytes as usize)),
            capacity: bytes,
        },
        GrpcProducer {
            queue: rx,
            leftover: VecDeque::new(),
        },
    )
}

/// Whether a publisher waits for room or is told to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Answer `RESOURCE_EXHAUSTED` with a retry hint (unary publish).
    Reject,
    /// Wait for room (streams: the client is slowed by flow control).
    Wait,
}

impl Admission {
    /// Queues `readings` under `ticket`; their fate reaches the ticket.
    pub async fn admit(
        &self,
        readings: Vec<pb::Reading>,
        mut refused: Vec<Option<Rejection>>,
        ticket: &Arc<Ticket>,
        trace: Option<TraceCarrier>,
        when_full: WhenFull,
    ) -> Result<(), ApiError> {
        let sizes: Vec<u32> = readings
            .iter()
            .map(|r| (r.encoded_len() + IN_MEMORY_OVERHEAD).min(u32::MAX as usize) as u32)
            .collect();
        let total: u32 = sizes.iter().fold(0u32, |a, b| a.saturating_add(*b));
        let want = total.clamp(1, self.capacity);
        let room = match when_full {
            WhenFull::Reject => self
                .room
                .clone()
                .try_acquire_many_owned(want)
                .map_err(|_| ApiError::Full)?,
            WhenFull::Wait => self
                .room
                .clone()
                .acquire_many_owned(want)
                .await
                .map_err(|_| ApiError::ShuttingDown)?,
        };
        let acker: Arc<dyn Acknowledger> = ticket.clone();
        let tally: Arc<dyn Tally> = ticket.clone();
        let messages = readings
            .into_iter()
            .zip(sizes)
            .enumerate()
            .map(|(index, (reading, bytes))| Incoming {
                data: Envelope {
                    reading,
                    source: "grpc",
                    tenant: TenantBinding::FromBody,
                    tally: Some((tally.clone(), index as u32)),
                    undecodable: None,
                    refused: refused.get_mut(index).and_then(Option::take),
                },
                ack: AckRef::new(acker.clone(), index as u64),
                bytes,
                partition: 0,
                trace: trace.clone(),
            })
            .collect();
        let queued = Queued {
            messages,
            _room: room,
        };
        match when_full {
            WhenFull::Reject => self.queue.try_send(queued).map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => ApiError::Full,
                mpsc::error::TrySendError::Closed(_) => ApiError::ShuttingDown,
            }),
            WhenFull::Wait => self
                .queue
                .send(queued)
                .await
                .map_err(|_| ApiError::ShuttingDown),
        }
    }
}

impl Producer for GrpcProducer {
    type Item = Envelope;

    async fn pull(&mut self, demand: usize) -> Option<Vec<Incoming<Envelope>>> {
        if self.leftover.is_empty() {
            let first = self.queue.recv().await?;
            self.leftover.extend(first.messages);
        }
        while self.leftover.len() < demand {
            match self.queue.try_recv() {
                Ok(more) => self.leftover.extend(more.messages),
                Err(_) => break,
            }
        }
        let n = demand.min(self.leftover.len());
        Some(self.leftover.drain(..n).collect())
    }
}
