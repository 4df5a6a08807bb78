//! Tenants' webhook endpoints and deliveries, which the worker owns and
//! serves as `platform.webhooks.v1` (the gateway proxies its public API
//! here): [`store`] keeps them on either database, [`api`] serves the
//! contract held to the caller's tenant, and the `webhook.deliver` job
//! (`kinds::webhook`) sends each delivery, signed with the endpoint's
//! secret (both secrets during a rotation), at most `max_in_flight` at once
//! per endpoint, and disables an endpoint that has failed for too long.
//!
//! Signing secrets are not stored: each is derived from the worker's
//! webhook key (`WORKER_WEBHOOK_SECRET`), the endpoint and its secret
//! generation, so the database holds nothing that signs.

pub mod api;
pub mod store;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

pub use store::WebhookStore;

/// Event types the platform sends.
pub const EVENT_TYPES: &[&str] = &[WINDOW_ANOMALOUS, WEBHOOK_TEST];
/// A window's statistics were anomalous.
pub const WINDOW_ANOMALOUS: &str = "window.anomalous";
/// Sent on request, to check a receiver.
pub const WEBHOOK_TEST: &str = "webhook.test";

/// The most endpoints one tenant may register.
pub const MAX_ENDPOINTS_PER_TENANT: usize = 20;
/// Deliveries in flight per endpoint: the default and the most allowed.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 4;
/// See [`DEFAULT_MAX_IN_FLIGHT`].
pub const MAX_IN_FLIGHT: u32 = 16;

/// A tenant's receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Its tenant.
    pub tenant_id: String,
    /// `we_` and 16 hex digits.
    pub endpoint_id: String,
    /// Where deliveries go.
    pub url: String,
    /// For people.
    pub description: String,
    /// Event types it receives; empty for all.
    pub events: Vec<String>,
    /// False once disabled.
    pub enabled: bool,
    /// Why it was disabled.
    pub disabled_reason: String,
    /// Deliveries in flight at once.
    pub max_in_flight: u32,
    /// Which secret signs: bumped by each rotation.
    pub secret_generation: u32,
    /// Until when the previous generation also signs.
    pub previous_secret_until: Option<DateTime<Utc>>,
    /// Since when deliveries have failed, if they do.
    pub failing_since: Option<DateTime<Utc>>,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
}

impl Endpoint {
    /// Whether it receives events of `event` type.
    pub fn receives(&self, event: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == event)
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Queued or being sent.
    Pending,
    /// The receiver answered 2xx.
    Succeeded,
    /// The last attempt failed; another is scheduled.
    Failed,
    /// Given up: refused for good, out of attempts, or the endpoint is gone
    /// or disabled.
    Discarded,
}

impl DeliveryState {
    /// Its name in the contract and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Discarded => "discarded",
        }
    }

    /// The state a stored name stands for (an unknown name reads as
    /// pending, the state that is retried).
    pub fn parse(raw: &str) -> Self {
        match raw {
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "discarded" => Self::Discarded,
            _ => Self::Pending,
        }
    }
}

/// One event on its way to one endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Its tenant.
    pub tenant_id: String,
    /// `wd_` and 16 hex digits: the `webhook-id` the receiver sees.
    pub delivery_id: String,
    /// The endpoint.
    pub endpoint_id: String,
    /// The event type.
    pub event: String,
    /// The event's data (JSON).
    pub payload: serde_json::Value,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts made.
    pub attempts: u32,
    /// The receiver's last status (0 when none).
    pub last_status: u16,
    /// The last error.
    pub last_error: String,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// Queues `event` with `payload` to `endpoint`: a delivery row and its
