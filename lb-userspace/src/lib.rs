//! Sluice: an eBPF-assisted hybrid L4/L7 load balancer. The `sluice` binary is a thin entry
//! point over this library; tests drive the same modules.

pub mod admin;
pub mod allocator;
pub mod cli;
pub mod config;
pub mod dataplane;
#[doc(hidden)]
pub mod fuzzing;
pub mod handover;
pub mod maglev;
pub mod metrics;
pub mod node;
pub mod numeric;
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

/// Milliseconds on a process-wide monotonic clock (0 = its first reading).
///
/// It is the coarse clock (one kernel tick, 1–10 ms): everything timed with it (ejections,
/// idle and head timeouts, health) counts in tens of milliseconds or more, and the request
/// path reads it several times per request, where the precise clock's cost shows.
pub fn now_ms() -> u64 {
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let now = clock_now(libc::CLOCK_MONOTONIC_COARSE).as_millis() as u64;
    now.saturating_sub(*START.get_or_init(|| now))
}

/// A map for the request path keyed by configuration names and endpoint addresses, never by
/// client input: a fast unkeyed hash is enough there (SipHash was a visible share of a request).
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;
/// The set of [`FastMap`], for the same keys.
pub(crate) type FastSet<K> = std::collections::HashSet<K, foldhash::fast::FixedState>;
