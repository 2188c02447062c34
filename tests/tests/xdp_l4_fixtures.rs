//! BPF_PROG_TEST_RUN fixtures for the L4 fast path: a client packet to an L4 service leaves
//! rewritten to its endpoint (node as the source, a SNAT port, the next hop's MACs, both
//! checksums valid), the endpoint's reply leaves rewritten back to the client, a UDP datagram
//! without a checksum keeps none, and every malformed shape addressed to the service passes
//! untouched, counted by its reason; a closed flow's node port goes to a new flow when none is
//! free, and a SYN on a closed flow is a new flow. The program runs in a namespace of its own whose routes
//! and permanent neighbours give `bpf_fib_lookup` its answers (a test run's ingress device is
//! the caller's loopback).

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use lb_common::{L4_CLOSED_REUSE_NS, L4_NEXT_HOP_TTL_NS, L4_SNAT_PORT_MIN, Stat};
use lb_tests::{
    frames::{self, ETH_HLEN, IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_FIN, TCP_SYN},
    netns::Netns,
    require_root, topology,
};
use lb_userspace::{
    config::L4Protocol,
    dataplane::{Dataplane, L4Spec},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const ENDPOINT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0c, 0x01];
const ENDPOINT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0e, 0x02];
const TCP_PORT: u16 = 7000;
const UDP_PORT: u16 = 7001;
/// A service whose only endpoint has no route.
const UNROUTED_PORT: u16 = 7002;
/// A service whose only endpoint is down.
const EMPTY_PORT: u16 = 7003;

