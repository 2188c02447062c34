//! `proxy-ssl-secret` and the `proxy-ssl-*` set refining it: TLS towards the pods as
//! ingress-nginx configures it (`internal/ingress/annotations/proxyssl`). Every refinement
//! means nothing without the Secret, as there; they shape the TLS of `backend-protocol: HTTPS`
//! (or `GRPCS`) backends only, as nginx's `proxy_ssl_*` directives do.
//!
//! Cipher lists are OpenSSL's syntax; rustls implements only ECDHE with AES-GCM or
//! ChaCha20-Poly1305 for TLS 1.2, so a list is read as the set it allows and rustls offers
//! the part of it that it implements. A list that allows none of them (and no TLS 1.3, whose
//! suites OpenSSL's list does not govern) refuses the Ingress: its backends could never be
//! reached as configured.

use super::{
    Annotations, Problem,
    Problem::{Expected, Refuse},
    Values,
};
use crate::config::TlsVersion;

type Result = std::result::Result<(), Problem>;

/// ingress-nginx's defaults with a `proxy-ssl-secret`.
const DEFAULT_DEPTH: u8 = 1;

/// `proxy-ssl-secret` and its refinements; the Secret is read by the translation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySslSetting {
    /// `NAMESPACE/NAME` or `NAME`: `tls.crt` and `tls.key` (the client certificate, optional)
    /// and `ca.crt` (the CAs that verify the pods' certificates).
    pub secret: String,
    /// `proxy-ssl-verify` (default off).
    pub verify: bool,
    /// `proxy-ssl-verify-depth` (default 1).
    pub verify_depth: u8,
    /// `proxy-ssl-name`: the name verified (and sent as SNI when `server_name`).
    pub name: Option<String>,
    /// `proxy-ssl-server-name` (default off: no SNI).
    pub server_name: bool,
    /// `proxy-ssl-protocols` (default TLSv1.2 only, ingress-nginx's default).
    pub versions: Vec<TlsVersion>,
    /// `proxy-ssl-ciphers` as rustls' TLS 1.2 suite names; empty: all of them (`DEFAULT`).
    pub cipher_suites: Vec<String>,
}

/// rustls' TLS 1.2 suites: OpenSSL's name, rustls' (IANA) name, key exchange + authentication
/// + cipher words as OpenSSL's aliases name them.
const SUITES: &[(&str, &str, &[&str])] = &[
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        &["aECDSA", "ECDSA", "AES128", "AES", "AESGCM", "SHA256"],
    ),
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        &["aECDSA", "ECDSA", "AES256", "AES", "AESGCM", "SHA384"],
    ),
    (
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        &["aECDSA", "ECDSA", "CHACHA20", "SHA256"],
    ),
    (
        "ECDHE-RSA-AES128-GCM-SHA256",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        &["aRSA", "RSA", "AES128", "AES", "AESGCM", "SHA256"],
    ),
    (
        "ECDHE-RSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        &["aRSA", "RSA", "AES256", "AES", "AESGCM", "SHA384"],
    ),
    (
        "ECDHE-RSA-CHACHA20-POLY1305",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        &["aRSA", "RSA", "CHACHA20", "SHA256"],
    ),
];

/// Words every rustls suite has: all, strong, forward secret (ECDHE), AEAD.
const EVERY_SUITE: &[&str] = &[
    "DEFAULT",
    "ALL",
    "HIGH",
    "ECDHE",
    "EECDH",
    "kECDHE",
    "kEECDH",
    "AEAD",
    "TLSv1.2",
    "COMPLEMENTOFDEFAULT",
];

