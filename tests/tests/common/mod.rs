//! Shared by the proxy suites: a Sluice node started in this process from YAML (no XDP), or
//! the real binary as a child process, both on loopback with a free port.
#![allow(dead_code)]

use std::{
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    time::Duration,
};

use lb_tests::{process::ChildGuard, sluice_binary, wait_for};
use lb_userspace::{config::Config, node::Node};

pub mod raw_http;

/// A free loopback port (bound then released; good enough for tests on loopback).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Replaces `{listen}` in `yaml` with `addr`. Configurations in the suites write
/// `listeners: [{name: web, address: "{listen}"}]`.
pub fn with_listener(yaml: &str, addr: SocketAddr) -> String {
    yaml.replace("{listen}", &addr.to_string())
}

/// A node serving `yaml` in this process.
pub struct Proxy {
    pub node: Node,
    pub addr: SocketAddr,
    yaml: String,
}

impl Proxy {
    /// Starts a node from `yaml` (with `{listen}` replaced by a free loopback address) and
    /// waits until it accepts connections.
    pub fn start(yaml: &str) -> Proxy {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config =
            Config::from_yaml(&with_listener(yaml, addr), "test").expect("test configuration is valid");
        assert!(!config.xdp.enabled || config.xdp.interfaces.is_empty(), "proxy suites run without XDP");
        let node = Node::start(&config).expect("node starts");
        wait_for(Duration::from_secs(10), "the proxy to accept", || std::net::TcpStream::connect(addr).ok())
            .unwrap();
        Proxy { node, addr, yaml: yaml.to_owned() }
    }

    /// Applies a new configuration (same `{listen}` substitution); returns the generation.
    pub fn apply(&self, yaml: &str) -> u64 {
        let config = Config::from_yaml(&with_listener(yaml, self.addr), "test").expect("valid configuration");
        self.node.apply(&config).expect("configuration applies")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// The real `sluice` binary serving a configuration file, as a child process.
pub struct Binary {
    pub child: ChildGuard,
    pub addr: SocketAddr,
    pub config_path: PathBuf,
    _dir: TempDir,
}

impl Binary {
    /// Writes `yaml` (with `{listen}` replaced) to a fresh directory and runs
    /// `sluice run --config FILE --no-xdp`, waiting until it accepts connections.
    pub fn start(yaml: &str) -> Binary {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let dir = TempDir::new();
        let config_path = dir.0.join("sluice.yaml");
        std::fs::write(&config_path, with_listener(yaml, addr)).unwrap();
        let mut command = std::process::Command::new(sluice_binary().unwrap());
        command.arg("run").arg("--config").arg(&config_path).arg("--no-xdp");
        let mut child = ChildGuard::spawn(command).unwrap();
        wait_for(Duration::from_secs(20), "sluice to accept", || {
            assert!(child.try_status().is_none(), "sluice exited:\n{}", child.output());
            std::net::TcpStream::connect(addr).ok()
        })
        .unwrap();
        Binary { child, addr, config_path, _dir: dir }
    }

    /// Resident set size of the sluice process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// Rewrites the configuration file (same `{listen}` substitution).
    pub fn rewrite_config(&self, yaml: &str) {
        // Write then rename, as editors and config management do.
        let next = self.config_path.with_extension("yaml.next");
        std::fs::write(&next, with_listener(yaml, self.addr)).unwrap();
        std::fs::rename(&next, &self.config_path).unwrap();
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sluice-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where `needle` first occurs in `haystack` (raw HTTP bytes).
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The value of header `name` (case-insensitive) in a raw response or request head.
pub fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}
