//! The public HTTP listener against clients that try to hold it: slow
//! headers (slowloris), idle connections, and one address opening many.

use std::{net::SocketAddr, time::Duration};

use axum::{Router, routing::get};
use service_runtime::{BuildInfo, CommonConfig, PublicHttp, Running, ServiceBuilder};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream},
};

/// How long the server gives a client to send its headers in these tests.
const HEADER_TIMEOUT: Duration = Duration::from_millis(500);
/// Connections one address may hold in these tests.
const PER_CLIENT: usize = 8;

async fn start() -> Running {
    let settings = PublicHttp {
        header_read_timeout: HEADER_TIMEOUT,
        max_connections: 64,
        max_connections_per_client: PER_CLIENT,
        ..PublicHttp::on(SocketAddr::from(([127, 0, 0, 1], 0)))
    };
    ServiceBuilder::new(BuildInfo::new("edge-test"), CommonConfig::for_tests())
        .http(
            settings,
            Router::new().route("/", get(|| async { "served" })),
        )
        .start()
        .await
        .expect("start")
}

/// A connection to `server` from the loopback address `from` (any of
/// 127/8 is local on Linux, so each test client can have its own).
async fn connect_from(from: [u8; 4], server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    socket.connect(server).await.unwrap()
}

/// A whole request from `from`, answered before the test's patience runs out.
async fn served_from(from: [u8; 4], server: SocketAddr) -> String {
    let mut stream = connect_from(from, server).await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
        .await
        .expect("a normal client is answered while the slow ones wait")
        .unwrap();
    answer
}

/// Reads until the server closes the connection; what it sent, if anything.
async fn closed_by_server(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
        .await
        .expect("the server closes a connection that sends no complete headers");
    // A reset is a close too.
    let _ = read;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn slow_clients_are_cut_off_and_cannot_crowd_out_others() {
    let running = start().await;
    let server = running.http_addr.unwrap();
    let slow_client = [127, 0, 0, 2];

    // Slowloris: connections that send a request line and then one header
    // byte at a time, never finishing.
    let mut slow = Vec::new();
    for _ in 0..PER_CLIENT {
        let mut stream = connect_from(slow_client, server).await;
        stream.write_all(b"GET / HTTP/1.1\r\nX-a: ").await.unwrap();
        slow.push(stream);
    }
    // One more from the same address is over its share: closed unanswered,
    // though its request is complete.
    let mut extra = connect_from(slow_client, server).await;
    let _ = extra
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(
        closed_by_server(&mut extra).await,
        "",
        "no answer past the cap"
    );

    // Someone else is still served while the slow connections are open.
    let answer = served_from([127, 0, 0, 3], server).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("served"), "{answer}");

    // Dribbling bytes does not keep a connection alive: the deadline is
    // for the whole header block.
    for stream in &mut slow {
        let _ = stream.write_all(b"b").await;
    }
    for stream in &mut slow {
        let answer = closed_by_server(stream).await;
        assert!(
            !answer.contains("200 OK"),
            "an unfinished request is never served: {answer}"
        );
    }
    // Their slots are back: the same address is served again.
    let answer = served_from(slow_client, server).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    running.shutdown().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let running = start().await;
    let server = running.http_addr.unwrap();
    let mut stream = connect_from([127, 0, 0, 4], server).await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // The first answer arrives and the connection stays open for another
    // request; sending none, it is closed after the header deadline.
    let answer = closed_by_server(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{answer}");
    running.shutdown().await;
}
