//! `cargo xtask bench xdp`: nanoseconds per packet of the XDP steering program, measured with
//! BPF_PROG_TEST_RUN, for a non-service packet, a new-flow SYN and an established-flow packet,
//! with the XDP_PASS-only program as the floor; then, with the guard on (`xdp.guard`: deny and
//! allow lists and a SYN rate limit), a new-flow SYN it admits and a SYN it drops.
//!
//! Method. With `repeat > 1` the kernel runs the program on the same buffer without restoring
//! it, so a program that rewrites the packet measures its own output from the second run on (a
//! steered packet then carries a worker port and takes the non-service path). Every case is
//! therefore timed with `repeat = 1`: one BPF_PROG_TEST_RUN call per packet, a fresh input
//! frame each call, the kernel-reported duration of that one run as the sample. The cases are
//! interleaved round by round so drift (frequency, noisy neighbours) hits them alike. The
//! non-service path does not rewrite, so it and the floor are also timed with a large `repeat`,
//! where the kernel averages away the cost of reading the clock and calls the program directly
//! from the XDP dispatcher: cheaper per packet, but not comparable with the repeat-1 rows.
//!
//! Katran beside it: with `--katran-object PATH` (or `SLUICE_KATRAN_OBJECT=PATH`), Katran's
//! `balancer.bpf.o` built by hand (docs/BENCHMARKS.md) is loaded and configured with one TCP VIP
//! (see `katran.rs`), and its non-VIP, new-flow and established paths are timed in the same
//! interleaved rounds against the same floor: the main phase's (beside steering) and the L4
//! phase's (beside the L4 paths). The report then gives each path's ratio to Katran's and the
//! goals of issues #21 and #22 with their verdicts. Without it the report says Katran was not
//! measured.
//!
//! Under `cargo test` (no `--bench` argument) this runs a short smoke pass instead, and skips
//! without root rather than failing.

#[path = "xdp/katran.rs"]
mod katran;

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use lb_common::Stat;
use lb_tests::frames;
use lb_userspace::{
    config::{GuardRateLimit, XdpGuardConfig},
    dataplane::{Counters, Dataplane, Program, Protocol, Service},
};

const XDP_PASS: u32 = 2;
const XDP_DROP: u32 = 1;
const XDP_TX: u32 = 3;
const SERVICE_PORT: u16 = 8080;
const WORKER_PORTS: [u16; 4] = [20000, 20001, 20002, 20003];
const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The established flow's client; new-flow clients are numbered from 198.18.1.0 up, so they
/// never collide with it or with each other.
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const NEW_FLOW_CLIENTS: u32 = u32::from_be_bytes([198, 18, 1, 0]);
/// New-flow clients of the guard phase: inside the allow list, apart from the others.
const GUARD_CLIENTS: u32 = u32::from_be_bytes([198, 19, 0, 0]);
/// New-flow clients of Katran in the L4 phase (the main phase gives Katran the same SYNs as
/// Sluice: each program has its own connection table).
const KATRAN_L4_CLIENTS: u32 = u32::from_be_bytes([198, 20, 0, 0]);
/// The source the guard phase's deny list holds.
const DENIED: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 9);
/// Networks in each guard list besides the ones the cases hit, so lookups walk a real trie.
const GUARD_LIST_NETWORKS: u32 = 1_000;

/// Sizes for a real run and for the `cargo test` smoke pass.
struct Plan {
    /// Untimed rounds first, so caches, branch predictors and the LRU free lists settle.
    warmup: usize,
    /// Timed rounds; each runs every repeat-1 case once.
    rounds: usize,
    /// Calls per case with a large repeat, and that repeat.
    repeat_calls: usize,
    repeat: u32,
    /// The timed rounds stop early past this, and the repeat calls past `repeat_budget` more,
    /// so the whole bench stays well under a minute even on a loaded machine.
    budget: Duration,
    repeat_budget: Duration,
}

const BENCH: Plan = Plan {
    warmup: 1_000,
    rounds: 20_000,
    repeat_calls: 200,
    repeat: 10_000,
    budget: Duration::from_secs(20),
    repeat_budget: Duration::from_secs(15),
};
const SMOKE: Plan = Plan {
    warmup: 10,
    rounds: 200,
    repeat_calls: 5,
    repeat: 1_000,
    budget: Duration::from_secs(5),
    repeat_budget: Duration::from_secs(5),
};

const XDP: &str = "sluice_xdp";
const PASS: &str = "sluice_xdp_pass";
/// Where the Katran object may be named instead of `--katran-object`.
const KATRAN_ENV: &str = "SLUICE_KATRAN_OBJECT";

/// How a case is timed: one run per call, or `repeat` runs of the same buffer per call.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    Single,
    Repeat(u32),
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Method::Single => f.write_str("repeat 1"),
            Method::Repeat(n) => write!(f, "repeat {n}"),
        }
    }
}

/// The samples of one case: kernel-reported ns per packet, and wall-clock ns of the whole
/// `Dataplane::test_run` call (syscall, copies and aya's program lookup included).
#[derive(Default)]
struct Samples {
    kernel: Vec<u64>,
    wall: Vec<u64>,
}

struct Row {
    case: &'static str,
    program: &'static str,
    method: Method,
    samples: Samples,
}

