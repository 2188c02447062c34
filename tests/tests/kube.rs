//! The Kubernetes provider end to end: the real `sluice` binary in `--kubernetes` mode reaches a
//! fake API server (real list and watch over HTTP) through a kubeconfig, and real traffic goes
//! through it to loopback backends.
//!
//! Backends of one Service share a port on different loopback addresses (127.0.0.2, .3, ...),
//! since an EndpointSlice gives one port to all its endpoints.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use lb_tests::{
    backend::{self, BACKEND_HEADER, Backend, Echoed, Mode},
    fake_kube::{
        FakeKube,
        objects::{
            SliceEndpoint, endpoint_slice, ingress, ingress_class, opaque_secret, service, tls_secret,
        },
        sluice::{KubeSluice, KubeSluiceOptions},
    },
    free_port,
    http::{self, Client, HttpResponse},
    process::ChildGuard,
    sluice_binary,
    temp_dir::TempDir,
    tls, wait_for,
};
use serde_json::json;

#[test]
fn ingress_service_and_slice_route_traffic_and_follow_every_change() {
    let kube = FakeKube::start().unwrap();
    let web = Backend::loopback_group("web", 3);
    let port = web[0].addr().port();
    publish_web(&kube, "app.test", &[SliceEndpoint::ready(&ip(&web[0]))], port);
    let sluice = Sluice::start(&kube, Options::default());
    sluice.wait_for_backend("app.test", "/", "web-0", Duration::from_secs(20));
    assert_eq!(sluice.get("other.test", "/").unwrap().status, 404, "only the Ingress's host is served");

    // Scaling the slice: the new endpoint gets traffic.
    let two = [SliceEndpoint::ready(&ip(&web[0])), SliceEndpoint::ready(&ip(&web[1]))];
    kube.apply(endpoint_slice("default", "web-abc", "web", "IPv4", port, &two));
    sluice.wait_for_backend("app.test", "/", "web-1", Duration::from_secs(10));
    let (seen, failed) = spread(&sluice, "app.test", 40);
    assert_eq!(failed, 0);
    assert!(
        seen.get("web-0").copied().unwrap_or(0) >= 10 && seen.get("web-1").copied().unwrap_or(0) >= 10,
        "{seen:?}"
    );

    // A not-ready endpoint gets nothing; a second slice of the Service adds one.
    kube.apply(endpoint_slice(
        "default",
        "web-abc",
        "web",
        "IPv4",
        port,
        &[SliceEndpoint::ready(&ip(&web[0])), SliceEndpoint::not_ready(&ip(&web[1]))],
    ));
    kube.apply(endpoint_slice(
        "default",
        "web-def",
        "web",
        "IPv4",
        port,
        &[SliceEndpoint::ready(&ip(&web[2]))],
    ));
    sluice.wait_for_backend("app.test", "/", "web-2", Duration::from_secs(10));
    let before = web[1].requests();
    let (seen, failed) = spread(&sluice, "app.test", 40);
    assert_eq!(failed, 0);
    assert_eq!(web[1].requests(), before, "the not-ready endpoint got requests: {seen:?}");
    assert!(seen.contains_key("web-0") && seen.contains_key("web-2"), "{seen:?}");

    // Deleting the Ingress removes the route.
    assert!(kube.delete("networking.k8s.io/v1", "Ingress", "default", "web"));
    sluice.wait_for_status("app.test", "/", 404, Duration::from_secs(10));
    let output = sluice.child.terminate(Duration::from_secs(10)).unwrap().1;
    assert!(output.contains("Kubernetes configuration applied"), "{output}");
}

