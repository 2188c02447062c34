//! Packet parsing for both directions. One bounds-checked accessor per program type; every
//! header read goes through it. A parse failure names the counter it is passed under.

use core::mem;

use aya_ebpf::programs::{TcContext, XdpContext};
use lb_common::{FAMILY_IPV4, FAMILY_IPV6, FlowKey, PROTO_TCP, PROTO_UDP, Stat};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
};

/// Read access to packet bytes, bounds-checked.
pub trait Packet {
    /// A copy of the `T` at `offset`, or `None` when the frame is too short.
    fn read<T: Copy>(&self, offset: usize) -> Option<T>;
    /// The frame's length in bytes, Ethernet header included.
    fn frame_len(&self) -> usize;
    /// How much of the frame is directly readable (all of it, but for XDP multi-buffer
    /// frames); a lower bound of `frame_len` that costs no helper call.
    fn linear_len(&self) -> usize;
}

/// The one accessor for XDP: a pointer to `T` at `offset`, only if it lies inside the frame.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

impl Packet for XdpContext {
    #[inline(always)]
    fn read<T: Copy>(&self, offset: usize) -> Option<T> {
        // SAFETY: ptr_at checked that the whole T lies between data and data_end; the read is
        // unaligned because headers sit at arbitrary offsets.
        ptr_at::<T>(self, offset).map(|p| unsafe { p.read_unaligned() })
    }

    #[inline(always)]
    fn frame_len(&self) -> usize {
        // A multi-buffer frame (jumbo frames, large test runs) is longer than its linear part
        // between data and data_end: the helper counts its fragments too.
        // SAFETY: the helper only reads the xdp_buff this program was given.
        unsafe { aya_ebpf::helpers::generated::bpf_xdp_get_buff_len(self.ctx) as usize }
    }

    #[inline(always)]
    fn linear_len(&self) -> usize {
        self.data_end() - self.data()
    }
}

impl Packet for TcContext {
    #[inline(always)]
    fn read<T: Copy>(&self, offset: usize) -> Option<T> {
        // bpf_skb_load_bytes copies, so non-linear skbs are read correctly too.
        self.load::<T>(offset).ok()
    }

    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.len() as usize
    }

    #[inline(always)]
    fn linear_len(&self) -> usize {
        self.len() as usize
    }
}

/// A parsed TCP or UDP packet: its 5-tuple and where its fields sit.
pub struct Flow {
    pub key: FlowKey,
    /// Offset of the transport header.
    pub l4: usize,
    /// TCP: the SYN bit without ACK (a connection opening).
    pub syn: bool,
    /// TCP: FIN or RST (the connection is ending).
    pub closing: bool,
}

impl Flow {
    /// Offset of the transport checksum field.
    #[inline(always)]
    pub fn csum_offset(&self) -> usize {
        if self.key.proto == PROTO_TCP { self.l4 + 16 } else { self.l4 + 6 }
    }
}

const IPV4_MF: u8 = 0x20;