fn main() {
    // cargo passes `--bench` to harness-less benches under `cargo bench` and nothing under
    // `cargo test --benches`, where a quick smoke pass is all that is wanted.
    let benching = std::env::args().any(|a| a == "--bench");
    if !lb_tests::is_root() {
        eprintln!(
            "xdp bench: needs root (loading BPF programs and BPF_PROG_TEST_RUN need CAP_BPF and \
             CAP_NET_ADMIN); run `sudo -E cargo xtask bench xdp`"
        );
        std::process::exit(if benching { 1 } else { 0 });
    }
    let katran_object = match katran_object() {
        Ok(path) => path,
        Err(e) => {
            eprintln!("xdp bench: {e:#}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(if benching { &BENCH } else { &SMOKE }, katran_object.as_deref()) {
        eprintln!("xdp bench failed: {e:#}");
        std::process::exit(1);
    }
}

/// `--katran-object PATH` (or `--katran-object=PATH`) among the arguments, else
/// `SLUICE_KATRAN_OBJECT`; `None` when neither names one.
fn katran_object() -> anyhow::Result<Option<PathBuf>> {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--katran-object" {
            let path = args.next().context("--katran-object needs a path to Katran's balancer.bpf.o")?;
            return Ok(Some(path.into()));
        }
        if let Some(path) = arg.strip_prefix("--katran-object=") {
            return Ok(Some(path.into()));
        }
    }
    Ok(std::env::var_os(KATRAN_ENV).filter(|v| !v.is_empty()).map(PathBuf::from))
}