/// `webhook.deliver` job, in one transaction. `id` names the delivery (a
/// new random one when `None`); a delivery already queued under that id is
/// not queued again (`Ok(None)`).
pub async fn queue_delivery<S: WebhookStore>(
    store: &S,
    endpoint: &Endpoint,
    event: &str,
    payload: serde_json::Value,
    id: Option<String>,
) -> Result<Option<Delivery>, jobs::JobsError> {
    // As stored: databases keep microseconds.
    let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
    let delivery = Delivery {
        tenant_id: endpoint.tenant_id.clone(),
        delivery_id: id.unwrap_or_else(|| new_id("wd_")),
        endpoint_id: endpoint.endpoint_id.clone(),
        event: event.to_owned(),
        payload,
        state: DeliveryState::Pending,
        attempts: 0,
        last_status: 0,
        last_error: String::new(),
        created_at: now,
        updated_at: now,
    };
    let queued = store
        .enqueue_delivery(&delivery, &delivery_job(&delivery, &endpoint.url)?, false)
        .await?;
    Ok(queued.then_some(delivery))
}

/// Queues `delivery` (failed or discarded) again, now.
pub async fn requeue_delivery<S: WebhookStore>(
    store: &S,
    endpoint: &Endpoint,
    mut delivery: Delivery,
) -> Result<Delivery, jobs::JobsError> {
    store
        .enqueue_delivery(&delivery, &delivery_job(&delivery, &endpoint.url)?, true)
        .await?;
    delivery.state = DeliveryState::Pending;
    Ok(delivery)
}

/// The `webhook.deliver` job that sends `delivery` to `url`.
fn delivery_job(delivery: &Delivery, url: &str) -> Result<jobs::NewJob, jobs::JobsError> {
    use contracts::JobArgs as _;
    let args = contracts::jobs::v1::DeliverWebhookArgs {
        url: url.to_owned(),
        event: delivery.event.clone(),
        payload: Some(contracts::json::json_to_struct(&delivery.payload)),
        tenant_id: delivery.tenant_id.clone(),
        endpoint_id: delivery.endpoint_id.clone(),
        delivery_id: delivery.delivery_id.clone(),
    };
    Ok(
        jobs::NewJob::with_args(contracts::jobs::v1::DeliverWebhookArgs::KIND, &args)?
            .with_queue(contracts::jobs::v1::DeliverWebhookArgs::QUEUE),
    )
}

/// A delivery id that is the same every time for the same `what` (a
/// window and an endpoint), so a recomputed window queues nothing twice.
pub fn stable_id(what: &str) -> String {
    use sha2::Digest as _;
    let digest = Sha256::digest(what.as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("wd_{hex}")
}

/// A new id with `prefix` and 64 random bits in hex.
pub fn new_id(prefix: &str) -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // The OS random source failing is not worth refusing a webhook
        // over; the time keeps ids distinct.
        bytes = Utc::now()
            .timestamp_nanos_opt()
            .unwrap_or_default()
            .to_be_bytes();
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{hex}")
}

/// The signing secret of `generation` of an endpoint, as the tenant sees
/// it: `whsec_` and the base64 key (the Standard Webhooks form).
pub fn endpoint_secret(key: &[u8], tenant: &str, endpoint: &str, generation: u32) -> String {
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD
            .encode(secret_key(key, tenant, endpoint, generation))
    )
}

/// The raw signing key of `generation` of an endpoint.
pub fn secret_key(key: &[u8], tenant: &str, endpoint: &str, generation: u32) -> [u8; 32] {
    // HMAC takes keys of any length: this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return [0; 32];
    };
    mac.update(
        format!("platform webhook endpoint secret\0{tenant}\0{endpoint}\0{generation}").as_bytes(),
    );
    mac.finalize().into_bytes().into()
}

