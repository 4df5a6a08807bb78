//! The outbound client against real sockets: what it refuses never gets a
//! connection, what it allows gets exactly one request.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is the test failure report"
)]

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use security::{OutboundClient, OutboundError, OutboundPolicy, outbound::AllowedNet};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

/// A one-line HTTP server on loopback answering every request with
/// `response`, counting the connections it accepted.
async fn receiver(response: String) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let response = response.clone();
            tokio::spawn(async move {
                let mut request = vec![0u8; 4096];
                let _ = socket.read(&mut request).await;
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (address, hits)
}

fn ok_with(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn strict() -> OutboundClient {
    OutboundClient::new(OutboundPolicy::strict(), "test").unwrap()
}

/// Development settings that still refuse everything non-public.
fn http_allowed() -> OutboundClient {
    OutboundClient::new(
        OutboundPolicy {
            allow_http: true,
            ..OutboundPolicy::strict()
        },
        "test",
    )
    .unwrap()
}

/// Loopback allowed, as the tests' receivers need.
fn loopback_allowed() -> OutboundClient {
    OutboundClient::new(
        OutboundPolicy {
            allow_http: true,
            allow: vec![AllowedNet::parse("127.0.0.0/8").unwrap()],
            ..OutboundPolicy::strict()
        },
        "test",
    )
    .unwrap()
}

#[test]
fn ip_literals_in_every_spelling_are_refused_before_any_connection() {
    let client = http_allowed();
    for (url, range) in [
        ("http://127.0.0.1/", "loopback (127.0.0.0/8)"),
        ("http://2130706433/", "loopback (127.0.0.0/8)"),
        ("http://0x7f.1/", "loopback (127.0.0.0/8)"),
        ("http://017700000001/", "loopback (127.0.0.0/8)"),
        ("http://[::ffff:127.0.0.1]/", "loopback (127.0.0.0/8)"),
        ("http://[::1]:5432/", "loopback (::1)"),
        (
            "http://169.254.169.254/latest/meta-data/",
            "link-local and cloud metadata (169.254.0.0/16)",
        ),
        ("http://[64:ff9b::a9fe:a9fe]/", "NAT64 (64:ff9b::/96)"),
        ("http://10.1.2.3:8080/hook", "private (10.0.0.0/8)"),
        ("http://0.0.0.0/", "this network (0.0.0.0/8)"),
    ] {
        match client.check_url(url) {
            Err(OutboundError::Forbidden { range: got, .. }) => assert_eq!(got, range, "{url}"),
            other => panic!("{url}: {other:?}"),
        }
    }
}

#[test]
fn schemes_other_than_https_are_refused_by_default() {
    let error = strict().check_url("http://example.com/hook").unwrap_err();
    assert_eq!(
        error.to_string(),
        "url \"http://example.com/hook\" must use https"
    );
    assert!(matches!(
        http_allowed().check_url("ftp://example.com/"),
        Err(OutboundError::Scheme { .. })
    ));
    assert!(matches!(
        strict().check_url("not a url"),
        Err(OutboundError::InvalidUrl { .. })
    ));
    assert!(strict().check_url("https://example.com/hook").is_ok());
}

#[tokio::test]
async fn a_name_that_resolves_to_loopback_is_refused_and_never_connected() {
    let (address, hits) = receiver(ok_with("hello")).await;
    let url = format!("http://localhost:{}/hook", address.port());
    let error = http_allowed().post(&url).unwrap().send().await.unwrap_err();
    let chain = format!("{:?}", error);
    assert!(
        chain.contains("is not reachable from here: it resolves to no public address"),
        "{chain}"
    );
    // The error does not map the internal network for whoever reads it.
    assert!(
        !chain.contains("127.0.0.1") && !chain.contains("::1"),
        "{chain}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0, "no connection was made");
}

#[tokio::test]
async fn an_allowed_network_is_reached_once() {
    let (address, hits) = receiver(ok_with("hello")).await;
    for url in [
        format!("http://127.0.0.1:{}/hook", address.port()),
        format!("http://localhost:{}/hook", address.port()),
    ] {
        let client = loopback_allowed();
        let response = client.post(&url).unwrap().send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(client.read_bounded(response).await.unwrap(), b"hello");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn redirects_are_answers_not_new_destinations() {
    let (target, target_hits) = receiver(ok_with("inside")).await;
    let (address, _) = receiver(format!(
        "HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:{}/\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        target.port()
    ))
    .await;
    let response = loopback_allowed()
        .post(&format!("http://127.0.0.1:{}/hook", address.port()))
        .unwrap()
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 302);
    assert_eq!(target_hits.load(Ordering::SeqCst), 0, "not followed");
}

#[tokio::test]
async fn responses_are_read_up_to_the_bound() {
    let (address, _) = receiver(ok_with(&"x".repeat(1 << 20))).await;
    let client = OutboundClient::new(
        OutboundPolicy {
            allow_http: true,
            allow: vec![AllowedNet::parse("127.0.0.1").unwrap()],
            max_response_bytes: 1_000,
            timeout: Duration::from_secs(10),
            ..OutboundPolicy::strict()
        },
        "test",
    )
    .unwrap();
    let response = client
        .post(&format!("http://127.0.0.1:{}/", address.port()))
        .unwrap()
        .send()
        .await
        .unwrap();
    assert_eq!(client.read_bounded(response).await.unwrap().len(), 1_000);
}
