//! `cargo xtask bench reload`: how quickly Sluice's Kubernetes mode follows a change in a large
//! cluster, and what the cluster's state costs in memory.
//!
//! The fake API server (lb-tests' `fake_kube`, in this process) is loaded with the cluster
//! *before* Sluice starts, so Sluice's first list is the big one: by default 5,000 Ingresses
//! over 50 namespaces, each with one host and its own Service, whose EndpointSlices hold 50,000
//! ready endpoints in all. Those endpoints are pod addresses that nothing answers on; Sluice
//! never connects to them, since the Kubernetes translation sets no active health check
//! (readiness comes from the EndpointSlices, as with ingress-nginx) and no request is sent to
//! their hosts. One more Service has one endpoint: a real backend on loopback.
//!
//! Then the `sluice` binary (release build) runs `--kubernetes --no-xdp` against it, as the
//! DaemonSet does: leader election and Ingress status included unless `--no-status`. Measured:
//!
//! - initial sync: from spawning the process to `/readyz` answering 200;
//! - each change: a new Ingress (a new host, routed to the real backend) is applied, and the time
//!   runs from just before the write until a request with that Host through Sluice's listener
//!   gets the backend's 200 (polled every millisecond, each request on a new connection). A
//!   change not served within 30 s fails the bench. Changes are one at a time: before the next,
//!   the new Ingress's status is written (when status is on) and Sluice is idle again;
//! - memory: VmRSS and VmHWM (the peak) of the process after the changes.
//!
//! `--source gateway` builds the same cluster from the Gateway API instead: a GatewayClass,
//! one Gateway whose HTTP listener is Sluice's port (routes from every namespace), and an
//! HTTPRoute per host where the Ingresses were; each change is a new HTTPRoute. Its results go
//! to docs/bench/reload-gateway.tsv and their own section.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use lb_tests::{
    backend::{BACKEND_HEADER, Backend},
    fake_kube::{
        FakeKube,
        objects::{
            GATEWAY_V1, SliceEndpoint, endpoint_slice, gateway, gateway_class, http_route, ingress,
            ingress_class, service,
        },
    },
    http::{Client, HttpResponse},
    process::ChildGuard,
    temp_dir::TempDir,
};
use serde_json::Value;

use super::{interrupted, proxy::describe_machine};
use crate::build::{build_sluice, workspace_root};

/// The IngressClass controller Sluice serves (lb-userspace's `provider::kube::CONTROLLER`).
const CONTROLLER: &str = "sluice.dev/ingress-controller";
const CLASS: &str = "sluice";
/// The GatewayClass controller Sluice serves (lb-userspace's `GATEWAY_CONTROLLER`).
const GATEWAY_CONTROLLER: &str = "sluice.dev/gateway-controller";
/// The Gateway every HTTPRoute of `--source gateway` attaches to (in `PROBE_NAMESPACE`).
const GATEWAY: &str = "bench";
/// Where the real backend's Service, the probe Ingress and the changes live.
const PROBE_NAMESPACE: &str = "reload-probe";
const PROBE_HOST: &str = "probe.reload.test";
/// The address written into the Ingresses' status (a documentation address).
const PUBLISH_ADDRESS: &str = "192.0.2.1";
/// The longest one change may take to be served: longer is a failure, not a sample.
const CHANGE_DEADLINE: Duration = Duration::from_secs(30);
/// The longest the first list and translation may take.
const SYNC_DEADLINE: Duration = Duration::from_secs(300);
/// The longest the leader may take to write every Ingress's status.
const STATUS_DEADLINE: Duration = Duration::from_secs(600);

#[derive(clap::Args, Clone, Debug)]
pub struct ReloadArgs {
    /// Ingresses loaded before Sluice starts (one host and one Service each).
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    ingresses: u32,
    /// Ready endpoints in each of those Services' EndpointSlice.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=50))]
    endpoints: u32,
    /// Namespaces the Ingresses are spread over.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    namespaces: u32,
    /// Change events measured, one after the other (each a new Ingress with a new host).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    changes: u32,
    /// Before starting Sluice and before the changes, wait while other work on the machine uses
    /// more than a quarter of a core, at most this many seconds each time.
    #[arg(long, default_value_t = 60)]
    wait_for_quiet: u64,
    /// Run Sluice with `--no-status`: no leader election, no Ingress status written.
    #[arg(long)]
    no_status: bool,
    /// What describes the cluster's routes: Ingresses, or the Gateway API (a Gateway and one
    /// HTTPRoute per host).
    #[arg(long, value_enum, default_value_t = RouteSource::Ingress)]
    source: RouteSource,
    /// Print the results only: leave docs/BENCHMARKS.md and docs/bench/ as they are.
    #[arg(long)]
    no_docs: bool,
    /// Measure nothing: only rewrite docs/BENCHMARKS.md from the results stored in
    /// docs/bench/reload.tsv.
    #[arg(long, conflicts_with = "no_docs")]
    render_only: bool,
    /// Use this sluice binary instead of building one (release) from the workspace.
    #[arg(long)]
    sluice: Option<PathBuf>,
    /// The commit the `--sluice` binary was built from, recorded with the results instead of
    /// the workspace's.
    #[arg(long, requires = "sluice")]
    sluice_commit: Option<String>,
    /// Keep the results as docs/bench/reload-NAME.tsv instead of the run the section describes:
    /// the goals table reads `20000` (a run at 20,000 Ingresses), `before` and `before-20000`
    /// (runs of an older binary, with `--sluice`, at 5,000 and 20,000).
    #[arg(long, conflicts_with = "render_only")]
    store_as: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteSource {
    Ingress,
    Gateway,
}

impl RouteSource {
    /// Where the results are kept (docs/bench/).
    fn tsv(self) -> &'static str {
        match self {
            RouteSource::Ingress => "reload.tsv",
            RouteSource::Gateway => "reload-gateway.tsv",
        }
    }

