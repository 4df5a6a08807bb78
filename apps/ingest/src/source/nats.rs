//! The NATS JetStream source: a durable pull consumer with explicit acks.
//! A message is acked after the batch holding it committed, nak'd with a
//! delay when the sink failed (it comes back), and terminated once it is in
//! the dead-letter store (it never can succeed). The consumer's
//! `max_ack_pending` is the pipeline's in-flight bound plus one pull's
//! prefetch, so the server never sends more than the pipeline can hold.
//!
//! Messages carry one `platform.ingest.v1.Reading` in protobuf; a W3C
//! `traceparent` header, if present, joins the reading to its trace.
//!
//! Subjects are bound to tenants: with `INGEST_NATS_SUBJECTS=readings.>`, a
//! message on `readings.acme.…` belongs to tenant `acme` (a body naming no
//! tenant takes it; a body naming another is dead-lettered), so access to
//! a tenant's subjects — which NATS permissions can grant per tenant — is
//! what lets a publisher write that tenant's readings.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, pull},
    message::Acker,
    stream::RetentionPolicy,
};
use contracts::ingest::v1 as pb;
use futures_util::{FutureExt as _, StreamExt as _};
use pipeline::{AckRef, Acknowledger, Failure, FailureKind, Incoming, Producer, TraceCarrier};
use prost::Message as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    NatsConfig,
    handler::{Envelope, IN_MEMORY_OVERHEAD, TenantBinding},
};

/// Why the JetStream source could not start.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The server is unreachable.
    #[error("connecting to {url}: {message}")]
    Connect {
        /// The configured URL.
        url: String,
        /// The client's error.
        message: String,
    },
    /// The stream or consumer could not be created or read.
    #[error("JetStream {what}: {message}")]
    JetStream {
        /// `stream`, `consumer` or `messages`.
        what: &'static str,
        /// The server's answer.
        message: String,
    },
}

fn jetstream_error(what: &'static str) -> impl Fn(String) -> NatsError {
    move |message| NatsError::JetStream { what, message }
}

/// A connected consumer, ready to become a pipeline's producer.
pub struct NatsSource {
    /// The client, for readiness checks.
    pub client: async_nats::Client,
    /// Pulls messages by demand.
    pub producer: NatsProducer,
    /// Sends acks, naks and terms; runs until its source is dropped.
    pub acker: AckSender,
}

