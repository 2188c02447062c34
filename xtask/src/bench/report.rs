//! Results: the runs (stored as TSV beside the report), their medians, the tables printed and
//! written to docs/BENCHMARKS.md, the machine-readable lines, and the SVG chart.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use super::{
    peers::Peer,
    profile::{Profile, xml_escape},
    proxy::{Goal, SUITES, Suite},
};

/// One measured run.
#[derive(Clone, Debug)]
pub struct Run {
    pub round: u32,
    pub scenario: String,
    pub peer: Peer,
    pub requests: u64,
    pub seconds: f64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
    /// CPU time (user + system) of the peer's processes per request, microseconds. For
    /// `direct`, the backend's.
    pub cpu_us_per_req: f64,
    /// The user-space and kernel parts of `cpu_us_per_req`.
    pub user_us_per_req: f64,
    pub sys_us_per_req: f64,
    /// The peer's CPU time over the run's wall time (1.0 = one core busy).
    pub peer_cpu: f64,
    /// How busy each core was (all processes), 0..1.
    pub core0: f64,
    pub core1: f64,
    /// CPU used by processes other than the bench's (other sessions, kernel threads), in cores.
    pub other: f64,
    /// TCP segments sent on the machine per request (the whole path: client, proxy, backend).
    pub segs_per_req: f64,
    /// All CPU time spent on the proxy's core (the proxy, and the kernel's softirq thread and
    /// interrupts there) per request, microseconds; NaN for `direct`.
    pub core0_us_per_req: f64,
    /// Kernel work in interrupt and softirq context (whichever process it was charged to) and
    /// in the softirq threads: network processing above all; in cores, both cores together.
    pub softirq: f64,
}

const COLUMNS: &str = "round\tscenario\tpeer\trequests\tseconds\trps\tp50_ms\tp99_ms\terrors\tcpu_us_per_req\t\
                       peer_cpu\tcore0_busy\tcore1_busy\tother_cores\tsegs_per_req\tuser_us_per_req\tsys_us_per_req\tcore0_us_per_req\tsoftirq_cores";

/// The runs of one suite and what the machine was.
#[derive(Clone, Debug, Default)]
pub struct Results {
    pub meta: BTreeMap<String, String>,
    pub runs: Vec<Run>,
}

impl Results {
    pub fn to_tsv(&self) -> String {
        let mut out = String::from(
            "# One line per measured run; written by `cargo xtask bench`, read back to render docs/BENCHMARKS.md.\n",
        );
        for (k, v) in &self.meta {
            let _ = writeln!(out, "# {k}={}", v.replace('\n', " "));
        }
        let _ = writeln!(out, "{COLUMNS}");
        for r in &self.runs {
            let _ = writeln!(
                out,
                "{}\t{}\t{}\t{}\t{:.3}\t{:.1}\t{:.3}\t{:.3}\t{}\t{:.2}\t{:.3}\t{:.3}\t{:.3}\t{:.3}\t{:.2}\t{:.2}\t{:.2}\t{:.2}\t{:.3}",
                r.round,
                r.scenario,
                r.peer.name(),
                r.requests,
                r.seconds,
                r.rps,
                r.p50_ms,
                r.p99_ms,
                r.errors,
                r.cpu_us_per_req,
                r.peer_cpu,
                r.core0,
                r.core1,
                r.other,
                r.segs_per_req,
                r.user_us_per_req,
                r.sys_us_per_req,
                r.core0_us_per_req,
                r.softirq
            );
        }
        out
    }

    pub fn from_tsv(text: &str) -> Results {
        let mut results = Results::default();
        for line in text.lines() {
            if let Some(meta) = line.strip_prefix("# ") {
                if let Some((k, v)) = meta.split_once('=') {
                    results.meta.insert(k.to_owned(), v.to_owned());
                }
                continue;
            }
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() < 17 || f[0] == "round" {
                continue;
            }
            let n = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
            let Some(peer) = Peer::parse(f[2]) else { continue };
            results.runs.push(Run {
                round: f[0].parse().unwrap_or(0),
                scenario: f[1].to_owned(),
                peer,
                requests: f[3].parse().unwrap_or(0),
                seconds: n(4),
                rps: n(5),
                p50_ms: n(6),
                p99_ms: n(7),
                errors: f[8].parse().unwrap_or(0),
                cpu_us_per_req: n(9),
                peer_cpu: n(10),
                core0: n(11),
                core1: n(12),
                other: n(13),
                segs_per_req: n(14),
                user_us_per_req: n(15),
                sys_us_per_req: n(16),
                core0_us_per_req: n(17),
                softirq: n(18),
            });
        }
        results
    }
}

/// Median, minimum and maximum of one metric over the rounds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    fn of(values: impl Iterator<Item = f64>) -> Spread {
        let mut v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Spread { median: f64::NAN, min: f64::NAN, max: f64::NAN };
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 };
        Spread { median, min: v[0], max: v[v.len() - 1] }
    }
}

/// One peer in one scenario, over the rounds.
#[derive(Clone, Debug)]
pub struct Summary {
    pub peer: Peer,
    pub rps: Spread,
    pub p50: Spread,
    pub p99: Spread,
    pub cpu_us: Spread,
    pub user_us: Spread,
    pub sys_us: Spread,
    pub peer_cpu: Spread,
    pub core1: Spread,
    pub other: Spread,
    pub segs: Spread,
    pub core0_us: Spread,
    pub softirq: Spread,
    pub errors: u64,
}

