//! `cargo xtask bench steering`: what XDP steering buys over plain `SO_REUSEPORT`, with the same
//! four workers, on real connections from the client namespace to the node namespace:
//!
//! - **stall**: new connections (one request each, a client that gives up after
//!   [`CLIENT_TIMEOUT`]) while one worker is stalled for a few seconds (its thread blocked: no
//!   accepting, no serving, no heartbeats). With XDP, the missed heartbeats take the worker out
//!   of the steering table within `heartbeat_timeout_ms`; with `SO_REUSEPORT`, the kernel keeps
//!   hashing a quarter of new connections into the stalled worker's accept queue.
//! - **spread**: many short connections from one client address: how evenly the workers get
//!   them (largest and smallest share, coefficient of variation), and the connections per
//!   second each mode served in the same run (what XDP on the path costs end to end; the
//!   per-packet cost is `cargo xtask bench xdp`'s).
//!
//! Both modes run in one process, one after the other, on the same topology. Prints a Markdown
//! section (with a chart) for docs/BENCHMARKS.md and `bench_steering_*=` lines. Under
//! `cargo test --benches` (no `--bench` argument) a short smoke pass runs instead, and without
//! root it is skipped.

use std::{
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use lb_tests::{
    backend::{Backend, Options},
    http::{Client, HttpResponse},
    topology::{NODE_CLIENT_IF, Topology},
};
use lb_userspace::{config::Config, node::Node, proxy::Fault};

const PORT: u16 = 8080;
const WORKERS: usize = 4;
/// The worker the stall phase blocks.
const VICTIM: usize = 0;
/// A client that has no answer by then gives up: a failed request.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(1);
/// XDP's heartbeat timeout in this bench (the YAML's `xdp.heartbeat_timeout_ms`).
const HEARTBEAT_TIMEOUT_MS: u64 = 300;

/// Sizes for a real run and for the smoke pass.
struct Plan {
    /// Short connections in the spread phase, over `clients` threads.
    spread_connections: usize,
    clients: usize,
    /// New connections before the stall, the stall itself, and after it, one every `interval`.
    before: Duration,
    stall: Duration,
    after: Duration,
    interval: Duration,
}

const BENCH: Plan = Plan {
    spread_connections: 20_000,
    clients: 4,
    before: Duration::from_secs(1),
    stall: Duration::from_secs(3),
    after: Duration::from_secs(1),
    interval: Duration::from_millis(4),
};
const SMOKE: Plan = Plan {
    spread_connections: 400,
    clients: 2,
    before: Duration::from_millis(300),
    stall: Duration::from_millis(800),
    after: Duration::from_millis(300),
    interval: Duration::from_millis(10),
};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Xdp,
    Reuseport,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Xdp => "xdp",
            Mode::Reuseport => "reuseport",
        }
    }
}

/// One new connection's outcome.
#[derive(Clone, Copy, Debug)]
struct Sample {
    started: Instant,
    latency: Duration,
    /// The worker that answered; `None` when the client gave up or the connection failed.
    worker: Option<usize>,
}

/// What one mode measured.
#[derive(Debug)]
struct Measured {
    mode: Mode,
    per_worker: [u64; WORKERS],
    spread_failed: u64,
    connections_per_second: f64,
    /// New connections begun while the worker was stalled, after the first
    /// `heartbeat_timeout_ms` (the time XDP needs to notice; with `SO_REUSEPORT` the same
    /// window, so the rows compare like with like).
    stalled_window: Vec<Sample>,
}

impl Measured {
    fn stall_failed(&self) -> usize {
        self.stalled_window.iter().filter(|s| s.worker.is_none()).count()
    }

    fn stall_on_victim(&self) -> usize {
        self.stalled_window.iter().filter(|s| s.worker == Some(VICTIM)).count()
    }

