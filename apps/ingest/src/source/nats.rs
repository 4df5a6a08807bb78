//! The NATS JetStream source: a durable pull consumer with explicit acks.
//! A message is acked after the batch holding it committed, nak'd with a
//! delay when the sink failed (it comes back), and terminated once it is in
//! the dead-letter store (it never can succeed). The consumer's
//! `max_ack_pending` is the pipeline's in-flight bound plus one pull's
//! prefetch, so the server never sends more than the pipeline can hold.
//!
//! A message carries one `platform.ingest.v1.Reading` in protobuf, or,
//! with the header `Content-Type:` [`BATCH_CONTENT_TYPE`], a
//! `platform.ingest.v1.ReadingBatch` of several: one message and one ack
//! for many readings (a message and an ack per reading kept nats-server
//! busier than ingest itself). A batch message is acked once every reading
//! in it has a fate, and nak'd whole if any must be retried. A W3C
//! `traceparent` header, if present, joins the readings to their trace.
//!
//! Subjects are bound to tenants: with `INGEST_NATS_SUBJECTS=readings.>`, a
//! message on `readings.acme.…` belongs to tenant `acme` (a body naming no
//! tenant takes it; a body naming another is dead-lettered), so access to
//! a tenant's subjects — which NATS permissions can grant per tenant — is
//! what lets a publisher write that tenant's readings.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
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
            leftover: VecDeque::new(),
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

/// The `Content-Type` header of a message carrying a
/// `platform.ingest.v1.ReadingBatch`.
pub const BATCH_CONTENT_TYPE: &str =
    "application/x-protobuf; proto=platform.ingest.v1.ReadingBatch";
/// The `Content-Type` header of a message carrying one
/// `platform.ingest.v1.Reading` (the same as no header).
pub const READING_CONTENT_TYPE: &str = "application/x-protobuf; proto=platform.ingest.v1.Reading";

/// A pulled message until every reading it carried has a fate.
struct Delivery {
    acker: Acker,
    /// Its readings' pipeline ids are `first..first + readings` (the key
    /// it is stored under is `first`).
    readings: u64,
    fate: Fate,
}

/// What a message's readings came to so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fate {
    /// Readings of the message not yet stored or dead-lettered.
    left: usize,
    /// One of them must be retried: the whole message is nak'd.
    retry: bool,
    /// One of them was stored (otherwise all were dead-lettered: term).
    stored: bool,
}

impl Fate {
    fn new(readings: usize) -> Self {
        Self {
            left: readings,
            retry: false,
            stored: false,
        }
    }

    /// Records one reading's outcome (`None`: stored); returns what to tell
    /// the server once it was the last one left.
    fn settle(&mut self, failure: Option<FailureKind>, nak_delay: Duration) -> Option<AckKind> {
        self.left = self.left.saturating_sub(1);
        match failure {
            None => self.stored = true,
            // In the dead-letter store already (handle_failed ran first).
            Some(FailureKind::Invalid) => {}
            Some(FailureKind::Retryable) => self.retry = true,
        }
        if self.left > 0 {
            None
        } else if self.retry {
            Some(AckKind::Nak(Some(nak_delay)))
        } else if self.stored {
            Some(AckKind::Ack)
        } else {
            // Every reading is in the dead-letter store: never redeliver.
            Some(AckKind::Term)
        }
    }
}

/// Pulled messages until their fate is known: which message each reading
/// came from, and the acks that are due to be sent.
#[derive(Default)]
struct Pending {
    /// Messages in flight by the pipeline id of their first reading: a
    /// reading's message is the last one starting at or before its id.
    waiting: Mutex<BTreeMap<u64, Delivery>>,
    due: Mutex<Vec<(Acker, AckKind)>>,
    wake: Notify,
}

