//! The certificate a TLS listener serves when the SNI names no Ingress TLS host (or there is
//! none), as ingress-nginx: the `--default-ssl-certificate NAMESPACE/NAME` TLS Secret, else a
//! self-signed certificate made once per process (ingress-nginx's "Kubernetes Ingress
//! Controller Fake Certificate"), so such a handshake completes and the request gets the
//! default backend (or a 404) instead of a handshake failure. Listeners whose base
//! configuration names a `default_certificate`, or says `unknown_sni: reject`, keep theirs.

use super::{Builder, IngressId, certificate_template};
use crate::config::{Config, SecretString, UnknownSni};

/// ingress-nginx's fake certificate's subject and name.
pub const FAKE_COMMON_NAME: &str = "Kubernetes Ingress Controller Fake Certificate";
const FAKE_ORGANIZATION: &str = "Acme Co";
const FAKE_DNS_NAME: &str = "ingress.local";
/// The generated certificate's name in the configuration.
pub const FAKE_CERTIFICATE: &str = "sluice/fake-certificate";

/// A self-signed certificate for the life of the process: every translation serves the same.
pub(super) fn fake_certificate() -> &'static Result<(String, String), String> {
    static FAKE: std::sync::OnceLock<Result<(String, String), String>> = std::sync::OnceLock::new();
    FAKE.get_or_init(|| crate::tls::certs::self_signed(FAKE_COMMON_NAME, FAKE_ORGANIZATION, &[FAKE_DNS_NAME]))
}

impl Builder<'_> {
    /// Sets the default certificate of the TLS listeners that have none.
    pub(super) fn default_certificate(&mut self, config: &mut Config) {
        let wanting: Vec<usize> = config
            .listeners
            .iter()
            .enumerate()
            .filter(|(_, l)| {
                l.tls.as_ref().is_some_and(|t| {
                    t.default_certificate.is_none() && t.unknown_sni != Some(UnknownSni::Reject)
                })
            })
            .map(|(i, _)| i)
            .collect();
        if wanting.is_empty() {
            return;
        }
        let Some(name) = self.secret_certificate().or_else(|| self.fake_certificate()) else { return };
        for i in wanting {
            if let Some(tls) = config.listeners[i].tls.as_mut() {
                tls.default_certificate = Some(name.clone());
            }
        }
    }

    /// The `--default-ssl-certificate` Secret's certificate, when named and usable (else noted).
    fn secret_certificate(&mut self) -> Option<String> {
        let reference = self.translator.settings.default_ssl_certificate.clone()?;
        let (namespace, name) = reference.split_once('/')?;
        let owner = IngressId { namespace: namespace.into(), name: "--default-ssl-certificate".into() };
        let certificate = self.certificate(namespace, name, &owner);
        if certificate.is_none() {
            self.note(None, format!("--default-ssl-certificate {reference} cannot be used; the generated certificate is served instead"));
        }
        certificate
    }

    fn fake_certificate(&mut self) -> Option<String> {
        match fake_certificate() {
            Ok((cert_pem, key_pem)) => {
                let mut certificate = certificate_template().clone();
                certificate.name = FAKE_CERTIFICATE.to_owned();
                certificate.cert_pem = Some(cert_pem.clone());
                certificate.key_pem = Some(SecretString(key_pem.clone()));
                let owner = IngressId { namespace: "".into(), name: FAKE_CERTIFICATE.into() };
                self.certificates.insert(FAKE_CERTIFICATE.to_owned(), (certificate, owner));
                Some(FAKE_CERTIFICATE.to_owned())
            }
            Err(e) => {
                self.note(
                    None,
                    format!("no default certificate could be made ({e}); unknown names fail the handshake"),
                );
                None
            }
        }
    }
}
