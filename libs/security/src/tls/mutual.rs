//! One process's mutual TLS: the acceptor its gRPC server wraps each
//! connection in and the connector its clients use, sharing one reloading
//! certificate.

use std::{io, sync::Arc};

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use super::{
    ReloadingCert, TlsError, TlsFiles, build_client_config, build_server_config, expiry,
    identity_dns_name,
};

/// A server-side TLS connection (tonic reads the peer certificates from it).
pub type ServerStream = tokio_rustls::server::TlsStream<TcpStream>;
/// A client-side TLS connection.
pub type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

/// Loaded once per process from [`TlsFiles`]: accepts connections that
/// present a platform certificate and connects to a named platform service,
/// checking that the server is that service.
#[derive(Clone)]
pub struct MutualTls {
    acceptor: tokio_rustls::TlsAcceptor,
    connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for MutualTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MutualTls")
    }
}

impl MutualTls {
    /// Reads the CA, certificate and key, and reports their expiry on the
    /// `tls_certificate_expiry_seconds` gauge.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let (roots, authorities) = files.roots_and_certs()?;
        let cert = Arc::new(ReloadingCert::load(files)?);
        let server = build_server_config(roots.clone(), cert.clone())?;
        let client = build_client_config(roots, cert.clone())?;
        expiry::publish(cert, files.ca.clone(), authorities);
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
        })
    }

    /// The server side of a handshake: fails unless the client presents a
    /// certificate from the platform CA.
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<ServerStream> {
        self.acceptor.accept(tcp).await
    }

    /// The client side of a handshake with `callee` (an identity such as
    /// `numerics`): the server must present a certificate naming that
    /// identity, whatever host name or address the URL used.
    pub async fn connect(&self, tcp: TcpStream, callee: &str) -> io::Result<ClientStream> {
        let name = ServerName::try_from(identity_dns_name(callee))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.connector.connect(name, tcp).await
    }
}
