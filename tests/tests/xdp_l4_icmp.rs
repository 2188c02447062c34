//! ICMP errors and neighbours on the L4 fast path, end to end. A UDP service balanced in XDP to an endpoint
//! whose port is closed. The endpoint's kernel answers the datagram with ICMP port unreachable,
//! addressed to the node's SNAT port where no socket would take it; XDP translates it back and
//! sends it to the client, whose kernel (checksums verified: offload is off everywhere) matches
//! the quoted datagram to the client's connected socket, which then reports the refusal at once
//! instead of waiting out its timeout. That service has no probe, so nothing but Sluice's managed
//! neighbour entry makes the node resolve the endpoint's address: XDP needs one to send at all.
//! Those entries are Sluice's by their protocol tag, read back from the kernel: a process started
//! later removes the ones no endpoint needs, though another process made them.

use std::{
    io::ErrorKind,
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use lb_common::Stat;
use lb_tests::netns::Netns;
use lb_tests::{
    require_root,
    topology::{HOST_IF, NODE_CLIENT_IF, Topology},
    wait_for,
};
use lb_userspace::{config::Config, node::Node};

/// The service's port on the node, and the endpoint's port where nothing listens.
const SERVICE_PORT: u16 = 7101;
const CLOSED_PORT: u16 = 7102;

#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn an_endpoints_port_unreachable_reaches_the_udp_client() {
    require_root!();
    let topology = Topology::new(1).unwrap();
    for (ns, interface) in
        [(&topology.client, HOST_IF), (&topology.node, NODE_CLIENT_IF), (&topology.node, "veth-b0")]
    {
        ns.checksum_offload_off(interface).unwrap();
    }
    topology.backends[0].checksum_offload_off(HOST_IF).unwrap();
    // No udp_send: a UDP endpoint without a probe counts as healthy, closed port or not.
    let yaml = format!(
        "listeners: [{{name: web, address: '127.0.0.1:18080'}}]
workers: 1
access_log: {{enabled: false}}
xdp:
  interfaces: [{NODE_CLIENT_IF}, veth-b0]
  mode: skb
l4_services:
  - name: udp-closed
    address: '{node}:{SERVICE_PORT}'
    protocol: udp
    endpoints: ['{backend}:{CLOSED_PORT}']
",
        node = topology.node_v4(),
        backend = topology.backend_v4(0),
    );
    let config = Config::from_yaml(&yaml, "test").unwrap();
    let node = topology.node.run(move || Node::start(&config)).unwrap().unwrap();
    let dataplane = node.dataplane().expect("the kernel path is running");
    let service = SocketAddr::from((topology.node_v4(), SERVICE_PORT));

    // Each try is a datagram on a new connected socket. Until the service is in XDP's maps
    // (the supervisor writes them after start) the node's own kernel refuses the datagram,
    // from the same address: a try counts only when the refusal went through XDP.
    let replied = || dataplane.counters().unwrap().get(Stat::L4IcmpReplied);
    let refused = wait_for(Duration::from_secs(10), "the endpoint's port unreachable at the client", || {
        let before = replied();
        let refused = topology
            .client
            .run(move || -> bool {
                let Ok(socket) = UdpSocket::bind("0.0.0.0:0") else { return false };
                let mut buf = [0u8; 64];
                socket.set_read_timeout(Some(Duration::from_millis(300))).is_ok()
                    && socket.connect(service).is_ok()
                    && socket.send(b"anyone?").is_ok()
                    && matches!(socket.recv(&mut buf), Err(e) if e.kind() == ErrorKind::ConnectionRefused)
            })
            .unwrap();
        (refused && replied() > before).then_some(())
    });
    let counters = dataplane.counters().unwrap();
    refused.unwrap_or_else(|e| panic!("{e:#}; {counters:?}"));
    assert!(counters.get(Stat::L4Forwarded) >= 1, "the datagram went through XDP: {counters:?}");
    node.stop().unwrap();
}

#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn managed_neighbours_follow_the_endpoints_across_restarts() {
    require_root!();
    let topology = Topology::new(2).unwrap();
    let config = |backend: usize| {
        let yaml = format!(
            "listeners: [{{name: web, address: '127.0.0.1:18080'}}]
workers: 1
access_log: {{enabled: false}}
xdp:
  interfaces: [{NODE_CLIENT_IF}, veth-b0, veth-b1]
  mode: skb
l4_services:
  - name: udp
    address: '{node}:{SERVICE_PORT}'
    protocol: udp
    endpoints: ['{endpoint}:{CLOSED_PORT}']
",
            node = topology.node_v4(),
            endpoint = topology.backend_v4(backend),
        );
        Config::from_yaml(&yaml, "test").unwrap()
    };
    let first = config(0);
    let node = topology.node.run(move || Node::start(&first)).unwrap().unwrap();
    let backend0 = topology.backend_v4(0).to_string();
    let backend1 = topology.backend_v4(1).to_string();
    wait_for(Duration::from_secs(5), "a managed entry for backend 0", || {
        sluice_neighbour(&topology.node, &backend0).filter(|line| line.contains("managed"))
    })
    .unwrap_or_else(|e| panic!("{e:#}: {}", neighbours(&topology.node)));
    node.stop().unwrap();
    assert!(sluice_neighbour(&topology.node, &backend0).is_some(), "an entry outlives its process");

    // Another process, another endpoint: it adds its own and removes the one no endpoint needs.
    let second = config(1);
    let node = topology.node.run(move || Node::start(&second)).unwrap().unwrap();
    wait_for(Duration::from_secs(5), "backend 1's entry in, backend 0's out", || {
        (sluice_neighbour(&topology.node, &backend1).is_some()
            && sluice_neighbour(&topology.node, &backend0).is_none())
        .then_some(())
    })
    .unwrap();
    node.stop().unwrap();
}

/// The node's whole neighbour table, for failure messages.
fn neighbours(node: &Netns) -> String {
    node.command("ip")
        .args(["-d", "neigh", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The node's neighbour entry for `addr` if it carries Sluice's protocol tag (`ip neigh` prints
/// the number, 83).
fn sluice_neighbour(node: &Netns, addr: &str) -> Option<String> {
    let out = node.command("ip").args(["-d", "neigh", "show", "to", addr]).output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|line| line.split_whitespace().next() == Some(addr) && line.contains("proto 83"))
        .map(str::to_owned)
}
