//! Operator passwords: the policy a new one must meet, and argon2id
//! hashing off the async runtime.
//!
//! Why a semaphore and blocking threads: one argon2id hash with OWASP's
//! parameters (19 MiB, two passes) takes tens of milliseconds of one core;
//! on the runtime's threads a burst of logins would stall every other
//! request. Unknown users are checked against a dummy hash made with the
//! same parameters, so a login's timing does not say whether the account
//! exists.

use std::sync::{Arc, LazyLock};

use argon2::{
    Algorithm, Argon2, Params, Version,
    password_hash::{PasswordHasher as _, PasswordVerifier as _, phc::PasswordHash},
};

/// Shortest password accepted (NIST SP 800-63B asks at least 8; we ask
/// more of people who can stop the platform).
pub const MIN_LENGTH: usize = 12;
/// Longest password accepted (bounds the hashing work one request causes).
pub const MAX_LENGTH: usize = 128;

/// The 19,641 most common passwords, lowercased (Django 5.2.8's list,
/// BSD-3-Clause, compiled by Royce Williams; see the console's README).
const COMMON: &str = include_str!("common-passwords.txt");

static COMMON_SET: LazyLock<std::collections::HashSet<&'static str>> =
    LazyLock::new(|| COMMON.lines().filter(|l| !l.is_empty()).collect());

/// Why a new password is refused; the text names the problem for the form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Weak {
    /// Fewer than [`MIN_LENGTH`] characters.
    #[error("password: must be at least {MIN_LENGTH} characters, got {0}")]
    TooShort(usize),
    /// More than [`MAX_LENGTH`] characters.
    #[error("password: must be at most {MAX_LENGTH} characters, got {0}")]
    TooLong(usize),
    /// On the list of common passwords.
    #[error("password: is one of the 20,000 most common passwords; choose another")]
    Common,
    /// Contains the username.
    #[error("password: must not contain the username")]
    ContainsUsername,
}

/// Checks a new password against the policy.
pub fn check_policy(password: &str, username: &str) -> Result<(), Weak> {
    let length = password.chars().count();
    if length < MIN_LENGTH {
        return Err(Weak::TooShort(length));
    }
    if length > MAX_LENGTH {
        return Err(Weak::TooLong(length));
    }
    let lower = password.to_lowercase();
    if COMMON_SET.contains(lower.as_str()) {
        return Err(Weak::Common);
    }
    if !username.is_empty() && lower.contains(&username.to_lowercase()) {
        return Err(Weak::ContainsUsername);
    }
    Ok(())
}

/// Hashing failed (a fault, not a wrong password).
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// argon2 refused its input or a stored hash does not parse.
    #[error("password hash: {0}")]
    Argon2(String),
    /// The blocking task died.
    #[error("password hash task: {0}")]
    Task(String),
}

/// Hashes and verifies on blocking threads, at most `permits` at once.
#[derive(Debug, Clone)]
pub struct Hasher {
    permits: Arc<tokio::sync::Semaphore>,
    dummy: Arc<String>,
}

/// argon2id with OWASP's first recommended setting: m = 19 MiB, t = 2, p = 1.
fn argon2() -> Result<Argon2<'static>, HashError> {
    let params =
        Params::new(19 * 1024, 2, 1, None).map_err(|e| HashError::Argon2(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

fn hash_now(password: &str) -> Result<String, HashError> {
    Ok(argon2()?
        .hash_password(password.as_bytes())
        .map_err(|e| HashError::Argon2(e.to_string()))?
        .to_string())
}

fn verify_now(password: &str, stored: &str) -> Result<bool, HashError> {
    let parsed = PasswordHash::new(stored).map_err(|e| HashError::Argon2(e.to_string()))?;
    // The parameters come from the stored string, so older hashes verify.
    Ok(Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok())
}

impl Hasher {
    /// A hasher running at most `permits` hashes at once; makes the dummy
    /// hash (one hash's time, at start).
    pub fn new(permits: usize) -> Result<Self, HashError> {
        Ok(Self {
            permits: Arc::new(tokio::sync::Semaphore::new(permits.max(1))),
            dummy: Arc::new(hash_now("the dummy password nobody has")?),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, HashError> + Send + 'static,
    ) -> Result<T, HashError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| HashError::Task(e.to_string()))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| HashError::Task(e.to_string()))?
    }

    /// A PHC string for a new password.
    pub async fn hash(&self, password: &str) -> Result<String, HashError> {
        let password = zeroize::Zeroizing::new(password.to_owned());
        self.blocking(move || hash_now(&password)).await
    }

    /// Whether `password` matches `stored`; with no stored hash (unknown
    /// user) checks against the dummy and answers false, taking as long.
    pub async fn verify(&self, password: &str, stored: Option<&str>) -> Result<bool, HashError> {
        let password = zeroize::Zeroizing::new(password.to_owned());
        let known = stored.is_some();
        let stored = stored.map_or_else(|| self.dummy.as_str().to_owned(), str::to_owned);
        let matched = self
            .blocking(move || verify_now(&password, &stored))
            .await?;
        Ok(known && matched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_names_what_is_wrong() {
        assert_eq!(check_policy("short", "ada"), Err(Weak::TooShort(5)));
        assert_eq!(
            check_policy(&"x".repeat(129), "ada"),
            Err(Weak::TooLong(129))
        );
        // On the list, in any case.
        assert_eq!(check_policy("PASSWORD1234", "ada"), Err(Weak::Common));
        assert_eq!(
            check_policy("ada-lovelace-1815", "ada"),
            Err(Weak::ContainsUsername)
        );
        assert_eq!(check_policy("correct horse battery staple", "ada"), Ok(()));
        assert!(COMMON_SET.len() >= 10_000, "{}", COMMON_SET.len());
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_only_and_unknown_users_never_match() {
        let hasher = Hasher::new(2).unwrap();
        let hash = hasher.hash("correct horse battery staple").await.unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(
            hasher
                .verify("correct horse battery staple", Some(&hash))
                .await
                .unwrap()
        );
        assert!(
            !hasher
                .verify("correct horse battery stapler", Some(&hash))
                .await
                .unwrap()
        );
        // The dummy's own password does not log an unknown user in.
        assert!(
            !hasher
                .verify("the dummy password nobody has", None)
                .await
                .unwrap()
        );
    }
}
