//! `cargo xtask demo`: the newcomer's one command. Builds Sluice, creates a client namespace, a
//! node namespace and three backend namespaces joined by veth pairs, starts three demo backends
//! and `sluice run` in the node from the embedded demo configuration (XDP on the node's
//! interface), sends a bounded batch of requests from the client, prints how connections spread
//! over the workers and requests over the backends and what XDP counted, and removes
//! everything on exit or Ctrl-C.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::Context;
use lb_tests::{
    backend::{BACKEND_HEADER, Backend},
    http::http_get,
    netns::Netns,
    process::ChildGuard,
    temp_dir::TempDir,
    topology::{NODE_CLIENT_IF, Topology},
    wait_for,
};

use crate::{
    build::build_sluice,
    prereqs::{self, Group},
};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Requests to send, one connection each.
    #[arg(long, default_value_t = 400)]
    requests: u32,
    /// Worker threads in the demo instance.
    #[arg(long, default_value_t = 4)]
    workers: u32,
    /// Keep the demo instance up this many seconds after the batch (Ctrl-C ends it sooner).
    #[arg(long, default_value_t = 0)]
    hold_seconds: u64,
    /// Run without XDP (workers share one SO_REUSEPORT listener).
    #[arg(long)]
    no_xdp: bool,
    /// Short mode for tests: at most 60 requests, and a debug build of sluice.
    #[arg(long)]
    short: bool,
    /// Use this sluice binary instead of building one (tests pass the one they built).
    #[arg(long)]
    sluice: Option<std::path::PathBuf>,
}

/// The configuration the demo instance runs, embedded so the demo needs no file.
const DEMO_CONFIG: &str = include_str!("demo.yaml");
const DEMO_BACKENDS: usize = 3;

const DEMO_PORT: u16 = 8080;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

