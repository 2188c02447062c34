//! From the observed cluster state to one complete [`Config`]: a pure function of the objects
//! (the same objects give the same configuration, whatever order they arrived in), rebuilt in
//! full on every change, never patched from events.
//!
//! - Ingresses are ours by `spec.ingressClassName`, else the legacy `kubernetes.io/ingress.class`
//!   annotation, else a default IngressClass (`ingressclass.kubernetes.io/is-default-class`)
//!   whose controller is [`CONTROLLER`]. A class is ours when an IngressClass names our
//!   controller, or when it is the configured class name and no IngressClass of that name
//!   belongs to another controller.
//! - Ingresses are taken oldest first (`creationTimestamp`, then namespace and name): a host and
//!   path claimed by an older Ingress stays with it, and the newer claim is reported, as
//!   ingress-nginx does. Canary Ingresses do not claim; they attach to the main route of the
//!   same host and path.
//! - A backend reference resolves through the Service (port by number or by name) to the
//!   EndpointSlices labelled with the Service's name (all of them: a Service has several
//!   slices, one per address family at least). Each slice port is matched by the Service port's
//!   name; the endpoint's first address with the slice's port is the target.
//! - EndpointSlice conditions: `ready` → `ready: true`. `serving` and `terminating` (a pod
//!   shutting down that still answers) → listed with `ready: false`: no new requests go there,
//!   requests in flight finish; but when a backend has no ready endpoint at all, its
//!   serving-terminating endpoints take traffic (as kube-proxy falls back to them), so a
//!   single-replica rollout does not fail requests. Not serving and not terminating (starting,
//!   failing probes) → listed, `ready: false`. Terminating and not serving → left out.
//! - A missing Service, port or endpoint gives a backend with no endpoints: the route exists
//!   and answers 503, as ingress-nginx does.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock},
};

use k8s_openapi::api::{
    core::v1::{ConfigMap, Secret, ServicePort},
    networking::v1::{
        HTTPIngressPath, Ingress, IngressBackend, IngressClass, IngressRule, IngressSpec, ServiceBackendPort,
    },
};
use serde::de::DeserializeOwned;

use super::{
    annotations::{self, Annotations, BackendSettings, Canary, UpstreamProtocol},
    controller_config::{self, ControllerConfig},
    endpoint_slice::EndpointSlice,
    service::Service,
};
use crate::{
    FastMap,
    config::{
        BackendConfig, BackendProtocol, BackendTlsConfig, BasicAuthConfig, CertificateConfig, Config,
        EndpointConfig, HeaderMatch, HeaderOpsConfig, HostTlsConfig, HttpsRedirectConfig, MatchConfig,
        PathMatch, RedirectConfig, RedirectPort, RetryOn, RewriteConfig, RouteConfig, RouteIngressConfig,
        SecretString, VirtualHostConfig,
    },
    numeric,
};

/// The hosts whose paths are all case-insensitive regular expressions: those where any served
/// Ingress has `use-regex` or `rewrite-target`, as ingress-nginx enforces the regex location
/// modifier on every path of such a host, whatever Ingress defines it.
fn regex_hosts(readings: &[(&Arc<Ingress>, IngressId, Arc<annotations::Reading>)]) -> BTreeSet<String> {
    let mut hosts = BTreeSet::new();
    for (ingress, _, reading) in readings {
        let a = &reading.annotations;
        if !a.use_regex && a.rewrite_target.is_none() {
            continue;
        }
        let rules = ingress.spec.as_ref().and_then(|s| s.rules.as_ref());
        hosts.extend(rules.into_iter().flatten().filter_map(|r| Builder::host_of(r.host.as_deref()).ok()));
    }
    hosts
}

/// The `spec.controller` of IngressClasses that Sluice serves.
pub const CONTROLLER: &str = "sluice.dev/ingress-controller";
/// The annotation that marks the default IngressClass.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
/// The legacy class annotation, read when `spec.ingressClassName` is not set.
pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Everything the provider observes, as the reflectors' stores hold it.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    pub classes: Vec<Arc<IngressClass>>,
    pub ingresses: Vec<Arc<Ingress>>,
    pub services: Vec<Arc<Service>>,
    pub slices: Vec<Arc<EndpointSlice>>,
    pub secrets: Vec<Arc<Secret>>,
    pub configmaps: Vec<Arc<ConfigMap>>,
    /// The Gateway API's kinds (empty while its CRDs are not installed) and the Namespaces
    /// whose labels listeners' `allowedRoutes` selectors read.
    pub gateway_classes: Vec<Arc<super::gateway_api::GatewayClass>>,
    pub gateways: Vec<Arc<super::gateway_api::Gateway>>,
    pub http_routes: Vec<Arc<super::gateway_api::HTTPRoute>>,
    pub grpc_routes: Vec<Arc<super::gateway_api::GRPCRoute>>,
    pub tls_routes: Vec<Arc<super::gateway_api::TLSRoute>>,
    /// Read as `v1` whichever version the API serves (see `Stores::state`).
    pub tcp_routes: Vec<Arc<super::gateway_api::TCPRoute>>,
    pub udp_routes: Vec<Arc<super::gateway_api::UDPRoute>>,
    pub reference_grants: Vec<Arc<super::gateway_api::ReferenceGrant>>,
    pub namespaces: Vec<Arc<k8s_openapi::api::core::v1::Namespace>>,
}

/// Which Ingresses are ours, and the controller-wide settings.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// The class name served (`--ingress-class`), besides IngressClasses naming [`CONTROLLER`].
    pub ingress_class: String,
    /// ingress-nginx's controller ConfigMap, `NAMESPACE/NAME` (`--nginx-configmap`).
    pub controller_configmap: Option<String>,
    /// The Service serving what no Ingress claims, `NAMESPACE/NAME`
    /// (`--default-backend-service`).
    pub default_backend_service: Option<String>,
    /// The TLS Secret served for names no Ingress TLS host claims, `NAMESPACE/NAME`
    /// (`--default-ssl-certificate`); without it, a generated self-signed certificate.
    pub default_ssl_certificate: Option<String>,
    /// ingress-nginx's `tcp-services` and `udp-services` ConfigMaps, `NAMESPACE/NAME`
    /// (`--tcp-services-configmap`, `--udp-services-configmap`): L4 services
    /// ([`stream_services`]).
    pub tcp_services_configmap: Option<String>,
    pub udp_services_configmap: Option<String>,
    /// Their services are balanced in XDP (`--l4-services-in-xdp`); by default the workers'
    /// side proxies them: XDP's source NAT needs the endpoints' replies to come back through
    /// an interface XDP is attached to, which pods behind veths or an overlay do not.
    pub l4_in_xdp: bool,
}

/// An Ingress, by namespace and name. Shared strings: a translation copies each id into
/// every route, group, status and note it owns, and a copy should cost no allocation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IngressId {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl std::fmt::Display for IngressId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Something the translation wants an operator to know: a conflict, a refused annotation, a
/// missing Service...
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The Ingress it is about, if any.
    pub ingress: Option<IngressId>,
    pub message: String,
    /// What kind of problem it is: the admission webhook denies some kinds and Events pick
    /// their reason from it.
    pub kind: NoteKind,
}

/// What a [`Note`] says about its Ingress.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NoteKind {
    /// Served, with something to know (an ignored annotation, a missing Service or Secret...).
    #[default]
    Warning,
    /// An annotation is ignored (by the table, or unknown).
    Ignored,
    /// A value of the Ingress itself is wrong (an annotation's value, a rule's host, a path):
    /// that part is left out.
    Invalid,
    /// The Ingress is refused whole (a refused annotation, a configuration that does not
    /// validate).
    Refused,
    /// A host/path or TLS host that the older Ingress `with` holds.
    Conflict { with: IngressId },
}

/// The result of one translation.
#[derive(Debug, Clone)]
pub struct Translation {
    /// Shared: a translation equal to the last one that validated is that one's `Arc`.
    pub config: Arc<Config>,
    /// The Ingresses served (ours and not refused), sorted.
    pub served: Vec<IngressId>,
    /// Every Ingress of a class that is ours, served or not, sorted: those not in `served`
    /// were refused or set aside (`sluice check --ingress` tells them from other classes').
    pub considered: Vec<IngressId>,
    pub notes: Vec<Note>,
    /// The statuses of the Gateway API objects that are ours.
    pub gateway: GatewayStatuses,
    /// Fields (`virtual_hosts[3].routes[1]`, `backends[2]`...) → the Ingress that put them
    /// there, to set aside the Ingress a validation problem is about.
    owners: Vec<(Field, IngressId)>,
}

/// A field of the configuration that an Ingress put there; its path is written only when a
/// validation problem is looked up ([`Translation::owner_of`]), which is rare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Route { host: usize, route: usize },
    HostTls(usize),
    Backend(usize),
    Certificate(usize),
}

impl Field {
    /// The field a problem's path (`virtual_hosts[3].routes[1].backend`) is in, if any.
    fn of(path: &str) -> Option<Field> {
        /// `[N]` (N written as `format!` writes it) and what follows.
        fn index(rest: &str) -> Option<(usize, &str)> {
            let (number, rest) = rest.strip_prefix('[')?.split_once(']')?;
            let canonical =
                number.bytes().all(|b| b.is_ascii_digit()) && (number == "0" || !number.starts_with('0'));
            Some((number.parse().ok().filter(|_| canonical)?, rest))
        }
        fn ends(rest: &str) -> bool {
            rest.is_empty() || rest.starts_with(['.', '['])
        }
        if let Some(rest) = path.strip_prefix("virtual_hosts") {
            let (host, rest) = index(rest)?;
            if let Some(rest) = rest.strip_prefix(".routes") {
                let (route, rest) = index(rest)?;
                return ends(rest).then_some(Field::Route { host, route });
            }
            return rest.strip_prefix(".tls").filter(|rest| ends(rest)).map(|_| Field::HostTls(host));
        }
        let (list, rest): (fn(usize) -> Field, &str) = match path.strip_prefix("backends") {
            Some(rest) => (Field::Backend, rest),
            None => (Field::Certificate, path.strip_prefix("certificates")?),
        };
        let (i, rest) = index(rest)?;
        ends(rest).then(|| list(i))
    }
}

impl Translation {
    /// The Ingress that owns the field at `path` (a validation problem's path), if any.
    pub fn owner_of(&self, path: &str) -> Option<&IngressId> {
        let field = Field::of(path)?;
        self.owners.iter().find(|(owned, _)| *owned == field).map(|(_, id)| id)
    }
}

