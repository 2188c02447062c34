//! The `sluice` binary in `--kubernetes` mode against a [`FakeKube`], on loopback, with an
//! admin server: what the Kubernetes fault suites start.

use std::{
    net::{SocketAddr, TcpStream},
    process::Command,
    time::Duration,
};

use super::FakeKube;
use crate::{
    backend::BACKEND_HEADER,
    free_port,
    http::{self, HttpResponse},
    process::ChildGuard,
    sluice_binary,
    temp_dir::TempDir,
    wait_for,
};

/// How to start it.
#[derive(Debug, Clone)]
pub struct KubeSluiceOptions {
    pub identity: String,
    /// `--publish-address` values.
    pub publish: Vec<String>,
    pub lease_seconds: u64,
    /// `--api-timeout-seconds` (default: the binary's).
    pub api_timeout_seconds: Option<u64>,
    /// `--watch-timeout-seconds` (default: the binary's).
    pub watch_timeout_seconds: Option<u64>,
    /// Reach the server through a kubeconfig (true) or only through `env` (the in-cluster
    /// configuration).
    pub kubeconfig: bool,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Extra command-line arguments (`--default-backend-service NS/NAME`...).
    pub args: Vec<String>,
    /// Also a TLS listener (`tls: {}`, certificates from the Ingresses' Secrets), at
    /// [`KubeSluice::tls_addr`].
    pub tls: bool,
    /// More top-level keys of the base configuration (`nginx_metrics: true\n`).
    pub base_extra: String,
    /// More plain listeners (`web-2`, `web-3`, ...) at these addresses: a Gateway per port.
    pub extra_plain: Vec<SocketAddr>,
    /// The kernel path on, with this `xdp:` value (`{interfaces: [eth0], mode: skb}`), where by
    /// default it is off (`--no-xdp`). Run such a binary in a namespace of its own.
    pub xdp: Option<String>,
}

impl Default for KubeSluiceOptions {
    fn default() -> Self {
        KubeSluiceOptions {
            identity: "sluice-a".into(),
            publish: vec!["192.0.2.1".into()],
            lease_seconds: 3,
            api_timeout_seconds: None,
            watch_timeout_seconds: None,
            kubeconfig: true,
            env: Vec::new(),
            args: Vec::new(),
            tls: false,
            base_extra: String::new(),
            extra_plain: Vec::new(),
            xdp: None,
        }
    }
}

impl KubeSluiceOptions {
    /// With extra command-line arguments.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn identity(mut self, identity: &str, publish: &str) -> Self {
        self.identity = identity.into();
        self.publish = vec![publish.into()];
        self
    }
}

/// A running instance; killed on drop.
pub struct KubeSluice {
    pub child: ChildGuard,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The TLS listener, when [`KubeSluiceOptions::tls`] asked for one.
    pub tls_addr: Option<SocketAddr>,
    _dir: TempDir,
}

impl KubeSluice {
    /// The command line, for a test that runs it itself (e.g. one that must fail to start).
    pub fn command(
        kube: &FakeKube,
        options: &KubeSluiceOptions,
        dir: &TempDir,
        addr: SocketAddr,
        admin: SocketAddr,
    ) -> Command {
        Self::command_with_tls(kube, options, dir, (addr, None), admin)
    }

