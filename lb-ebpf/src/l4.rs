//! L4 services balanced entirely in XDP: a client packet to a service is sent to an endpoint
//! chosen by Maglev (destination NAT), with the node as its source (source NAT, one node port
//! per flow), out of the interface `bpf_fib_lookup` names; the endpoint's reply, arriving at
//! that node port, is translated back and sent to the client the same way. No socket sees
//! either. IPv4 without IP options; everything else is passed to the kernel and counted.
//!
//! The FIB's answer (interface, MACs, MTU) is kept in the flow's entry for each direction and
//! reused for `L4_NEXT_HOP_TTL_NS`: the lookup was most of an established packet's cost.

use aya_ebpf::{
    bindings::{BPF_NOEXIST, bpf_fib_lookup as FibParams, xdp_action},
    helpers::{bpf_fib_lookup, bpf_ktime_get_coarse_ns, bpf_redirect},
    programs::XdpContext,
};
use lb_common::{
    FAMILY_IPV4, FlowKey, L4_ACTIVE, L4_CLOSED_REUSE_NS, L4_CLOSING_NS, L4_NEXT_HOP_CLOCK_SHIFT,
    L4_NEXT_HOP_TTL_NS, L4_SNAT_PORT_MAX, L4_SNAT_PORT_MIN, L4Flow, L4NextHop, L4Reply, L4ReplyKey,
    MAGLEV_TABLE_SIZE, MAX_L4_BACKENDS, MAX_L4_SERVICES, PROTO_TCP, PROTO_UDP, ServiceValue, Stat,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    lookup::flow_hash,
    maps::{
        SLUICE_L4_BACKENDS, SLUICE_L4_FLOWS, SLUICE_L4_MAGLEV, SLUICE_L4_REPLIES, SLUICE_L4_SCRATCH,
        SLUICE_L4_SERVICES,
    },
    parse::{Flow, ptr_at},
    stats,
};

/// `L4_NEXT_HOP_TTL_NS` in units of `L4NextHop::checked`.
const TTL_STAMPS: u32 = (L4_NEXT_HOP_TTL_NS >> L4_NEXT_HOP_CLOCK_SHIFT) as u32;
/// Node source ports in the SNAT range.
const SNAT_PORTS: u32 = (L4_SNAT_PORT_MAX - L4_SNAT_PORT_MIN) as u32 + 1;
/// Ports tried for a new flow before it is dropped: each try is one insert that fails only when
/// the port is held for the same endpoint. The tries are independent (see `next_port_mix`), so
/// with an endpoint's ports 60% taken one new flow in 12 million finds none free (0.6^32), at
/// 80% one in 1,260 (which then takes a closed flow's port, see `L4_CLOSED_REUSE_NS`, before
/// it is dropped).
const PORT_TRIES: u32 = 32;
const AF_INET: u8 = 2;
/// The transport header of an IPv4 packet without options.
const L4_OFFSET: usize = EthHdr::LEN + Ipv4Hdr::LEN;

/// This CPU's scratch space for building a new flow's entries and asking the FIB (one
/// `SLUICE_L4_SCRATCH` value): the steering, guard and L4 paths share one 512-byte stack.
#[repr(C)]
pub struct L4Scratch {
    flow: L4Flow,
    reply: L4Reply,
    fib: FibParams,
}

/// Where a packet goes after translation: its new addresses and ports, wire bytes.
struct Rewrite {
    src: u32,
    sport: u16,
    dst: u32,
    dport: u16,
}

/// A client packet to L4 service `service`: the XDP verdict, its outcome counted.
#[inline(always)]
pub fn forward(ctx: &XdpContext, flow: &Flow, service: &ServiceValue) -> u32 {
    match try_forward(ctx, flow, service) {
        Ok(action) => {
            stats::count(Stat::L4Forwarded);
            action
        }
        Err(reason) => {
            stats::count(reason);
            if matches!(reason, Stat::DropL4NoBackend | Stat::DropL4NoPort) {
                xdp_action::XDP_DROP
            } else {
                xdp_action::XDP_PASS
            }
        }
    }
}

