//! The Gateway API, conformance-shaped: the `GATEWAY-HTTP` core tests of
//! kubernetes-sigs/gateway-api (`conformance/tests`, v1.4 line) and the extended features Sluice
//! claims, re-expressed against the `sluice` binary with the fake API server (which serves the
//! Gateway API kinds with list, watch and status) and real sockets. Each test names the
//! conformance tests it covers; docs/GATEWAY.md keeps the table.
//!
//! Backends of one Service share a port on different loopback addresses (127.0.0.2, .3, ...);
//! they answer with their name in `x-backend`.

use std::{collections::BTreeMap, time::Duration};

use lb_tests::{
    backend::{Backend, Echoed, Mode},
    fake_kube::{
        FakeKube,
        objects::{
            GATEWAY_V1, gateway, gateway_class, grpc_route, http_route, ingress, ingress_class, namespace,
            reference_grant, tls_route, tls_secret,
        },
        sluice::{KubeSluice, KubeSluiceOptions},
    },
    http, tls, wait_for,
};
use serde_json::{Value, json};

const CONTROLLER: &str = "sluice.dev/gateway-controller";
const WAIT: Duration = Duration::from_secs(20);

/// Method, host, path, headers, and the expected status and backend.
type Case<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)], (u16, &'a str));

/// The class `sluice`, and the conformance suite's infrastructure namespaces.
fn infrastructure(kube: &FakeKube) {
    kube.apply(gateway_class("sluice", CONTROLLER));
    kube.apply(namespace("gateway-conformance-infra", &[]));
    kube.apply(namespace("gateway-conformance-web-backend", &[("gateway-conformance", "web-backend")]));
    kube.apply(namespace("gateway-conformance-app-backend", &[("gateway-conformance", "backend")]));
}

fn http_listener(name: &str, port: u16, hostname: Option<&str>) -> Value {
    let mut listener = json!({"name": name, "port": port, "protocol": "HTTP"});
    if let Some(hostname) = hostname {
        listener["hostname"] = json!(hostname);
    }
    listener
}

fn backend_ref(name: &str) -> Value {
    json!({"name": name, "port": 8080})
}

/// `GET host/path` through Sluice with extra headers: status and `x-backend` (or the body's
/// first line).
fn ask(sluice: &KubeSluice, method: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    match http::request(sluice.addr, method, host, path, headers) {
        Ok(r) => (r.status, r.header("x-backend").unwrap_or("").to_owned()),
        Err(e) => (0, e.to_string()),
    }
}

/// Waits until an object's condition (at `pointer` into the object, a conditions array) has
/// `type` with `status` and `reason`; returns the object.
fn wait_condition(
    kube: &FakeKube,
    (api_version, kind, ns, name): (&str, &str, &str, &str),
    pointer: &str,
    (type_, status, reason): (&str, &str, &str),
) -> Value {
    wait_for(WAIT, &format!("{kind} {ns}/{name} {pointer} {type_}={status} ({reason})"), || {
        let object = kube.get(api_version, kind, ns, name)?;
        let conditions = object.pointer(pointer)?.as_array()?.clone();
        conditions
            .iter()
            .any(|c| c["type"] == type_ && c["status"] == status && c["reason"] == reason)
            .then_some(object)
    })
    .unwrap_or_else(|e| panic!("{e}: {:#}", kube.get(api_version, kind, ns, name).unwrap_or_default()))
}

/// Waits for a route's condition under its (only) Sluice parent.
fn wait_route_condition(kube: &FakeKube, ns: &str, name: &str, condition: (&str, &str, &str)) -> Value {
    wait_condition(kube, (GATEWAY_V1, "HTTPRoute", ns, name), "/status/parents/0/conditions", condition)
}

fn wait_answer(sluice: &KubeSluice, host: &str, path: &str, expected: (u16, &str)) {
    wait_for(WAIT, &format!("{host}{path} to answer {expected:?}"), || {
        let (status, backend) = ask(sluice, "GET", host, path, &[]);
        (status == expected.0 && backend == expected.1).then_some(())
    })
    .unwrap_or_else(|e| {
        panic!("{e}; last {:?}\n{}", ask(sluice, "GET", host, path, &[]), sluice.child.output())
    });
}

struct Infra {
    kube: FakeKube,
    sluice: KubeSluice,
    backends: Vec<Backend>,
}

/// The fake cluster, Sluice, the infrastructure namespaces and three backends (`infra-
/// backend-v1..v3` in gateway-conformance-infra), and a Gateway `same-namespace` with one HTTP
/// listener on Sluice's port.
fn infra() -> Infra {
    let kube = FakeKube::start().unwrap();
    let sluice = KubeSluice::start(&kube, KubeSluiceOptions::default());
    infrastructure(&kube);
    let backends: Vec<Backend> = (1..=3).map(|i| Backend::with_mode(&format!("v{i}"), Mode::Name)).collect();
    for (i, backend) in backends.iter().enumerate() {
        kube.publish_backend("gateway-conformance-infra", &format!("infra-backend-v{}", i + 1), backend);
    }
    let port = sluice.addr.port();
    kube.apply(gateway(
        "gateway-conformance-infra",
        "same-namespace",
        "sluice",
        json!([http_listener("http", port, None)]),
    ));
    Infra { kube, sluice, backends }
}

fn same_namespace_parent() -> Value {
    json!([{"name": "same-namespace"}])
}

/// HTTPRouteSimpleSameNamespace, GatewayClass Accepted, Gateway Accepted/Programmed with
/// attachedRoutes, and the 404 for what no route takes.
#[test]
fn simple_same_namespace_route_is_served_and_every_status_is_written() {
    let infra = infra();
    let (kube, sluice) = (&infra.kube, &infra.sluice);
    kube.apply(http_route(
        "gateway-conformance-infra",
        "gateway-conformance-infra-test",
        json!({"parentRefs": same_namespace_parent(), "rules": [{"backendRefs": [backend_ref("infra-backend-v1")]}]}),
    ));
    wait_answer(sluice, "any.example", "/", (200, "v1"));
    wait_condition(
        kube,
        (GATEWAY_V1, "GatewayClass", "", "sluice"),
        "/status/conditions",
        ("Accepted", "True", "Accepted"),
    );
    let gw = ("gateway-conformance-infra", "same-namespace");
    let gateway = wait_condition(
        kube,
        (GATEWAY_V1, "Gateway", gw.0, gw.1),
        "/status/conditions",
        ("Programmed", "True", "Programmed"),
    );
    let listener = &gateway["status"]["listeners"][0];
    assert_eq!(listener["name"], "http");
    assert_eq!(
        listener["supportedKinds"],
        json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"},
               {"group": "gateway.networking.k8s.io", "kind": "GRPCRoute"}])
    );
    wait_for(WAIT, "attachedRoutes 1", || {
        let gateway = kube.get(GATEWAY_V1, "Gateway", gw.0, gw.1)?;
        (gateway["status"]["listeners"][0]["attachedRoutes"] == 1).then_some(())
    })
    .unwrap();
    assert_eq!(gateway["status"]["addresses"], json!([{"type": "IPAddress", "value": "192.0.2.1"}]));
    let route = wait_route_condition(
        kube,
        "gateway-conformance-infra",
        "gateway-conformance-infra-test",
        ("Accepted", "True", "Accepted"),
    );
    let parent = &route["status"]["parents"][0];
    assert_eq!(parent["controllerName"], CONTROLLER);
    assert_eq!(parent["parentRef"]["name"], "same-namespace");
    let resolved =
        parent["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "ResolvedRefs").unwrap();
    assert_eq!(
        (resolved["status"].as_str(), resolved["observedGeneration"].as_i64()),
        (Some("True"), Some(1))
    );

    // GatewayObservedGenerationBump / HTTPRouteObservedGenerationBump: a spec change moves
    // observedGeneration, and the status keeps being written only when it changes.
    let mut changed = kube
        .get(GATEWAY_V1, "HTTPRoute", "gateway-conformance-infra", "gateway-conformance-infra-test")
        .unwrap();
    changed["spec"]["rules"][0]["backendRefs"] = json!([backend_ref("infra-backend-v2")]);
    kube.apply(changed);
    wait_answer(sluice, "any.example", "/", (200, "v2"));
    wait_for(WAIT, "observedGeneration 2", || {
        let route =
            kube.get(GATEWAY_V1, "HTTPRoute", "gateway-conformance-infra", "gateway-conformance-infra-test")?;
        route["status"]["parents"][0]["conditions"]
            .as_array()?
            .iter()
            .all(|c| c["observedGeneration"] == 2)
            .then_some(())
    })
    .unwrap();
    let gateway_writes =
        || kube.status_writes().iter().filter(|w| w.path.contains("/gateway.networking.k8s.io/")).count();
    // The count starts after a whole leader round past the route's new status: a write of the
    // same change still in flight (another object's status, in the round after, when the
    // leader's view caught up under load) belongs to the change, not to what follows.
    let renewals = kube.count_requests("PUT", "/leases/sluice-leader");
    wait_for(WAIT, "a Lease renewal after the route's status", || {
        (kube.count_requests("PUT", "/leases/sluice-leader") > renewals).then_some(())
    })
    .unwrap();
    let writes = gateway_writes();
    for _ in 0..10 {
        assert_eq!(ask(sluice, "GET", "any.example", "/", &[]), (200, "v2".to_owned()));
    }
    // A change that Sluice serves (an Ingress for another host) but that leaves every Gateway
    // API status as it is: once it is served, the rebuild that served it has run and the
    // leader has had its round, and no Gateway API status was written again.
    kube.apply(ingress(
        "gateway-conformance-infra",
        "unrelated",
        "sluice",
        "ingress.example",
        "/",
        "infra-backend-v1",
        8080,
    ));
    wait_answer(sluice, "ingress.example", "/", (200, "v1"));
    wait_for(WAIT, "the Ingress status (the leader's round after the change)", || {
        let ingress =
            kube.get("networking.k8s.io/v1", "Ingress", "gateway-conformance-infra", "unrelated")?;
        (ingress["status"]["loadBalancer"]["ingress"][0]["ip"] == "192.0.2.1").then_some(())
    })
    .unwrap();
    // The Gateway API statuses are written after the Ingress status in the same round; the
    // next Lease renewal starts the round after it.
    let renewals = kube.count_requests("PUT", "/leases/sluice-leader");
    wait_for(WAIT, "the next Lease renewal", || {
        (kube.count_requests("PUT", "/leases/sluice-leader") > renewals).then_some(())
    })
    .unwrap();
    assert_eq!(gateway_writes(), writes, "an unchanged state writes no Gateway API status");

    // Status writes (the leader's own, or anyone's) are not changes to serve: no rebuild.
    let counter = |name: &str| sluice.metric(name).unwrap_or_else(|| panic!("no {name}"));
    let translations = counter("sluice_kube_translations_total");
    let status_only = counter("sluice_kube_status_only_changes_total");
    let mut tampered =
        kube.get("networking.k8s.io/v1", "Ingress", "gateway-conformance-infra", "unrelated").unwrap();
    tampered["status"] = json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.99"}]}});
    kube.apply(tampered);
    let mut route = kube
        .get(GATEWAY_V1, "HTTPRoute", "gateway-conformance-infra", "gateway-conformance-infra-test")
        .unwrap();
    route["status"]["parents"].as_array_mut().unwrap().push(
        json!({"parentRef": {"name": "elsewhere"}, "controllerName": "example.com/other", "conditions": []}),
    );
    kube.apply(route);
    wait_for(WAIT, "the leader to write the Ingress status back", || {
        let ingress =
            kube.get("networking.k8s.io/v1", "Ingress", "gateway-conformance-infra", "unrelated")?;
        (ingress["status"]["loadBalancer"]["ingress"][0]["ip"] == "192.0.2.1").then_some(())
    })
    .unwrap();
    wait_for(WAIT, "the three status changes to be seen", || {
        (counter("sluice_kube_status_only_changes_total") >= status_only + 3.0).then_some(())
    })
    .unwrap();
    assert_eq!(counter("sluice_kube_translations_total"), translations, "a status change rebuilt");
    // An annotation is not status: it rebuilds (and here changes what is served).
    let mut annotated =
        kube.get("networking.k8s.io/v1", "Ingress", "gateway-conformance-infra", "unrelated").unwrap();
    annotated["metadata"]["annotations"] =
        json!({"nginx.ingress.kubernetes.io/permanent-redirect": "https://example.org/"});
    kube.apply(annotated);
    wait_for(WAIT, "the annotation served", || {
        (ask(sluice, "GET", "ingress.example", "/", &[]).0 == 301).then_some(())
    })
    .unwrap();
    assert!(counter("sluice_kube_translations_total") > translations);
}

