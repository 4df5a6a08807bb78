//! The gateway binary as deployed, with its default telemetry: what its
//! logs and metrics reveal about tenants and keys.

use std::time::Duration;

use gateway::{
    keys::{Pepper, TenantId},
    storage::{GatewayStore as _, sqlite::SqliteGatewayStore},
    tenancy::{self, Peppers},
};
use service_runtime::testing::{free_local_addr, http_request};

#[tokio::test]
async fn logs_and_metrics_name_no_secret_and_no_tenant() {
    let sqlite = jobs::testing::ScratchSqlite::create("gateway_process").await;
    let log_path = std::env::temp_dir().join(format!("gateway-process-{}.log", std::process::id()));
    let log = std::fs::File::create(&log_path).unwrap();
    let http = free_local_addr().unwrap();
    let nowhere = || format!("http://{}", free_local_addr().unwrap());
    let admin = free_local_addr().unwrap();
    let mut gateway = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .env_clear()
        .env("GATEWAY_DATABASE_URL", &sqlite.url)
        .env("GATEWAY_HTTP_ADDR", http.to_string())
        .env("GATEWAY_ADMIN_ADDR", admin.to_string())
        .env("GATEWAY_GRPC_PLAINTEXT", "true")
        .env("GATEWAY_INGEST_URL", nowhere())
        .env("GATEWAY_WORKER_URL", nowhere())
        .env("GATEWAY_NUMERICS_URL", nowhere())
        // As chatty as the gateway gets.
        .env("RUST_LOG", "debug")
        .env("GATEWAY_LOG_FORMAT", "json")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    // Live, not ready: the backends are absent on purpose.
    service_runtime::testing::wait_until(
        "the gateway to listen",
        Duration::from_secs(30),
        || async { http_request(http, "GET", "/v1/nope", &[], "").await.ok() },
    )
    .await;

    let store = SqliteGatewayStore::connect(&sqlite.url).await.unwrap();
    let tenant = TenantId::parse("acme-secretive").unwrap();
    store.create_tenant(&tenant, "").await.unwrap();
    let peppers = Peppers {
        current: Pepper {
            id: "p1".into(),
            key: security::Secret::new(security::secret::DEVELOPMENT_KEY_PEPPER),
        },
        previous: None,
    };
    let key = tenancy::create_key(
        &store,
        &peppers,
        &tenant,
        vec!["results:read".into()],
        "",
        None,
    )
    .await
    .unwrap()
    .0
    .reveal();
    let secret = key.rsplit('.').next().unwrap().to_owned();
    let wrong = format!("{}AAAA", &key[..key.len() - 4]);
    for presented in [&key, &wrong] {
        let response = http_request(
            http,
            "GET",
            "/v1/results?page_size=5",
            &[("Authorization", &format!("Bearer {presented}"))],
            "",
        )
        .await
        .unwrap();
        assert!([401, 503].contains(&response.status), "{}", response.body);
    }

    let metrics = http_request(admin, "GET", "/metrics", &[], "")
        .await
        .unwrap()
        .body;
    assert!(metrics.contains("http_route=\"/v1/results\""), "{metrics}");
    assert!(!metrics.contains("acme"), "no tenant in a metric label");
    gateway.kill().unwrap();
    gateway.wait().unwrap();
    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        logs.contains("api.authenticate"),
        "the refusal is audited: {logs}"
    );
    assert!(logs.contains("acme-secretive"), "logs name the tenant");
    for (what, value) in [
        ("the secret", secret.as_str()),
        ("the wrong secret", &wrong[wrong.len() - 43..]),
    ] {
        assert!(!logs.contains(value), "{what} is in the logs");
    }
    let _ = std::fs::remove_file(&log_path);
    sqlite.remove().await;
}