/// Words of ciphers rustls never offers: excluding them changes nothing.
const NO_SUITE: &[&str] = &[
    "aNULL",
    "eNULL",
    "NULL",
    "COMPLEMENTOFALL",
    "MD5",
    "RC4",
    "DES",
    "3DES",
    "EXP",
    "EXPORT",
    "LOW",
    "MEDIUM",
    "PSK",
    "SRP",
    "DSS",
    "aDSS",
    "SHA1",
    "SHA",
    "CAMELLIA",
    "SEED",
    "IDEA",
    "ADH",
    "AECDH",
    "aECDH",
    "kRSA",
    "DHE",
    "EDH",
    "kDHE",
    "kEDH",
    "DH",
    "ECDH",
    "aDH",
    "kECDH",
    "CBC",
    "SSLv3",
    "ARIA",
    "CCM",
    "CCM8",
    "AESCCM",
    "AESCCM8",
    "KRB5",
    "aGOST",
    "GOST",
    "kGOST",
    "SHA1",
    "TLSv1",
    "TLSv1.0",
];

pub(super) fn proxy_ssl_secret(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    let name = |part: &str| {
        !part.is_empty()
            && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    };
    let valid = match v.split_once('/') {
        Some((namespace, secret)) => name(namespace) && name(secret),
        None => name(v),
    };
    if !valid {
        return Err(Expected("NAMESPACE/NAME or NAME"));
    }
    a.backend.proxy_ssl = Some(ProxySslSetting {
        secret: v.to_owned(),
        verify: false,
        verify_depth: DEFAULT_DEPTH,
        name: None,
        server_name: false,
        versions: vec![TlsVersion::Tls12],
        cipher_suites: Vec::new(),
    });
    Ok(())
}

/// Applies `set` to the proxy TLS settings; nothing without `proxy-ssl-secret`.
fn refine(a: &mut Annotations, set: impl FnOnce(&mut ProxySslSetting) -> Result) -> Result {
    match a.backend.proxy_ssl.as_mut() {
        Some(setting) => set(setting),
        None => Ok(()),
    }
}

fn on_off(v: &str) -> std::result::Result<bool, Problem> {
    match v {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(Expected("on or off (off is kept)")),
    }
}

pub(super) fn proxy_ssl_verify(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    refine(a, |s| {
        s.verify = on_off(v)?;
        Ok(())
    })
}

pub(super) fn proxy_ssl_server_name(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    refine(a, |s| {
        s.server_name = on_off(v)?;
        Ok(())
    })
}

pub(super) fn proxy_ssl_verify_depth(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    refine(a, |s| {
        // 0 is read as the default, as ingress-nginx does.
        s.verify_depth = match v.parse::<u8>() {
            Ok(0) => DEFAULT_DEPTH,
            Ok(depth) => depth,
            Err(_) => return Err(Expected("a depth from 1 to 255 (1 is kept)")),
        };
        Ok(())
    })
}

pub(super) fn proxy_ssl_name(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    refine(a, |s| {
        if !crate::config::valid_domain(&v.to_ascii_lowercase()) || v.starts_with("*.") {
            return Err(Expected("a server name"));
        }
        s.name = Some(v.to_ascii_lowercase());
        Ok(())
    })
}

/// `TLSv1.2` and/or `TLSv1.3`, space-separated; anything else keeps the default, as
/// ingress-nginx's check does (older versions are not offered by rustls either way).
pub(super) fn proxy_ssl_protocols(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    refine(a, |s| {
        let mut versions = Vec::new();
        for word in v.split_whitespace() {
            versions.push(match word {
                "TLSv1.2" => TlsVersion::Tls12,
                "TLSv1.3" => TlsVersion::Tls13,
                _ => return Err(Expected("TLSv1.2 and/or TLSv1.3 (TLSv1.2 is kept)")),
            });
        }
        versions.sort_unstable();
        versions.dedup();
        if versions.is_empty() {
            return Err(Expected("TLSv1.2 and/or TLSv1.3 (TLSv1.2 is kept)"));
        }
        s.versions = versions;
        Ok(())
    })
}

