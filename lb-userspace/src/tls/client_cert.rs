//! Client certificates as nginx's `ssl_verify_client on | optional | optional_no_ca | off`
//! (ingress-nginx's `auth-tls-*`): the handshake finishes whatever the client sends, as in
//! nginx, and the chain is checked once per connection right after it ([`ClientPolicy::check`]);
//! the HTTP side then answers each request by the outcome (400, the error page, 403 for a
//! subject that does not match) and passes `ssl-client-*` fields to the backends. The client's
//! signature over the handshake is always checked by rustls, so a certificate the client does
//! not hold the key of is never taken for its own.
//!
//! (`client_verify: handshake`, the default, keeps rustls's own check: a client without a valid
//! certificate fails the handshake.)

use std::{fmt::Write as _, sync::Arc};

use base64::Engine as _;
use http::{HeaderName, HeaderValue};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    pki_types::{CertificateDer, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
};

pub use crate::config::ClientVerify;

/// Lets the handshake finish with any certificate (or none): the chain is checked after it.
/// The handshake signatures are still the strict verifier's.
#[derive(Debug)]
pub struct Deferred(pub Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for Deferred {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A host's client-certificate policy (nginx-style modes).
#[derive(Debug)]
pub struct ClientPolicy {
    pub mode: ClientVerify,
    /// The strict verifier: the host's CA bundle and revocation lists.
    verifier: Arc<dyn ClientCertVerifier>,
    /// Most certificates in the chain below the CA (nginx `ssl_verify_depth`).
    depth: u8,
    pub pass_certificate: bool,
    /// Matched against the subject DN (`CN=client,O=Example`).
    pub match_cn: Option<regex::Regex>,
    /// Where to send a client whose certificate is missing or fails, instead of the 400.
    pub error_page: Option<HeaderValue>,
}

/// What a connection's client certificate turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No certificate was sent.
    None,
    Success,
    /// It failed; `forgiven` when `optional_no_ca` lets this failure through (an unknown CA).
    Failed {
        forgiven: bool,
    },
}

/// A connection's client certificate as the requests on it see it.
#[derive(Debug, Clone)]
pub struct ClientCertificate {
    pub outcome: Outcome,
    /// The subject DN as nginx's `$ssl_client_s_dn` (RFC 2253); empty without a certificate.
    pub subject_dn: String,
    /// `ssl-client-verify`, `ssl-client-subject-dn`, `ssl-client-issuer-dn` (and
    /// `ssl-client-cert` when passed on) as ingress-nginx sets them; empty ones are left out,
    /// as nginx leaves out a header set to an empty value.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// The fields of [`ClientCertificate::headers`]: a client's own are replaced.
pub const HEADER_NAMES: [&str; 4] =
    ["ssl-client-verify", "ssl-client-subject-dn", "ssl-client-issuer-dn", "ssl-client-cert"];

impl ClientPolicy {
    pub fn new(
        mode: ClientVerify,
        verifier: Arc<dyn ClientCertVerifier>,
        depth: u8,
        pass_certificate: bool,
        match_cn: Option<regex::Regex>,
        error_page: Option<HeaderValue>,
    ) -> ClientPolicy {
        ClientPolicy { mode, verifier, depth, pass_certificate, match_cn, error_page }
    }

    /// Checks the chain the client sent (after the handshake, once per connection).
    pub fn check(&self, chain: Option<&[CertificateDer<'_>]>) -> ClientCertificate {
        let Some((leaf, intermediates)) = chain.and_then(<[_]>::split_first) else {
            let headers = vec![(HeaderName::from_static(HEADER_NAMES[0]), HeaderValue::from_static("NONE"))];
            return ClientCertificate { outcome: Outcome::None, subject_dn: String::new(), headers };
        };
        // The CA itself, if the client sends it, is not a step of the chain.
        let steps = intermediates.iter().filter(|c| !self_issued(c)).count();
        let verified = if steps >= usize::from(self.depth) {
            Err(("certificate chain too long", false))
        } else {
            self.verifier.verify_client_cert(leaf, intermediates, UnixTime::now()).map_err(|e| reason(&e))
        };
        let (outcome, verify) = match verified {
            Ok(_) => (Outcome::Success, "SUCCESS".to_owned()),
            Err((why, unknown_ca)) => (
                Outcome::Failed { forgiven: unknown_ca && self.mode == ClientVerify::OptionalNoCa },
                format!("FAILED:{why}"),
            ),
        };
        let (subject_dn, issuer_dn) = distinguished_names(leaf).unwrap_or_default();
        let mut headers = Vec::with_capacity(4);
        let mut push = |name: &'static str, value: &str| {
            if let (false, Ok(value)) = (value.is_empty(), HeaderValue::from_str(value)) {
                headers.push((HeaderName::from_static(name), value));
            }
        };
        push(HEADER_NAMES[0], &verify);
        push(HEADER_NAMES[1], &subject_dn);
        push(HEADER_NAMES[2], &issuer_dn);
        if self.pass_certificate {
            push(HEADER_NAMES[3], &escaped_pem(leaf));
        }
        ClientCertificate { outcome, subject_dn, headers }
    }
}

/// OpenSSL's words for a verification failure (what nginx puts after `FAILED:`), and whether
/// it is one `optional_no_ca` forgives (the issuer is not a known CA).
fn reason(error: &Error) -> (&'static str, bool) {
    match error {
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            ("unable to get local issuer certificate", true)
        }
        Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            ("certificate has expired", false)
        }
        Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => ("certificate is not yet valid", false),
        Error::InvalidCertificate(CertificateError::Revoked) => ("certificate revoked", false),
        Error::InvalidCertificate(CertificateError::BadSignature) => ("certificate signature failure", false),
        Error::InvalidCertificate(
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. },
        ) => ("unsupported certificate purpose", false),
        _ => ("certificate verify error", false),
    }
}