/// Translates cluster state; remembers which Secrets' certificates were checked, so a rebuild
/// does not parse unchanged certificates again.
pub struct Translator {
    settings: Settings,
    /// Secret uid and resourceVersion → the leaf's not-after (unix seconds), or why it is unusable.
    checked: Mutex<HashMap<(String, String), Result<i64, String>>>,
    /// What the last rebuild worked out that the next may reuse ([`memo`]). Taken out for a
    /// translation and put back after it: a translation running at the same time (the admission
    /// webhook's) starts without it, which costs time, never correctness.
    memo: Mutex<memo::Memo>,
    /// Backend groups the last translation made rather than found in the memo.
    last_made: std::sync::atomic::AtomicUsize,
    /// Routes and virtual hosts the last translation found in the memo.
    last_reused: Mutex<(usize, usize)>,
    /// The last configuration that validated: the next is validated against it (only what
    /// changed is checked in full) and, when equal, is it.
    validated: Mutex<Option<Arc<Config>>>,
}

impl Translator {
    pub fn new(settings: Settings) -> Translator {
        Translator {
            settings,
            checked: Mutex::new(HashMap::new()),
            memo: Mutex::default(),
            last_made: Default::default(),
            last_reused: Default::default(),
            validated: Mutex::default(),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// How many backend groups the last translation made from their Service and slices (the
    /// others it found unchanged in its cache).
    pub fn groups_made(&self) -> usize {
        self.last_made.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many routes, and how many virtual hosts, the last translation took unchanged from
    /// the one before.
    pub fn reused(&self) -> (usize, usize) {
        *self.last_reused.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The configuration for `state` on top of `base` (listeners, workers, limits, and any
    /// virtual hosts, backends and certificates of its own, which are kept).
    pub fn translate(&self, base: &Config, state: &ClusterState) -> Translation {
        self.translate_excluding(base, state, &BTreeSet::new())
    }

    /// Translates, validates, and sets aside any Ingress that a validation problem is about
    /// (reported), until the configuration validates or nothing can be set aside.
    pub fn build(&self, base: &Config, state: &ClusterState) -> Result<Translation, crate::config::Error> {
        let mut excluded = BTreeSet::new();
        let valid = self.validated.lock().unwrap_or_else(|p| p.into_inner()).clone();
        loop {
            let mut translation = self.translate_excluding(base, state, &excluded);
            let (problems, source_name) =
                match translation.config.validate_since("kubernetes", valid.as_deref()) {
                    Ok(()) => {
                        for id in &excluded {
                            translation.notes.push(Note {
                                ingress: Some(id.clone()),
                                message: "not served: the configuration it makes does not validate".into(),
                                kind: NoteKind::Refused,
                            });
                        }
                        match &valid {
                            Some(valid) if **valid == *translation.config => {
                                translation.config = Arc::clone(valid)
                            }
                            _ => {
                                *self.validated.lock().unwrap_or_else(|p| p.into_inner()) =
                                    Some(Arc::clone(&translation.config))
                            }
                        }
                        return Ok(translation);
                    }
                    Err(crate::config::Error::Invalid { problems, source_name }) => (problems, source_name),
                    Err(other) => return Err(other),
                };
            let offenders: BTreeSet<IngressId> =
                problems.iter().filter_map(|p| translation.owner_of(&p.path).cloned()).collect();
            if offenders.is_empty() || offenders.iter().all(|o| excluded.contains(o)) {
                return Err(crate::config::Error::Invalid { source_name, problems });
            }
            for offender in offenders {
                let messages: Vec<String> = problems
                    .iter()
                    .filter(|p| translation.owner_of(&p.path) == Some(&offender))
                    .map(|p| format!("{}: {}", p.path, p.message))
                    .collect();
                tracing::warn!(ingress = %offender, problems = %messages.join("; "), "Ingress set aside");
                excluded.insert(offender);
            }
        }
    }

    fn translate_excluding(
        &self,
        base: &Config,
        state: &ClusterState,
        excluded: &BTreeSet<IngressId>,
    ) -> Translation {
        let mut builder = Builder::new(self, base, state);
        builder.read_controller_config();
        builder.memo.controller(&builder.controller, &builder.controller_headers);
        builder.controller_default_backend();
        let (ours, default_is_ours) = builder.classes();
        let mut ingresses: Vec<&Arc<Ingress>> =
            state.ingresses.iter().filter(|i| is_ours(i, &ours, default_is_ours)).collect();
        // No two Ingresses tie (namespace and name end the key): unstable is the same order.
        ingresses.sort_unstable_by(|a, b| age_key(a).cmp(&age_key(b)));
        let ids: Vec<IngressId> = ingresses.iter().map(|i| id_of(i)).collect();
        let mut canaries = Vec::new();
        let mut served = Vec::with_capacity(ingresses.len());
        let mut considered = ids.clone();
        considered.sort_unstable();
        let mut readings = Vec::with_capacity(ingresses.len());
        // Ingresses with equal annotations (in one namespace, when they name a custom-headers
        // ConfigMap, which is looked up there) share one reading with the controller's
        // defaults under it. Keyed by the memo's reading, one `Arc` per distinct annotation map
        // (the memo holds it until the translation ends), so a map is hashed once, there.
        let mut defaulted: FastMap<(*const annotations::Reading, &str), Arc<annotations::Reading>> =
            FastMap::default();
        for (ingress, id) in ingresses.into_iter().zip(ids) {
            if excluded.contains(&id) {
                continue;
            }
            let raw = ingress.metadata.annotations.as_ref().unwrap_or(&NO_ANNOTATIONS);
            let read = builder.memo.reading(raw);
            let namespace = if read.annotations.custom_headers.is_some() {
                meta_ns_name(&ingress.metadata).0
            } else {
                ""
            };
            let kept = match namespace {
                // Without a custom-headers ConfigMap, the defaulted reading depends on the
                // controller settings only: kept across translations.
                "" => builder.memo.defaulted(&read),
                _ => defaulted.get(&(Arc::as_ptr(&read), namespace)).cloned(),
            };
            let reading = match kept {
                Some(reading) => reading,
                None => {
                    let mut reading = annotations::Reading::clone(&read);
                    builder.controller_defaults(&id, &mut reading);
                    let reading = Arc::new(reading);
                    match namespace {
                        "" => builder.memo.keep_defaulted(&read, &reading),
                        _ => {
                            defaulted.insert((Arc::as_ptr(&read), namespace), Arc::clone(&reading));
                        }
                    }
                    reading
                }
            };
            for warning in &reading.warnings {
                let kind =
                    if reading.invalid.contains(warning) { NoteKind::Invalid } else { NoteKind::Ignored };
                builder.note_kind(Some(&id), kind, warning.clone());
            }
            if let Some(why) = &reading.refused {
                builder.note_kind(Some(&id), NoteKind::Refused, format!("not served: {why}"));
                continue;
            }
            served.push(id.clone());
            readings.push((ingress, id, reading));
        }
        builder.regex_hosts = regex_hosts(&readings);
        for (ingress, id, reading) in readings {
            if reading.annotations.canary.is_some() {
                canaries.push((ingress, id, reading));
            } else {
                builder.ingress(ingress, &id, &reading);
                builder.keep_routes(&id);
            }
        }
        for (ingress, id, reading) in canaries {
            builder.canary(ingress, &id, &reading.annotations);
        }
        let gateway = builder.gateway_api(excluded);
        served.sort_unstable();
        let (finished, memo) = builder.finish(served);
        self.keep_memo(memo);
        Translation { considered, gateway, ..finished }
    }

    /// Records what a translation reused, and keeps its cache for the next one.
    fn keep_memo(&self, mut memo: memo::Memo) {
        tracing::debug!(
            made = memo.made,
            reused = memo.found,
            held = memo.sizes().1,
            routes_reused = memo.routes_found,
            hosts_reused = memo.hosts_found,
            "backend groups"
        );
        *self.last_reused.lock().unwrap_or_else(|p| p.into_inner()) = (memo.routes_found, memo.hosts_found);
        self.last_made.store(memo.made, std::sync::atomic::Ordering::Relaxed);
        memo.sweep();
        *self.memo.lock().unwrap_or_else(|p| p.into_inner()) = memo;
    }
}

/// The entries of a map by name, ordered by name: the configuration's order.
fn by_name<V>(map: FastMap<String, V>) -> Vec<(String, V)> {
    let mut entries: Vec<(String, V)> = map.into_iter().collect();
    entries.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
    entries
}

/// The annotations of an Ingress that has none.
static NO_ANNOTATIONS: BTreeMap<String, String> = BTreeMap::new();

/// Oldest first; ties by namespace and name.
fn age_key(ingress: &Ingress) -> (Option<k8s_openapi::jiff::Timestamp>, &str, &str) {
    (
        ingress.metadata.creation_timestamp.as_ref().map(|t| t.0),
        ingress.metadata.namespace.as_deref().unwrap_or(""),
        ingress.metadata.name.as_deref().unwrap_or(""),
    )
}

pub fn id_of(ingress: &Ingress) -> IngressId {
    IngressId {
        namespace: ingress.metadata.namespace.as_deref().unwrap_or_default().into(),
        name: ingress.metadata.name.as_deref().unwrap_or_default().into(),
    }
}

fn is_ours(ingress: &Ingress, ours: &BTreeSet<String>, default_is_ours: bool) -> bool {
    let class = ingress.spec.as_ref().and_then(|s| s.ingress_class_name.as_deref()).or_else(|| {
        ingress.metadata.annotations.as_ref().and_then(|a| a.get(LEGACY_CLASS_ANNOTATION)).map(String::as_str)
    });
    match class {
        Some(class) => ours.contains(class),
        None => default_is_ours,
    }
}

/// A fresh model value with every default, from its YAML form: stays right when fields with
/// defaults are added to the model.
fn template<T: DeserializeOwned>(yaml: &str) -> T {
    serde_saphyr::from_str(yaml).expect("the template parses")
}

fn backend_template() -> &'static BackendConfig {
    static TEMPLATE: OnceLock<BackendConfig> = OnceLock::new();
    TEMPLATE.get_or_init(|| template("name: template\nendpoints: []\n"))
}

/// Header changes `first`, then `then`'s, as one layer.
fn layered(first: Option<HeaderOpsConfig>, then: Option<HeaderOpsConfig>) -> Option<HeaderOpsConfig> {
    match (first, then) {
        (Some(mut first), Some(then)) => {
            first.remove.extend(then.remove);
            first.set.extend(then.set);
            first.add.extend(then.add);
            Some(first)
        }
        (first, then) => first.or(then),
    }
}

/// `then` layered onto a route's header changes (boxed in the model).
fn layer_onto(slot: &mut Option<Box<HeaderOpsConfig>>, then: HeaderOpsConfig) {
    *slot = layered(slot.take().map(|first| *first), Some(then)).map(Box::new);
}

/// What the Ingress's annotations ask of each of its routes, whatever it does with requests:
/// who may use it, header changes, CORS.
fn route_policy(route: &mut RouteConfig, a: &Annotations) {
    route.source_ranges = a.source_ranges.clone().map(Box::new);
    route.request_headers = a.request_headers.clone().map(Box::new);
    route.response_headers = a.response_headers.clone().map(Box::new);
    route.cors = a.cors.clone().map(Box::new);
    route.rate_limit = a.rate_limit.clone().map(Box::new);
}

/// How the Ingress's redirects to HTTPS are written, as ingress-nginx's: no port unless
/// `use-port-in-redirects` (then the TLS listener's, 443 too), one trailing slash dropped unless
/// `preserve-trailing-slash`.
fn https_redirect_form(a: &Annotations) -> HttpsRedirectConfig {
    HttpsRedirectConfig {
        port: if a.use_port_in_redirects == Some(true) { RedirectPort::Always } else { RedirectPort::Never },
        strip_trailing_slash: a.preserve_trailing_slash != Some(true),
    }
}

/// `force-ssl-redirect`: plain HTTP goes to HTTPS on the Ingress's backend routes whether or
/// not its hosts have TLS here (the redirects `permanent-redirect` or `app-root` answer come
/// first, as nginx's `return` runs before ingress-nginx's redirect to HTTPS).
fn forced_https_redirect(a: &Annotations) -> Option<HttpsRedirectConfig> {
    (a.force_ssl_redirect == Some(true)).then(|| https_redirect_form(a))
}

/// A route's Ingress, Service and path, as ingress-nginx labels its requests.
fn ingress_labels(id: &IngressId, backend: &IngressBackend, path: &str) -> RouteIngressConfig {
    RouteIngressConfig {
        namespace: id.namespace.to_string(),
        name: id.name.to_string(),
        service: backend.service.as_ref().map(|s| s.name.clone()).unwrap_or_default(),
        path: path.to_owned(),
    }
}

fn route_template() -> &'static RouteConfig {
    static TEMPLATE: OnceLock<RouteConfig> = OnceLock::new();
    TEMPLATE.get_or_init(|| template("{}"))
}

// Parsed once: a rebuild makes one of each per host (or certificate, or backend), and parsing
// YAML for each was about a tenth of a rebuild's time with 5,000 Ingresses.

fn virtual_host_template() -> &'static VirtualHostConfig {
    static TEMPLATE: OnceLock<VirtualHostConfig> = OnceLock::new();
    TEMPLATE.get_or_init(|| template("name: x\ndomains: []\n"))
}

fn host_tls_template() -> &'static HostTlsConfig {
    static TEMPLATE: OnceLock<HostTlsConfig> = OnceLock::new();
    TEMPLATE.get_or_init(|| template("certificate: x\n"))
}

fn passthrough_template() -> &'static HostTlsConfig {
    static TEMPLATE: OnceLock<HostTlsConfig> = OnceLock::new();
    TEMPLATE.get_or_init(|| template("passthrough: x\n"))
}