/// HTTPRouteMatching, HTTPRouteMatchingAcrossRoutes, HTTPRouteExactPathMatching,
/// HTTPRoutePathMatchOrder (the parts Sluice's precedence decides), HTTPRouteHeaderMatching,
/// HTTPRouteQueryParamMatching, HTTPRouteMethodMatching, HTTPRouteOmittedBackendRefs.
#[test]
fn matches_and_their_precedence() {
    let infra = infra();
    let (kube, sluice) = (&infra.kube, &infra.sluice);
    let ns = "gateway-conformance-infra";
    kube.apply(http_route(ns, "matching", json!({
        "parentRefs": same_namespace_parent(),
        "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": [backend_ref("infra-backend-v1")]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}, {"headers": [{"name": "version", "value": "two"}]}],
             "backendRefs": [backend_ref("infra-backend-v2")]},
        ],
    })));
    kube.apply(http_route(ns, "matching-part2", json!({
        "parentRefs": same_namespace_parent(),
        "hostnames": ["example.com"],
        "rules": [
            {"matches": [{"path": {"type": "Exact", "value": "/exact"}}], "backendRefs": [backend_ref("infra-backend-v3")]},
            // HTTPRouteOmittedBackendRefs: no backendRefs (or an empty list) answers 500.
            {"matches": [{"path": {"type": "Exact", "value": "/omitted"}}]},
            {"matches": [{"path": {"type": "Exact", "value": "/empty"}}], "backendRefs": []},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/v2"}, "headers": [{"name": "version", "value": "three"}]}],
             "backendRefs": [backend_ref("infra-backend-v3")]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/q"}, "queryParams": [{"name": "animal", "value": "whale"}]}],
             "backendRefs": [backend_ref("infra-backend-v2")]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/q"}, "queryParams": [{"type": "RegularExpression", "name": "color", "value": "bl(ue|ack)"}]}],
             "backendRefs": [backend_ref("infra-backend-v3")]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/m"}, "method": "POST"}], "backendRefs": [backend_ref("infra-backend-v2")]},
            {"matches": [{"path": {"type": "RegularExpression", "value": "/r/[0-9]+"}}], "backendRefs": [backend_ref("infra-backend-v3")]},
        ],
    })));
    wait_answer(sluice, "example.com", "/exact", (200, "v3"));
    let cases: &[Case] = &[
        // HTTPRouteMatching.
        ("GET", "any.example", "/", &[], (200, "v1")),
        ("GET", "any.example", "/example", &[], (200, "v1")),
        ("GET", "any.example", "/v2", &[], (200, "v2")),
        ("GET", "any.example", "/v2/example", &[], (200, "v2")),
        ("GET", "any.example", "/v2example", &[], (200, "v1")),
        ("GET", "any.example", "/", &[("version", "two")], (200, "v2")),
        // Across routes: the more specific host takes its own routes only.
        ("GET", "example.com", "/v2", &[("version", "three")], (200, "v3")),
        ("GET", "example.com", "/exact", &[], (200, "v3")),
        ("GET", "example.com", "/exact/more", &[], (404, "")),
        ("GET", "example.com", "/omitted", &[], (500, "")),
        ("GET", "example.com", "/empty", &[], (500, "")),
        ("GET", "example.com", "/v2", &[], (404, "")),
        // Query parameters: exact, regular expression, the first of a name decides.
        ("GET", "example.com", "/q?animal=whale", &[], (200, "v2")),
        ("GET", "example.com", "/q?animal=dolphin&color=blue", &[], (200, "v3")),
        ("GET", "example.com", "/q?animal=whale&animal=dolphin", &[], (200, "v2")),
        ("GET", "example.com", "/q?animal=dolphin&animal=whale", &[], (404, "")),
        ("GET", "example.com", "/q", &[], (404, "")),
        // Methods.
        ("POST", "example.com", "/m", &[], (200, "v2")),
        ("GET", "example.com", "/m", &[], (404, "")),
        // A RegularExpression path must match the whole path.
        ("GET", "example.com", "/r/42", &[], (200, "v3")),
        ("GET", "example.com", "/r/42/x", &[], (404, "")),
    ];
    for (method, host, path, headers, expected) in cases {
        let got = ask(sluice, method, host, path, headers);
        assert_eq!((got.0, got.1.as_str()), *expected, "{method} {host}{path} {headers:?}");
    }
    // A regular expression that does not compile: that rule is dropped and the route says so;
    // the rest of it still serves.
    kube.apply(http_route(ns, "bad-regex", json!({
        "parentRefs": same_namespace_parent(),
        "hostnames": ["regex.example"],
        "rules": [
            {"matches": [{"path": {"type": "RegularExpression", "value": "/(unclosed"}}], "backendRefs": [backend_ref("infra-backend-v1")]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/ok"}}], "backendRefs": [backend_ref("infra-backend-v2")]},
        ],
    })));
    wait_answer(sluice, "regex.example", "/ok", (200, "v2"));
    let route = wait_route_condition(kube, ns, "bad-regex", ("PartiallyInvalid", "True", "UnsupportedValue"));
    assert!(route.to_string().contains("not a regular expression"), "{route:#}");
    assert_eq!(
        ask(sluice, "GET", "example.com", "/exact", &[]),
        (200, "v3".to_owned()),
        "others keep serving"
    );
}