pub(super) fn self_issued(der: &CertificateDer<'_>) -> bool {
    x509_parser::parse_x509_certificate(der.as_ref())
        .is_ok_and(|(_, c)| c.subject().as_raw() == c.issuer().as_raw())
}

/// Subject and issuer as OpenSSL's RFC 2253 form (nginx's `$ssl_client_s_dn`): the last RDN
/// first, `,` between them, `+` inside a multi-valued one.
fn distinguished_names(der: &CertificateDer<'_>) -> Option<(String, String)> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some((rfc2253(certificate.subject()), rfc2253(certificate.issuer())))
}

fn rfc2253(name: &x509_parser::x509::X509Name<'_>) -> String {
    let rdns: Vec<_> = name.iter().collect();
    let mut out = String::new();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, attribute) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let oid = attribute.attr_type().to_id_string();
            out.push_str(short_name(&oid).unwrap_or(&oid));
            out.push('=');
            match attribute.as_str() {
                Ok(value) => escape_into(&mut out, value),
                Err(_) => {
                    out.push('#');
                    for byte in attribute.attr_value().data.iter() {
                        let _ = write!(out, "{byte:02X}");
                    }
                }
            }
        }
    }
    out
}

fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "street",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.5" => "serialNumber",
        "2.5.4.4" => "SN",
        "2.5.4.42" => "GN",
        "2.5.4.12" => "title",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        "1.2.840.113549.1.9.1" => "emailAddress",
        _ => return None,
    })
}

/// RFC 2253 2.4: `,+"\<>;` escaped, and `#` or a space first, a space last.
fn escape_into(out: &mut String, value: &str) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
}

/// The certificate as PEM, URL-encoded (nginx's `$ssl_client_escaped_cert`): every byte but
/// letters, digits and `-._~` as `%XX`.
fn escaped_pem(der: &CertificateDer<'_>) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    let mut out = String::with_capacity(pem.len() * 3 / 2);
    for byte in pem.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinguished_names_read_as_openssl_writes_them() {
        let mut params = rcgen::CertificateParams::new(vec!["client.test".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CountryName, "DE");
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "Example, Inc");
        params.distinguished_name.push(rcgen::DnType::CommonName, "client #1");
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();
        let (subject, issuer) = distinguished_names(certificate.der()).unwrap();
        assert_eq!(subject, r"CN=client #1,O=Example\, Inc,C=DE");
        assert_eq!(issuer, subject);
        let escaped = escaped_pem(certificate.der());
        assert!(escaped.starts_with("-----BEGIN%20CERTIFICATE-----%0AMII"), "{escaped}");
        assert!(escaped.ends_with("%0A-----END%20CERTIFICATE-----%0A"), "{escaped}");
        assert!(!escaped.contains(['+', '/', '=', '\n', ' ']));
        let mut value = String::new();
        escape_into(&mut value, " #a;b ");
        assert_eq!(value, r"\ #a\;b\ ");
    }
}
