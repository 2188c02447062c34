use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString,
    api::{
        core::v1::{Secret, ServicePort},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice as ApiEndpointSlice},
        networking::v1::{
            HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressClass, IngressClassSpec,
            IngressRule, IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
        },
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};

use super::*;
use crate::config::{BackendProtocol, Balance, HashOn, RetryOn};
use crate::provider::kube::service::ServiceSpec;

fn meta(namespace: Option<&str>, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: namespace.map(str::to_owned),
        name: Some(name.to_owned()),
        uid: Some(format!("uid-{}-{name}", namespace.unwrap_or(""))),
        resource_version: Some("1".into()),
        ..ObjectMeta::default()
    }
}

/// `IngressTest::new("web").host("a.test").path("/", "svc", 80).build()`.
struct IngressTest {
    ingress: Ingress,
}

impl IngressTest {
    fn new(name: &str) -> IngressTest {
        IngressTest {
            ingress: Ingress {
                metadata: meta(Some("default"), name),
                spec: Some(IngressSpec {
                    ingress_class_name: Some("sluice".into()),
                    ..IngressSpec::default()
                }),
                status: None,
            },
        }
    }

    fn class(mut self, class: Option<&str>) -> Self {
        self.spec().ingress_class_name = class.map(str::to_owned);
        self
    }

    /// Created `seconds` after the epoch: smaller is older.
    fn created(mut self, seconds: i64) -> Self {
        let stamp = k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap();
        self.ingress.metadata.creation_timestamp = Some(Time(stamp));
        self
    }

    fn annotation(mut self, key: &str, value: &str) -> Self {
        let key =
            if key.contains('/') { key.to_owned() } else { format!("nginx.ingress.kubernetes.io/{key}") };
        self.ingress.metadata.annotations.get_or_insert_with(BTreeMap::new).insert(key, value.into());
        self
    }

    fn spec(&mut self) -> &mut IngressSpec {
        self.ingress.spec.as_mut().unwrap()
    }

    /// Starts a rule for `host` ("" for none); paths go to the last rule.
    fn host(mut self, host: &str) -> Self {
        let rule = IngressRule {
            host: (!host.is_empty()).then(|| host.to_owned()),
            http: Some(HTTPIngressRuleValue { paths: Vec::new() }),
        };
        self.spec().rules.get_or_insert_with(Vec::new).push(rule);
        self
    }

    fn path_typed(mut self, path: &str, path_type: &str, service: &str, port: ServiceBackendPort) -> Self {
        if self.spec().rules.as_ref().is_none_or(Vec::is_empty) {
            self = self.host("");
        }
        let rule = self.spec().rules.as_mut().unwrap().last_mut().unwrap();
        rule.http.as_mut().unwrap().paths.push(HTTPIngressPath {
            path: Some(path.to_owned()),
            path_type: path_type.to_owned(),
            backend: backend(service, port),
        });
        self
    }

    fn path(self, path: &str, service: &str, port: i32) -> Self {
        self.path_typed(path, "Prefix", service, number(port))
    }

    fn tls(mut self, hosts: &[&str], secret: &str) -> Self {
        let tls = IngressTLS {
            hosts: Some(hosts.iter().map(|h| h.to_string()).collect()),
            secret_name: Some(secret.to_owned()),
        };
        self.spec().tls.get_or_insert_with(Vec::new).push(tls);
        self
    }

    fn default_backend(mut self, service: &str, port: i32) -> Self {
        self.spec().default_backend = Some(backend(service, number(port)));
        self
    }

    fn build(self) -> Arc<Ingress> {
        Arc::new(self.ingress)
    }
}

fn number(port: i32) -> ServiceBackendPort {
    ServiceBackendPort { number: Some(port), name: None }
}

fn named(port: &str) -> ServiceBackendPort {
    ServiceBackendPort { number: None, name: Some(port.to_owned()) }
}

fn backend(service: &str, port: ServiceBackendPort) -> IngressBackend {
    IngressBackend {
        service: Some(IngressServiceBackend { name: service.to_owned(), port: Some(port) }),
        resource: None,
    }
}

/// A Service with ports (name, port).
fn service(name: &str, ports: &[(&str, i32)]) -> Arc<Service> {
    Arc::new(Service {
        metadata: meta(Some("default"), name),
        spec: Some(ServiceSpec {
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p)| ServicePort {
                        name: (!n.is_empty()).then(|| n.to_string()),
                        port: *p,
                        protocol: Some("TCP".into()),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

/// `SliceTest::new("web-1", "web").port("http", 8080).ready("10.0.0.1")`.
struct SliceTest {
    slice: ApiEndpointSlice,
}

impl SliceTest {
    fn new(name: &str, service: &str) -> SliceTest {
        let mut metadata = meta(Some("default"), name);
        metadata.labels = Some([(SERVICE_NAME_LABEL.to_owned(), service.to_owned())].into());
        SliceTest {
            slice: ApiEndpointSlice {
                address_type: "IPv4".into(),
                endpoints: Some(Vec::new()),
                metadata,
                ports: Some(Vec::new()),
            },
        }
    }

    fn ipv6(mut self) -> Self {
        self.slice.address_type = "IPv6".into();
        self
    }

    fn port(mut self, name: &str, port: i32) -> Self {
        self.slice.ports.as_mut().unwrap().push(EndpointPort {
            name: Some(name.to_owned()),
            port: Some(port),
            protocol: Some("TCP".into()),
            app_protocol: None,
        });
        self
    }

    fn endpoint(
        mut self,
        address: &str,
        ready: Option<bool>,
        serving: Option<bool>,
        terminating: Option<bool>,
    ) -> Self {
        self.slice.endpoints.as_mut().unwrap().push(Endpoint {
            addresses: vec![address.to_owned()],
            conditions: Some(EndpointConditions { ready, serving, terminating }),
            ..Endpoint::default()
        });
        self
    }

    fn ready(self, address: &str) -> Self {
        self.endpoint(address, Some(true), Some(true), Some(false))
    }

    fn not_ready(self, address: &str) -> Self {
        self.endpoint(address, Some(false), Some(false), Some(false))
    }

    fn draining(self, address: &str) -> Self {
        self.endpoint(address, Some(false), Some(true), Some(true))
    }

    fn gone(self, address: &str) -> Self {
        self.endpoint(address, Some(false), Some(false), Some(true))
    }

    /// As the stores keep it.
    fn build(self) -> Arc<EndpointSlice> {
        Arc::new(EndpointSlice::from(self.slice))
    }
}

fn class(name: &str, controller: &str, default: bool) -> Arc<IngressClass> {
    let mut metadata = meta(None, name);
    if default {
        metadata.annotations = Some([(DEFAULT_CLASS_ANNOTATION.to_owned(), "true".to_owned())].into());
    }
    Arc::new(IngressClass {
        metadata,
        spec: Some(IngressClassSpec { controller: Some(controller.into()), parameters: None }),
    })
}

fn tls_secret(name: &str, cert: &str, key: &str) -> Arc<Secret> {
    Arc::new(Secret {
        metadata: meta(Some("default"), name),
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            [
                ("tls.crt".to_owned(), ByteString(cert.as_bytes().to_vec())),
                ("tls.key".to_owned(), ByteString(key.as_bytes().to_vec())),
            ]
            .into(),
        ),
        ..Secret::default()
    })
}

fn base() -> Config {
    Config::from_yaml("listeners: [{name: web, address: '127.0.0.1:8080'}]\nxdp: {enabled: false}\n", "base")
        .unwrap()
}

fn tls_base() -> Config {
    Config::from_yaml(
        "listeners:\n  - {name: web, address: '127.0.0.1:8080'}\n  - {name: tls, address: '127.0.0.1:8443', tls: {}}\nxdp: {enabled: false}\n",
        "base",
    )
    .unwrap()
}

fn translator() -> Translator {
    Translator::new(Settings { ingress_class: "sluice".into(), ..Settings::default() })
}

/// The web Service with one port and two ready endpoints.
fn web_state() -> ClusterState {
    ClusterState {
        classes: vec![class("sluice", CONTROLLER, false)],
        ingresses: vec![IngressTest::new("web").host("a.test").path("/", "web", 80).build()],
        services: vec![service("web", &[("http", 80)])],
        slices: vec![
            SliceTest::new("web-1", "web").port("http", 8080).ready("10.0.0.1").ready("10.0.0.2").build(),
        ],
        ..ClusterState::default()
    }
}

fn build(state: &ClusterState) -> Translation {
    translator().build(&base(), state).expect("the translation validates")
}

fn host<'a>(config: &'a Config, domain: &str) -> &'a VirtualHostConfig {
    config
        .virtual_hosts
        .iter()
        .find(|h| h.domains.iter().any(|d| d == domain))
        .unwrap_or_else(|| panic!("no host {domain}"))
}

fn group<'a>(config: &'a Config, name: &str) -> &'a BackendConfig {
    config
        .backends
        .iter()
        .find(|b| b.name == name)
        .unwrap_or_else(|| panic!("no backend {name}: {:?}", config.backends))
}

