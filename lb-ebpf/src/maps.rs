//! Every map the kernel programs use, one line each on what it holds.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use lb_common::STATS_LEN;

/// Per-CPU counters indexed by `lb_common::Stat`; user space sums the CPUs.
#[map]
pub static SLUICE_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS_LEN, 0);
