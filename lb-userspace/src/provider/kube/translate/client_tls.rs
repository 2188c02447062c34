//! `auth-tls-secret` and the `auth-tls-*` set: the CA Secret's `ca.crt` (and `ca.crl`) read
//! into the client certificate settings of the Ingress's TLS hosts, as ingress-nginx reads
//! them (the Ingress's own namespace only, its default). An Ingress whose CA cannot be read
//! is not served (noted): served without its client certificate check it would be exposed.

use super::{Builder, IngressId};
use crate::{config::HostTlsConfig, provider::kube::annotations::ClientTlsSetting};

/// A client certificate setting with its CA (and revocation lists) read.
#[derive(Debug, Clone)]
pub(super) struct ClientTls {
    setting: ClientTlsSetting,
    ca_pem: String,
    crl_pem: Option<String>,
}

impl ClientTls {
    /// Requires client certificates on a host the Ingress gives TLS.
    pub(super) fn apply(&self, tls: &mut HostTlsConfig) {
        tls.client_ca_pem = Some(self.ca_pem.clone());
        tls.client_crl_pem = self.crl_pem.clone();
        tls.client_verify = self.setting.verify;
        tls.client_verify_depth = self.setting.depth;
        tls.client_error_page = self.setting.error_page.clone();
        tls.pass_client_certificate = self.setting.pass_certificate;
        tls.client_match_cn = self.setting.match_cn.clone();
    }
}

impl Builder<'_> {
    /// Client certificates are checked on hosts Sluice terminates with the Ingress's own
    /// certificate: every rule host must be in its `tls` with a Secret that exists, else the
    /// Ingress would be served without the check somewhere.
    pub(super) fn client_tls_hosts_covered(
        &self,
        spec: &k8s_openapi::api::networking::v1::IngressSpec,
        id: &IngressId,
    ) -> Result<(), String> {
        if !self.tls_listener {
            return Err("no listener terminates TLS".to_owned());
        }
        let mut covered = std::collections::BTreeSet::new();
        for tls in spec.tls.iter().flatten() {
            let Some(secret) = tls.secret_name.as_deref() else { continue };
            if !self.index.secrets.contains_key(&(&*id.namespace, secret)) {
                return Err(format!("TLS Secret {}/{secret} not found", id.namespace));
            }
            covered.extend(tls.hosts.iter().flatten().map(|h| h.to_ascii_lowercase()));
        }
        match spec
            .rules
            .iter()
            .flatten()
            .filter_map(|r| r.host.as_deref())
            .find(|h| !covered.contains(&h.to_ascii_lowercase()))
        {
            Some(host) => Err(format!("host {host} has no TLS Secret in the Ingress's tls")),
            None if spec.rules.iter().flatten().any(|r| r.host.is_none()) => {
                Err("a rule without a host cannot have client certificates".to_owned())
            }
            None => Ok(()),
        }
    }

    /// The Ingress's client certificate settings with their CA, or why they cannot be had.
    pub(super) fn client_tls(&self, setting: &ClientTlsSetting, id: &IngressId) -> Result<ClientTls, String> {
        let reference = setting.secret.as_str();
        let (namespace, name) = reference.split_once('/').unwrap_or((&id.namespace, reference));
        if namespace != &*id.namespace {
            return Err(format!("auth-tls-secret {reference}: Secrets of other namespaces are not used"));
        }
        let Some(secret) = self.index.secrets.get(&(namespace, name)).copied() else {
            return Err(format!("auth-tls-secret {namespace}/{name} not found"));
        };
        let text = |key: &str| {
            secret.data.as_ref().and_then(|d| d.get(key)).and_then(|b| String::from_utf8(b.0.clone()).ok())
        };
        let Some(ca_pem) = text("ca.crt").filter(|pem| pem.contains("-----BEGIN CERTIFICATE-----")) else {
            return Err(format!("Secret {namespace}/{name} has no PEM certificate under ca.crt"));
        };
        Ok(ClientTls { setting: setting.clone(), ca_pem, crl_pem: text("ca.crl") })
    }
}
