//! The Gateway API as a second source of the same configuration: the GatewayClasses that name
//! [`GATEWAY_CONTROLLER`], their Gateways' listeners, and the HTTPRoutes attached to them become
//! virtual hosts, routes, certificates and backends beside the Ingresses', and the statuses
//! the spec asks for are computed from the same state ([`GatewayStatuses`]; the leader writes
//! them).
//!
//! - **Listeners** are served by the node's own listeners: an HTTP listener by a plain one with
//!   its port, an HTTPS or TLS-passthrough one by a TLS one. A port the node does not listen on
//!   gives `Accepted: False, PortUnavailable` (Sluice does not open ports from Gateways: the
//!   node's ports are the DaemonSet's). TLS termination for TLSRoutes is `UnsupportedValue`.
//!   TCP and UDP listeners are the exception: each is an L4 service on `0.0.0.0:PORT` ([`l4`]).
//! - **Route kinds**: HTTPRoute and GRPCRoute (the same router: a gRPC method is a path, and
//!   its backends are spoken to over HTTP/2) on HTTP and HTTPS listeners, TLSRoute on TLS
//!   passthrough listeners (the TLS listener splices by SNI, as `ssl-passthrough`), TCPRoute
//!   and UDPRoute on TCP and UDP listeners.
//! - **Attachment**: a parentRef attaches to the Gateway's listeners that its `sectionName`
//!   and `port` select (`NoMatchingParent` when none), whose `allowedRoutes` admit the route's
//!   namespace and kind (`NotAllowedByListeners`), and whose hostname intersects the route's
//!   (`NoMatchingListenerHostname`). Wildcards take any number of labels, as the spec says.
//! - **Precedence** across routes is the router's (exact path, longest path, more
//!   constraints), then the oldest route; an Ingress that already claims the same host and
//!   match keeps it (Ingresses are read first: they are what users migrate from). An HTTPRoute
//!   and a GRPCRoute whose hostnames intersect on one listener: the older is accepted there,
//!   the other is not (`NotAllowedByListeners`), as the GRPCRoute spec requires.
//! - **References**: a backendRef must be a Service (`InvalidKind`), in the route's namespace
//!   or allowed by a ReferenceGrant (`RefNotPermitted`), and exist (`BackendNotFound`); a rule
//!   whose backends are all unusable, or all weight 0, answers 500, as the spec requires. The
//!   same goes for a filter Sluice does not implement (`ExtensionRef`, `CORS`, ...): its
//!   rule answers 500 and the route says `PartiallyInvalid` (or `Accepted: False` when no rule
//!   is left).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{
    api::{core::v1::Namespace, networking::v1::ServiceBackendPort},
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};

mod l4;

use super::{Builder, IngressId, host_tls_template, route_template};
use crate::{
    config::{
        EndpointConfig, HeaderField, HeaderMatch, HeaderOpsConfig, PathMatch, QueryParamMatch,
        RedirectConfig, RewriteConfig, RouteConfig,
    },
    provider::kube::{
        annotations::BackendSettings,
        gateway_api::{
            Condition, ConditionsStatus, GROUP, GRPCMethodMatch, GRPCRoute, GRPCRouteRule, Gateway,
            GatewayStatus, HTTPBackendRef, HTTPPathMatch, HTTPRoute, HTTPRouteFilter, HTTPRouteMatch,
            HTTPRouteRule, HeaderModifier, Listener, ListenerStatus, ParentReference, RequestMirror,
            RouteGroupKind, RouteParentStatus, SessionPersistence, TLSRoute,
        },
    },
};

/// The `spec.controllerName` of GatewayClasses that Sluice serves.
pub const GATEWAY_CONTROLLER: &str = "sluice.dev/gateway-controller";

/// An object by namespace (empty for cluster-scoped kinds) and name.
pub type ObjectKey = (String, String);

/// The statuses the Gateway API objects should have, as computed from the cluster state;
/// `last_transition_time`s are left for the writer. Only objects Sluice is responsible for are
/// listed, and for routes only the parents that are Sluice's Gateways.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GatewayStatuses {
    pub classes: Vec<(ObjectKey, ConditionsStatus)>,
    /// Addresses are left empty: the writer publishes the node's (or the configured) addresses.
    pub gateways: Vec<(ObjectKey, GatewayStatus)>,
    /// Each route's parents that are Sluice's Gateways.
    pub routes: BTreeMap<(RouteKind, ObjectKey), Vec<RouteParentStatus>>,
}

/// The route kinds Sluice serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKind {
    Http,
    Grpc,
    Tls,
    Tcp,
    Udp,
}

impl RouteKind {
    pub const ALL: [RouteKind; 5] =
        [RouteKind::Http, RouteKind::Grpc, RouteKind::Tls, RouteKind::Tcp, RouteKind::Udp];

    /// The kind's name in the API.
    pub fn name(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
            RouteKind::Tls => "TLSRoute",
            RouteKind::Tcp => "TCPRoute",
            RouteKind::Udp => "UDPRoute",
        }
    }

    /// TCPRoute and UDPRoute: served as L4 services, not by the router.
    fn is_l4(self) -> bool {
        matches!(self, RouteKind::Tcp | RouteKind::Udp)
    }

    fn from_name(name: &str) -> Option<RouteKind> {
        RouteKind::ALL.into_iter().find(|k| k.name() == name)
    }

    fn group_kind(self) -> RouteGroupKind {
        RouteGroupKind { group: Some(GROUP.to_owned()), kind: self.name().to_owned() }
    }

    /// The kinds a listener of this protocol takes when its `allowedRoutes.kinds` is empty.
    fn defaults_for(protocol: &str) -> &'static [RouteKind] {
        match protocol {
            "HTTP" | "HTTPS" => &[RouteKind::Http, RouteKind::Grpc],
            "TLS" => &[RouteKind::Tls],
            "TCP" => &[RouteKind::Tcp],
            "UDP" => &[RouteKind::Udp],
            _ => &[],
        }
    }
}

/// A route of any kind, as attachment and translation read it. A GRPCRoute's rules are
/// converted to HTTPRoute rules (a method is a path); a TLSRoute's keep only their backends.
struct RouteView<'a> {
    kind: RouteKind,
    namespace: String,
    name: String,
    generation: i64,
    parent_refs: &'a [ParentReference],
    hostnames: &'a [String],
    rules: std::borrow::Cow<'a, [HTTPRouteRule]>,
}
/// A Gateway listener as the translation sees it.
struct ListenerBuild {
    hostname: Option<String>,
    port: i32,
    /// The route kinds that may attach (allowed, and the listener is accepted).
    takes: Vec<RouteKind>,
    /// Hostnames given to L7 routes here, by kind: an HTTPRoute and a GRPCRoute may not share
    /// one.
    claimed: Vec<(RouteKind, String)>,
    /// Serves traffic: accepted, its references resolved, no conflict, and the node listens
    /// on its port.
    programmed: bool,
    /// The certificate (configuration name) an HTTPS listener terminates with.
    certificate: Option<String>,
    /// The node listener that serves it (same port, plain or TLS as its protocol).
    node_listener: Option<String>,
    namespaces: AllowedNamespaces,
    status: ListenerStatus,
    /// A TCP or UDP listener's L4 service.
    l4: Option<l4::Slot>,
}

enum AllowedNamespaces {
    Same,
    All,
    Selector(LabelSelector),
    None,
}

struct GatewayBuild {
    namespace: String,
    listeners: Vec<ListenerBuild>,
    /// Why the Gateway is not accepted (reason, message); `None`: it is, and its listeners
    /// may take routes.
    refused: Option<(&'static str, &'static str)>,
    generation: i64,
}

/// What a route gets under one hostname from the listeners it attached to.
#[derive(Default)]
struct Attached {
    /// The certificate of an HTTPS listener among them, if any.
    certificate: Option<String>,
    /// Their node listeners.
    listeners: BTreeSet<String>,
}

