//! Sluice: an eBPF-assisted hybrid L4/L7 load balancer. The `sluice` binary is a thin entry
//! point over this library; tests drive the same modules.

pub mod admin;
pub mod cli;
pub mod config;
pub mod dataplane;
pub mod metrics;
pub mod node;
pub mod provider;
pub mod proxy;
pub mod tls;

/// A reading of the kernel clock `clock` (`CLOCK_MONOTONIC`, `CLOCK_MONOTONIC_COARSE`, ...),
/// which std does not offer: the BPF programs read the same monotonic clock, and the request
/// path wants the cheap coarse one.
pub(crate) fn clock_now(clock: libc::clockid_t) -> std::time::Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own; callers pass clocks every kernel
    // Sluice supports has.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A map for the request path keyed by configuration names and endpoint addresses, never by
/// client input: a fast unkeyed hash is enough there (SipHash was a visible share of a request).
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;
