//! Mutual TLS over real sockets with a generated development PKI: a client
//! with a platform certificate is identified by it, a client without one or
//! with another CA's is refused, and a rotated server certificate serves
//! new connections without a restart.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is the test failure report"
)]

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use security::tls::{TlsFiles, client_config, dev_pki, peer_identity, server_config};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{
    TlsAcceptor, TlsConnector,
    rustls::pki_types::{ServerName, pem::PemObject as _},
};

const IDENTITIES: [&str; 4] = ["ingest", "worker", "numerics", "operator"];

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A TLS server that answers each client with the identity its
/// certificate names (or `none`).
async fn identity_server(files: &TlsFiles) -> SocketAddr {
    let acceptor = TlsAcceptor::from(Arc::new(server_config(files).unwrap()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let identity = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| peer_identity(&chain[0], &IDENTITIES))
                    .unwrap_or("none");
                let _ = tls.write_all(identity.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

/// Connects with `config` and reads the server's answer, with the server's
/// certificate.
async fn ask(
    addr: SocketAddr,
    config: tokio_rustls::rustls::ClientConfig,
) -> std::io::Result<(String, Vec<u8>)> {
    let connector = TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    let server_cert = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await?;
    Ok((answer, server_cert))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_certificate_identifies_its_service_and_others_are_refused() {
    let dir = scratch("pki");
    dev_pki::generate(&dir, &IDENTITIES).unwrap();
    let foreign = scratch("foreign");
    dev_pki::generate(&foreign, &["worker"]).unwrap();
    let addr = identity_server(&TlsFiles::in_dir(&dir, "ingest")).await;

    for identity in ["worker", "operator"] {
        let (answer, _) = ask(
            addr,
            client_config(&TlsFiles::in_dir(&dir, identity)).unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(answer, identity);
    }

    // No client certificate: the handshake fails.
    let anonymous = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates({
        let mut roots = tokio_rustls::rustls::RootCertStore::empty();
        let ca = std::fs::read(dir.join("ca.pem")).unwrap();
        for cert in tokio_rustls::rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
            roots.add(cert.unwrap()).unwrap();
        }
        roots
    })
    .with_no_client_auth();
    assert!(ask(addr, anonymous).await.is_err(), "no client certificate");

    // A certificate from another CA naming the same service: refused.
    let mut impostor = TlsFiles::in_dir(&foreign, "worker");
    impostor.ca = dir.join("ca.pem");
    assert!(
        ask(addr, client_config(&impostor).unwrap()).await.is_err(),
        "a worker certificate from another CA"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&foreign).unwrap();
}

/// A platform-CA certificate must name exactly one identity, exactly: a
/// wildcard or a second identity makes it no identity at all.
#[test]
fn wildcards_and_double_identities_name_no_one() {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert_naming = |names: Vec<String>| {
        rcgen::CertificateParams::new(names)
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .der()
            .clone()
    };
    let one = cert_naming(vec!["worker.platform.internal".into()]);
    assert_eq!(peer_identity(&one, &IDENTITIES), Some("worker"));
    let wildcard = cert_naming(vec!["*.platform.internal".into()]);
    assert_eq!(peer_identity(&wildcard, &IDENTITIES), None);
    let both = cert_naming(vec![
        "worker.platform.internal".into(),
        "operator.platform.internal".into(),
    ]);
    assert_eq!(peer_identity(&both, &IDENTITIES), None);
    assert!(dev_pki::generate(&scratch("bad-name"), &["ca"]).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_server_certificate_serves_new_connections_without_a_restart() {
    let dir = scratch("rotate");
    dev_pki::generate(&dir, &["ingest", "next-ingest", "worker"]).unwrap();
    let addr = identity_server(&TlsFiles::in_dir(&dir, "ingest")).await;
    let client = || client_config(&TlsFiles::in_dir(&dir, "worker")).unwrap();
    let (_, before) = ask(addr, client()).await.unwrap();

    // The operator's rotation: new files moved into place.
    for ext in ["pem", "key"] {
        std::fs::copy(
            dir.join(format!("next-ingest.{ext}")),
            dir.join(format!("staged.{ext}")),
        )
        .unwrap();
        std::fs::rename(
            dir.join(format!("staged.{ext}")),
            dir.join(format!("ingest.{ext}")),
        )
        .unwrap();
    }
    let rotated = poll_until(|| async {
        let (_, now) = ask(addr, client()).await.unwrap();
        (now != before).then_some(now)
    })
    .await;
    assert_eq!(
        rotated,
        std::fs::read(dir.join("next-ingest.pem"))
            .map(|pem| {
                tokio_rustls::rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
                    .next()
                    .unwrap()
                    .unwrap()
                    .to_vec()
            })
            .unwrap()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Polls `condition` every 100 ms for up to 10 s (the resolver checks the
/// files once a second).
async fn poll_until<T, F, Fut>(mut condition: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = condition().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not rotated within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
