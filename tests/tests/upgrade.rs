//! Zero-downtime binary upgrades: `sluice run --instance NAME` with XDP in the node namespace,
//! under keep-alive, new-connection and WebSocket load from the client namespace, replaced by
//! `sluice upgrade --binary NEW`: the new process takes over the listening sockets and the
//! pinned maps and links, the old one drains (in-flight requests and the WebSocket finish) and
//! exits, and no request fails. Established flows keep the worker XDP steered them to: the
//! conntrack map the new process uses is the one the old one filled (same kernel map id), and
//! every connection's entry names the worker that answered it, before and after. A new binary
//! that exits, or never becomes ready, leaves the old process serving, counted.
//!
//! The new process is not the test's child (the old process starts it and exits): a guard kills
//! it by pid. A test killed outright (SIGKILL) leaves it running in its deleted namespace.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::{SinkExt, StreamExt, TryStreamExt};
use lb_common::{FAMILY_IPV4, FlowKey, PROTO_TCP};
use lb_tests::{
    backend::{Backend, Mode, Options},
    fake_kube::{
        FakeKube,
        objects::{SliceEndpoint, endpoint_slice, ingress, ingress_class, service},
        sluice::{KubeSluice, KubeSluiceOptions},
    },
    free_port,
    http::{self, Client, HttpResponse, http_get},
    process::ChildGuard,
    require_root,
    sluice::wait_for_load,
    sluice_binary,
    temp_dir::TempDir,
    topology::{NODE_CLIENT_IF, Topology},
    wait_for,
};
use lb_userspace::dataplane::{pin, steering::v4_words};
use tokio_tungstenite::tungstenite::Message;

#[test]
#[ignore = "needs root: network namespaces, XDP, bpffs (cargo xtask test runs it as root)"]
fn a_new_binary_takes_over_under_load_with_no_failed_request() {
    require_root!();
    let topology = Topology::new(0).unwrap();
    let peers = Peers::start(&topology);
    let old = Instance::start(&topology, &peers, "takeover");
    let target = SocketAddr::from((topology.node_v4(), PORT));
    let load = Load::start(&topology, target);
    wait_for_load(&load.sent, 100, "before the upgrade");

    // Established before the upgrade: a WebSocket and three requests held at their backend.
    let ws_runtime = tokio::runtime::Runtime::new().unwrap();
    let (mut ws, ws_port, ws_worker) = ws_runtime.block_on(ws_connect(&topology, target));
    ws_runtime.block_on(ws_round_trip(&mut ws, "before the upgrade"));
    let in_flight: Vec<_> = (0..3)
        .map(|_| {
            let client = topology.client.name().to_owned();
            std::thread::spawn(move || in_namespace(&client, move || http_get(target, "/slow")))
        })
        .collect();
    wait_for(Duration::from_secs(10), "the slow requests at their backend", || {
        (peers.slow.holding() == 3).then_some(())
    })
    .unwrap();
    let pins_before = old.pin_dir();
    let conntrack_id = pin::pinned_map_id(&pins_before, lb_common::CONNTRACK_MAP).unwrap();
    let ws_flow = flow_of(&pins_before, ws_port).expect("the WebSocket's flow is in conntrack");
    assert_eq!(ws_flow.worker as usize, ws_worker, "conntrack names the worker that answered the handshake");
    let new_flows_before = xdp_counter(&topology, old.admin, "new_flows");

    // The upgrade, to a copy of the binary (another file, so the running one can be told apart).
    let new_binary = old.dir.0.join("sluice-new");
    std::fs::copy(sluice_binary().unwrap(), &new_binary).unwrap();
    let asked = std::time::Instant::now();
    let (ok, said) = old.upgrade(Some(&new_binary), 30);
    let took = asked.elapsed();
    assert!(ok, "the upgrade succeeds: {said}\n{}", old.child.output());
    let new = PidGuard::of_upgrade(&said);
    let new_pid = new.0;
    assert_ne!(new_pid, old.child.pid());
    // Compared as files (device and inode), not paths: the path the kernel shows for another
    // process's executable depends on the mounts it sees (a chroot shows the host's path).
    let identity = |path: &Path| {
        let meta = std::fs::metadata(path).unwrap();
        (std::os::unix::fs::MetadataExt::dev(&meta), std::os::unix::fs::MetadataExt::ino(&meta))
    };
    assert_eq!(
        identity(Path::new(&format!("/proc/{new_pid}/exe"))),
        identity(&new_binary),
        "the new process runs the new binary"
    );

    // The new process uses the maps the old one filled: same conntrack map, same entries, and
    // the counters went on from where they were.
    let pins_after =
        pin::instance_dir(&PathBuf::from(format!("/proc/{new_pid}/root/sys/fs/bpf")), &old.instance);
    assert_eq!(pin::pinned_map_id(&pins_after, lb_common::CONNTRACK_MAP).unwrap(), conntrack_id);
    assert_eq!(flow_of(&pins_after, ws_port), Some(ws_flow), "the WebSocket keeps its conntrack entry");
    assert!(xdp_counter(&topology, old.admin, "new_flows") >= new_flows_before, "counters carried over");
    assert!(is_ready(&topology, old.admin), "the new process answers the admin socket it took over");
    wait_for_load(&load.sent, 100, "after the handover");

    // The old process drains: held requests finish, the WebSocket still works on its worker,
    // and the process exits once the WebSocket closes.
    assert!(old.child.try_status_is_running(), "the old process drains while connections remain");
    peers.slow.release();
    for request in in_flight {
        let response = request.join().unwrap().expect("an in-flight request completes");
        assert_eq!(response.status, 200, "{response:?}");
    }
    ws_runtime.block_on(ws_round_trip(&mut ws, "after the upgrade"));
    assert_eq!(flow_of(&pins_after, ws_port).map(|f| f.worker as usize), Some(ws_worker));
    ws_runtime.block_on(async { ws.close(None).await.expect("the WebSocket closes cleanly") });
    drop(ws);
    let mut old_child = old.child;
    let status =
        wait_for(Duration::from_secs(15), "the old process to exit once drained", || old_child.try_status())
            .unwrap_or_else(|e| panic!("{e}\n{}", old_child.output()));
    assert!(status.success(), "the old process exits cleanly: {status:?}\n{}", old_child.output());
    assert!(old_child.output().contains("handed over"), "{}", old_child.output());
    wait_for_load(&load.sent, 100, "after the old process exited");

    let counts = load.stop();
    assert_eq!(counts.failed, 0, "no request failed: {counts:?}");
    assert!(counts.keep_alive_requests > 100, "{counts:?}");
    // Every connection was answered by one worker, the one its conntrack entry names: the
    // connections the old process served as well as the new one's, in the one map.
    let flows = pin::pinned_flows(&pins_after).unwrap();
    let by_port: BTreeMap<u16, u32> = flows
        .iter()
        .filter(|(key, _)| key.src == v4_words(topology.client_v4().octets()))
        .map(|(key, value)| (u16::from_be(key.sport), value.worker))
        .collect();
    for (port, workers) in &counts.workers_by_connection {
        assert!(workers.iter().all(|w| *w == workers[0]), "one connection, several workers: {workers:?}");
        assert_eq!(by_port.get(port).map(|w| *w as usize), Some(workers[0]), "connection from port {port}");
    }

    // The new process stops like any other: XDP detached, nothing left pinned.
    new.terminate();
    assert!(!xdp_attached(&topology), "no program attached after the new process stopped");
    eprintln!(
        "upgrade: {} requests, {} keep-alive reconnects at the drain, new process ready {took:?} after the request",
        counts.sent, counts.reconnects
    );
}