#[inline(always)]
fn try_forward(ctx: &XdpContext, flow: &Flow, service: &ServiceValue) -> Result<u32, Stat> {
    if flow.key.family != FAMILY_IPV4 || flow.l4 != L4_OFFSET {
        return Err(Stat::PassL4Unsupported);
    }
    if service.id >= MAX_L4_SERVICES {
        return Err(Stat::DropL4NoBackend);
    }
    let settings = match SLUICE_L4_SERVICES.get(service.id) {
        Some(settings) if settings.flags & L4_ACTIVE != 0 => settings,
        _ => return Err(Stat::DropL4NoBackend),
    };
    // The coarse clock (CLOCK_MONOTONIC as of the last tick, no clock read): idle timeouts
    // are seconds, the next hop's lifetime a quarter of one.
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    match SLUICE_L4_FLOWS.get_ptr_mut(&flow.key) {
        // SAFETY: a live map value (the lookup above); the fields are plain integers, and a
        // concurrent writer of the same flow (another CPU) writes the same values.
        Some(entry) if unsafe { follows(&*entry, flow, now) } => unsafe {
            // Written once per tick at most: the flow's other packets leave its cache line
            // clean, so CPUs sharing a flow do not pass it back and forth.
            if (*entry).last_seen_ns != now {
                (*entry).last_seen_ns = now;
            }
            if flow.closing {
                (*entry).idle_ns = L4_CLOSING_NS;
            }
            let to = towards_endpoint(&*entry);
            next_hop(ctx, flow, &to, &raw mut (*entry).hop, now)?;
            rewrite(ctx, flow, &to, &raw const (*entry).hop)
        },
        stale => {
            if let Some(old) = stale {
                // SAFETY: as above; the old flow's port is given back before a new one is taken.
                let old = unsafe { *old };
                let _ = SLUICE_L4_REPLIES.remove(&reply_key(&old, flow.key.proto));
            }
            let entry = new_flow(ctx, flow, service.id, settings, now)?;
            // SAFETY: this CPU's scratch value (see new_flow).
            unsafe { rewrite(ctx, flow, &towards_endpoint(&*entry), &raw const (*entry).hop) }
        }
    }
}

/// A client packet's new addresses and ports: from the node's SNAT address and port to the
/// endpoint.
#[inline(always)]
fn towards_endpoint(entry: &L4Flow) -> Rewrite {
    Rewrite { src: entry.snat[0], sport: entry.snat_port, dst: entry.backend[0], dport: entry.backend_port }
}