/// A rule's routes, and why part of it is not served as written.
struct RuleRoutes {
    routes: Vec<RouteConfig>,
    /// The rule's backend group (a TLSRoute's passthrough target).
    backend: Option<String>,
    /// A reference problem: (reason, message) for `ResolvedRefs`.
    unresolved: Option<(&'static str, String)>,
    /// A value Sluice does not support (the rule answers 500, or is dropped).
    unsupported: Option<String>,
    /// A TCPRoute's or UDPRoute's rule: the ready endpoints of its usable backends.
    endpoints: Vec<std::net::SocketAddr>,
}

fn created<T: kube::Resource>(object: &T) -> (Option<k8s_openapi::jiff::Timestamp>, String, String) {
    let meta = object.meta();
    (
        meta.creation_timestamp.as_ref().map(|t| t.0),
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// The owner of a route's configuration, for notes and set-asides: a name with a `/` can
/// never be an Ingress's.
pub fn route_id(kind: RouteKind, namespace: &str, name: &str) -> IngressId {
    IngressId { namespace: namespace.into(), name: format!("{}/{name}", kind.name()).into() }
}

/// The `route_id` of an HTTPRoute.
pub fn http_route_id(namespace: &str, name: &str) -> IngressId {
    route_id(RouteKind::Http, namespace, name)
}

fn gateway_id(namespace: &str, name: &str) -> IngressId {
    IngressId { namespace: namespace.into(), name: format!("Gateway/{name}").into() }
}

impl Builder<'_> {
    /// Translates the Gateway API objects that are ours, after the Ingresses; returns their
    /// statuses.
    pub(super) fn gateway_api(&mut self, excluded: &BTreeSet<IngressId>) -> GatewayStatuses {
        let mut statuses = GatewayStatuses::default();
        let mut classes: Vec<_> = self
            .state
            .gateway_classes
            .iter()
            .filter(|c| c.spec.controller_name == GATEWAY_CONTROLLER)
            .collect();
        classes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let mut accepted_classes = BTreeSet::new();
        for class in classes {
            let name = class.metadata.name.clone().unwrap_or_default();
            let generation = class.metadata.generation.unwrap_or(0);
            let accepted = class.spec.parameters_ref.is_none();
            let conditions = vec![
                if accepted {
                    Condition::new("Accepted", true, "Accepted", "Sluice serves this class", generation)
                } else {
                    Condition::new(
                        "Accepted",
                        false,
                        "InvalidParameters",
                        "parametersRef is not supported",
                        generation,
                    )
                },
                Condition::new("SupportedVersion", true, "SupportedVersion", "", generation),
            ];
            if accepted {
                accepted_classes.insert(name.clone());
            }
            statuses.classes.push(((String::new(), name), ConditionsStatus { conditions }));
        }
        let mut gateways: Vec<&Gateway> = self
            .state
            .gateways
            .iter()
            .map(AsRef::as_ref)
            .filter(|g| accepted_classes.contains(&g.spec.gateway_class_name))
            .collect();
        gateways.sort_by_key(|g| created(*g));
        let mut built: BTreeMap<ObjectKey, GatewayBuild> = BTreeMap::new();
        let mut l4_ports = l4::Ports::new(self);
        for gateway in gateways {
            let (_, namespace, name) = created(gateway);
            let mut build = self.gateway(gateway, &namespace, &name);
            l4_ports.claim(&mut build, &name);
            built.insert((namespace.clone(), name.clone()), build);
        }
        // All kinds in one order, oldest first: which of an HTTPRoute and a GRPCRoute gets a
        // hostname they both name depends on their age.
        let mut routes: Vec<(_, RouteView<'_>)> = Vec::new();
        for route in &self.state.http_routes {
            routes.push((created(route.as_ref()), http_view(route)));
        }
        for route in &self.state.grpc_routes {
            routes.push((created(route.as_ref()), grpc_view(route)));
        }
        for route in &self.state.tls_routes {
            routes.push((created(route.as_ref()), tls_view(route)));
        }
        for route in &self.state.tcp_routes {
            routes.push((created(route.as_ref()), l4::view(RouteKind::Tcp, route.as_ref(), &route.spec)));
        }
        for route in &self.state.udp_routes {
            routes.push((created(route.as_ref()), l4::view(RouteKind::Udp, route.as_ref(), &route.spec)));
        }
        routes.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.kind.cmp(&b.1.kind)));
        for (_, view) in routes {
            let set_aside = excluded.contains(&route_id(view.kind, &view.namespace, &view.name));
            let parents = self.route(&view, set_aside, &mut built);
            if !parents.is_empty() {
                statuses.routes.insert((view.kind, (view.namespace.clone(), view.name.clone())), parents);
            }
        }
        for (key, gateway) in built {
            self.l4_services_of(&key, &gateway);
            statuses.gateways.push((key, gateway_status(gateway)));
        }
        statuses
    }

    fn gateway(&mut self, gateway: &Gateway, namespace: &str, name: &str) -> GatewayBuild {
        let generation = gateway.metadata.generation.unwrap_or(0);
        let id = gateway_id(namespace, name);
        let mut listeners: Vec<ListenerBuild> =
            gateway.spec.listeners.iter().map(|l| self.listener(l, namespace, generation, &id)).collect();
        mark_conflicts(&gateway.spec.listeners, &mut listeners, generation);
        let refused = if !gateway.spec.addresses.is_empty() {
            Some(("UnsupportedAddress", "spec.addresses is not supported"))
        } else if gateway.spec.infrastructure.as_ref().is_some_and(|i| i.parameters_ref.is_some()) {
            Some((
                "InvalidParameters",
                "infrastructure.parametersRef is not supported (Sluice reads no parameters)",
            ))
        } else {
            None
        };
        if refused.is_some() {
            for listener in &mut listeners {
                listener.programmed = false;
                listener.takes.clear();
                listener.status.conditions[3] =
                    Condition::new("Programmed", false, "Invalid", "the Gateway is not accepted", generation);
            }
        }
        GatewayBuild { namespace: namespace.to_owned(), listeners, refused, generation }
    }

    fn listener(
        &mut self,
        listener: &Listener,
        namespace: &str,
        generation: i64,
        id: &IngressId,
    ) -> ListenerBuild {
        let condition = |type_: &str, ok: bool, reason: &str, message: String| {
            Condition::new(type_, ok, reason, message, generation)
        };
        let mut accepted = (true, "Accepted", String::new());
        let mut resolved = (true, "ResolvedRefs", String::new());
        let protocol = listener.protocol.as_str();
        let supported = match protocol_supported(listener) {
            Ok(()) => true,
            Err((reason, message)) => {
                accepted = (false, reason, message);
                false
            }
        };
        let on_tls = protocol != "HTTP";
        let l4 = l4::Slot::of(listener);
        let node_listener = self
            .base
            .listeners
            .iter()
            .find(|l| i32::from(l.address.port()) == listener.port && l.tls.is_some() == on_tls)
            .filter(|_| l4.is_none())
            .map(|l| l.name.clone());
        if let (true, Some(Err(why))) = (supported, &l4) {
            accepted = (false, "PortUnavailable", why.clone());
        } else if supported && l4.is_none() && node_listener.is_none() {
            let kind = if on_tls { "TLS" } else { "plain" };
            accepted = (
                false,
                "PortUnavailable",
                format!(
                    "the node has no {kind} listener on port {}; see the base configuration's listeners",
                    listener.port
                ),
            );
        }
        let (kinds, invalid_kinds) = route_kinds(listener);
        if !invalid_kinds.is_empty() {
            resolved = (
                false,
                "InvalidRouteKinds",
                format!("route kinds not supported: {}", invalid_kinds.join(", ")),
            );
        }
        let mut certificate = None;
        if supported && protocol == "HTTPS" {
            match self.listener_certificate(listener, namespace, id) {
                Ok(name) => certificate = Some(name),
                Err((reason, message)) => resolved = (false, reason, message),
            }
        }
        // TCP and UDP listeners ignore their hostname, as the spec says.
        let hostname = listener.hostname.clone().filter(|h| !h.is_empty() && l4.is_none());
        let hostname = hostname.map(|h| h.to_ascii_lowercase());
        // Kinds it cannot take are reported, but the listener serves those it can.
        let programmed =
            accepted.0 && (resolved.0 || (resolved.1 == "InvalidRouteKinds" && !kinds.is_empty()));
        let namespaces = allowed_namespaces(listener);
        let status = ListenerStatus {
            name: listener.name.clone(),
            supported_kinds: kinds.clone(),
            attached_routes: 0,
            conditions: vec![
                condition("Accepted", accepted.0, accepted.1, accepted.2),
                condition("ResolvedRefs", resolved.0, resolved.1, resolved.2),
                condition("Conflicted", false, "NoConflicts", String::new()),
                condition(
                    "Programmed",
                    programmed,
                    if programmed { "Programmed" } else { "Invalid" },
                    String::new(),
                ),
            ],
        };
        ListenerBuild {
            hostname,
            port: listener.port,
            takes: if accepted.0 {
                kinds.iter().filter_map(|k| RouteKind::from_name(&k.kind)).collect()
            } else {
                Vec::new()
            },
            claimed: Vec::new(),
            programmed,
            certificate,
            node_listener,
            namespaces,
            status,
            l4: l4.and_then(Result::ok),
        }
    }

    /// The first certificateRef of an HTTPS listener, loaded: its configuration name, or the
    /// reason and message of `ResolvedRefs: False`.
    fn listener_certificate(
        &mut self,
        listener: &Listener,
        namespace: &str,
        id: &IngressId,
    ) -> Result<String, (&'static str, String)> {
        let refs = listener.tls.as_ref().map(|t| t.certificate_refs.as_slice()).unwrap_or(&[]);
        let Some(reference) = refs.first() else {
            return Err(("InvalidCertificateRef", "an HTTPS listener needs a certificateRef".to_owned()));
        };
        let group = reference.group.as_deref().unwrap_or("");
        let kind = reference.kind.as_deref().unwrap_or("Secret");
        if !(group.is_empty() || group == "core") || kind != "Secret" {
            return Err(("InvalidCertificateRef", format!("certificateRef {group}/{kind} is not a Secret")));
        }
        let secret_namespace = reference.namespace.as_deref().unwrap_or(namespace);
        if secret_namespace != namespace
            && !self
                .reference_granted(("Gateway", namespace), ("", "Secret", secret_namespace, &reference.name))
        {
            return Err((
                "RefNotPermitted",
                format!(
                    "no ReferenceGrant in {secret_namespace} allows Gateways of {namespace} to use Secret {}",
                    reference.name
                ),
            ));
        }
        if !self.index.secrets.contains_key(&(secret_namespace, reference.name.as_str())) {
            return Err((
                "InvalidCertificateRef",
                format!("Secret {secret_namespace}/{} not found", reference.name),
            ));
        }
        let notes = self.notes.len();
        let loaded = self.certificate(secret_namespace, &reference.name, id);
        let why = self.notes.drain(notes..).map(|n| n.message).collect::<Vec<_>>().join("; ");
        loaded.ok_or(("InvalidCertificateRef", why))
    }

    /// Whether a ReferenceGrant in the target's namespace lets objects of `from` (kind,
    /// namespace; this API group) refer to the target (group, kind, namespace, name).
    fn reference_granted(&self, from: (&str, &str), to: (&str, &str, &str, &str)) -> bool {
        let (from_kind, from_namespace) = from;
        let (to_group, to_kind, to_namespace, to_name) = to;
        self.state.reference_grants.iter().any(|grant| {
            grant.metadata.namespace.as_deref() == Some(to_namespace)
                && grant
                    .spec
                    .from
                    .iter()
                    .any(|f| f.group == GROUP && f.kind == from_kind && f.namespace == from_namespace)
                && grant.spec.to.iter().any(|t| {
                    (t.group == to_group || (t.group == "core" && to_group.is_empty()))
                        && t.kind == to_kind
                        && t.name.as_deref().is_none_or(|n| n.is_empty() || n == to_name)
                })
        })
    }

    /// Attaches one route to the listeners its parentRefs select, and adds its rules (or, for
    /// a TLSRoute, its passthrough) for the hostnames it gets there. Returns its status for
    /// Sluice's parents. A route `set_aside` (its configuration did not validate, see
    /// `Translator::build`) adds nothing and says so.
    fn route(
        &mut self,
        route: &RouteView<'_>,
        set_aside: bool,
        gateways: &mut BTreeMap<ObjectKey, GatewayBuild>,
    ) -> Vec<RouteParentStatus> {
        let generation = route.generation;
        let id = route_id(route.kind, &route.namespace, &route.name);
        let rules: Vec<RuleRoutes> = if set_aside {
            Vec::new()
        } else {
            let rule = |(i, rule): (usize, &HTTPRouteRule)| {
                if route.kind.is_l4() {
                    self.l4_rule(rule, route)
                } else {
                    self.route_rule(route, rule, i, &id)
                }
            };
            route.rules.iter().enumerate().map(rule).collect()
        };
        let unresolved = rules.iter().find_map(|r| r.unresolved.clone());
        let mut unsupported: Vec<&str> = rules.iter().filter_map(|r| r.unsupported.as_deref()).collect();
        let all_unsupported = set_aside || (!rules.is_empty() && unsupported.len() == rules.len());
        if set_aside {
            unsupported.push("the configuration it makes does not validate (see Sluice's log)");
        }
        let route_hostnames: Vec<String> = route.hostnames.iter().map(|h| h.to_ascii_lowercase()).collect();
        let mut parents = Vec::new();
        let mut hostnames: BTreeMap<String, Attached> = BTreeMap::new();
        for parent in route.parent_refs {
            let group = parent.group.as_deref().unwrap_or(GROUP);
            let kind = parent.kind.as_deref().unwrap_or("Gateway");
            if group != GROUP || kind != "Gateway" {
                continue;
            }
            let gateway_namespace = parent.namespace.clone().unwrap_or_else(|| route.namespace.clone());
            let Some(gateway) = gateways.get_mut(&(gateway_namespace.clone(), parent.name.clone())) else {
                continue;
            };
            let accepted = self.attach(parent, route, &route_hostnames, gateway, &mut hostnames);
            let mut conditions = vec![match accepted {
                Ok(()) if all_unsupported => {
                    Condition::new("Accepted", false, "UnsupportedValue", unsupported.join("; "), generation)
                }
                Ok(()) => Condition::new("Accepted", true, "Accepted", "", generation),
                Err((reason, message)) => Condition::new("Accepted", false, reason, message, generation),
            }];
            conditions.push(match &unresolved {
                None => Condition::new("ResolvedRefs", true, "ResolvedRefs", "", generation),
                Some((reason, message)) => {
                    Condition::new("ResolvedRefs", false, reason, message.clone(), generation)
                }
            });
            if !unsupported.is_empty() && !all_unsupported {
                conditions.push(Condition::new(
                    "PartiallyInvalid",
                    true,
                    "UnsupportedValue",
                    unsupported.join("; "),
                    generation,
                ));
            }
            parents.push(RouteParentStatus {
                parent_ref: ParentReference {
                    group: Some(GROUP.to_owned()),
                    kind: Some("Gateway".to_owned()),
                    namespace: Some(gateway_namespace),
                    ..parent.clone()
                },
                controller_name: GATEWAY_CONTROLLER.to_owned(),
                conditions,
            });
        }
        if route.kind.is_l4() {
            if !set_aside {
                self.serve_l4_route(route, &rules, gateways);
            }
        } else if !set_aside {
            for (hostname, attached) in hostnames {
                if route.kind == RouteKind::Tls {
                    self.serve_tls_route_host(&hostname, &rules, &id);
                } else {
                    self.serve_route_host(&hostname, attached, &rules, &id);
                }
            }
        }
        parents
    }

    /// Attaches to the listeners of one parentRef: the hostnames it serves are added to
    /// `hostnames`, and the listeners' attached-route counts go up. `Err` is the reason and
    /// message of `Accepted: False`.
    fn attach(
        &self,
        parent: &ParentReference,
        route: &RouteView<'_>,
        route_hostnames: &[String],
        gateway: &mut GatewayBuild,
        hostnames: &mut BTreeMap<String, Attached>,
    ) -> Result<(), (&'static str, String)> {
        let route_namespace = route.namespace.as_str();
        if gateway.refused.is_some() {
            return Err(("NoMatchingParent", "the Gateway is not accepted".to_owned()));
        }
        let selected: Vec<usize> = gateway
            .listeners
            .iter()
            .enumerate()
            .filter(|(_, l)| parent.section_name.as_deref().is_none_or(|s| s == l.status.name))
            .filter(|(_, l)| parent.port.is_none_or(|p| p == l.port))
            .map(|(i, _)| i)
            .collect();
        if selected.is_empty() {
            return Err((
                "NoMatchingParent",
                "no listener matches the parentRef's sectionName and port".to_owned(),
            ));
        }
        let namespace_labels = self.namespace_labels(route_namespace);
        let allowed: Vec<usize> = selected
            .into_iter()
            .filter(|&i| {
                let l = &gateway.listeners[i];
                l.takes.contains(&route.kind)
                    && match &l.namespaces {
                        AllowedNamespaces::All => true,
                        AllowedNamespaces::Same => route_namespace == gateway.namespace,
                        AllowedNamespaces::Selector(selector) => selects(selector, namespace_labels),
                        AllowedNamespaces::None => false,
                    }
            })
            .collect();
        if allowed.is_empty() {
            return Err((
                "NotAllowedByListeners",
                "no listener of the parentRef allows this route".to_owned(),
            ));
        }
        let mut matched = false;
        let mut conflict = None;
        for i in allowed {
            let listener = &mut gateway.listeners[i];
            let names = intersect(listener.hostname.as_deref(), route_hostnames);
            if names.is_empty() {
                continue;
            }
            if let Some(other) = other_l7_kind(route.kind) {
                let taken = listener.claimed.iter().find(|(kind, claimed)| {
                    *kind == other && names.iter().any(|n| hostnames_overlap(n, claimed))
                });
                if let Some((_, claimed)) = taken {
                    conflict.get_or_insert(format!(
                        "an older {} already has hostname {:?} on listener {}",
                        other.name(),
                        if claimed.is_empty() { "*" } else { claimed },
                        listener.status.name
                    ));
                    continue;
                }
                listener.claimed.extend(names.iter().map(|n| (route.kind, n.clone())));
            }
            matched = true;
            listener.status.attached_routes += 1;
            if !listener.programmed {
                continue;
            }
            if let Some(slot) = &mut listener.l4 {
                // The oldest route is bound to a TCP or UDP listener (the spec's conflict rule).
                slot.bind(route_id(route.kind, &route.namespace, &route.name));
                continue;
            }
            for name in names {
                let slot = hostnames.entry(name).or_default();
                if slot.certificate.is_none() {
                    slot.certificate.clone_from(&listener.certificate);
                }
                slot.listeners.extend(listener.node_listener.clone());
            }
        }
        if matched {
            Ok(())
        } else if let Some(conflict) = conflict {
            Err(("NotAllowedByListeners", conflict))
        } else {
            Err((
                "NoMatchingListenerHostname",
                "no listener hostname intersects the route's hostnames".to_owned(),
            ))
        }
    }

    fn namespace_labels(&self, namespace: &str) -> Option<&BTreeMap<String, String>> {
        self.state
            .namespaces
            .iter()
            .map(AsRef::<Namespace>::as_ref)
            .find(|n| n.metadata.name.as_deref() == Some(namespace))
            .and_then(|n| n.metadata.labels.as_ref())
    }

    /// Adds an L7 route's rules under one hostname (`*` when neither the route nor the
    /// listener names one), answered only on the node listeners of the Gateway listeners it is
    /// attached to, with the listener's certificate when it is HTTPS.
    fn serve_route_host(&mut self, hostname: &str, attached: Attached, rules: &[RuleRoutes], id: &IngressId) {
        let Attached { certificate, listeners } = attached;
        let listeners: Vec<String> = listeners.into_iter().collect();
        let host = if hostname.is_empty() { "*" } else { hostname };
        if let Some(certificate) = certificate
            && host != "*"
            && !self.tls_taken(host, id)
        {
            let mut host_tls = host_tls_template().clone();
            host_tls.certificate = Some(certificate);
            host_tls.redirect_http = false;
            host_tls.hsts = None;
            self.host_entry(host).tls = Some((host_tls, id.clone()));
        }
        if host.starts_with("*.") {
            self.host_entry(host).deep_wildcards = true;
        }
        for rule in rules {
            for route in &rule.routes {
                let mut route = route.clone();
                route.matcher.listeners.clone_from(&listeners);
                self.claim(host, route, id);
            }
        }
    }

    /// A TLSRoute's passthrough under one hostname (the TLS listener splices connections
    /// whose SNI names it to the rule's backends).
    fn serve_tls_route_host(&mut self, hostname: &str, rules: &[RuleRoutes], id: &IngressId) {
        if hostname.is_empty() {
            self.note(Some(id), "a TLSRoute needs a hostname (its own or its listener's) to pass through");
            return;
        }
        if let Some(backend) = rules.first().and_then(|r| r.backend.clone()) {
            self.passthrough(hostname, Some(backend), id);
        }
    }

    /// One rule: a route per match, with its filters and backends (a TLSRoute's: its backends).
    fn route_rule(
        &mut self,
        route: &RouteView<'_>,
        rule: &HTTPRouteRule,
        index: usize,
        id: &IngressId,
    ) -> RuleRoutes {
        let (namespace, name) = (route.namespace.as_str(), route.name.as_str());
        let rule_name = rule.name.clone().unwrap_or_else(|| index.to_string());
        let mut unresolved = None;
        let (settings, mut unsupported) = match backend_settings(route.kind, rule) {
            Ok(settings) => (settings, None),
            Err(why) => (BackendSettings::default(), Some(format!("rule {rule_name}: {why}"))),
        };
        if route.kind == RouteKind::Tls {
            let backend = match self.rule_backend(rule, route, &settings, id) {
                Ok(backend) => Some(backend),
                Err(problem) => {
                    unresolved = problem;
                    None
                }
            };
            return RuleRoutes { routes: Vec::new(), backend, unresolved, unsupported, endpoints: vec![] };
        }
        let mut template = route_template().clone();
        template.name =
            Some(format!("{}:{namespace}/{name}/{rule_name}", route.kind.name().to_ascii_lowercase()));
        let mut prefix_rewrite = None;
        if let Err(why) =
            self.rule_filters(rule, route, (&mut template, &mut prefix_rewrite), &mut unresolved, id)
        {
            unsupported.get_or_insert(format!("rule {rule_name}: {why}"));
        }
        match rule_timeout(rule) {
            Ok(ms) => template.timeout_ms = ms,
            Err(why) => {
                unsupported.get_or_insert(format!("rule {rule_name}: {why}"));
            }
        }
        if rule.retry.is_some() {
            unsupported.get_or_insert(format!("rule {rule_name}: retry is not supported"));
        }
        if template.redirect.is_none() {
            match self.rule_backend(rule, route, &settings, id) {
                Ok(backend) => template.backend = Some(backend),
                Err(problem) => {
                    template.direct_response = Some(500);
                    unresolved = problem;
                }
            }
        }
        if unsupported.is_some() {
            template.backend = None;
            template.redirect = None;
            template.rewrite = None;
            template.direct_response = Some(500);
        }
        if template.backend.is_none() {
            // Only requests that go to a backend are copied.
            template.mirrors.clear();
        }
        let default_match = [HTTPRouteMatch::default()];
        let matches = if rule.matches.is_empty() { &default_match[..] } else { &rule.matches };
        let mut routes = Vec::new();
        for m in matches {
            match route_match(m) {
                Ok(matcher) => {
                    let mut route = template.clone();
                    if let Some(to) = &prefix_rewrite
                        && route.direct_response.is_none()
                    {
                        match &matcher.path {
                            Some(PathMatch::Prefix(_)) | None => {
                                route.rewrite = Some(Box::new(RewriteConfig {
                                    prefix: Some(to.clone()),
                                    regex: None,
                                    replacement: None,
                                }))
                            }
                            _ => {
                                unsupported.get_or_insert(format!(
                                    "rule {rule_name}: ReplacePrefixMatch needs a PathPrefix match"
                                ));
                                route.backend = None;
                                route.redirect = None;
                                route.direct_response = Some(500);
                            }
                        }
                    }
                    route.matcher = matcher;
                    routes.push(route);
                }
                Err(why) => {
                    unsupported.get_or_insert(format!("rule {rule_name}: {why}"));
                }
            }
        }
        RuleRoutes { routes, backend: None, unresolved, unsupported, endpoints: Vec::new() }
    }

    /// Applies a rule's filters to its route template (a `ReplacePrefixMatch` path is left in
    /// `prefix_rewrite`); a mirror whose backendRef is unusable is left out, its problem in
    /// `unresolved`. `Err`: the first filter that cannot be served.
    fn rule_filters(
        &mut self,
        rule: &HTTPRouteRule,
        route: &RouteView<'_>,
        (template, prefix_rewrite): (&mut RouteConfig, &mut Option<String>),
        unresolved: &mut Option<(&'static str, String)>,
        id: &IngressId,
    ) -> Result<(), String> {
        let mut first_error = None;
        for filter in &rule.filters {
            let applied = match (filter.type_.as_str(), &filter.request_mirror) {
                ("RequestMirror", Some(mirror)) => match self.request_mirror(mirror, route, id) {
                    Ok(mirror) => {
                        template.mirrors.push(mirror);
                        Ok(())
                    }
                    Err(("UnsupportedValue", why)) => Err(why),
                    Err(problem) => {
                        unresolved.get_or_insert(problem);
                        Ok(())
                    }
                },
                _ => apply_filter(filter, template, prefix_rewrite),
            };
            if let Err(why) = applied {
                first_error.get_or_insert(why);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The backend group of a rule: its Services, by weight. `Err` when the rule must answer
    /// 500, with the `ResolvedRefs` problem if a reference is why.
    fn rule_backend(
        &mut self,
        rule: &HTTPRouteRule,
        route: &RouteView<'_>,
        settings: &BackendSettings,
        id: &IngressId,
    ) -> Result<String, Option<(&'static str, String)>> {
        let mut problem = None;
        let mut groups: Vec<(String, u32)> = Vec::new();
        for backend in &rule.backend_refs {
            let target_namespace = match self.service_ref(backend, route) {
                Ok(target_namespace) => target_namespace,
                Err(why) => {
                    problem.get_or_insert(why);
                    continue;
                }
            };
            if !backend.filters.is_empty() {
                problem
                    .get_or_insert(("UnsupportedValue", "backendRef filters are not supported".to_owned()));
                continue;
            }
            let weight = backend.weight.unwrap_or(1).max(0) as u32;
            if weight == 0 {
                continue;
            }
            let port = ServiceBackendPort { number: backend.port, name: None };
            let name = self.backend_group(&target_namespace, &backend.name, &port, settings, id);
            groups.push((name, weight));
        }
        match groups.len() {
            0 => Err(problem),
            1 => Ok(groups.remove(0).0),
            _ => Ok(self.weighted_backends(&groups, id)),
        }
    }

    /// The namespace of the Service a backendRef names, once it is usable: a Service (else
    /// `InvalidKind`), in the route's namespace or granted (`RefNotPermitted`), existing with
    /// a port (`BackendNotFound`).
    fn service_ref(
        &self,
        backend: &HTTPBackendRef,
        route: &RouteView<'_>,
    ) -> Result<String, (&'static str, String)> {
        let namespace = route.namespace.as_str();
        let group = backend.group.as_deref().unwrap_or("");
        let kind = backend.kind.as_deref().unwrap_or("Service");
        let target_namespace = backend.namespace.as_deref().unwrap_or(namespace);
        if !(group.is_empty() || group == "core") || kind != "Service" {
            Err(("InvalidKind", format!("backendRef {group}/{kind} {} is not a Service", backend.name)))
        } else if target_namespace != namespace
            && !self.reference_granted(
                (route.kind.name(), namespace),
                ("", "Service", target_namespace, &backend.name),
            )
        {
            Err((
                "RefNotPermitted",
                format!(
                    "no ReferenceGrant in {target_namespace} allows {}s of {namespace} to use Service {}",
                    route.kind.name(),
                    backend.name
                ),
            ))
        } else if !self.index.services.contains_key(&(target_namespace, backend.name.as_str())) {
            Err(("BackendNotFound", format!("Service {target_namespace}/{} not found", backend.name)))
        } else if backend.port.is_none() {
            Err(("BackendNotFound", format!("backendRef Service {} names no port", backend.name)))
        } else {
            Ok(target_namespace.to_owned())
        }
    }

    /// A `RequestMirror` filter as a mirror of the rule's routes; `Err`: the `ResolvedRefs`
    /// problem of its backendRef, or why its share cannot be read.
    fn request_mirror(
        &mut self,
        mirror: &RequestMirror,
        route: &RouteView<'_>,
        id: &IngressId,
    ) -> Result<crate::config::MirrorConfig, (&'static str, String)> {
        let backend = &mirror.backend_ref;
        let target_namespace = self.service_ref(backend, route)?;
        let fraction = match (mirror.percent, &mirror.fraction) {
            (None, None) => None,
            (Some(percent), None) => Some((percent, 100)),
            (None, Some(f)) => Some((f.numerator, f.denominator.unwrap_or(100))),
            (Some(_), Some(_)) => {
                return Err(("UnsupportedValue", "a RequestMirror sets both percent and fraction".into()));
            }
        };
        let fraction = match fraction {
            None => None,
            Some((numerator, denominator)) => match (u32::try_from(numerator), u32::try_from(denominator)) {
                (Ok(numerator), Ok(denominator)) if denominator > 0 && numerator <= denominator => {
                    Some(crate::config::FractionConfig { numerator, denominator })
                }
                _ => {
                    return Err((
                        "UnsupportedValue",
                        format!("RequestMirror share {numerator}/{denominator} is not a fraction"),
                    ));
                }
            },
        };
        let port = ServiceBackendPort { number: backend.port, name: None };
        let settings = backend_settings(route.kind, &HTTPRouteRule::default()).unwrap_or_default();
        let name = self.backend_group(&target_namespace, &backend.name, &port, &settings, id);
        Ok(crate::config::MirrorConfig { backend: name, fraction, body: true, host: None })
    }

    /// One group over several backend groups, each endpoint weighted so that each group gets
    /// its weight's share of requests (its weight divided among its ready endpoints).
    fn weighted_backends(&mut self, groups: &[(String, u32)], id: &IngressId) -> String {
        let name = groups.iter().map(|(g, w)| format!("{g}@{w}")).collect::<Vec<_>>().join("+");
        if self.backends.contains_key(&name) {
            return name;
        }
        let mut merged = crate::config::BackendConfig::clone(&self.backends[&groups[0].0].0);
        merged.name = name.clone();
        merged.balance = crate::config::Balance::RoundRobin;
        merged.hash_on = None;
        merged.endpoints = Vec::new();
        // Each endpoint's share: its group's weight over the group's ready endpoints, scaled so
        // the largest is the most an endpoint weight may be (10,000).
        let shares: Vec<f64> = groups
            .iter()
            .map(|(group, weight)| {
                let ready = self.backends[group].0.endpoints.iter().filter(|e| e.ready).count().max(1);
                f64::from(*weight) / ready as f64
            })
            .collect();
        let largest = shares.iter().copied().fold(f64::MIN_POSITIVE, f64::max);
        let mut seen = BTreeSet::new();
        for ((group, _), share) in groups.iter().zip(shares) {
            let endpoints: Vec<EndpointConfig> = self.backends[group].0.endpoints.clone();
            let each = ((share / largest * 10_000.0).round() as u32).clamp(1, 10_000);
            for endpoint in endpoints {
                if seen.insert(endpoint.address) {
                    merged.endpoints.push(EndpointConfig { weight: each, ..endpoint });
                }
            }
        }
        self.backends.insert(name.clone(), (std::sync::Arc::new(merged), id.clone()));
        name
    }
}

fn view_of<'a, T: kube::Resource>(
    kind: RouteKind,
    object: &T,
    parent_refs: &'a [ParentReference],
    hostnames: &'a [String],
    rules: std::borrow::Cow<'a, [HTTPRouteRule]>,
) -> RouteView<'a> {
    let (_, namespace, name) = created(object);
    let generation = object.meta().generation.unwrap_or(0);
    RouteView { kind, namespace, name, generation, parent_refs, hostnames, rules }
}

fn http_view(route: &HTTPRoute) -> RouteView<'_> {
    let spec = &route.spec;
    view_of(RouteKind::Http, route, &spec.parent_refs, &spec.hostnames, spec.rules.as_slice().into())
}

fn grpc_view(route: &GRPCRoute) -> RouteView<'_> {
    let spec = &route.spec;
    let rules = spec.rules.iter().map(grpc_rule).collect::<Vec<_>>();
    view_of(RouteKind::Grpc, route, &spec.parent_refs, &spec.hostnames, rules.into())
}

/// A TLSRoute's rule as an HTTPRoute rule with only its backends.
fn tls_view(route: &TLSRoute) -> RouteView<'_> {
    let spec = &route.spec;
    let rules = spec
        .rules
        .iter()
        .map(|r| HTTPRouteRule {
            name: r.name.clone(),
            backend_refs: r.backend_refs.clone(),
            ..Default::default()
        })
        .collect::<Vec<_>>();
    view_of(RouteKind::Tls, route, &spec.parent_refs, &spec.hostnames, rules.into())
}