    /// The object (JSON) that routes `host` to the Service `service` port 80.
    fn route(self, namespace: &str, name: &str, host: &str, service: &str) -> Value {
        match self {
            RouteSource::Ingress => ingress(namespace, name, CLASS, host, "/", service, 80),
            RouteSource::Gateway => http_route(
                namespace,
                name,
                serde_json::json!({
                    "parentRefs": [{"name": GATEWAY, "namespace": PROBE_NAMESPACE}],
                    "hostnames": [host],
                    "rules": [{"backendRefs": [{"name": service, "port": 80}]}],
                }),
            ),
        }
    }

    /// Whether the leader wrote the status of a route object.
    fn status_written(self, object: &Value) -> bool {
        match self {
            RouteSource::Ingress => object["status"]["loadBalancer"]["ingress"][0]["ip"] == PUBLISH_ADDRESS,
            RouteSource::Gateway => object["status"]["parents"][0]["conditions"][0]["status"] == "True",
        }
    }

    fn api(self) -> (&'static str, &'static str) {
        match self {
            RouteSource::Ingress => ("networking.k8s.io/v1", "Ingress"),
            RouteSource::Gateway => (GATEWAY_V1, "HTTPRoute"),
        }
    }
}

/// What was measured.
#[derive(Clone, Debug, Default)]
struct Outcome {
    meta: BTreeMap<String, String>,
    /// Change → route live, ms, in order.
    changes_ms: Vec<f64>,
    /// The rebuild that served each change, as Sluice logged it (ms; NaN when not found).
    rebuilds_ms: Vec<f64>,
}

impl Outcome {
    fn number(&self, key: &str) -> f64 {
        self.meta.get(key).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
    }

    fn to_tsv(&self) -> String {
        let mut out = String::from(
            "# `cargo xtask bench reload`: one line per change (ms from the write to the route being live, and\n\
             # Sluice's rebuild for it); read back to render docs/BENCHMARKS.md.\n",
        );
        for (k, v) in &self.meta {
            let _ = writeln!(out, "# {k}={}", v.replace('\n', " "));
        }
        out.push_str("change\treload_ms\trebuild_ms\n");
        for (i, ms) in self.changes_ms.iter().enumerate() {
            let rebuild = self.rebuilds_ms.get(i).copied().unwrap_or(f64::NAN);
            let _ = writeln!(out, "{}\t{ms:.2}\t{rebuild:.0}", i + 1);
        }
        out
    }

    fn from_tsv(text: &str) -> Outcome {
        let mut outcome = Outcome::default();
        for line in text.lines() {
            if let Some(meta) = line.strip_prefix("# ") {
                if let Some((k, v)) = meta.split_once('=') {
                    outcome.meta.insert(k.to_owned(), v.to_owned());
                }
            } else {
                let f: Vec<&str> = line.split('\t').collect();
                if let Some(Ok(ms)) = f.get(1).map(|v| v.parse()) {
                    outcome.changes_ms.push(ms);
                    outcome.rebuilds_ms.push(f.get(2).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN));
                }
            }
        }
        outcome
    }
}

/// The `p`-th percentile (0..=100) by nearest rank.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(values: &[f64]) -> Vec<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

/// The shape of the synthetic cluster.
struct Shape {
    ingresses: u32,
    endpoints: u32,
    namespaces: u32,
    source: RouteSource,
}

impl Shape {
    fn namespace(&self, i: u32) -> String {
        format!("bench-{:03}", i % self.namespaces)
    }

    /// Pod addresses (10.64.0.0/10), one per endpoint, all different.
    fn endpoint_address(&self, ingress: u32, j: u32) -> String {
        let n = ingress * self.endpoints + j;
        format!("10.{}.{}.{}", 64 + (n >> 16), (n >> 8) & 0xff, n & 0xff)
    }
}

/// The IngressClass (or GatewayClass and Gateway on `port`), the synthetic Ingresses (or
/// HTTPRoutes) with their Services and EndpointSlices, and the real backend's Service, slice
/// and probe route. Returns how many objects were written.
fn load_cluster(kube: &FakeKube, shape: &Shape, backend: SocketAddr, port: u16) -> usize {
    let mut objects = 0;
    let mut apply = |object| {
        kube.apply(object);
        objects += 1;
    };
    match shape.source {
        RouteSource::Ingress => apply(ingress_class(CLASS, CONTROLLER, false)),
        RouteSource::Gateway => {
            apply(gateway_class(CLASS, GATEWAY_CONTROLLER));
            apply(gateway(
                PROBE_NAMESPACE,
                GATEWAY,
                CLASS,
                serde_json::json!([{"name": "web", "port": port, "protocol": "HTTP",
                                    "allowedRoutes": {"namespaces": {"from": "All"}}}]),
            ));
        }
    }
    for i in 0..shape.ingresses {
        let namespace = shape.namespace(i);
        let name = format!("app-{i:05}");
        let endpoints: Vec<SliceEndpoint> =
            (0..shape.endpoints).map(|j| SliceEndpoint::ready(&shape.endpoint_address(i, j))).collect();
        apply(service(&namespace, &name, 80, 8080));
        apply(endpoint_slice(&namespace, &format!("{name}-x7k2p"), &name, "IPv4", 8080, &endpoints));
        let host = format!("{name}.{namespace}.reload.test");
        apply(shape.source.route(&namespace, &name, &host, &name));
    }
    let ip = backend.ip().to_string();
    apply(service(PROBE_NAMESPACE, "probe", 80, backend.port()));
    apply(endpoint_slice(
        PROBE_NAMESPACE,
        "probe-q9w4z",
        "probe",
        "IPv4",
        backend.port(),
        &[SliceEndpoint::ready(&ip)],
    ));
    apply(shape.source.route(PROBE_NAMESPACE, "probe", PROBE_HOST, "probe"));
    objects
}

