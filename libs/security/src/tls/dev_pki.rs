//! A development PKI: one CA, a certificate per service and one for an
//! operator, written as PEM files. For the quick start and tests only;
//! production certificates come from the cluster's issuer.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use super::{TlsError, identity_dns_name};

/// Days a development certificate is valid.
const VALID_DAYS: i64 = 90;

/// Writes `ca.pem`, and `<name>.pem` with `<name>.key` for each of
/// `identities` (e.g. `gateway`, `worker`, `operator`), into `dir`. Each
/// leaf names its identity as the DNS name `<name>.platform.internal` and
/// is valid for `localhost` and `127.0.0.1`, as a client and a server.
pub fn generate(dir: &Path, identities: &[&str]) -> Result<(), TlsError> {
    for name in identities {
        let valid = !name.is_empty()
            && *name != "ca"
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid {
            return Err(TlsError::Generate(format!(
                "identity {name:?} must be lowercase letters, digits and '-', and not \"ca\""
            )));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| TlsError::io(dir, &e))?;
    let failed = |what: &str, e: rcgen::Error| TlsError::Generate(format!("{what}: {e}"));
    let ca_key = KeyPair::generate().map_err(|e| failed("CA key", e))?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "platform development CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut ca);
    let ca_cert = ca.self_signed(&ca_key).map_err(|e| failed("CA", e))?;
    write(&dir.join("ca.pem"), ca_cert.pem().as_bytes(), PUBLIC)?;
    let issuer = Issuer::new(ca, ca_key);
    for name in identities {
        let key = KeyPair::generate().map_err(|e| failed(name, e))?;
        let mut leaf = CertificateParams::new(vec![identity_dns_name(name), "localhost".into()])
            .map_err(|e| failed(name, e))?;
        leaf.subject_alt_names
            .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
        leaf.distinguished_name.push(DnType::CommonName, *name);
        leaf.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        validity(&mut leaf);
        let cert = leaf.signed_by(&key, &issuer).map_err(|e| failed(name, e))?;
        write(
            &dir.join(format!("{name}.pem")),
            cert.pem().as_bytes(),
            PUBLIC,
        )?;
        write(
            &dir.join(format!("{name}.key")),
            key.serialize_pem().as_bytes(),
            PRIVATE,
        )?;
    }
    Ok(())
}

/// File modes: certificates are public, keys readable by their owner only
/// (from the moment they are created, not after a `chmod`).
const PUBLIC: u32 = 0o644;
const PRIVATE: u32 = 0o600;

fn validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(VALID_DAYS);
}

/// Writes a file through a temporary name and a rename, so a process that
/// reloads it never reads half a certificate; `mode` applies on Unix.
fn write(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write as _;
    let temporary = path.with_extension("tmp");
    let _ = std::fs::remove_file(&temporary);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(&temporary)
        .map_err(|e| TlsError::io(&temporary, &e))?;
    file.write_all(contents)
        .map_err(|e| TlsError::io(&temporary, &e))?;
    std::fs::rename(&temporary, path).map_err(|e| TlsError::io(path, &e))
}