fn run(plan: &Plan, katran_object: Option<&Path>) -> anyhow::Result<()> {
    // BPF_PROG_TEST_RUN runs on the caller's CPU: a migration mid-run would mix two CPUs'
    // caches and clocks into the samples.
    let cpu = lb_tests::cpu::pin_to_current()?;
    let mut dataplane = Dataplane::load().context("loading the eBPF object")?;
    let vip = SocketAddrV4::new(NODE, SERVICE_PORT);
    let katran = katran_object.map(|path| katran::Katran::load(path, vip)).transpose()?;
    dataplane
        .take_steering()?
        .install(vec![Service {
            addr: NODE.into(),
            port: SERVICE_PORT,
            protocol: Protocol::Tcp,
            worker_ports: WORKER_PORTS.to_vec(),
        }])
        .context("installing the bench service")?;

    // Port 8081 has no service: parse, both service lookups (exact, then wildcard), pass.
    let non_service = frames::ipv4(frames::IPPROTO_TCP, CLIENT, NODE, 40000, 8081, frames::TCP_ACK, b"GET /");
    let established_syn =
        frames::ipv4(frames::IPPROTO_TCP, CLIENT, NODE, 40000, SERVICE_PORT, frames::TCP_SYN, b"");
    let established_ack =
        frames::ipv4(frames::IPPROTO_TCP, CLIENT, NODE, 40000, SERVICE_PORT, frames::TCP_ACK, b"GET /");
    // One genuinely new flow per SYN (a new client address each), built before timing starts.
    let syns: Vec<Vec<u8>> = (0..(plan.warmup + plan.rounds) as u32)
        .map(|i| {
            let client = Ipv4Addr::from(NEW_FLOW_CLIENTS + i);
            let sport = 30000 + (i % 30000) as u16;
            frames::ipv4(frames::IPPROTO_TCP, client, NODE, sport, SERVICE_PORT, frames::TCP_SYN, b"")
        })
        .collect();

    // Open the established flow once; every timed ACK then hits its conntrack entry.
    let out = dataplane.test_run(Program::Xdp, &established_syn, 1)?;
    let flow_port = steered_port(&out.frame)?;
    // The same for Katran: its connection table then holds the flow.
    let katran_real = match &katran {
        Some(katran) => {
            let out = katran.run(&established_syn)?;
            ensure!(out.verdict == XDP_TX, "Katran did not forward the SYN (verdict {})", out.verdict);
            Some(katran::encapsulated_to(&out.frame, &established_syn)?)
        }
        None => None,
    };

    let [mut floor, mut plain, mut syn, mut ack] = [(); 4].map(|_| Samples::default());
    let [mut katran_plain, mut katran_syn, mut katran_ack] = [(); 3].map(|_| Samples::default());
    // Katran's three cases join the rotation when it is measured.
    let steps = if katran.is_some() { 7 } else { 4 };
    let mut syn_frames = syns.iter();
    let before = dataplane.counters()?;
    let katran_before = katran.as_ref().map(katran::Katran::counters).transpose()?;
    let started = Instant::now();
    let mut timed_rounds = 0;
    for round in 0..plan.warmup + plan.rounds {
        let timed = round >= plan.warmup;
        if timed && started.elapsed() > plan.budget {
            break;
        }
        let syn_frame = syn_frames.next().expect("one SYN frame per round");
        // Rotate the order within a round so no case always follows the same one.
        for step in 0..steps {
            match (round + step) % steps {
                0 => {
                    sample(&mut dataplane, Program::XdpPass, &non_service, 1, timed.then_some(&mut floor))?;
                }
                1 => {
                    let out =
                        sample(&mut dataplane, Program::Xdp, &non_service, 1, timed.then_some(&mut plain))?;
                    ensure!(out == non_service, "the non-service packet was modified");
                }
                2 => {
                    let out = sample(&mut dataplane, Program::Xdp, syn_frame, 1, timed.then_some(&mut syn))?;
                    steered_port(&out)?;
                }
                3 => {
                    let out =
                        sample(&mut dataplane, Program::Xdp, &established_ack, 1, timed.then_some(&mut ack))?;
                    ensure!(steered_port(&out)? == flow_port, "the established flow changed worker");
                }
                case => {
                    let katran = katran.as_ref().expect("Katran's cases run only when it is loaded");
                    match case {
                        4 => {
                            let into = timed.then_some(&mut katran_plain);
                            let out = sample_katran(katran, &non_service, XDP_PASS, into)?;
                            ensure!(out == non_service, "Katran modified the non-VIP packet");
                        }
                        5 => {
                            let out =
                                sample_katran(katran, syn_frame, XDP_TX, timed.then_some(&mut katran_syn))?;
                            katran::encapsulated_to(&out, syn_frame)?;
                        }
                        _ => {
                            let into = timed.then_some(&mut katran_ack);
                            let out = sample_katran(katran, &established_ack, XDP_TX, into)?;
                            let real = katran::encapsulated_to(&out, &established_ack)?;
                            ensure!(Some(real) == katran_real, "Katran's established flow changed real");
                        }
                    }
                }
            }
        }
        timed_rounds += usize::from(timed);
    }
    // Warm-up rounds run in full (the budget applies to timed rounds only) and count too.
    let rounds = plan.warmup + timed_rounds;
    let after = dataplane.counters()?;
    // The counters prove each case took the path it is named after.
    check_delta(&before, &after, Stat::NewFlows, rounds)?;
    check_delta(&before, &after, Stat::ConntrackHits, rounds)?;
    check_delta(&before, &after, Stat::PassNotService, rounds)?;
    if let (Some(katran), Some(before)) = (&katran, katran_before) {
        check_katran(katran, before, rounds)?;
    }
    // Its maps are large (a 512-VIP ring array, a table per CPU): gone before the L4 phase
    // loads its own copy.
    drop(katran);
    let [guard_floor, guard_new, guard_known, guard_drop] = guard_phase(&mut dataplane, plan)?;
    let [l4_floor, l4_new, l4_established, l4_reply, l4_katran_new, l4_katran_established] =
        l4_phase(plan, cpu, katran_object.map(Path::to_path_buf))?;

    let [mut floor_rep, mut plain_rep] = [(); 2].map(|_| Samples::default());
    for call in 0..plan.repeat_calls {
        // Each call costs two XDP dispatcher updates (see the report), milliseconds on a busy
        // machine, so this phase has its own cap.
        if call > 0 && started.elapsed() > plan.budget + plan.repeat_budget {
            break;
        }
        // Alternate the order, as above.
        let programs =
            if call % 2 == 0 { [Program::XdpPass, Program::Xdp] } else { [Program::Xdp, Program::XdpPass] };
        for program in programs {
            let into = if program == Program::XdpPass { &mut floor_rep } else { &mut plain_rep };
            sample(&mut dataplane, program, &non_service, plan.repeat, Some(into))?;
        }
    }
    let total = started.elapsed();

    let many = Method::Repeat(plan.repeat);
    let mut rows = vec![
        Row { case: "pass_floor", program: PASS, method: Method::Single, samples: floor },
        Row { case: "non_service", program: XDP, method: Method::Single, samples: plain },
        Row { case: "new_flow_syn", program: XDP, method: Method::Single, samples: syn },
        Row { case: "established", program: XDP, method: Method::Single, samples: ack },
        Row { case: "guard_floor", program: PASS, method: Method::Single, samples: guard_floor },
        Row { case: "guard_new_flow", program: XDP, method: Method::Single, samples: guard_new },
        Row { case: "guard_known", program: XDP, method: Method::Single, samples: guard_known },
        Row { case: "guard_drop", program: XDP, method: Method::Single, samples: guard_drop },
        Row { case: "l4_floor", program: PASS, method: Method::Single, samples: l4_floor },
        Row { case: "l4_new_flow", program: XDP, method: Method::Single, samples: l4_new },
        Row { case: "l4_established", program: XDP, method: Method::Single, samples: l4_established },
        Row { case: "l4_reply", program: XDP, method: Method::Single, samples: l4_reply },
        Row { case: "pass_floor", program: PASS, method: many, samples: floor_rep },
        Row { case: "non_service", program: XDP, method: many, samples: plain_rep },
    ];
    if katran_object.is_some() {
        let kat = katran::PROGRAM;
        rows.extend([
            Row { case: "katran_non_vip", program: kat, method: Method::Single, samples: katran_plain },
            Row { case: "katran_new_flow", program: kat, method: Method::Single, samples: katran_syn },
            Row { case: "katran_established", program: kat, method: Method::Single, samples: katran_ack },
            Row { case: "l4_katran_new_flow", program: kat, method: Method::Single, samples: l4_katran_new },
            Row {
                case: "l4_katran_established",
                program: kat,
                method: Method::Single,
                samples: l4_katran_established,
            },
        ]);
    }
    report(&rows, cpu, timed_rounds, total);
    report_goals(&rows, katran_object);
    Ok(())
}

/// Katran's counters prove its cases took their paths: every new-flow SYN missed the
/// connection table and was placed, no established packet missed it, and no packet fell back
/// to the test-only shared table.
fn check_katran(katran: &katran::Katran, before: katran::Counters, new_flows: usize) -> anyhow::Result<()> {
    let after = katran.counters()?;
    let moved = |a: u64, b: u64| a - b;
    ensure!(
        moved(after.syn_misses, before.syn_misses) == new_flows as u64
            && moved(after.placed, before.placed) == new_flows as u64,
        "Katran placed {} flows ({} SYN misses), expected {new_flows}: a case took another path",
        moved(after.placed, before.placed),
        moved(after.syn_misses, before.syn_misses)
    );
    ensure!(after.other_misses == before.other_misses, "Katran's established packets missed its table");
    ensure!(after.fallback_lru == 0, "Katran used its fallback table: the per-CPU tables are not in place");
    ensure!(after.vip_packets > before.vip_packets, "Katran saw no VIP packet");
    Ok(())
}

