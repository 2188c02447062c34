//! Every map the kernel programs use, one line each on what it holds. User space owns every
//! write except conntrack inserts and counters.

use crate::l4::L4Scratch;
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use lb_common::{
    CONNTRACK_ENTRIES, FlowKey, FlowValue, GUARD_CIDRS, GUARD_SOURCES, GuardBucket, GuardCidr, GuardConfig,
    GuardSource, L4_FLOW_ENTRIES, L4Backend, L4Flow, L4Reply, L4ReplyKey, L4Service, MAGLEV_TABLE_SIZE,
    MAX_L4_BACKENDS, MAX_L4_SERVICES, MAX_SERVICES, MAX_WORKERS, ReverseKey, ReverseValue, STATS_LEN,
    ServiceKey, ServiceValue, WorkerValue,
};

/// Per-CPU counters indexed by `lb_common::Stat`; user space sums the CPUs.
#[map]
pub static SLUICE_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS_LEN, 0);

/// Service address, port and protocol -> service id and delivery mode.
#[map]
pub static SLUICE_SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// `service * MAX_WORKERS + worker` -> that worker's listener port for the service.
#[map]
pub static SLUICE_WORKERS: Array<WorkerValue> = Array::with_max_entries(MAX_SERVICES * MAX_WORKERS, 0);

/// `service * MAGLEV_TABLE_SIZE + slot` -> worker index + 1; 0 = empty. Built in user space.
#[map]
pub static SLUICE_MAGLEV: Array<u32> = Array::with_max_entries(MAX_SERVICES * MAGLEV_TABLE_SIZE, 0);

/// Client-side 5-tuple -> the worker its flow was steered to. LRU, so it never fills up.
#[map]
pub static SLUICE_CONNTRACK: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(CONNTRACK_ENTRIES, 0);

/// Worker listener port -> service port, for TC egress to restore on replies.
#[map]
pub static SLUICE_REVERSE: HashMap<ReverseKey, ReverseValue> =
    HashMap::with_max_entries(MAX_SERVICES * MAX_WORKERS, 0);

/// Worker index -> CLOCK_MONOTONIC nanoseconds of its last heartbeat; written by the workers,
/// read by the user-space supervisor that takes stalled workers out of the Maglev tables.
#[map]
pub static SLUICE_HEARTBEATS: Array<u64> = Array::with_max_entries(MAX_WORKERS, 0);

/// The guard's settings (slot 0): which lists are active and the rate limits.
#[map]
pub static SLUICE_GUARD_CONFIG: Array<GuardConfig> = Array::with_max_entries(1, 0);

/// `xdp.guard.deny`: family + network -> 1. A match drops the packet.
#[map]
pub static SLUICE_GUARD_DENY: LpmTrie<GuardCidr, u32> = LpmTrie::with_max_entries(GUARD_CIDRS, 0);

/// `xdp.guard.allow`: family + network -> 1. When active, a source in none is dropped.
#[map]
pub static SLUICE_GUARD_ALLOW: LpmTrie<GuardCidr, u32> = LpmTrie::with_max_entries(GUARD_CIDRS, 0);

/// Source address and protocol -> its rate-limit bucket. One map shared by every CPU (not
/// per-CPU): a source's packets spread over CPUs by RSS would otherwise get a budget per CPU.
#[map]
pub static SLUICE_GUARD_BUCKETS: LruHashMap<GuardSource, GuardBucket> =
    LruHashMap::with_max_entries(GUARD_SOURCES, 0);

/// L4 service id -> its settings (source address towards endpoints, idle timeout).
#[map]
pub static SLUICE_L4_SERVICES: Array<L4Service> = Array::with_max_entries(MAX_L4_SERVICES, 0);

/// `service * MAX_L4_BACKENDS + index` -> that endpoint's address and port.
#[map]
pub static SLUICE_L4_BACKENDS: Array<L4Backend> =
    Array::with_max_entries(MAX_L4_SERVICES * MAX_L4_BACKENDS, 0);

/// `service * MAGLEV_TABLE_SIZE + slot` -> endpoint index + 1; 0 = empty. Built in user space.
#[map]
pub static SLUICE_L4_MAGLEV: Array<u32> = Array::with_max_entries(MAX_L4_SERVICES * MAGLEV_TABLE_SIZE, 0);

/// Client-side 5-tuple of an L4 flow -> its endpoint and node source port. LRU.
#[map]
pub static SLUICE_L4_FLOWS: LruHashMap<FlowKey, L4Flow> = LruHashMap::with_max_entries(L4_FLOW_ENTRIES, 0);

/// Per-CPU scratch space of the L4 path (slot 0): a new flow's entries are built there and the
/// FIB's parameters written there, off the 512-byte stack. Never read by user space.
#[map]
pub static SLUICE_L4_SCRATCH: PerCpuArray<L4Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Endpoint address, port and node source port -> the client flow a reply belongs to. LRU;
/// an entry also holds its node source port for that endpoint while its flow lives.
#[map]
pub static SLUICE_L4_REPLIES: LruHashMap<L4ReplyKey, L4Reply> =
    LruHashMap::with_max_entries(L4_FLOW_ENTRIES, 0);
