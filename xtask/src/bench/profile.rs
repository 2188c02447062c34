//! Where Sluice's time goes: a CPU profile of the Sluice process under load (`perf record` with
//! DWARF call graphs on the cpu-clock software event, which works in VMs without hardware
//! counters; `valgrind --tool=callgrind` where perf cannot sample), rendered as a text report
//! and a flame graph, and a census of system calls per request of each proxy (perf's syscall
//! tracepoints).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use super::{
    load::{self, Load},
    peers::{CLIENT_CORE, Lab, PROXY_CORE, Peer, Proc},
};

/// Which profiler to use.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profiler {
    /// perf if it can sample here, callgrind otherwise.
    Auto,
    Perf,
    Callgrind,
    /// No profile, no syscall census.
    None,
}

/// A profile's results, as rendered into BENCHMARKS.md (also stored as `<suite>-profile.tsv`).
#[derive(Default, Debug, Clone)]
pub struct Profile {
    /// `tool`, `scenario`, `samples`, `busy` (Sluice's CPU share during the profile), `note`.
    pub meta: BTreeMap<String, String>,
    /// Self cost by symbol, percent of samples (or of instructions with callgrind).
    pub symbols: Vec<(String, f64)>,
    /// Self cost grouped by where the code comes from (kernel, allocator, hyper, ...).
    pub components: Vec<(String, f64)>,
    /// Inclusive cost of the system calls (perf only).
    pub syscalls: Vec<(String, f64)>,
    /// Inclusive cost of Sluice's own functions (lb_userspace).
    pub sluice: Vec<(String, f64)>,
    /// System calls per request, per proxy: (peer, syscall, calls per request).
    pub census: Vec<(String, String, f64)>,
    /// Who calls malloc/free: the first frame above the allocator, percent of all samples.
    pub alloc_callers: Vec<(String, f64)>,
    /// Who calls memcpy/memmove/memset, likewise.
    pub copy_callers: Vec<(String, f64)>,
    /// The client core's time per request with each proxy: (peer, where, µs per request).
    pub client: Vec<(String, String, f64)>,
    /// Inter-processor interrupts per request over the same window: (peer, which, count per
    /// request). A core that went idle is woken with one; in a VM each costs an exit.
    pub wakeups: Vec<(String, String, f64)>,
}

impl Profile {
    pub fn to_tsv(&self) -> String {
        let mut out = String::from("# section\tname\tvalue\n");
        for (k, v) in &self.meta {
            let _ = writeln!(out, "meta\t{k}\t{}", v.replace(['\t', '\n'], " "));
        }
        for (section, rows) in [
            ("symbol", &self.symbols),
            ("component", &self.components),
            ("syscall", &self.syscalls),
            ("sluice", &self.sluice),
            ("alloc_caller", &self.alloc_callers),
            ("copy_caller", &self.copy_callers),
        ] {
            for (name, pct) in rows {
                let _ = writeln!(out, "{section}\t{}\t{pct:.2}", name.replace('\t', " "));
            }
        }
        for (peer, call, per_request) in &self.census {
            let _ = writeln!(out, "census\t{peer}:{call}\t{per_request:.3}");
        }
        for (peer, place, us) in &self.client {
            let _ = writeln!(out, "client\t{peer}:{place}\t{us:.2}");
        }
        for (peer, which, per_request) in &self.wakeups {
            let _ = writeln!(out, "wakeup\t{peer}:{which}\t{per_request:.3}");
        }
        out
    }

    pub fn from_tsv(text: &str) -> Profile {
        let mut p = Profile::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let mut f = line.splitn(3, '\t');
            let (Some(section), Some(name), Some(value)) = (f.next(), f.next(), f.next()) else { continue };
            let number = value.parse::<f64>().unwrap_or(0.0);
            match section {
                "meta" => {
                    p.meta.insert(name.to_owned(), value.to_owned());
                }
                "symbol" => p.symbols.push((name.to_owned(), number)),
                "component" => p.components.push((name.to_owned(), number)),
                "syscall" => p.syscalls.push((name.to_owned(), number)),
                "sluice" => p.sluice.push((name.to_owned(), number)),
                "alloc_caller" => p.alloc_callers.push((name.to_owned(), number)),
                "copy_caller" => p.copy_callers.push((name.to_owned(), number)),
                "census" => {
                    if let Some((peer, call)) = name.split_once(':') {
                        p.census.push((peer.to_owned(), call.to_owned(), number));
                    }
                }
                "client" => {
                    if let Some((peer, place)) = name.split_once(':') {
                        p.client.push((peer.to_owned(), place.to_owned(), number));
                    }
                }
                "wakeup" => {
                    if let Some((peer, which)) = name.split_once(':') {
                        p.wakeups.push((peer.to_owned(), which.to_owned(), number));
                    }
                }
                _ => {}
            }
        }
        p
    }
}

