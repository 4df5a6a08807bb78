//! Client-side balancing: one service name standing for several replicas
//! (127.0.0.2, 127.0.0.3, ... on one port, through an injected resolver),
//! calls spread over all of them, a stopped replica left out after its
//! connection fails, and every connection checked for the callee's
//! certificate name, never for the address dialled.

use std::{
    collections::HashMap, future::Future, io, net::SocketAddr, pin::Pin, sync::Arc, time::Duration,
};

use contracts::service::v1::{
    GetServiceInfoRequest, service_info_service_client::ServiceInfoServiceClient,
};
use service_runtime::{
    BuildInfo, CommonConfig, EnvValue as _, Running, ServiceBuilder, ServiceUrl, TracedChannel,
    Transport, balance::Resolve, traced_channel_with_resolver,
};

/// The same addresses for any name: what a headless Service's DNS answers.
struct Replicas(Vec<SocketAddr>);

impl Resolve for Replicas {
    fn resolve<'a>(
        &'a self,
        _host: &'a str,
        _port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        Box::pin(async move { Ok(self.0.clone()) })
    }
}

/// A replica named `name` at `addr`, presenting `identity`'s certificate.
async fn replica(
    name: &'static str,
    addr: SocketAddr,
    dir: &std::path::Path,
    identity: &str,
) -> Running {
    let mut common = CommonConfig::for_tests();
    common.transport = Transport::mutual_tls_in(dir, identity);
    ServiceBuilder::new(BuildInfo::new(name), common)
        .grpc(addr)
        .start()
        .await
        .unwrap()
}

fn channel(dir: &std::path::Path, port: u16, replicas: Vec<SocketAddr>) -> TracedChannel {
    let timeout = Duration::from_secs(5);
    traced_channel_with_resolver(
        &ServiceUrl::parse_env(&format!("https://numerics.replicas.test:{port}")).unwrap(),
        &Transport::mutual_tls_in(dir, "operator"),
        "numerics",
        timeout,
        timeout,
        Arc::new(Replicas(replicas)),
    )
    .unwrap()
}

/// Which replica answered each of `calls` calls (`Err` for a failed call).
async fn answers(channel: &TracedChannel, calls: usize) -> Vec<Result<String, tonic::Status>> {
    let mut client = ServiceInfoServiceClient::new(channel.clone());
    let mut out = Vec::with_capacity(calls);
    for _ in 0..calls {
        out.push(
            client
                .get_service_info(GetServiceInfoRequest {})
                .await
                .map(|answer| answer.into_inner().name),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_spread_over_every_replica_and_skip_a_stopped_one() {
    let dir = std::env::temp_dir().join(format!("runtime-balance-{}", std::process::id()));
    security::tls::dev_pki::generate(&dir, &["numerics", "operator", "ingest"]).unwrap();
    // One port on several loopback addresses, as replicas behind a name.
    let port = std::net::TcpListener::bind("127.0.0.2:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let at = |last: u8| SocketAddr::from(([127, 0, 0, last], port));
    let a = replica("replica-a", at(2), &dir, "numerics").await;
    let b = replica("replica-b", at(3), &dir, "numerics").await;
    let channel = channel(&dir, port, vec![at(2), at(3)]);

    let mut per_replica: HashMap<String, usize> = HashMap::new();
    for answer in answers(&channel, 40).await {
        *per_replica.entry(answer.unwrap()).or_default() += 1;
    }
    assert_eq!(
        per_replica.len(),
        2,
        "both replicas answered: {per_replica:?}"
    );
    assert!(
        per_replica.values().all(|&n| n >= 10),
        "calls spread over both: {per_replica:?}"
    );

    // Replica b stops: at most the calls already headed to it fail, then
    // every call goes to a.
    b.shutdown().await;
    let after = answers(&channel, 40).await;
    let failed = after.iter().filter(|a| a.is_err()).count();
    assert!(
        failed <= 2,
        "{failed} calls failed after one replica stopped: {after:?}"
    );
    assert!(
        after[after.len() - 20..]
            .iter()
            .all(|a| a.as_ref().is_ok_and(|name| name == "replica-a")),
        "the last 20 calls all reached the running replica: {after:?}"
    );

    eprintln!(
        "40 calls over two replicas: {per_replica:?}; after one stopped, {failed} of 40 failed"
    );

    // The name is what is checked: an address serving another identity's
    // certificate is refused, though the resolver named it.
    let impostor = replica("impostor", at(4), &dir, "ingest").await;
    let refused = answers(&self::channel(&dir, port, vec![at(4)]), 1).await;
    assert!(refused[0].is_err(), "{refused:?}");

    a.shutdown().await;
    impostor.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}
