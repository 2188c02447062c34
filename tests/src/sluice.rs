//! Sluice under test on loopback with a free port: a node started in this process from YAML
//! ([`Proxy`], no XDP), or the real binary as a child process ([`Binary`]).

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use lb_userspace::{config::Config, node::Node};

use crate::{free_port, process::ChildGuard, sluice_binary, temp_dir::TempDir, wait_for};

/// Waits until a load thread's count of requests sent has grown by `n` from now: proof that
/// the load runs at this point of the test (`what` says which point).
pub fn wait_for_load(sent: &AtomicU64, n: u64, what: &str) {
    let from = sent.load(Ordering::Relaxed);
    wait_for(Duration::from_secs(10), &format!("{n} more requests of the load {what}"), || {
        (sent.load(Ordering::Relaxed) >= from + n).then_some(())
    })
    .unwrap();
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
        Proxy { node, addr }
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
