//! Chaos under load (issue #24): faults injected while wrk-style traffic runs (keep-alive
//! connections on threads of their own, each sending back to back), with every failed request
//! counted and the count asserted:
//!
//! - backends killed and restarted mid-run: idempotent requests, which Sluice retries on
//!   another endpoint (`retries.on: [error]`), never fail; a `POST` may fail only when it was in
//!   flight at the killed backend (at most one per connection and kill, each a 502); a
//!   restarted backend gets traffic again within one health-check interval;
//! - a worker stalled (XDP steering, root): new connections move away from it within a second,
//!   and connections held on the other workers keep their worker with no failure and no stall.
//!
//! Each test is bounded (a few seconds of traffic) and waits on conditions with deadlines; the
//! only sleeps are the spans of traffic the faults happen in.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use lb_tests::{
    backend::{BACKEND_HEADER, Backend, HEALTH_PATH, Mode, Options},
    fake_kube::{
        FakeKube,
        objects::{SliceEndpoint, endpoint_slice, ingress, ingress_class, service},
        sluice::{KubeSluice, KubeSluiceOptions},
    },
    free_port,
    http::{Client, Ended, HttpResponse, http_get},
    require_root,
    sluice::{Binary, Proxy, wait_for_load},
    temp_dir::TempDir,
    tls::{Ca, ClientOptions, client_config, connect, quoted, served_certificate},
    topology::{NODE_CLIENT_IF, Topology},
    wait_for,
};
use lb_userspace::{config::Config, node::Node, provider::kube::CONTROLLER, proxy::Fault};

/// Health checks every 300 ms; one pass brings an endpoint back.
const CHECK_INTERVAL_MS: u64 = 300;

#[test]
fn backends_killed_and_restarted_fail_only_requests_in_flight_and_get_traffic_back() {
    let mut backends: Vec<Backend> = (0..3).map(|i| checked_backend(&format!("b{i}"), None)).collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(Backend::addr).collect();
    let endpoints: Vec<String> = addrs.iter().map(|a| format!("{{address: \"{a}\"}}")).collect();
    let proxy = Proxy::start(&format!(
        "workers: 2\nxdp: {{enabled: false}}\naccess_log: {{enabled: false}}\n\
         listeners: [{{name: web, address: \"{{listen}}\"}}]\n\
         virtual_hosts:\n  - name: all\n    domains: [\"*\"]\n    routes:\n      - {{backend: app}}\n\
         backends:\n  - name: app\n    endpoints: [{}]\n    health_check: {{path: {HEALTH_PATH}, \
         interval_ms: {CHECK_INTERVAL_MS}, timeout_ms: 200, healthy_threshold: 1, unhealthy_threshold: 2}}\n",
        endpoints.join(", ")
    ));
    const GETS: usize = 4;
    const POSTS: usize = 2;
    let addr = proxy.addr;
    let steps = (0..GETS + POSTS)
        .map(|i| keep_alive(move || TcpStream::connect(addr), if i < GETS { "GET" } else { "POST" }, "t"))
        .collect();
    let load = Load::start(steps);
    wait_for_load(&load.sent, 200, "before the first kill");

    let mut back_after = Vec::new();
    for victim in [1, 0, 1] {
        let name = backends[victim].name().to_owned();
        // Dropping a backend closes its listener and every connection it has open, with
        // whatever requests they carry.
        backends.remove(victim);
        wait_for_load(&load.sent, 300, &format!("with {name} dead"));
        let restarted = Instant::now();
        backends.insert(victim, checked_backend(&name, Some(addrs[victim])));
        wait_for(Duration::from_secs(5), &format!("{name} to get requests again"), || {
            (backends[victim].requests() > 0).then_some(())
        })
        .unwrap();
        back_after.push(restarted.elapsed());
        wait_for_load(&load.sent, 200, &format!("after {name} came back"));
    }
    let tally = load.stop();
    eprintln!("backend chaos: {tally:?}, traffic back after {back_after:?}");

    let failed_gets: Vec<_> = tally.failures.iter().filter(|f| f.starts_with("GET")).collect();
    assert!(failed_gets.is_empty(), "retried GETs failed: {failed_gets:?}");
    let failed_posts: Vec<_> = tally.failures.iter().filter(|f| f.starts_with("POST")).collect();
    // One request in flight per connection at most: per kill, at most one per POST connection.
    assert!(failed_posts.len() <= POSTS * 3, "more POSTs failed than were in flight: {failed_posts:?}");
    assert!(failed_posts.iter().all(|f| f.contains(": 502 ")), "in-flight POSTs get 502: {failed_posts:?}");
    for name in ["b0", "b1", "b2"] {
        assert!(tally.ok_by.get(name).copied().unwrap_or(0) > 100, "{name} served: {tally:?}");
    }
    // A dead endpoint is found out by its first failed check, a live one put back by its first
    // pass: the restarted backend's traffic comes within one interval (plus the check's own
    // time and the scheduling of a loaded machine).
    let bound = Duration::from_millis(CHECK_INTERVAL_MS + 700);
    assert!(
        back_after.iter().all(|t| *t <= bound),
        "traffic came back after {back_after:?} (bound {bound:?})"
    );
}