/// The files a profile leaves beside the report.
pub struct Artifacts {
    pub profile: Profile,
    /// The full text report (perf report / callgrind_annotate excerpts).
    pub text: String,
    /// A flame graph (perf only).
    pub flamegraph: Option<String>,
}

/// Decides which profiler works here: perf needs to open a cpu-clock sampling event.
pub fn choose(wanted: Profiler) -> anyhow::Result<Profiler> {
    let perf_ok = || {
        Command::new("perf")
            .args(["record", "-q", "-e", "cpu-clock", "-o", "/dev/null", "--", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let callgrind_ok =
        || Command::new("valgrind").arg("--version").output().is_ok_and(|o| o.status.success());
    Ok(match wanted {
        Profiler::None => Profiler::None,
        Profiler::Perf if perf_ok() => Profiler::Perf,
        Profiler::Perf => bail!("perf cannot sample here (`perf record -e cpu-clock true` failed)"),
        Profiler::Callgrind if callgrind_ok() => Profiler::Callgrind,
        Profiler::Callgrind => bail!("valgrind is not installed"),
        Profiler::Auto if perf_ok() => Profiler::Perf,
        Profiler::Auto if callgrind_ok() => Profiler::Callgrind,
        Profiler::Auto => bail!("neither perf nor valgrind can profile here"),
    })
}

/// Profiles Sluice under `load` through `proto`'s address, then counts system calls per request
/// of every proxy under the same load.
pub fn run(
    profiler: Profiler,
    lab: &mut Lab,
    sluice_bin: &Path,
    (scenario, load): (&str, Load),
    addr_of: &dyn Fn(&Lab, Peer) -> SocketAddr,
    seconds: u64,
    client_bound: Option<(&str, Load)>,
) -> anyhow::Result<Artifacts> {
    let mut artifacts = match profiler {
        Profiler::Perf => perf_profile(lab, scenario, load, addr_of(lab, Peer::Sluice), seconds)?,
        Profiler::Callgrind => callgrind_profile(lab, sluice_bin, scenario, load, seconds)?,
        Profiler::Auto | Profiler::None => bail!("no profiler chosen"),
    };
    if profiler == Profiler::Perf {
        for peer in [Peer::Sluice, Peer::Nginx, Peer::Haproxy] {
            let counts = census(lab, peer, load, addr_of(lab, peer), seconds.min(5))?;
            artifacts
                .profile
                .census
                .extend(counts.into_iter().map(|(call, n)| (peer.name().to_owned(), call, n)));
        }
        let mut text = String::from("\n== System calls per request (perf stat, syscall tracepoints)\n");
        for (peer, call, n) in &artifacts.profile.census {
            let _ = writeln!(text, "{peer:>8}  {call:<12} {n:8.3}");
        }
        artifacts.text.push_str(&text);
        if let Some((name, load)) = client_bound {
            artifacts.profile.meta.insert("client_scenario".into(), name.into());
            let mut text = format!(
                "\n== The client core's time per request under `{name}`, with Sluice and with nginx \
                 (perf record -C {CLIENT_CORE}: every process on the core; µs per request)\n"
            );
            let mut wakeups = format!(
                "\n== Inter-processor interrupts per request under `{name}` (/proc/interrupts; core \
                 {PROXY_CORE} runs the proxy, core {CLIENT_CORE} the client and backend)\n"
            );
            for peer in [Peer::Sluice, Peer::Nginx] {
                let (places, ipis) = client_core(lab, load, addr_of(lab, peer), seconds.min(5))?;
                for (place, us) in places {
                    let _ = writeln!(text, "{:>8}  {place:<44} {us:8.1}", peer.name());
                    artifacts.profile.client.push((peer.name().to_owned(), place, us));
                }
                for (which, per_request) in ipis {
                    let _ = writeln!(wakeups, "{:>8}  {which:<44} {per_request:8.3}", peer.name());
                    artifacts.profile.wakeups.push((peer.name().to_owned(), which, per_request));
                }
            }
            artifacts.text.push_str(&text);
            artifacts.text.push_str(&wakeups);
        }
    }
    Ok(artifacts)
}

/// Named numbers, e.g. (place, µs per request).
type Rows = Vec<(String, f64)>;

/// Where the client core's time goes per request while `load` runs against `addr`: a
/// system-wide sample of that core, by command and shared object (the backend nginx, the load
/// generator and its libraries, the kernel), in µs per request; idle time left out. Also the
/// wake-up interrupts per request each core received over the same window.
fn client_core(lab: &mut Lab, load: Load, addr: SocketAddr, seconds: u64) -> anyhow::Result<(Rows, Rows)> {
    let data = lab.dir().join("client.data");
    let data_arg = data.display().to_string();
    let (outcome, (ipis, _)) = under_load(load, addr, seconds, lab.dir(), || {
        let before = interrupts();
        let command = perf(&[
            "record",
            "-q",
            "-e",
            "cpu-clock",
            "-F",
            &PERF_FREQUENCY.to_string(),
            "-C",
            &CLIENT_CORE.to_string(),
            "-o",
            &data_arg,
            "--",
            "sleep",
            &seconds.to_string(),
        ]);
        let ran = run_bounded(command, Duration::from_secs(seconds + 60));
        let after = interrupts();
        let mut ipis = Vec::new();
        for (kind, what) in [("CAL", "function-call IPIs"), ("RES", "reschedule IPIs")] {
            for (core, role) in [(PROXY_CORE, "proxy"), (CLIENT_CORE, "client")] {
                let count = |snapshot: &BTreeMap<(String, u32), u64>| {
                    snapshot.get(&(kind.to_owned(), core)).copied().unwrap_or(0)
                };
                let delta = count(&after).saturating_sub(count(&before));
                ipis.push((format!("{what} to the {role} core"), delta as f64));
            }
        }
        ran.map(|out| (ipis, out))
    })?;
    lab.check_running()?;
    let (report, _) = run_bounded(
        perf(&[
            "report",
            "-i",
            &data_arg,
            "--stdio",
            "--sort",
            "comm,dso",
            "-F",
            "sample,comm,dso",
            "-t",
            "\t",
        ]),
        Duration::from_secs(120),
    )?;
    let _ = std::fs::remove_file(&data);
    let requests = outcome.rps * seconds as f64;
    let mut places: BTreeMap<String, f64> = BTreeMap::new();
    for line in report.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split('\t').map(str::trim).collect();
        let (Some(Ok(samples)), Some(comm), Some(dso)) =
            (f.first().map(|n| n.parse::<f64>()), f.get(1), f.get(2))
        else {
            continue;
        };
        let place = match *comm {
            "swapper" => continue, // idle
            "wrk" | "h2load" => format!("{comm} {dso}"),
            "nginx" => format!("backend nginx {dso}"),
            c if c.starts_with("ksoftirqd") => "kernel softirq thread".to_owned(),
            _ => "other processes".to_owned(),
        };
        let us = samples / f64::from(PERF_FREQUENCY) / requests.max(1.0) * 1e6;
        *places.entry(place).or_default() += us;
    }
    let mut rows: Vec<(String, f64)> = places.into_iter().collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f64 = rows.iter().map(|(_, us)| us).sum();
    rows.push(("all (busy time on the core)".to_owned(), total));
    let ipis = ipis.into_iter().map(|(which, count)| (which, count / requests.max(1.0))).collect();
    Ok((rows, ipis))
}

/// Interrupt counts from /proc/interrupts by (kind, core), e.g. ("CAL", 0); empty when the
/// file cannot be read.
fn interrupts() -> BTreeMap<(String, u32), u64> {
    let text = std::fs::read_to_string("/proc/interrupts").unwrap_or_default();
    let mut counts = BTreeMap::new();
    for line in text.lines().skip(1) {
        let mut fields = line.split_whitespace();
        let Some(kind) = fields.next().and_then(|k| k.strip_suffix(':')) else { continue };
        for (core, field) in fields.map_while(|f| f.parse::<u64>().ok()).enumerate() {
            counts.insert((kind.to_owned(), core as u32), field);
        }
    }
    counts
}

/// Runs `load` for `seconds + 2` in a thread while `during` runs; returns both results.
fn under_load<T>(
    load: Load,
    addr: SocketAddr,
    seconds: u64,
    dir: &Path,
    during: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(load::Outcome, T)> {
    let dir = dir.to_path_buf();
    let handle = std::thread::spawn(move || load::run(load, addr, seconds + 2, &dir));
    std::thread::sleep(Duration::from_secs(1));
    let result = during();
    let outcome = handle.join().map_err(|_| anyhow::anyhow!("the load thread panicked"))??;
    Ok((outcome, result?))
}

/// Runs `command` (pinned to the client core), at most `limit`; returns its stdout and stderr.
fn run_bounded(mut command: Command, limit: Duration) -> anyhow::Result<(String, String)> {
    let shown = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {shown}"))?;
    let (mut out, mut err) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline || super::interrupted() {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{shown} did not finish within {limit:?} or was interrupted");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (out, err) = (out_reader.join().unwrap_or_default(), err_reader.join().unwrap_or_default());
    if !status.success() {
        bail!("{shown} failed with {status}:\n{err}");
    }
    Ok((out, err))
}

fn perf(args: &[&str]) -> Command {
    let mut command = Command::new("taskset");
    command.args(["-c", &CLIENT_CORE.to_string(), "perf"]).args(args);
    command
}

/// Samples per second. Each sample copies 64 KiB of stack for the DWARF unwinder (deep async
/// stacks need that much to reach the thread's start), so the rate is kept modest.
const PERF_FREQUENCY: u32 = 499;
const PERF_STACK: &str = "dwarf,65528";

fn perf_profile(
    lab: &mut Lab,
    scenario: &str,
    load: Load,
    addr: SocketAddr,
    seconds: u64,
) -> anyhow::Result<Artifacts> {
    let data = lab.dir().join("perf.data");
    let pid = lab.proc(Peer::Sluice).pid().to_string();
    let data_arg = data.display().to_string();
    let ticks_before = lab.proc(Peer::Sluice).cpu_ticks();
    let started = Instant::now();
    let (outcome, _) = under_load(load, addr, seconds, lab.dir(), || {
        // The perf tool itself runs on the client core; the samples are taken on the proxy core.
        let command = perf(&[
            "record",
            "-q",
            "-e",
            "cpu-clock",
            "-F",
            &PERF_FREQUENCY.to_string(),
            "--call-graph",
            PERF_STACK,
            "-p",
            &pid,
            "-o",
            &data_arg,
            "--",
            "sleep",
            &seconds.to_string(),
        ]);
        run_bounded(command, Duration::from_secs(seconds + 60))
    })?;
    let busy = (lab.proc(Peer::Sluice).cpu_ticks() - ticks_before) as f64
        / super::clock_ticks_per_second()
        / started.elapsed().as_secs_f64();
    lab.check_running()?;

    let report = |args: &[&str]| -> anyhow::Result<String> {
        let mut command = perf(&["report", "-i", &data_arg, "--stdio", "-g", "none", "-t", "\t"]);
        command.args(args);
        Ok(run_bounded(command, Duration::from_secs(300))?.0)
    };
    let self_text = report(&["--no-children", "--sort", "dso,sym"])?;
    let children_text = report(&["--children", "--sort", "sym"])?;
    let (script, _) = run_bounded(
        perf(&["script", "-i", &data_arg, "-F", "comm,tid,ip,sym", "--no-inline"]),
        Duration::from_secs(300),
    )?;
    let _ = std::fs::remove_file(&data);
    let stacks = fold(&script);
    let samples = stacks.iter().map(|(_, n)| n).sum::<u64>();
    let rooted = stacks.iter().filter(|(s, _)| !s.starts_with("[truncated]")).map(|(_, n)| n).sum::<u64>();

    let mut profile = Profile::default();
    let mut text = format!(
        "Profile of Sluice (1 worker, pinned to core {PROXY_CORE}) under `{scenario}` ({}), {seconds} s.\n\
         perf record -e cpu-clock -F {PERF_FREQUENCY} --call-graph {PERF_STACK} -p <sluice>\n\
         samples: {samples}; Sluice's CPU during the profile: {:.0}% of one core; load: {:.0} requests/s\n",
        load.describe(),
        busy * 100.0,
        outcome.rps,
    );
    let self_rows = parse_self(&self_text);
    let mut components: BTreeMap<String, f64> = BTreeMap::new();
    for (dso, sym, pct) in &self_rows {
        *components.entry(component(dso, sym)).or_default() += pct;
    }
    let mut components: Vec<(String, f64)> = components.into_iter().collect();
    components.sort_by(|a, b| b.1.total_cmp(&a.1));
    profile.symbols = self_rows.iter().take(40).map(|(_, sym, pct)| (sym.clone(), *pct)).collect();
    profile.components = components;

    let children = parse_children(&children_text);
    // Syscall entry points, inclusive: each syscall's whole cost, including (on loopback) the
    // delivery of what it sends to the receiving socket.
    profile.syscalls = children
        .iter()
        .filter_map(|(sym, pct)| syscall_name(sym).map(|name| (name, *pct)))
        .fold(Vec::<(String, f64)>::new(), |mut acc, (name, pct)| {
            if !acc.iter().any(|(n, _)| *n == name) {
                acc.push((name, pct));
            }
            acc
        });
    profile.syscalls.retain(|(_, pct)| *pct >= 0.2);
    // The worker's outermost frames (the runtime loop, the connection task) contain nearly
    // everything; below them are the parts of the request path.
    profile.sluice = children
        .iter()
        .filter(|(sym, pct)| sym.starts_with("lb_userspace::") && *pct < 90.0)
        .take(20)
        .cloned()
        .collect();
    profile.alloc_callers = callers(&stacks, is_allocator);
    profile.copy_callers = callers(&stacks, is_copy);

    let _ = writeln!(text, "\n== Self cost by component (share of samples)");
    for (name, pct) in &profile.components {
        let _ = writeln!(text, "{pct:6.2}%  {name}");
    }
    let _ = writeln!(text, "\n== Self cost by symbol (top 40)");
    for (dso, sym, pct) in self_rows.iter().take(40) {
        let _ = writeln!(text, "{pct:6.2}%  {dso:<20} {sym}");
    }
    let _ = writeln!(text, "\n== System calls, inclusive (kernel work done inside each call)");
    for (name, pct) in &profile.syscalls {
        let _ = writeln!(text, "{pct:6.2}%  {name}");
    }
    let _ = writeln!(text, "\n== Sluice's functions (lb_userspace), inclusive");
    for (sym, pct) in &profile.sluice {
        let _ = writeln!(text, "{pct:6.2}%  {sym}");
    }
    let _ =
        writeln!(text, "\n== Who calls malloc/free (first frame above the allocator; share of all samples)");
    for (name, pct) in &profile.alloc_callers {
        let _ = writeln!(text, "{pct:6.2}%  {name}");
    }
    let _ = writeln!(text, "\n== Who calls memcpy/memmove/memset (likewise)");
    for (name, pct) in &profile.copy_callers {
        let _ = writeln!(text, "{pct:6.2}%  {name}");
    }
    profile.meta.insert("tool".into(), "perf".into());
    profile.meta.insert("scenario".into(), scenario.into());
    profile.meta.insert("samples".into(), samples.to_string());
    profile.meta.insert("busy".into(), format!("{busy:.3}"));
    profile.meta.insert("rps".into(), format!("{:.0}", outcome.rps));
    profile.meta.insert("seconds".into(), seconds.to_string());
    profile.meta.insert("rooted".into(), format!("{:.3}", rooted as f64 / samples.max(1) as f64));
    let flamegraph =
        Some(flamegraph_svg(&stacks, &format!("Sluice under {scenario}: {samples} samples (cpu-clock)")));
    Ok(Artifacts { profile, text, flamegraph })
}

/// glibc's allocator (C symbols only: Rust paths contain `::`, kernel frames end in `_[k]`).
fn is_allocator(frame: &str) -> bool {
    !frame.contains("::")
        && !frame.ends_with("_[k]")
        && (frame.contains("malloc")
            || frame.contains("free")
            || frame.starts_with("_int_")
            || frame.starts_with("unlink_chunk")
            || frame.contains("realloc")
            || frame.contains("calloc")
            || frame.starts_with("tcache"))
}

fn is_copy(frame: &str) -> bool {
    !frame.contains("::")
        && !frame.ends_with("_[k]")
        && (frame.starts_with("__mem") || frame.starts_with("mem"))
}

/// Rust's allocation glue between a caller and glibc.
fn is_alloc_glue(frame: &str) -> bool {
    ["__rust_", "__rdl_", "alloc::alloc::", "alloc::raw_vec::", "<alloc::alloc::Global", "_RNv"]
        .iter()
        .any(|p| frame.starts_with(p))
}

/// For the samples whose leaf frame satisfies `leaf`, the first frame above it that is neither
/// `leaf` nor allocation glue, with its share of all samples; the top 10.
fn callers(stacks: &[(String, u64)], leaf: fn(&str) -> bool) -> Vec<(String, f64)> {
    let total = stacks.iter().map(|(_, n)| n).sum::<u64>().max(1) as f64;
    let mut by_caller: BTreeMap<String, u64> = BTreeMap::new();
    for (stack, n) in stacks {
        let frames: Vec<&str> = stack.split(';').collect();
        if !frames.last().is_some_and(|f| leaf(f)) {
            continue;
        }
        let caller = frames
            .iter()
            .rev()
            .find(|f| !leaf(f) && !is_alloc_glue(f))
            .map_or("?".to_owned(), |f| (*f).to_owned());
        *by_caller.entry(caller).or_default() += n;
    }
    let mut rows: Vec<(String, f64)> =
        by_caller.into_iter().map(|(name, n)| (name, n as f64 * 100.0 / total)).collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    rows.truncate(10);
    rows
}

/// `perf report --no-children --sort dso,sym -t '\t'`: (dso, symbol, percent).
fn parse_self(text: &str) -> Vec<(String, String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let mut f = l.split('\t');
            let pct = f.next()?.trim().strip_suffix('%')?.parse().ok()?;
            let dso = f.next()?.trim().to_owned();
            let sym = f.next()?.trim();
            let sym = sym.get(4..).unwrap_or(sym).trim().to_owned(); // drop "[k] " / "[.] "
            Some((dso, sym, pct))
        })
        .collect()
}

/// `perf report --children --sort sym -t '\t'`: (symbol, inclusive percent).
fn parse_children(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let mut f = l.split('\t');
            let pct = f.next()?.trim().strip_suffix('%')?.parse().ok()?;
            let _self = f.next()?;
            let sym = f.next()?.trim();
            Some((sym.get(4..).unwrap_or(sym).trim().to_owned(), pct))
        })
        .collect()
}

