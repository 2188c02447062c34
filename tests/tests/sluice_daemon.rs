//! The real `sluice` binary in the node namespace: it attaches XDP to the node's interface,
//! serves requests from the client namespace, and on SIGTERM reports its counters and leaves
//! no program attached.

use std::{net::SocketAddr, time::Duration};

use lb_tests::{
    http::{HttpResponse, http_get},
    process::ChildGuard,
    require_root, sluice_binary,
    topology::{NODE_CLIENT_IF, Topology},
    wait_for,
};

#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn sluice_attaches_serves_and_detaches_on_sigterm() {
    require_root!();
    let topology = Topology::new(0).unwrap();
    let (sluice, target, _) = start_in_node(
        &topology,
        &["run", "--workers", "3", "--interface", NODE_CLIENT_IF, "--log-format", "json"],
    );
    assert!(xdp_attached(&topology), "XDP attached while running; output:\n{}", sluice.output());

    let mut workers_seen = std::collections::BTreeSet::new();
    for i in 0..60 {
        let response = topology.client.run(move || http_get(target, &format!("/r/{i}"))).unwrap().unwrap();
        // The built-in configuration has no routes: the worker that answered says 404.
        assert_eq!(response.status, 404);
        workers_seen.insert(response.header("x-sluice-worker").unwrap().to_owned());
    }
    assert!(workers_seen.len() > 1, "connections reached more than one worker: {workers_seen:?}");

    let (status, output) = sluice.terminate(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "clean exit on SIGTERM; output:\n{output}");
    let counters = output
        .lines()
        .find(|l| l.contains("xdp counters at shutdown"))
        .unwrap_or_else(|| panic!("counters logged at shutdown; output:\n{output}"));
    let packets: u64 = counters
        .split("packets=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a packets count in {counters}"));
    // 61 connections, each at least SYN, ACK, request and FIN toward the node.
    assert!(packets >= 61 * 4, "XDP counted {packets} packets");
    assert!(!xdp_attached(&topology), "no XDP program left attached after exit");
}

#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn sluice_without_xdp_still_serves() {
    require_root!();
    let topology = Topology::new(0).unwrap();
    let (sluice, _, response) = start_in_node(&topology, &["run", "--workers", "2", "--no-xdp"]);
    assert_eq!(response.status, 404, "the built-in configuration's answer");
    assert!(response.header("x-sluice-worker").is_some());
    assert!(!xdp_attached(&topology));
    let (status, output) = sluice.terminate(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{output}");
    assert!(!output.contains("xdp counters"), "no XDP in --no-xdp mode:\n{output}");
}

#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn a_killed_sluice_leaves_no_program_attached() {
    require_root!();
    let topology = Topology::new(0).unwrap();
    let mut command = topology.node.command(sluice_binary().unwrap());
    command.args(["run", "--workers", "2", "--interface", NODE_CLIENT_IF]);
    let mut sluice = ChildGuard::spawn(command).unwrap();
    wait_for(Duration::from_secs(20), "XDP to be attached", || {
        assert!(sluice.try_status().is_none(), "sluice exited early:\n{}", sluice.output());
        (sluice.output().contains("sluice is serving") && xdp_attached(&topology)).then_some(())
    })
    .unwrap();
    // SIGKILL: no destructor runs; the kernel closes the bpf_link descriptors.
    sluice.kill().unwrap();
    wait_for(Duration::from_secs(5), "the kernel to detach XDP", || (!xdp_attached(&topology)).then_some(()))
        .unwrap();
}