/// HTTPRouteHostnameIntersection and HTTPRouteListenerHostnameMatching: listeners with
/// hostnames on one port, wildcards of any depth, the more specific name winning.
#[test]
fn listener_and_route_hostnames_intersect() {
    let infra = infra();
    let (kube, sluice) = (&infra.kube, &infra.sluice);
    let ns = "gateway-conformance-infra";
    let port = sluice.addr.port();
    kube.apply(gateway(
        ns,
        "httproute-listener-hostname-matching",
        "sluice",
        json!([
            http_listener("listener-1", port, Some("bar.com")),
            http_listener("listener-2", port, Some("foo.bar.com")),
            http_listener("listener-3", port, Some("*.bar.com")),
            http_listener("listener-4", port, Some("*.foo.com")),
        ]),
    ));
    let parent =
        |section: &str| json!({"name": "httproute-listener-hostname-matching", "sectionName": section});
    kube.apply(http_route(ns, "backend-v1", json!({"parentRefs": [parent("listener-1")], "rules": [{"backendRefs": [backend_ref("infra-backend-v1")]}]})));
    kube.apply(http_route(ns, "backend-v2", json!({"parentRefs": [parent("listener-2")], "rules": [{"backendRefs": [backend_ref("infra-backend-v2")]}]})));
    kube.apply(http_route(ns, "backend-v3", json!({"parentRefs": [parent("listener-3"), parent("listener-4")], "rules": [{"backendRefs": [backend_ref("infra-backend-v3")]}]})));
    wait_answer(sluice, "bar.com", "/", (200, "v1"));
    wait_answer(sluice, "baz.bar.com", "/", (200, "v3"));
    for (host, expected) in [
        ("bar.com", (200, "v1")),
        ("foo.bar.com", (200, "v2")),
        ("baz.bar.com", (200, "v3")),
        ("boo.bar.com", (200, "v3")),
        ("multiple.prefixes.bar.com", (200, "v3")),
        ("multiple.prefixes.foo.com", (200, "v3")),
        ("foo.com", (404, "")),
        ("no.matching.host", (404, "")),
    ] {
        let got = ask(sluice, "GET", host, "/", &[]);
        assert_eq!((got.0, got.1.as_str()), expected, "{host}");
    }
    // HTTPRouteHostnameIntersection: the route's hostnames meet the listener's.
    kube.apply(gateway(
        ns,
        "httproute-hostname-intersection",
        "sluice",
        json!([
            http_listener("listener-1", port, Some("very.specific.com")),
            http_listener("listener-2", port, Some("*.wildcard.io")),
        ]),
    ));
    let parent = json!([{"name": "httproute-hostname-intersection"}]);
    kube.apply(http_route(ns, "specific-host-matches-listener-specific-host", json!({
        "parentRefs": parent, "hostnames": ["non.matching.com", "*.nonmatchingwildcard.io", "very.specific.com"],
        "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/s1"}}], "backendRefs": [backend_ref("infra-backend-v1")]}]})));
    kube.apply(http_route(ns, "wildcard-host-matches-listener-wildcard-host", json!({
        "parentRefs": parent, "hostnames": ["*.wildcard.io"],
        "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/s3"}}], "backendRefs": [backend_ref("infra-backend-v3")]}]})));
    kube.apply(http_route(ns, "no-intersecting-hosts", json!({
        "parentRefs": parent, "hostnames": ["specific.but.wrong.com", "wildcard.io"],
        "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/s5"}}], "backendRefs": [backend_ref("infra-backend-v2")]}]})));
    wait_answer(sluice, "very.specific.com", "/s1", (200, "v1"));
    wait_answer(sluice, "foo.wildcard.io", "/s3", (200, "v3"));
    for (host, path, expected) in [
        ("non.matching.com", "/s1", 404),
        ("foo.nonmatchingwildcard.io", "/s1", 404),
        ("bar.foo.wildcard.io", "/s3", 200),
        ("wildcard.io", "/s3", 404),
        ("specific.but.wrong.com", "/s5", 404),
        ("wildcard.io", "/s5", 404),
    ] {
        assert_eq!(ask(sluice, "GET", host, path, &[]).0, expected, "{host}{path}");
    }
    wait_route_condition(
        kube,
        ns,
        "no-intersecting-hosts",
        ("Accepted", "False", "NoMatchingListenerHostname"),
    );
}

