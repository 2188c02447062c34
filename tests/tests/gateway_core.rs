//! The rest of the `GATEWAY-HTTP` core profile of kubernetes-sigs/gateway-api's conformance
//! suite (`conformance/tests`, v1.5 line), re-expressed as tests/tests/gateway.rs does: the
//! `sluice` binary, the fake API server and real sockets. Each test names the conformance tests
//! it covers and follows their manifests; where Sluice's model needs another shape (every
//! Gateway shares the node's ports, so two Gateways are told apart by port or hostname), the
//! test says so. docs/GATEWAY.md keeps the table.
//!
//! Backends answer with their name in `x-backend`.

use std::{net::SocketAddr, time::Duration};

use lb_tests::{
    backend::{Backend, Mode},
    fake_kube::{
        FakeKube,
        objects::{GATEWAY_V1, gateway, gateway_class, http_route, namespace, reference_grant, tls_secret},
        sluice::{KubeSluice, KubeSluiceOptions},
    },
    free_port, http, tls, wait_for,
};
use serde_json::{Value, json};

const CONTROLLER: &str = "sluice.dev/gateway-controller";
const WAIT: Duration = Duration::from_secs(20);
const NS: &str = "gateway-conformance-infra";
const WEB_BACKEND: &str = "gateway-conformance-web-backend";

/// The class `sluice`, the conformance suite's namespaces (with the
/// `kubernetes.io/metadata.name` label the API server gives every namespace) and the backends
/// `infra-backend-v1..v3`.
fn infrastructure(kube: &FakeKube) -> Vec<Backend> {
    kube.apply(gateway_class("sluice", CONTROLLER));
    for (name, label) in
        [(NS, "infra"), (WEB_BACKEND, "web-backend"), ("gateway-conformance-app-backend", "backend")]
    {
        kube.apply(namespace(name, &[("gateway-conformance", label), ("kubernetes.io/metadata.name", name)]));
    }
    let backends: Vec<Backend> = (1..=3).map(|i| Backend::with_mode(&format!("v{i}"), Mode::Name)).collect();
    for (i, backend) in backends.iter().enumerate() {
        kube.publish_backend(NS, &format!("infra-backend-v{}", i + 1), backend);
    }
    backends
}

fn http_listener(name: &str, port: u16, hostname: Option<&str>) -> Value {
    let mut listener = json!({"name": name, "port": port, "protocol": "HTTP"});
    listener["allowedRoutes"] = json!({"namespaces": {"from": "All"}});
    if let Some(hostname) = hostname {
        listener["hostname"] = json!(hostname);
    }
    listener
}

/// An HTTPS listener terminating with Secret `secret` (`namespace/name` or `name`).
fn https_listener(name: &str, port: u16, hostname: Option<&str>, secret: &str) -> Value {
    let reference = match secret.split_once('/') {
        Some((namespace, name)) => {
            json!({"group": "", "kind": "Secret", "name": name, "namespace": namespace})
        }
        None => json!({"group": "", "kind": "Secret", "name": secret}),
    };
    let mut listener = json!({"name": name, "port": port, "protocol": "HTTPS",
        "allowedRoutes": {"namespaces": {"from": "All"}}, "tls": {"certificateRefs": [reference]}});
    if let Some(hostname) = hostname {
        listener["hostname"] = json!(hostname);
    }
    listener
}

fn backend_ref(name: &str) -> Value {
    json!({"name": name, "port": 8080})
}

/// A rule sending one path match (`Exact`, `PathPrefix`) to `backend`.
fn rule(type_: &str, path: &str, backend: &str) -> Value {
    json!({"matches": [{"path": {"type": type_, "value": path}}], "backendRefs": [backend_ref(backend)]})
}

/// A route with one rule to `backend` under these parents.
fn route_to(name: &str, parents: Value, backend: &str) -> Value {
    http_route(NS, name, json!({"parentRefs": parents, "rules": [{"backendRefs": [backend_ref(backend)]}]}))
}

/// `GET host/path` at `addr`: status and `x-backend` (or the error).
fn ask(addr: SocketAddr, host: &str, path: &str) -> (u16, String) {
    match http::request(addr, "GET", host, path, &[]) {
        Ok(r) => (r.status, r.header("x-backend").unwrap_or("").to_owned()),
        Err(e) => (0, e.to_string()),
    }
}