#[test]
#[ignore = "needs root: network namespaces, XDP, bpffs (cargo xtask test runs it as root)"]
fn a_failed_new_binary_leaves_the_old_one_serving() {
    require_root!();
    let topology = Topology::new(0).unwrap();
    let peers = Peers::start(&topology);
    let old = Instance::start(&topology, &peers, "failing");
    let target = SocketAddr::from((topology.node_v4(), PORT));
    let load = Load::start(&topology, target);
    wait_for_load(&load.sent, 50, "before the upgrades");

    // A binary that exits at once.
    let (ok, said) = old.upgrade(Some(Path::new("/bin/false")), 10);
    assert!(!ok, "{said}");
    assert!(said.contains("/bin/false"), "the failure names the binary: {said}");
    wait_for_load(&load.sent, 50, "after the first failed upgrade");

    // One that never becomes ready: abandoned after its timeout; another request meanwhile
    // is refused, saying why.
    let hang = old.dir.0.join("hang.sh");
    std::fs::write(&hang, "#!/bin/sh\nexec sleep 60\n").unwrap();
    std::fs::set_permissions(&hang, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let waiting = {
        let (run_dir, instance, hang) = (old.run_dir.clone(), old.instance.clone(), hang.clone());
        std::thread::spawn(move || upgrade_command(&run_dir, &instance, Some(&hang), 2))
    };
    wait_for(Duration::from_secs(10), "the hanging binary to be started", || {
        old.child.output().contains("hang.sh").then_some(())
    })
    .unwrap();
    let (ok, refused) = old.upgrade(Some(Path::new("/bin/false")), 10);
    assert!(!ok && refused.contains("an upgrade is in progress (new process pid"), "{refused}");
    let (ok, said) = waiting.join().unwrap();
    assert!(!ok && said.contains("not ready within 2 s"), "{said}");
    wait_for_load(&load.sent, 50, "after the second failed upgrade");

    assert!(old.child.try_status_is_running(), "the old process serves on");
    let metrics = in_namespace(topology.node.name(), {
        let admin = old.admin;
        move || http_get(admin, "/metrics")
    })
    .unwrap();
    assert!(metrics.body.contains("sluice_upgrades_total{outcome=\"failed\"} 2"), "{}", metrics.body);
    assert!(metrics.body.contains("sluice_upgrades_total{outcome=\"refused\"} 1"), "{}", metrics.body);
    assert!(is_ready(&topology, old.admin));
    let counts = load.stop();
    assert_eq!(counts.failed, 0, "no request failed: {counts:?}");
    assert!(xdp_counter(&topology, old.admin, "steered") > 0, "XDP steers throughout");
    let (status, output) = old.child.terminate(Duration::from_secs(25)).unwrap();
    assert!(status.success(), "{output}");
    assert!(output.contains("upgrade failed; this process serves on"), "{output}");
}

/// A killed instance leaves its kernel side behind on purpose (the links are pinned so that an
/// upgrade can take them over): XDP stays attached, and the pins and the control socket stay.
/// `sluice cleanup` refuses while the instance runs, then removes them, which detaches XDP; a
/// second cleanup finds nothing. The pins go to a bpffs the test mounts, which outlives the
/// killed process's mount namespace as the host's /sys/fs/bpf would.
#[test]
#[ignore = "needs root: network namespaces, XDP, bpffs (cargo xtask test runs it as root)"]
fn cleanup_removes_what_a_killed_instance_left() {
    require_root!();
    let topology = Topology::new(0).unwrap();
    let peers = Peers::start(&topology);
    let bpffs = BpffsMount::new();
    let old =
        Instance::start_with(&topology, &peers, "cleanup", &[], &["--bpffs".as_ref(), bpffs.path().as_ref()]);
    let pins = pin::instance_dir(bpffs.path(), &old.instance);
    let pinned = std::fs::read_dir(&pins).unwrap().count();
    assert!(pinned >= 3, "the maps and the links are pinned in {}", pins.display());
    assert!(xdp_attached(&topology));
    let socket = old.run_dir.join(format!("{}.sock", old.instance));
    let cleanup = || {
        let output = topology
            .node
            .command(sluice_binary().unwrap())
            .args(["cleanup", "--instance", &old.instance, "--run-dir"])
            .arg(&old.run_dir)
            .arg("--bpffs")
            .arg(bpffs.path())
            .output()
            .unwrap();
        let said =
            format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.success(), said)
    };

    let (ok, said) = cleanup();
    assert!(!ok && said.contains("is running"), "a running instance is left alone: {said}");
    assert_eq!(std::fs::read_dir(&pins).unwrap().count(), pinned);

    let pid = old.child.pid();
    old.child.kill().unwrap();
    assert!(!process_alive(pid));
    assert!(xdp_attached(&topology), "the pinned link keeps XDP attached after a kill");
    assert!(socket.exists());

    let (ok, said) = cleanup();
    assert!(ok, "{said}");
    assert!(said.contains(&format!("removed {pinned} pins and its control socket")), "{said}");
    assert!(!pins.exists() && !socket.exists());
    assert!(!xdp_attached(&topology), "unpinning the last reference detaches XDP");

    let (ok, said) = cleanup();
    assert!(ok && said.contains("removed 0 pins and no control socket"), "{said}");
}

