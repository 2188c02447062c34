//! Counter updates. Per-CPU slots need no atomics: each CPU only touches its own copy.

use lb_common::Stat;

use crate::maps::SLUICE_STATS;

#[inline(always)]
pub fn add(stat: Stat, amount: u64) {
    if let Some(slot) = SLUICE_STATS.get_ptr_mut(stat.index()) {
        // SAFETY: the pointer comes from a successful lookup of this CPU's slot, which no other
        // CPU writes.
        unsafe { *slot += amount };
    }
}

#[inline(always)]
pub fn count(stat: Stat) {
    add(stat, 1);
}
