//! The standard test topology: a client namespace and a node namespace joined by a veth pair,
//! and backend namespaces hanging off the node, each on its own veth pair. Addresses come from
//! 198.18.0.0/15 (reserved for benchmarking) and 2001:db8::/32 (documentation), so nothing here
//! can be mistaken for, or routed to, a real network.
//!
//! ```text
//!   client (eth0 198.18.0.1) ── (veth-client 198.18.0.2) node (veth-b<i> 198.18.<i+1>.1) ── (eth0 198.18.<i+1>.2) backend i
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::netns::Netns;

/// The node's interface facing the client: where XDP attaches.
pub const NODE_CLIENT_IF: &str = "veth-client";
/// The interface name inside client and backend namespaces.
pub const HOST_IF: &str = "eth0";

/// Namespaces and links for one test. Dropping it deletes everything it created.
pub struct Topology {
    pub client: Netns,
    pub node: Netns,
    pub backends: Vec<Netns>,
}

impl Topology {
    /// Builds client, node and `backends` backend namespaces, with addresses and routes so that
    /// the client reaches the node and the node reaches every backend.
    pub fn new(backends: usize) -> anyhow::Result<Topology> {
        crate::reap_stale();
        anyhow::ensure!(backends < 200, "at most 199 backends fit the address plan");
        let client = Netns::new("client")?;
        let node = Netns::new("node")?;
        let mut topology = Topology { client, node, backends: Vec::new() };

        link(&topology.node, NODE_CLIENT_IF, &topology.client, HOST_IF)?;
        configure(&topology.client, HOST_IF, "198.18.0.1/24", "2001:db8::1/64")?;
        configure(&topology.node, NODE_CLIENT_IF, "198.18.0.2/24", "2001:db8::2/64")?;
        topology.client.ip(&["route", "add", "default", "via", "198.18.0.2"])?;
        topology.client.ip(&["-6", "route", "add", "default", "via", "2001:db8::2"])?;
        topology.node.sysctl("net.ipv4.ip_forward", "1")?;
        topology.node.sysctl("net.ipv6.conf.all.forwarding", "1")?;

        for i in 0..backends {
            let backend = Netns::new(&format!("backend{i}"))?;
            let node_if = format!("veth-b{i}");
            let net = i + 1;
            link(&topology.node, &node_if, &backend, HOST_IF)?;
            configure(
                &topology.node,
                &node_if,
                &format!("198.18.{net}.1/24"),
                &format!("2001:db8:{net:x}::1/64"),
            )?;
            configure(&backend, HOST_IF, &format!("198.18.{net}.2/24"), &format!("2001:db8:{net:x}::2/64"))?;
            backend.ip(&["route", "add", "default", "via", &format!("198.18.{net}.1")])?;
            backend.ip(&["-6", "route", "add", "default", "via", &format!("2001:db8:{net:x}::1")])?;
            topology.backends.push(backend);
        }
        Ok(topology)
    }

    /// The client's address on its link to the node.
    pub fn client_v4(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, 1)
    }

    /// The node's address as the client sees it.
    pub fn node_v4(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, 2)
    }

    pub fn node_v6(&self) -> Ipv6Addr {
        "2001:db8::2".parse().expect("valid literal")
    }

    /// Backend `i`'s address.
    pub fn backend_v4(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, (i + 1) as u8, 2)
    }

    pub fn backend_addr(&self, i: usize) -> IpAddr {
        IpAddr::V4(self.backend_v4(i))
    }
}

/// Creates a veth pair with one end in each namespace.
fn link(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> anyhow::Result<()> {
    a.ip(&["link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name()])
}

fn configure(ns: &Netns, interface: &str, v4: &str, v6: &str) -> anyhow::Result<()> {
    ns.ip(&["addr", "add", v4, "dev", interface])?;
    ns.ip(&["-6", "addr", "add", v6, "dev", interface, "nodad"])?;
    ns.ip(&["link", "set", interface, "up"])
}

/// A namespace for BPF_PROG_TEST_RUN of the L4 fast path, whose routes and permanent
/// neighbours answer `bpf_fib_lookup`: the node (198.18.0.2) reaches `client` on one veth and
/// `endpoint` (in 198.18.1.0/24, via 198.18.1.1) on another, and forwards, on `lo` too (a test
/// run's ingress device is the caller's loopback). Run the program from a thread inside it.
pub fn l4_fib_namespace(client: (Ipv4Addr, [u8; 6]), endpoint: (Ipv4Addr, [u8; 6])) -> anyhow::Result<Netns> {
    let ns = Netns::new("l4fib")?;
    ns.sysctl("net.ipv4.ip_forward", "1")?;
    ns.sysctl("net.ipv4.conf.lo.forwarding", "1")?;
    for (a, b, address, (neighbour, mac)) in
        [("c0", "c1", "198.18.0.2/24", client), ("e0", "e1", "198.18.1.1/24", endpoint)]
    {
        ns.ip(&["link", "add", a, "type", "veth", "peer", "name", b])?;
        ns.ip(&["addr", "add", address, "dev", a])?;
        ns.ip(&["link", "set", a, "up"])?;
        ns.ip(&["link", "set", b, "up"])?;
        let mac = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        ns.ip(&["neigh", "replace", &neighbour.to_string(), "lladdr", &mac, "dev", a, "nud", "permanent"])?;
    }
    Ok(ns)
}
