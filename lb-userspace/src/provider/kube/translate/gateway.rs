//! The Gateway API as a second source of the same configuration: the GatewayClasses that name
//! [`GATEWAY_CONTROLLER`], their Gateways' listeners, and the HTTPRoutes attached to them become
//! virtual hosts, routes, certificates and backends beside the Ingresses', and the statuses
//! the spec asks for are computed from the same state ([`GatewayStatuses`]; the leader writes
//! them).
//!
//! - **Listeners** are served by the node's own listeners: an HTTP listener by a plain one with
//!   its port, an HTTPS one by a TLS one. A port the node does not listen on gives
//!   `Accepted: False, PortUnavailable` (Sluice does not open ports from Gateways: the node's
//!   ports are the DaemonSet's). TLS passthrough listeners, TCP and UDP are
//!   `UnsupportedProtocol`.
//! - **Attachment**: a parentRef attaches to the Gateway's listeners that its `sectionName`
//!   and `port` select (`NoMatchingParent` when none), whose `allowedRoutes` admit the route's
//!   namespace and kind (`NotAllowedByListeners`), and whose hostname intersects the route's
//!   (`NoMatchingListenerHostname`). Wildcards take any number of labels, as the spec says.
//! - **Precedence** across routes is the router's (exact path, longest path, more
//!   constraints), then the oldest route; an Ingress that already claims the same host and
//!   match keeps it (Ingresses are read first: they are what users migrate from).
//! - **References**: a backendRef must be a Service (`InvalidKind`), in the route's namespace
//!   or allowed by a ReferenceGrant (`RefNotPermitted`), and exist (`BackendNotFound`); a rule
//!   whose backends are all unusable, or all weight 0, answers 500, as the spec requires. The
//!   same goes for a filter Sluice does not implement (`RequestMirror`, `ExtensionRef`, ...): its
//!   rule answers 500 and the route says `PartiallyInvalid` (or `Accepted: False` when no rule
//!   is left).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{
    api::{core::v1::Namespace, networking::v1::ServiceBackendPort},
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};

