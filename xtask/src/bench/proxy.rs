//! `cargo xtask bench l7` and `cargo xtask bench tls`: Sluice against nginx and HAProxy in front
//! of one fast backend, interleaved rounds, a profile of Sluice, and docs/BENCHMARKS.md.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use super::{
    interrupted,
    load::{self, Load},
    peers::{Lab, Peer, Proto},
    profile::{self, Profiler},
    report::{self, Results, Run},
};
use crate::{
    build::{build_sluice, workspace_root},
    prereqs::{self, Group, Need, which},
};

#[derive(clap::Args, Clone, Debug)]
pub struct ProxyArgs {
    /// Interleaved rounds (each peer runs once per scenario per round); 3 or more for the report.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10))]
    rounds: u32,
    /// Seconds per measured run.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u64).range(2..=30))]
    duration: u64,
    /// How to profile Sluice (and count system calls per request of each proxy).
    #[arg(long, value_enum, default_value_t = Profiler::Auto)]
    profiler: Profiler,
    /// Before each run, wait while other work on the machine uses more than a quarter of a
    /// core, at most this many seconds over the whole suite.
    #[arg(long, default_value_t = 60)]
    wait_for_quiet: u64,
    /// Print the results only: leave docs/BENCHMARKS.md and docs/bench/ as they are.
    #[arg(long)]
    no_docs: bool,
    /// Measure nothing: only rewrite docs/BENCHMARKS.md (and this suite's chart) from the runs
    /// stored in docs/bench/.
    #[arg(long, conflicts_with = "no_docs")]
    render_only: bool,
    /// Use this sluice binary instead of building one (release) from the workspace.
    #[arg(long)]
    sluice: Option<PathBuf>,
    /// Run only this scenario (repeatable); the report needs them all, so this implies
    /// `--no-docs`.
    #[arg(long = "scenario", value_name = "NAME")]
    only: Vec<String>,
    /// Run Sluice with `busy_poll_us` set to this. (HAProxy's `busy-polling` never sleeps, so it
    /// would take the shared core from the peer being measured; nginx has no such setting.) The
    /// report is of default settings, so this implies `--no-docs`.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    busy_poll_us: u64,
}

/// The suites; BENCHMARKS.md shows each one whose runs are stored.
pub const SUITES: [Suite; 2] = [Suite::L7, Suite::Tls];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    L7,
    Tls,
}

/// What Sluice must reach against nginx in a scenario.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Goal {
    /// Requests/s at least nginx's and p99 no worse.
    KeepAlive,
    /// New-handshake rate at least nginx's.
    Handshake,
    /// Requests/s at least HAProxy's and CPU per request at most HAProxy's.
    MatchHaproxy,
    /// CPU per request (here: per full handshake) at most this share of nginx's.
    CpuShareOfNginx(f64),
}

pub struct Scenario {
    /// In the `bench_<scenario>_...` lines.
    pub name: &'static str,
    pub title: &'static str,
    pub load: Load,
    pub proto: Proto,
    pub peers: &'static [Peer],
    pub goal: Option<Goal>,
}

const PROXIES: &[Peer] = &[Peer::Sluice, Peer::Nginx, Peer::Haproxy];