/// One repeat-1 call of Katran's program that must end in `verdict`; the frame it left.
fn sample_katran(
    katran: &katran::Katran,
    frame: &[u8],
    verdict: u32,
    into: Option<&mut Samples>,
) -> anyhow::Result<Vec<u8>> {
    let start = Instant::now();
    let out = katran.run(frame)?;
    let wall = start.elapsed();
    ensure!(out.verdict == verdict, "Katran returned verdict {} instead of {verdict}", out.verdict);
    if let Some(samples) = into {
        samples.kernel.push(out.duration.as_nanos() as u64);
        samples.wall.push(wall.as_nanos() as u64);
    }
    Ok(out.frame)
}

/// The guard phase, after the others so their rows stay comparable with earlier runs: the
/// guard holds a deny list (`DENIED` among `GUARD_LIST_NETWORKS` others), an allow list (the
/// new-flow clients' /15 among as many others) and a SYN limit high enough never to refuse.
/// Interleaved rounds of the floor, a SYN of a new allowed client (both lookups, a new bucket
/// in the LRU, then steering as `new_flow_syn`), a new connection's SYN of a client seen
/// before (both lookups, its bucket's compare-and-swap, steering), and a SYN of the denied
/// source (one lookup, dropped). Half the rounds and budget of the main phase.
fn guard_phase(dataplane: &mut Dataplane, plan: &Plan) -> anyhow::Result<[Samples; 4]> {
    let network =
        |base: [u8; 2], i: u32| format!("{}.{}.{}.0/24", base[0], base[1] + (i >> 8) as u8, i & 0xff);
    let mut deny: Vec<String> = (0..GUARD_LIST_NETWORKS).map(|i| network([10, 0], i)).collect();
    deny.push(format!("{DENIED}/32"));
    let mut allow: Vec<String> = (0..GUARD_LIST_NETWORKS).map(|i| network([172, 16], i)).collect();
    allow.push("198.18.0.0/15".to_owned());
    allow.push("10.0.0.0/8".to_owned());
    let settings = XdpGuardConfig {
        deny: deny.iter().map(|c| c.parse()).collect::<Result<_, _>>().map_err(anyhow::Error::msg)?,
        allow: allow.iter().map(|c| c.parse()).collect::<Result<_, _>>().map_err(anyhow::Error::msg)?,
        syn_rate_limit: Some(GuardRateLimit { per_second: 1_000_000, burst: 1_000_000 }),
        udp_rate_limit: None,
    };
    dataplane.open_guard()?.apply(&settings).context("installing the bench guard")?;
    let rounds = plan.warmup + plan.rounds / 2;
    let syns: Vec<Vec<u8>> = (0..rounds as u32)
        .map(|i| {
            let client = Ipv4Addr::from(GUARD_CLIENTS + i);
            frames::ipv4(frames::IPPROTO_TCP, client, NODE, 40000, SERVICE_PORT, frames::TCP_SYN, b"")
        })
        .collect();
    let known = Ipv4Addr::from(GUARD_CLIENTS - 1);
    let known_syns: Vec<Vec<u8>> = (0..rounds as u16)
        .map(|i| frames::ipv4(frames::IPPROTO_TCP, known, NODE, 1024 + i, SERVICE_PORT, frames::TCP_SYN, b""))
        .collect();
    let denied = frames::ipv4(frames::IPPROTO_TCP, DENIED, NODE, 40000, SERVICE_PORT, frames::TCP_SYN, b"");
    let [mut floor, mut admitted, mut known_source, mut dropped] = [(); 4].map(|_| Samples::default());
    let before = dataplane.counters()?;
    let started = Instant::now();
    let mut ran = 0;
    for (round, syn) in syns.iter().enumerate() {
        let timed = round >= plan.warmup;
        if timed && started.elapsed() > plan.budget / 2 {
            break;
        }
        for step in 0..4 {
            match (round + step) % 4 {
                0 => {
                    sample(dataplane, Program::XdpPass, syn, 1, timed.then_some(&mut floor))?;
                }
                1 => {
                    let out = sample(dataplane, Program::Xdp, syn, 1, timed.then_some(&mut admitted))?;
                    steered_port(&out)?;
                }
                2 => {
                    let frame = &known_syns[round];
                    let out = sample(dataplane, Program::Xdp, frame, 1, timed.then_some(&mut known_source))?;
                    steered_port(&out)?;
                }
                _ => {
                    let out = sample_verdict(
                        dataplane,
                        Program::Xdp,
                        &denied,
                        XDP_DROP,
                        timed.then_some(&mut dropped),
                    )?;
                    ensure!(out == denied, "the dropped packet was modified");
                }
            }
        }
        ran += 1;
    }
    let after = dataplane.counters()?;
    check_delta(&before, &after, Stat::NewFlows, 2 * ran)?;
    check_delta(&before, &after, Stat::DropDeny, ran)?;
    check_delta(&before, &after, Stat::DropNotAllowed, 0)?;
    check_delta(&before, &after, Stat::DropSynRate, 0)?;
    Ok([floor, admitted, known_source, dropped])
}

