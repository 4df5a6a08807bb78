//! gRPC channels to other platform services, traced and time-bounded.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::ServiceUrl;

/// The longest wait for a connection to another service or a database
/// (a connection attempt, a pool's acquire): past it the dependency is
/// treated as unavailable and the caller's own retry takes over.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A channel that propagates the caller's trace to the callee.
pub type TracedChannel = telemetry::ClientTraceService<Channel>;

/// Connects lazily (the callee may start later than the caller); every call
/// is bounded by `request_timeout` and each connection attempt by
/// `connect_timeout`.
pub fn traced_channel(
    url: &ServiceUrl,
    connect_timeout: Duration,
    request_timeout: Duration,
) -> Result<TracedChannel, tonic::transport::Error> {
    let channel = Endpoint::from_shared(url.as_str().to_owned())?
        .connect_timeout(connect_timeout)
        .timeout(request_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .connect_lazy();
    Ok(tower::Layer::layer(&telemetry::ClientTraceLayer, channel))
}