/// A GRPCRoute rule as the HTTPRoute rule that routes the same requests: gRPC calls are
/// `POST /{service}/{method}`.
fn grpc_rule(rule: &GRPCRouteRule) -> HTTPRouteRule {
    const GRPC_FILTERS: [&str; 4] =
        ["RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror", "ExtensionRef"];
    let filters = rule
        .filters
        .iter()
        .map(|f| {
            if GRPC_FILTERS.contains(&f.type_.as_str()) {
                f.clone()
            } else {
                // The schema forbids them; one written anyway is refused, not applied.
                HTTPRouteFilter { type_: format!("{} (in a GRPCRoute)", f.type_), ..Default::default() }
            }
        })
        .collect();
    let matches = rule
        .matches
        .iter()
        .map(|m| HTTPRouteMatch {
            path: m.method.as_ref().and_then(grpc_method_path),
            headers: m.headers.clone(),
            ..Default::default()
        })
        .collect();
    HTTPRouteRule {
        name: rule.name.clone(),
        matches,
        filters,
        backend_refs: rule.backend_refs.clone(),
        session_persistence: rule.session_persistence.clone(),
        ..Default::default()
    }
}

/// The path match of a gRPC method match: exact when both names are, otherwise a regular
/// expression over `/{service}/{method}` (matched whole). `None`: any method (the schema
/// requires a service or a method; neither is read as both left open).
fn grpc_method_path(m: &GRPCMethodMatch) -> Option<HTTPPathMatch> {
    let service = m.service.as_deref().filter(|s| !s.is_empty());
    let method = m.method.as_deref().filter(|s| !s.is_empty());
    let regex = m.type_.as_deref() == Some("RegularExpression");
    let path =
        |type_: &str, value: String| HTTPPathMatch { type_: Some(type_.to_owned()), value: Some(value) };
    match (service, method, regex) {
        (None, None, _) => None,
        (Some(service), Some(method), false) => Some(path("Exact", format!("/{service}/{method}"))),
        (service, method, regex) => {
            let part = |name: Option<&str>| match name {
                None => "[^/]+".to_owned(),
                Some(name) if regex => format!("(?:{name})"),
                Some(name) => regex::escape(name),
            };
            Some(path("RegularExpression", format!("/{}/{}", part(service), part(method))))
        }
    }
}