/// The L4 phase (`l4_services`), in a namespace of its own whose routes and permanent
/// neighbours answer `bpf_fib_lookup` (a test run's ingress is the caller's loopback), with its
/// own loaded object: interleaved rounds of the floor, a new flow's SYN (a new client address
/// each: conntrack miss, Maglev, a node port claimed, both entries inserted, FIB lookup,
/// DNAT + SNAT, redirect), an ACK of an established flow (conntrack hit, FIB lookup, rewrite,
/// redirect) and the endpoint's reply to that flow (reply lookup, FIB lookup, rewrite,
/// redirect). At most 2,000 rounds, half the budget of the main phase. With Katran, a copy of
/// it loaded here joins the rounds with its new-flow and established cases, so the L4 paths
/// have Katran's beside them against this phase's floor; its samples are empty otherwise.
fn l4_phase(plan: &Plan, cpu: usize, katran_object: Option<PathBuf>) -> anyhow::Result<[Samples; 6]> {
    const XDP_REDIRECT: u32 = 4;
    const ENDPOINT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
    const L4_PORT: u16 = 7000;
    let ns = lb_tests::topology::l4_fib_namespace(
        (CLIENT, [2, 0, 0, 0, 0xc, 1]),
        (ENDPOINT, [2, 0, 0, 0, 0xe, 2]),
    )?;
    // One endpoint holds 4536 flows at once (one per node port), and a new flow finds a free
    // one quickly only while most are free: the new flows of all rounds, warm-up included,
    // take at most 45% of them.
    let (warmup, budget) = (plan.warmup, plan.budget / 2);
    let rounds = (plan.warmup + plan.rounds / 2).min(2_000);
    ns.run(move || -> anyhow::Result<[Samples; 6]> {
        lb_tests::cpu::pin_to(cpu)?;
        let mut dataplane = Dataplane::load().context("loading the eBPF object for the L4 phase")?;
        let vip = SocketAddrV4::new(NODE, SERVICE_PORT);
        let katran = katran_object.map(|path| katran::Katran::load(&path, vip)).transpose()?;
        let spec = lb_userspace::dataplane::L4Spec {
            address: (NODE, L4_PORT).into(),
            protocol: lb_userspace::config::L4Protocol::Tcp,
            endpoints: vec![(ENDPOINT, L4_PORT).into()],
            idle_timeout: Duration::from_secs(3600),
            reset_on_removal: false,
            snat: NODE,
        };
        let healthy = spec.endpoints.iter().copied().collect();
        dataplane.open_l4()?.apply(&[(spec, healthy)]).context("installing the bench L4 service")?;
        let tcp = |src, sport, dst, dport, flags, payload: &[u8]| {
            frames::ipv4(frames::IPPROTO_TCP, src, dst, sport, dport, flags, payload)
        };
        let syns: Vec<Vec<u8>> = (0..rounds as u32)
            .map(|i| tcp(Ipv4Addr::from(NEW_FLOW_CLIENTS + i), 40000, NODE, L4_PORT, frames::TCP_SYN, b""))
            .collect();
        let opened =
            dataplane.test_run(Program::Xdp, &tcp(CLIENT, 40000, NODE, L4_PORT, frames::TCP_SYN, b""), 1)?;
        ensure!(opened.verdict == XDP_REDIRECT, "the L4 flow was not forwarded (verdict {})", opened.verdict);
        let l4 = frames::ETH_HLEN + 20;
        let snat_port = u16::from_be_bytes([opened.frame[l4], opened.frame[l4 + 1]]);
        let ack = tcp(CLIENT, 40000, NODE, L4_PORT, frames::TCP_ACK, b"GET /");
        let reply = tcp(ENDPOINT, L4_PORT, NODE, snat_port, frames::TCP_ACK, b"HTTP/1.1 200 OK");
        // Katran's frames: to its VIP, new clients of their own, and one flow opened first.
        let katran_syns: Vec<Vec<u8>> = (0..rounds as u32)
            .map(|i| {
                tcp(Ipv4Addr::from(KATRAN_L4_CLIENTS + i), 40000, NODE, SERVICE_PORT, frames::TCP_SYN, b"")
            })
            .collect();
        let katran_ack = tcp(CLIENT, 40000, NODE, SERVICE_PORT, frames::TCP_ACK, b"GET /");
        let katran_real = match &katran {
            Some(katran) => {
                let opening = tcp(CLIENT, 40000, NODE, SERVICE_PORT, frames::TCP_SYN, b"");
                let out = katran.run(&opening)?;
                ensure!(out.verdict == XDP_TX, "Katran did not forward the SYN (verdict {})", out.verdict);
                Some(katran::encapsulated_to(&out.frame, &opening)?)
            }
            None => None,
        };
        let steps = if katran.is_some() { 6 } else { 4 };
        let [mut floor, mut new, mut established, mut replied] = [(); 4].map(|_| Samples::default());
        let [mut katran_new, mut katran_established] = [(); 2].map(|_| Samples::default());
        let before = dataplane.counters()?;
        let katran_before = katran.as_ref().map(katran::Katran::counters).transpose()?;
        let started = Instant::now();
        let mut ran = 0;
        for (round, syn) in syns.iter().enumerate() {
            let timed = round >= warmup;
            if timed && started.elapsed() > budget {
                break;
            }
            for step in 0..steps {
                let (frame, into) = match (round + step) % steps {
                    0 => {
                        sample(&mut dataplane, Program::XdpPass, syn, 1, timed.then_some(&mut floor))?;
                        continue;
                    }
                    1 => (syn, &mut new),
                    2 => (&ack, &mut established),
                    3 => (&reply, &mut replied),
                    case => {
                        let katran = katran.as_ref().expect("Katran's cases run only when it is loaded");
                        if case == 4 {
                            let frame = &katran_syns[round];
                            let out = sample_katran(katran, frame, XDP_TX, timed.then_some(&mut katran_new))?;
                            katran::encapsulated_to(&out, frame)?;
                        } else {
                            let into = timed.then_some(&mut katran_established);
                            let out = sample_katran(katran, &katran_ack, XDP_TX, into)?;
                            let real = katran::encapsulated_to(&out, &katran_ack)?;
                            ensure!(Some(real) == katran_real, "Katran's established flow changed real");
                        }
                        continue;
                    }
                };
                let out =
                    sample_verdict(&mut dataplane, Program::Xdp, frame, XDP_REDIRECT, timed.then_some(into))?;
                ensure!(frames::ipv4_checksums_ok(&out), "checksums broken by the L4 rewrite");
            }
            ran += 1;
        }
        let after = dataplane.counters()?;
        check_delta(&before, &after, Stat::L4NewFlows, ran)?;
        check_delta(&before, &after, Stat::L4Forwarded, 2 * ran)?;
        check_delta(&before, &after, Stat::L4Replied, ran)?;
        if let (Some(katran), Some(before)) = (&katran, katran_before) {
            check_katran(katran, before, ran)?;
        }
        Ok([floor, new, established, replied, katran_new, katran_established])
    })?
}

