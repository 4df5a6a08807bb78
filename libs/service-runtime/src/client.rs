//! gRPC channels to other platform services: traced, time-bounded, and
//! over mutual TLS that checks the callee is the service it should be.

use std::{future::Future, io, pin::Pin, sync::Arc, time::Duration};

use hyper_util::rt::TokioIo;
use security::tls::{ClientStream, MutualTls, TlsError};
use tokio::net::TcpStream;
use tonic::transport::Endpoint;

use crate::{
    ServiceUrl, Transport,
    balance::{Balancer, ConnectTo, PlatformChannel, Resolve, SystemResolver},
    transport::is_loopback_host,
};

/// The longest wait for a connection to another service or a database
/// (a connection attempt, a pool's acquire): past it the dependency is
/// treated as unavailable and the caller's own retry takes over.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A channel that propagates the caller's trace to the callee, to one
/// address or balanced over every address the callee's name resolves to.
pub type TracedChannel = telemetry::ClientTraceService<PlatformChannel>;

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
    /// The URL names no port to dial on the resolved addresses.
    #[error("{url}: no port")]
    NoPort {
        /// The URL given.
        url: String,
    },
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
/// `connect_timeout`. A URL naming a host by DNS name (not an IP literal
/// or `localhost`) is balanced over every address the name resolves to,
/// resolved again every [`crate::balance::RE_RESOLVE`].
pub fn traced_channel(
    url: &ServiceUrl,
    transport: &Transport,
    callee: &str,
    connect_timeout: Duration,
    request_timeout: Duration,
) -> Result<TracedChannel, ChannelError> {
    let host = url.host().trim_start_matches('[').trim_end_matches(']');
    let by_name =
        host.parse::<std::net::IpAddr>().is_err() && !host.eq_ignore_ascii_case("localhost");
    if by_name {
        let resolver: Arc<dyn Resolve> = Arc::new(SystemResolver);
        return traced_channel_with_resolver(
            url,
            transport,
            callee,
            connect_timeout,
            request_timeout,
            resolver,
        );
    }
    let endpoint = endpoint(url.as_str(), url, connect_timeout, request_timeout)?;
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
    Ok(traced(PlatformChannel::Single(channel)))
}

/// [`traced_channel`] balanced over the addresses `resolver` gives for the
/// URL's host, whatever the host is: how tests put several replicas
/// (127.0.0.2, 127.0.0.3, ...) behind one name. Certificates are checked
/// for `callee`'s identity, never for the address dialled.
pub fn traced_channel_with_resolver(
    url: &ServiceUrl,
    transport: &Transport,
    callee: &str,
    connect_timeout: Duration,
    request_timeout: Duration,
    resolver: Arc<dyn Resolve>,
) -> Result<TracedChannel, ChannelError> {
    let host = url
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url
        .as_str()
        .rsplit_once(':')
        .and_then(|(_, port)| port.trim_end_matches('/').parse::<u16>().ok())
        .ok_or_else(|| ChannelError::NoPort {
            url: url.to_string(),
        })?;
    let tls = transport.load()?;
    if tls.is_none() && !is_loopback_host(&host) {
        return Err(ChannelError::PlaintextNotLoopback {
            url: url.to_string(),
        });
    }
    let (url_for_errors, callee): (ServiceUrl, Arc<str>) = (url.clone(), callee.into());
    let connect: ConnectTo = Box::new(move |addr| {
        let endpoint = endpoint(
            &format!("http://{addr}"),
            &url_for_errors,
            connect_timeout,
            request_timeout,
        )?;
        Ok(match &tls {
            Some(tls) => endpoint.connect_with_connector_lazy(MutualTlsConnector {
                tls: tls.clone(),
                callee: callee.clone(),
            }),
            None => endpoint.connect_lazy(),
        })
    });
    let balancer = Balancer::new(host, port, resolver, connect);
    Ok(traced(PlatformChannel::Balanced(Arc::new(balancer))))
}

fn traced(channel: PlatformChannel) -> TracedChannel {
    tower::Layer::layer(&telemetry::ClientTraceLayer, channel)
}

/// The settings every platform channel has, for `target`.
fn endpoint(
    target: &str,
    url: &ServiceUrl,
    connect_timeout: Duration,
    request_timeout: Duration,
) -> Result<Endpoint, ChannelError> {
    // The connector below does the TLS, so tonic is always handed http://
    // (given https:// and no tonic TLS settings, it refuses to connect).
    let target = target.replacen("https://", "http://", 1);
    Ok(Endpoint::from_shared(target)
        .map_err(|source| ChannelError::Url {
            url: url.to_string(),
            source,
        })?
        .connect_timeout(connect_timeout)
        .timeout(request_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true))
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
