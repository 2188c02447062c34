//! Gateway listeners with `protocol: TCP` or `UDP`, and the TCPRoutes and UDPRoutes attached to
//! them, as `l4_services`: each listener is one service on `0.0.0.0:PORT` (`[::]:PORT` when its
//! endpoints are IPv6 only), served like a `tcp-services` / `udp-services` ConfigMap entry (by
//! the user-space L4 proxy, or by XDP with `--l4-services-in-xdp`), after those entries.
//!
//! - **Ports** are given to Gateways oldest first, then in listener order ([`Ports`]): not the
//!   node's own (its listeners, admin and metrics, the workers' ports, XDP's source-NAT range),
//!   not one a base `l4_services` entry or a ConfigMap key has (a key counts whether its entry is
//!   served or not, so a listener never takes a port from under an entry whose endpoints come
//!   back), not one an older Gateway's listener of the same protocol has, and only while the
//!   node has L4 services left (16 in all). A listener refused a port is `Accepted: False,
//!   PortUnavailable`, saying whose port it is.
//! - **Routes**: every route the listener admits is `Accepted` and counted in `attachedRoutes`,
//!   but only the oldest is served there (the spec's conflict rule, checked by the conformance
//!   test TCPRouteMultipleRoutesAttachment); the others are noted.
//! - **Backends**: Services by port number, whose port of the route's protocol gives the
//!   EndpointSlice port; their ready endpoints together are the service's. Weights are not
//!   carried (the L4 model spreads flows evenly over endpoints): a backendRef of weight 0 is
//!   left out, the others share by their endpoints. With no usable backend, or no ready
//!   endpoint, no service is made and nothing listens on the port: TCP connections are refused
//!   and UDP datagrams answered with ICMP port unreachable, as the spec's "actively reject".

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use super::{Builder, GatewayBuild, IngressId, ListenerBuild, ObjectKey, RouteKind, RouteView, RuleRoutes};
use crate::{
    config::{Config, L4_ENDPOINTS_MAX, L4_SERVICES_MAX, L4Protocol, L4ServiceConfig},
    provider::kube::{
        gateway_api::{Condition, HTTPRouteRule, L4RouteSpec, Listener},
        translate::stream_services::{self, ready_endpoints, reserved},
    },
};

/// A TCP or UDP listener's L4 service, as the translation fills it in.
pub(super) struct Slot {
    pub(super) protocol: L4Protocol,
    pub(super) port: u16,
    /// The oldest route attached: the one served.
    pub(super) route: Option<IngressId>,
    /// The other routes attached, which get no traffic here.
    pub(super) also: Vec<IngressId>,
    /// The served route's endpoints, once its rules are read.
    pub(super) endpoints: Option<Vec<SocketAddr>>,
}

impl Slot {
    /// `None` for a listener of another protocol; `Err`: why its port cannot be used.
    pub(super) fn of(listener: &Listener) -> Option<Result<Slot, String>> {
        let protocol = match listener.protocol.as_str() {
            "TCP" => L4Protocol::Tcp,
            "UDP" => L4Protocol::Udp,
            _ => return None,
        };
        Some(match u16::try_from(listener.port) {
            Ok(port) if port != 0 => {
                Ok(Slot { protocol, port, route: None, also: Vec::new(), endpoints: None })
            }
            _ => Err(format!("port {} is not a port number (1-65535)", listener.port)),
        })
    }

    /// Binds `route` here when it is the first (routes come oldest first).
    pub(super) fn bind(&mut self, route: IngressId) {
        match &self.route {
            None => self.route = Some(route),
            Some(owner) if *owner == route => {}
            Some(_) => self.also.push(route),
        }
    }
}

/// The L4 ports Gateways' TCP and UDP listeners may take, and how many services are left.
pub(super) struct Ports<'a> {
    base: &'a Config,
    /// (protocol, port) → whose it is.
    taken: BTreeMap<(L4Protocol, u16), String>,
    left: usize,
}

impl<'a> Ports<'a> {
    pub(super) fn new(builder: &Builder<'a>) -> Ports<'a> {
        let mut taken = BTreeMap::new();
        let mut used = builder.base.l4_services.len();
        let settings = &builder.translator.settings;
        let maps = [
            (&settings.tcp_services_configmap, L4Protocol::Tcp),
            (&settings.udp_services_configmap, L4Protocol::Udp),
        ];
        for (reference, protocol) in maps {
            let Some(reference) = reference else { continue };
            for key in builder.configmap_data(reference, "").unwrap_or_default().keys() {
                if let Ok(port @ 1..=65_535) = key.parse::<u32>() {
                    taken.insert(
                        (protocol, port as u16),
                        format!("the {protocol}-services ConfigMap {reference}'s"),
                    );
                    used += 1;
                }
            }
        }
        Ports { base: builder.base, taken, left: L4_SERVICES_MAX.saturating_sub(used) }
    }

    /// Gives a port to each TCP and UDP listener of `gateway` that is otherwise served, or
    /// refuses it (`PortUnavailable`).
    pub(super) fn claim(&mut self, gateway: &mut GatewayBuild, name: &str) {
        let generation = gateway.generation;
        for listener in &mut gateway.listeners {
            let Some(slot) = &listener.l4 else { continue };
            if !listener.programmed {
                continue;
            }
            let (protocol, port) = (slot.protocol, slot.port);
            let refused = if let Some(why) = reserved(self.base, port, protocol) {
                Some(why)
            } else if let Some(owner) = self.taken.get(&(protocol, port)) {
                Some(format!("{protocol} port {port} is {owner}"))
            } else if self.left == 0 {
                Some(format!("the node has at most {L4_SERVICES_MAX} L4 services, and none is left"))
            } else {
                None
            };
            match refused {
                None => {
                    let owner =
                        format!("Gateway {}/{name}'s listener {}", gateway.namespace, listener.status.name);
                    self.taken.insert((protocol, port), owner);
                    self.left -= 1;
                }
                Some(why) => refuse_port(listener, why, generation),
            }
        }
    }
}

fn refuse_port(listener: &mut ListenerBuild, why: String, generation: i64) {
    listener.programmed = false;
    listener.takes.clear();
    listener.l4 = None;
    listener.status.conditions[0] = Condition::new("Accepted", false, "PortUnavailable", why, generation);
    listener.status.conditions[3] =
        Condition::new("Programmed", false, "Invalid", "not accepted", generation);
}

/// A TCPRoute or UDPRoute as the attachment reads it: its rules' backends (one empty rule
/// when it has none, so that the missing backends are reported).
pub(super) fn view<'a, T: kube::Resource>(
    kind: RouteKind,
    object: &T,
    spec: &'a L4RouteSpec,
) -> RouteView<'a> {
    let mut rules: Vec<HTTPRouteRule> = spec
        .rules
        .iter()
        .map(|r| HTTPRouteRule {
            name: r.name.clone(),
            backend_refs: r.backend_refs.clone(),
            ..Default::default()
        })
        .collect();
    if rules.is_empty() {
        rules.push(HTTPRouteRule::default());
    }
    super::view_of(kind, object, &spec.parent_refs, &[], rules.into())
}