/// A release that adds XDP counters still upgrades: the pinned stats array is the one the first
/// process made, with fewer counters (here the 22 of the release before the L4 counters, put in
/// its place under the pin before the upgrade), and the new program loads on it (the verifier
/// accepts it; a lookup past its end finds nothing). Steering goes on with no failed request,
/// the counters it has go on counting, and the new ones read 0.
#[test]
#[ignore = "needs root: network namespaces, XDP, bpffs (cargo xtask test runs it as root)"]
fn a_binary_with_more_counters_upgrades_over_a_smaller_pinned_stats_array() {
    require_root!();
    const OLDER_STATS: u32 = 22;
    const { assert!(lb_common::STATS_LEN > OLDER_STATS) };
    let topology = Topology::new(0).unwrap();
    let peers = Peers::start(&topology);
    let bpffs = BpffsMount::new();
    let old = Instance::start_with(
        &topology,
        &peers,
        "counters",
        &[],
        &["--bpffs".as_ref(), bpffs.path().as_ref()],
    );
    let stats_pin = pin::instance_dir(bpffs.path(), &old.instance).join(lb_common::STATS_MAP);
    std::fs::remove_file(&stats_pin).unwrap();
    pin_percpu_array(&stats_pin, lb_common::STATS_MAP, OLDER_STATS);
    let target = SocketAddr::from((topology.node_v4(), PORT));
    let load = Load::start(&topology, target);
    wait_for_load(&load.sent, 50, "before the upgrade");

    let (ok, said) = old.upgrade(None, 30);
    assert!(ok, "the upgrade succeeds: {said}\n{}", old.child.output());
    let new = PidGuard::of_upgrade(&said);
    let steered_after_upgrade = xdp_counter(&topology, old.admin, "steered");
    wait_for_load(&load.sent, 100, "after the upgrade");
    wait_for(Duration::from_secs(10), "steering to be counted in the smaller array", || {
        (xdp_counter(&topology, old.admin, "steered") > steered_after_upgrade).then_some(())
    })
    .unwrap();
    assert_eq!(xdp_counter(&topology, old.admin, "l4_forwarded"), 0, "a counter past the array reads 0");
    let counts = load.stop();
    assert_eq!(counts.failed, 0, "no request failed: {counts:?}");
    drop(old);
    new.terminate();
}

