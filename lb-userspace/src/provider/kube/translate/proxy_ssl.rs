//! `proxy-ssl-secret` and the `proxy-ssl-*` set: a backend's TLS from the Secret, as
//! ingress-nginx writes its `proxy_ssl_*` directives. They shape TLS only where there is TLS
//! (`backend-protocol: HTTPS` or `GRPCS`); elsewhere they are noted and do nothing, as nginx
//! ignores `proxy_ssl_*` for `http://` upstreams. A Secret that cannot be used leaves the
//! backend without endpoints, so its paths answer 503, as ingress-nginx denies them.
//!
//! Without `proxy-ssl-name` the name checked (and sent, with `proxy-ssl-server-name: on`) is
//! the Service's cluster name `SERVICE.NAMESPACE.svc`; ingress-nginx checks `upstream_balancer`
//! there, which no certificate names.

use super::{Builder, IngressId};
use crate::{
    config::{BackendConfig, CertificateConfig, SecretString},
    provider::kube::annotations::ProxySslSetting,
};

impl Builder<'_> {
    /// Applies the setting to `group` (which already has its TLS, or none, from the protocol).
    pub(super) fn proxy_ssl(
        &mut self,
        group: &mut BackendConfig,
        setting: &ProxySslSetting,
        (namespace, service): (&str, &str),
        id: &IngressId,
    ) {
        let Some(tls) = group.tls.as_mut() else {
            self.note(
                Some(id),
                "proxy-ssl-* apply to backend-protocol HTTPS or GRPCS; this backend speaks plain HTTP",
            );
            return;
        };
        let secret = match self.proxy_ssl_secret(setting, namespace) {
            Ok(secret) => secret,
            Err(why) => {
                self.note(Some(id), format!("proxy-ssl-secret: {why}; the backend's paths answer 503"));
                group.endpoints.clear();
                return;
            }
        };
        tls.insecure_skip_verify = !setting.verify;
        tls.ca_pem = setting.verify.then_some(secret.ca_pem).flatten();
        tls.verify_depth = setting.verify.then_some(setting.verify_depth);
        tls.server_name = match &setting.name {
            Some(name) => Some(name.clone()),
            None if setting.verify || setting.server_name => Some(format!("{service}.{namespace}.svc")),
            None => None,
        };
        tls.sni = setting.server_name;
        tls.versions.clone_from(&setting.versions);
        tls.cipher_suites.clone_from(&setting.cipher_suites);
        if let Some((cert, key)) = secret.client {
            tls.client_cert_pem = Some(cert);
            tls.client_key_pem = Some(SecretString(key));
        }
    }

    /// The Secret's PEM, checked as the snapshot will load it, or why it cannot be used.
    fn proxy_ssl_secret(&self, setting: &ProxySslSetting, namespace: &str) -> Result<ProxySslSecret, String> {
        let reference = setting.secret.as_str();
        let (secret_namespace, name) = reference.split_once('/').unwrap_or((namespace, reference));
        if secret_namespace != namespace {
            return Err(format!("{reference}: Secrets of other namespaces are not used"));
        }
        let Some(secret) = self.index.secrets.get(&(namespace, name)).copied() else {
            return Err(format!("Secret {namespace}/{name} not found"));
        };
        let text = |key: &str| {
            secret.data.as_ref().and_then(|d| d.get(key)).and_then(|b| String::from_utf8(b.0.clone()).ok())
        };
        let ca_pem = text("ca.crt");
        if setting.verify {
            let what = format!("Secret {namespace}/{name} ca.crt");
            crate::tls::certs::load_ca_bundle(&what, None, ca_pem.as_deref(), "ca.crt")
                .map_err(|e| format!("{e} (proxy-ssl-verify: on needs the CAs)"))?;
        }
        let client = match (text("tls.crt"), text("tls.key")) {
            (Some(cert), Some(key)) => {
                let certificate = CertificateConfig {
                    name: format!("{namespace}/{name}"),
                    cert_path: None,
                    cert_pem: Some(cert.clone()),
                    key_path: None,
                    key_pem: Some(SecretString(key.clone())),
                };
                crate::tls::certs::load_certificate(
                    &certificate,
                    &crate::tls::provider(),
                    crate::tls::now_unix(),
                )
                .map_err(|e| e.to_string())?;
                Some((cert, key))
            }
            (None, None) => None,
            _ => return Err(format!("Secret {namespace}/{name} has only one of tls.crt and tls.key")),
        };
        Ok(ProxySslSecret { ca_pem, client })
    }
}

struct ProxySslSecret {
    ca_pem: Option<String>,
    /// `tls.crt` and `tls.key`.
    client: Option<(String, String)>,
}