fn certificate_template() -> &'static CertificateConfig {
    static TEMPLATE: OnceLock<CertificateConfig> = OnceLock::new();
    TEMPLATE.get_or_init(|| template("name: x\ncert_pem: x\nkey_pem: x\n"))
}

fn insecure_tls_template() -> &'static BackendTlsConfig {
    static TEMPLATE: OnceLock<BackendTlsConfig> = OnceLock::new();
    TEMPLATE.get_or_init(|| template("insecure_skip_verify: true\n"))
}

/// How the routing table orders and tells routes apart: the whole match (path, methods,
/// header and query constraints, listeners).
type ClaimKey = MatchConfig;

/// Up to this many routes, a host's claims are found by scanning its routes (most hosts have
/// one or two); past it, through an index by match ([`HostBuild::claims`]).
const SCANNED_CLAIMS: usize = 16;

#[derive(Default)]
struct HostBuild {
    /// Shared with the translator's memo when unchanged since the last translation. Each is
    /// the claim of its match until the translation's last steps add unclaimed ones.
    routes: Vec<(Arc<RouteConfig>, IngressId)>,
    /// Claim key → index into `routes`; empty while there are at most [`SCANNED_CLAIMS`].
    claims: FastMap<ClaimKey, usize>,
    tls: Option<(HostTlsConfig, IngressId)>,
    /// Claim keys of main routes that already have a canary.
    canaried: std::collections::HashSet<ClaimKey>,
    /// Its wildcard takes any number of labels (a Gateway API hostname).
    deep_wildcards: bool,
    /// `server-alias` names (with the Ingress that asked), served as this host.
    aliases: Vec<(String, IngressId)>,
}

impl HostBuild {
    /// The index of the route that claimed `key`.
    fn claimed(&self, key: &ClaimKey) -> Option<usize> {
        if self.claims.is_empty() {
            self.routes.iter().position(|(route, _)| route.matcher == *key)
        } else {
            self.claims.get(key).copied()
        }
    }

    /// Adds the route that claims its match (not claimed yet).
    fn add_claim(&mut self, route: Arc<RouteConfig>, id: &IngressId) {
        self.routes.push((route, id.clone()));
        if self.routes.len() > SCANNED_CLAIMS {
            if self.claims.is_empty() {
                let indexed = self.routes.iter().enumerate().map(|(i, (r, _))| (r.matcher.clone(), i));
                self.claims.extend(indexed);
            } else {
                let last = self.routes.len() - 1;
                self.claims.insert(self.routes[last].0.matcher.clone(), last);
            }
        }
    }
}

/// The stores by namespace and name. Services and slices as the stores' `Arc`s: the
/// [`memo`] tells unchanged objects by them.
struct Index<'a> {
    services: FastMap<(&'a str, &'a str), &'a Arc<Service>>,
    /// (namespace, service) → slices, by slice name.
    slices: FastMap<(&'a str, &'a str), Vec<&'a Arc<EndpointSlice>>>,
    secrets: FastMap<(&'a str, &'a str), &'a Secret>,
    configmaps: FastMap<(&'a str, &'a str), &'a ConfigMap>,
}

struct Builder<'a> {
    translator: &'a Translator,
    base: &'a Config,
    state: &'a ClusterState,
    index: Index<'a>,
    /// By name; ordered once, when the configuration is made ([`Builder::finish`]).
    hosts: FastMap<String, HostBuild>,
    /// By name; ordered once, when the configuration is made ([`Builder::finish`]).
    backends: FastMap<String, (Arc<BackendConfig>, IngressId)>,
    /// What making a group noted (its Service missing...), only for groups that noted
    /// something, and the Ingress last told: every Ingress naming the group is told, once.
    group_notes: FastMap<String, (Vec<(NoteKind, String)>, IngressId)>,
    certificates: BTreeMap<String, (CertificateConfig, IngressId)>,
    notes: Vec<Note>,
    tls_listener: bool,
    /// The controller ConfigMap's settings (ingress-nginx's defaults without one).
    controller: ControllerConfig,
    /// Its `proxy-set-headers` and `add-headers`, read from the ConfigMaps they name.
    controller_headers: (Option<HeaderOpsConfig>, Option<HeaderOpsConfig>),
    /// The basic auth of the Ingress being translated, its Secret read once for all its routes.
    basic_auth: Option<BasicAuthConfig>,
    /// The client certificate settings of the Ingress being translated, its CA read.
    client_tls: Option<client_tls::ClientTls>,
    /// Hosts whose paths are all regular expressions ([`regex_hosts`]).
    regex_hosts: BTreeSet<String>,
    /// The controller default backend's group (`--default-backend-service`).
    default_group: Option<String>,
    /// The error backend's group of the Ingress being translated.
    error_group: Option<String>,
    /// `from-to-www-redirect`: (rule host, its Ingress), redirected to from its twin.
    www_redirects: Vec<(String, IngressId)>,
    /// `mirror-target` of the Ingress being translated, for each of its routes to a backend.
    mirror: Option<crate::config::MirrorConfig>,
    /// The translator's cache, taken out for this translation.
    memo: memo::Memo,
    /// The Gateways' TCP and UDP listeners' services and the routes they serve, added after
    /// the ConfigMaps' ([`gateway`]).
    gateway_l4: Vec<(crate::config::L4ServiceConfig, IngressId)>,
    /// The routes the Ingress being translated made last time, still unclaimed ([`memo`]),
    /// and the record of those it makes this time.
    kept_routes: Vec<memo::PathRoute>,
    made_routes: Option<memo::IngressRoutes>,
    /// Paths of the Ingress being translated made into routes so far.
    path_ordinal: usize,
}