/// In a container `sluice run --instance` is PID 1: it stays as the keeper, so the old process
/// can exit after an upgrade without ending the container, and SIGTERM to PID 1 reaches the
/// process serving at the time. (`unshare --pid` makes the container's PID namespace.)
#[test]
#[ignore = "needs root: network namespaces, PID namespaces, XDP, bpffs (cargo xtask test runs it as root)"]
fn as_pid_1_the_keeper_outlives_the_old_process() {
    require_root!();
    let topology = Topology::new(0).unwrap();
    let peers = Peers::start(&topology);
    let container = Instance::start_with(
        &topology,
        &peers,
        "keeper",
        &["unshare", "--pid", "--fork", "--kill-child"],
        &[],
    );
    let target = SocketAddr::from((topology.node_v4(), PORT));
    let load = Load::start(&topology, target);
    wait_for_load(&load.sent, 50, "before the upgrade");
    let keeper = children_of(container.child.pid()).into_iter().next().expect("unshare's child: PID 1");
    let serving = children_of(keeper);
    assert_eq!(serving.len(), 1, "PID 1 keeps one serving process");

    let (ok, said) = container.upgrade(None, 30);
    assert!(ok, "{said}\n{}", container.child.output());
    wait_for(Duration::from_secs(15), "the old process to exit", || {
        (!process_alive(serving[0])).then_some(())
    })
    .unwrap();
    wait_for_load(&load.sent, 100, "after the old process exited");
    assert!(container.child.try_status_is_running(), "the container lives on");
    // Reaped by PID 1, which now has the new process as its only child.
    wait_for(Duration::from_secs(5), "the new process as PID 1's only child", || {
        let now = children_of(keeper);
        (now.len() == 1 && now[0] != serving[0]).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", children_of(keeper)));

    let counts = load.stop();
    assert_eq!(counts.failed, 0, "no request failed: {counts:?}");

    // SIGTERM to PID 1 reaches the new process, which stops and detaches; then PID 1 exits.
    // SAFETY: signalling the keeper by pid.
    unsafe { libc::kill(keeper as i32, libc::SIGTERM) };
    let mut child = container.child;
    let status = wait_for(Duration::from_secs(25), "the container to end", || child.try_status())
        .unwrap_or_else(|e| panic!("{e}\n{}", child.output()));
    assert!(status.success(), "{status:?}\n{}", child.output());
    assert!(child.output().contains("xdp detached"), "{}", child.output());
    assert!(!xdp_attached(&topology));
}

/// Kubernetes mode (the DaemonSet's), without XDP: the new process holds its accept loops until
/// its first full view of the cluster is applied, so no request meets a route table without the
/// Ingress (the API server answers slowly here, so the new process serves its base
/// configuration for a while first), and `/readyz` stays 200.
#[test]
fn in_kubernetes_mode_the_new_process_accepts_only_with_the_clusters_routes() {
    let kube = FakeKube::start().unwrap();
    let web = Backend::start(None, "127.0.0.1:0".parse().unwrap(), "web").unwrap();
    kube.apply(ingress_class("sluice", "sluice.dev/ingress-controller", false));
    kube.apply(service("default", "web", 80, web.addr().port()));
    kube.apply(endpoint_slice(
        "default",
        "web-abc",
        "web",
        "IPv4",
        web.addr().port(),
        &[SliceEndpoint::ready("127.0.0.1")],
    ));
    kube.apply(ingress("default", "web", "sluice", "app.test", "/", "web", 80));
    let dir = TempDir::new();
    let run_dir = dir.0.join("run");
    let instance = format!("t{}-kube", std::process::id());
    let options =
        KubeSluiceOptions::default().args(&["--instance", &instance, "--run-dir", run_dir.to_str().unwrap()]);
    let old = KubeSluice::start(&kube, options);
    old.wait_for_backend("app.test", "/", "web", Duration::from_secs(20));

    let (addr, admin) = (old.addr, old.admin);
    let (sent, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let load = {
        let (sent, stop) = (sent.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            let mut not_ready = 0;
            while !stop.load(Ordering::Relaxed) && sent.load(Ordering::Relaxed) < 100_000 {
                match http::request(addr, "GET", "app.test", "/", &[]) {
                    Ok(r) if r.status == 200 && r.header("x-backend") == Some("web") => {}
                    other => failures.push(format!("{other:?}")),
                }
                if !http_get(admin, "/readyz").is_ok_and(|r| r.status == 200) {
                    not_ready += 1;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            (failures, not_ready)
        })
    };
    wait_for_load(&sent, 50, "before the upgrade");
    kube.set_delay(Duration::from_millis(500));
    let (ok, said) = upgrade_command(&run_dir, &instance, None, 30);
    assert!(ok, "{said}\n{}", old.child.output());
    kube.set_delay(Duration::ZERO);
    let new = PidGuard::of_upgrade(&said);
    let mut old_child = old.child;
    wait_for(Duration::from_secs(20), "the old process to exit", || old_child.try_status()).unwrap();
    wait_for_load(&sent, 100, "after the old process exited");
    stop.store(true, Ordering::Relaxed);
    let (failures, not_ready) = load.join().unwrap();
    assert!(failures.is_empty(), "{} failed, first: {:?}", failures.len(), failures.first());
    assert_eq!(not_ready, 0, "/readyz stayed 200");
    let output = old_child.output();
    assert!(output.contains("upgrade: serving") && output.contains("handed over"), "{output}");

    // The Lease: the new process has the same identity and renews it as its own; the old one
    // leaves it to the new one instead of releasing it (an empty holder would let another
    // instance lead beside the new one). Every write of the Lease names the identity, and the
    // new process goes on renewing after the old one is gone.
    assert!(output.contains("handed over: the Lease stays with the new process"), "{output}");
    let lease_writes = |kube: &FakeKube| -> Vec<String> {
        kube.requests()
            .into_iter()
            .filter(|r| r.path.contains("/leases") && matches!(r.method.as_str(), "PUT" | "POST"))
            .map(|r| r.body)
            .collect()
    };
    let writes_at_exit = lease_writes(&kube).len();
    wait_for(Duration::from_secs(10), "the new process to renew the Lease", || {
        (lease_writes(&kube).len() > writes_at_exit).then_some(())
    })
    .unwrap();
    let writes = lease_writes(&kube);
    assert!(
        writes.iter().all(|body| body.contains("\"holderIdentity\":\"sluice-a\"")),
        "no write released the Lease: {writes:#?}"
    );
    new.terminate();
}

/// Without XDP the L4 services are proxied in user space: an upgrade hands their sockets (a
/// TCP listener, a UDP socket) to the new process like the workers', so new connections and
/// datagrams are answered throughout, and a TCP connection opened before goes on through the
/// old process, which drains it (up to `shutdown_grace_ms`) and exits once it closes.
#[test]
fn l4_services_in_user_space_are_handed_over_and_their_connections_drain() {
    let tcp_endpoint = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_addr = tcp_endpoint.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in tcp_endpoint.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n @ 1..) = std::io::Read::read(&mut stream, &mut buf) {
                    if std::io::Write::write_all(&mut stream, &buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let udp_endpoint = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_addr = udp_endpoint.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = udp_endpoint.recv_from(&mut buf) {
            let _ = udp_endpoint.send_to(&buf[..n], from);
        }
    });
    let (web, tcp_port, udp_port) = (free_port(), free_port(), free_port());
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let dir = TempDir::new();
    let config = dir.0.join("sluice.yaml");
    std::fs::write(
        &config,
        format!(
            "workers: 1\naccess_log: {{enabled: false}}\nxdp: {{enabled: false}}\nadmin: {{address: \"{admin}\"}}\n\
             limits: {{shutdown_delay_ms: 0, shutdown_grace_ms: 20000}}\n\
             listeners: [{{name: web, address: \"127.0.0.1:{web}\"}}]\n\
             l4_services:\n\
             \x20 - {{name: t, address: \"127.0.0.1:{tcp_port}\", endpoints: [\"{tcp_addr}\"]}}\n\
             \x20 - {{name: u, address: \"127.0.0.1:{udp_port}\", protocol: udp, endpoints: [\"{udp_addr}\"]}}\n"
        ),
    )
    .unwrap();
    let run_dir = dir.0.join("run");
    let instance = format!("t{}-l4", std::process::id());
    let mut command = std::process::Command::new(sluice_binary().unwrap());
    command.args(["run", "--config"]).arg(&config).args(["--instance", &instance, "--run-dir"]).arg(&run_dir);
    let mut old = ChildGuard::spawn(command).unwrap();
    wait_for(Duration::from_secs(30), "sluice to be ready", || {
        assert!(old.try_status().is_none(), "sluice exited:\n{}", old.output());
        http_get(admin, "/readyz").is_ok_and(|r| r.status == 200).then_some(())
    })
    .unwrap();

    fn echo(stream: &mut TcpStream, what: &[u8]) -> std::io::Result<()> {
        std::io::Write::write_all(stream, what)?;
        let mut answer = vec![0u8; what.len()];
        std::io::Read::read_exact(stream, &mut answer)?;
        (answer == what).then_some(()).ok_or_else(|| std::io::Error::other("another answer"))
    }
    let connect = move || -> std::io::Result<TcpStream> {
        let stream = TcpStream::connect(("127.0.0.1", tcp_port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(stream)
    };
    let mut before = connect().unwrap();
    echo(&mut before, b"before").unwrap();

    // New TCP connections and UDP datagrams, one after another, until told to stop.
    let (sent, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let load = {
        let (sent, stop) = (sent.clone(), stop.clone());
        std::thread::spawn(move || {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            udp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            udp.connect(("127.0.0.1", udp_port)).unwrap();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) && sent.load(Ordering::Relaxed) < 100_000 {
                let n = sent.fetch_add(1, Ordering::Relaxed);
                let message = format!("m{n}");
                if let Err(e) = connect().and_then(|mut s| echo(&mut s, message.as_bytes())) {
                    failures.push(format!("tcp {n}: {e}"));
                }
                let mut buf = [0u8; 64];
                let answered = udp.send(message.as_bytes()).and_then(|_| udp.recv(&mut buf));
                if !answered.as_ref().is_ok_and(|&len| buf[..len] == *message.as_bytes()) {
                    failures.push(format!("udp {n}: {answered:?}"));
                }
            }
            failures
        })
    };
    wait_for_load(&sent, 50, "before the upgrade");

    let (ok, said) = upgrade_command(&run_dir, &instance, None, 30);
    assert!(ok, "{said}\n{}", old.output());
    let new = PidGuard::of_upgrade(&said);
    wait_for_load(&sent, 100, "after the handover");

    // The connection from before still works through the old process, which waits for it.
    echo(&mut before, b"after").unwrap();
    assert!(old.try_status().is_none(), "the old process drains while the connection is open");
    drop(before);
    wait_for(Duration::from_secs(20), "the old process to exit once drained", || old.try_status())
        .unwrap_or_else(|e| panic!("{e}\n{}", old.output()));
    wait_for_load(&sent, 100, "after the old process exited");
    stop.store(true, Ordering::Relaxed);
    let failures = load.join().unwrap();
    assert!(failures.is_empty(), "{} failed, first: {:?}", failures.len(), failures.first());
    assert!(old.output().contains("handed over"), "{}", old.output());
    new.terminate();
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const PORT: u16 = 8080;
const WORKERS: usize = 4;

/// The backends, in the node namespace: `fast` names itself, `slow` holds requests until
/// released, and a WebSocket echo.
struct Peers {
    fast: Backend,
    slow: Backend,
    ws: SocketAddr,
    _ws_runtime: tokio::runtime::Runtime,
}

impl Peers {
    fn start(topology: &Topology) -> Peers {
        let in_node = |name, mode| {
            Backend::launch(name, Options { netns: Some(&topology.node), mode, ..Options::default() })
                .unwrap()
        };
        let ws_runtime = tokio::runtime::Runtime::new().unwrap();
        let listener = topology.node.run(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).unwrap();
        listener.set_nonblocking(true).unwrap();
        let ws = listener.local_addr().unwrap();
        ws_runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else { return };
                    let (write, read) = ws.split();
                    let _ = read.try_filter(|m| std::future::ready(m.is_text())).forward(write).await;
                });
            }
        });
        Peers {
            fast: in_node("fast", Mode::Name),
            slow: in_node("slow", Mode::Hold),
            ws,
            _ws_runtime: ws_runtime,
        }
    }
}

/// `sluice run --instance NAME` with XDP on the node's client-facing interface.
struct Instance {
    child: ChildGuard,
    admin: SocketAddr,
    instance: String,
    run_dir: PathBuf,
    dir: TempDir,
}

impl Instance {
    fn start(topology: &Topology, peers: &Peers, name: &str) -> Instance {
        Self::start_with(topology, peers, name, &[], &[])
    }

    /// Started through `wrapper` (a command that runs the rest of its arguments), with `extra`
    /// arguments for `sluice run`.
    fn start_with(
        topology: &Topology,
        peers: &Peers,
        name: &str,
        wrapper: &[&str],
        extra: &[&std::ffi::OsStr],
    ) -> Instance {
        let dir = TempDir::new();
        let admin = SocketAddr::from(([127, 0, 0, 1], 9901));
        let yaml = format!(
            "workers: {WORKERS}\nworker_id_header: true\naccess_log: {{enabled: false}}\n\
             xdp: {{interfaces: [{NODE_CLIENT_IF}]}}\nadmin: {{address: \"{admin}\"}}\n\
             limits: {{shutdown_delay_ms: 0, shutdown_grace_ms: 20000}}\n\
             listeners: [{{name: web, address: \"0.0.0.0:{PORT}\"}}]\n\
             virtual_hosts:\n  - name: all\n    domains: [\"*\"]\n    routes:\n\
             \x20     - {{match: {{path: {{prefix: /slow}}}}, backend: slow}}\n\
             \x20     - {{match: {{path: {{prefix: /ws}}}}, backend: ws}}\n\
             \x20     - {{backend: fast}}\n\
             backends:\n\
             \x20 - {{name: fast, endpoints: [{{address: \"{}\"}}]}}\n\
             \x20 - {{name: slow, endpoints: [{{address: \"{}\"}}]}}\n\
             \x20 - {{name: ws, endpoints: [{{address: \"{}\"}}]}}\n",
            peers.fast.addr(),
            peers.slow.addr(),
            peers.ws,
        );
        let config = dir.0.join("sluice.yaml");
        std::fs::write(&config, yaml).unwrap();
        let run_dir = dir.0.join("run");
        // Unique per test process and test: pins live in the instance's own mount namespace
        // (`ip netns exec` makes one), the control socket in the test's directory.
        let instance = format!("t{}-{name}", std::process::id());
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut command = topology.node.command(program);
                command.args(rest).arg(sluice_binary().unwrap());
                command
            }
            None => topology.node.command(sluice_binary().unwrap()),
        };
        command
            .args(["run", "--config"])
            .arg(&config)
            .args(["--instance", &instance, "--run-dir"])
            .arg(&run_dir)
            .args(extra);
        let mut child = ChildGuard::spawn(command).unwrap();
        wait_for(Duration::from_secs(30), "sluice to be ready", || {
            assert!(child.try_status().is_none(), "sluice exited:\n{}", child.output());
            is_ready(topology, admin).then_some(())
        })
        .unwrap();
        Instance { child, admin, instance, run_dir, dir }
    }

    fn pin_dir(&self) -> PathBuf {
        pin::instance_dir(
            &PathBuf::from(format!("/proc/{}/root/sys/fs/bpf", self.child.pid())),
            &self.instance,
        )
    }

    fn upgrade(&self, binary: Option<&Path>, timeout_seconds: u64) -> (bool, String) {
        upgrade_command(&self.run_dir, &self.instance, binary, timeout_seconds)
    }
}

