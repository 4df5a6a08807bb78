//! `webhook.deliver`: POSTs a signed JSON body to a tenant's endpoint.
//!
//! Signed as the Standard Webhooks specification says: headers
//! `webhook-id` (the delivery id, stable across retries, so receivers can
//! de-duplicate), `webhook-timestamp` and `webhook-signature: v1,<base64
//! HMAC-SHA256 of "id.timestamp.body">`, one per secret (two during a
//! rotation's overlap, space-separated); `Idempotency-Key` carries the same
//! id for receivers that use that convention. 5xx, 408, 429 and network
//! errors are retried with backoff; any other 4xx is discarded at once with
//! the status and the start of the response body recorded. Each attempt is
//! written to the delivery log; a deleted endpoint's deliveries stop, a
//! disabled one's are discarded (test events still go), at most
//! `max_in_flight` run per endpoint on a node (the rest wait without
//! spending an attempt), and an endpoint whose deliveries have all failed
//! for `WORKER_WEBHOOK_DISABLE_AFTER` is disabled and audited. Jobs queued
//! before endpoints existed (no delivery id) go to their URL signed with
//! the worker's key, as before.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use contracts::{JobArgs as _, jobs::v1::DeliverWebhookArgs};
use jobs::{Done, JobContext, JobError, Worker};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use security::Secret;

use crate::webhooks::{DeliveryState, Endpoint, WebhookStore};

/// The SSRF-guarded outbound client (`security::OutboundClient`) with the
/// signing key.
#[derive(Debug, Clone)]
pub struct WebhookClient {
    pub(crate) http: security::OutboundClient,
    /// Signs jobs queued before endpoints existed, and derives every
    /// endpoint's secrets.
    pub(crate) secret: Secret,
}

impl WebhookClient {
    /// A client whose requests reach what `policy` allows and time out
    /// after its timeout.
    pub fn new(secret: Secret, policy: security::OutboundPolicy) -> Result<Self, String> {
        let http = security::OutboundClient::new(
            policy,
            concat!("platform-worker/", env!("CARGO_PKG_VERSION")),
        )
        .map_err(|e| e.to_string())?;
        Ok(Self { http, secret })
    }
}

/// Delivers webhooks.
#[derive(Debug, Clone)]
pub struct DeliverWebhook<S> {
    pub(crate) client: WebhookClient,
    /// First retry delay; doubles per attempt.
    pub(crate) backoff: Duration,
    /// Endpoints and the delivery log.
    pub(crate) store: S,
    /// An endpoint failing for this long is disabled.
    pub(crate) disable_after: Duration,
    /// Deliveries in flight per endpoint on this node.
    pub(crate) in_flight: InFlight,
}

/// Per-endpoint slots: one endpoint's slow receiver holds its own slots,
/// not the queue's.
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<Mutex<HashMap<EndpointKey, Arc<Semaphore>>>>);

/// (tenant, endpoint id).
type EndpointKey = (String, String);

impl InFlight {
    fn take(&self, endpoint: &Endpoint) -> Option<OwnedSemaphorePermit> {
        let semaphore = {
            let mut slots = self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            slots
                .entry((endpoint.tenant_id.clone(), endpoint.endpoint_id.clone()))
                .or_insert_with(|| Arc::new(Semaphore::new(endpoint.max_in_flight.max(1) as usize)))
                .clone()
        };
        semaphore.try_acquire_owned().ok()
    }
}

/// How long a delivery waits for a slot of its endpoint before trying
/// again (no attempt is spent).
const SLOT_WAIT: Duration = Duration::from_millis(500);

/// What one POST came to.
struct Sent {
    /// The receiver's status, 0 when there was none.
    status: u16,
    /// `Ok` on 2xx; otherwise whether to retry, and why.
    outcome: Result<(), JobError>,
}

impl<S: WebhookStore> Worker for DeliverWebhook<S> {
    type Args = DeliverWebhookArgs;
    const KIND: &'static str = DeliverWebhookArgs::KIND;

    /// Receivers recover in minutes, not days: `base * 2^(attempt-1)` with
    /// up to 10% jitter, capped at an hour (the engine's default curve is
    /// `attempt^4 + 15s`).
    fn backoff(&self, attempt: i32) -> Duration {
        jobs::Backoff::exponential(self.backoff, Duration::from_secs(3600))
            .delay(u32::try_from(attempt).unwrap_or(1))
    }