pub fn summarize(runs: &[Run], scenario: &str) -> Vec<Summary> {
    Peer::ALL
        .into_iter()
        .filter_map(|peer| {
            let mine: Vec<&Run> = runs.iter().filter(|r| r.scenario == scenario && r.peer == peer).collect();
            if mine.is_empty() {
                return None;
            }
            let s = |f: fn(&Run) -> f64| Spread::of(mine.iter().map(|r| f(r)));
            Some(Summary {
                peer,
                rps: s(|r| r.rps),
                p50: s(|r| r.p50_ms),
                p99: s(|r| r.p99_ms),
                cpu_us: s(|r| r.cpu_us_per_req),
                user_us: s(|r| r.user_us_per_req),
                sys_us: s(|r| r.sys_us_per_req),
                peer_cpu: s(|r| r.peer_cpu),
                core1: s(|r| r.core1),
                other: s(|r| r.other),
                segs: s(|r| r.segs_per_req),
                core0_us: s(|r| r.core0_us_per_req),
                softirq: s(|r| r.softirq),
                errors: mine.iter().map(|r| r.errors).sum(),
            })
        })
        .collect()
}

fn find(summaries: &[Summary], peer: Peer) -> Option<&Summary> {
    summaries.iter().find(|s| s.peer == peer)
}

/// Sluice's median over `other`'s median.
fn ratio(summaries: &[Summary], other: Peer, metric: fn(&Summary) -> f64) -> Option<f64> {
    let sluice = metric(find(summaries, Peer::Sluice)?);
    let other = metric(find(summaries, other)?);
    (other > 0.0 && sluice.is_finite()).then(|| sluice / other)
}

pub fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    let n = x.round() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `28.4 (14.1+14.3)`: CPU µs per request, total (user + kernel), medians.
fn cpu_split(s: &Summary) -> String {
    format!("{:.1} ({:.1}+{:.1})", s.cpu_us.median, s.user_us.median, s.sys_us.median)
}

fn us(x: f64) -> String {
    if x.is_finite() { format!("{x:.1}") } else { "–".into() }
}

fn ms(x: f64) -> String {
    if !x.is_finite() {
        "n/a".into()
    } else if x < 10.0 {
        format!("{x:.2}")
    } else if x < 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.0}")
    }
}

fn pct(x: f64) -> String {
    if x.is_finite() { format!("{:.0}%", x * 100.0) } else { "n/a".into() }
}

fn short(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else if x >= 10_000.0 {
        format!("{:.1}k", x / 1000.0)
    } else if x >= 1000.0 {
        format!("{:.2}k", x / 1000.0)
    } else if x >= 10.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

/// A goal's verdict from the medians: (text, met).
fn verdict(goal: Goal, summaries: &[Summary]) -> Option<(String, bool)> {
    let sluice = find(summaries, Peer::Sluice)?;
    let nginx = find(summaries, Peer::Nginx)?;
    let rps_ok = sluice.rps.median >= nginx.rps.median;
    let rps_ratio = sluice.rps.median / nginx.rps.median;
    Some(match goal {
        Goal::KeepAlive => {
            let p99_ok = sluice.p99.median <= nginx.p99.median;
            let text = format!(
                "req/s {} vs {} ({:.2}×): {}; p99 {} ms vs {} ms: {}",
                thousands(sluice.rps.median),
                thousands(nginx.rps.median),
                rps_ratio,
                if rps_ok { "met" } else { "short" },
                ms(sluice.p99.median),
                ms(nginx.p99.median),
                if p99_ok { "met" } else { "short" }
            );
            (text, rps_ok && p99_ok)
        }
        Goal::Handshake => (
            format!(
                "new handshakes/s {} vs {} ({:.2}×): {}",
                thousands(sluice.rps.median),
                thousands(nginx.rps.median),
                rps_ratio,
                if rps_ok { "met" } else { "short" }
            ),
            rps_ok,
        ),
        Goal::MatchHaproxy => {
            let haproxy = find(summaries, Peer::Haproxy)?;
            let rps_ok = sluice.rps.median >= haproxy.rps.median;
            let cpu_ok = sluice.cpu_us.median <= haproxy.cpu_us.median;
            let text = format!(
                "vs HAProxy: req/s {} vs {} ({:.2}×): {}; CPU per request {} µs vs {} µs: {}",
                thousands(sluice.rps.median),
                thousands(haproxy.rps.median),
                sluice.rps.median / haproxy.rps.median,
                if rps_ok { "met" } else { "short" },
                us(sluice.cpu_us.median),
                us(haproxy.cpu_us.median),
                if cpu_ok { "met" } else { "short" }
            );
            (text, rps_ok && cpu_ok)
        }
        Goal::CpuShareOfNginx(share) => {
            let ratio = sluice.cpu_us.median / nginx.cpu_us.median;
            let ok = ratio <= share;
            let text = format!(
                "CPU per request {} µs vs nginx's {} µs ({ratio:.2}×, goal {share}×): {}",
                us(sluice.cpu_us.median),
                us(nginx.cpu_us.median),
                if ok { "met" } else { "short" }
            );
            (text, ok)
        }
    })
}

/// The table, ratios, goal verdicts and `bench_*=` lines printed at the end of a run.
pub fn print(suite: Suite, results: &Results) {
    println!();
    println!(
        "{:<18} {:<8} {:>26} {:>8} {:>22} {:>20} {:>8} {:>7} {:>7} {:>6} {:>7}",
        "scenario",
        "peer",
        "req/s median (min-max)",
        "p50 ms",
        "p99 ms median (min-max)",
        "CPU µs/req (usr+sys)",
        "core0 µs",
        "peer%",
        "client%",
        "segs/r",
        "errors"
    );
    let mut lines = Vec::new();
    for scenario in suite.scenarios() {
        let summaries = summarize(&results.runs, scenario.name);
        for s in &summaries {
            println!(
                "{:<18} {:<8} {:>26} {:>8} {:>22} {:>20} {:>8} {:>7} {:>7} {:>6.1} {:>7}",
                scenario.name,
                s.peer.name(),
                format!("{} ({}-{})", thousands(s.rps.median), thousands(s.rps.min), thousands(s.rps.max)),
                ms(s.p50.median),
                format!("{} ({}-{})", ms(s.p99.median), ms(s.p99.min), ms(s.p99.max)),
                cpu_split(s),
                us(s.core0_us.median),
                pct(s.peer_cpu.median),
                pct(s.core1.median),
                s.segs.median,
                s.errors
            );
            let prefix = format!("bench_{}_{}", scenario.name, s.peer.name());
            lines.push(format!("{prefix}_rps={:.0}", s.rps.median));
            lines.push(format!("{prefix}_p50_ms={:.3}", s.p50.median));
            lines.push(format!("{prefix}_p99_ms={:.3}", s.p99.median));
            lines.push(format!("{prefix}_cpu_us_per_req={:.2}", s.cpu_us.median));
        }
        for (other, label) in [(Peer::Nginx, "nginx"), (Peer::Haproxy, "haproxy")] {
            if let Some(r) = ratio(&summaries, other, |s| s.rps.median) {
                lines.push(format!("bench_{}_ratio_{label}={r:.3}", scenario.name));
            }
            if let Some(r) = ratio(&summaries, other, |s| s.cpu_us.median) {
                lines.push(format!("bench_{}_cpu_ratio_{label}={r:.3}", scenario.name));
            }
        }
    }
    println!("\nSluice / nginx and Sluice / HAProxy (medians):");
    for scenario in suite.scenarios() {
        let summaries = summarize(&results.runs, scenario.name);
        let r =
            |p, f: fn(&Summary) -> f64| ratio(&summaries, p, f).map_or("n/a".into(), |r| format!("{r:.2}"));
        println!(
            "  {:<18} req/s {} / {}   CPU per request {} / {}   p99 {} / {}",
            scenario.name,
            r(Peer::Nginx, |s| s.rps.median),
            r(Peer::Haproxy, |s| s.rps.median),
            r(Peer::Nginx, |s| s.cpu_us.median),
            r(Peer::Haproxy, |s| s.cpu_us.median),
            r(Peer::Nginx, |s| s.p99.median),
            r(Peer::Haproxy, |s| s.p99.median),
        );
    }
    println!("\nGoals (one worker, against nginx):");
    for scenario in suite.scenarios() {
        if let Some(goal) = scenario.goal
            && let Some((text, met)) = verdict(goal, &summarize(&results.runs, scenario.name))
        {
            println!("  {:<18} {} -> {}", scenario.name, text, if met { "MET" } else { "NOT MET" });
        }
    }
    println!();
    for line in lines {
        println!("{line}");
    }
}

const COLORS: [(Peer, &str); 4] = [
    (Peer::Direct, "#9e9e9e"),
    (Peer::Sluice, "#1f77b4"),
    (Peer::Nginx, "#2ca02c"),
    (Peer::Haproxy, "#ff7f0e"),
];

fn color(peer: Peer) -> &'static str {
    COLORS.iter().find(|(p, _)| *p == peer).map_or("#000", |(_, c)| c)
}