fn meta_ns_name(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (&str, &str) {
    (meta.namespace.as_deref().unwrap_or(""), meta.name.as_deref().unwrap_or(""))
}

impl<'a> Builder<'a> {
    fn new(translator: &'a Translator, base: &'a Config, state: &'a ClusterState) -> Builder<'a> {
        let services = state.services.iter().map(|s| (meta_ns_name(&s.metadata), s)).collect();
        let mut slices: FastMap<(&str, &str), Vec<&Arc<EndpointSlice>>> =
            FastMap::with_capacity_and_hasher(state.slices.len(), Default::default());
        for slice in &state.slices {
            let Some(service) = &slice.service else {
                continue;
            };
            let namespace = slice.metadata.namespace.as_deref().unwrap_or("");
            slices.entry((namespace, service.as_str())).or_default().push(slice);
        }
        for list in slices.values_mut() {
            list.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        }
        let secrets = state.secrets.iter().map(|s| (meta_ns_name(&s.metadata), s.as_ref())).collect();
        let configmaps = state.configmaps.iter().map(|c| (meta_ns_name(&c.metadata), c.as_ref())).collect();
        let memo: memo::Memo =
            std::mem::take(&mut *translator.memo.lock().unwrap_or_else(|p| p.into_inner()));
        // Sized as the last translation's, so a rebuild does not grow them step by step.
        let (hosts, backends) = memo.sizes();
        Builder {
            translator,
            base,
            state,
            index: Index { services, slices, secrets, configmaps },
            hosts: FastMap::with_capacity_and_hasher(hosts, Default::default()),
            backends: FastMap::with_capacity_and_hasher(backends, Default::default()),
            group_notes: FastMap::default(),
            certificates: BTreeMap::new(),
            notes: Vec::new(),
            tls_listener: base.listeners.iter().any(|l| l.tls.is_some()),
            controller: ControllerConfig::default(),
            controller_headers: (None, None),
            basic_auth: None,
            client_tls: None,
            regex_hosts: BTreeSet::new(),
            default_group: None,
            error_group: None,
            www_redirects: Vec::new(),
            mirror: None,
            memo,
            gateway_l4: Vec::new(),
            kept_routes: Vec::new(),
            made_routes: None,
            path_ordinal: 0,
        }
    }

    /// Reads the controller ConfigMap, when one is named, and the header ConfigMaps it names.
    fn read_controller_config(&mut self) {
        let Some(reference) = self.translator.settings.controller_configmap.clone() else { return };
        let Some(data) = self.configmap_data(&reference, "") else {
            self.note(
                None,
                format!("controller ConfigMap {reference} not found; ingress-nginx's defaults apply"),
            );
            return;
        };
        let (controller, warnings) = controller_config::read(&data);
        for warning in warnings {
            self.note(None, format!("controller ConfigMap {reference}: {warning}"));
        }
        let mut headers = |key: &str, named: &Option<String>| -> Option<HeaderOpsConfig> {
            let named = named.as_ref()?;
            let read = match self.configmap_data(named, "") {
                Some(data) => controller_config::header_fields(&data),
                None => Err("not found".to_owned()),
            };
            read.map_err(|e| self.note(None, format!("{key} ConfigMap {named}: {e}; no headers from it")))
                .ok()
        };
        self.controller_headers = (
            headers("proxy-set-headers", &controller.proxy_set_headers),
            headers("add-headers", &controller.add_headers),
        );
        self.controller = controller;
    }

    /// The data of the ConfigMap `NAMESPACE/NAME` (or `NAME` in `namespace`).
    fn configmap_data(&self, reference: &str, namespace: &str) -> Option<BTreeMap<String, String>> {
        let (namespace, name) = reference.split_once('/').unwrap_or((namespace, reference));
        self.index.configmaps.get(&(namespace, name)).map(|c| c.data.clone().unwrap_or_default())
    }

    /// The controller ConfigMap's defaults under one Ingress's annotations, its header
    /// ConfigMaps before the annotations' changes, and the `custom-headers` ConfigMap, which
    /// refuses the Ingress when it cannot be used (ingress-nginx denies its locations).
    fn controller_defaults(&mut self, id: &IngressId, reading: &mut annotations::Reading) {
        let c = &self.controller;
        let a = &mut reading.annotations;
        a.body_size = a.body_size.or(c.body_size);
        a.read_timeout_ms = a.read_timeout_ms.or(c.read_timeout_ms);
        a.backend.read_timeout_ms = a.read_timeout_ms;
        a.backend.connect_timeout_ms = a.backend.connect_timeout_ms.or(c.connect_timeout_ms);
        let (b, u) = (&mut a.backend, &c.upstream);
        b.send_timeout_ms = b.send_timeout_ms.or(u.send_timeout_ms);
        if b.next_upstream.is_none() && u.next_upstream.is_some() {
            b.next_upstream.clone_from(&u.next_upstream);
            b.no_retries = u.next_upstream.as_deref() == Some(&[]);
        }
        b.next_upstream_timeout_ms = b.next_upstream_timeout_ms.or(u.next_upstream_timeout_ms);
        b.tries = b.tries.or(u.next_upstream_tries.filter(|t| *t > 0).map(|t| t.min(10)));
        b.request_buffering = b.request_buffering.or(u.request_buffering);
        b.request_buffer_bytes = b.request_buffer_bytes.or(u.request_buffer_bytes);
        b.response_buffering = b.response_buffering.or(u.response_buffering);
        b.response_buffer_bytes = b.response_buffer_bytes.or(u.response_buffer_bytes);
        a.ssl_redirect = a.ssl_redirect.or(Some(c.ssl_redirect));
        a.force_ssl_redirect = a.force_ssl_redirect.or(Some(c.force_ssl_redirect));
        a.use_port_in_redirects = a.use_port_in_redirects.or(Some(c.use_port_in_redirects));
        a.preserve_trailing_slash = a.preserve_trailing_slash.or(Some(c.preserve_trailing_slash));
        if a.custom_http_errors.is_none() && !c.custom_http_errors.is_empty() {
            a.custom_http_errors = Some(c.custom_http_errors.clone());
        }
        let (request, response) = self.controller_headers.clone();
        a.request_headers = layered(request, a.request_headers.take());
        a.response_headers = layered(response, a.response_headers.take());
        let Some(reference) = a.custom_headers.clone() else { return };
        let allowed = &self.controller.allowed_response_headers;
        let custom = match self.configmap_data(&reference, &id.namespace) {
            None => Err(format!("custom-headers: ConfigMap {reference} not found")),
            Some(data) => controller_config::header_fields(&data)
                .map_err(|e| format!("custom-headers: ConfigMap {reference}: {e}"))
                .and_then(|ops| match ops.set.iter().find(|f| !allowed.contains(&f.name.to_ascii_lowercase())) {
                    Some(f) => Err(format!(
                        "custom-headers: header {} is not in the controller ConfigMap's global-allowed-response-headers",
                        f.name
                    )),
                    None => Ok(ops),
                }),
        };
        match custom {
            Ok(ops) => {
                let a = &mut reading.annotations;
                a.response_headers = layered(a.response_headers.take(), Some(ops));
            }
            Err(why) => {
                reading.refused.get_or_insert(why);
            }
        }
    }

    /// The controller ConfigMap's node-wide settings, over the base configuration's.
    fn controller_settings(&self, config: &mut Config) {
        let c = &self.controller;
        if let Some(forwarded) = &c.forwarded {
            config.forwarded = forwarded.clone();
        }
        if let Some(proxy_protocol) = c.proxy_protocol {
            for listener in &mut config.listeners {
                listener.proxy_protocol = proxy_protocol;
            }
        }
        if let Some(status) = c.limit_req_status {
            config.limits.rate_limit_status = status;
        }
        if let Some(status) = c.limit_conn_status {
            config.limits.connection_limit_status = status;
        }
    }

    fn note(&mut self, ingress: Option<&IngressId>, message: impl Into<String>) {
        self.note_kind(ingress, NoteKind::Warning, message);
    }

    fn note_kind(&mut self, ingress: Option<&IngressId>, kind: NoteKind, message: impl Into<String>) {
        self.notes.push(Note { ingress: ingress.cloned(), message: message.into(), kind });
    }

    /// The class names that are ours, and whether Ingresses without a class are.
    fn classes(&mut self) -> (BTreeSet<String>, bool) {
        let mut classes: Vec<&IngressClass> = self.state.classes.iter().map(Arc::as_ref).collect();
        classes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let mut ours = BTreeSet::new();
        let mut default_is_ours = false;
        let mut defaults = 0;
        let configured = self.translator.settings.ingress_class.as_str();
        let mut configured_taken = false;
        for class in classes {
            let name = class.metadata.name.clone().unwrap_or_default();
            let controller = class.spec.as_ref().and_then(|s| s.controller.as_deref()).unwrap_or("");
            let default = class
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                .is_some_and(|v| v == "true");
            defaults += usize::from(default);
            if controller == CONTROLLER {
                default_is_ours |= default;
                ours.insert(name);
            } else if name == configured {
                configured_taken = true;
                self.note(
                    None,
                    format!("IngressClass {name:?} belongs to controller {controller:?}; Ingresses of that class are not served"),
                );
            }
        }
        if defaults > 1 {
            self.note(None, format!("{defaults} IngressClasses are marked default; Kubernetes expects one"));
        }
        if !configured_taken {
            ours.insert(configured.to_owned());
        }
        (ours, default_is_ours)
    }

    /// The host of a rule (`*` when none), or why it cannot be served.
    fn host_of(rule_host: Option<&str>) -> Result<String, String> {
        let host = rule_host.unwrap_or("").trim().to_ascii_lowercase();
        if host.is_empty() {
            return Ok("*".to_owned());
        }
        // The configuration's own rule, except that an Ingress cannot claim the default host.
        let valid = host != "*" && crate::config::valid_domain(&host);
        if valid { Ok(host) } else { Err(format!("host {host:?} is not a valid host name")) }
    }

    /// The path match of an Ingress path on a host, `regex` when the host's paths are regular
    /// expressions ([`regex_hosts`]), whatever their pathType.
    fn path_match(path: &HTTPIngressPath, regex: bool) -> Result<PathMatch, String> {
        let text = path.path.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "/".to_owned());
        if regex {
            // ingress-nginx makes these `location ~* "^path"`: case-insensitive, anchored at the
            // start (Exact and Prefix paths too).
            let pattern = format!("(?i){text}");
            regex::Regex::new(&pattern)
                .map_err(|e| format!("path {text:?} is not a regular expression: {e}"))?;
            return Ok(PathMatch::Regex(pattern));
        }
        if !text.starts_with('/') {
            return Err(format!("path {text:?} does not start with /"));
        }
        match path.path_type.as_str() {
            "Exact" => Ok(PathMatch::Exact(text)),
            // ImplementationSpecific is read as Prefix (element-wise), as Gateway API does.
            "Prefix" | "ImplementationSpecific" | "" => Ok(PathMatch::Prefix(text)),
            other => Err(format!("pathType {other:?} is not Exact, Prefix or ImplementationSpecific")),
        }
    }

    /// Adds a route to `host` unless an older Ingress claimed the same match there. A route
    /// for some listeners only (a Gateway API route's) also yields to a claim for all of them
    /// (an Ingress's: Ingresses are read first).
    fn claim(&mut self, host: &str, route: impl Into<Arc<RouteConfig>>, id: &IngressId) -> bool {
        let route: Arc<RouteConfig> = route.into();
        // Only a route for some listeners has a second key to yield to.
        let any_listener = (!route.matcher.listeners.is_empty())
            .then(|| MatchConfig { listeners: Vec::new(), ..route.matcher.clone() });
        let entry = self.host_entry(host);
        let claimed = entry.claimed(&route.matcher).or_else(|| entry.claimed(any_listener.as_ref()?));
        if let Some(index) = claimed {
            let (_, owner) = &entry.routes[index];
            if owner != id {
                let message = format!(
                    "host {host} path {} is already served by the older Ingress {owner}; this claim is ignored",
                    describe(&route.matcher)
                );
                let kind = NoteKind::Conflict { with: owner.clone() };
                self.note_kind(Some(id), kind, message);
            }
            return false;
        }
        entry.add_claim(route, id);
        true
    }

    /// The host being built for `host`, entered if new (without a copy of the name when not).
    fn host_entry(&mut self, host: &str) -> &mut HostBuild {
        if !self.hosts.contains_key(host) {
            self.hosts.insert(host.to_owned(), HostBuild::default());
        }
        self.hosts.get_mut(host).expect("entered above")
    }

    /// The routes, TLS and default backend of a main (not canary) Ingress.
    fn ingress(&mut self, ingress: &Arc<Ingress>, id: &IngressId, reading: &Arc<annotations::Reading>) {
        let a = &reading.annotations;
        let Some(spec) = ingress.spec.as_ref() else { return };
        self.basic_auth = a.basic_auth.as_ref().map(|setting| self.basic_auth_config(setting, id));
        let checked = a.client_tls.as_ref().map(|setting| {
            self.client_tls_hosts_covered(spec, id).and_then(|()| self.client_tls(setting, id))
        });
        self.client_tls = match checked {
            None => None,
            Some(Ok(client_tls)) => Some(client_tls),
            Some(Err(why)) => {
                self.note(Some(id), format!("client certificates: {why}; the Ingress is not served"));
                return;
            }
        };
        self.error_group = self.error_backend(id, a);
        if self.error_group.is_none() && a.custom_http_errors.as_ref().is_some_and(|s| !s.is_empty()) {
            // Not applied, so reported as an ignored annotation (a warning at admission).
            self.note_kind(
                Some(id),
                NoteKind::Ignored,
                "custom-http-errors: no error backend (no default-backend annotation, no --default-backend-service); the backend's answers pass through",
            );
        }
        let redirect = self.whole_redirect(a, id);
        self.mirror = a.mirror.as_ref().and_then(|setting| self.ingress_mirror(setting, id));
        let context = memo::RouteContext {
            basic_auth: self.basic_auth.clone(),
            error_group: self.error_group.clone(),
            redirect: redirect.clone(),
            mirror: self.mirror.clone(),
        };
        self.path_ordinal = 0;
        (self.kept_routes, self.made_routes) = {
            let (kept, made) = self.memo.routes_of(id, ingress, reading, context);
            (kept, Some(made))
        };
        let mut hosts_served = BTreeSet::new();
        for rule in spec.rules.iter().flatten() {
            if let Some(host) = self.rule(rule, id, a, redirect.as_ref()) {
                hosts_served.insert(host);
            }
        }
        for host in hosts_served.iter().filter(|h| *h != "*") {
            let entry = self.host_entry(host);
            entry.aliases.extend(a.server_alias.iter().map(|alias| (alias.clone(), id.clone())));
        }
        if a.from_to_www {
            let named = hosts_served.iter().filter(|h| *h != "*" && !h.starts_with("*."));
            self.www_redirects.extend(named.map(|h| (h.clone(), id.clone())));
        }
        if let Some(default) = &spec.default_backend
            && redirect.is_none()
        {
            self.default_backend(default, id, a, &hosts_served);
        }
        if a.ssl_passthrough {
            return;
        }
        let tls_hosts = self.tls_hosts(spec, id, a);
        if self.client_tls.is_some() {
            self.client_tls_fail_closed(&hosts_served, id);
        }
        if !tls_hosts.is_empty() && !self.tls_listener {
            self.note(Some(id), "has TLS hosts but no listener terminates TLS; served over plain HTTP only");
        }
    }

    /// Client certificates are checked only where the Ingress's own TLS settings serve its host.
    /// Where they do not (its TLS Secret is unusable, an older Ingress set the host's TLS, no
    /// listener terminates TLS), the Ingress's paths on that host answer 403 to everyone rather
    /// than serve without the check.
    fn client_tls_fail_closed(&mut self, hosts: &BTreeSet<String>, id: &IngressId) {
        let everyone: Vec<crate::config::Cidr> =
            ["0.0.0.0/0", "::/0"].iter().map(|c| c.parse().expect("a CIDR")).collect();
        let mut closed = Vec::new();
        for host in hosts {
            let Some(entry) = self.hosts.get_mut(host) else { continue };
            let checked = self.tls_listener && entry.tls.as_ref().is_some_and(|(_, owner)| owner == id);
            if checked {
                continue;
            }
            for (route, _) in entry.routes.iter_mut().filter(|(_, owner)| owner == id) {
                Arc::make_mut(route).source_ranges = Some(Box::new(crate::config::SourceRangesConfig {
                    allow: Vec::new(),
                    deny: everyone.clone(),
                }));
            }
            closed.push(host.clone());
        }
        for host in closed {
            self.note(
                Some(id),
                format!("client certificates cannot be checked on host {host} (no usable TLS of this Ingress there); its paths answer 403"),
            );
        }
    }

    /// The redirect every path of the Ingress answers with, if it asks for one and the URL is
    /// usable (else noted).
    fn whole_redirect(&mut self, a: &Annotations, id: &IngressId) -> Option<RedirectConfig> {
        let whole = a.redirect.as_ref()?;
        match redirect_to(&whole.url, whole.code) {
            Ok(redirect) => Some(redirect),
            Err(e) => {
                self.note_kind(Some(id), NoteKind::Invalid, e);
                None
            }
        }
    }

    /// Claims the routes of one rule; its host, or `None` when the host is not valid (noted).
    fn rule(
        &mut self,
        rule: &IngressRule,
        id: &IngressId,
        a: &Annotations,
        redirect: Option<&RedirectConfig>,
    ) -> Option<String> {
        let host = match Self::host_of(rule.host.as_deref()) {
            Ok(host) => host,
            Err(e) => {
                self.note_kind(Some(id), NoteKind::Invalid, format!("rule skipped: {e}"));
                return None;
            }
        };
        if let Some(app_root) = &a.app_root {
            let mut route = route_template().clone();
            route.name = Some(id.to_string());
            route.matcher.path = Some(PathMatch::Exact("/".into()));
            route.redirect = Some(Box::new(RedirectConfig {
                scheme: None,
                host: None,
                port: None,
                path: Some(app_root.clone()),
                code: 302,
            }));
            self.claim(&host, route, id);
        }
        // What a passthrough host goes to: the backend of `/`, else of the first path.
        let mut first_backend = None;
        for path in rule.http.iter().flat_map(|h| h.paths.iter()) {
            let Some(route) = self.path_route(&host, path, id, a, redirect) else { continue };
            if let Some(group) = &route.backend
                && (first_backend.is_none()
                    || matches!(&route.matcher.path, Some(PathMatch::Prefix(p)) if p == "/"))
            {
                first_backend = Some(group.clone());
            }
            self.claim(&host, route, id);
        }
        if a.ssl_passthrough {
            self.passthrough(&host, first_backend, id);
        }
        Some(host)
    }

    /// Keeps the routes the Ingress just translated made, for the next translation.
    fn keep_routes(&mut self, id: &IngressId) {
        self.kept_routes.clear();
        if let Some(made) = self.made_routes.take() {
            self.memo.keep_routes(id, made);
        }
    }

    /// The route of one Ingress path, or `None` when the path is skipped (noted): the one it
    /// made last time when everything it reads is the same ([`memo::IngressRoutes`]).
    fn path_route(
        &mut self,
        host: &str,
        path: &HTTPIngressPath,
        id: &IngressId,
        a: &Annotations,
        redirect: Option<&RedirectConfig>,
    ) -> Option<Arc<RouteConfig>> {
        let regex = self.regex_hosts.contains(host);
        // The paths of an Ingress come here in the order of its spec, so the n-th is the same
        // path of an equal spec.
        let ordinal = self.path_ordinal;
        self.path_ordinal += 1;
        let kept =
            self.kept_routes.iter().position(|r| r.path == ordinal && r.host == host && r.regex == regex);
        let kept = kept.map(|i| self.kept_routes.swap_remove(i));
        // A kept route's path (the same text, the same kind of host) matched before.
        let matcher = match kept {
            Some(_) => None,
            None => Some(self.path_matcher(path, regex, id)?),
        };
        let backend = match redirect {
            Some(_) => None,
            None => {
                let group = self.service_backend(&id.namespace, &path.backend, &a.backend, id)?;
                Some(self.unless_unavailable(group, a))
            }
        };
        let route = match kept {
            Some(kept) if kept.backend == backend => {
                self.memo.routes_found += 1;
                kept.route
            }
            _ => {
                let matcher = match matcher {
                    Some(matcher) => matcher,
                    None => self.path_matcher(path, regex, id)?,
                };
                Arc::new(self.new_path_route(matcher, path, id, a, redirect, backend.clone()))
            }
        };
        if let Some(made) = &mut self.made_routes {
            let host = host.to_owned();
            made.routes.push(memo::PathRoute {
                path: ordinal,
                host,
                regex,
                backend,
                route: Arc::clone(&route),
            });
        }
        Some(route)
    }

    /// The match of an Ingress path, or `None` when it has none (noted).
    fn path_matcher(&mut self, path: &HTTPIngressPath, regex: bool, id: &IngressId) -> Option<PathMatch> {
        match Self::path_match(path, regex) {
            Ok(m) => Some(m),
            Err(e) => {
                self.note_kind(Some(id), NoteKind::Invalid, format!("path skipped: {e}"));
                None
            }
        }
    }

    /// The route of one Ingress path to `backend` (or its whole redirect).
    fn new_path_route(
        &self,
        matcher: PathMatch,
        path: &HTTPIngressPath,
        id: &IngressId,
        a: &Annotations,
        redirect: Option<&RedirectConfig>,
        backend: Option<String>,
    ) -> RouteConfig {
        let mut route = route_template().clone();
        route.name = Some(id.to_string());
        route.max_body_bytes = a.body_size;
        route_policy(&mut route, a);
        route.basic_auth = self.basic_auth.clone().map(Box::new);
        route.external_auth = a.external_auth.clone().map(Box::new);
        if let (Some(target), PathMatch::Regex(pattern)) = (&a.rewrite_target, &matcher) {
            route.rewrite = Some(Box::new(RewriteConfig {
                prefix: None,
                // nginx's `rewrite` replaces the whole URI: match it all.
                regex: Some(format!("(?s)^(?:{pattern}).*")),
                replacement: Some(annotations::replacement(target)),
            }));
        }
        route.matcher.path = Some(matcher);
        route.ingress = Some(ingress_labels(id, &path.backend, path.path.as_deref().unwrap_or("/")));
        match redirect {
            Some(redirect) => route.redirect = Some(Box::new(redirect.clone())),
            None => {
                route.backend = backend;
                route.error_pages = self.error_pages(&path.backend, id, a).map(Box::new);
                route.https_redirect = forced_https_redirect(a);
                route.mirrors = self.mirror.iter().cloned().collect();
            }
        }
        route
    }

    /// The Ingress's `defaultBackend`: every path of hosts no rule names, and the paths of its
    /// own hosts (`hosts`) that no rule of theirs matches, as ingress-nginx serves them.
    fn default_backend(
        &mut self,
        backend: &IngressBackend,
        id: &IngressId,
        a: &Annotations,
        hosts: &BTreeSet<String>,
    ) {
        let Some(group) = self.service_backend(&id.namespace, backend, &a.backend, id) else { return };
        let mut route = route_template().clone();
        route.name = Some(id.to_string());
        route.matcher.path = Some(PathMatch::Prefix("/".into()));
        route.backend = Some(self.unless_unavailable(group, a));
        route_policy(&mut route, a);
        route.basic_auth = self.basic_auth.clone().map(Box::new);
        route.external_auth = a.external_auth.clone().map(Box::new);
        route.error_pages = self.error_pages(backend, id, a).map(Box::new);
        route.https_redirect = forced_https_redirect(a);
        route.mirrors = self.mirror.iter().cloned().collect();
        route.ingress = Some(ingress_labels(id, backend, "/"));
        for host in hosts {
            let claimed = self
                .hosts
                .get(host)
                .is_some_and(|h| h.routes.iter().any(|(r, _)| default_backend::is_catch_all(r)));
            if !claimed {
                self.claim(host, route.clone(), id);
            }
        }
        self.claim("*", route, id);
    }

    /// Sets the certificates of the Ingress's TLS hosts (when a listener terminates TLS);
    /// returns the hosts it names.
    fn tls_hosts(&mut self, spec: &IngressSpec, id: &IngressId, a: &Annotations) -> BTreeSet<String> {
        let mut tls_hosts = BTreeSet::new();
        for tls in spec.tls.iter().flatten() {
            for host in tls.hosts.iter().flatten() {
                let Ok(host) = Self::host_of(Some(host)) else { continue };
                tls_hosts.insert(host.clone());
                if !self.tls_listener {
                    continue;
                }
                let Some(secret) = tls.secret_name.as_deref() else {
                    // The listener's default certificate serves it.
                    continue;
                };
                self.host_tls(host, secret, id, a);
            }
        }
        tls_hosts
    }

    /// Terminates TLS for `host` with the certificate of `secret`, unless an older Ingress set
    /// its TLS (noted).
    fn host_tls(&mut self, host: String, secret: &str, id: &IngressId, a: &Annotations) {
        if self.tls_taken(&host, id) {
            return;
        }
        let Some(certificate) = self.certificate(&id.namespace, secret, id) else { return };
        let mut host_tls = host_tls_template().clone();
        host_tls.certificate = Some(certificate);
        host_tls.redirect_http = a.ssl_redirect.unwrap_or(true) || a.force_ssl_redirect == Some(true);
        host_tls.redirect = https_redirect_form(a);
        if let Some(client_tls) = &self.client_tls {
            client_tls.apply(&mut host_tls);
        }
        host_tls.hsts = self.controller.hsts.clone();
        self.hosts.entry(host).or_default().tls = Some((host_tls, id.clone()));
    }

    fn passthrough(&mut self, host: &str, backend: Option<String>, id: &IngressId) {
        if !self.tls_listener {
            self.note(Some(id), "ssl-passthrough needs a TLS listener; not applied");
            return;
        }
        let Some(backend) = backend else {
            self.note(Some(id), format!("ssl-passthrough for {host} has no backend; not applied"));
            return;
        };
        if self.tls_taken(host, id) {
            return;
        }
        let mut host_tls = passthrough_template().clone();
        host_tls.passthrough = Some(backend);
        host_tls.redirect_http = false;
        self.host_entry(host).tls = Some((host_tls, id.clone()));
    }

    /// Whether TLS for `host` is already set (noted when by another, older, Ingress). The host
    /// is entered either way.
    fn tls_taken(&mut self, host: &str, id: &IngressId) -> bool {
        let entry = self.host_entry(host);
        let Some((_, owner)) = &entry.tls else { return false };
        if owner != id {
            let message = format!("TLS for host {host} is already set by the older Ingress {owner}; ignored");
            let kind = NoteKind::Conflict { with: owner.clone() };
            self.note_kind(Some(id), kind, message);
        }
        true
    }

    /// The backend group for a Service reference, created on first use.
    fn service_backend(
        &mut self,
        namespace: &str,
        backend: &IngressBackend,
        settings: &BackendSettings,
        id: &IngressId,
    ) -> Option<String> {
        let Some(service) = &backend.service else {
            self.note(Some(id), "resource backends are not supported; path skipped");
            return None;
        };
        let Some(port) = &service.port else {
            self.note(Some(id), format!("backend Service {} names no port; path skipped", service.name));
            return None;
        };
        Some(self.backend_group(namespace, &service.name, port, settings, id))
    }

    fn backend_group(
        &mut self,
        namespace: &str,
        service: &str,
        port: &ServiceBackendPort,
        settings: &BackendSettings,
        id: &IngressId,
    ) -> String {
        let port_label = match (&port.name, port.number) {
            (Some(name), _) if !name.is_empty() => name.clone(),
            (_, Some(number)) => number.to_string(),
            _ => "?".to_owned(),
        };
        let mut name = format!("{namespace}/{service}:{port_label}");
        self.memo.push_group_suffix(settings, &mut name);
        if self.backends.contains_key(&name) {
            if let Some((notes, told)) = self.group_notes.get_mut(&name)
                && told != id
            {
                *told = id.clone();
                let notes = notes.clone();
                for (kind, message) in notes {
                    self.note_kind(Some(id), kind, message);
                }
            }
            return name;
        }
        let noted = self.notes.len();
        let (mut group, notes) = self.resolved_group(&name, namespace, service, port, settings);
        for note in notes {
            self.note(Some(id), note);
        }
        if let Some(proxy_ssl) = &settings.proxy_ssl {
            // A copy: the memo keeps the group as made from the Service.
            self.proxy_ssl(Arc::make_mut(&mut group), proxy_ssl, (namespace, service), id);
        }
        if self.notes.len() > noted {
            let notes = self.notes[noted..].iter().map(|n| (n.kind.clone(), n.message.clone())).collect();
            self.group_notes.insert(name.clone(), (notes, id.clone()));
        }
        self.backends.insert(name.clone(), (group, id.clone()));
        name
    }

    /// The group `name` of a Service port with `settings` (before `proxy-ssl-*`), and the notes
    /// about its Service: from the [`memo`] when the Service and its slices are the same
    /// objects as when it was made.
    fn resolved_group(
        &mut self,
        name: &str,
        namespace: &str,
        service_name: &str,
        port: &ServiceBackendPort,
        settings: &BackendSettings,
    ) -> (Arc<BackendConfig>, Vec<String>) {
        let slices = self.index.slices.get(&(namespace, service_name)).map(Vec::as_slice).unwrap_or(&[]);
        let inputs = memo::GroupInputs {
            namespace,
            service_name,
            port,
            settings,
            service: self.index.services.get(&(namespace, service_name)).copied(),
            slices,
        };
        if let Some(found) = self.memo.group(name, &inputs) {
            return found;
        }
        let mut notes = Vec::new();
        let mut group = backend_template().clone();
        group.name = name.to_owned();
        group.endpoints = endpoints(&inputs, &mut notes);
        apply_settings(&mut group, settings);
        let group = Arc::new(group);
        self.memo.keep_group(&inputs, &group, &notes);
        (group, notes)
    }

    /// The certificate of a `kubernetes.io/tls` Secret, checked; its name, or `None` (noted).
    fn certificate(&mut self, namespace: &str, secret_name: &str, id: &IngressId) -> Option<String> {
        let name = format!("{namespace}/{secret_name}");
        if self.certificates.contains_key(&name) {
            return Some(name);
        }
        let Some(secret) = self.index.secrets.get(&(namespace, secret_name)).copied() else {
            self.note(
                Some(id),
                format!("TLS Secret {name} not found; the listener's default certificate serves its hosts"),
            );
            return None;
        };
        if secret.type_.as_deref() != Some("kubernetes.io/tls") {
            self.note(Some(id), format!("Secret {name} is not of type kubernetes.io/tls; not used"));
            return None;
        }
        let data = secret.data.as_ref();
        let text =
            |key: &str| data.and_then(|d| d.get(key)).and_then(|b| String::from_utf8(b.0.clone()).ok());
        let (Some(cert_pem), Some(key_pem)) = (text("tls.crt"), text("tls.key")) else {
            self.note(Some(id), format!("Secret {name} lacks tls.crt or tls.key; not used"));
            return None;
        };
        let mut certificate = certificate_template().clone();
        certificate.name = name.clone();
        certificate.cert_pem = Some(cert_pem);
        certificate.key_pem = Some(SecretString(key_pem));
        let cache_key = (
            secret.metadata.uid.clone().unwrap_or_default(),
            secret.metadata.resource_version.clone().unwrap_or_default(),
        );
        let checked = {
            let mut cache = self.translator.checked.lock().unwrap_or_else(|p| p.into_inner());
            cache
                .entry(cache_key)
                .or_insert_with(|| {
                    // Checked as of no time in particular (the result is kept while the Secret
                    // is the same object): its expiry is compared below, on every translation.
                    crate::tls::certs::load_certificate(&certificate, &crate::tls::provider(), i64::MIN)
                        .map(|loaded| loaded.not_after)
                        .map_err(|e| e.to_string())
                })
                .clone()
        };
        match checked {
            Ok(not_after) if not_after >= crate::tls::now_unix() => {
                self.certificates.insert(name.clone(), (certificate, id.clone()));
                Some(name)
            }
            Ok(_) => {
                self.note(Some(id), format!("Secret {name}: the certificate has expired; not used"));
                None
            }
            Err(e) => {
                self.note(Some(id), format!("Secret {name}: {e}; not used"));
                None
            }
        }
    }

    /// Attaches a canary Ingress to the main routes of the same hosts and paths.
    fn canary(&mut self, ingress: &Ingress, id: &IngressId, a: &Annotations) {
        let Some(spec) = ingress.spec.as_ref() else { return };
        let canary = a.canary.clone().unwrap_or_default();
        for rule in spec.rules.iter().flatten() {
            let Ok(host) = Self::host_of(rule.host.as_deref()) else { continue };
            for path in rule.http.iter().flat_map(|h| h.paths.iter()) {
                let Ok(matcher) = Self::path_match(path, self.regex_hosts.contains(&host)) else { continue };
                let key = MatchConfig { path: Some(matcher.clone()), ..MatchConfig::default() };
                let main = self.hosts.get(&host).and_then(|h| h.claimed(&key).map(|i| h.routes[i].clone()));
                let Some((main_route, _)) = main else {
                    self.note(
                        Some(id),
                        format!(
                            "canary for host {host} path {} has no main Ingress; ignored",
                            describe_path(&matcher)
                        ),
                    );
                    continue;
                };
                let Some(main_backend) = main_route.backend.clone() else {
                    self.note(Some(id), format!("canary for host {host}: the main route redirects; ignored"));
                    continue;
                };
                if !self.hosts.get_mut(&host).is_some_and(|h| h.canaried.insert(key.clone())) {
                    self.note(
                        Some(id),
                        format!("host {host} path {} already has a canary; ignored", describe_path(&matcher)),
                    );
                    continue;
                }
                let Some(canary_backend) = self.service_backend(&id.namespace, &path.backend, &a.backend, id)
                else {
                    continue;
                };
                self.attach_canary(&host, &key, &main_route, &main_backend, &canary_backend, &canary, id);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn attach_canary(
        &mut self,
        host: &str,
        main_key: &ClaimKey,
        main_route: &RouteConfig,
        main_backend: &str,
        canary_backend: &str,
        canary: &Canary,
        id: &IngressId,
    ) {
        // Header, then cookie, then weight: routes with a header constraint are tried before
        // the main route, in the order added.
        let mut extra: Vec<(HeaderMatch, &str)> = Vec::new();
        let header =
            |name: &str| HeaderMatch { name: name.to_owned(), exact: None, regex: None, present: None };
        if let Some(name) = &canary.header {
            if let Some(value) = &canary.header_value {
                extra.push((HeaderMatch { exact: Some(value.clone()), ..header(name) }, canary_backend));
            } else if let Some(pattern) = &canary.header_pattern {
                extra.push((HeaderMatch { regex: Some(pattern.clone()), ..header(name) }, canary_backend));
            } else {
                extra.push((HeaderMatch { exact: Some("always".into()), ..header(name) }, canary_backend));
                extra.push((HeaderMatch { exact: Some("never".into()), ..header(name) }, main_backend));
            }
        }
        if let Some(cookie) = &canary.cookie {
            let cookie_is = |value: &str| HeaderMatch {
                regex: Some(format!(r"(?:.*;\s*)?{}={value}(?:\s*;.*)?", regex::escape(cookie))),
                ..header("cookie")
            };
            extra.push((cookie_is("always"), canary_backend));
            extra.push((cookie_is("never"), main_backend));
        }
        for (matcher, backend) in extra {
            let mut route = main_route.clone();
            route.name = Some(id.to_string());
            route.matcher.headers = vec![matcher];
            route.backend = Some(backend.to_owned());
            self.claim(host, route, id);
        }
        if canary.weight == 0 {
            return;
        }
        let weighted = if canary.weight >= canary.weight_total {
            canary_backend.to_owned()
        } else {
            self.weighted_group(main_backend, canary_backend, canary.weight, canary.weight_total, id)
        };
        if let Some(entry) = self.hosts.get_mut(host)
            && let Some(index) = entry.claimed(main_key)
        {
            Arc::make_mut(&mut entry.routes[index].0).backend = Some(weighted);
        }
    }

    /// A group with the endpoints of both, weighted so that `weight` of `total` requests go to
    /// the canary's. Weights follow the ready endpoints, so the split holds while some are not
    /// ready.
    fn weighted_group(
        &mut self,
        main: &str,
        canary: &str,
        weight: u32,
        total: u32,
        id: &IngressId,
    ) -> String {
        let name = format!("{main}+canary({canary})@{weight}/{total}");
        if self.backends.contains_key(&name) {
            return name;
        }
        let (main_group, _) = self.backends[main].clone();
        let (canary_group, _) = self.backends[canary].clone();
        let ready = |g: &BackendConfig| g.endpoints.iter().filter(|e| e.ready).count().max(1) as u64;
        let (m, c) = (ready(&main_group), ready(&canary_group));
        let mut main_weight = u64::from(total - weight) * c;
        let mut canary_weight = u64::from(weight) * m;
        let divisor = numeric::gcd(main_weight, canary_weight).max(1);
        (main_weight, canary_weight) = (main_weight / divisor, canary_weight / divisor);
        let largest = main_weight.max(canary_weight);
        if largest > 10_000 {
            main_weight = (main_weight * 10_000 / largest).max(1);
            canary_weight = (canary_weight * 10_000 / largest).max(1);
        }
        let mut group = BackendConfig::clone(&main_group);
        group.name = name.clone();
        // Weights only mean something to round robin.
        group.balance = crate::config::Balance::RoundRobin;
        group.hash_on = None;
        group.endpoints = Vec::new();
        let mut seen = BTreeSet::new();
        for (endpoints, w) in [(&main_group.endpoints, main_weight), (&canary_group.endpoints, canary_weight)]
        {
            for endpoint in endpoints {
                if seen.insert(endpoint.address) {
                    group.endpoints.push(EndpointConfig { weight: w as u32, ..endpoint.clone() });
                }
            }
        }
        self.backends.insert(name.clone(), (Arc::new(group), id.clone()));
        name
    }

    /// The virtual host `name` (its domains: the name, then `aliases`) made of these parts:
    /// the one of the last translation when they are the same ([`memo::Memo::host`]), compared
    /// without copying them.
    fn virtual_host(
        &mut self,
        name: &str,
        aliases: Vec<String>,
        routes: &[(Arc<RouteConfig>, IngressId)],
        tls: Option<HostTlsConfig>,
        deep_wildcards: bool,
    ) -> Arc<VirtualHostConfig> {
        let inputs = memo::HostInputs { name, routes, tls: tls.as_ref(), aliases: &aliases, deep_wildcards };
        if let Some(kept) = self.memo.host(&inputs) {
            return kept;
        }
        let mut virtual_host = virtual_host_template().clone();
        virtual_host.name = name.to_owned();
        virtual_host.domains = std::iter::once(name.to_owned()).chain(aliases).collect();
        virtual_host.deep_wildcards = deep_wildcards;
        virtual_host.routes = routes.iter().map(|(route, _)| Arc::clone(route)).collect();
        virtual_host.tls = tls;
        let virtual_host = Arc::new(virtual_host);
        self.memo.keep_host(&virtual_host);
        virtual_host
    }

    /// The configuration, and the memo to keep for the next translation.
    fn finish(mut self, served: Vec<IngressId>) -> (Translation, memo::Memo) {
        let mut config = self.base.clone();
        self.controller_settings(&mut config);
        self.stream_services(&mut config);
        self.gateway_l4_services(&mut config);
        self.default_certificate(&mut config);
        let mut owners = Vec::new();
        let base_domains: BTreeSet<String> = config
            .virtual_hosts
            .iter()
            .flat_map(|h| h.domains.iter().map(|d| d.to_ascii_lowercase()))
            .collect();
        let base_names: BTreeSet<String> = config.virtual_hosts.iter().map(|h| h.name.clone()).collect();
        let base_hosts: BTreeSet<String> = base_domains.union(&base_names).cloned().collect();
        self.www_twins(&base_hosts);
        self.default_backend_everywhere(&base_hosts);
        let hosts = by_name(std::mem::take(&mut self.hosts));
        config.virtual_hosts.reserve(hosts.len());
        owners.reserve(hosts.len() * 2);
        // Only aliases are checked against every name: made when some host has one.
        let names: BTreeSet<String> = match hosts.iter().any(|(_, h)| !h.aliases.is_empty()) {
            true => hosts.iter().map(|(name, _)| name.clone()).chain(base_hosts.iter().cloned()).collect(),
            false => BTreeSet::new(),
        };
        let mut aliased = BTreeSet::new();
        for (domain, host) in hosts {
            if base_domains.contains(&domain) || base_names.contains(&domain) {
                let message = format!(
                    "host {domain} is configured in the base configuration; the Ingress rules for it are ignored"
                );
                let owners: BTreeSet<&IngressId> = host.routes.iter().map(|(_, id)| id).collect();
                for owner in owners {
                    self.note(Some(owner), message.clone());
                }
                continue;
            }
            let index = config.virtual_hosts.len();
            let mut routes = host.routes;
            if self.regex_hosts.contains(&domain) {
                // ingress-nginx orders a host's locations by path, descending, then (stably) by
                // length: the route table keeps the first order among regexes of one length.
                routes.sort_by(|(a, _), (b, _)| regex_of(b).cmp(&regex_of(a)));
            }
            // The aliases served beside the name (most hosts have none: no allocation).
            let mut aliases = Vec::new();
            for (alias, owner) in host.aliases {
                // ingress-nginx ignores an alias that another server is named.
                if names.contains(&alias) || !aliased.insert(alias.clone()) {
                    self.notes.push(Note {
                        ingress: Some(owner),
                        message: format!("server-alias {alias} is already a host name; ignored"),
                        kind: NoteKind::Warning,
                    });
                } else {
                    aliases.push(alias);
                }
            }
            let (tls, tls_owner) = host.tls.map_or((None, None), |(tls, owner)| (Some(tls), Some(owner)));
            let virtual_host = self.virtual_host(&domain, aliases, &routes, tls, host.deep_wildcards);
            config.virtual_hosts.push(virtual_host);
            for (r, (_, owner)) in routes.into_iter().enumerate() {
                owners.push((Field::Route { host: index, route: r }, owner));
            }
            if let Some(owner) = tls_owner {
                owners.push((Field::HostTls(index), owner));
            }
        }
        let backends = by_name(std::mem::take(&mut self.backends));
        config.backends.reserve(backends.len());
        for (_, (group, owner)) in backends {
            owners.push((Field::Backend(config.backends.len()), owner));
            config.backends.push(group);
        }
        for (_, (certificate, owner)) in std::mem::take(&mut self.certificates) {
            owners.push((Field::Certificate(config.certificates.len()), owner));
            config.certificates.push(certificate);
        }
        let translation = Translation {
            config: Arc::new(config),
            served,
            considered: Vec::new(),
            notes: self.notes,
            gateway: GatewayStatuses::default(),
            owners,
        };
        (translation, self.memo)
    }
}

/// The endpoints of a Service port, from its EndpointSlices; why there are none in `notes`.
fn endpoints(inputs: &memo::GroupInputs<'_>, notes: &mut Vec<String>) -> Vec<EndpointConfig> {
    let (namespace, service_name, port) = (inputs.namespace, inputs.service_name, inputs.port);
    let Some(service) = inputs.service else {
        notes.push(format!("Service {namespace}/{service_name} not found; its paths answer 503"));
        return Vec::new();
    };
    let spec = service.spec.as_ref();
    if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
        notes.push(format!("Service {namespace}/{service_name} is ExternalName, which is not supported"));
        return Vec::new();
    }
    let ports = spec.and_then(|s| s.ports.as_deref()).unwrap_or(&[]);
    let service_port: Option<&ServicePort> = match (&port.name, port.number) {
        (Some(name), _) if !name.is_empty() => {
            ports.iter().find(|p| p.name.as_deref() == Some(name.as_str()))
        }
        (_, Some(number)) => ports.iter().find(|p| p.port == number),
        _ => None,
    };
    let Some(service_port) = service_port else {
        let wanted = port.name.clone().filter(|n| !n.is_empty()).or(port.number.map(|n| n.to_string()));
        notes.push(format!(
            "Service {namespace}/{service_name} has no port {}; its paths answer 503",
            wanted.unwrap_or_default()
        ));
        return Vec::new();
    };
    let port_name = service_port.name.as_deref().unwrap_or("");
    let slices: Vec<&EndpointSlice> = inputs.slices.iter().map(|s| s.as_ref()).collect();
    endpoints_of(&slices, port_name)
}

/// Endpoints of one Service port across its slices; see the module documentation for how
/// conditions map.
pub fn endpoints_of(slices: &[&EndpointSlice], port_name: &str) -> Vec<EndpointConfig> {
    #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    enum State {
        NotReady,
        Draining,
        Ready,
    }
    let mut found: BTreeMap<SocketAddr, State> = BTreeMap::new();
    for slice in slices {
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            continue;
        }
        let port = slice.ports.iter().find(|p| {
            p.name.as_deref().unwrap_or("") == port_name && p.protocol.as_deref().unwrap_or("TCP") == "TCP"
        });
        let Some(port) = port.and_then(|p| p.port).and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0)
        else {
            continue;
        };
        for endpoint in &slice.endpoints {
            // Unset `ready` means ready; unset `serving` follows `ready`.
            let ready = endpoint.ready.unwrap_or(true);
            let serving = endpoint.serving.unwrap_or(ready);
            let terminating = endpoint.terminating.unwrap_or(false);
            let state = match (ready && !terminating, serving, terminating) {
                (true, _, _) => State::Ready,
                (false, true, true) => State::Draining,
                (false, _, false) => State::NotReady,
                (false, false, true) => continue,
            };
            let Some(ip) = endpoint.first else { continue };
            let address = SocketAddr::new(ip, port);
            let best = found.entry(address).or_insert(state);
            *best = (*best).max(state);
        }
    }
    let any_ready = found.values().any(|s| *s == State::Ready);
    let template = EndpointConfig { address: SocketAddr::from(([0, 0, 0, 0], 0)), weight: 1, ready: true };
    found
        .into_iter()
        .map(|(address, state)| EndpointConfig {
            address,
            ready: state == State::Ready || (state == State::Draining && !any_ready),
            ..template.clone()
        })
        .collect()
}

