//! Webhooks through the gateway, in front of a real worker: a tenant's key
//! registers an endpoint, receives a signed test event and reads the
//! delivery log; another tenant's key can neither see nor touch nor
//! confirm the existence of that endpoint or delivery (the same `404` as
//! for ids that do not exist); a key without the scope gets `403`.

use std::sync::{Arc, Mutex};

use axum::{Router, body::Bytes, extract::State, http::HeaderMap, routing::post};
use base64::Engine as _;
use gateway::{
    keys::TenantId,
    storage::{GatewayStore as _, sqlite::SqliteGatewayStore},
    tenancy,
};
use hmac::Mac as _;
use service_runtime::testing::{TestResponse, http_request};

use crate::support::{ScratchDb, nothing_listening, url_of};

type Received = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

async fn receive(
    State(received): State<Received>,
    headers: HeaderMap,
    body: Bytes,
) -> &'static str {
    received.lock().unwrap().push((headers, body));
    "ok"
}

fn problem_type(response: &TestResponse) -> String {
    let problem: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    problem["type"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_manages_its_webhooks_and_no_other_tenant_can_see_them() {
    let (worker_db, gateway_db) = (ScratchDb::new(), ScratchDb::new());
    let mut worker_config = worker::Config::for_tests(&worker_db.url());
    worker_config.webhook_backoff = std::time::Duration::from_millis(50);
    let worker = worker::start(worker_config).await.unwrap();
    let config = gateway::Config::for_tests(
        &gateway_db.url(),
        nothing_listening(),
        url_of(&worker),
        nothing_listening(),
    );
    let peppers = config.peppers.clone();
    let gateway = gateway::start(config).await.unwrap();
    let addr = gateway.http_addr.unwrap();

    let received: Received = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(received.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let store = SqliteGatewayStore::connect(&gateway_db.url())
        .await
        .unwrap();
    let key = |tenant: &'static str, scope: &'static str| {
        let (store, peppers) = (store.clone(), peppers.clone());
        async move {
            let tenant = TenantId::parse(tenant).unwrap();
            let _ = store.create_tenant(&tenant, "").await;
            tenancy::create_key(&store, &peppers, &tenant, vec![scope.into()], "", None)
                .await
                .unwrap()
                .0
                .reveal()
        }
    };
    let acme = format!("Bearer {}", key("acme", "webhooks:manage").await);
    let globex = format!("Bearer {}", key("globex", "webhooks:manage").await);
    let reader = format!("Bearer {}", key("acme", "results:read").await);
    let call = |method: &'static str, path: String, bearer: String, body: String| async move {
        http_request(
            addr,
            method,
            &path,
            &[
                ("Authorization", &bearer),
                ("Content-Type", "application/json"),
            ],
            &body,
        )
        .await
        .unwrap()
    };

    // The wrong scope: 403.
    let refused = call("GET", "/v1/webhooks".into(), reader.clone(), String::new()).await;
    assert_eq!(refused.status, 403, "{}", refused.body);

    // Invalid bodies name the field.
    let invalid = call(
        "POST",
        "/v1/webhooks".into(),
        acme.clone(),
        serde_json::json!({"url": "http://10.0.0.1/hook"}).to_string(),
    )
    .await;
    assert_eq!(invalid.status, 422, "{}", invalid.body);
    assert!(
        invalid.body.contains(r#""field":"url""#),
        "{}",
        invalid.body
    );

    let created = call(
        "POST",
        "/v1/webhooks".into(),
        acme.clone(),
        serde_json::json!({"url": hook, "description": "ops", "events": ["webhook.test"]})
            .to_string(),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let created: serde_json::Value = serde_json::from_str(&created.body).unwrap();
    let endpoint = created["endpoint"]["endpoint_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();

    let listed = call("GET", "/v1/webhooks".into(), acme.clone(), String::new()).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert!(listed.body.contains(&endpoint));
    assert!(!listed.body.contains(&secret), "the secret is shown once");

    // globex: nothing listed, and acme's endpoint answers exactly as one
    // that does not exist, whatever the route.
    let theirs = call("GET", "/v1/webhooks".into(), globex.clone(), String::new()).await;
    assert_eq!(theirs.body, r#"{"endpoints":[]}"#);
    for (method, path, body) in [
        ("DELETE", format!("/v1/webhooks/{endpoint}"), String::new()),
        (
            "POST",
            format!("/v1/webhooks/{endpoint}/test"),
            String::new(),
        ),
        (
            "GET",
            format!("/v1/webhooks/{endpoint}/deliveries"),
            String::new(),
        ),
        (
            "POST",
            format!("/v1/webhooks/{endpoint}/rotate-secret"),
            "{}".into(),
        ),
        (
            "POST",
            format!("/v1/webhooks/{endpoint}/enable"),
            String::new(),
        ),
    ] {
        let other = call(method, path.clone(), globex.clone(), body.clone()).await;
        let missing = call(
            method,
            path.replace(&endpoint, "we_0000000000000000"),
            globex.clone(),
            body,
        )
        .await;
        assert_eq!(other.status, 404, "{method} {path}: {}", other.body);
        assert_eq!(
            (other.status, problem_type(&other)),
            (missing.status, problem_type(&missing)),
            "{method} {path}"
        );
    }

    // Enabling an enabled endpoint changes nothing and shows it.
    let enabled = call(
        "POST",
        format!("/v1/webhooks/{endpoint}/enable"),
        acme.clone(),
        String::new(),
    )
    .await;
    assert_eq!(enabled.status, 200, "{}", enabled.body);
    assert!(
        enabled.body.contains(r#""enabled":true"#),
        "{}",
        enabled.body
    );

    // acme's test event arrives signed with the endpoint's secret.
    let queued = call(
        "POST",
        format!("/v1/webhooks/{endpoint}/test"),
        acme.clone(),
        String::new(),
    )
    .await;
    assert_eq!(queued.status, 202, "{}", queued.body);
    let queued: serde_json::Value = serde_json::from_str(&queued.body).unwrap();
    let delivery = queued["delivery"]["delivery_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let log = service_runtime::testing::wait_until(
        "the test event delivered",
        std::time::Duration::from_secs(20),
        || {
            let (call, acme, endpoint) = (call, acme.clone(), endpoint.clone());
            async move {
                let log = call(
                    "GET",
                    format!("/v1/webhooks/{endpoint}/deliveries"),
                    acme,
                    String::new(),
                )
                .await;
                log.body.contains(r#""state":"succeeded""#).then_some(log)
            }
        },
    )
    .await;
    assert!(log.body.contains(&delivery), "{}", log.body);
    let (headers, body) = received.lock().unwrap()[0].clone();
    assert_eq!(headers["webhook-id"], delivery.as_str());
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(
        format!(
            "{}.{}.",
            delivery,
            headers["webhook-timestamp"].to_str().unwrap()
        )
        .as_bytes(),
    );
    mac.update(&body);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    assert_eq!(headers["webhook-signature"], expected.as_str());

    // A succeeded delivery is not sent again; globex cannot learn it exists.
    let again = call(
        "POST",
        format!("/v1/deliveries/{delivery}/retry"),
        acme.clone(),
        String::new(),
    )
    .await;
    assert_eq!(again.status, 409, "{}", again.body);
    let theirs = call(
        "POST",
        format!("/v1/deliveries/{delivery}/retry"),
        globex.clone(),
        String::new(),
    )
    .await;
    assert_eq!(theirs.status, 404, "{}", theirs.body);

    let deleted = call(
        "DELETE",
        format!("/v1/webhooks/{endpoint}"),
        acme.clone(),
        String::new(),
    )
    .await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    let gone = call(
        "DELETE",
        format!("/v1/webhooks/{endpoint}"),
        acme,
        String::new(),
    )
    .await;
    assert_eq!(gone.status, 404, "{}", gone.body);

    gateway.shutdown().await;
    worker.shutdown().await;
}