impl Suite {
    pub fn name(self) -> &'static str {
        match self {
            Suite::L7 => "l7",
            Suite::Tls => "tls",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Suite::L7 => "HTTP/1.1 and HTTP/2 in clear text",
            Suite::Tls => "TLS termination",
        }
    }

    pub fn has_direct(self) -> bool {
        self == Suite::L7
    }

    pub fn scenarios(self) -> Vec<Scenario> {
        match self {
            Suite::L7 => vec![
                Scenario {
                    name: "h1_c50",
                    title: "HTTP/1.1 keep-alive, 50 connections",
                    load: Load::Wrk { conns: 50, tls: false, close: false, access: false },
                    proto: Proto::H1,
                    peers: &Peer::ALL,
                    goal: Some(Goal::KeepAlive),
                },
                Scenario {
                    name: "h1_c256",
                    title: "HTTP/1.1 keep-alive, 256 connections",
                    load: Load::Wrk { conns: 256, tls: false, close: false, access: false },
                    proto: Proto::H1,
                    peers: &Peer::ALL,
                    goal: Some(Goal::KeepAlive),
                },
                // The keep-alive scenario on a route behind an allow list and basic auth: what
                // access control costs per request (nginx verifies the password per request;
                // Sluice remembers verified credentials).
                Scenario {
                    name: "h1_c50_access",
                    title: "HTTP/1.1 keep-alive, 50 connections, allow list + basic auth",
                    load: Load::Wrk { conns: 50, tls: false, close: false, access: true },
                    proto: Proto::H1,
                    peers: &[Peer::Sluice, Peer::Nginx],
                    goal: None,
                },
                Scenario {
                    name: "h2_c50_m10",
                    title: "HTTP/2, 50 connections × 10 streams",
                    load: Load::H2load { conns: 50, streams: 10, tls: false },
                    proto: Proto::H2c,
                    peers: &Peer::ALL,
                    goal: None,
                },
            ],
            Suite::Tls => vec![
                Scenario {
                    name: "https_c50",
                    title: "HTTPS keep-alive, 50 connections",
                    load: Load::Wrk { conns: 50, tls: true, close: false, access: false },
                    proto: Proto::Tls,
                    peers: PROXIES,
                    goal: Some(Goal::KeepAlive),
                },
                Scenario {
                    name: "tls_handshake_c50",
                    title: "a new TLS connection and resumed handshake per request, 50 concurrent",
                    load: Load::Wrk { conns: 50, tls: true, close: true, access: false },
                    proto: Proto::Tls,
                    peers: PROXIES,
                    goal: Some(Goal::Handshake),
                },
                Scenario {
                    name: "h2_tls_c50_m10",
                    title: "HTTP/2 over TLS, 50 connections × 10 streams",
                    load: Load::H2load { conns: 50, streams: 10, tls: true },
                    proto: Proto::Tls,
                    peers: PROXIES,
                    goal: Some(Goal::MatchHaproxy),
                },
                // Every request a new client with no session: the full handshake's cost (key
                // exchange and certificate signature), which resumption hides in the scenarios
                // above.
                Scenario {
                    name: "tls_full_handshake",
                    title: "a full TLS handshake per request (3,000 new clients, no resumption)",
                    load: Load::FullHandshakes { clients: 3000 },
                    proto: Proto::Tls,
                    peers: PROXIES,
                    goal: Some(Goal::CpuShareOfNginx(0.3)),
                },
                // Few connections: neither core saturates, so latency shows what one handshake
                // and request cost end to end, without the client's own queue in it.
                Scenario {
                    name: "tls_handshake_c5",
                    title: "a new TLS connection and resumed handshake per request, 5 concurrent",
                    load: Load::Wrk { conns: 5, tls: true, close: true, access: false },
                    proto: Proto::Tls,
                    peers: PROXIES,
                    goal: None,
                },
            ],
        }
    }

    /// The keep-alive scenario the profile is taken under.
    fn profiled(self) -> &'static str {
        match self {
            Suite::L7 => "h1_c50",
            Suite::Tls => "https_c50",
        }
    }

    /// A scenario in which the client core saturates before the proxy's, whose client-core time
    /// per request is broken down after the profile.
    fn client_bound(self) -> Option<&'static str> {
        match self {
            Suite::L7 => None,
            Suite::Tls => Some("tls_handshake_c50"),
        }
    }

    /// The profiler's Debian package, beside the bench group's peers and load tools.
    fn profiler_needs(profiler: Profiler) -> Vec<Need> {
        match profiler {
            Profiler::Auto | Profiler::Perf => vec![Need { package: "linux-perf", program: Some("perf") }],
            Profiler::Callgrind => vec![Need { package: "valgrind", program: Some("valgrind") }],
            Profiler::None => Vec::new(),
        }
    }
}

/// The first line a command prints (stdout or stderr), or "?".
fn first_line(program: &str, args: &[&str]) -> String {
    let Some(path) = which(program) else { return "?".into() };
    let Ok(output) = Command::new(path).args(args).output() else { return "?".into() };
    let text =
        String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    text.lines().find(|l| !l.trim().is_empty()).unwrap_or("?").trim().to_owned()
}