fn apply_settings(group: &mut BackendConfig, settings: &BackendSettings) {
    let insecure_tls = || {
        let mut tls = insecure_tls_template().clone();
        tls.insecure_skip_verify = true;
        tls
    };
    match settings.protocol {
        UpstreamProtocol::Http => {}
        UpstreamProtocol::Https => group.tls = Some(Box::new(insecure_tls())),
        UpstreamProtocol::Grpc => group.protocol = BackendProtocol::H2c,
        UpstreamProtocol::Grpcs => {
            group.protocol = BackendProtocol::H2c;
            group.tls = Some(Box::new(insecure_tls()));
        }
    }
    if let Some(ms) = settings.connect_timeout_ms {
        group.timeouts.connect_ms = ms;
    }
    group.timeouts.read_ms = settings.read_timeout_ms;
    group.timeouts.send_ms = settings.send_timeout_ms;
    // ingress-nginx's default conditions: `error timeout`.
    group.retries.on =
        settings.next_upstream.clone().unwrap_or_else(|| vec![RetryOn::Error, RetryOn::Timeout]);
    group.retries.timeout_ms = settings.next_upstream_timeout_ms.filter(|ms| *ms > 0);
    // ingress-nginx's defaults: request buffering on (client-body-buffer-size 8k), response
    // buffering off (proxy-buffer-size 4k). gRPC goes through nginx's grpc_pass, which
    // streams both ways whatever proxy_*_buffering say (a streaming call would stall).
    let grpc = matches!(settings.protocol, UpstreamProtocol::Grpc | UpstreamProtocol::Grpcs);
    group.buffering.request_bytes = match settings.request_buffering {
        _ if grpc => 0,
        Some(false) => 0,
        _ => settings.request_buffer_bytes.unwrap_or(8 << 10),
    };
    group.buffering.response_bytes = match settings.response_buffering {
        Some(true) if !grpc => settings.response_buffer_bytes.unwrap_or(4 << 10),
        _ => 0,
    };
    if settings.no_retries {
        group.retries.attempts = 0;
    } else if let Some(tries) = settings.tries {
        group.retries.attempts = tries.saturating_sub(1);
    }
    if let Some(balance) = &settings.balance {
        (group.balance, group.hash_on) = balance.to_model();
    }
    group.cookie_affinity = settings.cookie_affinity.clone().map(Box::new);
}

