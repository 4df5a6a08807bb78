//! TLS for a public listener (the gateway's HTTP API): a certificate and
//! key from PEM files, reloaded when rotated like the platform's own, no
//! client certificate asked for, and ALPN offering HTTP/2 and HTTP/1.1.

use std::{io, path::Path, sync::Arc};

use tokio::net::TcpStream;

use super::{ReloadingCert, TlsError, TlsFiles, expiry};

/// A server-side TLS connection on the public listener.
pub type PublicStream = tokio_rustls::server::TlsStream<TcpStream>;

/// The acceptor of a public listener.
#[derive(Clone)]
pub struct PublicTls {
    acceptor: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for PublicTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PublicTls")
    }
}

impl PublicTls {
    /// Reads the certificate chain and key, and reports the certificate's
    /// expiry on the `tls_certificate_expiry_seconds` gauge.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let files = TlsFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            ca: std::path::PathBuf::new(),
        };
        let resolver = Arc::new(ReloadingCert::load(&files)?);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        expiry::publish(resolver, std::path::PathBuf::new(), Vec::new());
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// The server side of a handshake.
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<PublicStream> {
        self.acceptor.accept(tcp).await
    }
}
