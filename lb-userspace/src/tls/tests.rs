//! Certificate loading errors and SNI selection, with certificates made by rcgen.

use std::{collections::HashMap, sync::Arc};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::sign::CertifiedKey;

use super::{
    TlsSnapshot,
    certs::{self, Problem},
    provider,
    resolver::Selection,
};
use crate::config::{CertificateConfig, Config, SecretString};

struct Ca(CertifiedIssuer<'static, KeyPair>);

/// A certificate and key in PEM.
struct Leaf {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        Ca(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    fn leaf(&self, names: &[&str]) -> Leaf {
        self.leaf_with(names, |_| {})
    }

    fn leaf_with(&self, names: &[&str], adjust: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        adjust(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.0).unwrap();
        Leaf { cert: cert.pem(), key: key.serialize_pem() }
    }
}

fn inline(name: &str, leaf: &Leaf) -> CertificateConfig {
    CertificateConfig {
        name: name.into(),
        cert_path: None,
        cert_pem: Some(leaf.cert.clone()),
        key_path: None,
        key_pem: Some(SecretString(leaf.key.clone())),
    }
}

fn load(config: &CertificateConfig) -> Result<certs::LoadedCertificate, certs::LoadError> {
    certs::load_certificate(config, &provider(), super::now_unix())
}

#[test]
fn a_good_certificate_loads_with_its_expiry() {
    let ca = Ca::new("ca");
    let leaf = ca.leaf_with(&["a.test"], |p| p.not_after = rcgen::date_time_ymd(2090, 1, 2));
    let loaded = load(&inline("a", &leaf)).unwrap();
    assert_eq!(loaded.not_after, 3_786_998_400, "2090-01-02 00:00:00 UTC");
    assert_eq!(loaded.name, "a");
}

#[test]
fn a_key_of_another_certificate_is_refused() {
    let ca = Ca::new("ca");
    let (a, b) = (ca.leaf(&["a.test"]), ca.leaf(&["b.test"]));
    let mixed = Leaf { cert: a.cert, key: b.key };
    let err = load(&inline("mixed", &mixed)).unwrap_err();
    assert!(matches!(err.problem, Problem::KeyMismatch), "{err}");
    assert_eq!(
        err.to_string(),
        "certificate \"mixed\" (inline key_pem): the private key does not match the certificate"
    );
}

#[test]
fn an_expired_certificate_is_refused_with_its_date() {
    let ca = Ca::new("ca");
    let leaf = ca.leaf_with(&["old.test"], |p| {
        p.not_before = rcgen::date_time_ymd(2001, 1, 1);
        p.not_after = rcgen::date_time_ymd(2002, 1, 1);
    });
    let err = load(&inline("old", &leaf)).unwrap_err();
    assert!(matches!(err.problem, Problem::Expired { not_after: 1_009_843_200 }), "{err}");
    assert!(err.to_string().contains("expired at 2002-01-01 00:00:00 UTC"), "{err}");
}

#[test]
fn garbage_is_refused_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("sluice-tls-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = Ca::new("ca");
    let good = ca.leaf(&["a.test"]);
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let from_files = |cert: &std::path::Path, key: &std::path::Path| CertificateConfig {
        name: "files".into(),
        cert_path: Some(cert.to_owned()),
        cert_pem: None,
        key_path: Some(key.to_owned()),
        key_pem: None,
    };
    let good_cert = write("good.crt", &good.cert);
    let good_key = write("good.key", &good.key);
    assert!(load(&from_files(&good_cert, &good_key)).is_ok());

    type Case = (std::path::PathBuf, std::path::PathBuf, fn(&Problem) -> bool);
    let cases: Vec<Case> = vec![
        (write("text.crt", "hello, not a certificate\n"), good_key.clone(), |p| {
            matches!(p, Problem::NoCertificate)
        }),
        (
            write("base64.crt", "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n"),
            good_key.clone(),
            |p| matches!(p, Problem::Pem(_)),
        ),
        (
            write("der.crt", "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n"),
            good_key.clone(),
            |p| matches!(p, Problem::Malformed),
        ),
        (dir.join("missing.crt"), good_key.clone(), |p| matches!(p, Problem::Read(_))),
        (good_cert.clone(), write("text.key", &good.cert), |p| matches!(p, Problem::NoKey)),
        (
            good_cert.clone(),
            write("junk.key", "-----BEGIN PRIVATE KEY-----\naGVsbG8gd29ybGQ=\n-----END PRIVATE KEY-----\n"),
            |p| matches!(p, Problem::UnusableKey(_)),
        ),
    ];
    for (cert, key, expected) in cases {
        let err = load(&from_files(&cert, &key)).unwrap_err();
        assert!(expected(&err.problem), "{cert:?} {key:?}: {err}");
        let text = err.to_string();
        assert!(text.starts_with("certificate \"files\" ("), "{text}");
        let named =
            if matches!(err.problem, Problem::NoKey | Problem::UnusableKey(_)) { &key } else { &cert };
        assert!(text.contains(&named.display().to_string()), "the error names the file: {text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_ca_bundle_without_certificates_is_refused() {
    let err = certs::load_ca_bundle("test CA", None, Some("nothing here"), "ca_pem").unwrap_err();
    assert!(matches!(err.problem, Problem::NoCertificate), "{err}");
    let ca = Ca::new("ca");
    assert!(certs::load_ca_bundle("test CA", None, Some(&ca.0.pem()), "ca_pem").is_ok());
}

/// A configuration with inline certificates: `a.test` (exact), `*.wild.test`, a `dflt`
/// certificate, and `plain.test` without TLS.
fn sni_config(unknown_sni: &str) -> (Config, HashMap<&'static str, Leaf>) {
    let ca = Ca::new("ca");
    let leaves = HashMap::from([
        ("a", ca.leaf(&["a.test"])),
        ("wild", ca.leaf(&["*.wild.test"])),
        ("dflt", ca.leaf(&["default.test"])),
    ]);
    let certificates: String = leaves
        .iter()
        .map(|(name, leaf)| {
            format!("  - {{name: {name}, cert_pem: {:?}, key_pem: {:?}}}\n", leaf.cert, leaf.key)
        })
        .collect();
    let yaml = format!(
        "listeners:
  - name: tls
    address: '127.0.0.1:8443'
    tls: {{default_certificate: dflt, unknown_sni: {unknown_sni}}}
certificates:
{certificates}virtual_hosts:
  - {{name: a, domains: [a.test], tls: {{certificate: a}}}}
  - {{name: wild, domains: ['*.wild.test'], tls: {{certificate: wild}}}}
  - {{name: plain, domains: [plain.test]}}
"
    );
    (Config::from_yaml(&yaml, "test").unwrap(), leaves)
}

fn leaf_der(leaf: &Leaf) -> Vec<u8> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::from_pem_slice(leaf.cert.as_bytes()).unwrap().to_vec()
}

fn served(key: Option<Arc<CertifiedKey>>) -> Option<Vec<u8>> {
    key.map(|k| k.cert[0].to_vec())
}

#[test]
fn sni_selects_exact_wildcard_and_default() {
    let (config, leaves) = sni_config("default");
    let tls = TlsSnapshot::build(&config, &Default::default()).unwrap();
    let listener = tls.listener(0).unwrap();
    let resolver = &listener.resolver;
    let cert = |name: Option<&str>| served(resolver.certificate(name));
    assert_eq!(resolver.select(Some("a.test")), Selection::Host(0));
    assert_eq!(cert(Some("a.test")), Some(leaf_der(&leaves["a"])));
    assert_eq!(cert(Some("A.TEST.")), Some(leaf_der(&leaves["a"])));
    assert_eq!(cert(Some("x.wild.test")), Some(leaf_der(&leaves["wild"])));
    assert_eq!(resolver.select(Some("x.wild.test")), Selection::Host(1));
    for unknown in [None, Some("other.test"), Some("a.b.wild.test"), Some("plain.test")] {
        assert_eq!(resolver.select(unknown), Selection::Default, "{unknown:?}");
        assert_eq!(cert(unknown), Some(leaf_der(&leaves["dflt"])), "{unknown:?}");
    }
    let mut expiry: Vec<&str> = tls.certificate_expiry().iter().map(|(n, _)| n.as_str()).collect();
    expiry.sort();
    assert_eq!(expiry, ["a", "dflt", "wild"]);
}

#[test]
fn unknown_sni_is_rejected_when_configured() {
    let (config, leaves) = sni_config("reject");
    let tls = TlsSnapshot::build(&config, &Default::default()).unwrap();
    let resolver = &tls.listener(0).unwrap().resolver;
    assert_eq!(served(resolver.certificate(Some("a.test"))), Some(leaf_der(&leaves["a"])));
    for unknown in [None, Some("other.test"), Some("plain.test")] {
        assert_eq!(resolver.select(unknown), Selection::Reject, "{unknown:?}");
        assert!(resolver.certificate(unknown).is_none());
    }
}

/// A rebuild takes an unchanged inline certificate from the previous snapshot (the same loaded
/// key, not parsed again) and loads one whose PEM changed; a broken replacement still fails the
/// build, whatever the previous snapshot held.
#[test]
fn unchanged_certificates_are_taken_from_the_previous_snapshot() {
    let (config, leaves) = sni_config("default");
    let first = TlsSnapshot::build(&config, &Default::default()).unwrap();
    let key = |tls: &TlsSnapshot, name: &str| Arc::clone(&tls.loaded[name].key);
    let second = TlsSnapshot::build_on(&config, &Default::default(), Some((&first, &config))).unwrap();
    for name in ["a", "wild", "dflt"] {
        assert!(Arc::ptr_eq(&key(&first, name), &key(&second, name)), "{name} was parsed again");
    }
    let mut rotated = config.clone();
    let new_leaf = Ca::new("rotated").leaf(&["a.test"]);
    let a = rotated.certificates.iter_mut().find(|c| c.name == "a").unwrap();
    a.cert_pem = Some(new_leaf.cert.clone());
    a.key_pem = Some(SecretString(new_leaf.key.clone()));
    let third = TlsSnapshot::build_on(&rotated, &Default::default(), Some((&second, &config))).unwrap();
    assert!(!Arc::ptr_eq(&key(&second, "a"), &key(&third, "a")));
    assert!(Arc::ptr_eq(&key(&second, "wild"), &key(&third, "wild")));
    let resolver = &third.listener(0).unwrap().resolver;
    assert_eq!(served(resolver.certificate(Some("a.test"))), Some(leaf_der(&new_leaf)));
    assert_ne!(leaf_der(&new_leaf), leaf_der(&leaves["a"]));
    let mut broken = rotated.clone();
    let other = Ca::new("other").leaf(&["x.test"]);
    broken.certificates.iter_mut().find(|c| c.name == "wild").unwrap().key_pem =
        Some(SecretString(other.key));
    let err =
        TlsSnapshot::build_on(&broken, &Default::default(), Some((&third, &rotated))).err().expect("fails");
    assert!(err.contains("certificate \"wild\""), "{err}");
}

#[test]
fn a_broken_certificate_fails_the_build_with_its_name() {
    let (mut config, _) = sni_config("default");
    let other = Ca::new("other").leaf(&["x.test"]);
    let broken = config.certificates.iter_mut().find(|c| c.name == "wild").unwrap();
    broken.key_pem = Some(SecretString(other.key));
    let err = TlsSnapshot::build(&config, &Default::default()).err().expect("build fails");
    assert!(err.contains("certificate \"wild\"") && err.contains("does not match"), "{err}");
}

#[test]
fn validation_checks_tls_references() {
    let yaml = "
listeners:
  - {name: web, address: '127.0.0.1:80'}
  - {name: tls, address: '127.0.0.1:443', tls: {default_certificate: nope}}
  - {name: tls2, address: '127.0.0.1:444', tls: {unknown_sni: default}}
certificates:
  - {name: c, cert_path: /a, cert_pem: x, key_path: /b}
  - {name: c, key_path: /b}
virtual_hosts:
  - {name: a, domains: [a.test], tls: {certificate: missing}}
  - {name: b, domains: [b.test], tls: {certificate: c, passthrough: be}}
  - {name: p, domains: [p.test], tls: {passthrough: nobody, client_ca_pem: x, hsts: {}}}
backends:
  - {name: be, endpoints: [{address: '127.0.0.1:1'}], tls: {}}
  - {name: bf, endpoints: [{address: '127.0.0.1:1'}], tls: {insecure_skip_verify: true, ca_pem: x}}
  - {name: bg, endpoints: [{address: '127.0.0.1:1'}], tls: {ca_pem: x, server_name: 'not a name'}}
";
    let err = Config::from_yaml(yaml, "t.yaml").unwrap_err().to_string();
    for expected in [
        "backends[0].tls: needs exactly one of ca_path and ca_pem",
        "backends[1].tls.insecure_skip_verify: skipping verification and naming a CA",
        "backends[2].tls.server_name: \"not a name\" is not a DNS name",
        "certificates[0]: needs exactly one of cert_path and cert_pem",
        "certificates[1]: needs exactly one of cert_path and cert_pem",
        "certificates[1].name: duplicate certificate name",
        "listeners[1].tls.default_certificate: no certificate named \"nope\"",
        "listeners[2].tls.unknown_sni: unknown_sni: default needs default_certificate",
        "virtual_hosts[0].tls.certificate: no certificate named \"missing\"",
        "virtual_hosts[1].tls: needs exactly one of certificate and passthrough",
        "virtual_hosts[2].tls.hsts: a passthrough host's HTTPS responses come from the backend",
        "virtual_hosts[2].tls.passthrough: no backend named \"nobody\"",
        "virtual_hosts[2].tls.passthrough: a passthrough host cannot check client certificates",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    let no_tls_listener = "
listeners: [{name: web, address: '127.0.0.1:80'}]
certificates: [{name: c, cert_pem: x, key_pem: y}]
virtual_hosts: [{name: a, domains: [a.test], tls: {certificate: c}}]
";
    let err = Config::from_yaml(no_tls_listener, "t.yaml").unwrap_err().to_string();
    assert!(err.contains("virtual_hosts[0].tls: no listener has tls"), "{err}");
}
