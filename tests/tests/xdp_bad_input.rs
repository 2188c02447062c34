//! BPF_PROG_TEST_RUN against bad input: truncated Ethernet, IPv4, IPv6 and transport headers,
//! bad version and header length, IPv4 options, IPv6 extension headers, fragments, other
//! protocols, zero-length and oversized frames, and thousands of seeded random frames.
//!
//! With a service installed, every frame must come back without `XDP_ABORTED`, counted under
//! exactly one outcome counter (see [`is_outcome`]), and byte for byte as it went in unless it
//! is a well-formed service packet, in which case only the destination port and the transport
//! checksum may change, and a valid checksum stays valid.
//!
//! [`model`] is this suite's own statement of how a frame must be classified. The hand-written
//! cases check the model as much as the program; the fuzz then holds the program to the model
//! for every random frame.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use lb_common::{STATS_LEN, Stat};
use lb_tests::{frames, require_root};
use lb_userspace::dataplane::{Counters, Dataplane, Error, Protocol, Service};

// ---------------------------------------------------------------------------------------------
// Named classes of bad input.

#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn frames_shorter_than_ethernet_are_refused_by_the_kernel() {
    require_root!();
    let mut h = Harness::new();
    // BPF_PROG_TEST_RUN for XDP refuses data shorter than ETH_HLEN with EINVAL before the
    // program runs: nothing is counted and no verdict exists. Zero bytes included.
    let syn = tcp4(NODE, 40000, TCP_PORT, frames::TCP_SYN, b"");
    for len in 0..ETH {
        match h.try_run(&syn[..len]) {
            Ok(run) => panic!("a {len}-byte frame ran: verdict {}", run.verdict),
            Err(e) => assert_eq!(errno(&e), Some(libc::EINVAL), "{len}-byte frame: {e}"),
        }
    }
    // An Ethernet header alone is the shortest frame the program sees.
    h.pass("IPv4 ethertype, no IP header", &syn[..ETH], Stat::PassTruncated);
    h.pass("IPv6 ethertype, no IP header", &udp6(40000, UDP_PORT, b"")[..ETH], Stat::PassTruncated);
    h.pass("zero ethertype, nothing else", &[0; ETH], Stat::PassNotIp);
    h.pass("ARP ethertype, nothing else", &[[0xff; 12].as_slice(), &[0x08, 0x06]].concat(), Stat::PassNotIp);
}

#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn truncated_ip_headers_pass_as_truncated() {
    require_root!();
    let mut h = Harness::new();
    let v4 = [
        ("IPv4 TCP SYN", tcp4(NODE, 40000, TCP_PORT, frames::TCP_SYN, b"")),
        ("IPv4 UDP", udp4(NODE, 40000, UDP_PORT, b"query")),
    ];
    for (name, frame) in &v4 {
        for len in ETH..L4_V4 {
            h.pass(
                &format!("{name} cut at {len}, inside the IPv4 header"),
                &frame[..len],
                Stat::PassTruncated,
            );
        }
    }
    // Cut inside the options: the fixed header is there, the transport header cannot be.
    let optioned = with_ipv4_options(&v4[0].1, &max_ipv4_options());
    for len in L4_V4..ETH + 60 {
        h.pass(&format!("IPv4 with options cut at {len}"), &optioned[..len], Stat::PassTruncated);
    }
    let v6 = [
        ("IPv6 UDP", udp6(40000, UDP_PORT, b"query")),
        ("IPv6 TCP", tcp6(40000, TCP_PORT, frames::TCP_SYN, b"")),
    ];
    for (name, frame) in &v6 {
        for len in ETH..L4_V6 {
            h.pass(
                &format!("{name} cut at {len}, inside the IPv6 header"),
                &frame[..len],
                Stat::PassTruncated,
            );
        }
    }
}

/// Length fields that contradict the headers or the frame: an IPv4 total length shorter than
/// the IP header or past the end of the frame, an IPv6 payload length past the frame, a TCP
/// data offset under 5 words or past the IP packet, a UDP length under 8 or past the IP packet.
/// Each is a service packet (a SYN among them) that must pass untouched under its own reason,
/// never rewritten and never given a conntrack entry. (A fuzz run found a quarter of malformed
/// frames rewritten before these checks.)
#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn inconsistent_lengths_pass_untouched_under_their_reason() {
    require_root!();
    let mut h = Harness::new();
    let syn = tcp4(NODE, 41001, TCP_PORT, frames::TCP_SYN, b"");
    let udp = udp4(NODE, 41002, UDP_PORT, b"query");
    let with = |frame: &[u8], offset: usize, value: u16, ipv4: bool| {
        let mut frame = frame.to_vec();
        frame[offset..offset + 2].copy_from_slice(&value.to_be_bytes());
        if ipv4 {
            fix_ipv4_checksum(&mut frame);
        }
        frame
    };
    let tcp_offset = |frame: &[u8], words: u8| {
        let mut frame = frame.to_vec();
        frame[L4_V4 + 12] = words << 4 | (frame[L4_V4 + 12] & 0x0f);
        frame
    };
    let ip_len = (syn.len() - ETH) as u16;
    h.pass("IPv4 total length under the IP header", &with(&syn, ETH + 2, 19, true), Stat::PassBadIpLength);
    h.pass("IPv4 total length past the frame", &with(&syn, ETH + 2, ip_len + 1, true), Stat::PassBadIpLength);
    h.pass("IPv4 total length 0xffff", &with(&syn, ETH + 2, 0xffff, true), Stat::PassBadIpLength);
    h.pass("TCP data offset 0", &tcp_offset(&syn, 0), Stat::PassBadTransportHeader);
    h.pass("TCP data offset 4", &tcp_offset(&syn, 4), Stat::PassBadTransportHeader);
    h.pass("TCP data offset 15, past the packet", &tcp_offset(&syn, 15), Stat::PassBadTransportHeader);
    // Total length too short for the TCP header it names (20 + 12): the segment ends early.
    h.pass(
        "TCP header past the IP total length",
        &with(&syn, ETH + 2, 32, true),
        Stat::PassBadTransportHeader,
    );
    h.pass("UDP length under 8", &with(&udp, L4_V4 + 4, 7, false), Stat::PassBadTransportHeader);
    let udp_len = (udp.len() - L4_V4) as u16;
    h.pass(
        "UDP length past the packet",
        &with(&udp, L4_V4 + 4, udp_len + 1, false),
        Stat::PassBadTransportHeader,
    );
    let udp6 = udp6(41003, UDP_PORT, b"query");
    let payload = (udp6.len() - L4_V6) as u16;
    h.pass(
        "IPv6 payload length past the frame",
        &with(&udp6, ETH + 4, payload + 1, false),
        Stat::PassBadIpLength,
    );
    // Ethernet padding after a consistent packet is fine: still steered.
    let padded = [&syn[..], &[0u8; 6]].concat();
    h.steered("IPv4 TCP SYN with Ethernet padding", &padded, L4_V4);
}