fn addresses(group: &BackendConfig) -> Vec<(String, bool)> {
    group.endpoints.iter().map(|e| (e.address.to_string(), e.ready)).collect()
}

fn notes(translation: &Translation) -> String {
    translation
        .notes
        .iter()
        .map(|n| format!("{:?}: {}\n", n.ingress.as_ref().map(|i| i.to_string()), n.message))
        .collect()
}

#[test]
fn an_ingress_service_and_slice_make_a_route_to_the_endpoints() {
    let t = build(&web_state());
    let host = host(&t.config, "a.test");
    assert_eq!(host.routes.len(), 1);
    let route = &host.routes[0];
    assert_eq!(route.matcher.path, Some(PathMatch::Prefix("/".into())));
    assert_eq!(route.backend.as_deref(), Some("default/web:80"));
    assert_eq!(route.name.as_deref(), Some("default/web"));
    let group = group(&t.config, "default/web:80");
    assert_eq!(addresses(group), [("10.0.0.1:8080".into(), true), ("10.0.0.2:8080".into(), true)]);
    assert_eq!(t.served, [IngressId { namespace: "default".into(), name: "web".into() }]);
    assert_eq!(t.config.listeners, base().listeners, "base settings are kept");
}

/// The base file's `xdp.guard` (the ConfigMap's base.yaml) is part of every translated
/// configuration, so the node applies it on each rebuild and each base reload.
#[test]
fn the_base_xdp_guard_rides_through_the_translation() {
    let base = Config::from_yaml(
        "listeners: [{name: web, address: '127.0.0.1:8080'}]
xdp: {enabled: false, guard: {deny: [203.0.113.0/24], syn_rate_limit: {per_second: 50, burst: 100}}}
",
        "base",
    )
    .unwrap();
    let t = translator().build(&base, &web_state()).expect("the translation validates");
    assert_eq!(t.config.xdp.guard.deny, base.xdp.guard.deny);
    assert_eq!(t.config.xdp.guard, base.xdp.guard);
}

#[test]
fn the_same_objects_in_any_order_give_the_same_configuration() {
    let mut state = web_state();
    state.ingresses.push(IngressTest::new("api").created(5).host("a.test").path("/api", "api", 81).build());
    state.ingresses.push(IngressTest::new("b").created(1).host("b.test").path("/", "web", 80).build());
    state.services.push(service("api", &[("grpc", 81)]));
    state.slices.push(SliceTest::new("api-v6", "api").ipv6().port("grpc", 9000).ready("fd00::2").build());
    state.slices.push(SliceTest::new("api-v4", "api").port("grpc", 9000).ready("10.1.0.1").build());
    state.slices.push(SliceTest::new("web-2", "web").port("http", 8080).ready("10.0.0.3").build());
    let first = build(&state);
    let mut generator = fastrand::Rng::with_seed(7);
    for _ in 0..20 {
        let mut shuffled = state.clone();
        generator.shuffle(&mut shuffled.ingresses);
        generator.shuffle(&mut shuffled.services);
        generator.shuffle(&mut shuffled.slices);
        let again = build(&shuffled);
        assert_eq!(again.config, first.config);
        assert_eq!(again.served, first.served);
        assert_eq!(again.notes, first.notes);
    }
    assert_eq!(
        addresses(group(&first.config, "default/api:81")),
        [("10.1.0.1:9000".into(), true), ("[fd00::2]:9000".into(), true)],
        "dual stack: both families"
    );
}

#[test]
fn ingress_classes_select_the_ingresses() {
    let ingresses = vec![
        IngressTest::new("by-name").host("name.test").path("/", "web", 80).build(),
        IngressTest::new("other").class(Some("nginx")).host("other.test").path("/", "web", 80).build(),
        IngressTest::new("legacy")
            .class(None)
            .annotation(LEGACY_CLASS_ANNOTATION, "sluice")
            .host("legacy.test")
            .path("/", "web", 80)
            .build(),
        IngressTest::new("classless").class(None).host("none.test").path("/", "web", 80).build(),
        IngressTest::new("own-class").class(Some("edge")).host("edge.test").path("/", "web", 80).build(),
    ];
    let state = |classes: Vec<Arc<IngressClass>>| ClusterState {
        classes,
        ingresses: ingresses.clone(),
        ..web_state()
    };
    let served = |t: Translation| t.served.into_iter().map(|i| i.name.to_string()).collect::<Vec<_>>();
    // No IngressClass objects: the configured name and the legacy annotation.
    assert_eq!(served(build(&state(vec![]))), ["by-name", "legacy"]);
    // Another class of our controller; and a default class of ours takes class-less Ingresses.
    let ours = vec![class("edge", CONTROLLER, true), class("nginx", "k8s.io/ingress-nginx", false)];
    assert_eq!(served(build(&state(ours))), ["by-name", "classless", "legacy", "own-class"]);
    // The default class belongs to someone else: class-less Ingresses are not ours.
    let theirs = vec![class("nginx", "k8s.io/ingress-nginx", true)];
    assert_eq!(served(build(&state(theirs))), ["by-name", "legacy"]);
    // An IngressClass with our configured name but another controller wins over the flag.
    let taken = build(&state(vec![class("sluice", "k8s.io/ingress-nginx", false)]));
    assert!(taken.served.is_empty(), "{:?}", taken.served);
    assert!(notes(&taken).contains("belongs to controller"), "{}", notes(&taken));
}

#[test]
fn service_ports_resolve_by_number_and_by_name() {
    let mut state = web_state();
    state.services = vec![service("web", &[("http", 80), ("admin", 9090)])];
    state.slices = vec![
        SliceTest::new("web-1", "web").port("http", 8080).port("admin", 19090).ready("10.0.0.1").build(),
    ];
    state.ingresses = vec![
        IngressTest::new("web")
            .host("a.test")
            .path("/", "web", 80)
            .path_typed("/admin", "Prefix", "web", named("admin"))
            .path("/missing", "web", 7)
            .path("/nosvc", "absent", 80)
            .build(),
    ];
    let t = build(&state);
    assert_eq!(addresses(group(&t.config, "default/web:80")), [("10.0.0.1:8080".into(), true)]);
    assert_eq!(addresses(group(&t.config, "default/web:admin")), [("10.0.0.1:19090".into(), true)]);
    // Unknown ports and Services keep the route, with no endpoints (503), and say why.
    assert!(group(&t.config, "default/web:7").endpoints.is_empty());
    assert!(group(&t.config, "default/absent:80").endpoints.is_empty());
    let notes = notes(&t);
    assert!(notes.contains("has no port 7"), "{notes}");
    assert!(notes.contains("Service default/absent not found"), "{notes}");
}

