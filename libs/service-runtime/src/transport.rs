//! How an app's gRPC server and clients reach other services: mutual TLS
//! by default, plaintext only when asked for and only on loopback.

use std::{net::IpAddr, path::PathBuf};

use security::tls::{MutualTls, TlsError, TlsFiles};

use crate::{EnvReader, Environment};

/// The gRPC transport of one process, read from `<P>GRPC_PLAINTEXT` and
/// `<P>TLS_*` (see [`Transport::from_env`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// Mutual TLS as `identity` (the app's name: `worker`), with the
    /// certificate, key and platform CA in `files`.
    MutualTls {
        /// This process's identity, named in its certificate.
        identity: String,
        /// Where its certificate, key and CA are.
        files: TlsFiles,
    },
    /// No TLS and so no caller identity: the per-RPC policy cannot be
    /// enforced. Allowed only on loopback and never in production.
    Plaintext,
}

/// The folder `platform certs` writes development certificates to.
pub const DEFAULT_CERT_DIR: &str = "data/certs";

impl Transport {
    /// `<P>GRPC_PLAINTEXT=true` asks for plaintext (refused in production).
    /// Otherwise mutual TLS with `<P>TLS_CERT`, `<P>TLS_KEY` and `<P>TLS_CA`,
    /// which default to `<identity>.pem`, `<identity>.key` and `ca.pem` in
    /// `<P>TLS_DIR` (default `data/certs`); each file must exist.
    pub fn from_env(env: &mut EnvReader) -> Self {
        let prefix = env.prefix().to_owned();
        let identity = prefix.trim_end_matches('_').to_ascii_lowercase();
        if env.get_or("GRPC_PLAINTEXT", false) {
            if env.environment() == Environment::Production {
                env.reject(
                    "GRPC_PLAINTEXT",
                    "plaintext gRPC is refused in production: services authenticate each other with mutual TLS",
                );
            }
            return Self::Plaintext;
        }
        let dir = env.get_or("TLS_DIR", PathBuf::from(DEFAULT_CERT_DIR));
        let defaults = TlsFiles::in_dir(&dir, &identity);
        let files = TlsFiles {
            cert: env.get_or("TLS_CERT", defaults.cert),
            key: env.get_or("TLS_KEY", defaults.key),
            ca: env.get_or("TLS_CA", defaults.ca),
        };
        for (name, path) in [
            ("TLS_CERT", &files.cert),
            ("TLS_KEY", &files.key),
            ("TLS_CA", &files.ca),
        ] {
            if !path.is_file() {
                env.reject(
                    name,
                    format!(
                        "{} does not exist: run `platform certs` for development certificates, or set {prefix}GRPC_PLAINTEXT=true for plaintext on loopback",
                        path.display()
                    ),
                );
            }
        }
        Self::MutualTls { identity, files }
    }

    /// Reads the certificates (once per server or channel; rotated files are
    /// picked up by the loaded resolver). `None` for plaintext.
    pub fn load(&self) -> Result<Option<MutualTls>, TlsError> {
        match self {
            Self::MutualTls { files, .. } => MutualTls::load(files).map(Some),
            Self::Plaintext => Ok(None),
        }
    }

    /// This process's identity, if it has one.
    pub fn identity(&self) -> Option<&str> {
        match self {
            Self::MutualTls { identity, .. } => Some(identity),
            Self::Plaintext => None,
        }
    }

    /// For tests and tools: mutual TLS as `identity` with the files
    /// `platform certs` wrote to `dir`.
    pub fn mutual_tls_in(dir: &std::path::Path, identity: &str) -> Self {
        Self::MutualTls {
            identity: identity.to_owned(),
            files: TlsFiles::in_dir(dir, identity),
        }
    }
}

/// True for `localhost` and loopback addresses (brackets allowed).
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a panic is the test failure report")]

    use super::*;

    fn read(vars: &[(&str, &str)]) -> (Transport, Result<(), crate::ConfigError>) {
        let mut env = EnvReader::from_vars("WORKER_", vars.iter().copied());
        let transport = Transport::from_env(&mut env);
        (transport, env.finish())
    }

    #[test]
    fn mutual_tls_is_the_default_and_names_missing_files() {
        let (transport, result) = read(&[("WORKER_TLS_DIR", "/nonexistent/certs")]);
        assert_eq!(transport.identity(), Some("worker"));
        let message = result.unwrap_err().to_string();
        for variable in ["WORKER_TLS_CERT", "WORKER_TLS_KEY", "WORKER_TLS_CA"] {
            assert!(message.contains(variable), "{message}");
        }
        assert!(
            message.contains("/nonexistent/certs/worker.pem does not exist"),
            "{message}"
        );
        assert!(message.contains("platform certs"), "{message}");
    }

    #[test]
    fn plaintext_is_explicit_and_refused_in_production() {
        let (transport, result) = read(&[("WORKER_GRPC_PLAINTEXT", "true")]);
        assert_eq!(transport, Transport::Plaintext);
        result.unwrap();
        let (_, result) = read(&[
            ("WORKER_GRPC_PLAINTEXT", "true"),
            ("PLATFORM_ENV", "production"),
        ]);
        let message = result.unwrap_err().to_string();
        assert!(
            message.contains("WORKER_GRPC_PLAINTEXT: plaintext gRPC is refused in production"),
            "{message}"
        );
    }

    #[test]
    fn loopback_hosts() {
        for host in ["localhost", "127.0.0.1", "127.8.0.1", "[::1]", "::1"] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "10.0.0.1",
            "numerics",
            "[::2]",
            "0.0.0.0",
            "localhost.example.com",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
