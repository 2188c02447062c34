//! Sluice's kernel programs. Entry points stay thin: each one calls a `try_*` function and turns
//! its error into a verdict, so every path through the program is visible in one place.
#![no_std]
#![no_main]

mod maps;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::Stat;

/// XDP ingress: counts every frame, then hands it to the stack.
#[xdp]
pub fn sluice_xdp(ctx: XdpContext) -> u32 {
    try_sluice_xdp(&ctx)
}

#[inline(always)]
fn try_sluice_xdp(ctx: &XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    stats::add(Stat::Packets, 1);
    stats::add(Stat::Bytes, len);
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program that could reach a panic, so this is never called.
    unsafe { core::hint::unreachable_unchecked() }
}