/// After `proxy-ssl-protocols` (table order): whether TLS 1.3 is offered decides whether a list
/// that allows no TLS 1.2 suite rustls has can still be served.
pub(super) fn proxy_ssl_ciphers(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    refine(a, |s| {
        let allowed = allowed_suites(v)?;
        if allowed.len() == SUITES.len() {
            s.cipher_suites = Vec::new();
        } else if !allowed.is_empty() {
            s.cipher_suites = allowed.iter().map(|&i| SUITES[i].1.to_owned()).collect();
        } else if s.versions.contains(&TlsVersion::Tls13) {
            // No TLS 1.2 suite is allowed: only TLS 1.3 can be spoken.
            s.versions = vec![TlsVersion::Tls13];
        } else {
            return Err(Refuse(
                "proxy-ssl-ciphers allows no cipher suite rustls implements (TLS 1.2: ECDHE with AES-GCM or ChaCha20-Poly1305); the backend could not be reached",
            ));
        }
        Ok(())
    })
}

/// The indexes into [`SUITES`] an OpenSSL cipher list allows, in rustls' order.
fn allowed_suites(list: &str) -> std::result::Result<Vec<usize>, Problem> {
    const SYNTAX: Problem = Expected("an OpenSSL cipher list (DEFAULT is kept)");
    if list.is_empty() || !list.bytes().all(|b| b.is_ascii_alphanumeric() || b"+:_-!.@=, ".contains(&b)) {
        return Err(SYNTAX);
    }
    let mut allowed = [false; SUITES.len()];
    let mut removed = [false; SUITES.len()];
    for word in list.split([':', ',', ' ']).filter(|w| !w.is_empty()) {
        if word.starts_with('@') {
            continue; // @STRENGTH, @SECLEVEL=n: ordering and levels, not the set.
        }
        let (exclude, body) = match word.as_bytes()[0] {
            b'!' | b'-' => (true, &word[1..]),
            b'+' => continue, // moves suites to the end: the set is unchanged.
            _ => (false, word),
        };
        let matched = matching(body);
        let Some(matched) = matched else {
            // A cipher or word rustls has none of: allows nothing, excluding it removes nothing.
            if body.is_empty() || body.contains('=') {
                return Err(SYNTAX);
            }
            continue;
        };
        for (i, hit) in matched.iter().enumerate() {
            if *hit && exclude {
                removed[i] = true;
            } else if *hit {
                allowed[i] = true;
            }
        }
    }
    Ok((0..SUITES.len()).filter(|&i| allowed[i] && !removed[i]).collect())
}