#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn both_directions_are_translated_with_valid_checksums() {
    require_root!();
    let ns = routed_namespace();
    ns.run(|| {
        let dataplane = dataplane_with_services();
        let counters = || dataplane.counters().unwrap();

        // The client's SYN leaves for the endpoint, from the node.
        let syn = frames::ipv4(IPPROTO_TCP, CLIENT, NODE, 40000, TCP_PORT, TCP_SYN, b"");
        let before = counters();
        let out = dataplane.test_run_xdp(&syn).unwrap();
        assert_eq!(out.verdict, XDP_REDIRECT);
        let sent = Parsed::of(&out.frame);
        assert_eq!((sent.src, sent.dst, sent.dport), (NODE, ENDPOINT, TCP_PORT));
        assert!(sent.sport >= L4_SNAT_PORT_MIN, "a SNAT port: {}", sent.sport);
        assert_eq!(sent.dst_mac, ENDPOINT_MAC, "the endpoint's neighbour entry");
        assert!(frames::ipv4_checksums_ok(&out.frame), "checksums after DNAT + SNAT");
        assert_eq!(sent.ttl, 64, "TTL left as it came");
        let after = counters();
        assert_eq!(after.get(Stat::L4NewFlows) - before.get(Stat::L4NewFlows), 1);
        assert_eq!(after.get(Stat::L4Forwarded) - before.get(Stat::L4Forwarded), 1);

        // The rest of the flow follows it: same node port, no new placement.
        let ack = frames::ipv4(IPPROTO_TCP, CLIENT, NODE, 40000, TCP_PORT, TCP_ACK, b"payload");
        let out = dataplane.test_run_xdp(&ack).unwrap();
        assert_eq!(out.verdict, XDP_REDIRECT);
        assert_eq!(Parsed::of(&out.frame).sport, sent.sport);
        assert!(frames::ipv4_checksums_ok(&out.frame));
        assert_eq!(counters().get(Stat::L4NewFlows), after.get(Stat::L4NewFlows));

        // The endpoint's answer to that node port goes back to the client, from the service.
        let reply = frames::ipv4(IPPROTO_TCP, ENDPOINT, NODE, TCP_PORT, sent.sport, TCP_SYN | TCP_ACK, b"hi");
        let before = counters();
        let out = dataplane.test_run_xdp(&reply).unwrap();
        assert_eq!(out.verdict, XDP_REDIRECT);
        let back = Parsed::of(&out.frame);
        assert_eq!((back.src, back.sport, back.dst, back.dport), (NODE, TCP_PORT, CLIENT, 40000));
        assert_eq!(back.dst_mac, CLIENT_MAC);
        assert!(frames::ipv4_checksums_ok(&out.frame), "checksums after the reverse translation");
        assert_eq!(counters().get(Stat::L4Replied) - before.get(Stat::L4Replied), 1);

        // The same shape from a source that holds no flow is no reply of ours.
        let stranger = frames::ipv4(IPPROTO_TCP, ENDPOINT, NODE, 7999, sent.sport, TCP_ACK, b"");
        let before = counters();
        let out = dataplane.test_run_xdp(&stranger).unwrap();
        assert_eq!((out.verdict, out.frame.as_slice()), (XDP_PASS, stranger.as_slice()));
        assert_eq!(counters().get(Stat::PassNotService) - before.get(Stat::PassNotService), 1);

        // UDP, with a checksum and without one (which stays without one).
        let datagram = frames::ipv4(IPPROTO_UDP, CLIENT, NODE, 40001, UDP_PORT, 0, b"odd");
        let out = dataplane.test_run_xdp(&datagram).unwrap();
        assert_eq!(out.verdict, XDP_REDIRECT);
        assert!(frames::ipv4_checksums_ok(&out.frame));
        let udp_port = Parsed::of(&out.frame).sport;
        let mut bare = frames::ipv4(IPPROTO_UDP, CLIENT, NODE, 40002, UDP_PORT, 0, b"none");
        bare[ETH_HLEN + 20 + 6..ETH_HLEN + 20 + 8].copy_from_slice(&[0, 0]);
        let out = dataplane.test_run_xdp(&bare).unwrap();
        assert_eq!(out.verdict, XDP_REDIRECT);
        assert_eq!(&out.frame[ETH_HLEN + 26..ETH_HLEN + 28], &[0, 0], "a zero UDP checksum stays zero");
        assert_eq!(frames::checksum_fold(0, &out.frame[ETH_HLEN..ETH_HLEN + 20]), 0, "IP checksum");
        let answer = frames::ipv4(IPPROTO_UDP, ENDPOINT, NODE, UDP_PORT, udp_port, 0, b"answer");
        let out = dataplane.test_run_xdp(&answer).unwrap();
        assert_eq!(out.verdict, XDP_REDIRECT);
        assert_eq!(Parsed::of(&out.frame).dport, 40001);
        assert!(frames::ipv4_checksums_ok(&out.frame));

        // No next hop: passed untouched, nothing rewritten. No healthy endpoint: dropped.
        let unrouted = frames::ipv4(IPPROTO_TCP, CLIENT, NODE, 40003, UNROUTED_PORT, TCP_SYN, b"");
        let before = counters();
        let out = dataplane.test_run_xdp(&unrouted).unwrap();
        assert_eq!((out.verdict, out.frame.as_slice()), (XDP_PASS, unrouted.as_slice()));
        assert_eq!(counters().get(Stat::PassL4NoRoute) - before.get(Stat::PassL4NoRoute), 1);
        let empty = frames::ipv4(IPPROTO_TCP, CLIENT, NODE, 40004, EMPTY_PORT, TCP_SYN, b"");
        let before = counters();
        assert_eq!(dataplane.test_run_xdp(&empty).unwrap().verdict, XDP_DROP);
        assert_eq!(counters().get(Stat::DropL4NoBackend) - before.get(Stat::DropL4NoBackend), 1);
    })
    .unwrap();
}