/// Connects, creates the stream and the durable consumer if missing, and
/// opens the message stream. `max_in_flight` and `prefetch` size the
/// consumer's `max_ack_pending`.
pub async fn connect(
    config: &NatsConfig,
    max_in_flight: usize,
    prefetch: usize,
) -> Result<NatsSource, NatsError> {
    let mut options = async_nats::ConnectOptions::new().name("ingest");
    if let Some(tls) = &config.tls {
        options = options
            .require_tls(true)
            .add_root_certificates(tls.ca.clone());
        if let Some((cert, key)) = &tls.client {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
    }
    let client = options
        .connect(config.url.as_str())
        .await
        .map_err(|error| NatsError::Connect {
            url: config.url.clone(),
            message: error.to_string(),
        })?;
    let context = jetstream::new(client.clone());
    let stream = context
        .get_or_create_stream(jetstream::stream::Config {
            name: config.stream.clone(),
            subjects: config.subjects.clone(),
            // Acked readings are stored in PostgreSQL; the stream is a
            // buffer, not a log, so acked messages are removed.
            retention: RetentionPolicy::WorkQueue,
            max_age: Duration::from_secs(7 * 24 * 3600),
            ..Default::default()
        })
        .await
        .map_err(|e| jetstream_error("stream")(e.to_string()))?;
    let consumer: jetstream::consumer::Consumer<pull::Config> = stream
        .get_or_create_consumer(
            &config.consumer,
            pull::Config {
                durable_name: Some(config.consumer.clone()),
                ack_policy: AckPolicy::Explicit,
                ack_wait: config.ack_wait,
                max_ack_pending: (max_in_flight + prefetch) as i64,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| jetstream_error("consumer")(e.to_string()))?;
    let messages = consumer
        .stream()
        .max_messages_per_batch(prefetch.max(1))
        .heartbeat(Duration::from_secs(5))
        .messages()
        .await
        .map_err(|e| jetstream_error("messages")(e.to_string()))?;
    let prefixes = config
        .subjects
        .iter()
        .filter_map(|subject| subject.strip_suffix(".>"))
        .map(str::to_owned)
        .collect();
    let pending = Arc::new(Pending::default());
    let acker = Arc::new(NatsAcker {
        pending: pending.clone(),
        nak_delay: config.nak_delay,
    });
    Ok(NatsSource {
        client,
        producer: NatsProducer {
            messages,
            prefixes,
            acker: acker.clone(),
            next_id: AtomicU64::new(0),
            lag: opentelemetry::global::meter("platform.ingest")
                .u64_gauge("ingest.nats.pending")
                .with_description(
                    "Messages in the stream the durable consumer has not delivered yet (its lag)",
                )
                .build(),
            lag_attributes: [
                opentelemetry::KeyValue::new("stream", config.stream.clone()),
                opentelemetry::KeyValue::new("consumer", config.consumer.clone()),
            ],
        },
        acker: AckSender { pending },
    })
}

/// Each pulled message's acker until its fate is known, and the acks that
/// are due to be sent.
#[derive(Default)]
struct Pending {
    waiting: Mutex<HashMap<u64, Acker>>,
    due: Mutex<Vec<(Acker, AckKind)>>,
    wake: Notify,
}

impl Pending {
    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Acker>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn due(&self) -> std::sync::MutexGuard<'_, Vec<(Acker, AckKind)>> {
        self.due.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The pipeline's acknowledger for JetStream messages.
struct NatsAcker {
    pending: Arc<Pending>,
    nak_delay: Duration,
}

impl Acknowledger for NatsAcker {
    fn ack(&self, succeeded: &[u64], failed: &[(u64, Failure)]) {
        let mut due = Vec::with_capacity(succeeded.len() + failed.len());
        {
            let mut waiting = self.pending.waiting();
            for id in succeeded {
                if let Some(acker) = waiting.remove(id) {
                    due.push((acker, AckKind::Ack));
                }
            }
            for (id, failure) in failed {
                if let Some(acker) = waiting.remove(id) {
                    let kind = match failure.kind {
                        // In the dead-letter store already (handle_failed
                        // ran first): never redeliver.
                        FailureKind::Invalid => AckKind::Term,
                        FailureKind::Retryable => AckKind::Nak(Some(self.nak_delay)),
                    };
                    due.push((acker, kind));
                }
            }
        }
        self.pending.due().extend(due);
        self.pending.wake.notify_one();
    }
}

/// Sends the acks the pipeline decided on.
pub struct AckSender {
    pending: Arc<Pending>,
}

impl AckSender {
    /// Sends acks as they become due; after `stop`, sends what is due and
    /// returns once `done` says the pipeline has drained.
    pub async fn run(self, done: CancellationToken) {
        loop {
            let batch = std::mem::take(&mut *self.pending.due());
            for (acker, kind) in batch {
                if let Err(error) = acker.ack_with(kind).await {
                    // The server redelivers after ack_wait; storage is
                    // idempotent, so this costs a duplicate, not a loss.
                    tracing::warn!(%error, "JetStream ack not sent");
                }
            }
            if done.is_cancelled() && self.pending.due().is_empty() {
                return;
            }
            tokio::select! {
                () = self.pending.wake.notified() => {}
                () = done.cancelled() => {}
            }
        }
    }
}

/// Pulls JetStream messages by demand.
pub struct NatsProducer {
    messages: pull::Stream,
    /// The configured subjects without their `.>`: the token after one is
    /// the tenant.
    prefixes: Vec<String>,
    acker: Arc<NatsAcker>,
    next_id: AtomicU64,
    /// `ingest.nats.pending`: messages the consumer has yet to deliver, as
    /// the last delivered message reports it (the consumer's lag).
    lag: opentelemetry::metrics::Gauge<u64>,
    lag_attributes: [opentelemetry::KeyValue; 2],
}

/// The tenant a subject names: the token right after the first configured
/// prefix it starts with (`readings.acme.d1` → `acme` for `readings`).
pub fn subject_tenant(prefixes: &[String], subject: &str) -> TenantBinding {
    prefixes
        .iter()
        .find_map(|prefix| {
            let rest = subject.strip_prefix(prefix.as_str())?.strip_prefix('.')?;
            rest.split('.').next().filter(|tenant| !tenant.is_empty())
        })
        .map_or_else(
            || TenantBinding::Unbound {
                subject: subject.to_owned(),
            },
            |tenant| TenantBinding::Subject(tenant.to_owned()),
        )
}

impl NatsProducer {
    /// Wraps a delivered message; also returns how many the consumer has
    /// left to deliver after it, from the message's own metadata.
    fn wrap(&self, message: jetstream::Message) -> (Incoming<Envelope>, Option<u64>) {
        let pending = message.info().ok().map(|info| info.pending);
        let (message, acker) = message.split();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.acker.pending.waiting().insert(id, acker);
        let trace: Option<TraceCarrier> = message.headers.as_ref().and_then(|headers| {
            let parent = headers.get("traceparent")?;
            let mut carrier = HashMap::new();
            carrier.insert("traceparent".to_owned(), parent.as_str().to_owned());
            if let Some(state) = headers.get("tracestate") {
                carrier.insert("tracestate".to_owned(), state.as_str().to_owned());
            }
            Some(Arc::new(carrier))
        });
        let bytes = (message.payload.len() + IN_MEMORY_OVERHEAD).min(u32::MAX as usize) as u32;
        let tenant = subject_tenant(&self.prefixes, message.subject.as_str());
        let envelope = match pb::Reading::decode(message.payload.as_ref()) {
            Ok(reading) => Envelope {
                reading,
                source: "nats",
                tenant,
                tally: None,
                undecodable: None,
                refused: None,
            },
            Err(error) => Envelope {
                reading: pb::Reading::default(),
                source: "nats",
                tenant,
                tally: None,
                undecodable: Some((error.to_string(), message.payload.to_vec())),
                refused: None,
            },
        };
        let incoming = Incoming {
            data: envelope,
            ack: AckRef::new(self.acker.clone(), id),
            bytes,
            partition: 0,
            trace,
        };
        (incoming, pending)
    }
}

impl Producer for NatsProducer {
    type Item = Envelope;

    async fn pull(&mut self, demand: usize) -> Option<Vec<Incoming<Envelope>>> {
        let mut pulled = Vec::with_capacity(demand.min(1_024));
        let mut lag = loop {
            match self.messages.next().await {
                None => return None,
                Some(Ok(message)) => {
                    let (incoming, pending) = self.wrap(message);
                    pulled.push(incoming);
                    break pending;
                }
                Some(Err(error)) => {
                    // Missed heartbeats and similar: the client re-issues
                    // pull requests; nothing pulled is lost.
                    tracing::warn!(%error, "JetStream pull failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        while pulled.len() < demand {
            match self.messages.next().now_or_never() {
                Some(Some(Ok(message))) => {
                    let (incoming, pending) = self.wrap(message);
                    pulled.push(incoming);
                    lag = pending.or(lag);
                }
                _ => break,
            }
        }
        // Once per pull, not per message: the last one's count is current.
        if let Some(lag) = lag {
            self.lag.record(lag, &self.lag_attributes);
        }
        Some(pulled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_after_the_prefix_is_the_tenant() {
        let prefixes = vec!["readings".to_owned(), "t1.readings".to_owned()];
        let tenant = |subject| subject_tenant(&prefixes, subject);
        assert_eq!(
            tenant("readings.acme"),
            TenantBinding::Subject("acme".into())
        );
        assert_eq!(
            tenant("readings.acme.d1.temperature"),
            TenantBinding::Subject("acme".into())
        );
        assert_eq!(
            tenant("t1.readings.globex.x"),
            TenantBinding::Subject("globex".into())
        );
        for unbound in ["readings", "readings.", "readingsacme.x", "other.acme"] {
            assert_eq!(
                tenant(unbound),
                TenantBinding::Unbound {
                    subject: unbound.into()
                },
                "{unbound}"
            );
        }
    }
}
