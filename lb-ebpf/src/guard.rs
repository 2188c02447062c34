//! The guard in front of every service port: deny and allow lists (LPM tries, so matching is
//! one lookup each, never a loop over entries) and a per-source rate limit for new TCP
//! connections and for UDP datagrams. Only connection openings (SYN without ACK) and UDP
//! datagrams are judged: established TCP flows are never cut by a list change.

use core::intrinsics::{AtomicOrdering, atomic_cxchg};

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns, maps::lpm_trie::Key};
use lb_common::{
    GUARD_ALLOW, GUARD_DENY, GUARD_LOOKUP_BITS, GuardBucket, GuardCidr, GuardConfig, GuardSource, PROTO_UDP,
    RateLimit, ReverseKey, Stat,
};

use crate::{
    maps::{
        SLUICE_GUARD_ALLOW, SLUICE_GUARD_BUCKETS, SLUICE_GUARD_CONFIG, SLUICE_GUARD_DENY, SLUICE_REVERSE,
    },
    parse::Flow,
};

/// Compare-and-swap attempts on a contended bucket before the packet is refused: each failure
/// means another CPU admitted a packet of the same source in between.
const CAS_ATTEMPTS: u32 = 4;

/// Whether a service packet may go on, or the drop reason. Deny wins over allow.
#[inline(always)]
pub fn admit(flow: &Flow) -> Result<(), Stat> {
    if !judged(flow) {
        return Ok(());
    }
    let Some(config) = SLUICE_GUARD_CONFIG.get(0) else { return Ok(()) };
    check(flow, config)
}

/// The same judgement for a packet to no service, when it is addressed to a worker's own
/// listener port (a client that found the port instead of being steered there): the workers'
/// ports are no way around the guard. Other traffic pays one branch, plus one array lookup for
/// SYNs and datagrams; the worker-port lookup runs only while the guard has work to do.
#[inline(always)]
pub fn admit_direct(flow: &Flow) -> Result<(), Stat> {
    if !judged(flow) {
        return Ok(());
    }
    let Some(config) = SLUICE_GUARD_CONFIG.get(0) else { return Ok(()) };
    if config.flags == 0 && config.syn.interval_ns == 0 && config.udp.interval_ns == 0 {
        return Ok(());
    }
    let worker = ReverseKey { worker_port: flow.key.dport, proto: flow.key.proto, _pad: 0 };
    if SLUICE_REVERSE.get_ptr(&worker).is_none() {
        return Ok(());
    }
    check(flow, config)
}

/// Connection openings and UDP datagrams; never segments of established TCP connections.
#[inline(always)]
fn judged(flow: &Flow) -> bool {
    flow.syn || flow.key.proto == PROTO_UDP
}

/// The lists (deny first), then the source's rate limit.
#[inline(always)]
fn check(flow: &Flow, config: &GuardConfig) -> Result<(), Stat> {
    if config.flags != 0 {
        let source =
            Key::new(GUARD_LOOKUP_BITS, GuardCidr { family: u32::from(flow.key.family), addr: flow.key.src });
        if config.flags & GUARD_DENY != 0 && SLUICE_GUARD_DENY.get(&source).is_some() {
            return Err(Stat::DropDeny);
        }
        if config.flags & GUARD_ALLOW != 0 && SLUICE_GUARD_ALLOW.get(&source).is_none() {
            return Err(Stat::DropNotAllowed);
        }
    }
    let (limit, reason) = if flow.key.proto == PROTO_UDP {
        (&config.udp, Stat::DropUdpRate)
    } else {
        (&config.syn, Stat::DropSynRate)
    };
    if limit.interval_ns == 0 {
        return Ok(());
    }
    // An IPv6 source is its /64: one host holds a whole /64 (SLAAC privacy addresses rotate
    // within it), so a bucket per /128 would let it multiply its budget at will. IPv4 keys
    // leave words 1 to 3 zero already.
    let addr = [flow.key.src[0], flow.key.src[1], 0, 0];
    let source = GuardSource { addr, family: flow.key.family, proto: flow.key.proto, _pad: 0 };
    if within_rate(&source, limit) { Ok(()) } else { Err(reason) }
}

/// The token bucket as a GCRA on one word, `paid_until_ns`: a packet at `now` costs one
/// interval on top of `max(paid_until, now)`, and is admitted when that new debt reaches at
/// most `limit_ns` (the burst) past `now`. A refused packet costs nothing. The word is moved
/// with compare-and-swap, so CPUs admitting packets of one source at once never overspend.
#[inline(always)]
fn within_rate(source: &GuardSource, limit: &RateLimit) -> bool {
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(bucket) = SLUICE_GUARD_BUCKETS.get_ptr_mut(source) else {
        // A new source starts with a full bucket, minus this packet. Should another CPU
        // insert the same source first, ours is refused (BPF_NOEXIST) and this one packet
        // goes uncharged: the overspend is at most one packet per CPU, once per source.
        let fresh = GuardBucket { paid_until_ns: now + limit.interval_ns };
        let _ = SLUICE_GUARD_BUCKETS.insert(source, &fresh, u64::from(BPF_NOEXIST));
        return true;
    };
    // SAFETY: `bucket` points at a live map value (the lookup above); an LRU eviction
    // concurrent with us leaves the memory valid until the program ends (RCU).
    let word = unsafe { &raw mut (*bucket).paid_until_ns };
    for _ in 0..CAS_ATTEMPTS {
        // A plain aligned 64-bit load (BPF has atomic loads only from cpu v4 on): it reads
        // some CPU's whole write, and the swap below fails if the word moved since.
        // SAFETY: see above; an aligned u64 inside the map value.
        let paid_until = unsafe { core::ptr::read_volatile(word) };
        let owed = if paid_until > now { paid_until } else { now } + limit.interval_ns;
        if owed - now > limit.limit_ns {
            return false;
        }
        // SAFETY: see above.
        let (_, swapped) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(
                word, paid_until, owed,
            )
        };
        if swapped {
            return true;
        }
    }
    false
}