/// ICMP errors about a flow XDP sent to an endpoint arrive at the node's SNAT port, where no
/// socket would take them: XDP sends them on to the flow's client, from the service, quoting
/// the packet exactly as the client sent it (so the client's kernel finds its socket), with the
/// IP, ICMP and quoted checksums valid. Errors about no live flow, and other ICMP, pass.
#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn icmp_errors_about_a_flow_reach_its_client_translated() {
    require_root!();
    let ns = routed_namespace();
    ns.run(|| {
        let dataplane = dataplane_with_services();
        let counters = || dataplane.counters().unwrap();

        // The endpoint's port unreachable for a UDP datagram, quoting all of it (as Linux does).
        let datagram = frames::ipv4(IPPROTO_UDP, CLIENT, NODE, 40010, UDP_PORT, 0, b"query");
        let out = dataplane.test_run_xdp(&datagram).unwrap();
        assert_eq!(out.verdict, XDP_REDIRECT);
        let forwarded = out.frame;
        let unreachable = icmp_error(ENDPOINT, NODE, [3, 3], &forwarded[ETH_HLEN..]);
        let before = counters();
        let out = dataplane.test_run_xdp(&unreachable).unwrap();
        assert_eq!(out.verdict, XDP_REDIRECT, "{:?}", counters());
        let back = Parsed::of(&out.frame);
        assert_eq!(
            (back.src, back.dst, back.dst_mac),
            (NODE, CLIENT, CLIENT_MAC),
            "from the service to the client"
        );
        let icmp = &out.frame[ETH_HLEN + 20..];
        assert_eq!(&icmp[..2], &[3, 3], "type and code kept");
        assert_eq!(frames::checksum_fold(0, &out.frame[ETH_HLEN..ETH_HLEN + 20]), 0, "outer IP checksum");
        assert_eq!(frames::checksum_fold(0, icmp), 0, "ICMP checksum");
        assert_eq!(
            &icmp[8..],
            &datagram[ETH_HLEN..],
            "the quote is the client's own datagram, checksums included"
        );
        assert_eq!(counters().get(Stat::L4IcmpReplied) - before.get(Stat::L4IcmpReplied), 1);

        // A router's "fragmentation needed" for a TCP segment, quoting the IP header and only
        // the 8 bytes of transport a router must: the quoted TCP checksum is not there to fix.
        let syn = frames::ipv4(IPPROTO_TCP, CLIENT, NODE, 40011, TCP_PORT, TCP_SYN, b"");
        let out = dataplane.test_run_xdp(&syn).unwrap();
        assert_eq!(out.verdict, XDP_REDIRECT);
        let forwarded = out.frame;
        let router = Ipv4Addr::new(198, 18, 1, 1);
        let mut too_big = icmp_error(router, NODE, [3, 4], &forwarded[ETH_HLEN..ETH_HLEN + 28]);
        // The next hop's MTU, in the ICMP header's second word (RFC 1191).
        set_icmp_word(&mut too_big, 6, 1400);
        let out = dataplane.test_run_xdp(&too_big).unwrap();
        assert_eq!(out.verdict, XDP_REDIRECT);
        let back = Parsed::of(&out.frame);
        assert_eq!((back.src, back.dst), (NODE, CLIENT));
        let icmp = &out.frame[ETH_HLEN + 20..];
        assert_eq!(frames::checksum_fold(0, icmp), 0, "ICMP checksum");
        assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1400, "the MTU kept");
        assert_eq!(&icmp[8..36], &syn[ETH_HLEN..ETH_HLEN + 28], "the client's IP header and ports");

        // Time exceeded on the way to the endpoint: the same.
        let expired = icmp_error(router, NODE, [11, 0], &forwarded[ETH_HLEN..ETH_HLEN + 28]);
        let before = counters();
        assert_eq!(dataplane.test_run_xdp(&expired).unwrap().verdict, XDP_REDIRECT);
        assert_eq!(counters().get(Stat::L4IcmpReplied) - before.get(Stat::L4IcmpReplied), 1);

        // About a node port no flow holds, about a packet from elsewhere, an echo request, a
        // quote cut short: passed untouched, counted as before.
        let mut stranger = forwarded[ETH_HLEN..ETH_HLEN + 28].to_vec();
        stranger[20..22].copy_from_slice(&(L4_SNAT_PORT_MIN - 1).to_be_bytes());
        let mut unheld = forwarded[ETH_HLEN..ETH_HLEN + 28].to_vec();
        let held = u16::from_be_bytes([unheld[20], unheld[21]]);
        let other = if held == L4_SNAT_PORT_MIN { held + 1 } else { held - 1 };
        unheld[20..22].copy_from_slice(&other.to_be_bytes());
        let echo = icmp_error(router, NODE, [8, 0], &forwarded[ETH_HLEN..ETH_HLEN + 28]);
        let short = icmp_error(router, NODE, [3, 4], &forwarded[ETH_HLEN..ETH_HLEN + 24]);
        for frame in [
            icmp_error(router, NODE, [3, 1], &stranger),
            icmp_error(router, NODE, [3, 1], &unheld),
            echo,
            short,
        ] {
            let before = counters();
            let out = dataplane.test_run_xdp(&frame).unwrap();
            assert_eq!((out.verdict, out.frame.as_slice()), (XDP_PASS, frame.as_slice()));
            assert_eq!(counters().get(Stat::PassOtherProtocol) - before.get(Stat::PassOtherProtocol), 1);
        }
    })
    .unwrap();
}