fn wait_answer(sluice: &KubeSluice, addr: SocketAddr, host: &str, path: &str, expected: (u16, &str)) {
    wait_for(WAIT, &format!("{host}{path} at {addr} to answer {expected:?}"), || {
        let (status, backend) = ask(addr, host, path);
        (status == expected.0 && backend == expected.1).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}; last {:?}\n{}", ask(addr, host, path), sluice.child.output()));
}

/// `GET host/` over TLS with SNI `host`, trusting `ca`: status and `x-backend`.
fn ask_tls(addr: SocketAddr, host: &str, ca: &tls::Ca) -> anyhow::Result<(u16, String)> {
    let config = tls::client_config(tls::ClientOptions { trust: Some(ca), ..Default::default() });
    let stream = tls::connect(addr, Some(host), &config)?;
    let response = http::Client::new(stream).request("GET", host, "/", &[], true)?;
    Ok((response.status, response.header("x-backend").unwrap_or("").to_owned()))
}

type ObjectRef<'a> = (&'a str, &'a str, &'a str);

fn get(kube: &FakeKube, (kind, ns, name): ObjectRef<'_>) -> Option<Value> {
    kube.get(GATEWAY_V1, kind, ns, name)
}

/// Whether `conditions` has `type` with `status` and `reason` (`""`: any reason).
fn has_condition(conditions: &Value, (type_, status, reason): (&str, &str, &str)) -> bool {
    conditions.as_array().is_some_and(|all| {
        all.iter().any(|c| {
            c["type"] == type_ && c["status"] == status && (reason.is_empty() || c["reason"] == reason)
        })
    })
}

/// Whether every condition of the object (its own and its listeners') carries its current
/// generation, and it has some: the conformance suite's `...MustHaveLatestConditions`.
fn latest(object: &Value) -> bool {
    let generation = &object["metadata"]["generation"];
    let mut lists = vec![&object["status"]["conditions"]];
    lists.extend(object["status"]["listeners"].as_array().into_iter().flatten().map(|l| &l["conditions"]));
    !object["status"]["conditions"].as_array().is_none_or(Vec::is_empty)
        && lists
            .iter()
            .all(|list| list.as_array().into_iter().flatten().all(|c| &c["observedGeneration"] == generation))
}

/// Waits until the object's own conditions are latest and have `condition`; returns it.
fn wait_condition(kube: &FakeKube, object: ObjectRef<'_>, condition: (&str, &str, &str)) -> Value {
    wait_for(WAIT, &format!("{object:?} {condition:?} at its generation"), || {
        get(kube, object).filter(|o| latest(o) && has_condition(&o["status"]["conditions"], condition))
    })
    .unwrap_or_else(|e| panic!("{e}: {:#}", get(kube, object).unwrap_or_default()))
}

/// Waits until the route's status entry for Gateway `gateway` (of this controller) has
/// `condition` at the route's generation.
fn wait_route_parent(kube: &FakeKube, route: &str, gateway: &str, condition: (&str, &str, &str)) -> Value {
    let object = ("HTTPRoute", NS, route);
    wait_for(WAIT, &format!("HTTPRoute {route} under {gateway}: {condition:?}"), || {
        let route = get(kube, object)?;
        let parent = route["status"]["parents"].as_array()?.iter().find(|p| {
            p["parentRef"]["name"] == gateway
                && p["controllerName"] == CONTROLLER
                && p["parentRef"]["group"] == "gateway.networking.k8s.io"
                && p["parentRef"]["kind"] == "Gateway"
        })?;
        let generation = &route["metadata"]["generation"];
        let conditions = parent["conditions"].as_array()?;
        (conditions.iter().all(|c| &c["observedGeneration"] == generation)
            && has_condition(&parent["conditions"], condition))
        .then_some(route.clone())
    })
    .unwrap_or_else(|e| panic!("{e}: {:#}", get(kube, object).unwrap_or_default()))
}

/// One listener's expected status, as the conformance suite's `GatewayStatusMustHaveListeners`
/// compares it: HTTPRoute among its supportedKinds, its attachedRoutes, these conditions
/// (`""`: any reason).
struct ListenerExpect<'a> {
    name: &'a str,
    attached: u64,
    conditions: &'a [(&'a str, &'a str, &'a str)],
}

