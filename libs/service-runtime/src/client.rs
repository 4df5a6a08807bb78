//! gRPC channels to other platform services: traced, time-bounded, and
//! over mutual TLS that checks the callee is the service it should be.

use std::{future::Future, io, pin::Pin, sync::Arc, time::Duration};

use hyper_util::rt::TokioIo;
use security::tls::{ClientStream, MutualTls, TlsError};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

use crate::{ServiceUrl, Transport, transport::is_loopback_host};

/// The longest wait for a connection to another service or a database
/// (a connection attempt, a pool's acquire): past it the dependency is
/// treated as unavailable and the caller's own retry takes over.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A channel that propagates the caller's trace to the callee.
pub type TracedChannel = telemetry::ClientTraceService<Channel>;

/// Why a channel could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The URL is not one tonic accepts.
    #[error("{url}: {source}")]
    Url {
        /// The URL given.
        url: String,
        /// tonic's reason.
        source: tonic::transport::Error,
    },
    /// The certificates could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Plaintext was asked for towards a host that is not loopback.
    #[error("{url}: plaintext gRPC is allowed only to loopback addresses; use mutual TLS")]
    PlaintextNotLoopback {
        /// The URL given.
        url: String,
    },
}

/// Connects lazily to the service `callee` (`numerics`, `ingest`: the
/// identity its certificate must name) at `url` over `transport`; every
/// call is bounded by `request_timeout` and each connection attempt by
/// `connect_timeout`.
pub fn traced_channel(
    url: &ServiceUrl,
    transport: &Transport,
    callee: &str,
    connect_timeout: Duration,
    request_timeout: Duration,
) -> Result<TracedChannel, ChannelError> {
    // The connector below does the TLS, so tonic is always handed http://
    // (given https:// and no tonic TLS settings, it refuses to connect).
    let target = url.as_str().replacen("https://", "http://", 1);
    let endpoint = Endpoint::from_shared(target)
        .map_err(|source| ChannelError::Url {
            url: url.to_string(),
            source,
        })?
        .connect_timeout(connect_timeout)
        .timeout(request_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    let channel = match transport.load()? {
        Some(tls) => endpoint.connect_with_connector_lazy(MutualTlsConnector {
            tls,
            callee: callee.into(),
        }),
        None if is_loopback_host(url.host()) => endpoint.connect_lazy(),
        None => {
            return Err(ChannelError::PlaintextNotLoopback {
                url: url.to_string(),
            });
        }
    };
    Ok(tower::Layer::layer(&telemetry::ClientTraceLayer, channel))
}

/// Opens TCP to the URL's host and port, then a TLS session that presents
/// this process's certificate and expects `callee`'s.
#[derive(Clone)]
struct MutualTlsConnector {
    tls: MutualTls,
    callee: Arc<str>,
}

impl tower::Service<http::Uri> for MutualTlsConnector {
    type Response = TokioIo<ClientStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let tls = self.tls.clone();
        let callee = self.callee.clone();
        Box::pin(async move {
            let invalid = |what| io::Error::new(io::ErrorKind::InvalidInput, what);
            let host = uri.host().ok_or_else(|| invalid("the URL has no host"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = uri
                .port_u16()
                .ok_or_else(|| invalid("the URL has no port"))?;
            let tcp = TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            Ok(TokioIo::new(tls.connect(tcp, &callee).await?))
        })
    }
}
