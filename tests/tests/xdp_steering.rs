//! XDP steering end to end: real TCP connections from a client namespace to the node, spread by
//! the XDP program over four workers' own ports, replies restored by TC egress, and workers
//! that stall or exit taken out of the Maglev table by the health supervisor.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use lb_common::Stat;
use lb_tests::{
    http::{Client, HttpResponse, http_get},
    require_root,
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
