//! XDP steering end to end: real TCP connections from a client namespace to the node, spread by
//! the XDP program over four workers' own ports, replies restored by TC egress, and workers
//! that stall or exit taken out of the Maglev table by the health supervisor.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use lb_common::Stat;
use lb_tests::{
    backend::{Backend, Mode, Options},
    http::{Client, HttpResponse, http_get},
    require_root,
    tls::{Ca, ClientOptions, client_config, connect_over, inline_certificate},
    topology::{NODE_CLIENT_IF, Topology},
    wait_for,
};
use lb_userspace::{config::Config, node::Node, proxy::Fault};

#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn connections_spread_evenly_and_keep_alive_stays_on_its_worker() {
    require_root!();
    let topology = Topology::new(0).unwrap();
    let node = start_node(&topology);
    let target = SocketAddr::from((topology.node_v4(), PORT));

    const CONNECTIONS: usize = 2000;
    let (served, failures) = new_connections(&topology, target, CONNECTIONS);
    assert!(failures.is_empty(), "{} failed, first: {:?}", failures.len(), failures.first());
    for worker in 0..WORKERS {
        let share = *served.get(&worker).unwrap_or(&0) as f64 / CONNECTIONS as f64;
        assert!((0.20..=0.30).contains(&share), "worker {worker} got {:.1}%: {served:?}", share * 100.0);
    }

    // Every request on a keep-alive connection is served by the worker that accepted it.
    let per_connection = topology
        .client
        .run(move || -> anyhow::Result<Vec<Vec<usize>>> {
            (0..40)
                .map(|c| {
                    let mut connection = KeepAlive::open(target)?;
                    (0..5).map(|r| connection.get(&format!("/ka/{c}/{r}"))).collect()
                })
                .collect()
        })
        .unwrap()
        .unwrap();
    for workers in &per_connection {
        assert!(workers.iter().all(|w| *w == workers[0]), "one connection, several workers: {workers:?}");
    }

    let counters = node.dataplane().unwrap().counters().unwrap();
    assert!(counters.get(Stat::NewFlows) >= (CONNECTIONS + 40) as u64, "{counters:?}");
    assert!(counters.get(Stat::EgressRestored) > 0, "{counters:?}");
    node.stop().unwrap();
}

#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn dual_stack_service_steers_ipv4_and_ipv6_connections() {
    require_root!();
    let topology = Topology::new(0).unwrap();
    let node = start_node_on(&topology, "[::]");
    for target in [SocketAddr::from((topology.node_v4(), PORT)), SocketAddr::from((topology.node_v6(), PORT))]
    {
        let before = node.dataplane().unwrap().counters().unwrap();
        let (served, failures) = new_connections(&topology, target, 200);
        assert!(failures.is_empty(), "{target}: {failures:?}");
        assert_eq!(served.len(), WORKERS, "{target}: every worker reached: {served:?}");
        let after = node.dataplane().unwrap().counters().unwrap();
        assert!(after.get(Stat::NewFlows) - before.get(Stat::NewFlows) >= 200, "{target} steered by XDP");
    }
    node.stop().unwrap();
}

/// Holds keep-alive connections, injects `fault` into one worker, and checks that a second
/// later new connections avoid it and none fails, while connections held on the other workers
/// keep working.
fn fault_is_routed_around(fault: Fault) {
    let topology = Topology::new(0).unwrap();
    let node = start_node(&topology);
    let target = SocketAddr::from((topology.node_v4(), PORT));

    let mut held: Vec<(KeepAlive, usize)> = topology
        .client
        .run(move || {
            (0..16)
                .map(|i| {
                    let mut connection = KeepAlive::open(target).unwrap();
                    let worker = connection.get(&format!("/held/{i}")).unwrap();
                    (connection, worker)
                })
                .collect()
        })
        .unwrap();
    let victim = held[0].1;
    assert!(held.iter().any(|(_, w)| *w != victim), "held connections reach several workers");

    assert!(node.workers().inject(victim, fault));
    let injected = Instant::now();
    // The bound under test: one second after the fault, new connections must avoid the worker.
    std::thread::sleep(Duration::from_secs(1).saturating_sub(injected.elapsed()));
    let (served, failures) = new_connections(&topology, target, 300);
    assert!(failures.is_empty(), "{} failed, first: {:?}", failures.len(), failures.first());
    assert_eq!(served.get(&victim), None, "worker {victim} still gets new connections: {served:?}");
    assert_eq!(served.len(), WORKERS - 1, "the other workers take the load: {served:?}");

    for (i, (connection, worker)) in held.iter_mut().enumerate().filter(|(_, (_, w))| *w != victim) {
        let again = connection.get(&format!("/held/{i}/again")).unwrap();
        assert_eq!(again, *worker, "a held connection moved");
    }

    if let Fault::Stall(duration) = fault {
        // Once it beats again the worker is put back.
        // No connection fails while it comes back either.
        let deadline = duration + Duration::from_secs(5);
        let mut failed = Vec::new();
        wait_for(deadline, "the recovered worker to get new connections again", || {
            let (served, failures) = new_connections(&topology, target, 40);
            failed.extend(failures);
            served.contains_key(&victim).then_some(())
        })
        .unwrap();
        assert!(
            failed.is_empty(),
            "{} failed while the worker recovered, first: {:?}",
            failed.len(),
            failed.first()
        );
    }
    node.stop().unwrap();
}