/// A redirect from an absolute URL (`https://host[:port]/path`).
fn redirect_to(url: &str, code: u16) -> Result<RedirectConfig, String> {
    let uri: http::Uri =
        url.parse().map_err(|_| format!("redirect target {url:?} is not a URL; not applied"))?;
    let scheme = uri.scheme_str().filter(|s| *s == "http" || *s == "https");
    let (Some(scheme), Some(host)) = (scheme, uri.host()) else {
        return Err(format!("redirect target {url:?} is not an absolute http(s) URL; not applied"));
    };
    let path = uri.path_and_query().map(|p| p.as_str().to_owned()).filter(|p| p.starts_with('/'));
    Ok(RedirectConfig {
        scheme: Some(scheme.to_owned()),
        host: Some(host.to_owned()),
        port: uri.port_u16(),
        path: Some(path.unwrap_or_else(|| "/".to_owned())),
        code,
    })
}

/// A route's regular expression, if its path is one.
fn regex_of(route: &RouteConfig) -> Option<&str> {
    match &route.matcher.path {
        Some(PathMatch::Regex(pattern)) => Some(pattern),
        _ => None,
    }
}

fn describe_path(path: &PathMatch) -> String {
    match path {
        PathMatch::Exact(p) => format!("{p} (Exact)"),
        PathMatch::Prefix(p) => format!("{p} (Prefix)"),
        PathMatch::Regex(p) => format!("{p} (regex)"),
    }
}

