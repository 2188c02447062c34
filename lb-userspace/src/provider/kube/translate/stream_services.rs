//! ingress-nginx's `tcp-services` and `udp-services` ConfigMaps (`--tcp-services-configmap`,
//! `--udp-services-configmap`) as `l4_services`, after the base configuration's own. Each
//! entry is `"PORT": "NAMESPACE/SERVICE:PORT[:PROXY[:PROXY]]"`: the key is the port clients
//! use on every node address, the Service port is a number or a name (of a port of the map's
//! protocol), the third field `PROXY` reads a PROXY protocol header from clients and the fourth
//! sends one (v1, as nginx's `proxy_protocol on`) to the endpoint; both are TCP only.
//!
//! As ingress-nginx (`getStreamServices`), an entry that cannot be served is skipped with a
//! warning and the others are served: a key that is not a port, a reserved port (a listener's,
//! the admin and metrics ports, the workers' own ports and, with XDP, its source-NAT range),
//! a value that is not `NAMESPACE/SERVICE:PORT`, a missing Service or Service port, and a port
//! with no ready endpoint (ingress-nginx too leaves out a stream service without endpoints).
//! Endpoints are the ready addresses of the Service's EndpointSlices for that port and
//! protocol. What is emitted always validates, so a bad entry never refuses the rest.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, OnceLock},
};

use k8s_openapi::api::core::v1::ServicePort;

use super::{Builder, template};
use crate::config::{
    Config, L4_ENDPOINTS_MAX, L4_SERVICES_MAX, L4_SNAT_PORTS, L4Protocol, L4ServiceConfig,
    ProxyProtocolVersion,
};
use crate::provider::kube::endpoint_slice::EndpointSlice;

/// A Service port as an entry names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServicePortRef {
    Number(u16),
    Name(String),
}

impl std::fmt::Display for ServicePortRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServicePortRef::Number(n) => write!(f, "{n}"),
            ServicePortRef::Name(name) => f.write_str(name),
        }
    }
}

/// One entry of a `tcp-services` / `udp-services` ConfigMap, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    /// The external port (the key).
    pub port: u16,
    pub namespace: String,
    pub service: String,
    pub service_port: ServicePortRef,
    /// Third field `PROXY`: clients send a PROXY protocol header first.
    pub decode: bool,
    /// Fourth field `PROXY`: a PROXY protocol header goes to the endpoint first.
    pub encode: bool,
}

/// Parses one entry: why it cannot be served, or the entry and what in it is ignored.
/// ingress-nginx's reading: the value is split at `:`; fields after the second are looked at
/// only for TCP, the third is `PROXY` or not, the fourth counts only when it is the last.
pub fn parse_entry(
    key: &str,
    value: &str,
    protocol: L4Protocol,
) -> Result<(StreamEntry, Vec<String>), String> {
    let port = match key.parse::<u32>() {
        Ok(port @ 1..=65_535) => port as u16,
        _ => return Err(format!("the key {key:?} is not a port number (1-65535)")),
    };
    let fields: Vec<&str> = value.split(':').collect();
    let [reference, service_port, rest @ ..] = fields.as_slice() else {
        return Err(format!("{value:?} is not NAMESPACE/SERVICE:PORT"));
    };
    let (namespace, service) = match reference.split_once('/') {
        Some((namespace, service))
            if !namespace.is_empty() && !service.is_empty() && !service.contains('/') =>
        {
            (namespace, service)
        }
        _ => return Err(format!("{reference:?} is not NAMESPACE/SERVICE")),
    };
    let service_port = if service_port.is_empty() {
        return Err(format!("{value:?} names no Service port"));
    } else if service_port.bytes().all(|b| b.is_ascii_digit()) {
        match service_port.parse::<u32>() {
            Ok(number @ 1..=65_535) => ServicePortRef::Number(number as u16),
            _ => return Err(format!("the Service port {service_port:?} is not a port number (1-65535)")),
        }
    } else {
        ServicePortRef::Name((*service_port).to_owned())
    };
    let mut warnings = Vec::new();
    let is_proxy = |field: &&str| field.eq_ignore_ascii_case("PROXY");
    let (mut decode, mut encode) = (false, false);
    if protocol == L4Protocol::Udp {
        if rest.iter().any(|f| !f.is_empty()) {
            warnings
                .push("the PROXY protocol is for TCP services; the fields after the port are ignored".into());
        }
    } else {
        decode = rest.first().is_some_and(is_proxy);
        encode = rest.len() == 2 && is_proxy(&rest[1]);
        for field in rest.iter().take(2).filter(|f| !f.is_empty() && !is_proxy(f)) {
            warnings.push(format!("the field {field:?} is not PROXY; ignored"));
        }
        if rest.len() > 2 {
            warnings.push(format!(
                "{} fields; only NAMESPACE/SERVICE:PORT and the third field are read (as ingress-nginx reads them)",
                fields.len()
            ));
        }
    }
    let entry = StreamEntry {
        port,
        namespace: namespace.to_owned(),
        service: service.to_owned(),
        service_port,
        decode,
        encode,
    };
    Ok((entry, warnings))
}