/// A rule's request bound: the smaller of `request` and `backendRequest` (`0s`: none).
fn rule_timeout(rule: &HTTPRouteRule) -> Result<Option<u64>, String> {
    let Some(timeout) = rule.timeouts.as_ref() else { return Ok(None) };
    let ms = [&timeout.request, &timeout.backend_request]
        .into_iter()
        .flatten()
        .map(|t| parse_duration(t).ok_or_else(|| format!("timeout {t:?} is not a duration")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ms.into_iter().filter(|&ms| ms > 0).min())
}

/// Whether Sluice serves a listener's protocol and TLS mode; `Err`: the reason and message of
/// `Accepted: False`.
fn protocol_supported(listener: &Listener) -> Result<(), (&'static str, String)> {
    let protocol = listener.protocol.as_str();
    let default_mode = if protocol == "TLS" { "Passthrough" } else { "Terminate" };
    let tls_mode = listener.tls.as_ref().and_then(|t| t.mode.as_deref()).unwrap_or(default_mode);
    match (protocol, tls_mode) {
        ("HTTP", _) | ("HTTPS", "Terminate") | ("TLS", "Passthrough") | ("TCP" | "UDP", _) => Ok(()),
        ("HTTPS" | "TLS", _) => Err((
            "UnsupportedValue",
            format!(
                "{protocol} with TLS mode {tls_mode} is not supported; HTTPS terminates, TLS passes through"
            ),
        )),
        _ => Err((
            "UnsupportedProtocol",
            format!("{protocol} is not supported; HTTP, HTTPS, TLS (passthrough), TCP and UDP are"),
        )),
    }
}

fn allowed_namespaces(listener: &Listener) -> AllowedNamespaces {
    match listener.allowed_routes.as_ref().and_then(|a| a.namespaces.as_ref()) {
        None => AllowedNamespaces::Same,
        Some(n) => match n.from.as_deref().unwrap_or("Same") {
            "All" => AllowedNamespaces::All,
            "Selector" => AllowedNamespaces::Selector(n.selector.clone().unwrap_or_default()),
            "None" => AllowedNamespaces::None,
            _ => AllowedNamespaces::Same,
        },
    }
}

/// How a rule's backends are spoken to: gRPC over h2c, with the rule's session persistence.
fn backend_settings(kind: RouteKind, rule: &HTTPRouteRule) -> Result<BackendSettings, String> {
    let mut settings = BackendSettings::default();
    if kind == RouteKind::Grpc {
        settings.protocol = crate::provider::kube::annotations::UpstreamProtocol::Grpc;
    }
    if let Some(persistence) = &rule.session_persistence {
        settings.cookie_affinity = Some(cookie_affinity(persistence)?);
    }
    Ok(settings)
}

/// The L7 kind whose routes may not share a hostname with `kind`'s on a listener.
fn other_l7_kind(kind: RouteKind) -> Option<RouteKind> {
    match kind {
        RouteKind::Http => Some(RouteKind::Grpc),
        RouteKind::Grpc => Some(RouteKind::Http),
        RouteKind::Tls | RouteKind::Tcp | RouteKind::Udp => None,
    }
}

/// Two hostnames as `intersect` gives them (`""`: any) have a name in common.
fn hostnames_overlap(a: &str, b: &str) -> bool {
    a.is_empty() || b.is_empty() || host_intersection(a, b).is_some()
}

/// A rule's `sessionPersistence` as affinity: a cookie named by `cookie.name` (or the older
/// `sessionName`; else Sluice's default), a `Permanent` one living `absoluteTimeout`; or, for
/// `type: Header`, the token in that header of requests and responses. `Err`: what Sluice
/// cannot do (idle timeouts).
fn cookie_affinity(persistence: &SessionPersistence) -> Result<crate::config::CookieAffinityConfig, String> {
    if persistence.idle_timeout.is_some() {
        return Err("sessionPersistence idleTimeout is not supported".to_owned());
    }
    match persistence.type_.as_deref().unwrap_or("Cookie") {
        "Cookie" => {}
        "Header" => {
            // v1.5: `header: {name}`; before: `sessionName` names the header.
            let name = persistence.header.as_ref().and_then(|h| h.get("name")?.as_str().map(str::to_owned));
            let name = name.or_else(|| persistence.session_name.clone()).filter(|n| !n.is_empty());
            let name = name.ok_or("a Header sessionPersistence needs a header name")?;
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(format!("sessionPersistence header {name:?} is not a header name"));
            }
            return Ok(crate::config::CookieAffinityConfig { header: Some(name), ..Default::default() });
        }
        other => return Err(format!("sessionPersistence type {other:?} is not supported")),
    }
    let cookie = persistence.cookie.as_ref().or(persistence.cookie_config.as_ref());
    let name = cookie.and_then(|c| c.name.clone()).or_else(|| persistence.session_name.clone());
    let mut affinity = crate::config::CookieAffinityConfig {
        name: name.filter(|n| !n.is_empty()).unwrap_or_else(|| SESSION_COOKIE.to_owned()),
        ..Default::default()
    };
    if let Some(path) = cookie.and_then(|c| c.path.clone()) {
        affinity.path = path;
    }
    let permanent = cookie.and_then(|c| c.lifetime_type.as_deref()) == Some("Permanent");
    if let Some(timeout) = &persistence.absolute_timeout {
        let ms = parse_duration(timeout)
            .ok_or_else(|| format!("absoluteTimeout {timeout:?} is not a duration"))?;
        if permanent {
            affinity.max_age_seconds = Some(ms.div_ceil(1000));
        }
    }
    Ok(affinity)
}