#[test]
fn slice_conditions_decide_readiness() {
    let slices = [
        SliceTest::new("a", "web")
            .port("http", 8080)
            .ready("10.0.0.1")
            .not_ready("10.0.0.2")
            .draining("10.0.0.3")
            .gone("10.0.0.4")
            // Unset conditions mean ready.
            .endpoint("10.0.0.5", None, None, None)
            .build(),
        // The same address in another slice, ready there: ready wins.
        SliceTest::new("b", "web").port("http", 8080).ready("10.0.0.2").build(),
        // Another port name is not this Service port.
        SliceTest::new("c", "web").port("metrics", 9100).ready("10.0.0.9").build(),
    ];
    let refs: Vec<&EndpointSlice> = slices.iter().map(Arc::as_ref).collect();
    let found: Vec<(String, bool)> =
        endpoints_of(&refs, "http").into_iter().map(|e| (e.address.to_string(), e.ready)).collect();
    assert_eq!(
        found,
        [
            ("10.0.0.1:8080".into(), true),
            ("10.0.0.2:8080".into(), true),
            ("10.0.0.3:8080".into(), false),
            ("10.0.0.5:8080".into(), true),
        ]
    );
}

#[test]
fn serving_terminating_endpoints_take_traffic_only_when_nothing_is_ready() {
    let draining =
        SliceTest::new("a", "web").port("http", 8080).draining("10.0.0.3").not_ready("10.0.0.4").build();
    let found = endpoints_of(&[draining.as_ref()], "http");
    let ready: Vec<(String, bool)> = found.into_iter().map(|e| (e.address.to_string(), e.ready)).collect();
    assert_eq!(ready, [("10.0.0.3:8080".into(), true), ("10.0.0.4:8080".into(), false)]);
}

/// A host with more routes than are found by scanning (its claims then go through an index by
/// match) keeps the same rules: the older Ingress keeps its paths, a claim made after the index
/// exists is refused, and a canary finds its main route through the index.
#[test]
fn claims_on_a_host_with_many_paths_follow_the_same_rules() {
    let mut state = web_state();
    state.services.push(service("new", &[("http", 80)]));
    let mut big = IngressTest::new("big").created(200).host("a.test");
    for p in 0..20 {
        big = big.path(&format!("/p{p}"), "new", 80);
    }
    state.ingresses = vec![
        big.build(),
        IngressTest::new("older")
            .created(100)
            .host("a.test")
            .path("/p3", "web", 80)
            .path("/p18", "web", 80)
            .build(),
        IngressTest::new("late").created(300).host("a.test").path("/p19", "web", 80).build(),
        IngressTest::new("big-canary")
            .created(400)
            .annotation("canary", "true")
            .annotation("canary-weight", "50")
            .host("a.test")
            .path("/p17", "web", 80)
            .build(),
    ];
    let t = build(&state);
    let host = host(&t.config, "a.test");
    assert_eq!(host.routes.len(), 20, "2 of older's, 18 of big's; late's is refused");
    let owner = |path: &str| {
        let route = host
            .routes
            .iter()
            .find(|r| r.matcher.path == Some(PathMatch::Prefix(path.into())))
            .expect("a route for the path");
        (route.name.clone().unwrap(), route.backend.clone().unwrap())
    };
    assert_eq!(owner("/p3").0, "default/older");
    assert_eq!(owner("/p18").0, "default/older");
    assert_eq!(owner("/p19"), ("default/big".into(), "default/new:80".into()));
    assert!(owner("/p17").1.contains("+canary("), "{:?}", owner("/p17"));
    let notes = notes(&t);
    assert_eq!(notes.matches("already served by the older Ingress default/older").count(), 2, "{notes}");
    assert!(notes.contains("already served by the older Ingress default/big"), "{notes}");
}

#[test]
fn the_oldest_ingress_keeps_a_contested_host_and_path() {
    let mut state = web_state();
    state.services.push(service("new", &[("http", 80)]));
    state.ingresses = vec![
        IngressTest::new("newer")
            .created(200)
            .host("a.test")
            .path("/", "new", 80)
            .path("/extra", "new", 80)
            .build(),
        IngressTest::new("older").created(100).host("a.test").path("/", "web", 80).build(),
    ];
    let t = build(&state);
    let host = host(&t.config, "a.test");
    let routes: Vec<(Option<&str>, Option<&str>)> =
        host.routes.iter().map(|r| (r.name.as_deref(), r.backend.as_deref())).collect();
    assert_eq!(
        routes,
        [(Some("default/older"), Some("default/web:80")), (Some("default/newer"), Some("default/new:80"))]
    );
    let notes = notes(&t);
    assert!(notes.contains("already served by the older Ingress default/older"), "{notes}");
    // Same age: namespace then name decide, whatever the order.
    let mut tie = state.clone();
    tie.ingresses = vec![
        IngressTest::new("b").created(100).host("a.test").path("/", "new", 80).build(),
        IngressTest::new("a").created(100).host("a.test").path("/", "web", 80).build(),
    ];
    let t = build(&tie);
    assert_eq!(t.config.virtual_hosts[0].routes[0].name.as_deref(), Some("default/a"));
}

#[test]
fn hosts_wildcards_default_backend_and_path_types() {
    let mut state = web_state();
    state.ingresses = vec![
        IngressTest::new("web")
            .host("*.a.test")
            .path_typed("/exact", "Exact", "web", number(80))
            .path_typed("/impl", "ImplementationSpecific", "web", number(80))
            .host("")
            .path("/any", "web", 80)
            .default_backend("web", 80)
            .build(),
    ];
    let t = build(&state);
    let wildcard = host(&t.config, "*.a.test");
    let paths: Vec<&Option<PathMatch>> = wildcard.routes.iter().map(|r| &r.matcher.path).collect();
    // The Ingress's defaultBackend serves the paths of its own hosts that no rule matches.
    let [exact, implementation, root] = paths[..] else { panic!("{paths:?}") };
    assert_eq!(
        (exact, implementation, root),
        (
            &Some(PathMatch::Exact("/exact".into())),
            &Some(PathMatch::Prefix("/impl".into())),
            &Some(PathMatch::Prefix("/".into()))
        )
    );
    let default = host(&t.config, "*");
    let paths: Vec<&Option<PathMatch>> = default.routes.iter().map(|r| &r.matcher.path).collect();
    assert_eq!(paths, [&Some(PathMatch::Prefix("/any".into())), &Some(PathMatch::Prefix("/".into()))]);
}

#[test]
fn rewrite_target_makes_regex_paths_with_whole_uri_rewrites() {
    let mut state = web_state();
    state.ingresses = vec![
        IngressTest::new("web")
            .annotation("rewrite-target", "/$2")
            .host("a.test")
            .path_typed("/something(/|$)(.*)", "ImplementationSpecific", "web", number(80))
            .build(),
    ];
    let t = build(&state);
    let route = &host(&t.config, "a.test").routes[0];
    assert_eq!(route.matcher.path, Some(PathMatch::Regex("(?i)/something(/|$)(.*)".into())));
    let rewrite = route.rewrite.as_ref().unwrap();
    // Through the proxy's own rewrite: as ingress-nginx's examples say.
    let compiled = crate::proxy::route::Rewrite::Regex {
        regex: regex::Regex::new(rewrite.regex.as_ref().unwrap()).unwrap(),
        replacement: rewrite.replacement.clone().unwrap(),
    };
    assert_eq!(compiled.apply("/something"), "/");
    assert_eq!(compiled.apply("/something/"), "/");
    assert_eq!(compiled.apply("/something/new"), "/new");
    assert_eq!(compiled.apply("/SomeThing/new?x=1"), "/new?x=1");
    // Without capture groups the whole URI becomes the target, as nginx's `rewrite` does.
    state.ingresses = vec![
        IngressTest::new("web")
            .annotation("rewrite-target", "/")
            .host("a.test")
            .path("/app", "web", 80)
            .build(),
    ];
    let t = build(&state);
    let rewrite = t.config.virtual_hosts[0].routes[0].rewrite.clone().unwrap();
    let compiled = crate::proxy::route::Rewrite::Regex {
        regex: regex::Regex::new(rewrite.regex.as_ref().unwrap()).unwrap(),
        replacement: rewrite.replacement.unwrap(),
    };
    assert_eq!(compiled.apply("/app/deep/path"), "/");
}