/// A "nice" axis maximum and step for `max` (1, 2, 2.5 or 5 times a power of ten).
fn axis(max: f64) -> (f64, f64) {
    if max <= 0.0 || !max.is_finite() {
        return (1.0, 0.25);
    }
    let raw = max / 4.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * magnitude).find(|s| *s >= raw).unwrap_or(raw);
    ((max / step).ceil() * step, step)
}

/// A chart row: its label, the metric, whether `direct` is shown.
type ChartRow = (&'static str, fn(&Summary) -> Spread, bool);

/// The chart: one panel per scenario (each with its own scale), requests/s on top and the
/// proxy's CPU time per request below; bars are medians, whiskers span min to max.
pub fn svg(suite: Suite, results: &Results) -> String {
    let scenarios = suite.scenarios();
    let (panel_w, panel_h, gap, left, top) = (250.0, 170.0, 40.0, 60.0, 60.0);
    let width = left + scenarios.len() as f64 * (panel_w + gap) + 10.0;
    let height = top + 2.0 * (panel_h + 70.0) + 20.0;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>\n\
         <text x=\"{left}\" y=\"22\" font-size=\"15\" font-weight=\"bold\">{}</text>\n\
         <text x=\"{left}\" y=\"40\" fill=\"#555\">median of {} rounds, whiskers min–max; 1 worker each, proxy on core 0, \
         load and backend on core 1</text>\n",
        xml_escape(suite.title()),
        results.meta.get("rounds").map_or("?", String::as_str)
    );
    let mut x = left;
    // Legend.
    let mut lx = width - 330.0;
    for (peer, c) in COLORS {
        if peer == Peer::Direct && !suite.has_direct() {
            continue;
        }
        let _ = writeln!(
            out,
            "<rect x=\"{lx}\" y=\"12\" width=\"12\" height=\"12\" fill=\"{c}\"/><text x=\"{}\" y=\"22\">{}</text>",
            lx + 16.0,
            peer.name()
        );
        lx += 80.0;
    }
    for scenario in &scenarios {
        let summaries = summarize(&results.runs, scenario.name);
        let rows: [ChartRow; 2] =
            [("requests/s", |s| s.rps, true), ("proxy CPU µs per request", |s| s.cpu_us, false)];
        for (row, (label, metric, with_direct)) in rows.iter().enumerate() {
            let y0 = top + row as f64 * (panel_h + 70.0);
            let shown: Vec<&Summary> =
                summaries.iter().filter(|s| *with_direct || s.peer.is_proxy()).collect();
            let max = shown.iter().map(|s| metric(s).max).fold(0.0, f64::max);
            let (axis_max, step) = axis(max * 1.05);
            let _ = writeln!(
                out,
                "<text x=\"{x}\" y=\"{}\" font-weight=\"bold\">{}</text><text x=\"{x}\" y=\"{}\" fill=\"#555\">{label}</text>",
                y0 + 4.0,
                xml_escape(scenario.name),
                y0 + 18.0
            );
            let base = y0 + 30.0 + panel_h;
            let mut tick = 0.0;
            while tick <= axis_max + step / 2.0 {
                let y = base - tick / axis_max * panel_h;
                let _ = writeln!(
                    out,
                    "<line x1=\"{x}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#e4e4e4\"/>\
                     <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#777\" font-size=\"10\">{}</text>",
                    x + panel_w,
                    x - 4.0,
                    y + 3.0,
                    short(tick)
                );
                tick += step;
            }
            let slot = panel_w / shown.len().max(1) as f64;
            for (i, s) in shown.iter().enumerate() {
                let spread = metric(s);
                if !spread.median.is_finite() {
                    continue;
                }
                let bw = slot * 0.7;
                let bx = x + i as f64 * slot + slot * 0.15;
                let h = spread.median / axis_max * panel_h;
                let (ymin, ymax) =
                    (base - spread.min / axis_max * panel_h, base - spread.max / axis_max * panel_h);
                let cx = bx + bw / 2.0;
                let _ = writeln!(
                    out,
                    "<rect x=\"{bx:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{h:.1}\" fill=\"{}\"><title>{} {}: {} \
                     (min {}, max {})</title></rect>\
                     <line x1=\"{cx:.1}\" x2=\"{cx:.1}\" y1=\"{ymin:.1}\" y2=\"{ymax:.1}\" stroke=\"#222\"/>\
                     <line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{ymax:.1}\" y2=\"{ymax:.1}\" stroke=\"#222\"/>\
                     <line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{ymin:.1}\" y2=\"{ymin:.1}\" stroke=\"#222\"/>\
                     <text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{}</text>\
                     <text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\" fill=\"#333\">{}</text>",
                    base - h,
                    color(s.peer),
                    s.peer.name(),
                    label,
                    short(spread.median),
                    short(spread.min),
                    short(spread.max),
                    cx - 4.0,
                    cx + 4.0,
                    cx - 4.0,
                    cx + 4.0,
                    ymax - 4.0,
                    short(spread.median),
                    base + 13.0,
                    s.peer.name()
                );
            }
            let _ = writeln!(
                out,
                "<line x1=\"{x}\" x2=\"{}\" y1=\"{base:.1}\" y2=\"{base:.1}\" stroke=\"#444\"/>",
                x + panel_w
            );
        }
        x += panel_w + gap;
    }
    out.push_str("</svg>\n");
    out
}