/// Two free loopback ports (held together so that they differ).
fn free_ports() -> anyhow::Result<(u16, u16)> {
    let a = TcpListener::bind("127.0.0.1:0").context("cannot pick a free loopback port")?;
    let b = TcpListener::bind("127.0.0.1:0").context("cannot pick a free loopback port")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

/// `sluice run --kubernetes` against the fake API server; killed on drop.
struct Sluice {
    child: ChildGuard,
    listener: SocketAddr,
    admin: SocketAddr,
    spawned: Instant,
}

impl Sluice {
    fn start(
        binary: &Path,
        kube: &FakeKube,
        dir: &Path,
        status: bool,
        (web, admin): (u16, u16),
    ) -> anyhow::Result<Sluice> {
        let listener = SocketAddr::from(([127, 0, 0, 1], web));
        let admin = SocketAddr::from(([127, 0, 0, 1], admin));
        let base = format!(
            "workers: 2\naccess_log: {{enabled: false}}\nxdp: {{enabled: false}}\n\
             admin: {{address: \"{admin}\"}}\nlisteners:\n  - {{name: web, address: \"{listener}\"}}\n"
        );
        let config = dir.join("base.yaml");
        std::fs::write(&config, base).with_context(|| format!("cannot write {}", config.display()))?;
        let kubeconfig = kube.write_kubeconfig(dir)?;
        let mut command = Command::new(binary);
        command
            .arg("run")
            .arg("--config")
            .arg(&config)
            .arg("--no-xdp")
            .arg("--kubernetes")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--log-format", "json"])
            .env("RUST_LOG", "info");
        if status {
            command.args(["--identity", "sluice-bench", "--lease-namespace", "sluice"]);
            command.args(["--publish-address", PUBLISH_ADDRESS]);
        } else {
            command.arg("--no-status");
        }
        let spawned = Instant::now();
        let child = ChildGuard::spawn(command)?;
        Ok(Sluice { child, listener, admin, spawned })
    }

    fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Fails, with the last lines Sluice printed, when it has exited.
    fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_status() {
            bail!("sluice exited with {status}; its last output:\n{}", self.tail());
        }
        Ok(())
    }

    fn tail(&self) -> String {
        let output = self.child.output();
        let lines: Vec<&str> = output.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Waits for `/readyz` to answer 200; returns the time since the process was spawned.
    fn wait_ready(&mut self) -> anyhow::Result<Duration> {
        loop {
            self.check_running()?;
            if admin_get(self.admin, "/readyz").is_ok_and(|r| r.status == 200) {
                return Ok(self.spawned.elapsed());
            }
            if self.spawned.elapsed() > SYNC_DEADLINE {
                bail!("sluice was not ready within {SYNC_DEADLINE:?}; its last output:\n{}", self.tail());
            }
            check_interrupted()?;
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Polls `GET /` with `host` until `backend` answers 200; returns the time since `since`.
    fn wait_live(&mut self, host: &str, backend: &str, since: Instant) -> anyhow::Result<Duration> {
        loop {
            let last = match get(self.listener, host, "/") {
                Ok(r) if r.status == 200 && r.header(BACKEND_HEADER) == Some(backend) => {
                    return Ok(since.elapsed());
                }
                Ok(r) => format!("status {}", r.status),
                Err(e) => format!("{e:#}"),
            };
            if since.elapsed() > CHANGE_DEADLINE {
                bail!(
                    "{host} was not served by {backend} within {CHANGE_DEADLINE:?} (last: {last}); Sluice's last output:\n{}",
                    self.tail()
                );
            }
            self.check_running()?;
            check_interrupted()?;
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits until Sluice has used (almost) no CPU for 200 ms, at most `limit`; false when it
    /// never became idle.
    fn wait_idle(&mut self, limit: Duration) -> anyhow::Result<bool> {
        let started = Instant::now();
        let hz = super::clock_ticks_per_second();
        // Below 5% of a core over the window.
        let window = Duration::from_millis(200);
        let quiet_ticks = (hz * window.as_secs_f64() * 0.05).max(1.0) as u64;
        let mut before = cpu_ticks(self.pid());
        while started.elapsed() < limit {
            self.check_running()?;
            check_interrupted()?;
            std::thread::sleep(window);
            let now = cpu_ticks(self.pid());
            if now.saturating_sub(before) <= quiet_ticks {
                return Ok(true);
            }
            before = now;
        }
        Ok(false)
    }

    /// The rebuilds Sluice logged ("Kubernetes configuration applied"): (Ingresses served,
    /// virtual hosts, milliseconds from the start of the translation to the new snapshot being
    /// published, of which translating and validating; NaN from a binary that does not log it).
    fn rebuilds(&self) -> Vec<(u64, u64, f64, f64)> {
        self.child
            .output()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter_map(|event| {
                let fields = event.get("fields")?;
                let ingresses = fields.get("ingresses")?.as_u64()?;
                let translate = fields.get("translate_ms").and_then(Value::as_f64).unwrap_or(f64::NAN);
                Some((
                    ingresses,
                    fields.get("virtual_hosts")?.as_u64()?,
                    fields.get("took_ms")?.as_f64()?,
                    translate,
                ))
            })
            .collect()
    }
}

/// user + system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    let Some((_, rest)) = stat.rsplit_once(')') else { return 0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

/// Busy time of the whole machine (user, nice, system, irq, softirq of all CPUs), in clock ticks.
fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else { return 0 };
    let v: Vec<u64> = cpu.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    if v.len() < 7 { 0 } else { v[0] + v[1] + v[2] + v[5] + v[6] }
}

/// A mark from which to measure the CPU that other work on the machine uses: everything but
/// this process (the fake API server, the polling) and the processes in `ours` (Sluice).
#[derive(Clone, Copy)]
struct Others {
    busy: u64,
    ours: u64,
    at: Instant,
}

impl Others {
    fn mark(ours: &[u32]) -> Others {
        let ours = ours.iter().chain([&std::process::id()]).map(|&pid| cpu_ticks(pid)).sum();
        Others { busy: machine_busy_ticks(), ours, at: Instant::now() }
    }

    /// Cores used by other work since the mark (`ours` as given to [`Others::mark`]).
    fn cores_since(self, ours: &[u32]) -> f64 {
        let now = Others::mark(ours);
        let others = now.busy.saturating_sub(self.busy).saturating_sub(now.ours.saturating_sub(self.ours));
        let seconds = now.at.duration_since(self.at).as_secs_f64().max(1e-3);
        others as f64 / super::clock_ticks_per_second() / seconds
    }
}

/// Waits, at most `budget`, while other work on the machine uses more than a quarter of a core;
/// returns what it used last.
fn wait_for_quiet(ours: &[u32], budget: Duration) -> anyhow::Result<f64> {
    let started = Instant::now();
    loop {
        let mark = Others::mark(ours);
        std::thread::sleep(Duration::from_millis(500));
        let other = mark.cores_since(ours);
        check_interrupted()?;
        if other < 0.25 || started.elapsed() >= budget {
            if started.elapsed() > Duration::from_secs(1) {
                println!(
                    "   (waited {:.0} s for other work on the machine to calm down; now {other:.2} cores)",
                    started.elapsed().as_secs_f64()
                );
            }
            return Ok(other);
        }
    }
}

/// VmRSS and VmHWM (the peak resident set) of a process, in MiB.
fn memory_mib(pid: u32) -> anyhow::Result<(f64, f64)> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let kib = |key: &str| -> anyhow::Result<f64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .with_context(|| format!("no {key} in {path}"))
    };
    Ok((kib("VmRSS:")? / 1024.0, kib("VmHWM:")? / 1024.0))
}

/// One request on a new connection, with a short timeout: the poll must not stall on one.
fn get(addr: SocketAddr, host: &str, path: &str) -> anyhow::Result<HttpResponse> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).context("connect")?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.set_write_timeout(Some(Duration::from_secs(1)))?;
    stream.set_nodelay(true)?;
    Client::new(stream).request("GET", host, path, &[], true)
}

