//! Incremental translation: a translator that keeps its caches across rebuilds gives exactly
//! what a fresh one gives, after every change of a generated cluster; and each dependency rule
//! re-reads what a change touches and nothing else.

use super::*;

/// A small cluster whose objects collide on purpose: few hosts and paths (conflicts, canaries,
/// regex hosts), few Services (shared backends), two TLS Secrets.
struct Cluster {
    rng: fastrand::Rng,
    state: ClusterState,
    certificates: Vec<(String, String)>,
    /// Bumped on every write, as the API server's resourceVersion.
    version: u64,
    names: u64,
    /// Whether the controller ConfigMap and header ConfigMaps are changed too (the translator
    /// then reads them: [`with_controller`]), and Ingresses use annotations that read them.
    configmaps: bool,
}

/// The controller ConfigMap the translators of [`with_controller`] read, the header
/// ConfigMap it may name, and the Ingresses' custom-headers ConfigMap.
const CONTROLLER_CONFIGMAP: &str = "controller";
const HEADERS_CONFIGMAP: &str = "headers";

/// A translator that reads the controller ConfigMap `default/controller`, with the Service
/// `web` as `--default-backend-service`.
fn with_controller() -> Translator {
    Translator::new(Settings {
        ingress_class: "sluice".into(),
        controller_configmap: Some(format!("default/{CONTROLLER_CONFIGMAP}")),
        default_backend_service: Some("default/web".into()),
        ..Settings::default()
    })
}

const HOSTS: [&str; 4] = ["a.test", "b.test", "", "*.w.test"];
const PATHS: [&str; 3] = ["/", "/api", "/v1"];
const SERVICES: [&str; 4] = ["web", "api", "gone", "other"];
const SECRETS: [&str; 2] = ["a-tls", "b-tls"];

impl Cluster {
    fn new(seed: u64, configmaps: bool) -> Cluster {
        let certificates = vec![self_signed("a.test"), self_signed("b.test"), self_signed("a.test")];
        let mut cluster = Cluster {
            rng: fastrand::Rng::with_seed(seed),
            state: ClusterState {
                classes: vec![class("sluice", CONTROLLER, false)],
                ..ClusterState::default()
            },
            certificates,
            version: 0,
            names: 0,
            configmaps,
        };
        for service in &SERVICES[..3] {
            cluster.put_service(service);
            cluster.put_slice(service);
        }
        cluster.put_secret(SECRETS[0]);
        if configmaps {
            cluster.put_controller_configmap();
            cluster.put_headers_configmap();
        }
        for _ in 0..12 {
            let ingress = cluster.random_ingress();
            cluster.put(ingress);
        }
        cluster
    }