#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn truncated_transport_headers_pass_as_truncated() {
    require_root!();
    let mut h = Harness::new();
    // Every cut before the end of the transport header: 20 bytes for TCP, 8 for UDP. A TCP
    // header cut after its checksum (18 or 19 of 20 bytes) is still a truncated header.
    // (This caught a real bug: the parser once read only 18 bytes of the TCP header, so a frame
    // cut 18 or 19 bytes in was steered.)
    let cases = [
        ("IPv4 TCP SYN", tcp4(NODE, 40001, TCP_PORT, frames::TCP_SYN, b""), L4_V4, 20),
        ("IPv4 TCP ACK", tcp4(NODE, 40002, TCP_PORT, frames::TCP_ACK, b"GET /"), L4_V4, 20),
        ("IPv4 UDP", udp4(NODE, 40003, UDP_PORT, b"query"), L4_V4, 8),
        (
            "IPv4 TCP SYN with options",
            with_ipv4_options(&tcp4(NODE, 40004, TCP_PORT, frames::TCP_SYN, b""), &OPT_ROUTER_ALERT),
            L4_V4 + 4,
            20,
        ),
        ("IPv6 UDP", udp6(40005, UDP_PORT, b"query"), L4_V6, 8),
        ("IPv6 TCP (not a service)", tcp6(40006, TCP_PORT, frames::TCP_SYN, b""), L4_V6, 20),
    ];
    for (name, frame, l4, header) in &cases {
        for len in *l4..l4 + header {
            let what = format!("{name} cut at {len}, {} of {header} transport header bytes", len - l4);
            h.pass(&what, &frame[..len], Stat::PassTruncated);
        }
        // The whole frame is a service packet (or, for IPv6 TCP, well-formed but no service).
        match model(frame) {
            Expect::Steer(_) => {
                h.steered(&format!("{name}, whole"), frame, *l4);
            }
            _ => h.pass(&format!("{name}, whole"), frame, Stat::PassNotService),
        }
    }
}

#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn bad_ip_version_and_header_length_pass_as_bad_header() {
    require_root!();
    let mut h = Harness::new();
    let syn = tcp4(NODE, 40000, TCP_PORT, frames::TCP_SYN, b"0123456789");
    for ihl in 0..5u8 {
        let mut frame = syn.clone();
        frame[ETH] = 0x40 | ihl;
        h.pass(&format!("IPv4 IHL {ihl}"), &frame, Stat::PassBadIpHeader);
    }
    for version in (0..16u8).filter(|&v| v != 4) {
        let mut frame = syn.clone();
        frame[ETH] = version << 4 | 5;
        h.pass(&format!("IPv4 ethertype, version {version}"), &frame, Stat::PassBadIpHeader);
    }
    let v6 = udp6(40000, UDP_PORT, b"query");
    for version in (0..16u8).filter(|&v| v != 6) {
        let mut frame = v6.clone();
        frame[ETH] = version << 4 | (frame[ETH] & 0x0f);
        h.pass(&format!("IPv6 ethertype, version {version}"), &frame, Stat::PassBadIpHeader);
    }
    // An IPv4 packet labelled IPv6 (long enough for an IPv6 header) and the reverse.
    let mut mislabelled = syn.clone();
    mislabelled[12..14].copy_from_slice(&frames::ETHERTYPE_IPV6.to_be_bytes());
    h.pass("IPv4 packet behind the IPv6 ethertype", &mislabelled, Stat::PassBadIpHeader);
    let mut mislabelled = v6.clone();
    mislabelled[12..14].copy_from_slice(&frames::ETHERTYPE_IPV4.to_be_bytes());
    h.pass("IPv6 packet behind the IPv4 ethertype", &mislabelled, Stat::PassBadIpHeader);

    // A header length reaching past the frame: the transport header is cut off.
    let bare = tcp4(NODE, 40000, TCP_PORT, frames::TCP_SYN, b"");
    for ihl in 6..16u8 {
        let mut frame = bare.clone();
        frame[ETH] = 0x40 | ihl;
        fix_ipv4_checksum(&mut frame);
        h.pass(&format!("IPv4 IHL {ihl} over a bare TCP header"), &frame, Stat::PassTruncated);
    }
    // IHL 6 over a TCP header with payload: the transport header is read 4 bytes late, where
    // the "ports" are the sequence number (0, 1): well-formed as far as XDP can tell, no service.
    let mut frame = syn.clone();
    frame[ETH] = 0x46;
    fix_ipv4_checksum(&mut frame);
    h.pass("IPv4 IHL 6 without options", &frame, Stat::PassNotService);
}

#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn ipv4_options_to_a_service_are_steered_with_valid_checksums() {
    require_root!();
    let mut h = Harness::new();
    let nop_eol = [0x01, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00];
    let option_sets: [(&str, Vec<u8>); 3] = [
        ("Router Alert", OPT_ROUTER_ALERT.to_vec()),
        ("NOPs and End of Options", nop_eol.to_vec()),
        ("40 bytes of options", max_ipv4_options()),
    ];
    for (name, options) in &option_sets {
        let l4 = L4_V4 + options.len();
        for (sport, base) in [
            (41000, tcp4(NODE, 41000, TCP_PORT, frames::TCP_SYN, b"")),
            (41001, udp4(NODE, 41001, UDP_PORT, b"query")),
            (41002, udp4(OTHER, 41002, UDP_PORT, b"wildcard query")),
        ] {
            let frame = with_ipv4_options(&base, options);
            assert!(frames::ipv4_checksums_ok(&frame), "test bug: built frame has bad checksums");
            let out = h.steered(&format!("{name}, sport {sport}"), &frame, l4);
            assert!(frames::ipv4_checksums_ok(&out), "{name}, sport {sport}: checksums after the rewrite");
            assert_eq!(out[ETH..l4], frame[ETH..l4], "{name}: the IPv4 header and options are untouched");
            // The rewrite is at the options-shifted offset, not at 14 + 20.
            assert_ne!(be16(&out, l4 + 2), be16(&frame, l4 + 2), "{name}: port rewritten at {l4} + 2");
        }
        // Well-formed, but to a port no service has.
        let frame = with_ipv4_options(&tcp4(NODE, 41003, 8081, frames::TCP_SYN, b""), options);
        h.pass(&format!("{name}, to port 8081"), &frame, Stat::PassNotService);
    }
    // A zero UDP checksum over IPv4 means "none" and must stay zero through the rewrite.
    let mut frame = with_ipv4_options(&udp4(NODE, 41004, UDP_PORT, b"no checksum"), &OPT_ROUTER_ALERT);
    frame[L4_V4 + 4 + 6..L4_V4 + 4 + 8].fill(0);
    let out = h.steered("UDP with zero checksum and options", &frame, L4_V4 + 4);
    assert_eq!(be16(&out, L4_V4 + 4 + 6), 0, "a zero UDP checksum stays zero");
}

#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn ipv6_extension_headers_pass_untouched() {
    require_root!();
    let mut h = Harness::new();
    for next in IPV6_EXTENSIONS {
        let frame = ipv6_extension(next);
        h.pass(
            &format!("IPv6 next header {next} before UDP to the service"),
            &frame,
            Stat::PassIpv6Extension,
        );
        // Cut right after the fixed header: the extension is what counts, not the cut.
        h.pass(&format!("IPv6 next header {next}, header only"), &frame[..L4_V6], Stat::PassIpv6Extension);
    }
    // A chain: hop-by-hop, then destination options, then UDP.
    let mut chain = vec![60, 0, 1, 4, 0, 0, 0, 0];
    chain.extend_from_slice(&ipv6_extension(60)[L4_V6..]);
    h.pass("hop-by-hop then destination options", &ipv6_raw(0, &chain), Stat::PassIpv6Extension);
    // The control: the same datagram without the extension header is steered.
    h.steered("the same UDP datagram without extension headers", &udp6(40000, UDP_PORT, b"query"), L4_V6);
}