/// The session cookie's name when a rule's `sessionPersistence` does not name it.
const SESSION_COOKIE: &str = "sluice-session";

/// The Gateway's own conditions, from its listeners'; addresses are the writer's.
fn gateway_status(gateway: GatewayBuild) -> GatewayStatus {
    let generation = gateway.generation;
    let total = gateway.listeners.len();
    let valid = gateway.listeners.iter().filter(|l| l.status.conditions[0].status == "True").count();
    let programmed = gateway.listeners.iter().filter(|l| l.programmed).count();
    let accepted = if let Some((reason, message)) = gateway.refused {
        Condition::new("Accepted", false, reason, message, generation)
    } else if valid == total {
        Condition::new("Accepted", true, "Accepted", "", generation)
    } else {
        Condition::new(
            "Accepted",
            valid > 0,
            "ListenersNotValid",
            format!("{} of {total} listeners are not valid", total - valid),
            generation,
        )
    };
    let programmed = if programmed > 0 {
        Condition::new("Programmed", true, "Programmed", "", generation)
    } else {
        Condition::new("Programmed", false, "Invalid", "no listener is programmed", generation)
    };
    GatewayStatus {
        addresses: Vec::new(),
        conditions: vec![accepted, programmed],
        listeners: gateway.listeners.into_iter().map(|l| l.status).collect(),
    }
}