/// Places a new flow: Maglev slot, endpoint, a free node port, the next hop; then records the
/// flow and its reply entry. Should the route to the endpoint be missing (the packet then
/// passes), the entry stays and the client's next try takes the same endpoint and port. The
/// entries are built in this CPU's scratch space, off the stack: the returned pointer is valid
/// until the program ends.
#[inline(always)]
fn new_flow(
    ctx: &XdpContext,
    flow: &Flow,
    service: u32,
    settings: &lb_common::L4Service,
    now: u64,
) -> Result<*mut L4Flow, Stat> {
    let hash = flow_hash(&flow.key);
    let slot = hash % MAGLEV_TABLE_SIZE;
    let index = match SLUICE_L4_MAGLEV.get(service * MAGLEV_TABLE_SIZE + slot) {
        Some(&value) if value != 0 && value <= MAX_L4_BACKENDS => value - 1,
        _ => return Err(Stat::DropL4NoBackend),
    };
    let backend = match SLUICE_L4_BACKENDS.get(service * MAX_L4_BACKENDS + index) {
        Some(backend) if backend.port != 0 => backend,
        _ => return Err(Stat::DropL4NoBackend),
    };
    let scratch = SLUICE_L4_SCRATCH.get_ptr_mut(0).ok_or(Stat::DropL4NoPort)?;
    // SAFETY: this CPU's own scratch value (a successful lookup); nothing else runs on this CPU
    // until the program ends, so nothing else writes it meanwhile.
    let (entry, reply) = unsafe { (&raw mut (*scratch).flow, &raw mut (*scratch).reply) };
    // SAFETY: as above; plain integers written field by field.
    unsafe {
        (*entry).backend = backend.addr;
        (*entry).snat = settings.snat;
        (*entry).last_seen_ns = now;
        (*entry).idle_ns = if flow.closing { L4_CLOSING_NS } else { settings.idle_ns };
        (*entry).backend_port = backend.port;
        (*entry).snat_port = 0;
        (*entry).service = service;
        (*entry).hop = L4NextHop::default();
        (*reply).client = flow.key;
        (*reply).hop = L4NextHop::default();
    }
    let mut mix = hash;
    let mut claimed = false;
    // The first port tried whose flow has closed and idled `L4_CLOSED_REUSE_NS`: taken only
    // when none is free.
    let mut spare: u16 = 0;
    for _ in 0..PORT_TRIES {
        mix = next_port_mix(mix);
        let port = L4_SNAT_PORT_MIN + (mix % SNAT_PORTS) as u16;
        // SAFETY: as above.
        let key = unsafe {
            (*entry).snat_port = port.to_be();
            reply_key(&*entry, flow.key.proto)
        };
        // SAFETY: `reply` is this CPU's scratch value (as above), read by the insert.
        if SLUICE_L4_REPLIES.insert(&key, unsafe { &*reply }, u64::from(BPF_NOEXIST)).is_ok() {
            claimed = true;
            break;
        }
        // The port is held for this endpoint: reclaim it when the flow holding it is over.
        // SAFETY: as above.
        match take_port(&key, unsafe { &*reply }, now, false) {
            Port::Taken => {
                claimed = true;
                break;
            }
            Port::Closed if spare == 0 => spare = port,
            _ => {}
        }
    }
    if !claimed && spare != 0 {
        // SAFETY: as above.
        let key = unsafe {
            (*entry).snat_port = spare.to_be();
            reply_key(&*entry, flow.key.proto)
        };
        // SAFETY: as above.
        claimed = matches!(take_port(&key, unsafe { &*reply }, now, true), Port::Taken);
    }
    if !claimed {
        return Err(Stat::DropL4NoPort);
    }
    stats::count(Stat::L4NewFlows);
    // The next hop goes into the entry before it is inserted (one insert, no second lookup).
    // Without one the entry is still recorded and the packet passes (the caller counts it).
    // SAFETY: as above.
    let to = unsafe { towards_endpoint(&*entry) };
    // SAFETY: as above.
    let routed = next_hop(ctx, flow, &to, unsafe { &raw mut (*entry).hop }, now);
    // SAFETY: as above.
    if SLUICE_L4_FLOWS.insert(&flow.key, unsafe { &*entry }, 0).is_err() {
        stats::count(Stat::ConntrackInsertFailed);
    }
    routed.map(|()| entry)
}