/// The syscall a kernel entry symbol stands for (`__x64_sys_writev`, `do_writev`, ...).
fn syscall_name(sym: &str) -> Option<String> {
    if let Some(name) = sym.strip_prefix("__x64_sys_") {
        return Some(name.to_owned());
    }
    // Entry points that the compiler folded into their caller show up under their helper.
    let helpers = [
        ("do_writev", "writev"),
        ("do_readv", "readv"),
        ("ksys_write", "write"),
        ("ksys_read", "read"),
        ("__sys_sendto", "sendto"),
        ("__sys_recvfrom", "recvfrom"),
        ("__sys_sendmsg", "sendmsg"),
        ("__sys_recvmsg", "recvmsg"),
        ("do_epoll_wait", "epoll_wait"),
        ("do_epoll_ctl", "epoll_ctl"),
        ("do_accept", "accept4"),
        ("__x64_sys_close", "close"),
        ("do_futex", "futex"),
    ];
    helpers.iter().find(|(helper, _)| sym == *helper).map(|(_, name)| (*name).to_owned())
}

/// Groups a symbol's self cost by where its code comes from.
fn component(dso: &str, sym: &str) -> String {
    if dso.contains("kernel") || dso.starts_with('[') {
        return "kernel (TCP/IP over loopback, syscalls, scheduling)".into();
    }
    if dso.starts_with("libc") || dso.starts_with("ld-linux") {
        let allocator = ["malloc", "free", "_int_", "unlink_chunk", "realloc", "calloc", "tcache", "arena"];
        if allocator.iter().any(|a| sym.contains(a)) {
            return "glibc malloc/free".into();
        }
        if sym.starts_with("__mem") || sym.starts_with("mem") {
            return "glibc memcpy/memmove/memset".into();
        }
        return "glibc (syscall wrappers, other)".into();
    }
    if sym.starts_with("ring_core_") {
        return "ring (crypto)".into();
    }
    let path = sym.trim_start_matches(['<', '&', '*']).trim_start_matches("dyn ").trim_start_matches("mut ");
    let krate = path.split("::").next().unwrap_or(path);
    match krate {
        "lb_userspace" => "Sluice (lb_userspace)".into(),
        "core" | "alloc" | "std" => "Rust core/alloc/std (generic code inlined from callers)".into(),
        "hyper" | "hyper_util" | "tokio" | "rustls" | "ring" | "http" | "httparse" | "bytes" | "h2"
        | "tokio_rustls" => krate.replace('_', "-"),
        k if k.starts_with("tracing") => "tracing".into(),
        k if k.starts_with("futures") => "futures".into(),
        _ if dso.contains("sluice") => "sluice binary, other crates".into(),
        _ => format!("other ({dso})"),
    }
}

