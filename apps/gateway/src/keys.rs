//! API keys: what a tenant's client presents, and how the gateway stores
//! and checks it without ever storing it.
//!
//! A key is `plk.<tenant>.<key id>.<secret>`: the tenant and a 64-bit key
//! id (16 hex digits) say where to look, so a lookup never crosses
//! tenants; the secret is 256 random bits (43 base64url characters). Only
//! HMAC-SHA256(pepper, secret) is stored, with the pepper's id, so the
//! pepper can rotate: keys made under the previous pepper keep working
//! while it is still configured. Checking compares in constant time.

use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

/// The fixed first part of every key, so scanners and people recognise it.
pub const KEY_PREFIX: &str = "plk";

/// A tenant id: 1 to 63 lowercase letters, digits and `-`, starting with
/// a letter or digit (it also names the tenant in URLs and logs).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    /// Parses a tenant id, saying what is wrong.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let valid_start = raw
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if raw.is_empty() || raw.len() > 63 {
            return Err("must be 1 to 63 characters".into());
        }
        if !valid_start
            || !raw
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(
                "must be lowercase letters, digits and '-', starting with a letter or digit".into(),
            );
        }
        Ok(Self(raw.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TenantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A key's public id within its tenant: 16 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    /// A fresh random id.
    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self(bytes.iter().map(|b| format!("{b:02x}")).collect()))
    }

    /// Parses a key id.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.len() == 16
            && raw
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        {
            Ok(Self(raw.to_owned()))
        } else {
            Err("must be 16 lowercase hex digits".into())
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a key could not be made or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text is not a key of this platform (the reason names the part).
    #[error("not a platform API key: {0}")]
    Malformed(String),
    /// The operating system's random source failed.
    #[error("no random bytes for a key: {0}")]
    Random(String),
}

/// A key as the client presents it. `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Whose key.
    pub tenant: TenantId,
    /// Which key.
    pub id: KeyId,
    secret: [u8; 32],
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKey({KEY_PREFIX}.{}.{}.***)", self.tenant, self.id)
    }
}

impl ApiKey {
    /// A new key for `tenant` with a random id and secret.
    pub fn generate(tenant: TenantId) -> Result<Self, KeyError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self {
            tenant,
            id: KeyId::generate()?,
            secret,
        })
    }

    /// Parses `plk.<tenant>.<key id>.<secret>`.
    pub fn parse(raw: &str) -> Result<Self, KeyError> {
        let malformed = |what: &str| KeyError::Malformed(what.to_owned());
        let mut parts = raw.split('.');
        if parts.next() != Some(KEY_PREFIX) {
            return Err(malformed("it must start with plk."));
        }
        let tenant = parts.next().ok_or_else(|| malformed("no tenant"))?;
        let tenant = TenantId::parse(tenant).map_err(|e| malformed(&format!("tenant {e}")))?;
        let id = parts.next().ok_or_else(|| malformed("no key id"))?;
        let id = KeyId::parse(id).map_err(|e| malformed(&format!("key id {e}")))?;
        let secret = parts.next().ok_or_else(|| malformed("no secret"))?;
        if parts.next().is_some() {
            return Err(malformed("too many parts"));
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(secret)
            .map_err(|_| malformed("the secret is not base64url"))?;
        let secret: [u8; 32] = bytes
            .try_into()
            .map_err(|_| malformed("the secret must be 32 bytes"))?;
        Ok(Self { tenant, id, secret })
    }

    /// The key as text, to show once and never again.
    pub fn reveal(&self) -> String {
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.secret);
        format!("{KEY_PREFIX}.{}.{}.{secret}", self.tenant, self.id)
    }

    /// HMAC-SHA256 of the secret under `pepper`: what is stored.
    pub fn digest(&self, pepper: &Pepper) -> Vec<u8> {
        pepper.mac(&self.secret).finalize().into_bytes().to_vec()
    }

    /// Whether `stored` is this key's digest under `pepper`, compared in
    /// constant time.
    pub fn matches(&self, pepper: &Pepper, stored: &[u8]) -> bool {
        pepper.mac(&self.secret).verify_slice(stored).is_ok()
    }
}

/// A server-side HMAC key with its id (stored beside every digest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pepper {
    /// Stored with each key's digest, to find the pepper again.
    pub id: String,
    /// The HMAC key.
    pub key: security::Secret,
}