/// Waits until the Gateway's conditions are latest and its listeners are exactly `expected`.
fn wait_listeners(kube: &FakeKube, name: &str, expected: &[ListenerExpect<'_>]) -> Value {
    let object = ("Gateway", NS, name);
    let matches = |gateway: &Value| {
        let listeners = gateway["status"]["listeners"].as_array()?;
        (latest(gateway)
            && listeners.len() == expected.len()
            && expected.iter().all(|e| {
                listeners.iter().any(|l| {
                    l["name"] == e.name
                        && l["attachedRoutes"] == e.attached
                        && l["supportedKinds"].as_array().is_some_and(|kinds| {
                            kinds.iter().any(|k| {
                                k["group"] == "gateway.networking.k8s.io" && k["kind"] == "HTTPRoute"
                            })
                        })
                        && e.conditions.iter().all(|c| has_condition(&l["conditions"], *c))
                })
            }))
        .then_some(())
    };
    wait_for(WAIT, &format!("Gateway {name}'s listeners"), || {
        get(kube, object).filter(|g| matches(g).is_some())
    })
    .unwrap_or_else(|e| panic!("{e}: {:#}", get(kube, object).unwrap_or_default()))
}

/// Sets `pointer` in the stored object's spec to `value` and writes it back (a merge patch's
/// effect); returns the generation it had.
fn change(kube: &FakeKube, object: ObjectRef<'_>, pointer: &str, value: Value) -> u64 {
    let mut current = get(kube, object).unwrap();
    let generation = current["metadata"]["generation"].as_u64().unwrap();
    *current.pointer_mut(pointer).unwrap() = value;
    kube.apply(current);
    generation
}

fn generation(kube: &FakeKube, object: ObjectRef<'_>) -> u64 {
    get(kube, object).unwrap()["metadata"]["generation"].as_u64().unwrap()
}

fn tls_sluice(kube: &FakeKube) -> (KubeSluice, u16, u16) {
    let sluice = KubeSluice::start(kube, KubeSluiceOptions { tls: true, ..KubeSluiceOptions::default() });
    let (plain, tls) = (sluice.addr.port(), sluice.tls_addr.unwrap().port());
    (sluice, plain, tls)
}

/// GatewayClassObservedGenerationBump, GatewayInvalidParametersRef, GatewayNameMaximumLength,
/// GatewaySecretInvalidReferenceGrant, GatewaySecretReferenceGrantAllInNamespace.
#[test]
fn class_and_gateway_statuses_parameters_long_names_and_secret_grants() {
    let kube = FakeKube::start().unwrap();
    let (sluice, plain, tls_port) = tls_sluice(&kube);
    let _backends = infrastructure(&kube);

    // GatewayClassObservedGenerationBump: a spec change moves every condition's
    // observedGeneration.
    let class = ("GatewayClass", "", "gatewayclass-observed-generation-bump");
    let mut bump = gateway_class(class.2, CONTROLLER);
    bump["spec"]["description"] = json!("old");
    kube.apply(bump);
    wait_condition(&kube, class, ("Accepted", "True", ""));
    let before = change(&kube, class, "/spec/description", json!("new"));
    assert_ne!(generation(&kube, class), before, "generation should change after an update");
    let class_status = wait_condition(&kube, class, ("Accepted", "True", "Accepted"));
    assert!(has_condition(&class_status["status"]["conditions"], ("SupportedVersion", "True", "")));

    // GatewayInvalidParametersRef: infrastructure.parametersRef names nothing Sluice reads;
    // the Gateway is not accepted and serves nothing.
    let mut invalid = gateway(
        NS,
        "gateway-invalid-parameters-ref",
        "sluice",
        json!([http_listener("http", plain, Some("params.example"))]),
    );
    invalid["spec"]["infrastructure"] =
        json!({"parametersRef": {"group": "invalid.io", "kind": "InvalidParameters", "name": "invalid"}});
    kube.apply(invalid);
    kube.apply(route_to(
        "params-route",
        json!([{"name": "gateway-invalid-parameters-ref"}]),
        "infra-backend-v1",
    ));
    let refused = ("Gateway", NS, "gateway-invalid-parameters-ref");
    let status = wait_condition(&kube, refused, ("Accepted", "False", "InvalidParameters"));
    assert!(has_condition(&status["status"]["conditions"], ("Programmed", "False", "")), "{status:#}");
    let listener = &status["status"]["listeners"][0]["conditions"];
    assert!(has_condition(listener, ("Programmed", "False", "")), "{status:#}");

    // GatewayNameMaximumLength: a 253-character name is reconciled (and serves).
    let prefix = "gateway-name-maximum-length-";
    let long_name = format!("{prefix}{}", "a".repeat(253 - prefix.len()));
    kube.apply(gateway(
        NS,
        &long_name,
        "sluice",
        json!([http_listener("http", plain, Some("long.example"))]),
    ));
    kube.apply(route_to("long-route", json!([{"name": long_name}]), "infra-backend-v1"));
    wait_condition(&kube, ("Gateway", NS, &long_name), ("Programmed", "True", ""));
    wait_answer(&sluice, sluice.addr, "long.example", "/", (200, "v1"));
    assert_eq!(ask(sluice.addr, "params.example", "/").0, 404, "the refused Gateway serves nothing");

    // GatewaySecretInvalidReferenceGrant: six grants, each wrong in one field.
    let ca = tls::Ca::new("conformance");
    let leaf = ca.leaf(&["secure.example", "secure.test.com"]);
    kube.apply(tls_secret(WEB_BACKEND, "certificate", &leaf.cert, &leaf.key));
    let cross = format!("{WEB_BACKEND}/certificate");
    kube.apply(gateway(
        NS,
        "gateway-secret-invalid-reference-grant",
        "sluice",
        json!([https_listener("https", tls_port, None, &cross)]),
    ));
    let grant = |ns: &str, name: &str, from: (&str, &str, &str), to: (&str, &str, Option<&str>)| {
        let mut target = json!({"group": to.0, "kind": to.1});
        if let Some(name) = to.2 {
            target["name"] = json!(name);
        }
        json!({"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
               "metadata": {"namespace": ns, "name": name},
               "spec": {"from": [{"group": from.0, "kind": from.1, "namespace": from.2}], "to": [target]}})
    };
    let gw = "gateway.networking.k8s.io";
    let secret = ("", "Secret", Some("certificate"));
    kube.apply(grant(
        "gateway-conformance-app-backend",
        "reference-grant-wrong-namespace",
        (gw, "Gateway", NS),
        secret,
    ));
    kube.apply(grant(
        WEB_BACKEND,
        "reference-grant-wrong-from-group",
        ("not-the-group-youre-looking-for", "Gateway", NS),
        secret,
    ));
    kube.apply(grant(WEB_BACKEND, "reference-grant-wrong-from-kind", (gw, "HTTPRoute", NS), secret));
    kube.apply(grant(
        WEB_BACKEND,
        "reference-grant-wrong-from-namespace",
        (gw, "Gateway", "not-the-namespace-youre-looking-for"),
        secret,
    ));
    kube.apply(grant(
        WEB_BACKEND,
        "reference-grant-wrong-to-group",
        (gw, "Gateway", NS),
        ("not-the-group-youre-looking-for", "Secret", Some("not-the-certificate-youre-looking-for")),
    ));
    kube.apply(grant(
        WEB_BACKEND,
        "reference-grant-wrong-to-kind",
        (gw, "Gateway", NS),
        ("", "Service", Some("certificate")),
    ));
    kube.apply(grant(
        WEB_BACKEND,
        "reference-grant-wrong-to-name",
        (gw, "Gateway", NS),
        ("", "Secret", Some("not-the-certificate-youre-looking-for")),
    ));
    wait_listeners(
        &kube,
        "gateway-secret-invalid-reference-grant",
        &[ListenerExpect {
            name: "https",
            attached: 0,
            conditions: &[("ResolvedRefs", "False", "RefNotPermitted")],
        }],
    );

    // GatewaySecretReferenceGrantAllInNamespace: a grant naming no Secret allows them all. A
    // route attached afterwards is served with that certificate.
    let all = "gateway-secret-reference-grant-all-in-namespace";
    kube.apply(gateway(NS, all, "sluice", json!([https_listener("https", tls_port, None, &cross)])));
    kube.apply(reference_grant(
        WEB_BACKEND,
        "reference-grant-all-in-namespace",
        ("Gateway", NS),
        ("Secret", ""),
    ));
    wait_listeners(
        &kube,
        all,
        &[ListenerExpect {
            name: "https",
            attached: 0,
            conditions: &[("Programmed", "True", "Programmed"), ("ResolvedRefs", "True", "")],
        }],
    );
    kube.apply(http_route(
        NS,
        "secure-route",
        json!({"parentRefs": [{"name": all}], "hostnames": ["secure.example"],
        "rules": [{"backendRefs": [backend_ref("infra-backend-v2")]}]}),
    ));
    wait_listeners(
        &kube,
        all,
        &[ListenerExpect { name: "https", attached: 1, conditions: &[("Programmed", "True", "")] }],
    );
    let tls_addr = sluice.tls_addr.unwrap();
    wait_for(WAIT, "HTTPS secure.example", || {
        ask_tls(tls_addr, "secure.example", &ca).ok().filter(|r| r.1 == "v2")
    })
    .unwrap_or_else(|e| {
        panic!("{e}: {:?}\n{}", ask_tls(tls_addr, "secure.example", &ca), sluice.child.output())
    });
    // The grant covers every Gateway of that namespace: the listener the six wrong grants left
    // unresolved resolves now.
    wait_listeners(
        &kube,
        "gateway-secret-invalid-reference-grant",
        &[ListenerExpect {
            name: "https",
            attached: 0,
            conditions: &[("ResolvedRefs", "True", "ResolvedRefs"), ("Programmed", "True", "")],
        }],
    );
}

/// GatewayModifyListeners and GatewayWithAttachedRoutes: listeners added and removed (and
/// the traffic they serve with them), attachedRoutes counted per listener, also on a listener
/// whose references do not resolve.
#[test]
fn listeners_added_and_removed_and_their_attached_routes() {
    let kube = FakeKube::start().unwrap();
    let (sluice, plain, tls_port) = tls_sluice(&kube);
    let _backends = infrastructure(&kube);
    let tls_addr = sluice.tls_addr.unwrap();
    let ca = tls::Ca::new("conformance");
    let leaf = ca.leaf(&["secure.test.com", "remove.test.com"]);
    kube.apply(tls_secret(NS, "tls-validity-checks-certificate", &leaf.cert, &leaf.key));
    let certificate = format!("{NS}/tls-validity-checks-certificate");
    let accepted_resolved: &[(&str, &str, &str)] = &[("Accepted", "True", ""), ("ResolvedRefs", "True", "")];

    // Adding a listener: it takes the route already attached to the Gateway, and serves it.
    let add = ("Gateway", NS, "gateway-add-listener");
    kube.apply(gateway(
        NS,
        add.2,
        "sluice",
        json!([https_listener("https", tls_port, Some("secure.test.com"), &certificate)]),
    ));
    kube.apply(route_to(
        "http-route-1",
        json!([{"kind": "Gateway", "name": add.2, "namespace": NS}]),
        "infra-backend-v1",
    ));
    wait_listeners(
        &kube,
        add.2,
        &[ListenerExpect { name: "https", attached: 1, conditions: accepted_resolved }],
    );
    wait_for(WAIT, "HTTPS secure.test.com", || {
        ask_tls(tls_addr, "secure.test.com", &ca).ok().filter(|r| r.1 == "v1")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", sluice.child.output()));
    assert_eq!(ask(sluice.addr, "data.test.com", "/").0, 404, "no plain listener yet");
    let before = generation(&kube, add);
    let mut listeners = get(&kube, add).unwrap()["spec"]["listeners"].clone();
    listeners.as_array_mut().unwrap().push(http_listener("http", plain, Some("data.test.com")));
    change(&kube, add, "/spec/listeners", listeners);
    wait_listeners(
        &kube,
        add.2,
        &[
            ListenerExpect { name: "https", attached: 1, conditions: accepted_resolved },
            ListenerExpect { name: "http", attached: 1, conditions: accepted_resolved },
        ],
    );
    assert_ne!(generation(&kube, add), before, "generation should change after an update");
    wait_answer(&sluice, sluice.addr, "data.test.com", "/", (200, "v1"));

    // Removing one: its traffic stops, the other keeps serving. (Upstream both Gateways'
    // HTTPS listeners name secure.test.com; here they share the node's port, so this one
    // names another host to show its traffic stop.)
    let remove = ("Gateway", NS, "gateway-remove-listener");
    kube.apply(gateway(
        NS,
        remove.2,
        "sluice",
        json!([
            https_listener("https", tls_port, Some("remove.test.com"), &certificate),
            http_listener("http", plain, None),
        ]),
    ));
    kube.apply(route_to(
        "http-route-2",
        json!([{"kind": "Gateway", "name": remove.2, "namespace": NS}]),
        "infra-backend-v2",
    ));
    wait_listeners(
        &kube,
        remove.2,
        &[
            ListenerExpect { name: "https", attached: 1, conditions: accepted_resolved },
            ListenerExpect { name: "http", attached: 1, conditions: accepted_resolved },
        ],
    );
    wait_for(WAIT, "HTTPS remove.test.com", || {
        ask_tls(tls_addr, "remove.test.com", &ca).ok().filter(|r| r.1 == "v2")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", sluice.child.output()));
    wait_answer(&sluice, sluice.addr, "any.example", "/", (200, "v2"));
    let before = generation(&kube, remove);
    let http_only: Vec<Value> = get(&kube, remove).unwrap()["spec"]["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["name"] == "http")
        .cloned()
        .collect();
    change(&kube, remove, "/spec/listeners", json!(http_only));
    wait_listeners(
        &kube,
        remove.2,
        &[ListenerExpect { name: "http", attached: 1, conditions: accepted_resolved }],
    );
    assert_ne!(generation(&kube, remove), before, "generation should change after an update");
    wait_for(WAIT, "remove.test.com no longer served over TLS", || {
        ask_tls(tls_addr, "remove.test.com", &ca).map_or(Some(()), |r| (r.1 != "v2").then_some(()))
    })
    .unwrap();
    assert_eq!(
        ask(sluice.addr, "any.example", "/"),
        (200, "v2".to_owned()),
        "the plain listener still serves"
    );
    assert_eq!(ask_tls(tls_addr, "secure.test.com", &ca).unwrap(), (200, "v1".to_owned()));

    // GatewayWithAttachedRoutes: a namespace selector on kubernetes.io/metadata.name, one and
    // two routes attached, a route whose hostname no listener has is refused and not counted.
    // (Upstream the first Gateway's listener has no hostname and the routes all go to v1; here
    // it has one, beside gateway-remove-listener's catch-all on the same port, and the routes
    // go to distinct backends and paths to show which one answers.)
    let selector = json!({"kinds": [{"kind": "HTTPRoute"}],
        "namespaces": {"from": "Selector", "selector": {"matchLabels": {"kubernetes.io/metadata.name": NS}}}});
    let mut one = http_listener("http", plain, Some("one.example"));
    one["allowedRoutes"] = selector.clone();
    kube.apply(gateway(NS, "gateway-with-one-attached-route", "sluice", json!([one])));
    kube.apply(route_to(
        "attached-1",
        json!([{"name": "gateway-with-one-attached-route"}]),
        "infra-backend-v1",
    ));
    let mut two = http_listener("http", plain, Some("foo.example.com"));
    two["allowedRoutes"] = selector.clone();
    kube.apply(gateway(NS, "gateway-with-two-attached-routes", "sluice", json!([two])));
    let two_parent = json!([{"name": "gateway-with-two-attached-routes"}]);
    kube.apply(http_route(
        NS,
        "attached-2",
        json!({"parentRefs": two_parent,
        "rules": [rule("PathPrefix", "/two", "infra-backend-v2")]}),
    ));
    kube.apply(http_route(
        NS,
        "attached-3",
        json!({"parentRefs": two_parent,
        "rules": [rule("PathPrefix", "/three", "infra-backend-v3")]}),
    ));
    kube.apply(http_route(
        NS,
        "http-route-not-accepted",
        json!({"parentRefs": two_parent, "hostnames": ["not-accepted.test.com"],
        "rules": [{"backendRefs": [backend_ref("infra-backend-v1")]}]}),
    ));
    wait_listeners(
        &kube,
        "gateway-with-one-attached-route",
        &[ListenerExpect { name: "http", attached: 1, conditions: accepted_resolved }],
    );
    wait_listeners(
        &kube,
        "gateway-with-two-attached-routes",
        &[ListenerExpect { name: "http", attached: 2, conditions: accepted_resolved }],
    );
    wait_route_parent(
        &kube,
        "http-route-not-accepted",
        "gateway-with-two-attached-routes",
        ("Accepted", "False", "NoMatchingListenerHostname"),
    );
    wait_answer(&sluice, sluice.addr, "foo.example.com", "/three", (200, "v3"));
    assert_eq!(ask(sluice.addr, "foo.example.com", "/two"), (200, "v2".to_owned()));
    assert_eq!(ask(sluice.addr, "one.example", "/"), (200, "v1".to_owned()));
    // The refused route's hostname is served by nothing of it (the catch-all of
    // gateway-remove-listener answers).
    assert_eq!(ask(sluice.addr, "not-accepted.test.com", "/"), (200, "v2".to_owned()));

    // ... and a listener whose certificate does not resolve still counts its routes.
    let mut unresolved = https_listener("tls", tls_port, None, "does-not-exist");
    unresolved["allowedRoutes"] = selector;
    unresolved["tls"]["mode"] = json!("Terminate");
    let unresolved_gateway = "unresolved-gateway-with-one-attached-unresolved-route";
    kube.apply(gateway(NS, unresolved_gateway, "sluice", json!([unresolved])));
    kube.apply(route_to(
        "http-route-4",
        json!([{"name": unresolved_gateway, "sectionName": "tls"}]),
        "does-not-exist",
    ));
    let listener = wait_listeners(
        &kube,
        unresolved_gateway,
        &[ListenerExpect {
            name: "tls",
            attached: 1,
            conditions: &[("Programmed", "False", ""), ("ResolvedRefs", "False", "")],
        }],
    );
    assert!(has_condition(
        &listener["status"]["listeners"][0]["conditions"],
        ("ResolvedRefs", "False", "InvalidCertificateRef")
    ));
    wait_route_parent(
        &kube,
        "http-route-4",
        unresolved_gateway,
        ("ResolvedRefs", "False", "BackendNotFound"),
    );
}

/// HTTPRoutePathMatchOrder, HTTPRouteNoBackendRefs and HTTPRouteServiceTypes on the
/// `same-namespace` Gateway.
#[test]
fn path_match_order_no_backend_refs_and_service_types() {
    let kube = FakeKube::start().unwrap();
    let sluice = KubeSluice::start(&kube, KubeSluiceOptions::default());
    let backends = infrastructure(&kube);
    let mut same = http_listener("http", sluice.addr.port(), None);
    same["allowedRoutes"] = json!({"namespaces": {"from": "Same"}});
    kube.apply(gateway(NS, "same-namespace", "sluice", json!([same])));
    let parent = json!([{"name": "same-namespace"}]);
    kube.apply(http_route(
        NS,
        "path-matching-order",
        json!({"parentRefs": parent, "rules": [
            rule("Exact", "/match", "infra-backend-v1"),
            rule("Exact", "/match/exact", "infra-backend-v2"),
            rule("Exact", "/match/exact/one", "infra-backend-v3"),
            rule("PathPrefix", "/match/", "infra-backend-v3"),
            rule("PathPrefix", "/match/prefix/", "infra-backend-v1"),
            rule("PathPrefix", "/match/prefix/one", "infra-backend-v2"),
        ]}),
    ));
    kube.apply(http_route(
        NS,
        "omitted-backendrefs",
        json!({"parentRefs": parent, "rules": [
            {"matches": [{"path": {"type": "Exact", "value": "/omitted-no-forward"}}]},
            {"matches": [{"path": {"type": "Exact", "value": "/empty-no-forward"}}], "backendRefs": []},
            rule("PathPrefix", "/", "infra-backend-v1"),
        ]}),
    ));
    for route in ["path-matching-order", "omitted-backendrefs"] {
        wait_route_parent(&kube, route, "same-namespace", ("Accepted", "True", "Accepted"));
        wait_route_parent(&kube, route, "same-namespace", ("ResolvedRefs", "True", ""));
    }
    wait_answer(&sluice, sluice.addr, "any.example", "/match/exact/one", (200, "v3"));
    for (path, expected) in [
        // HTTPRoutePathMatchOrder.
        ("/match/exact/one", (200, "v3")),
        ("/match/exact", (200, "v2")),
        ("/match", (200, "v1")),
        ("/match/prefix/one/any", (200, "v2")),
        ("/match/prefix/any", (200, "v1")),
        ("/match/any", (200, "v3")),
        // HTTPRouteNoBackendRefs: no backendRefs, or an empty list, answers 500.
        ("/forward", (200, "v1")),
        ("/omitted-no-forward", (500, "")),
        ("/empty-no-forward", (500, "")),
    ] {
        let got = ask(sluice.addr, "any.example", path);
        assert_eq!((got.0, got.1.as_str()), expected, "{path}");
    }

    // HTTPRouteServiceTypes: a Service without a selector and hand-written EndpointSlices (one
    // per address family, the IPv6 one empty), a headless Service whose slices the controller
    // writes, and a headless one with hand-written slices; ports by name, target 3000 in the
    // Service and the endpoint's real port in the slices.
    let v1 = &backends[0];
    let port = v1.addr().port();
    let service_of = |name: &str, headless: bool, selector: bool| {
        let mut spec =
            json!({"ports": [{"name": "first-port", "protocol": "TCP", "port": 8080, "targetPort": 3000}]});
        if headless {
            spec["clusterIP"] = json!("None");
        }
        if selector {
            spec["selector"] = json!({"app": "infra-backend-v1"});
        }
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": NS, "name": name}, "spec": spec})
    };
    let slice = |service: &str, family: &str, address: Option<String>| {
        let endpoints: Vec<Value> = address
            .into_iter()
            .map(|a| {
                json!({"addresses": [a], "conditions": {"ready": true, "serving": true, "terminating": false},
                           "targetRef": {"kind": "Pod", "name": "infra-backend-v1-abc", "namespace": NS}})
            })
            .collect();
        let suffix = if family == "IPv4" { "ip4" } else { "ip6" };
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"namespace": NS, "name": format!("{service}-{suffix}"),
                            "labels": {"kubernetes.io/service-name": service}},
               "addressType": family, "endpoints": endpoints,
               "ports": [{"name": "first-port", "port": port, "protocol": "TCP"}]})
    };
    let address = v1.addr().ip().to_string();
    kube.apply(service_of("manual-endpointslices", false, false));
    kube.apply(service_of("headless", true, true));
    kube.apply(service_of("headless-manual-endpointslices", true, false));
    for service in ["manual-endpointslices", "headless", "headless-manual-endpointslices"] {
        kube.apply(slice(service, "IPv4", Some(address.clone())));
        kube.apply(slice(service, "IPv6", None));
    }
    kube.apply(http_route(
        NS,
        "service-types",
        json!({"parentRefs": parent, "rules": [
            rule("Exact", "/manual-endpointslices", "manual-endpointslices"),
            rule("Exact", "/headless", "headless"),
            rule("Exact", "/headless-manual-endpointslices", "headless-manual-endpointslices"),
        ]}),
    ));
    wait_route_parent(&kube, "service-types", "same-namespace", ("Accepted", "True", "Accepted"));
    wait_route_parent(&kube, "service-types", "same-namespace", ("ResolvedRefs", "True", ""));
    for path in ["/manual-endpointslices", "/headless", "/headless-manual-endpointslices"] {
        wait_answer(&sluice, sluice.addr, "any.example", path, (200, "v1"));
    }
}

/// HTTPRouteMultipleGateways: one route attached to two Gateways is served through each, a
/// dedicated route only through its own. Upstream the two Gateways have an address each and
/// listeners without hostnames on port 80; Sluice's Gateways share the node's addresses, so
/// here each has its own port (the node listens on two), which is what tells them apart.
/// Also GatewayWithAttachedRoutesWithPort8080 (extended): a route attached by sectionName
/// counts on that listener only, and is answered on its port only.
#[test]
fn route_attached_to_two_gateways() {
    let kube = FakeKube::start().unwrap();
    let second = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let options = KubeSluiceOptions { extra_plain: vec![second], ..KubeSluiceOptions::default() };
    let sluice = KubeSluice::start(&kube, options);
    let _backends = infrastructure(&kube);
    let mut same = http_listener("http", sluice.addr.port(), None);
    same["allowedRoutes"] = json!({"namespaces": {"from": "Same"}});
    kube.apply(gateway(NS, "same-namespace", "sluice", json!([same])));
    kube.apply(gateway(NS, "all-namespaces", "sluice", json!([http_listener("http", second.port(), None)])));
    kube.apply(http_route(
        NS,
        "multiple-gateways-shared-route",
        json!({
        "parentRefs": [{"name": "same-namespace"}, {"name": "all-namespaces"}],
        "rules": [rule("PathPrefix", "/shared", "infra-backend-v1")]}),
    ));
    kube.apply(http_route(
        NS,
        "same-namespace-dedicated-route",
        json!({
        "parentRefs": [{"name": "same-namespace"}], "rules": [rule("PathPrefix", "/", "infra-backend-v2")]}),
    ));
    kube.apply(http_route(
        NS,
        "all-namespaces-dedicated-route",
        json!({
        "parentRefs": [{"name": "all-namespaces"}], "rules": [rule("PathPrefix", "/", "infra-backend-v3")]}),
    ));
    for (gateway, routes) in [
        ("same-namespace", ["multiple-gateways-shared-route", "same-namespace-dedicated-route"]),
        ("all-namespaces", ["multiple-gateways-shared-route", "all-namespaces-dedicated-route"]),
    ] {
        for route in routes {
            wait_route_parent(&kube, route, gateway, ("Accepted", "True", "Accepted"));
        }
        wait_listeners(
            &kube,
            gateway,
            &[ListenerExpect {
                name: "http",
                attached: 2,
                conditions: &[
                    ("Accepted", "True", ""),
                    ("ResolvedRefs", "True", ""),
                    ("Programmed", "True", ""),
                ],
            }],
        );
    }
    let route = get(&kube, ("HTTPRoute", NS, "multiple-gateways-shared-route")).unwrap();
    assert_eq!(route["status"]["parents"].as_array().unwrap().len(), 2, "{route:#}");
    for (addr, dedicated) in [(sluice.addr, "v2"), (second, "v3")] {
        wait_answer(&sluice, addr, "any.example", "/", (200, dedicated));
        wait_answer(&sluice, addr, "any.example", "/shared", (200, "v1"));
        assert_eq!(ask(addr, "any.example", "/shared/deeper"), (200, "v1".to_owned()));
        assert_eq!(ask(addr, "any.example", "/other"), (200, dedicated.to_owned()));
    }

    // GatewayWithAttachedRoutesWithPort8080, its route on a path of its own (the catch-alls
    // above share its ports).
    let two_listeners = "gateway-with-two-listeners-and-one-attached-route";
    kube.apply(gateway(
        NS,
        two_listeners,
        "sluice",
        json!([
            http_listener("http-unattached", second.port(), None),
            http_listener("http", sluice.addr.port(), None)
        ]),
    ));
    kube.apply(http_route(
        NS,
        "http-route-4-port-8080",
        json!({
        "parentRefs": [{"name": two_listeners, "sectionName": "http"}],
        "rules": [rule("PathPrefix", "/port", "infra-backend-v1")]}),
    ));
    let routes_and_refs: &[(&str, &str, &str)] = &[("Accepted", "True", ""), ("ResolvedRefs", "True", "")];
    wait_listeners(
        &kube,
        two_listeners,
        &[
            ListenerExpect { name: "http-unattached", attached: 0, conditions: routes_and_refs },
            ListenerExpect { name: "http", attached: 1, conditions: routes_and_refs },
        ],
    );
    wait_answer(&sluice, sluice.addr, "any.example", "/port", (200, "v1"));
    assert_eq!(
        ask(second, "any.example", "/port"),
        (200, "v3".to_owned()),
        "not on the other listener's port"
    );
}
