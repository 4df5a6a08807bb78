//! One client cannot exhaust a gRPC server: never-ending streams beyond the
//! per-connection limit wait on that client's own connection, an oversized
//! message is refused, and another client is answered throughout.

use std::time::Duration;

use service_runtime::{BuildInfo, CommonConfig, ServiceBuilder};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::channel_to;

fn any_port() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 0))
}

fn request() -> HealthCheckRequest {
    HealthCheckRequest {
        service: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_exhaust_the_server() {
    let mut common = CommonConfig::for_tests();
    common.grpc_limits.max_streams_per_connection = 4;
    let running = ServiceBuilder::new(BuildInfo::new("limits-test"), common)
        .grpc(any_port())
        .start()
        .await
        .unwrap();
    let addr = running.grpc_addr.unwrap();

    // The greedy client holds every stream its connection may have, each a
    // health Watch that never ends.
    let greedy = HealthClient::new(channel_to(addr));
    let mut watches = Vec::new();
    for _ in 0..4 {
        watches.push(greedy.clone().watch(request()).await.unwrap().into_inner());
    }
    let fifth = {
        let mut greedy = greedy.clone();
        tokio::spawn(async move { greedy.watch(request()).await })
    };

    // Another client, on its own connection, is answered.
    let mut other = HealthClient::new(channel_to(addr));
    assert_eq!(
        other.check(request()).await.unwrap().into_inner().status(),
        ServingStatus::Serving
    );
    // The greedy client's fifth stream waits for one of its own to end...
    assert!(!fifth.is_finished(), "a fifth stream on a full connection");
    drop(watches.pop());
    // ...and then opens.
    tokio::time::timeout(Duration::from_secs(5), fifth)
        .await
        .expect("the fifth stream opens once one ends")
        .unwrap()
        .unwrap();

    // An oversized request is refused by size, and the server goes on.
    let oversized = HealthCheckRequest {
        service: "x".repeat(5 << 20),
    };
    let refused = other.check(oversized).await.unwrap_err();
    assert!(
        matches!(refused.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{refused:?}"
    );
    assert_eq!(
        other.check(request()).await.unwrap().into_inner().status(),
        ServingStatus::Serving
    );
    drop(watches);
    running.shutdown().await;
}