impl Pepper {
    fn mac(&self, secret: &[u8]) -> Hmac<Sha256> {
        // HMAC takes keys of any length; this cannot fail.
        let mut mac = <Hmac<Sha256> as hmac::Mac>::new_from_slice(self.key.expose())
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        mac.update(secret);
        mac
    }
}

/// What a key allows. Stored as text; unknown scopes are refused when a key
/// is made.
pub const SCOPES: [&str; 4] = [
    "readings:write",
    "results:read",
    "webhooks:manage",
    "keys:manage",
];

/// Checks every scope in `scopes` is one of [`SCOPES`], naming the first
/// that is not.
pub fn parse_scopes(scopes: &[String]) -> Result<Vec<String>, String> {
    if scopes.is_empty() {
        return Err(format!(
            "at least one scope is needed: {}",
            SCOPES.join(", ")
        ));
    }
    for scope in scopes {
        if !SCOPES.contains(&scope.as_str()) {
            return Err(format!(
                "unknown scope {scope:?} (known: {})",
                SCOPES.join(", ")
            ));
        }
    }
    let mut scopes = scopes.to_vec();
    scopes.sort();
    scopes.dedup();
    Ok(scopes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a panic is the test failure report")]

    use proptest::prelude::*;

    use super::*;

    fn pepper(key: &str) -> Pepper {
        Pepper {
            id: "p1".into(),
            key: security::Secret::new(key),
        }
    }

    #[test]
    fn a_key_reads_back_and_matches_only_its_digest_under_its_pepper() {
        let key = ApiKey::generate(TenantId::parse("acme").unwrap()).unwrap();
        let text = key.reveal();
        assert!(text.starts_with("plk.acme."), "{text}");
        assert_eq!(ApiKey::parse(&text).unwrap(), key);
        assert!(!format!("{key:?}").contains(&text[text.len() - 20..]));
        let stored = key.digest(&pepper("first pepper"));
        assert!(key.matches(&pepper("first pepper"), &stored));
        assert!(!key.matches(&pepper("second pepper"), &stored));
        let other = ApiKey::generate(TenantId::parse("acme").unwrap()).unwrap();
        assert!(!other.matches(&pepper("first pepper"), &stored));
    }

    #[test]
    fn malformed_keys_name_the_part_at_fault() {
        let key = ApiKey::generate(TenantId::parse("acme").unwrap())
            .unwrap()
            .reveal();
        for (bad, part) in [
            ("", "plk."),
            ("plk", "no tenant"),
            ("plk.Acme.0123456789abcdef.x", "tenant"),
            ("plk.acme.0123", "key id"),
            ("plk.acme.0123456789abcdef", "no secret"),
            ("plk.acme.0123456789abcdef.!!", "base64url"),
            ("plk.acme.0123456789abcdef.AAAA", "32 bytes"),
        ] {
            let error = ApiKey::parse(bad).unwrap_err().to_string();
            assert!(error.contains(part), "{bad}: {error}");
        }
        assert!(
            ApiKey::parse(&format!("{key}.extra"))
                .unwrap_err()
                .to_string()
                .contains("too many")
        );
    }

    #[test]
    fn scopes_are_known_and_deduplicated() {
        assert_eq!(
            parse_scopes(&[
                "results:read".into(),
                "readings:write".into(),
                "results:read".into()
            ]),
            Ok(vec!["readings:write".into(), "results:read".into()])
        );
        assert!(
            parse_scopes(&["admin".into()])
                .unwrap_err()
                .contains("unknown scope \"admin\"")
        );
        assert!(parse_scopes(&[]).is_err());
    }

    proptest! {
        /// Any text either parses to a key that prints back as that text, or
        /// is refused; parsing never panics.
        #[test]
        fn parsing_any_text_round_trips_or_refuses(raw in ".{0,120}") {
            if let Ok(key) = ApiKey::parse(&raw) {
                prop_assert_eq!(key.reveal(), raw);
            }
        }

        /// Every generated key round-trips.
        #[test]
        fn generated_keys_round_trip(tenant in "[a-z0-9][a-z0-9-]{0,62}") {
            let key = ApiKey::generate(TenantId::parse(&tenant).unwrap()).unwrap();
            prop_assert_eq!(ApiKey::parse(&key.reveal()).unwrap(), key);
        }
    }
}