/// HTTPRouteCrossNamespace (Selector), HTTPRouteReferenceGrant, HTTPRouteInvalidCrossNamespace-
/// BackendRef, HTTPRouteInvalidNonExistentBackendRef, HTTPRouteInvalidBackendRefUnknownKind,
/// HTTPRoutePartiallyInvalidViaInvalidReferenceGrant, HTTPRouteInvalidCrossNamespaceParentRef,
/// HTTPRouteInvalidParentRefNotMatchingSectionName, HTTPRouteDisallowedKind.
#[test]
fn references_grants_and_attachment_refusals() {
    let infra = infra();
    let (kube, sluice) = (&infra.kube, &infra.sluice);
    let ns = "gateway-conformance-infra";
    let port = sluice.addr.port();
    let web = Backend::with_mode("web", Mode::Name);
    kube.publish_backend("gateway-conformance-web-backend", "web-backend", &web);
    kube.publish_backend("gateway-conformance-app-backend", "app-backend-v1", &infra.backends[0]);
    kube.apply(gateway(ns, "backend-namespaces", "sluice", json!([{
        "name": "http", "port": port, "protocol": "HTTP", "hostname": "backend.example",
        "allowedRoutes": {"namespaces": {"from": "Selector", "selector": {"matchLabels": {"gateway-conformance": "web-backend"}}}},
    }])));
    // Cross-namespace attachment allowed by the namespace's labels.
    kube.apply(http_route(
        "gateway-conformance-web-backend",
        "cross-namespace",
        json!({
        "parentRefs": [{"name": "backend-namespaces", "namespace": ns}],
        "rules": [{"backendRefs": [backend_ref("web-backend")]}]}),
    ));
    wait_answer(sluice, "backend.example", "/", (200, "web"));
    // ... and refused where the labels do not select (NotAllowedByListeners).
    kube.apply(http_route(
        "gateway-conformance-app-backend",
        "invalid-cross-namespace-parent-ref",
        json!({
        "parentRefs": [{"name": "same-namespace", "namespace": ns}],
        "hostnames": ["parent.example"],
        "rules": [{"backendRefs": [backend_ref("app-backend-v1")]}]}),
    ));
    wait_condition(
        kube,
        (GATEWAY_V1, "HTTPRoute", "gateway-conformance-app-backend", "invalid-cross-namespace-parent-ref"),
        "/status/parents/0/conditions",
        ("Accepted", "False", "NotAllowedByListeners"),
    );
    assert_eq!(ask(sluice, "GET", "parent.example", "/", &[]).0, 404);
    // A sectionName no listener has (NoMatchingParent).
    kube.apply(http_route(
        ns,
        "section-name-mismatch",
        json!({
        "parentRefs": [{"name": "same-namespace", "sectionName": "not-a-listener"}],
        "hostnames": ["section.example"],
        "rules": [{"backendRefs": [backend_ref("infra-backend-v1")]}]}),
    ));
    wait_route_condition(kube, ns, "section-name-mismatch", ("Accepted", "False", "NoMatchingParent"));
    // A listener that takes only another kind (HTTPRouteDisallowedKind, GatewayInvalidRouteKind).
    kube.apply(gateway(
        ns,
        "tlsroutes-only",
        "sluice",
        json!([{
            "name": "http", "port": port, "protocol": "HTTP", "hostname": "kinds.example",
            "allowedRoutes": {"kinds": [{"kind": "TLSRoute"}]},
        }]),
    ));
    kube.apply(http_route(ns, "disallowed-kind", json!({
        "parentRefs": [{"name": "tlsroutes-only"}], "rules": [{"backendRefs": [backend_ref("infra-backend-v1")]}]})));
    wait_route_condition(kube, ns, "disallowed-kind", ("Accepted", "False", "NotAllowedByListeners"));
    let gateway_status = wait_condition(
        kube,
        (GATEWAY_V1, "Gateway", ns, "tlsroutes-only"),
        "/status/listeners/0/conditions",
        ("ResolvedRefs", "False", "InvalidRouteKinds"),
    );
    assert_eq!(gateway_status["status"]["listeners"][0]["supportedKinds"], json!([]));
    assert_eq!(ask(sluice, "GET", "kinds.example", "/", &[]).0, 404);

    // Backend references: to another namespace without a grant, to nothing, to an unknown
    // kind: each rule answers 500 and the route says why; a valid rule of the same route
    // keeps serving (HTTPRoutePartiallyInvalidViaInvalidReferenceGrant).
    kube.apply(http_route(ns, "invalid-backends", json!({
        "parentRefs": same_namespace_parent(),
        "hostnames": ["refs.example"],
        "rules": [
            {"matches": [{"path": {"value": "/cross"}}], "backendRefs": [{"name": "web-backend", "namespace": "gateway-conformance-web-backend", "port": 8080}]},
            {"matches": [{"path": {"value": "/missing"}}], "backendRefs": [backend_ref("nonexistent")]},
            {"matches": [{"path": {"value": "/kind"}}], "backendRefs": [{"group": "unknownkind.example.com", "kind": "NonExistent", "name": "x", "port": 8080}]},
            {"matches": [{"path": {"value": "/valid"}}], "backendRefs": [backend_ref("infra-backend-v1")]},
        ],
    })));
    wait_answer(sluice, "refs.example", "/valid", (200, "v1"));
    for path in ["/cross", "/missing", "/kind"] {
        assert_eq!(ask(sluice, "GET", "refs.example", path, &[]).0, 500, "{path}");
    }
    wait_route_condition(kube, ns, "invalid-backends", ("ResolvedRefs", "False", "RefNotPermitted"));
    wait_route_condition(kube, ns, "invalid-backends", ("Accepted", "True", "Accepted"));
    // The ReferenceGrant lets it through (HTTPRouteReferenceGrant).
    kube.apply(reference_grant(
        "gateway-conformance-web-backend",
        "grant",
        ("HTTPRoute", ns),
        ("Service", "web-backend"),
    ));
    wait_answer(sluice, "refs.example", "/cross", (200, "web"));
    // A grant for another name does not (HTTPRouteInvalidReferenceGrant).
    kube.apply(reference_grant(
        "gateway-conformance-web-backend",
        "grant",
        ("HTTPRoute", ns),
        ("Service", "not-web-backend"),
    ));
    wait_for(WAIT, "/cross back to 500", || {
        (ask(sluice, "GET", "refs.example", "/cross", &[]).0 == 500).then_some(())
    })
    .unwrap();
    // The first unusable reference is the reason; its message names the Service.
    let route =
        wait_route_condition(kube, ns, "invalid-backends", ("ResolvedRefs", "False", "RefNotPermitted"));
    assert!(route.to_string().contains("Service web-backend"), "{route:#}");
}