#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn malformed_frames_to_a_service_pass_untouched_and_counted() {
    require_root!();
    let ns = routed_namespace();
    ns.run(|| {
        let dataplane = dataplane_with_services();
        let good = frames::ipv4(IPPROTO_TCP, CLIENT, NODE, 41000, TCP_PORT, TCP_SYN, b"data");
        let ip = ETH_HLEN;
        let tcp = ETH_HLEN + 20;
        let edit = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut frame = good.clone();
            f(&mut frame);
            frame
        };
        let cases: Vec<(&str, Vec<u8>, Stat)> = vec![
            ("truncated TCP header", good[..tcp + 10].to_vec(), Stat::PassTruncated),
            ("IHL under 5 words", edit(&|f| f[ip] = 0x44), Stat::PassBadIpHeader),
            (
                "total length past the frame",
                edit(&|f| f[ip + 2..ip + 4].copy_from_slice(&400u16.to_be_bytes())),
                Stat::PassBadIpLength,
            ),
            (
                "total length under the header",
                edit(&|f| f[ip + 2..ip + 4].copy_from_slice(&10u16.to_be_bytes())),
                Stat::PassBadIpLength,
            ),
            ("TCP data offset under 5 words", edit(&|f| f[tcp + 12] = 4 << 4), Stat::PassBadTransportHeader),
            (
                "TCP data offset past the packet",
                edit(&|f| f[tcp + 12] = 15 << 4),
                Stat::PassBadTransportHeader,
            ),
            ("first fragment", edit(&|f| f[ip + 6] = 0x20), Stat::PassFragment),
            ("later fragment", edit(&|f| f[ip + 7] = 0x10), Stat::PassFragment),
            ("IPv4 options", with_options(&good), Stat::PassL4Unsupported),
            ("IPv6 extension header", ipv6_hop_by_hop(), Stat::PassIpv6Extension),
        ];
        for (what, frame, reason) in cases {
            let before = dataplane.counters().unwrap();
            let out = dataplane.test_run_xdp(&frame).unwrap();
            let after = dataplane.counters().unwrap();
            assert_eq!(out.verdict, XDP_PASS, "{what}");
            assert_eq!(out.frame, frame, "{what}: untouched");
            assert_eq!(after.get(reason) - before.get(reason), 1, "{what}: counted as {}", reason.name());
            for stat in [Stat::L4Forwarded, Stat::L4NewFlows] {
                assert_eq!(after.get(stat), before.get(stat), "{what}: {}", stat.name());
            }
        }
    })
    .unwrap();
}