    /// Latency percentiles of the stall window, a failure counting as the client's timeout.
    fn stall_latency(&self, p: f64) -> Duration {
        let mut latencies: Vec<Duration> = self
            .stalled_window
            .iter()
            .map(|s| if s.worker.is_some() { s.latency } else { CLIENT_TIMEOUT })
            .collect();
        latencies.sort_unstable();
        percentile(&latencies, p)
    }

    /// Coefficient of variation of the per-worker counts, in percent.
    fn spread_cv(&self) -> f64 {
        let counts = self.per_worker.map(|c| c as f64);
        let mean = counts.iter().sum::<f64>() / WORKERS as f64;
        let variance = counts.iter().map(|c| (c - mean).powi(2)).sum::<f64>() / WORKERS as f64;
        100.0 * variance.sqrt() / mean.max(1.0)
    }

    /// Largest and smallest share of the spread phase's connections, in percent.
    fn spread_range(&self) -> (f64, f64) {
        let total = self.per_worker.iter().sum::<u64>().max(1) as f64;
        let shares = self.per_worker.map(|c| 100.0 * c as f64 / total);
        (shares.iter().copied().fold(0.0, f64::max), shares.iter().copied().fold(100.0, f64::min))
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    // cargo passes `--bench` to harness-less benches under `cargo bench` and nothing under
    // `cargo test --benches`, where a quick smoke pass is all that is wanted.
    let benching = std::env::args().any(|a| a == "--bench");
    if !lb_tests::is_root() {
        eprintln!(
            "steering bench: needs root (network namespaces, XDP); run `sudo -E cargo xtask bench steering`"
        );
        std::process::exit(if benching { 1 } else { 0 });
    }
    match run(if benching { &BENCH } else { &SMOKE }) {
        Ok(report) => {
            print!("{report}");
            // A real run is kept for docs/BENCHMARKS.md (`cargo xtask bench steering` rewrites it).
            if benching && let Err(e) = std::fs::write(REPORT, &report) {
                eprintln!("steering bench: cannot write {REPORT}: {e}");
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("steering bench failed: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Where a real run's section is kept.
const REPORT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/bench/steering.md");

fn run(plan: &Plan) -> anyhow::Result<String> {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    lb_tests::reap_stale();
    let topology = Topology::new(0)?;
    let backend = Backend::launch(
        "app",
        Options { netns: Some(&topology.node), addr: "127.0.0.1:0".parse()?, ..Options::default() },
    )?;
    let target = SocketAddr::from((topology.node_v4(), PORT));
    let mut results = Vec::new();
    for mode in [Mode::Xdp, Mode::Reuseport] {
        let node = start_node(&topology, backend.addr(), mode)?;
        let measured = measure(&topology, &node, target, mode, plan);
        node.stop().context("stopping the node")?;
        let measured = measured?;
        eprintln!("steering bench: {measured:?}");
        results.push(measured);
    }
    println!("{}", key_values(&results));
    Ok(report(&results, plan, load.split_whitespace().next().unwrap_or("?")))
}

fn start_node(topology: &Topology, backend: SocketAddr, mode: Mode) -> anyhow::Result<Node> {
    let xdp = match mode {
        Mode::Xdp => format!(
            "xdp:\n  interfaces: [{NODE_CLIENT_IF}]\n  heartbeat_timeout_ms: {HEARTBEAT_TIMEOUT_MS}\n"
        ),
        Mode::Reuseport => "xdp: {enabled: false}\n".to_owned(),
    };
    let yaml = format!(
        "listeners: [{{name: web, address: \"0.0.0.0:{PORT}\"}}]\nworkers: {WORKERS}\nworker_id_header: true\n\
         access_log: {{enabled: false}}\n{xdp}\
         virtual_hosts:\n  - name: all\n    domains: [\"*\"]\n    routes:\n      - {{backend: app}}\n\
         backends:\n  - {{name: app, endpoints: [{{address: \"{backend}\"}}]}}\n"
    );
    let config = Config::from_yaml(&yaml, "steering bench")?;
    let node = topology.node.run(move || Node::start(&config))??;
    ensure!(node.dataplane().is_some() == (mode == Mode::Xdp), "XDP is attached only in the xdp mode");
    Ok(node)
}

fn measure(
    topology: &Topology,
    node: &Node,
    target: SocketAddr,
    mode: Mode,
    plan: &Plan,
) -> anyhow::Result<Measured> {
    // Spread: short connections from one client address, `clients` at a time.
    let (connections, clients) = (plan.spread_connections, plan.clients);
    let (samples, elapsed) = topology.client.run(move || {
        let started = Instant::now();
        let threads: Vec<_> = (0..clients)
            .map(|_| {
                std::thread::spawn(move || {
                    (0..connections / clients).map(|_| one_connection(target)).collect::<Vec<_>>()
                })
            })
            .collect();
        let samples: Vec<Sample> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        (samples, started.elapsed())
    })?;
    let mut per_worker = [0u64; WORKERS];
    for worker in samples.iter().filter_map(|s| s.worker) {
        per_worker[worker] += 1;
    }
    let spread_failed = samples.iter().filter(|s| s.worker.is_none()).count() as u64;

    // Stall: new connections before, during and after one worker's stall, opened at a fixed
    // rate whatever the earlier ones are doing (open loop: a client waiting on the stalled
    // worker does not hold the next one back), each on its own thread.
    let interval = plan.interval;
    let count = ((plan.before + plan.stall + plan.after).as_micros() / interval.as_micros()) as u32;
    // The scheduler thread starts in the client namespace and its threads inherit it.
    let scheduler = topology.client.run(move || {
        std::thread::spawn(move || {
            let first = Instant::now();
            let threads: Vec<_> = (0..count)
                .map(|i| {
                    let due = first + interval * i;
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    std::thread::spawn(move || one_connection(target))
                })
                .collect();
            threads.into_iter().filter_map(|t| t.join().ok()).collect::<Vec<Sample>>()
        })
    })?;
    std::thread::sleep(plan.before);
    ensure!(node.workers().inject(VICTIM, Fault::Stall(plan.stall)), "cannot stall worker {VICTIM}");
    let stalled_at = Instant::now();
    let collected = scheduler.join().map_err(|_| anyhow::anyhow!("the load thread panicked"))?;
    let noticed = stalled_at + Duration::from_millis(HEARTBEAT_TIMEOUT_MS);
    let stall_end = stalled_at + plan.stall;
    let stalled_window: Vec<Sample> =
        collected.into_iter().filter(|s| s.started >= noticed && s.started < stall_end).collect();
    ensure!(!stalled_window.is_empty(), "no new connection began during the stall");
    Ok(Measured {
        mode,
        per_worker,
        spread_failed,
        connections_per_second: samples.len() as f64 / elapsed.as_secs_f64(),
        stalled_window,
    })
}

/// One request on a new connection; the client gives up after [`CLIENT_TIMEOUT`].
fn one_connection(target: SocketAddr) -> Sample {
    let started = Instant::now();
    let answered = (|| -> anyhow::Result<HttpResponse> {
        let stream = TcpStream::connect_timeout(&target, CLIENT_TIMEOUT)?;
        let mut client = Client::over_tcp(stream)?;
        client.stream.set_read_timeout(Some(
            CLIENT_TIMEOUT.saturating_sub(started.elapsed()).max(Duration::from_millis(1)),
        ))?;
        client.request("GET", "bench", "/", &[], true)
    })();
    let worker = answered
        .ok()
        .filter(|r| r.status == 200)
        .and_then(|r| r.header("x-sluice-worker").and_then(|w| w.parse().ok()));
    Sample { started, latency: started.elapsed(), worker }
}

fn report(results: &[Measured], plan: &Plan, load: &str) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut lines = vec![
        "## XDP steering against SO_REUSEPORT (`cargo xtask bench steering`)".to_owned(),
        String::new(),
        format!(
            "Four workers, the same configuration with and without XDP, in one run (load average {load} at the \
             start), on real connections from the client namespace to the node namespace \
             (tests/benches/steering.rs)."
        ),
        String::new(),
        format!(
            "**A worker stalled** for {} ms (its thread blocked: no accepting, no serving, no heartbeats), new \
             connections opened every {} ms whatever the earlier ones do; the rows count those begun between \
             {HEARTBEAT_TIMEOUT_MS} ms into the stall (XDP's heartbeat timeout) and its end. A client gives up after \
             {} ms: a failure, counted at that latency.",
            plan.stall.as_millis(),
            plan.interval.as_millis(),
            CLIENT_TIMEOUT.as_millis()
        ),
        String::new(),
        "| mode | new connections | failed | answered by the stalled worker | p50 ms | p99 ms | max ms |"
            .to_owned(),
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |".to_owned(),
    ];
    for m in results {
        let max = m.stalled_window.iter().map(|s| s.latency).max().unwrap_or_default();
        lines.push(format!(
            "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} |",
            m.mode.name(),
            m.stalled_window.len(),
            m.stall_failed(),
            m.stall_on_victim(),
            ms(m.stall_latency(0.5)),
            ms(m.stall_latency(0.99)),
            ms(max.min(CLIENT_TIMEOUT))
        ));
    }
    lines.extend([
        String::new(),
        "```mermaid".to_owned(),
        "xychart-beta".to_owned(),
        "    title \"New connections while a worker is stalled: p99 latency (ms)\"".to_owned(),
        format!("    x-axis [{}]", results.iter().map(|m| m.mode.name()).collect::<Vec<_>>().join(", ")),
        format!("    y-axis \"p99 ms\" 0 --> {}", CLIENT_TIMEOUT.as_millis()),
        format!(
            "    bar [{}]",
            results
                .iter()
                .map(|m| format!("{:.0}", ms(m.stall_latency(0.99))))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        "```".to_owned(),
        String::new(),
        format!(
            "**Spread**: {} short connections (one request each) from one client address, {} at a time. \
             Connections per second are what each mode served in this run, XDP on the path included; the \
             per-packet cost of the XDP program itself is `cargo xtask bench xdp`'s (nanoseconds above an \
             XDP_PASS-only floor for a new flow, an established flow and a packet to no service).",
            plan.spread_connections, plan.clients
        ),
        String::new(),
        "| mode | per worker | largest share | smallest share | CV | failed | connections/s |".to_owned(),
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |".to_owned(),
    ]);
    for m in results {
        let (largest, smallest) = m.spread_range();
        lines.push(format!(
            "| {} | {:?} | {largest:.1} % | {smallest:.1} % | {:.1} % | {} | {:.0} |",
            m.mode.name(),
            m.per_worker,
            m.spread_cv(),
            m.spread_failed,
            m.connections_per_second
        ));
    }
    lines.push(String::new());
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// The `bench_steering_*=` lines, for scripts.
fn key_values(results: &[Measured]) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut lines = Vec::new();
    for m in results {
        let name = m.mode.name();
        lines.push(format!("bench_steering_stall_failed_{name}={}", m.stall_failed()));
        lines.push(format!("bench_steering_stall_on_victim_{name}={}", m.stall_on_victim()));
        lines.push(format!("bench_steering_stall_p99_ms_{name}={:.1}", ms(m.stall_latency(0.99))));
        lines.push(format!("bench_steering_spread_cv_pct_{name}={:.1}", m.spread_cv()));
        lines.push(format!("bench_steering_connections_per_second_{name}={:.0}", m.connections_per_second));
    }
    if let [xdp, reuseport] = results {
        lines.push(format!(
            "bench_steering_connections_per_second_ratio_reuseport={:.2}",
            xdp.connections_per_second / reuseport.connections_per_second.max(1.0)
        ));
    }
    lines.join("\n")
}
