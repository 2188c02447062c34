//! Sluice's kernel programs. Entry points stay thin: each calls a `try_*` function that reads
//! top to bottom, so every path through the program is visible in one place.
#![no_std]
#![no_main]
// Compare-and-swap on the guard's rate-limit buckets: the BPF target has no `AtomicU64::
// compare_exchange` (atomic-cas is off in its spec), while the kernel has BPF_CMPXCHG (5.12).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod guard;
mod l4;
mod lookup;
mod maps;
mod nat;
mod parse;
mod stats;

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use lb_common::{FlowKey, MODE_L4, MODE_STEER, PROTO_UDP, ReverseKey, Stat};

use crate::maps::{SLUICE_CONNTRACK, SLUICE_REVERSE};

/// XDP ingress: steers new connections to a service across the workers' own listener ports and
/// keeps established ones where they are. Everything else passes untouched, counted by reason.
#[xdp]
pub fn sluice_xdp(ctx: XdpContext) -> u32 {
    try_sluice_xdp(&ctx)
}

#[inline(always)]
fn try_sluice_xdp(ctx: &XdpContext) -> u32 {
    stats::count(Stat::Packets);
    stats::add(Stat::Bytes, (ctx.data_end() - ctx.data()) as u64);
    let flow = match parse::parse(ctx) {
        Ok(flow) => flow,
        Err(reason) => {
            // ICMP is no TCP or UDP: an error about an L4 flow goes back to its client. Only
            // packets already off the fast path pay for the check.
            if reason == Stat::PassOtherProtocol
                && let Some(action) = l4::icmp_error(ctx)
            {
                return action;
            }
            stats::count(reason);
            return xdp_action::XDP_PASS;
        }
    };
    // An endpoint's reply to an L4 flow, before the service lookup: only a packet to a node
    // port in the SNAT range (XDP's own: validation and the ConfigMap translation keep L4
    // services in XDP off it) is looked up, and it matches only if its source is an
    // endpoint's address and port holding that node port for a live flow. A reply so skips
    // the two lookups of a packet to no service; everything else pays one comparison, as
    // before.
    if let Some(action) = l4::reply(ctx, &flow) {
        return action;
    }
    let service = match lookup::service(&flow) {
        Some(service) if service.mode == MODE_STEER => service,
        Some(service) if service.mode == MODE_L4 => {
            if let Err(reason) = guard::admit(&flow) {
                stats::count(reason);
                return xdp_action::XDP_DROP;
            }
            return l4::forward(ctx, &flow, &service);
        }
        _ => {
            if let Err(reason) = guard::admit_direct(&flow) {
                stats::count(reason);
                return xdp_action::XDP_DROP;
            }
            stats::count(Stat::PassNotService);
            return xdp_action::XDP_PASS;
        }
    };
    if let Err(reason) = guard::admit(&flow) {
        stats::count(reason);
        return xdp_action::XDP_DROP;
    }
    let port = match lookup::worker_port(&flow, &service) {
        Ok(port) => port,
        Err(reason) => {
            stats::count(reason);
            return xdp_action::XDP_DROP;
        }
    };
    if !nat::rewrite_dport(ctx, &flow, port) {
        stats::count(Stat::PassTruncated);
        return xdp_action::XDP_PASS;
    }
    stats::count(Stat::Steered);
    xdp_action::XDP_PASS
}

/// Does nothing but pass: the floor that `cargo xtask bench xdp` subtracts.
#[xdp]
pub fn sluice_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// TC egress: on replies from a worker's own port, restores the service port the client
/// connected to. Only flows that XDP steered (present in conntrack) are touched.
#[classifier]
pub fn sluice_tc_egress(ctx: TcContext) -> i32 {
    try_sluice_tc_egress(&ctx);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn try_sluice_tc_egress(ctx: &TcContext) {
    let Ok(reply) = parse::parse(ctx) else { return };
    let reverse_key = ReverseKey { worker_port: reply.key.sport, proto: reply.key.proto, _pad: 0 };
    let Some(reverse) = SLUICE_REVERSE.get_ptr(&reverse_key) else { return };
    // SAFETY: copied out at once; user space replaces entries whole.
    let service_port = unsafe { (*reverse).service_port };
    // The client's view of this connection, as XDP recorded it.
    let client_key = FlowKey {
        src: reply.key.dst,
        dst: reply.key.src,
        sport: reply.key.dport,
        dport: service_port,
        proto: reply.key.proto,
        family: reply.key.family,
        _pad: 0,
    };
    let Some(entry) = SLUICE_CONNTRACK.get_ptr(&client_key) else { return };
    // SAFETY: copied out at once (see lookup::worker_port).
    if unsafe { (*entry).worker_port } != reply.key.sport {
        return;
    }
    // BPF_F_MARK_MANGLED_0 keeps a zero UDP checksum meaning "none"; size 2 = a 16-bit field.
    let flags = if reply.key.proto == PROTO_UDP { 0x20 | 2 } else { 2 };
    if ctx
        .l4_csum_replace(reply.csum_offset(), u64::from(reply.key.sport), u64::from(service_port), flags)
        .is_err()
    {
        return;
    }
    if ctx.store(reply.l4, &service_port, 0).is_ok() {
        stats::count(Stat::EgressRestored);
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program that could reach a panic, so this is never called.
    unsafe { core::hint::unreachable_unchecked() }
}