/// docs/BENCHMARKS.md from every suite whose runs are stored in `bench_dir`.
pub fn markdown(bench_dir: &Path) -> String {
    let mut suites = Vec::new();
    for suite in SUITES {
        if let Ok(text) = std::fs::read_to_string(bench_dir.join(format!("{}-runs.tsv", suite.name()))) {
            let profile = std::fs::read_to_string(bench_dir.join(format!("{}-profile.tsv", suite.name())))
                .ok()
                .map(|t| Profile::from_tsv(&t));
            suites.push((suite, Results::from_tsv(&text), profile));
        }
    }
    let mut md = String::from(
        "# Benchmarks\n\n\
         Generated by `cargo xtask bench l7`, `cargo xtask bench tls` and `cargo xtask bench reload` (the\n\
         code is in [`xtask/src/bench/`](../xtask/src/bench)); each run rewrites this file from the runs\n\
         stored in [`docs/bench/`](bench). Do not edit it by hand: rerun the bench.\n\n",
    );
    md.push_str(METHOD);
    // The goals first: what the numbers must reach.
    md.push_str("\n## Goals\n\nOn one worker: keep-alive requests/s at least nginx's with a p99 no worse than nginx's, and a\n\
                 new-handshake rate at least nginx's. Medians over the rounds.\n\n\
                 | scenario | Sluice vs nginx | verdict |\n| --- | --- | --- |\n");
    for (suite, results, _) in &suites {
        for scenario in suite.scenarios() {
            if let Some(goal) = scenario.goal
                && let Some((text, met)) = verdict(goal, &summarize(&results.runs, scenario.name))
            {
                let _ = writeln!(
                    md,
                    "| `{}` ({}) | {} | {} |",
                    scenario.name,
                    scenario.title,
                    text,
                    if met { "**met**" } else { "**not met**" }
                );
            }
        }
    }
    if suites.is_empty() {
        md.push_str("\nNo results yet: run `cargo xtask bench l7` and `cargo xtask bench tls`.\n");
    }
    for (suite, results, profile) in &suites {
        suite_section(&mut md, *suite, results, profile.as_ref());
    }
    if let Some(reload) = super::reload::markdown_section(bench_dir) {
        md.push_str(&reload);
    }
    // `cargo xtask bench steering`'s last run (written by tests/benches/steering.rs).
    if let Ok(steering) = std::fs::read_to_string(bench_dir.join("steering.md")) {
        md.push('\n');
        md.push_str(&steering);
    }
    // `cargo xtask bench xdp` beside Katran: a run's numbers and verdicts, written by hand
    // from its output (with how Katran's object was built), carried into every rewrite.
    if let Ok(xdp) = std::fs::read_to_string(bench_dir.join("xdp.md")) {
        md.push('\n');
        md.push_str(&xdp);
    }
    // Findings written by hand (what blocks a goal, measurements with load-independent tools:
    // instruction counts, system calls), kept beside the runs and carried into every rewrite.
    for name in ["h1-findings.md", "tls-findings.md"] {
        if let Ok(findings) = std::fs::read_to_string(bench_dir.join(name)) {
            md.push('\n');
            md.push_str(&findings);
        }
    }
    md.push_str(CAVEATS);
    md
}