pub fn run(mut args: DemoArgs) -> anyhow::Result<()> {
    if args.short {
        args.requests = args.requests.min(60);
    }
    anyhow::ensure!(args.requests <= 100_000, "--requests is bounded at 100000");
    // A given binary needs no toolchain; building one does.
    let groups: &[Group] = if args.sluice.is_some() { &[Group::Demo] } else { &[Group::Build, Group::Demo] };
    prereqs::ensure(groups)?;
    anyhow::ensure!(lb_tests::is_root(), "the demo creates network namespaces and loads XDP: run it as root");
    let sluice = match &args.sluice {
        Some(path) => path.clone(),
        None => build_sluice(!args.short)?,
    };
    // Ctrl-C ends the batch early; the guards below then remove the namespaces and processes.
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { libc::signal(libc::SIGINT, on_interrupt as *const () as libc::sighandler_t) };

    println!("== creating the demo topology: client -> node -> {DEMO_BACKENDS} backends (veth pairs)");
    let topology = Topology::new(DEMO_BACKENDS)?;
    println!("   client {} -> node {} ({})", topology.client.name(), topology.node.name(), NODE_CLIENT_IF);
    let mut backends = Vec::new();
    for (i, netns) in topology.backends.iter().enumerate() {
        let addr = SocketAddr::from((topology.backend_v4(i), 80));
        backends.push(Backend::start(Some(netns), addr, &format!("backend-{}", i + 1))?);
        println!("   demo backend backend-{} on {addr} in {}", i + 1, netns.name());
    }

    let config_dir = TempDir::new();
    let config_path = config_dir.0.join("demo.yaml");
    std::fs::write(&config_path, DEMO_CONFIG)?;
    let mut command = topology.node.command(&sluice);
    command.arg("run").arg("--config").arg(&config_path).args(["--workers", &args.workers.to_string()]);
    if args.no_xdp {
        command.arg("--no-xdp");
    }
    println!("== starting sluice in the node namespace: {command:?}");
    let mut instance = ChildGuard::spawn(command)?;
    let target = SocketAddr::from((topology.node_v4(), DEMO_PORT));
    wait_until_serving(&topology.client, target, &mut instance)?;
    let xdp_line = instance
        .output()
        .lines()
        .find(|l| l.contains("xdp attached") || l.contains("XDP disabled"))
        .map(str::to_owned);
    match xdp_line {
        Some(line) => println!("   {}", line.trim()),
        None => println!("   (no XDP: --no-xdp)"),
    }

    println!("== sending {} requests from the client, one TCP connection each", args.requests);
    let started = Instant::now();
    let requests = args.requests;
    let tally = topology.client.run(move || send_batch(target, requests))??;
    let elapsed = started.elapsed();
    print_spread(&tally, elapsed);
    anyhow::ensure!(tally.failures == 0, "{} requests failed", tally.failures);

    if args.hold_seconds > 0 && !interrupted() {
        println!(
            "== holding for {}s: try `ip netns exec {} curl -si http://{target}/` (Ctrl-C ends)",
            args.hold_seconds,
            topology.client.name()
        );
        let deadline = Instant::now() + Duration::from_secs(args.hold_seconds);
        while Instant::now() < deadline && !interrupted() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    println!("== stopping sluice");
    let (status, output) = instance.terminate(Duration::from_secs(10))?;
    print_xdp_counters(&output);
    anyhow::ensure!(status.success(), "sluice exited with {status}; its output:\n{output}");
    drop(topology);
    println!("== done: namespaces and processes removed");
    Ok(())
}

/// Waits for sluice to log that it is serving (the kernel path, when on, is attached by then)
/// and for a request from the client to be answered.
fn wait_until_serving(client: &Netns, target: SocketAddr, instance: &mut ChildGuard) -> anyhow::Result<()> {
    wait_for(Duration::from_secs(20), "sluice to answer", || {
        if instance.try_status().is_some() || interrupted() {
            return Some(());
        }
        if !instance.output().contains("sluice is serving") {
            return None;
        }
        client.run(move || http_get(target, "/ready")).ok().and_then(|r| r.ok()).map(|_| ())
    })
    .and_then(|()| match instance.try_status() {
        Some(status) => anyhow::bail!("sluice exited with {status} before serving:\n{}", instance.output()),
        None if interrupted() => anyhow::bail!("interrupted"),
        None => Ok(()),
    })
    .context("starting the demo instance")
}

/// Answers per worker and per backend.
#[derive(Default)]
struct Tally {
    workers: BTreeMap<String, u32>,
    backends: BTreeMap<String, u32>,
    failures: u32,
}

/// Sends `requests` GETs, one connection each, and counts who answered.
fn send_batch(target: SocketAddr, requests: u32) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    for i in 0..requests {
        if interrupted() {
            break;
        }
        match http_get(target, &format!("/demo/{i}")) {
            Ok(response) if response.status == 200 => {
                let worker = response.header("x-sluice-worker").unwrap_or("?").to_owned();
                *tally.workers.entry(worker).or_insert(0) += 1;
                let backend = response.header(BACKEND_HEADER).unwrap_or("?").to_owned();
                *tally.backends.entry(backend).or_insert(0) += 1;
            }
            _ => tally.failures += 1,
        }
    }
    Ok(tally)
}

fn print_table(title: &str, counts: &BTreeMap<String, u32>) {
    let total: u32 = counts.values().sum();
    println!("   {title:>10}  requests  share");
    for (name, count) in counts {
        let share = f64::from(*count) * 100.0 / f64::from(total.max(1));
        println!("   {name:>10}  {count:>8}  {share:5.1}%  {}", "#".repeat((share / 2.0) as usize));
    }
}

fn print_spread(tally: &Tally, elapsed: Duration) {
    let total: u32 = tally.workers.values().sum();
    println!("   {total} requests answered in {:.2}s, {} failed", elapsed.as_secs_f64(), tally.failures);
    println!("   connections over the node's workers (XDP steering):");
    print_table("worker", &tally.workers);
    println!("   requests over the backends (round robin):");
    print_table("backend", &tally.backends);
}

/// Prints the counters sluice logged at shutdown, one per line, leaving out the zeros.
fn print_xdp_counters(output: &str) {
    let Some(line) = output.lines().find(|l| l.contains("xdp counters at shutdown")) else {
        println!("   (no XDP counters: the kernel path was not running)");
        return;
    };
    println!("   XDP counters (non-zero):");
    let counters = line.split("counters=").nth(1).unwrap_or("");
    for pair in counters.split_whitespace() {
        if let Some((name, value)) = pair.split_once('=')
            && value != "0"
        {
            println!("   {name:>24}  {value}");
        }
    }
    if output.contains("xdp detached") {
        println!("   XDP detached cleanly");
    }
}
