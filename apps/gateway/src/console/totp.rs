//! Time-based one-time passwords (RFC 6238: HMAC-SHA1, 30-second steps,
//! six digits), the second factor admins must use, and recovery codes for
//! a lost authenticator.
//!
//! Why our own thirty lines: the algorithm is fixed by the RFC and tested
//! against its published vectors below; a crate would add its own base32,
//! QR and clock dependencies for what the console does not need.

use hmac::{Hmac, Mac as _};
use sha2::Digest as _;

/// Seconds per step.
const STEP: u64 = 30;
/// Steps either side of now that are accepted (clock drift).
const DRIFT: u64 = 1;

/// A new random secret (160 bits, the RFC's recommended length).
pub fn new_secret() -> Result<[u8; 20], getrandom::Error> {
    let mut secret = [0u8; 20];
    getrandom::fill(&mut secret)?;
    Ok(secret)
}

/// The code for `secret` at time step `counter` (RFC 4226's HOTP).
fn code_at(secret: &[u8], counter: u64) -> u32 {
    // HMAC takes a key of any length; new_from_slice cannot fail for it.
    let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(secret) else {
        return u32::MAX;
    };
    mac.update(&counter.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = usize::from(digest[19] & 0x0f);
    let binary = u32::from_be_bytes([
        digest[offset] & 0x7f,
        digest[offset + 1],
        digest[offset + 2],
        digest[offset + 3],
    ]);
    binary % 1_000_000
}

/// The six-digit code for `secret` at `unix_seconds`, as an
/// authenticator app shows it (tests and scripted logins use it).
pub fn code(secret: &[u8], unix_seconds: u64) -> String {
    format!("{:06}", code_at(secret, unix_seconds / STEP))
}

/// Whether `code` (six digits, spaces ignored) is right for `secret` at
/// `unix_seconds`, allowing one step of drift either way.
pub fn verify(secret: &[u8], code: &str, unix_seconds: u64) -> bool {
    matching_step(secret, code, unix_seconds).is_some()
}

/// The time step `code` is right for at `unix_seconds` (one step of drift
/// either way), or `None`. Signing in spends the step, so a code works
/// once ([`crate::storage::operators::OperatorStore::use_totp_step`]).
pub fn matching_step(secret: &[u8], code: &str, unix_seconds: u64) -> Option<u64> {
    let digits: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if digits.len() != 6 || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let wanted = digits.parse::<u32>().ok()?;
    let now = unix_seconds / STEP;
    let mut matched = None;
    // Every candidate is computed, so timing does not say which matched.
    for counter in now.saturating_sub(DRIFT)..=now + DRIFT {
        if code_at(secret, counter) == wanted {
            matched = Some(counter);
        }
    }
    matched
}

/// RFC 4648 base32 without padding, as authenticator apps take secrets.
pub fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// A 160-bit secret from its [`base32`] form (as the enrol form carries it
/// back); `None` for anything else.
pub fn secret_from_base32(raw: &str) -> Option<[u8; 20]> {
    let (mut buffer, mut bits) = (0u64, 0u32);
    let mut out = Vec::with_capacity(20);
    for c in raw.trim().chars() {
        let value = match c {
            'A'..='Z' => u32::from(c) - u32::from('A'),
            '2'..='7' => u32::from(c) - u32::from('2') + 26,
            _ => return None,
        };
        buffer = (buffer << 5) | u64::from(value);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(((buffer >> bits) & 0xff) as u8);
        }
    }
    out.try_into().ok()
}

/// The `otpauth://` URI an authenticator app imports.
pub fn provisioning_uri(secret: &[u8], username: &str) -> String {
    let label: String = username
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .collect();
    format!(
        "otpauth://totp/platform:{label}?secret={}&issuer=platform&algorithm=SHA1&digits=6&period=30",
        base32(secret)
    )
}

/// How many recovery codes an enrolment gives.
pub const RECOVERY_CODES: usize = 10;

/// Fresh recovery codes (`xxxxx-xxxxx`, 50 bits each) and their digests
/// (what is stored).
pub fn new_recovery_codes() -> Result<Vec<(String, [u8; 32])>, getrandom::Error> {
    const ALPHABET: &[u8; 32] = b"abcdefghjkmnpqrstuvwxyz023456789";
    let mut codes = Vec::with_capacity(RECOVERY_CODES);
    for _ in 0..RECOVERY_CODES {
        let mut raw = [0u8; 10];
        getrandom::fill(&mut raw)?;
        let mut code: String = raw
            .iter()
            .map(|b| char::from(ALPHABET[usize::from(b & 31)]))
            .collect();
        code.insert(5, '-');
        let digest = recovery_digest(&code);
        codes.push((code, digest));
    }
    Ok(codes)
}

/// The stored form of a recovery code (spaces and case ignored).
pub fn recovery_digest(code: &str) -> [u8; 32] {
    let normal: String = code
        .chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect();
    sha2::Sha256::digest(normal.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1 column (eight digits there; the last six
    /// are the six-digit code).
    #[test]
    fn codes_match_the_rfc_test_vectors() {
        let secret = b"12345678901234567890";
        for (time, eight) in [
            (59u64, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ] {
            assert_eq!(
                format!("{:06}", code_at(secret, time / STEP)),
                eight[2..],
                "at {time}"
            );
            assert!(verify(secret, &eight[2..], time), "at {time}");
        }
    }

    #[test]
    fn a_code_is_accepted_one_step_either_side_and_no_further() {
        let secret = b"12345678901234567890";
        let code = format!("{:06}", code_at(secret, 1000));
        assert!(verify(secret, &code, 1000 * STEP));
        assert!(verify(secret, &code, 999 * STEP));
        assert!(verify(secret, &code, 1001 * STEP + 29));
        assert!(!verify(secret, &code, 1002 * STEP));
        assert!(!verify(secret, &code, 998 * STEP + 29));
        assert!(!verify(secret, "12345", 1000 * STEP));
        assert!(!verify(secret, "12a456", 1000 * STEP));
    }

    #[test]
    fn base32_matches_rfc_4648() {
        for (input, output) in [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ] {
            assert_eq!(base32(input.as_bytes()), output);
        }
    }

    #[test]
    fn a_secret_round_trips_through_base32() {
        let secret = [
            7u8, 200, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 255,
        ];
        assert_eq!(secret_from_base32(&base32(&secret)), Some(secret));
        assert_eq!(secret_from_base32("not base32!"), None);
        assert_eq!(secret_from_base32("MZXW6"), None, "too short");
    }

    #[test]
    fn recovery_codes_are_distinct_and_their_digest_ignores_case_and_spaces() {
        let codes = new_recovery_codes().unwrap();
        assert_eq!(codes.len(), RECOVERY_CODES);
        let distinct: std::collections::HashSet<_> = codes.iter().map(|c| &c.0).collect();
        assert_eq!(distinct.len(), RECOVERY_CODES);
        let (code, digest) = &codes[0];
        assert_eq!(
            recovery_digest(&format!(" {} ", code.to_uppercase())),
            *digest
        );
    }
}
