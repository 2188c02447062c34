//! The Kubernetes provider under a real control plane's faults, end to end: the `sluice`
//! binary against the fake API server (`fake_kube`) with traffic flowing, while the server
//! throttles, black-holes requests, restarts, answers a landed write with 504, and two
//! instances share a throttled Lease.
//!
//! Backends of one Service share a port on different loopback addresses (127.0.0.2, .3, ...).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use lb_tests::{
    backend::Backend,
    fake_kube::{
        FakeKube, Recorded,
        objects::{SliceEndpoint, endpoint_slice, endpoint_slices, ingress, ingress_class, service},
        sluice::{KubeSluice, KubeSluiceOptions},
    },
    free_port, tls, wait_for,
};
use serde_json::{Value, json};

#[test]
fn throttling_is_visible_within_seconds_and_the_last_state_keeps_serving() {
    let kube = FakeKube::start().unwrap();
    let web = Backend::loopback_group("web", 3);
    let port = web[0].addr().port();
    publish_web(&kube, "app.test", &[SliceEndpoint::ready(&ip(&web[0]))], port);
    let sluice = KubeSluice::start(&kube, KubeSluiceOptions::default());
    sluice.wait_for_backend("app.test", "/", "web-0", Duration::from_secs(20));
    assert_eq!(sluice.metric(r#"sluice_kube_api_throttled_total{status="429"}"#), Some(0.0));

    // Every request throttled (the Lease renewal, every second, meets it first), and the
    // watches cut so the reflectors come back into it.
    kube.fail_next(10_000, "*", "*", 429, Some(Duration::from_secs(1)));
    kube.drop_watches();
    let throttled_from = Instant::now();
    let line =
        sluice.wait_for_log(&["Kubernetes API server is throttling", "status=429"], Duration::from_secs(5));
    assert!(line.contains(r#"retry_after="1""#), "{line}");
    wait_for(Duration::from_secs(5), "the throttled answers in /metrics", || {
        sluice.metric(r#"sluice_kube_api_throttled_total{status="429"}"#).filter(|n| *n > 0.0)
    })
    .unwrap();
    // Upper bound: the first renewal after the rule is at most a second away, then the warning
    // and the counter are immediate; 5 s leaves room for a loaded machine.
    assert!(throttled_from.elapsed() < Duration::from_secs(5), "{:?}", throttled_from.elapsed());
    assert_eq!(sluice.output_count("Kubernetes API server is throttling"), 1, "one warning per streak");
    // The last good state keeps serving for the whole streak.
    for i in 0..30 {
        assert_eq!(sluice.answer("app.test", "/"), Ok("web-0".to_owned()), "request {i}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Throttling ends: a change made meanwhile (spread over several slices) applies.
    kube.clear_rules();
    let endpoints = [SliceEndpoint::ready(&ip(&web[1])), SliceEndpoint::ready(&ip(&web[2]))];
    kube.delete("discovery.k8s.io/v1", "EndpointSlice", "default", "web-abc");
    kube.apply_all(endpoint_slices("default", "web", "IPv4", port, &endpoints, 1));
    sluice.wait_for_backend("app.test", "/", "web-2", Duration::from_secs(30));
    sluice.wait_for_log(&["Kubernetes API server answers again"], Duration::from_secs(10));
    let (seen, failed) = spread(&sluice, "app.test", 40);
    assert_eq!(failed, 0);
    assert!(
        seen.len() == 2 && seen.iter().all(|(b, n)| b != "web-0" && *n >= 10),
        "both slices serve: {seen:?}"
    );
}

#[test]
fn a_black_holed_list_is_abandoned_within_its_timeout_and_retried() {
    let kube = FakeKube::start().unwrap();
    let web = Backend::loopback_group("web", 2);
    let port = web[0].addr().port();
    publish_web(&kube, "app.test", &[SliceEndpoint::ready(&ip(&web[0]))], port);
    let options = KubeSluiceOptions { api_timeout_seconds: Some(2), ..KubeSluiceOptions::default() };
    let sluice = KubeSluice::start(&kube, options);
    sluice.wait_for_backend("app.test", "/", "web-0", Duration::from_secs(20));

    // LISTs of slices go nowhere; a compaction makes the reflector list again.
    kube.black_hole("list", "*/endpointslices");
    kube.compact();
    let held_from = Instant::now();
    // Readiness, not the bound under test: every watcher re-watches after the drop, gets 410
    // and lists again after its error backoff (under a second at first, jittered); with the
    // whole suite in parallel on a loaded 2-core machine that once took over 5 s.
    wait_for(Duration::from_secs(15), "a LIST in the black hole", || {
        (kube.held_requests("list", "*/endpointslices") >= 1).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", sluice.child.output()));
    // Abandoned at its 2 s deadline, then listed again (the watcher's backoff is under a
    // second at first): a second LIST arrives within 2 s + backoff + slack.
    wait_for(Duration::from_secs(8), "the LIST to be retried", || {
        (kube.held_requests("list", "*/endpointslices") >= 2).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", sluice.child.output()));
    assert!(
        held_from.elapsed() >= Duration::from_secs(2),
        "not before its timeout: {:?}",
        held_from.elapsed()
    );
    sluice.wait_for_log(&["Kubernetes API request abandoned", "endpointslices"], Duration::from_secs(2));
    assert!(sluice.metric("sluice_kube_api_timeouts_total").is_some_and(|n| n >= 1.0));
    // Serving from the last good state all along.
    for _ in 0..10 {
        assert_eq!(sluice.answer("app.test", "/"), Ok("web-0".to_owned()));
    }
    kube.apply(endpoint_slice(
        "default",
        "web-abc",
        "web",
        "IPv4",
        port,
        &[SliceEndpoint::ready(&ip(&web[1]))],
    ));
    kube.clear_black_holes();
    sluice.wait_for_backend("app.test", "/", "web-1", Duration::from_secs(20));
}

#[test]
fn a_silent_watch_is_given_up_after_its_timeout_and_resumed() {
    let kube = FakeKube::start().unwrap();
    let web = Backend::loopback_group("web", 2);
    let port = web[0].addr().port();
    publish_web(&kube, "app.test", &[SliceEndpoint::ready(&ip(&web[0]))], port);
    let options = KubeSluiceOptions { watch_timeout_seconds: Some(2), ..KubeSluiceOptions::default() };
    let sluice = KubeSluice::start(&kube, options);
    sluice.wait_for_backend("app.test", "/", "web-0", Duration::from_secs(20));
    // Watches of slices open and then hear nothing (no events, no bookmarks, no end).
    kube.black_hole("watch", "*/endpointslices");
    kube.drop_watches();
    wait_for(Duration::from_secs(10), "a silent watch", || {
        (kube.held_requests("watch", "*/endpointslices") >= 1).then_some(())
    })
    .unwrap();
    let silent_from = Instant::now();
    kube.apply(endpoint_slice(
        "default",
        "web-abc",
        "web",
        "IPv4",
        port,
        &[SliceEndpoint::ready(&ip(&web[1]))],
    ));
    // timeoutSeconds=2 plus kube's 5 s margin: the silent watch is given up and a new one made.
    wait_for(Duration::from_secs(15), "the silent watch to be replaced", || {
        (kube.held_requests("watch", "*/endpointslices") >= 2).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", sluice.child.output()));
    assert!(
        silent_from.elapsed() >= Duration::from_secs(5),
        "not before the idle timeout: {:?}",
        silent_from.elapsed()
    );
    assert_eq!(sluice.answer("app.test", "/"), Ok("web-0".to_owned()), "the last state serves meanwhile");
    kube.clear_black_holes();
    sluice.wait_for_backend("app.test", "/", "web-1", Duration::from_secs(20));
}

#[test]
fn a_black_holed_lease_stops_status_writes_at_the_deadline_and_is_retried() {
    let kube = FakeKube::start().unwrap();
    let web = Backend::loopback_group("web", 1);
    publish_web(&kube, "app.test", &[SliceEndpoint::ready(&ip(&web[0]))], web[0].addr().port());
    let options = KubeSluiceOptions { api_timeout_seconds: Some(2), ..KubeSluiceOptions::default() };
    let sluice = KubeSluice::start(&kube, options);
    wait_for(Duration::from_secs(20), "the status", || status_ip(&kube).filter(|ip| ip == "192.0.2.1"))
        .unwrap();

    kube.black_hole("*", "*/leases/*");
    let holed = Instant::now();
    // Lease 3 s: the leader's own clock says it may write for 2 s after its last renewal was
    // sent, whatever the stuck call does.
    sluice.wait_for_log(&["could not renew the leader Lease before it would expire"], Duration::from_secs(5));
    assert!(holed.elapsed() < Duration::from_secs(3), "stepped down within the lease: {:?}", holed.elapsed());
    // Writes after that would be an old leader's: none may land. An Ingress that needs status
    // now gets none while the Lease is unreachable.
    kube.apply(ingress("default", "second", "sluice", "second.test", "/", "web", 80));
    sluice.wait_for_backend("second.test", "/", "web-0", Duration::from_secs(10));
    let writes_before = kube.status_writes().len();
    wait_for(Duration::from_secs(10), "the Lease call to be retried", || {
        (kube.held_requests("*", "*/leases/*") >= 2).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", sluice.child.output()));
    assert_eq!(kube.status_writes().len(), writes_before, "no status write without the Lease");
    // The Lease back: leading again, the new Ingress gets its status.
    kube.clear_black_holes();
    wait_for(Duration::from_secs(15), "the second Ingress's status", || {
        ingress_status_ip(&kube, "second").filter(|ip| ip == "192.0.2.1")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", sluice.child.output()));
}

#[test]
fn after_a_restart_with_2000_objects_per_kind_the_snapshot_converges() {
    const COUNT: usize = 2000;
    let kube = FakeKube::start().unwrap();
    let web = Backend::loopback_group("web", 2);
    let port = web[0].addr().port();
    kube.apply(ingress_class("sluice", CONTROLLER, false));
    let mut objects = Vec::with_capacity(COUNT * 4);
    for i in 0..COUNT {
        let name = format!("s{i}");
        objects.push(service("default", &name, 80, port));
        objects.push(endpoint_slice(
            "default",
            &format!("{name}-1"),
            &name,
            "IPv4",
            port,
            &[SliceEndpoint::ready(&ip(&web[0]))],
        ));
        objects.push(ingress("default", &name, "sluice", &format!("h{i}.test"), "/", &name, 80));
        objects.push(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"namespace": "default", "name": name}, "type": "Opaque", "data": {"k": "dg=="}}));
    }
    kube.apply_all(objects);
    let sluice = KubeSluice::start(
        &kube,
        KubeSluiceOptions { api_timeout_seconds: Some(20), ..KubeSluiceOptions::default() },
    );
    sluice.wait_for_log(
        &["Kubernetes configuration applied", &format!("ingresses={COUNT}")],
        Duration::from_secs(120),
    );
    sluice.wait_for_backend("h1999.test", "/", "web-0", Duration::from_secs(10));
    // Paged lists: 500 a page.
    let continued = kube.requests().iter().filter(|r| r.query.contains("continue=")).count();
    assert!(continued >= 3 * 4, "paged relists: {continued}");

    kube.restart(Duration::from_secs(3), Duration::from_secs(1));
    // While it comes up (and after, as another client would), the cluster changes.
    let mut changes = Vec::new();
    for i in 0..10 {
        kube.delete("networking.k8s.io/v1", "Ingress", "default", &format!("s{i}"));
    }
    changes.push(ingress("default", "new", "sluice", "new.test", "/", "s10", 80));
    changes.push(endpoint_slice(
        "default",
        "s1999-1",
        "s1999",
        "IPv4",
        port,
        &[SliceEndpoint::ready(&ip(&web[1]))],
    ));
    kube.apply_all(changes);
    // The last good state serves meanwhile.
    let restarted = Instant::now();
    while restarted.elapsed() < Duration::from_secs(3) {
        assert_eq!(sluice.answer("h100.test", "/"), Ok("web-0".to_owned()));
        std::thread::sleep(Duration::from_millis(100));
    }
    sluice.wait_for_backend("h1999.test", "/", "web-1", Duration::from_secs(120));
    sluice.wait_for_backend("new.test", "/", "web-0", Duration::from_secs(30));
    sluice.wait_for_status("h0.test", "/", 404, Duration::from_secs(30));
    let expected = COUNT - 10 + 1;
    sluice.wait_for_log(
        &["Kubernetes configuration applied", &format!("ingresses={expected}")],
        Duration::from_secs(30),
    );
    assert!(sluice.metric(r#"sluice_kube_api_throttled_total{status="429"}"#).is_some_and(|n| n > 0.0));
    // The relist after the restart met 410 (history gone) and listed again, in pages.
    assert!(sluice.child.output().contains("410 Gone"), "{}", sluice.child.output());
}

#[test]
fn two_instances_under_a_throttled_lease_api_never_both_write_status() {
    let kube = FakeKube::start().unwrap();
    let web = Backend::loopback_group("web", 1);
    publish_web(&kube, "app.test", &[SliceEndpoint::ready(&ip(&web[0]))], web[0].addr().port());
    let a = KubeSluice::start(&kube, KubeSluiceOptions::default().identity("sluice-a", "192.0.2.1"));
    let b = KubeSluice::start(&kube, KubeSluiceOptions::default().identity("sluice-b", "192.0.2.2"));
    let address = |id: &str| if id == "sluice-a" { "192.0.2.1" } else { "192.0.2.2" };
    let mut leader = wait_for(Duration::from_secs(20), "a leader", || lease_holder(&kube)).unwrap();
    // Rounds: the leader's Lease calls are throttled (its path to the server congested), so
    // it cannot renew; the other takes over once the lease runs out. Every status write must
    // come from the holder of that moment, the old leader's included: it still believes
    // itself leader for a while, and each leader publishes its own address, so a late write
    // would show as the status flapping back.
    for round in 0..4 {
        wait_for(Duration::from_secs(10), "the leader's status", || {
            status_ip(&kube).filter(|ip| ip == address(&leader))
        })
        .unwrap();
        kube.fail_next_from(
            &format!("({leader})"),
            100_000,
            "*",
            "*/leases/*",
            429,
            Some(Duration::from_secs(1)),
        );
        let next = wait_for(Duration::from_secs(15), "the other instance to lead", || {
            lease_holder(&kube).filter(|h| *h != leader)
        })
        .unwrap_or_else(|e| panic!("round {round}: {e}\n{}\n{}", a.child.output(), b.child.output()));
        wait_for(Duration::from_secs(10), "the new leader's status", || {
            status_ip(&kube).filter(|ip| ip == address(&next))
        })
        .unwrap();
        // A window in which a late write of the old leader would land.
        std::thread::sleep(Duration::from_secs(2));
        kube.clear_rules();
        assert_eq!(a.answer("app.test", "/"), Ok("web-0".to_owned()));
        assert_eq!(b.answer("app.test", "/"), Ok("web-0".to_owned()));
        leader = next;
    }
    let writes = assert_status_follows_the_lease(&kube.requests());
    assert!(writes >= 5, "{writes} status writes");
    assert!(kube.requests().iter().any(|r| r.status == 429 && r.path.contains("/leases/")));
}

#[test]
fn an_applied_then_504_lease_renewal_does_not_make_the_leader_step_down() {
    let kube = FakeKube::start().unwrap();
    let web = Backend::loopback_group("web", 1);
    publish_web(&kube, "app.test", &[SliceEndpoint::ready(&ip(&web[0]))], web[0].addr().port());
    let a = KubeSluice::start(&kube, KubeSluiceOptions::default().identity("sluice-a", "192.0.2.1"));
    wait_for(Duration::from_secs(20), "a to lead", || {
        (lease_holder(&kube).as_deref() == Some("sluice-a")).then_some(())
    })
    .unwrap();
    let b = KubeSluice::start(&kube, KubeSluiceOptions::default().identity("sluice-b", "192.0.2.2"));
    b.wait_for_backend("app.test", "/", "web-0", Duration::from_secs(20));
    // The next renewal lands and its answer is a 504; the client retries it and meets 409.
    kube.apply_then_fail(1, "PUT", "*/leases/sluice-leader", 504);
    wait_for(Duration::from_secs(5), "the renewal answered 504", || {
        kube.requests().iter().any(|r| r.method == "PUT" && r.status == 504 && r.applied).then_some(())
    })
    .unwrap();
    a.wait_for_log(&["the Lease renewal landed though its answer was lost"], Duration::from_secs(5));
    // For two lease durations a stays the leader and never says otherwise.
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        assert_eq!(lease_holder(&kube).as_deref(), Some("sluice-a"));
        std::thread::sleep(Duration::from_millis(200));
    }
    let output = a.child.output();
    assert!(!output.contains("no longer the leader"), "{output}");
    assert_eq!(status_ip(&kube).as_deref(), Some("192.0.2.1"));
}

#[test]
fn a_publish_address_the_api_server_would_refuse_is_refused_at_start() {
    let kube = FakeKube::start().unwrap();
    let dir = lb_tests::temp_dir::TempDir::new();
    let (addr, admin) = (loopback(), loopback());
    for bad in ["lb:80", "http://lb.example.com", "LB.example.com"] {
        let options = KubeSluiceOptions { publish: vec![bad.into()], ..KubeSluiceOptions::default() };
        let output = KubeSluice::command(&kube, &options, &dir, addr, admin).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{bad}: {stderr}");
        assert!(
            stderr.contains(&format!("--publish-address {bad:?} is neither an IP address nor a DNS name")),
            "{bad}: {stderr}"
        );
    }
    assert!(kube.requests().is_empty(), "refused before any request");
}

#[test]
fn in_cluster_the_token_rotates_on_disk_and_a_401_is_named() {
    let ca = tls::Ca::new("Sluice test cluster CA");
    let mut server = (*tls::server_config(&ca.leaf(&["127.0.0.1"]))).clone();
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    let kube = FakeKube::start_tls(std::sync::Arc::new(server)).unwrap();
    kube.require_tokens(Some(&["token-1"]));
    let web = Backend::loopback_group("web", 3);
    let port = web[0].addr().port();
    publish_web(&kube, "app.test", &[SliceEndpoint::ready(&ip(&web[0]))], port);
    // The service account's files, where a pod has them, in a scratch root.
    let root = lb_tests::temp_dir::TempDir::new();
    std::fs::write(root.0.join("token"), "token-1\n").unwrap();
    std::fs::write(root.0.join("ca.crt"), ca.pem()).unwrap();
    std::fs::write(root.0.join("namespace"), "sluice").unwrap();
    let env = vec![
        ("KUBERNETES_SERVICE_HOST".to_owned(), "127.0.0.1".to_owned()),
        ("KUBERNETES_SERVICE_PORT".to_owned(), kube.addr().port().to_string()),
        ("SLUICE_SERVICEACCOUNT_DIR".to_owned(), root.0.display().to_string()),
    ];
    let sluice = KubeSluice::start(
        &kube,
        KubeSluiceOptions { kubeconfig: false, env, ..KubeSluiceOptions::default() },
    );
    sluice.wait_for_backend("app.test", "/", "web-0", Duration::from_secs(20));
    wait_for(Duration::from_secs(10), "the status over HTTPS", || status_ip(&kube)).unwrap();

    // The kubelet rotates the token: both are valid for a while, then only the new one.
    kube.require_tokens(Some(&["token-1", "token-2"]));
    std::fs::write(root.0.join("token"), "token-2\n").unwrap();
    let rotated_at = kube.requests().len();
    wait_for(Duration::from_secs(10), "a request with the new token", || {
        // Lease renewals (every second) carry it once the file is read again.
        (kube.requests().len() > rotated_at + 2).then_some(())
    })
    .unwrap();
    kube.require_tokens(Some(&["token-2"]));
    kube.apply(endpoint_slice(
        "default",
        "web-abc",
        "web",
        "IPv4",
        port,
        &[SliceEndpoint::ready(&ip(&web[1]))],
    ));
    kube.drop_watches();
    sluice.wait_for_backend("app.test", "/", "web-1", Duration::from_secs(20));
    assert!(kube.requests().iter().all(|r| r.status != 401), "no request was refused across the rotation");

    // The token is revoked: 401s, named clearly, counted; the last state keeps serving.
    kube.require_tokens(Some(&["token-3"]));
    kube.drop_watches();
    let line = sluice.wait_for_log(&["refused our credentials (401 Unauthorized)"], Duration::from_secs(10));
    assert!(line.contains("token"), "{line}");
    assert!(sluice.metric("sluice_kube_api_unauthorized_total").is_some_and(|n| n >= 1.0));
    for _ in 0..10 {
        assert_eq!(sluice.answer("app.test", "/"), Ok("web-1".to_owned()));
    }
    // A new token on disk: read again at once after the 401s, and changes apply.
    std::fs::write(root.0.join("token"), "token-3").unwrap();
    kube.apply(endpoint_slice(
        "default",
        "web-abc",
        "web",
        "IPv4",
        port,
        &[SliceEndpoint::ready(&ip(&web[2]))],
    ));
    sluice.wait_for_backend("app.test", "/", "web-2", Duration::from_secs(30));
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const CONTROLLER: &str = "sluice.dev/ingress-controller";

trait OutputCount {
    fn output_count(&self, needle: &str) -> usize;
}

impl OutputCount for KubeSluice {
    fn output_count(&self, needle: &str) -> usize {
        self.child.output().matches(needle).count()
    }
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Walks the recorded requests in order, following the Lease's holder through its applied
/// writes, and checks that every applied status write came from the holder of that moment.
/// Returns how many status writes there were.
fn assert_status_follows_the_lease(requests: &[Recorded]) -> usize {
    let mut holder: Option<String> = None;
    let mut writes = 0;
    for (i, request) in requests.iter().enumerate() {
        if !request.applied {
            continue;
        }
        if request.path.contains("/leases/")
            || (request.method == "POST" && request.path.ends_with("/leases"))
        {
            let body: Value = serde_json::from_str(&request.body).unwrap_or(Value::Null);
            holder = body["spec"]["holderIdentity"].as_str().map(str::to_owned);
        } else if request.path.ends_with("/status") {
            writes += 1;
            let writer =
                request.user_agent.rsplit_once('(').map(|(_, id)| id.trim_end_matches(')').to_owned());
            assert_eq!(
                writer,
                holder,
                "status write {i} by {:?} while the Lease was held by {holder:?}:\n{:#?}",
                request.user_agent,
                &requests[i.saturating_sub(10)..=i]
            );
        }
    }
    writes
}

fn lease_holder(kube: &FakeKube) -> Option<String> {
    kube.get("coordination.k8s.io/v1", "Lease", "sluice", "sluice-leader")?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_owned)
}

fn ingress_status_ip(kube: &FakeKube, name: &str) -> Option<String> {
    kube.get("networking.k8s.io/v1", "Ingress", "default", name)?["status"]["loadBalancer"]["ingress"][0]["ip"]
        .as_str()
        .map(str::to_owned)
}

fn status_ip(kube: &FakeKube) -> Option<String> {
    ingress_status_ip(kube, "web")
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

/// Sends `count` requests; how many each backend answered, and the failures.
fn spread(
    sluice: &KubeSluice,
    host: &str,
    count: usize,
) -> (std::collections::BTreeMap<String, usize>, usize) {
    let mut seen = std::collections::BTreeMap::new();
    let mut failed = 0;
    for _ in 0..count {
        match sluice.answer(host, "/") {
            Ok(backend) => *seen.entry(backend).or_insert(0) += 1,
            Err(_) => failed += 1,
        }
    }
    (seen, failed)
}
