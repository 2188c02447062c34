//! Port rewriting with incremental checksum updates (RFC 1624, eqn. 3).

use aya_ebpf::programs::XdpContext;
use lb_common::PROTO_UDP;

use crate::parse::{Flow, ptr_at};

/// `HC' = ~(~HC + ~m + m')` for one 16-bit word. Ones'-complement arithmetic is the same in
/// either byte order, so wire-order values go in and out untouched.
#[inline(always)]
pub fn csum_replace2(check: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!check) + u32::from(!old) + u32::from(new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Rewrites the destination port of `flow` to `port` (wire bytes) and fixes the checksum.
/// Returns false when the frame no longer covers the fields (never for a parsed flow).
#[inline(always)]
pub fn rewrite_dport(ctx: &XdpContext, flow: &Flow, port: u16) -> bool {
    let Some(dport) = ptr_at::<[u8; 2]>(ctx, flow.l4 + 2) else { return false };
    let Some(check) = ptr_at::<[u8; 2]>(ctx, flow.csum_offset()) else { return false };
    // SAFETY: both pointers were bounds-checked by ptr_at against data_end just above.
    unsafe {
        let old_port = u16::from_ne_bytes(*dport);
        let old_check = u16::from_ne_bytes(*check);
        *dport = port.to_ne_bytes();
        // A zero UDP checksum over IPv4 means "none": leave it so.
        if !(flow.key.proto == PROTO_UDP && old_check == 0) {
            let mut new_check = csum_replace2(old_check, old_port, port);
            if flow.key.proto == PROTO_UDP && new_check == 0 {
                new_check = 0xffff;
            }
            *check = new_check.to_ne_bytes();
        }
    }
    true
}