const METHOD: &str = "## How it is measured\n\n\
- **Peers**: Sluice (`workers: 1`, `--no-xdp`, access log off), nginx (`worker_processes 1`, an\n  \
  `upstream` with `keepalive 1024`, `proxy_http_version 1.1`, `proxy_set_header Connection \"\"`) and\n  \
  HAProxy (`nbthread 1`, `http-reuse always`), each with one worker and keep-alive to the backend, all\n  \
  in their Debian packages' versions (below) with otherwise default settings. `direct` is the load\n  \
  generator talking to the backend itself: the ceiling of the client core.\n\
- **Same job**: every proxy does per request what an ingress does and Sluice does by default: a\n  \
  request id sent to the backend and returned to the client (`X-Request-ID`), `X-Forwarded-For`\n  \
  (the client address, replacing any the client sent), `X-Real-IP`, `X-Forwarded-Proto`, `-Port` and\n  \
  `-Host`, and the client's `Host` passed\n  \
  on (nginx: `proxy_set_header` lines and `add_header X-Request-ID $request_id always`, as\n  \
  ingress-nginx's template sets them; HAProxy: `unique-id-format %[uuid()]`, `unique-id-header`,\n  \
  `http-request set-header` and `http-after-response set-header`). Every\n  \
  listener accepts a connection once the client's first bytes are in (Sluice's `defer_accept`\n  \
  default, nginx `listen ... deferred`, HAProxy `bind ... defer-accept`). Without the\n  \
  headers, nginx served about 11% more keep-alive requests per second in a hand run on\n  \
  this machine: it does less itself, and the backend on the client core parses six fewer lines.\n\
- **Backend**: nginx with one worker answering `return 200 \"ok\"` (keep-alive, no logging).\n\
- **Pinning** (2 cores): the proxy under test on core 0 (`taskset -c 0`); the load generator and the\n  \
  backend share core 1 (`taskset -c 1`). The client core saturates first, so besides requests/s the\n  \
  tables give the proxy's **CPU time per request** (user + system time of all the proxy's processes,\n  \
  from `/proc/<pid>/stat`, over the requests served), which is what the proxy itself costs.\n\
- **Load**: wrk (1 thread, `--timeout 10s`, `--latency`) for HTTP/1.1 and HTTPS, h2load (1 thread)\n  \
  for HTTP/2 in clear text with prior knowledge; latency percentiles from wrk's distribution and from\n  \
  h2load's per-request log. New TLS handshakes: wrk over HTTPS with `Connection: close`, so every\n  \
  request opens a connection and makes a new handshake. wrk keeps its TLS session across reconnects\n  \
  (OpenSSL's `SSL_clear`), so after each connection's first these are TLS 1.3 resumptions: a ticket\n  \
  and a fresh X25519 exchange, no certificate.\n\
- **Rounds**: runs are interleaved (direct, Sluice, nginx, HAProxy, then again), each bounded in time;\n  \
  a table cell is the median of the rounds with the minimum and maximum in parentheses. Every peer\n  \
  gets one short warm-up run per scenario before the first round. Before each run the bench waits\n  \
  (within a budget of `--wait-for-quiet` seconds for the whole suite) while other processes use\n  \
  more than a quarter of a core; the `other` column shows what they used during the run.\n\
- **Profile**: after the rounds, `perf record` samples the Sluice process under the suite's\n  \
  keep-alive scenario, and perf's syscall tracepoints count each proxy's system calls per request\n  \
  under the same load (see each suite's last section).\n\
- **Other columns**: `peer CPU` is the proxy's CPU time over the run's wall time (100% = core 0\n  \
  saturated); `client core` is how busy core 1 was; `segs/req` counts TCP segments sent on the\n  \
  machine per request (client, proxy and backend together, from `/proc/net/snmp`); `core 0 µs/req`\n  \
  is all the CPU time spent on the proxy's core per request: the proxy's own time plus kernel work\n  \
  done there while the proxy was not running (packets received for it while it slept, in interrupt\n  \
  or softirq context, charged to no process); `softirq` is the time both cores spent in interrupt\n  \
  and softirq context (mostly network processing, whoever was charged for it), and `other` the\n  \
  CPU used meanwhile by processes that are not part of the bench (other work on the machine), both\n  \
  in cores.\n";

const CAVEATS: &str = "\n## Caveats\n\n\
- Everything runs on one 2-core VM over loopback: the kernel's TCP work is a large share of every\n  \
  peer's cost, and on loopback the sender pays for delivering to the receiver, so CPU time per\n  \
  request includes part of the peer's kernel work.\n\
- The client core (wrk or h2load plus the backend) saturates before the proxy core in most\n  \
  scenarios; requests/s then compares how much client-core time each proxy makes the client spend\n  \
  as much as the proxies themselves. CPU time per request on the proxy core is the cleaner\n  \
  comparison of the proxies' own cost.\n\
- Other work on the machine during a run (`other` column) adds noise; interleaving spreads it over\n  \
  the peers, and the min–max ranges show how large it was.\n\
- TLS: nginx and HAProxy use Debian's OpenSSL 3.0; Sluice uses rustls with the aws-lc-rs provider\n  \
  (ring until 2026-12-06). The\n  \
  certificate is a self-signed ECDSA P-256 one; all three negotiate TLS 1.3 with X25519 with wrk.\n\
- New handshakes: at 50 connections the client core saturates while Sluice's core idles about a\n  \
  third of the time, so the rate measures what each proxy costs the client core. Each time Sluice's\n  \
  worker sleeps, a packet from the client core has to wake it with an inter-processor interrupt,\n  \
  which inside this VM (guest halt polling off) costs the client core a VM exit; nginx's core is\n  \
  saturated and never sleeps. Counted by hand on this machine (2026-11-29): 1.7 worker sleeps and\n  \
  wake-up interrupts to the proxy core per handshake for Sluice, none for nginx; the backend and\n  \
  softirq work on the client core took 10–15 µs more per handshake with Sluice in front. Sluice\n  \
  used to issue two TLS 1.3 tickets per resumption where OpenSSL issues one; wrk keeps\n  \
  every ticket (a session copy and a key derivation each), and issuing one brought the ratio from 0.93× to about 1.0×. What is left\n  \
  shows in `perf record -C 1` (by hand): wrk's writes spend about 9 µs more per handshake in\n  \
  `sock_def_readable` (the wake-up of a sleeping proxy, interrupts off) and the backend about 6 µs\n  \
  more. Busy polling (`busy_poll_us`, off by default) halves the sleeps but not that cost (50 µs:\n  \
  0.99×, with 1.2× the proxy CPU), probably because a worker that keeps polling epoll holds the\n  \
  epoll lock that every packet delivered from the client core also takes.\n  \
  wrk's latency here is mostly its own queue: Sluice answers a request in a median 110 µs\n  \
  (measured on the wire), but a saturated wrk reads the answer late, and more so when the proxy\n  \
  returns handshake flights faster. `tls_handshake_c5` shows latency without the client queue.\n\
- The profile's stacks come from DWARF unwinding of 64 KiB stack copies (the report gives the share\n  \
  that reached the thread's start; the others are under `[truncated]` in the flame graph); the\n  \
  self costs are exact samples either way. Symbols from generic code (`core::`, `<... as Future>::poll`) carry the work inlined\n  \
  into them from the crates that call them.\n";