impl Pending {
    fn waiting(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Delivery>> {
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

impl NatsAcker {
    /// Records one reading's fate; returns its message's ack once it was
    /// the last reading of the message waiting.
    fn settle(
        &self,
        waiting: &mut BTreeMap<u64, Delivery>,
        id: u64,
        fate: Option<FailureKind>,
    ) -> Option<(Acker, AckKind)> {
        let (&first, delivery) = waiting.range_mut(..=id).next_back()?;
        if id - first >= delivery.readings {
            // Not one of its readings (its own message was settled).
            return None;
        }
        let kind = delivery.fate.settle(fate, self.nak_delay)?;
        let delivery = waiting.remove(&first)?;
        Some((delivery.acker, kind))
    }
}

impl Acknowledger for NatsAcker {
    fn ack(&self, succeeded: &[u64], failed: &[(u64, Failure)]) {
        let mut due = Vec::new();
        {
            let mut waiting = self.pending.waiting();
            for id in succeeded {
                due.extend(self.settle(&mut waiting, *id, None));
            }
            for (id, failure) in failed {
                due.extend(self.settle(&mut waiting, *id, Some(failure.kind)));
            }
        }
        if due.is_empty() {
            return;
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
    /// Readings of a batch message beyond what the last pull asked for.
    leftover: VecDeque<Incoming<Envelope>>,
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

/// What a message's body holds, by its `Content-Type` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// One `platform.ingest.v1.Reading` (no header, or
    /// [`READING_CONTENT_TYPE`]).
    Reading,
    /// A `platform.ingest.v1.ReadingBatch` ([`BATCH_CONTENT_TYPE`]).
    Batch,
}

impl Body {
    /// The body a `Content-Type` header announces; an unknown type is an
    /// error naming it.
    pub fn from_content_type(content_type: Option<&str>) -> Result<Self, String> {
        match content_type.map(str::trim) {
            None | Some("") | Some(READING_CONTENT_TYPE) => Ok(Self::Reading),
            Some(BATCH_CONTENT_TYPE) => Ok(Self::Batch),
            Some(other) => Err(format!(
                "has Content-Type `{other}`; ingest reads `{READING_CONTENT_TYPE}` (or no \
                 header) and `{BATCH_CONTENT_TYPE}`"
            )),
        }
    }
}

/// The readings a message's body holds, or why it holds none.
pub fn decode(body: Body, payload: &[u8]) -> Result<Vec<pb::Reading>, String> {
    match body {
        Body::Reading => pb::Reading::decode(payload)
            .map(|reading| vec![reading])
            .map_err(|error| format!("is not a protobuf platform.ingest.v1.Reading ({error})")),
        Body::Batch => pb::ReadingBatch::decode(payload)
            .map(|batch| batch.readings)
            .map_err(|error| {
                format!("is not a protobuf platform.ingest.v1.ReadingBatch ({error})")
            }),
    }
}

impl NatsProducer {
    /// Turns a delivered message into its readings, each one pipeline
    /// message sharing the JetStream message's acker; also returns how
    /// many the consumer has left to deliver after it, from the message's
    /// own metadata.
    fn wrap(&self, message: jetstream::Message) -> (Vec<Incoming<Envelope>>, Option<u64>) {
        let pending = message.info().ok().map(|info| info.pending);
        let (message, acker) = message.split();
        let trace: Option<TraceCarrier> = message.headers.as_ref().and_then(|headers| {
            let parent = headers.get("traceparent")?;
            let mut carrier = HashMap::new();
            carrier.insert("traceparent".to_owned(), parent.as_str().to_owned());
            if let Some(state) = headers.get("tracestate") {
                carrier.insert("tracestate".to_owned(), state.as_str().to_owned());
            }
            Some(Arc::new(carrier))
        });
        let tenant = subject_tenant(&self.prefixes, message.subject.as_str());
        let content_type = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get("Content-Type"))
            .map(|value| value.as_str());
        let decoded = Body::from_content_type(content_type)
            .and_then(|body| decode(body, message.payload.as_ref()));
        let envelopes: Vec<Envelope> = match decoded {
            Ok(readings) => readings
                .into_iter()
                .map(|reading| Envelope {
                    reading,
                    source: "nats",
                    tenant: tenant.clone(),
                    tally: None,
                    undecodable: None,
                    refused: None,
                })
                .collect(),
            Err(reason) => vec![Envelope {
                reading: pb::Reading::default(),
                source: "nats",
                tenant,
                tally: None,
                undecodable: Some((reason, message.payload.to_vec())),
                refused: None,
            }],
        };
        let n = envelopes.len();
        if n == 0 {
            // An empty batch: nothing to store, nothing to redeliver.
            self.acker.pending.due().push((acker, AckKind::Ack));
            self.acker.pending.wake.notify_one();
            return (Vec::new(), pending);
        }
        let first = self.next_id.fetch_add(n as u64, Ordering::Relaxed);
        self.acker.pending.waiting().insert(
            first,
            Delivery {
                acker,
                readings: n as u64,
                fate: Fate::new(n),
            },
        );
        let bytes = (message.payload.len() / n + IN_MEMORY_OVERHEAD).min(u32::MAX as usize) as u32;
        let incoming = envelopes
            .into_iter()
            .zip(first..)
            .map(|(envelope, id)| Incoming {
                data: envelope,
                ack: AckRef::new(self.acker.clone(), id),
                bytes,
                partition: 0,
                trace: trace.clone(),
            })
            .collect();
        (incoming, pending)
    }

    /// Moves up to `demand` readings from what is left over into `pulled`.
    fn take_leftover(&mut self, pulled: &mut Vec<Incoming<Envelope>>, demand: usize) {
        let n = demand.saturating_sub(pulled.len()).min(self.leftover.len());
        pulled.extend(self.leftover.drain(..n));
    }

    /// Adds a message's readings to `pulled`, keeping what exceeds
    /// `demand` for the next pull (the pipeline drops what it did not ask
    /// for).
    fn add(
        &mut self,
        pulled: &mut Vec<Incoming<Envelope>>,
        demand: usize,
        readings: Vec<Incoming<Envelope>>,
    ) {
        self.leftover.extend(readings);
        self.take_leftover(pulled, demand);
    }
}

impl Producer for NatsProducer {
    type Item = Envelope;

    async fn pull(&mut self, demand: usize) -> Option<Vec<Incoming<Envelope>>> {
        let mut pulled = Vec::with_capacity(demand.min(1_024));
        self.take_leftover(&mut pulled, demand);
        let mut lag = None;
        while pulled.is_empty() {
            match self.messages.next().await {
                None => return None,
                Some(Ok(message)) => {
                    let (readings, pending) = self.wrap(message);
                    self.add(&mut pulled, demand, readings);
                    lag = pending;
                }
                Some(Err(error)) => {
                    // Missed heartbeats and similar: the client re-issues
                    // pull requests; nothing pulled is lost.
                    tracing::warn!(%error, "JetStream pull failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        while pulled.len() < demand {
            match self.messages.next().now_or_never() {
                Some(Some(Ok(message))) => {
                    let (readings, pending) = self.wrap(message);
                    self.add(&mut pulled, demand, readings);
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
    fn a_message_is_settled_once_its_last_reading_is_and_by_its_worst_outcome() {
        // AckKind has no PartialEq: compare by name.
        let name = |kind: Option<AckKind>| match kind {
            None => "waiting",
            Some(AckKind::Ack) => "ack",
            Some(AckKind::Nak(Some(_))) => "nak later",
            Some(AckKind::Term) => "term",
            Some(_) => "other",
        };
        let delay = Duration::from_secs(1);
        let mut fate = Fate::new(3);
        assert_eq!(name(fate.settle(None, delay)), "waiting");
        assert_eq!(
            name(fate.settle(Some(FailureKind::Invalid), delay)),
            "waiting"
        );
        assert_eq!(name(fate.settle(None, delay)), "ack");

        let mut fate = Fate::new(3);
        fate.settle(None, delay);
        fate.settle(Some(FailureKind::Retryable), delay);
        assert_eq!(
            name(fate.settle(Some(FailureKind::Invalid), delay)),
            "nak later",
            "one reading to retry: the whole message comes back"
        );

        let mut fate = Fate::new(2);
        fate.settle(Some(FailureKind::Invalid), delay);
        assert_eq!(
            name(fate.settle(Some(FailureKind::Invalid), delay)),
            "term",
            "all dead-lettered: never redelivered"
        );
    }

    #[test]
    fn the_content_type_says_what_the_body_holds() {
        assert_eq!(Body::from_content_type(None), Ok(Body::Reading));
        assert_eq!(
            Body::from_content_type(Some(READING_CONTENT_TYPE)),
            Ok(Body::Reading)
        );
        assert_eq!(
            Body::from_content_type(Some(BATCH_CONTENT_TYPE)),
            Ok(Body::Batch)
        );
        let error = Body::from_content_type(Some("text/csv")).unwrap_err();
        assert!(error.contains("`text/csv`"), "{error}");
        let readings = vec![pb::Reading {
            event_id: "e".into(),
            ..Default::default()
        }];
        let body = pb::ReadingBatch {
            readings: readings.clone(),
        }
        .encode_to_vec();
        assert_eq!(decode(Body::Batch, &body), Ok(readings));
        assert!(
            decode(Body::Batch, b"\xff\xff")
                .unwrap_err()
                .contains("ReadingBatch")
        );
    }

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