/// One BPF_PROG_TEST_RUN call that must pass the frame; see `sample_verdict`.
fn sample(
    dataplane: &mut Dataplane,
    program: Program,
    frame: &[u8],
    repeat: u32,
    into: Option<&mut Samples>,
) -> anyhow::Result<Vec<u8>> {
    sample_repeat(dataplane, program, frame, repeat, XDP_PASS, into)
}

/// One repeat-1 call that must end in `verdict`.
fn sample_verdict(
    dataplane: &mut Dataplane,
    program: Program,
    frame: &[u8],
    verdict: u32,
    into: Option<&mut Samples>,
) -> anyhow::Result<Vec<u8>> {
    sample_repeat(dataplane, program, frame, 1, verdict, into)
}

/// One BPF_PROG_TEST_RUN call; records its samples when `into` is given (not in warm-up).
/// Returns the frame as the program left it.
fn sample_repeat(
    dataplane: &mut Dataplane,
    program: Program,
    frame: &[u8],
    repeat: u32,
    verdict: u32,
    into: Option<&mut Samples>,
) -> anyhow::Result<Vec<u8>> {
    let start = Instant::now();
    let out = dataplane.test_run(program, frame, repeat)?;
    let wall = start.elapsed();
    ensure!(out.verdict == verdict, "{program:?} returned verdict {} instead of {verdict}", out.verdict);
    if let Some(samples) = into {
        samples.kernel.push(out.duration.as_nanos() as u64);
        samples.wall.push(wall.as_nanos() as u64);
    }
    Ok(out.frame)
}

/// The destination port of a steered IPv4/TCP frame, checked to be a worker's.
fn steered_port(frame: &[u8]) -> anyhow::Result<u16> {
    let l4 = frames::ETH_HLEN + 20;
    let port = u16::from_be_bytes([frame[l4 + 2], frame[l4 + 3]]);
    ensure!(WORKER_PORTS.contains(&port), "packet not steered: destination port {port}");
    ensure!(frames::ipv4_checksums_ok(frame), "checksums broken by the rewrite");
    Ok(port)
}

fn check_delta(before: &Counters, after: &Counters, stat: Stat, expected: usize) -> anyhow::Result<()> {
    let delta = after.get(stat) - before.get(stat);
    if delta != expected as u64 {
        bail!("counter {} moved by {delta}, expected {expected}: a case took another path", stat.name());
    }
    Ok(())
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The step of the clock behind single-run samples: the largest step from 4 to 100 ns on whose
/// grid (give or take 1 ns of rounding) at least 95% of the samples fall, or 1 when there is
/// none. A fine-grained clock puts a quarter of its samples off even a 4 ns grid.
fn clock_step(samples: &[u64]) -> u64 {
    (4..=100)
        .rev()
        .find(|&step| {
            let on_grid = samples.iter().filter(|&&v| matches!(v % step, 0 | 1) || v % step == step - 1);
            on_grid.count() * 100 >= samples.len() * 95
        })
        .unwrap_or(1)
}

struct Stats {
    median: u64,
    p90: u64,
    /// Mean of the 5th to 95th percentile: unlike the median it is not stuck on the clock's
    /// grid, because where a run starts relative to the clock's ticks is random.
    trimmed_mean: f64,
    wall_median: u64,
}

impl Samples {
    fn stats(&self) -> Stats {
        let sorted = |v: &[u64]| {
            let mut v = v.to_vec();
            v.sort_unstable();
            v
        };
        let (kernel, wall) = (sorted(&self.kernel), sorted(&self.wall));
        let cut = kernel.len() / 20;
        let middle = &kernel[cut..kernel.len() - cut];
        Stats {
            median: percentile(&kernel, 0.5),
            p90: percentile(&kernel, 0.9),
            trimmed_mean: middle.iter().sum::<u64>() as f64 / middle.len().max(1) as f64,
            wall_median: percentile(&wall, 0.5),
        }
    }
}

/// The floor a case is measured against: its own phase's.
fn floor_of(case: &str) -> &'static str {
    if case.starts_with("guard_") {
        "guard_floor"
    } else if case.starts_with("l4_") {
        "l4_floor"
    } else {
        "pass_floor"
    }
}

