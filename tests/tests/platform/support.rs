use std::{net::SocketAddr, time::Duration};

use service_runtime::{CommonConfig, Running, ServiceUrl};

/// The three gRPC apps, serving on free ports.
pub struct Backends {
    pub ingest: Running,
    pub worker: Running,
    pub numerics: Running,
}

impl Backends {
    pub async fn start() -> Self {
        Self {
            ingest: ingest::start(ingest::Config::for_tests()).await.unwrap(),
            worker: worker::start(worker::Config::for_tests()).await.unwrap(),
            numerics: numerics::start(numerics::Config::for_tests())
                .await
                .unwrap(),
        }
    }

    pub async fn shutdown(self) {
        tokio::join!(
            self.ingest.shutdown(),
            self.worker.shutdown(),
            self.numerics.shutdown()
        );
    }
}

/// The gRPC URL of a running app.
pub fn url_of(running: &Running) -> ServiceUrl {
    ServiceUrl::local(running.grpc_addr.unwrap().port())
}

/// A URL where nothing listens: a port that was free a moment ago.
pub fn nothing_listening() -> ServiceUrl {
    ServiceUrl::local(service_runtime::testing::free_local_addr().unwrap().port())
}

/// Starts the gateway pointed at the given backends.
pub async fn start_gateway(
    ingest: ServiceUrl,
    worker: ServiceUrl,
    numerics: ServiceUrl,
) -> Running {
    let config = gateway::Config {
        http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        ingest_url: ingest,
        worker_url: worker,
        numerics_url: numerics,
        status_timeout: Duration::from_secs(2),
        common: CommonConfig::for_tests(),
    };
    gateway::start(config).await.unwrap()
}
