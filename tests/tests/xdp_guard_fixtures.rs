//! BPF_PROG_TEST_RUN fixtures for the XDP guard (`xdp.guard`): deny and allow lists for IPv4
//! and IPv6, the per-source rate limits for SYNs and UDP datagrams, and list reloads that never
//! leave a gap. Crafted frames through the loaded program with a service installed.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use lb_common::Stat;
use lb_tests::{frames, require_root, wait_for};
use lb_userspace::{
    config::{GuardRateLimit, XdpGuardConfig},
    dataplane::{Dataplane, Guard, GuardChanges, Program, Protocol, Service},
};

#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn denied_sources_lose_their_syns_and_datagrams_and_only_those() {
    require_root!();
    let (dataplane, mut guard) = dataplane_with_guard();
    guard.apply(&lists(&["198.18.0.9", "2001:db8:bad::/48"], &[])).unwrap();

    let denied_v4: IpAddr = "198.18.0.9".parse().unwrap();
    let denied_v6: IpAddr = "2001:db8:bad:1::7".parse().unwrap();
    assert_eq!(verdict_counted(&dataplane, &syn(denied_v4, 40000), Stat::DropDeny), (XDP_DROP, 1));
    assert_eq!(verdict_counted(&dataplane, &syn(denied_v6, 40000), Stat::DropDeny), (XDP_DROP, 1));
    assert_eq!(verdict_counted(&dataplane, &datagram(denied_v6), Stat::DropDeny), (XDP_DROP, 1));
    assert_eq!(verdict_counted(&dataplane, &datagram(denied_v4), Stat::DropDeny), (XDP_DROP, 1));
    // Only openings are judged: a segment of an established connection goes on to steering.
    assert_eq!(verdict_counted(&dataplane, &ack(denied_v4, 40000), Stat::Steered), (XDP_PASS, 1));
    // Neighbours of the denied networks, in both families, are served.
    for client in ["198.18.0.8", "198.18.0.10", "2001:db8:bae::1", "2001:db8::1"] {
        let client: IpAddr = client.parse().unwrap();
        assert_eq!(
            verdict_counted(&dataplane, &syn(client, 40001), Stat::NewFlows),
            (XDP_PASS, 1),
            "{client}"
        );
        assert_eq!(verdict_counted(&dataplane, &datagram(client), Stat::Steered), (XDP_PASS, 1), "{client}");
    }

    // A family's whole space denies only that family: 0.0.0.0/0 is not ::/0.
    guard.apply(&lists(&["0.0.0.0/0"], &[])).unwrap();
    assert_eq!(verdict(&dataplane, &syn("198.18.0.8".parse().unwrap(), 40002)), XDP_DROP);
    assert_eq!(verdict(&dataplane, &syn("2001:db8::1".parse().unwrap(), 40002)), XDP_PASS);
    guard.apply(&lists(&["::/0"], &[])).unwrap();
    assert_eq!(verdict(&dataplane, &syn("198.18.0.8".parse().unwrap(), 40003)), XDP_PASS);
    assert_eq!(verdict(&dataplane, &syn("2001:db8::1".parse().unwrap(), 40003)), XDP_DROP);

    // Emptied, the list denies nothing.
    guard.apply(&XdpGuardConfig::default()).unwrap();
    assert_eq!(guard.config().flags, 0);
    assert_eq!(verdict(&dataplane, &syn(denied_v4, 40004)), XDP_PASS);
    assert_eq!(verdict(&dataplane, &syn(denied_v6, 40004)), XDP_PASS);
}