/// `perf script -F comm,tid,ip,sym`: stacks folded root-first, `;`-joined, with their counts.
/// Stacks the unwinder could not follow to the thread's start are put under `[truncated]`.
fn fold(script: &str) -> Vec<(String, u64)> {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for block in script.split("\n\n") {
        let mut lines = block.lines().filter(|l| !l.trim().is_empty());
        let Some(header) = lines.next() else { continue };
        let thread = header.split_whitespace().next().unwrap_or("?").to_owned();
        let mut frames: Vec<String> = lines
            .filter_map(|l| {
                let (addr, sym) = l.trim().split_once(' ')?;
                let sym = sym.trim();
                // Kernel addresses are in the top half: marked `_[k]`, as flame graphs do.
                Some(if addr.starts_with("ffffffff") && sym != "[unknown]" {
                    format!("{sym}_[k]")
                } else {
                    sym.to_owned()
                })
            })
            .filter(|s| s != "[unknown]")
            .collect();
        let rooted = frames.last().is_some_and(|f| {
            ["clone3", "clone", "_start", "start_thread", "__libc_start_main"]
                .iter()
                .any(|r| f.starts_with(r))
        });
        frames.reverse();
        let mut stack = vec![if rooted { thread } else { "[truncated]".to_owned() }];
        stack.extend(frames);
        *counts.entry(stack.join(";")).or_default() += 1;
    }
    counts.into_iter().collect()
}

