//! L4 services balanced entirely in XDP, end to end: a client namespace sends TCP connections
//! and UDP datagrams to services on the node; XDP (on every node interface) sends them to
//! three backends in their own namespaces with the node as the source, and sends the
//! backends' replies back to the client. Checksum offload is off on every interface, so each
//! receiving kernel verifies every checksum XDP rewrote. No socket of the node is on the path:
//! the workers accept nothing while the XDP counters rise. A backend killed mid-run leaves
//! the Maglev table at its next checks (polled; 0.1-0.4 s with 300 ms intervals), and only its
//! own flows are affected:
//! the TCP service drains (its flows stay on the dead backend, which reset them), the UDP
//! service resets (a client port reused later is placed again rather than sent to the dead
//! backend). The same path is then taken through the Kubernetes translation of a
//! `tcp-services` entry, in process and in the real binary (`--l4-services-in-xdp`).

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use lb_common::Stat;
use lb_tests::{
    netns::Netns,
    require_root,
    topology::{HOST_IF, NODE_CLIENT_IF, Topology},
    wait_for,
};
use lb_userspace::{config::Config, node::Node};

const TCP_PORT: u16 = 7000;
const UDP_PORT: u16 = 7001;
const BACKENDS: usize = 3;
const CHECK_INTERVAL_MS: u64 = 300;