/// A packet to a node port in the SNAT range from a source not known as an endpoint flow is
/// no reply of ours: `None`, and the caller carries on as for any other packet.
#[inline(always)]
pub fn reply(ctx: &XdpContext, flow: &Flow) -> Option<u32> {
    let port = u16::from_be(flow.key.dport);
    if !(L4_SNAT_PORT_MIN..=L4_SNAT_PORT_MAX).contains(&port) || flow.key.family != FAMILY_IPV4 {
        return None;
    }
    let key = L4ReplyKey {
        backend: flow.key.src,
        backend_port: flow.key.sport,
        snat_port: flow.key.dport,
        proto: flow.key.proto,
        family: flow.key.family,
        _pad: 0,
    };
    let reply = SLUICE_L4_REPLIES.get_ptr_mut(&key)?;
    // SAFETY: copied out at once; user space and other CPUs replace entries whole.
    let client: FlowKey = unsafe { (*reply).client };
    if flow.l4 != L4_OFFSET {
        stats::count(Stat::PassL4Unsupported);
        return Some(xdp_action::XDP_PASS);
    }
    if flow.closing
        && let Some(entry) = SLUICE_L4_FLOWS.get_ptr_mut(&client)
    {
        // SAFETY: a live map value; one aligned word written.
        unsafe { (*entry).idle_ns = L4_CLOSING_NS };
    }
    let to = Rewrite { src: client.dst[0], sport: client.dport, dst: client.src[0], dport: client.sport };
    // The coarse clock, as towards the endpoint (see try_forward).
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // SAFETY: `reply` points at a live map value (the lookup above).
    let sent = next_hop(ctx, flow, &to, unsafe { &raw mut (*reply).hop }, now)
        .and_then(|()| rewrite(ctx, flow, &to, unsafe { &raw const (*reply).hop }));
    Some(match sent {
        Ok(action) => {
            stats::count(Stat::L4Replied);
            action
        }
        Err(reason) => {
            stats::count(reason);
            xdp_action::XDP_PASS
        }
    })
}

/// ICMP error types that quote the packet they are about: destination unreachable (port
/// unreachable, fragmentation needed for path MTU discovery, ...) and time exceeded.
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const PROTO_ICMP: u8 = 1;
/// The ICMP header, then the quoted IPv4 header (without options) and its transport header.
const ICMP_OFFSET: usize = L4_OFFSET;
const QUOTED_IP_OFFSET: usize = ICMP_OFFSET + 8;
const QUOTED_L4_OFFSET: usize = QUOTED_IP_OFFSET + Ipv4Hdr::LEN;