#[test]
fn rolling_update_under_load_gives_no_502() {
    let kube = FakeKube::start().unwrap();
    let old = Backend::loopback_group("old", 2);
    let port = old[0].addr().port();
    let new = backends_from("new", 20, 2);
    let new_port = new[0].addr().port();
    // Two slices: the old ReplicaSet's pods and the new one's, each with its own port.
    kube.apply(ingress_class("sluice", CONTROLLER, false));
    kube.apply(service("default", "web", 80, port));
    let old_ready = [SliceEndpoint::ready(&ip(&old[0])), SliceEndpoint::ready(&ip(&old[1]))];
    kube.apply(endpoint_slice("default", "web-old", "web", "IPv4", port, &old_ready));
    kube.apply(ingress("default", "web", "sluice", "roll.test", "/", "web", 80));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let sluice = Sluice::start(&kube, Options { admin: Some(admin), ..Options::default() });
    sluice.wait_for_backend("roll.test", "/", "old-0", Duration::from_secs(20));

    let stop = Arc::new(AtomicBool::new(false));
    let (sent, bad) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let statuses = Arc::new(std::sync::Mutex::new(Vec::new()));
    let load = {
        let (stop, sent, bad, statuses, addr) =
            (stop.clone(), sent.clone(), bad.clone(), statuses.clone(), sluice.addr);
        std::thread::spawn(move || {
            let started = Instant::now();
            // Bounded: 200,000 requests or 60 seconds.
            while !stop.load(Ordering::Relaxed)
                && sent.load(Ordering::Relaxed) < 200_000
                && started.elapsed() < Duration::from_secs(60)
            {
                sent.fetch_add(1, Ordering::Relaxed);
                match get(addr, "roll.test", "/", &[]) {
                    Ok(r) if r.status == 200 => {}
                    other => {
                        bad.fetch_add(1, Ordering::Relaxed);
                        statuses.lock().unwrap().push(format!("{:?}", other.map(|r| r.status)));
                    }
                }
            }
        })
    };
    let new_slice = |endpoints: &[SliceEndpoint]| {
        endpoint_slice("default", "web-new", "web", "IPv4", new_port, endpoints)
    };
    lb_tests::sluice::wait_for_load(&sent, 1, "before the first change");
    // New pods appear not ready, then turn ready.
    kube.apply(new_slice(&[SliceEndpoint::not_ready(&ip(&new[0])), SliceEndpoint::not_ready(&ip(&new[1]))]));
    // Once Sluice serves the update (its status lists the new pods, not ready), a window of
    // traffic: not-ready pods get none.
    let new_addresses: Vec<String> = new.iter().map(|b| b.addr().to_string()).collect();
    wait_for(Duration::from_secs(10), "the not-ready pods in Sluice's status", || {
        let status = admin_status(admin)?;
        let endpoints: Vec<&serde_json::Value> = status["backends"]
            .as_array()?
            .iter()
            .flat_map(|b| b["endpoints"].as_array().into_iter().flatten())
            .filter(|e| new_addresses.iter().any(|a| e["address"] == a.as_str()))
            .collect();
        (endpoints.len() == 2 && endpoints.iter().all(|e| e["ready"] == false)).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", sluice.child.output()));
    lb_tests::sluice::wait_for_load(&sent, 100, "while the new pods are not ready");
    assert_eq!(new[0].requests() + new[1].requests(), 0, "not-ready pods got requests");
    kube.apply(new_slice(&[SliceEndpoint::ready(&ip(&new[0])), SliceEndpoint::ready(&ip(&new[1]))]));
    wait_for(Duration::from_secs(10), "new pods to take traffic", || {
        (new[0].requests() > 0 && new[1].requests() > 0).then_some(())
    })
    .unwrap();
    // Old pods turn terminating but still serving: they drain, no new requests.
    let terminating = [SliceEndpoint::terminating(&ip(&old[0])), SliceEndpoint::terminating(&ip(&old[1]))];
    kube.apply(endpoint_slice("default", "web-old", "web", "IPv4", port, &terminating));
    wait_for(Duration::from_secs(10), "old pods to stop getting requests", || {
        let before = old[0].requests() + old[1].requests();
        // A window of at least 20 requests of the load, none of which reached the old pods.
        lb_tests::sluice::wait_for_load(&sent, 20, "in the draining window");
        (old[0].requests() + old[1].requests() == before).then_some(())
    })
    .unwrap();
    // Then they are removed and exit.
    assert!(kube.delete("discovery.k8s.io/v1", "EndpointSlice", "default", "web-old"));
    drop(old);
    // A new pod dies before its endpoint is updated: its failed attempts are retried on the other.
    let mut new = new;
    let crashed = new.remove(1);
    drop(crashed);
    let survivor_before = new[0].requests();
    // The load spans the last change: the survivor (whose only client is the load) takes 50
    // more requests after it.
    wait_for(Duration::from_secs(10), "traffic to continue on the survivor", || {
        (new[0].requests() > survivor_before + 50).then_some(())
    })
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let (sent, bad) = (sent.load(Ordering::Relaxed), bad.load(Ordering::Relaxed));
    assert_eq!(
        bad,
        0,
        "{bad} of {sent} requests failed: {:?}\n{}",
        statuses.lock().unwrap(),
        sluice.child.output()
    );
}

#[test]
fn api_server_down_for_30_seconds_keeps_traffic_flowing_then_changes_apply() {
    let kube = FakeKube::start().unwrap();
    let web = Backend::loopback_group("web", 2);
    let port = web[0].addr().port();
    publish_web(&kube, "app.test", &[SliceEndpoint::ready(&ip(&web[0]))], port);
    let sluice = Sluice::start(&kube, Options::default());
    sluice.wait_for_backend("app.test", "/", "web-0", Duration::from_secs(20));

    kube.set_up(false);
    let down_since = Instant::now();
    let mut requests = 0;
    // Bounded: one request every 100 ms for 30 seconds.
    while down_since.elapsed() < Duration::from_secs(30) {
        let response = sluice.get("app.test", "/").unwrap();
        assert_eq!(
            (response.status, response.header(BACKEND_HEADER)),
            (200, Some("web-0")),
            "request {requests}"
        );
        requests += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(requests > 200, "{requests}");
    // Changes made while it was down (as by another client) apply once it is back.
    kube.apply(endpoint_slice(
        "default",
        "web-abc",
        "web",
        "IPv4",
        port,
        &[SliceEndpoint::ready(&ip(&web[1]))],
    ));
    kube.set_up(true);
    sluice.wait_for_backend("app.test", "/", "web-1", Duration::from_secs(30));
    kube.apply(ingress("default", "second", "sluice", "second.test", "/", "web", 80));
    sluice.wait_for_backend("second.test", "/", "web-1", Duration::from_secs(10));
    let output = sluice.child.terminate(Duration::from_secs(10)).unwrap().1;
    assert!(output.contains("the last configuration keeps serving"), "{output}");
}

#[test]
fn errors_dropped_watches_and_expired_versions_recover() {
    let kube = FakeKube::start().unwrap();
    let web = Backend::loopback_group("web", 3);
    let port = web[0].addr().port();
    publish_web(&kube, "app.test", &[SliceEndpoint::ready(&ip(&web[0]))], port);
    let sluice = Sluice::start(&kube, Options::default());
    sluice.wait_for_backend("app.test", "/", "web-0", Duration::from_secs(20));

    // 500s and a slow server: the last snapshot serves.
    kube.fail_requests(Some(500));
    for _ in 0..20 {
        assert_eq!(sluice.get("app.test", "/").unwrap().header(BACKEND_HEADER), Some("web-0"));
        std::thread::sleep(Duration::from_millis(100));
    }
    kube.fail_requests(None);
    kube.set_delay(Duration::from_millis(500));
    kube.apply(endpoint_slice(
        "default",
        "web-abc",
        "web",
        "IPv4",
        port,
        &[SliceEndpoint::ready(&ip(&web[1]))],
    ));
    sluice.wait_for_backend("app.test", "/", "web-1", Duration::from_secs(30));
    kube.set_delay(Duration::ZERO);

    // History forgotten and watches cut: resuming gets 410 Gone, the reflectors list again.
    let lists = || {
        kube.requests()
            .iter()
            .filter(|r| r.path.ends_with("/endpointslices") && !r.query.contains("watch=true"))
            .count()
    };
    let lists_before = lists();
    // Watches are cut (500s) so the change is not streamed; then the history is forgotten.
    kube.fail_requests(Some(500));
    kube.apply(endpoint_slice(
        "default",
        "web-abc",
        "web",
        "IPv4",
        port,
        &[SliceEndpoint::ready(&ip(&web[2]))],
    ));
    kube.compact();
    kube.fail_requests(None);
    sluice.wait_for_backend("app.test", "/", "web-2", Duration::from_secs(30));
    assert!(lists() > lists_before, "EndpointSlices were listed again after 410");
    let output = sluice.child.terminate(Duration::from_secs(10)).unwrap().1;
    assert!(output.contains("410 Gone"), "{output}");
}

#[test]
fn rbac_refusals_name_the_missing_verb_and_resource() {
    let kube = FakeKube::start().unwrap();
    let web = Backend::loopback_group("web", 1);
    publish_web(&kube, "app.test", &[SliceEndpoint::ready(&ip(&web[0]))], web[0].addr().port());
    kube.forbid("list", "secrets");
    let sluice = Sluice::start(&kube, Options::default());
    wait_for(Duration::from_secs(10), "the RBAC error", || {
        sluice.child.output().contains("RBAC: sluice may not list secrets").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", sluice.child.output()));
    // Until every store has listed, no Ingress is served.
    assert_eq!(sluice.get("app.test", "/").unwrap().status, 404);
    kube.allow_all();
    sluice.wait_for_backend("app.test", "/", "web-0", Duration::from_secs(30));
}

#[test]
fn canary_and_rewrite_annotations_behave_as_in_ingress_nginx() {
    let kube = FakeKube::start().unwrap();
    let main = Backend::loopback_group("main", 1);
    let canary = backends_from("canary", 30, 1);
    // Answers with the request target in `x-path` (for rewrites).
    let echo = Backend::start(None, "127.0.0.40:0".parse().unwrap(), "echo").unwrap();
    kube.apply(ingress_class("sluice", CONTROLLER, false));
    kube.apply(service("default", "main", 80, main[0].addr().port()));
    kube.apply(service("default", "canary", 80, canary[0].addr().port()));
    kube.apply(service("default", "echo", 80, echo.addr().port()));
    kube.apply(endpoint_slice(
        "default",
        "main-1",
        "main",
        "IPv4",
        main[0].addr().port(),
        &[SliceEndpoint::ready(&ip(&main[0]))],
    ));
    kube.apply(endpoint_slice(
        "default",
        "canary-1",
        "canary",
        "IPv4",
        canary[0].addr().port(),
        &[SliceEndpoint::ready(&ip(&canary[0]))],
    ));
    kube.apply(endpoint_slice(
        "default",
        "echo-1",
        "echo",
        "IPv4",
        echo.addr().port(),
        &[SliceEndpoint::ready("127.0.0.40")],
    ));
    kube.apply(ingress("default", "main", "sluice", "shop.test", "/", "main", 80));
    let mut canary_ingress = ingress("default", "main-canary", "sluice", "shop.test", "/", "canary", 80);
    canary_ingress["metadata"]["annotations"] = json!({
        "nginx.ingress.kubernetes.io/canary": "true",
        "nginx.ingress.kubernetes.io/canary-by-header": "X-Canary",
        "nginx.ingress.kubernetes.io/canary-by-cookie": "canary",
        "nginx.ingress.kubernetes.io/canary-weight": "0",
    });
    kube.apply(canary_ingress.clone());
    let mut rewrite = ingress("default", "rewrite", "sluice", "rw.test", "/something(/|$)(.*)", "echo", 80);
    rewrite["metadata"]["annotations"] = json!({"nginx.ingress.kubernetes.io/rewrite-target": "/$2"});
    rewrite["spec"]["rules"][0]["http"]["paths"][0]["pathType"] = json!("ImplementationSpecific");
    kube.apply(rewrite);
    let sluice = Sluice::start(&kube, Options::default());
    sluice.wait_for_backend("shop.test", "/", "main-0", Duration::from_secs(20));
    let who = |headers: &[(&str, &str)]| {
        let r = get(sluice.addr, "shop.test", "/", headers).unwrap();
        r.header(BACKEND_HEADER).unwrap_or("?").to_owned()
    };
    wait_for(Duration::from_secs(10), "the canary header route", || {
        (who(&[("X-Canary", "always")]) == "canary-0").then_some(())
    })
    .unwrap();
    assert_eq!(who(&[("X-Canary", "never"), ("Cookie", "canary=always")]), "main-0", "header before cookie");
    assert_eq!(who(&[("Cookie", "a=1; canary=always")]), "canary-0");
    assert_eq!(who(&[("Cookie", "canary=never")]), "main-0");
    assert_eq!(who(&[("X-Canary", "other")]), "main-0", "weight 0: no canary");
    // Weight 100 of 100: everything without a header or cookie goes to the canary.
    canary_ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/canary-weight"] = json!("100");
    kube.apply(canary_ingress.clone());
    sluice.wait_for_backend("shop.test", "/", "canary-0", Duration::from_secs(10));
    assert_eq!(who(&[("X-Canary", "never")]), "main-0", "never still wins");
    // Weight 50: both get a share.
    canary_ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/canary-weight"] = json!("50");
    kube.apply(canary_ingress);
    let mut failures = Vec::new();
    wait_for(Duration::from_secs(10), "a 50/50 split", || {
        let (seen, failed) = spread(&sluice, "shop.test", 40);
        if failed > 0 {
            failures.push(format!("{failed} of 40 failed while the split was {seen:?}"));
        }
        (seen.get("main-0").copied().unwrap_or(0) >= 10 && seen.get("canary-0").copied().unwrap_or(0) >= 10)
            .then_some(())
    })
    .unwrap();
    assert!(failures.is_empty(), "requests failed while the canary weight changed: {failures:?}");

    // rewrite-target with capture groups, as in ingress-nginx's documentation.
    let path_of =
        |path: &str| get(sluice.addr, "rw.test", path, &[]).unwrap().header("x-path").map(str::to_owned);
    wait_for(Duration::from_secs(10), "the rewrite route", || {
        path_of("/something/new").filter(|p| p == "/new")
    })
    .unwrap();
    assert_eq!(path_of("/something").as_deref(), Some("/"));
    assert_eq!(path_of("/something/").as_deref(), Some("/"));
    assert_eq!(path_of("/something/a/b?q=1").as_deref(), Some("/a/b?q=1"));
    assert_eq!(get(sluice.addr, "rw.test", "/else", &[]).unwrap().status, 404);
}

/// Source-range annotations as ingress-nginx reads them: the cert-manager HTTP-01 solver's
/// permissive `0.0.0.0/0,::/0` allow list is served (it used to refuse the Ingress, and with it
/// certificate renewals), an allow list the client is outside answers 403 whatever
/// X-Forwarded-For claims, a deny list refuses the client, and a value that does not parse
/// refuses only its own Ingress.
#[test]
fn source_range_annotations_admit_by_the_client_address() {
    let kube = FakeKube::start().unwrap();
    let web = Backend::loopback_group("web", 1);
    kube.apply(ingress_class("sluice", CONTROLLER, false));
    kube.apply(service("default", "web", 80, web[0].addr().port()));
    kube.apply(endpoint_slice(
        "default",
        "web-1",
        "web",
        "IPv4",
        web[0].addr().port(),
        &[SliceEndpoint::ready(&ip(&web[0]))],
    ));
    let with = |name: &str, host: &str, annotations: serde_json::Value| {
        let mut ingress = ingress("default", name, "sluice", host, "/", "web", 80);
        ingress["metadata"]["annotations"] = annotations;
        ingress
    };
    kube.apply(with(
        "cm-acme-http-solver",
        "solver.test",
        json!({"nginx.ingress.kubernetes.io/whitelist-source-range": "0.0.0.0/0,::/0"}),
    ));
    kube.apply(with(
        "office",
        "office.test",
        json!({"nginx.ingress.kubernetes.io/allowlist-source-range": "10.0.0.0/8, 2001:db8::/32"}),
    ));
    kube.apply(with(
        "blocked",
        "blocked.test",
        json!({"nginx.ingress.kubernetes.io/denylist-source-range": "127.0.0.0/8"}),
    ));
    kube.apply(with(
        "broken",
        "broken.test",
        json!({"nginx.ingress.kubernetes.io/whitelist-source-range": "10.0.0.0/33"}),
    ));
    let sluice = Sluice::start(&kube, Options::default());
    sluice.wait_for_backend("solver.test", "/", "web-0", Duration::from_secs(20));
    let status = |host: &str, headers: &[(&str, &str)]| get(sluice.addr, host, "/", headers).unwrap().status;
    // The translation is one snapshot: once the solver is served, the others are in place too.
    assert_eq!(status("office.test", &[]), 403);
    assert_eq!(status("office.test", &[("X-Forwarded-For", "10.1.2.3")]), 403, "a spoofed hop opens nothing");
    assert_eq!(status("blocked.test", &[]), 403);
    assert_eq!(status("broken.test", &[]), 404, "the Ingress with a bad range is refused, not served open");
    assert_eq!(status("solver.test", &[("X-Forwarded-For", "203.0.113.9")]), 200);
}

/// CORS and header annotations as ingress-nginx serves them: `enable-cors` with an origin list
/// answers a preflight itself and decorates responses to allowed origins only; `upstream-vhost`
/// and `x-forwarded-prefix` reach the backend; `connection-proxy-header` is served without
/// effect (Sluice manages upstream connections).
#[test]
fn cors_and_header_annotations_shape_requests_and_responses() {
    let kube = FakeKube::start().unwrap();
    let options =
        backend::Options { addr: "127.0.0.2:0".parse().unwrap(), mode: Mode::Echo, ..Default::default() };
    let web = Backend::launch("web-0", options).unwrap();
    kube.apply(ingress_class("sluice", CONTROLLER, false));
    kube.apply(service("default", "web", 80, web.addr().port()));
    let endpoints = [SliceEndpoint::ready(&ip(&web))];
    kube.apply(endpoint_slice("default", "web-1", "web", "IPv4", web.addr().port(), &endpoints));
    let mut api = ingress("default", "api", "sluice", "api.test", "/", "web", 80);
    api["metadata"]["annotations"] = json!({
        "nginx.ingress.kubernetes.io/enable-cors": "true",
        "nginx.ingress.kubernetes.io/cors-allow-origin": "https://app.test, https://*.corp.test",
        "nginx.ingress.kubernetes.io/cors-allow-credentials": "false",
        "nginx.ingress.kubernetes.io/upstream-vhost": "api.internal",
        "nginx.ingress.kubernetes.io/x-forwarded-prefix": "/api",
        "nginx.ingress.kubernetes.io/connection-proxy-header": "keep-alive",
    });
    kube.apply(api);
    let sluice = Sluice::start(&kube, Options::default());
    sluice.wait_for_backend("api.test", "/", "web-0", Duration::from_secs(20));

    let origin = [("Origin", "https://eu.corp.test")];
    let preflight = http::request(sluice.addr, "OPTIONS", "api.test", "/v1", &origin).unwrap();
    assert_eq!(preflight.status, 204, "{preflight:?}");
    assert_eq!(preflight.header("access-control-allow-origin"), Some("https://eu.corp.test"));
    assert_eq!(preflight.header("access-control-allow-credentials"), None);
    let requests_before = web.requests();
    let response = get(sluice.addr, "api.test", "/v1", &origin).unwrap();
    assert_eq!(response.header("access-control-allow-origin"), Some("https://eu.corp.test"));
    let seen = Echoed::of(&response);
    assert_eq!(seen.all("host"), ["api.internal"]);
    assert_eq!(seen.header("x-forwarded-host"), Some("api.test"));
    assert_eq!(seen.header("x-forwarded-prefix"), Some("/api"));
    let other = get(sluice.addr, "api.test", "/v1", &[("Origin", "https://evil.test")]).unwrap();
    assert_eq!((other.status, other.header("access-control-allow-origin")), (200, None));
    assert_eq!(web.requests() - requests_before, 2, "the preflight never reached the backend");
}

/// ingress-nginx basic auth through the API server: `auth-file` and `auth-map` Secrets (Opaque,
/// which the Secret watch must see), the realm, 503 for a missing Secret as ingress-nginx
/// answers for a denied location, `digest` refused. The Secret is rotated while keep-alive
/// clients keep sending the old and the new password: from the first request the new password
/// passed, every later one passes, and the old password is refused from then on.
#[test]
fn basic_auth_secrets_are_read_and_rotate_under_load() {
    // openssl passwd -apr1 -salt oldsalt1 old-pass / -salt newsalt1 new-pass
    const OLD: &str = "alice:$apr1$oldsalt1$RmwzzcMyo9oXEZVogD2oK0\n";
    const NEW: &str = "alice:$apr1$newsalt1$Uvg2HU3ScbbdiFzUsbg.Z/\n";
    let kube = FakeKube::start().unwrap();
    let web = Backend::loopback_group("web", 1);
    publish_web(&kube, "staff.test", &[SliceEndpoint::ready(&ip(&web[0]))], web[0].addr().port());
    let with = |name: &str, host: &str, annotations: serde_json::Value| {
        let mut ingress = ingress("default", name, "sluice", host, "/", "web", 80);
        ingress["metadata"]["annotations"] = annotations;
        ingress
    };
    kube.apply(opaque_secret("default", "staff-auth", &[("auth", OLD)]));
    // {SHA} of "s-pass"; the line with an unsupported hash is left out.
    let map = [("bob", "{SHA}MjlF6q5cr8aq00t3ZD1oBsp7Rfg="), ("eve", "$6$salt$hash")];
    kube.apply(opaque_secret("default", "map-auth", &map));
    let basic = |secret: &str| {
        json!({"nginx.ingress.kubernetes.io/auth-type": "basic",
               "nginx.ingress.kubernetes.io/auth-secret": secret,
               "nginx.ingress.kubernetes.io/auth-realm": "Staff \"only\""})
    };
    kube.apply(with("staff", "staff.test", basic("default/staff-auth")));
    let mut map_annotations = basic("map-auth");
    map_annotations["nginx.ingress.kubernetes.io/auth-secret-type"] = json!("auth-map");
    kube.apply(with("mapped", "map.test", map_annotations));
    kube.apply(with("missing", "missing.test", basic("nowhere")));
    kube.apply(with("digest", "digest.test", json!({"nginx.ingress.kubernetes.io/auth-type": "digest"})));
    let sluice = Sluice::start(&kube, Options::default());
    sluice.wait_for_status("staff.test", "/", 401, Duration::from_secs(20));
    let (old, new) =
        (http::basic_credentials("alice", "old-pass"), http::basic_credentials("alice", "new-pass"));
    let status = |host: &str, authorization: &str| {
        get(sluice.addr, host, "/", &[("Authorization", authorization)]).unwrap()
    };
    let challenge = sluice.get("staff.test", "/").unwrap();
    assert_eq!(challenge.header("www-authenticate"), Some("Basic realm=\"Staff only\""));
    assert_eq!(status("staff.test", &old).status, 200);
    assert_eq!(status("staff.test", &new).status, 401);
    assert_eq!(status("map.test", &http::basic_credentials("bob", "s-pass")).status, 200);
    assert_eq!(status("map.test", &http::basic_credentials("bob", "x")).status, 401);
    assert_eq!(status("missing.test", &old).status, 503, "a missing Secret denies the location");
    assert_eq!(status("digest.test", &old).status, 404, "digest is refused, not served open");
    let output = sluice.child.output();
    assert!(output.contains("auth-secret default/nowhere not found"), "{output}");
    assert!(output.contains("Secret default/map-auth line 2"), "eve's line is reported: {output}");
    assert!(!output.contains("$6$salt"), "a hash is never logged");

    // Rotation under load: two keep-alive clients, one per password, until the new password has
    // passed for a while (bounded either way).
    let stop = Arc::new(AtomicBool::new(false));
    let load = |authorization: String, answered: Arc<AtomicU64>| {
        let (stop, addr) = (stop.clone(), sluice.addr);
        std::thread::spawn(move || {
            let mut client = Client::connect(addr);
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) && seen.len() < 20_000 {
                let sent = Instant::now();
                let response =
                    client.request("GET", "staff.test", "/", &[("Authorization", &authorization)], false);
                seen.push((sent, Instant::now(), response.map(|r| r.status).unwrap_or(0)));
                answered.fetch_add(1, Ordering::Relaxed);
            }
            seen
        })
    };
    // Progress is counted, not timed: a loaded machine answers fewer requests per second.
    let (old_answered, new_answered) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (old_load, new_load) =
        (load(old.clone(), old_answered.clone()), load(new.clone(), new_answered.clone()));
    lb_tests::sluice::wait_for_load(&old_answered, 20, "with the old password");
    kube.apply(opaque_secret("default", "staff-auth", &[("auth", NEW)]));
    wait_for(Duration::from_secs(20), "the new password to pass", || {
        (status("staff.test", &new).status == 200).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", sluice.child.output()));
    lb_tests::sluice::wait_for_load(&new_answered, 40, "with the new password");
    lb_tests::sluice::wait_for_load(&old_answered, 20, "with the old password, after the rotation");
    stop.store(true, Ordering::Relaxed);
    let (old_seen, new_seen) = (old_load.join().unwrap(), new_load.join().unwrap());
    // The rotation is observed when the first new-password request is answered 200.
    let rotated = new_seen
        .iter()
        .find(|&&(_, _, status)| status == 200)
        .map(|&(_, answered, _)| answered)
        .expect("the new password passed under load");
    let after = |seen: &[(Instant, Instant, u16)]| -> Vec<u16> {
        seen.iter().filter(|&&(sent, _, _)| sent >= rotated).map(|&(_, _, status)| status).collect()
    };
    let (late_new, late_old) = (after(&new_seen), after(&old_seen));
    assert!(
        late_new.len() > 10 && late_new.iter().all(|&s| s == 200),
        "new password after rotation: {late_new:?}"
    );
    assert!(new_seen.iter().all(|&(_, _, s)| s == 200 || s == 401), "new password: only 401 then 200");
    assert!(
        !late_old.is_empty() && late_old.iter().all(|&s| s == 401),
        "old password after rotation: {late_old:?}"
    );
    assert!(old_seen.iter().any(|&(_, _, s)| s == 200), "the old password passed before the rotation");
}

/// Rate-limit annotations as ingress-nginx reads them: `limit-rps: 2` with
/// `limit-burst-multiplier: 3` lets 1 + 6 requests through at once and refuses the rest with
/// 503 before the backend; `limit-whitelist` exempts the client; `enable-modsecurity: "true"`
/// refuses its Ingress (404) while `"false"` serves it; a `limit-rps` that does not parse
/// refuses only its Ingress.
#[test]
fn rate_limit_annotations_limit_each_client_address() {
    let kube = FakeKube::start().unwrap();
    let web = Backend::loopback_group("web", 1);
    kube.apply(ingress_class("sluice", CONTROLLER, false));
    kube.apply(service("default", "web", 80, web[0].addr().port()));
    kube.apply(endpoint_slice(
        "default",
        "web-1",
        "web",
        "IPv4",
        web[0].addr().port(),
        &[SliceEndpoint::ready(&ip(&web[0]))],
    ));
    let with = |name: &str, host: &str, annotations: serde_json::Value| {
        let mut ingress = ingress("default", name, "sluice", host, "/", "web", 80);
        ingress["metadata"]["annotations"] = annotations;
        ingress
    };
    let nginx = |pairs: &[(&str, &str)]| {
        let map: serde_json::Map<String, serde_json::Value> =
            pairs.iter().map(|(k, v)| (format!("nginx.ingress.kubernetes.io/{k}"), json!(v))).collect();
        serde_json::Value::Object(map)
    };
    kube.apply(with(
        "limited",
        "limited.test",
        nginx(&[("limit-rps", "2"), ("limit-burst-multiplier", "3")]),
    ));
    kube.apply(with(
        "trusted",
        "trusted.test",
        nginx(&[("limit-rps", "1"), ("limit-burst-multiplier", "0"), ("limit-whitelist", "127.0.0.0/8")]),
    ));
    kube.apply(with("waf", "waf.test", nginx(&[("enable-modsecurity", "true")])));
    kube.apply(with(
        "no-waf",
        "no-waf.test",
        nginx(&[("enable-modsecurity", "false"), ("enable-owasp-core-rules", "false")]),
    ));
    kube.apply(with("broken", "broken.test", nginx(&[("limit-rps", "lots")])));
    let sluice = Sluice::start(&kube, Options::default());
    sluice.wait_for_backend("no-waf.test", "/", "web-0", Duration::from_secs(20));
    let status = |host: &str| get(sluice.addr, host, "/", &[]).unwrap();
    let started = Instant::now();
    let limited: Vec<HttpResponse> = (0..20).map(|_| status("limited.test")).collect();
    let admitted = limited.iter().filter(|r| r.status == 200).count();
    // One more for every 500 ms the 20 requests took.
    let allowance = (started.elapsed().as_millis() / 500) as usize;
    assert!((7..=7 + allowance).contains(&admitted), "{admitted} of 20 admitted");
    assert!(
        limited.iter().all(|r| r.status == 200 || (r.status == 503 && r.header(BACKEND_HEADER).is_none())),
        "refused with 503 before the backend"
    );
    assert!((0..20).all(|_| status("trusted.test").status == 200), "limit-whitelist exempts the client");
    assert_eq!(status("waf.test").status, 404, "a WAF asked for refuses the Ingress");
    assert_eq!(status("broken.test").status, 404, "a limit that does not parse refuses its Ingress");
}

/// ingress-nginx's oauth2-proxy annotations through the API server: `auth-url` asks the
/// service (its X-Original-URL the request's), a 2xx passes, a 401 with `auth-signin` (nginx
/// variables expanded) redirects to sign in, `auth-cache-key` answers repeats from the cache,
/// the Ingress's `proxy-read-timeout` bounds the subrequest (500), and an `auth-url` with nginx
/// variables refuses its Ingress rather than serving it open.
#[test]
fn external_auth_annotations_follow_the_auth_service() {
    let kube = FakeKube::start().unwrap();
    let web = Backend::loopback_group("web", 1);
    publish_web(&kube, "app.test", &[SliceEndpoint::ready(&ip(&web[0]))], web[0].addr().port());
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let auth = lb_tests::raw_backend::auth_service(seen.clone());
    let with = |name: &str, host: &str, path: &str, annotations: serde_json::Value| {
        let mut ingress = ingress("default", name, "sluice", host, path, "web", 80);
        ingress["metadata"]["annotations"] = annotations;
        ingress
    };
    let url = format!("http://{}/oauth2/auth", auth.addr);
    kube.apply(with(
        "app",
        "app.test",
        "/",
        json!({"nginx.ingress.kubernetes.io/auth-url": url,
               "nginx.ingress.kubernetes.io/auth-signin": "https://$host/oauth2/start?rd=$escaped_request_uri",
               "nginx.ingress.kubernetes.io/auth-response-headers": "X-Auth-Request-User",
               "nginx.ingress.kubernetes.io/proxy-read-timeout": "1"}),
    ));
    kube.apply(with(
        "cached",
        "app.test",
        "/cached",
        json!({"nginx.ingress.kubernetes.io/auth-url": url,
               "nginx.ingress.kubernetes.io/auth-cache-key": "$cookie_session",
               "nginx.ingress.kubernetes.io/auth-cache-duration": "202 5m"}),
    ));
    kube.apply(with(
        "templated",
        "templated.test",
        "/",
        json!({"nginx.ingress.kubernetes.io/auth-url": "http://$host/auth"}),
    ));
    let sluice = Sluice::start(&kube, Options::default());
    sluice.wait_for_status("app.test", "/", 302, Duration::from_secs(20));
    let request = |path: &str, session: &str| {
        get(sluice.addr, "app.test", path, &[("Cookie", &format!("session={session}"))]).unwrap()
    };
    let signin = request("/a?b=c", "");
    assert_eq!(signin.header("location"), Some("https://app.test/oauth2/start?rd=%2Fa%3Fb%3Dc"));
    let allowed = request("/a?b=c", "alice");
    assert_eq!((allowed.status, allowed.header(BACKEND_HEADER)), (200, Some("web-0")));
    let asked = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(asked.header("x-original-url"), Some("http://app.test/a?b=c"));
    assert_eq!(request("/", "forbidden").status, 403);
    assert_eq!(request("/", "slow").status, 500, "proxy-read-timeout bounds the subrequest");
    let before = seen.lock().unwrap().len();
    for _ in 0..4 {
        assert_eq!(request("/cached", "alice").status, 200);
    }
    assert_eq!(seen.lock().unwrap().len() - before, 1, "cached by auth-cache-key");
    assert_eq!(get(sluice.addr, "templated.test", "/", &[]).unwrap().status, 404, "refused, not served open");
}

/// `auth-tls-*` through the API server: the CA from an Opaque Secret's `ca.crt`, the TLS host
/// then asks for client certificates: none gets 400, another subject than `auth-tls-match-cn`
/// 403, the right one reaches the backend with `ssl-client-verify: SUCCESS` and the
/// certificate (`auth-tls-pass-certificate-to-upstream`). An Ingress with `auth-tls-secret`
/// whose host has no TLS Secret is not served (it would be served without the check).
#[test]
fn auth_tls_annotations_require_client_certificates() {
    let kube = FakeKube::start().unwrap();
    let options =
        backend::Options { addr: "127.0.0.2:0".parse().unwrap(), mode: Mode::Echo, ..Default::default() };
    let web = Backend::launch("web-0", options).unwrap();
    kube.apply(ingress_class("sluice", CONTROLLER, false));
    kube.apply(service("default", "web", 80, web.addr().port()));
    let endpoints = [SliceEndpoint::ready(&ip(&web))];
    kube.apply(endpoint_slice("default", "web-1", "web", "IPv4", web.addr().port(), &endpoints));
    let server_ca = tls::Ca::new("server CA");
    let clients = tls::Ca::new("client CA");
    let server = server_ca.leaf(&["mtls.test"]);
    kube.apply(tls_secret("default", "mtls-tls", &server.cert, &server.key));
    kube.apply(opaque_secret("default", "client-ca", &[("ca.crt", &clients.pem())]));
    let annotations = json!({
        "nginx.ingress.kubernetes.io/auth-tls-secret": "default/client-ca",
        "nginx.ingress.kubernetes.io/auth-tls-verify-client": "on",
        "nginx.ingress.kubernetes.io/auth-tls-pass-certificate-to-upstream": "true",
        "nginx.ingress.kubernetes.io/auth-tls-match-cn": "CN=alice",
    });
    let mut mtls = ingress("default", "mtls", "sluice", "mtls.test", "/", "web", 80);
    mtls["metadata"]["annotations"] = annotations.clone();
    mtls["spec"]["tls"] = json!([{"hosts": ["mtls.test"], "secretName": "mtls-tls"}]);
    kube.apply(mtls);
    let mut uncovered = ingress("default", "uncovered", "sluice", "uncovered.test", "/", "web", 80);
    uncovered["metadata"]["annotations"] = annotations;
    kube.apply(uncovered);
    kube.apply(ingress("default", "open", "sluice", "open.test", "/", "web", 80));
    let sluice = Sluice::start(&kube, Options { tls: true, ..Options::default() });
    let tls_addr = sluice.tls_addr.unwrap();
    let get = |leaf: Option<&tls::Leaf>| {
        let config = tls::client_config(tls::ClientOptions {
            trust: Some(&server_ca),
            client_certificate: leaf,
            ..Default::default()
        });
        let stream = tls::connect(tls_addr, Some("mtls.test"), &config).ok()?;
        Client::new(stream).request("GET", "mtls.test", "/", &[], true).ok()
    };
    let alice = clients.leaf(&["alice"]);
    let ok = wait_for(Duration::from_secs(20), "mtls.test served with client certificates", || {
        get(Some(&alice)).filter(|r| r.status == 200)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", sluice.child.output()));
    let seen = Echoed::of(&ok);
    assert_eq!(seen.header("ssl-client-verify"), Some("SUCCESS"));
    assert_eq!(seen.header("ssl-client-subject-dn"), Some("CN=alice"));
    assert!(seen.header("ssl-client-cert").is_some_and(|c| c.starts_with("-----BEGIN%20CERTIFICATE-----")));
    let none = get(None).expect("the handshake finishes without a certificate");
    assert_eq!(none.status, 400, "{none:?}");
    assert_eq!(get(Some(&clients.leaf(&["bob"]))).unwrap().status, 403, "auth-tls-match-cn");
    assert_eq!(sluice.get("open.test", "/").unwrap().status, 200);
    assert_eq!(sluice.get("uncovered.test", "/").unwrap().status, 404, "not served without its check");
}

/// `backend-protocol: HTTPS` with `proxy-ssl-*`: the pod's certificate verified against the
/// Secret's `ca.crt` under `proxy-ssl-name`, SNI sent only with `proxy-ssl-server-name: on`, the
/// Secret's `tls.crt` presented to a pod that requires it, the cipher list and protocols
/// offered as the annotations say, and a chain through an intermediate refused at the default
/// `proxy-ssl-verify-depth` of 1 but taken at 2. Each host differs from the one that works in
/// one setting.
#[test]
fn proxy_ssl_annotations_shape_tls_to_the_pods() {
    let kube = FakeKube::start().unwrap();
    let server_ca = tls::Ca::new("pods CA");
    let clients = tls::Ca::new("proxy client CA");
    let pod_leaf = server_ca.leaf(&["web.internal"]);
    let strict = tls::strict_server_config(tls::ServerOptions {
        leaf: &pod_leaf,
        sni_only: Some("web.internal"),
        client_ca: Some(&clients),
        tls13_only: false,
    });
    let options =
        backend::Options { addr: "127.0.0.2:0".parse().unwrap(), tls: Some(strict), ..Default::default() };
    let web = Backend::launch("web-tls", options).unwrap();
    let modern = tls::strict_server_config(tls::ServerOptions {
        leaf: &pod_leaf,
        sni_only: None,
        client_ca: None,
        tls13_only: true,
    });
    let options =
        backend::Options { addr: "127.0.0.3:0".parse().unwrap(), tls: Some(modern), ..Default::default() };
    let tls13 = Backend::launch("tls13-only", options).unwrap();
    // A pod whose certificate chains through an intermediate to the Secret's CA: two links,
    // past `proxy-ssl-verify-depth`'s default of 1.
    let chained_leaf = server_ca.intermediate("pods intermediate CA").chained_leaf(&["web.internal"]);
    let options = backend::Options {
        addr: "127.0.0.4:0".parse().unwrap(),
        tls: Some(tls::server_config(&chained_leaf)),
        ..Default::default()
    };
    let chained = Backend::launch("chained", options).unwrap();
    kube.apply(ingress_class("sluice", CONTROLLER, false));
    for (name, backend) in [("web", &web), ("modern", &tls13), ("chained", &chained)] {
        kube.apply(service("default", name, 443, backend.addr().port()));
        let endpoints = [SliceEndpoint::ready(&ip(backend))];
        kube.apply(endpoint_slice(
            "default",
            &format!("{name}-1"),
            name,
            "IPv4",
            backend.addr().port(),
            &endpoints,
        ));
    }
    let proxy = clients.leaf(&["sluice"]);
    let secret = |name: &str, ca: &str, client: bool| {
        let mut data = vec![("ca.crt", ca.to_owned())];
        if client {
            data.extend([("tls.crt", proxy.cert.clone()), ("tls.key", proxy.key.clone())]);
        }
        let data: Vec<(&str, &str)> = data.iter().map(|(k, v)| (*k, v.as_str())).collect();
        kube.apply(opaque_secret("default", name, &data));
    };
    secret("pods", &server_ca.pem(), true);
    secret("pods-no-client", &server_ca.pem(), false);
    secret("other-ca", &tls::Ca::new("someone else").pem(), true);
    let working = [
        ("backend-protocol", "HTTPS"),
        ("proxy-ssl-secret", "default/pods"),
        ("proxy-ssl-verify", "on"),
        ("proxy-ssl-name", "web.internal"),
        ("proxy-ssl-server-name", "on"),
    ];
    let publish = |host: &str, service: &str, changes: &[(&str, &str)]| {
        let mut annotations = serde_json::Map::new();
        for (name, value) in working.iter().chain(changes) {
            annotations.insert(format!("nginx.ingress.kubernetes.io/{name}"), json!(value));
        }
        let mut object =
            ingress("default", host.split('.').next().unwrap(), "sluice", host, "/", service, 443);
        object["metadata"]["annotations"] = serde_json::Value::Object(annotations);
        kube.apply(object);
    };
    publish("verified.test", "web", &[]);
    publish("no-sni.test", "web", &[("proxy-ssl-server-name", "off")]);
    publish("untrusted.test", "web", &[("proxy-ssl-secret", "default/other-ca")]);
    publish(
        "unverified.test",
        "web",
        &[("proxy-ssl-secret", "default/other-ca"), ("proxy-ssl-verify", "off")],
    );
    publish("anonymous.test", "web", &[("proxy-ssl-secret", "default/pods-no-client")]);
    // The test certificates are ECDSA: an RSA-only TLS 1.2 list cannot meet them.
    publish("rsa-only.test", "web", &[("proxy-ssl-ciphers", "ECDHE-RSA-AES128-GCM-SHA256")]);
    publish("ecdsa.test", "web", &[("proxy-ssl-ciphers", "ECDHE+AESGCM:!aRSA")]);
    // ingress-nginx's default protocols with a proxy-ssl-secret are TLSv1.2 only.
    let tls13_default = [("proxy-ssl-server-name", "off"), ("proxy-ssl-verify", "off")];
    publish("tls12.test", "modern", &tls13_default);
    publish(
        "tls13.test",
        "modern",
        &[tls13_default[0], tls13_default[1], ("proxy-ssl-protocols", "TLSv1.3")],
    );
    publish("shallow.test", "chained", &[]);
    publish("deep.test", "chained", &[("proxy-ssl-verify-depth", "2")]);
    let sluice = Sluice::start(&kube, Options::default());
    sluice.wait_for_backend("verified.test", "/", "web-tls", Duration::from_secs(20));
    sluice.wait_for_backend("deep.test", "/", "chained", Duration::from_secs(10));
    sluice.wait_for_backend("tls13.test", "/", "tls13-only", Duration::from_secs(10));
    for (host, status) in [
        ("no-sni.test", 502),
        ("untrusted.test", 502),
        ("unverified.test", 200),
        ("anonymous.test", 502),
        ("rsa-only.test", 502),
        ("ecdsa.test", 200),
        ("tls12.test", 502),
        ("shallow.test", 502),
    ] {
        let response = sluice.get(host, "/").unwrap();
        assert_eq!(response.status, status, "{host}: {response:?}\n{}", sluice.child.output());
    }
}

/// ingress-nginx's controller ConfigMap (`--nginx-configmap`): trusted forwarded headers and
/// the add-headers ConfigMap apply, and a change to the ConfigMap applies while running.
#[test]
fn the_controller_configmap_applies_and_follows_changes() {
    let kube = FakeKube::start().unwrap();
    let options =
        backend::Options { addr: "127.0.0.2:0".parse().unwrap(), mode: Mode::Echo, ..Default::default() };
    let web = Backend::launch("web-0", options).unwrap();
    publish_web(&kube, "app.test", &[SliceEndpoint::ready(&ip(&web))], web.addr().port());
    let controller = |forwarded: &str| {
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"namespace": "ingress-nginx", "name": "controller"},
            "data": {
                "use-forwarded-headers": forwarded,
                "proxy-real-ip-cidr": "127.0.0.0/8",
                "add-headers": "ingress-nginx/response-headers",
            },
        })
    };
    kube.apply(controller("true"));
    kube.apply(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"namespace": "ingress-nginx", "name": "response-headers"},
        "data": {"X-Served-By": "sluice"},
    }));
    let sluice = Sluice::start(
        &kube,
        Options { nginx_configmap: Some("ingress-nginx/controller"), ..Options::default() },
    );
    sluice.wait_for_backend("app.test", "/", "web-0", Duration::from_secs(20));
    let hop = [("X-Forwarded-For", "203.0.113.7")];
    let response = get(sluice.addr, "app.test", "/", &hop).unwrap();
    assert_eq!(response.header("x-served-by"), Some("sluice"), "{response:?}");
    assert_eq!(
        Echoed::of(&response).header("x-real-ip"),
        Some("203.0.113.7"),
        "a trusted peer's hop is believed"
    );
    kube.apply(controller("false"));
    wait_for(Duration::from_secs(10), "the ConfigMap change to apply", || {
        let response = get(sluice.addr, "app.test", "/", &hop).ok()?;
        (Echoed::of(&response).header("x-real-ip") == Some("127.0.0.1")).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", sluice.child.output()));
}

fn lease_holder(kube: &FakeKube) -> Option<String> {
    kube.get("coordination.k8s.io/v1", "Lease", "sluice", "sluice-leader")?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_owned)
}

fn status_ip(kube: &FakeKube) -> Option<String> {
    kube.get("networking.k8s.io/v1", "Ingress", "default", "web")?["status"]["loadBalancer"]["ingress"][0]["ip"]
        .as_str()
        .map(str::to_owned)
}

#[test]
fn two_instances_elect_one_leader_that_alone_writes_status_and_others_take_over() {
    let kube = FakeKube::start().unwrap();
    let web = Backend::loopback_group("web", 1);
    publish_web(&kube, "app.test", &[SliceEndpoint::ready(&ip(&web[0]))], web[0].addr().port());
    let a =
        Sluice::start(&kube, Options { identity: "sluice-a", publish: "192.0.2.1", ..Options::default() });
    let b =
        Sluice::start(&kube, Options { identity: "sluice-b", publish: "192.0.2.2", ..Options::default() });
    a.wait_for_backend("app.test", "/", "web-0", Duration::from_secs(20));
    b.wait_for_backend("app.test", "/", "web-0", Duration::from_secs(20));
    let leader = wait_for(Duration::from_secs(20), "a leader", || lease_holder(&kube)).unwrap();
    let (leader, follower, leader_ip, follower_ip, follower_id) = match leader.as_str() {
        "sluice-a" => (a, b, "192.0.2.1", "192.0.2.2", "sluice-b"),
        _ => (b, a, "192.0.2.2", "192.0.2.1", "sluice-a"),
    };
    wait_for(Duration::from_secs(10), "the leader's status", || {
        status_ip(&kube).filter(|ip| ip == leader_ip)
    })
    .unwrap();
    // For several renewals (lease 3 s, renewed every second), only the leader writes.
    let holder = lease_holder(&kube);
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        assert_eq!(status_ip(&kube).as_deref(), Some(leader_ip));
        assert_eq!(lease_holder(&kube), holder);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(kube.count_requests("PATCH", "/ingresses/web/status"), 1, "written once, by the leader");

    // A clean stop releases the Lease: the other takes over at its next try.
    let stopped = Instant::now();
    let (_, output) = leader.child.terminate(Duration::from_secs(10)).unwrap();
    assert!(output.contains("leadership released"), "{output}");
    wait_for(Duration::from_secs(5), "the follower to lead", || {
        (lease_holder(&kube).as_deref() == Some(follower_id)).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", follower.child.output()));
    wait_for(Duration::from_secs(5), "the new leader's status", || {
        status_ip(&kube).filter(|ip| ip == follower_ip)
    })
    .unwrap();
    // Upper bound with slack: followers retry every 0.5 s (a sixth of the 3 s lease), so a
    // release is taken within ~0.5 s; waiting for the lease to expire instead would take at
    // least ~2.5 s (3 s without a renewal seen, less one retry period). 2 s is 4x the retry.
    assert!(stopped.elapsed() < Duration::from_secs(2), "took over without waiting for the lease to expire");

    // A leader that dies without releasing is replaced once its Lease expires (3 s).
    let c =
        Sluice::start(&kube, Options { identity: "sluice-c", publish: "192.0.2.3", ..Options::default() });
    c.wait_for_backend("app.test", "/", "web-0", Duration::from_secs(20));
    follower.child.kill().unwrap();
    let killed = Instant::now();
    wait_for(Duration::from_secs(15), "the third instance to lead", || {
        (lease_holder(&kube).as_deref() == Some("sluice-c")).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.child.output()));
    assert!(
        killed.elapsed() >= Duration::from_millis(1500),
        "not before the lease expired: {:?}",
        killed.elapsed()
    );
    wait_for(Duration::from_secs(5), "the third instance's status", || {
        status_ip(&kube).filter(|ip| ip == "192.0.2.3")
    })
    .unwrap();
}

/// `--publish-service`: the leader writes the Service's `status.loadBalancer` (sorted as
/// ingress-nginx compares it, with its external IPs) into every served Ingress, follows a
/// change to the Service, copies a NodePort's external IPs, clears the status while a
/// LoadBalancer is pending and leaves it while the Service is gone.
#[test]
fn publish_service_copies_the_services_addresses_and_follows_them() {
    let kube = FakeKube::start().unwrap();
    let web = Backend::loopback_group("web", 1);
    publish_web(&kube, "app.test", &[SliceEndpoint::ready(&ip(&web[0]))], web[0].addr().port());
    let front = |spec: serde_json::Value, status: serde_json::Value| {
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": "ingress-nginx", "name": "ingress-nginx-controller"},
            "spec": spec,
            "status": status,
        })
    };
    let balancer = json!({"type": "LoadBalancer", "clusterIP": "10.0.0.9", "externalIPs": ["192.0.2.7"]});
    kube.apply(front(
        balancer.clone(),
        json!({"loadBalancer": {"ingress": [{"hostname": "lb.example.com"}, {"ip": "203.0.113.10", "ports": [{"port": 443, "protocol": "TCP"}]}]}}),
    ));
    let options = KubeSluiceOptions { publish: Vec::new(), ..Default::default() }
        .args(&["--publish-service", "ingress-nginx/ingress-nginx-controller"]);
    let sluice = KubeSluice::start(&kube, options);
    let status = || {
        kube.get("networking.k8s.io/v1", "Ingress", "default", "web")
            .map(|i| i["status"]["loadBalancer"].clone())
    };
    let wait_status = |what: &str, want: serde_json::Value| {
        wait_for(Duration::from_secs(10), what, || status().filter(|s| *s == want))
            .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", status(), sluice.child.output()));
    };
    wait_status(
        "the Service's addresses",
        json!({"ingress": [{"ip": "192.0.2.7"}, {"ip": "203.0.113.10"}, {"hostname": "lb.example.com"}]}),
    );
    // The balancer gets another address: followed without a restart.
    kube.apply(front(balancer.clone(), json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.20"}]}})));
    wait_status("the new address", json!({"ingress": [{"ip": "192.0.2.7"}, {"ip": "203.0.113.20"}]}));
    kube.apply(front(
        json!({"type": "NodePort", "clusterIP": "10.0.0.9", "externalIPs": ["198.51.100.4"]}),
        json!({}),
    ));
    wait_status("the NodePort's external IP", json!({"ingress": [{"ip": "198.51.100.4"}]}));
    // Pending (no address yet): cleared, as ingress-nginx writes the empty list.
    kube.apply(front(json!({"type": "LoadBalancer", "clusterIP": "10.0.0.9"}), json!({})));
    wait_for(Duration::from_secs(10), "the cleared status", || {
        status().filter(|s| s["ingress"].as_array().is_none_or(Vec::is_empty))
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", status(), sluice.child.output()));
    kube.apply(front(balancer, json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.30"}]}})));
    wait_status("the address again", json!({"ingress": [{"ip": "192.0.2.7"}, {"ip": "203.0.113.30"}]}));
    // Gone: the status stays, reported.
    let writes = kube.count_requests("PATCH", "/ingresses/web/status");
    kube.delete("v1", "Service", "ingress-nginx", "ingress-nginx-controller");
    sluice.wait_for_log(&["--publish-service Service is missing"], Duration::from_secs(10));
    assert_eq!(status(), Some(json!({"ingress": [{"ip": "192.0.2.7"}, {"ip": "203.0.113.30"}]})));
    assert_eq!(
        kube.count_requests("PATCH", "/ingresses/web/status"),
        writes,
        "nothing written while it is gone"
    );
}

/// Events on Ingresses: a Normal `Sync` for a served one, Warnings for a refused one and an
/// ignored annotation, each written once by the leader alone (never by the follower) and, when a
/// warning goes and comes back, counted on the same Event (`series.count` 2).
#[test]
fn the_leader_alone_writes_events_once_and_counts_them_when_they_recur() {
    let kube = FakeKube::start().unwrap();
    let web = Backend::loopback_group("web", 1);
    publish_web(&kube, "app.test", &[SliceEndpoint::ready(&ip(&web[0]))], web[0].addr().port());
    let annotated = |annotation: &str| {
        let mut extra = ingress("default", "extra", "sluice", "extra.test", "/", "web", 80);
        extra["metadata"]["annotations"] =
            json!({ format!("nginx.ingress.kubernetes.io/{annotation}"): "x" });
        extra
    };
    kube.apply(annotated("no-such-thing"));
    let mut snippet = ingress("default", "snippet", "sluice", "snippet.test", "/", "web", 80);
    snippet["metadata"]["annotations"] = json!({"nginx.ingress.kubernetes.io/server-snippet": "deny all;"});
    kube.apply(snippet);
    let a =
        Sluice::start(&kube, Options { identity: "sluice-a", publish: "192.0.2.1", ..Options::default() });
    let b =
        Sluice::start(&kube, Options { identity: "sluice-b", publish: "192.0.2.2", ..Options::default() });
    a.wait_for_backend("app.test", "/", "web-0", Duration::from_secs(20));
    b.wait_for_backend("app.test", "/", "web-0", Duration::from_secs(20));
    let leader = wait_for(Duration::from_secs(20), "a leader", || lease_holder(&kube)).unwrap();
    let event = |ingress: &str, reason: &str, part: &str| {
        let found: Vec<serde_json::Value> = kube
            .list("events.k8s.io/v1", "Event")
            .into_iter()
            .filter(|e| e["regarding"]["name"] == ingress && e["reason"] == reason)
            .filter(|e| e["note"].as_str().is_some_and(|n| n.contains(part)))
            .collect();
        assert!(found.len() <= 1, "one Event per ingress, reason and message: {found:#?}");
        found.into_iter().next()
    };
    let wait_event = |ingress: &str, reason: &str, part: &str| {
        wait_for(Duration::from_secs(20), &format!("a {reason} Event on {ingress}"), || {
            event(ingress, reason, part)
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", a.child.output()))
    };
    let sync = wait_event("web", "Sync", "Scheduled for sync");
    assert_eq!(
        (sync["type"].as_str(), sync["regarding"]["kind"].as_str()),
        (Some("Normal"), Some("Ingress"))
    );
    assert!(sync["regarding"]["uid"].is_string(), "the Event names the Ingress's uid: {sync}");
    let refused = wait_event("snippet", "Refused", "server-snippet");
    assert_eq!(refused["type"], "Warning");
    assert_eq!(refused["reportingController"], CONTROLLER);
    wait_event("extra", "AnnotationIgnored", "no-such-thing");

    // The annotation goes (another comes, so we know the leader has seen it gone), then comes
    // back: the same Event, counted twice.
    kube.apply(annotated("other-thing"));
    wait_event("extra", "AnnotationIgnored", "other-thing");
    kube.apply(annotated("no-such-thing"));
    wait_for(Duration::from_secs(20), "the Event counted again", || {
        (event("extra", "AnnotationIgnored", "no-such-thing")?["series"]["count"] == 2).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", a.child.output()));
    let events = kube.list("events.k8s.io/v1", "Event");
    assert!(
        events.iter().all(|e| e["reportingInstance"] == leader.as_str()),
        "only the leader writes: {events:#?}"
    );
    assert_eq!(kube.count_requests("POST", "/events"), events.len(), "each Event created once");
}

/// The certificate a TLS server presents for `server_name`, as DER.
fn served_certificate(addr: SocketAddr, server_name: &str) -> anyhow::Result<Vec<u8>> {
    let any = tls::client_config(tls::ClientOptions::default());
    Ok(tls::served_certificate(&tls::connect(addr, Some(server_name), &any)?))
}

#[test]
fn a_secret_update_rotates_the_served_certificate() {
    let kube = FakeKube::start().unwrap();
    let web = Backend::loopback_group("web", 1);
    publish_web(&kube, "secure.test", &[SliceEndpoint::ready(&ip(&web[0]))], web[0].addr().port());
    let ca = tls::Ca::new("Sluice test CA");
    let (a, b) = (ca.leaf(&["secure.test"]), ca.leaf(&["secure.test"]));
    let (der_a, der_b) = (a.der(), b.der());
    kube.apply(tls_secret("default", "secure-tls", &a.cert, &a.key));
    let mut with_tls = ingress("default", "web", "sluice", "secure.test", "/", "web", 80);
    with_tls["spec"]["tls"] = json!([{"hosts": ["secure.test"], "secretName": "secure-tls"}]);
    kube.apply(with_tls);
    let sluice = Sluice::start(&kube, Options { tls: true, ..Options::default() });
    let tls_addr = sluice.tls_addr.unwrap();
    wait_for(Duration::from_secs(20), "certificate A", || {
        served_certificate(tls_addr, "secure.test").ok().filter(|der| *der == der_a)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", sluice.child.output()));
    // HSTS is on for TLS hosts by default, as ingress-nginx sends it (hsts: true, one year,
    // subdomains included).
    let client = tls::client_config(tls::ClientOptions { trust: Some(&ca), ..Default::default() });
    let mut stream = tls::connect(tls_addr, Some("secure.test"), &client).unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: secure.test\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(
        answer.contains("strict-transport-security: max-age=31536000; includesubdomains\r\n"),
        "{answer}"
    );
    // Plain HTTP redirects to HTTPS for a TLS host (ssl-redirect defaults to true).
    let redirect = sluice.get("secure.test", "/x").unwrap();
    assert_eq!(redirect.status, 308, "{redirect:?}");
    kube.apply(tls_secret("default", "secure-tls", &b.cert, &b.key));
    wait_for(Duration::from_secs(10), "certificate B", || {
        served_certificate(tls_addr, "secure.test").ok().filter(|der| *der == der_b)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", sluice.child.output()));
    // A broken Secret keeps the Ingress served, without its own certificate.
    kube.apply(tls_secret("default", "secure-tls", "garbage", &b.key));
    wait_for(Duration::from_secs(10), "the broken Secret to be reported", || {
        sluice.child.output().contains("Secret default/secure-tls").then_some(())
    })
    .unwrap();
}

/// `/api/v1/status` of the admin server, parsed.
fn admin_status(admin: SocketAddr) -> Option<serde_json::Value> {
    let response = http::request(admin, "GET", "a", "/api/v1/status", &[]).ok()?;
    if response.status != 200 {
        return None;
    }
    serde_json::from_str(&response.body).ok()
}

fn readyz(admin: SocketAddr) -> Option<u16> {
    http::request(admin, "GET", "a", "/readyz", &[]).ok().map(|r| r.status)
}

/// `/readyz` says 503 until the first full view of the cluster is applied, then 200.
#[test]
fn readyz_waits_for_the_first_snapshot_from_the_cluster() {
    let kube = FakeKube::start().unwrap();
    let web = Backend::loopback_group("web", 1);
    let port = web[0].addr().port();
    publish_web(&kube, "app.test", &[SliceEndpoint::ready(&ip(&web[0]))], port);
    kube.set_up(false);
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let sluice = Sluice::start(&kube, Options { admin: Some(admin), ..Options::default() });
    wait_for(Duration::from_secs(10), "the admin server", || readyz(admin)).unwrap();
    assert_eq!(readyz(admin), Some(503), "not ready while the API server is unreachable");
    kube.set_up(true);
    wait_for(Duration::from_secs(30), "/readyz to turn 200", || (readyz(admin) == Some(200)).then_some(()))
        .unwrap_or_else(|e| panic!("{e}\n{}", sluice.child.output()));
    sluice.wait_for_backend("app.test", "/", "web-0", Duration::from_secs(10));
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const CONTROLLER: &str = "sluice.dev/ingress-controller";

/// `sluice run --kubernetes` against a fake API server.
struct Sluice {
    child: ChildGuard,
    addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    _dir: TempDir,
}

struct Options<'a> {
    identity: &'a str,
    publish: &'a str,
    tls: bool,
    lease_seconds: u64,
    admin: Option<SocketAddr>,
    nginx_configmap: Option<&'a str>,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            identity: "sluice-a",
            publish: "192.0.2.1",
            tls: false,
            lease_seconds: 3,
            admin: None,
            nginx_configmap: None,
        }
    }
}

impl Sluice {
    fn start(kube: &FakeKube, options: Options<'_>) -> Sluice {
        let dir = TempDir::new();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let tls_addr = options.tls.then(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
        let mut base = format!(
            "workers: 2\naccess_log: {{enabled: false}}\nxdp: {{enabled: false}}\nlisteners:\n  - {{name: web, address: \"{addr}\"}}\n"
        );
        if let Some(tls_addr) = tls_addr {
            base.push_str(&format!("  - {{name: tls, address: \"{tls_addr}\", tls: {{}}}}\n"));
        }
        if let Some(admin) = options.admin {
            base.push_str(&format!("admin: {{address: \"{admin}\"}}\n"));
        }
        let config = dir.0.join("base.yaml");
        std::fs::write(&config, base).unwrap();
        let kubeconfig = kube.write_kubeconfig(&dir.0).unwrap();
        let mut command = Command::new(sluice_binary().unwrap());
        command
            .arg("run")
            .arg("--config")
            .arg(&config)
            .arg("--no-xdp")
            .arg("--kubernetes")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--identity", options.identity, "--publish-address", options.publish])
            .args(["--lease-namespace", "sluice"])
            .args(["--lease-duration-seconds", &options.lease_seconds.to_string()])
            .env("RUST_LOG", "info");
        if let Some(configmap) = options.nginx_configmap {
            command.args(["--nginx-configmap", configmap]);
        }
        let mut child = ChildGuard::spawn(command).unwrap();
        wait_for(Duration::from_secs(20), "sluice to accept", || {
            assert!(child.try_status().is_none(), "sluice exited:\n{}", child.output());
            TcpStream::connect(addr).ok()
        })
        .unwrap();
        Sluice { child, addr, tls_addr, _dir: dir }
    }

    fn get(&self, host: &str, path: &str) -> anyhow::Result<HttpResponse> {
        get(self.addr, host, path, &[])
    }

    /// Waits until `GET host/path` answers from `backend` (the `x-backend` header).
    fn wait_for_backend(&self, host: &str, path: &str, backend: &str, timeout: Duration) {
        wait_for(timeout, &format!("{host}{path} to reach {backend}"), || {
            self.get(host, path).ok().filter(|r| r.status == 200 && r.header(BACKEND_HEADER) == Some(backend))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.child.output()));
    }

    fn wait_for_status(&self, host: &str, path: &str, status: u16, timeout: Duration) {
        wait_for(timeout, &format!("{host}{path} to answer {status}"), || {
            self.get(host, path).ok().filter(|r| r.status == status)
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.child.output()));
    }
}

/// One request on a new connection with a Host header and extra headers.
fn get(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<HttpResponse> {
    http::request(addr, "GET", host, path, headers)
}

/// The next free group of loopback addresses for another Service's backends.
fn backends_from(name: &str, first_ip: u8, count: usize) -> Vec<Backend> {
    for _ in 0..20 {
        let port = free_port();
        let all: Vec<Backend> = (0..count)
            .filter_map(|i| {
                let addr = SocketAddr::from(([127, 0, 0, first_ip + i as u8], port));
                Backend::start(None, addr, &format!("{name}-{i}")).ok()
            })
            .collect();
        if all.len() == count {
            return all;
        }
    }
    panic!("no common port for {count} backends");
}

fn ip(backend: &Backend) -> String {
    backend.addr().ip().to_string()
}

/// The standard objects: class `sluice`, Service `web` (80 → the backends' port), one slice.
fn publish_web(kube: &FakeKube, host: &str, endpoints: &[SliceEndpoint], port: u16) {
    kube.apply(ingress_class("sluice", CONTROLLER, false));
    kube.apply(service("default", "web", 80, port));
    kube.apply(endpoint_slice("default", "web-abc", "web", "IPv4", port, endpoints));
    kube.apply(ingress("default", "web", "sluice", host, "/", "web", 80));
}

/// Sends `count` requests and returns how many each backend answered, plus failures.
fn spread(sluice: &Sluice, host: &str, count: usize) -> (std::collections::BTreeMap<String, usize>, usize) {
    let mut seen = std::collections::BTreeMap::new();
    let mut failed = 0;
    for _ in 0..count {
        match sluice.get(host, "/") {
            Ok(r) if r.status == 200 => {
                *seen.entry(r.header(BACKEND_HEADER).unwrap_or("?").to_owned()).or_insert(0) += 1;
            }
            _ => failed += 1,
        }
    }
    (seen, failed)
}
