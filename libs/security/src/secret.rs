//! Secrets in memory: one type for every key, password and token the apps
//! hold, so none is printed, logged or left in freed memory by accident.

use zeroize::Zeroizing;

/// The worker's webhook signing key in development (the quick start).
pub const DEVELOPMENT_WEBHOOK_KEY: &str = "local-development-webhook-secret";

/// Every secret default this repository ships, all declared here: a
/// production process refuses them whatever their length.
pub const SHIPPED_DEFAULTS: &[&str] = &[DEVELOPMENT_WEBHOOK_KEY, DEVELOPMENT_KEY_PEPPER];

/// The gateway's API-key pepper when `GATEWAY_KEY_PEPPER` is unset in
/// development: public, so keys made with it protect nothing.
pub const DEVELOPMENT_KEY_PEPPER: &str = "local-development-api-key-pepper";

/// The shortest secret production accepts, in bytes (256 bits of key).
pub const MIN_PRODUCTION_BYTES: usize = 32;

/// A secret value: `Debug` and `Display` print `***`, the bytes are
/// zeroised when the last copy is dropped, and the only way to the value
/// is [`Secret::expose`], which names what it does.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(Zeroizing::new(value.into()))
    }

    /// The secret's bytes, for signing or connecting; never for printing.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Why production must not run with this value: shorter than
    /// [`MIN_PRODUCTION_BYTES`] or one of the [`SHIPPED_DEFAULTS`]. The
    /// answer never contains the value.
    pub fn weakness(&self) -> Option<String> {
        if SHIPPED_DEFAULTS.contains(&self.0.as_str()) {
            return Some("is a development default shipped in the repository".into());
        }
        if self.0.len() < MIN_PRODUCTION_BYTES {
            return Some(format!(
                "is {} bytes; production needs at least {MIN_PRODUCTION_BYTES} random bytes",
                self.0.len()
            ));
        }
        None
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints() {
        let secret = Secret::new("hunter2-hunter2-hunter2");
        assert_eq!(format!("{secret:?}"), "Secret(***)");
        assert_eq!(format!("{secret}"), "***");
        assert_eq!(
            format!("{:#?}", Some(secret.clone())),
            "Some(\n    Secret(***),\n)"
        );
        assert_eq!(secret.expose(), b"hunter2-hunter2-hunter2");
    }

    #[test]
    fn weak_values_are_named_without_the_value() {
        assert_eq!(
            Secret::new("local-development-webhook-secret")
                .weakness()
                .as_deref(),
            Some("is a development default shipped in the repository")
        );
        let short = Secret::new("short-but-not-shipped");
        let weakness = short.weakness().unwrap_or_default();
        assert!(weakness.starts_with("is 21 bytes"), "{weakness}");
        assert!(!weakness.contains("short-but"));
        assert_eq!(Secret::new("k".repeat(32)).weakness(), None);
    }
}