/// The version word after `marker` in a program's banner.
fn version(program: &str, args: &[&str], marker: &str) -> String {
    let line = first_line(program, args);
    line.split_once(marker)
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .map(|v| v.trim_matches(|c: char| c == '[' || c == ']').to_owned())
        .unwrap_or(line)
}

fn machine_meta(results: &mut Results, suite: Suite, args: &ProxyArgs) {
    let meta = &mut results.meta;
    describe_machine(meta);
    meta.insert("suite".into(), suite.name().into());
    meta.insert("rounds".into(), args.rounds.to_string());
    meta.insert("duration_s".into(), args.duration.to_string());
    meta.insert("nginx".into(), version("nginx", &["-v"], "nginx/"));
    meta.insert("haproxy".into(), version("haproxy", &["-v"], "version "));
    meta.insert("wrk".into(), version("wrk", &["-v"], "wrk "));
    meta.insert("h2load".into(), version("h2load", &["--version"], "nghttp2/"));
    meta.insert("openssl".into(), version("openssl", &["version"], "OpenSSL "));
}

/// The machine and the sources measured: `cpu`, `cores`, `kernel`, `date`, `commit`.
pub fn describe_machine(meta: &mut BTreeMap<String, String>) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "?".into());
    meta.insert("cpu".into(), cpu);
    meta.insert("cores".into(), std::thread::available_parallelism().map_or(0, |n| n.get()).to_string());
    meta.insert(
        "kernel".into(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned(),
    );
    let date = Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]).output();
    meta.insert(
        "date".into(),
        date.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default(),
    );
    // Read-only git: which commit, and whether the proxy's sources differ from it.
    let root = workspace_root();
    let head = Command::new("git").current_dir(&root).args(["rev-parse", "--short", "HEAD"]).output();
    let mut commit = head.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default();
    let dirty = Command::new("git")
        .current_dir(&root)
        .args(["diff", "--quiet", "HEAD", "--", "lb-userspace", "lb-common", "Cargo.lock"])
        .status()
        .is_ok_and(|s| s.code() == Some(1));
    if dirty {
        commit.push_str(" + uncommitted changes to lb-userspace");
    }
    meta.insert("commit".into(), commit);
}

/// CPU counters of the machine, for one run's deltas.
struct Counters {
    /// Busy and total jiffies: all CPUs, core 0, core 1.
    cpus: [(u64, u64); 3],
    /// Jiffies in interrupt and softirq context, all CPUs (whoever was charged for them).
    irq: u64,
    /// Every process's CPU time (utime + stime, clock ticks), by pid; `true` for the kernel's
    /// softirq threads.
    procs: HashMap<u32, (bool, u64)>,
    out_segs: u64,
}

impl Counters {
    fn read() -> Counters {
        let mut cpus = [(0, 0); 3];
        let mut irq = 0;
        if let Ok(stat) = std::fs::read_to_string("/proc/stat") {
            for line in stat.lines() {
                let mut f = line.split_whitespace();
                let slot = match f.next() {
                    Some("cpu") => 0,
                    Some("cpu0") => 1,
                    Some("cpu1") => 2,
                    _ => continue,
                };
                let v: Vec<u64> = f.filter_map(|x| x.parse().ok()).collect();
                // user nice system idle iowait irq softirq steal (guest time is inside user).
                // Steal (the hypervisor running something else) is neither busy nor idle here.
                if v.len() >= 8 {
                    let idle = v[3] + v[4];
                    let busy = v[0] + v[1] + v[2] + v[5] + v[6];
                    cpus[slot] = (busy, busy + idle);
                    if slot == 0 {
                        irq = v[5] + v[6];
                    }
                }
            }
        }
        Counters { cpus, irq, procs: process_ticks(), out_segs: out_segs() }
    }

    /// Kernel work in interrupt and softirq context and in the softirq threads, in ticks.
    fn softirq_since(&self, before: &Counters) -> f64 {
        let threads: u64 = self
            .procs
            .iter()
            .filter(|(_, (softirqd, _))| *softirqd)
            .map(|(pid, (_, t))| t.saturating_sub(before.procs.get(pid).map_or(0, |p| p.1)))
            .sum();
        (self.irq.saturating_sub(before.irq) + threads) as f64
    }

