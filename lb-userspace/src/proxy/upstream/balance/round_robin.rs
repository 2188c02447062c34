//! Smooth weighted round robin: nginx's algorithm run once per snapshot into a schedule, which
//! workers walk with one shared atomic cursor.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::numeric::gcd;

/// Longest round-robin schedule. Weights are first reduced by their gcd; if they still sum to
/// more, they are scaled down proportionally (each endpoint keeping at least one slot), so a
/// configuration with huge weights cannot make the build slow or the schedule large.
pub(super) const MAX_SCHEDULE: u64 = 10_000;

/// A precomputed smooth weighted round-robin cycle and the shared position in it.
#[derive(Debug)]
pub(super) struct Schedule {
    /// Endpoint indices; each appears in proportion to its weight.
    slots: Box<[u32]>,
    /// Slots handed out so far (mod `slots.len()` is the next one). Alone on its cache line:
    /// every pick writes it, and the read-only fields next to it would otherwise be
    /// invalidated in every other worker's cache each time. Boxed: inline, the padding made
    /// every backend group's balancer 512 bytes (a node holds one group per Service port).
    cursor: Box<CachePadded<AtomicUsize>>,
}

/// Aligns its content to its own cache line (128 bytes covers the adjacent-line prefetch of
/// x86 and the line size of recent ARM cores).
#[derive(Debug)]
#[repr(align(128))]
struct CachePadded<T>(T);

impl Schedule {
    pub(super) fn new(weights: &[u32], start: usize) -> Schedule {
        let slots = smooth_schedule(weights);
        let start = if slots.is_empty() { 0 } else { start % slots.len() };
        Schedule { slots, cursor: Box::new(CachePadded(AtomicUsize::new(start))) }
    }

    pub(super) fn pick(
        &self,
        eligible: impl Fn(usize) -> bool,
        any_eligible: impl Fn() -> bool,
    ) -> Option<usize> {
        let len = self.slots.len();
        if len == 0 {
            return None;
        }
        let next = || self.slots[self.cursor.0.fetch_add(1, Ordering::Relaxed) % len] as usize;
        let first = next();
        if eligible(first) {
            return Some(first);
        }
        // Only after a miss: the common case costs one atomic add and one availability check.
        if !any_eligible() {
            return None;
        }
        // Skipped slots are consumed from the shared cursor, not probed locally: over a cycle
        // every slot is then handed out once, so the endpoints still available keep exactly
        // their weighted proportions. Probing forward locally would instead give each
        // unavailable endpoint's slots to whichever endpoint follows it in the schedule.
        // `len` consumed slots cover a whole cycle when the picker is alone, so this finds
        // any eligible endpoint.
        for _ in 1..len {
            let index = next();
            if eligible(index) {
                return Some(index);
            }
        }
        // Other workers took the eligible slots in the meantime (or availability changed
        // under us): one local pass over the cycle, so a pick never fails while an endpoint
        // is available.
        let start = self.cursor.0.load(Ordering::Relaxed);
        (0..len)
            .map(|step| self.slots[start.wrapping_add(step) % len] as usize)
            .find(|&index| eligible(index))
    }
}

/// nginx's smooth weighted round robin, run once over a whole cycle: every step each endpoint
/// earns its weight, the richest (first on ties) is picked and pays the total. It spreads each
/// endpoint's turns evenly over the cycle (`5, 1, 1` gives `a a b a c a a`, not five `a` in a
/// row) and a cycle holds each endpoint exactly `weight` times.
pub(super) fn smooth_schedule(weights: &[u32]) -> Box<[u32]> {
    let divisor = weights.iter().fold(0, |divisor, &weight| gcd(divisor, u64::from(weight)));
    if divisor == 0 {
        return Box::new([]); // no endpoint with a weight
    }
    let mut reduced: Vec<u64> = weights.iter().map(|&weight| u64::from(weight) / divisor).collect();
    let total: u64 = reduced.iter().sum();
    if total > MAX_SCHEDULE {
        // Proportions are approximate from here; an endpoint whose share rounds to nothing
        // keeps one slot, since a configured endpoint with a weight must get traffic.
        for weight in reduced.iter_mut().filter(|weight| **weight > 0) {
            *weight = (*weight * MAX_SCHEDULE / total).max(1);
        }
    }
    let total: u64 = reduced.iter().sum();
    let index = |i: usize| u32::try_from(i).expect("fewer than 2^32 endpoints");
    let live: Vec<usize> = (0..reduced.len()).filter(|&i| reduced[i] > 0).collect();
    if live.iter().all(|&i| reduced[i] == 1) {
        // Equal weights (the common case): the algorithm would yield the endpoints in order,
        // so skip its O(endpoints x total) run.
        return live.into_iter().map(index).collect();
    }
    let total_signed = i64::try_from(total).expect("schedule length is capped");
    let mut current = vec![0i64; reduced.len()];
    let mut slots = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = live[0];
        for &i in &live {
            // Lossless: each weight is at most the capped total.
            current[i] += reduced[i] as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total_signed;
        slots.push(index(best));
    }
    slots.into_boxed_slice()
}