#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn an_allow_list_admits_only_its_networks_and_deny_wins_over_it() {
    require_root!();
    let (dataplane, mut guard) = dataplane_with_guard();
    guard.apply(&lists(&["198.18.0.9"], &["198.18.0.0/24", "2001:db8::/32"])).unwrap();
    for (client, expected) in [
        ("198.18.0.1", (XDP_PASS, Stat::NewFlows)),
        ("2001:db8:1::1", (XDP_PASS, Stat::NewFlows)),
        // Inside the allowed /24 and denied: deny wins, whatever the prefix lengths.
        ("198.18.0.9", (XDP_DROP, Stat::DropDeny)),
        ("198.18.1.1", (XDP_DROP, Stat::DropNotAllowed)),
        ("10.0.0.1", (XDP_DROP, Stat::DropNotAllowed)),
        ("2001:db9::1", (XDP_DROP, Stat::DropNotAllowed)),
    ] {
        let client: IpAddr = client.parse().unwrap();
        let (verdict, stat) = expected;
        assert_eq!(verdict_counted(&dataplane, &syn(client, 40000), stat), (verdict, 1), "{client}");
    }
    // UDP is judged by the same lists.
    let outsider: IpAddr = "10.0.0.1".parse().unwrap();
    assert_eq!(verdict_counted(&dataplane, &datagram(outsider), Stat::DropNotAllowed), (XDP_DROP, 1));
    // An empty allow list admits everyone not denied.
    guard.apply(&lists(&["198.18.0.9"], &[])).unwrap();
    assert_eq!(verdict(&dataplane, &syn(outsider, 40001)), XDP_PASS);
    assert_eq!(verdict(&dataplane, &syn("198.18.0.9".parse().unwrap(), 40001)), XDP_DROP);
}

/// A client that connects to a worker's own port instead of the service port is judged the
/// same way; the node's other ports are not the guard's business.
#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn the_workers_own_ports_are_no_way_around_the_guard() {
    require_root!();
    let (dataplane, mut guard) = dataplane_with_guard();
    let denied = Ipv4Addr::new(198, 18, 0, 9);
    let direct = |client: Ipv4Addr, port: u16, flags: u8| {
        frames::ipv4(frames::IPPROTO_TCP, client, NODE_V4, 40000, port, flags, b"")
    };
    // Without a guard such a SYN passes untouched, as any non-service packet.
    let syn = direct(denied, 20001, frames::TCP_SYN);
    assert_eq!(verdict_counted(&dataplane, &syn, Stat::PassNotService), (XDP_PASS, 1));

    guard.apply(&lists(&["198.18.0.9", "2001:db8:bad::/48"], &[])).unwrap();
    assert_eq!(verdict_counted(&dataplane, &syn, Stat::DropDeny), (XDP_DROP, 1));
    let to_v6_worker = frames::ipv6(
        frames::IPPROTO_UDP,
        "2001:db8:bad::1".parse().unwrap(),
        node_v6(),
        5000,
        21000,
        0,
        b"query",
    );
    assert_eq!(verdict_counted(&dataplane, &to_v6_worker, Stat::DropDeny), (XDP_DROP, 1));
    // Not judged: established segments, other sources, other ports of the node.
    for frame in [
        direct(denied, 20001, frames::TCP_ACK),
        direct(Ipv4Addr::new(198, 18, 0, 1), 20001, frames::TCP_SYN),
        direct(denied, 22, frames::TCP_SYN),
    ] {
        let out = dataplane.test_run_xdp(&frame).unwrap();
        assert_eq!((out.verdict, &out.frame), (XDP_PASS, &frame), "passed untouched");
    }
}