/// An ICMP error about a packet XDP sent to an endpoint (the endpoint's port unreachable, a
/// router's "fragmentation needed" or "time exceeded" on the way) reaches the node's SNAT
/// port, where no socket would take it: it is translated for the client as the reply path
/// translates the flow's packets (outer addresses, the quoted packet made the one the client
/// sent, every checksum it touches) and sent to the client, so its UDP socket sees the port
/// unreachable and its TCP path MTU discovery works. `None` for anything else (the caller
/// passes it as before): other ICMP, IP options in either header, a quote of no live flow.
#[inline(always)]
pub fn icmp_error(ctx: &XdpContext) -> Option<u32> {
    let ip: Ipv4Hdr = read(ctx, EthHdr::LEN)?;
    let [kind, _code]: [u8; 2] = read(ctx, ICMP_OFFSET)?;
    let quoted: Ipv4Hdr = read(ctx, QUOTED_IP_OFFSET)?;
    let [sport, dport]: [u16; 2] = read(ctx, QUOTED_L4_OFFSET)?;
    if ip.proto != PROTO_ICMP
        || ip.vihl != 0x45
        || !(kind == ICMP_DEST_UNREACH || kind == ICMP_TIME_EXCEEDED)
        || quoted.vihl != 0x45
        || !(quoted.proto == PROTO_TCP || quoted.proto == PROTO_UDP)
        || !(L4_SNAT_PORT_MIN..=L4_SNAT_PORT_MAX).contains(&u16::from_be(sport))
        // The quote lies inside the IP packet (ICMP quotes at least 8 bytes of transport).
        || usize::from(u16::from_be_bytes(ip.tot_len)) < QUOTED_L4_OFFSET + 8 - EthHdr::LEN
    {
        return None;
    }
    // The quoted packet went from the node's SNAT port to an endpoint: its reply key.
    let key = L4ReplyKey {
        backend: [u32::from_ne_bytes(quoted.dst_addr), 0, 0, 0],
        backend_port: dport,
        snat_port: sport,
        proto: quoted.proto,
        family: FAMILY_IPV4,
        _pad: 0,
    };
    let reply = SLUICE_L4_REPLIES.get_ptr_mut(&key)?;
    // SAFETY: copied out at once; user space and other CPUs replace entries whole.
    let client: FlowKey = unsafe { (*reply).client };
    let to = Rewrite { src: client.dst[0], sport: client.dport, dst: client.src[0], dport: client.sport };
    // next_hop reads only the protocol from the flow: the quoted one, as for the flow's replies.
    let flow = Flow {
        key: FlowKey { proto: quoted.proto, ..FlowKey::default() },
        l4: ICMP_OFFSET,
        syn: false,
        closing: false,
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // SAFETY: `reply` points at a live map value (the lookup above).
    let sent = next_hop(ctx, &flow, &to, unsafe { &raw mut (*reply).hop }, now).and_then(|()| {
        rewrite_icmp_error(ctx, &client, &to, quoted.proto, unsafe { &raw const (*reply).hop })
    });
    Some(match sent {
        Ok(action) => {
            stats::count(Stat::L4IcmpReplied);
            action
        }
        Err(reason) => {
            stats::count(reason);
            xdp_action::XDP_PASS
        }
    })
}

/// Rewrites an ICMP error for the client: the outer packet goes from the service address to
/// the client (`to`), the quoted packet becomes the client's own (client to service), and the
/// IP checksums of both, the quoted transport checksum when the quote holds it, and the ICMP
/// checksum (which covers the quote) are updated word by word.
#[inline(always)]
fn rewrite_icmp_error(
    ctx: &XdpContext,
    client: &FlowKey,
    to: &Rewrite,
    proto: u8,
    hop: *const L4NextHop,
) -> Result<u32, Stat> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN).ok_or(Stat::PassTruncated)?;
    let icmp_check = ptr_at::<u16>(ctx, ICMP_OFFSET + 2).ok_or(Stat::PassTruncated)?;
    let quoted = ptr_at::<Ipv4Hdr>(ctx, QUOTED_IP_OFFSET).ok_or(Stat::PassTruncated)?;
    let ports = ptr_at::<[u16; 2]>(ctx, QUOTED_L4_OFFSET).ok_or(Stat::PassTruncated)?;
    let l4_check_offset = QUOTED_L4_OFFSET + if proto == PROTO_UDP { 6 } else { 16 };
    // SAFETY: every packet pointer was bounds-checked by ptr_at just above; `hop` points at a
    // live map value (see next_hop).
    unsafe {
        let tot_len = usize::from(u16::from_be_bytes((*ip).tot_len));
        let mut outer = Csum::new(u16::from_ne_bytes((*ip).check));
        outer.replace32(u32::from_ne_bytes((*ip).src_addr), to.src);
        outer.replace32(u32::from_ne_bytes((*ip).dst_addr), to.dst);
        (*ip).check = outer.finish().to_ne_bytes();
        (*ip).src_addr = to.src.to_ne_bytes();
        (*ip).dst_addr = to.dst.to_ne_bytes();

        // The quote as the client sent it: from the client's address and port to the service's.
        let (old_src, new_src) = (u32::from_ne_bytes((*quoted).src_addr), client.src[0]);
        let (old_dst, new_dst) = (u32::from_ne_bytes((*quoted).dst_addr), client.dst[0]);
        let [old_sport, old_dport] = *ports;
        let mut icmp = Csum::new(*icmp_check);
        let old_quoted_check = u16::from_ne_bytes((*quoted).check);
        let mut quoted_ip = Csum::new(old_quoted_check);
        quoted_ip.replace32(old_src, new_src);
        quoted_ip.replace32(old_dst, new_dst);
        let new_quoted_check = quoted_ip.finish();
        (*quoted).check = new_quoted_check.to_ne_bytes();
        (*quoted).src_addr = new_src.to_ne_bytes();
        (*quoted).dst_addr = new_dst.to_ne_bytes();
        *ports = [client.sport, client.dport];
        icmp.replace32(old_src, new_src);
        icmp.replace32(old_dst, new_dst);
        icmp.replace16(old_quoted_check, new_quoted_check);
        icmp.replace16(old_sport, client.sport);
        icmp.replace16(old_dport, client.dport);
        // The quoted transport checksum, when the quote reaches it (UDP's always does; TCP's
        // sits at byte 16, past the 8 bytes a router must quote). A zero UDP one means none.
        if l4_check_offset + 2 <= EthHdr::LEN + tot_len
            && let Some(check) = ptr_at::<u16>(ctx, l4_check_offset)
            && !(proto == PROTO_UDP && *check == 0)
        {
            let old_check = *check;
            let mut sum = Csum::new(old_check);
            sum.replace32(old_src, new_src);
            sum.replace32(old_dst, new_dst);
            sum.replace16(old_sport, client.sport);
            sum.replace16(old_dport, client.dport);
            let mut new_check = sum.finish();
            if proto == PROTO_UDP && new_check == 0 {
                new_check = 0xffff;
            }
            *check = new_check;
            icmp.replace16(old_check, new_check);
        }
        *icmp_check = icmp.finish();
    }
    Ok(send(ctx, hop))
}