/// The next hop is asked of the FIB once and kept in the flow's entries (one per direction):
/// a neighbour's new MAC reaches an established flow within `L4_NEXT_HOP_TTL_NS` in each
/// direction, and a packet longer than the route's MTU is not sent with the kept answer but
/// asked about again (the FIB refuses it: passed, counted) while the flow goes on.
#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn the_next_hop_is_kept_and_follows_a_neighbour_change_within_its_ttl() {
    require_root!();
    let ns = routed_namespace();
    let name = ns.name().to_owned();
    ns.run(move || {
        let dataplane = dataplane_with_services();
        let ttl = Duration::from_nanos(L4_NEXT_HOP_TTL_NS);
        let opened = Instant::now();
        let syn = frames::ipv4(IPPROTO_TCP, CLIENT, NODE, 42000, TCP_PORT, TCP_SYN, b"");
        let out = dataplane.test_run_xdp(&syn).unwrap();
        assert_eq!(out.verdict, XDP_REDIRECT);
        let sent = Parsed::of(&out.frame);
        assert_eq!(sent.dst_mac, ENDPOINT_MAC);
        let ack = frames::ipv4(IPPROTO_TCP, CLIENT, NODE, 42000, TCP_PORT, TCP_ACK, b"more");
        let reply = frames::ipv4(IPPROTO_TCP, ENDPOINT, NODE, TCP_PORT, sent.sport, TCP_ACK, b"back");
        assert_eq!(Parsed::of(&dataplane.test_run_xdp(&reply).unwrap().frame).dst_mac, CLIENT_MAC);

        // Both neighbours move to new MACs.
        const MOVED: [[u8; 6]; 2] = [[0x02, 0, 0, 0, 0x0e, 0x99], [0x02, 0, 0, 0, 0x0c, 0x99]];
        for (neighbour, device, mac) in [(ENDPOINT, "e0", MOVED[0]), (CLIENT, "c0", MOVED[1])] {
            let mac = mac.map(|b| format!("{b:02x}")).join(":");
            let neighbour = neighbour.to_string();
            let args = [
                "-n",
                &name,
                "neigh",
                "replace",
                &neighbour,
                "lladdr",
                &mac,
                "dev",
                device,
                "nud",
                "permanent",
            ];
            lb_tests::netns::ip(&args).unwrap();
        }
        let changed = Instant::now();
        let macs = |dataplane: &Dataplane| {
            let forward = dataplane.test_run_xdp(&ack).unwrap();
            let back = dataplane.test_run_xdp(&reply).unwrap();
            assert_eq!((forward.verdict, back.verdict), (XDP_REDIRECT, XDP_REDIRECT));
            [Parsed::of(&forward.frame).dst_mac, Parsed::of(&back.frame).dst_mac]
        };
        let first = macs(&dataplane);
        // Still within the answers' lifetime: the kept MACs (the FIB is not asked per packet).
        if opened.elapsed() < ttl / 2 {
            assert_eq!(first, [ENDPOINT_MAC, CLIENT_MAC], "the next hops are kept");
        }
        // Polled until both directions follow, with a deadline well past the lifetime.
        let deadline = changed + ttl * 8;
        loop {
            if macs(&dataplane) == MOVED {
                break;
            }
            assert!(Instant::now() < deadline, "the new MACs were not used within {:?}", ttl * 8);
            std::thread::sleep(Duration::from_millis(5));
        }

        // Longer than the route's MTU (1500): refused by the FIB, passed untouched, counted;
        // the flow's next packet goes on as before.
        let big = frames::ipv4(IPPROTO_TCP, CLIENT, NODE, 42000, TCP_PORT, TCP_ACK, &[7u8; 1600]);
        let before = dataplane.counters().unwrap();
        let out = dataplane.test_run_xdp(&big).unwrap();
        assert_eq!((out.verdict, out.frame.as_slice()), (XDP_PASS, big.as_slice()));
        assert_eq!(
            dataplane.counters().unwrap().get(Stat::PassL4NoRoute) - before.get(Stat::PassL4NoRoute),
            1
        );
        assert_eq!(macs(&dataplane), MOVED);
    })
    .unwrap();
}

