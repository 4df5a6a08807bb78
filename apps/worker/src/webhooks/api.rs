//! `platform.webhooks.v1.WebhooksService`: endpoints and deliveries, each
//! request held to the caller's tenant. The gateway calls as a tenant and
//! may name only that tenant; another tenant's endpoint or delivery is
//! `NOT_FOUND`, the same answer as a missing one, so ids of other tenants
//! cannot even be confirmed.

use chrono::{DateTime, SubsecRound as _, Utc};
use contracts::webhooks::v1::{self as pb, webhooks_service_server::WebhooksService};
use security::{
    Secret,
    policy::{ActingFor, Caller},
};
use tonic::{Request, Response, Status};

use crate::error::{ApiError, status};

use super::{
    DEFAULT_MAX_IN_FLIGHT, Delivery, EVENT_TYPES, Endpoint, MAX_ENDPOINTS_PER_TENANT,
    MAX_IN_FLIGHT, WEBHOOK_TEST, WebhookStore, endpoint_secret, new_id,
};

/// The longest a rotation's overlap may be, and the default.
const MAX_OVERLAP_SECONDS: u32 = 7 * 24 * 3600;
const DEFAULT_OVERLAP_SECONDS: u32 = 24 * 3600;
/// Deliveries per page: the default and the most.
const DEFAULT_PAGE: u32 = 20;
const MAX_PAGE: u32 = 100;

/// The handler.
#[derive(Debug, Clone)]
pub struct WebhooksApi<S> {
    store: S,
    /// Derives endpoint secrets (`WORKER_WEBHOOK_SECRET`).
    key: Secret,
    /// Checks receiver URLs at registration as deliveries will.
    outbound: security::OutboundClient,
}

impl<S: WebhookStore> WebhooksApi<S> {
    /// A handler over `store`.
    pub fn new(store: S, key: Secret, outbound: security::OutboundClient) -> Self {
        Self {
            store,
            key,
            outbound,
        }
    }

    fn secret(&self, endpoint: &Endpoint) -> String {
        endpoint_secret(
            self.key.expose(),
            &endpoint.tenant_id,
            &endpoint.endpoint_id,
            endpoint.secret_generation,
        )
    }

    async fn endpoint(&self, tenant: &str, id: &str) -> Result<Endpoint, Status> {
        self.store
            .get_endpoint(tenant, id)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| no_endpoint(id))
    }
}

/// The tenant a request acts on: the caller's when it acts for a tenant
/// (a request naming another is refused), else the one it names.
fn tenant_of<T>(request: &Request<T>, named: &str) -> Result<String, Status> {
    let scope = Caller::of(request).and_then(|caller| match &caller.acting_for {
        ActingFor::Tenant(tenant) => Some(tenant.clone()),
        ActingFor::Itself | ActingFor::Operator(_) => None,
    });
    match scope {
        Some(tenant) if named.is_empty() || named == tenant => Ok(tenant),
        Some(_) => Err(status(ApiError::OtherTenant("tenant_id"))),
        None if named.is_empty() => Err(invalid("tenant_id", "is required")),
        None => Ok(named.to_owned()),
    }
}

fn unavailable(error: jobs::JobsError) -> Status {
    status(error)
}

fn invalid(field: &str, problem: impl Into<String>) -> Status {
    status(ApiError::invalid(field, problem))
}

fn no_endpoint(id: &str) -> Status {
    status(ApiError::NotFound {
        field: "endpoint_id",
        what: "endpoint",
        id: id.to_owned(),
    })
}

fn stamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

fn endpoint_to_pb(e: &Endpoint) -> pb::Endpoint {
    pb::Endpoint {
        tenant_id: e.tenant_id.clone(),
        endpoint_id: e.endpoint_id.clone(),
        url: e.url.clone(),
        description: e.description.clone(),
        events: e.events.clone(),
        enabled: e.enabled,
        disabled_reason: e.disabled_reason.clone(),
        created_at: Some(stamp(e.created_at)),
        max_in_flight: e.max_in_flight,
        failing_since: e.failing_since.map(stamp),
    }
}

fn delivery_to_pb(d: &Delivery) -> pb::Delivery {
    pb::Delivery {
        tenant_id: d.tenant_id.clone(),
        delivery_id: d.delivery_id.clone(),
        endpoint_id: d.endpoint_id.clone(),
        event: d.event.clone(),
        state: d.state.as_str().to_owned(),
        attempts: i32::try_from(d.attempts).unwrap_or(i32::MAX),
        last_status: i32::from(d.last_status),
        last_error: d.last_error.clone(),
        created_at: Some(stamp(d.created_at)),
        updated_at: Some(stamp(d.updated_at)),
    }
}

