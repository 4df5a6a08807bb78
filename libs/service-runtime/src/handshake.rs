//! The TLS side of accepting gRPC connections: each handshake runs in its
//! own task with a deadline, so a client that connects and says nothing
//! holds one bounded slot, not the accept loop.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use futures_util::Stream;
use security::{
    audit::{AuditEvent, AuditOutcome},
    tls::{MutualTls, ServerStream},
};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// The longest a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in flight at once; a connection beyond them is closed at once
/// (a flood of half-open connections costs the flooder, not the callers).
const MAX_HANDSHAKES: usize = 512;
/// Finished handshakes waiting for the server to take them.
const READY_QUEUE: usize = 64;

/// Accepts TCP connections on `listener` until `stop`, and yields each one
/// whose client completed a mutual-TLS handshake. A failed handshake (no
/// certificate, another CA's, a timeout) is an authentication failure in
/// the audit log.
pub(crate) fn tls_incoming(
    listener: TcpListener,
    tls: MutualTls,
    stop: CancellationToken,
) -> impl Stream<Item = Result<ServerStream, std::io::Error>> {
    let (ready, mut taken) = tokio::sync::mpsc::channel(READY_QUEUE);
    tokio::spawn(
        accept_loop(listener, tls, ready, stop).instrument(tracing::info_span!("tls accept loop")),
    );
    futures_util::stream::poll_fn(move |cx| taken.poll_recv(cx).map(|next| next.map(Ok)))
}

async fn accept_loop(
    listener: TcpListener,
    tls: MutualTls,
    ready: tokio::sync::mpsc::Sender<ServerStream>,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off briefly
                // rather than spin.
                tracing::warn!(%error, "accepting a gRPC connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many TLS handshakes in flight; connection closed");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let tls = tls.clone();
        let ready = ready.clone();
        tokio::spawn(
            async move {
                let _slot = slot;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = ready.send(stream).await;
                    }
                    Ok(Err(error)) => refused(peer, &error.to_string()),
                    Err(_) => refused(peer, "handshake timed out"),
                }
            }
            .instrument(tracing::debug_span!("tls handshake")),
        );
    }
}

/// Writes a refused handshake to the audit log (the reason at debug: it is
/// the peer's problem, and scanners would flood the log with it).
fn refused(peer: SocketAddr, reason: &str) {
    tracing::debug!(%peer, reason, "TLS handshake refused");
    security::audit::record(&AuditEvent {
        actor: &format!("peer {peer}"),
        action: "grpc.authenticate",
        target: "tls handshake",
        outcome: AuditOutcome::Denied,
    });
}