/// A route's match as the translation's notes (and `sluice check --ingress`) write it.
pub fn describe(matcher: &MatchConfig) -> String {
    let path = matcher.path.as_ref().map(describe_path).unwrap_or_else(|| "/".into());
    if matcher.headers.is_empty() { path } else { format!("{path} with header conditions") }
}

/// Runs the model's own validation on a configuration built in code.
pub fn validate(config: &Config) -> Result<(), crate::config::Error> {
    config.validate("kubernetes")
}

/// The YAML form of a configuration built in code, as a file would write it.
pub fn model_yaml(config: &Config) -> Result<String, crate::config::Error> {
    let mut value = serde_json::to_value(config).map_err(|e| crate::config::Error::Parse {
        source_name: "kubernetes".into(),
        line: 0,
        column: 0,
        message: e.to_string(),
    })?;
    // One-key choices serialize as externally tagged enums (`{"Prefix": "/"}`, `"ClientIp"`);
    // their YAML form is `{prefix: /}` and `{client_ip: true}`.
    fn one_of(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) if map.len() == 1 => {
                let (key, inner) = map.iter().next().map(|(k, v)| (k.clone(), v.clone())).expect("one entry");
                let snake = match key.as_str() {
                    "Exact" => "exact",
                    "Prefix" => "prefix",
                    "Regex" => "regex",
                    "Header" => "header",
                    "Cookie" => "cookie",
                    _ => return,
                };
                *value = serde_json::json!({ snake: inner });
            }
            serde_json::Value::String(s) if s == "ClientIp" => {
                *value = serde_json::json!({"client_ip": true})
            }
            _ => {}
        }
    }
    for host in value["virtual_hosts"].as_array_mut().into_iter().flatten() {
        for route in host["routes"].as_array_mut().into_iter().flatten() {
            if let Some(path) = route.get_mut("match").and_then(|m| m.get_mut("path")) {
                one_of(path);
            }
        }
    }
    for backend in value["backends"].as_array_mut().into_iter().flatten() {
        if let Some(hash_on) = backend.get_mut("hash_on") {
            one_of(hash_on);
        }
    }
    serde_saphyr::to_string(&value).map_err(|e| crate::config::Error::Parse {
        source_name: "kubernetes".into(),
        line: 0,
        column: 0,
        message: e.to_string(),
    })
}

mod basic_auth;
mod client_tls;
mod default_backend;
mod default_certificate;
mod gateway;
mod memo;
mod mirror;
mod proxy_ssl;
pub mod stream_services;
pub use gateway::{GATEWAY_CONTROLLER, GatewayStatuses, ObjectKey, RouteKind, http_route_id, route_id};
#[cfg(test)]
mod tests;