#[test]
fn a_bad_regex_skips_the_path_not_the_configuration() {
    let mut state = web_state();
    state.ingresses.push(
        IngressTest::new("bad")
            .annotation("use-regex", "true")
            .host("b.test")
            .path("/(unclosed", "web", 80)
            .build(),
    );
    let t = build(&state);
    assert!(notes(&t).contains("is not a regular expression"), "{}", notes(&t));
    assert_eq!(host(&t.config, "a.test").routes.len(), 1, "the other Ingress still serves");
}

#[test]
fn backend_annotations_shape_their_own_group() {
    let mut state = web_state();
    state.ingresses = vec![
        IngressTest::new("plain").created(1).host("a.test").path("/", "web", 80).build(),
        IngressTest::new("tuned")
            .created(2)
            .annotation("backend-protocol", "GRPC")
            .annotation("proxy-connect-timeout", "2")
            .annotation("proxy-read-timeout", "30")
            .annotation("proxy-next-upstream-tries", "3")
            .annotation("proxy-send-timeout", "20")
            .annotation("proxy-next-upstream", "error http_503 non_idempotent")
            .annotation("proxy-next-upstream-timeout", "5")
            .annotation("proxy-request-buffering", "off")
            .annotation("proxy-buffering", "on")
            .annotation("proxy-buffer-size", "16k")
            .annotation("proxy-body-size", "1m")
            .annotation("upstream-hash-by", "$http_x_user")
            .host("b.test")
            .path("/", "web", 80)
            .build(),
        IngressTest::new("secure")
            .created(3)
            .annotation("backend-protocol", "HTTPS")
            .annotation("load-balance", "ewma")
            .annotation("affinity", "cookie")
            .annotation("session-cookie-name", "route")
            .annotation("proxy-buffering", "on")
            .annotation("proxy-buffer-size", "16k")
            .annotation("client-body-buffer-size", "1m")
            .host("c.test")
            .path("/", "web", 80)
            .build(),
    ];
    let t = build(&state);
    assert_eq!(group(&t.config, "default/web:80").protocol, BackendProtocol::Http1);
    let tuned_route = &host(&t.config, "b.test").routes[0];
    assert_eq!((tuned_route.timeout_ms, tuned_route.max_body_bytes), (None, Some(1 << 20)));
    let tuned = group(&t.config, tuned_route.backend.as_deref().unwrap());
    // nginx's timeouts are gaps between reads and writes, not the route's deadline.
    assert_eq!((tuned.timeouts.read_ms, tuned.timeouts.send_ms), (Some(30_000), Some(20_000)));
    assert_eq!(tuned.retries.on, [RetryOn::Error, RetryOn::Http503, RetryOn::NonIdempotent]);
    assert_eq!(tuned.retries.timeout_ms, Some(5_000));
    // ingress-nginx's default conditions: error timeout.
    let plain = group(&t.config, "default/web:80");
    assert_eq!(plain.retries.on, [RetryOn::Error, RetryOn::Timeout]);
    assert_eq!((plain.timeouts.read_ms, plain.retries.timeout_ms), (None, None));
    // ingress-nginx's buffering defaults: the request held up to 8k, the response streamed.
    assert_eq!((plain.buffering.request_bytes, plain.buffering.response_bytes), (8 << 10, 0));
    // The tuned backend is gRPC: streamed both ways, whatever the buffering annotations say.
    assert_eq!((tuned.buffering.request_bytes, tuned.buffering.response_bytes), (0, 0));
    assert_ne!(tuned.name, "default/web:80");
    assert_eq!(tuned.protocol, BackendProtocol::H2c);
    assert_eq!(tuned.timeouts.connect_ms, 2000);
    assert_eq!(tuned.retries.attempts, 2);
    assert_eq!(
        (tuned.balance, tuned.hash_on.clone()),
        (Balance::Hash, Some(HashOn::Header("x-user".into())))
    );
    assert_eq!(tuned.endpoints, group(&t.config, "default/web:80").endpoints);
    let secure = group(&t.config, host(&t.config, "c.test").routes[0].backend.as_deref().unwrap());
    assert!(secure.tls.as_ref().is_some_and(|t| t.insecure_skip_verify));
    assert_eq!(secure.balance, Balance::Ewma);
    assert_eq!(secure.cookie_affinity.as_ref().map(|a| a.name.as_str()), Some("route"));
    assert_eq!((secure.buffering.request_bytes, secure.buffering.response_bytes), (1 << 20, 16 << 10));
}

#[test]
fn redirects_and_app_root() {
    let mut state = web_state();
    state.ingresses = vec![
        IngressTest::new("moved")
            .annotation("permanent-redirect", "https://new.test:8443/landing")
            .host("old.test")
            .path("/", "web", 80)
            .build(),
        IngressTest::new("app").annotation("app-root", "/app1").host("a.test").path("/", "web", 80).build(),
    ];
    let t = build(&state);
    let moved = &host(&t.config, "old.test").routes[0];
    let redirect = moved.redirect.as_ref().unwrap();
    assert_eq!(
        (
            redirect.scheme.as_deref(),
            redirect.host.as_deref(),
            redirect.port,
            redirect.path.as_deref(),
            redirect.code
        ),
        (Some("https"), Some("new.test"), Some(8443), Some("/landing"), 301)
    );
    assert!(moved.backend.is_none());
    let app = host(&t.config, "a.test");
    assert_eq!(app.routes[0].matcher.path, Some(PathMatch::Exact("/".into())));
    assert_eq!(app.routes[0].redirect.as_ref().unwrap().path.as_deref(), Some("/app1"));
    assert_eq!(app.routes[1].backend.as_deref(), Some("default/web:80"));
}

#[test]
fn snippets_refuse_the_whole_ingress_and_are_reported() {
    let mut state = web_state();
    state.ingresses.push(
        IngressTest::new("snippet")
            .annotation("configuration-snippet", "proxy_set_header X-Evil 1;")
            .host("evil.test")
            .path("/", "web", 80)
            .build(),
    );
    let t = build(&state);
    assert!(t.config.virtual_hosts.iter().all(|h| h.domains != ["evil.test"]));
    assert!(!t.served.iter().any(|i| &*i.name == "snippet"));
    assert!(notes(&t).contains("snippets are refused"), "{}", notes(&t));
}

