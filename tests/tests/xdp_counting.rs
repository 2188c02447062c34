//! Real traffic through a veth pair between namespaces, counted by the XDP program attached on
//! the node side; and clean detach when the dataplane goes away.

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use lb_common::Stat;
use lb_tests::{
    http::http_get,
    require_root,
    topology::{NODE_CLIENT_IF, Topology},
};
use lb_userspace::{
    config::{AttachMode, Config},
    dataplane::Dataplane,
    proxy::{
        WORKER_HEADER, WorkerOptions, Workers,
        snapshot::{Published, Snapshot},
        upstream::endpoint::EndpointRegistry,
    },
};

#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn xdp_counts_real_udp_and_tcp_traffic_then_detaches() {
    require_root!();
    let topology = Topology::new(0).unwrap();
    let dataplane = topology
        .node
        .run(|| -> anyhow::Result<Dataplane> {
            let mut dataplane = Dataplane::load()?;
            dataplane.attach(NODE_CLIENT_IF, AttachMode::Auto)?;
            Ok(dataplane)
        })
        .unwrap()
        .unwrap();
    assert!(xdp_attached(&topology), "XDP shows on the node's interface");

    // UDP: a receiver in the node namespace, a sender in the client namespace.
    let server_addr = SocketAddr::from((topology.node_v4(), 9999));
    let server = topology.node.run(move || UdpSocket::bind(server_addr)).unwrap().unwrap();
    server.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let client = topology.client.run(|| UdpSocket::bind("0.0.0.0:0")).unwrap().unwrap();
    let mut buf = [0u8; 2048];
    // One round trip first, so neighbour discovery is done before counting.
    client.send_to(b"warm-up", server_addr).unwrap();
    server.recv_from(&mut buf).expect("warm-up datagram arrives");

    const DATAGRAMS: u64 = 100;
    const PAYLOAD: usize = 200;
    let before = dataplane.counters().unwrap();
    for _ in 0..DATAGRAMS {
        client.send_to(&[7u8; PAYLOAD], server_addr).unwrap();
    }
    for i in 0..DATAGRAMS {
        let (n, _) = server.recv_from(&mut buf).unwrap_or_else(|e| panic!("datagram {i} lost: {e}"));
        assert_eq!(n, PAYLOAD);
    }
    let after = dataplane.counters().unwrap();
    let packets = after.get(Stat::Packets) - before.get(Stat::Packets);
    let bytes = after.get(Stat::Bytes) - before.get(Stat::Bytes);
    // Every datagram crossed XDP; a stray neighbour or router packet may add one or two.
    assert!((DATAGRAMS..=DATAGRAMS + 4).contains(&packets), "packets counted: {packets}");
    let frame = (14 + 20 + 8 + PAYLOAD) as u64;
    assert!(bytes >= DATAGRAMS * frame && bytes < DATAGRAMS * frame + 4 * 1514, "bytes counted: {bytes}");

    // TCP: a real HTTP exchange with the workers in the node namespace.
    let listen = SocketAddr::from((topology.node_v4(), 8080));
    let workers = topology
        .node
        .run(move || Workers::start(WorkerOptions::shared(listen, 2, builtin_snapshot())))
        .unwrap()
        .unwrap();
    let before = dataplane.counters().unwrap();
    let response = topology.client.run(move || http_get(listen, "/counted")).unwrap().unwrap();
    // The built-in configuration has no routes: the worker answers 404 itself.
    assert_eq!(response.status, 404);
    assert!(response.header(WORKER_HEADER).is_some());
    let after = dataplane.counters().unwrap();
    // SYN, ACK, request, ACKs, FIN...: a TCP exchange is at least four packets toward the node.
    assert!(after.get(Stat::Packets) - before.get(Stat::Packets) >= 4);
    workers.stop();

    drop(dataplane);
    assert!(!xdp_attached(&topology), "no XDP program left attached after the dataplane is dropped");
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn builtin_snapshot() -> Published {
    let registry = EndpointRegistry::default();
    Published::new(Snapshot::build(&Config::builtin(), &registry, 1).unwrap())
}

fn xdp_attached(topology: &Topology) -> bool {
    let out = topology
        .node
        .command("ip")
        .args(["link", "show", "dev", NODE_CLIENT_IF])
        .output()
        .expect("ip link show");
    String::from_utf8_lossy(&out.stdout).contains("xdp")
}
