//! Drive a handler without a broker: [`TestSource::test_message`] and
//! [`TestSource::test_batch`] push messages through a real pipeline and
//! return how each was acknowledged.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::{mpsc, oneshot};

use crate::{
    AckRef, Acknowledger, Failure, Handler, Incoming, PipelineConfig, PipelineError,
    PipelineHandle, Producer,
};

/// How a message was acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acked {
    /// Durably handled.
    Succeeded,
    /// Reported failed, with the reason.
    Failed(Failure),
}

#[derive(Default)]
struct TestAcker {
    waiting: Mutex<HashMap<u64, oneshot::Sender<Acked>>>,
}

impl Acknowledger for TestAcker {
    fn ack(&self, succeeded: &[u64], failed: &[(u64, Failure)]) {
        let mut waiting = self
            .waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for id in succeeded {
            if let Some(tx) = waiting.remove(id) {
                let _ = tx.send(Acked::Succeeded);
            }
        }
        for (id, failure) in failed {
            if let Some(tx) = waiting.remove(id) {
                let _ = tx.send(Acked::Failed(failure.clone()));
            }
        }
    }
}

/// A producer fed by a channel.
pub struct ChannelProducer<T> {
    rx: mpsc::Receiver<Incoming<T>>,
}

impl<T: Send + 'static> Producer for ChannelProducer<T> {
    type Item = T;

    async fn pull(&mut self, demand: usize) -> Option<Vec<Incoming<T>>> {
        let first = self.rx.recv().await?;
        let mut out = Vec::with_capacity(demand.min(1_024));
        out.push(first);
        while out.len() < demand {
            match self.rx.try_recv() {
                Ok(message) => out.push(message),
                Err(_) => break,
            }
        }
        Some(out)
    }
}

/// The sending side of a test pipeline.
pub struct TestSource<T> {
    tx: mpsc::Sender<Incoming<T>>,
    acker: Arc<TestAcker>,
    next_id: AtomicU64,
}

impl<T: Send + 'static> TestSource<T> {
    /// Pushes one message and waits for its acknowledgement.
    pub async fn test_message(&self, data: T) -> Acked {
        self.test_batch(vec![data])
            .await
            .pop()
            .unwrap_or(Acked::Failed(Failure::retryable("pipeline stopped")))
    }

    /// Pushes messages (partition 0, 1 byte each) and waits for all their
    /// acknowledgements, in input order.
    pub async fn test_batch(&self, items: Vec<T>) -> Vec<Acked> {
        let mut receivers = Vec::with_capacity(items.len());
        for data in items {
            receivers.push(self.push(data, 0).await);
        }
        let mut out = Vec::with_capacity(receivers.len());
        for rx in receivers {
            out.push(match rx {
                Some(rx) => rx
                    .await
                    .unwrap_or(Acked::Failed(Failure::retryable("never acknowledged"))),
                None => Acked::Failed(Failure::retryable("pipeline stopped")),
            });
        }
        out
    }

    /// Pushes one message in `partition`; resolves to its acknowledgement.
    pub async fn push(&self, data: T, partition: u64) -> Option<oneshot::Receiver<Acked>> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.acker
            .waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, tx);
        let acker: Arc<dyn Acknowledger> = self.acker.clone();
        let message = Incoming {
            data,
            ack: AckRef::new(acker, id),
            bytes: 1,
            partition,
            trace: None,
        };
        self.tx.send(message).await.ok()?;
        Some(rx)
    }
}

/// A pipeline around `handler` fed by the returned [`TestSource`].
pub fn test_pipeline<H: Handler>(
    config: PipelineConfig,
    handler: Arc<H>,
) -> Result<(TestSource<H::In>, PipelineHandle), PipelineError> {
    let (tx, rx) = mpsc::channel(config.max_demand.max(16));
    let handle = crate::start("test", config, ChannelProducer { rx }, handler)?;
    Ok((
        TestSource {
            tx,
            acker: Arc::default(),
            next_id: AtomicU64::new(0),
        },
        handle,
    ))
}