/// 10,000 TCP connections and 10,000 UDP exchanges from new sockets (issue #22's count), from
/// eight client threads at once: ~2.2 s and ~0.6 s, the whole test ~5 s on a 2-core VM. Each
/// endpoint then holds 3,333 of its 4536 node ports (a closed TCP flow keeps its port for
/// `L4_CLOSING_NS` unless a new flow finds none free), where the port tries of a new flow
/// used to be clustered enough to drop one new flow in eight (`drop_l4_no_port`, asserted
/// zero here); that is why this ran 1,500 before.
#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn tcp_and_udp_services_are_balanced_in_xdp_and_a_dead_backend_leaves_the_table() {
    require_root!();
    let topology = Topology::new(BACKENDS).unwrap();
    for (ns, interface) in [(&topology.client, HOST_IF), (&topology.node, NODE_CLIENT_IF)] {
        ns.checksum_offload_off(interface).unwrap();
    }
    let mut backends = Vec::new();
    for i in 0..BACKENDS {
        topology.backends[i].checksum_offload_off(HOST_IF).unwrap();
        topology.node.checksum_offload_off(&format!("veth-b{i}")).unwrap();
        backends.push(EchoBackend::start(&topology.backends[i], i, topology.backend_v4(i)));
    }
    let node = start_node(&topology);
    let node_v4 = topology.node_v4();
    let tcp = SocketAddr::from((node_v4, TCP_PORT));
    let udp = SocketAddr::from((node_v4, UDP_PORT));

    // The first exchange waits for the health checks to have resolved the backends' neighbours.
    wait_for(Duration::from_secs(5), "a first TCP exchange", || {
        topology.client.run(move || tcp_exchange(tcp).ok()).unwrap()
    })
    .unwrap_or_else(|e| panic!("{e:#}; {:?}", node.dataplane().unwrap().counters()));
    wait_for(Duration::from_secs(5), "a first UDP exchange", || {
        topology.client.run(move || udp_exchange(udp).ok()).unwrap()
    })
    .unwrap_or_else(|e| panic!("{e:#}; {:?}", node.dataplane().unwrap().counters()));
    let before = node.dataplane().unwrap().counters().unwrap();

    const CONNECTIONS: usize = 10_000;
    for (protocol, target) in [(Protocol::Tcp, tcp), (Protocol::Udp, udp)] {
        let started = Instant::now();
        let answers = exchanges(&topology, protocol, target, CONNECTIONS)
            .unwrap_or_else(|e| panic!("{e:#}; {:?}", node.dataplane().unwrap().counters()));
        eprintln!("{protocol:?}: {CONNECTIONS} exchanges in {:?}", started.elapsed());
        let mut served = BTreeMap::new();
        for (backend, seen) in answers {
            assert_eq!(
                seen.ip(),
                std::net::IpAddr::V4(node_v4),
                "{protocol:?}: the backend sees the node as the source"
            );
            assert!(
                seen.port() >= lb_common::L4_SNAT_PORT_MIN,
                "{protocol:?}: a node port from the SNAT range: {seen}"
            );
            *served.entry(backend).or_insert(0usize) += 1;
        }
        for backend in 0..BACKENDS {
            let share = *served.get(&backend).unwrap_or(&0) as f64 / CONNECTIONS as f64;
            let fair = 1.0 / BACKENDS as f64;
            assert!(
                (fair * 0.8..=fair * 1.2).contains(&share),
                "{protocol:?}: backend {backend} got {share:.3}: {served:?}"
            );
        }
    }
    let after = node.dataplane().unwrap().counters().unwrap();
    let delta = |stat| after.get(stat) - before.get(stat);
    // Every TCP connection is a new 5-tuple (the client's TIME_WAIT holds its port); a UDP
    // socket's port may be reused by a later one, whose datagram then follows the same flow.
    assert!(delta(Stat::L4NewFlows) >= CONNECTIONS as u64, "{after:?}");
    // Per TCP connection at least a SYN, the handshake's ACK, the request and a FIN one way,
    // the SYN-ACK, the greeting and the echo the other; one datagram each way per UDP one.
    assert!(delta(Stat::L4Forwarded) >= 5 * CONNECTIONS as u64, "{after:?}");
    assert!(delta(Stat::L4Replied) >= 4 * CONNECTIONS as u64, "{after:?}");
    assert_eq!(delta(Stat::DropL4NoPort), 0, "{after:?}");
    assert_eq!(after.get(Stat::PassL4NoRoute), before.get(Stat::PassL4NoRoute), "{after:?}");
    assert_eq!(worker_connections(&topology, &node), 0, "no worker accepted anything");

    // Held connections on every backend, then backend 1 dies.
    let mut held: Vec<(TcpStream, BufReader<TcpStream>, usize)> = topology
        .client
        .run(move || {
            (0..30)
                .map(|_| {
                    let stream = TcpStream::connect_timeout(&tcp, Duration::from_secs(2)).unwrap();
                    stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let (backend, _) = read_greeting(&mut reader).unwrap();
                    (stream, reader, backend)
                })
                .collect()
        })
        .unwrap();
    let victim = 1;
    assert!(held.iter().any(|(_, _, b)| *b == victim) && held.iter().any(|(_, _, b)| *b != victim));
    backends.remove(victim).kill(&topology.backends[victim]);
    let killed = Instant::now();
    // Polled: new TCP connections until twenty in a row are served, none by the victim (whose
    // kernel refuses them while it is still in the table). The deadline, ten check intervals,
    // is for a loaded 2-core machine: the check thread, the table writes (~22,000 slots, one
    // system call each, 60-170 ms in a debug build) and the other tests of this file share it.
    // A fixed wait of one interval plus 400 ms failed there; unloaded it takes 0.1-0.4 s.
    wait_for(
        Duration::from_millis(10 * CHECK_INTERVAL_MS),
        "the dead backend to leave the TCP table",
        || {
            topology
                .client
                .run(move || (0..20).all(|_| tcp_exchange(tcp).is_ok_and(|(backend, _)| backend != victim)))
                .unwrap()
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}; {:?}", node.dataplane().unwrap().counters()));
    eprintln!("the dead backend left the TCP service's table {:?} after the kill", killed.elapsed());
    for (protocol, target) in [(Protocol::Tcp, tcp), (Protocol::Udp, udp)] {
        if let Protocol::Udp = protocol {
            // A UDP socket may get the port of an earlier one whose flow is on the dead backend:
            // the `reset` service forgets those flows once its table is written, with a walk of
            // the whole flows table (~0.2 s for the ~20,000 flows here in a debug build).
            let victim_udp = (u32::from_ne_bytes(topology.backend_v4(victim).octets()), UDP_PORT.to_be());
            let on_victim = || {
                let flows = node.dataplane().unwrap().l4_flows().ok()?;
                let left = flows.iter().any(|(key, flow)| {
                    key.proto == lb_common::PROTO_UDP && (flow.backend[0], flow.backend_port) == victim_udp
                });
                (!left).then_some(())
            };
            wait_for(Duration::from_secs(5), "the dead backend's UDP flows to be reset", on_victim).unwrap();
            eprintln!("the dead backend's UDP flows seen reset {:?} after the kill", killed.elapsed());
        }
        let answers = exchanges(&topology, protocol, target, 600).unwrap_or_else(|e| {
            panic!("{protocol:?} after the kill: {e:#}; {:?}", node.dataplane().unwrap().counters())
        });
        let mut served = BTreeMap::new();
        for (backend, _) in answers {
            *served.entry(backend).or_insert(0usize) += 1;
        }
        assert_eq!(
            served.get(&victim),
            None,
            "{protocol:?}: the dead backend still gets new flows: {served:?}"
        );
        assert_eq!(served.len(), BACKENDS - 1, "{protocol:?}: {served:?}");
    }
    // Flows on the other backends carry on; the victim's were cut.
    for (i, (stream, reader, backend)) in held.iter_mut().enumerate() {
        let echoed = echo(stream, reader, &format!("line {i}"));
        if *backend == victim {
            assert!(echoed.is_err(), "a flow of the dead backend still answers");
        } else {
            assert_eq!(echoed.unwrap(), format!("line {i}"), "a flow on backend {backend} broke");
        }
    }
    assert_eq!(worker_connections(&topology, &node), 0, "no worker accepted anything");
    node.stop().unwrap();
}