/// Katran's rows as `name=value` lines, each of Sluice's paths over Katran's corresponding one
/// (nanoseconds above the same floor), and the goals of issues #21 and #22 with verdicts.
fn report_goals(rows: &[Row], katran_object: Option<&Path>) {
    let median = |case: &str| {
        rows.iter().find(|r| r.case == case && r.method == Method::Single).map(|r| r.samples.stats().median)
    };
    let above = |case: &str| Some(median(case)? as i64 - median(floor_of(case))? as i64);
    println!();
    match katran_object {
        Some(path) => println!("katran_object={}", path.display()),
        None => println!(
            "katran: not measured (give `cargo xtask bench xdp --katran-object PATH` or {KATRAN_ENV}=PATH; \
             docs/BENCHMARKS.md says how to build Katran's object)"
        ),
    }
    let katran_cases = [
        "katran_non_vip",
        "katran_new_flow",
        "katran_established",
        "l4_katran_new_flow",
        "l4_katran_established",
    ];
    for case in katran_cases {
        if let (Some(ns), Some(minus)) = (median(case), above(case)) {
            println!("{case}_ns={ns}");
            println!("{case}_minus_floor_ns={minus}");
        }
    }
    // (ours, Katran's, goal for ours over Katran's above the floor)
    let pairs = [
        ("non_service", "katran_non_vip", None),
        ("new_flow_syn", "katran_new_flow", Some(0.5)),
        ("established", "katran_established", None),
        ("l4_new_flow", "l4_katran_new_flow", None),
        ("l4_established", "l4_katran_established", Some(0.5)),
        ("l4_reply", "l4_katran_established", Some(0.5)),
    ];
    let mut goals = Vec::new();
    for (ours, theirs, goal) in pairs {
        let ratio = match (above(ours), above(theirs)) {
            (Some(ours), Some(theirs)) if theirs > 0 => Some(ours as f64 / theirs as f64),
            _ => None,
        };
        if let Some(ratio) = ratio {
            println!("xdp_{ours}_over_{theirs}={ratio:.2}");
        }
        if let Some(goal) = goal {
            let verdict = match ratio {
                Some(ratio) if ratio <= goal => format!("{ratio:.2}x, met"),
                Some(ratio) => format!("{ratio:.2}x, missed"),
                None => "Katran not measured".to_owned(),
            };
            goals.push(format!("{ours} above the floor at most {goal}x {theirs}'s: {verdict}"));
        }
    }
    if let (Some(drop), Some(floor)) = (median("guard_drop"), median("guard_floor")) {
        let ratio = drop as f64 / floor.max(1) as f64;
        let verdict = if ratio <= 2.0 { "met" } else { "missed" };
        goals.push(format!("guard_drop at most 2x its floor: {ratio:.2}x, {verdict}"));
    }
    println!();
    println!("Goals (issues #21 and #22)");
    for goal in goals {
        println!("  {goal}");
    }
}