/// The kinds a listener takes (valid ones, as `supportedKinds`) and the names of those it
/// cannot.
fn route_kinds(listener: &Listener) -> (Vec<RouteGroupKind>, Vec<String>) {
    let defaults = RouteKind::defaults_for(&listener.protocol);
    let asked = listener.allowed_routes.as_ref().map(|a| a.kinds.as_slice()).unwrap_or(&[]);
    if asked.is_empty() {
        return (defaults.iter().map(|k| k.group_kind()).collect(), Vec::new());
    }
    let mut valid = Vec::new();
    let mut invalid = Vec::new();
    for kind in asked {
        let group = kind.group.as_deref().unwrap_or(GROUP);
        match RouteKind::from_name(&kind.kind).filter(|k| group == GROUP && defaults.contains(k)) {
            Some(k) if !valid.contains(&k.group_kind()) => valid.push(k.group_kind()),
            Some(_) => {}
            None => invalid.push(format!("{group}/{}", kind.kind)),
        }
    }
    (valid, invalid)
}

/// Listeners of one Gateway that cannot all be served: on one port with different protocols
/// (`ProtocolConflict`), or the same port, protocol and hostname (`HostnameConflict`).
fn mark_conflicts(specs: &[Listener], listeners: &mut [ListenerBuild], generation: i64) {
    for i in 0..specs.len() {
        // HTTPS and TLS share a port: both are told apart by SNI. A UDP listener shares its
        // port with any listener but another UDP one (the spec's distinct listeners); TCP and UDP
        // listeners are told apart by port alone.
        let family = |protocol: &str| if protocol == "TLS" { "HTTPS" } else { protocol }.to_owned();
        let udp = |j: usize| specs[j].protocol == "UDP";
        let shares = |j: usize| j != i && specs[j].port == specs[i].port && udp(j) == udp(i);
        let reason = (0..specs.len()).filter(|&j| shares(j)).find_map(|j| {
            if family(&specs[j].protocol) != family(&specs[i].protocol) {
                Some("ProtocolConflict")
            } else if matches!(specs[i].protocol.as_str(), "TCP" | "UDP")
                || specs[j].hostname.as_deref().unwrap_or("") == specs[i].hostname.as_deref().unwrap_or("")
            {
                Some("HostnameConflict")
            } else {
                None
            }
        });
        if let Some(reason) = reason {
            let listener = &mut listeners[i];
            listener.programmed = false;
            listener.takes.clear();
            listener.status.conditions[2] = Condition::new(
                "Conflicted",
                true,
                reason,
                "another listener of this Gateway conflicts",
                generation,
            );
            listener.status.conditions[3] =
                Condition::new("Programmed", false, "Invalid", "conflicted", generation);
        }
    }
}

/// `labels` (a namespace's) satisfy `selector`: every matchLabels pair and matchExpression.
fn selects(selector: &LabelSelector, labels: Option<&BTreeMap<String, String>>) -> bool {
    let empty = BTreeMap::new();
    let labels = labels.unwrap_or(&empty);
    let labels_match = selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let expressions_match = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.as_deref().unwrap_or(&[]);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_match && expressions_match
}

/// The hostnames a route gets on a listener: the intersection of the listener's hostname
/// (any when `None`) with the route's (any when empty); `""` stands for "any host".
fn intersect(listener: Option<&str>, route: &[String]) -> Vec<String> {
    match (listener, route.is_empty()) {
        (None, true) => vec![String::new()],
        (None, false) => route.to_vec(),
        (Some(listener), true) => vec![listener.to_owned()],
        (Some(listener), false) => {
            let mut names: Vec<String> =
                route.iter().filter_map(|r| host_intersection(listener, r)).collect();
            names.sort();
            names.dedup();
            names
        }
    }
}

/// The more specific of two hostnames when one covers the other (`*.a.com` covers `b.a.com`
/// and `c.b.a.com`, not `a.com`).
fn host_intersection(a: &str, b: &str) -> Option<String> {
    let covers = |wildcard: &str, name: &str| {
        wildcard.strip_prefix('*').is_some_and(|suffix| name.len() > suffix.len() && name.ends_with(suffix))
    };
    if a == b {
        Some(a.to_owned())
    } else if covers(a, b) {
        Some(b.to_owned())
    } else if covers(b, a) {
        Some(a.to_owned())
    } else {
        None
    }
}

fn header_ops(modifier: &HeaderModifier) -> HeaderOpsConfig {
    let field = |f: &crate::provider::kube::gateway_api::NameValue| HeaderField {
        name: f.name.clone(),
        value: f.value.clone(),
    };
    HeaderOpsConfig {
        set: modifier.set.iter().map(field).collect(),
        add: modifier.add.iter().map(field).collect(),
        remove: modifier.remove.clone(),
    }
}

/// Applies one rule filter to the rule's route template. A `ReplacePrefixMatch` path is left in
/// `prefix_rewrite` (it needs each match's path). `Err`: why the filter cannot be served.
fn apply_filter(
    filter: &HTTPRouteFilter,
    route: &mut RouteConfig,
    prefix_rewrite: &mut Option<String>,
) -> Result<(), String> {
    match filter.type_.as_str() {
        "RequestHeaderModifier" => {
            let modifier =
                filter.request_header_modifier.as_ref().ok_or("RequestHeaderModifier has no settings")?;
            super::layer_onto(&mut route.request_headers, header_ops(modifier));
        }
        "ResponseHeaderModifier" => {
            let modifier =
                filter.response_header_modifier.as_ref().ok_or("ResponseHeaderModifier has no settings")?;
            super::layer_onto(&mut route.response_headers, header_ops(modifier));
        }
        "RequestRedirect" => {
            let redirect = filter.request_redirect.as_ref().ok_or("RequestRedirect has no settings")?;
            let port = match redirect.port {
                Some(port) => {
                    Some(u16::try_from(port).map_err(|_| format!("redirect port {port} is out of range"))?)
                }
                None => None,
            };
            let mut config = RedirectConfig {
                scheme: redirect.scheme.clone(),
                host: redirect.hostname.clone(),
                port,
                path: None,
                code: redirect.status_code.unwrap_or(302) as u16,
            };
            if let Some(path) = &redirect.path {
                match path.type_.as_str() {
                    "ReplaceFullPath" => {
                        config.path = Some(path.replace_full_path.clone().unwrap_or_else(|| "/".into()))
                    }
                    "ReplacePrefixMatch" => {
                        *prefix_rewrite =
                            Some(path.replace_prefix_match.clone().unwrap_or_else(|| "/".into()))
                    }
                    other => return Err(format!("redirect path type {other:?} is not supported")),
                }
            }
            if ![301, 302, 303, 307, 308].contains(&config.code) {
                return Err(format!("redirect statusCode {} is not supported", config.code));
            }
            route.redirect = Some(Box::new(config));
        }
        "URLRewrite" => {
            let rewrite = filter.url_rewrite.as_ref().ok_or("URLRewrite has no settings")?;
            if let Some(hostname) = &rewrite.hostname {
                let set = HeaderOpsConfig {
                    set: vec![HeaderField { name: "host".into(), value: hostname.clone() }],
                    ..Default::default()
                };
                super::layer_onto(&mut route.request_headers, set);
            }
            if let Some(path) = &rewrite.path {
                match path.type_.as_str() {
                    "ReplaceFullPath" => {
                        let to = path.replace_full_path.clone().unwrap_or_else(|| "/".into());
                        route.rewrite = Some(Box::new(RewriteConfig {
                            prefix: None,
                            regex: Some("^.*$".into()),
                            // `$` starts a capture reference in a replacement.
                            replacement: Some(to.replace('$', "$$")),
                        }));
                    }
                    "ReplacePrefixMatch" => {
                        *prefix_rewrite =
                            Some(path.replace_prefix_match.clone().unwrap_or_else(|| "/".into()))
                    }
                    other => return Err(format!("rewrite path type {other:?} is not supported")),
                }
            }
        }
        other => return Err(format!("filter {other} is not supported")),
    }
    Ok(())
}