/// An endpoint's node ports run out when live flows hold them all: a new flow is then dropped
/// (`drop_l4_no_port`). Once those flows have closed (a FIN passed) and idled
/// `L4_CLOSED_REUSE_NS`, a new flow that finds no free port takes a closed flow's port
/// instead, and the endpoint's replies to that port reach the new client. Without this an
/// endpoint took at most 4536 new connections a minute. About 2 s (one of them the idle second).
#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn a_closed_flows_port_goes_to_a_new_flow_when_none_is_free() {
    require_root!();
    let ns = routed_namespace();
    ns.run(|| {
        let dataplane = dataplane_with_services();
        let counters = || dataplane.counters().unwrap();
        let syn = |client_port| frames::ipv4(IPPROTO_TCP, CLIENT, NODE, client_port, TCP_PORT, TCP_SYN, b"");
        // New connections until 50 in a row find no free port: the endpoint's ports are taken.
        let mut client_ports = 1024u16..;
        let mut holders = Vec::new();
        let mut dropped_in_a_row = 0;
        while dropped_in_a_row < 50 {
            let port = client_ports.next().unwrap();
            assert!(port < 60_000, "{} connections hold {} node ports", port - 1024, holders.len());
            match dataplane.test_run_xdp(&syn(port)).unwrap().verdict {
                XDP_REDIRECT => {
                    holders.push(port);
                    dropped_in_a_row = 0;
                }
                XDP_DROP => dropped_in_a_row += 1,
                verdict => panic!("verdict {verdict}"),
            }
        }
        assert!(holders.len() > 4400, "nearly all of the 4536 ports: {}", holders.len());
        assert!(counters().get(Stat::DropL4NoPort) >= 50);

        // Every holder closes. Just closed, their ports stay theirs.
        let fin_started = Instant::now();
        for &port in &holders {
            let fin = frames::ipv4(IPPROTO_TCP, CLIENT, NODE, port, TCP_PORT, TCP_FIN | TCP_ACK, b"");
            assert_eq!(dataplane.test_run_xdp(&fin).unwrap().verdict, XDP_REDIRECT);
        }
        let closed = Instant::now();
        let before = counters();
        let fresh: Vec<u16> = client_ports.by_ref().take(20).collect();
        for &port in &fresh {
            dataplane.test_run_xdp(&syn(port)).unwrap();
        }
        assert!(
            fin_started.elapsed() < Duration::from_nanos(L4_CLOSED_REUSE_NS) / 2,
            "the FINs and the first tries took {:?}: too slow for this check",
            fin_started.elapsed()
        );
        assert!(counters().get(Stat::DropL4NoPort) > before.get(Stat::DropL4NoPort), "{:?}", counters());

        // The bound under test: once the last FIN is L4_CLOSED_REUSE_NS old (plus the coarse
        // clock's tick), every new flow gets a closed flow's port.
        std::thread::sleep(
            (Duration::from_nanos(L4_CLOSED_REUSE_NS) + Duration::from_millis(50))
                .saturating_sub(closed.elapsed()),
        );
        let before = counters();
        let mut last = None;
        for port in client_ports.by_ref().take(200) {
            let out = dataplane.test_run_xdp(&syn(port)).unwrap();
            assert_eq!(out.verdict, XDP_REDIRECT, "client port {port}: {:?}", counters());
            let sent = Parsed::of(&out.frame);
            assert!(frames::ipv4_checksums_ok(&out.frame));
            last = Some((port, sent.sport));
        }
        let after = counters();
        assert_eq!(after.get(Stat::DropL4NoPort), before.get(Stat::DropL4NoPort));
        assert_eq!(after.get(Stat::L4NewFlows) - before.get(Stat::L4NewFlows), 200);
        // The endpoint's answer on a taken port goes to the flow that took it.
        let (client_port, node_port) = last.unwrap();
        let reply = frames::ipv4(IPPROTO_TCP, ENDPOINT, NODE, TCP_PORT, node_port, TCP_SYN | TCP_ACK, b"");
        let out = dataplane.test_run_xdp(&reply).unwrap();
        assert_eq!(out.verdict, XDP_REDIRECT);
        assert_eq!(Parsed::of(&out.frame).dport, client_port);
    })
    .unwrap();
}