/// A request to the admin server (a longer timeout: `/api/v1/status` lists every endpoint).
fn admin_get(admin: SocketAddr, path: &str) -> anyhow::Result<HttpResponse> {
    let stream = TcpStream::connect_timeout(&admin, Duration::from_secs(1)).context("connect")?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    Client::new(stream).request("GET", "admin", path, &[], true)
}

/// Checks through `/api/v1/status` that Sluice serves the whole cluster: a route per Ingress and
/// every endpoint. Returns (routes, endpoints).
fn check_loaded(sluice: &Sluice, shape: &Shape) -> anyhow::Result<(usize, usize)> {
    let response = admin_get(sluice.admin, "/api/v1/status")?;
    // The body may be chunked: the JSON object is what sits between the outer braces.
    let body = &response.body;
    let json = match (body.find('{'), body.rfind('}')) {
        (Some(start), Some(end)) if start < end => &body[start..=end],
        _ => bail!("/api/v1/status answered {} without JSON", response.status),
    };
    let status: Value = serde_json::from_str(json).context("/api/v1/status is not JSON")?;
    let routes = status["routes"].as_array().map_or(0, Vec::len);
    let endpoints: usize = status["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| b["endpoints"].as_array().map_or(0, Vec::len))
        .sum();
    let (want_routes, want_endpoints) =
        (shape.ingresses as usize + 1, (shape.ingresses * shape.endpoints) as usize + 1);
    if routes < want_routes || endpoints < want_endpoints {
        bail!(
            "Sluice serves {routes} routes and {endpoints} endpoints; the cluster has {want_routes} and {want_endpoints}"
        );
    }
    Ok((routes, endpoints))
}

/// Routes (Ingresses or HTTPRoutes) whose status the leader wrote.
fn statuses_written(kube: &FakeKube, source: RouteSource) -> usize {
    let (api_version, kind) = source.api();
    kube.count(api_version, kind, |object| source.status_written(object))
}

fn status_written(kube: &FakeKube, source: RouteSource, name: &str) -> bool {
    let (api_version, kind) = source.api();
    kube.get(api_version, kind, PROBE_NAMESPACE, name).is_some_and(|object| source.status_written(&object))
}

fn check_interrupted() -> anyhow::Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

pub fn run(args: ReloadArgs) -> anyhow::Result<()> {
    if args.render_only {
        let docs = workspace_root().join("docs");
        let stored = docs.join("bench").join(args.source.tsv());
        let text =
            std::fs::read_to_string(&stored).with_context(|| format!("cannot read {}", stored.display()))?;
        println!("{}", table(&Outcome::from_tsv(&text)));
        std::fs::write(docs.join("BENCHMARKS.md"), super::report::markdown(&docs.join("bench")))?;
        println!("rewrote docs/BENCHMARKS.md from {}", stored.display());
        return Ok(());
    }
    super::install_interrupt_handler();
    let sluice_binary = match &args.sluice {
        Some(path) => path.clone(),
        None => build_sluice(true)?,
    };
    let started = Instant::now();
    let shape = Shape {
        ingresses: args.ingresses,
        endpoints: args.endpoints,
        namespaces: args.namespaces,
        source: args.source,
    };
    let status = !args.no_status;
    let mut outcome = Outcome::default();
    describe_machine(&mut outcome.meta);
    let meta = &mut outcome.meta;
    meta.insert("ingresses".into(), shape.ingresses.to_string());
    meta.insert("namespaces".into(), shape.namespaces.min(shape.ingresses).to_string());
    meta.insert("endpoints".into(), (shape.ingresses * shape.endpoints).to_string());
    meta.insert("endpoints_per_service".into(), shape.endpoints.to_string());
    meta.insert("changes".into(), args.changes.to_string());
    meta.insert("status".into(), if status { "on" } else { "off" }.into());
    meta.insert("source".into(), format!("{:?}", args.source).to_lowercase());
    if let Some(commit) = &args.sluice_commit {
        meta.insert("commit".into(), commit.clone());
    }

    let dir = TempDir::new();
    let backend = Backend::start(None, "127.0.0.1:0".parse()?, "reload-backend")?;
    let kube = FakeKube::start()?;
    println!(
        "== loading {} {}s in {} namespaces, {} Services, {} endpoints into the fake API server",
        shape.ingresses,
        shape.source.api().1,
        shape.namespaces.min(shape.ingresses),
        shape.ingresses + 1,
        shape.ingresses * shape.endpoints + 1
    );
    let load_started = Instant::now();
    let ports = free_ports()?;
    let objects = load_cluster(&kube, &shape, backend.addr(), ports.0);
    println!("   {objects} objects in {:.1} s", load_started.elapsed().as_secs_f64());
    check_interrupted()?;

    println!(
        "== starting sluice --kubernetes ({}), waiting for /readyz",
        if status { "leader election and Ingress status on" } else { "--no-status" }
    );
    let quiet_budget = Duration::from_secs(args.wait_for_quiet);
    wait_for_quiet(&[], quiet_budget)?;
    let mark = Others::mark(&[]);
    let mut sluice = Sluice::start(&sluice_binary, &kube, dir.path(), status, ports)?;
    let initial_sync = sluice.wait_ready()?;
    let other = mark.cores_since(&[sluice.pid()]);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "   ready {:.0} ms after the process started (pid {}); other work on the machine meanwhile: {other:.2} cores",
        ms(initial_sync),
        sluice.pid()
    );
    meta.insert("initial_sync_ms".into(), format!("{:.1}", ms(initial_sync)));
    meta.insert("other_cores_sync".into(), format!("{other:.2}"));
    sluice.wait_live(PROBE_HOST, backend.name(), Instant::now())?;
    let (routes, endpoints) = check_loaded(&sluice, &shape)?;
    let (rss_ready, _) = memory_mib(sluice.pid())?;
    meta.insert("rss_ready_mb".into(), format!("{rss_ready:.1}"));
    println!("   serving {routes} routes and {endpoints} endpoints; RSS {rss_ready:.1} MiB");

    if status {
        println!("== waiting for the leader to write the status of every {}", shape.source.api().1);
        let deadline = Instant::now() + STATUS_DEADLINE;
        let want = shape.ingresses as usize + 1;
        loop {
            let written = statuses_written(&kube, shape.source);
            if written >= want {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the status of {written} of {want} Ingresses was written within {STATUS_DEADLINE:?}; Sluice's last output:\n{}",
                    sluice.tail()
                );
            }
            sluice.check_running()?;
            check_interrupted()?;
            std::thread::sleep(Duration::from_millis(200));
        }
        let all_status = sluice.spawned.elapsed();
        println!("   all written {:.1} s after the process started", all_status.as_secs_f64());
        meta.insert("status_written_ms".into(), format!("{:.0}", ms(all_status)));
    }
    if !sluice.wait_idle(Duration::from_secs(30))? {
        println!("   (Sluice did not become idle within 30 s; measuring anyway)");
    }

    println!(
        "== {} changes, one at a time: a new {} with a new host until it answers",
        args.changes,
        shape.source.api().1
    );
    wait_for_quiet(&[sluice.pid()], quiet_budget)?;
    let mark = Others::mark(&[sluice.pid()]);
    let mut changes_ms = Vec::new();
    let mut busy_after = 0;
    for k in 1..=args.changes {
        check_interrupted()?;
        let name = format!("change-{k:05}");
        let host = format!("{name}.reload.test");
        let object = shape.source.route(PROBE_NAMESPACE, &name, &host, "probe");
        let written = Instant::now();
        kube.apply(object);
        let live = sluice.wait_live(&host, backend.name(), written).with_context(|| format!("change {k}"))?;
        changes_ms.push(ms(live));
        if k % 10 == 0 || k == args.changes {
            let recent = &changes_ms[changes_ms.len().saturating_sub(10)..];
            println!(
                "   {k:>5} changes; the last {}: {}",
                recent.len(),
                recent.iter().map(|m| format!("{m:.0}")).collect::<Vec<_>>().join(" ")
            );
        }
        // Settle before the next one: its status written, Sluice idle again.
        if status {
            let deadline = Instant::now() + CHANGE_DEADLINE;
            while !status_written(&kube, shape.source, &name) {
                if Instant::now() > deadline {
                    bail!(
                        "the status of {} {name} was not written within {CHANGE_DEADLINE:?}",
                        shape.source.api().1
                    );
                }
                sluice.check_running()?;
                check_interrupted()?;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if !sluice.wait_idle(Duration::from_secs(10))? {
            busy_after += 1;
        }
    }
    let other = mark.cores_since(&[sluice.pid()]);
    println!("   other work on the machine during the changes: {other:.2} cores");
    if other > 0.25 {
        println!("   (more than a quarter of a core: the latencies are noisier than on a quiet machine)");
    }
    outcome.meta.insert("other_cores_changes".into(), format!("{other:.2}"));
    if busy_after > 0 {
        println!(
            "   (after {busy_after} changes Sluice was still busy 10 s later; the next change went ahead)"
        );
    }
    let (rss, rss_peak) = memory_mib(sluice.pid())?;
    let rebuilds = sluice.rebuilds();
    drop(sluice);

    let sorted_changes = sorted(&changes_ms);
    let (p50, p99, max) = (
        percentile(&sorted_changes, 50.0),
        percentile(&sorted_changes, 99.0),
        percentile(&sorted_changes, 100.0),
    );
    // The rebuild of change k is the first that served the initial Ingresses and k more (for
    // HTTPRoutes, which that count leaves out: the initial hosts and k more).
    let initial_hosts = rebuilds.first().map_or(0, |r| r.1);
    let rebuild_of = |k: u64| match shape.source {
        RouteSource::Ingress => rebuilds.iter().find(|r| r.0 == u64::from(shape.ingresses) + 1 + k),
        RouteSource::Gateway => rebuilds.iter().find(|r| r.1 == initial_hosts + k),
    };
    let changes = 1..=u64::from(args.changes);
    let rebuilds_ms: Vec<f64> = changes.clone().map(|k| rebuild_of(k).map_or(f64::NAN, |r| r.2)).collect();
    let translates_ms: Vec<f64> =
        changes.map(|k| rebuild_of(k).map_or(f64::NAN, |r| r.3)).filter(|x| x.is_finite()).collect();
    let initial_rebuild = rebuilds.first().map_or(f64::NAN, |r| r.2);
    outcome.meta.insert("initial_rebuild_ms".into(), format!("{initial_rebuild:.0}"));
    let sorted_rebuilds = sorted(&rebuilds_ms.iter().copied().filter(|x| x.is_finite()).collect::<Vec<_>>());
    let meta = &mut outcome.meta;
    meta.insert("p50_ms".into(), format!("{p50:.1}"));
    meta.insert("p99_ms".into(), format!("{p99:.1}"));
    meta.insert("max_ms".into(), format!("{max:.1}"));
    meta.insert("rebuild_p50_ms".into(), format!("{:.0}", percentile(&sorted_rebuilds, 50.0)));
    meta.insert("rebuild_max_ms".into(), format!("{:.0}", percentile(&sorted_rebuilds, 100.0)));
    if !translates_ms.is_empty() {
        meta.insert("translate_p50_ms".into(), format!("{:.0}", percentile(&sorted(&translates_ms), 50.0)));
    }
    meta.insert("rss_mb".into(), format!("{rss:.1}"));
    meta.insert("rss_peak_mb".into(), format!("{rss_peak:.1}"));
    meta.insert("runtime_s".into(), started.elapsed().as_secs().to_string());
    outcome.changes_ms = changes_ms;
    outcome.rebuilds_ms = rebuilds_ms;

    println!("\n{}", table(&outcome));
    if !args.no_docs {
        let name = args
            .store_as
            .as_ref()
            .map_or_else(|| args.source.tsv().to_owned(), |n| format!("reload-{n}.tsv"));
        write_docs(&outcome, &name)?;
    }
    println!("reload_initial_sync_ms={:.1}", outcome.number("initial_sync_ms"));
    println!("reload_p50_ms={p50:.1}");
    println!("reload_p99_ms={p99:.1}");
    println!("reload_max_ms={max:.1}");
    println!("rss_mb={rss:.1}");
    println!("rss_peak_mb={rss_peak:.1}");
    Ok(())
}

/// The results as a Markdown table (printed, and in docs/BENCHMARKS.md).
fn table(o: &Outcome) -> String {
    let m = |k: &str| o.meta.get(k).map_or("?", String::as_str).to_owned();
    let mut t = String::from("| measure | value |\n| --- | --: |\n");
    let _ = writeln!(t, "| initial sync: process start → `/readyz` 200 | {} ms |", m("initial_sync_ms"));
    let _ = writeln!(t, "| of which the first rebuild | {} ms |", m("initial_rebuild_ms"));
    if o.meta.contains_key("status_written_ms") {
        let kind = if m("source") == "gateway" { "HTTPRoute" } else { "Ingress" };
        let _ = writeln!(
            t,
            "| process start → every {kind}'s status written | {:.1} s |",
            o.number("status_written_ms") / 1e3
        );
    }
    let _ = writeln!(t, "| change → route live, p50 | {} ms |", m("p50_ms"));
    let _ = writeln!(t, "| change → route live, p99 | {} ms |", m("p99_ms"));
    let _ = writeln!(t, "| change → route live, max | {} ms |", m("max_ms"));
    let _ = writeln!(
        t,
        "| one rebuild (translate, validate, compile, swap), p50 (max) | {} ms ({} ms) |",
        m("rebuild_p50_ms"),
        m("rebuild_max_ms")
    );
    if o.meta.contains_key("translate_p50_ms") {
        let _ = writeln!(t, "| of which translating and validating, p50 | {} ms |", m("translate_p50_ms"));
    }
    let _ = writeln!(t, "| RSS after the first sync | {} MiB |", m("rss_ready_mb"));
    let _ = writeln!(t, "| RSS after the changes (peak) | {} MiB ({} MiB) |", m("rss_mb"), m("rss_peak_mb"));
    let _ = writeln!(
        t,
        "| other work on the machine during the sync / the changes | {} / {} cores |",
        m("other_cores_sync"),
        m("other_cores_changes")
    );
    t
}

/// The "Reload" sections of docs/BENCHMARKS.md, from docs/bench/reload.tsv and
/// reload-gateway.tsv, those that exist.
pub fn markdown_section(bench_dir: &Path) -> Option<String> {
    let ingress = ingress_section(bench_dir);
    let gateway = gateway_section(bench_dir);
    match (ingress, gateway) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or_default() + &b.unwrap_or_default()),
    }
}