fn protocol_of(kind: RouteKind) -> L4Protocol {
    if kind == RouteKind::Udp { L4Protocol::Udp } else { L4Protocol::Tcp }
}

impl Builder<'_> {
    /// A TCPRoute's or UDPRoute's rule: its endpoints, and its references' problem.
    /// Different weights are said not to be carried (the L4 model has none).
    pub(super) fn l4_rule(&mut self, rule: &HTTPRouteRule, route: &RouteView<'_>) -> RuleRoutes {
        let (endpoints, unresolved) = self.l4_rule_endpoints(rule, route);
        let weights: BTreeSet<i32> =
            rule.backend_refs.iter().map(|b| b.weight.unwrap_or(1)).filter(|w| *w > 0).collect();
        if weights.len() > 1 {
            let id = super::route_id(route.kind, &route.namespace, &route.name);
            let why = "backendRef weights are not carried by L4 services: each Service's share is its number of ready endpoints";
            self.note(Some(&id), why);
        }
        RuleRoutes { routes: Vec::new(), backend: None, unresolved, unsupported: None, endpoints }
    }

    /// The ready endpoints of a TCPRoute's or UDPRoute's rule (backends of weight 0 left out),
    /// and the `ResolvedRefs` problem of its backendRefs, if any.
    fn l4_rule_endpoints(
        &self,
        rule: &HTTPRouteRule,
        route: &RouteView<'_>,
    ) -> (Vec<SocketAddr>, Option<(&'static str, String)>) {
        if rule.backend_refs.is_empty() {
            let refused = match route.kind {
                RouteKind::Udp => "datagrams to its listener are refused",
                _ => "connections to its listener are refused",
            };
            return (Vec::new(), Some(("BackendNotFound", format!("no backendRefs: {refused}"))));
        }
        let protocol = protocol_of(route.kind);
        let mut problem = None;
        let mut endpoints = BTreeSet::new();
        for backend in &rule.backend_refs {
            let namespace = match self.service_ref(backend, route) {
                Ok(namespace) => namespace,
                Err(why) => {
                    problem.get_or_insert(why);
                    continue;
                }
            };
            let port = backend.port.unwrap_or_default();
            match self.l4_backend_endpoints(&namespace, &backend.name, port, protocol) {
                Ok(found) if backend.weight.unwrap_or(1) > 0 => endpoints.extend(found),
                Ok(_) => {}
                Err(why) => {
                    problem.get_or_insert(("BackendNotFound", why));
                }
            }
        }
        (endpoints.into_iter().collect(), problem)
    }

    /// The ready endpoints of a Service's port (by number, of `protocol`); `Err` when the
    /// Service cannot be a backend (ExternalName, no such port).
    fn l4_backend_endpoints(
        &self,
        namespace: &str,
        name: &str,
        port: i32,
        protocol: L4Protocol,
    ) -> Result<BTreeSet<SocketAddr>, String> {
        let Some(service) = self.index.services.get(&(namespace, name)) else {
            return Err(format!("Service {namespace}/{name} not found"));
        };
        let spec = service.spec.as_ref();
        if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            return Err(format!("Service {namespace}/{name} is ExternalName, which is not supported"));
        }
        let wanted = stream_services::kube_protocol(protocol);
        let service_port = spec
            .and_then(|s| s.ports.as_deref())
            .unwrap_or(&[])
            .iter()
            .find(|p| p.port == port && p.protocol.as_deref().unwrap_or("TCP") == wanted);
        let Some(service_port) = service_port else {
            return Err(format!("Service {namespace}/{name} has no {wanted} port {port}"));
        };
        let slices = self.index.slices.get(&(namespace, name)).map(Vec::as_slice).unwrap_or(&[]);
        Ok(ready_endpoints(slices, service_port.name.as_deref().unwrap_or(""), protocol))
    }

    /// Gives a TCPRoute's or UDPRoute's endpoints to the listeners it is bound to.
    pub(super) fn serve_l4_route(
        &mut self,
        route: &RouteView<'_>,
        rules: &[RuleRoutes],
        gateways: &mut BTreeMap<ObjectKey, GatewayBuild>,
    ) {
        let id = super::route_id(route.kind, &route.namespace, &route.name);
        let endpoints: BTreeSet<SocketAddr> =
            rules.iter().flat_map(|r| r.endpoints.iter().copied()).collect();
        let slots = gateways.values_mut().flat_map(|g| g.listeners.iter_mut()).filter_map(|l| l.l4.as_mut());
        for slot in slots.filter(|s| s.route.as_ref() == Some(&id) && s.endpoints.is_none()) {
            slot.endpoints = Some(endpoints.iter().copied().collect());
        }
    }

    /// The L4 services of one Gateway's TCP and UDP listeners, kept for [`Builder::finish`];
    /// what is not served is noted.
    pub(super) fn l4_services_of(&mut self, key: &ObjectKey, gateway: &GatewayBuild) {
        for listener in &gateway.listeners {
            let Some(slot) = &listener.l4 else { continue };
            let at = format!("Gateway {}/{} listener {}", key.0, key.1, listener.status.name);
            let Some(owner) = &slot.route else { continue };
            for other in &slot.also {
                self.note(
                    Some(other),
                    format!("{at} is bound to the older {owner}; this route gets no traffic there"),
                );
            }
            let endpoints = slot.endpoints.clone().unwrap_or_default();
            let (protocol, port) = (slot.protocol, slot.port);
            match self.l4_service(
                format!("gateway:{}/{}/{}", key.0, key.1, listener.status.name),
                slot,
                endpoints,
            ) {
                Ok((service, warning)) => {
                    if let Some(warning) = warning {
                        self.note(Some(owner), format!("{at}: {warning}"));
                    }
                    self.gateway_l4.push((service, owner.clone()));
                }
                Err(why) => {
                    self.note(Some(owner), format!("{at}: {why}; {protocol} port {port} is not served"))
                }
            }
        }
    }

    /// The service of one listener (and what to know about it), or why there is none.
    fn l4_service(
        &self,
        name: String,
        slot: &Slot,
        endpoints: Vec<SocketAddr>,
    ) -> Result<(L4ServiceConfig, Option<String>), String> {
        // One family per service (its endpoints must be of the service address's): IPv4, the
        // family XDP balances, when there is any.
        let ipv4 = endpoints.iter().any(SocketAddr::is_ipv4);
        let mut endpoints: Vec<SocketAddr> = endpoints.into_iter().filter(|e| e.is_ipv4() == ipv4).collect();
        if endpoints.is_empty() {
            return Err("no ready endpoint".to_owned());
        }
        let warning = (endpoints.len() > L4_ENDPOINTS_MAX).then(|| {
            format!("{} ready endpoints; the first {L4_ENDPOINTS_MAX} by address are served", endpoints.len())
        });
        endpoints.truncate(L4_ENDPOINTS_MAX);
        let unspecified =
            if ipv4 { IpAddr::V4(Ipv4Addr::UNSPECIFIED) } else { IpAddr::V6(Ipv6Addr::UNSPECIFIED) };
        let mut l4 = stream_services::l4_template().clone();
        l4.name = name;
        l4.address = SocketAddr::new(unspecified, slot.port);
        l4.protocol = slot.protocol;
        l4.endpoints = endpoints;
        // As the ConfigMap entries: the controller's `proxy-stream-timeout`, else 600 s for TCP.
        l4.idle_timeout_ms = match (self.controller.stream_timeout_ms, slot.protocol) {
            (Some(ms), _) => Some(ms),
            (None, L4Protocol::Tcp) => Some(600_000),
            (None, L4Protocol::Udp) => None,
        };
        l4.xdp = self.translator.settings.l4_in_xdp;
        Ok((l4, warning))
    }

    /// Adds the Gateways' L4 services after the ConfigMaps' (which keep their ports). What
    /// would not validate is skipped and noted, so the rest is served.
    pub(in crate::provider::kube::translate) fn gateway_l4_services(&mut self, config: &mut Config) {
        for (service, owner) in std::mem::take(&mut self.gateway_l4) {
            let (protocol, port) = (service.protocol, service.address.port());
            let why = if let Some(why) = reserved(config, port, protocol) {
                Some(why)
            } else if config.l4_services.len() >= L4_SERVICES_MAX {
                Some(format!("at most {L4_SERVICES_MAX} L4 services per node"))
            } else if config.l4_services.iter().any(|s| s.name == service.name) {
                Some(format!("the base configuration has an L4 service named {:?}", service.name))
            } else {
                None
            };
            match why {
                None => config.l4_services.push(service),
                Some(why) => self.note(Some(&owner), format!("{}: {why}; skipped", service.name)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::{Value, json};

    use super::super::GATEWAY_CONTROLLER;
    use crate::{
        config::{Config, L4Protocol, L4ServiceConfig},
        provider::kube::{
            gateway_api::{Condition, RouteParentStatus},
            translate::{ClusterState, RouteKind, Settings, Translation, Translator},
        },
    };

    fn object<T: serde::de::DeserializeOwned>(value: Value) -> Arc<T> {
        Arc::new(serde_json::from_value(value).unwrap())
    }

    /// The node: an HTTP listener on 80, admin on 9000.
    fn base() -> Config {
        Config::from_yaml(
            "listeners: [{name: web, address: \"0.0.0.0:80\"}]\nadmin: {address: \"127.0.0.1:9000\"}\n",
            "base.yaml",
        )
        .unwrap()
    }

    /// A Service with `(name, port, protocol)` ports, and a slice giving each port `port + 1000`
    /// on the ready `addresses` (and a not-ready 10.9.9.9).
    fn service_with_endpoints(
        state: &mut ClusterState,
        namespace: &str,
        name: &str,
        ports: &[(&str, i32, &str)],
        addresses: &[&str],
    ) {
        let service_ports: Vec<Value> =
            ports.iter().map(|(n, p, proto)| json!({"name": n, "port": p, "protocol": proto})).collect();
        state.services.push(object(json!({
            "metadata": {"namespace": namespace, "name": name},
            "spec": {"ports": service_ports}})));
        let slice_ports: Vec<Value> = ports
            .iter()
            .map(|(n, p, proto)| json!({"name": n, "port": p + 1000, "protocol": proto}))
            .collect();
        let mut endpoints: Vec<Value> =
            addresses.iter().map(|a| json!({"addresses": [a], "conditions": {"ready": true}})).collect();
        endpoints.push(json!({"addresses": ["10.9.9.9"], "conditions": {"ready": false}}));
        state.slices.push(object(json!({
            "metadata": {"namespace": namespace, "name": format!("{name}-1"),
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "ports": slice_ports, "endpoints": endpoints})));
    }

    fn class_and_gateway(listeners: Value) -> ClusterState {
        ClusterState {
            gateway_classes: vec![object(json!({
                "metadata": {"name": "sluice"}, "spec": {"controllerName": GATEWAY_CONTROLLER}}))],
            gateways: vec![object(gateway("gw", 1, listeners))],
            ..ClusterState::default()
        }
    }

    fn gateway(name: &str, minute: u32, listeners: Value) -> Value {
        json!({"metadata": {"namespace": "ns", "name": name, "generation": 2,
                            "creationTimestamp": format!("2026-01-01T00:{minute:02}:00Z")},
               "spec": {"gatewayClassName": "sluice", "listeners": listeners}})
    }

    fn route(name: &str, minute: u32, spec: Value) -> Value {
        json!({"metadata": {"namespace": "ns", "name": name, "generation": 3,
                            "creationTimestamp": format!("2026-01-01T00:{minute:02}:00Z")},
               "spec": spec})
    }

    fn tcp(state: &mut ClusterState, name: &str, minute: u32, spec: Value) {
        state.tcp_routes.push(object(route(name, minute, spec)));
    }

    fn udp(state: &mut ClusterState, name: &str, minute: u32, spec: Value) {
        state.udp_routes.push(object(route(name, minute, spec)));
    }

    fn build_with(state: &ClusterState, settings: Settings) -> Translation {
        Translator::new(Settings { ingress_class: "sluice".into(), ..settings })
            .build(&base(), state)
            .unwrap()
    }

    fn build(state: &ClusterState) -> Translation {
        build_with(state, Settings::default())
    }

    fn service<'a>(t: &'a Translation, name: &str) -> Option<&'a L4ServiceConfig> {
        t.config.l4_services.iter().find(|s| s.name == name)
    }

    fn parents<'a>(t: &'a Translation, kind: RouteKind, name: &str) -> &'a [RouteParentStatus] {
        &t.gateway.routes[&(kind, ("ns".to_owned(), name.to_owned()))]
    }

    /// (type, status, reason) of each condition.
    fn conditions(conditions: &[Condition]) -> Vec<(&str, &str, &str)> {
        conditions.iter().map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str())).collect()
    }

    fn has(conditions: &[Condition], type_: &str, status: &str, reason: &str) -> bool {
        conditions.iter().any(|c| c.type_ == type_ && c.status == status && c.reason == reason)
    }

    fn listener<'a>(
        t: &'a Translation,
        gateway: &str,
        name: &str,
    ) -> &'a crate::provider::kube::gateway_api::ListenerStatus {
        let (_, status) = t.gateway.gateways.iter().find(|(key, _)| key.1 == gateway).unwrap();
        status.listeners.iter().find(|l| l.name == name).unwrap()
    }

    fn notes(t: &Translation) -> String {
        t.notes.iter().map(|n| format!("{:?}: {}\n", n.ingress, n.message)).collect()
    }

    /// A TCP and a UDP listener on one Gateway, a TCPRoute and a UDPRoute to Services with TCP
    /// and UDP ports: two L4 services on every node address with the ready endpoints, and every
    /// status as the conformance suite reads it.
    #[test]
    fn tcp_and_udp_listeners_become_l4_services_with_their_routes_endpoints() {
        let mut state = class_and_gateway(json!([
            {"name": "http", "port": 80, "protocol": "HTTP"},
            {"name": "tcp", "port": 5432, "protocol": "TCP", "hostname": "ignored.example"},
            {"name": "udp", "port": 5353, "protocol": "UDP"}]));
        service_with_endpoints(&mut state, "ns", "db", &[("pg", 5432, "TCP")], &["10.0.0.2", "10.0.0.1"]);
        service_with_endpoints(
            &mut state,
            "ns",
            "dns",
            &[("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")],
            &["10.0.1.1"],
        );
        tcp(
            &mut state,
            "db",
            1,
            json!({"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [{"name": "db", "port": 5432}]}]}),
        );
        udp(
            &mut state,
            "dns",
            2,
            json!({"parentRefs": [{"name": "gw", "sectionName": "udp"}], "rules": [{"backendRefs": [{"name": "dns", "port": 53}]}]}),
        );
        let t = build(&state);
        let db = service(&t, "gateway:ns/gw/tcp")
            .unwrap_or_else(|| panic!("{:#?}\n{}", t.config.l4_services, notes(&t)));
        assert_eq!(db.address, "0.0.0.0:5432".parse().unwrap());
        assert_eq!(db.protocol, L4Protocol::Tcp);
        assert_eq!(db.endpoints, ["10.0.0.1:6432".parse().unwrap(), "10.0.0.2:6432".parse().unwrap()]);
        assert!(!db.xdp, "the user-space L4 proxy by default, as the ConfigMap entries");
        assert_eq!(db.idle_timeout_ms, Some(600_000));
        let dns = service(&t, "gateway:ns/gw/udp").unwrap();
        assert_eq!((dns.address, dns.protocol), ("0.0.0.0:5353".parse().unwrap(), L4Protocol::Udp));
        assert_eq!(dns.endpoints, ["10.0.1.1:1053".parse().unwrap()], "the UDP port's endpoints");
        // Statuses: the TCP and UDP listeners are accepted, take their kind, count their route.
        let tcp_listener = listener(&t, "gw", "tcp");
        assert_eq!(tcp_listener.supported_kinds, [RouteKind::Tcp.group_kind()]);
        assert_eq!(tcp_listener.attached_routes, 1);
        assert_eq!(
            conditions(&tcp_listener.conditions),
            [
                ("Accepted", "True", "Accepted"),
                ("ResolvedRefs", "True", "ResolvedRefs"),
                ("Conflicted", "False", "NoConflicts"),
                ("Programmed", "True", "Programmed"),
            ]
        );
        assert_eq!(listener(&t, "gw", "udp").supported_kinds, [RouteKind::Udp.group_kind()]);
        assert_eq!(listener(&t, "gw", "udp").attached_routes, 1);
        assert_eq!(
            listener(&t, "gw", "http").attached_routes,
            0,
            "a TCPRoute without sectionName takes only TCP listeners"
        );
        let gateway = &t.gateway.gateways[0].1;
        assert!(has(&gateway.conditions, "Accepted", "True", "Accepted"), "{:?}", gateway.conditions);
        for (kind, name) in [(RouteKind::Tcp, "db"), (RouteKind::Udp, "dns")] {
            let parent = &parents(&t, kind, name)[0];
            assert_eq!(parent.parent_ref.kind.as_deref(), Some("Gateway"));
            assert_eq!(parent.parent_ref.namespace.as_deref(), Some("ns"));
            assert_eq!(
                conditions(&parent.conditions),
                [("Accepted", "True", "Accepted"), ("ResolvedRefs", "True", "ResolvedRefs")],
                "{name}"
            );
            assert_eq!(parent.conditions[0].observed_generation, 3);
        }
        // The controller's proxy-stream-timeout and --l4-services-in-xdp apply as to ConfigMap entries.
        let t = build_with(&state, Settings { l4_in_xdp: true, ..Settings::default() });
        assert!(service(&t, "gateway:ns/gw/tcp").unwrap().xdp);
    }

    /// TCPRouteMultipleRoutesAttachment: two routes on one listener are both accepted and
    /// counted; only the older one's backends are served, and the younger is noted.
    #[test]
    fn the_oldest_route_on_a_listener_is_served_and_every_one_is_accepted() {
        let mut state = class_and_gateway(json!([{"name": "tcp", "port": 3000, "protocol": "TCP"}]));
        service_with_endpoints(&mut state, "ns", "one", &[("tcp", 3000, "TCP")], &["10.0.0.1"]);
        service_with_endpoints(&mut state, "ns", "two", &[("tcp", 3000, "TCP")], &["10.0.0.2"]);
        let spec = |backend: &str| json!({"parentRefs": [{"name": "gw", "sectionName": "tcp"}], "rules": [{"backendRefs": [{"name": backend, "port": 3000}]}]});
        tcp(&mut state, "newer", 5, spec("two"));
        tcp(&mut state, "older", 4, spec("one"));
        let t = build(&state);
        assert_eq!(service(&t, "gateway:ns/gw/tcp").unwrap().endpoints, ["10.0.0.1:4000".parse().unwrap()]);
        assert_eq!(listener(&t, "gw", "tcp").attached_routes, 2);
        for name in ["older", "newer"] {
            assert!(
                has(&parents(&t, RouteKind::Tcp, name)[0].conditions, "Accepted", "True", "Accepted"),
                "{name}"
            );
        }
        assert!(
            notes(&t).contains("is bound to the older ns/TCPRoute/older; this route gets no traffic there"),
            "{}",
            notes(&t)
        );
        // The older one gone, the newer takes the listener.
        state.tcp_routes.retain(|r| r.metadata.name.as_deref() == Some("newer"));
        let t = build(&state);
        assert_eq!(service(&t, "gateway:ns/gw/tcp").unwrap().endpoints, ["10.0.0.2:4000".parse().unwrap()]);
    }

    /// parentRefs select listeners by sectionName, port or both (TCPRouteParentRefPortAndSectionName);
    /// a route on a listener of another protocol is NotAllowedByListeners (TCPRouteInvalidNonTCPListener,
    /// UDPRouteNotAllowedByListeners), a port no listener has is NoMatchingParent, and
    /// allowedRoutes' namespaces apply.
    #[test]
    fn parent_refs_select_listeners_by_section_name_and_port() {
        let mut state = class_and_gateway(json!([
            {"name": "http", "port": 80, "protocol": "HTTP"},
            {"name": "one", "port": 4001, "protocol": "TCP"},
            {"name": "two", "port": 4002, "protocol": "TCP"},
            {"name": "three", "port": 4003, "protocol": "TCP", "allowedRoutes": {"namespaces": {"from": "All"}}},
            {"name": "dns", "port": 4004, "protocol": "UDP"}]));
        for (name, ip) in [("echo-one", "10.0.0.1"), ("echo-two", "10.0.0.2"), ("echo-three", "10.0.0.3")] {
            service_with_endpoints(&mut state, "ns", name, &[("tcp", 3000, "TCP")], &[ip]);
        }
        service_with_endpoints(&mut state, "other", "echo-other", &[("tcp", 3000, "TCP")], &["10.0.0.4"]);
        let spec = |parent: Value, backend: &str| json!({"parentRefs": [parent], "rules": [{"backendRefs": [{"name": backend, "port": 3000}]}]});
        tcp(&mut state, "by-port", 1, spec(json!({"name": "gw", "port": 4001}), "echo-one"));
        tcp(&mut state, "by-section", 2, spec(json!({"name": "gw", "sectionName": "two"}), "echo-two"));
        tcp(
            &mut state,
            "by-both",
            3,
            spec(json!({"name": "gw", "sectionName": "three", "port": 4003}), "echo-three"),
        );
        tcp(&mut state, "on-http", 4, spec(json!({"name": "gw", "sectionName": "http"}), "echo-one"));
        tcp(&mut state, "on-udp", 5, spec(json!({"name": "gw", "sectionName": "dns"}), "echo-one"));
        tcp(&mut state, "no-port", 6, spec(json!({"name": "gw", "port": 4999}), "echo-one"));
        tcp(
            &mut state,
            "mismatch",
            7,
            spec(json!({"name": "gw", "sectionName": "one", "port": 4002}), "echo-one"),
        );
        let mut other = route("foreign", 8, spec(json!({"name": "gw", "namespace": "ns"}), "echo-other"));
        other["metadata"]["namespace"] = json!("other");
        state.tcp_routes.push(object(other));
        udp(&mut state, "udp-on-tcp", 9, spec(json!({"name": "gw", "sectionName": "one"}), "echo-one"));
        let t = build(&state);
        let endpoint = |name: &str| service(&t, name).map(|s| s.endpoints[0].to_string());
        assert_eq!(endpoint("gateway:ns/gw/one").as_deref(), Some("10.0.0.1:4000"));
        assert_eq!(endpoint("gateway:ns/gw/two").as_deref(), Some("10.0.0.2:4000"));
        assert_eq!(
            endpoint("gateway:ns/gw/three").as_deref(),
            Some("10.0.0.3:4000"),
            "the older by-both keeps it"
        );
        let accepted = |kind: RouteKind, name: &str| {
            let c = &parents(&t, kind, name)[0].conditions[0];
            (c.status.clone(), c.reason.clone())
        };
        let pair = |s: &str, r: &str| (s.to_owned(), r.to_owned());
        for name in ["by-port", "by-section", "by-both"] {
            assert_eq!(accepted(RouteKind::Tcp, name), pair("True", "Accepted"), "{name}");
        }
        assert_eq!(accepted(RouteKind::Tcp, "on-http"), pair("False", "NotAllowedByListeners"));
        assert_eq!(accepted(RouteKind::Tcp, "on-udp"), pair("False", "NotAllowedByListeners"));
        assert_eq!(accepted(RouteKind::Udp, "udp-on-tcp"), pair("False", "NotAllowedByListeners"));
        assert_eq!(accepted(RouteKind::Tcp, "no-port"), pair("False", "NoMatchingParent"));
        assert_eq!(accepted(RouteKind::Tcp, "mismatch"), pair("False", "NoMatchingParent"));
        // From another namespace: only "three" (from: All) admits it, where by-both is older;
        // accepted and counted, not served.
        let foreign = &t.gateway.routes[&(RouteKind::Tcp, ("other".to_owned(), "foreign".to_owned()))];
        assert_eq!(foreign[0].conditions[0].reason, "Accepted");
        assert_eq!(listener(&t, "gw", "three").attached_routes, 2);
        assert_eq!(listener(&t, "gw", "one").attached_routes, 1);
        assert_eq!(listener(&t, "gw", "http").attached_routes, 0);
        assert_eq!(listener(&t, "gw", "dns").attached_routes, 0);
        assert!(service(&t, "gateway:ns/gw/dns").is_none(), "no route, nothing listens");
    }

    /// Backend references: a missing Service, another kind, another namespace without (then
    /// with) a ReferenceGrant, a missing port, a Service without a port of the route's
    /// protocol, weight 0, and no backendRefs at all. Unusable ones are reported in
    /// ResolvedRefs; the listener serves the usable ones, or nothing (refused connections).
    #[test]
    fn backend_refs_are_resolved_and_their_problems_reported() {
        let listeners: Vec<Value> = (1..=9)
            .map(|i| json!({"name": format!("l{i}"), "port": 5000 + i, "protocol": if i == 6 { "UDP" } else { "TCP" }}))
            .collect();
        let mut state = class_and_gateway(Value::Array(listeners));
        service_with_endpoints(&mut state, "ns", "good", &[("tcp", 3000, "TCP")], &["10.0.0.1"]);
        service_with_endpoints(&mut state, "ns", "also", &[("tcp", 3000, "TCP")], &["10.0.0.2"]);
        service_with_endpoints(&mut state, "other", "far", &[("tcp", 3000, "TCP")], &["10.0.0.3"]);
        service_with_endpoints(&mut state, "ns", "empty", &[("tcp", 3000, "TCP")], &[]);
        let on = |listener: &str, refs: Value| json!({"parentRefs": [{"name": "gw", "sectionName": listener}], "rules": [{"backendRefs": refs}]});
        tcp(
            &mut state,
            "missing",
            1,
            on("l1", json!([{"name": "nowhere", "port": 3000}, {"name": "good", "port": 3000}])),
        );
        tcp(
            &mut state,
            "kind",
            2,
            on("l2", json!([{"group": "example.com", "kind": "Backend", "name": "good", "port": 3000}])),
        );
        tcp(&mut state, "far", 3, on("l3", json!([{"name": "far", "namespace": "other", "port": 3000}])));
        tcp(&mut state, "no-port", 4, on("l4", json!([{"name": "good"}])));
        tcp(
            &mut state,
            "weights",
            5,
            on(
                "l5",
                json!([{"name": "good", "port": 3000, "weight": 0}, {"name": "also", "port": 3000, "weight": 3}]),
            ),
        );
        udp(&mut state, "no-udp-port", 6, on("l6", json!([{"name": "good", "port": 3000}])));
        tcp(
            &mut state,
            "no-refs",
            7,
            json!({"parentRefs": [{"name": "gw", "sectionName": "l7"}], "rules": [{}]}),
        );
        tcp(&mut state, "no-rules", 8, json!({"parentRefs": [{"name": "gw", "sectionName": "l8"}]}));
        tcp(&mut state, "no-endpoints", 9, on("l9", json!([{"name": "empty", "port": 3000}])));
        let t = build(&state);
        let resolved = |kind: RouteKind, name: &str| {
            let c = parents(&t, kind, name)[0].conditions.iter().find(|c| c.type_ == "ResolvedRefs").unwrap();
            (c.status.clone(), c.reason.clone(), c.message.clone())
        };
        let reason = |kind, name| resolved(kind, name).1;
        assert_eq!(reason(RouteKind::Tcp, "missing"), "BackendNotFound");
        assert_eq!(reason(RouteKind::Tcp, "kind"), "InvalidKind");
        assert_eq!(reason(RouteKind::Tcp, "far"), "RefNotPermitted");
        assert_eq!(reason(RouteKind::Tcp, "no-port"), "BackendNotFound");
        assert_eq!(reason(RouteKind::Tcp, "weights"), "ResolvedRefs");
        assert_eq!(reason(RouteKind::Udp, "no-udp-port"), "BackendNotFound");
        assert!(resolved(RouteKind::Udp, "no-udp-port").2.contains("has no UDP port 3000"));
        assert_eq!(reason(RouteKind::Tcp, "no-refs"), "BackendNotFound");
        assert!(resolved(RouteKind::Tcp, "no-refs").2.contains("no backendRefs"));
        assert_eq!(reason(RouteKind::Tcp, "no-rules"), "BackendNotFound");
        assert_eq!(
            reason(RouteKind::Tcp, "no-endpoints"),
            "ResolvedRefs",
            "a Service without endpoints is resolved"
        );
        for name in ["missing", "kind", "far", "no-refs", "no-endpoints"] {
            assert!(
                has(&parents(&t, RouteKind::Tcp, name)[0].conditions, "Accepted", "True", "Accepted"),
                "{name}"
            );
        }
        let endpoints =
            |listener: &str| service(&t, &format!("gateway:ns/gw/{listener}")).map(|s| s.endpoints.clone());
        // The usable backend serves alone; unusable ones make no service: nothing listens.
        assert_eq!(endpoints("l1"), Some(vec!["10.0.0.1:4000".parse().unwrap()]));
        assert_eq!(endpoints("l5"), Some(vec!["10.0.0.2:4000".parse().unwrap()]), "weight 0 is left out");
        for listener in ["l2", "l3", "l4", "l6", "l7", "l8", "l9"] {
            assert_eq!(endpoints(listener), None, "{listener}");
        }
        assert!(
            notes(&t).contains("Gateway ns/gw listener l9: no ready endpoint; tcp port 5009 is not served"),
            "{}",
            notes(&t)
        );
        // A ReferenceGrant in the target's namespace for TCPRoutes of ns lets it through.
        state.reference_grants.push(object(json!({
            "metadata": {"namespace": "other", "name": "grant"},
            "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "TCPRoute", "namespace": "ns"}],
                     "to": [{"group": "", "kind": "Service"}]}})));
        let granted = build(&state);
        let far = &parents(&granted, RouteKind::Tcp, "far")[0].conditions;
        assert!(has(far, "ResolvedRefs", "True", "ResolvedRefs"), "{far:?}");
        let served = service(&granted, "gateway:ns/gw/l3").map(|s| s.endpoints.clone());
        assert_eq!(served, Some(vec!["10.0.0.3:4000".parse().unwrap()]));
    }

    /// Listeners on the node's ports, a ConfigMap's, each other's and an older Gateway's, with
    /// a TCP or UDP route on most of them.
    fn ports_state() -> ClusterState {
        let mut state = class_and_gateway(json!([
            {"name": "node-http", "port": 80, "protocol": "TCP"},
            {"name": "admin", "port": 9000, "protocol": "TCP"},
            {"name": "configmap", "port": 7000, "protocol": "TCP"},
            {"name": "configmap-udp", "port": 7000, "protocol": "UDP"},
            {"name": "twin-a", "port": 7100, "protocol": "TCP"},
            {"name": "twin-b", "port": 7100, "protocol": "TCP"},
            {"name": "http-8080", "port": 8080, "protocol": "HTTP"},
            {"name": "tcp-8080", "port": 8080, "protocol": "TCP"},
            {"name": "shared-tcp", "port": 7200, "protocol": "TCP"},
            {"name": "shared-udp", "port": 7200, "protocol": "UDP"}]));
        service_with_endpoints(
            &mut state,
            "ns",
            "svc",
            &[("tcp", 3000, "TCP"), ("udp", 3000, "UDP")],
            &["10.0.0.1"],
        );
        state.configmaps.push(object(json!({
            "metadata": {"namespace": "ingress", "name": "tcp-services"},
            "data": {"7000": "ns/svc:3000"}})));
        let younger = gateway(
            "younger",
            30,
            json!([
            {"name": "taken", "port": 7200, "protocol": "TCP"},
            {"name": "free", "port": 7300, "protocol": "TCP"}]),
        );
        state.gateways.push(object(younger));
        for (i, listener) in
            ["node-http", "admin", "configmap", "twin-a", "tcp-8080", "shared-tcp"].iter().enumerate()
        {
            tcp(
                &mut state,
                listener,
                i as u32,
                json!({"parentRefs": [{"name": "gw", "sectionName": listener}], "rules": [{"backendRefs": [{"name": "svc", "port": 3000}]}]}),
            );
        }
        for (name, gateway, listener) in
            [("configmap-udp", "gw", "configmap-udp"), ("shared-udp", "gw", "shared-udp")]
        {
            udp(
                &mut state,
                name,
                20,
                json!({"parentRefs": [{"name": gateway, "sectionName": listener}], "rules": [{"backendRefs": [{"name": "svc", "port": 3000}]}]}),
            );
        }
        tcp(
            &mut state,
            "younger",
            40,
            json!({"parentRefs": [{"name": "younger"}], "rules": [{"backendRefs": [{"name": "svc", "port": 3000}]}]}),
        );
        state
    }

    /// Ports: the node's own, a tcp-services ConfigMap key, an older Gateway's, and the 16
    /// services of the node are refused (PortUnavailable) while the rest serve. TCP and UDP
    /// listeners share a port; two TCP listeners, or TCP and HTTP, on one port conflict.
    #[test]
    fn ports_in_use_conflicts_and_the_l4_limit_are_reported() {
        let state = ports_state();
        let settings =
            Settings { tcp_services_configmap: Some("ingress/tcp-services".into()), ..Settings::default() };
        let t = build_with(&state, settings);
        let accepted = |gateway: &str, name: &str| {
            let c = &listener(&t, gateway, name).conditions;
            (c[0].reason.clone(), c[0].message.clone(), c[2].reason.clone())
        };
        assert_eq!(accepted("gw", "node-http").0, "PortUnavailable");
        assert!(
            accepted("gw", "node-http").1.contains("listener \"web\""),
            "{:?}",
            accepted("gw", "node-http")
        );
        assert!(accepted("gw", "admin").1.contains("admin server"));
        assert_eq!(accepted("gw", "configmap").0, "PortUnavailable");
        assert!(accepted("gw", "configmap").1.contains("tcp-services ConfigMap ingress/tcp-services"));
        assert_eq!(accepted("gw", "configmap-udp").0, "Accepted", "the ConfigMap is TCP");
        assert_eq!(accepted("gw", "twin-a").2, "HostnameConflict");
        assert_eq!(accepted("gw", "twin-b").2, "HostnameConflict");
        assert_eq!(accepted("gw", "http-8080").2, "ProtocolConflict");
        assert_eq!(accepted("gw", "tcp-8080").2, "ProtocolConflict");
        assert_eq!(accepted("gw", "shared-tcp").0, "Accepted");
        assert_eq!(accepted("gw", "shared-udp").0, "Accepted");
        assert_eq!(accepted("younger", "taken").0, "PortUnavailable");
        assert!(accepted("younger", "taken").1.contains("Gateway ns/gw's listener shared-tcp"));
        assert_eq!(accepted("younger", "free").0, "Accepted");
        let gateway_accepted = &t.gateway.gateways.iter().find(|(k, _)| k.1 == "gw").unwrap().1.conditions[0];
        assert_eq!(
            (gateway_accepted.status.as_str(), gateway_accepted.reason.as_str()),
            ("True", "ListenersNotValid")
        );
        // The ConfigMap's entry keeps port 7000; the Gateway serves the rest.
        let mut served: Vec<(String, u16)> =
            t.config.l4_services.iter().map(|s| (s.name.clone(), s.address.port())).collect();
        served.sort();
        let expected: Vec<(String, u16)> = [
            ("gateway:ns/gw/configmap-udp", 7000),
            ("gateway:ns/gw/shared-tcp", 7200),
            ("gateway:ns/gw/shared-udp", 7200),
            ("gateway:ns/younger/free", 7300),
            ("tcp/7000", 7000),
        ]
        .into_iter()
        .map(|(n, p)| (n.to_owned(), p))
        .collect();
        assert_eq!(served, expected, "{}", notes(&t));
    }

    /// The node's 16 L4 services: the ConfigMap's one and 15 listeners; the 16th listener is
    /// refused. One UDPRoute without sectionName attaches to every listener that takes it
    /// (TCPRouteParentRefAttachAll's shape).
    #[test]
    fn listeners_past_the_nodes_sixteen_l4_services_are_refused() {
        let settings =
            Settings { tcp_services_configmap: Some("ingress/tcp-services".into()), ..Settings::default() };
        let many: Vec<Value> = (0..16)
            .map(|i| json!({"name": format!("m{i}"), "port": 10_000 + i, "protocol": "UDP"}))
            .collect();
        let mut state = class_and_gateway(Value::Array(many));
        service_with_endpoints(
            &mut state,
            "ns",
            "svc",
            &[("udp", 3000, "UDP"), ("tcp", 3000, "TCP")],
            &["10.0.0.1"],
        );
        state.configmaps.push(object(json!({
            "metadata": {"namespace": "ingress", "name": "tcp-services"}, "data": {"7000": "ns/svc:3000"}})));
        udp(
            &mut state,
            "all",
            1,
            json!({"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [{"name": "svc", "port": 3000}]}]}),
        );
        let t = build_with(&state, settings);
        assert_eq!(t.config.l4_services.len(), 16);
        let last = &listener(&t, "gw", "m15").conditions[0];
        assert_eq!(last.reason, "PortUnavailable");
        assert!(last.message.contains("at most 16 L4 services"), "{}", last.message);
        assert_eq!(listener(&t, "gw", "m14").conditions[0].reason, "Accepted");
        assert_eq!(listener(&t, "gw", "m15").attached_routes, 0);
        assert_eq!(listener(&t, "gw", "m14").attached_routes, 1);
    }

    /// IPv6-only endpoints make a `[::]:PORT` service (as the ConfigMap entries do).
    #[test]
    fn ipv6_only_endpoints_make_an_ipv6_service() {
        let mut state = class_and_gateway(json!([{"name": "tcp", "port": 5432, "protocol": "TCP"}]));
        state.services.push(object(json!({
            "metadata": {"namespace": "ns", "name": "v6"},
            "spec": {"ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]}})));
        state.slices.push(object(json!({
            "metadata": {"namespace": "ns", "name": "v6-1", "labels": {"kubernetes.io/service-name": "v6"}},
            "addressType": "IPv6", "ports": [{"name": "pg", "port": 6432, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["fd00::1"], "conditions": {"ready": true}}]})));
        let spec = json!({"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [{"name": "v6", "port": 5432}]}]});
        tcp(&mut state, "db", 1, spec);
        let t = build(&state);
        let db = service(&t, "gateway:ns/gw/tcp").unwrap_or_else(|| panic!("{}", notes(&t)));
        assert_eq!(db.address, "[::]:5432".parse().unwrap());
        assert_eq!(db.endpoints, ["[fd00::1]:6432".parse().unwrap()]);
    }

    /// Different weights (TCPRouteWeightedRouting's 70/30) are served as shares by endpoints,
    /// and said so; equal weights are not worth a note.
    #[test]
    fn different_weights_are_noted_as_not_carried() {
        let mut state = class_and_gateway(json!([{"name": "tcp", "port": 3000, "protocol": "TCP"}]));
        service_with_endpoints(&mut state, "ns", "v1", &[("tcp", 3000, "TCP")], &["10.0.0.1"]);
        service_with_endpoints(&mut state, "ns", "v2", &[("tcp", 3000, "TCP")], &["10.0.0.2"]);
        let refs = |w1: i32, w2: i32| {
            json!({"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [
                {"name": "v1", "port": 3000, "weight": w1}, {"name": "v2", "port": 3000, "weight": w2}]}]})
        };
        tcp(&mut state, "weighted", 1, refs(7, 3));
        let t = build(&state);
        assert_eq!(service(&t, "gateway:ns/gw/tcp").unwrap().endpoints.len(), 2);
        assert!(notes(&t).contains("weights are not carried"), "{}", notes(&t));
        state.tcp_routes.clear();
        tcp(&mut state, "weighted", 1, refs(2, 2));
        assert!(!notes(&build(&state)).contains("weights are not carried"));
    }
}