fn suite_section(md: &mut String, suite: Suite, results: &Results, profile: Option<&Profile>) {
    let m = |k: &str| results.meta.get(k).map_or("?", String::as_str).to_owned();
    let _ = write!(
        md,
        "\n## {} (`cargo xtask bench {}`)\n\n\
         Measured {} on commit `{}`: {} rounds of {} s per peer and scenario; the suite took {} s (building Sluice not counted). Machine: {}, {} \
         cores, Linux {}. Versions: nginx {}, HAProxy {}, wrk {}, h2load {}, OpenSSL {}.\n\n",
        suite.title(),
        suite.name(),
        m("date"),
        m("commit"),
        m("rounds"),
        m("duration_s"),
        m("runtime_s"),
        m("cpu"),
        m("cores"),
        m("kernel"),
        m("nginx"),
        m("haproxy"),
        m("wrk"),
        m("h2load"),
        m("openssl"),
    );
    md.push_str(
        "| scenario | peer | req/s median (min–max) | p50 ms | p99 ms median (min–max) | CPU µs/req (user+kernel) | \
         core 0 µs/req | peer CPU | client core | segs/req | softirq | other | errors |\n\
         | --- | --- | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: |\n",
    );
    for scenario in suite.scenarios() {
        for s in summarize(&results.runs, scenario.name) {
            let _ = writeln!(
                md,
                "| `{}` | {} | {} ({}–{}) | {} | {} ({}–{}) | {} | {} | {} | {} | {:.1} | {:.2} | {:.2} | {} |",
                scenario.name,
                if s.peer == Peer::Sluice { "**sluice**".to_owned() } else { s.peer.name().to_owned() },
                thousands(s.rps.median),
                thousands(s.rps.min),
                thousands(s.rps.max),
                ms(s.p50.median),
                ms(s.p99.median),
                ms(s.p99.min),
                ms(s.p99.max),
                cpu_split(&s),
                us(s.core0_us.median),
                pct(s.peer_cpu.median),
                pct(s.core1.median),
                s.segs.median,
                s.softirq.median,
                s.other.median,
                s.errors,
            );
        }
    }
    if suite.has_direct() {
        md.push_str(
            "\nFor `direct`, the CPU columns are the backend's (nginx `return 200`), for comparison.\n",
        );
    }
    md.push_str("\nScenarios:\n\n");
    for scenario in suite.scenarios() {
        let _ = writeln!(md, "- `{}`: {} — {}", scenario.name, scenario.title, scenario.load.describe());
    }
    md.push_str(
        "\nRatios of the medians (Sluice divided by the other; for requests/s above 1 is better, for CPU \
         per request and p99 below 1 is better):\n\n\
         | scenario | req/s ÷ nginx | req/s ÷ HAProxy | CPU/req ÷ nginx | CPU/req ÷ HAProxy | p99 ÷ nginx | p99 ÷ HAProxy |\n\
         | --- | --: | --: | --: | --: | --: | --: |\n",
    );
    for scenario in suite.scenarios() {
        let summaries = summarize(&results.runs, scenario.name);
        let r =
            |p, f: fn(&Summary) -> f64| ratio(&summaries, p, f).map_or("n/a".into(), |r| format!("{r:.2}"));
        let _ = writeln!(
            md,
            "| `{}` | {} | {} | {} | {} | {} | {} |",
            scenario.name,
            r(Peer::Nginx, |s| s.rps.median),
            r(Peer::Haproxy, |s| s.rps.median),
            r(Peer::Nginx, |s| s.cpu_us.median),
            r(Peer::Haproxy, |s| s.cpu_us.median),
            r(Peer::Nginx, |s| s.p99.median),
            r(Peer::Haproxy, |s| s.p99.median),
        );
    }
    let _ = writeln!(md, "\n![{} requests/s and CPU per request](bench/{}.svg)", suite.title(), suite.name());
    md.push_str(&scenario_findings(suite, results));
    if let Some(profile) = profile {
        profile_section(md, suite, profile);
    }
}