fn report(rows: &[Row], cpu: usize, rounds: usize, total: Duration) {
    let read = |path| std::fs::read_to_string(path).unwrap_or_else(|_| "?".into()).trim().to_owned();
    let stats: Vec<Stats> = rows.iter().map(|r| r.samples.stats()).collect();
    let median = |case: &str, method: Method| {
        rows.iter().zip(&stats).find(|(r, _)| r.case == case && r.method == method).map(|(_, s)| s.median)
    };

    println!();
    println!(
        "XDP cost per packet, BPF_PROG_TEST_RUN (kernel {}, clocksource {}, pinned to CPU {cpu}, {:.1} s)",
        read("/proc/sys/kernel/osrelease"),
        read("/sys/devices/system/clocksource/clocksource0/current_clocksource"),
        total.as_secs_f64()
    );
    println!();
    let header = ["case", "program", "method", "samples", "median ns", "p90 ns", "mean* ns", "minus floor"];
    println!(
        "{:<21} {:<16} {:<12} {:>7} {:>9} {:>7} {:>8} {:>11} {:>13}",
        header[0],
        header[1],
        header[2],
        header[3],
        header[4],
        header[5],
        header[6],
        header[7],
        "wall us/call"
    );
    for (row, s) in rows.iter().zip(&stats) {
        let floor_case = floor_of(row.case);
        let minus = match median(floor_case, row.method) {
            Some(floor) if row.case != floor_case => (s.median as i64 - floor as i64).to_string(),
            _ => "-".to_owned(),
        };
        println!(
            "{:<21} {:<16} {:<12} {:>7} {:>9} {:>7} {:>8.1} {:>11} {:>13.1}",
            row.case,
            row.program,
            row.method.to_string(),
            row.samples.kernel.len(),
            s.median,
            s.p90,
            s.trimmed_mean,
            minus,
            s.wall_median as f64 / 1000.0
        );
    }

    // Single runs are single clock deltas: measure how coarse that clock is, so quantisation
    // shows up here rather than hiding in the medians.
    let single: Vec<u64> = rows
        .iter()
        .filter(|r| r.method == Method::Single)
        .flat_map(|r| r.samples.kernel.iter().copied())
        .collect();
    let zeros = single.iter().filter(|&&v| v == 0).count();
    let step = clock_step(&single);
    let many = rows.iter().map(|r| r.method).find(|&m| m != Method::Single).unwrap_or(Method::Single);
    println!();
    println!("Method");
    println!(
        "  repeat 1: {rounds} interleaved rounds, one BPF_PROG_TEST_RUN call per case per round, each with"
    );
    println!("    a fresh input frame; a sample is the kernel-reported duration of that one run. The kernel");
    println!("    times it with ktime_get_ns around local_bh_disable, the XDP dispatcher's call into the");
    println!("    program and local_bh_enable, so the floor carries one clock read and that call overhead;");
    println!("    'minus floor' takes them out.");
    println!("    new_flow_syn: a new client address per call (conntrack miss, Maglev placement, insert).");
    println!("    established: ACKs of one flow opened by a SYN beforehand (conntrack hit, port rewrite).");
    println!(
        "    guard_*: a later phase with xdp.guard on ({GUARD_LIST_NETWORKS}+ networks in each list, a SYN"
    );
    println!(
        "    limit that never refuses), its own floor. guard_new_flow: a new allowed client's SYN (deny"
    );
    println!("    and allow lookups, a new rate bucket, then new_flow_syn's work). guard_known: a new");
    println!("    connection of a client seen before (the lookups, a compare-and-swap on its bucket, then");
    println!("    new_flow_syn's work). guard_drop: a denied client's SYN (deny lookup, XDP_DROP).");
    println!("    l4_*: a later phase in a namespace whose routes answer bpf_fib_lookup, its own floor.");
    println!("    l4_new_flow: a new client's SYN to an L4 service (Maglev, a node port claimed, two LRU");
    println!("    inserts, FIB lookup, DNAT + SNAT, redirect). l4_established: an ACK of an open flow");
    println!("    (conntrack hit, its cached next hop, rewrite, redirect). l4_reply: the endpoint's answer");
    println!("    to it (reply lookup, cached next hop, rewrite, redirect).");
    if rows.iter().any(|r| r.program == katran::PROGRAM) {
        println!(
            "    katran_*: Katran's balancer_ingress in the same rounds, one TCP VIP over 3 reals (as its"
        );
        println!(
            "    tests provision it), a connection table per CPU. katran_non_vip: the non_service frame"
        );
        println!("    (VIP lookup with the port, then without; XDP_PASS). katran_new_flow: the same SYN as");
        println!("    new_flow_syn (table miss, consistent hashing, table insert, counters, IP-in-IP");
        println!("    encapsulation, XDP_TX). katran_established: an ACK of a flow its table holds (hit,");
        println!("    counters, encapsulation, XDP_TX). l4_katran_*: the same two in the L4 phase's rounds.");
    }
    println!("  {many}: only for what does not rewrite. The kernel does not restore the frame between runs,");
    println!("    so a steering case would time its own rewritten output from the second run on. The clock");
    println!("    read is averaged away and, with repeat > 1, the kernel patches the program into the XDP");
    println!(
        "    dispatcher (a direct call) for the duration: these floors are lower than the repeat-1 ones."
    );
    println!("  mean* = mean of the 5th-95th percentile of the samples; p90 and mean* are ns per packet.");
    println!("  wall us/call = user-space clock around the whole call (syscall, copies in and out, aya's");
    println!("    program lookup); for repeat > 1 it also includes the two dispatcher updates, which wait");
    println!("    for an RCU grace period, so it says nothing about the per-packet cost there.");
    if zeros * 2 > single.len() {
        println!("  Clock: most repeat-1 samples are 0 ns; the repeat-1 rows mean nothing on this machine.");
    } else if step > 1 {
        println!(
            "  Clock: the repeat-1 samples fall on a ~{step} ns grid (the kernel clock as read here), so"
        );
        println!(
            "    repeat-1 medians move in {step} ns steps; mean* is finer, the repeat-N rows finer still."
        );
    } else {
        println!("  Clock: the repeat-1 samples show no grid coarser than 1 ns ({zeros} of them are 0 ns).");
    }
    println!();

    let floor = median("pass_floor", Method::Single).unwrap_or(0);
    let value = |case: &str| median(case, Method::Single).unwrap_or(0);
    for case in ["non_service", "new_flow_syn", "established"] {
        println!("xdp_{case}_ns={}", value(case));
    }
    println!("xdp_pass_floor_ns={floor}");
    for case in ["non_service", "new_flow_syn", "established"] {
        println!("xdp_{case}_minus_floor_ns={}", value(case) as i64 - floor as i64);
    }
    let floor_rep = median("pass_floor", many).unwrap_or(0);
    let plain_rep = median("non_service", many).unwrap_or(0);
    println!("xdp_non_service_repeat_ns={plain_rep}");
    println!("xdp_pass_floor_repeat_ns={floor_rep}");
    println!("xdp_non_service_repeat_minus_floor_ns={}", plain_rep as i64 - floor_rep as i64);
    let guard_floor = value("guard_floor");
    let (guard_new, guard_drop) = (value("guard_new_flow"), value("guard_drop"));
    println!("xdp_guard_floor_ns={guard_floor}");
    println!("xdp_guard_new_flow_minus_floor_ns={}", guard_new as i64 - guard_floor as i64);
    let new_flow = value("new_flow_syn") as i64 - floor as i64;
    println!("xdp_guard_cost_per_new_flow_ns={}", (guard_new as i64 - guard_floor as i64) - new_flow);
    let known = value("guard_known") as i64 - guard_floor as i64;
    println!("xdp_guard_known_source_minus_floor_ns={known}");
    println!("xdp_guard_cost_per_known_source_flow_ns={}", known - new_flow);
    println!("xdp_guard_drop_ns={guard_drop}");
    println!("xdp_guard_drop_minus_floor_ns={}", guard_drop as i64 - guard_floor as i64);
    println!("xdp_guard_drop_over_floor={:.2}", guard_drop as f64 / guard_floor.max(1) as f64);
    let l4_floor = value("l4_floor");
    println!("xdp_l4_floor_ns={l4_floor}");
    for case in ["new_flow", "established", "reply"] {
        let ns = value(&format!("l4_{case}"));
        println!("xdp_l4_{case}_ns={ns}");
        println!("xdp_l4_{case}_minus_floor_ns={}", ns as i64 - l4_floor as i64);
    }
}