/// A flame graph (root at the bottom), plain SVG: one rectangle per frame, width proportional
/// to samples, full name and share in each rectangle's title.
fn flamegraph_svg(stacks: &[(String, u64)], title: &str) -> String {
    #[derive(Default)]
    struct Node {
        count: u64,
        children: BTreeMap<String, Node>,
    }
    let mut root = Node::default();
    for (stack, n) in stacks {
        let mut node = &mut root;
        node.count += n;
        for frame in stack.split(';') {
            node = node.children.entry(frame.to_owned()).or_default();
            node.count += n;
        }
    }
    fn depth(node: &Node) -> usize {
        1 + node.children.values().map(depth).max().unwrap_or(0)
    }
    let (width, row, top) = (1200.0, 16.0, 40.0);
    let levels = depth(&root).min(80);
    let height = top + row * levels as f64 + 10.0;
    let total = root.count.max(1) as f64;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" font-family=\"monospace\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"#fdfdf8\"/>\n\
         <text x=\"10\" y=\"20\" font-size=\"14\" font-family=\"sans-serif\">{}</text>\n\
         <text x=\"10\" y=\"34\" font-size=\"11\" font-family=\"sans-serif\" fill=\"#555\">width = share of \
         samples; hover for names; orange: kernel (_[k]), green: Sluice (lb_userspace), red: glibc \
         malloc/free, yellow: other user space; [truncated]: stacks not unwound to the thread start</text>\n",
        xml_escape(title)
    );
    fn draw(
        svg: &mut String,
        name: &str,
        node: &Node,
        x: f64,
        level: usize,
        geometry: (f64, f64, f64, f64, usize),
    ) {
        let (width, row, height, total, levels) = geometry;
        if level >= levels {
            return;
        }
        let w = node.count as f64 / total * (width - 20.0);
        if w < 0.3 {
            return;
        }
        let y = height - 10.0 - row * (level as f64 + 1.0);
        let hash = name.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
        // Kernel orange, Sluice's own code green, glibc's allocator red, the rest yellow.
        let fill = if name.ends_with("_[k]") {
            format!("rgb(235,{},50)", 120 + hash % 50)
        } else if name.contains("lb_userspace::") {
            format!("rgb({},200,{})", 90 + hash % 50, 80 + hash % 40)
        } else if is_allocator(name) {
            format!("rgb(220,{},{})", 60 + hash % 40, 60 + hash % 40)
        } else {
            format!("rgb(240,{},{})", 190 + hash % 50, 60 + hash % 50)
        };
        let pct = node.count as f64 / total * 100.0;
        let label_chars = ((w - 4.0) / 6.6).floor() as usize;
        let label = if label_chars >= 3 {
            let short: String = name.chars().take(label_chars).collect();
            if short.len() < name.len() && label_chars > 2 {
                format!("{}..", name.chars().take(label_chars - 2).collect::<String>())
            } else {
                short
            }
        } else {
            String::new()
        };
        let _ = writeln!(
            svg,
            "<g><title>{} ({} samples, {pct:.2}%)</title><rect x=\"{:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" \
             height=\"{:.1}\" fill=\"{fill}\" stroke=\"#fff\" stroke-width=\"0.5\"/>{}</g>",
            xml_escape(name),
            node.count,
            x + 10.0,
            row - 1.0,
            if label.is_empty() {
                String::new()
            } else {
                format!(
                    "<text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                    x + 12.0,
                    y + row - 4.0,
                    xml_escape(&label)
                )
            }
        );
        let mut child_x = x;
        let mut children: Vec<(&String, &Node)> = node.children.iter().collect();
        children.sort_by_key(|c| std::cmp::Reverse(c.1.count));
        for (child_name, child) in children {
            draw(svg, child_name, child, child_x, level + 1, geometry);
            child_x += child.count as f64 / total * (width - 20.0);
        }
    }
    draw(&mut svg, "all", &root, 0.0, 0, (width, row, height, total, levels));
    svg.push_str("</svg>\n");
    svg
}