#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn ipv4_fragments_pass_untouched() {
    require_root!();
    let mut h = Harness::new();
    const DF: u16 = 0x4000;
    const MF: u16 = 0x2000;
    // Each of these carries, right after the IP header, bytes that read as a TCP or UDP header
    // to the service: only the fragment fields keep them from being rewritten. In a non-first
    // fragment those bytes are payload, not ports.
    let bases = [
        ("TCP", tcp4(NODE, 42000, TCP_PORT, frames::TCP_SYN, &[0x5a; 64])),
        ("UDP", udp4(NODE, 42001, UDP_PORT, &[0x5a; 64])),
    ];
    for (name, base) in &bases {
        for (kind, field) in [
            ("first fragment (MF, offset 0)", MF),
            ("middle fragment (MF, offset 8)", MF | 1),
            ("last fragment (offset 8)", 1),
            ("last fragment at the largest offset", 0x1fff),
            ("MF with DF", DF | MF),
            ("non-first fragment with DF", DF | 3),
        ] {
            h.pass(&format!("{name} {kind}"), &set_ipv4_fragment(base, field), Stat::PassFragment);
        }
        // A fragment cut after its IP header is still a fragment.
        h.pass(
            &format!("{name} fragment, header only"),
            &set_ipv4_fragment(base, 1)[..L4_V4],
            Stat::PassFragment,
        );
        // Not fragments: DF alone, no flags, the reserved bit.
        for (kind, field) in [("DF", DF), ("no flags", 0), ("reserved bit", 0x8000)] {
            h.steered(&format!("{name} with {kind}, unfragmented"), &set_ipv4_fragment(base, field), L4_V4);
        }
    }
    // IPv6 fragments carry a fragment extension header.
    h.pass("IPv6 first fragment", &ipv6_extension(44), Stat::PassIpv6Extension);
}

#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn other_protocols_and_non_ip_pass_untouched() {
    require_root!();
    let mut h = Harness::new();
    // Transport bytes that would be a TCP header to the service, under another protocol number.
    let lookalike = tcp4(NODE, 43000, TCP_PORT, frames::TCP_SYN, b"")[L4_V4..].to_vec();
    let icmp = icmp_echo(8);
    for (name, proto, payload) in [
        ("ICMP echo", IPPROTO_ICMP, icmp.as_slice()),
        ("ICMP, no payload", IPPROTO_ICMP, &[][..]),
        ("IGMP", 2, &[0x11, 0, 0xee, 0xff, 0, 0, 0, 0][..]),
        ("GRE", 47, &lookalike[..]),
        ("ESP", IPPROTO_ESP, &lookalike[..]),
        ("SCTP", 132, &lookalike[..]),
        ("protocol 0", 0, &lookalike[..]),
        ("protocol 255", 255, &lookalike[..]),
        ("UDP-Lite", 136, &lookalike[..]),
    ] {
        h.pass(&format!("IPv4 {name}"), &ipv4_raw(proto, NODE, payload), Stat::PassOtherProtocol);
    }
    let icmp6 = icmp_echo(128);
    for (name, next, payload) in [
        ("ICMPv6 echo", IPPROTO_ICMPV6, icmp6.as_slice()),
        ("no next header", 59, &[][..]),
        ("ESP", IPPROTO_ESP, &lookalike[..]),
        ("SCTP", 132, &lookalike[..]),
        ("IPv4 in IPv6", 4, &tcp4(NODE, 43001, TCP_PORT, frames::TCP_SYN, b"")[ETH..]),
    ] {
        h.pass(&format!("IPv6 {name}"), &ipv6_raw(next, payload), Stat::PassOtherProtocol);
    }

    // Not IP at the Ethernet layer. VLAN tags are not looked through: a tagged service packet
    // is left to the stack.
    let syn = tcp4(NODE, 43002, TCP_PORT, frames::TCP_SYN, b"");
    let with_ethertype = |ethertype: u16| {
        let mut frame = syn.clone();
        frame[12..14].copy_from_slice(&ethertype.to_be_bytes());
        frame
    };
    h.pass("802.1Q-tagged service SYN", &vlan_tagged(&syn, 0x8100), Stat::PassNotIp);
    h.pass("802.1ad-tagged service SYN", &vlan_tagged(&syn, 0x88a8), Stat::PassNotIp);
    for (name, ethertype) in [
        ("ARP", 0x0806),
        ("LLDP", 0x88cc),
        ("MPLS", 0x8847),
        ("802.3 length field", 0x0040),
        ("ethertype 0", 0),
        ("ethertype ffff", 0xffff),
        ("byte-swapped IPv4", 0x0008),
        ("byte-swapped IPv6", 0xdd86),
    ] {
        h.pass(&format!("{name} in front of a service SYN"), &with_ethertype(ethertype), Stat::PassNotIp);
    }
}

#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn oversized_frames_and_kernel_size_limits() {
    require_root!();
    let mut h = Harness::new();
    // Full-size Ethernet frames to the services are steered with valid checksums.
    let frame = tcp4(NODE, 44000, TCP_PORT, frames::TCP_ACK, &[0xa5; 1514 - L4_V4 - 20]);
    assert_eq!(frame.len(), 1514);
    let out = h.steered("1514-byte IPv4 TCP", &frame, L4_V4);
    assert!(frames::ipv4_checksums_ok(&out));
    let frame = udp6(44001, UDP_PORT, &[0xa5; 1514 - L4_V6 - 8]);
    let out = h.steered("1514-byte IPv6 UDP", &frame, L4_V6);
    let steer = Steer { family: 6, proto: frames::IPPROTO_UDP, l4: L4_V6, workers: &UDP_WORKERS };
    assert_eq!(transport_checksum(&out, &steer), Checksum::Valid);

    // How much of a frame the program sees in one piece: the kernel puts a test frame in one
    // page less XDP headroom and skb_shared_info, and anything beyond in page-sized fragments,
    // which this program (not built for multi-buffer) cannot reach. Bytes counts what it sees.
    let page = usize::try_from(
        // SAFETY: sysconf has no preconditions.
        unsafe { libc::sysconf(libc::_SC_PAGESIZE) },
    )
    .unwrap();
    let probe = vec![0u8; 4 * page];
    let run = h.run(&probe);
    assert_eq!(run.out, probe, "a multi-buffer frame comes back whole");
    let linear = run.delta.get(Stat::Bytes) as usize;
    assert!((1514..page).contains(&linear), "linear part of a test frame: {linear} bytes");
    h.check_seen("frame filling the linear part", &vec![0u8; linear], Expect::Pass(Stat::PassNotIp), linear);
    h.check_seen("one byte into a fragment", &vec![0u8; linear + 1], Expect::Pass(Stat::PassNotIp), linear);

    // The largest frame the kernel takes, found by bisection; one byte more is refused with
    // ENOMEM (out of fragment slots) before the program runs.
    // 64 pages is more fragments than any kernel configuration allows (MAX_SKB_FRAGS <= 45).
    let too_big = 64 * page;
    let refused = h.try_run(&vec![0u8; too_big]).err().expect("a 64-page frame is refused");
    assert_eq!(errno(&refused), Some(libc::ENOMEM), "{too_big}-byte frame: {refused}");
    let (mut ok, mut bad) = (4 * page, too_big);
    while ok + 1 < bad {
        let mid = (ok + bad) / 2;
        if h.try_run(&vec![0u8; mid]).is_ok() { ok = mid } else { bad = mid }
    }
    let max = ok;
    assert_eq!((max - linear) % page, 0, "beyond the linear part, whole pages: max {max}");
    let refused = h.try_run(&vec![0u8; max + 1]).err().expect("one byte over the maximum is refused");
    assert_eq!(errno(&refused), Some(libc::ENOMEM), "{}-byte frame: {refused}", max + 1);
    eprintln!(
        "test_run limits: under {ETH} bytes EINVAL; linear part {linear} bytes (page {page}); \
         largest frame {max} bytes = linear + {} pages; {} bytes ENOMEM",
        (max - linear) / page,
        max + 1
    );

    // Service packets beyond the linear part: headers are in it, so they are steered, and the
    // incremental checksum update stays valid over the whole segment, fragments included.
    let jumbo = tcp4(NODE, 44002, TCP_PORT, frames::TCP_ACK, &[0x3c; 9000 - 40]);
    assert_eq!(jumbo.len(), 9014);
    // The headers are in the linear part; the length fields are checked against the whole
    // frame, fragments included (the program asks bpf_xdp_get_buff_len).
    let expect = model(&jumbo);
    assert!(matches!(expect, Expect::Steer(_)));
    let out = h.check_seen("9014-byte jumbo IPv4 TCP", &jumbo, expect, linear);
    assert!(frames::ipv4_checksums_ok(&out), "jumbo checksums after the rewrite");
    let biggest_datagram = 14 + 65535;
    if biggest_datagram <= max {
        let frame = udp4(NODE, 44003, UDP_PORT, &vec![0xc3; 65535 - 28]);
        assert_eq!(frame.len(), biggest_datagram);
        let expect = model(&frame);
        let out = h.check_seen("largest IPv4 UDP datagram", &frame, expect, linear);
        assert!(frames::ipv4_checksums_ok(&out), "65535-byte datagram checksums after the rewrite");
    }
    // The largest frame the kernel takes, not IP: untouched.
    let mut biggest: Vec<u8> = (0..max).map(|i| (i * 7 + i / 251) as u8).collect();
    biggest[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    h.check_seen("largest accepted frame, ARP", &biggest, Expect::Pass(Stat::PassNotIp), linear);
}

