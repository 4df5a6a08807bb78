//! The readings pipeline's logic (the stage kit's [`Handler`]): validate
//! each reading on a processor, write batches through the sink on a batch
//! processor, dead-letter what can never be stored. Sources (gRPC, NATS)
//! wrap readings in an [`Envelope`] and learn their fate through their
//! acknowledger; a source that answers per request also passes a
//! [`Tally`] to hear which readings were rejected or duplicates.

use std::{borrow::Borrow, sync::Arc};

use chrono::Utc;
use contracts::ingest::v1 as pb;
use opentelemetry::{KeyValue, metrics::Counter};
use pipeline::{Failure, FailureKind, Handler, ItemFailure, Processed};

use crate::{
    reading::{Limits, Reading, Rejection},
    sink::{SinkError, WriteReport},
    store::{DeadLetter, ReadingStore},
    tenants::DeletedTenants,
    window::Windowing,
};

/// A source's per-request bookkeeping, told about each reading's outcome
/// beyond success or failure.
pub trait Tally: Send + Sync {
    /// Reading `index` failed validation.
    fn rejected(&self, index: u32, event_id: &str, rejection: &Rejection);
    /// Reading `index` was already stored (not stored again).
    fn duplicate(&self, index: u32);
}

/// What a reading costs in memory beyond its encoded size while it is in
/// the pipeline (the decoded message, its validated copy, bookkeeping):
/// sources count `encoded + OVERHEAD` against the byte budgets, so the
/// budgets bound memory, not just payload bytes.
pub const IN_MEMORY_OVERHEAD: usize = 512;

/// Which tenant a reading may belong to, as its transport says. Readings
/// are keyed by tenant, so a reading must never land in a tenant its
/// publisher does not speak for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantBinding {
    /// The transport vouches for no tenant (gRPC, until the gateway passes
    /// a principal): the body's `tenant_id` stands.
    FromBody,
    /// The NATS subject names this tenant: a body naming another is
    /// refused (dead-lettered); a body naming none takes this one.
    Subject(String),
    /// The subject names no tenant: refused.
    Unbound {
        /// The subject it came on.
        subject: String,
    },
}

/// A reading on its way in, with where it came from.
pub struct Envelope {
    /// As received.
    pub reading: pb::Reading,
    /// `grpc` or `nats`, recorded with dead letters.
    pub source: &'static str,
    /// The tenant the transport speaks for.
    pub tenant: TenantBinding,
    /// Who wants to hear about rejections and duplicates, and the reading's
    /// position there.
    pub tally: Option<(Arc<dyn Tally>, u32)>,
    /// A payload that was not a reading at all: what is wrong with it (the
    /// dead letter's reason, after `payload: `) and the raw bytes, kept for
    /// the dead-letter store.
    pub undecodable: Option<(String, Vec<u8>)>,
    /// Refused before the pipeline (the tenant's series quota): reported
    /// as a rejection, and not dead-lettered (it is not malformed).
    pub refused: Option<Rejection>,
}

/// A valid reading bound for a batch.
pub struct Accepted {
    reading: Reading,
    tally: Option<(Arc<dyn Tally>, u32)>,
}

impl Borrow<Reading> for Accepted {
    fn borrow(&self) -> &Reading {
        &self.reading
    }
}

/// Validation, batching into the sink, dead letters.
#[derive(Debug)]
pub struct ReadingsHandler<S> {
    store: S,
    windowing: Windowing,
    limits: Limits,
    deleted: DeletedTenants,
    readings: Counter<u64>,
}

impl<S: ReadingStore> ReadingsHandler<S> {
    /// A handler writing into `store`, refusing the `deleted` tenants.
    pub fn new(store: S, windowing: Windowing, limits: Limits, deleted: DeletedTenants) -> Self {
        let readings = opentelemetry::global::meter("platform.ingest")
            .u64_counter("ingest.readings")
            .with_description("Readings by outcome: stored, duplicate, rejected")
            .build();
        Self {
            store,
            windowing,
            limits,
            deleted,
            readings,
        }
    }

    fn count(&self, outcome: &'static str, n: usize) {
        if n > 0 {
            self.readings
                .add(n as u64, &[KeyValue::new("outcome", outcome)]);
        }
    }
}