/// A packet read out of the frame, bounds-checked.
#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    // SAFETY: ptr_at checked that the whole T lies inside the frame; headers sit at any offset.
    ptr_at::<T>(ctx, offset).map(|p| unsafe { p.read_unaligned() })
}

/// The next of a new flow's node port tries, from the last (the flow's hash at first): a
/// murmur3 finaliser, so each flow tries its own pseudo-random ports. Tries in one sequence
/// shared by every flow at different starts (`start + k * stride`) are linear probing: taken
/// ports gather in runs that a new flow's tries fall into: with an endpoint's ports half taken
/// one new flow in 300 found none free among 16, at 60% one in 42 (a simulation), where
/// independent tries make it one in 65,000 and one in 3,500.
#[inline(always)]
fn next_port_mix(x: u32) -> u32 {
    // The added constant keeps 0 from mapping to itself.
    let mut x = x.wrapping_add(0x9e37_79b9);
    x ^= x >> 16;
    x = x.wrapping_mul(0x85eb_ca6b);
    x ^= x >> 13;
    x = x.wrapping_mul(0xc2b2_ae35);
    x ^ (x >> 16)
}

/// Whether a client packet follows its flow's entry: the entry has not idled out, and the
/// packet is not a SYN on a flow that has closed. Such a SYN is a new connection reusing the
/// client's address and port; it is placed again through the current table (as Linux's
/// conntrack opens a new entry), so it never follows a closed flow to an endpoint that has
/// left since. A SYN sent again on a flow still open (no answer yet) follows it.
#[inline(always)]
fn follows(entry: &L4Flow, flow: &Flow, now: u64) -> bool {
    !expired(entry, now) && !(flow.syn && entry.idle_ns == L4_CLOSING_NS)
}

#[inline(always)]
fn expired(entry: &L4Flow, now: u64) -> bool {
    now.wrapping_sub(entry.last_seen_ns) > entry.idle_ns
}

/// What became of a node port held for an endpoint (see `take_port`).
enum Port {
    /// Now this new flow's.
    Taken,
    /// Its flow has closed and idled `L4_CLOSED_REUSE_NS`: takeable when no port is free.
    Closed,
    /// Its flow lives.
    Held,
}

