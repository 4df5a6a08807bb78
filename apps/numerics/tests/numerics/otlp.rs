//! Telemetry to an OTLP collector over TLS when the endpoint is `https://`:
//! the shipped binary, with the standard `OTEL_EXPORTER_OTLP_*` variables,
//! exports its spans to a collector that requires a client certificate
//! from the platform CA; without the CA variable it refuses to start,
//! naming it.

use std::{collections::HashMap, time::Duration};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
};
use service_runtime::testing::AppProcess;
use tokio::sync::mpsc;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// Hang guard, not a timing claim.
const PATIENCE: Duration = Duration::from_secs(60);

/// Reports the resource attributes of every batch of spans it receives.
struct Collector(mpsc::Sender<HashMap<String, String>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for spans in request.into_inner().resource_spans {
            let resource = spans
                .resource
                .into_iter()
                .flat_map(|r| r.attributes)
                .filter_map(|a| {
                    let value = match a.value?.value? {
                        Value::StringValue(s) => s,
                        other => format!("{other:?}"),
                    };
                    Some((a.key, value))
                })
                .collect();
            // Full (nobody reads any more): the test has what it needs.
            let _ = self.0.try_send(resource);
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_a_tls_collector_that_verifies_the_client() {
    let pki = std::env::temp_dir().join(format!("otlp-pki-{}", std::process::id()));
    security::tls::dev_pki::generate(&pki, &["collector", "numerics"]).unwrap();
    let read = |name: &str| std::fs::read(pki.join(name)).unwrap();
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            read("collector.pem"),
            read("collector.key"),
        ))
        .client_ca_root(Certificate::from_pem(read("ca.pem")));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    let (sender, mut received) = mpsc::channel(64);
    tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(TraceServiceServer::new(Collector(sender)))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    let file = |name: &str| pki.join(name).display().to_string();
    let endpoint = format!("https://127.0.0.1:{}", collector_addr.port());
    let env = |with_ca: bool| {
        let mut env = vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), endpoint.clone()),
            (
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE".to_owned(),
                file("numerics.pem"),
            ),
            (
                "OTEL_EXPORTER_OTLP_CLIENT_KEY".to_owned(),
                file("numerics.key"),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "100".to_owned()),
        ];
        if with_ca {
            env.push(("OTEL_EXPORTER_OTLP_CERTIFICATE".to_owned(), file("ca.pem")));
        }
        env
    };

    // Without the collector's CA the process does not start, and says why.
    let log = std::env::temp_dir().join(format!("otlp-no-ca-{}.log", std::process::id()));
    let refused = AppProcess::start_with_stderr(
        env!("CARGO_BIN_EXE_numerics"),
        "NUMERICS_",
        env(false),
        std::fs::File::create(&log).unwrap(),
    );
    let status = refused.wait_for_exit(PATIENCE).await;
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("OTEL_EXPORTER_OTLP_CERTIFICATE"),
        "{stderr}"
    );

    // With it, a call to the service produces spans at the collector.
    let numerics = AppProcess::start(env!("CARGO_BIN_EXE_numerics"), "NUMERICS_", env(true));
    numerics.ready().await;
    let timeout = Duration::from_secs(5);
    let channel = service_runtime::traced_channel(
        &service_runtime::ServiceUrl::local(numerics.grpc_addr.port()),
        &service_runtime::Transport::Plaintext,
        "numerics",
        timeout,
        timeout,
    )
    .unwrap();
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    let resource = tokio::time::timeout(PATIENCE, received.recv())
        .await
        .expect("no spans reached the collector")
        .unwrap();
    assert_eq!(resource["service.name"], "numerics", "{resource:?}");
    // The resource names the build, as `--version` does.
    let version = std::process::Command::new(env!("CARGO_BIN_EXE_numerics"))
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8(version.stdout).unwrap();
    for key in ["vcs.ref.head.revision", "build.time"] {
        assert!(
            !resource[key].is_empty() && version.contains(&resource[key]),
            "{key} = {:?} is not in {version:?}",
            resource[key]
        );
    }
    drop(numerics);
    let _ = std::fs::remove_file(log);
    let _ = std::fs::remove_dir_all(pki);
}
