//! gRPC channels to the apps behind the gateway.

use std::time::Duration;

use service_runtime::{ChannelError, ServiceUrl, TracedChannel, traced_channel};

use crate::Config;

/// Upper bound on any single backend call made by the gateway.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One backend app: its name, where it is, and a channel to it.
#[derive(Debug, Clone)]
pub(crate) struct Backend {
    pub(crate) name: &'static str,
    pub(crate) url: ServiceUrl,
    pub(crate) channel: TracedChannel,
}

/// Every app the gateway calls.
#[derive(Debug, Clone)]
pub(crate) struct Backends {
    pub(crate) all: Vec<Backend>,
}

impl Backends {
    /// Creates lazy channels: a backend that is down at start-up is
    /// reported as down, it does not stop the gateway from starting.
    pub(crate) fn connect(config: &Config) -> Result<Self, ChannelError> {
        let connect_timeout = config.status_timeout;
        let transport = &config.common.transport;
        let backend = |name, url: &ServiceUrl| -> Result<Backend, ChannelError> {
            Ok(Backend {
                name,
                url: url.clone(),
                channel: traced_channel(url, transport, name, connect_timeout, REQUEST_TIMEOUT)?,
            })
        };
        Ok(Self {
            all: vec![
                backend("ingest", &config.ingest_url)?,
                backend("worker", &config.worker_url)?,
                backend("numerics", &config.numerics_url)?,
            ],
        })
    }
}