    fn versioned(&mut self, mut metadata: ObjectMeta) -> ObjectMeta {
        self.version += 1;
        metadata.resource_version = Some(self.version.to_string());
        metadata
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.rng.usize(..from.len())]
    }

    fn random_ingress(&mut self) -> Ingress {
        self.names += 1;
        let name = format!("i{}", self.names);
        self.ingress_named(&name)
    }

    fn ingress_named(&mut self, name: &str) -> Ingress {
        let mut test = IngressTest::new(name).created(self.rng.i64(0..50));
        for _ in 0..self.rng.usize(1..=2) {
            test = test.host(self.pick(&HOSTS));
            for _ in 0..self.rng.usize(1..=2) {
                let (path, service) = (self.pick(&PATHS), self.pick(&SERVICES));
                test = test.path(path, service, if self.rng.u8(..8) == 0 { 81 } else { 80 });
            }
        }
        match self.rng.u8(..10) {
            0 => test = test.annotation("canary", "true").annotation("canary-weight", "30"),
            1 => test = test.annotation("canary", "true").annotation("canary-by-header", "x-canary"),
            2 => test = test.annotation("use-regex", "true"),
            3 => test = test.default_backend(self.pick(&SERVICES), 80),
            4 => test = test.annotation("server-alias", "alias.test"),
            5 if self.configmaps => test = test.annotation("custom-headers", HEADERS_CONFIGMAP),
            6 if self.configmaps => {
                test = test
                    .annotation("default-backend", self.pick(&SERVICES))
                    .annotation("custom-http-errors", "503")
            }
            7 if self.configmaps => test = test.annotation("proxy-body-size", "3m"),
            _ => {}
        }
        if self.rng.bool() {
            let host = self.pick(&HOSTS[..2]);
            test = test.tls(&[host], self.pick(&SECRETS));
        }
        let mut ingress = Arc::unwrap_or_clone(test.build());
        ingress.metadata = self.versioned(ingress.metadata);
        ingress
    }

    fn put(&mut self, ingress: Ingress) {
        let id = id_of(&ingress);
        self.state.ingresses.retain(|i| id_of(i) != id);
        self.state.ingresses.push(Arc::new(ingress));
    }

    fn put_service(&mut self, name: &str) {
        let mut ports = vec![("http", 80)];
        if self.rng.bool() {
            ports.push(("admin", 81));
        }
        let mut service = Arc::unwrap_or_clone(service(name, &ports));
        service.metadata = self.versioned(service.metadata);
        self.state.services.retain(|s| s.metadata.name.as_deref() != Some(name));
        self.state.services.push(Arc::new(service));
    }

    fn put_slice(&mut self, service: &str) {
        let mut slice =
            SliceTest::new(&format!("{service}-1"), service).port("http", 8080).port("admin", 8081);
        for i in 0..self.rng.usize(0..4) {
            let address = format!("10.0.{}.{i}", self.rng.u8(..3));
            slice = if self.rng.u8(..4) == 0 { slice.not_ready(&address) } else { slice.ready(&address) };
        }
        let mut slice = Arc::unwrap_or_clone(slice.build());
        slice.metadata = self.versioned(slice.metadata);
        let name = slice.metadata.name.clone();
        self.state.slices.retain(|s| s.metadata.name != name);
        self.state.slices.push(Arc::new(slice));
    }

    fn put_secret(&mut self, name: &str) {
        let (cert, key) = self.certificates[self.rng.usize(..self.certificates.len())].clone();
        let mut secret = Arc::unwrap_or_clone(tls_secret(name, &cert, &key));
        secret.metadata = self.versioned(secret.metadata);
        self.state.secrets.retain(|s| s.metadata.name.as_deref() != Some(name));
        self.state.secrets.push(Arc::new(secret));
    }

    /// The controller ConfigMap with a random choice of defaults (some change what every
    /// Ingress's routes or TLS get, some name the header ConfigMap).
    fn put_controller_configmap(&mut self) {
        let mut data: Vec<(&str, &str)> = Vec::new();
        for (key, value) in [
            ("proxy-body-size", "5m"),
            ("ssl-redirect", "false"),
            ("custom-http-errors", "502,504"),
            ("add-headers", "default/headers"),
            ("proxy-set-headers", "default/headers"),
            ("global-allowed-response-headers", "X-Frame-Options"),
            ("hsts", "false"),
        ] {
            if self.rng.bool() {
                data.push((key, value));
            }
        }
        self.put_configmap(CONTROLLER_CONFIGMAP, &data);
    }

    fn put_headers_configmap(&mut self) {
        let value = ["DENY", "SAMEORIGIN"][self.rng.usize(..2)];
        let mut data = vec![("X-Frame-Options", value)];
        if self.rng.bool() {
            data.push(("X-Other", "1"));
        }
        self.put_configmap(HEADERS_CONFIGMAP, &data);
    }

    fn put_configmap(&mut self, name: &str, data: &[(&str, &str)]) {
        let mut configmap = Arc::unwrap_or_clone(super::configmap("default", name, data));
        configmap.metadata = self.versioned(configmap.metadata);
        self.state.configmaps.retain(|c| c.metadata.name.as_deref() != Some(name));
        self.state.configmaps.push(Arc::new(configmap));
    }

    /// One random change; what it was, for the failure message.
    fn change(&mut self) -> String {
        let pick_existing = |rng: &mut fastrand::Rng, len: usize| (len > 0).then(|| rng.usize(..len));
        let kinds = if self.configmaps { 15 } else { 12 };
        match self.rng.u8(..kinds) {
            0..=2 => {
                let ingress = self.random_ingress();
                let what = format!("add Ingress {}", id_of(&ingress));
                self.put(ingress);
                what
            }
            3..=4 => match pick_existing(&mut self.rng, self.state.ingresses.len()) {
                Some(i) => {
                    let name = self.state.ingresses[i].metadata.name.clone().unwrap_or_default();
                    let ingress = self.ingress_named(&name);
                    self.put(ingress);
                    format!("change Ingress {name}")
                }
                None => "nothing".into(),
            },
            5 => match pick_existing(&mut self.rng, self.state.ingresses.len()) {
                Some(i) => format!("remove Ingress {}", id_of(&self.state.ingresses.remove(i))),
                None => "nothing".into(),
            },
            6 => {
                let name = self.pick(&SERVICES);
                self.put_service(name);
                format!("put Service {name}")
            }
            7 => {
                let name = self.pick(&SERVICES);
                self.state.services.retain(|s| s.metadata.name.as_deref() != Some(name));
                format!("remove Service {name}")
            }
            8..=9 => {
                let name = self.pick(&SERVICES);
                self.put_slice(name);
                format!("put EndpointSlice of {name}")
            }
            10 => {
                let name = self.pick(&SECRETS);
                self.put_secret(name);
                format!("put Secret {name}")
            }
            11 => {
                let name = self.pick(&SECRETS);
                self.state.secrets.retain(|s| s.metadata.name.as_deref() != Some(name));
                format!("remove Secret {name}")
            }
            12 => {
                self.put_controller_configmap();
                "put the controller ConfigMap".into()
            }
            13 => {
                self.put_headers_configmap();
                "put the headers ConfigMap".into()
            }
            _ => {
                let name = [CONTROLLER_CONFIGMAP, HEADERS_CONFIGMAP][self.rng.usize(..2)];
                self.state.configmaps.retain(|c| c.metadata.name.as_deref() != Some(name));
                format!("remove ConfigMap {name}")
            }
        }
    }
}

