//! The XDP guard end to end: a client namespace with two source addresses connecting to a node
//! whose XDP program enforces `xdp.guard`. A denied source's SYNs are dropped (its connect
//! times out, nothing answers) and counted in `/metrics`, the other source is served, and
//! reloads that deny or stop allowing a source leave its established keep-alive connection up.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use lb_common::Stat;
use lb_tests::{
    http::{Client, http_get},
    require_root,
    topology::{HOST_IF, NODE_CLIENT_IF, Topology},
};
use lb_userspace::{config::Config, node::Node};

#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn denied_sources_cannot_connect_and_reloads_spare_established_connections() {
    require_root!();
    let topology = Topology::new(0).unwrap();
    // The client's second address, on the same link.
    topology.client.ip(&["addr", "add", &format!("{SECOND}/24"), "dev", HOST_IF]).unwrap();
    let first = topology.client_v4();
    let target = SocketAddr::from((topology.node_v4(), PORT));
    let node = start_node(&topology, &format!("deny: ['{SECOND}/32']"));
    let dropped = |stat| node.dataplane().unwrap().counters().unwrap().get(stat);

    // The allowed source is served; the denied one's SYNs never reach a socket.
    assert_eq!(get_from(&topology, first, target).unwrap(), 404);
    let before = dropped(Stat::DropDeny);
    let refused = connect_from(&topology, SECOND, target).expect_err("the denied source connected");
    assert_eq!(refused.kind(), std::io::ErrorKind::TimedOut, "no answer at all, not a reset: {refused}");
    assert!(dropped(Stat::DropDeny) > before, "the dropped SYN is counted");

    // A keep-alive connection from the first source, then a reload that denies it too.
    let mut held = topology.client.run(move || keep_alive_from(first, target)).unwrap().unwrap();
    assert_eq!(held.get("test", "/held/1").status, 404);
    apply(&node, &format!("deny: ['{SECOND}/32', '{first}/32']"));
    assert_eq!(
        held.get("test", "/held/2").status,
        404,
        "the established connection stays up after the reload"
    );
    let before = dropped(Stat::DropDeny);
    let refused =
        connect_from(&topology, first, target).expect_err("a new connection of the newly denied source");
    assert_eq!(refused.kind(), std::io::ErrorKind::TimedOut, "{refused}");
    assert!(dropped(Stat::DropDeny) > before);

    // Now only the second source is allowed: it is served, the first is not allowed, and its
    // held connection still goes on.
    apply(&node, &format!("allow: ['{SECOND}/32']"));
    assert_eq!(get_from(&topology, SECOND, target).unwrap(), 404);
    let before = dropped(Stat::DropNotAllowed);
    let refused = connect_from(&topology, first, target).expect_err("a source outside the allow list");
    assert_eq!(refused.kind(), std::io::ErrorKind::TimedOut, "{refused}");
    assert!(dropped(Stat::DropNotAllowed) > before);
    assert_eq!(held.get("test", "/held/3").status, 404, "still up after the second reload");

    // Both reasons are exported in /metrics.
    let metrics = topology.node.run(|| http_get(ADMIN.parse().unwrap(), "/metrics")).unwrap().unwrap();
    for reason in ["drop_deny", "drop_not_allowed"] {
        let line = format!("sluice_xdp_dropped_total{{reason=\"{reason}\"}} ");
        let value = metrics.body.lines().find_map(|l| l.strip_prefix(line.as_str()));
        assert!(
            value.is_some_and(|v| v.parse::<f64>().unwrap() >= 1.0),
            "{reason} in /metrics:\n{}",
            metrics.body
        );
    }

    // Lists emptied by a reload: both sources are served again.
    apply(&node, "");
    assert_eq!(get_from(&topology, first, target).unwrap(), 404);
    assert_eq!(get_from(&topology, SECOND, target).unwrap(), 404);
    drop(held);
    node.stop().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const PORT: u16 = 8080;
const SECOND: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
/// In the node's fresh namespace, whose loopback ports are all free.
const ADMIN: &str = "127.0.0.1:9901";

/// The node's configuration with `xdp.guard: {GUARD}`.
fn yaml(guard: &str) -> String {
    format!(
        "listeners: [{{name: web, address: \"0.0.0.0:{PORT}\"}}]\nworkers: 2\naccess_log: {{enabled: false}}\n\
         admin: {{address: \"{ADMIN}\"}}\nxdp:\n  interfaces: [{NODE_CLIENT_IF}]\n  guard: {{{guard}}}\n"
    )
}

fn start_node(topology: &Topology, guard: &str) -> Node {
    let config = Config::from_yaml(&yaml(guard), "test").unwrap();
    let node = topology.node.run(move || Node::start(&config)).unwrap().unwrap();
    assert!(node.dataplane().is_some(), "the kernel path is running");
    node
}

fn apply(node: &Node, guard: &str) {
    let config = Config::from_yaml(&yaml(guard), "test").unwrap();
    node.apply(&config).expect("the reload applies");
}

/// A TCP connection from `source` in the client namespace; SYNs are retransmitted after one
/// second, so a timeout of 1.5 s means two SYNs went unanswered.
fn connect_from(
    topology: &Topology,
    source: Ipv4Addr,
    target: SocketAddr,
) -> std::io::Result<std::net::TcpStream> {
    topology
        .client
        .run(move || {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            socket.bind(&SocketAddr::from((source, 0)).into())?;
            socket.connect_timeout(&target.into(), Duration::from_millis(1500))?;
            Ok(socket.into())
        })
        .unwrap()
}

fn keep_alive_from(source: Ipv4Addr, target: SocketAddr) -> std::io::Result<Client> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((source, 0)).into())?;
    socket.connect_timeout(&target.into(), Duration::from_secs(2))?;
    Client::over_tcp(socket.into())
}

/// One request on a new connection from `source`; the status (no routes: the worker's 404).
fn get_from(topology: &Topology, source: Ipv4Addr, target: SocketAddr) -> anyhow::Result<u16> {
    let stream = connect_from(topology, source, target)?;
    let mut client = Client::over_tcp(stream)?;
    Ok(client.request("GET", "test", "/", &[], true)?.status)
}