trait Running {
    fn try_status_is_running(&self) -> bool;
}

impl Running for ChildGuard {
    fn try_status_is_running(&self) -> bool {
        process_alive(self.pid())
    }
}

/// `sluice upgrade`: whether it succeeded, and what it printed.
fn upgrade_command(
    run_dir: &Path,
    instance: &str,
    binary: Option<&Path>,
    timeout_seconds: u64,
) -> (bool, String) {
    let mut command = std::process::Command::new(sluice_binary().unwrap());
    command.args(["upgrade", "--instance", instance, "--run-dir"]).arg(run_dir);
    command.args(["--timeout-seconds", &timeout_seconds.to_string()]);
    if let Some(binary) = binary {
        command.arg("--binary").arg(binary);
    }
    let output = command.output().unwrap();
    let said =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), said)
}

/// A bpffs mounted on a scratch directory, unmounted (dropping whatever is pinned there) when
/// dropped.
struct BpffsMount(TempDir);

impl BpffsMount {
    fn new() -> BpffsMount {
        let dir = TempDir::new();
        let status =
            std::process::Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&dir.0).status().unwrap();
        assert!(status.success(), "mount -t bpf on {}", dir.0.display());
        BpffsMount(dir)
    }

    fn path(&self) -> &Path {
        &self.0.0
    }
}

