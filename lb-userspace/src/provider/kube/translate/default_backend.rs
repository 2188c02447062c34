//! Default backends and error pages, as ingress-nginx has them:
//! - the controller's default backend Service (`--default-backend-service NAMESPACE/NAME`)
//!   serves every host and path no Ingress claims (without one, Sluice answers a plain 404, as
//!   ingress-nginx's built-in default backend does);
//! - an Ingress's `default-backend` annotation names a Service of its namespace that serves
//!   its paths whose Service has no ready endpoint, and answers its error pages;
//! - `custom-http-errors` (the annotation, else the controller ConfigMap's key) lists the
//!   statuses that the Ingress's error backend (its `default-backend`, else the controller's)
//!   answers instead of the Service, with ingress-nginx's `X-Namespace`, `X-Ingress-Name`,
//!   `X-Service-Name` and `X-Service-Port` fields.
//!
//! Both Services are reached on their first port, as ingress-nginx does.

use std::collections::BTreeSet;

use k8s_openapi::api::networking::v1::{IngressBackend, ServiceBackendPort};

use super::{Builder, IngressId, route_template};
use crate::{
    config::{ErrorPagesConfig, HeaderField, PathMatch, RedirectConfig, RouteConfig},
    provider::kube::annotations::{Annotations, BackendSettings},
};

/// The route name (and metric label) of the controller default backend's routes.
pub const DEFAULT_BACKEND_ROUTE: &str = "default-backend";

/// What owns the controller default backend's routes and group: no Ingress does.
fn controller_owner(namespace: &str) -> IngressId {
    IngressId { namespace: namespace.into(), name: "--default-backend-service".into() }
}

/// A catch-all route: prefix `/`, no header or method constraint.
pub(super) fn is_catch_all(route: &RouteConfig) -> bool {
    let everything = match &route.matcher.path {
        None => true,
        Some(PathMatch::Prefix(p)) => p.trim_end_matches('/').is_empty(),
        Some(_) => false,
    };
    everything && route.matcher.headers.is_empty() && route.matcher.methods.is_empty()
}

