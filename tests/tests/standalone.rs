//! Standalone mode end to end: the one-command demo in its short mode, and hot reload of the
//! configuration file under load (valid and invalid files mixed, no request lost).

use std::{
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use lb_tests::sluice::Binary;
use lb_tests::{
    backend::{BACKEND_HEADER, Backend},
    http::http_get,
    process::ChildGuard,
    require_root, sluice_binary, wait_for,
};

#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn the_demo_runs_to_completion_in_short_mode() {
    require_root!();
    let sluice = sluice_binary().unwrap();
    let xtask = sluice.with_file_name("xtask");
    assert!(xtask.exists(), "{} is missing: run the suites through `cargo xtask test`", xtask.display());
    let mut command = Command::new(&xtask);
    command.args(["demo", "--short", "--sluice"]).arg(&sluice);
    let mut demo = ChildGuard::spawn(command).unwrap();
    let status = wait_for(Duration::from_secs(120), "the demo to finish", || demo.try_status()).unwrap();
    let output = demo.output();
    assert!(status.success(), "the demo failed:\n{output}");
    assert!(output.contains("60 requests answered"), "{output}");
    assert!(output.contains(", 0 failed"), "{output}");
    for backend in ["backend-1", "backend-2", "backend-3"] {
        assert!(
            output.contains(&format!("{backend}        20")),
            "round robin gives each backend 20:\n{output}"
        );
    }
    // The demo runs with XDP: it must have attached, steered the batch and detached cleanly,
    // not fallen back to serving without it.
    assert!(!output.contains("XDP disabled"), "the demo fell back to serving without XDP:\n{output}");
    assert!(output.contains("xdp attached"), "XDP attached to the node's interface:\n{output}");
    let steered: u64 = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("steered"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("an XDP `steered` counter in the demo's output:\n{output}"));
    // 60 connections, each at least SYN, ACK, request and FIN steered toward a worker.
    assert!(steered >= 60 * 4, "XDP steered {steered} packets of 60 connections:\n{output}");
    assert!(output.contains("XDP detached cleanly"), "{output}");
    assert!(output.contains("namespaces and processes removed"), "{output}");
}

fn config(backend: &Backend, marker: usize) -> String {
    format!(
        r#"workers: 2
access_log: {{enabled: false}}
listeners: [{{name: web, address: "{{listen}}"}}]
virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
      - backend: live
      # generation marker {marker}
      - match: {{path: {{exact: /marker-{marker}}}}}
        backend: live
backends:
  - name: live
    endpoints: [{{address: "{}"}}]
"#,
        backend.addr()
    )
}

/// 50 reloads, valid and invalid mixed, while a client keeps sending requests: none fails,
/// every valid change serves within a second, every invalid one leaves the last good one.
#[test]
fn fifty_reloads_under_load_lose_no_request() {
    let a = Backend::start(None, "127.0.0.1:0".parse().unwrap(), "a").unwrap();
    let b = Backend::start(None, "127.0.0.1:0".parse().unwrap(), "b").unwrap();
    let sluice = Binary::start(&config(&a, 0));
    let addr = sluice.addr;

    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            // Bounded: stops when told, or after 60 seconds.
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                sent.fetch_add(1, Ordering::Relaxed);
                match http_get(addr, "/") {
                    Ok(response) if response.status == 200 => {}
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };

    lb_tests::sluice::wait_for_load(&sent, 1, "before the first reload");
    let mut current = &a;
    let mut valid = 0;
    for i in 1..=50 {
        if i % 3 == 0 {
            // Invalid: the file is refused and the last good configuration keeps serving.
            let refused = sluice.child.output().matches("configuration refused").count();
            sluice.rewrite_config("listeners: [{name: web, address: \"{listen}\"}]\nbackends: [oops\n");
            wait_for(Duration::from_secs(2), &format!("reload {i} to be refused"), || {
                (sluice.child.output().matches("configuration refused").count() > refused).then_some(())
            })
            .unwrap();
            let response = http_get(addr, "/").unwrap();
            assert_eq!(
                response.header(BACKEND_HEADER),
                Some(current.name()),
                "reload {i}: old config serves"
            );
            continue;
        }
        valid += 1;
        let next = if current.name() == "a" { &b } else { &a };
        sluice.rewrite_config(&config(next, i));
        let changed = Instant::now();
        // Upper bound with slack: the watcher waits 100 ms for a burst to settle, then the
        // reload takes milliseconds; 1 s is 10x that, on a machine busy with the load.
        wait_for(Duration::from_secs(1), &format!("reload {i} to serve"), || {
            http_get(addr, &format!("/marker-{i}"))
                .ok()
                .filter(|r| r.status == 200 && r.header(BACKEND_HEADER) == Some(next.name()))
        })
        .unwrap_or_else(|e| {
            panic!("{e} (after {:?}); output:\n{}", changed.elapsed(), sluice.child.output())
        });
        current = next;
    }
    // The load spans the last reload: it goes on after the last configuration served.
    lb_tests::sluice::wait_for_load(&sent, 100, "after the last reload");
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{failed} of {sent} requests failed during 50 reloads");
    let output = sluice.child.output();
    assert_eq!(output.matches("configuration reloaded").count(), valid, "{output}");
    assert!(output.matches("configuration refused").count() >= 50 - valid, "{output}");
}

