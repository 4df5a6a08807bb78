//! `webhook.deliver`: POSTs a signed JSON body to a tenant's URL.
//!
//! Signed as the Standard Webhooks specification says: headers
//! `webhook-id` (the job id, stable across retries, so receivers can
//! de-duplicate), `webhook-timestamp` and `webhook-signature: v1,<base64
//! HMAC-SHA256 of "id.timestamp.body">`; `Idempotency-Key` carries the same
//! id for receivers that use that convention. 5xx, 408, 429 and network
//! errors are retried with backoff; any other 4xx is discarded at once with
//! the status and the start of the response body recorded.

use std::time::Duration;

use base64::Engine as _;
use contracts::{JobArgs as _, jobs::v1::DeliverWebhookArgs};
use hmac::{Hmac, Mac as _};
use jobs::{Done, JobContext, JobError, Worker};
use sha2::Sha256;

use security::Secret;

/// The SSRF-guarded outbound client (`security::OutboundClient`) with the
/// signing key.
#[derive(Debug, Clone)]
pub struct WebhookClient {
    http: security::OutboundClient,
    secret: Secret,
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

    /// `v1,<base64 signature>` of `id.timestamp.body`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        // HMAC accepts keys of any length, so this cannot fail.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(self.secret.expose()) else {
            return String::new();
        };
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        )
    }
}

/// Delivers webhooks.
#[derive(Debug, Clone)]
pub struct DeliverWebhook {
    pub(crate) client: WebhookClient,
    /// First retry delay; doubles per attempt.
    pub(crate) backoff: Duration,
}

impl Worker for DeliverWebhook {
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
        // A destination the guard refuses stays refused: discard at once.
        let request = self
            .client
            .http
            .post(&args.url)
            .map_err(|e| JobError::Discard(e.to_string()))?;
        let id = format!("job_{}", ctx.id);
        let body = serde_json::to_vec(&serde_json::json!({
            "type": args.event,
            "timestamp": chrono::Utc::now().to_rfc3339(),
            "data": args.payload.map(contracts::json::struct_to_json),
        }))
        .map_err(|e| JobError::Discard(format!("payload does not serialise: {e}")))?;
        let timestamp = chrono::Utc::now().timestamp();
        let signature = self.client.sign(&id, timestamp, &body);
        let mut request = request
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .header("idempotency-key", &id);
        for (name, value) in telemetry::current_trace_carrier() {
            request = request.header(name, value);
        }
        let response = match request.body(body).send().await {
            Ok(response) => response,
            // Without the URL: its path and query often carry the
            // receiver's token, and job errors are stored and shown.
            Err(error) if error.is_builder() => {
                return Err(JobError::Discard(format!(
                    "bad request: {}",
                    error_chain(&error.without_url())
                )));
            }
            Err(error) => {
                return Err(JobError::Retry(format!(
                    "delivery failed: {}",
                    error_chain(&error.without_url())
                )));
            }
        };
        let status = response.status();
        if status.is_success() {
            return Ok(Done::Completed);
        }
        let body = self
            .client
            .http
            .read_bounded(response)
            .await
            .unwrap_or_default();
        let snippet: String = String::from_utf8_lossy(&body).chars().take(200).collect();
        let reason = format!("receiver answered {status}: {snippet}");
        if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
            Err(JobError::Retry(reason))
        } else {
            Err(JobError::Discard(reason))
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