    /// CPU of the processes that are not the bench's (not `ours`, not this process, not the
    /// softirq threads), in ticks. Processes that started and ended in between are missed, so
    /// this is a lower bound.
    fn others_since(&self, before: &Counters, ours: &[u32]) -> f64 {
        let me = std::process::id();
        self.procs
            .iter()
            .filter(|(pid, (softirqd, _))| !softirqd && **pid != me && !ours.contains(pid))
            .map(|(pid, (_, t))| t.saturating_sub(before.procs.get(pid).map_or(0, |p| p.1)))
            .sum::<u64>() as f64
    }
}

/// utime + stime of every process, and whether it is a softirq thread.
fn process_ticks() -> HashMap<u32, (bool, u64)> {
    let mut found = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return found };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let Some((head, rest)) = stat.rsplit_once(')') else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 12 {
            let ticks = f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
            found.insert(pid, (head.contains("(ksoftirqd/"), ticks));
        }
    }
    found
}

/// `Tcp: ... OutSegs` from /proc/net/snmp.
fn out_segs() -> u64 {
    let Ok(snmp) = std::fs::read_to_string("/proc/net/snmp") else { return 0 };
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else { return 0 };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "OutSegs")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// CPU used by processes outside the bench (in cores) over `window`, with the lab idle.
fn other_load(lab: &Lab, window: Duration) -> f64 {
    let hz = super::clock_ticks_per_second();
    let before = Counters::read();
    std::thread::sleep(window);
    let after = Counters::read();
    after.others_since(&before, &lab.pids()) / hz / window.as_secs_f64()
}

/// Before a run: while other work on the machine uses more than a quarter of a core, waits a
/// second and looks again, drawing on `budget` (the whole suite's allowance for waiting).
fn wait_for_quiet(lab: &Lab, budget: &mut Duration) {
    let mut waited = Duration::ZERO;
    loop {
        let other = other_load(lab, Duration::from_millis(300));
        if other < 0.25 || budget.is_zero() || interrupted() {
            if !waited.is_zero() {
                println!(
                    "   (waited {:.0} s for other work on the machine to calm down; now {other:.2} cores)",
                    waited.as_secs_f64()
                );
            }
            return;
        }
        let pause = Duration::from_secs(1).min(*budget);
        std::thread::sleep(pause);
        *budget -= pause;
        waited += pause;
    }
}

/// One measured run of `scenario` against `peer`.
fn measure(lab: &mut Lab, scenario: &Scenario, peer: Peer, round: u32, seconds: u64) -> anyhow::Result<Run> {
    let hz = super::clock_ticks_per_second();
    let addr = lab.addr(peer, scenario.proto);
    let (user_before, sys_before) = lab.proc(peer).cpu_split();
    let before = Counters::read();
    let started = Instant::now();
    let outcome = load::run(scenario.load, addr, seconds, lab.dir())
        .with_context(|| format!("{} against {}", scenario.name, peer.name()))?;
    let wall = started.elapsed().as_secs_f64();
    let after = Counters::read();
    let (user_after, sys_after) = lab.proc(peer).cpu_split();
    let (user_ticks, sys_ticks) = ((user_after - user_before) as f64, (sys_after - sys_before) as f64);
    let peer_ticks = user_ticks + sys_ticks;
    let per_request = |ticks: f64| ticks / hz * 1e6 / outcome.requests.max(1) as f64;
    lab.check_running()?;
    let busy = |i: usize| {
        let (b0, t0) = before.cpus[i];
        let (b1, t1) = after.cpus[i];
        (b1.saturating_sub(b0)) as f64 / (t1.saturating_sub(t0)).max(1) as f64
    };
    let softirq = after.softirq_since(&before);
    let others = after.others_since(&before, &lab.pids());
    let core0_ticks = after.cpus[1].0.saturating_sub(before.cpus[1].0) as f64;
    Ok(Run {
        round,
        scenario: scenario.name.to_owned(),
        peer,
        requests: outcome.requests,
        seconds: outcome.seconds,
        rps: outcome.rps,
        p50_ms: outcome.p50_ms,
        p99_ms: outcome.p99_ms,
        errors: outcome.errors,
        cpu_us_per_req: per_request(peer_ticks),
        user_us_per_req: per_request(user_ticks),
        sys_us_per_req: per_request(sys_ticks),
        peer_cpu: peer_ticks / hz / wall,
        core0: busy(1),
        core1: busy(2),
        other: others / hz / wall,
        core0_us_per_req: if peer == Peer::Direct { f64::NAN } else { per_request(core0_ticks) },
        softirq: softirq / hz / wall,
        segs_per_req: after.out_segs.saturating_sub(before.out_segs) as f64 / outcome.requests.max(1) as f64,
    })
}

