//! Certificates, keys and CA bundles from PEM (a file or inline text), checked before they can
//! serve: the chain parses, the key is one the crypto provider can sign with and matches the
//! leaf's public key, and the leaf has not expired. Every error names its source (the
//! certificate's name and the file or `cert_pem`), so an operator knows what to fix.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    RootCertStore,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    sign::CertifiedKey,
};

use crate::config::CertificateConfig;

/// Where some PEM came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PemSource {
    File(PathBuf),
    /// Inline text; the string names the field (`cert_pem`, `ca_pem`, ...).
    Inline(&'static str),
}

impl fmt::Display for PemSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PemSource::File(path) => write!(f, "{}", path.display()),
            PemSource::Inline(field) => write!(f, "inline {field}"),
        }
    }
}

/// Why a certificate, key or CA bundle was refused.
#[derive(Debug, thiserror::Error)]
#[error("{what} ({source_name}): {problem}")]
pub struct LoadError {
    /// `certificate "site"`, `virtual_hosts[2] client CA`, ...
    pub what: String,
    pub source_name: PemSource,
    pub problem: Problem,
}

#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("cannot read: {0}")]
    Read(#[from] std::io::Error),
    #[error("not valid PEM: {0}")]
    Pem(String),
    #[error("no CERTIFICATE block in the PEM")]
    NoCertificate,
    #[error("no PRIVATE KEY block (PKCS#8, RSA or EC) in the PEM")]
    NoKey,
    #[error("not a valid X.509 certificate")]
    Malformed,
    #[error("the private key cannot be used: {0}")]
    UnusableKey(rustls::Error),
    #[error("the private key does not match the certificate")]
    KeyMismatch,
    #[error("expired at {} (unix {not_after})", format_unix(*not_after))]
    Expired { not_after: i64 },
    #[error("no usable CA certificate in the bundle")]
    NoCa,
}

/// A certificate that passed every check, ready to serve.
#[derive(Debug, Clone)]
pub struct LoadedCertificate {
    pub name: String,
    pub key: Arc<CertifiedKey>,
    /// Validity of the leaf certificate, unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

/// Reads `path` or takes `inline`; exactly one is expected (validation saw to it).
fn read_pem(
    path: Option<&Path>,
    inline: Option<&str>,
    field: &'static str,
) -> (PemSource, Result<Vec<u8>, Problem>) {
    match (path, inline) {
        (Some(path), _) => (PemSource::File(path.to_owned()), std::fs::read(path).map_err(Problem::Read)),
        (None, Some(text)) => (PemSource::Inline(field), Ok(text.as_bytes().to_vec())),
        (None, None) => (PemSource::Inline(field), Err(Problem::Pem("nothing given".into()))),
    }
}

fn certificates_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, Problem> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Problem::Pem(e.to_string()))?;
    if chain.is_empty() {
        return Err(Problem::NoCertificate);
    }
    Ok(chain)
}

/// Loads and checks one configured certificate. `now` is unix seconds.
pub fn load_certificate(
    config: &CertificateConfig,
    provider: &CryptoProvider,
    now: i64,
) -> Result<LoadedCertificate, LoadError> {
    let what = format!("certificate {:?}", config.name);
    let fail =
        |source_name: PemSource, problem: Problem| LoadError { what: what.clone(), source_name, problem };
    let (cert_source, cert_pem) =
        read_pem(config.cert_path.as_deref(), config.cert_pem.as_deref(), "cert_pem");
    let chain =
        cert_pem.and_then(|pem| certificates_from_pem(&pem)).map_err(|p| fail(cert_source.clone(), p))?;
    let (not_before, not_after) =
        validity(&chain[0]).ok_or_else(|| fail(cert_source.clone(), Problem::Malformed))?;
    if not_after < now {
        return Err(fail(cert_source, Problem::Expired { not_after }));
    }
    let (key_source, key_pem) =
        read_pem(config.key_path.as_deref(), config.key_pem.as_ref().map(|k| k.0.as_str()), "key_pem");
    let key = key_pem
        .and_then(|pem| match PrivateKeyDer::from_pem_slice(&pem) {
            Ok(key) => Ok(key),
            Err(rustls::pki_types::pem::Error::NoItemsFound) => Err(Problem::NoKey),
            Err(e) => Err(Problem::Pem(e.to_string())),
        })
        .map_err(|p| fail(key_source.clone(), p))?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| fail(key_source.clone(), Problem::UnusableKey(e)))?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(fail(key_source, Problem::KeyMismatch));
        }
        // The provider cannot tell for this key type; the first handshake will.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => return Err(fail(cert_source, Problem::Malformed)),
    }
    if not_before > now {
        tracing::warn!(certificate = %config.name, not_before, "certificate is not valid yet; serving it anyway");
    }
    Ok(LoadedCertificate { name: config.name.clone(), key: Arc::new(certified), not_before, not_after })
}