use super::{Builder, IngressId, host_tls_template, route_template};
use crate::{
    config::{
        EndpointConfig, HeaderField, HeaderMatch, HeaderOpsConfig, PathMatch, QueryParamMatch,
        RedirectConfig, RewriteConfig, RouteConfig,
    },
    provider::kube::{
        annotations::BackendSettings,
        gateway_api::{
            Condition, ConditionsStatus, GROUP, Gateway, GatewayStatus, HTTPRoute, HTTPRouteFilter,
            HTTPRouteMatch, HTTPRouteRule, HeaderModifier, Listener, ListenerStatus, ParentReference,
            RouteGroupKind, RouteParentStatus,
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
    pub http_routes: Vec<(ObjectKey, Vec<RouteParentStatus>)>,
}

/// A Gateway listener as the translation sees it.
struct ListenerBuild {
    hostname: Option<String>,
    port: i32,
    /// HTTPRoute may attach (among the allowed kinds, and the listener is accepted).
    takes_http_routes: bool,
    /// Serves traffic: accepted, its references resolved, no conflict, and the node listens
    /// on its port.
    programmed: bool,
    /// The certificate (configuration name) an HTTPS listener terminates with.
    certificate: Option<String>,
    namespaces: AllowedNamespaces,
    status: ListenerStatus,
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
    /// The Gateway is accepted (its listeners may take routes).
    accepted: bool,
    generation: i64,
}

/// A rule's routes, and why part of it is not served as written.
struct RuleRoutes {
    routes: Vec<RouteConfig>,
    /// A reference problem: (reason, message) for `ResolvedRefs`.
    unresolved: Option<(&'static str, String)>,
    /// A value Sluice does not support (the rule answers 500, or is dropped).
    unsupported: Option<String>,
}

fn http_route_kind() -> RouteGroupKind {
    RouteGroupKind { group: Some(GROUP.to_owned()), kind: "HTTPRoute".to_owned() }
}

fn created<T: kube::Resource>(object: &T) -> (Option<k8s_openapi::jiff::Timestamp>, String, String) {
    let meta = object.meta();
    (
        meta.creation_timestamp.as_ref().map(|t| t.0),
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// The owner of an HTTPRoute's configuration, for notes and set-asides: a name with a `/` can
/// never be an Ingress's.
pub fn http_route_id(namespace: &str, name: &str) -> IngressId {
    IngressId { namespace: namespace.to_owned(), name: format!("HTTPRoute/{name}") }
}

fn gateway_id(namespace: &str, name: &str) -> IngressId {
    IngressId { namespace: namespace.to_owned(), name: format!("Gateway/{name}") }
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
        for gateway in gateways {
            let (_, namespace, name) = created(gateway);
            built.insert((namespace.clone(), name.clone()), self.gateway(gateway, &namespace, &name));
        }
        let mut routes: Vec<&HTTPRoute> = self.state.http_routes.iter().map(AsRef::as_ref).collect();
        routes.sort_by_key(|r| created(*r));
        for route in routes {
            let (_, namespace, name) = created(route);
            let set_aside = excluded.contains(&http_route_id(&namespace, &name));
            let parents = self.http_route(route, (&namespace, &name), set_aside, &mut built);
            if !parents.is_empty() {
                statuses.http_routes.push(((namespace, name), parents));
            }
        }
        for (key, gateway) in built {
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
        let accepted = gateway.spec.addresses.is_empty();
        if !accepted {
            for listener in &mut listeners {
                listener.programmed = false;
                listener.takes_http_routes = false;
            }
        }
        GatewayBuild { namespace: namespace.to_owned(), listeners, accepted, generation }
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
        let tls_mode = listener.tls.as_ref().and_then(|t| t.mode.as_deref()).unwrap_or("Terminate");
        let supported = match protocol {
            "HTTP" => true,
            "HTTPS" => tls_mode == "Terminate",
            _ => false,
        };
        if !supported {
            let what = if protocol == "HTTPS" || protocol == "TLS" {
                format!("{protocol} with TLS mode {tls_mode}")
            } else {
                protocol.to_owned()
            };
            accepted = (false, "UnsupportedProtocol", format!("{what} is not supported; HTTP and HTTPS are"));
        }
        let node_listener = self.base.listeners.iter().any(|l| {
            i32::from(l.address.port()) == listener.port && l.tls.is_some() == (protocol == "HTTPS")
        });
        if supported && !node_listener {
            let kind = if protocol == "HTTPS" { "TLS" } else { "plain" };
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
        let hostname = listener.hostname.clone().filter(|h| !h.is_empty()).map(|h| h.to_ascii_lowercase());
        let programmed = accepted.0 && resolved.0;
        let namespaces = match listener.allowed_routes.as_ref().and_then(|a| a.namespaces.as_ref()) {
            None => AllowedNamespaces::Same,
            Some(n) => match n.from.as_deref().unwrap_or("Same") {
                "All" => AllowedNamespaces::All,
                "Selector" => AllowedNamespaces::Selector(n.selector.clone().unwrap_or_default()),
                "None" => AllowedNamespaces::None,
                _ => AllowedNamespaces::Same,
            },
        };
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
            takes_http_routes: accepted.0 && kinds.contains(&http_route_kind()),
            programmed,
            certificate,
            namespaces,
            status,
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

    /// Attaches one HTTPRoute to the listeners its parentRefs select, and adds its rules for
    /// the hostnames it gets there. Returns its status for Sluice's parents.
    /// A route `set_aside` (its configuration did not validate, see `Translator::build`) adds
    /// nothing and says so.
    fn http_route(
        &mut self,
        route: &HTTPRoute,
        (namespace, name): (&str, &str),
        set_aside: bool,
        gateways: &mut BTreeMap<ObjectKey, GatewayBuild>,
    ) -> Vec<RouteParentStatus> {
        let generation = route.metadata.generation.unwrap_or(0);
        let id = http_route_id(namespace, name);
        let rules: Vec<RuleRoutes> = if set_aside {
            Vec::new()
        } else {
            route
                .spec
                .rules
                .iter()
                .enumerate()
                .map(|(i, rule)| self.http_route_rule(rule, i, namespace, name, &id))
                .collect()
        };
        let unresolved = rules.iter().find_map(|r| r.unresolved.clone());
        let mut unsupported: Vec<&str> = rules.iter().filter_map(|r| r.unsupported.as_deref()).collect();
        let all_unsupported = set_aside || (!rules.is_empty() && unsupported.len() == rules.len());
        if set_aside {
            unsupported.push("the configuration it makes does not validate (see Sluice's log)");
        }
        let route_hostnames: Vec<String> =
            route.spec.hostnames.iter().map(|h| h.to_ascii_lowercase()).collect();
        let mut parents = Vec::new();
        // Hostname → the certificate of an HTTPS listener that serves it there, if any.
        let mut hostnames: BTreeMap<String, Option<String>> = BTreeMap::new();
        for parent in &route.spec.parent_refs {
            let group = parent.group.as_deref().unwrap_or(GROUP);
            let kind = parent.kind.as_deref().unwrap_or("Gateway");
            if group != GROUP || kind != "Gateway" {
                continue;
            }
            let gateway_namespace = parent.namespace.clone().unwrap_or_else(|| namespace.to_owned());
            let Some(gateway) = gateways.get_mut(&(gateway_namespace.clone(), parent.name.clone())) else {
                continue;
            };
            let accepted = self.attach(parent, namespace, &route_hostnames, gateway, &mut hostnames);
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
        if !set_aside {
            for (hostname, certificate) in hostnames {
                self.serve_http_route_host(&hostname, certificate, &rules, &id);
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
        route_namespace: &str,
        route_hostnames: &[String],
        gateway: &mut GatewayBuild,
        hostnames: &mut BTreeMap<String, Option<String>>,
    ) -> Result<(), (&'static str, String)> {
        if !gateway.accepted {
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
                l.takes_http_routes
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
        for i in allowed {
            let listener = &mut gateway.listeners[i];
            let names = intersect(listener.hostname.as_deref(), route_hostnames);
            if names.is_empty() {
                continue;
            }
            matched = true;
            listener.status.attached_routes += 1;
            if !listener.programmed {
                continue;
            }
            for name in names {
                let slot = hostnames.entry(name).or_default();
                if slot.is_none() {
                    slot.clone_from(&listener.certificate);
                }
            }
        }
        if matched {
            Ok(())
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

    /// Adds an HTTPRoute's rules under one hostname (`*` when neither the route nor the
    /// listener names one), with the listener's certificate when it is HTTPS.
    fn serve_http_route_host(
        &mut self,
        hostname: &str,
        certificate: Option<String>,
        rules: &[RuleRoutes],
        id: &IngressId,
    ) {
        let host = if hostname.is_empty() { "*" } else { hostname };
        if let Some(certificate) = certificate
            && host != "*"
            && !self.tls_taken(host, id)
        {
            let mut host_tls = host_tls_template().clone();
            host_tls.certificate = Some(certificate);
            host_tls.redirect_http = false;
            host_tls.hsts = None;
            self.hosts.entry(host.to_owned()).or_default().tls = Some((host_tls, id.clone()));
        }
        if host.starts_with("*.") {
            self.hosts.entry(host.to_owned()).or_default().deep_wildcards = true;
        }
        for rule in rules {
            for route in &rule.routes {
                self.claim(host, route.clone(), id);
            }
        }
    }

    /// One rule: a route per match, with its filters and backends.
    fn http_route_rule(
        &mut self,
        rule: &HTTPRouteRule,
        index: usize,
        namespace: &str,
        name: &str,
        id: &IngressId,
    ) -> RuleRoutes {
        let rule_name = rule.name.clone().unwrap_or_else(|| index.to_string());
        let mut template = route_template().clone();
        template.name = Some(format!("httproute:{namespace}/{name}/{rule_name}"));
        let mut unsupported = None;
        let mut unresolved = None;
        let mut prefix_rewrite = None;
        for filter in &rule.filters {
            if let Err(why) = apply_filter(filter, &mut template, &mut prefix_rewrite) {
                unsupported.get_or_insert(format!("rule {rule_name}: {why}"));
            }
        }
        if let Some(timeout) = rule.timeouts.as_ref() {
            let parsed = [&timeout.request, &timeout.backend_request]
                .into_iter()
                .flatten()
                .map(|t| {
                    parse_duration(t)
                        .ok_or_else(|| format!("rule {rule_name}: timeout {t:?} is not a duration"))
                })
                .collect::<Result<Vec<_>, _>>();
            match parsed {
                Ok(ms) => template.timeout_ms = ms.into_iter().filter(|&ms| ms > 0).min(),
                Err(why) => {
                    unsupported.get_or_insert(why);
                }
            }
        }
        if rule.session_persistence.is_some() || rule.retry.is_some() {
            unsupported
                .get_or_insert(format!("rule {rule_name}: sessionPersistence and retry are not supported"));
        }
        if template.redirect.is_none() {
            match self.rule_backend(rule, namespace, id) {
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
                                route.rewrite = Some(RewriteConfig {
                                    prefix: Some(to.clone()),
                                    regex: None,
                                    replacement: None,
                                })
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
        RuleRoutes { routes, unresolved, unsupported }
    }

    /// The backend group of a rule: its Services, by weight. `Err` when the rule must answer
    /// 500, with the `ResolvedRefs` problem if a reference is why.
    fn rule_backend(
        &mut self,
        rule: &HTTPRouteRule,
        namespace: &str,
        id: &IngressId,
    ) -> Result<String, Option<(&'static str, String)>> {
        let mut problem = None;
        let mut groups: Vec<(String, u32)> = Vec::new();
        for backend in &rule.backend_refs {
            let group = backend.group.as_deref().unwrap_or("");
            let kind = backend.kind.as_deref().unwrap_or("Service");
            let target_namespace = backend.namespace.as_deref().unwrap_or(namespace);
            let found = if !(group.is_empty() || group == "core") || kind != "Service" {
                Err(("InvalidKind", format!("backendRef {group}/{kind} {} is not a Service", backend.name)))
            } else if target_namespace != namespace
                && !self.reference_granted(
                    ("HTTPRoute", namespace),
                    ("", "Service", target_namespace, &backend.name),
                )
            {
                Err((
                    "RefNotPermitted",
                    format!(
                        "no ReferenceGrant in {target_namespace} allows HTTPRoutes of {namespace} to use Service {}",
                        backend.name
                    ),
                ))
            } else if !self.index.services.contains_key(&(target_namespace, backend.name.as_str())) {
                Err(("BackendNotFound", format!("Service {target_namespace}/{} not found", backend.name)))
            } else if backend.port.is_none() {
                Err(("BackendNotFound", format!("backendRef Service {} names no port", backend.name)))
            } else {
                Ok(())
            };
            if let Err(why) = found {
                problem.get_or_insert(why);
                continue;
            }
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
            let name =
                self.backend_group(target_namespace, &backend.name, &port, &BackendSettings::default(), id);
            groups.push((name, weight));
        }
        match groups.len() {
            0 => Err(problem),
            1 => Ok(groups.remove(0).0),
            _ => Ok(self.weighted_backends(&groups, id)),
        }
    }

    /// One group over several backend groups, each endpoint weighted so that each group gets
    /// its weight's share of requests (its weight divided among its ready endpoints).
    fn weighted_backends(&mut self, groups: &[(String, u32)], id: &IngressId) -> String {
        let name = groups.iter().map(|(g, w)| format!("{g}@{w}")).collect::<Vec<_>>().join("+");
        if self.backends.contains_key(&name) {
            return name;
        }
        let mut merged = self.backends[&groups[0].0].0.clone();
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
        self.backends.insert(name.clone(), (merged, id.clone()));
        name
    }
}

/// The Gateway's own conditions, from its listeners'; addresses are the writer's.
fn gateway_status(gateway: GatewayBuild) -> GatewayStatus {
    let generation = gateway.generation;
    let total = gateway.listeners.len();
    let valid = gateway.listeners.iter().filter(|l| l.status.conditions[0].status == "True").count();
    let programmed = gateway.listeners.iter().filter(|l| l.programmed).count();
    let accepted = if !gateway.accepted {
        Condition::new("Accepted", false, "UnsupportedAddress", "spec.addresses is not supported", generation)
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
    let asked = listener.allowed_routes.as_ref().map(|a| a.kinds.as_slice()).unwrap_or(&[]);
    if asked.is_empty() {
        return match listener.protocol.as_str() {
            "HTTP" | "HTTPS" => (vec![http_route_kind()], Vec::new()),
            _ => (Vec::new(), Vec::new()),
        };
    }
    let mut valid = Vec::new();
    let mut invalid = Vec::new();
    for kind in asked {
        let group = kind.group.as_deref().unwrap_or(GROUP);
        if group == GROUP
            && kind.kind == "HTTPRoute"
            && matches!(listener.protocol.as_str(), "HTTP" | "HTTPS")
        {
            valid.push(http_route_kind());
        } else {
            invalid.push(format!("{group}/{}", kind.kind));
        }
    }
    valid.dedup();
    (valid, invalid)
}

/// Listeners of one Gateway that cannot all be served: on one port with different protocols
/// (`ProtocolConflict`), or the same port, protocol and hostname (`HostnameConflict`).
fn mark_conflicts(specs: &[Listener], listeners: &mut [ListenerBuild], generation: i64) {
    for i in 0..specs.len() {
        let reason = (0..specs.len()).filter(|&j| j != i && specs[j].port == specs[i].port).find_map(|j| {
            if specs[j].protocol != specs[i].protocol {
                Some("ProtocolConflict")
            } else if specs[j].hostname.as_deref().unwrap_or("") == specs[i].hostname.as_deref().unwrap_or("")
            {
                Some("HostnameConflict")
            } else {
                None
            }
        });
        if let Some(reason) = reason {
            let listener = &mut listeners[i];
            listener.programmed = false;
            listener.takes_http_routes = false;
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
            route.request_headers = super::layered(route.request_headers.take(), Some(header_ops(modifier)));
        }
        "ResponseHeaderModifier" => {
            let modifier =
                filter.response_header_modifier.as_ref().ok_or("ResponseHeaderModifier has no settings")?;
            route.response_headers =
                super::layered(route.response_headers.take(), Some(header_ops(modifier)));
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
            route.redirect = Some(config);
        }
        "URLRewrite" => {
            let rewrite = filter.url_rewrite.as_ref().ok_or("URLRewrite has no settings")?;
            if let Some(hostname) = &rewrite.hostname {
                let set = HeaderOpsConfig {
                    set: vec![HeaderField { name: "host".into(), value: hostname.clone() }],
                    ..Default::default()
                };
                route.request_headers = super::layered(route.request_headers.take(), Some(set));
            }
            if let Some(path) = &rewrite.path {
                match path.type_.as_str() {
                    "ReplaceFullPath" => {
                        let to = path.replace_full_path.clone().unwrap_or_else(|| "/".into());
                        route.rewrite = Some(RewriteConfig {
                            prefix: None,
                            regex: Some("^.*$".into()),
                            // `$` starts a capture reference in a replacement.
                            replacement: Some(to.replace('$', "$$")),
                        });
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
    Ok(crate::config::MatchConfig { path: Some(path), methods, headers, query_params })
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
        let parents = &statuses.http_routes[0].1;
        assert_eq!(parents.len(), 1);
        let reasons: Vec<(&str, &str)> =
            parents[0].conditions.iter().map(|c| (c.type_.as_str(), c.reason.as_str())).collect();
        assert_eq!(reasons, [("Accepted", "Accepted"), ("ResolvedRefs", "BackendNotFound")]);
        assert_eq!(parents[0].conditions[0].observed_generation, 3);
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
