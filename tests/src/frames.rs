//! Builders for crafted Ethernet frames (IPv4 and IPv6, TCP and UDP) with correct checksums,
//! for BPF_PROG_TEST_RUN fixtures.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const ETH_HLEN: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// TCP flag bits.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

/// Ones'-complement sum folded to 16 bits, over `data` (odd length padded with zero).
pub fn checksum_fold(mut sum: u32, data: &[u8]) -> u16 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ethernet(ethertype: u16) -> Vec<u8> {
    let mut frame = Vec::with_capacity(128);
    frame.extend_from_slice(&DST_MAC);
    frame.extend_from_slice(&SRC_MAC);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame
}

/// A transport header plus payload, with its checksum field still zero.
fn l4_segment(protocol: u8, sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut seg = Vec::new();
    seg.extend_from_slice(&sport.to_be_bytes());
    seg.extend_from_slice(&dport.to_be_bytes());
    if protocol == IPPROTO_TCP {
        seg.extend_from_slice(&1u32.to_be_bytes()); // sequence
        seg.extend_from_slice(&0u32.to_be_bytes()); // acknowledgment
        seg.push(5 << 4); // data offset: 20 bytes
        seg.push(flags);
        seg.extend_from_slice(&64240u16.to_be_bytes()); // window
        seg.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    } else {
        seg.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        seg.extend_from_slice(&[0, 0]);
    }
    seg.extend_from_slice(payload);
    seg
}

fn checksum_offset(protocol: u8) -> usize {
    if protocol == IPPROTO_TCP { 16 } else { 6 }
}

/// An IPv4 frame carrying TCP (with `flags`) or UDP.
pub fn ipv4(
    protocol: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut seg = l4_segment(protocol, sport, dport, flags, payload);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, protocol]);
    pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(&seg);
    let sum = checksum_fold(0, &pseudo);
    let off = checksum_offset(protocol);
    seg[off..off + 2].copy_from_slice(&sum.to_be_bytes());

    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + seg.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, 0x40, 0]); // id, DF
    ip.extend_from_slice(&[64, protocol, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum = checksum_fold(0, &ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());

    let mut frame = ethernet(ETHERTYPE_IPV4);
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&seg);
    frame
}

/// An IPv6 frame carrying TCP (with `flags`) or UDP.
pub fn ipv6(
    protocol: u8,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sport: u16,
    dport: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut seg = l4_segment(protocol, sport, dport, flags, payload);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(seg.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, protocol]);
    pseudo.extend_from_slice(&seg);
    let sum = checksum_fold(0, &pseudo);
    let off = checksum_offset(protocol);
    seg[off..off + 2].copy_from_slice(&sum.to_be_bytes());

    let mut frame = ethernet(ETHERTYPE_IPV6);
    frame.extend_from_slice(&[0x60, 0, 0, 0]);
    frame.extend_from_slice(&(seg.len() as u16).to_be_bytes());
    frame.extend_from_slice(&[protocol, 64]);
    frame.extend_from_slice(&src.octets());
    frame.extend_from_slice(&dst.octets());
    frame.extend_from_slice(&seg);
    frame
}

/// Verifies the IPv4 header checksum and the TCP/UDP checksum of an IPv4 frame.
pub fn ipv4_checksums_ok(frame: &[u8]) -> bool {
    if frame.len() < ETH_HLEN + 20 {
        return false;
    }
    let ip = &frame[ETH_HLEN..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if checksum_fold(0, &ip[..ihl]) != 0 {
        return false;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let seg = &ip[ihl..total];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, ip[9]]);
    pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(seg);
    checksum_fold(0, &pseudo) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_frames_have_valid_checksums() {
        let a = Ipv4Addr::new(198, 18, 0, 1);
        let b = Ipv4Addr::new(198, 18, 0, 2);
        assert!(ipv4_checksums_ok(&ipv4(IPPROTO_TCP, a, b, 40000, 80, TCP_SYN, b"")));
        assert!(ipv4_checksums_ok(&ipv4(IPPROTO_UDP, a, b, 40000, 53, 0, b"odd")));
        let mut broken = ipv4(IPPROTO_TCP, a, b, 40000, 80, TCP_SYN, b"x");
        let last = broken.len() - 1;
        broken[last] ^= 1;
        assert!(!ipv4_checksums_ok(&broken));
    }
}
