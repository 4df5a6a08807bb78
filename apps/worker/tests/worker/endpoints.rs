//! Tenants' webhook endpoints through `platform.webhooks.v1`: held to
//! their tenant, validated at the door, signed with their own secret (both
//! secrets during a rotation), one slow endpoint unable to take every slot,
//! a failing one disabled and reported, its deliveries in the log. On
//! SQLite, then on PostgreSQL when `DATABASE_URL` is set.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, body::Bytes, extract::State, http::HeaderMap, http::StatusCode, routing::post};
use base64::Engine as _;
use contracts::webhooks::v1::{self as pb, webhooks_service_client::WebhooksServiceClient};
use hmac::{Hmac, Mac as _};
use service_runtime::{Running, ServiceUrl, TracedChannel, traced_channel};
use sha2::Sha256;

use crate::support::Scratch;

/// A receiver answering `status` after `delay`, counting what it got and
/// how many requests it held at once.
#[derive(Clone, Default)]
struct Receiver {
    status: u16,
    delay: Duration,
    received: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
    in_flight: Arc<AtomicUsize>,
    most_in_flight: Arc<AtomicUsize>,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let now = r.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    r.most_in_flight.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(r.delay).await;
    r.received.lock().unwrap().push((headers, body));
    r.in_flight.fetch_sub(1, Ordering::SeqCst);
    StatusCode::from_u16(r.status).unwrap()
}

async fn start_receiver(status: u16, delay: Duration) -> (String, Receiver) {
    let receiver = Receiver {
        status,
        delay,
        ..Receiver::default()
    };
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), receiver)
}

fn webhooks(running: &Running) -> WebhooksServiceClient<TracedChannel> {
    let timeout = Duration::from_secs(10);
    WebhooksServiceClient::new(
        traced_channel(
            &ServiceUrl::local(running.grpc_addr.unwrap().port()),
            &service_runtime::Transport::Plaintext,
            "worker",
            timeout,
            timeout,
        )
        .unwrap(),
    )
}

/// Runs `test` on a worker whose endpoints are disabled after failing for
/// `disable_after`, on SQLite and then PostgreSQL.
async fn on_both<F, Fut>(disable_after: Duration, test: F)
where
    F: Fn(Running) -> Fut,
    Fut: std::future::Future<Output = Running>,
{
    let start = |scratch: &Scratch| {
        let mut config = worker::Config::for_tests(&scratch.url());
        config.webhook_backoff = Duration::from_millis(50);
        config.webhook_disable_after = disable_after;
        worker::start(config)
    };
    let sqlite = Scratch::sqlite().await;
    let running = test(start(&sqlite).await.unwrap()).await;
    running.shutdown().await;
    sqlite.remove().await;
    if let Some(postgres) = Scratch::postgres().await {
        let running = test(start(&postgres).await.unwrap()).await;
        running.shutdown().await;
        postgres.remove().await;
    }
}

async fn create(
    client: &mut WebhooksServiceClient<TracedChannel>,
    tenant: &str,
    url: &str,
    max_in_flight: u32,
) -> (pb::Endpoint, String) {
    let created = client
        .create_endpoint(pb::CreateEndpointRequest {
            tenant_id: tenant.into(),
            url: url.into(),
            description: "test receiver".into(),
            events: vec![],
            max_in_flight,
        })
        .await
        .unwrap()
        .into_inner();
    (created.endpoint.unwrap(), created.secret)
}