/// A new handle on the maps (what a process that reuses pinned maps in an upgrade gets)
/// starts from the entries they hold, so its first apply removes what is no longer configured
/// and turns an emptied list off, instead of leaving its predecessor's entries in force.
#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn a_new_handle_starts_from_what_the_maps_hold() {
    require_root!();
    let (dataplane, mut guard) = dataplane_with_guard();
    let before = XdpGuardConfig {
        syn_rate_limit: Some(GuardRateLimit { per_second: 1, burst: 1 }),
        ..lists(&["198.18.0.9", "2001:db8:bad::/48"], &["198.18.0.0/24"])
    };
    guard.apply(&before).unwrap();
    let written = guard.config();
    drop(guard);
    let mut successor = dataplane.open_guard().unwrap();
    assert_eq!(successor.config(), written, "the settings slot is read back");
    assert_eq!(successor.apply(&before).unwrap(), GuardChanges { added: 0, removed: 0 }, "nothing to write");
    let changes = successor.apply(&XdpGuardConfig::default()).unwrap();
    assert_eq!(changes, GuardChanges { added: 0, removed: 3 });
    assert_eq!(successor.config().flags, 0);
    for client in ["198.18.0.9", "10.0.0.1", "2001:db8:bad::1"] {
        let client: IpAddr = client.parse().unwrap();
        assert_eq!(verdict(&dataplane, &syn(client, 40000)), XDP_PASS, "{client}");
        assert_eq!(verdict(&dataplane, &syn(client, 40001)), XDP_PASS, "{client}: no SYN limit left");
    }
}

/// Two CPUs admitting SYNs of one source at the same time spend one bucket, never more: the
/// bucket is shared by every CPU and moved by compare-and-swap. Each CPU runs the SYN 1,000
/// times per call in the kernel's own loop (BPF_PROG_TEST_RUN's repeat), so the two contend on
/// the bucket for the whole run; a bucket per CPU would admit about twice the burst, and a
/// plain read-modify-write loses updates and overspends. Admitted = runs - `drop_syn_rate`
/// (an admitted SYN's frame carries the worker port from then on, and a SYN to a worker port
/// is judged too, so every run meets the bucket).
#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn two_cpus_at_once_spend_one_bucket() {
    require_root!();
    const BURST: u64 = 20_000;
    const CALLS: u64 = 25;
    const REPEAT: u32 = 1_000;
    let cpus = lb_tests::cpu::allowed().unwrap();
    if cpus.len() < 2 {
        eprintln!("skipped: one CPU only ({cpus:?}); nothing runs at once");
        return;
    }
    let (dataplane, mut guard) = dataplane_with_guard();
    let settings = XdpGuardConfig {
        syn_rate_limit: Some(GuardRateLimit { per_second: 1, burst: BURST }),
        ..XdpGuardConfig::default()
    };
    guard.apply(&settings).unwrap();
    let client: IpAddr = "198.18.0.1".parse().unwrap();
    // The source's bucket exists before the race (its first packet inserts it).
    assert_eq!(verdict(&dataplane, &syn(client, 1000)), XDP_PASS);
    let before = dataplane.counters().unwrap().get(Stat::DropSynRate);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for &cpu in &cpus[..2] {
            let dataplane = &dataplane;
            scope.spawn(move || {
                lb_tests::cpu::pin_to(cpu).unwrap();
                for call in 0..CALLS {
                    dataplane.test_run(Program::Xdp, &syn(client, 2000 + call as u16), REPEAT).unwrap();
                }
            });
        }
    });
    let refilled = started.elapsed().as_secs() + 1;
    let runs = 2 * CALLS * u64::from(REPEAT);
    let admitted = runs - (dataplane.counters().unwrap().get(Stat::DropSynRate) - before);
    assert!(
        (BURST - 1..=BURST - 1 + refilled).contains(&admitted),
        "{admitted} of {runs} SYNs admitted by two CPUs at once; one bucket holds {} plus {refilled} refilled",
        BURST - 1
    );
}