/// The suites a word (or `A+B`, all of them) names; `None` for a word that names none of
/// rustls' suites.
fn matching(word: &str) -> Option<[bool; SUITES.len()]> {
    let mut hits = [true; SUITES.len()];
    for part in word.split('+') {
        if EVERY_SUITE.contains(&part) {
            continue;
        }
        if NO_SUITE.contains(&part) {
            return None;
        }
        let mut any = false;
        for (i, (openssl, iana, aliases)) in SUITES.iter().enumerate() {
            let hit = part == *openssl || part == *iana || aliases.contains(&part);
            hits[i] &= hit;
            any |= hit;
        }
        if !any {
            return None;
        }
    }
    Some(hits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &str) -> Vec<&'static str> {
        allowed_suites(list).unwrap().into_iter().map(|i| SUITES[i].0).collect()
    }

    #[test]
    fn openssl_lists_become_the_rustls_suites_they_allow() {
        assert_eq!(names("DEFAULT").len(), 6);
        assert_eq!(names("HIGH:!aNULL:!MD5").len(), 6, "nginx's own default");
        assert_eq!(names("ECDHE-RSA-AES128-GCM-SHA256"), ["ECDHE-RSA-AES128-GCM-SHA256"]);
        // Mozilla's intermediate list: the DHE suites rustls lacks allow nothing more.
        let mozilla = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384";
        assert_eq!(names(mozilla).len(), 6);
        assert_eq!(
            names("ECDHE+AESGCM:!aECDSA"),
            ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384"]
        );
        assert_eq!(names("CHACHA20:@STRENGTH").len(), 2);
        assert_eq!(names("ALL:!ECDHE-RSA-CHACHA20-POLY1305:!ECDHE-ECDSA-CHACHA20-POLY1305").len(), 4);
        assert!(names("AES128-SHA:DES-CBC3-SHA").is_empty(), "CBC and RSA key exchange only");
        assert!(names("!ALL").is_empty());
        assert_eq!(allowed_suites("HIGH;rm -rf"), Err(Expected("an OpenSSL cipher list (DEFAULT is kept)")));
    }

    fn read(pairs: &[(&str, &str)]) -> super::super::Reading {
        let raw = pairs
            .iter()
            .map(|(k, v)| (format!("{}{k}", super::super::NGINX_PREFIX), v.to_string()))
            .collect();
        super::super::read(&raw)
    }

    #[test]
    fn proxy_ssl_annotations_are_read_with_ingress_nginx_defaults() {
        let r = read(&[("proxy-ssl-secret", "default/backend-tls")]);
        assert!(r.refused.is_none() && r.warnings.is_empty(), "{r:?}");
        let s = r.annotations.backend.proxy_ssl.unwrap();
        assert_eq!(
            (s.verify, s.verify_depth, s.name, s.server_name, s.versions, s.cipher_suites),
            (false, 1, None, false, vec![TlsVersion::Tls12], Vec::new())
        );
        let r = read(&[
            ("proxy-ssl-secret", "backend-tls"),
            ("proxy-ssl-verify", "on"),
            ("proxy-ssl-verify-depth", "2"),
            ("proxy-ssl-name", "Web.Internal"),
            ("proxy-ssl-server-name", "on"),
            ("proxy-ssl-protocols", "TLSv1.3 TLSv1.2"),
            ("proxy-ssl-ciphers", "ECDHE-RSA-AES256-GCM-SHA384"),
        ]);
        assert!(r.refused.is_none() && r.warnings.is_empty(), "{r:?}");
        let s = r.annotations.backend.proxy_ssl.unwrap();
        assert!(s.verify && s.server_name);
        assert_eq!((s.verify_depth, s.name.as_deref()), (2, Some("web.internal")));
        assert_eq!(s.versions, [TlsVersion::Tls12, TlsVersion::Tls13]);
        assert_eq!(s.cipher_suites, ["TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"]);
        // Refinements alone do nothing; bad values keep the defaults with a warning each.
        assert_eq!(read(&[("proxy-ssl-verify", "on")]).annotations.backend.proxy_ssl, None);
        let r = read(&[
            ("proxy-ssl-secret", "backend-tls"),
            ("proxy-ssl-verify", "yes"),
            ("proxy-ssl-protocols", "TLSv1.1 TLSv1.2"),
            ("proxy-ssl-verify-depth", "deep"),
            ("proxy-ssl-ciphers", "HIGH;x"),
        ]);
        assert_eq!(r.warnings.len(), 4, "{r:?}");
        let s = r.annotations.backend.proxy_ssl.unwrap();
        assert_eq!((s.verify, s.verify_depth, s.versions), (false, 1, vec![TlsVersion::Tls12]));
    }

    #[test]
    fn a_cipher_list_rustls_cannot_honour_refuses_unless_tls13_is_offered() {
        let r = read(&[("proxy-ssl-secret", "s"), ("proxy-ssl-ciphers", "AES128-SHA:DES-CBC3-SHA")]);
        assert!(
            r.refused.as_deref().is_some_and(|why| why.contains("allows no cipher suite rustls implements")),
            "{r:?}"
        );
        let r = read(&[
            ("proxy-ssl-secret", "s"),
            ("proxy-ssl-protocols", "TLSv1.2 TLSv1.3"),
            ("proxy-ssl-ciphers", "AES128-SHA"),
        ]);
        assert!(r.refused.is_none(), "{r:?}");
        assert_eq!(r.annotations.backend.proxy_ssl.unwrap().versions, [TlsVersion::Tls13]);
    }
}
