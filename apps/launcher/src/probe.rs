//! Readiness probing of a child's admin port, with no HTTP client library:
//! one `GET /readyz` over a fresh connection, status line only.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// True when `GET /readyz` answers 200 within `timeout`.
pub async fn is_ready(admin: SocketAddr, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, probe(admin))
        .await
        .unwrap_or(false)
}

async fn probe(admin: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect(admin).await else {
        return false;
    };
    let request = format!("GET /readyz HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.is_ok() && head.starts_with(b"HTTP/1.1 200")
}