/// `<created_at micros>.<delivery id>`: where the next page starts.
fn page_token(d: &Delivery) -> String {
    format!("{}.{}", d.created_at.timestamp_micros(), d.delivery_id)
}

fn parse_page_token(raw: &str) -> Result<Option<(DateTime<Utc>, String)>, Status> {
    if raw.is_empty() {
        return Ok(None);
    }
    let bad_token = || invalid("page_token", "is not a token this API gave");
    let (micros, id) = raw.split_once('.').ok_or_else(bad_token)?;
    let at = micros
        .parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(bad_token)?;
    if !id.starts_with("wd_") {
        return Err(bad_token());
    }
    Ok(Some((at, id.to_owned())))
}

#[tonic::async_trait]
impl<S: WebhookStore> WebhooksService for WebhooksApi<S> {
    async fn create_endpoint(
        &self,
        request: Request<pb::CreateEndpointRequest>,
    ) -> Result<Response<pb::CreateEndpointResponse>, Status> {
        let tenant = tenant_of(&request, &request.get_ref().tenant_id)?;
        let body = request.into_inner();
        let url = body.url.trim().to_owned();
        if url.is_empty() {
            return Err(invalid("url", "is required"));
        }
        if url.len() > 2048 {
            return Err(invalid("url", "must be at most 2048 characters"));
        }
        // The same guard deliveries pass: scheme, private and metadata
        // addresses are refused here rather than at every delivery.
        // (The request is only built, to check the URL; nothing is sent.)
        let _checked = self
            .outbound
            .post(&url)
            .map_err(|e| invalid("url", e.to_string()))?;
        if body.description.chars().count() > 200 {
            return Err(invalid("description", "must be at most 200 characters"));
        }
        for (i, event) in body.events.iter().enumerate() {
            if !EVENT_TYPES.contains(&event.as_str()) {
                return Err(invalid(
                    &format!("events[{i}]"),
                    format!("{event:?} is not one of {}", EVENT_TYPES.join(", ")),
                ));
            }
        }
        let max_in_flight = match body.max_in_flight {
            0 => DEFAULT_MAX_IN_FLIGHT,
            n if n <= MAX_IN_FLIGHT => n,
            _ => {
                return Err(invalid(
                    "max_in_flight",
                    format!("must be 1 to {MAX_IN_FLIGHT}"),
                ));
            }
        };
        let existing = self
            .store
            .list_endpoints(&tenant)
            .await
            .map_err(unavailable)?;
        if existing.len() >= MAX_ENDPOINTS_PER_TENANT {
            return Err(status(ApiError::LimitReached(format!(
                "a tenant may have at most {MAX_ENDPOINTS_PER_TENANT} endpoints"
            ))));
        }
        let mut events = body.events;
        events.sort();
        events.dedup();
        let endpoint = Endpoint {
            tenant_id: tenant,
            endpoint_id: new_id("we_"),
            url,
            description: body.description,
            events,
            enabled: true,
            disabled_reason: String::new(),
            max_in_flight,
            secret_generation: 1,
            previous_secret_until: None,
            failing_since: None,
            // As stored: databases keep microseconds.
            created_at: Utc::now().trunc_subsecs(6),
        };
        self.store
            .create_endpoint(&endpoint)
            .await
            .map_err(unavailable)?;
        Ok(Response::new(pb::CreateEndpointResponse {
            secret: self.secret(&endpoint),
            endpoint: Some(endpoint_to_pb(&endpoint)),
        }))
    }

    async fn list_endpoints(
        &self,
        request: Request<pb::ListEndpointsRequest>,
    ) -> Result<Response<pb::ListEndpointsResponse>, Status> {
        let tenant = tenant_of(&request, &request.get_ref().tenant_id)?;
        let endpoints = self
            .store
            .list_endpoints(&tenant)
            .await
            .map_err(unavailable)?;
        Ok(Response::new(pb::ListEndpointsResponse {
            endpoints: endpoints.iter().map(endpoint_to_pb).collect(),
        }))
    }

    async fn delete_endpoint(
        &self,
        request: Request<pb::DeleteEndpointRequest>,
    ) -> Result<Response<pb::DeleteEndpointResponse>, Status> {
        let tenant = tenant_of(&request, &request.get_ref().tenant_id)?;
        let id = &request.get_ref().endpoint_id;
        if self
            .store
            .delete_endpoint(&tenant, id)
            .await
            .map_err(unavailable)?
        {
            Ok(Response::new(pb::DeleteEndpointResponse {}))
        } else {
            Err(no_endpoint(id))
        }
    }