/// The Gateway API case: the same cluster as HTTPRoutes.
fn gateway_section(bench_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(bench_dir.join(RouteSource::Gateway.tsv())).ok()?;
    let o = Outcome::from_tsv(&text);
    let m = |k: &str| o.meta.get(k).map_or("?", String::as_str).to_owned();
    let count = |k: &str| super::report::thousands(o.number(k));
    let status = if m("status") == "on" {
        "with leader election and the HTTPRoutes' status, as the DaemonSet runs it"
    } else {
        "with `--no-status`"
    };
    let mut md = String::new();
    let _ = write!(
        md,
        "\n## Reload with the Gateway API (`cargo xtask bench reload --source gateway`)\n\n\
         Measured {} on commit `{}`; the bench took {} s. Machine: {}, {} cores, Linux {}.\n\n\
         The same cluster and the same measure as above, with the routes written as the Gateway API: \
         a GatewayClass, one Gateway whose HTTP listener is Sluice's port (routes from all namespaces) \
         and {} HTTPRoutes in {} namespaces, one host and one Service each ({} endpoints); each of the {} \
         changes is a new HTTPRoute, timed from the write to its host answering through Sluice \
         ({status}).\n\n",
        m("date"),
        m("commit"),
        m("runtime_s"),
        m("cpu"),
        m("cores"),
        m("kernel"),
        count("ingresses"),
        m("namespaces"),
        count("endpoints"),
        m("changes"),
    );
    md.push_str(&table(&o));
    let ingress = std::fs::read_to_string(bench_dir.join(RouteSource::Ingress.tsv())).ok();
    if let Some(ingress) = ingress.map(|text| Outcome::from_tsv(&text)) {
        let ratio = |k: &str| o.number(k) / ingress.number(k);
        let _ = write!(
            md,
            "\nAgainst the Ingress case above (commit `{}`): change → live {:.2}× at p50 and {:.2}× at p99, \
             one rebuild {:.2}×. The Gateway API translation also computes and compares every route's \
             status on each rebuild.\n",
            ingress.meta.get("commit").map_or("?", String::as_str),
            ratio("p50_ms"),
            ratio("p99_ms"),
            ratio("rebuild_p50_ms"),
        );
    }
    Some(md)
}