pub fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// System calls of `peer`'s processes per request while `load` runs, from perf's syscall
/// tracepoints (counted in the kernel; nothing is traced to user space).
fn census(
    lab: &mut Lab,
    peer: Peer,
    load: Load,
    addr: SocketAddr,
    seconds: u64,
) -> anyhow::Result<Vec<(String, f64)>> {
    const CALLS: &[&str] = &[
        "read",
        "readv",
        "recvfrom",
        "recvmsg",
        "write",
        "writev",
        "sendto",
        "sendmsg",
        "epoll_wait",
        "epoll_pwait",
        "epoll_ctl",
        "accept4",
        "close",
        "futex",
        "setsockopt",
        "getsockopt",
        "ioctl",
    ];
    let pids = lab.proc(peer).pids().iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let mut events = vec!["raw_syscalls:sys_enter".to_owned()];
    events.extend(CALLS.iter().map(|c| format!("syscalls:sys_enter_{c}")));
    let events = events.join(",");
    // perf stat runs for the load's whole duration plus a margin, so every request is counted.
    let total = (seconds + 4).to_string();
    let dir = lab.dir().to_path_buf();
    let handle = {
        let command = perf(&["stat", "-x", ",", "-e", &events, "-p", &pids, "--", "sleep", &total]);
        std::thread::spawn(move || run_bounded(command, Duration::from_secs(seconds + 30)))
    };
    std::thread::sleep(Duration::from_millis(500));
    let outcome = load::run(load, addr, seconds, &dir);
    let (_, stat) = handle.join().map_err(|_| anyhow::anyhow!("the perf stat thread panicked"))??;
    let outcome = outcome?;
    lab.check_running()?;
    let mut rows = Vec::new();
    for line in stat.lines() {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 3 {
            continue;
        }
        let Ok(count) = f[0].parse::<f64>() else { continue };
        let name = match f[2].strip_prefix("syscalls:sys_enter_") {
            Some(call) => call.to_owned(),
            None if f[2] == "raw_syscalls:sys_enter" => "all".to_owned(),
            None => continue,
        };
        let per_request = count / outcome.requests.max(1) as f64;
        if name == "all" || per_request >= 0.005 {
            rows.push((name, per_request));
        }
    }
    Ok(rows)
}