#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn a_syn_on_a_closed_flow_is_placed_again_and_a_repeated_syn_follows_its_open_flow() {
    require_root!();
    let ns = routed_namespace();
    ns.run(|| {
        let dataplane = dataplane_with_services();
        let new_flows = || dataplane.counters().unwrap().get(Stat::L4NewFlows);
        let syn = frames::ipv4(IPPROTO_TCP, CLIENT, NODE, 41000, TCP_PORT, TCP_SYN, b"");
        let before = new_flows();
        let first = dataplane.test_run_xdp(&syn).unwrap();
        assert_eq!(first.verdict, XDP_REDIRECT);
        let node_port = Parsed::of(&first.frame).sport;
        // The SYN again (no answer yet): the same flow, the same node port.
        let again = dataplane.test_run_xdp(&syn).unwrap();
        assert_eq!((again.verdict, Parsed::of(&again.frame).sport), (XDP_REDIRECT, node_port));
        assert_eq!(new_flows() - before, 1, "a repeated SYN follows its open flow");
        // The client closes; a new connection from the same address and port is a new flow.
        let fin = frames::ipv4(IPPROTO_TCP, CLIENT, NODE, 41000, TCP_PORT, TCP_FIN | TCP_ACK, b"");
        assert_eq!(dataplane.test_run_xdp(&fin).unwrap().verdict, XDP_REDIRECT);
        let ack = frames::ipv4(IPPROTO_TCP, CLIENT, NODE, 41000, TCP_PORT, TCP_ACK, b"");
        assert_eq!(dataplane.test_run_xdp(&ack).unwrap().verdict, XDP_REDIRECT);
        assert_eq!(new_flows() - before, 1, "the closing flow's own packets follow it");
        let reopened = dataplane.test_run_xdp(&syn).unwrap();
        assert_eq!(reopened.verdict, XDP_REDIRECT);
        assert_eq!(new_flows() - before, 2, "a SYN on the closed flow is placed again");
        let moved = Parsed::of(&reopened.frame).sport;
        // Its reply goes to the client, through the new flow's node port.
        let reply = frames::ipv4(IPPROTO_TCP, ENDPOINT, NODE, TCP_PORT, moved, TCP_SYN | TCP_ACK, b"");
        let out = dataplane.test_run_xdp(&reply).unwrap();
        assert_eq!(out.verdict, XDP_REDIRECT);
        assert_eq!((Parsed::of(&out.frame).dst, Parsed::of(&out.frame).dport), (CLIENT, 41000));
    })
    .unwrap();
}

/// The service's SYN with a 4-byte IPv4 option (NOPs) inserted, lengths and checksums fixed.
fn with_options(good: &[u8]) -> Vec<u8> {
    let mut frame = good[..ETH_HLEN + 20].to_vec();
    frame.extend_from_slice(&[1, 1, 1, 1]);
    frame.extend_from_slice(&good[ETH_HLEN + 20..]);
    frame[ETH_HLEN] = 0x46;
    let total = (frame.len() - ETH_HLEN) as u16;
    frame[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&total.to_be_bytes());
    frame[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&[0, 0]);
    let sum = frames::checksum_fold(0, &frame[ETH_HLEN..ETH_HLEN + 24]);
    frame[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&sum.to_be_bytes());
    assert!(frames::ipv4_checksums_ok(&frame));
    frame
}