#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn a_stalled_worker_is_avoided_within_a_second_and_returns() {
    require_root!();
    fault_is_routed_around(Fault::Stall(Duration::from_secs(3)));
}

#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn an_exited_worker_is_avoided_within_a_second() {
    require_root!();
    fault_is_routed_around(Fault::Exit);
}

/// The PROXY protocol behind XDP steering, as behind a cloud TCP balancer: the header (v1 and v2)
/// comes first on connections the XDP program spread over the workers, TLS is terminated after
/// it, and the header's source is the client every worker names; a connection whose header is
/// malformed is closed without an answer and counted, whichever worker took it.
#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn proxy_protocol_v1_and_v2_under_tls_through_steering() {
    require_root!();
    let topology = Topology::new(1).unwrap();
    let echo = Backend::launch(
        "echo",
        Options {
            netns: Some(&topology.backends[0]),
            addr: SocketAddr::from((topology.backend_v4(0), 0)),
            mode: Mode::Echo,
            ..Options::default()
        },
    )
    .unwrap();
    let ca = Ca::new("steered proxy protocol CA");
    let leaf = ca.leaf(&["pp.test"]);
    let admin = SocketAddr::from(([127, 0, 0, 1], 9901));
    let yaml = format!(
        "listeners: [{{name: edge, address: \"0.0.0.0:{PORT}\", proxy_protocol: true, tls: {{default_certificate: pp}}}}]
workers: {WORKERS}
worker_id_header: true
access_log: {{enabled: false}}
admin: {{address: \"{admin}\"}}
xdp:
  interfaces: [{NODE_CLIENT_IF}]
certificates:
{}
backends:
  - {{name: echo, endpoints: [{{address: \"{}\"}}]}}
virtual_hosts:
  - {{name: pp, domains: [pp.test], routes: [{{backend: echo}}]}}
",
        inline_certificate("pp", &leaf),
        echo.addr()
    );
    let config = Config::from_yaml(&yaml, "test").unwrap();
    let node = topology.node.run(move || Node::start(&config)).unwrap().unwrap();
    assert!(node.dataplane().is_some(), "the kernel path is running");
    let target = SocketAddr::from((topology.node_v4(), PORT));
    let before = node.dataplane().unwrap().counters().unwrap();

    const CONNECTIONS: usize = 120;
    let client = client_config(ClientOptions { trust: Some(&ca), ..Default::default() });
    let answers = topology
        .client
        .run(move || {
            (0..CONNECTIONS)
                .map(|i| {
                    let source = [203, 0, 113, (i % 200 + 1) as u8];
                    let header = if i % 2 == 0 {
                        format!("PROXY TCP4 203.0.113.{} {} {} {PORT}\r\n", source[3], target.ip(), 40000 + i)
                            .into_bytes()
                    } else {
                        proxy_v2_tcp4(source, target, 40000 + i as u16)
                    };
                    (source, over_tls(target, &header, &client, &format!("/pp/{i}")))
                })
                .collect::<Vec<_>>()
        })
        .unwrap();
    let mut served = BTreeMap::new();
    for (i, (source, answer)) in answers.iter().enumerate() {
        let answer = answer.as_ref().unwrap_or_else(|e| panic!("connection {i}: {e:#}"));
        assert!(answer.starts_with("HTTP/1.1 200"), "connection {i}: {answer}");
        let client_ip = format!("x-real-ip: {}.{}.{}.{}", source[0], source[1], source[2], source[3]);
        assert!(answer.contains(&client_ip), "connection {i} names the header's source: {answer}");
        assert!(answer.contains("x-forwarded-proto: https"), "connection {i}: {answer}");
        let worker = answer
            .lines()
            .find_map(|l| l.strip_prefix("x-sluice-worker: "))
            .unwrap_or_else(|| panic!("connection {i} names no worker: {answer}"));
        *served.entry(worker.trim().to_owned()).or_insert(0) += 1;
    }
    assert_eq!(served.len(), WORKERS, "XDP spread the PROXY connections over every worker: {served:?}");
    let after = node.dataplane().unwrap().counters().unwrap();
    assert!(
        after.get(Stat::NewFlows) - before.get(Stat::NewFlows) >= CONNECTIONS as u64,
        "steered by XDP: {after:?}"
    );

    // Malformed headers, on whatever worker XDP picks: closed unanswered and counted.
    let refused = |node_ns: &lb_tests::netns::Netns| {
        node_ns
            .run(move || {
                let text = http_get(admin, "/metrics").unwrap().body;
                text.lines()
                    .find_map(|l| l.strip_prefix("sluice_proxy_protocol_refused_total{reason=\"invalid\"} "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            })
            .unwrap()
    };
    let refused_before = refused(&topology.node);
    let requests_before = echo.requests();
    const MALFORMED: usize = 12;
    let closed = topology
        .client
        .run(move || {
            (0..MALFORMED)
                .map(|i| {
                    // A leading zero, an unknown family, a v2 header of version 3.
                    let bad: &[u8] = match i % 3 {
                        0 => b"PROXY TCP4 203.0.113.7 198.18.0.2 040000 8080\r\n",
                        1 => b"PROXY TCP9 nope\r\n",
                        _ => b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c\xcb\0\x71\x07\xc6\x12\0\x02\x9c\x40\x1f\x90",
                    };
                    let mut tcp = TcpStream::connect_timeout(&target, Duration::from_secs(2)).unwrap();
                    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let _ = tcp.write_all(bad);
                    let mut answer = Vec::new();
                    let _ = tcp.read_to_end(&mut answer);
                    answer
                })
                .collect::<Vec<_>>()
        })
        .unwrap();
    for (i, answer) in closed.iter().enumerate() {
        assert!(
            answer.is_empty(),
            "malformed header {i} got an answer: {:?}",
            String::from_utf8_lossy(answer)
        );
    }
    wait_for(Duration::from_secs(5), "the malformed headers to be counted", || {
        (refused(&topology.node) >= refused_before + MALFORMED as u64).then_some(())
    })
    .unwrap();
    assert_eq!(echo.requests(), requests_before, "nothing refused reached the backend");
    node.stop().unwrap();
}

/// A PROXY v2 header for a TCP over IPv4 connection from `source`:`port` to `target`.
fn proxy_v2_tcp4(source: [u8; 4], target: SocketAddr, port: u16) -> Vec<u8> {
    let std::net::IpAddr::V4(destination) = target.ip() else { panic!("IPv4 target") };
    let mut header = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    header.extend_from_slice(&source);
    header.extend_from_slice(&destination.octets());
    header.extend_from_slice(&port.to_be_bytes());
    header.extend_from_slice(&target.port().to_be_bytes());
    header
}

/// Sends `header` on a new connection, then one request over TLS; returns the whole answer.
fn over_tls(
    target: SocketAddr,
    header: &[u8],
    config: &std::sync::Arc<rustls::ClientConfig>,
    path: &str,
) -> anyhow::Result<String> {
    let mut tcp = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    tcp.write_all(header)?;
    let mut tls = connect_over(tcp, "pp.test".try_into()?, config)?;
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: pp.test\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const WORKERS: usize = 4;
const PORT: u16 = 8080;

/// A node with XDP on the client-facing interface, started inside the node namespace.
fn start_node(topology: &Topology) -> Node {
    start_node_on(topology, "0.0.0.0")
}

fn start_node_on(topology: &Topology, listen_ip: &str) -> Node {
    let yaml = format!(
        "listeners: [{{name: web, address: \"{listen_ip}:{PORT}\"}}]\nworkers: {WORKERS}\nworker_id_header: true\naccess_log: {{enabled: false}}\nxdp:\n  interfaces: [{NODE_CLIENT_IF}]\n  heartbeat_timeout_ms: 300\n"
    );
    let config = Config::from_yaml(&yaml, "test").unwrap();
    let node = topology.node.run(move || Node::start(&config)).unwrap().unwrap();
    assert!(node.dataplane().is_some(), "the kernel path is running");
    node
}

fn worker_of(response: &HttpResponse) -> usize {
    response.header("x-sluice-worker").expect("worker header").parse().expect("numeric worker id")
}

/// A keep-alive HTTP/1.1 connection that reports which worker answered each request.
struct KeepAlive {
    client: Client,
}

impl KeepAlive {
    fn open(target: SocketAddr) -> std::io::Result<KeepAlive> {
        let stream = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
        Ok(KeepAlive { client: Client::over_tcp(stream)? })
    }

    fn get(&mut self, path: &str) -> anyhow::Result<usize> {
        let response = self.client.request("GET", "test", path, &[], false)?;
        // No routes are configured: every answer is the worker's own 404, naming the worker.
        anyhow::ensure!(response.status == 404, "status {}", response.status);
        Ok(worker_of(&response))
    }
}

/// Opens `count` new connections (one request each) from the client namespace; returns how
/// many each worker served, and the failures.
fn new_connections(
    topology: &Topology,
    target: SocketAddr,
    count: usize,
) -> (BTreeMap<usize, usize>, Vec<String>) {
    topology
        .client
        .run(move || {
            let mut served = BTreeMap::new();
            let mut failures = Vec::new();
            for i in 0..count {
                match http_get(target, &format!("/new/{i}")) {
                    Ok(response) if response.status == 404 => {
                        *served.entry(worker_of(&response)).or_insert(0) += 1
                    }
                    Ok(response) => failures.push(format!("connection {i}: status {}", response.status)),
                    Err(e) => failures.push(format!("connection {i}: {e:#}")),
                }
            }
            (served, failures)
        })
        .unwrap()
}