impl Drop for BpffsMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0.0).status();
    }
}

/// Creates a per-CPU array of `entries` u64 counters named `name` and pins it at `path`: what an
/// older binary's stats array is. (bpftool is not installed here: the two bpf(2) calls are made
/// directly.)
fn pin_percpu_array(path: &Path, name: &str, entries: u32) {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        inner_map_fd: u32,
        numa_node: u32,
        map_name: [u8; 16],
    }
    #[repr(C)]
    struct ObjPin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let mut map_name = [0u8; 16];
    map_name[..name.len()].copy_from_slice(name.as_bytes());
    let create = MapCreate {
        map_type: BPF_MAP_TYPE_PERCPU_ARRAY,
        key_size: 4,
        value_size: 8,
        max_entries: entries,
        map_flags: 0,
        inner_map_fd: 0,
        numa_node: 0,
        map_name,
    };
    // SAFETY: BPF_MAP_CREATE reads `size_of::<MapCreate>()` bytes of the attribute we own.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &create as *const MapCreate,
            std::mem::size_of::<MapCreate>(),
        )
    };
    assert!(fd >= 0, "BPF_MAP_CREATE: {}", std::io::Error::last_os_error());
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let pin = ObjPin { pathname: path.as_ptr() as u64, bpf_fd: fd as u32, file_flags: 0 };
    // SAFETY: BPF_OBJ_PIN reads the attribute and the NUL-terminated path, both alive here.
    let pinned = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, &pin as *const ObjPin, std::mem::size_of::<ObjPin>())
    };
    assert_eq!(pinned, 0, "BPF_OBJ_PIN {path:?}: {}", std::io::Error::last_os_error());
    // SAFETY: closing the descriptor BPF_MAP_CREATE returned; the pin keeps the map.
    unsafe { libc::close(fd as i32) };
}

