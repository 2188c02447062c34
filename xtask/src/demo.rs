//! `cargo xtask demo`: the newcomer's one command. Builds Sluice, creates a client and a node
//! namespace joined by a veth pair, starts `sluice run` in the node with XDP on the node's
//! interface, sends a bounded batch of requests from the client, prints how they spread over
//! the workers and what XDP counted, and removes everything on exit or Ctrl-C.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::Context;
use lb_tests::{
    backend::http_get,
    netns::Netns,
    process::ChildGuard,
    topology::{NODE_CLIENT_IF, Topology},
    wait_for,
};

use crate::build::build_sluice;

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
}

const DEMO_PORT: u16 = 8080;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.requests <= 100_000, "--requests is bounded at 100000");
    anyhow::ensure!(lb_tests::is_root(), "the demo creates network namespaces and loads XDP: run it as root");
    let sluice = build_sluice(true)?;
    // Ctrl-C ends the batch early; the guards below then remove the namespaces and processes.
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { libc::signal(libc::SIGINT, on_interrupt as *const () as libc::sighandler_t) };

    println!("== creating the demo topology: client namespace -> node namespace (veth)");
    let topology = Topology::new(0)?;
    println!("   client {} -> node {} ({})", topology.client.name(), topology.node.name(), NODE_CLIENT_IF);

    let mut command = topology.node.command(&sluice);
    command.args([
        "run",
        "--workers",
        &args.workers.to_string(),
        "--interface",
        NODE_CLIENT_IF,
        "--xdp-mode",
        "auto",
    ]);
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

/// Sends `requests` GETs, one connection each, and counts answers per worker.
fn send_batch(target: SocketAddr, requests: u32) -> anyhow::Result<BTreeMap<String, u32>> {
    let mut tally = BTreeMap::new();
    for i in 0..requests {
        if interrupted() {
            break;
        }
        let response = http_get(target, &format!("/demo/{i}"))?;
        let worker = response.header("x-sluice-worker").unwrap_or("?").to_owned();
        *tally.entry(worker).or_insert(0) += 1;
    }
    Ok(tally)
}

fn print_spread(tally: &BTreeMap<String, u32>, elapsed: Duration) {
    let total: u32 = tally.values().sum();
    println!("   {total} requests answered in {:.2}s", elapsed.as_secs_f64());
    println!("   worker  connections  share");
    for (worker, count) in tally {
        let share = f64::from(*count) * 100.0 / f64::from(total.max(1));
        println!("   {worker:>6}  {count:>11}  {share:5.1}%  {}", "#".repeat((share / 2.0) as usize));
    }
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