/// One HTTPRouteMatch as a route match; `Err` when a value cannot be served (a regular
/// expression that does not compile, an unknown match type).
fn route_match(m: &HTTPRouteMatch) -> Result<crate::config::MatchConfig, String> {
    let path = m.path.as_ref();
    let value = path.and_then(|p| p.value.clone()).unwrap_or_else(|| "/".to_owned());
    let kind = path.and_then(|p| p.type_.as_deref()).unwrap_or("PathPrefix");
    if kind != "RegularExpression" && !value.starts_with('/') {
        return Err(format!("path {value:?} does not start with /"));
    }
    let path = match kind {
        "Exact" => PathMatch::Exact(value),
        "PathPrefix" => PathMatch::Prefix(value),
        "RegularExpression" => {
            regex::Regex::new(&value)
                .map_err(|e| format!("path {value:?} is not a regular expression: {e}"))?;
            // The whole path must match, as Envoy (which the conformance suite was written
            // against) does.
            PathMatch::Regex(format!("(?:{value})$"))
        }
        other => return Err(format!("path match type {other:?} is not supported")),
    };
    let mut headers = Vec::new();
    for h in &m.headers {
        let mut header = HeaderMatch { name: h.name.clone(), exact: None, regex: None, present: None };
        match h.type_.as_deref().unwrap_or("Exact") {
            "Exact" => header.exact = Some(h.value.clone()),
            "RegularExpression" => {
                regex::Regex::new(&h.value).map_err(|e| {
                    format!("header {} value {:?} is not a regular expression: {e}", h.name, h.value)
                })?;
                header.regex = Some(h.value.clone());
            }
            other => return Err(format!("header match type {other:?} is not supported")),
        }
        if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
            return Err(format!("{:?} is not a header name", h.name));
        }
        // The spec: only the first match of a header name counts.
        if !headers.iter().any(|x: &HeaderMatch| x.name.eq_ignore_ascii_case(&h.name)) {
            headers.push(header);
        }
    }
    let mut query_params = Vec::new();
    for q in &m.query_params {
        let mut query = QueryParamMatch { name: q.name.clone(), exact: None, regex: None };
        match q.type_.as_deref().unwrap_or("Exact") {
            "Exact" => query.exact = Some(q.value.clone()),
            "RegularExpression" => {
                regex::Regex::new(&q.value).map_err(|e| {
                    format!("query {} value {:?} is not a regular expression: {e}", q.name, q.value)
                })?;
                query.regex = Some(q.value.clone());
            }
            other => return Err(format!("query match type {other:?} is not supported")),
        }
        if !query_params.iter().any(|x: &QueryParamMatch| x.name == q.name) {
            query_params.push(query);
        }
    }
    let methods = m.method.iter().cloned().collect();
    Ok(crate::config::MatchConfig { path: Some(path), methods, headers, query_params, listeners: Vec::new() })
}