/// Kills a process that is not the test's child (the upgraded one) when dropped.
struct PidGuard(u32);

impl PidGuard {
    /// The new process an upgrade started, from what `sluice upgrade` said ("... (pid N) ...").
    fn of_upgrade(said: &str) -> PidGuard {
        let pid = said
            .split("pid ")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("the new pid in {said:?}"));
        PidGuard(pid)
    }

    /// SIGTERM, then waits until it is gone.
    fn terminate(self) {
        // SAFETY: signalling a process by pid; the guard's pid is the upgraded sluice.
        unsafe { libc::kill(self.0 as i32, libc::SIGTERM) };
        wait_for(Duration::from_secs(25), "the new process to exit", || {
            (!process_alive(self.0)).then_some(())
        })
        .unwrap();
    }
}

impl Drop for PidGuard {
    fn drop(&mut self) {
        if process_alive(self.0) {
            // SAFETY: as above.
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
}

/// The children of `pid` (every thread's).
fn children_of(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        children.extend(text.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
    }
    children
}

fn process_alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; look at its state too.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit(')').next().and_then(|s| s.split_whitespace().next()).is_some_and(|s| s != "Z")
        })
        .unwrap_or(false)
}

/// Runs `f` on a thread inside the named namespace (for threads that outlive a borrow of the
/// topology).
fn in_namespace<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(format!("/run/netns/{netns}")).unwrap();
    std::thread::spawn(move || {
        // SAFETY: setns with a valid namespace fd changes only this thread's network namespace.
        assert_eq!(unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) }, 0);
        f()
    })
    .join()
    .unwrap()
}

fn is_ready(topology: &Topology, admin: SocketAddr) -> bool {
    in_namespace(topology.node.name(), move || http_get(admin, "/readyz")).is_ok_and(|r| r.status == 200)
}

/// One XDP counter from the admin status.
fn xdp_counter(topology: &Topology, admin: SocketAddr, name: &str) -> u64 {
    let status = in_namespace(topology.node.name(), move || http_get(admin, "/api/v1/status")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&status.body).unwrap();
    json["xdp"]["counters"][name].as_u64().unwrap_or_else(|| panic!("counter {name} in {json}"))
}

fn xdp_attached(topology: &Topology) -> bool {
    let out = topology.node.command("ip").args(["link", "show", "dev", NODE_CLIENT_IF]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).contains("xdp")
}

/// The conntrack entry of the client's connection from `client_port` to the service.
fn flow_of(pins: &Path, client_port: u16) -> Option<lb_common::FlowValue> {
    let key = FlowKey {
        src: v4_words([198, 18, 0, 1]),
        dst: v4_words([198, 18, 0, 2]),
        sport: client_port.to_be(),
        dport: PORT.to_be(),
        proto: PROTO_TCP,
        family: FAMILY_IPV4,
        _pad: 0,
    };
    pin::pinned_flows(pins).unwrap().into_iter().find(|(k, _)| *k == key).map(|(_, v)| v)
}

fn worker_of(response: &HttpResponse) -> usize {
    response.header("x-sluice-worker").expect("worker header").parse().expect("numeric worker id")
}