impl Builder<'_> {
    /// The group of a Service's first port, created on first use; `None` (noted) when the
    /// Service or its ports are not there.
    fn first_port_group(
        &mut self,
        namespace: &str,
        name: &str,
        owner: &IngressId,
        what: &str,
    ) -> Option<String> {
        let service = self.index.services.get(&(namespace, name)).copied();
        let first =
            service.and_then(|s| s.spec.as_ref()).and_then(|s| s.ports.as_ref()).and_then(|p| p.first());
        let Some(first) = first else {
            self.note(
                Some(owner),
                format!("{what} Service {namespace}/{name} not found or has no port; not used"),
            );
            return None;
        };
        let port = ServiceBackendPort { number: Some(first.port), name: None };
        Some(self.backend_group(namespace, name, &port, &BackendSettings::default(), owner))
    }

    /// The controller default backend's group, when `--default-backend-service` names one.
    pub(super) fn controller_default_backend(&mut self) -> Option<String> {
        let reference = self.translator.settings.default_backend_service.clone()?;
        let (namespace, name) = reference.split_once('/')?;
        let owner = controller_owner(namespace);
        let group = self.first_port_group(namespace, name, &owner, "--default-backend-service")?;
        self.default_group = Some(group.clone());
        Some(group)
    }

    /// The error backend of one Ingress: its `default-backend` Service, else the controller's.
    pub(super) fn error_backend(&mut self, id: &IngressId, a: &Annotations) -> Option<String> {
        match &a.default_backend {
            Some(name) => self.first_port_group(&id.namespace, name, id, "default-backend"),
            None => self.default_group.clone(),
        }
    }

    /// A path's backend group, or the Ingress's `default-backend` when the path's Service has
    /// no ready endpoint (ingress-nginx serves those paths from it).
    pub(super) fn unless_unavailable(&self, group: String, a: &Annotations) -> String {
        let ready = || self.backends.get(&group).is_some_and(|(g, _)| g.endpoints.iter().any(|e| e.ready));
        match (&a.default_backend, &self.error_group) {
            (Some(_), Some(fallback)) if !ready() => fallback.clone(),
            _ => group,
        }
    }

    /// The error pages of a route to `backend` (the path's Service), when the Ingress lists
    /// statuses and has an error backend.
    pub(super) fn error_pages(
        &self,
        backend: &IngressBackend,
        id: &IngressId,
        a: &Annotations,
    ) -> Option<ErrorPagesConfig> {
        let statuses = a.custom_http_errors.clone().filter(|s| !s.is_empty())?;
        let group = self.error_group.clone()?;
        let service = backend.service.as_ref()?;
        let port = service.port.as_ref().map(|p| match (&p.name, p.number) {
            (Some(name), _) if !name.is_empty() => name.clone(),
            (_, Some(number)) => number.to_string(),
            _ => String::new(),
        });
        let field = |name: &str, value: &str| HeaderField { name: name.to_owned(), value: value.to_owned() };
        Some(ErrorPagesConfig {
            statuses,
            backend: group,
            headers: vec![
                field("X-Namespace", &id.namespace),
                field("X-Ingress-Name", &id.name),
                field("X-Service-Name", &service.name),
                field("X-Service-Port", &port.unwrap_or_default()),
            ],
        })
    }

    /// `from-to-www-redirect`, as ingress-nginx: the twin of each host (`www.` added or
    /// removed) answers `308` to the same scheme, port (always written) and URI (one trailing
    /// `/` dropped) on the host, unless an Ingress rule
    /// (or the base configuration) serves the twin itself. A twin of a TLS host gets the same
    /// certificate (which must name it, as ingress-nginx requires), or its own when a TLS
    /// section lists it.
    pub(super) fn www_twins(&mut self, base_hosts: &BTreeSet<String>) {
        for (host, id) in std::mem::take(&mut self.www_redirects) {
            let twin = match host.strip_prefix("www.") {
                Some(bare) => bare.to_owned(),
                None => format!("www.{host}"),
            };
            // A twin named only in a TLS section has no server of its own in ingress-nginx
            // (servers come from rules), so it still redirects.
            let served = self.hosts.get(&twin).is_some_and(|h| !h.routes.is_empty());
            if served || base_hosts.contains(&twin) {
                self.note(
                    Some(&id),
                    format!("from-to-www-redirect: {twin} has an Ingress of its own; not redirected"),
                );
                continue;
            }
            let mut route = route_template().clone();
            route.name = Some(id.to_string());
            route.matcher.path = Some(PathMatch::Prefix("/".into()));
            route.redirect = Some(Box::new(RedirectConfig {
                scheme: None,
                host: Some(host.clone()),
                port: None,
                path: None,
                code: 308,
            }));
            route.redirect_keeps_port = true;
            let tls =
                self.hosts.get(&host).and_then(|h| h.tls.clone()).filter(|(t, _)| t.certificate.is_some());
            let entry = self.hosts.entry(twin).or_default();
            entry.routes.push((std::sync::Arc::new(route), id.clone()));
            // The twin's own TLS section, when it has one, else the host's certificate. Plain
            // HTTP is redirected to the host, not to HTTPS first: ingress-nginx's redirect
            // server answers both ports with the same 308.
            let own = entry.tls.take().filter(|(t, _)| t.certificate.is_some());
            entry.tls = own.or(tls).map(|(mut t, owner)| {
                t.redirect_http = false;
                (t, owner)
            });
        }
    }

    /// The controller default backend serves what no Ingress claims: every path of hosts
    /// without a catch-all route, and the default host `*`; hosts the base configuration
    /// serves (`base_domains`) are left to it.
    pub(super) fn default_backend_everywhere(&mut self, base_domains: &BTreeSet<String>) {
        let Some(group) = self.default_group.clone() else { return };
        let reference = self.translator.settings.default_backend_service.as_deref().unwrap_or("");
        let owner = controller_owner(reference.split_once('/').map_or("", |(ns, _)| ns));
        let mut route = route_template().clone();
        route.name = Some(DEFAULT_BACKEND_ROUTE.to_owned());
        route.matcher.path = Some(PathMatch::Prefix("/".into()));
        route.backend = Some(group);
        let route = self.memo.default_route(route);
        self.hosts.entry("*".to_owned()).or_default();
        for (domain, host) in &mut self.hosts {
            if !base_domains.contains(domain) && !host.routes.iter().any(|(r, _)| is_catch_all(r)) {
                host.routes.push((std::sync::Arc::clone(&route), owner.clone()));
            }
        }
    }
}
