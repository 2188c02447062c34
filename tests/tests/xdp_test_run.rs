//! BPF_PROG_TEST_RUN fixtures: crafted frames in, verdict and output bytes out, with no
//! interface involved.

use std::net::{Ipv4Addr, Ipv6Addr};

use lb_common::Stat;
use lb_tests::{frames, require_root};
use lb_userspace::dataplane::Dataplane;

const XDP_PASS: u32 = 2;

#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn crafted_frames_pass_unchanged_and_are_counted() {
    require_root!();
    let dataplane = Dataplane::load().unwrap();
    let v4 = frames::ipv4(
        frames::IPPROTO_TCP,
        Ipv4Addr::new(198, 18, 0, 1),
        Ipv4Addr::new(198, 18, 0, 2),
        40000,
        80,
        frames::TCP_SYN,
        b"",
    );
    let v6 = frames::ipv6(
        frames::IPPROTO_UDP,
        "2001:db8::1".parse::<Ipv6Addr>().unwrap(),
        "2001:db8::2".parse::<Ipv6Addr>().unwrap(),
        5353,
        53,
        0,
        b"query",
    );
    // The shortest frame the kernel accepts: an Ethernet header alone.
    let bare_ethernet = vec![0u8; frames::ETH_HLEN];
    let random: Vec<u8> = (0..300u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();

    for frame in [&v4, &v6, &bare_ethernet, &random] {
        let before = dataplane.counters().unwrap();
        let out = dataplane.test_run_xdp(frame).unwrap();
        let after = dataplane.counters().unwrap();
        assert_eq!(out.verdict, XDP_PASS, "verdict for a {}-byte frame", frame.len());
        assert_eq!(&out.frame, frame, "the frame leaves untouched");
        assert_eq!(after.get(Stat::Packets) - before.get(Stat::Packets), 1);
        assert_eq!(after.get(Stat::Bytes) - before.get(Stat::Bytes), frame.len() as u64);
    }
}
