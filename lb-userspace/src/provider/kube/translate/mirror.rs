//! `mirror-target` (with `mirror-host` and `mirror-request-body`): copies of every request of
//! an Ingress's paths go to the target, fire and forget, as nginx's `mirror` does. The target's
//! host is resolved here, without DNS: a Service's cluster name (`svc.ns.svc.cluster.local`,
//! `svc.ns.svc`, or `svc` in the Ingress's namespace) becomes that Service port's
//! backend group, an IP address a group of its one endpoint; any other name is reported and
//! nothing is mirrored. HTTPS targets are not verified, as nginx's `proxy_ssl_verify off`.

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::networking::v1::ServiceBackendPort;

use super::{Builder, IngressId, NoteKind, apply_settings, backend_template};
use crate::{
    config::{EndpointConfig, MirrorConfig},
    provider::kube::annotations::{BackendSettings, MirrorSetting, UpstreamProtocol},
};

impl Builder<'_> {
    /// The mirror of the Ingress being translated, its backend group created; `None` (noted)
    /// when the target cannot be resolved.
    pub(super) fn ingress_mirror(&mut self, setting: &MirrorSetting, id: &IngressId) -> Option<MirrorConfig> {
        let settings = BackendSettings {
            protocol: if setting.https { UpstreamProtocol::Https } else { UpstreamProtocol::Http },
            ..BackendSettings::default()
        };
        let backend = match setting.host.parse::<IpAddr>() {
            Ok(ip) => self.address_group(SocketAddr::new(ip, setting.port), &settings, id),
            Err(_) => {
                let Some((namespace, service)) = service_of(&setting.host, &id.namespace) else {
                    self.note_kind(
                        Some(id),
                        NoteKind::Ignored,
                        format!(
                            "mirror-target {}: only a Service's cluster name (service.namespace.svc.cluster.local) or an IP address is mirrored to; other names are not resolved, nothing is mirrored",
                            setting.host
                        ),
                    );
                    return None;
                };
                if !self.index.services.contains_key(&(namespace.as_str(), service.as_str())) {
                    let message = format!(
                        "mirror-target: Service {namespace}/{service} not found; nothing is mirrored"
                    );
                    self.note(Some(id), message);
                    return None;
                }
                let port = ServiceBackendPort { number: Some(i32::from(setting.port)), name: None };
                self.backend_group(&namespace, &service, &port, &settings, id)
            }
        };
        Some(MirrorConfig {
            backend,
            fraction: None,
            body: setting.body,
            host: Some(setting.host_header.clone()),
        })
    }

    /// A group of one fixed endpoint (a mirror target given by its address).
    fn address_group(&mut self, address: SocketAddr, settings: &BackendSettings, id: &IngressId) -> String {
        let scheme = if settings.protocol == UpstreamProtocol::Https { "https" } else { "http" };
        let name = format!("mirror/{scheme}://{address}");
        if !self.backends.contains_key(&name) {
            let mut group = backend_template().clone();
            group.name = name.clone();
            group.endpoints = vec![EndpointConfig { address, weight: 1, ready: true }];
            apply_settings(&mut group, settings);
            self.backends.insert(name.clone(), (std::sync::Arc::new(group), id.clone()));
        }
        name
    }
}

/// The Service a cluster DNS name names: `(namespace, service)`. `svc.ns` is not taken for
/// one: it reads as well as an outside name (`example.com`).
fn service_of(host: &str, own_namespace: &str) -> Option<(String, String)> {
    let name = host.strip_suffix(".cluster.local").unwrap_or(host);
    let (name, in_cluster) = match name.strip_suffix(".svc") {
        Some(name) => (name, true),
        None => (name, false),
    };
    let labels: Vec<&str> = name.split('.').collect();
    let dns_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    match labels.as_slice() {
        [service] if dns_label(service) && host == name => {
            Some((own_namespace.to_owned(), (*service).to_owned()))
        }
        [service, namespace] if in_cluster && dns_label(service) && dns_label(namespace) => {
            Some(((*namespace).to_owned(), (*service).to_owned()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::service_of;

    #[test]
    fn cluster_names_name_services() {
        let named = |host| service_of(host, "shop");
        let service = |ns: &str, name: &str| Some((ns.to_owned(), name.to_owned()));
        assert_eq!(named("mirror.test.svc.cluster.local"), service("test", "mirror"));
        assert_eq!(named("mirror.test.svc"), service("test", "mirror"));
        assert_eq!(named("mirror"), service("shop", "mirror"));
        // Names outside the cluster, and ones no Service can have.
        for other in [
            "test.env.com",
            "example.com",
            "a.b.c.d",
            "mirror.svc",
            "Mirror.test.svc",
            "-x.test.svc",
            "x..test.svc",
            "",
        ] {
            assert_eq!(named(other), None, "{other}");
        }
    }
}
