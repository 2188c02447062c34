//! `cargo xtask bench busy-poll`: what `busy_poll_us` buys and costs, measured on the worker
//! thread of a one-worker `sluice` process: how often it goes to sleep (voluntary context
//! switches) per keep-alive request when the client pauses between requests, without busy
//! polling and with a window, and how much CPU it uses idle once the window has passed (it must
//! not spin for ever). Prints a table and `name=value` lines; writes no docs.
//!
//! These are measurements, so they live here rather than in the functional suites, where they
//! failed under load; tests/tests/proxy_protocols.rs checks that a busy-polling worker serves.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, bail, ensure};
use lb_tests::{backend::Backend, process::ChildGuard, temp_dir::TempDir, wait_for};

use super::clock_ticks_per_second;
use crate::build::build_sluice;

#[derive(clap::Args, Clone, Debug)]
pub struct BusyPollArgs {
    /// Keep-alive requests per measurement.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(10..=10_000))]
    requests: u32,
    /// The client's pause after each response, in microseconds: the gap the worker either
    /// sleeps through or polls through.
    #[arg(long, default_value_t = 2_000)]
    pause_us: u64,
    /// The busy-polling window measured against no busy polling, in microseconds.
    #[arg(long, default_value_t = 200_000)]
    window_us: u64,
    /// Use this sluice binary instead of building one (release) from the workspace.
    #[arg(long)]
    sluice: Option<PathBuf>,
}

/// One measurement of a worker with `busy_poll_us` set to `window_us`.
struct Measured {
    window_us: u64,
    sleeps_per_request: f64,
    idle_cpu_ms_per_s: f64,
}

pub fn run(args: BusyPollArgs) -> anyhow::Result<()> {
    let sluice = match &args.sluice {
        Some(path) => path.clone(),
        None => build_sluice(true)?,
    };
    let backend = Backend::start(None, "127.0.0.1:0".parse()?, "busy-poll-backend")?;
    let mut rows = Vec::new();
    for window_us in [0, args.window_us] {
        rows.push(measure(&sluice, backend.addr(), window_us, &args)?);
    }
    println!();
    println!(
        "one worker, {} keep-alive requests, the client pausing {} us after each",
        args.requests, args.pause_us
    );
    println!("{:>14}  {:>18}  {:>22}", "busy_poll_us", "sleeps per request", "idle CPU after (ms/s)");
    for row in &rows {
        println!("{:>14}  {:>18.2}  {:>22.1}", row.window_us, row.sleeps_per_request, row.idle_cpu_ms_per_s);
    }
    println!();
    for row in &rows {
        println!("busy_poll_{}us_sleeps_per_request={:.3}", row.window_us, row.sleeps_per_request);
        println!("busy_poll_{}us_idle_cpu_ms_per_s={:.1}", row.window_us, row.idle_cpu_ms_per_s);
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn measure(
    sluice: &Path,
    backend: SocketAddr,
    window_us: u64,
    args: &BusyPollArgs,
) -> anyhow::Result<Measured> {
    let dir = TempDir::new();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let config = dir.path().join("sluice.yaml");
    std::fs::write(
        &config,
        format!(
            "workers: 1\nbusy_poll_us: {window_us}\nxdp: {{enabled: false}}\naccess_log: {{enabled: false}}\n\
             listeners: [{{name: web, address: \"{listen}\"}}]\n\
             virtual_hosts: [{{name: all, domains: [\"*\"], routes: [{{backend: echo}}]}}]\n\
             backends: [{{name: echo, endpoints: [{{address: \"{backend}\"}}]}}]\n"
        ),
    )?;
    let mut command = Command::new(sluice);
    command.arg("run").arg("--config").arg(&config);
    let mut child = ChildGuard::spawn(command)?;
    wait_for(Duration::from_secs(20), "sluice to accept", || {
        if child.try_status().is_some() {
            return Some(Err(anyhow::anyhow!("sluice exited:\n{}", child.output())));
        }
        TcpStream::connect(listen).ok().map(|_| Ok(()))
    })??;
    let pid = child.pid();
    let mut stream = TcpStream::connect(listen)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    keepalive_get(&mut stream, "/warm-up")?;
    let before = worker_sleeps(pid)?;
    for i in 0..args.requests {
        keepalive_get(&mut stream, &format!("/busy/{i}"))?;
        std::thread::sleep(Duration::from_micros(args.pause_us));
    }
    let sleeps_per_request = (worker_sleeps(pid)? - before) as f64 / f64::from(args.requests);
    // Idle: measured over the second after the window has passed.
    std::thread::sleep(Duration::from_micros(window_us) + Duration::from_millis(100));
    let cpu_before = worker_cpu_ticks(pid)?;
    std::thread::sleep(Duration::from_secs(1));
    let idle_cpu_ms_per_s = (worker_cpu_ticks(pid)? - cpu_before) as f64 * 1000.0 / clock_ticks_per_second();
    drop(stream);
    let (_, output) = child.terminate(Duration::from_secs(10))?;
    eprintln!("xtask: busy_poll_us {window_us} measured; sluice said:\n{}", output.trim_end());
    Ok(Measured { window_us, sleeps_per_request, idle_cpu_ms_per_s })
}

/// `GET path` on a keep-alive connection; fails unless the answer is a 200 with a
/// Content-Length body (what the demo backend sends), which is read whole.
fn keepalive_get(stream: &mut TcpStream, path: &str) -> anyhow::Result<()> {
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").as_bytes())?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        ensure!(stream.read(&mut byte)? == 1, "the connection closed during {path}");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    ensure!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
    let length: usize = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
        .and_then(|(_, v)| v.trim().parse().ok())
        .context("a Content-Length")?;
    stream.read_exact(&mut vec![0u8; length])?;
    Ok(())
}

/// The `/proc` directory of the `sluice-worker-0` thread of process `pid`.
fn worker_task(pid: u32) -> anyhow::Result<PathBuf> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
        if std::fs::read_to_string(task.path().join("comm")).is_ok_and(|c| c.trim() == "sluice-worker-0") {
            return Ok(task.path());
        }
    }
    bail!("no sluice-worker-0 thread in process {pid}")
}

/// How often the worker thread went to sleep (voluntary context switches).
fn worker_sleeps(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(worker_task(pid)?.join("status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .context("voluntary_ctxt_switches in the worker's status")
}

/// The worker thread's CPU time (user + system), in clock ticks.
fn worker_cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(worker_task(pid)?.join("stat"))?;
    // Fields after the command name, which is in parentheses: utime and stime are 14 and 15.
    let fields: Vec<&str> = stat.rsplit_once(')').context("a stat line")?.1.split_whitespace().collect();
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}