/// With callgrind: a second Sluice instance under valgrind on its own port, a light bounded
/// load (valgrind runs the program some 50 times slower), then the top functions by
/// instructions executed. User space only: the kernel's share is not seen.
fn callgrind_profile(
    lab: &mut Lab,
    sluice_bin: &Path,
    scenario: &str,
    load: Load,
    seconds: u64,
) -> anyhow::Result<Artifacts> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let config = lab.sluice_config_on_port(port)?;
    let out: PathBuf = lab.dir().join("callgrind.out");
    let args = [
        "--tool=callgrind".to_owned(),
        "--instr-atstart=no".to_owned(),
        format!("--callgrind-out-file={}", out.display()),
        sluice_bin.display().to_string(),
        "run".into(),
        "--no-xdp".into(),
        "--config".into(),
        config.display().to_string(),
    ]
    .map(std::ffi::OsString::from);
    let mut proc = Proc::spawn("sluice under callgrind", PROXY_CORE, "valgrind", &args)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(60);
    while lb_tests::http::http_get(addr, "/").map(|r| r.status).ok() != Some(200) {
        proc.check_running()?;
        if Instant::now() > deadline {
            bail!("sluice under callgrind did not answer within 60s:\n{}", proc.output());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Only the serving is measured, not the start-up.
    run_bounded(
        {
            let mut c = Command::new("callgrind_control");
            c.args(["-i", "on", &proc.pid().to_string()]);
            c
        },
        Duration::from_secs(30),
    )?;
    let light = match load {
        Load::Wrk { tls, close, access, .. } => Load::Wrk { conns: 10, tls, close, access },
        Load::H2load { tls, .. } => Load::H2load { conns: 4, streams: 4, tls },
        Load::FullHandshakes { .. } => Load::FullHandshakes { clients: 200 },
    };
    let outcome = load::run(light, addr, seconds, lab.dir())?;
    // SIGTERM: valgrind writes the profile as the program exits, slowly.
    proc.stop_within(Duration::from_secs(60));
    let (annotate, _) = run_bounded(
        {
            let mut c = Command::new("callgrind_annotate");
            c.arg("--inclusive=no").arg(&out);
            c
        },
        Duration::from_secs(120),
    )?;
    let _ = std::fs::remove_file(&out);
    let mut profile = Profile::default();
    let mut components: BTreeMap<String, f64> = BTreeMap::new();
    for line in annotate.lines() {
        // " 3,209,446,046 (25.81%)  ???:_int_malloc [/usr/lib/x86_64-linux-gnu/libc.so.6]"
        let Some((_, rest)) = line.split_once('(') else { continue };
        let Some((pct, rest)) = rest.split_once("%)") else { continue };
        let Ok(pct) = pct.trim().parse::<f64>() else { continue };
        let rest = rest.trim();
        if rest.starts_with("PROGRAM TOTALS") {
            continue;
        }
        let (func, object) = match rest.rsplit_once(" [") {
            Some((f, o)) => (f, o.trim_end_matches(']')),
            None => (rest, ""),
        };
        let func = func.split_once(':').map(|(_, f)| f).unwrap_or(func).to_owned();
        let dso = Path::new(object).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        *components.entry(component(&dso, &func)).or_default() += pct;
        if profile.symbols.len() < 40 {
            profile.symbols.push((func, pct));
        }
    }
    let mut components: Vec<(String, f64)> = components.into_iter().collect();
    components.sort_by(|a, b| b.1.total_cmp(&a.1));
    profile.components = components;
    let mut text = format!(
        "Profile of Sluice (1 worker) under a light `{scenario}` load ({}, 10 connections) with \
         valgrind --tool=callgrind: instructions executed in user space ({:.0} requests/s under valgrind).\n",
        load.describe(),
        outcome.rps
    );
    text.push_str(&annotate);
    profile.meta.insert("tool".into(), "callgrind".into());
    profile.meta.insert("scenario".into(), scenario.into());
    profile.meta.insert("rps".into(), format!("{:.0}", outcome.rps));
    profile.meta.insert("seconds".into(), seconds.to_string());
    Ok(Artifacts { profile, text, flamegraph: None })
}
