//! `cargo xtask bench <what>`: the benchmarks.
//!
//! `xdp`: the measuring code lives in a bench target of the lb-tests crate, which can use
//! lb-userspace; xtask cannot, because building lb-userspace needs the eBPF toolchain that xtask
//! itself installs. So it makes sure the prerequisites exist, then runs the bench target through
//! cargo.
//!
//! `steering`: the same, for tests/benches/steering.rs (XDP steering against SO_REUSEPORT).
//!
//! `l7` and `tls`: Sluice, nginx and HAProxy as processes in front of one fast backend, driven
//! by wrk and h2load (see [`proxy`]); the `sluice` binary is built and run as a process.
//!
//! `busy-poll`: a one-worker `sluice` process's sleeps per request and idle CPU with and without
//! busy polling (see [`busy_poll`]).
//!
//! `reload`: the `sluice` binary in Kubernetes mode against lb-tests' fake API server loaded
//! with a large cluster: initial sync, change-to-live-route latency, memory (see [`reload`]).

mod busy_poll;
mod load;
mod peers;
mod profile;
mod proxy;
mod reload;
mod report;

use std::{
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context, bail};
use clap::Subcommand;

use crate::{build::workspace_root, prereqs};

#[derive(Subcommand, Clone, Debug)]
pub enum BenchTarget {
    /// Nanoseconds per packet of the XDP program (BPF_PROG_TEST_RUN): non-service packet,
    /// new-flow SYN, established flow, the guard and the L4 paths, against an XDP_PASS-only
    /// floor; with `--katran-object`, Katran's paths beside them. Needs root.
    Xdp(XdpArgs),
    /// Sluice against nginx and HAProxy (one worker each, proxy on core 0, load and backend on
    /// core 1): HTTP/1.1 keep-alive at 50 and 256 connections and HTTP/2, plus the backend
    /// directly; interleaved rounds, a profile of Sluice; rewrites docs/BENCHMARKS.md.
    L7(proxy::ProxyArgs),
    /// As `l7`, over TLS: HTTPS keep-alive, and a new TLS handshake per request.
    Tls(proxy::ProxyArgs),
    /// Kubernetes mode at scale: 5,000 Ingresses and 50,000 endpoints in the fake API server;
    /// the initial sync, the time from a change to the route being live (p50, p99), and the
    /// memory of the process. Adds its section to docs/BENCHMARKS.md.
    Reload(reload::ReloadArgs),
    /// What XDP steering buys over plain SO_REUSEPORT with the same four workers, on real
    /// connections in the namespace topology: new connections while one worker is stalled,
    /// and the spread of short connections across workers. Needs root. Keeps its section as
    /// docs/bench/steering.md and rewrites docs/BENCHMARKS.md.
    Steering,
    /// Busy polling (`busy_poll_us`) on one worker: sleeps per keep-alive request with and
    /// without a window, and the idle CPU once the window has passed. Prints only.
    BusyPoll(busy_poll::BusyPollArgs),
}

/// Options of `cargo xtask bench xdp`.
#[derive(clap::Args, Clone, Debug)]
pub struct XdpArgs {
    /// Katran's `balancer.bpf.o`, built by hand from its sources (docs/BENCHMARKS.md says
    /// how), to time its paths in the same rounds; without it Katran is not measured.
    #[arg(long, value_name = "PATH")]
    katran_object: Option<std::path::PathBuf>,
}

pub fn run(what: BenchTarget) -> anyhow::Result<()> {
    match what {
        BenchTarget::Xdp(args) => {
            // The bench runs with the lb-tests package as its directory: pass an absolute path.
            let extra = match args.katran_object {
                Some(path) => {
                    let path = std::fs::canonicalize(&path)
                        .with_context(|| format!("--katran-object {}", path.display()))?;
                    vec!["--katran-object".into(), path.into_os_string()]
                }
                None => Vec::new(),
            };
            run_lb_tests_bench("xdp", true, &extra)
        }
        BenchTarget::Steering => {
            run_lb_tests_bench("steering", true, &[])?;
            let docs = workspace_root().join("docs");
            std::fs::write(docs.join("BENCHMARKS.md"), report::markdown(&docs.join("bench")))?;
            println!("rewrote docs/BENCHMARKS.md with docs/bench/steering.md");
            Ok(())
        }
        BenchTarget::L7(args) => proxy::run(proxy::Suite::L7, args),
        BenchTarget::Tls(args) => proxy::run(proxy::Suite::Tls, args),
        BenchTarget::Reload(args) => reload::run(args),
        BenchTarget::BusyPoll(args) => busy_poll::run(args),
    }
}

/// Runs the bench target `name` of lb-tests (tests/benches/<name>.rs), with `args` for it.
fn run_lb_tests_bench(name: &str, needs_root: bool, args: &[std::ffi::OsString]) -> anyhow::Result<()> {
    // Checked here too, before any build, so a non-root run fails in a second, not after one.
    if needs_root && !lb_tests::is_root() {
        bail!(
            "`cargo xtask bench {name}` needs root (loading BPF programs, BPF_PROG_TEST_RUN); \
             run `sudo -E cargo xtask bench {name}`"
        );
    }
    // lb-tests' bench targets build lb-userspace, whose build script builds the eBPF object.
    prereqs::ensure(&[prereqs::Group::Build])?;
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root()).args(["bench", "--package", "lb-tests", "--bench", name]);
    if !args.is_empty() {
        cmd.arg("--").args(args);
    }
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status()?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C or SIGTERM ends the bench at the next check; the guards then stop every process and
/// remove the temporary files.
fn install_interrupt_handler() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, on_interrupt as *const () as libc::sighandler_t) };
    }
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// The kernel's clock tick (USER_HZ), the unit of /proc/PID/stat and /proc/stat times.
fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}