fn profile_section(md: &mut String, suite: Suite, p: &Profile) {
    let meta = |k: &str| p.meta.get(k).map_or("?", String::as_str).to_owned();
    let scenario = meta("scenario");
    let tool = meta("tool");
    let _ = write!(md, "\n### Where Sluice's time goes ({}, `{scenario}`)\n\n", suite.name());
    if tool == "perf" {
        let busy: f64 = meta("busy").parse().unwrap_or(f64::NAN);
        let rooted: f64 = meta("rooted").parse().unwrap_or(f64::NAN);
        let _ = writeln!(
            md,
            "`perf record -e cpu-clock --call-graph dwarf` on the Sluice process for {} s under `{scenario}`: {} \
             samples, Sluice at {} of its core, {} requests/s. Full report: \
             [`bench/{}-profile.txt`](bench/{}-profile.txt); flame graph: \
             [`bench/{}-flamegraph.svg`](bench/{}-flamegraph.svg) ({} of the stacks unwound to the thread \
             start).\n",
            meta("seconds"),
            meta("samples"),
            pct(busy),
            thousands(meta("rps").parse().unwrap_or(f64::NAN)),
            suite.name(),
            suite.name(),
            suite.name(),
            suite.name(),
            pct(rooted),
        );
    } else {
        let _ = writeln!(
            md,
            "`valgrind --tool=callgrind` (perf could not sample here): instructions executed in user space \
             under a light `{scenario}` load; the kernel's share is not seen. Full report: \
             [`bench/{}-profile.txt`](bench/{}-profile.txt).\n",
            suite.name(),
            suite.name()
        );
    }
    md.push_str("Self cost by component:\n\n| share | component |\n| --: | --- |\n");
    for (name, share) in p.components.iter().filter(|(_, s)| *s >= 0.5) {
        let _ = writeln!(md, "| {share:.1}% | {name} |");
    }
    md.push_str("\nTop symbols by self cost:\n\n| share | symbol |\n| --: | --- |\n");
    for (name, share) in p.symbols.iter().take(15) {
        let _ = writeln!(md, "| {share:.1}% | `{}` |", name.replace('|', "\\|"));
    }
    if !p.syscalls.is_empty() {
        md.push_str(
            "\nSystem calls, inclusive (the kernel work inside each call; on loopback a write also delivers \
             to the receiving socket):\n\n| share | call |\n| --: | --- |\n",
        );
        for (name, share) in p.syscalls.iter().take(10) {
            let _ = writeln!(md, "| {share:.1}% | `{name}` |");
        }
    }
    if !p.sluice.is_empty() {
        md.push_str("\nSluice's own functions, inclusive:\n\n| share | function |\n| --: | --- |\n");
        for (name, share) in p.sluice.iter().take(12) {
            let _ = writeln!(md, "| {share:.1}% | `{}` |", name.replace('|', "\\|"));
        }
    }
    for (title, rows) in [
        (
            "Who calls malloc/free (the first frame above the allocator; share of all samples)",
            &p.alloc_callers,
        ),
        ("Who calls memcpy/memmove/memset (likewise)", &p.copy_callers),
    ] {
        if rows.is_empty() {
            continue;
        }
        let _ = write!(md, "\n{title}:\n\n| share | caller |\n| --: | --- |\n");
        for (name, share) in rows.iter().take(8) {
            let _ = writeln!(md, "| {share:.1}% | `{}` |", name.replace('|', "\\|"));
        }
    }
    if !p.census.is_empty() {
        let mut calls: Vec<String> = Vec::new();
        for (_, call, _) in &p.census {
            if !calls.contains(call) {
                calls.push(call.clone());
            }
        }
        let peers: Vec<String> = ["sluice", "nginx", "haproxy"]
            .into_iter()
            .filter(|peer| p.census.iter().any(|(p, _, _)| p == peer))
            .map(str::to_owned)
            .collect();
        let _ = write!(
            md,
            "\nSystem calls per request under `{scenario}` (perf's syscall tracepoints on each proxy's processes):\n\n\
             | call | {} |\n| --- |{}\n",
            peers.join(" | "),
            " --: |".repeat(peers.len())
        );
        for call in &calls {
            let cells: Vec<String> = peers
                .iter()
                .map(|peer| {
                    p.census
                        .iter()
                        .find(|(p, c, _)| p == peer && c == call)
                        .map_or("–".into(), |(_, _, n)| format!("{n:.2}"))
                })
                .collect();
            let _ = writeln!(md, "| `{call}` | {} |", cells.join(" | "));
        }
    }
    if !p.client.is_empty() {
        let name = p.meta.get("client_scenario").map_or("?", String::as_str);
        let _ = write!(
            md,
            "\nThe client core's time per request under `{name}` (where that core, not the proxy's, saturated): \
             `perf record -C 1` samples every process on the load generator's core, by command and library, in \
             µs per request:\n\n| where | with Sluice | with nginx | difference |\n| --- | --: | --: | --: |\n"
        );
        for (place, sluice, nginx) in client_rows(p) {
            let _ = writeln!(md, "| {place} | {sluice:.1} | {nginx:.1} | {:+.1} |", sluice - nginx);
        }
    }
    md.push_str(&findings(p));
}

/// Statements derived from the numbers: where Sluice stands against nginx in the profiled
/// scenario, and what dominates its profile.
/// Per scenario, Sluice against nginx in words, from the medians: where Sluice stands and which
/// core limited the run.
fn scenario_findings(suite: Suite, results: &Results) -> String {
    let mut out = String::from("\nFindings per scenario (computed from the medians above):\n\n");
    for scenario in suite.scenarios() {
        let summaries = summarize(&results.runs, scenario.name);
        let (Some(s), Some(n)) = (find(&summaries, Peer::Sluice), find(&summaries, Peer::Nginx)) else {
            continue;
        };
        let goal = match scenario.goal.and_then(|g| verdict(g, &summaries)) {
            Some((_, true)) => " (goal met)",
            Some((_, false)) => " (goal not met)",
            None => "",
        };
        // Client-core time per request: how busy core 1 was over the requests it drove.
        let client = |x: &Summary| x.core1.median / x.rps.median * 1e6;
        let _ = write!(
            out,
            "- `{}`{goal}: Sluice {} req/s, {:.2}× nginx; CPU per request {:.1} µs against {:.1} µs ({:.2}×; user \
             {:.1} against {:.1}, kernel {:.1} against {:.1}); everything on the proxy core {} against {} µs per \
             request; p99 {} against {} ms. Proxy core busy {} against {}, client core {} against {} (about {:.0} \
             against {:.0} µs of client-core time per request). ",
            scenario.name,
            thousands(s.rps.median),
            s.rps.median / n.rps.median,
            s.cpu_us.median,
            n.cpu_us.median,
            s.cpu_us.median / n.cpu_us.median,
            s.user_us.median,
            n.user_us.median,
            s.sys_us.median,
            n.sys_us.median,
            us(s.core0_us.median),
            us(n.core0_us.median),
            ms(s.p99.median),
            ms(n.p99.median),
            pct(s.peer_cpu.median),
            pct(n.peer_cpu.median),
            pct(s.core1.median),
            pct(n.core1.median),
            client(s),
            client(n),
        );
        let limit = if s.peer_cpu.median >= 0.9 {
            "Sluice's core was saturated: its requests/s is bounded by its CPU time per request."
        } else if s.core1.median >= 0.95 {
            "Sluice's core was not saturated and the client core was: requests/s measured the client side \
             here, and Sluice's own cost is its CPU time per request."
        } else {
            "Neither core was saturated: requests waited in the proxy or the kernel rather than for CPU."
        };
        let _ = writeln!(out, "{limit}");
    }
    out
}