#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn a_stalled_worker_loses_new_connections_and_spares_the_other_workers_connections() {
    require_root!();
    let topology = Topology::new(0).unwrap();
    let backend = Backend::launch(
        "app",
        Options { netns: Some(&topology.node), addr: "127.0.0.1:0".parse().unwrap(), ..Options::default() },
    )
    .unwrap();
    let node = start_xdp_node(&topology, backend.addr());
    let target = SocketAddr::from((topology.node_v4(), XDP_PORT));

    // Keep-alive connections made in the client namespace, with the worker that took each.
    let held: Vec<(Client, usize)> = topology
        .client
        .run(move || {
            (0..12)
                .map(|_| {
                    let mut client = Client::over_tcp(TcpStream::connect(target).unwrap()).unwrap();
                    let worker = worker_of(&client.get("t", "/first"));
                    (client, worker)
                })
                .collect()
        })
        .unwrap();
    let victim = held[0].1;
    let (on_victim, on_others): (Vec<_>, Vec<_>) = held.into_iter().partition(|(_, w)| *w == victim);
    assert!(!on_others.is_empty(), "held connections reach several workers");
    let others = Load::start(on_others.into_iter().map(|(client, worker)| pinned(client, worker)).collect());
    let stalled_conns =
        Load::start(on_victim.into_iter().map(|(client, worker)| pinned(client, worker)).collect());
    // New connections, one request each, from a thread in the client namespace; each labelled
    // with its worker and whether it began in the window where the worker must be avoided.
    let injected: Arc<Mutex<Option<Instant>>> = Arc::default();
    let waiting = Waiting::default();
    let new_connections = {
        let (injected, waiting) = (injected.clone(), waiting.clone());
        let steps =
            move || (0..2).map(|_| new_connection_step(target, injected.clone(), waiting.clone())).collect();
        topology.client.run(move || Load::start(steps())).unwrap()
    };
    wait_for_load(&others.sent, 100, "before the stall");
    wait_for_load(&new_connections.sent, 20, "of new connections before the stall");

    let before = others.max_latency();
    assert!(node.workers().inject(victim, Fault::Stall(STALL)));
    *injected.lock().unwrap() = Some(Instant::now());
    // The traffic runs through the stall, then on until the worker is back.
    std::thread::sleep(STALL);
    wait_for(Duration::from_secs(5), "new connections to reach the worker again", || {
        new_connections.tally().ok_by.contains_key(&format!("after:w{victim}")).then_some(())
    })
    .unwrap();
    let (others, stalled_conns, new_connections) =
        (others.stop(), stalled_conns.stop(), new_connections.stop());
    eprintln!(
        "worker stall: victim {victim}; other workers' connections {others:?}; the victim's {stalled_conns:?}; new connections {new_connections:?}"
    );

    assert!(others.failures.is_empty(), "connections on other workers failed: {others:?}");
    assert!(others.ok_by.keys().all(|w| *w != format!("w{victim}")), "a held connection moved: {others:?}");
    // Unaffected: no request on another worker waited anywhere near the stall (the maximum
    // before it is the scale).
    assert!(
        others.max_latency < Duration::from_millis(500),
        "other workers' requests waited {:?} (before the stall {before:?})",
        others.max_latency
    );
    // The stalled worker's own connections wait for it, and are answered when it resumes.
    assert!(stalled_conns.failures.is_empty(), "{stalled_conns:?}");
    assert!(new_connections.failures.is_empty(), "new connections failed: {new_connections:?}");
    // Those put on the worker before it was taken out waited for it, and were answered by it.
    let waited = std::mem::take(&mut *waiting.lock().unwrap());
    for (phase, mut client) in waited {
        client.stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let response =
            HttpResponse::try_from(client.read_response(false)).expect("a waiting connection is answered");
        assert_eq!(
            (phase, worker_of(&response)),
            ("around", victim),
            "only the stalled worker made one wait"
        );
    }
    let avoided = format!("avoid:w{victim}");
    assert!(
        !new_connections.ok_by.contains_key(&avoided),
        "new connections reached the stalled worker: {new_connections:?}"
    );
    let in_window: u64 =
        new_connections.ok_by.iter().filter(|(k, _)| k.starts_with("avoid:")).map(|(_, n)| n).sum();
    assert!(in_window >= 50, "new connections kept coming during the stall: {new_connections:?}");
    node.stop().unwrap();
}