/// What must be equal between an incremental and a fresh translation.
fn outcome(result: Result<Translation, crate::config::Error>) -> String {
    match result {
        Ok(t) => format!(
            "config: {:#?}\nserved: {:?}\nconsidered: {:?}\nnotes: {:#?}\nowners: {:?}",
            t.config, t.served, t.considered, t.notes, t.owners
        ),
        Err(e) => format!("error: {e}"),
    }
}

/// A base whose own backend has the name of the group of Service `gone` port 80: an Ingress
/// routing there makes a configuration that does not validate, and is set aside.
fn colliding_base() -> Config {
    Config::from_yaml(
        "listeners:\n  - {name: web, address: '127.0.0.1:8080'}\n  - {name: tls, address: '127.0.0.1:8443', tls: {}}\nxdp: {enabled: false}\nbackends: [{name: 'default/gone:80', endpoints: []}]\n",
        "base",
    )
    .unwrap()
}

/// Over random sequences of changes (deterministic seeds, bounded), the translator that keeps
/// its caches (and validates against the last configuration that validated) gives, after
/// every step, what a fresh translator gives from the same state; with seeds 5 and 6, Ingresses
/// are set aside now and then because their configuration does not validate; with seeds 7 and
/// 8, the controller ConfigMap (defaults under every Ingress), a header ConfigMap and a
/// default backend Service are read and changed too. Every kept route and host is checked:
/// the configuration is compared whole, and most steps reuse most routes (asserted).
#[test]
fn incremental_translation_equals_a_fresh_one_after_every_change() {
    let mut set_aside = 0;
    let mut routes_reused = 0;
    for seed in 1..=8u64 {
        let configmaps = seed > 6;
        let mut cluster = Cluster::new(seed, configmaps);
        let fresh_translator = if configmaps { with_controller } else { translator };
        let incremental = fresh_translator();
        let mut history = Vec::new();
        for step in 0..30 {
            let what = if step == 0 { "start".to_owned() } else { cluster.change() };
            history.push(what);
            let base = if seed > 4 { colliding_base() } else { tls_base() };
            let kept = outcome(incremental.build(&base, &cluster.state));
            routes_reused += incremental.reused().0;
            let fresh = outcome(fresh_translator().build(&base, &cluster.state));
            if kept != fresh {
                let diff: Vec<String> = kept
                    .lines()
                    .zip(fresh.lines())
                    .filter(|(a, b)| a != b)
                    .take(10)
                    .map(|(a, b)| format!("  kept: {a}\n  fresh: {b}"))
                    .collect();
                panic!("seed {seed} step {step}; changes: {history:?}\n{}", diff.join("\n"));
            }
            set_aside += usize::from(kept.contains("does not validate"));
        }
    }
    assert!(set_aside > 0, "no step set an Ingress aside");
    assert!(routes_reused > 1_000, "only {routes_reused} routes were taken from the cache");
}