// ---------------------------------------------------------------------------------------------
// Seeded fuzz.

/// SplitMix64: small, fast, and enough for test input.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.byte()).collect()
    }
}

const FUZZ_CASES: usize = 10_000;
const FUZZ_SEED: u64 = 0x5105_ceba_d1a9;
const MAX_FRAME: usize = 1514;

/// A valid frame: a service packet most of the time, otherwise a well-formed neighbour of one.
fn fuzz_base(rng: &mut Rng) -> Vec<u8> {
    let sport = rng.range(1024, 65535) as u16;
    let payload_len = if rng.chance(50) { 0 } else { rng.range(1, 64) };
    let payload = rng.bytes(payload_len);
    let flags = rng.pick(&[frames::TCP_SYN, frames::TCP_ACK, frames::TCP_SYN | frames::TCP_ACK, 0x18]);
    match rng.below(12) {
        0 | 1 => tcp4(NODE, sport, TCP_PORT, flags, &payload),
        2 => udp4(NODE, sport, UDP_PORT, &payload),
        3 => udp4(OTHER, sport, UDP_PORT, &payload),
        4 | 5 => udp6(sport, UDP_PORT, &payload),
        6 => {
            let options = if rng.chance(50) { OPT_ROUTER_ALERT.to_vec() } else { max_ipv4_options() };
            with_ipv4_options(&tcp4(NODE, sport, TCP_PORT, flags, &payload), &options)
        }
        7 => {
            // Padded to the Ethernet minimum and beyond: trailing bytes outside the datagram.
            let mut frame = tcp4(NODE, sport, TCP_PORT, flags, &payload);
            let padded = frame.len().max(60) + rng.below(16);
            frame.resize(padded, 0);
            frame
        }
        8 => tcp6(sport, TCP_PORT, flags, &payload),
        9 => tcp4(NODE, sport, rng.pick(&[80, 443, 8081, UDP_PORT]), flags, &payload),
        10 => ipv6_extension(rng.pick(&IPV6_EXTENSIONS)),
        _ => ipv4_raw(rng.pick(&[IPPROTO_ICMP, 47, 132]), NODE, &icmp_echo(8)),
    }
}