/// The Ingress case.
fn ingress_section(bench_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(bench_dir.join(RouteSource::Ingress.tsv())).ok()?;
    let o = Outcome::from_tsv(&text);
    let m = |k: &str| o.meta.get(k).map_or("?", String::as_str).to_owned();
    let count = |k: &str| super::report::thousands(o.number(k));
    let status_on = m("status") == "on";
    let (status, settle) = if status_on {
        (
            "with leader election and Ingress status, as the DaemonSet runs it",
            "before the next change the new Ingress's status is written and Sluice is idle again",
        )
    } else {
        ("with `--no-status`", "before the next change Sluice is idle again")
    };
    let mut md = String::new();
    let _ = write!(
        md,
        "\n## Reload in a large cluster (`cargo xtask bench reload`)\n\n\
         Measured {} on commit `{}`; the bench took {} s (building Sluice not counted). Machine: {}, {} cores, \
         Linux {}.\n\n\
         The fake API server ([`tests/src/fake_kube/`](../tests/src/fake_kube/), in the bench's process) \
         holds {} Ingresses in {} namespaces, one host and one Service each, whose EndpointSlices hold {} \
         ready endpoints ({} per Service: pod addresses that nothing is sent to, since the Kubernetes \
         translation sets no active health check). They are loaded before Sluice starts, so that its first \
         list is the big one. Sluice (release build, `run --kubernetes --no-xdp`, 2 workers, {status}) \
         reaches it through a kubeconfig. Then {} changes, one at a time: each writes a new Ingress with a \
         new host routed to a real backend on loopback, and is timed from just before the write until a \
         request with that Host through Sluice's listener gets the backend's 200 (polled every millisecond, \
         on new connections); {settle}. A rebuild is Sluice's own measure of one reaction (its `took_ms` \
         log field: translating the whole cluster, validating, compiling and swapping the snapshot), which \
         starts after 5 ms without further events when Sluice was idle (50 ms during a burst: the debounce). \
         RSS is the process's VmRSS (peak: VmHWM) from `/proc/<pid>/status`.\n\n",
        m("date"),
        m("commit"),
        m("runtime_s"),
        m("cpu"),
        m("cores"),
        m("kernel"),
        count("ingresses"),
        m("namespaces"),
        count("endpoints"),
        m("endpoints_per_service"),
        m("changes"),
    );
    md.push_str(&table(&o));
    // Where a change's time goes: the debounce, the rebuild, and the rest (watch delivery,
    // polling), medians over the changes.
    let rest: Vec<f64> = o
        .changes_ms
        .iter()
        .zip(&o.rebuilds_ms)
        .filter(|(_, r)| r.is_finite())
        .map(|(c, r)| c - r - 5.0)
        .collect();
    if !rest.is_empty() {
        let rest = percentile(&sorted(&rest), 50.0);
        let rest = if rest < 1.0 { "under 1 ms".to_owned() } else { format!("{rest:.0} ms") };
        let _ = write!(
            md,
            "\nA change's time is the 5 ms settle, one rebuild (median {} ms) and the rest (median \
             {rest}: the watch event reaching Sluice, the poll noticing). A rebuild still reads the whole \
             cluster but reuses what a change did not touch (ARCHITECTURE.md, incremental reloads); see \
             [KUBERNETES.md](KUBERNETES.md#scale) for where its time goes.\n",
            m("rebuild_p50_ms"),
        );
    }
    md.push_str(&goals_section(bench_dir));
    Some(md)
}

