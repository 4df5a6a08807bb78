//! When certificates expire, as the gauge `tls_certificate_expiry_seconds`
//! per loaded certificate file, so an alert fires weeks before a rotation
//! is missed rather than at the first refused handshake.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock},
};

use rustls::pki_types::CertificateDer;

use super::ReloadingCert;

/// What the gauge reports: a reloading leaf (its current certificate) or a
/// CA read once.
enum Watched {
    Leaf(Arc<ReloadingCert>),
    Authority(CertificateDer<'static>),
}

/// Every certificate this process has loaded, by file; a later load of the
/// same file replaces the earlier entry.
fn watched() -> &'static Mutex<BTreeMap<PathBuf, Watched>> {
    static WATCHED: OnceLock<Mutex<BTreeMap<PathBuf, Watched>>> = OnceLock::new();
    WATCHED.get_or_init(|| {
        // The meter provider keeps the callback; the handle is not needed.
        let _gauge = opentelemetry::global::meter("platform.security")
            .f64_observable_gauge("tls_certificate_expiry_seconds")
            .with_description(
                "Seconds until each loaded TLS certificate expires (negative once expired)",
            )
            .with_unit("s")
            .with_callback(|observer| {
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                let watched = watched()
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for (path, certificate) in watched.iter() {
                    let not_after = match certificate {
                        Watched::Leaf(cert) => {
                            cert.current().cert.first().and_then(|c| not_after(c))
                        }
                        Watched::Authority(ca) => not_after(ca),
                    };
                    if let Some(not_after) = not_after {
                        observer.observe(
                            (not_after - now) as f64,
                            &[opentelemetry::KeyValue::new(
                                "certificate",
                                path.display().to_string(),
                            )],
                        );
                    }
                }
            })
            .build();
        Mutex::new(BTreeMap::new())
    })
}

/// Reports the leaf in `cert` (following reloads) and each CA certificate.
pub(super) fn publish(
    cert: Arc<ReloadingCert>,
    ca_path: PathBuf,
    ca: Vec<CertificateDer<'static>>,
) {
    let mut watched = watched()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    watched.insert(cert.cert.clone(), Watched::Leaf(cert));
    // A bundle of several CAs reports the one that expires first.
    if let Some(first) = ca
        .into_iter()
        .min_by_key(|c| not_after(c).unwrap_or(i64::MAX))
    {
        watched.insert(ca_path, Watched::Authority(first));
    }
}

/// The end of an X.509 certificate's validity, in seconds since the Unix
/// epoch; `None` when the DER does not have the expected shape. Reads only
/// the path to `tbsCertificate.validity.notAfter` (RFC 5280 §4.1): the
/// certificate was already verified, so no other field matters here.
pub(super) fn not_after(der: &[u8]) -> Option<i64> {
    let (certificate, _) = read(der, SEQUENCE)?;
    let (tbs, _) = read(certificate, SEQUENCE)?;
    let mut fields = tbs;
    if fields.first() == Some(&EXPLICIT_VERSION) {
        fields = skip(fields)?;
    }
    // serialNumber, signature, issuer
    for _ in 0..3 {
        fields = skip(fields)?;
    }
    let (validity, _) = read(fields, SEQUENCE)?;
    let not_after = skip(validity)?;
    let tag = *not_after.first()?;
    let (text, _) = read(not_after, tag)?;
    asn1_time(tag, std::str::from_utf8(text).ok()?)
}

const SEQUENCE: u8 = 0x30;
const EXPLICIT_VERSION: u8 = 0xa0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// Splits a DER element with `tag` off `input`: (contents, rest).
fn read(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *input.first()? != tag {
        return None;
    }
    let first = *input.get(1)? as usize;
    let (length, start) = if first < 0x80 {
        (first, 2)
    } else {
        let octets = first & 0x7f;
        if octets == 0 || octets > 4 {
            return None;
        }
        let length = input
            .get(2..2 + octets)?
            .iter()
            .fold(0usize, |n, b| (n << 8) | *b as usize);
        (length, 2 + octets)
    };
    let end = start.checked_add(length)?;
    Some((input.get(start..end)?, input.get(end..)?))
}

/// Skips one DER element of any tag.
fn skip(input: &[u8]) -> Option<&[u8]> {
    read(input, *input.first()?).map(|(_, rest)| rest)
}

/// `YYMMDDHHMMSSZ` (UTCTime, years 1950–2049) or `YYYYMMDDHHMMSSZ`.
fn asn1_time(tag: u8, text: &str) -> Option<i64> {
    let digits = text.strip_suffix('Z')?;
    let (year, rest) = match (tag, digits.len()) {
        (UTC_TIME, 12) => {
            let yy: i32 = digits.get(..2)?.parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &digits[2..])
        }
        (GENERALIZED_TIME, 14) => (digits.get(..4)?.parse().ok()?, &digits[4..]),
        _ => return None,
    };
    let two = |at: usize| -> Option<u8> { rest.get(at..at + 2)?.parse().ok() };
    let month = time::Month::try_from(two(0)?).ok()?;
    let date = time::Date::from_calendar_date(year, month, two(2)?).ok()?;
    let clock = time::Time::from_hms(two(4)?, two(6)?, two(8)?).ok()?;
    Some(
        time::PrimitiveDateTime::new(date, clock)
            .assume_utc()
            .unix_timestamp(),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a panic is the test failure report")]

    use super::*;

    fn certificate_valid_until(not_after: time::OffsetDateTime) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["worker.platform.internal".into()]).unwrap();
        params.not_after = not_after;
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_not_after_in_both_time_forms() {
        // rcgen writes UTCTime up to 2049 and GeneralizedTime from 2050.
        for year in [2031, 2049, 2050, 2107] {
            let expected = time::Date::from_calendar_date(year, time::Month::March, 7)
                .unwrap()
                .with_hms(13, 5, 9)
                .unwrap()
                .assume_utc();
            let der = certificate_valid_until(expected);
            assert_eq!(not_after(&der), Some(expected.unix_timestamp()), "{year}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_certificate() {
        assert_eq!(not_after(b""), None);
        assert_eq!(not_after(&[0x30, 0x82, 0xff]), None);
        let der = certificate_valid_until(time::OffsetDateTime::now_utc());
        for cut in [1, 10, der.len() / 2] {
            assert_eq!(not_after(&der[..cut]), None, "cut at {cut}");
        }
    }
}