    /// As [`KubeSluice::command`], with a TLS listener when `tls_addr` is set.
    pub fn command_with_tls(
        kube: &FakeKube,
        options: &KubeSluiceOptions,
        dir: &TempDir,
        (addr, tls_addr): (SocketAddr, Option<SocketAddr>),
        admin: SocketAddr,
    ) -> Command {
        let xdp = options.xdp.as_deref().unwrap_or("{enabled: false}");
        let mut base = format!(
            "workers: 2\naccess_log: {{enabled: false}}\nxdp: {xdp}\nadmin: {{address: \"{admin}\"}}\nlisteners:\n  - {{name: web, address: \"{addr}\"}}\n"
        );
        for (i, extra) in options.extra_plain.iter().enumerate() {
            base.push_str(&format!("  - {{name: web-{}, address: \"{extra}\"}}\n", i + 2));
        }
        if let Some(tls_addr) = tls_addr {
            base.push_str(&format!("  - {{name: tls, address: \"{tls_addr}\", tls: {{}}}}\n"));
        }
        base.push_str(&options.base_extra);
        let config = dir.0.join("base.yaml");
        std::fs::write(&config, base).expect("writing the base configuration");
        let mut command = Command::new(sluice_binary().expect("the sluice binary"));
        command.arg("run").arg("--config").arg(&config).arg("--kubernetes");
        if options.xdp.is_none() {
            command.arg("--no-xdp");
        }
        if options.kubeconfig {
            command.arg("--kubeconfig").arg(kube.write_kubeconfig(&dir.0).expect("writing a kubeconfig"));
        }
        command.args(["--identity", &options.identity, "--lease-namespace", "sluice"]);
        command.args(["--lease-duration-seconds", &options.lease_seconds.to_string()]);
        for address in &options.publish {
            command.args(["--publish-address", address]);
        }
        if let Some(seconds) = options.api_timeout_seconds {
            command.args(["--api-timeout-seconds", &seconds.to_string()]);
        }
        if let Some(seconds) = options.watch_timeout_seconds {
            command.args(["--watch-timeout-seconds", &seconds.to_string()]);
        }
        command.args(&options.args);
        command.env("RUST_LOG", "info").env_remove("KUBECONFIG");
        command.envs(options.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        command
    }

    /// Starts it and waits until its listener accepts.
    pub fn start(kube: &FakeKube, options: KubeSluiceOptions) -> KubeSluice {
        let dir = TempDir::new();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let tls_addr = options.tls.then(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
        let command = Self::command_with_tls(kube, &options, &dir, (addr, tls_addr), admin);
        let mut child = ChildGuard::spawn(command).expect("starting sluice");
        wait_for(Duration::from_secs(20), "sluice to accept", || {
            assert!(child.try_status().is_none(), "sluice exited:\n{}", child.output());
            TcpStream::connect(addr).ok()
        })
        .unwrap();
        KubeSluice { child, addr, admin, tls_addr, _dir: dir }
    }

    pub fn get(&self, host: &str, path: &str) -> anyhow::Result<HttpResponse> {
        http::request(self.addr, "GET", host, path, &[])
    }

    /// The backend that answered `GET host/path` (`x-backend`), or the status if not 200.
    pub fn answer(&self, host: &str, path: &str) -> Result<String, String> {
        match self.get(host, path) {
            Ok(r) if r.status == 200 => Ok(r.header(BACKEND_HEADER).unwrap_or("?").to_owned()),
            Ok(r) => Err(format!("status {}", r.status)),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Waits until `GET host/path` answers from `backend`.
    pub fn wait_for_backend(&self, host: &str, path: &str, backend: &str, timeout: Duration) {
        wait_for(timeout, &format!("{host}{path} to reach {backend}"), || {
            (self.answer(host, path).as_deref() == Ok(backend)).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.child.output()));
    }

    /// Waits until `GET /` through the L4 TCP service on the loopback `port` reaches `backend`
    /// (the backend's name header).
    pub fn wait_for_tcp(&self, port: u16, backend: &str, timeout: Duration) {
        wait_for(timeout, &format!("TCP port {port} to reach {backend}"), || {
            (tcp_answer(port).as_deref() == Some(backend)).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}; last {:?}\n{}", tcp_answer(port), self.child.output()));
    }

    /// Waits until `GET host/path` answers `status`.
    pub fn wait_for_status(&self, host: &str, path: &str, status: u16, timeout: Duration) {
        wait_for(timeout, &format!("{host}{path} to answer {status}"), || {
            self.get(host, path).ok().filter(|r| r.status == status)
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.child.output()));
    }

    /// Waits until the output has a line containing every one of `parts`; returns it.
    pub fn wait_for_log(&self, parts: &[&str], timeout: Duration) -> String {
        wait_for(timeout, &format!("a log line with {parts:?}"), || {
            self.child.output().lines().find(|l| parts.iter().all(|p| l.contains(p))).map(str::to_owned)
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.child.output()))
    }

    /// The value of one sample of `/metrics` (`name{labels}` as written there), if present.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        let response = http::request(self.admin, "GET", "admin", "/metrics", &[]).ok()?;
        response
            .body
            .lines()
            .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
    }
}

/// The backend that answered `GET /` through the L4 TCP service on the loopback `port`.
pub fn tcp_answer(port: u16) -> Option<String> {
    let response =
        http::request(std::net::SocketAddr::from(([127, 0, 0, 1], port)), "GET", "l4.test", "/", &[]).ok()?;
    response.header(BACKEND_HEADER).map(str::to_owned)
}