    async fn work(&self, ctx: JobContext, args: DeliverWebhookArgs) -> Result<Done, JobError> {
        if args.delivery_id.is_empty() {
            // Queued before endpoints existed: signed with the worker's key.
            let id = format!("job_{}", ctx.id);
            let keys = [self.client.secret.expose().to_vec()];
            return self
                .send(&args, &id, &keys)
                .await
                .outcome
                .map(|()| Done::Completed);
        }
        let endpoint = self
            .store
            .get_endpoint(&args.tenant_id, &args.endpoint_id)
            .await
            .map_err(|e| JobError::Retry(format!("reading the endpoint: {e}")))?;
        let Some(endpoint) = endpoint else {
            return Ok(Done::Cancel("the endpoint was deleted".into()));
        };
        if !endpoint.enabled && args.event != crate::webhooks::WEBHOOK_TEST {
            let reason = format!("the endpoint is disabled: {}", endpoint.disabled_reason);
            self.record(&args, DeliveryState::Discarded, 0, &reason)
                .await?;
            return Ok(Done::Cancel(reason));
        }
        let Some(_slot) = self.in_flight.take(&endpoint) else {
            return Ok(Done::Snooze(SLOT_WAIT));
        };
        let now = chrono::Utc::now();
        let keys: Vec<Vec<u8>> =
            crate::webhooks::signing_keys(self.client.secret.expose(), &endpoint, now)
                .iter()
                .map(|k| k.to_vec())
                .collect();
        let sent = self.send(&args, &args.delivery_id, &keys).await;
        let (state, error) = match &sent.outcome {
            Ok(()) => (DeliveryState::Succeeded, String::new()),
            Err(JobError::Retry(reason)) if ctx.attempt < ctx.max_attempts => {
                (DeliveryState::Failed, reason.clone())
            }
            Err(JobError::Retry(reason) | JobError::Discard(reason)) => {
                (DeliveryState::Discarded, reason.clone())
            }
        };
        let disabled = self.record(&args, state, sent.status, &error).await?;
        if let Some(reason) = disabled {
            tracing::warn!(
                tenant = %args.tenant_id,
                endpoint = %args.endpoint_id,
                %reason,
                "webhook endpoint disabled"
            );
            security::audit::record(&security::audit::AuditEvent {
                actor: "worker",
                action: "webhook.endpoint.disable",
                target: &format!("{}/{}", args.tenant_id, args.endpoint_id),
                outcome: security::audit::AuditOutcome::Allowed,
            });
        }
        sent.outcome.map(|()| Done::Completed)
    }
}

impl<S: WebhookStore> DeliverWebhook<S> {
    /// Writes an attempt's outcome on the delivery and its endpoint; the
    /// reason when it disabled the endpoint.
    async fn record(
        &self,
        args: &DeliverWebhookArgs,
        state: DeliveryState,
        status: u16,
        error: &str,
    ) -> Result<Option<String>, JobError> {
        let disable_before = chrono::Utc::now()
            - chrono::Duration::from_std(self.disable_after).unwrap_or(chrono::Duration::MAX);
        self.store
            .record_attempt(
                &args.tenant_id,
                &args.delivery_id,
                &args.endpoint_id,
                state,
                status,
                error,
                disable_before,
            )
            .await
            .map_err(|e| JobError::Retry(format!("recording the attempt: {e}")))
    }

    /// POSTs the event to `args.url` as `id`, signed with each of `keys`.
    async fn send(&self, args: &DeliverWebhookArgs, id: &str, keys: &[Vec<u8>]) -> Sent {
        let failed = |outcome| Sent {
            status: 0,
            outcome: Err(outcome),
        };
        // A destination the guard refuses stays refused: discard at once.
        let request = match self.client.http.post(&args.url) {
            Ok(request) => request,
            Err(e) => return failed(JobError::Discard(e.to_string())),
        };
        let body = match serde_json::to_vec(&serde_json::json!({
            "type": args.event,
            "timestamp": chrono::Utc::now().to_rfc3339(),
            "data": args.payload.clone().map(contracts::json::struct_to_json),
        })) {
            Ok(body) => body,
            Err(e) => {
                return failed(JobError::Discard(format!(
                    "payload does not serialise: {e}"
                )));
            }
        };
        let timestamp = chrono::Utc::now().timestamp();
        let signatures: Vec<String> = keys
            .iter()
            .map(|key| crate::webhooks::signature(key, id, timestamp, &body))
            .collect();
        let mut request = request
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signatures.join(" "))
            .header("idempotency-key", id);
        for (name, value) in telemetry::current_trace_carrier() {
            request = request.header(name, value);
        }
        let response = match request.body(body).send().await {
            Ok(response) => response,
            // Without the URL: its path and query often carry the
            // receiver's token, and job errors are stored and shown.
            Err(error) if error.is_builder() => {
                return failed(JobError::Discard(format!(
                    "bad request: {}",
                    error_chain(&error.without_url())
                )));
            }
            Err(error) => {
                return failed(JobError::Retry(format!(
                    "delivery failed: {}",
                    error_chain(&error.without_url())
                )));
            }
        };
        let status = response.status();
        if status.is_success() {
            return Sent {
                status: status.as_u16(),
                outcome: Ok(()),
            };
        }
        let body = self
            .client
            .http
            .read_bounded(response)
            .await
            .unwrap_or_default();
        let snippet: String = String::from_utf8_lossy(&body).chars().take(200).collect();
        let reason = format!("receiver answered {status}: {snippet}");
        let outcome =
            if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
                JobError::Retry(reason)
            } else {
                JobError::Discard(reason)
            };
        Sent {
            status: status.as_u16(),
            outcome: Err(outcome),
        }
    }
}

/// An error with its sources, `a: b: c`, so "delivery failed" says why.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