/// HTTPRouteRequestHeaderModifier, HTTPRouteResponseHeaderModifier, the redirects
/// (HTTPRouteRedirectHostAndStatus, -Path, -Port, -Scheme, 303/307/308), HTTPRouteRewriteHost,
/// HTTPRouteRewritePath, HTTPRouteRequestMirror, -MultipleMirrors, -PercentageMirror, an
/// unsupported filter answering 500, and HTTPRouteWeight.
#[test]
fn filters_redirects_rewrites_mirrors_and_weights() {
    let infra = infra();
    let (kube, sluice) = (&infra.kube, &infra.sluice);
    let ns = "gateway-conformance-infra";
    let echo = Backend::with_mode("echo", Mode::Echo);
    kube.publish_backend(ns, "echo", &echo);
    let mirrors: Vec<Backend> =
        ["mirror-a", "mirror-b", "mirror-c"].iter().map(|n| Backend::with_mode(n, Mode::Name)).collect();
    for mirror in &mirrors {
        kube.publish_backend(ns, mirror.name(), mirror);
    }
    let mirror = |name: &str, share: Value| {
        let mut settings = json!({"backendRef": backend_ref(name)});
        if let Value::Object(share) = share {
            settings.as_object_mut().unwrap().extend(share);
        }
        json!({"type": "RequestMirror", "requestMirror": settings})
    };
    let redirect = |path: &str, settings: Value| json!({"matches": [{"path": {"value": path}}], "filters": [{"type": "RequestRedirect", "requestRedirect": settings}]});
    kube.apply(http_route(ns, "filters", json!({
        "parentRefs": same_namespace_parent(),
        "hostnames": ["filters.example"],
        "rules": [
            {"matches": [{"path": {"value": "/set"}}],
             "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {
                 "set": [{"name": "X-Header-Set", "value": "set-overwrites-values"}],
                 "add": [{"name": "X-Header-Add", "value": "add-appends-values"}],
                 "remove": ["X-Header-Remove"]}},
                 {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"set": [{"name": "X-Response", "value": "yes"}]}}],
             "backendRefs": [backend_ref("echo")]},
            redirect("/host", json!({"hostname": "example.org", "statusCode": 301})),
            redirect("/scheme", json!({"scheme": "https"})),
            redirect("/port", json!({"port": 8083})),
            redirect("/full", json!({"path": {"type": "ReplaceFullPath", "replaceFullPath": "/one"}})),
            redirect("/prefix", json!({"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}, "statusCode": 308})),
            redirect("/see-other", json!({"statusCode": 303})),
            {"matches": [{"path": {"value": "/rewrite"}}],
             "filters": [{"type": "URLRewrite", "urlRewrite": {"hostname": "rewritten.example", "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/prefix"}}}],
             "backendRefs": [backend_ref("echo")]},
            {"matches": [{"path": {"value": "/full-rewrite"}}],
             "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/one"}}}],
             "backendRefs": [backend_ref("echo")]},
            {"matches": [{"path": {"value": "/mirror"}}],
             "filters": [mirror("mirror-a", json!({})), mirror("mirror-b", json!({"percent": 0}))],
             "backendRefs": [backend_ref("infra-backend-v1")]},
            {"matches": [{"path": {"value": "/half"}}],
             "filters": [mirror("mirror-c", json!({"fraction": {"numerator": 1, "denominator": 2}}))],
             "backendRefs": [backend_ref("infra-backend-v1")]},
            {"matches": [{"path": {"value": "/unsupported"}}],
             "filters": [{"type": "ExtensionRef", "extensionRef": {"group": "example.com", "kind": "Thing", "name": "x"}}],
             "backendRefs": [backend_ref("infra-backend-v1")]},
            {"matches": [{"path": {"value": "/weights"}}],
             "backendRefs": [{"name": "infra-backend-v1", "port": 8080, "weight": 70},
                             {"name": "infra-backend-v2", "port": 8080, "weight": 30},
                             {"name": "infra-backend-v3", "port": 8080, "weight": 0}]},
        ],
    })));
    wait_for(WAIT, "the filters route", || {
        http::request(sluice.addr, "GET", "filters.example", "/set", &[]).ok().filter(|r| r.status == 200)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", sluice.child.output()));
    let sent =
        [("X-Header-Set", "some-other-value"), ("X-Header-Add", "something"), ("X-Header-Remove", "val")];
    let response = http::request(sluice.addr, "GET", "filters.example", "/set", &sent).unwrap();
    assert_eq!(response.header("x-response"), Some("yes"));
    let echoed = Echoed::of(&response);
    assert_eq!(echoed.all("x-header-set"), ["set-overwrites-values"]);
    assert_eq!(echoed.all("x-header-add"), ["something", "add-appends-values"]);
    assert_eq!(echoed.header("x-header-remove"), None);

    let location = |path: &str| {
        let r = http::request(sluice.addr, "GET", "filters.example", path, &[]).unwrap();
        (r.status, r.header("location").unwrap_or("").to_owned())
    };
    assert_eq!(location("/host"), (301, "http://example.org/host".to_owned()));
    assert_eq!(location("/scheme"), (302, "https://filters.example/scheme".to_owned()));
    assert_eq!(location("/port"), (302, "http://filters.example:8083/port".to_owned()));
    assert_eq!(location("/full/two?q=1"), (302, "http://filters.example/one".to_owned()));
    assert_eq!(location("/prefix/two"), (308, "http://filters.example/new/two".to_owned()));
    assert_eq!(location("/see-other"), (303, "http://filters.example/see-other".to_owned()));

    let rewritten =
        Echoed::of(&http::request(sluice.addr, "GET", "filters.example", "/rewrite/one?x=1", &[]).unwrap());
    assert_eq!(rewritten.target(), "/prefix/one?x=1");
    assert_eq!(rewritten.header("host"), Some("rewritten.example"));
    let full = Echoed::of(
        &http::request(sluice.addr, "GET", "filters.example", "/full-rewrite/deep?x=1", &[]).unwrap(),
    );
    assert_eq!(full.target(), "/one?x=1");

    // An unsupported filter: its rule answers 500 rather than skip the filter.
    assert_eq!(ask(sluice, "GET", "filters.example", "/unsupported", &[]).0, 500);
    wait_route_condition(kube, ns, "filters", ("PartiallyInvalid", "True", "UnsupportedValue"));

    // Mirrors: every request copied to mirror-a (target, fields and request id as sent to the
    // primary), none to mirror-b (0%), about half to mirror-c; the client's answer is the
    // primary's.
    for i in 0..20 {
        let (status, backend) =
            ask(sluice, "GET", "filters.example", &format!("/mirror/{i}?q=1"), &[("x-trace", "t")]);
        assert_eq!((status, backend.as_str()), (200, "v1"));
    }
    // Every copy is accounted for by outcome, then each must have been sent.
    let outcome = |o: &str| sluice.metric(&format!("sluice_mirrored_requests_total{{outcome=\"{o}\"}}"));
    let outcomes = || ["sent", "failed", "dropped", "body_not_held"].map(|o| outcome(o).unwrap_or(0.0));
    wait_for(WAIT, "20 copies counted", || (outcomes().iter().sum::<f64>() == 20.0).then_some(()))
        .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", outcomes(), sluice.child.output()));
    assert_eq!(outcomes(), [20.0, 0.0, 0.0, 0.0], "sent, failed, dropped, body_not_held");
    assert_eq!(mirrors[0].requests(), 20);
    let sent = r#"sluice_mirrored_requests_total{outcome="sent"}"#;
    assert_eq!(mirrors[1].requests(), 0, "percent 0 copies nothing");
    let heads = mirrors[0].heads();
    assert!(heads.iter().any(|h| h.starts_with("GET /mirror/7?q=1 HTTP/1.1\r\n")), "{heads:?}");
    assert!(
        heads.iter().all(|h| h.contains("\r\nx-trace: t\r\n") && h.contains("\r\nx-request-id: ")),
        "{heads:?}"
    );
    for i in 0..200 {
        assert_eq!(ask(sluice, "GET", "filters.example", &format!("/half/{i}"), &[]).0, 200);
    }
    wait_for(WAIT, "220 copies counted", || {
        let copies = mirrors[2].requests();
        (sluice.metric(sent) == Some(20.0 + copies as f64)).then_some(())
    })
    .unwrap();
    assert!((60..=140).contains(&mirrors[2].requests()), "about half: {}", mirrors[2].requests());
    // A mirror that never answers delays nothing.
    mirrors[0].set_mode(Mode::Hang);
    for _ in 0..5 {
        assert_eq!(ask(sluice, "GET", "filters.example", "/mirror", &[]).0, 200);
    }

    // Weights 70/30/0 over 500 requests.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..500 {
        let (status, backend) = ask(sluice, "GET", "filters.example", "/weights", &[]);
        assert_eq!(status, 200);
        *seen.entry(backend).or_default() += 1;
    }
    assert_eq!(seen.get("v3"), None, "weight 0 gets nothing: {seen:?}");
    let v1 = *seen.get("v1").unwrap_or(&0) as f64 / 500.0;
    assert!((0.6..=0.8).contains(&v1), "v1 near 70%: {seen:?}");
}