    async fn enable_endpoint(
        &self,
        request: Request<pb::EnableEndpointRequest>,
    ) -> Result<Response<pb::EnableEndpointResponse>, Status> {
        let tenant = tenant_of(&request, &request.get_ref().tenant_id)?;
        let actor = security::audit::peer_actor(&request);
        let id = &request.get_ref().endpoint_id;
        let enabled = self.store.enable_endpoint(&tenant, id).await;
        security::audit::record(&security::audit::AuditEvent {
            actor: &actor,
            action: "webhook.enable",
            target: &format!("{tenant}/{id}"),
            outcome: security::audit::AuditOutcome::of(&enabled),
        });
        let endpoint = enabled
            .map_err(unavailable)?
            .ok_or_else(|| no_endpoint(id))?;
        Ok(Response::new(pb::EnableEndpointResponse {
            endpoint: Some(endpoint_to_pb(&endpoint)),
        }))
    }

    async fn rotate_secret(
        &self,
        request: Request<pb::RotateSecretRequest>,
    ) -> Result<Response<pb::RotateSecretResponse>, Status> {
        let tenant = tenant_of(&request, &request.get_ref().tenant_id)?;
        let body = request.into_inner();
        let overlap = match body.overlap_seconds {
            0 => DEFAULT_OVERLAP_SECONDS,
            n if n <= MAX_OVERLAP_SECONDS => n,
            _ => {
                return Err(invalid(
                    "overlap_seconds",
                    format!("must be at most {MAX_OVERLAP_SECONDS} (7 days)"),
                ));
            }
        };
        let until = Utc::now() + chrono::Duration::seconds(i64::from(overlap));
        let endpoint = self
            .store
            .rotate_secret(&tenant, &body.endpoint_id, until)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| no_endpoint(&body.endpoint_id))?;
        Ok(Response::new(pb::RotateSecretResponse {
            secret: self.secret(&endpoint),
        }))
    }

    async fn send_test_event(
        &self,
        request: Request<pb::SendTestEventRequest>,
    ) -> Result<Response<pb::SendTestEventResponse>, Status> {
        let tenant = tenant_of(&request, &request.get_ref().tenant_id)?;
        let endpoint = self
            .endpoint(&tenant, &request.get_ref().endpoint_id)
            .await?;
        let payload = serde_json::json!({
            "endpoint_id": endpoint.endpoint_id,
            "message": "a test event, sent on request",
        });
        let delivery = super::queue_delivery(&self.store, &endpoint, WEBHOOK_TEST, payload, None)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| status(ApiError::Internal("a new delivery id was taken")))?;
        Ok(Response::new(pb::SendTestEventResponse {
            delivery: Some(delivery_to_pb(&delivery)),
        }))
    }

    async fn list_deliveries(
        &self,
        request: Request<pb::ListDeliveriesRequest>,
    ) -> Result<Response<pb::ListDeliveriesResponse>, Status> {
        let tenant = tenant_of(&request, &request.get_ref().tenant_id)?;
        let body = request.into_inner();
        let endpoint = self.endpoint(&tenant, &body.endpoint_id).await?;
        let page_size = match body.page_size {
            0 => DEFAULT_PAGE,
            n if n <= MAX_PAGE => n,
            _ => {
                return Err(invalid("page_size", format!("must be 1 to {MAX_PAGE}")));
            }
        };
        let after = parse_page_token(&body.page_token)?;
        let mut deliveries = self
            .store
            .list_deliveries(&tenant, &endpoint.endpoint_id, after, page_size + 1)
            .await
            .map_err(unavailable)?;
        let more = deliveries.len() > page_size as usize;
        deliveries.truncate(page_size as usize);
        let next_page_token = if more {
            deliveries.last().map(page_token).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListDeliveriesResponse {
            deliveries: deliveries.iter().map(delivery_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn retry_delivery(
        &self,
        request: Request<pb::RetryDeliveryRequest>,
    ) -> Result<Response<pb::RetryDeliveryResponse>, Status> {
        let tenant = tenant_of(&request, &request.get_ref().tenant_id)?;
        let id = request.get_ref().delivery_id.clone();
        let delivery = self
            .store
            .get_delivery(&tenant, &id)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| {
                status(ApiError::NotFound {
                    field: "delivery_id",
                    what: "delivery",
                    id: id.clone(),
                })
            })?;
        // A failed delivery is already scheduled to retry: queueing it
        // again would send it twice.
        if delivery.state != super::DeliveryState::Discarded {
            return Err(status(ApiError::WrongState(format!(
                "delivery_id: the delivery is {}; only a discarded one is sent again",
                delivery.state.as_str()
            ))));
        }
        let endpoint = self.endpoint(&tenant, &delivery.endpoint_id).await?;
        let delivery = super::requeue_delivery(&self.store, &endpoint, delivery)
            .await
            .map_err(unavailable)?;
        Ok(Response::new(pb::RetryDeliveryResponse {
            delivery: Some(delivery_to_pb(&delivery)),
        }))
    }
}
