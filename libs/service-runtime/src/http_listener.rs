//! A public HTTP listener that clients we do not control cannot hold:
//! its own accept loop (hyper-util) because `axum::serve` has no
//! header-read timeout. Each connection must send a request's headers (and
//! finish its TLS handshake) within a deadline, idle keep-alive connections
//! are closed after the same deadline, and connections are capped in all
//! and per client address, so a slowloris from one address cannot take the
//! slots other clients need. TLS is optional. A request starts a new trace
//! unless its peer is a configured trusted caller (an untrusted
//! `traceparent` becomes a span link).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::extract::ConnectInfo;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use security::{AllowedNet, tls::PublicTls};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::Semaphore,
};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use tracing::Instrument as _;

use crate::EnvReader;

/// Where and how a public HTTP listener serves, read from `<P>HTTP_*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicHttp {
    /// `<P>HTTP_ADDR`.
    pub addr: SocketAddr,
    /// `<P>HTTP_HEADER_TIMEOUT`: the longest a client may take to finish
    /// its TLS handshake and send a request's headers, and the longest a
    /// keep-alive connection may sit idle.
    pub header_read_timeout: Duration,
    /// `<P>HTTP_MAX_CONNECTIONS`: open connections in all; beyond it the
    /// listener stops accepting until one closes (the kernel's backlog
    /// holds the rest).
    pub max_connections: usize,
    /// `<P>HTTP_MAX_CONNECTIONS_PER_CLIENT`: open connections from one
    /// address; a connection beyond it is closed at once.
    pub max_connections_per_client: usize,
    /// `<P>HTTP_TLS_CERT` and `<P>HTTP_TLS_KEY`: serve HTTPS with this
    /// certificate chain and key (PEM, reloaded when rotated).
    pub tls: Option<PublicTlsFiles>,
    /// `<P>HTTP_TRUSTED_TRACE_CALLERS`: addresses or networks whose
    /// `traceparent` is continued; every other caller starts a new trace
    /// that links to theirs. None by default.
    pub trusted_trace_callers: Vec<AllowedNet>,
}

/// The certificate and key of a public TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicTlsFiles {
    /// The certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

impl PublicHttp {
    /// The default limits on `addr`, plaintext: 10 s to send headers, 4096
    /// connections, 256 per client.
    pub fn on(addr: SocketAddr) -> Self {
        Self {
            addr,
            header_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_connections_per_client: 256,
            tls: None,
            trusted_trace_callers: Vec::new(),
        }
    }

    /// Reads the listener's settings; `default_port` is the app's.
    pub fn from_env(env: &mut EnvReader, default_port: u16) -> Self {
        let defaults = Self::on(SocketAddr::from(([127, 0, 0, 1], default_port)));
        let header_read_timeout = env.get_or("HTTP_HEADER_TIMEOUT", defaults.header_read_timeout);
        if header_read_timeout.is_zero() || header_read_timeout > Duration::from_secs(120) {
            env.reject("HTTP_HEADER_TIMEOUT", "must be between 1ms and 120s");
        }
        let max_connections = env.get_or("HTTP_MAX_CONNECTIONS", defaults.max_connections);
        if max_connections == 0 {
            env.reject("HTTP_MAX_CONNECTIONS", "must be at least 1");
        }
        let per_client = env.get_or(
            "HTTP_MAX_CONNECTIONS_PER_CLIENT",
            defaults.max_connections_per_client,
        );
        if per_client == 0 || per_client > max_connections {
            env.reject(
                "HTTP_MAX_CONNECTIONS_PER_CLIENT",
                "must be at least 1 and at most HTTP_MAX_CONNECTIONS",
            );
        }
        let tls = match (
            env.get::<PathBuf>("HTTP_TLS_CERT"),
            env.get::<PathBuf>("HTTP_TLS_KEY"),
        ) {
            (Some(cert), Some(key)) => Some(PublicTlsFiles { cert, key }),
            (None, None) => None,
            _ => {
                env.reject(
                    "HTTP_TLS_CERT",
                    "set both HTTP_TLS_CERT and HTTP_TLS_KEY, or neither",
                );
                None
            }
        };
        let mut trusted_trace_callers = Vec::new();
        for entry in env
            .get::<String>("HTTP_TRUSTED_TRACE_CALLERS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            match AllowedNet::parse(entry) {
                Ok(net) => trusted_trace_callers.push(net),
                Err(error) => env.reject("HTTP_TRUSTED_TRACE_CALLERS", error.to_string()),
            }
        }
        Self {
            addr: env.get_or("HTTP_ADDR", defaults.addr),
            trusted_trace_callers,
            header_read_timeout,
            max_connections: max_connections.max(1),
            max_connections_per_client: per_client.clamp(1, max_connections.max(1)),
            tls,
        }
    }
}