/// HTTPS listeners: HTTPRouteHTTPSListener (a route served with the listener's certificate),
/// GatewayInvalidTLSConfiguration, GatewaySecretMissingReferenceGrant,
/// GatewaySecretReferenceGrantSpecific, GatewayListenerUnsupportedProtocol, and a listener on a
/// port the node does not listen on.
#[test]
fn https_listeners_certificates_and_listener_refusals() {
    let kube = FakeKube::start().unwrap();
    let options = KubeSluiceOptions { tls: true, ..KubeSluiceOptions::default() };
    let sluice = KubeSluice::start(&kube, options);
    let tls_port = sluice.tls_addr.unwrap().port();
    infrastructure(&kube);
    let ns = "gateway-conformance-infra";
    let v1 = Backend::with_mode("v1", Mode::Name);
    kube.publish_backend(ns, "infra-backend-v1", &v1);
    let ca = tls::Ca::new("conformance");
    let leaf = ca.leaf(&["example.org", "secure.example"]);
    kube.apply(tls_secret(ns, "tls-validity-checks-certificate", &leaf.cert, &leaf.key));
    kube.apply(tls_secret("gateway-conformance-web-backend", "certificate", &leaf.cert, &leaf.key));
    let https = |name: &str, hostname: &str, secret: Value| {
        json!({"name": name, "port": tls_port, "protocol": "HTTPS", "hostname": hostname,
               "tls": {"certificateRefs": [secret]}, "allowedRoutes": {"namespaces": {"from": "All"}}})
    };
    kube.apply(gateway(ns, "gateway-https", "sluice", json!([
        https("https", "example.org", json!({"name": "tls-validity-checks-certificate"})),
        https("missing", "missing.example", json!({"name": "does-not-exist"})),
        https("not-a-secret", "kind.example", json!({"group": "example.com", "kind": "Thing", "name": "x"})),
        https("cross", "secure.example", json!({"name": "certificate", "namespace": "gateway-conformance-web-backend"})),
        // The conformance test's own unsupported protocol (TCP and UDP are served since issue #22).
        {"name": "invalid", "port": 1111, "protocol": "INVALID"},
        {"name": "elsewhere", "port": 1, "protocol": "HTTP"},
        {"name": "plain", "port": sluice.addr.port(), "protocol": "HTTP", "hostname": "example.org"},
    ])));
    kube.apply(http_route(
        ns,
        "https-route",
        json!({
        "parentRefs": [{"name": "gateway-https", "sectionName": "https"}, {"name": "gateway-https", "sectionName": "cross"}],
        "hostnames": ["example.org", "secure.example"],
        "rules": [{"backendRefs": [backend_ref("infra-backend-v1")]}]}),
    ));
    // The usual companion: plain HTTP for the same host redirected to HTTPS.
    kube.apply(http_route(
        ns,
        "to-https",
        json!({
        "parentRefs": [{"name": "gateway-https", "sectionName": "plain"}], "hostnames": ["example.org"],
        "rules": [{"filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 301}}]}]}),
    ));
    let config = tls::client_config(tls::ClientOptions { trust: Some(&ca), ..Default::default() });
    let get_tls = |host: &str| -> anyhow::Result<u16> {
        let stream = tls::connect(sluice.tls_addr.unwrap(), Some(host), &config)?;
        let mut client = http::Client::new(stream);
        Ok(client.get(host, "/").status)
    };
    wait_for(WAIT, "HTTPS example.org", || get_tls("example.org").ok().filter(|s| *s == 200))
        .unwrap_or_else(|e| panic!("{e}\n{}", sluice.child.output()));
    let gw = (GATEWAY_V1, "Gateway", ns, "gateway-https");
    let listener = |i: usize| format!("/status/listeners/{i}/conditions");
    wait_condition(&kube, gw, &listener(0), ("Programmed", "True", "Programmed"));
    wait_condition(&kube, gw, &listener(1), ("ResolvedRefs", "False", "InvalidCertificateRef"));
    wait_condition(&kube, gw, &listener(2), ("ResolvedRefs", "False", "InvalidCertificateRef"));
    wait_condition(&kube, gw, &listener(3), ("ResolvedRefs", "False", "RefNotPermitted"));
    wait_condition(&kube, gw, &listener(4), ("Accepted", "False", "UnsupportedProtocol"));
    wait_condition(&kube, gw, &listener(5), ("Accepted", "False", "PortUnavailable"));
    wait_condition(&kube, gw, "/status/conditions", ("Accepted", "True", "ListenersNotValid"));
    assert!(get_tls("secure.example").is_err(), "no certificate for the refused listener's host");
    // The grant makes the cross-namespace certificate usable.
    kube.apply(reference_grant(
        "gateway-conformance-web-backend",
        "certs",
        ("Gateway", ns),
        ("Secret", "certificate"),
    ));
    wait_condition(&kube, gw, &listener(3), ("ResolvedRefs", "True", "ResolvedRefs"));
    wait_for(WAIT, "HTTPS secure.example", || get_tls("secure.example").ok().filter(|s| *s == 200)).unwrap();
    // Each route answers on its own listeners' ports only (GatewayHTTPListenerIsolation across
    // ports): the HTTPS route is not served in plain text, the redirect not over TLS.
    let plain = wait_for(WAIT, "the plain listener's redirect", || {
        let response = http::request(sluice.addr, "GET", "example.org", "/a?b", &[]).ok()?;
        (response.status == 301).then_some(response)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", sluice.child.output()));
    assert_eq!(plain.header("location"), Some("https://example.org/a?b"));
    assert_eq!(get_tls("example.org").unwrap(), 200, "TLS still reaches the backend");
    assert_eq!(ask(&sluice, "GET", "secure.example", "/", &[]).0, 404, "HTTPS-only host in plain text");
    drop(v1);
}

/// A cluster without the Gateway API's CRDs: Ingresses are served, a log line says so, and
/// Gateways are served once the CRDs appear. An Ingress and an HTTPRoute for the same host
/// share it; the Ingress keeps a match both claim.
#[test]
fn missing_crds_and_coexistence_with_ingresses() {
    let kube = FakeKube::start().unwrap();
    kube.uninstall_gateway_api();
    let backends: Vec<Backend> =
        ["ingress", "route"].iter().map(|n| Backend::with_mode(n, Mode::Name)).collect();
    kube.apply(ingress_class("sluice", "sluice.dev/ingress-controller", false));
    kube.publish_backend("default", "ingress-svc", &backends[0]);
    kube.publish_backend("default", "route-svc", &backends[1]);
    kube.apply(ingress("default", "web", "sluice", "shared.example", "/", "ingress-svc", 8080));
    let sluice = KubeSluice::start(&kube, KubeSluiceOptions::default());
    sluice.wait_for_backend("shared.example", "/", "ingress", WAIT);
    sluice.wait_for_log(&["Gateway API CRDs are not installed"], WAIT);

    kube.install_gateway_api();
    kube.apply(gateway_class("sluice", CONTROLLER));
    kube.apply(namespace("default", &[]));
    kube.apply(gateway("default", "gw", "sluice", json!([http_listener("http", sluice.addr.port(), None)])));
    kube.apply(http_route(
        "default",
        "route",
        json!({
        "parentRefs": [{"name": "gw"}], "hostnames": ["shared.example"],
        "rules": [
            {"matches": [{"path": {"value": "/"}}], "backendRefs": [backend_ref("route-svc")]},
            {"matches": [{"path": {"value": "/api"}}], "backendRefs": [backend_ref("route-svc")]},
        ]}),
    ));
    // The watchers retry with their backoff (at most 8 s) and find the CRDs.
    wait_for(Duration::from_secs(30), "the route's /api", || {
        (sluice.answer("shared.example", "/api").ok()? == "route").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", sluice.child.output()));
    assert_eq!(
        sluice.answer("shared.example", "/"),
        Ok("ingress".to_owned()),
        "the Ingress keeps the match it claimed first"
    );
    sluice.wait_for_log(&["HTTPRoute/route", "already served by the older Ingress default/web"], WAIT);
}

/// A gRPC-shaped call over h2c (prior knowledge, as gRPC clients speak cleartext): `POST path`
/// with `content-type: application/grpc` and one empty message. Status, the backend's name,
/// the HTTP version the backend saw, and the body (the request head for `Mode::Echo`).
fn grpc_call(
    addr: std::net::SocketAddr,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String, String) {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let call = async {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
            tokio::spawn(connection);
            let mut request = ::http::Request::post(format!("http://{authority}{path}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers");
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let message = bytes::Bytes::from_static(&[0, 0, 0, 0, 0]);
            let response = sender.send_request(request.body(Full::new(message))?).await?;
            let status = response.status().as_u16();
            let header = |name: &str| {
                response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
            };
            let (backend, version) = (header("x-backend"), header("x-version"));
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, backend, version, String::from_utf8_lossy(&body).into_owned()))
        };
        match tokio::time::timeout(Duration::from_secs(5), call).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => (0, e.to_string(), String::new(), String::new()),
            Err(_) => (0, "timed out".into(), String::new(), String::new()),
        }
    })
}

/// GRPCExactMethodMatching, GRPCRouteHeaderMatching, GRPCRouteListenerHostnameMatching (the
/// route's hostnames), GRPCRouteRequestHeaderModifier, and the GRPCRoute/HTTPRoute hostname
/// rule: calls over h2c reach HTTP/2 backends by service and method, an unknown method is 404
/// (gRPC's UNIMPLEMENTED), and the younger of an HTTPRoute and a GRPCRoute sharing a hostname
/// is not accepted.
#[test]
fn grpc_routes_match_methods_headers_and_hostnames() {
    let Infra { kube, sluice, backends } = infra();
    let kube = &kube;
    let ns = "gateway-conformance-infra";
    let echo = Backend::with_mode("echo", Mode::Echo);
    kube.publish_backend(ns, "echo", &echo);
    let service = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho";
    let method = |name: &str| json!({"method": {"service": service, "method": name}});
    kube.apply(grpc_route(
        ns,
        "exact-matching",
        json!({"parentRefs": same_namespace_parent(), "hostnames": ["grpc.example"], "rules": [
            {"matches": [method("Echo")], "backendRefs": [backend_ref("infra-backend-v1")]},
            {"matches": [method("EchoTwo")], "backendRefs": [backend_ref("infra-backend-v2")]},
            {"matches": [{"method": {"service": service, "method": "EchoFour"},
                          "headers": [{"name": "version", "value": "two"}]}],
             "backendRefs": [backend_ref("infra-backend-v3")]},
            {"matches": [{"method": {"type": "RegularExpression", "service": "grpc\\.health\\..*"}}],
             "filters": [{"type": "RequestHeaderModifier",
                          "requestHeaderModifier": {"set": [{"name": "x-filter", "value": "grpc"}]}}],
             "backendRefs": [backend_ref("echo")]},
        ]}),
    ));
    wait_route_condition_of(kube, "GRPCRoute", ns, "exact-matching", ("Accepted", "True", "Accepted"));
    let call =
        |host: &str, path: String, headers: &[(&str, &str)]| grpc_call(sluice.addr, host, &path, headers);
    let path = |name: &str| format!("/{service}/{name}");
    wait_for(WAIT, "the GRPCRoute served", || {
        (call("grpc.example", path("Echo"), &[]).1 == "v1").then_some(())
    })
    .unwrap_or_else(|e| {
        panic!("{e}: {:?}\n{}", call("grpc.example", path("Echo"), &[]), sluice.child.output())
    });
    let (status, backend, version, _) = call("grpc.example", path("Echo"), &[]);
    assert_eq!((status, backend.as_str(), version.as_str()), (200, "v1", "HTTP/2.0"), "Echo: HTTP/2 to v1");
    assert_eq!(call("grpc.example", path("EchoTwo"), &[]).1, "v2");
    assert_eq!(call("grpc.example", path("EchoThree"), &[]).0, 404, "no rule: UNIMPLEMENTED");
    assert_eq!(call("grpc.example", path("EchoFour"), &[("version", "two")]).1, "v3");
    assert_eq!(call("grpc.example", path("EchoFour"), &[("version", "one")]).0, 404, "header must match");
    assert_eq!(call("other.example", path("Echo"), &[]).0, 404, "the route's hostnames only");
    let (status, _, _, head) = call("grpc.example", "/grpc.health.v1.Health/Check".into(), &[]);
    assert_eq!(status, 200, "{head}");
    assert!(head.starts_with("POST /grpc.health.v1.Health/Check HTTP/2.0"), "{head}");
    assert!(head.contains("x-filter: grpc\r\n"), "RequestHeaderModifier: {head}");
    assert!(head.contains("content-type: application/grpc\r\n"), "{head}");
    // A younger HTTPRoute naming the same hostname on that listener is not accepted, and does
    // not take the GRPCRoute's requests.
    kube.apply(http_route(
        ns,
        "same-host",
        json!({"parentRefs": same_namespace_parent(), "hostnames": ["grpc.example"],
               "rules": [{"backendRefs": [backend_ref("infra-backend-v3")]}]}),
    ));
    wait_route_condition(kube, ns, "same-host", ("Accepted", "False", "NotAllowedByListeners"));
    assert_eq!(ask(&sluice, "GET", "grpc.example", "/", &[]).0, 404, "the HTTPRoute is not served");
    assert_eq!(call("grpc.example", path("Echo"), &[]).1, "v1");
    drop((backends, echo));
}

/// Waits for a route's condition (any kind) under its (only) Sluice parent.
fn wait_route_condition_of(
    kube: &FakeKube,
    kind: &str,
    ns: &str,
    name: &str,
    condition: (&str, &str, &str),
) -> Value {
    wait_condition(kube, (GATEWAY_V1, kind, ns, name), "/status/parents/0/conditions", condition)
}

/// TLSRouteSimpleSameNamespace, TLSRouteHostnameIntersection, TLSRouteInvalidBackendRef-
/// Nonexistent, TLSRouteListenerTerminateNotSupported, TLSRouteListenerPassthroughSupported-
/// Kinds, and an HTTPS and a TLS passthrough listener sharing the node's TLS port: the client's
/// TLS reaches the backend untouched (its certificate, its answer), by SNI.
#[test]
fn tls_routes_pass_through_by_sni() {
    let kube = FakeKube::start().unwrap();
    let options = KubeSluiceOptions { tls: true, ..KubeSluiceOptions::default() };
    let sluice = KubeSluice::start(&kube, options);
    let tls_addr = sluice.tls_addr.unwrap();
    infrastructure(&kube);
    let ns = "gateway-conformance-infra";
    let backend_ca = tls::Ca::new("backend");
    let backend_leaf = backend_ca.leaf(&["abc.example.com", "def.example.com"]);
    let pass = Backend::with_tls("tls-backend", tls::server_config(&backend_leaf));
    kube.publish_backend(ns, "tls-backend", &pass);
    let v1 = Backend::with_mode("v1", Mode::Name);
    kube.publish_backend(ns, "infra-backend-v1", &v1);
    let gateway_ca = tls::Ca::new("gateway");
    let gateway_leaf = gateway_ca.leaf(&["https.example.com"]);
    kube.apply(tls_secret(ns, "https-certificate", &gateway_leaf.cert, &gateway_leaf.key));
    kube.apply(gateway(ns, "gateway-tlsroute", "sluice", json!([
        {"name": "https", "port": tls_addr.port(), "protocol": "TLS", "hostname": "*.example.com",
         "allowedRoutes": {"namespaces": {"from": "Same"}, "kinds": [{"kind": "TCPRoute"}, {"kind": "TLSRoute"}]},
         "tls": {"mode": "Passthrough"}},
        {"name": "terminate", "port": tls_addr.port(), "protocol": "TLS", "hostname": "t.example.org",
         "tls": {"mode": "Terminate", "certificateRefs": [{"name": "https-certificate"}]}},
        {"name": "web", "port": tls_addr.port(), "protocol": "HTTPS", "hostname": "https.example.com",
         "tls": {"certificateRefs": [{"name": "https-certificate"}]}},
    ])));
    kube.apply(tls_route(
        ns,
        "gateway-conformance-infra-test",
        json!({"parentRefs": [{"name": "gateway-tlsroute", "sectionName": "https"}],
               "hostnames": ["abc.example.com", "abc.example.net"],
               "rules": [{"backendRefs": [{"name": "tls-backend", "port": 8080}]}]}),
    ));
    kube.apply(tls_route(
        ns,
        "nonexistent-backend",
        json!({"parentRefs": [{"name": "gateway-tlsroute", "sectionName": "https"}], "hostnames": ["def.example.com"],
               "rules": [{"backendRefs": [{"name": "does-not-exist", "port": 8080}]}]}),
    ));
    kube.apply(http_route(
        ns,
        "https-route",
        json!({"parentRefs": [{"name": "gateway-tlsroute", "sectionName": "web"}],
               "rules": [{"backendRefs": [backend_ref("infra-backend-v1")]}]}),
    ));
    let trust_backend =
        tls::client_config(tls::ClientOptions { trust: Some(&backend_ca), ..Default::default() });
    let trust_gateway =
        tls::client_config(tls::ClientOptions { trust: Some(&gateway_ca), ..Default::default() });
    let get = |sni: &str,
               config: &std::sync::Arc<rustls::ClientConfig>|
     -> anyhow::Result<(u16, String, Vec<u8>)> {
        let stream = tls::connect(tls_addr, Some(sni), config)?;
        let certificate = tls::served_certificate(&stream);
        let mut client = http::Client::new(stream);
        let response = client.get(sni, "/");
        Ok((response.status, response.header("x-backend").unwrap_or("").to_owned(), certificate))
    };
    let passed =
        wait_for(WAIT, "abc.example.com passed through", || get("abc.example.com", &trust_backend).ok())
            .unwrap_or_else(|e| {
                let last = get("abc.example.com", &trust_backend).map(|r| (r.0, r.1));
                let route = kube.get(GATEWAY_V1, "TLSRoute", ns, "gateway-conformance-infra-test");
                panic!("{e}: last {last:?}\n{route:#?}\n{}", sluice.child.output())
            });
    assert_eq!((passed.0, passed.1.as_str()), (200, "tls-backend"), "the backend answered");
    assert_eq!(passed.2, backend_leaf.der(), "the backend's own certificate: TLS was not terminated");
    assert!(pass.connections() >= 1);
    // The HTTPS listener on the same port terminates with its certificate.
    let (status, backend, certificate) = get("https.example.com", &trust_gateway).unwrap();
    assert_eq!((status, backend.as_str()), (200, "v1"));
    assert_eq!(certificate, gateway_leaf.der());
    let gw = (GATEWAY_V1, "Gateway", ns, "gateway-tlsroute");
    let status = wait_condition(
        &kube,
        gw,
        "/status/listeners/0/conditions",
        ("ResolvedRefs", "False", "InvalidRouteKinds"),
    );
    assert_eq!(
        status["status"]["listeners"][0]["supportedKinds"],
        json!([{"group": "gateway.networking.k8s.io", "kind": "TLSRoute"}])
    );
    wait_condition(&kube, gw, "/status/listeners/1/conditions", ("Accepted", "False", "UnsupportedValue"));
    wait_condition(&kube, gw, "/status/listeners/2/conditions", ("Programmed", "True", "Programmed"));
    wait_route_condition_of(
        &kube,
        "TLSRoute",
        ns,
        "gateway-conformance-infra-test",
        ("Accepted", "True", "Accepted"),
    );
    wait_route_condition_of(
        &kube,
        "TLSRoute",
        ns,
        "nonexistent-backend",
        ("ResolvedRefs", "False", "BackendNotFound"),
    );
    // No passthrough for the broken route's host, nor for a name outside the listener's.
    assert!(get("def.example.com", &trust_backend).is_err(), "def.example.com has no backend");
    assert!(get("abc.example.net", &trust_backend).is_err(), "abc.example.net is outside *.example.com");
    drop(v1);
}

/// sessionPersistence (experimental channel): a cookie pins a client to one of a rule's two
/// backends, a `Permanent` cookie carries the absolute timeout as Max-Age, and a `Header` one
/// carries the token in that header of responses and requests.
#[test]
fn session_persistence_by_cookie_and_header() {
    let Infra { kube, sluice, backends } = infra();
    let ns = "gateway-conformance-infra";
    let two = json!([backend_ref("infra-backend-v1"), backend_ref("infra-backend-v2")]);
    kube.apply(http_route(
        ns,
        "sessions",
        json!({"parentRefs": same_namespace_parent(), "hostnames": ["sessions.example"], "rules": [
            {"matches": [{"path": {"value": "/cookie"}}], "backendRefs": two,
             "sessionPersistence": {"type": "Cookie", "absoluteTimeout": "10m",
                                    "cookie": {"name": "pin", "lifetimeType": "Permanent"}}},
            {"matches": [{"path": {"value": "/header"}}], "backendRefs": two,
             "sessionPersistence": {"type": "Header", "header": {"name": "x-session"}}},
        ]}),
    ));
    wait_route_condition(&kube, ns, "sessions", ("Accepted", "True", "Accepted"));
    let get = |path: &str, headers: &[(&str, &str)]| {
        http::request(sluice.addr, "GET", "sessions.example", path, headers).expect("a response")
    };
    let first = wait_for(WAIT, "the cookie route", || Some(get("/cookie", &[])).filter(|r| r.status == 200))
        .unwrap_or_else(|e| panic!("{e}\n{}", sluice.child.output()));
    let set_cookie = first.header("set-cookie").expect("a session cookie").to_owned();
    assert!(set_cookie.starts_with("pin=") && set_cookie.contains("Max-Age=600"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let pinned = first.header("x-backend").unwrap().to_owned();
    for _ in 0..20 {
        let r = get("/cookie", &[("cookie", &cookie)]);
        assert_eq!(r.header("x-backend"), Some(pinned.as_str()), "the cookie pins");
        assert_eq!(r.header("set-cookie"), None, "a valid cookie is not issued again");
    }
    // Without the cookie both backends are used.
    let unpinned: std::collections::BTreeSet<String> =
        (0..20).map(|_| get("/cookie", &[]).header("x-backend").unwrap().to_owned()).collect();
    assert_eq!(unpinned.len(), 2, "{unpinned:?}");

    let first = get("/header", &[]);
    let token = first.header("x-session").expect("the session header").to_owned();
    assert_eq!(first.header("set-cookie"), None, "a header session sets no cookie");
    let pinned = first.header("x-backend").unwrap().to_owned();
    for _ in 0..20 {
        assert_eq!(get("/header", &[("x-session", &token)]).header("x-backend"), Some(pinned.as_str()));
    }
    drop(backends);
}