pub(super) fn l4_template() -> &'static L4ServiceConfig {
    static TEMPLATE: OnceLock<L4ServiceConfig> = OnceLock::new();
    TEMPLATE.get_or_init(|| template("name: x\naddress: '0.0.0.0:1'\nendpoints: []\n"))
}

/// The Kubernetes name of a protocol (`ServicePort.protocol`, EndpointSlice ports).
pub(super) fn kube_protocol(protocol: L4Protocol) -> &'static str {
    match protocol {
        L4Protocol::Tcp => "TCP",
        L4Protocol::Udp => "UDP",
    }
}

/// Why `port` cannot take a `protocol` service in `config` (its listeners, admin and metrics
/// addresses, the workers' own ports, XDP's source-NAT range, the L4 services already there).
pub fn reserved(config: &Config, port: u16, protocol: L4Protocol) -> Option<String> {
    if let Some(listener) = config.listeners.iter().find(|l| l.address.port() == port) {
        return Some(format!("port {port} is listener {:?}'s", listener.name));
    }
    if config.admin.as_ref().is_some_and(|a| a.address.port() == port) {
        return Some(format!("port {port} is the admin server's"));
    }
    if config.metrics.as_ref().is_some_and(|m| m.address.port() == port) {
        return Some(format!("port {port} is the metrics listener's"));
    }
    let workers = config.listeners.len() * config.worker_count();
    let first_worker = u32::from(config.xdp.worker_port_base);
    if (first_worker..first_worker + workers as u32).contains(&u32::from(port)) {
        return Some(format!("port {port} is one of the workers' own ports (xdp.worker_port_base)"));
    }
    if config.xdp.enabled && L4_SNAT_PORTS.contains(&port) {
        return Some(format!(
            "port {port} is in {}-{}, the node ports XDP gives L4 flows towards their endpoints",
            L4_SNAT_PORTS.start(),
            L4_SNAT_PORTS.end()
        ));
    }
    if let Some(other) =
        config.l4_services.iter().find(|s| s.protocol == protocol && s.address.port() == port)
    {
        return Some(format!("{protocol} port {port} is already L4 service {:?}'s", other.name));
    }
    None
}

/// The ready endpoints of a Service port (by the port's name, as EndpointSlices name their
/// ports) of `protocol`, across the Service's slices: every address of an endpoint whose
/// `ready` condition is not false, as ingress-nginx takes them for stream services (an
/// unspecified address, which nothing can be sent to, left out).
pub fn ready_endpoints(
    slices: &[&Arc<EndpointSlice>],
    port_name: &str,
    protocol: L4Protocol,
) -> BTreeSet<SocketAddr> {
    let mut found = BTreeSet::new();
    for slice in slices {
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            continue;
        }
        let port = slice.ports.iter().find(|p| {
            p.name.as_deref().unwrap_or("") == port_name
                && p.protocol.as_deref().unwrap_or("TCP") == kube_protocol(protocol)
        });
        let Some(port) = port.and_then(|p| p.port).and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0)
        else {
            continue;
        };
        for endpoint in &slice.endpoints {
            if endpoint.ready == Some(false) {
                continue;
            }
            found.extend(
                endpoint.addresses().filter(|ip| !ip.is_unspecified()).map(|ip| SocketAddr::new(ip, port)),
            );
        }
    }
    found
}