/// Gives `key`'s node port to the new flow whose reply entry is `reply` when the flow holding
/// it is over (expired, gone, or moved to another port) or, with `closed_too`, has closed (a
/// FIN or RST passed) and idled `L4_CLOSED_REUSE_NS`; the holder's flow entry is removed.
#[inline(always)]
fn take_port(key: &L4ReplyKey, reply: &L4Reply, now: u64, closed_too: bool) -> Port {
    let Some(holder) = SLUICE_L4_REPLIES.get_ptr(key) else { return Port::Held };
    // SAFETY: a live map value; its client key is read in place, by the lookup below and the
    // removal (another CPU replacing it whole meanwhile at worst makes this reclaim a port
    // that is about to be released anyway).
    let holder = unsafe { &(*holder).client };
    let (over, closed) = match SLUICE_L4_FLOWS.get_ptr(holder) {
        // SAFETY: read in place.
        Some(other) => unsafe {
            let other = &*other;
            let idle = now.wrapping_sub(other.last_seen_ns);
            (
                idle > other.idle_ns || other.snat_port != key.snat_port,
                other.idle_ns == L4_CLOSING_NS && idle > L4_CLOSED_REUSE_NS,
            )
        },
        None => (true, false),
    };
    if !(over || (closed_too && closed)) {
        return if closed { Port::Closed } else { Port::Held };
    }
    let _ = SLUICE_L4_FLOWS.remove(holder);
    if SLUICE_L4_REPLIES.insert(key, reply, 0).is_ok() { Port::Taken } else { Port::Held }
}

#[inline(always)]
fn reply_key(entry: &L4Flow, proto: u8) -> L4ReplyKey {
    L4ReplyKey {
        backend: entry.backend,
        backend_port: entry.backend_port,
        snat_port: entry.snat_port,
        proto,
        family: FAMILY_IPV4,
        _pad: 0,
    }
}

/// Makes `hop` an answer of the FIB for the translated packet (from `to.src` to `to.dst`), asking
/// it only when the kept answer is missing, older than `L4_NEXT_HOP_TTL_NS` by `now` (the
/// clock `hop` was stamped with), or for a packet longer than the MTU it reported. Without an
/// answer, `hop` keeps what it had and the packet passes.
#[inline(always)]
fn next_hop(ctx: &XdpContext, flow: &Flow, to: &Rewrite, hop: *mut L4NextHop, now: u64) -> Result<(), Stat> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN).ok_or(Stat::PassTruncated)?;
    // SAFETY: `ip` was bounds-checked by ptr_at; `hop` points at a map value or at the caller's
    // stack, and other CPUs writing the same flow's hop write answers of the same FIB (a
    // torn mix of two is one of them or the other, field by field, each usable).
    unsafe {
        let tot_len = u16::from_be_bytes((*ip).tot_len);
        let stamp = (now >> L4_NEXT_HOP_CLOCK_SHIFT) as u32;
        let checked = (*hop).checked;
        if checked != 0 && stamp.wrapping_sub(checked) <= TTL_STAMPS && tot_len <= (*hop).mtu {
            return Ok(());
        }
        // The lookup's parameters live in this CPU's scratch space (see new_flow), off the stack.
        let scratch = SLUICE_L4_SCRATCH.get_ptr_mut(0).ok_or(Stat::PassL4NoRoute)?;
        let fib = &raw mut (*scratch).fib;
        // A zeroed bpf_fib_lookup (plain integers and unions of them) is valid.
        core::ptr::write_bytes(fib, 0, 1);
        (*fib).family = AF_INET;
        (*fib).l4_protocol = flow.key.proto;
        (*fib).sport = to.sport;
        (*fib).dport = to.dport;
        (*fib).__bindgen_anon_1.tot_len = tot_len;
        (*fib).__bindgen_anon_2.tos = (*ip).tos;
        (*fib).__bindgen_anon_3.ipv4_src = to.src;
        (*fib).__bindgen_anon_4.ipv4_dst = to.dst;
        (*fib).ifindex = (*ctx.ctx).ingress_ifindex;
        // The kernel writes only into `fib`.
        let found = bpf_fib_lookup(ctx.ctx.cast(), fib, core::mem::size_of::<FibParams>() as i32, 0);
        if found != 0 {
            return Err(Stat::PassL4NoRoute);
        }
        (*hop).ifindex = (*fib).ifindex;
        // On success the lookup reports the route's MTU in place of the length it was given.
        (*hop).mtu = (*fib).__bindgen_anon_1.mtu_result;
        let [d0, d1, d2, d3, d4, d5] = (*fib).dmac;
        let [s0, s1, s2, s3, s4, s5] = (*fib).smac;
        (*hop).macs = [d0, d1, d2, d3, d4, d5, s0, s1, s2, s3, s4, s5];
        (*hop).checked = stamp;
    }
    Ok(())
}

