//! Types shared by the kernel programs (`lb-ebpf`) and user space (`lb-userspace`).
//!
//! Everything here is `#[repr(C)]`, `Copy` and free of implicit padding, so the bytes user space
//! writes into a map are exactly the bytes the kernel reads. Nothing else lives here.
#![no_std]

/// Name of the XDP ingress program in the eBPF object.
pub const XDP_PROGRAM: &str = "sluice_xdp";

/// Name of the per-CPU counters map in the eBPF object.
pub const STATS_MAP: &str = "SLUICE_STATS";

/// One slot of the per-CPU counters array. The discriminant is the array index.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Every packet the XDP program saw.
    Packets = 0,
    /// Bytes of every packet the XDP program saw (whole frame, Ethernet header included).
    Bytes = 1,
}

impl Stat {
    /// Every counter, in index order; user space iterates this to read the map.
    pub const ALL: [Stat; 2] = [Stat::Packets, Stat::Bytes];

    /// The counter's name as exported in metrics and printed by tools.
    pub const fn name(self) -> &'static str {
        match self {
            Stat::Packets => "packets",
            Stat::Bytes => "bytes",
        }
    }

    /// Index into the counters array.
    pub const fn index(self) -> u32 {
        self as u32
    }
}

/// Number of slots in the per-CPU counters array.
pub const STATS_LEN: u32 = Stat::ALL.len() as u32;
