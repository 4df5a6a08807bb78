//! The gRPC transport: plaintext only on loopback, and under mutual TLS a
//! crowd of connections that never finish their handshake does not keep a
//! real client from being answered.

use std::time::Duration;

use service_runtime::{
    BuildInfo, ChannelError, CommonConfig, EnvValue as _, ServiceBuilder, ServiceUrl, StartError,
    Transport, traced_channel,
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

#[tokio::test]
async fn plaintext_serves_and_dials_only_loopback() {
    let open = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
    let refused = ServiceBuilder::new(BuildInfo::new("plaintext-test"), CommonConfig::for_tests())
        .grpc(open)
        .start()
        .await;
    assert!(
        matches!(refused, Err(StartError::PlaintextNotLoopback(addr)) if addr == open),
        "{:?}",
        refused.err()
    );
    let url = ServiceUrl::parse_env("http://10.1.2.3:50051").unwrap();
    let timeout = Duration::from_secs(1);
    let dialled = traced_channel(&url, &Transport::Plaintext, "ingest", timeout, timeout);
    assert!(
        matches!(dialled, Err(ChannelError::PlaintextNotLoopback { .. })),
        "{:?}",
        dialled.err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_do_not_keep_a_certified_client_out() {
    let dir = std::env::temp_dir().join(format!("runtime-tls-{}", std::process::id()));
    security::tls::dev_pki::generate(&dir, &["numerics", "operator"]).unwrap();
    let mut common = CommonConfig::for_tests();
    common.transport = Transport::mutual_tls_in(&dir, "numerics");
    let running = ServiceBuilder::new(BuildInfo::new("numerics"), common)
        .grpc(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .start()
        .await
        .unwrap();
    let addr = running.grpc_addr.unwrap();
    // Connections that never send a ClientHello, each holding a handshake.
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let timeout = Duration::from_secs(5);
    let channel = traced_channel(
        &ServiceUrl::local(addr.port()),
        &Transport::mutual_tls_in(&dir, "operator"),
        "numerics",
        timeout,
        timeout,
    )
    .unwrap();
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .unwrap();
    assert_eq!(answer.into_inner().status, ServingStatus::Serving as i32);
    drop(silent);
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}
