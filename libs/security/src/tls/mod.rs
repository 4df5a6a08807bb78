//! Mutual TLS between services: certificates and keys from PEM files, a
//! server that requires a client certificate from the platform CA, a client
//! that presents its own, and the caller's identity read from its
//! certificate.
//!
//! A service's identity is the DNS name `<service>.platform.internal` in
//! its certificate's subject alternative names (checked with the same
//! webpki code that validates the chain). Certificate and key files are
//! re-read when they change, at most once a second, so new connections pick
//! up a rotated certificate without a restart; connections already open
//! keep the one they started with (a rolling restart is the fallback). The
//! CA is read once: rotating it is a rolling restart.
//!
//! [`PublicTls`] is the server side for a public listener: the same
//! reloading certificate, no client certificate.

pub mod dev_pki;
mod expiry;
mod mutual;
mod public;

pub use mutual::{ClientStream, MutualTls, ServerStream};
pub use public::{PublicStream, PublicTls};

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use rustls::{
    RootCertStore,
    client::ResolvesClientCert,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};

/// The DNS name that carries `identity` in a platform certificate.
pub fn identity_dns_name(identity: &str) -> String {
    format!("{identity}{PLATFORM_DOMAIN}")
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {problem}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        problem: String,
    },
    /// The certificates or key do not make a valid configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// Generating a development certificate failed.
    #[error("generating certificates: {0}")]
    Generate(String),
}

impl TlsError {
    fn io(path: &Path, error: &std::io::Error) -> Self {
        Self::File {
            path: path.display().to_string(),
            problem: error.to_string(),
        }
    }

    fn pem(path: &Path, error: &rustls::pki_types::pem::Error) -> Self {
        Self::File {
            path: path.display().to_string(),
            problem: format!("not a PEM file of the expected kind: {error}"),
        }
    }
}

/// Where a process's certificate, key and the platform CA are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// This process's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA that signs every platform certificate (PEM).
    pub ca: PathBuf,
}

impl TlsFiles {
    /// `<dir>/<identity>.pem`, `<dir>/<identity>.key` and `<dir>/ca.pem`, as
    /// [`dev_pki::generate`] writes them.
    pub fn in_dir(dir: &Path, identity: &str) -> Self {
        Self {
            cert: dir.join(format!("{identity}.pem")),
            key: dir.join(format!("{identity}.key")),
            ca: dir.join("ca.pem"),
        }
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        Ok(self.roots_and_certs()?.0)
    }

    fn roots_and_certs(
        &self,
    ) -> Result<(Arc<RootCertStore>, Vec<CertificateDer<'static>>), TlsError> {
        let mut roots = RootCertStore::empty();
        let mut certs = Vec::new();
        for cert in
            CertificateDer::pem_file_iter(&self.ca).map_err(|e| TlsError::pem(&self.ca, &e))?
        {
            let cert = cert.map_err(|e| TlsError::pem(&self.ca, &e))?;
            certs.push(cert.clone());
            roots
                .add(cert)
                .map_err(|e| TlsError::Config(format!("{}: {e}", self.ca.display())))?;
        }
        Ok((Arc::new(roots), certs))
    }
}

/// A server configuration that requires a client certificate signed by the
/// platform CA and serves the (reloading) certificate in `files`.
pub fn server_config(files: &TlsFiles) -> Result<rustls::ServerConfig, TlsError> {
    build_server_config(files.roots()?, Arc::new(ReloadingCert::load(files)?))
}

/// A client configuration that trusts only the platform CA and presents
/// the (reloading) certificate in `files`.
pub fn client_config(files: &TlsFiles) -> Result<rustls::ClientConfig, TlsError> {
    build_client_config(files.roots()?, Arc::new(ReloadingCert::load(files)?))
}

fn build_server_config(
    roots: Arc<RootCertStore>,
    cert: Arc<ReloadingCert>,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

fn build_client_config(
    roots: Arc<RootCertStore>,
    cert: Arc<ReloadingCert>,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Which of `identities` a peer's end-entity certificate names (see
/// [`identity_dns_name`]); `None` when it names none of them, several, or
/// carries a wildcard platform name (`*.platform.internal` would otherwise
/// pass for any identity). Names are compared exactly, without the
/// wildcard rules of server-name checks. The chain itself was verified
/// during the handshake.
pub fn peer_identity<'a>(
    certificate: &CertificateDer<'_>,
    identities: &[&'a str],
) -> Option<&'a str> {
    let cert = webpki::EndEntityCert::try_from(certificate).ok()?;
    let platform: Vec<String> = cert
        .valid_dns_names()
        .map(str::to_ascii_lowercase)
        .filter(|name| name.ends_with(PLATFORM_DOMAIN))
        .collect();
    if platform.iter().any(|name| name.contains('*')) {
        return None;
    }
    let mut named = identities
        .iter()
        .copied()
        .filter(|identity| platform.contains(&identity_dns_name(identity).to_ascii_lowercase()));
    match (named.next(), named.next()) {
        (Some(identity), None) => Some(identity),
        _ => None,
    }
}

/// The domain of platform identities.
const PLATFORM_DOMAIN: &str = ".platform.internal";

/// How often certificate files are checked for a change.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// A certificate and key read from files and read again when either file's
/// modification time changes (checked at most every [`RELOAD_CHECK`]). A
/// file that does not parse keeps the previous certificate and is logged.
#[derive(Debug)]
struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    certified: Arc<CertifiedKey>,
    stamps: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

impl ReloadingCert {
    fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let (certified, stamps) = read_certified(&files.cert, &files.key)?;
        Ok(Self {
            cert: files.cert.clone(),
            key: files.key.clone(),
            state: Mutex::new(Loaded {
                certified,
                stamps,
                checked: Instant::now(),
            }),
        })
    }

    fn current(&self) -> Arc<CertifiedKey> {
        let (certified, due) = {
            let mut state = self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let due = state.checked.elapsed() >= RELOAD_CHECK
                && stamps(&self.cert, &self.key) != state.stamps;
            if state.checked.elapsed() >= RELOAD_CHECK {
                state.checked = Instant::now();
            }
            (state.certified.clone(), due)
        };
        if !due {
            return certified;
        }
        // Read outside the lock: other handshakes keep the current pair.
        match read_certified(&self.cert, &self.key) {
            Ok((fresh, stamps)) => {
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                let mut state = self
                    .state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                state.certified = fresh.clone();
                state.stamps = stamps;
                fresh
            }
            Err(error) => {
                // Half-rotated files (a new certificate beside the old key)
                // land here too: the next check tries again.
                tracing::warn!(%error, "TLS certificate files changed but do not load; keeping the previous certificate");
                certified
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for ReloadingCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn stamps(cert: &Path, key: &Path) -> (Option<SystemTime>, Option<SystemTime>) {
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    (modified(cert), modified(key))
}

type Stamps = (Option<SystemTime>, Option<SystemTime>);

fn read_certified(cert: &Path, key: &Path) -> Result<(Arc<CertifiedKey>, Stamps), TlsError> {
    let stamps = stamps(cert, key);
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| TlsError::pem(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::pem(cert, &e))?;
    if chain.is_empty() {
        return Err(TlsError::File {
            path: cert.display().to_string(),
            problem: "holds no certificate".into(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::pem(key, &e))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| TlsError::Config(format!("{}: {e}", key.display())))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| TlsError::File {
        path: key.display().to_string(),
        problem: format!("does not match the certificate in {}: {e}", cert.display()),
    })?;
    Ok((Arc::new(certified), stamps))
}