/// A `tcp-services` entry (the Kubernetes translation, with `--l4-services-in-xdp`) on the
/// same path: it becomes a service on every node address (`0.0.0.0:PORT`, the services map's
/// wildcard entry), balanced in XDP over the Service's ready endpoints with the node as their
/// source, no worker on the path.
#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn a_tcp_services_entry_is_balanced_in_xdp_on_every_node_address() {
    use lb_tests::fake_kube::objects::{SliceEndpoint, config_map, endpoint_slice_ports, service_ports};
    use lb_userspace::provider::kube::{ClusterState, Settings, Translator};
    fn typed<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Arc<T> {
        Arc::new(serde_json::from_value(value).unwrap())
    }
    require_root!();
    let topology = Topology::new(BACKENDS).unwrap();
    for (ns, interface) in [(&topology.client, HOST_IF), (&topology.node, NODE_CLIENT_IF)] {
        ns.checksum_offload_off(interface).unwrap();
    }
    for i in 0..BACKENDS {
        topology.backends[i].checksum_offload_off(HOST_IF).unwrap();
        topology.node.checksum_offload_off(&format!("veth-b{i}")).unwrap();
    }
    let _backends: Vec<EchoBackend> =
        (0..BACKENDS).map(|i| EchoBackend::start(&topology.backends[i], i, topology.backend_v4(i))).collect();
    let ready: Vec<SliceEndpoint> =
        (0..BACKENDS).map(|i| SliceEndpoint::ready(&topology.backend_v4(i).to_string())).collect();
    let state = ClusterState {
        services: vec![typed(service_ports("apps", "echo", &[("echo", 80, TCP_PORT, "TCP")]))],
        slices: vec![typed(endpoint_slice_ports(
            "apps",
            "echo-1",
            "echo",
            "IPv4",
            &[("echo", TCP_PORT, "TCP")],
            &ready,
        ))],
        configmaps: vec![typed(config_map("sluice", "tcp-services", &[("9000", "apps/echo:echo")]))],
        ..ClusterState::default()
    };
    let base = Config::from_yaml(
        &format!(
            "listeners: [{{name: web, address: '127.0.0.1:18080'}}]\nworkers: 2\naccess_log: {{enabled: false}}\n\
             metrics: {{address: '127.0.0.1:0'}}\nxdp: {{interfaces: [{NODE_CLIENT_IF}, veth-b0, veth-b1, veth-b2], mode: skb}}\n"
        ),
        "base",
    )
    .unwrap();
    let translator = Translator::new(Settings {
        tcp_services_configmap: Some("sluice/tcp-services".into()),
        l4_in_xdp: true,
        ..Settings::default()
    });
    let config = translator.build(&base, &state).unwrap().config;
    assert_eq!(config.l4_services.len(), 1);
    assert_eq!(config.l4_services[0].address, SocketAddr::from(([0, 0, 0, 0], 9000)));
    let node = topology.node.run(move || Node::start(&config)).unwrap().unwrap();
    assert!(node.dataplane().is_some(), "the kernel path is running");
    let node_v4 = topology.node_v4();
    let target = SocketAddr::from((node_v4, 9000));
    wait_for(Duration::from_secs(5), "a first TCP exchange", || {
        topology.client.run(move || tcp_exchange(target).ok()).unwrap()
    })
    .unwrap_or_else(|e| panic!("{e:#}; {:?}", node.dataplane().unwrap().counters()));
    let before = node.dataplane().unwrap().counters().unwrap();
    let answers =
        topology.client.run(move || (0..300).map(|_| tcp_exchange(target)).collect::<Vec<_>>()).unwrap();
    let mut served = BTreeMap::new();
    for answer in answers {
        let (backend, seen) =
            answer.unwrap_or_else(|e| panic!("{e:#}; {:?}", node.dataplane().unwrap().counters()));
        assert_eq!(seen.ip(), std::net::IpAddr::V4(node_v4), "the backend sees the node as the source");
        *served.entry(backend).or_insert(0usize) += 1;
    }
    assert_eq!(served.len(), BACKENDS, "{served:?}");
    let after = node.dataplane().unwrap().counters().unwrap();
    assert!(after.get(Stat::L4NewFlows) - before.get(Stat::L4NewFlows) >= 300, "{after:?}");
    assert_eq!(worker_connections(&topology, &node), 0, "no worker accepted anything");
    node.stop().unwrap();
}