/// The reload order (insert new entries, then flags, then remove old ones) leaves no moment
/// where a source listed before and after is judged by an empty or inactive list: while lists
/// flip between two different configurations 300 times on another thread, a source denied in
/// both is never admitted and a source allowed in both is never refused.
#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn list_reloads_leave_no_gap_for_sources_listed_before_and_after() {
    require_root!();
    let (dataplane, mut guard) = dataplane_with_guard();
    let a = lists(&["198.18.0.9", "10.9.0.0/16"], &["198.18.0.0/24"]);
    let b =
        lists(&["198.18.0.0/28", "10.8.0.0/16", "2001:db8:bad::/48"], &["198.18.0.0/16", "2001:db8::/32"]);
    guard.apply(&a).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let flipper = {
        let done = done.clone();
        std::thread::spawn(move || {
            for i in 0..300 {
                guard.apply(if i % 2 == 0 { &b } else { &a }).unwrap();
            }
            done.store(true, Ordering::Relaxed);
            guard
        })
    };
    let denied: IpAddr = "198.18.0.9".parse().unwrap();
    let allowed: IpAddr = "198.18.0.200".parse().unwrap();
    let mut rounds = 0u32;
    while !done.load(Ordering::Relaxed) || rounds < 100 {
        let sport = 30000 + (rounds % 30000) as u16;
        assert_eq!(verdict(&dataplane, &syn(denied, sport)), XDP_DROP, "the denied source got through");
        assert_eq!(verdict(&dataplane, &syn(allowed, sport)), XDP_PASS, "the allowed source was refused");
        rounds += 1;
    }
    flipper.join().unwrap();
    eprintln!("{rounds} rounds of two SYNs while the lists flipped 300 times");
}

#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn syn_rate_limit_admits_a_burst_then_one_syn_per_interval() {
    require_root!();
    let (dataplane, mut guard) = dataplane_with_guard();
    // 10 per second: one token every 100 ms, 3 at once.
    let settings = XdpGuardConfig {
        syn_rate_limit: Some(GuardRateLimit { per_second: 10, burst: 3 }),
        ..XdpGuardConfig::default()
    };
    guard.apply(&settings).unwrap();
    let client: IpAddr = "198.18.0.1".parse().unwrap();
    let started = Instant::now();
    for sport in 40000..40003 {
        assert_eq!(verdict(&dataplane, &syn(client, sport)), XDP_PASS, "SYN {sport} of the burst");
    }
    assert_eq!(verdict_counted(&dataplane, &syn(client, 40003), Stat::DropSynRate), (XDP_DROP, 1));
    // Established segments are never limited; nor are other sources, of either family.
    for sport in 40000..40003 {
        assert_eq!(verdict(&dataplane, &ack(client, sport)), XDP_PASS);
    }
    assert_eq!(verdict(&dataplane, &syn("198.18.0.3".parse().unwrap(), 40000)), XDP_PASS);
    let v6: IpAddr = "2001:db8::1".parse().unwrap();
    for sport in 40000..40003 {
        assert_eq!(verdict(&dataplane, &syn(v6, sport)), XDP_PASS, "IPv6 SYN {sport} of its own burst");
    }
    assert_eq!(verdict(&dataplane, &syn(v6, 40003)), XDP_DROP);
    // An IPv6 source is its /64: another address of the same /64 shares the bucket, another
    // /64 has its own.
    assert_eq!(verdict(&dataplane, &syn("2001:db8::beef:1".parse().unwrap(), 40004)), XDP_DROP);
    assert_eq!(verdict(&dataplane, &syn("2001:db8:0:1::1".parse().unwrap(), 40004)), XDP_PASS);

    // Refused SYNs cost nothing, so polling does not delay the refill: the first token comes
    // back one interval after the burst began, not earlier, and it is one token.
    let mut sport = 41000u16;
    wait_for(Duration::from_secs(3), "a refilled token", || {
        sport += 1;
        (verdict(&dataplane, &syn(client, sport)) == XDP_PASS).then_some(())
    })
    .unwrap();
    let refilled_after = started.elapsed();
    assert!(refilled_after >= Duration::from_millis(100), "refilled after only {refilled_after:?}");
    assert_eq!(verdict(&dataplane, &syn(client, 42000)), XDP_DROP, "one token, not a new burst");
}