impl Builder<'_> {
    /// Adds the entries of the ConfigMaps named by `--tcp-services-configmap` and
    /// `--udp-services-configmap` to `config.l4_services`; each entry not served is noted.
    pub(super) fn stream_services(&mut self, config: &mut Config) {
        let settings = &self.translator.settings;
        let maps = [
            (settings.tcp_services_configmap.clone(), L4Protocol::Tcp),
            (settings.udp_services_configmap.clone(), L4Protocol::Udp),
        ];
        for (reference, protocol) in maps {
            let Some(reference) = reference else { continue };
            let Some(data) = self.configmap_data(&reference, "") else {
                self.note(
                    None,
                    format!(
                        "{protocol}-services ConfigMap {reference} not found; no {protocol} services from it"
                    ),
                );
                continue;
            };
            let mut entries = Vec::new();
            for (key, value) in &data {
                match parse_entry(key, value, protocol) {
                    Ok((entry, warnings)) => {
                        for warning in warnings {
                            self.note(
                                None,
                                format!("{protocol}-services ConfigMap {reference}, port {key}: {warning}"),
                            );
                        }
                        entries.push((key, entry));
                    }
                    Err(why) => self.note(
                        None,
                        format!("{protocol}-services ConfigMap {reference}, key {key:?}: {why}; skipped"),
                    ),
                }
            }
            entries.sort_by_key(|(_, entry)| entry.port);
            for (key, entry) in entries {
                match self.stream_service(config, &entry, protocol) {
                    Ok((service, warning)) => {
                        if let Some(warning) = warning {
                            self.note(
                                None,
                                format!("{protocol}-services ConfigMap {reference}, port {key}: {warning}"),
                            );
                        }
                        config.l4_services.push(service);
                    }
                    Err(why) => self.note(
                        None,
                        format!("{protocol}-services ConfigMap {reference}, port {key}: {why}; skipped"),
                    ),
                }
            }
        }
    }

    /// The L4 service of one entry (and what to know about it), or why it cannot be served.
    fn stream_service(
        &self,
        config: &Config,
        entry: &StreamEntry,
        protocol: L4Protocol,
    ) -> Result<(L4ServiceConfig, Option<String>), String> {
        if let Some(why) = reserved(config, entry.port, protocol) {
            return Err(why);
        }
        if config.l4_services.len() >= L4_SERVICES_MAX {
            return Err(format!("at most {L4_SERVICES_MAX} L4 services per node"));
        }
        let name = format!("{protocol}/{}", entry.port);
        if config.l4_services.iter().any(|s| s.name == name) {
            return Err(format!("the base configuration has an L4 service named {name:?}"));
        }
        let (namespace, service_name) = (entry.namespace.as_str(), entry.service.as_str());
        let Some(service) = self.index.services.get(&(namespace, service_name)) else {
            return Err(format!("Service {namespace}/{service_name} not found"));
        };
        let spec = service.spec.as_ref();
        if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            return Err(format!(
                "Service {namespace}/{service_name} is ExternalName, which is not supported"
            ));
        }
        let wanted = kube_protocol(protocol);
        let service_port: Option<&ServicePort> =
            spec.and_then(|s| s.ports.as_deref()).unwrap_or(&[]).iter().find(|p| {
                p.protocol.as_deref().unwrap_or("TCP") == wanted
                    && match &entry.service_port {
                        ServicePortRef::Number(n) => p.port == i32::from(*n),
                        ServicePortRef::Name(name) => p.name.as_deref() == Some(name.as_str()),
                    }
            });
        let Some(service_port) = service_port else {
            return Err(format!(
                "Service {namespace}/{service_name} has no {wanted} port {}",
                entry.service_port
            ));
        };
        let slices = self.index.slices.get(&(namespace, service_name)).map(Vec::as_slice).unwrap_or(&[]);
        let endpoints = ready_endpoints(slices, service_port.name.as_deref().unwrap_or(""), protocol);
        // One family per service (its endpoints must be of the service address's): IPv4, the
        // family XDP balances, when there is any.
        let ipv4 = endpoints.iter().any(SocketAddr::is_ipv4);
        let mut endpoints: Vec<SocketAddr> = endpoints.into_iter().filter(|e| e.is_ipv4() == ipv4).collect();
        let warning = (endpoints.len() > L4_ENDPOINTS_MAX).then(|| {
            format!("{} ready endpoints; the first {L4_ENDPOINTS_MAX} by address are served", endpoints.len())
        });
        endpoints.truncate(L4_ENDPOINTS_MAX);
        if endpoints.is_empty() {
            return Err(format!(
                "Service {namespace}/{service_name} has no ready endpoint for {wanted} port {}",
                entry.service_port
            ));
        }
        let unspecified =
            if ipv4 { IpAddr::V4(Ipv4Addr::UNSPECIFIED) } else { IpAddr::V6(Ipv6Addr::UNSPECIFIED) };
        let mut l4 = l4_template().clone();
        l4.name = name;
        l4.address = SocketAddr::new(unspecified, entry.port);
        l4.protocol = protocol;
        l4.endpoints = endpoints;
        l4.accept_proxy_protocol = entry.decode;
        // nginx's proxy_timeout for stream servers (`proxy-stream-timeout`, 600 s by default);
        // UDP keeps the shorter default of `l4_services` unless the key says otherwise (nginx
        // ends a UDP session after its one response, `proxy-stream-responses`).
        l4.idle_timeout_ms = match (self.controller.stream_timeout_ms, protocol) {
            (Some(ms), _) => Some(ms),
            (None, L4Protocol::Tcp) => Some(600_000),
            (None, L4Protocol::Udp) => None,
        };
        l4.xdp = self.translator.settings.l4_in_xdp;
        l4.proxy_protocol = entry.encode.then_some(ProxyProtocolVersion::V1);
        Ok((l4, warning))
    }
}