async fn deliveries(
    client: &mut WebhooksServiceClient<TracedChannel>,
    tenant: &str,
    endpoint: &str,
) -> Vec<pb::Delivery> {
    client
        .list_deliveries(pb::ListDeliveriesRequest {
            tenant_id: tenant.into(),
            endpoint_id: endpoint.into(),
            page_size: 100,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .deliveries
}

/// Polls until `check` holds of the endpoint's deliveries.
async fn until_deliveries(
    client: &WebhooksServiceClient<TracedChannel>,
    tenant: &str,
    endpoint: &str,
    what: &str,
    check: impl Fn(&[pb::Delivery]) -> bool,
) -> Vec<pb::Delivery> {
    let check = &check;
    service_runtime::testing::wait_until(what, Duration::from_secs(20), || {
        let mut client = client.clone();
        async move {
            let log = deliveries(&mut client, tenant, endpoint).await;
            check(&log).then_some(log)
        }
    })
    .await
}

/// The signatures in `headers` that `secret` made over the body.
fn signed_by(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();
    let header = |name: &str| headers[name].to_str().unwrap().to_owned();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", header("webhook-id"), header("webhook-timestamp")).as_bytes());
    mac.update(body);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    header("webhook-signature")
        .split(' ')
        .any(|s| s == expected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_are_validated_and_held_to_their_tenant() {
    on_both(Duration::from_secs(3600), |running| async move {
        let mut client = webhooks(&running);
        let (url, _) = start_receiver(200, Duration::ZERO).await;
        let refused = |request: pb::CreateEndpointRequest| {
            let mut client = client.clone();
            async move { client.create_endpoint(request).await.unwrap_err() }
        };
        let base = pb::CreateEndpointRequest {
            tenant_id: "acme".into(),
            url: url.clone(),
            ..Default::default()
        };
        for (request, field) in [
            (
                pb::CreateEndpointRequest {
                    url: String::new(),
                    ..base.clone()
                },
                "url: is required",
            ),
            (
                pb::CreateEndpointRequest {
                    url: "http://169.254.169.254/latest/meta-data".into(),
                    ..base.clone()
                },
                "url: ",
            ),
            (
                pb::CreateEndpointRequest {
                    events: vec!["everything".into()],
                    ..base.clone()
                },
                "events[0]: \"everything\" is not one of",
            ),
            (
                pb::CreateEndpointRequest {
                    max_in_flight: 99,
                    ..base.clone()
                },
                "max_in_flight: must be 1 to 16",
            ),
            (
                pb::CreateEndpointRequest {
                    tenant_id: String::new(),
                    ..base.clone()
                },
                "tenant_id: is required",
            ),
        ] {
            let status = refused(request).await;
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            assert!(status.message().starts_with(field), "{status:?}");
        }

        let (endpoint, secret) = create(&mut client, "acme", &url, 0).await;
        assert!(endpoint.endpoint_id.starts_with("we_"), "{endpoint:?}");
        assert!(secret.starts_with("whsec_"));
        assert_eq!(endpoint.max_in_flight, 4, "the default");
        assert!(endpoint.enabled);
        // The secret is shown once: no later answer carries it.
        let listed = client
            .list_endpoints(pb::ListEndpointsRequest {
                tenant_id: "acme".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .endpoints;
        assert_eq!(listed, vec![endpoint.clone()]);

        // Another tenant sees nothing, and its answers for acme's ids are
        // those for ids that do not exist.
        let globex = client
            .list_endpoints(pb::ListEndpointsRequest {
                tenant_id: "globex".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .endpoints;
        assert!(globex.is_empty());
        let id = endpoint.endpoint_id.clone();
        let theirs = client
            .delete_endpoint(pb::DeleteEndpointRequest {
                tenant_id: "globex".into(),
                endpoint_id: id.clone(),
            })
            .await
            .unwrap_err();
        let missing = client
            .delete_endpoint(pb::DeleteEndpointRequest {
                tenant_id: "globex".into(),
                endpoint_id: "we_0000000000000000".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(theirs.code(), tonic::Code::NotFound);
        assert_eq!(
            theirs.message().replace(&id, "ID"),
            missing.message().replace("we_0000000000000000", "ID")
        );
        for status in [
            client
                .rotate_secret(pb::RotateSecretRequest {
                    tenant_id: "globex".into(),
                    endpoint_id: id.clone(),
                    overlap_seconds: 0,
                })
                .await
                .unwrap_err(),
            client
                .send_test_event(pb::SendTestEventRequest {
                    tenant_id: "globex".into(),
                    endpoint_id: id.clone(),
                })
                .await
                .unwrap_err(),
        ] {
            assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
        }
        // acme's own delete works, once.
        client
            .delete_endpoint(pb::DeleteEndpointRequest {
                tenant_id: "acme".into(),
                endpoint_id: id.clone(),
            })
            .await
            .unwrap();
        let again = client
            .delete_endpoint(pb::DeleteEndpointRequest {
                tenant_id: "acme".into(),
                endpoint_id: id,
            })
            .await
            .unwrap_err();
        assert_eq!(again.code(), tonic::Code::NotFound);
        running
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_with_the_endpoint_secret_and_both_during_a_rotation() {
    on_both(Duration::from_secs(3600), |running| async move {
        let mut client = webhooks(&running);
        let (url, receiver) = start_receiver(200, Duration::ZERO).await;
        let (endpoint, first) = create(&mut client, "acme", &url, 0).await;
        let id = endpoint.endpoint_id.clone();
        let test = |client: &mut WebhooksServiceClient<TracedChannel>| {
            let mut client = client.clone();
            let id = id.clone();
            async move {
                client
                    .send_test_event(pb::SendTestEventRequest {
                        tenant_id: "acme".into(),
                        endpoint_id: id,
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .delivery
                    .unwrap()
            }
        };
        let queued = test(&mut client).await;
        assert_eq!(queued.state, "pending");
        until_deliveries(&client, "acme", &id, "the test event delivered", |log| {
            log.first().is_some_and(|d| d.state == "succeeded")
        })
        .await;
        let rotated = client
            .rotate_secret(pb::RotateSecretRequest {
                tenant_id: "acme".into(),
                endpoint_id: id.clone(),
                overlap_seconds: 3600,
            })
            .await
            .unwrap()
            .into_inner()
            .secret;
        assert_ne!(rotated, first);
        test(&mut client).await;
        let log = until_deliveries(&client, "acme", &id, "the second delivered", |log| {
            log.len() == 2 && log.iter().all(|d| d.state == "succeeded")
        })
        .await;
        assert_eq!((log[0].attempts, log[0].last_status), (1, 200));

        let received = receiver.received.lock().unwrap().clone();
        assert_eq!(received.len(), 2);
        let (headers, body) = &received[0];
        assert_eq!(headers["webhook-id"], queued.delivery_id.as_str());
        assert!(signed_by(&first, headers, body));
        assert!(!signed_by(&rotated, headers, body));
        let event: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(event["type"], "webhook.test");
        // During the overlap both secrets sign, so a receiver holding
        // either accepts the delivery.
        let (headers, body) = &received[1];
        assert_eq!(
            headers["webhook-signature"]
                .to_str()
                .unwrap()
                .split(' ')
                .count(),
            2
        );
        assert!(signed_by(&rotated, headers, body));
        assert!(signed_by(&first, headers, body));
        running
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slow_endpoint_holds_only_its_own_slots() {
    on_both(Duration::from_secs(3600), |running| async move {
        let mut client = webhooks(&running);
        let (slow_url, slow) = start_receiver(200, Duration::from_millis(400)).await;
        let (fast_url, fast) = start_receiver(200, Duration::ZERO).await;
        let (slow_endpoint, _) = create(&mut client, "acme", &slow_url, 1).await;
        let (fast_endpoint, _) = create(&mut client, "globex", &fast_url, 0).await;
        for _ in 0..4 {
            client
                .send_test_event(pb::SendTestEventRequest {
                    tenant_id: "acme".into(),
                    endpoint_id: slow_endpoint.endpoint_id.clone(),
                })
                .await
                .unwrap();
        }
        client
            .send_test_event(pb::SendTestEventRequest {
                tenant_id: "globex".into(),
                endpoint_id: fast_endpoint.endpoint_id.clone(),
            })
            .await
            .unwrap();
        // The fast receiver is served while the slow one still works
        // through its queue, one at a time.
        until_deliveries(
            &client,
            "globex",
            &fast_endpoint.endpoint_id,
            "the fast delivery",
            |log| log.first().is_some_and(|d| d.state == "succeeded"),
        )
        .await;
        assert!(
            slow.received.lock().unwrap().len() < 4,
            "the fast endpoint did not wait for the slow one's queue"
        );
        until_deliveries(
            &client,
            "acme",
            &slow_endpoint.endpoint_id,
            "the slow deliveries",
            |log| log.len() == 4 && log.iter().all(|d| d.state == "succeeded"),
        )
        .await;
        assert_eq!(
            slow.most_in_flight.load(Ordering::SeqCst),
            1,
            "its limit is 1"
        );
        assert_eq!(fast.received.lock().unwrap().len(), 1);
        running
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_failing_too_long_is_disabled_and_its_delivery_can_be_sent_again() {
    on_both(Duration::from_millis(1), |running| async move {
        let mut client = webhooks(&running);
        let (url, receiver) = start_receiver(500, Duration::ZERO).await;
        let (endpoint, _) = create(&mut client, "acme", &url, 0).await;
        let id = endpoint.endpoint_id.clone();
        let delivery = client
            .send_test_event(pb::SendTestEventRequest {
                tenant_id: "acme".into(),
                endpoint_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .delivery
            .unwrap();
        // Failing beyond the (tiny) limit disables the endpoint, which the
        // endpoint list reports.
        let disabled = service_runtime::testing::wait_until(
            "the endpoint disabled",
            Duration::from_secs(20),
            || {
                let mut client = client.clone();
                async move {
                    let endpoints = client
                        .list_endpoints(pb::ListEndpointsRequest {
                            tenant_id: "acme".into(),
                        })
                        .await
                        .unwrap()
                        .into_inner()
                        .endpoints;
                    endpoints.into_iter().find(|e| !e.enabled)
                }
            },
        )
        .await;
        assert!(
            disabled
                .disabled_reason
                .starts_with("disabled automatically"),
            "{disabled:?}"
        );
        assert!(disabled.failing_since.is_some());
        let log = deliveries(&mut client, "acme", &id).await;
        assert_eq!(log[0].last_status, 500, "{log:?}");
        assert!(log[0].last_error.contains("500"), "{log:?}");
        assert!(log[0].attempts >= 1);
        // A delivery still scheduled to retry cannot be queued twice.
        if log[0].state == "failed" {
            let twice = client
                .retry_delivery(pb::RetryDeliveryRequest {
                    tenant_id: "acme".into(),
                    delivery_id: delivery.delivery_id.clone(),
                })
                .await
                .unwrap_err();
            assert_eq!(twice.code(), tonic::Code::FailedPrecondition);
        }
        // Another tenant cannot touch it.
        let theirs = client
            .retry_delivery(pb::RetryDeliveryRequest {
                tenant_id: "globex".into(),
                delivery_id: delivery.delivery_id.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(theirs.code(), tonic::Code::NotFound);
        assert!(!receiver.received.lock().unwrap().is_empty());

        // Once the receiver is fixed, the tenant enables the endpoint again:
        // no reason, no failure clock. Another tenant cannot, nor learn it
        // exists.
        let enabled = client
            .enable_endpoint(pb::EnableEndpointRequest {
                tenant_id: "acme".into(),
                endpoint_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .endpoint
            .unwrap();
        assert!(enabled.enabled, "{enabled:?}");
        assert_eq!(enabled.disabled_reason, "");
        assert!(enabled.failing_since.is_none());
        let theirs = client
            .enable_endpoint(pb::EnableEndpointRequest {
                tenant_id: "globex".into(),
                endpoint_id: id.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(theirs.code(), tonic::Code::NotFound);

        // A receiver refusing for good (400) gets the delivery discarded at
        // once; the tenant can send it again.
        let (refusing_url, refusing) = start_receiver(400, Duration::ZERO).await;
        let (refusing_endpoint, _) = create(&mut client, "acme", &refusing_url, 0).await;
        let rid = refusing_endpoint.endpoint_id.clone();
        let delivery = client
            .send_test_event(pb::SendTestEventRequest {
                tenant_id: "acme".into(),
                endpoint_id: rid.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .delivery
            .unwrap();
        until_deliveries(&client, "acme", &rid, "the delivery discarded", |log| {
            log.first().is_some_and(|d| d.state == "discarded")
        })
        .await;
        let again = client
            .retry_delivery(pb::RetryDeliveryRequest {
                tenant_id: "acme".into(),
                delivery_id: delivery.delivery_id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .delivery
            .unwrap();
        assert_eq!(again.state, "pending");
        let log = until_deliveries(&client, "acme", &rid, "the retry sent", |log| {
            log.first()
                .is_some_and(|d| d.state == "discarded" && d.attempts == 2)
        })
        .await;
        assert_eq!(log.len(), 1, "the same delivery, not a new one");
        assert_eq!(refusing.received.lock().unwrap().len(), 2);
        running
    })
    .await;
}