/// Loads a CA bundle (for client certificates or upstream verification).
pub fn load_ca_bundle(
    what: &str,
    path: Option<&Path>,
    inline: Option<&str>,
    field: &'static str,
) -> Result<(RootCertStore, Vec<u8>), LoadError> {
    let (source_name, pem) = read_pem(path, inline, field);
    let fail = |problem| LoadError { what: what.to_owned(), source_name: source_name.clone(), problem };
    let pem = pem.map_err(fail)?;
    let certificates = certificates_from_pem(&pem).map_err(fail)?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certificates);
    if added == 0 {
        return Err(fail(Problem::NoCa));
    }
    Ok((roots, pem))
}

/// A new self-signed certificate (ECDSA P-256) with this subject common name and organization
/// and these DNS names: its chain and key, in PEM.
pub fn self_signed(
    common_name: &str,
    organization: &str,
    names: &[&str],
) -> Result<(String, String), String> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = rcgen::CertificateParams::new(names).map_err(|e| e.to_string())?;
    params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
    params.distinguished_name.push(rcgen::DnType::OrganizationName, organization);
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let certificate = params.self_signed(&key).map_err(|e| e.to_string())?;
    Ok((certificate.pem(), key.serialize_pem()))
}

/// A short fingerprint of some bytes (FNV-1a), to tell when a CA file's content changed.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// `YYYY-MM-DD HH:MM:SS UTC` for error messages.
pub fn format_unix(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let rest = seconds.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rest / 3600, rest / 60 % 60, rest % 60)
}

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// One DER element: (tag, contents, rest). Definite lengths only, as DER requires.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let length = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, after) = rest.split_at(count);
        rest = after;
        bytes.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b))
    };
    if rest.len() < length {
        return None;
    }
    let (contents, rest) = rest.split_at(length);
    Some((tag, contents, rest))
}

/// The leaf's validity (notBefore, notAfter) in unix seconds, read from the DER:
/// Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
/// signature, issuer, validity SEQUENCE { notBefore, notAfter }, ... }, ... }.
pub fn validity(certificate: &[u8]) -> Option<(i64, i64)> {
    const SEQUENCE: u8 = 0x30;
    let (tag, certificate, _) = der_element(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = der_element(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, _, mut rest) = der_element(tbs)?;
    if tag == 0xa0 {
        // The explicit version came first; the serial number is next.
        (_, _, rest) = der_element(rest)?;
    }
    let (_signature, _, rest) = der_element(rest)?;
    let (_issuer, _, rest) = der_element(rest)?;
    let (tag, validity, _) = der_element(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, not_before, rest) = der_element(validity)?;
    let not_before = der_time(tag, not_before)?;
    let (tag, not_after, _) = der_element(rest)?;
    let not_after = der_time(tag, not_after)?;
    Some((not_before, not_after))
}

/// UTCTime (`YYMMDDHHMMSSZ`, years 1950-2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn der_time(tag: u8, value: &[u8]) -> Option<i64> {
    let digits = |s: &[u8]| -> Option<i64> {
        s.iter().try_fold(0i64, |n, b| b.is_ascii_digit().then(|| n * 10 + i64::from(b - b'0')))
    };
    let (year, rest) = match (tag, value.len()) {
        (0x17, 13) => {
            let yy = digits(&value[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &value[2..])
        }
        (0x18, 15) => (digits(&value[..4])?, &value[4..]),
        _ => return None,
    };
    if rest.last() != Some(&b'Z') {
        return None;
    }
    let field = |i: usize| digits(&rest[i..i + 2]);
    let (month, day, hour, minute, second) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_both_encodings() {
        assert_eq!(der_time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(der_time(0x17, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(der_time(0x18, b"20380119031408Z"), Some(2_147_483_648));
        assert_eq!(der_time(0x18, b"99991231235959Z"), Some(253_402_300_799));
        assert_eq!(der_time(0x17, b"701301000000Z"), None);
        assert_eq!(der_time(0x17, b"7001010000000"), None);
        assert_eq!(der_time(0x04, b"700101000000Z"), None);
        assert_eq!(format_unix(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }

    #[test]
    fn garbage_der_has_no_validity() {
        assert_eq!(validity(b""), None);
        assert_eq!(validity(b"\x30\x82\xff\xff"), None);
        assert_eq!(validity(&[0x30, 0x03, 0x30, 0x01, 0x00]), None);
    }
}