#[test]
fn api_server_down_during_a_rolling_update_fails_no_request() {
    let kube = FakeKube::start().unwrap();
    let old = Backend::loopback_group("old", 2);
    let mut new = Backend::loopback_group("new", 2);
    let (old_port, new_port) = (old[0].addr().port(), new[0].addr().port());
    let ip = |b: &Backend| b.addr().ip().to_string();
    kube.apply(ingress_class("sluice", CONTROLLER, false));
    kube.apply(service("default", "web", 80, old_port));
    let old_slice = |endpoints: &[SliceEndpoint]| {
        endpoint_slice("default", "web-old", "web", "IPv4", old_port, endpoints)
    };
    let new_slice = |endpoints: &[SliceEndpoint]| {
        endpoint_slice("default", "web-new", "web", "IPv4", new_port, endpoints)
    };
    kube.apply(old_slice(&[SliceEndpoint::ready(&ip(&old[0])), SliceEndpoint::ready(&ip(&old[1]))]));
    kube.apply(ingress("default", "web", "sluice", "roll.test", "/", "web", 80));
    let sluice = KubeSluice::start(&kube, KubeSluiceOptions::default());
    sluice.wait_for_backend("roll.test", "/", "old-0", Duration::from_secs(20));
    let addr = sluice.addr;
    let load = Load::start(
        (0..4).map(|_| keep_alive(move || TcpStream::connect(addr), "GET", "roll.test")).collect(),
    );
    wait_for_load(&load.sent, 100, "before the rollout");

    // The rollout as the Deployment controller and kubelet write it: a new pod turns ready,
    // an old one terminates (serving while it drains).
    kube.apply(new_slice(&[SliceEndpoint::ready(&ip(&new[0])), SliceEndpoint::not_ready(&ip(&new[1]))]));
    wait_for(Duration::from_secs(10), "the new pod to take requests", || {
        (new[0].requests() > 0).then_some(())
    })
    .unwrap();
    kube.apply(old_slice(&[SliceEndpoint::terminating(&ip(&old[0])), SliceEndpoint::ready(&ip(&old[1]))]));
    let old0 = old[0].addr().to_string();
    wait_for(Duration::from_secs(10), "Sluice to see the old pod terminating", || {
        endpoint_ready(sluice.admin, &old0).is_some_and(|ready| !ready).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", sluice.child.output()));

    // The API server goes down mid-rollout. The rollout goes on where it needs no API server:
    // the terminating pod exits, then the other old pod gets its SIGTERM and exits too, which
    // nobody can write into an EndpointSlice now: Sluice still has it ready.
    kube.set_up(false);
    let mut old = old;
    drop(old.remove(0));
    wait_for_load(&load.sent, 200, "with the API server down");
    drop(old.remove(0));
    wait_for_load(&load.sent, 300, "with both old pods gone and the API server down");
    // What the controllers write once they reach it again.
    assert!(kube.delete("discovery.k8s.io/v1", "EndpointSlice", "default", "web-old"));
    kube.apply(new_slice(&[SliceEndpoint::ready(&ip(&new[0])), SliceEndpoint::ready(&ip(&new[1]))]));
    kube.set_up(true);
    wait_for(Duration::from_secs(20), "the second new pod to take requests", || {
        (new[1].requests() > 0).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", sluice.child.output()));
    wait_for_load(&load.sent, 200, "after the API server came back");
    let tally = load.stop();
    eprintln!("API server down during a rollout: {tally:?}");
    assert!(tally.failures.is_empty(), "{} requests failed: {tally:?}", tally.failures.len());
    assert!(tally.ok_by.get("new-1").is_some_and(|n| *n > 0), "{tally:?}");
    drop(new.remove(1));
}

#[test]
fn certificate_files_rotated_while_clients_handshake_fail_no_handshake() {
    let ca = Ca::new("chaos CA");
    let pem = TempDir::new();
    let (cert_path, key_path) = (pem.0.join("tls.crt"), pem.0.join("tls.key"));
    let first = ca.leaf(&["a.test"]);
    std::fs::write(&cert_path, &first.cert).unwrap();
    std::fs::write(&key_path, &first.key).unwrap();
    let backend = Backend::with_mode("be", Mode::Name);
    let sluice = Binary::start(&format!(
        "workers: 2\nxdp: {{enabled: false}}\naccess_log: {{enabled: false}}\n\
         listeners: [{{name: web, address: \"{{listen}}\", tls: {{default_certificate: a}}}}]\n\
         certificates: [{{name: a, cert_path: {}, key_path: {}}}]\n\
         virtual_hosts: [{{name: a, domains: [a.test], tls: {{certificate: a}}, routes: [{{backend: be}}]}}]\n\
         backends: [{{name: be, endpoints: [{{address: \"{}\"}}]}}]\n",
        quoted(cert_path.to_str().unwrap()),
        quoted(key_path.to_str().unwrap()),
        backend.addr()
    ));
    // The certificates served so far, in order: a handshake is labelled by the index of the one
    // it saw.
    let served: Arc<Mutex<Vec<Vec<u8>>>> = Arc::new(Mutex::new(vec![first.der()]));
    let config = client_config(ClientOptions { trust: Some(&ca), ..Default::default() });
    let load =
        Load::start((0..4).map(|_| handshake_step(sluice.addr, config.clone(), served.clone())).collect());
    wait_for_load(&load.sent, 50, "before the first rotation");

    const ROTATIONS: usize = 10;
    let mut switched_after = Vec::new();
    for i in 1..=ROTATIONS {
        let next = ca.leaf(&["a.test"]);
        served.lock().unwrap().push(next.der());
        // Written in place, the key before the certificate, as a careless script does: the
        // watcher sees a pair that does not match and a file half written, and must refuse
        // both while the old pair serves.
        let written = Instant::now();
        std::fs::write(&key_path, &next.key).unwrap();
        std::fs::write(&cert_path, &next.cert).unwrap();
        wait_for(Duration::from_secs(10), &format!("handshakes to see certificate {i}"), || {
            load.tally().ok_by.contains_key(&format!("cert{i}")).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", sluice.child.output()));
        switched_after.push(written.elapsed());
        wait_for_load(&load.sent, 20, &format!("after rotation {i}"));
    }
    let tally = load.stop();
    eprintln!("certificate rotation: {tally:?}; new certificate served after {switched_after:?}");
    assert!(tally.failures.is_empty(), "{} handshakes failed: {tally:?}", tally.failures.len());
    let last = format!("cert{ROTATIONS}");
    assert!(tally.ok_by.get(&last).is_some_and(|n| *n >= 20), "the last certificate serves: {tally:?}");
}

#[test]
fn configuration_flapping_100_times_under_load_fails_nothing_and_leaks_nothing() {
    let (one, two) = (Backend::with_mode("one", Mode::Name), Backend::with_mode("two", Mode::Name));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    // Two versions that differ in the backend's endpoint and connection settings (a new
    // upstream pool each time) and in a route.
    let version = |backend: &Backend, connect_ms: u32, extra_route: &str| {
        format!(
            "workers: 2\nxdp: {{enabled: false}}\naccess_log: {{enabled: false}}\nadmin: {{address: \"{admin}\"}}\n\
             listeners: [{{name: web, address: \"{{listen}}\"}}]\n\
             virtual_hosts:\n  - name: all\n    domains: [\"*\"]\n    routes:\n\
             \x20     - {{match: {{path: {{prefix: /{extra_route}}}}}, backend: app}}\n      - {{backend: app}}\n\
             backends:\n  - {{name: app, endpoints: [{{address: \"{}\"}}], timeouts: {{connect_ms: {connect_ms}}}}}\n",
            backend.addr()
        )
    };
    let versions = [version(&one, 1000, "one"), version(&two, 2000, "two")];
    let sluice = Binary::start(&versions[0]);
    let addr = sluice.addr;
    let load =
        Load::start((0..4).map(|_| keep_alive(move || TcpStream::connect(addr), "GET", "t")).collect());
    let reloads = || metric(admin, "sluice_config_reloads_total{result=\"ok\"}").unwrap_or(0.0) as u64;
    let mut usage = Vec::new();
    const FLAPS: usize = 100;
    let started = Instant::now();
    for i in 1..=FLAPS {
        let before = reloads();
        sluice.rewrite_config(&versions[i % 2]);
        // Each version is applied before the next is written: 100 reloads, not a burst the
        // watcher folds into one.
        // Polled every 10 ms (wait_for backs off to 100 ms, which would double the test's time).
        let deadline = Instant::now() + Duration::from_secs(10);
        while reloads() == before {
            assert!(Instant::now() < deadline, "reload {i} did not come\n{}", sluice.child.output());
            std::thread::sleep(Duration::from_millis(10));
        }
        if i == 10 || i == FLAPS {
            usage.push((sluice.rss_kib(), open_fds(sluice.child.pid())));
        }
    }
    let flapping = started.elapsed();
    // The final version is the one served.
    let last = ["one", "two"][FLAPS % 2];
    wait_for(Duration::from_secs(5), "the last version to serve", || {
        (http_get(addr, "/").ok()?.header(BACKEND_HEADER)? == last).then_some(())
    })
    .unwrap();
    let served_from = load.tally().ok_by.get(last).copied().unwrap_or(0);
    wait_for_load(&load.sent, 100, "after the last reload");
    let tally = load.stop();
    eprintln!(
        "configuration flapping: {FLAPS} reloads in {flapping:?}; {tally:?}; (RSS KiB, fds) after 10 and {FLAPS}: {usage:?}"
    );
    assert!(tally.failures.is_empty(), "{} requests failed: {tally:?}", tally.failures.len());
    let last_served = tally.ok_by.get(last).copied().unwrap_or(0);
    assert!(last_served >= served_from + 100, "only the last version serves at the end: {tally:?}");
    assert_eq!(reloads(), FLAPS as u64, "every version applied once");
    let ((rss_10, fds_10), (rss_end, fds_end)) = (usage[0], usage[1]);
    assert!(fds_end <= fds_10 + 8, "file descriptors grew from {fds_10} to {fds_end}");
    assert!(rss_end <= rss_10 + 16 * 1024, "RSS grew from {rss_10} KiB to {rss_end} KiB");
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A plain backend naming itself, whose health path answers 200; on `addr` when given (a
/// restart on the address it had).
fn checked_backend(name: &str, addr: Option<SocketAddr>) -> Backend {
    let addr = addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
    Backend::launch(
        name,
        Options { addr, mode: Mode::Name, health_path: Some(HEALTH_PATH), ..Options::default() },
    )
    .unwrap()
}

/// One request of a load thread: `Ok(label)` counted under its label, `Err(why)` a failure.
type Step = Box<dyn FnMut() -> Result<String, String> + Send>;

/// What a load saw.
#[derive(Debug, Default, Clone)]
struct Tally {
    ok_by: BTreeMap<String, u64>,
    failures: Vec<String>,
    max_latency: Duration,
}

/// Traffic as wrk makes it: one thread per step function, each calling it back to back until
/// stopped (bounded: 60 s or 200,000 requests a thread). Threads inherit the network namespace
/// of the thread that starts them.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    tally: Arc<Mutex<Tally>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(steps: Vec<Step>) -> Load {
        let (stop, sent, tally) =
            (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::default());
        let threads = steps
            .into_iter()
            .map(|mut step| {
                let (stop, sent, tally): (_, _, Arc<Mutex<Tally>>) =
                    (stop.clone(), sent.clone(), Arc::clone(&tally));
                std::thread::spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    for _ in 0..200_000 {
                        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                            break;
                        }
                        let began = Instant::now();
                        let outcome = step();
                        let took = began.elapsed();
                        let mut tally = tally.lock().unwrap();
                        tally.max_latency = tally.max_latency.max(took);
                        match outcome {
                            Ok(label) => *tally.ok_by.entry(label).or_default() += 1,
                            Err(why) => tally.failures.push(why),
                        }
                        drop(tally);
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Load { stop, sent, tally, threads }
    }

    fn tally(&self) -> Tally {
        self.tally.lock().unwrap().clone()
    }

    fn max_latency(&self) -> Duration {
        self.tally.lock().unwrap().max_latency
    }

    fn stop(mut self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        for thread in std::mem::take(&mut self.threads) {
            thread.join().expect("a load thread panicked");
        }
        self.tally()
    }
}

/// Requests on one keep-alive connection (a new one after a failure), labelled by the backend
/// that answered; anything but a whole 200 is a failure, named `METHOD: STATUS BODY` or
/// `METHOD: error`.
fn keep_alive(
    connect: impl Fn() -> std::io::Result<TcpStream> + Send + 'static,
    method: &'static str,
    host: &'static str,
) -> Step {
    let mut client: Option<Client> = None;
    Box::new(move || {
        let c = match client.as_mut() {
            Some(c) => c,
            None => client
                .insert(connect().and_then(Client::over_tcp).map_err(|e| format!("{method}: connect: {e}"))?),
        };
        match c.request(method, host, "/", &[], false) {
            Ok(r) if r.status == 200 => Ok(r.header(BACKEND_HEADER).unwrap_or("?").to_owned()),
            Ok(r) => {
                client = None;
                Err(format!("{method}: {} {}", r.status, r.body.trim()))
            }
            Err(e) => {
                client = None;
                Err(format!("{method}: error {e:#}"))
            }
        }
    })
}

const WORKERS: usize = 4;
const XDP_PORT: u16 = 8080;
/// How long the victim worker is stalled.
const STALL: Duration = Duration::from_secs(3);
/// Within this of the stall new connections must avoid the worker (3 missed heartbeats of
/// 300 ms, checked every 75 ms, with room).
const AVOIDED_AFTER: Duration = Duration::from_secs(1);

/// A node with XDP on the client-facing interface and four workers, proxying to `backend`.
fn start_xdp_node(topology: &Topology, backend: SocketAddr) -> Node {
    let yaml = format!(
        "listeners: [{{name: web, address: \"0.0.0.0:{XDP_PORT}\"}}]\nworkers: {WORKERS}\nworker_id_header: true\n\
         access_log: {{enabled: false}}\nxdp:\n  interfaces: [{NODE_CLIENT_IF}]\n  heartbeat_timeout_ms: 300\n\
         virtual_hosts:\n  - name: all\n    domains: [\"*\"]\n    routes:\n      - {{backend: app}}\n\
         backends:\n  - {{name: app, endpoints: [{{address: \"{backend}\"}}]}}\n"
    );
    let config = Config::from_yaml(&yaml, "test").unwrap();
    let node = topology.node.run(move || Node::start(&config)).unwrap().unwrap();
    assert!(node.dataplane().is_some(), "the kernel path is running");
    node
}

fn worker_of(response: &HttpResponse) -> usize {
    response.header("x-sluice-worker").expect("worker header").parse().expect("numeric worker id")
}

/// Requests on a held connection, labelled `w<worker that answered>`; any error is a failure
/// (the connection is not replaced: it must survive).
fn pinned(mut client: Client, worker: usize) -> Step {
    let mut n = 0u64;
    Box::new(move || {
        n += 1;
        let response = client.request("GET", "t", &format!("/held/{worker}/{n}"), &[], false);
        match response {
            Ok(r) if r.status == 200 => Ok(format!("w{}", worker_of(&r))),
            Ok(r) => Err(format!("status {} on worker {worker}", r.status)),
            Err(e) => Err(format!("worker {worker}: {e:#}")),
        }
    })
}

/// New connections put on the stalled worker before it was taken out: they wait for it, and
/// are read to their end once it resumes.
type Waiting = Arc<Mutex<Vec<(&'static str, Client)>>>;

/// One request on a new connection, labelled `<phase>:w<worker>`: `avoid` when it began between
/// [`AVOIDED_AFTER`] into the stall and the stall's end, `after` once the stall is over, else
/// `around`. One that has no answer within 500 ms (on the stalled worker) goes to `waiting`
/// and the thread goes on with the next.
fn new_connection_step(target: SocketAddr, injected: Arc<Mutex<Option<Instant>>>, waiting: Waiting) -> Step {
    let mut n = 0u64;
    Box::new(move || {
        n += 1;
        let began = Instant::now();
        let phase = match *injected.lock().unwrap() {
            Some(at) if began >= at + STALL => "after",
            Some(at) if began >= at + AVOIDED_AFTER => "avoid",
            _ => "around",
        };
        let stream = TcpStream::connect_timeout(&target, Duration::from_secs(2))
            .map_err(|e| format!("{phase}: connect: {e}"))?;
        let mut client = Client::over_tcp(stream).map_err(|e| format!("{phase}: {e}"))?;
        client.stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        client.send(format!("GET /new/{n} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        let response = client.read_response(false);
        if response.status == 0 && response.ended == Ended::TimedOut {
            waiting.lock().unwrap().push((phase, client));
            return Ok(format!("{phase}:waiting"));
        }
        let response = HttpResponse::try_from(response).map_err(|e| format!("{phase}: {e:#}"))?;
        if response.status != 200 {
            return Err(format!("{phase}: status {}", response.status));
        }
        Ok(format!("{phase}:w{}", worker_of(&response)))
    })
}

/// Whether Sluice's status (`/api/v1/status`) has the endpoint at `address` ready.
fn endpoint_ready(admin: SocketAddr, address: &str) -> Option<bool> {
    let response = lb_tests::http::request(admin, "GET", "admin", "/api/v1/status", &[]).ok()?;
    let status: serde_json::Value = serde_json::from_str(&response.body).ok()?;
    status["backends"]
        .as_array()?
        .iter()
        .flat_map(|b| b["endpoints"].as_array().into_iter().flatten())
        .find(|e| e["address"] == address)?["ready"]
        .as_bool()
}

/// The value of one sample of an admin server's `/metrics` (`name{labels}` as written there).
fn metric(admin: SocketAddr, sample: &str) -> Option<f64> {
    let response = lb_tests::http::request(admin, "GET", "admin", "/metrics", &[]).ok()?;
    response.body.lines().find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Open file descriptors of a process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// A full TLS handshake (no resumption) and one request on a new connection, labelled
/// `cert<i>` by the index of the certificate it saw in `served`; an unknown one is a failure.
fn handshake_step(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    served: Arc<Mutex<Vec<Vec<u8>>>>,
) -> Step {
    Box::new(move || {
        let mut stream = connect(addr, Some("a.test"), &config).map_err(|e| format!("handshake: {e:#}"))?;
        let seen = served_certificate(&stream);
        let response = Client::new(&mut stream)
            .request("GET", "a.test", "/", &[], true)
            .map_err(|e| format!("request: {e:#}"))?;
        if response.status != 200 {
            return Err(format!("status {}", response.status));
        }
        let index = served.lock().unwrap().iter().position(|c| *c == seen);
        index.map(|i| format!("cert{i}")).ok_or_else(|| "an unknown certificate".to_owned())
    })
}