#[derive(Debug, Default)]
struct Counts {
    sent: u64,
    failed: u64,
    errors: Vec<String>,
    keep_alive_requests: u64,
    /// Reused keep-alive connections the server closed between requests (the drain), retried
    /// on a new connection as RFC 9112 section 9.3.1 lets a client do for idempotent requests.
    reconnects: u64,
    /// Client port of each keep-alive connection -> the worker of each of its responses.
    workers_by_connection: BTreeMap<u16, Vec<usize>>,
}

/// New connections (one request each) and four keep-alive connections, from the client
/// namespace, until stopped.
struct Load {
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    counts: Arc<Mutex<Counts>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(topology: &Topology, target: SocketAddr) -> Load {
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new(Counts::default()));
        let mut threads = Vec::new();
        for kind in 0..5 {
            let (sent, stop, counts) = (sent.clone(), stop.clone(), counts.clone());
            let client = topology.client.name().to_owned();
            threads.push(std::thread::spawn(move || {
                in_namespace(&client, move || match kind {
                    0 => new_connections(target, &sent, &stop, &counts),
                    _ => keep_alive(target, &sent, &stop, &counts),
                })
            }));
        }
        Load { sent, stop, counts, threads }
    }

    fn stop(self) -> Counts {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().unwrap();
        }
        std::mem::take(&mut self.counts.lock().unwrap())
    }
}

fn new_connections(target: SocketAddr, sent: &AtomicU64, stop: &AtomicBool, counts: &Mutex<Counts>) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) && i < 200_000 {
        i += 1;
        let result = http_get(target, &format!("/new/{i}"));
        let mut counts = counts.lock().unwrap();
        counts.sent += 1;
        match result {
            Ok(r) if r.status == 200 && r.header("x-backend") == Some("fast") => {}
            Ok(r) => {
                counts.failed += 1;
                counts.errors.push(format!("new connection: {} {}", r.status, r.body));
            }
            Err(e) => {
                counts.failed += 1;
                counts.errors.push(format!("new connection: {e:#}"));
            }
        }
        sent.fetch_add(1, Ordering::Relaxed);
    }
}

fn keep_alive(target: SocketAddr, sent: &AtomicU64, stop: &AtomicBool, counts: &Mutex<Counts>) {
    // (client, its port, requests answered on it)
    let connect = || {
        let stream = TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
        let port = stream.local_addr()?.port();
        Ok::<_, std::io::Error>((Client::over_tcp(stream)?, port, 0u64))
    };
    let mut connection: Option<(Client, u16, u64)> = None;
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) && i < 200_000 {
        i += 1;
        let path = format!("/ka/{i}");
        let mut result = match &mut connection {
            Some((client, _, _)) => client.request("GET", "test", &path, &[], false),
            None => match connect() {
                Ok(c) => connection.insert(c).0.request("GET", "test", &path, &[], false),
                Err(e) => Err(e.into()),
            },
        };
        let mut counts = counts.lock().unwrap();
        let reused = connection.as_ref().is_some_and(|(client, _, used)| *used > 0 && client.buf.is_empty());
        if result.is_err() && reused {
            // Closed between requests by the drain: once more on a new connection.
            counts.reconnects += 1;
            connection = None;
            result = match connect() {
                Ok(c) => connection.insert(c).0.request("GET", "test", &path, &[], false),
                Err(e) => Err(e.into()),
            };
        }
        counts.sent += 1;
        counts.keep_alive_requests += 1;
        sent.fetch_add(1, Ordering::Relaxed);
        match (result, &mut connection) {
            (Ok(r), Some((_, port, used))) if r.status == 200 => {
                *used += 1;
                counts.workers_by_connection.entry(*port).or_default().push(worker_of(&r));
                if r.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
                    connection = None;
                }
            }
            (result, _) => {
                counts.failed += 1;
                counts.errors.push(format!("keep-alive: {result:?}"));
                connection = None;
            }
        }
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A WebSocket from the client namespace: the stream, its client port and the worker that
/// answered the handshake.
async fn ws_connect(topology: &Topology, target: SocketAddr) -> (Ws, u16, usize) {
    let stream = topology.client.run(move || TcpStream::connect(target)).unwrap().unwrap();
    let port = stream.local_addr().unwrap().port();
    stream.set_nonblocking(true).unwrap();
    let stream = tokio::net::TcpStream::from_std(stream).unwrap();
    let handshake = tokio_tungstenite::client_async(format!("ws://{target}/ws"), stream);
    let (ws, response) = tokio::time::timeout(Duration::from_secs(10), handshake)
        .await
        .expect("WebSocket handshake within 10 s")
        .expect("WebSocket handshake through the proxy");
    let worker = response
        .headers()
        .get("x-sluice-worker")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .expect("the handshake's response names its worker");
    (ws, port, worker)
}

async fn ws_round_trip(ws: &mut Ws, what: &str) {
    ws.send(Message::text(what)).await.unwrap_or_else(|e| panic!("{what}: send failed: {e}"));
    let echo = match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Err(_) => panic!("{what}: no echo within 5 s"),
        Ok(None) => panic!("{what}: the WebSocket closed"),
        Ok(Some(Err(e))) => panic!("{what}: {e}"),
        Ok(Some(Ok(echo))) => echo,
    };
    assert_eq!(echo, Message::text(what), "{what}");
}
