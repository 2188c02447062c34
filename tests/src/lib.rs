//! Harness for Sluice's end-to-end suites: network-namespace topologies with guaranteed cleanup,
//! child processes that die with the test, throwaway HTTP backends that say who answered, and
//! polling with deadlines instead of sleeps.
//!
//! Every namespace name carries the creating process id (`sluice-t-<pid>-<n>-<role>`), so a run
//! that was killed before its guards ran is cleaned up by the next run ([`reap_stale`]).

pub mod backend;
pub mod cpu;
pub mod fake_kube;
pub mod frames;
pub mod http;
pub mod kustomize;
pub mod netns;
pub mod process;
pub mod raw_backend;
pub mod sluice;
pub mod temp_dir;
pub mod tls;
pub mod topology;

use std::time::{Duration, Instant};

/// True when this process may create namespaces and load BPF programs.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Fails the calling test when it cannot run without root.
///
/// Tests that need root are also marked `#[ignore = "needs root: ..."]`, so that without root the
/// test runner reports them as ignored; `cargo xtask test` runs them as root
/// (`--include-ignored`) and fails without root unless told otherwise. This guard makes a
/// privileged test that is run anyway without root fail with the reason, never pass.
#[macro_export]
macro_rules! require_root {
    () => {
        assert!(
            $crate::is_root(),
            "{} needs root (network namespaces and BPF): run `sudo -E cargo xtask test`",
            module_path!()
        );
    };
}

/// The path of `program`, which Debian's `package` installs; fails the calling test, saying
/// how to install it, when it is not on PATH. `cargo xtask test` installs every such tool
/// first (xtask/src/prereqs.rs), so a test never passes with its tool's checks left out.
pub fn required_tool(program: &str, package: &str) -> std::path::PathBuf {
    on_path(program).unwrap_or_else(|| {
        panic!(
            "`{program}` is not installed; install it with `sudo apt-get install -y {package}` \
             (or `sudo -E cargo xtask setup`, which installs every tool the suites use)"
        )
    })
}

/// Where `program` is on PATH, if anywhere.
pub fn on_path(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file())
}

/// A free loopback port (bound then released), below the kernel's ephemeral range
/// (`ip_local_port_range`): a port the kernel hands out for port 0 is one it also gives
/// outgoing connections as their local port, so a parallel test's connection could take it
/// before the caller binds it (seen in CI: `Address already in use`). Ports are handed out in
/// turn from a place that differs per process, so two calls in one process never return the
/// same port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FLOOR: u32 = 10_000;
    static TURN: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    if ephemeral_low <= FLOOR + 1_000 {
        // No room below the range: the kernel's choice, as before.
        return std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    }
    let span = ephemeral_low - FLOOR;
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let port = (FLOOR + (start + TURN.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FLOOR}..{ephemeral_low}");
}

/// `N` different ports, each free for both TCP and UDP on every local address (for L4
/// services, which listen on `0.0.0.0:PORT`).
pub fn free_l4_ports<const N: usize>() -> [u16; N] {
    let mut ports = Vec::new();
    while ports.len() < N {
        let port = free_port();
        if !ports.contains(&port)
            && std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
            && std::net::UdpSocket::bind(("0.0.0.0", port)).is_ok()
        {
            ports.push(port);
        }
    }
    ports.try_into().unwrap_or_else(|_| unreachable!())
}

/// A UDP endpoint on `addr` that answers each datagram with `NAME:` and the datagram, on a
/// thread of its own for the rest of the test process.
pub fn udp_echo(name: &'static str, addr: &str) -> std::net::SocketAddr {
    let socket = std::net::UdpSocket::bind(addr).unwrap();
    let bound = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let answer = [format!("{name}:").as_bytes(), &buf[..n]].concat();
            let _ = socket.send_to(&answer, from);
        }
    });
    bound
}

/// Polls `check` until it returns `Some` or `timeout` passes. Readiness is always polled with a
/// deadline, never assumed after a sleep.
pub fn wait_for<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

pub use reap::reap_stale;

mod reap {
    use std::path::Path;

    use crate::netns::NETNS_PREFIX;

    /// Deletes namespaces left by test processes that no longer exist.
    pub fn reap_stale() {
        let Ok(entries) = std::fs::read_dir("/run/netns") else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(NETNS_PREFIX) else { continue };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::process::Command::new("ip").args(["netns", "delete", &name]).status();
            }
        }
    }
}

/// Path of the `sluice` binary built beside the running test (`target/<profile>/sluice`).
/// `cargo xtask test` builds it before the suites run.
pub fn sluice_binary() -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test-binary> -> target/<profile>/sluice
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or_else(|| anyhow::anyhow!("unexpected test binary location {}", exe.display()))?;
    let binary = profile_dir.join("sluice");
    anyhow::ensure!(
        binary.exists(),
        "{} is missing; build it first with `cargo build -p lb-userspace` (cargo xtask test does)",
        binary.display()
    );
    Ok(binary)
}