/// A TCP SYN to the service port over IPv6 behind a hop-by-hop options header.
fn ipv6_hop_by_hop() -> Vec<u8> {
    let mut frame = frames::ipv6(
        IPPROTO_TCP,
        "2001:db8::1".parse().unwrap(),
        "2001:db8::2".parse().unwrap(),
        41000,
        TCP_PORT,
        TCP_SYN,
        b"",
    );
    frame[ETH_HLEN + 6] = 0;
    frame.splice(ETH_HLEN + 40..ETH_HLEN + 40, [IPPROTO_TCP, 0, 1, 4, 0, 0, 0, 0]);
    let payload = u16::from_be_bytes([frame[ETH_HLEN + 4], frame[ETH_HLEN + 5]]) + 8;
    frame[ETH_HLEN + 4..ETH_HLEN + 6].copy_from_slice(&payload.to_be_bytes());
    frame
}

/// An ICMPv4 error from `src` to `dst` of `[type, code]` quoting `quote` (an IP packet, or
/// its start), with valid IP and ICMP checksums.
fn icmp_error(src: Ipv4Addr, dst: Ipv4Addr, kind: [u8; 2], quote: &[u8]) -> Vec<u8> {
    let mut icmp = vec![kind[0], kind[1], 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(quote);
    let sum = frames::checksum_fold(0, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0x56, 0x78, 0, 0, 64, 1, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum = frames::checksum_fold(0, &ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    // The Ethernet header of any built frame.
    let mut frame = frames::ipv4(IPPROTO_UDP, src, dst, 1, 1, 0, b"")[..ETH_HLEN].to_vec();
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&icmp);
    frame
}

/// Sets the ICMP header's 16-bit word at `offset` and the ICMP checksum again.
fn set_icmp_word(frame: &mut [u8], offset: usize, value: u16) {
    let icmp = &mut frame[ETH_HLEN + 20..];
    icmp[offset..offset + 2].copy_from_slice(&value.to_be_bytes());
    icmp[2..4].copy_from_slice(&[0, 0]);
    let sum = frames::checksum_fold(0, icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
}

fn routed_namespace() -> Netns {
    topology::l4_fib_namespace((CLIENT, CLIENT_MAC), (ENDPOINT, ENDPOINT_MAC)).unwrap()
}

/// The program loaded with four L4 services: TCP and UDP to the endpoint, one to an endpoint
/// without a route, one with its endpoint down.
fn dataplane_with_services() -> Dataplane {
    let dataplane = Dataplane::load().unwrap();
    let mut maps = dataplane.open_l4().unwrap();
    let spec = |port, protocol, endpoint: Ipv4Addr| L4Spec {
        address: SocketAddr::from((NODE, port)),
        protocol,
        endpoints: vec![SocketAddr::from((endpoint, port))],
        idle_timeout: Duration::from_secs(60),
        reset_on_removal: false,
        snat: NODE,
    };
    let healthy = |spec: &L4Spec| spec.endpoints.iter().copied().collect::<BTreeSet<_>>();
    let services: Vec<(L4Spec, BTreeSet<SocketAddr>)> = [
        spec(TCP_PORT, L4Protocol::Tcp, ENDPOINT),
        spec(UDP_PORT, L4Protocol::Udp, ENDPOINT),
        spec(UNROUTED_PORT, L4Protocol::Tcp, Ipv4Addr::new(203, 0, 113, 9)),
    ]
    .into_iter()
    .map(|s| {
        let h = healthy(&s);
        (s, h)
    })
    .chain([(spec(EMPTY_PORT, L4Protocol::Tcp, ENDPOINT), BTreeSet::new())])
    .collect();
    maps.apply(&services).unwrap();
    dataplane
}

/// The fields of a rewritten IPv4 frame the assertions look at.
struct Parsed {
    dst_mac: [u8; 6],
    ttl: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
}

impl Parsed {
    fn of(frame: &[u8]) -> Parsed {
        let ip = &frame[ETH_HLEN..];
        let l4 = &ip[20..];
        Parsed {
            dst_mac: frame[..6].try_into().unwrap(),
            ttl: ip[8],
            src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
            dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
            sport: u16::from_be_bytes([l4[0], l4[1]]),
            dport: u16::from_be_bytes([l4[2], l4[3]]),
        }
    }
}