/// Two Ingresses on their own Services, and a third Service nobody uses.
fn two_services() -> ClusterState {
    let mut state = web_state();
    state.ingresses.push(IngressTest::new("api").host("b.test").path("/", "api", 80).build());
    state.services.push(service("api", &[("http", 80)]));
    state.slices.push(SliceTest::new("api-1", "api").port("http", 8080).ready("10.0.1.1").build());
    state.services.push(service("idle", &[("http", 80)]));
    state
}

/// Replaces the object named `name` in `list` by `object` (a new version: a new `Arc`, as the
/// reflector's store holds it).
fn replace<K: kube::Resource>(list: &mut Vec<Arc<K>>, name: &str, object: Arc<K>) {
    list.retain(|o| o.meta().name.as_deref() != Some(name));
    list.push(object);
}

/// A kept translator gives a fresh translator's result for `state`; returns it.
fn same_as_fresh(kept: &Translator, base: &Config, state: &ClusterState) -> Translation {
    let t = kept.build(base, state).expect("the translation validates");
    assert_eq!(outcome(Ok(t.clone())), outcome(translator().build(base, state)));
    t
}

/// Rule: a backend group is made again when its Service or any of its EndpointSlices is a new
/// object; every other group is reused, whatever else changed.
#[test]
fn a_changed_service_or_slice_remakes_only_its_own_group() {
    let kept = translator();
    let mut state = two_services();
    same_as_fresh(&kept, &base(), &state);
    assert_eq!(kept.groups_made(), 2, "a first translation makes every group");
    same_as_fresh(&kept, &base(), &state);
    assert_eq!(kept.groups_made(), 0, "nothing changed: every group is reused");
    replace(&mut state.services, "web", service("web", &[("http", 80), ("admin", 81)]));
    same_as_fresh(&kept, &base(), &state);
    assert_eq!(kept.groups_made(), 1, "the web Service changed: its group only");
    let slice = SliceTest::new("api-1", "api").port("http", 8080).ready("10.0.1.1").ready("10.0.1.2").build();
    replace(&mut state.slices, "api-1", slice);
    let t = same_as_fresh(&kept, &base(), &state);
    assert_eq!(kept.groups_made(), 1, "the api slice changed: its group only");
    assert_eq!(addresses(group(&t.config, "default/api:80")).len(), 2);
    // A Service no Ingress uses changes nothing that is made.
    replace(&mut state.services, "idle", service("idle", &[("http", 8080)]));
    same_as_fresh(&kept, &base(), &state);
    assert_eq!(kept.groups_made(), 0);
    // A second slice of a Service appears: its group is made again with both.
    state.slices.push(SliceTest::new("api-2", "api").port("http", 8080).ready("10.0.1.3").build());
    let t = same_as_fresh(&kept, &base(), &state);
    assert_eq!(kept.groups_made(), 1);
    assert_eq!(addresses(group(&t.config, "default/api:80")).len(), 3);
}