#[test]
fn canary_by_header_cookie_and_weight() {
    let mut state = web_state();
    state.services.push(service("canary", &[("http", 80)]));
    state.slices.push(SliceTest::new("canary-1", "canary").port("http", 8080).ready("10.9.0.1").build());
    state.ingresses.push(
        IngressTest::new("web-canary")
            .annotation("canary", "true")
            .annotation("canary-by-header", "X-Canary")
            .annotation("canary-by-cookie", "canary")
            .annotation("canary-weight", "25")
            .host("a.test")
            .path("/", "canary", 80)
            .build(),
    );
    let t = build(&state);
    let routes = &host(&t.config, "a.test").routes;
    let summary: Vec<(String, Option<&str>)> = routes
        .iter()
        .map(|r| {
            let header =
                r.matcher.headers.first().map(|h| {
                    format!("{}={}", h.name, h.exact.clone().or(h.regex.clone()).unwrap_or_default())
                });
            (header.unwrap_or_default(), r.backend.as_deref())
        })
        .collect();
    let weighted = "default/web:80+canary(default/canary:80)@25/100";
    assert_eq!(
        summary,
        [
            (String::new(), Some(weighted)),
            ("x-canary=always".into(), Some("default/canary:80")),
            ("x-canary=never".into(), Some("default/web:80")),
            (r"cookie=(?:.*;\s*)?canary=always(?:\s*;.*)?".into(), Some("default/canary:80")),
            (r"cookie=(?:.*;\s*)?canary=never(?:\s*;.*)?".into(), Some("default/web:80")),
        ]
    );
    // 2 main endpoints and 1 canary endpoint: 75% of the weight on main's, 25% on the canary's.
    let mixed = group(&t.config, weighted);
    let weight = |prefix: &str| -> u32 {
        mixed.endpoints.iter().filter(|e| e.address.to_string().starts_with(prefix)).map(|e| e.weight).sum()
    };
    assert_eq!(weight("10.0.0."), 3 * weight("10.9.0."), "{:?}", mixed.endpoints);
    assert_eq!(mixed.balance, Balance::RoundRobin);
    // The header routes are tried before the main route by the proxy's own routing table.
    let table = crate::proxy::route::RouteTable::build(&t.config).unwrap();
    let find = |headers: &[(&str, &str)]| {
        let mut map = http::HeaderMap::new();
        for (k, v) in headers {
            map.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        match table.find(0, "a.test", &http::Method::GET, "/x", None, &map).unwrap().action {
            crate::proxy::route::RouteAction::Backend(i) => t.config.backends[i].name.clone(),
            _ => panic!("not a backend"),
        }
    };
    assert_eq!(find(&[("x-canary", "always")]), "default/canary:80");
    assert_eq!(
        find(&[("x-canary", "never"), ("cookie", "canary=always")]),
        "default/web:80",
        "header before cookie"
    );
    assert_eq!(find(&[("cookie", "a=b; canary=always")]), "default/canary:80");
    assert_eq!(find(&[("x-canary", "maybe")]), weighted, "other values fall through to the weight");
}

#[test]
fn a_canary_without_main_ingress_is_reported() {
    let mut state = web_state();
    state.ingresses.push(
        IngressTest::new("lonely")
            .annotation("canary", "true")
            .annotation("canary-weight", "50")
            .host("z.test")
            .path("/", "web", 80)
            .build(),
    );
    let t = build(&state);
    assert!(notes(&t).contains("has no main Ingress"), "{}", notes(&t));
    assert!(t.config.virtual_hosts.iter().all(|h| h.domains != ["z.test"]));
}

#[test]
fn tls_secrets_become_certificates_and_bad_ones_are_skipped() {
    let (cert, key) = self_signed("a.test");
    let mut state = web_state();
    state.ingresses = vec![
        IngressTest::new("web").tls(&["a.test"], "a-tls").host("a.test").path("/", "web", 80).build(),
        IngressTest::new("broken").tls(&["b.test"], "b-tls").host("b.test").path("/", "web", 80).build(),
        IngressTest::new("missing").tls(&["c.test"], "nope").host("c.test").path("/", "web", 80).build(),
    ];
    state.secrets = vec![tls_secret("a-tls", &cert, &key), tls_secret("b-tls", "not a certificate", &key)];
    let t = translator().build(&tls_base(), &state).unwrap();
    // The Secret's, and the generated default (unknown names get it, as in ingress-nginx).
    assert_eq!(t.config.certificates.len(), 2);
    assert_eq!(t.config.certificates[0].name, "default/a-tls");
    assert_eq!(t.config.certificates[1].name, "sluice/fake-certificate");
    assert_eq!(t.config.certificates[0].cert_pem.as_deref(), Some(cert.as_str()));
    let a = host(&t.config, "a.test").tls.as_ref().unwrap();
    assert_eq!((a.certificate.as_deref(), a.redirect_http), (Some("default/a-tls"), true));
    assert!(host(&t.config, "b.test").tls.is_none());
    assert!(host(&t.config, "c.test").tls.is_none());
    let notes = notes(&t);
    assert!(notes.contains("Secret default/b-tls"), "{notes}");
    assert!(notes.contains("TLS Secret default/nope not found"), "{notes}");
    // Without a TLS listener the hosts serve plain HTTP and the Ingress is told.
    let plain = build(&state);
    assert!(plain.config.certificates.is_empty());
    assert!(notes_contain(&plain, "no listener terminates TLS"));
}

fn notes_contain(t: &Translation, text: &str) -> bool {
    t.notes.iter().any(|n| n.message.contains(text))
}

/// force-ssl-redirect marks the Ingress's backend routes whatever its hosts' TLS (not its
/// permanent-redirect routes, which nginx answers first); use-port-in-redirects and
/// preserve-trailing-slash set how its redirects are written, the ConfigMap giving defaults.
#[test]
fn force_ssl_redirect_and_the_redirect_form() {
    let (cert, key) = self_signed("a.test");
    let mut state = web_state();
    state.ingresses = vec![
        IngressTest::new("forced")
            .annotation("force-ssl-redirect", "true")
            .annotation("preserve-trailing-slash", "true")
            .host("plain.test")
            .path("/", "web", 80)
            .build(),
        IngressTest::new("moved")
            .annotation("force-ssl-redirect", "true")
            .annotation("permanent-redirect", "https://elsewhere.test/")
            .host("moved.test")
            .path("/", "web", 80)
            .build(),
        IngressTest::new("tls").tls(&["a.test"], "a-tls").host("a.test").path("/", "web", 80).build(),
    ];
    state.secrets = vec![tls_secret("a-tls", &cert, &key)];
    let t = translator().build(&tls_base(), &state).unwrap();
    let forced = &host(&t.config, "plain.test").routes[0];
    let kept = HttpsRedirectConfig { port: RedirectPort::Never, strip_trailing_slash: false };
    assert_eq!(forced.https_redirect, Some(kept));
    assert!(host(&t.config, "plain.test").tls.is_none());
    assert!(host(&t.config, "moved.test").routes.iter().all(|r| r.https_redirect.is_none()));
    let a = host(&t.config, "a.test");
    assert!(a.routes[0].https_redirect.is_none());
    let tls = a.tls.as_ref().unwrap();
    let nginx_default = HttpsRedirectConfig { port: RedirectPort::Never, strip_trailing_slash: true };
    assert_eq!((tls.redirect_http, tls.redirect), (true, nginx_default));
    assert!(!notes_contain(&t, "force-ssl-redirect"), "{}", notes(&t));
    // The ConfigMap's defaults: every Ingress without the annotations.
    let data = [("force-ssl-redirect", "true"), ("use-port-in-redirects", "true")];
    state.configmaps = vec![configmap("ingress-nginx", "controller", &data)];
    let settings = Settings {
        ingress_class: "sluice".into(),
        controller_configmap: Some("ingress-nginx/controller".into()),
        ..Settings::default()
    };
    let t = Translator::new(settings).build(&tls_base(), &state).unwrap();
    let always = HttpsRedirectConfig { port: RedirectPort::Always, strip_trailing_slash: true };
    assert_eq!(host(&t.config, "a.test").routes[0].https_redirect, Some(always));
    assert_eq!(host(&t.config, "a.test").tls.as_ref().unwrap().redirect, always);
}

#[test]
fn ssl_redirect_off_and_passthrough() {
    let (cert, key) = self_signed("a.test");
    let mut state = web_state();
    state.ingresses = vec![
        IngressTest::new("web")
            .annotation("ssl-redirect", "false")
            .tls(&["a.test"], "a-tls")
            .host("a.test")
            .path("/", "web", 80)
            .build(),
        IngressTest::new("pass")
            .annotation("ssl-passthrough", "true")
            .host("p.test")
            .path("/", "web", 80)
            .build(),
    ];
    state.secrets = vec![tls_secret("a-tls", &cert, &key)];
    let t = translator().build(&tls_base(), &state).unwrap();
    assert!(!host(&t.config, "a.test").tls.as_ref().unwrap().redirect_http);
    let pass = host(&t.config, "p.test").tls.as_ref().unwrap();
    assert_eq!(pass.passthrough.as_deref(), Some("default/web:80"));
}

#[test]
fn base_hosts_win_over_ingress_hosts() {
    let base = Config::from_yaml(
        "listeners: [{name: web, address: '127.0.0.1:8080'}]\nvirtual_hosts: [{name: mine, domains: [a.test], routes: [{redirect: {path: /}}]}]\n",
        "base",
    )
    .unwrap();
    let t = translator().build(&base, &web_state()).unwrap();
    assert_eq!(t.config.virtual_hosts.len(), 1);
    assert_eq!(t.config.virtual_hosts[0].name, "mine");
    assert!(notes_contain(&t, "configured in the base configuration"));
}

#[test]
fn validation_round_trips_the_model() {
    let (cert, key) = self_signed("a.test");
    let mut state = web_state();
    state.ingresses.push(
        IngressTest::new("hash")
            .annotation("upstream-hash-by", "$remote_addr")
            .annotation("use-regex", "true")
            .tls(&["h.test"], "a-tls")
            .host("h.test")
            .path("/v[0-9]+/", "web", 80)
            .build(),
    );
    state.secrets = vec![tls_secret("a-tls", &cert, &key)];
    let t = translator().build(&tls_base(), &state).unwrap();
    // What validation reads is what was built (the private key aside: it serializes redacted).
    let reparsed = Config::from_yaml(&model_yaml(&t.config).unwrap(), "t").unwrap();
    let mut redacted = Config::clone(&t.config);
    for certificate in &mut redacted.certificates {
        certificate.key_pem = Some(SecretString("<redacted>".into()));
    }
    assert_eq!(reparsed, redacted);
    assert!(
        reparsed
            .virtual_hosts
            .iter()
            .any(|h| h.routes.iter().any(|r| matches!(r.matcher.path, Some(PathMatch::Regex(_)))))
    );
    let group = t.config.backends.iter().find(|b| b.hash_on.is_some()).unwrap();
    assert_eq!(group.hash_on, Some(HashOn::ClientIp));
}

#[test]
fn an_ingress_that_fails_validation_is_set_aside() {
    // The base configuration already has a backend with the name the Ingress's group gets.
    let base = Config::from_yaml(
        "listeners: [{name: web, address: '127.0.0.1:8080'}]\nbackends: [{name: 'default/web:80', endpoints: []}]\n",
        "base",
    )
    .unwrap();
    let mut state = web_state();
    state.services.push(service("other", &[("http", 80)]));
    state.ingresses.push(IngressTest::new("fine").host("b.test").path("/", "other", 80).build());
    let t = translator().build(&base, &state).unwrap();
    assert_eq!(t.config.virtual_hosts.len(), 1, "{:?}", t.config.virtual_hosts);
    assert_eq!(t.config.virtual_hosts[0].name, "b.test");
    assert!(notes_contain(&t, "does not validate"), "{}", notes(&t));
    assert_eq!(t.owner_of("listeners[0]"), None);
}

/// A problem's path names the field an Ingress put there (the route, the host's TLS, the
/// backend or certificate it is in), or none.
#[test]
fn problem_paths_name_their_fields() {
    for (path, field) in [
        ("virtual_hosts[3].routes[1]", Some(Field::Route { host: 3, route: 1 })),
        ("virtual_hosts[3].routes[12].match.headers[0].regex", Some(Field::Route { host: 3, route: 12 })),
        ("virtual_hosts[0].tls.certificate", Some(Field::HostTls(0))),
        ("backends[10].endpoints[2].address", Some(Field::Backend(10))),
        ("certificates[2]", Some(Field::Certificate(2))),
        ("virtual_hosts[3].domains[0]", None),
        ("virtual_hosts[3].tlsx", None),
        ("virtual_hosts[03].routes[1]", None),
        ("backends[1x]", None),
        ("listeners[0]", None),
    ] {
        assert_eq!(Field::of(path), field, "{path}");
    }
}

/// A self-signed certificate and key for `host`, valid now.
fn self_signed(host: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec![host.to_owned()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn configmap(
    namespace: &str,
    name: &str,
    data: &[(&str, &str)],
) -> Arc<k8s_openapi::api::core::v1::ConfigMap> {
    Arc::new(k8s_openapi::api::core::v1::ConfigMap {
        metadata: meta(Some(namespace), name),
        data: Some(data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
        ..Default::default()
    })
}

#[test]
fn hsts_is_on_for_tls_hosts_by_default_as_in_ingress_nginx() {
    let (cert, key) = self_signed("a.test");
    let mut state = web_state();
    state.ingresses =
        vec![IngressTest::new("web").tls(&["a.test"], "a-tls").host("a.test").path("/", "web", 80).build()];
    state.secrets = vec![tls_secret("a-tls", &cert, &key)];
    let t = translator().build(&tls_base(), &state).unwrap();
    let hsts = host(&t.config, "a.test").tls.as_ref().unwrap().hsts.clone().expect("HSTS by default");
    assert_eq!((hsts.max_age_seconds, hsts.include_subdomains, hsts.preload), (31_536_000, true, false));
    // The controller ConfigMap turns it off, or changes it.
    let with = |data: &[(&str, &str)]| {
        let mut state = state.clone();
        state.configmaps = vec![configmap("ingress-nginx", "controller", data)];
        let settings = Settings {
            ingress_class: "sluice".into(),
            controller_configmap: Some("ingress-nginx/controller".into()),
            ..Settings::default()
        };
        Translator::new(settings).build(&tls_base(), &state).unwrap()
    };
    assert!(host(&with(&[("hsts", "false")]).config, "a.test").tls.as_ref().unwrap().hsts.is_none());
    let t = with(&[("hsts-max-age", "600"), ("ssl-redirect", "false")]);
    let tls = host(&t.config, "a.test").tls.clone().unwrap();
    assert_eq!((tls.hsts.unwrap().max_age_seconds, tls.redirect_http), (600, false));
}

#[test]
fn the_controller_configmap_sets_node_settings_defaults_and_header_configmaps() {
    let mut state = web_state();
    state.ingresses = vec![
        IngressTest::new("web").host("a.test").path("/", "web", 80).build(),
        IngressTest::new("own")
            .annotation("nginx.ingress.kubernetes.io/proxy-body-size", "2m")
            .annotation("nginx.ingress.kubernetes.io/custom-headers", "headers")
            .host("b.test")
            .path("/", "web", 80)
            .build(),
        IngressTest::new("forbidden")
            .annotation("nginx.ingress.kubernetes.io/custom-headers", "default/too-much")
            .host("c.test")
            .path("/", "web", 80)
            .build(),
    ];
    state.configmaps = vec![
        configmap(
            "ingress-nginx",
            "controller",
            &[
                ("use-forwarded-headers", "true"),
                ("proxy-real-ip-cidr", "10.0.0.0/8"),
                ("use-proxy-protocol", "true"),
                ("proxy-body-size", "20m"),
                ("limit-req-status-code", "429"),
                ("add-headers", "ingress-nginx/response"),
                ("proxy-set-headers", "ingress-nginx/request"),
                ("global-allowed-response-headers", "X-Frame-Options"),
                ("keep-alive", "75"),
            ],
        ),
        configmap("ingress-nginx", "response", &[("X-Served-By", "sluice")]),
        configmap("ingress-nginx", "request", &[("X-Edge", "1")]),
        configmap("default", "headers", &[("X-Frame-Options", "DENY")]),
        configmap("default", "too-much", &[("X-Frame-Options", "DENY"), ("Server", "mine")]),
    ];
    let settings = Settings {
        ingress_class: "sluice".into(),
        controller_configmap: Some("ingress-nginx/controller".into()),
        ..Settings::default()
    };
    let t = Translator::new(settings).build(&base(), &state).unwrap();
    let f = &t.config.forwarded;
    assert!(
        f.use_forwarded_headers
            && f.trusts("10.1.1.1".parse().unwrap())
            && !f.trusts("192.0.2.1".parse().unwrap())
    );
    assert!(t.config.listeners.iter().all(|l| l.proxy_protocol));
    assert_eq!(t.config.limits.rate_limit_status, 429);
    let route = |domain: &str| RouteConfig::clone(&host(&t.config, domain).routes[0]);
    assert_eq!(route("a.test").max_body_bytes, Some(20 << 20), "the ConfigMap's default");
    assert_eq!(route("b.test").max_body_bytes, Some(2 << 20), "the annotation wins");
    let names = |ops: Option<Box<HeaderOpsConfig>>| -> Vec<String> {
        ops.map(|o| o.set.iter().map(|f| format!("{}={}", f.name, f.value)).collect()).unwrap_or_default()
    };
    assert_eq!(names(route("a.test").request_headers), ["X-Edge=1"]);
    assert_eq!(names(route("a.test").response_headers), ["X-Served-By=sluice"]);
    assert_eq!(names(route("b.test").response_headers), ["X-Served-By=sluice", "X-Frame-Options=DENY"]);
    // A custom-headers ConfigMap with a header not allowed refuses its Ingress, as ingress-nginx
    // denies its locations.
    assert!(t.config.virtual_hosts.iter().all(|h| !h.domains.iter().any(|d| d == "c.test")));
    let notes = notes(&t);
    assert!(
        notes.contains("Server is not in the controller ConfigMap's global-allowed-response-headers"),
        "{notes}"
    );
    assert!(notes.contains("key keep-alive is ignored"), "{notes}");
    // A named ConfigMap that does not exist: reported, defaults apply.
    let settings = Settings {
        ingress_class: "sluice".into(),
        controller_configmap: Some("ingress-nginx/nope".into()),
        ..Settings::default()
    };
    let t = Translator::new(settings).build(&base(), &web_state()).unwrap();
    assert!(notes_contain(&t, "controller ConfigMap ingress-nginx/nope not found"));
}

/// An auth-tls Ingress whose own TLS cannot serve a host (a broken TLS Secret, or TLS set by an
/// older Ingress) fails closed there: its paths answer 403 instead of serving without the
/// client-certificate check.
#[test]
fn client_certificates_fail_closed_where_the_ingress_tls_does_not_serve() {
    let (cert, key) = self_signed("a.test");
    let mut state = web_state();
    let with_client_tls = |ingress: IngressTest| {
        ingress.annotation("nginx.ingress.kubernetes.io/auth-tls-secret", "client-ca").build()
    };
    state.ingresses = vec![
        with_client_tls(
            IngressTest::new("good").tls(&["a.test"], "a-tls").host("a.test").path("/", "web", 80),
        ),
        with_client_tls(
            IngressTest::new("broken").tls(&["b.test"], "b-tls").host("b.test").path("/", "web", 80),
        ),
    ];
    let mut ca = tls_secret("client-ca", &cert, &key);
    Arc::make_mut(&mut ca)
        .data
        .as_mut()
        .unwrap()
        .insert("ca.crt".into(), ByteString(cert.as_bytes().to_vec()));
    state.secrets =
        vec![tls_secret("a-tls", &cert, &key), tls_secret("b-tls", "not a certificate", &key), ca];
    let t = translator().build(&tls_base(), &state).unwrap();
    let a = host(&t.config, "a.test");
    assert!(a.tls.as_ref().unwrap().client_ca_pem.is_some(), "the check is in place");
    assert!(a.routes[0].source_ranges.is_none());
    let b = host(&t.config, "b.test");
    assert!(b.tls.is_none());
    let closed = b.routes[0].source_ranges.as_ref().expect("fails closed");
    assert!(!closed.admits("192.0.2.1".parse().unwrap()) && !closed.admits("2001:db8::1".parse().unwrap()));
    assert!(notes_contain(&t, "client certificates cannot be checked on host b.test"), "{}", notes(&t));
}

/// Which Service `GET host path` reaches through the proxy's own routing table (the backend
/// group's name up to the port), or `None` for a 404.
fn routed(config: &Config, host: &str, path: &str) -> Option<String> {
    let table = crate::proxy::route::RouteTable::build(config).unwrap();
    let route = table.find(0, host, &http::Method::GET, path, None, &http::HeaderMap::new())?;
    match route.action {
        crate::proxy::route::RouteAction::Backend(i) => {
            let name = &config.backends[i].name;
            Some(name.split(['/', ':']).nth(1).unwrap_or(name).to_owned())
        }
        crate::proxy::route::RouteAction::Redirect(_) => Some("redirect".into()),
        crate::proxy::route::RouteAction::Respond(status) => Some(status.as_str().to_owned()),
    }
}

/// ingress-nginx's path priority example (docs/user-guide/ingress-path-matching.md): the
/// rewrite-target of one Ingress makes every path of the host a case-insensitive regex, ordered
/// by length, so `/foo/bar/(.+)` wins over the other Ingress's Prefix paths.
#[test]
fn use_regex_and_rewrite_target_apply_to_every_path_of_the_host() {
    let mut state = web_state();
    state.ingresses = vec![
        IngressTest::new("test-ingress-1")
            .created(1)
            .host("test.com")
            .path("/foo/bar", "service1", 80)
            .path("/foo/bar/", "service2", 80)
            .build(),
        IngressTest::new("test-ingress-2")
            .created(2)
            .annotation("rewrite-target", "/$1")
            .host("test.com")
            .path_typed("/foo/bar/(.+)", "ImplementationSpecific", "service3", number(80))
            .build(),
        // Another host of the first Ingress's shape keeps Kubernetes' Prefix semantics.
        IngressTest::new("plain")
            .created(3)
            .host("plain.test")
            .path("/foo/bar", "service1", 80)
            .path_typed("/exact", "Exact", "service2", number(80))
            .build(),
    ];
    let t = build(&state);
    let c = &t.config;
    assert_eq!(routed(c, "test.com", "/foo/bar/1").as_deref(), Some("service3"));
    assert_eq!(routed(c, "test.com", "/foo/bar/").as_deref(), Some("service2"));
    assert_eq!(routed(c, "test.com", "/foo/bar").as_deref(), Some("service1"));
    // `~*`: case-insensitive, and anchored at the start only (a Prefix path is a string prefix).
    assert_eq!(routed(c, "test.com", "/FOO/BAR/x").as_deref(), Some("service3"));
    assert_eq!(routed(c, "test.com", "/foo/barbaz").as_deref(), Some("service1"));
    assert_eq!(routed(c, "test.com", "/x/foo/bar"), None);
    // Other hosts are untouched: element-wise Prefix, case-sensitive, Exact exact.
    assert_eq!(routed(c, "plain.test", "/foo/bar/x").as_deref(), Some("service1"));
    assert_eq!(routed(c, "plain.test", "/foo/barbaz"), None);
    assert_eq!(routed(c, "plain.test", "/FOO/bar"), None);
    assert_eq!(routed(c, "plain.test", "/exact").as_deref(), Some("service2"));
    assert_eq!(routed(c, "plain.test", "/exact/more"), None);
}

/// ingress-nginx's warning example: with use-regex, `/foo/bar/[A-Z0-9]{3}` is longer than
/// `/foo/bar/bar` and comes first, so it takes `/foo/bar/bar`; an Exact path on such a host is
/// a regex too (`location ~* "^/exact"`); ImplementationSpecific without regex is Prefix.
#[test]
fn regex_hosts_order_by_length_and_exact_paths_become_regexes() {
    let mut state = web_state();
    state.ingresses = vec![
        IngressTest::new("test-ingress-3")
            .created(1)
            .annotation("use-regex", "true")
            .host("test.com")
            .path("/foo/bar/bar", "service1", 80)
            .path_typed("/foo/bar/[A-Z0-9]{3}", "ImplementationSpecific", "service2", number(80))
            .build(),
        IngressTest::new("other")
            .created(2)
            .host("test.com")
            .path_typed("/exact", "Exact", "service3", number(80))
            .build(),
        IngressTest::new("specific")
            .created(3)
            .host("specific.test")
            .path_typed("/app", "ImplementationSpecific", "service1", number(80))
            .build(),
    ];
    let t = build(&state);
    let c = &t.config;
    assert_eq!(routed(c, "test.com", "/foo/bar/bar").as_deref(), Some("service2"));
    assert_eq!(routed(c, "test.com", "/foo/bar/ab1").as_deref(), Some("service2"), "case-insensitive");
    assert_eq!(routed(c, "test.com", "/EXACT/and/more").as_deref(), Some("service3"));
    assert_eq!(routed(c, "specific.test", "/app/x").as_deref(), Some("service1"));
    assert_eq!(routed(c, "specific.test", "/app").as_deref(), Some("service1"));
    assert_eq!(routed(c, "specific.test", "/application"), None);
    // Equal lengths: ingress-nginx's order (path descending) decides, not the Ingresses' age.
    state.ingresses = vec![
        IngressTest::new("older")
            .created(1)
            .annotation("use-regex", "true")
            .host("tie.test")
            .path_typed("/a.c", "ImplementationSpecific", "service1", number(80))
            .build(),
        IngressTest::new("newer")
            .created(2)
            .host("tie.test")
            .path_typed("/abc", "Prefix", "service2", number(80))
            .build(),
    ];
    let t = build(&state);
    assert_eq!(routed(&t.config, "tie.test", "/abc").as_deref(), Some("service2"));
}

fn error_state() -> ClusterState {
    let mut state = web_state();
    state.services.push(service("errors", &[("http", 8080), ("metrics", 9090)]));
    state.slices.push(SliceTest::new("errors-1", "errors").port("http", 3000).ready("10.0.1.1").build());
    state.services.push(service("down", &[("http", 80)]));
    state.slices.push(SliceTest::new("down-1", "down").port("http", 8080).not_ready("10.0.2.1").build());
    state
}

#[test]
fn custom_http_errors_go_to_the_default_backend_annotation_with_ingress_nginx_fields() {
    let mut state = error_state();
    state.ingresses = vec![
        IngressTest::new("web")
            .annotation("custom-http-errors", "503, 404,503")
            .annotation("default-backend", "errors")
            .host("a.test")
            .path("/", "web", 80)
            .path("/down", "down", 80)
            .build(),
        IngressTest::new("plain")
            .annotation("custom-http-errors", "500")
            .host("b.test")
            .path("/", "web", 80)
            .build(),
    ];
    let t = build(&state);
    let routes = &host(&t.config, "a.test").routes;
    let pages = routes[0].error_pages.as_ref().expect("error pages");
    assert_eq!(pages.statuses, [404, 503]);
    // The Service's first port, as ingress-nginx.
    assert_eq!(pages.backend, "default/errors:8080");
    assert_eq!(addresses(group(&t.config, "default/errors:8080")), [("10.0.1.1:3000".to_owned(), true)]);
    let fields: Vec<(&str, &str)> =
        pages.headers.iter().map(|f| (f.name.as_str(), f.value.as_str())).collect();
    assert_eq!(
        fields,
        [
            ("X-Namespace", "default"),
            ("X-Ingress-Name", "web"),
            ("X-Service-Name", "web"),
            ("X-Service-Port", "80")
        ]
    );
    // A Service without a ready endpoint is served by the default-backend Service.
    assert_eq!(routes[1].backend.as_deref(), Some("default/errors:8080"));
    // Without any error backend the list does nothing, and says so.
    assert!(host(&t.config, "b.test").routes[0].error_pages.is_none());
    assert!(notes_contain(&t, "custom-http-errors: no error backend"), "{}", notes(&t));
}

#[test]
fn the_controller_default_backend_serves_unclaimed_hosts_and_paths_and_the_configmap_errors() {
    let mut state = error_state();
    state.ingresses = vec![
        IngressTest::new("web").host("a.test").path("/api", "web", 80).build(),
        IngressTest::new("own")
            .annotation("custom-http-errors", "")
            .host("c.test")
            .path("/", "web", 80)
            .build(),
    ];
    state.configmaps = vec![configmap("ingress-nginx", "controller", &[("custom-http-errors", "502,503")])];
    let settings = Settings {
        ingress_class: "sluice".into(),
        controller_configmap: Some("ingress-nginx/controller".into()),
        default_backend_service: Some("default/errors".into()),
        ..Settings::default()
    };
    let t = Translator::new(settings).build(&base(), &state).unwrap();
    let a = &host(&t.config, "a.test").routes;
    assert_eq!(a.len(), 2, "{a:?}");
    assert_eq!(
        a[0].error_pages.as_ref().map(|p| (p.statuses.clone(), p.backend.as_str())),
        Some((vec![502, 503], "default/errors:8080"))
    );
    assert_eq!(
        (a[1].name.as_deref(), a[1].backend.as_deref()),
        (Some("default-backend"), Some("default/errors:8080"))
    );
    assert!(a[1].error_pages.is_none(), "the default backend's own answers are not intercepted");
    let any = &host(&t.config, "*").routes;
    assert_eq!(any.len(), 1);
    assert_eq!(any[0].backend.as_deref(), Some("default/errors:8080"));
    // A host with its own catch-all keeps it; an empty annotation turns the ConfigMap's list off.
    let c = &host(&t.config, "c.test").routes;
    assert_eq!(c.len(), 1);
    assert!(c[0].error_pages.is_none());
    // A missing Service is reported and nothing is added.
    let settings = Settings {
        ingress_class: "sluice".into(),
        default_backend_service: Some("default/nope".into()),
        ..Settings::default()
    };
    let t = Translator::new(settings).build(&base(), &state).unwrap();
    assert!(t.config.virtual_hosts.iter().all(|h| h.domains != ["*"]));
    assert!(notes_contain(&t, "--default-backend-service Service default/nope not found"), "{}", notes(&t));
}

#[test]
fn tls_listeners_get_the_default_ssl_certificate_or_a_generated_one() {
    let (cert, key) = self_signed("default.test");
    let mut state = web_state();
    state.secrets =
        vec![tls_secret("default-tls", &cert, &key), tls_secret("broken", "not a certificate", &key)];
    let default_of = |t: &Translation| {
        let tls = t.config.listeners[1].tls.as_ref().unwrap();
        let name = tls.default_certificate.clone().expect("a default certificate");
        let certificate = t.config.certificates.iter().find(|c| c.name == name).expect("listed").clone();
        (name, certificate.cert_pem.unwrap())
    };
    // Without the flag: ingress-nginx's fake certificate, the same on every rebuild.
    let generated = default_of(&translator().build(&tls_base(), &state).unwrap());
    assert_eq!(generated.0, "sluice/fake-certificate");
    assert_eq!(generated, default_of(&translator().build(&tls_base(), &state).unwrap()));
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let der = CertificateDer::from_pem_slice(generated.1.as_bytes()).unwrap();
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
    let common_name = parsed.subject().iter_common_name().next().unwrap().as_str().unwrap().to_owned();
    assert_eq!(common_name, "Kubernetes Ingress Controller Fake Certificate");
    // With it: the Secret's; an unusable one is reported and the generated one serves.
    let with = |secret: &str| Settings {
        ingress_class: "sluice".into(),
        default_ssl_certificate: Some(format!("default/{secret}")),
        ..Settings::default()
    };
    let t = Translator::new(with("default-tls")).build(&tls_base(), &state).unwrap();
    assert_eq!(default_of(&t), ("default/default-tls".to_owned(), cert.clone()));
    let t = Translator::new(with("broken")).build(&tls_base(), &state).unwrap();
    assert_eq!(default_of(&t).0, "sluice/fake-certificate");
    assert!(notes_contain(&t, "--default-ssl-certificate default/broken cannot be used"), "{}", notes(&t));
    // A base listener that names its own default, or rejects unknown names, keeps that.
    let rejecting = Config::from_yaml(
        "listeners:\n  - {name: web, address: '127.0.0.1:8080'}\n  - {name: tls, address: '127.0.0.1:8443', tls: {unknown_sni: reject}}\nxdp: {enabled: false}\n",
        "base",
    )
    .unwrap();
    let t = translator().build(&rejecting, &state).unwrap();
    assert!(t.config.listeners[1].tls.as_ref().unwrap().default_certificate.is_none());
    assert!(t.config.certificates.is_empty());
}
mod incremental;
mod stream_services;