/// The largest request header block HTTP/1 reads, and HTTP/2's bound.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Concurrent HTTP/2 streams per connection.
const MAX_STREAMS: u32 = 128;
/// HTTP/2 keepalive: a ping this often, the connection closed when one
/// goes unanswered this long.
const H2_KEEPALIVE: (Duration, Duration) = (Duration::from_secs(30), Duration::from_secs(10));

/// Serves `router` on `listener` under the limits in `settings` until
/// `stop`, then lets open connections finish their requests. Each request
/// carries its peer address as [`ConnectInfo`].
pub(crate) async fn serve(
    listener: TcpListener,
    router: axum::Router,
    settings: PublicHttp,
    tls: Option<PublicTls>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let trusted = settings.trusted_trace_callers.clone();
    let router = router.layer(telemetry::ServerTraceLayer::at_edge(move |peer| {
        trusted.iter().any(|net| net.contains(peer))
    }));
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let clients = ClientCounts::default();
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .keep_alive_interval(H2_KEEPALIVE.0)
        .keep_alive_timeout(H2_KEEPALIVE.1);
    let builder = Arc::new(builder);
    loop {
        let slot = tokio::select! {
            () = stop.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off briefly
                // rather than spin.
                tracing::warn!(%error, "accepting an HTTP connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(client_slot) = clients.take(peer.ip(), settings.max_connections_per_client) else {
            tracing::debug!(%peer, "too many connections from this client; closed");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let connection = Connection {
            router: router.clone(),
            builder: builder.clone(),
            watcher: graceful.watcher(),
            peer,
            header_read_timeout: settings.header_read_timeout,
        };
        let tls = tls.clone();
        tokio::spawn(
            async move {
                let _slots = (slot, client_slot);
                match tls {
                    None => connection.serve(tcp).await,
                    Some(tls) => {
                        match tokio::time::timeout(connection.header_read_timeout, tls.accept(tcp))
                            .await
                        {
                            Ok(Ok(stream)) => connection.serve(stream).await,
                            Ok(Err(error)) => {
                                tracing::debug!(%peer, %error, "TLS handshake failed");
                            }
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    }
                }
            }
            .instrument(tracing::debug_span!("http connection")),
        );
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// What serving one accepted connection needs.
struct Connection {
    router: axum::Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: hyper_util::server::graceful::Watcher,
    peer: SocketAddr,
    header_read_timeout: Duration,
}

impl Connection {
    async fn serve<IO>(self, io: IO)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = self.peer;
        let router = self.router;
        let service =
            tower::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                router.clone().oneshot(request.map(axum::body::Body::new))
            });
        let connection = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service))
            .into_owned();
        if let Err(error) = self.watcher.watch(connection).await {
            // A client that went away or sent garbage: its problem, at debug.
            tracing::debug!(%peer, %error, "HTTP connection ended with an error");
        }
    }
}

/// Open connections per client address.
#[derive(Debug, Clone, Default)]
struct ClientCounts(Arc<Mutex<HashMap<IpAddr, usize>>>);

impl ClientCounts {
    /// A slot for `client`, or `None` when it already holds `limit`.
    fn take(&self, client: IpAddr, limit: usize) -> Option<ClientSlot> {
        let mut counts = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = counts.entry(client).or_default();
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            counts: self.clone(),
            client,
        })
    }
}

/// One open connection of a client; released when dropped.
struct ClientSlot {
    counts: ClientCounts,
    client: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut counts = self
            .counts
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_holds_at_most_its_limit_and_gets_slots_back() {
        let counts = ClientCounts::default();
        let a = IpAddr::from([127, 0, 0, 2]);
        let b = IpAddr::from([127, 0, 0, 3]);
        let first = counts.take(a, 2).expect("first");
        let second = counts.take(a, 2).expect("second");
        assert!(counts.take(a, 2).is_none(), "a third over the limit");
        assert!(
            counts.take(b, 2).is_some(),
            "another client is not affected"
        );
        drop(first);
        assert!(
            counts.take(a, 2).is_some(),
            "a closed connection frees its slot"
        );
        drop(second);
    }

    #[test]
    fn tls_needs_both_files_and_limits_are_checked() {
        let mut env = EnvReader::from_vars(
            "T_",
            [
                ("T_HTTP_TLS_CERT", "cert.pem"),
                ("T_HTTP_MAX_CONNECTIONS", "10"),
                ("T_HTTP_MAX_CONNECTIONS_PER_CLIENT", "11"),
            ],
        );
        let _ = PublicHttp::from_env(&mut env, 8080);
        let problems = env.finish().expect_err("two problems").to_string();
        assert!(problems.contains("T_HTTP_TLS_CERT"), "{problems}");
        assert!(
            problems.contains("T_HTTP_MAX_CONNECTIONS_PER_CLIENT"),
            "{problems}"
        );
    }
}