/// The real binary in Kubernetes mode (`--tcp-services-configmap`, `--l4-services-in-xdp`),
/// run in the node namespace with XDP on its interfaces and the fake API server on that
/// namespace's loopback: the `tcp-services` entry for a Service whose EndpointSlice lists the
/// backends' addresses is balanced in XDP (its counters in `/metrics` move by at least the
/// connections made), evenly over the three backends, which see the node as the source;
/// nothing of the node is on the path (no worker connection, no socket of the node on the
/// service's port: the user-space L4 proxy did not take it). About 2.5 s.
#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn the_binary_balances_a_tcp_services_entry_in_xdp() {
    use lb_tests::{
        fake_kube::{
            FakeKube,
            objects::{SliceEndpoint, config_map, endpoint_slice_ports, service_ports},
            sluice::{KubeSluice, KubeSluiceOptions},
        },
        process::ChildGuard,
        temp_dir::TempDir,
    };
    require_root!();
    let topology = Topology::new(BACKENDS).unwrap();
    for (ns, interface) in [(&topology.client, HOST_IF), (&topology.node, NODE_CLIENT_IF)] {
        ns.checksum_offload_off(interface).unwrap();
    }
    for i in 0..BACKENDS {
        topology.backends[i].checksum_offload_off(HOST_IF).unwrap();
        topology.node.checksum_offload_off(&format!("veth-b{i}")).unwrap();
    }
    let _backends: Vec<EchoBackend> =
        (0..BACKENDS).map(|i| EchoBackend::start(&topology.backends[i], i, topology.backend_v4(i))).collect();
    // On the node namespace's loopback, where the binary reaches it.
    let kube = topology.node.run(FakeKube::start).unwrap().unwrap();
    let ready: Vec<SliceEndpoint> =
        (0..BACKENDS).map(|i| SliceEndpoint::ready(&topology.backend_v4(i).to_string())).collect();
    kube.apply(service_ports("apps", "echo", &[("echo", 80, TCP_PORT, "TCP")]));
    kube.apply(endpoint_slice_ports("apps", "echo-1", "echo", "IPv4", &[("echo", TCP_PORT, "TCP")], &ready));
    kube.apply(config_map("sluice", "tcp-services", &[("9000", "apps/echo:echo")]));

    let options = KubeSluiceOptions {
        xdp: Some(format!("{{interfaces: [{NODE_CLIENT_IF}, veth-b0, veth-b1, veth-b2], mode: skb}}")),
        ..KubeSluiceOptions::default()
    }
    .args(&["--tcp-services-configmap", "sluice/tcp-services", "--l4-services-in-xdp"]);
    let dir = TempDir::new();
    // A namespace of its own: any port is free.
    let admin = SocketAddr::from(([127, 0, 0, 1], 18081));
    let plain = KubeSluice::command(&kube, &options, &dir, SocketAddr::from(([127, 0, 0, 1], 18080)), admin);
    let mut command = topology.node.command(plain.get_program());
    command.args(plain.get_args());
    for (key, value) in plain.get_envs() {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    let mut sluice = ChildGuard::spawn(command).unwrap();
    let target = SocketAddr::from((topology.node_v4(), 9000));
    wait_for(Duration::from_secs(20), "the tcp-services entry to answer", || {
        assert!(sluice.try_status().is_none(), "sluice exited:\n{}", sluice.output());
        topology.client.run(move || tcp_exchange(target).ok()).unwrap()
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", sluice.output()));
    let metrics = || {
        let body = topology
            .node
            .run(move || lb_tests::http::request(admin, "GET", "admin", "/metrics", &[]))
            .unwrap()
            .unwrap_or_else(|e| panic!("{e:#}"))
            .body;
        // The sum of a metric's samples; None when it has none.
        move |name: &str| -> Option<u64> {
            let values: Vec<f64> = body
                .lines()
                .filter(|line| {
                    line.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
                })
                .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                .collect();
            (!values.is_empty()).then(|| values.iter().sum::<f64>() as u64)
        }
    };
    let before = metrics();

    const CONNECTIONS: usize = 1500;
    let answers = exchanges(&topology, Protocol::Tcp, target, CONNECTIONS)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", sluice.output()));
    let mut served = BTreeMap::new();
    for (backend, seen) in answers {
        assert_eq!(
            seen.ip(),
            std::net::IpAddr::V4(topology.node_v4()),
            "the backend sees the node as the source"
        );
        assert!(seen.port() >= lb_common::L4_SNAT_PORT_MIN, "a node port from the SNAT range: {seen}");
        *served.entry(backend).or_insert(0usize) += 1;
    }
    for backend in 0..BACKENDS {
        let share = *served.get(&backend).unwrap_or(&0) as f64 / CONNECTIONS as f64;
        let fair = 1.0 / BACKENDS as f64;
        assert!((fair * 0.8..=fair * 1.2).contains(&share), "backend {backend} got {share:.3}: {served:?}");
    }
    let after = metrics();
    let delta = |name: &str| after(name).expect(name) - before(name).unwrap_or(0);
    let output = sluice.output();
    assert!(delta("sluice_xdp_l4_new_flows_total") >= CONNECTIONS as u64, "{output}");
    assert!(delta("sluice_xdp_l4_forwarded_total") >= 4 * CONNECTIONS as u64, "{output}");
    assert!(delta("sluice_xdp_l4_replied_total") >= 3 * CONNECTIONS as u64, "{output}");
    assert_eq!(after("sluice_worker_connections_total"), Some(0), "no worker accepted anything");
    assert_eq!(after("sluice_l4_proxied_flows_total"), Some(0), "the user-space L4 proxy took nothing");
    assert!(!output.contains("proxied in user space"), "{output}");
    topology
        .node
        .run(|| TcpListener::bind(("0.0.0.0", 9000)))
        .unwrap()
        .expect("no socket of the node on the service's port");
    let (status, output) = sluice.terminate(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{output}");
}

fn start_node(topology: &Topology) -> Node {
    let endpoints = |port: u16| {
        (0..BACKENDS).map(|i| format!("'{}:{port}'", topology.backend_v4(i))).collect::<Vec<_>>().join(", ")
    };
    let node_v4 = topology.node_v4();
    let yaml = format!(
        "listeners: [{{name: web, address: '127.0.0.1:18080'}}]
workers: 2
access_log: {{enabled: false}}
metrics: {{address: '127.0.0.1:0'}}
xdp:
  interfaces: [{NODE_CLIENT_IF}, veth-b0, veth-b1, veth-b2]
  mode: skb
l4_services:
  - name: tcp-echo
    address: '{node_v4}:{TCP_PORT}'
    endpoints: [{tcp}]
    health_check: {{interval_ms: {CHECK_INTERVAL_MS}, timeout_ms: 250}}
  - name: udp-echo
    address: '{node_v4}:{UDP_PORT}'
    protocol: udp
    endpoints: [{udp}]
    health_check: {{interval_ms: {CHECK_INTERVAL_MS}, timeout_ms: 250, udp_send: ping, udp_expect: pong}}
    on_endpoint_removal: reset
",
        tcp = endpoints(TCP_PORT),
        udp = endpoints(UDP_PORT),
    );
    let config = Config::from_yaml(&yaml, "test").unwrap();
    let node = topology.node.run(move || Node::start(&config)).unwrap().unwrap();
    assert!(node.dataplane().is_some(), "the kernel path is running");
    node
}

/// Connections the workers accepted, from the node's own `/metrics`.
fn worker_connections(topology: &Topology, node: &Node) -> u64 {
    let addr = node.metrics_addr().expect("metrics listener");
    let body = topology.node.run(move || lb_tests::http::http_get(addr, "/metrics")).unwrap().unwrap().body;
    body.lines()
        .filter(|line| line.starts_with("sluice_worker_connections_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[derive(Clone, Copy, Debug)]
enum Protocol {
    Tcp,
    Udp,
}

/// Client threads in the client namespace, each with its share of the exchanges.
const CLIENT_THREADS: usize = 8;
/// Bounds a batch of exchanges: about ten times what 10,000 take on a loaded 2-core VM.
const EXCHANGES_DEADLINE: Duration = Duration::from_secs(60);

/// `count` exchanges (each a new TCP connection or a new UDP socket) with `target`, spread over
/// `CLIENT_THREADS` threads in the client namespace: the backend and the peer it saw, for each.
/// The first failure, or the deadline passing, fails the batch.
fn exchanges(
    topology: &Topology,
    protocol: Protocol,
    target: SocketAddr,
    count: usize,
) -> anyhow::Result<Vec<(usize, SocketAddr)>> {
    let deadline = Instant::now() + EXCHANGES_DEADLINE;
    topology.client.run(move || -> anyhow::Result<Vec<(usize, SocketAddr)>> {
        // Threads started here are in the client namespace too (a new thread shares its
        // creator's namespaces).
        let threads: Vec<_> = (0..CLIENT_THREADS)
            .map(|t| {
                let share = count / CLIENT_THREADS + usize::from(t < count % CLIENT_THREADS);
                std::thread::spawn(move || -> anyhow::Result<Vec<(usize, SocketAddr)>> {
                    let mut answers = Vec::with_capacity(share);
                    for i in 0..share {
                        anyhow::ensure!(
                            Instant::now() < deadline,
                            "client thread {t}: {i} of {share} exchanges done at the deadline"
                        );
                        let answer = match protocol {
                            Protocol::Tcp => tcp_exchange(target),
                            Protocol::Udp => udp_exchange(target),
                        };
                        answers.push(answer.with_context(|| format!("client thread {t}, exchange {i}"))?);
                    }
                    Ok(answers)
                })
            })
            .collect();
        let mut answers = Vec::with_capacity(count);
        for thread in threads {
            answers.extend(thread.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??);
        }
        Ok(answers)
    })?
}

/// One TCP connection: the backend's greeting (its index and the peer it saw), one echoed line.
fn tcp_exchange(target: SocketAddr) -> anyhow::Result<(usize, SocketAddr)> {
    let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let greeting = read_greeting(&mut reader)?;
    anyhow::ensure!(echo(&mut stream, &mut reader, "hello")? == "hello", "echo mismatch");
    Ok(greeting)
}

/// One UDP datagram from a new socket (a new flow): the backend's index and the peer it saw.
fn udp_exchange(target: SocketAddr) -> anyhow::Result<(usize, SocketAddr)> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.set_read_timeout(Some(Duration::from_millis(500)))?;
    socket.connect(target)?;
    socket.send(b"who")?;
    let mut buf = [0u8; 128];
    let n = socket.recv(&mut buf)?;
    parse_greeting(std::str::from_utf8(&buf[..n])?)
}

fn read_greeting(reader: &mut BufReader<TcpStream>) -> anyhow::Result<(usize, SocketAddr)> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    parse_greeting(line.trim_end())
}

/// `b<index> <peer>`.
fn parse_greeting(text: &str) -> anyhow::Result<(usize, SocketAddr)> {
    let (backend, peer) = text.split_once(' ').ok_or_else(|| anyhow::anyhow!("bad greeting {text:?}"))?;
    Ok((backend.trim_start_matches('b').parse()?, peer.parse()?))
}

fn echo(stream: &mut TcpStream, reader: &mut BufReader<TcpStream>, line: &str) -> anyhow::Result<String> {
    stream.write_all(format!("{line}\n").as_bytes())?;
    let mut answer = String::new();
    anyhow::ensure!(reader.read_line(&mut answer)? > 0, "closed");
    Ok(answer.trim_end().to_owned())
}

/// A backend in its namespace: TCP greets with `b<i> <peer>` and echoes lines; UDP answers
/// `ping` with `pong` (the health probe) and anything else with the greeting.
struct EchoBackend {
    stop: Arc<AtomicBool>,
    tcp: SocketAddr,
    /// The open connections (a copy of each, to reset them), by the order they came in.
    connections: Arc<std::sync::Mutex<BTreeMap<u64, TcpStream>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl EchoBackend {
    fn start(ns: &Netns, index: usize, addr: Ipv4Addr) -> EchoBackend {
        let tcp = SocketAddr::from((addr, TCP_PORT));
        let udp = SocketAddr::from((addr, UDP_PORT));
        let (listener, socket) =
            ns.run(move || (TcpListener::bind(tcp).unwrap(), UdpSocket::bind(udp).unwrap())).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
        let mut threads = Vec::new();
        let (flag, held) = (stop.clone(), connections.clone());
        threads.push(std::thread::spawn(move || {
            for (id, stream) in (0u64..).zip(listener.incoming()) {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                let Ok(peer) = stream.peer_addr() else { continue };
                if let Ok(copy) = stream.try_clone() {
                    held.lock().unwrap().insert(id, copy);
                }
                let held = held.clone();
                std::thread::spawn(move || {
                    let _ = stream.write_all(format!("b{index} {peer}\n").as_bytes());
                    if let Ok(clone) = stream.try_clone() {
                        for line in BufReader::new(clone).lines() {
                            let Ok(line) = line else { break };
                            if stream.write_all(format!("{line}\n").as_bytes()).is_err() {
                                break;
                            }
                        }
                    }
                    // The last copy: the backend closes its side too.
                    held.lock().unwrap().remove(&id);
                });
            }
        }));
        let flag = stop.clone();
        threads.push(std::thread::spawn(move || {
            socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let mut buf = [0u8; 128];
            while !flag.load(Ordering::Relaxed) {
                let Ok((n, peer)) = socket.recv_from(&mut buf) else { continue };
                let answer =
                    if &buf[..n] == b"ping" { "pong".to_owned() } else { format!("b{index} {peer}") };
                let _ = socket.send_to(answer.as_bytes(), peer);
            }
        }));
        EchoBackend { stop, tcp, connections, threads }
    }

    /// The backend dies: its sockets close (new connections are refused, datagrams answered
    /// with port unreachable) and its connections are reset.
    fn kill(mut self, ns: &Netns) {
        self.stop.store(true, Ordering::Relaxed);
        let tcp = self.tcp;
        // Wakes the accept loop so that it sees the flag and drops the listener.
        let _ = ns.run(move || TcpStream::connect(tcp));
        for thread in self.threads.drain(..) {
            thread.join().unwrap();
        }
        for stream in std::mem::take(&mut *self.connections.lock().unwrap()).into_values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