/// Parses Ethernet, then IPv4 (options skipped) or IPv6 (no extension headers), then the ports
/// of TCP or UDP. Lengths are checked against each other and the frame before anything is
/// trusted: an IP length shorter than its headers or longer than the frame, a TCP data offset
/// under 5 words or past the packet, a UDP length that does not fit: such packets are passed
/// to the kernel untouched (which drops them), never rewritten or given a conntrack entry.
#[inline(always)]
pub fn parse<P: Packet>(packet: &P) -> Result<Flow, Stat> {
    let eth: EthHdr = packet.read(0).ok_or(Stat::PassTruncated)?;
    let mut key = FlowKey::default();
    let l4;
    // Where the IP packet ends by its length field, and whether that field holds the IP
    // header; both checked once the transport header is known to be in the frame, so a frame
    // cut short counts as truncated first. A frame may carry padding after the packet, never
    // less than it.
    let ip_end;
    let ip_len_ok;
    if eth.ether_type == EtherType::Ipv4 as u16 {
        let ip: Ipv4Hdr = packet.read(EthHdr::LEN).ok_or(Stat::PassTruncated)?;
        let ihl = usize::from(ip.vihl & 0x0f) * 4;
        if ip.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
            return Err(Stat::PassBadIpHeader);
        }
        // Non-first fragments carry no ports; first fragments are passed too, so that every
        // fragment of a datagram takes the same path.
        if ip.frags[0] & IPV4_MF != 0 || (u16::from(ip.frags[0] & 0x1f) << 8 | u16::from(ip.frags[1])) != 0 {
            return Err(Stat::PassFragment);
        }
        let total = usize::from(u16::from_be_bytes(ip.tot_len));
        ip_end = EthHdr::LEN + total;
        ip_len_ok = total >= ihl;
        key.family = FAMILY_IPV4;
        key.proto = ip.proto;
        key.src[0] = u32::from_ne_bytes(ip.src_addr);
        key.dst[0] = u32::from_ne_bytes(ip.dst_addr);
        l4 = EthHdr::LEN + ihl;
    } else if eth.ether_type == EtherType::Ipv6 as u16 {
        let ip: Ipv6Hdr = packet.read(EthHdr::LEN).ok_or(Stat::PassTruncated)?;
        if ip.vcf[0] >> 4 != 6 {
            return Err(Stat::PassBadIpHeader);
        }
        match ip.next_hdr {
            PROTO_TCP | PROTO_UDP => {}
            // Hop-by-hop, routing, fragment, destination options, AH, ESP's neighbours: the
            // transport header is further in; such traffic is left to the stack.
            0 | 43 | 44 | 51 | 60 | 135 | 139 | 140 | 253 | 254 => return Err(Stat::PassIpv6Extension),
            _ => return Err(Stat::PassOtherProtocol),
        }
        ip_end = EthHdr::LEN + Ipv6Hdr::LEN + usize::from(u16::from_be_bytes(ip.payload_len));
        ip_len_ok = true;
        key.family = FAMILY_IPV6;
        key.proto = ip.next_hdr;
        key.src = words(ip.src_addr);
        key.dst = words(ip.dst_addr);
        l4 = EthHdr::LEN + Ipv6Hdr::LEN;
    } else {
        return Err(Stat::PassNotIp);
    }

    let mut syn = false;
    let mut closing = false;
    match key.proto {
        PROTO_TCP => {
            // The whole fixed header (20 bytes): ports, the flags byte at 13, the checksum at
            // 16..18. A frame cut inside it is truncated, not a packet to steer.
            let head: [u8; 20] = packet.read(l4).ok_or(Stat::PassTruncated)?;
            key.sport = u16::from_ne_bytes([head[0], head[1]]);
            key.dport = u16::from_ne_bytes([head[2], head[3]]);
            syn = head[13] & 0x12 == 0x02;
            closing = head[13] & 0x05 != 0;
            check_ip_length(packet, ip_len_ok, ip_end)?;
            let data_offset = usize::from(head[12] >> 4) * 4;
            if data_offset < 20 || l4 + data_offset > ip_end {
                return Err(Stat::PassBadTransportHeader);
            }
        }
        PROTO_UDP => {
            let head: [u8; 8] = packet.read(l4).ok_or(Stat::PassTruncated)?;
            key.sport = u16::from_ne_bytes([head[0], head[1]]);
            key.dport = u16::from_ne_bytes([head[2], head[3]]);
            check_ip_length(packet, ip_len_ok, ip_end)?;
            let length = usize::from(u16::from_be_bytes([head[4], head[5]]));
            if length < 8 || l4 + length > ip_end {
                return Err(Stat::PassBadTransportHeader);
            }
        }
        _ => return Err(Stat::PassOtherProtocol),
    }
    Ok(Flow { key, l4, syn, closing })
}

/// The IP length field holds the IP header and ends inside the frame. The frame's whole
/// length (a helper call for XDP) is only asked for when the packet runs past the linear
/// part, which only multi-buffer frames and bad lengths do.
#[inline(always)]
fn check_ip_length<P: Packet>(packet: &P, ip_len_ok: bool, ip_end: usize) -> Result<(), Stat> {
    if ip_len_ok && (ip_end <= packet.linear_len() || ip_end <= packet.frame_len()) {
        Ok(())
    } else {
        Err(Stat::PassBadIpLength)
    }
}

#[inline(always)]
fn words(addr: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]),
        u32::from_ne_bytes([addr[4], addr[5], addr[6], addr[7]]),
        u32::from_ne_bytes([addr[8], addr[9], addr[10], addr[11]]),
        u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]]),
    ]
}