/// One structured mutation of `frame`.
fn mutate(rng: &mut Rng, frame: &mut Vec<u8>) {
    let v4 = be16(frame, 12) == frames::ETHERTYPE_IPV4;
    match rng.below(8) {
        // Byte flips, mostly in the headers.
        0 | 1 => {
            for _ in 0..rng.range(1, 4) {
                let reach = if rng.chance(80) { frame.len().min(ETH + 60 + 20) } else { frame.len() };
                let at = rng.below(reach);
                frame[at] ^= rng.range(1, 255) as u8;
            }
        }
        // Truncation anywhere past the Ethernet header.
        2 => {
            let len = rng.range(ETH, frame.len());
            frame.truncate(len);
        }
        3 => {
            let random = rng.next() as u16;
            let ethertype = rng.pick(&[0x0800, 0x86dd, 0x0806, 0x8100, 0x88a8, random]);
            frame[12..14].copy_from_slice(&ethertype.to_be_bytes());
        }
        // Version and header length.
        4 if frame.len() > ETH => {
            frame[ETH] = match rng.below(3) {
                0 => rng.byte(),
                1 => (rng.below(16) as u8) << 4 | (frame[ETH] & 0x0f),
                _ => (frame[ETH] & 0xf0) | rng.below(16) as u8,
            };
        }
        // Protocol or next header.
        5 => {
            let at = if v4 { ETH + 9 } else { ETH + 6 };
            if at < frame.len() {
                let random = rng.byte();
                frame[at] = rng.pick(&[0, 1, 6, 17, 43, 44, 50, 51, 58, 59, 60, 132, 135, 255, random]);
            }
        }
        // Fragment flags and offset.
        6 if v4 && frame.len() >= ETH + 8 => {
            let random = rng.next() as u16;
            let field = rng.pick(&[0x2000, 0x4000, 0x8000, 0x0001, 0x2001, 0x1fff, random]);
            frame[ETH + 6..ETH + 8].copy_from_slice(&field.to_be_bytes());
        }
        // Trailing bytes.
        _ => {
            let extra = rng.range(1, 64);
            let tail = rng.bytes(extra);
            frame.extend_from_slice(&tail);
            frame.truncate(MAX_FRAME);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// Uniform random bytes.
    Random,
    /// Random bytes behind an IPv4 or IPv6 ethertype, often with the right version nibble.
    RandomIp,
    /// A valid frame, unchanged.
    Valid,
    /// A valid frame after one to three structured mutations.
    Mutated,
}

fn fuzz_case(rng: &mut Rng) -> (Kind, Vec<u8>) {
    match rng.below(20) {
        0..=3 => {
            let len = if rng.chance(50) { rng.range(ETH, 128) } else { rng.range(ETH, MAX_FRAME) };
            (Kind::Random, rng.bytes(len))
        }
        4..=6 => {
            let len = rng.range(ETH, 200);
            let mut frame = rng.bytes(len);
            let v4 = rng.chance(50);
            let ethertype = if v4 { frames::ETHERTYPE_IPV4 } else { frames::ETHERTYPE_IPV6 };
            frame[12..14].copy_from_slice(&ethertype.to_be_bytes());
            if frame.len() > ETH && rng.chance(70) {
                frame[ETH] = if v4 { 0x40 | rng.range(5, 7) as u8 } else { 0x60 | (frame[ETH] & 0x0f) };
            }
            if frame.len() > ETH + 9 && rng.chance(60) {
                let proto = rng.pick(&[frames::IPPROTO_TCP, frames::IPPROTO_UDP]);
                frame[if v4 { ETH + 9 } else { ETH + 6 }] = proto;
                if v4 && frame.len() > ETH + 7 && rng.chance(70) {
                    frame[ETH + 6..ETH + 8].fill(0);
                }
            }
            (Kind::RandomIp, frame)
        }
        7 => (Kind::Valid, fuzz_base(rng)),
        _ => {
            let mut frame = fuzz_base(rng);
            for _ in 0..rng.range(1, 3) {
                mutate(rng, &mut frame);
            }
            (Kind::Mutated, frame)
        }
    }
}

#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn seeded_fuzz_never_aborts_and_counts_every_frame_under_one_reason() {
    require_root!();
    let seed = std::env::var("SLUICE_FUZZ_SEED")
        .ok()
        .map(|s| s.parse::<u64>().expect("SLUICE_FUZZ_SEED is a decimal u64"))
        .unwrap_or(FUZZ_SEED);
    let mut h = Harness::new();
    let mut rng = Rng(seed);
    let mut by_reason: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut by_kind: BTreeMap<(Kind, &'static str), usize> = BTreeMap::new();
    // Breaches of the invariants, and runs that keep them but end other than the model
    // says, grouped by (expected, counted).
    let mut broken = Vec::new();
    let mut disagreements: BTreeMap<(&'static str, String), Vec<String>> = BTreeMap::new();
    let started = Instant::now();
    for case in 0..FUZZ_CASES {
        let (kind, frame) = fuzz_case(&mut rng);
        assert!((ETH..=MAX_FRAME).contains(&frame.len()), "test bug: case {case} is {} bytes", frame.len());
        let expect = model(&frame);
        let run = h.run(&frame);
        let describe = |problems: &[String]| {
            format!(
                "case {case} ({kind:?}, {} bytes, expected {expect:?}): {}\n    frame: {}",
                frame.len(),
                problems.join("; "),
                hex(&frame)
            )
        };
        let violations = invariant_violations(&frame, &run);
        if !violations.is_empty() {
            broken.push(describe(&violations));
        } else {
            let problems = problems(&frame, &run, expect, frame.len());
            if !problems.is_empty() {
                let counted: Vec<&str> = run.delta.outcomes().iter().map(|(s, _)| s.name()).collect();
                let key = (expect.outcome().name(), counted.join("+"));
                disagreements.entry(key).or_default().push(describe(&problems));
            }
        }
        // Tally what the program counted, not what the model said.
        for (stat, _) in run.delta.outcomes() {
            *by_reason.entry(stat.name()).or_default() += 1;
            *by_kind.entry((kind, stat.name())).or_default() += 1;
        }
    }
    let elapsed = started.elapsed();
    eprintln!("fuzz: {FUZZ_CASES} cases, seed {seed}, {elapsed:?}; outcomes:");
    for (reason, count) in &by_reason {
        eprintln!("  {reason:<22} {count:>6}");
    }
    for kind in [Kind::Random, Kind::RandomIp, Kind::Valid, Kind::Mutated] {
        let row: Vec<String> =
            by_kind.iter().filter(|((k, _), _)| *k == kind).map(|((_, r), n)| format!("{r} {n}")).collect();
        eprintln!("  {kind:?}: {}", row.join(", "));
    }

    let disagreeing: usize = disagreements.values().map(Vec::len).sum();
    eprintln!("  invariant breaches: {}; disagreements with the model: {disagreeing}", broken.len());
    if !broken.is_empty() || disagreeing != 0 {
        let mut report = format!(
            "seed {seed}: {} of {FUZZ_CASES} cases broke the invariants, {disagreeing} more were counted \
             under another reason than the model's",
            broken.len()
        );
        for case in broken.iter().take(20) {
            report.push_str(&format!("\n{case}"));
        }
        for ((expected, counted), cases) in &disagreements {
            report.push_str(&format!(
                "\n-- expected {expected}, counted {counted}: {} cases, e.g.",
                cases.len()
            ));
            for case in cases.iter().take(3) {
                report.push_str(&format!("\n{case}"));
            }
        }
        panic!("{report}");
    }
    // The fuzz must reach deep: steering, and every reason to pass.
    for stat in [
        Stat::Steered,
        Stat::PassNotService,
        Stat::PassNotIp,
        Stat::PassTruncated,
        Stat::PassBadIpHeader,
        Stat::PassFragment,
        Stat::PassIpv6Extension,
        Stat::PassOtherProtocol,
    ] {
        let count = by_reason.get(stat.name()).copied().unwrap_or(0);
        assert!(count >= 20, "only {count} fuzz cases ended as {}: the fuzz is too shallow", stat.name());
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const XDP_ABORTED: u32 = 0;
const XDP_PASS: u32 = 2;

const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;
const TCP_WORKERS: [u16; 4] = [20000, 20001, 20002, 20003];
const UDP_WORKERS: [u16; 4] = [21000, 21001, 21002, 21003];
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The TCP service's address.
const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// Any other local address: only the UDP wildcard service matches it.
const OTHER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const NODE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

const ETH: usize = frames::ETH_HLEN;
/// Transport offset of an IPv4 frame without options, and of every IPv6 frame here.
const L4_V4: usize = ETH + 20;
const L4_V6: usize = ETH + 40;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ESP: u8 = 50;
const IPPROTO_ICMPV6: u8 = 58;
/// IPv6 extension headers (IANA registry, less ESP: see `model`).
const IPV6_EXTENSIONS: [u8; 10] = [0, 43, 44, 51, 60, 135, 139, 140, 253, 254];

/// Whether a counter names the one outcome of a frame. Reading the program: a parse failure
/// counts its `Pass*` reason, a frame to no service counts `PassNotService`, a failed worker
/// lookup or the guard counts its `Drop*` reason, a failed rewrite counts `PassTruncated`, and a rewritten
/// frame counts `Steered`; each path counts exactly one of these and returns. The others count
/// alongside (`Packets`, `Bytes`, conntrack bookkeeping) or belong to TC. The match is
/// exhaustive on purpose: a new counter does not compile until it is placed here.
fn is_outcome(stat: Stat) -> bool {
    match stat {
        Stat::PassNotIp
        | Stat::PassTruncated
        | Stat::PassBadIpHeader
        | Stat::PassFragment
        | Stat::PassIpv6Extension
        | Stat::PassOtherProtocol
        | Stat::PassNotService
        | Stat::PassBadIpLength
        | Stat::PassBadTransportHeader
        | Stat::DropNoWorker
        | Stat::DropBadWorker
        | Stat::DropDeny
        | Stat::DropNotAllowed
        | Stat::DropSynRate
        | Stat::DropUdpRate
        | Stat::DropL4NoBackend
        | Stat::DropL4NoPort
        | Stat::PassL4NoRoute
        | Stat::PassL4Unsupported
        | Stat::L4Forwarded
        | Stat::L4Replied
        | Stat::L4IcmpReplied
        | Stat::Steered => true,
        Stat::Packets
        | Stat::Bytes
        | Stat::NewFlows
        | Stat::ConntrackHits
        | Stat::ConntrackInsertFailed
        | Stat::EgressRestored
        | Stat::L4NewFlows => false,
    }
}

// ---------------------------------------------------------------------------------------------
// What the program must do with a frame.

/// Where a well-formed service packet's rewrite lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Steer {
    family: u8,
    proto: u8,
    /// Offset of the transport header.
    l4: usize,
    workers: &'static [u16; 4],
}

impl Steer {
    fn csum(&self) -> usize {
        csum_offset(self.proto, self.l4)
    }

    fn may_change(&self, offset: usize) -> bool {
        rewritable(self.proto, self.l4, offset)
    }
}

fn csum_offset(proto: u8, l4: usize) -> usize {
    if proto == frames::IPPROTO_TCP { l4 + 16 } else { l4 + 6 }
}

/// The only bytes a rewrite may touch: the destination port and the transport checksum.
fn rewritable(proto: u8, l4: usize, offset: usize) -> bool {
    let csum = csum_offset(proto, l4);
    (l4 + 2..l4 + 4).contains(&offset) || (csum..csum + 2).contains(&offset)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Passed untouched and counted under this reason.
    Pass(Stat),
    /// A well-formed service packet: rewritten to a worker port and counted as steered.
    Steer(Steer),
}

impl Expect {
    fn outcome(&self) -> Stat {
        match self {
            Expect::Pass(reason) => *reason,
            Expect::Steer(_) => Stat::Steered,
        }
    }
}

fn be16(frame: &[u8], offset: usize) -> u16 {
    u16::from_be_bytes([frame[offset], frame[offset + 1]])
}

/// The IP layer of a frame: family, transport protocol, offset of the transport header and
/// whether the destination is [`NODE`]; or the reason a frame is passed before the transport
/// header. ESP is in IANA's extension header registry, but its payload is encrypted and no
/// transport header follows in clear: the program counts it as another protocol, and so does
/// this.
fn network(frame: &[u8]) -> Result<(u8, u8, usize, bool), Stat> {
    match be16(frame, 12) {
        frames::ETHERTYPE_IPV4 => {
            if frame.len() < ETH + 20 {
                return Err(Stat::PassTruncated);
            }
            let ihl = usize::from(frame[ETH] & 0x0f) * 4;
            if frame[ETH] >> 4 != 4 || ihl < 20 {
                return Err(Stat::PassBadIpHeader);
            }
            let more_fragments = frame[ETH + 6] & 0x20 != 0;
            let offset = be16(frame, ETH + 6) & 0x1fff;
            if more_fragments || offset != 0 {
                return Err(Stat::PassFragment);
            }
            Ok((4, frame[ETH + 9], ETH + ihl, frame[ETH + 16..ETH + 20] == NODE.octets()))
        }
        frames::ETHERTYPE_IPV6 => {
            if frame.len() < ETH + 40 {
                return Err(Stat::PassTruncated);
            }
            if frame[ETH] >> 4 != 6 {
                return Err(Stat::PassBadIpHeader);
            }
            let next = frame[ETH + 6];
            if IPV6_EXTENSIONS.contains(&next) {
                return Err(Stat::PassIpv6Extension);
            }
            Ok((6, next, L4_V6, false))
        }
        _ => Err(Stat::PassNotIp),
    }
}

/// How a frame (at least an Ethernet header) must be classified, with the services of
/// [`Harness::new`] installed and every worker healthy (so nothing is ever dropped).
///
/// Ethernet, then IPv4 (version 4, header length at least 20, options skipped, not a fragment)
/// or IPv6 (version 6, TCP or UDP directly after the fixed header), then a complete TCP (20
/// bytes) or UDP (8 bytes) header. A TCP header cut anywhere before its 20th byte is truncated,
/// after the checksum too. Then the length fields: an IP length that does not hold the IP
/// header or ends past the frame, a TCP data offset or UDP length that does not fit the IP
/// packet, are passed untouched. Checksums are not part of the classification, as in the
/// program.
fn model(frame: &[u8]) -> Expect {
    let (family, proto, l4, to_node) = match network(frame) {
        Ok(network) => network,
        Err(reason) => return Expect::Pass(reason),
    };
    let header = match proto {
        frames::IPPROTO_TCP => 20,
        frames::IPPROTO_UDP => 8,
        _ => return Expect::Pass(Stat::PassOtherProtocol),
    };
    if frame.len() < l4 + header {
        return Expect::Pass(Stat::PassTruncated);
    }
    // Lengths, once the transport header is known to be there: the IP length field must hold
    // the IP header and end inside the frame, the TCP data offset (5..=15 words) and the UDP
    // length (at least 8) must end inside the IP packet.
    let ip_end = match family {
        4 => ETH + usize::from(be16(frame, ETH + 2)),
        _ => L4_V6 + usize::from(be16(frame, ETH + 4)),
    };
    if ip_end < l4 || ip_end > frame.len() {
        return Expect::Pass(Stat::PassBadIpLength);
    }
    let transport_end = match proto {
        frames::IPPROTO_TCP => l4 + usize::from(frame[l4 + 12] >> 4) * 4,
        _ => l4 + usize::from(be16(frame, l4 + 4)),
    };
    if transport_end < l4 + header || transport_end > ip_end {
        return Expect::Pass(Stat::PassBadTransportHeader);
    }
    let workers = match (family, proto, be16(frame, l4 + 2)) {
        (4, frames::IPPROTO_TCP, TCP_PORT) if to_node => &TCP_WORKERS,
        (_, frames::IPPROTO_UDP, UDP_PORT) => &UDP_WORKERS,
        _ => return Expect::Pass(Stat::PassNotService),
    };
    Expect::Steer(Steer { family, proto, l4, workers })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Checksum {
    Valid,
    Invalid,
    /// UDP over IPv4 with a zero checksum: "no checksum".
    NoneUdp4,
    /// IP length fields do not describe a segment inside the frame, or UDP/IPv6 with zero.
    Unknown,
}

/// The transport checksum of a frame `steer` describes, verified over the segment the IP
/// length fields delimit.
fn transport_checksum(frame: &[u8], steer: &Steer) -> Checksum {
    let mut pseudo = Vec::with_capacity(frame.len() + 40);
    let segment = if steer.family == 4 {
        let end = ETH + usize::from(be16(frame, ETH + 2));
        if end > frame.len() || end < steer.csum() + 2 {
            return Checksum::Unknown;
        }
        let segment = &frame[steer.l4..end];
        pseudo.extend_from_slice(&frame[ETH + 12..ETH + 20]);
        pseudo.extend_from_slice(&[0, steer.proto]);
        pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
        segment
    } else {
        let end = L4_V6 + usize::from(be16(frame, ETH + 4));
        if end > frame.len() || end < steer.csum() + 2 {
            return Checksum::Unknown;
        }
        let segment = &frame[steer.l4..end];
        pseudo.extend_from_slice(&frame[ETH + 8..ETH + 40]);
        pseudo.extend_from_slice(&(segment.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, steer.proto]);
        segment
    };
    if steer.proto == frames::IPPROTO_UDP && be16(frame, steer.csum()) == 0 {
        return if steer.family == 4 { Checksum::NoneUdp4 } else { Checksum::Unknown };
    }
    pseudo.extend_from_slice(segment);
    if frames::checksum_fold(0, &pseudo) == 0 { Checksum::Valid } else { Checksum::Invalid }
}

// ---------------------------------------------------------------------------------------------
// Running frames and checking what came back.

/// Counter changes across one run.
struct Delta([u64; STATS_LEN as usize]);

impl Delta {
    fn between(before: &Counters, after: &Counters) -> Delta {
        let mut delta = [0; STATS_LEN as usize];
        for &stat in Stat::ALL {
            delta[stat.index() as usize] = after.get(stat).wrapping_sub(before.get(stat));
        }
        Delta(delta)
    }

    fn get(&self, stat: Stat) -> u64 {
        self.0[stat.index() as usize]
    }

    /// Outcome counters that moved, with how much.
    fn outcomes(&self) -> Vec<(Stat, u64)> {
        Stat::ALL.iter().filter(|&&s| is_outcome(s) && self.get(s) != 0).map(|&s| (s, self.get(s))).collect()
    }

    fn is_zero(&self) -> bool {
        self.0.iter().all(|&v| v == 0)
    }
}

struct Run {
    verdict: u32,
    out: Vec<u8>,
    delta: Delta,
}

fn hex(bytes: &[u8]) -> String {
    const SHOWN: usize = 160;
    let mut s: String = bytes.iter().take(SHOWN).map(|b| format!("{b:02x}")).collect();
    if bytes.len() > SHOWN {
        s.push_str(&format!("...({} bytes)", bytes.len()));
    }
    s
}

/// Breaches of the invariants, which hold whatever the exact reason: never
/// `XDP_ABORTED`, one packet counted under exactly one outcome, and a frame that comes back
/// changed was counted as steered, is TCP or UDP over IP, and differs only in its destination
/// port and transport checksum.
fn invariant_violations(frame: &[u8], run: &Run) -> Vec<String> {
    let mut violations = Vec::new();
    if run.verdict == XDP_ABORTED {
        violations.push("returned XDP_ABORTED".to_owned());
    }
    let outcomes = run.delta.outcomes();
    if outcomes.iter().map(|&(_, n)| n).sum::<u64>() != 1 {
        violations.push(format!("counted under {outcomes:?}, not exactly one reason"));
    }
    if run.delta.get(Stat::Packets) != 1 {
        violations.push(format!("packets +{}", run.delta.get(Stat::Packets)));
    }
    if run.out.len() != frame.len() {
        violations.push(format!("came back {} bytes long", run.out.len()));
        return violations;
    }
    let changed: Vec<usize> = (0..frame.len()).filter(|&i| frame[i] != run.out[i]).collect();
    if changed.is_empty() {
        return violations;
    }
    if run.delta.get(Stat::Steered) != 1 {
        violations.push(format!("rewritten at {changed:?} but not counted as steered"));
    }
    match network(frame) {
        Ok((_, proto @ (frames::IPPROTO_TCP | frames::IPPROTO_UDP), l4, _)) => {
            let stray: Vec<usize> = changed.into_iter().filter(|&i| !rewritable(proto, l4, i)).collect();
            if !stray.is_empty() {
                violations.push(format!("bytes other than port and checksum changed at {stray:?}"));
            }
        }
        _ => violations.push(format!("rewritten at {changed:?} though not TCP or UDP over IP")),
    }
    violations
}

/// Everything wrong with one run of `frame`, given what the model expects. `bytes_seen` is
/// what the program can see of the frame (all of it, unless the kernel made it multi-buffer).
fn problems(frame: &[u8], run: &Run, expect: Expect, bytes_seen: usize) -> Vec<String> {
    let mut problems = Vec::new();
    if run.verdict == XDP_ABORTED {
        problems.push("returned XDP_ABORTED".to_owned());
    } else if run.verdict != XDP_PASS {
        problems.push(format!("verdict {} instead of XDP_PASS", run.verdict));
    }
    let outcomes = run.delta.outcomes();
    if outcomes != [(expect.outcome(), 1)] {
        problems.push(format!("counted under {outcomes:?}, expected exactly [({:?}, 1)]", expect.outcome()));
    }
    if run.delta.get(Stat::Packets) != 1 {
        problems.push(format!("packets +{}", run.delta.get(Stat::Packets)));
    }
    if run.delta.get(Stat::Bytes) != bytes_seen as u64 {
        problems.push(format!("bytes +{}, expected +{bytes_seen}", run.delta.get(Stat::Bytes)));
    }
    let placed = run.delta.get(Stat::NewFlows) + run.delta.get(Stat::ConntrackHits);
    let expected_placed = u64::from(matches!(expect, Expect::Steer(_)));
    if placed != expected_placed
        || run.delta.get(Stat::ConntrackInsertFailed) != 0
        || run.delta.get(Stat::EgressRestored) != 0
    {
        problems.push(format!(
            "new_flows +{} conntrack_hits +{} conntrack_insert_failed +{} egress_restored +{}",
            run.delta.get(Stat::NewFlows),
            run.delta.get(Stat::ConntrackHits),
            run.delta.get(Stat::ConntrackInsertFailed),
            run.delta.get(Stat::EgressRestored)
        ));
    }
    if run.out.len() != frame.len() {
        problems.push(format!("came back {} bytes long", run.out.len()));
        return problems;
    }
    let changed: Vec<usize> = (0..frame.len()).filter(|&i| frame[i] != run.out[i]).collect();
    match expect {
        Expect::Pass(_) => {
            if !changed.is_empty() {
                problems.push(format!("rewritten at offsets {changed:?}: {}", hex(&run.out)));
            }
        }
        Expect::Steer(steer) => {
            let stray: Vec<usize> = changed.iter().copied().filter(|&i| !steer.may_change(i)).collect();
            if !stray.is_empty() {
                problems.push(format!("bytes other than port and checksum changed at {stray:?}"));
            }
            let port = be16(&run.out, steer.l4 + 2);
            if !steer.workers.contains(&port) {
                problems.push(format!("destination port {port} is not a worker port {:?}", steer.workers));
            }
            match (transport_checksum(frame, &steer), transport_checksum(&run.out, &steer)) {
                (Checksum::Valid, Checksum::Valid) | (Checksum::NoneUdp4, Checksum::NoneUdp4) => {}
                (before @ (Checksum::Valid | Checksum::NoneUdp4), after) => problems
                    .push(format!("transport checksum {before:?} before the rewrite, {after:?} after")),
                _ => {}
            }
        }
    }
    problems
}

/// A loaded dataplane with a TCP service on 198.18.0.2:8080 and a dual-stack UDP wildcard
/// service on [::]:5353, four workers each. Problems are collected and reported together when
/// the harness is dropped, so one failing test shows every frame that misbehaved.
struct Harness {
    dataplane: Dataplane,
    failures: Vec<String>,
}

impl Harness {
    fn new() -> Harness {
        let mut dataplane = Dataplane::load().expect("load the eBPF object");
        let mut steering = dataplane.take_steering().unwrap();
        steering
            .install(vec![
                Service {
                    addr: NODE.into(),
                    port: TCP_PORT,
                    protocol: Protocol::Tcp,
                    worker_ports: TCP_WORKERS.to_vec(),
                },
                Service {
                    addr: "::".parse().unwrap(),
                    port: UDP_PORT,
                    protocol: Protocol::Udp,
                    worker_ports: UDP_WORKERS.to_vec(),
                },
            ])
            .unwrap();
        Harness { dataplane, failures: Vec::new() }
    }

    fn counters(&self) -> Counters {
        self.dataplane.counters().expect("read the counters")
    }

    /// One BPF_PROG_TEST_RUN; on error the counters must not have moved (the program never ran).
    fn try_run(&mut self, frame: &[u8]) -> Result<Run, Error> {
        let before = self.counters();
        let result = self.dataplane.test_run_xdp(frame);
        let delta = Delta::between(&before, &self.counters());
        match result {
            Ok(out) => Ok(Run { verdict: out.verdict, out: out.frame, delta }),
            Err(e) => {
                assert!(delta.is_zero(), "test_run failed ({e}) yet counters moved");
                Err(e)
            }
        }
    }

    fn run(&mut self, frame: &[u8]) -> Run {
        self.try_run(frame).unwrap_or_else(|e| panic!("test_run of a {}-byte frame: {e}", frame.len()))
    }

    /// Runs `frame`, which the test states must end as `expect`; returns the output frame.
    fn check(&mut self, what: &str, frame: &[u8], expect: Expect) -> Vec<u8> {
        self.check_seen(what, frame, expect, frame.len())
    }

    fn check_seen(&mut self, what: &str, frame: &[u8], expect: Expect, bytes_seen: usize) -> Vec<u8> {
        // The hand-written expectation and the model must agree; if not, the test is wrong. The
        // model reads headers (always in the part the program sees) and compares length fields
        // with the whole frame, as the program does.
        assert_eq!(model(frame), expect, "model disagrees with the test about {what}");
        let run = self.run(frame);
        let problems = problems(frame, &run, expect, bytes_seen);
        if !problems.is_empty() {
            self.failures.push(format!(
                "{what} ({} bytes): {}\n    frame: {}",
                frame.len(),
                problems.join("; "),
                hex(frame)
            ));
        }
        run.out
    }

    fn pass(&mut self, what: &str, frame: &[u8], reason: Stat) {
        self.check(what, frame, Expect::Pass(reason));
    }

    /// A well-formed service packet; `l4` is where its transport header starts.
    fn steered(&mut self, what: &str, frame: &[u8], l4: usize) -> Vec<u8> {
        let expect = model(frame);
        match expect {
            Expect::Steer(steer) if steer.l4 == l4 => self.check(what, frame, expect),
            other => panic!("test bug: {what} is not a service packet at {l4} by the model: {other:?}"),
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if self.failures.is_empty() {
            return;
        }
        let report = format!("{} frame(s) misbehaved:\n{}", self.failures.len(), self.failures.join("\n"));
        if std::thread::panicking() {
            // Already failing for another reason: still show what was collected.
            eprintln!("{report}");
        } else {
            panic!("{report}");
        }
    }
}

fn errno(error: &Error) -> Option<i32> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return io.raw_os_error();
        }
        source = e.source();
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Frames.

fn tcp4(dst: Ipv4Addr, sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    frames::ipv4(frames::IPPROTO_TCP, CLIENT, dst, sport, dport, flags, payload)
}

fn udp4(dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    frames::ipv4(frames::IPPROTO_UDP, CLIENT, dst, sport, dport, 0, payload)
}

fn tcp6(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    frames::ipv6(frames::IPPROTO_TCP, CLIENT6, NODE6, sport, dport, flags, payload)
}

fn udp6(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    frames::ipv6(frames::IPPROTO_UDP, CLIENT6, NODE6, sport, dport, 0, payload)
}

/// Recomputes the IPv4 header checksum after a header field was edited (when the header
/// length leaves one to compute).
fn fix_ipv4_checksum(frame: &mut [u8]) {
    let ihl = usize::from(frame[ETH] & 0x0f) * 4;
    if ihl < 20 || ETH + ihl > frame.len() {
        return;
    }
    frame[ETH + 10..ETH + 12].fill(0);
    let sum = frames::checksum_fold(0, &frame[ETH..ETH + ihl]);
    frame[ETH + 10..ETH + 12].copy_from_slice(&sum.to_be_bytes());
}

/// `frame` (IPv4, no options) with `options` (a multiple of 4 bytes) inserted after the fixed
/// header. The transport checksum does not cover IP options, so it stays valid.
fn with_ipv4_options(frame: &[u8], options: &[u8]) -> Vec<u8> {
    assert!(options.len().is_multiple_of(4) && options.len() <= 40);
    let mut out = frame[..L4_V4].to_vec();
    out.extend_from_slice(options);
    out.extend_from_slice(&frame[L4_V4..]);
    out[ETH] = 0x40 | (5 + options.len() / 4) as u8;
    let total = be16(frame, ETH + 2) + options.len() as u16;
    out[ETH + 2..ETH + 4].copy_from_slice(&total.to_be_bytes());
    fix_ipv4_checksum(&mut out);
    out
}

/// Router Alert (RFC 2113), 4 bytes.
const OPT_ROUTER_ALERT: [u8; 4] = [0x94, 0x04, 0x00, 0x00];

/// 40 bytes of options, the most IHL allows: Router Alert, NOPs, End of Options.
fn max_ipv4_options() -> Vec<u8> {
    let mut options = OPT_ROUTER_ALERT.to_vec();
    options.resize(39, 0x01);
    options.push(0x00);
    options
}

fn set_ipv4_fragment(frame: &[u8], field: u16) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[ETH + 6..ETH + 8].copy_from_slice(&field.to_be_bytes());
    fix_ipv4_checksum(&mut out);
    out
}

/// An IPv4 frame from CLIENT to `dst` carrying `payload` as protocol `proto`.
fn ipv4_raw(proto: u8, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let mut frame = udp4(dst, 1, 1, b"")[..L4_V4].to_vec();
    frame[ETH + 9] = proto;
    frame[ETH + 2..ETH + 4].copy_from_slice(&(20 + payload.len() as u16).to_be_bytes());
    fix_ipv4_checksum(&mut frame);
    frame.extend_from_slice(payload);
    frame
}

/// An IPv6 frame from CLIENT6 to NODE6 with `next` as next header, carrying `payload`.
fn ipv6_raw(next: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = udp6(1, 1, b"")[..L4_V6].to_vec();
    frame[ETH + 6] = next;
    frame[ETH + 4..ETH + 6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An ICMP echo request, checksum included.
fn icmp_echo(kind: u8) -> Vec<u8> {
    let mut icmp = vec![kind, 0, 0, 0, 0x12, 0x34, 0, 1];
    icmp.extend_from_slice(b"ping");
    let sum = frames::checksum_fold(0, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    icmp
}

/// A UDP datagram to the wildcard service behind the IPv6 extension header `next`, whose own
/// next header is UDP.
fn ipv6_extension(next: u8) -> Vec<u8> {
    let header: Vec<u8> = match next {
        // Hop-by-hop and destination options: one PadN option filling the 8 bytes.
        0 | 60 => vec![17, 0, 1, 4, 0, 0, 0, 0],
        // Routing type 0 with no segments left, which a receiver ignores.
        43 => vec![17, 0, 0, 0, 0, 0, 0, 0],
        // Fragment header: offset 0, more fragments; the UDP header follows in full.
        44 => vec![17, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef],
        // AH: 12 bytes (payload length 1), SPI and sequence number.
        51 => vec![17, 1, 0, 0, 0, 0, 0x10, 0x00, 0, 0, 0, 1],
        _ => vec![17, 0, 0, 0, 0, 0, 0, 0],
    };
    let datagram = udp6(40000, UDP_PORT, b"query");
    let mut payload = header;
    payload.extend_from_slice(&datagram[L4_V6..]);
    ipv6_raw(next, &payload)
}

fn vlan_tagged(frame: &[u8], tpid: u16) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    out.extend_from_slice(&tpid.to_be_bytes());
    out.extend_from_slice(&[0x00, 0x64]); // VLAN 100
    out.extend_from_slice(&frame[12..]);
    out
}