#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn udp_rate_limit_counts_datagrams_per_source_apart_from_syns() {
    require_root!();
    let (dataplane, mut guard) = dataplane_with_guard();
    let settings = XdpGuardConfig {
        udp_rate_limit: Some(GuardRateLimit { per_second: 1, burst: 2 }),
        syn_rate_limit: Some(GuardRateLimit { per_second: 1, burst: 1 }),
        ..XdpGuardConfig::default()
    };
    guard.apply(&settings).unwrap();
    for client in ["198.18.0.1", "2001:db8::1"] {
        let client: IpAddr = client.parse().unwrap();
        assert_eq!(verdict(&dataplane, &datagram(client)), XDP_PASS);
        assert_eq!(verdict(&dataplane, &datagram(client)), XDP_PASS);
        assert_eq!(verdict_counted(&dataplane, &datagram(client), Stat::DropUdpRate), (XDP_DROP, 1));
        // The SYN bucket of the same source is its own.
        assert_eq!(verdict(&dataplane, &syn(client, 40000)), XDP_PASS, "{client}");
        assert_eq!(verdict_counted(&dataplane, &syn(client, 40001), Stat::DropSynRate), (XDP_DROP, 1));
    }
    // Lifting the limit admits at once.
    guard.apply(&XdpGuardConfig::default()).unwrap();
    assert_eq!(verdict(&dataplane, &datagram("198.18.0.1".parse().unwrap())), XDP_PASS);
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const XDP_PASS: u32 = 2;
const XDP_DROP: u32 = 1;
const NODE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;

fn node_v6() -> Ipv6Addr {
    "2001:db8::2".parse().unwrap()
}

/// A TCP service on every address (IPv4 and IPv6) at 8080 and a UDP one at 5353, and the
/// guard's handle.
fn dataplane_with_guard() -> (Dataplane, Guard) {
    let mut dataplane = Dataplane::load().unwrap();
    let mut steering = dataplane.take_steering().unwrap();
    steering
        .install(vec![
            Service {
                addr: "::".parse().unwrap(),
                port: TCP_PORT,
                protocol: Protocol::Tcp,
                worker_ports: vec![20000, 20001],
            },
            Service {
                addr: "::".parse().unwrap(),
                port: UDP_PORT,
                protocol: Protocol::Udp,
                worker_ports: vec![21000, 21001],
            },
        ])
        .unwrap();
    let guard = dataplane.open_guard().unwrap();
    (dataplane, guard)
}

fn lists(deny: &[&str], allow: &[&str]) -> XdpGuardConfig {
    XdpGuardConfig {
        deny: deny.iter().map(|c| c.parse().unwrap()).collect(),
        allow: allow.iter().map(|c| c.parse().unwrap()).collect(),
        ..XdpGuardConfig::default()
    }
}

fn tcp(client: IpAddr, sport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    match client {
        IpAddr::V4(v4) => frames::ipv4(frames::IPPROTO_TCP, v4, NODE_V4, sport, TCP_PORT, flags, payload),
        IpAddr::V6(v6) => frames::ipv6(frames::IPPROTO_TCP, v6, node_v6(), sport, TCP_PORT, flags, payload),
    }
}

fn syn(client: IpAddr, sport: u16) -> Vec<u8> {
    tcp(client, sport, frames::TCP_SYN, b"")
}

fn ack(client: IpAddr, sport: u16) -> Vec<u8> {
    tcp(client, sport, frames::TCP_ACK, b"GET /")
}

fn datagram(client: IpAddr) -> Vec<u8> {
    match client {
        IpAddr::V4(v4) => frames::ipv4(frames::IPPROTO_UDP, v4, NODE_V4, 5000, UDP_PORT, 0, b"query"),
        IpAddr::V6(v6) => frames::ipv6(frames::IPPROTO_UDP, v6, node_v6(), 5000, UDP_PORT, 0, b"query"),
    }
}

fn verdict(dataplane: &Dataplane, frame: &[u8]) -> u32 {
    dataplane.test_run_xdp(frame).unwrap().verdict
}

/// The verdict and by how much `stat` moved.
fn verdict_counted(dataplane: &Dataplane, frame: &[u8], stat: Stat) -> (u32, u64) {
    let before = dataplane.counters().unwrap().get(stat);
    let verdict = verdict(dataplane, frame);
    (verdict, dataplane.counters().unwrap().get(stat) - before)
}