/// `v1,<base64 HMAC-SHA256 of "id.timestamp.body">` with `signing_key`.
pub fn signature(signing_key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(signing_key) else {
        return String::new();
    };
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// The keys that sign a delivery to `endpoint` at `now`: the current
/// generation's, and the previous one's during a rotation's overlap.
pub fn signing_keys(key: &[u8], endpoint: &Endpoint, now: DateTime<Utc>) -> Vec<[u8; 32]> {
    let mut keys = vec![secret_key(
        key,
        &endpoint.tenant_id,
        &endpoint.endpoint_id,
        endpoint.secret_generation,
    )];
    if endpoint.secret_generation > 1
        && endpoint
            .previous_secret_until
            .is_some_and(|until| until > now)
    {
        keys.push(secret_key(
            key,
            &endpoint.tenant_id,
            &endpoint.endpoint_id,
            endpoint.secret_generation - 1,
        ));
    }
    keys
}

/// The worker's tenant data for `platform.tenancy.v1`: webhook endpoints
/// and their deliveries. (Jobs are work in flight, not tenant data: a
/// tenant's queued jobs find its data gone and end without storing any.)
#[derive(Debug, Clone)]
pub struct WorkerTenantData<S>(pub S);

impl<S: WebhookStore + Clone> service_runtime::tenant_data::TenantData for WorkerTenantData<S> {
    async fn export(
        &self,
        tenant: &str,
        out: tokio::sync::mpsc::Sender<service_runtime::tenant_data::TenantRecord>,
    ) -> Result<(), service_runtime::tenant_data::TenantDataError> {
        self.0
            .export_tenant(tenant, out)
            .await
            .map_err(crate::error::tenant_data_error)
    }

    async fn delete(
        &self,
        tenant: &str,
    ) -> Result<
        Vec<service_runtime::tenant_data::CollectionCount>,
        service_runtime::tenant_data::TenantDataError,
    > {
        let (endpoints, deliveries) = self
            .0
            .delete_tenant(tenant)
            .await
            .map_err(crate::error::tenant_data_error)?;
        Ok(vec![
            service_runtime::tenant_data::CollectionCount {
                collection: "webhook_endpoints".to_owned(),
                rows: endpoints,
            },
            service_runtime::tenant_data::CollectionCount {
                collection: "webhook_deliveries".to_owned(),
                rows: deliveries,
            },
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(generation: u32, until: Option<DateTime<Utc>>) -> Endpoint {
        Endpoint {
            tenant_id: "acme".into(),
            endpoint_id: "we_1".into(),
            url: "https://example.com/hook".into(),
            description: String::new(),
            events: Vec::new(),
            enabled: true,
            disabled_reason: String::new(),
            max_in_flight: 4,
            secret_generation: generation,
            previous_secret_until: until,
            failing_since: None,
            created_at: Utc::now(),
        }
    }

    #[test]
    fn secrets_differ_per_tenant_endpoint_and_generation_and_decode_to_the_signing_key() {
        let key = b"worker key";
        let a = endpoint_secret(key, "acme", "we_1", 1);
        assert_ne!(a, endpoint_secret(key, "globex", "we_1", 1));
        assert_ne!(a, endpoint_secret(key, "acme", "we_2", 1));
        assert_ne!(a, endpoint_secret(key, "acme", "we_1", 2));
        assert_ne!(a, endpoint_secret(b"other key", "acme", "we_1", 1));
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(a.trim_start_matches("whsec_"))
            .unwrap();
        assert_eq!(decoded, secret_key(key, "acme", "we_1", 1));
    }

    #[test]
    fn both_secrets_sign_during_the_overlap_only() {
        let now = Utc::now();
        let key = b"k";
        assert_eq!(signing_keys(key, &endpoint(1, None), now).len(), 1);
        let rotating = endpoint(2, Some(now + chrono::Duration::hours(1)));
        let keys = signing_keys(key, &rotating, now);
        assert_eq!(
            keys,
            [
                secret_key(key, "acme", "we_1", 2),
                secret_key(key, "acme", "we_1", 1)
            ]
        );
        let over = endpoint(2, Some(now - chrono::Duration::seconds(1)));
        assert_eq!(signing_keys(key, &over, now).len(), 1);
    }

    #[test]
    fn the_signature_is_the_standard_webhooks_one() {
        // The example from the Standard Webhooks specification.
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }
}