/// The client-core breakdown as (place, µs with Sluice, µs with nginx), largest first, the
/// total last.
fn client_rows(p: &Profile) -> Vec<(String, f64, f64)> {
    let get = |peer: &str, place: &str| {
        p.client.iter().find(|(pe, pl, _)| pe == peer && pl == place).map_or(0.0, |(_, _, us)| *us)
    };
    let mut places: Vec<String> = Vec::new();
    for (_, place, _) in &p.client {
        if !places.contains(place) {
            places.push(place.clone());
        }
    }
    let mut rows: Vec<(String, f64, f64)> =
        places.into_iter().map(|pl| (pl.clone(), get("sluice", &pl), get("nginx", &pl))).collect();
    rows.sort_by(|a, b| {
        let total = |r: &(String, f64, f64)| r.0.starts_with("all ");
        total(a).cmp(&total(b)).then(b.1.max(b.2).total_cmp(&a.1.max(a.2)))
    });
    rows
}

/// Statements derived from the profile: what dominates Sluice's samples, and how its system
/// calls compare with the other proxies'.
fn findings(p: &Profile) -> String {
    let mut out = String::from("\nFindings from the profile:\n\n");
    let census =
        |peer: &str, call: &str| p.census.iter().find(|(p, c, _)| p == peer && c == call).map(|(_, _, n)| *n);
    if let (Some(s), Some(n)) = (census("sluice", "all"), census("nginx", "all")) {
        let mut diffs: Vec<(String, f64, f64)> = p
            .census
            .iter()
            .filter(|(peer, call, _)| peer == "sluice" && call != "all")
            .map(|(_, call, sv)| (call.clone(), *sv, census("nginx", call).unwrap_or(0.0)))
            .filter(|(_, sv, nv)| (sv - nv).abs() >= 0.1)
            .collect();
        diffs.sort_by(|a, b| (b.1 - b.2).abs().total_cmp(&(a.1 - a.2).abs()));
        let detail: Vec<String> =
            diffs.iter().take(4).map(|(c, sv, nv)| format!("`{c}` {sv:.2} vs {nv:.2}")).collect();
        let _ = writeln!(
            out,
            "- System calls per request: Sluice {s:.2}, nginx {n:.2}{}.",
            if detail.is_empty() { String::new() } else { format!(" ({})", detail.join(", ")) }
        );
    }
    let alloc: f64 = p.components.iter().filter(|(n, _)| n.contains("malloc")).map(|(_, s)| s).sum();
    let callers: Vec<String> =
        p.alloc_callers.iter().take(3).map(|(n, s)| format!("`{n}` {s:.1}%")).collect();
    if alloc >= 3.0 && !callers.is_empty() {
        let _ = writeln!(
            out,
            "- malloc/free take {alloc:.1}% of Sluice's samples; the largest callers: {}.",
            callers.join(", ")
        );
    }
    let rows = client_rows(p);
    if let Some((_, s_total, n_total)) = rows.iter().find(|r| r.0.starts_with("all ")) {
        let mut diffs: Vec<&(String, f64, f64)> =
            rows.iter().filter(|r| !r.0.starts_with("all ") && (r.1 - r.2).abs() >= 2.0).collect();
        diffs.sort_by(|a, b| (b.1 - b.2).abs().total_cmp(&(a.1 - a.2).abs()));
        let detail: Vec<String> =
            diffs.iter().take(4).map(|(pl, s, n)| format!("{pl} {:+.1} µs", s - n)).collect();
        let _ = writeln!(
            out,
            "- Under `{}` the client core spent {s_total:.0} µs per request with Sluice against {n_total:.0} µs with \
             nginx{}.",
            p.meta.get("client_scenario").map_or("?", String::as_str),
            if detail.is_empty() { String::new() } else { format!(" ({})", detail.join(", ")) }
        );
    }
    let wakeup = |peer: &str, which: &str| {
        p.wakeups.iter().find(|(pe, w, _)| pe == peer && w == which).map(|(_, _, n)| *n)
    };
    let to_proxy = "function-call IPIs to the proxy core";
    let to_client = "reschedule IPIs to the client core";
    if let (Some(sp), Some(np), Some(sc), Some(nc)) = (
        wakeup("sluice", to_proxy),
        wakeup("nginx", to_proxy),
        wakeup("sluice", to_client),
        wakeup("nginx", to_client),
    ) {
        let _ = writeln!(
            out,
            "- Wake-ups per request under `{}`: {to_proxy} Sluice {sp:.2}, nginx {np:.2}; {to_client} Sluice \
             {sc:.2}, nginx {nc:.2}. A proxy whose core went idle between events is woken by the client core \
             with such an interrupt; the sender pays for it (in a VM, an exit per interrupt), so an idle proxy \
             costs the client core time that a saturated one does not.",
            p.meta.get("client_scenario").map_or("?", String::as_str),
        );
    }
    let top: Vec<String> =
        p.components.iter().take(5).map(|(name, share)| format!("{name} {share:.1}%")).collect();
    if !top.is_empty() {
        let _ = writeln!(out, "- Largest self costs by component: {}.", top.join("; "));
    }
    let syscalls: Vec<String> = p.syscalls.iter().take(4).map(|(n, s)| format!("`{n}` {s:.1}%")).collect();
    if !syscalls.is_empty() {
        let _ = writeln!(out, "- Inside system calls (inclusive): {}.", syscalls.join(", "));
    }
    let mine: Vec<String> = p
        .sluice
        .iter()
        .filter(|(n, _)| {
            !n.contains("Worker::run") && !n.contains("serve_client") && !n.contains("accept_loop")
        })
        .take(5)
        .map(|(n, s)| format!("`{n}` {s:.1}%"))
        .collect();
    if !mine.is_empty() {
        let _ = writeln!(out, "- Sluice's request path (inclusive): {}.", mine.join(", "));
    }
    out
}