/// Rule: an unchanged Ingress (the same object, the same reading, the same Ingress-wide
/// settings) keeps its routes, and a host whose routes and TLS are all kept is the same `Arc`
/// in the next configuration, so validation and the snapshot see it as one pointer; a changed
/// Ingress's routes and host are made again, and a new endpoint (a new group) changes no route.
#[test]
fn unchanged_ingresses_keep_their_routes_and_hosts() {
    let kept = translator();
    let mut state = two_services();
    let host = |t: &Translation, name: &str| {
        Arc::clone(t.config.virtual_hosts.iter().find(|h| h.name == name).expect("the host"))
    };
    let first = same_as_fresh(&kept, &base(), &state);
    assert_eq!(kept.reused(), (0, 0), "a first translation makes every route and host");
    replace(
        &mut state.ingresses,
        "api",
        IngressTest::new("api").host("b.test").path("/v2", "api", 80).build(),
    );
    let second = same_as_fresh(&kept, &base(), &state);
    assert_eq!(kept.reused(), (1, 1), "web's route and host are kept");
    assert!(Arc::ptr_eq(&host(&first, "a.test"), &host(&second, "a.test")));
    assert!(!Arc::ptr_eq(&host(&first, "b.test"), &host(&second, "b.test")));
    assert_eq!(host(&second, "b.test").routes[0].matcher.path, Some(PathMatch::Prefix("/v2".into())));
    let slice = SliceTest::new("web-1", "web").port("http", 8080).ready("10.0.0.1").ready("10.0.0.9").build();
    replace(&mut state.slices, "web-1", slice);
    let third = same_as_fresh(&kept, &base(), &state);
    assert_eq!(kept.reused(), (2, 2), "a group's endpoints are not in its routes");
    assert_eq!(kept.groups_made(), 1);
    assert!(Arc::ptr_eq(&host(&second, "a.test"), &host(&third, "a.test")));
    // A new Ingress on a host of its own leaves the others' hosts as they were.
    state.ingresses.push(IngressTest::new("new").host("c.test").path("/", "web", 80).build());
    let fourth = same_as_fresh(&kept, &base(), &state);
    assert_eq!(kept.reused(), (2, 2));
    assert!(Arc::ptr_eq(&host(&third, "b.test"), &host(&fourth, "b.test")));
    // Every Ingress written again with a status (as the leader does after serving it): new
    // objects with equal specs keep their routes and hosts.
    for ingress in &mut state.ingresses {
        let mut written = Ingress::clone(ingress);
        written.metadata.resource_version = Some("99".into());
        written.status = Some(k8s_openapi::api::networking::v1::IngressStatus::default());
        *ingress = Arc::new(written);
    }
    let fifth = same_as_fresh(&kept, &base(), &state);
    assert_eq!(kept.reused(), (3, 3), "status writes change no route");
    for name in ["a.test", "b.test", "c.test"] {
        assert!(Arc::ptr_eq(&host(&fourth, name), &host(&fifth, name)), "{name}");
    }
    // An equal spec under other annotations is another reading: made again.
    replace(
        &mut state.ingresses,
        "new",
        IngressTest::new("new")
            .annotation("proxy-body-size", "1m")
            .host("c.test")
            .path("/", "web", 80)
            .build(),
    );
    same_as_fresh(&kept, &base(), &state);
    assert_eq!(kept.reused(), (2, 2));
}

/// Rule: a group's notes (its Service missing, or without the port) come with it from the
/// cache, and go when the Service appears.
#[test]
fn a_missing_service_is_noted_from_the_cache_until_it_appears() {
    let kept = translator();
    let mut state = two_services();
    state.services.retain(|s| s.metadata.name.as_deref() != Some("api"));
    for _ in 0..2 {
        let t = same_as_fresh(&kept, &base(), &state);
        assert!(notes_contain(&t, "Service default/api not found"), "{}", notes(&t));
    }
    assert_eq!(kept.groups_made(), 0);
    state.services.push(service("api", &[("http", 80)]));
    let t = same_as_fresh(&kept, &base(), &state);
    assert!(!notes_contain(&t, "not found"), "{}", notes(&t));
    assert_eq!(kept.groups_made(), 1);
}

/// Every Ingress routing to a Service that is not there is told so in its own notes (its
/// Events), not only the first to name the group.
#[test]
fn every_ingress_naming_a_missing_service_is_told() {
    let kept = translator();
    let mut state = web_state();
    for (name, host) in [("one", "a.test"), ("two", "a.test"), ("three", "c.test")] {
        let path = if name == "two" { "/two" } else { "/" };
        state.ingresses.push(IngressTest::new(name).host(host).path(path, "gone", 80).build());
    }
    for _ in 0..2 {
        let t = same_as_fresh(&kept, &base(), &state);
        for name in ["one", "two", "three"] {
            let told = t.notes.iter().any(|n| {
                n.ingress.as_ref().is_some_and(|i| &*i.name == name)
                    && n.message.contains("Service default/gone not found")
            });
            assert!(told, "{name}: {}", notes(&t));
        }
        let web_told = t
            .notes
            .iter()
            .any(|n| n.ingress.as_ref().is_some_and(|i| &*i.name == "web") && n.message.contains("gone"));
        assert!(!web_told, "{}", notes(&t));
    }
}