/// The log lines of reloads that were applied.
fn reloads(output: &str) -> Vec<String> {
    output.lines().filter(|l| l.contains("configuration reloaded")).map(str::to_owned).collect()
}

/// SIGHUP reloads the file. The change is made where the file watcher cannot see it: the
/// configuration file is a symbolic link, and the file it points to, in another directory, is
/// rewritten in place (the watcher watches the link's directory). Only the signal can make
/// Sluice serve the new content, and the reload's log line says it was SIGHUP.
#[test]
fn sighup_reloads_a_change_the_file_watcher_cannot_see() {
    let a = Backend::start(None, "127.0.0.1:0".parse().unwrap(), "a").unwrap();
    let b = Backend::start(None, "127.0.0.1:0".parse().unwrap(), "b").unwrap();
    let sluice = Binary::start(&config(&a, 0));
    let addr = sluice.addr;
    let elsewhere = lb_tests::temp_dir::TempDir::new();
    let target = elsewhere.0.join("real.yaml");
    std::fs::write(&target, lb_tests::sluice::with_listener(&config(&b, 1), addr)).unwrap();
    // The link replaces the file by rename, which the watcher sees: one reload, to marker 1.
    let link = sluice.config_path.with_extension("yaml.link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    std::fs::rename(&link, &sluice.config_path).unwrap();
    wait_for(Duration::from_secs(10), "the linked configuration to serve", || {
        http_get(addr, "/marker-1").ok().filter(|r| r.status == 200 && r.header(BACKEND_HEADER) == Some("b"))
    })
    .unwrap_or_else(|e| panic!("{e}; output:\n{}", sluice.child.output()));
    let before = reloads(&sluice.child.output());
    assert_eq!(before.len(), 1, "{before:?}");
    assert!(before[0].contains("file changed"), "{before:?}");

    // Rewritten in place in the other directory: the watcher sees nothing.
    std::fs::write(&target, lb_tests::sluice::with_listener(&config(&a, 2), addr)).unwrap();
    // SAFETY: signalling our own child process by pid.
    assert_eq!(unsafe { libc::kill(sluice.child.pid() as i32, libc::SIGHUP) }, 0);
    wait_for(Duration::from_secs(10), "SIGHUP to reload the new content", || {
        http_get(addr, "/marker-2").ok().filter(|r| r.status == 200 && r.header(BACKEND_HEADER) == Some("a"))
    })
    .unwrap_or_else(|e| panic!("{e}; output:\n{}", sluice.child.output()));
    let after = reloads(&sluice.child.output());
    assert_eq!(after.len(), 2, "one more reload: {after:?}");
    assert!(after[1].contains("SIGHUP"), "the reload says it was SIGHUP: {after:?}");
    assert_eq!(http_get(addr, "/").unwrap().header(BACKEND_HEADER), Some("a"));
}

/// On SIGTERM the listeners close first, and a request in flight still finishes within the
/// grace period.
#[test]
fn shutdown_closes_listeners_and_lets_requests_in_flight_finish() {
    // A backend that answers only when told, so a request is in flight when the signal comes.
    let slow = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let slow_addr = slow.local_addr().unwrap();
    let (arrived_tx, arrived) = std::sync::mpsc::channel();
    let (answer, answer_rx) = std::sync::mpsc::channel::<()>();
    let backend = std::thread::spawn(move || {
        let (mut stream, _) = slow.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = std::io::Read::read(&mut stream, &mut buf);
        arrived_tx.send(()).unwrap();
        answer_rx.recv_timeout(Duration::from_secs(20)).unwrap();
        let body = "finished";
        let response = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
        std::io::Write::write_all(&mut stream, response.as_bytes()).unwrap();
    });
    let yaml = format!(
        "workers: 1\nxdp: {{enabled: false}}\nlimits: {{shutdown_grace_ms: 10000}}\nlisteners: [{{name: web, address: \"{{listen}}\"}}]\nvirtual_hosts: [{{name: all, domains: [\"*\"], routes: [{{backend: slow}}]}}]\nbackends: [{{name: slow, endpoints: [{{address: \"{slow_addr}\"}}]}}]\n"
    );
    let sluice = Binary::start(&yaml);
    let addr = sluice.addr;
    let in_flight = std::thread::spawn(move || http_get(addr, "/slow"));
    arrived.recv_timeout(Duration::from_secs(10)).expect("the request reaches the backend");
    // SAFETY: signalling our own child process by pid.
    unsafe { libc::kill(sluice.child.pid() as i32, libc::SIGTERM) };
    wait_for(Duration::from_secs(5), "the listener to close", || {
        std::net::TcpStream::connect(addr).is_err().then_some(())
    })
    .unwrap();
    assert!(!in_flight.is_finished(), "the request in flight is still being served");
    answer.send(()).unwrap();
    let response = in_flight.join().unwrap().expect("the in-flight request completes");
    assert_eq!(response.status, 200);
    assert_eq!(response.body, "finished");
    backend.join().unwrap();
}