fn write_docs(outcome: &Outcome, name: &str) -> anyhow::Result<()> {
    let docs = workspace_root().join("docs");
    let bench = docs.join("bench");
    std::fs::create_dir_all(&bench)?;
    let path = bench.join(name);
    std::fs::write(&path, outcome.to_tsv()).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::write(docs.join("BENCHMARKS.md"), super::report::markdown(&bench))?;
    println!("wrote docs/BENCHMARKS.md and docs/bench/{name}\n");
    Ok(())
}

/// Issue #21's goals for a change at 5,000 and 20,000 Ingresses, with the runs stored for each
/// size: the latest (`reload.tsv`, `reload-20000.tsv`) against an older binary's
/// (`reload-before.tsv`, `reload-before-20000.tsv`), those that exist.
fn goals_section(bench_dir: &Path) -> String {
    let read = |name: &str| std::fs::read_to_string(bench_dir.join(name)).ok().map(|t| Outcome::from_tsv(&t));
    let describe = |o: &Option<Outcome>| match o {
        None => "not measured".to_owned(),
        Some(o) => {
            let m = |k: &str| o.meta.get(k).map_or("?", String::as_str).to_owned();
            format!(
                "{} / {} ms; rebuild {} ms; RSS {} MiB ({} MiB); `{}`, {}, other work {} cores",
                m("p50_ms"),
                m("p99_ms"),
                m("rebuild_p50_ms"),
                m("rss_mb"),
                m("rss_peak_mb"),
                m("commit").chars().take(7).collect::<String>(),
                m("date"),
                m("other_cores_changes"),
            )
        }
    };
    let mut md = String::from(
        "\n### Goals (issue #21)\n\n\
         Change → live p50 / p99, one rebuild p50, RSS after the changes (peak), the commit, when, and the \
         other work on the machine during the changes (a shared 2-core VM: wall times move with it). \
         300 MB is 286 MiB.\n\n\
         | Ingresses (endpoints) | before | after | goal | verdict |\n| --- | --- | --- | --- | --- |\n",
    );
    let sizes: [(&str, &str, &str, f64, Option<f64>); 2] = [
        ("5,000 (50,000)", "reload.tsv", "reload-before.tsv", 50.0, None),
        (
            "20,000 (200,000)",
            "reload-20000.tsv",
            "reload-before-20000.tsv",
            100.0,
            Some(300e6 / (1 << 20) as f64),
        ),
    ];
    for (size, after, before, p99_goal, rss_goal) in sizes {
        let (after, before) = (read(after), read(before));
        let goal = match rss_goal {
            Some(_) => format!("p99 < {p99_goal:.0} ms, RSS < 300 MB"),
            None => format!("p99 < {p99_goal:.0} ms"),
        };
        let verdict = match &after {
            None => "—".to_owned(),
            Some(o) => {
                let p99 = o.number("p99_ms") < p99_goal;
                let rss = rss_goal.is_none_or(|g| o.number("rss_mb") < g);
                let met = |ok: bool| if ok { "met" } else { "not met" };
                match rss_goal {
                    Some(_) => format!("p99 **{}**, RSS **{}**", met(p99), met(rss)),
                    None => format!("**{}**", met(p99)),
                }
            }
        };
        let _ =
            writeln!(md, "| {size} | {} | {} | {goal} | {verdict} |", describe(&before), describe(&after));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn endpoint_addresses_differ() {
        let shape = Shape { ingresses: 20_000, endpoints: 50, namespaces: 50, source: RouteSource::Ingress };
        let mut seen = std::collections::HashSet::new();
        for i in (0..shape.ingresses).step_by(97) {
            for j in 0..shape.endpoints {
                assert!(seen.insert(shape.endpoint_address(i, j)));
            }
        }
        assert_eq!(shape.endpoint_address(19_999, 49), "10.79.66.63");
    }

    #[test]
    fn the_tsv_reads_back() {
        let mut o = Outcome::default();
        o.meta.insert("p50_ms".into(), "12.5".into());
        o.changes_ms = vec![10.0, 12.5];
        o.rebuilds_ms = vec![3.0, 4.0];
        let back = Outcome::from_tsv(&o.to_tsv());
        assert_eq!(back.meta, o.meta);
        assert_eq!(back.changes_ms, o.changes_ms);
        assert_eq!(back.rebuilds_ms, o.rebuilds_ms);
    }
}