/// A Gateway API duration (GEP-2257: `1h`, `30s`, `500ms`, `1h30m`), in milliseconds.
fn parse_duration(text: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let number: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else {
            return None;
        };
        total = total.checked_add(number.checked_mul(unit)?)?;
        rest = &rest[len..];
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_intersection_follows_the_spec() {
        assert_eq!(host_intersection("*.example.com", "foo.example.com").as_deref(), Some("foo.example.com"));
        assert_eq!(host_intersection("foo.example.com", "*.example.com").as_deref(), Some("foo.example.com"));
        assert_eq!(host_intersection("*.example.com", "a.b.example.com").as_deref(), Some("a.b.example.com"));
        assert_eq!(host_intersection("*.example.com", "example.com"), None);
        assert_eq!(host_intersection("*.example.com", "*.b.example.com").as_deref(), Some("*.b.example.com"));
        assert_eq!(host_intersection("a.com", "b.com"), None);
        assert_eq!(intersect(None, &[]), vec![String::new()]);
        assert_eq!(intersect(Some("x.com"), &[]), vec!["x.com".to_owned()]);
        assert_eq!(
            intersect(Some("*.x.com"), &["a.x.com".into(), "y.com".into()]),
            vec!["a.x.com".to_owned()]
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Some(10_000));
        assert_eq!(parse_duration("1h30m"), Some(5_400_000));
        assert_eq!(parse_duration("500ms"), Some(500));
        assert_eq!(parse_duration("0s"), Some(0));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("1d"), None);
        assert_eq!(parse_duration(""), None);
    }

    fn object<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> std::sync::Arc<T> {
        std::sync::Arc::new(serde_json::from_value(value).unwrap())
    }

    /// A class, a Gateway with an HTTP listener on the base's port and one on a port the node
    /// lacks, and a route with a valid and an invalid backend: the configuration and statuses.
    #[test]
    fn translates_a_gateway_and_its_route() {
        use crate::provider::kube::translate::{ClusterState, Settings, Translator};
        let base = crate::config::Config::from_yaml(
            "listeners: [{name: web, address: \"0.0.0.0:80\"}]\n",
            "base.yaml",
        )
        .unwrap();
        let state = ClusterState {
            gateway_classes: vec![object(serde_json::json!({
                "metadata": {"name": "sluice", "generation": 1},
                "spec": {"controllerName": GATEWAY_CONTROLLER}}))],
            gateways: vec![object(serde_json::json!({
                "metadata": {"namespace": "ns", "name": "gw", "generation": 2},
                "spec": {"gatewayClassName": "sluice", "listeners": [
                    {"name": "http", "port": 80, "protocol": "HTTP"},
                    {"name": "other", "port": 8080, "protocol": "HTTP"}]}}))],
            http_routes: vec![object(serde_json::json!({
                "metadata": {"namespace": "ns", "name": "r", "generation": 3},
                "spec": {"parentRefs": [{"name": "gw"}], "hostnames": ["*.example.com"], "rules": [
                    {"matches": [{"path": {"type": "Exact", "value": "/ok"}}], "backendRefs": [{"name": "svc", "port": 80}]},
                    {"matches": [{"path": {"value": "/gone"}}], "backendRefs": [{"name": "missing", "port": 80}]}]}}))],
            services: vec![object(serde_json::json!({
                "metadata": {"namespace": "ns", "name": "svc"},
                "spec": {"ports": [{"name": "http", "port": 80}]}}))],
            ..ClusterState::default()
        };
        let translator = Translator::new(Settings { ingress_class: "sluice".into(), ..Settings::default() });
        let translation = translator.build(&base, &state).unwrap();
        let host = translation.config.virtual_hosts.iter().find(|h| h.domains == ["*.example.com"]).unwrap();
        assert!(host.deep_wildcards);
        assert_eq!(host.routes.len(), 2);
        assert_eq!(host.routes[0].backend.as_deref(), Some("ns/svc:80"));
        assert_eq!(host.routes[1].direct_response, Some(500));
        let statuses = &translation.gateway;
        assert_eq!(statuses.classes[0].1.conditions[0].reason, "Accepted");
        let gateway = &statuses.gateways[0].1;
        assert_eq!(gateway.listeners[0].attached_routes, 1);
        assert_eq!(gateway.listeners[1].conditions[0].reason, "PortUnavailable");
        assert_eq!(gateway.conditions[0].reason, "ListenersNotValid");
        assert_eq!(gateway.conditions[0].observed_generation, 2);
        let parents = statuses.routes.values().next().unwrap();
        assert_eq!(parents.len(), 1);
        let reasons: Vec<(&str, &str)> =
            parents[0].conditions.iter().map(|c| (c.type_.as_str(), c.reason.as_str())).collect();
        assert_eq!(reasons, [("Accepted", "Accepted"), ("ResolvedRefs", "BackendNotFound")]);
        assert_eq!(parents[0].conditions[0].observed_generation, 3);
    }

    /// GatewayInvalidParametersRef: a Gateway with `infrastructure.parametersRef` is not
    /// accepted (InvalidParameters) and a route naming it serves nothing.
    #[test]
    fn a_gateway_with_infrastructure_parameters_is_not_accepted() {
        use crate::provider::kube::translate::{ClusterState, Settings, Translator};
        let base = crate::config::Config::from_yaml(
            "listeners: [{name: web, address: \"0.0.0.0:80\"}]\n",
            "base.yaml",
        )
        .unwrap();
        let state = ClusterState {
            gateway_classes: vec![object(serde_json::json!({
                "metadata": {"name": "sluice", "generation": 1},
                "spec": {"controllerName": GATEWAY_CONTROLLER}}))],
            gateways: vec![object(serde_json::json!({
                "metadata": {"namespace": "ns", "name": "gw", "generation": 4},
                "spec": {"gatewayClassName": "sluice",
                         "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}],
                         "infrastructure": {"parametersRef": {"group": "invalid.io", "kind": "InvalidParameters", "name": "x"}}}}))],
            http_routes: vec![object(serde_json::json!({
                "metadata": {"namespace": "ns", "name": "r", "generation": 1},
                "spec": {"parentRefs": [{"name": "gw"}], "hostnames": ["params.example"],
                         "rules": [{"backendRefs": [{"name": "svc", "port": 80}]}]}}))],
            ..ClusterState::default()
        };
        let translator = Translator::new(Settings { ingress_class: "sluice".into(), ..Settings::default() });
        let translation = translator.build(&base, &state).unwrap();
        assert!(!translation.config.virtual_hosts.iter().any(|h| h.domains == ["params.example"]));
        let gateway = &translation.gateway.gateways[0].1;
        let accepted = &gateway.conditions[0];
        assert_eq!(
            (accepted.type_.as_str(), accepted.status.as_str(), accepted.reason.as_str()),
            ("Accepted", "False", "InvalidParameters")
        );
        assert_eq!(accepted.observed_generation, 4);
        assert_eq!(gateway.conditions[1].status, "False", "not programmed");
        let listener = &gateway.listeners[0].conditions[3];
        assert_eq!((listener.type_.as_str(), listener.status.as_str()), ("Programmed", "False"));
        let parents = translation.gateway.routes.values().next().unwrap();
        assert_eq!(parents[0].conditions[0].reason, "NoMatchingParent");
    }

    #[test]
    fn grpc_methods_become_paths() {
        let m = |type_: Option<&str>, service: Option<&str>, method: Option<&str>| {
            let m = GRPCMethodMatch {
                type_: type_.map(Into::into),
                service: service.map(Into::into),
                method: method.map(Into::into),
            };
            grpc_method_path(&m).map(|p| (p.type_.unwrap(), p.value.unwrap()))
        };
        let exact = |v: &str| Some(("Exact".to_owned(), v.to_owned()));
        let regex = |v: &str| Some(("RegularExpression".to_owned(), v.to_owned()));
        assert_eq!(m(None, Some("grpc.Echo"), Some("Say")), exact("/grpc.Echo/Say"));
        assert_eq!(m(None, Some("grpc.Echo"), None), regex(r"/grpc\.Echo/[^/]+"));
        assert_eq!(m(Some("Exact"), None, Some("Say")), regex("/[^/]+/Say"));
        assert_eq!(m(Some("RegularExpression"), Some(r"grpc\..*"), None), regex(r"/(?:grpc\..*)/[^/]+"));
        assert_eq!(m(None, None, None), None);
    }

    /// Routes of the three kinds on one Gateway (HTTP, TLS passthrough and TLS terminate
    /// listeners), created a minute apart in the order of their numbers.
    fn grpc_and_tls_state() -> crate::provider::kube::translate::ClusterState {
        use crate::provider::kube::translate::ClusterState;
        let at = |minute: u32| format!("2026-01-01T00:{minute:02}:00Z");
        let route = |name: &str, minute: u32, spec: serde_json::Value| {
            serde_json::json!({
                "metadata": {"namespace": "ns", "name": name, "creationTimestamp": at(minute)},
                "spec": spec})
        };
        ClusterState {
            gateway_classes: vec![object(serde_json::json!({
                "metadata": {"name": "sluice"}, "spec": {"controllerName": GATEWAY_CONTROLLER}}))],
            gateways: vec![object(serde_json::json!({
                "metadata": {"namespace": "ns", "name": "gw"},
                "spec": {"gatewayClassName": "sluice", "listeners": [
                    {"name": "http", "port": 80, "protocol": "HTTP"},
                    {"name": "pass", "port": 443, "protocol": "TLS", "hostname": "*.tls.example", "tls": {"mode": "Passthrough"}},
                    {"name": "term", "port": 443, "protocol": "TLS", "hostname": "t.example", "tls": {"mode": "Terminate"}}]}}))],
            grpc_routes: vec![
                object(route(
                    "echo",
                    1,
                    serde_json::json!({"parentRefs": [{"name": "gw"}], "hostnames": ["grpc.example"],
                    "rules": [{"matches": [{"method": {"service": "grpc.Echo", "method": "Say"}}],
                               "backendRefs": [{"name": "svc", "port": 80}]}]}),
                )),
                object(route(
                    "late",
                    3,
                    serde_json::json!({"parentRefs": [{"name": "gw"}], "hostnames": ["http.example"],
                    "rules": [{"backendRefs": [{"name": "svc", "port": 80}]}]}),
                )),
            ],
            http_routes: vec![
                object(route(
                    "web",
                    2,
                    serde_json::json!({"parentRefs": [{"name": "gw"}], "hostnames": ["http.example"],
                    "rules": [{"backendRefs": [{"name": "svc", "port": 80}],
                               "sessionPersistence": {"type": "Cookie", "absoluteTimeout": "1h",
                                                      "cookie": {"name": "pin", "lifetimeType": "Permanent"}}}]}),
                )),
                object(route(
                    "clash",
                    6,
                    serde_json::json!({"parentRefs": [{"name": "gw"}], "hostnames": ["*.example"],
                    "rules": [{"backendRefs": [{"name": "svc", "port": 80}]}]}),
                )),
                object(route(
                    "headers",
                    4,
                    serde_json::json!({"parentRefs": [{"name": "gw"}], "hostnames": ["h.example"],
                    "rules": [{"matches": [{"path": {"value": "/a"}}], "backendRefs": [{"name": "svc", "port": 80}],
                               "sessionPersistence": {"type": "Header", "header": {"name": "x-session"}}},
                              {"matches": [{"path": {"value": "/b"}}], "backendRefs": [{"name": "svc", "port": 80}],
                               "sessionPersistence": {"sessionName": "s", "idleTimeout": "1m"}}]}),
                )),
            ],
            tls_routes: vec![object(route(
                "pass",
                5,
                serde_json::json!({"parentRefs": [{"name": "gw", "sectionName": "pass"}],
                "hostnames": ["a.tls.example", "other.example"], "rules": [{"backendRefs": [{"name": "svc", "port": 80}]}]}),
            ))],
            services: vec![object(serde_json::json!({
                "metadata": {"namespace": "ns", "name": "svc"},
                "spec": {"ports": [{"name": "http", "port": 80}]}}))],
            ..ClusterState::default()
        }
    }

    /// GRPCRoutes go to h2c backends; an HTTPRoute and a GRPCRoute may not share a hostname
    /// on a listener (the older keeps it); a TLSRoute becomes a passthrough host on a TLS
    /// listener; sessionPersistence becomes cookie affinity, and what Sluice cannot do is said.
    #[test]
    fn grpc_and_tls_routes() {
        use crate::provider::kube::translate::{Settings, Translator};
        let base = crate::config::Config::from_yaml(
            "listeners: [{name: web, address: \"0.0.0.0:80\"}, {name: tls, address: \"0.0.0.0:443\", tls: {}}]\n",
            "base.yaml",
        )
        .unwrap();
        let state = grpc_and_tls_state();
        let translator = Translator::new(Settings { ingress_class: "sluice".into(), ..Settings::default() });
        let translation = translator.build(&base, &state).unwrap();
        let config = &translation.config;
        let host = |name: &str| config.virtual_hosts.iter().find(|h| h.domains == [name]);
        let group = |name: &str| config.backends.iter().find(|b| b.name == name).unwrap();
        // gRPC: the method is an exact path, and the backend speaks h2c.
        let grpc = host("grpc.example").unwrap();
        assert_eq!(grpc.routes[0].matcher.path, Some(PathMatch::Exact("/grpc.Echo/Say".into())));
        let grpc_backend = grpc.routes[0].backend.as_deref().unwrap();
        assert_eq!(group(grpc_backend).protocol, crate::config::BackendProtocol::H2c);
        // The HTTPRoute has http.example, which the younger GRPCRoute cannot take; its
        // affinity cookie is pinned for an hour.
        let web = host("http.example").unwrap();
        assert_eq!(web.routes.len(), 1);
        let web_backend = group(web.routes[0].backend.as_deref().unwrap());
        assert_eq!(web_backend.protocol, crate::config::BackendProtocol::Http1);
        let affinity = web_backend.cookie_affinity.as_ref().expect("cookie affinity");
        assert_eq!((affinity.name.as_str(), affinity.max_age_seconds), ("pin", Some(3600)));
        let status = |kind: RouteKind, name: &str| {
            let parents = &translation.gateway.routes[&(kind, ("ns".to_owned(), name.to_owned()))];
            parents[0].conditions.iter().map(|c| (c.type_.clone(), c.reason.clone())).collect::<Vec<_>>()
        };
        let pair = |t: &str, r: &str| (t.to_owned(), r.to_owned());
        assert_eq!(status(RouteKind::Grpc, "echo")[0], pair("Accepted", "Accepted"));
        assert_eq!(status(RouteKind::Http, "web")[0], pair("Accepted", "Accepted"));
        assert_eq!(status(RouteKind::Grpc, "late")[0], pair("Accepted", "NotAllowedByListeners"));
        // `*.example` covers the older GRPCRoute's grpc.example: refused there as a whole.
        assert_eq!(status(RouteKind::Http, "clash")[0], pair("Accepted", "NotAllowedByListeners"));
        assert!(host("*.example").is_none());
        // Header sessions carry the token in x-session; an idle timeout is not supported: that
        // rule answers 500 and the route says so.
        let h = host("h.example").unwrap();
        let header_backend = group(h.routes[0].backend.as_deref().unwrap());
        let affinity = header_backend.cookie_affinity.as_ref().expect("header affinity");
        assert_eq!(affinity.header.as_deref(), Some("x-session"));
        assert_eq!(h.routes[1].direct_response, Some(500));
        assert_eq!(status(RouteKind::Http, "headers")[2], pair("PartiallyInvalid", "UnsupportedValue"));
        // TLSRoute: passthrough for the hostname inside the listener's, not the other.
        let pass = host("a.tls.example").unwrap();
        assert_eq!(pass.tls.as_ref().and_then(|t| t.passthrough.as_deref()), Some("ns/svc:80"));
        assert!(host("other.example").is_none());
        assert_eq!(status(RouteKind::Tls, "pass")[0], pair("Accepted", "Accepted"));
        let listeners = &translation.gateway.gateways[0].1.listeners;
        assert_eq!(listeners[1].supported_kinds, [RouteKind::Tls.group_kind()]);
        assert_eq!(listeners[1].attached_routes, 1);
        assert_eq!(listeners[2].conditions[0].reason, "UnsupportedValue", "TLS termination for TLSRoutes");
        assert_eq!(
            listeners[0].supported_kinds,
            [RouteKind::Http.group_kind(), RouteKind::Grpc.group_kind()]
        );
    }

    #[test]
    fn label_selectors() {
        let labels: BTreeMap<String, String> = [("team".to_owned(), "a".to_owned())].into();
        let by_label = LabelSelector { match_labels: Some(labels.clone()), match_expressions: None };
        assert!(selects(&by_label, Some(&labels)));
        assert!(!selects(&by_label, None));
        assert!(selects(&LabelSelector::default(), None), "an empty selector selects everything");
    }
}