/// A certificate that expires between two rebuilds is refused by the second, though nothing
/// changed, with the same note a fresh translator writes (the check kept for the Secret is
/// made as of no time in particular; the expiry is compared on every rebuild).
#[test]
fn a_certificate_that_expires_is_refused_at_the_next_rebuild() {
    let kept = translator();
    let now = crate::tls::now_unix();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["a.test".to_owned()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    // Two seconds of validity: the first translation, made at once, has at least one second to
    // see it valid, even on a slow machine.
    let not_after = now + 2;
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_secs(not_after as u64);
    let cert = params.self_signed(&key).unwrap();
    let mut state = web_state();
    state.ingresses =
        vec![IngressTest::new("web").tls(&["a.test"], "a-tls").host("a.test").path("/", "web", 80).build()];
    state.secrets = vec![tls_secret("a-tls", &cert.pem(), &key.serialize_pem())];
    let t = same_as_fresh(&kept, &tls_base(), &state);
    assert!(t.config.certificates.iter().any(|c| c.name == "default/a-tls"), "{}", notes(&t));
    // Past its not-after (second precision; a bounded wait for the clock, not for readiness).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while crate::tls::now_unix() <= not_after {
        assert!(std::time::Instant::now() < deadline, "the clock did not move");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let t = same_as_fresh(&kept, &tls_base(), &state);
    assert!(!t.config.certificates.iter().any(|c| c.name == "default/a-tls"));
    assert!(notes_contain(&t, "the certificate has expired"), "{}", notes(&t));
}

/// Rule: annotations are read once per distinct annotation set; settings that differ make a
/// group of their own, and an annotation change takes effect on the next rebuild.
#[test]
fn an_annotation_change_is_read_again() {
    let kept = translator();
    let mut state = web_state();
    same_as_fresh(&kept, &base(), &state);
    let timed =
        IngressTest::new("web").host("a.test").path("/", "web", 80).annotation("proxy-read-timeout", "7");
    replace(&mut state.ingresses, "web", timed.build());
    let t = same_as_fresh(&kept, &base(), &state);
    assert_eq!(kept.groups_made(), 1, "other settings, another group");
    let group =
        t.config.backends.iter().find(|b| b.name.starts_with("default/web:80~")).expect("a tuned group");
    assert_eq!(group.timeouts.read_ms, Some(7_000));
}

/// Cross-Ingress facts are worked out on every rebuild from all Ingresses: a host conflict
/// appears when an older Ingress takes the path and goes when it leaves; a canary attaches to
/// the main route and detaches when it goes; a default backend claims `*`.
#[test]
fn conflicts_canaries_and_default_backends_follow_every_change() {
    let kept = translator();
    let mut state = two_services();
    let older = IngressTest::new("older").created(1).host("a.test").path("/", "api", 80).build();
    let web = IngressTest::new("web").created(5).host("a.test").path("/", "web", 80).build();
    replace(&mut state.ingresses, "web", web);
    same_as_fresh(&kept, &base(), &state);
    state.ingresses.push(older);
    let t = same_as_fresh(&kept, &base(), &state);
    assert!(notes_contain(&t, "already served by the older Ingress default/older"), "{}", notes(&t));
    assert_eq!(host(&t.config, "a.test").routes[0].backend.as_deref(), Some("default/api:80"));
    state.ingresses.retain(|i| i.metadata.name.as_deref() != Some("older"));
    let t = same_as_fresh(&kept, &base(), &state);
    assert!(!notes_contain(&t, "already served"), "{}", notes(&t));
    assert_eq!(host(&t.config, "a.test").routes[0].backend.as_deref(), Some("default/web:80"));

    let canary = IngressTest::new("web-canary")
        .annotation("canary", "true")
        .annotation("canary-weight", "50")
        .host("a.test")
        .path("/", "api", 80)
        .build();
    state.ingresses.push(canary);
    let t = same_as_fresh(&kept, &base(), &state);
    let backend = host(&t.config, "a.test").routes[0].backend.clone().unwrap();
    assert!(backend.contains("+canary("), "{backend}");
    state.ingresses.retain(|i| i.metadata.name.as_deref() != Some("web-canary"));
    let t = same_as_fresh(&kept, &base(), &state);
    assert_eq!(host(&t.config, "a.test").routes[0].backend.as_deref(), Some("default/web:80"));

    let fallback = IngressTest::new("fallback").default_backend("api", 80).build();
    state.ingresses.push(fallback);
    let t = same_as_fresh(&kept, &base(), &state);
    assert!(t.config.virtual_hosts.iter().any(|h| h.name == "*"), "{:?}", t.config.virtual_hosts);
    replace(&mut state.services, "api", service("api", &[("http", 8080)]));
    let t = same_as_fresh(&kept, &base(), &state);
    assert!(notes_contain(&t, "has no port 80"), "{}", notes(&t));
}

/// A TLS Secret rotated (a new object with another certificate) serves the new certificate on
/// the next rebuild; a Secret that goes is noted.
#[test]
fn a_rotated_tls_secret_is_served_at_once() {
    let kept = translator();
    let (first, first_key) = self_signed("a.test");
    let (second, second_key) = self_signed("a.test");
    let mut state = web_state();
    state.ingresses =
        vec![IngressTest::new("web").tls(&["a.test"], "a-tls").host("a.test").path("/", "web", 80).build()];
    state.secrets = vec![tls_secret("a-tls", &first, &first_key)];
    let t = same_as_fresh(&kept, &tls_base(), &state);
    let served = |t: &Translation| {
        t.config.certificates.iter().find(|c| c.name == "default/a-tls").and_then(|c| c.cert_pem.clone())
    };
    assert_eq!(served(&t), Some(first));
    let mut rotated = Arc::unwrap_or_clone(tls_secret("a-tls", &second, &second_key));
    rotated.metadata.resource_version = Some("2".into());
    replace(&mut state.secrets, "a-tls", Arc::new(rotated));
    let t = same_as_fresh(&kept, &tls_base(), &state);
    assert_eq!(served(&t), Some(second));
    state.secrets.clear();
    let t = same_as_fresh(&kept, &tls_base(), &state);
    assert_eq!(served(&t), None);
    assert!(notes_contain(&t, "TLS Secret default/a-tls not found"), "{}", notes(&t));
}

/// Not a test: what the cache saves, in this build (`--ignored --nocapture`; build with
/// `--release` for meaningful times). A cluster shaped like `cargo xtask bench reload`'s. The
/// snapshot's side: `proxy::snapshot`'s `measure_compile_with_and_without_sharing`.
#[test]
#[ignore = "a measurement, not a test"]
fn measure_rebuild_with_and_without_the_cache() {
    let size = std::env::var("SLUICE_MEASURE_INGRESSES").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000);
    let rss_start = rss_mib();
    let mut state =
        ClusterState { classes: vec![class("sluice", CONTROLLER, false)], ..ClusterState::default() };
    for i in 0..size {
        let name = format!("s{i}");
        state
            .ingresses
            .push(IngressTest::new(&name).host(&format!("h{i}.test")).path("/", &name, 80).build());
        state.services.push(service(&name, &[("http", 80)]));
        let mut slice = SliceTest::new(&format!("{name}-1"), &name).port("http", 8080);
        for e in 0..10 {
            slice = slice.ready(&format!("10.{}.{}.{e}", i / 250, i % 250));
        }
        state.slices.push(slice.build());
    }
    let base = base();
    let kept = translator();
    let rss_state = rss_mib();
    kept.build(&base, &state).unwrap();
    eprintln!(
        "MEASURE {size} Ingresses: RSS +{:.0} MiB the objects, +{:.0} MiB translated (configuration and caches)",
        rss_state - rss_start,
        rss_mib() - rss_state
    );
    let time = |f: &dyn Fn() -> Translation| {
        let started = std::time::Instant::now();
        let t = f();
        (started.elapsed(), t)
    };
    let rounds = std::env::var("SLUICE_MEASURE_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let fresh_too = std::env::var_os("SLUICE_MEASURE_KEPT_ONLY").is_none();
    for round in 0..rounds {
        state.ingresses.push(
            IngressTest::new(&format!("new{round}"))
                .host(&format!("new{round}.test"))
                .path("/", "s0", 80)
                .build(),
        );
        let (kept_time, incremental) = time(&|| kept.build(&base, &state).unwrap());
        if !fresh_too {
            eprintln!("MEASURE {size} Ingresses: translate kept {kept_time:?}");
            continue;
        }
        let (fresh_time, fresh) = time(&|| translator().build(&base, &state).unwrap());
        assert_eq!(fresh.config, incremental.config);
        let (routes, hosts) = kept.reused();
        eprintln!(
            "MEASURE {size} Ingresses: translate fresh {fresh_time:?}, kept {kept_time:?} ({} groups made, {routes} routes and {hosts} hosts kept)",
            kept.groups_made()
        );
    }
}

/// This process's resident memory (MiB), from /proc.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
    kib.unwrap_or(0.0) / 1024.0
}