/// Rewrites the packet for `to` (addresses, ports, both checksums, MAC addresses from `hop`)
/// and sends it out of `hop`'s interface.
#[inline(always)]
fn rewrite(ctx: &XdpContext, flow: &Flow, to: &Rewrite, hop: *const L4NextHop) -> Result<u32, Stat> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN).ok_or(Stat::PassTruncated)?;
    let ports = ptr_at::<[u16; 2]>(ctx, L4_OFFSET).ok_or(Stat::PassTruncated)?;
    let check = ptr_at::<u16>(ctx, flow.csum_offset()).ok_or(Stat::PassTruncated)?;
    // SAFETY: every packet pointer was bounds-checked by ptr_at just above.
    unsafe {
        let old_src = u32::from_ne_bytes((*ip).src_addr);
        let old_dst = u32::from_ne_bytes((*ip).dst_addr);
        let [old_sport, old_dport] = *ports;
        let ip_check = u16::from_ne_bytes((*ip).check);
        let mut sum = Csum::new(ip_check);
        sum.replace32(old_src, to.src);
        sum.replace32(old_dst, to.dst);
        (*ip).check = sum.finish().to_ne_bytes();
        (*ip).src_addr = to.src.to_ne_bytes();
        (*ip).dst_addr = to.dst.to_ne_bytes();

        let old_check = *check;
        // A zero UDP checksum means "none" over IPv4: it stays zero.
        if !(flow.key.proto == PROTO_UDP && old_check == 0) {
            let mut sum = Csum::new(old_check);
            // The pseudo-header's addresses, then the ports.
            sum.replace32(old_src, to.src);
            sum.replace32(old_dst, to.dst);
            sum.replace16(old_sport, to.sport);
            sum.replace16(old_dport, to.dport);
            let mut new_check = sum.finish();
            if flow.key.proto == PROTO_UDP && new_check == 0 {
                new_check = 0xffff;
            }
            *check = new_check;
        }
        *ports = [to.sport, to.dport];
    }
    Ok(send(ctx, hop))
}

/// Puts `hop`'s MAC addresses on the frame and sends it out of `hop`'s interface.
#[inline(always)]
fn send(ctx: &XdpContext, hop: *const L4NextHop) -> u32 {
    let Some(eth) = ptr_at::<[u8; 12]>(ctx, 0) else { return xdp_action::XDP_PASS };
    // SAFETY: `eth` was bounds-checked by ptr_at; `hop` points at a live map value or the
    // caller's stack (see next_hop); the context is the program's own.
    unsafe {
        *eth = (*hop).macs;
        let ifindex = (*hop).ifindex;
        if ifindex == (*ctx.ctx).ingress_ifindex {
            xdp_action::XDP_TX
        } else {
            bpf_redirect(ifindex, 0) as u32
        }
    }
}

/// An incremental Internet checksum update (RFC 1624, eqn. 3) over several changed words:
/// `HC' = ~(~HC + Σ~m + Σm')`. Ones'-complement sums are byte-order independent, so wire
/// words go in and out as they are.
struct Csum(u32);

impl Csum {
    #[inline(always)]
    fn new(check: u16) -> Csum {
        Csum(u32::from(!check))
    }

    #[inline(always)]
    fn replace16(&mut self, old: u16, new: u16) {
        self.0 += u32::from(!old) + u32::from(new);
    }

    #[inline(always)]
    fn replace32(&mut self, old: u32, new: u32) {
        self.replace16(old as u16, new as u16);
        self.replace16((old >> 16) as u16, (new >> 16) as u16);
    }

    #[inline(always)]
    fn finish(self) -> u16 {
        let mut sum = self.0;
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        !(sum as u16)
    }
}