pub fn run(suite: Suite, args: ProxyArgs) -> anyhow::Result<()> {
    if args.render_only {
        return render_only(suite);
    }
    let started = Instant::now();
    super::install_interrupt_handler();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 {
        bail!(
            "the bench pins the proxy to core 0 and the load to core 1: it needs 2 cores, this machine has {cores}"
        );
    }
    prereqs::ensure_packages(&[Group::Bench], &Suite::profiler_needs(args.profiler))?;
    let profiler = profile::choose(args.profiler)?;
    let sluice = match &args.sluice {
        Some(path) => path.clone(),
        None => build_sluice(true)?,
    };
    let build_s = started.elapsed().as_secs();
    let started = Instant::now();
    let mut results = Results::default();
    machine_meta(&mut results, suite, &args);
    let mut scenarios = suite.scenarios();
    if !args.only.is_empty() {
        let known: Vec<&str> = scenarios.iter().map(|s| s.name).collect();
        if let Some(unknown) = args.only.iter().find(|name| !known.contains(&name.as_str())) {
            bail!("no scenario {unknown:?} in this suite; its scenarios: {}", known.join(", "));
        }
        scenarios.retain(|s| args.only.iter().any(|name| name == s.name));
    }
    let write = !args.no_docs && args.only.is_empty() && args.busy_poll_us == 0;

    println!("== starting the backend (core 1) and Sluice, nginx, HAProxy (core 0), one worker each");
    let mut lab = Lab::start(&sluice, suite == Suite::Tls, args.busy_poll_us)?;
    for peer in Peer::ALL {
        if peer.is_proxy() || suite.has_direct() {
            println!("   {:<8} pid {:<7} {}", peer.name(), lab.proc(peer).pid(), lab.addr(peer, Proto::H1));
        }
    }
    println!("== warm-up: 2 s per peer and scenario (also checks that every peer answers without errors)");
    for scenario in &scenarios {
        for &peer in scenario.peers {
            let addr = lab.addr(peer, scenario.proto);
            let outcome = load::run(scenario.load, addr, 2, lab.dir())
                .with_context(|| format!("warm-up of {} against {}", scenario.name, peer.name()))?;
            if outcome.errors > 0 {
                bail!(
                    "warm-up of {} against {} had {} errors in {} requests; its output:\n{}",
                    scenario.name,
                    peer.name(),
                    outcome.errors,
                    outcome.requests,
                    lab.proc(peer).output()
                );
            }
            check_interrupted()?;
        }
    }
    println!("== {} rounds of {} s per run, interleaved by peer", args.rounds, args.duration);
    let mut quiet_budget = Duration::from_secs(args.wait_for_quiet);
    for round in 1..=args.rounds {
        for scenario in &scenarios {
            for &peer in scenario.peers {
                check_interrupted()?;
                wait_for_quiet(&lab, &mut quiet_budget);
                let run = measure(&mut lab, scenario, peer, round, args.duration)?;
                println!(
                    "   round {round} {:<18} {:<8} {:>9.0} req/s  p50 {:>7.2} ms  p99 {:>8.2} ms  {:>6.1} µs CPU/req  \
                     peer {:>4.0}%  client core {:>4.0}%  other {:.2} cores{}",
                    scenario.name,
                    peer.name(),
                    run.rps,
                    run.p50_ms,
                    run.p99_ms,
                    run.cpu_us_per_req,
                    run.peer_cpu * 100.0,
                    run.core1 * 100.0,
                    run.other,
                    if run.errors > 0 { format!("  {} ERRORS", run.errors) } else { String::new() }
                );
                results.runs.push(run);
            }
        }
    }

    let profiled = scenarios.iter().any(|s| s.name == suite.profiled());
    let artifacts = if profiler == Profiler::None || !profiled {
        None
    } else {
        let scenario =
            scenarios.iter().find(|s| s.name == suite.profiled()).expect("the profiled scenario exists");
        println!(
            "== profiling Sluice under {} with {profiler:?}, then counting system calls per request",
            scenario.name
        );
        let proto = scenario.proto;
        let addr_of = move |lab: &Lab, peer: Peer| lab.addr(peer, proto);
        // Where a scenario is bound by the client core, also where the client core's time goes.
        let client_bound =
            scenarios.iter().find(|s| Some(s.name) == suite.client_bound()).map(|s| (s.name, s.load));
        Some(profile::run(
            profiler,
            &mut lab,
            &sluice,
            (scenario.name, scenario.load),
            &addr_of,
            8,
            client_bound,
        )?)
    };
    println!("== stopping the peers");
    drop(lab);

    let runtime = started.elapsed().as_secs();
    results.meta.insert("runtime_s".into(), runtime.to_string());
    results.meta.insert("wait_budget_s".into(), args.wait_for_quiet.to_string());
    report::print(suite, &results);
    if let Some(artifacts) = &artifacts {
        println!("\nProfile ({}):", artifacts.profile.meta.get("tool").map_or("?", String::as_str));
        for (name, share) in artifacts.profile.components.iter().take(8) {
            println!("  {share:6.2}%  {name}");
        }
        for (name, share) in artifacts.profile.symbols.iter().take(10) {
            println!("  {share:6.2}%  {name}");
        }
    }
    if write {
        write_docs(suite, &results, artifacts.as_ref())?;
    }
    println!("bench_{}_runtime_s={runtime}", suite.name());
    println!("bench_{}_build_s={build_s}", suite.name());
    Ok(())
}