/// Why a resubmitted dead letter was not stored; either way the letter is
/// left as it was.
#[derive(Debug, thiserror::Error)]
pub enum ResubmitError {
    /// The reading fails validation again.
    #[error("{0}")]
    Invalid(Rejection),
    /// The database failed; nothing was written.
    #[error("{0}")]
    Store(#[from] SinkError),
}

impl<S: ReadingStore> ReadingsHandler<S> {
    /// Runs a dead letter's reading through the pipeline's validation
    /// again and, if it passes, stores it in place of the letter (one
    /// transaction, windows and aggregation jobs as for any batch).
    /// `Ok(None)`: no such letter of `tenant_id`'s, nothing written.
    pub async fn resubmit(
        &self,
        tenant_id: Option<&str>,
        id: i64,
        reading: pb::Reading,
    ) -> Result<Option<WriteReport>, ResubmitError> {
        let reading =
            Reading::parse(reading, Utc::now(), &self.limits).map_err(ResubmitError::Invalid)?;
        if self.deleted.contains(&reading.tenant_id) {
            return Err(ResubmitError::Invalid(Rejection {
                field: "tenant_id",
                reason: "the tenant was deleted; nothing more is stored for it".to_owned(),
            }));
        }
        let report = self
            .store
            .resubmit_dead_letter(tenant_id, id, &reading, &self.windowing)
            .await?;
        if let Some(report) = &report {
            self.count("stored", report.inserted);
            self.count("duplicate", report.duplicates);
        }
        Ok(report)
    }
}

/// The reading a dead letter's payload holds, as [`payload`] wrote it;
/// `None` for undecodable bytes (nothing to resubmit but a correction).
pub fn reading_from_payload(payload: &serde_json::Value) -> Option<pb::Reading> {
    let object = payload.as_object()?;
    if object.contains_key("bytes_hex") {
        return None;
    }
    let text = |key: &str| {
        object
            .get(key)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let observed_at = object
        .get("observed_at")
        .and_then(serde_json::Value::as_object)
        .map(|at| prost_types::Timestamp {
            seconds: at
                .get("seconds")
                .and_then(serde_json::Value::as_i64)
                .unwrap_or_default(),
            nanos: at
                .get("nanos")
                .and_then(serde_json::Value::as_i64)
                .and_then(|n| i32::try_from(n).ok())
                .unwrap_or_default(),
        });
    let attributes = object
        .get("attributes")
        .and_then(serde_json::Value::as_object)
        .map(|map| {
            map.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    Some(pb::Reading {
        event_id: text("event_id"),
        tenant_id: text("tenant_id"),
        device_id: text("device_id"),
        metric: text("metric"),
        // JSON has no NaN or infinity: a `null` value was one of them, and
        // stays invalid until corrected.
        value: object
            .get("value")
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(f64::NAN),
        observed_at,
        attributes,
    })
}

/// Splits a rejection's `field: reason` back apart (field names never hold
/// `": "`).
fn field_and_reason(failure: &Failure) -> (String, String) {
    match failure.reason.split_once(": ") {
        Some((field, reason)) => (field.to_owned(), reason.to_owned()),
        None => ("reading".to_owned(), failure.reason.clone()),
    }
}

/// The reading as received, for the dead-letter store (NaN and infinities
/// become `null`, as JSON has no place for them).
fn payload(reading: &pb::Reading) -> serde_json::Value {
    serde_json::json!({
        "event_id": reading.event_id,
        "tenant_id": reading.tenant_id,
        "device_id": reading.device_id,
        "metric": reading.metric,
        "value": reading.value,
        "observed_at": reading.observed_at.map(|t| serde_json::json!({"seconds": t.seconds, "nanos": t.nanos})),
        "attributes": reading.attributes,
    })
}

/// Checks the body's tenant against the transport's binding; a reading
/// naming no tenant takes the subject's.
fn bind_tenant(reading: &pb::Reading, binding: &TenantBinding) -> Result<pb::Reading, Failure> {
    match binding {
        TenantBinding::FromBody => Ok(reading.clone()),
        TenantBinding::Unbound { subject } => Err(Failure::invalid(format!(
            "subject: {subject} names no tenant; publish on <prefix>.<tenant>[.…]"
        ))),
        TenantBinding::Subject(tenant) if reading.tenant_id.is_empty() => Ok(pb::Reading {
            tenant_id: tenant.clone(),
            ..reading.clone()
        }),
        TenantBinding::Subject(tenant) if reading.tenant_id == *tenant => Ok(reading.clone()),
        TenantBinding::Subject(tenant) => Err(Failure::invalid(format!(
            "tenant_id: names another tenant than the subject's ({tenant})"
        ))),
    }
}

/// Raw bytes that did not decode, hex-encoded (the first 4 KiB).
fn undecodable_payload(raw: &[u8]) -> serde_json::Value {
    use std::fmt::Write as _;
    let shown = &raw[..raw.len().min(4_096)];
    let mut hex = String::with_capacity(shown.len() * 2);
    for byte in shown {
        let _ = write!(hex, "{byte:02x}");
    }
    serde_json::json!({ "bytes_hex": hex, "length": raw.len() })
}

impl<S: ReadingStore> Handler for ReadingsHandler<S> {
    type In = Envelope;
    type Out = Accepted;

    fn process(&self, input: &Envelope) -> Result<Processed<Accepted>, Failure> {
        if let Some((error, _)) = &input.undecodable {
            return Err(Failure::invalid(format!("payload: {error}")));
        }
        let reading = bind_tenant(&input.reading, &input.tenant)?;
        let parsed = Reading::parse(reading, Utc::now(), &self.limits).and_then(|reading| {
            if let Some(refused) = &input.refused {
                return Err(refused.clone());
            }
            if self.deleted.contains(&reading.tenant_id) {
                return Err(Rejection {
                    field: "tenant_id",
                    reason: "the tenant was deleted; nothing more is stored for it".to_owned(),
                });
            }
            Ok(reading)
        });
        match parsed {
            Ok(reading) => Ok(Processed {
                data: Accepted {
                    reading,
                    tally: input.tally.clone(),
                },
                // One batch key: a batch may mix series; the sink locks
                // series in order, so concurrent batches never deadlock.
                batch_key: 0,
            }),
            Err(rejection) => {
                if let Some((tally, index)) = &input.tally {
                    tally.rejected(*index, &input.reading.event_id, &rejection);
                }
                Err(Failure::invalid(rejection.to_string()))
            }
        }
    }

    async fn handle_batch(
        &self,
        _batch_key: u64,
        items: &[Accepted],
    ) -> Result<Vec<ItemFailure>, Failure> {
        let report = self
            .store
            .write_batch(items, &self.windowing)
            .await
            .map_err(|error| {
                tracing::warn!(%error, readings = items.len(), "batch not stored; will be retried");
                Failure::retryable(format!("the readings database failed: {error}"))
            })?;
        for &index in &report.duplicate_at {
            if let Some((tally, position)) = items.get(index).and_then(|item| item.tally.as_ref()) {
                tally.duplicate(*position);
            }
        }
        self.count("stored", report.inserted);
        self.count("duplicate", report.duplicates);
        Ok(Vec::new())
    }

    async fn handle_failed(&self, failed: Vec<(Envelope, Failure)>) -> Result<(), Failure> {
        let mut dropped = 0;
        let letters: Vec<DeadLetter> = failed
            .iter()
            .filter(|(envelope, failure)| {
                failure.kind == FailureKind::Invalid && envelope.refused.is_none()
            })
            .filter_map(|(envelope, failure)| {
                let (field, reason) = field_and_reason(failure);
                let tenant_id = match &envelope.tenant {
                    TenantBinding::Subject(tenant) => Some(tenant.clone()),
                    TenantBinding::FromBody | TenantBinding::Unbound { .. } => {
                        Some(envelope.reading.tenant_id.clone()).filter(|t| !t.is_empty())
                    }
                };
                // A deleted tenant's data is not kept, not even refused.
                if tenant_id
                    .as_deref()
                    .is_some_and(|t| self.deleted.contains(t))
                {
                    dropped += 1;
                    return None;
                }
                Some(DeadLetter {
                    source: envelope.source,
                    tenant_id,
                    event_id: (!envelope.reading.event_id.is_empty())
                        .then(|| envelope.reading.event_id.clone()),
                    field,
                    reason,
                    payload: match &envelope.undecodable {
                        Some((_, raw)) => undecodable_payload(raw),
                        None => payload(&envelope.reading),
                    },
                })
            })
            .collect();
        self.store.dead_letter(&letters).await.map_err(|error| {
            tracing::warn!(%error, "dead letters not stored; the messages will be retried");
            Failure::retryable(format!("the dead-letter store failed: {error}"))
        })?;
        self.count("rejected", letters.len());
        self.count("dropped_deleted_tenant", dropped);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letters_payload_gives_back_the_reading_it_was() {
        let reading = pb::Reading {
            event_id: "e-1".into(),
            tenant_id: "acme".into(),
            device_id: "d-1".into(),
            metric: "temperature_c".into(),
            value: 21.5,
            observed_at: Some(prost_types::Timestamp {
                seconds: 1_796_000_000,
                nanos: 250,
            }),
            attributes: [("site".to_owned(), "north".to_owned())].into(),
        };
        assert_eq!(
            reading_from_payload(&payload(&reading)),
            Some(reading.clone())
        );
        // JSON keeps no NaN: it comes back as NaN, still invalid.
        let nan = pb::Reading {
            value: f64::NAN,
            observed_at: None,
            ..reading
        };
        let back = reading_from_payload(&payload(&nan)).unwrap();
        assert!(back.value.is_nan());
        assert_eq!(back.observed_at, None);
        // Undecodable bytes hold no reading.
        assert_eq!(
            reading_from_payload(&undecodable_payload(b"\xff\x00")),
            None
        );
    }
}
