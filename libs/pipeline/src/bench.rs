//! The stage kit alone, in memory: how many messages per second it moves
//! through producer, processors, batchers and batch processors with no-op
//! work, on the runtime it is called from (a current-thread runtime
//! measures one core).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{
    AckRef, Acknowledger, Failure, Handler, Incoming, ItemFailure, PipelineConfig, Processed,
    Producer,
};

/// Counts acknowledgements.
#[derive(Default)]
struct Counter {
    succeeded: AtomicU64,
    failed: AtomicU64,
}

impl Acknowledger for Counter {
    fn ack(&self, succeeded: &[u64], failed: &[(u64, Failure)]) {
        self.succeeded
            .fetch_add(succeeded.len() as u64, Ordering::Relaxed);
        self.failed
            .fetch_add(failed.len() as u64, Ordering::Relaxed);
    }
}

/// Yields `total` small messages as fast as it is asked.
struct Synthetic {
    next: u64,
    total: u64,
    acker: Arc<dyn Acknowledger>,
}

impl Producer for Synthetic {
    type Item = u64;

    async fn pull(&mut self, demand: usize) -> Option<Vec<Incoming<u64>>> {
        if self.next >= self.total {
            return None;
        }
        let end = (self.next + demand as u64).min(self.total);
        let messages = (self.next..end)
            .map(|i| Incoming {
                data: i,
                ack: AckRef::new(self.acker.clone(), i),
                bytes: 64,
                partition: i % 16,
                trace: None,
            })
            .collect();
        self.next = end;
        Some(messages)
    }
}

/// Keys by `n % 16`; writes nothing.
struct Discard;

impl Handler for Discard {
    type In = u64;
    type Out = u64;

    fn process(&self, input: &u64) -> Result<Processed<u64>, Failure> {
        Ok(Processed {
            data: *input,
            batch_key: input % 16,
        })
    }

    async fn handle_batch(&self, _key: u64, _items: &[u64]) -> Result<Vec<ItemFailure>, Failure> {
        Ok(Vec::new())
    }
}

/// What one in-memory run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InMemoryRun {
    /// Messages moved and acknowledged.
    pub messages: u64,
    /// Wall time from start to the last acknowledgement.
    pub elapsed: Duration,
}

impl InMemoryRun {
    /// Messages per second.
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }
}

/// Moves `messages` no-op messages through a pipeline shaped by `config`.
pub async fn in_memory(
    messages: u64,
    config: PipelineConfig,
) -> Result<InMemoryRun, crate::PipelineError> {
    let counter = Arc::new(Counter::default());
    let producer = Synthetic {
        next: 0,
        total: messages,
        acker: counter.clone(),
    };
    let started = Instant::now();
    let handle = crate::start("bench", config, producer, Arc::new(Discard))?;
    handle.finish(Duration::from_secs(600)).await;
    let elapsed = started.elapsed();
    Ok(InMemoryRun {
        messages: counter.succeeded.load(Ordering::Relaxed),
        elapsed,
    })
}