fn render_only(suite: Suite) -> anyhow::Result<()> {
    let docs = workspace_root().join("docs");
    let bench = docs.join("bench");
    let runs = bench.join(format!("{}-runs.tsv", suite.name()));
    let text = std::fs::read_to_string(&runs).with_context(|| format!("cannot read {}", runs.display()))?;
    let results = Results::from_tsv(&text);
    report::print(suite, &results);
    std::fs::write(bench.join(format!("{}.svg", suite.name())), report::svg(suite, &results))?;
    std::fs::write(docs.join("BENCHMARKS.md"), report::markdown(&bench))?;
    println!("\nrewrote docs/BENCHMARKS.md and docs/bench/{}.svg from {}", suite.name(), runs.display());
    Ok(())
}

fn check_interrupted() -> anyhow::Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

fn write_docs(suite: Suite, results: &Results, artifacts: Option<&profile::Artifacts>) -> anyhow::Result<()> {
    let docs = workspace_root().join("docs");
    let bench = docs.join("bench");
    std::fs::create_dir_all(&bench)?;
    let write = |name: &str, text: &str| -> anyhow::Result<()> {
        let path = bench.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    write(&format!("{}-runs.tsv", suite.name()), &results.to_tsv())?;
    write(&format!("{}.svg", suite.name()), &report::svg(suite, results))?;
    if let Some(a) = artifacts {
        write(&format!("{}-profile.tsv", suite.name()), &a.profile.to_tsv())?;
        write(&format!("{}-profile.txt", suite.name()), &a.text)?;
        let flamegraph = bench.join(format!("{}-flamegraph.svg", suite.name()));
        match &a.flamegraph {
            Some(svg) => std::fs::write(&flamegraph, svg)?,
            None => {
                let _ = std::fs::remove_file(&flamegraph);
            }
        }
    }
    let md = report::markdown(&bench);
    std::fs::write(docs.join("BENCHMARKS.md"), md)?;
    println!("\nwrote docs/BENCHMARKS.md and docs/bench/{}*", suite.name());
    Ok(())
}