/// Starts `sluice run --workers 2 ARGS` in the node namespace, where XDP cannot attach, and
/// checks that it says why (each of `reasons` in the warning), serves the client without the
/// kernel path, leaves no program attached, and exits cleanly.
fn serves_without_xdp_when_attaching_fails(args: &[&str], reasons: &[&str]) {
    let topology = Topology::new(0).unwrap();
    let (sluice, target, _) = start_in_node(&topology, &[&["run", "--workers", "2"], args].concat());
    let output = sluice.output();
    let warning = output
        .lines()
        .find(|l| l.contains("XDP disabled; serving without the kernel path"))
        .unwrap_or_else(|| panic!("the fallback is logged with its reason:\n{output}"));
    for reason in reasons {
        assert!(warning.contains(reason), "the warning names {reason:?}: {warning}");
    }
    let serving = output.lines().find(|l| l.contains("sluice is serving")).unwrap();
    assert!(serving.contains("xdp=false"), "{serving}");
    for i in 0..20 {
        let response = topology.client.run(move || http_get(target, &format!("/r/{i}"))).unwrap().unwrap();
        // The built-in configuration has no routes: a worker answers 404.
        assert_eq!(response.status, 404);
        assert!(response.header("x-sluice-worker").is_some());
    }
    assert!(!xdp_attached(&topology), "no XDP program left on {NODE_CLIENT_IF}");
    let (status, output) = sluice.terminate(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{output}");
    assert!(!output.contains("xdp counters"), "the kernel path never ran:\n{output}");
}

/// The second of two interfaces does not exist: the first one's attachment is undone too.
#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn a_missing_interface_leaves_sluice_serving_without_xdp() {
    require_root!();
    serves_without_xdp_when_attaching_fails(
        &["--interface", NODE_CLIENT_IF, "--interface", "sluice-none0"],
        &["there is no network interface sluice-none0 here", "--no-xdp"],
    );
}

/// Loopback has no native (driver) XDP: `--xdp-mode driver` cannot attach there.
#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn driver_mode_refused_by_the_interface_leaves_sluice_serving_without_xdp() {
    require_root!();
    serves_without_xdp_when_attaching_fails(
        &["--interface", "lo", "--xdp-mode", "driver"],
        &["attaching XDP to lo in driver mode failed", "--xdp-mode skb"],
    );
}

/// Everything that can fail before serving fails before the listeners open: an unreadable
/// kubeconfig stops `sluice run --kubernetes` with one clear line and no listener ever bound.
#[test]
fn an_unreadable_kubeconfig_fails_before_any_listener_opens() {
    let port = lb_tests::free_port();
    let dir = lb_tests::temp_dir::TempDir::new();
    let config = dir.0.join("base.yaml");
    std::fs::write(
        &config,
        format!("xdp: {{enabled: false}}\nlisteners: [{{name: web, address: \"127.0.0.1:{port}\"}}]\n"),
    )
    .unwrap();
    let missing = dir.0.join("no-such-kubeconfig");
    let output = std::process::Command::new(sluice_binary().unwrap())
        .args(["run", "--kubernetes", "--config"])
        .arg(&config)
        .arg("--kubeconfig")
        .arg(&missing)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("cannot read the kubeconfig"), "{stderr}");
    assert!(!stderr.contains("sluice is serving"), "no listener opened first:\n{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("sluice: "), "{stderr}");
    // Each cause once (an io::Error's text used to appear twice).
    let cause = "No such file or directory";
    assert!(last.matches(cause).count() <= 1, "{last}");
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn xdp_attached(topology: &Topology) -> bool {
    let out = topology.node.command("ip").args(["link", "show", "dev", NODE_CLIENT_IF]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).contains("xdp")
}

/// Starts `sluice ARGS` in the node namespace and waits until it has said it serves (logged
/// once the kernel path is attached, when it is on) and answers the client; returns the
/// process, the address the client reaches and that first answer.
fn start_in_node(topology: &Topology, args: &[&str]) -> (ChildGuard, SocketAddr, HttpResponse) {
    let mut command = topology.node.command(sluice_binary().unwrap());
    command.args(args);
    let mut sluice = ChildGuard::spawn(command).unwrap();
    let target = SocketAddr::from((topology.node_v4(), 8080));
    let response = wait_for(Duration::from_secs(20), "sluice to serve", || {
        assert!(sluice.try_status().is_none(), "sluice exited before serving:\n{}", sluice.output());
        if !sluice.output().contains("sluice is serving") {
            return None;
        }
        topology.client.run(move || http_get(target, "/")).ok()?.ok()
    })
    .unwrap();
    (sluice, target, response)
}
