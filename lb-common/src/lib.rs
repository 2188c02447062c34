//! Types shared by the kernel programs (`lb-ebpf`) and user space (`lb-userspace`).
//!
//! Everything here is `#[repr(C)]`, `Copy` and free of implicit padding (padding is an explicit
//! field), so the bytes user space writes into a map are exactly the bytes the kernel reads.
//! Addresses and ports hold **wire bytes**: an IPv4 address is its four octets read as a native
//! `u32` (`u32::from_ne_bytes(octets)`), a port is `port.to_be()`. The kernel then compares them
//! with packet fields without any byte swapping. Nothing else lives here.
#![no_std]

/// Name of the XDP ingress program in the eBPF object.
pub const XDP_PROGRAM: &str = "sluice_xdp";
/// An XDP program that only returns `XDP_PASS`: the floor for cost measurements.
pub const XDP_PASS_PROGRAM: &str = "sluice_xdp_pass";
/// Name of the TC egress program that restores the service port on replies.
pub const TC_EGRESS_PROGRAM: &str = "sluice_tc_egress";

/// Map names in the eBPF object.
pub const STATS_MAP: &str = "SLUICE_STATS";
pub const SERVICES_MAP: &str = "SLUICE_SERVICES";
pub const WORKERS_MAP: &str = "SLUICE_WORKERS";
pub const MAGLEV_MAP: &str = "SLUICE_MAGLEV";
pub const CONNTRACK_MAP: &str = "SLUICE_CONNTRACK";
pub const REVERSE_MAP: &str = "SLUICE_REVERSE";
pub const HEARTBEATS_MAP: &str = "SLUICE_HEARTBEATS";
pub const GUARD_CONFIG_MAP: &str = "SLUICE_GUARD_CONFIG";
pub const GUARD_DENY_MAP: &str = "SLUICE_GUARD_DENY";
pub const GUARD_ALLOW_MAP: &str = "SLUICE_GUARD_ALLOW";
pub const GUARD_BUCKETS_MAP: &str = "SLUICE_GUARD_BUCKETS";
pub const L4_SERVICES_MAP: &str = "SLUICE_L4_SERVICES";
pub const L4_BACKENDS_MAP: &str = "SLUICE_L4_BACKENDS";
pub const L4_MAGLEV_MAP: &str = "SLUICE_L4_MAGLEV";
pub const L4_FLOWS_MAP: &str = "SLUICE_L4_FLOWS";
pub const L4_REPLIES_MAP: &str = "SLUICE_L4_REPLIES";

/// Most services (address, port, protocol) one node steers.
pub const MAX_SERVICES: u32 = 64;
/// Most workers per node; also the stride of the workers table per service.
pub const MAX_WORKERS: u32 = 256;
/// Slots in each service's Maglev lookup table: a prime, as Maglev requires, and large
/// against `MAX_WORKERS` so a worker leaving moves few flows.
pub const MAGLEV_TABLE_SIZE: u32 = 65537;
/// Conntrack entries (LRU: the least recently used flow is evicted when full).
pub const CONNTRACK_ENTRIES: u32 = 262_144;

/// Most networks in each guard list (deny, allow).
pub const GUARD_CIDRS: u32 = 16_384;
/// Sources tracked by the guard's rate limit (LRU: the least recently seen source is evicted
/// when full, and comes back with a full bucket).
pub const GUARD_SOURCES: u32 = 65_536;

/// Most L4 services (`l4_services`) one node balances in XDP.
pub const MAX_L4_SERVICES: u32 = 16;
/// Most endpoints per L4 service; also the stride of the L4 endpoints table.
pub const MAX_L4_BACKENDS: u32 = 256;
/// L4 flows tracked at once (LRU), each with its reply entry.
pub const L4_FLOW_ENTRIES: u32 = 262_144;
/// The node's source ports for L4 flows towards endpoints, above Linux's default ephemeral
/// range (32768-60999), so the node's own connections (health checks) never take one. Replies
/// to other ports are never looked up, so traffic outside L4 pays one comparison.
pub const L4_SNAT_PORT_MIN: u16 = 61_000;
pub const L4_SNAT_PORT_MAX: u16 = 65_535;

pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// A service: destination address, port and protocol that XDP steers.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ServiceKey {
    /// Wire bytes; IPv4 uses `addr[0]` and leaves the rest zero.
    pub addr: [u32; 4],
    /// Wire bytes (`port.to_be()`).
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

/// Delivery mode of a service.
pub const MODE_STEER: u32 = 1;
/// An L4 service balanced in XDP: `id` indexes the L4 tables (< `MAX_L4_SERVICES`).
pub const MODE_L4: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceValue {
    /// Index of the service's rows in the workers and Maglev tables (< `MAX_SERVICES`).
    pub id: u32,
    /// `MODE_STEER`: rewrite the destination port to the chosen worker's listener.
    pub mode: u32,
}

/// Worker states in the workers table.
pub const WORKER_DOWN: u32 = 0;
pub const WORKER_UP: u32 = 1;

/// One worker of one service. Indexed by `service_id * MAX_WORKERS + worker`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct WorkerValue {
    /// The worker's own listener port for this service, wire bytes; 0 = no such worker.
    pub port: u16,
    pub _pad: u16,
    /// `WORKER_UP` or `WORKER_DOWN`; informational, the Maglev table decides delivery.
    pub state: u32,
}

/// A connection as seen arriving from the client.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub sport: u16,
    /// The service port (before rewriting), wire bytes.
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: u16,
}

/// Where a connection was steered.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowValue {
    pub service: u32,
    pub worker: u32,
    /// The worker's listener port, wire bytes.
    pub worker_port: u16,
    pub _pad: u16,
}

/// Key of the reverse table: a worker listener port, as the source port of replies.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ReverseKey {
    /// Wire bytes.
    pub worker_port: u16,
    pub proto: u8,
    pub _pad: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ReverseValue {
    /// The service port to restore on replies, wire bytes.
    pub service_port: u16,
    pub _pad: u16,
    pub service: u32,
}

/// The data of a guard list entry (an LPM trie key is `prefix_len` then this). The family word
/// comes first and every entry's prefix covers it (`prefix_len = 32 + network bits`), so an
/// IPv4 network never matches an IPv6 source or the reverse, and `::/0` is not `0.0.0.0/0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct GuardCidr {
    /// `FAMILY_IPV4` or `FAMILY_IPV6`.
    pub family: u32,
    /// Wire bytes; IPv4 uses `addr[0]` and leaves the rest zero.
    pub addr: [u32; 4],
}

/// `prefix_len` of a guard lookup: every bit of the family word and of the address.
pub const GUARD_LOOKUP_BITS: u32 = 32 + 128;

/// `GuardConfig::flags`: the deny list has entries (else it is not looked up).
pub const GUARD_DENY: u32 = 1;
/// `GuardConfig::flags`: the allow list has entries; a source outside it is dropped. Without
/// the flag everyone not denied is allowed.
pub const GUARD_ALLOW: u32 = 2;

/// A token bucket as a GCRA: each packet costs `interval_ns` (one token); a packet is admitted
/// while the source's debt, after paying, is at most `limit_ns` (`burst` tokens).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RateLimit {
    /// Nanoseconds per token (`1e9 / rate`); 0 = no limit.
    pub interval_ns: u64,
    /// `burst * interval_ns`.
    pub limit_ns: u64,
}

/// The guard's settings: slot 0 of its config array, written by user space after the lists.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GuardConfig {
    /// `GUARD_DENY | GUARD_ALLOW`.
    pub flags: u32,
    pub _pad: u32,
    /// New TCP connections (SYN without ACK) per source.
    pub syn: RateLimit,
    /// UDP datagrams per source.
    pub udp: RateLimit,
}

/// Key of a rate-limit bucket: one source (an IPv4 address, an IPv6 /64) and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct GuardSource {
    pub addr: [u32; 4],
    pub family: u8,
    pub proto: u8,
    pub _pad: u16,
}

/// A rate-limit bucket: the time (CLOCK_MONOTONIC ns) at which the source's debt is paid off,
/// the GCRA's "theoretical arrival time". Updated with compare-and-swap by every CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GuardBucket {
    pub paid_until_ns: u64,
}

/// An L4 service's settings, indexed by its id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct L4Service {
    /// The node address put as the source towards endpoints, wire bytes (IPv4: `[0]`).
    pub snat: [u32; 4],
    /// A flow idle this long is placed again at its next packet.
    pub idle_ns: u64,
    /// `L4_ACTIVE` once the tables are written.
    pub flags: u32,
    pub _pad: u32,
}

/// `L4Service::flags`: the service's tables are complete.
pub const L4_ACTIVE: u32 = 1;

/// One endpoint of an L4 service, indexed by `service * MAX_L4_BACKENDS + index`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct L4Backend {
    /// Wire bytes; IPv4 uses `addr[0]`.
    pub addr: [u32; 4],
    /// Wire bytes; 0 = no endpoint here.
    pub port: u16,
    pub family: u8,
    pub _pad: u8,
}

/// Where an L4 flow (keyed by its client-side `FlowKey`) goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct L4Flow {
    pub backend: [u32; 4],
    pub snat: [u32; 4],
    /// CLOCK_MONOTONIC_COARSE ns (CLOCK_MONOTONIC as of the last tick) of the client's last
    /// packet.
    pub last_seen_ns: u64,
    /// Idle this long, the flow is over: the service's timeout, or `L4_CLOSING_NS` once a
    /// TCP FIN or RST passed.
    pub idle_ns: u64,
    pub backend_port: u16,
    pub snat_port: u16,
    pub service: u32,
    /// Towards the endpoint: the next hop the FIB gave for this flow's packets.
    pub hop: L4NextHop,
}

/// A `bpf_fib_lookup` answer kept in an L4 flow's entries (one per direction), so that the
/// packets after the first reuse it instead of asking the FIB each time. It is asked again
/// once the answer is older than `L4_NEXT_HOP_TTL_NS`, and for a packet longer than the MTU
/// it reported (the FIB then refuses such a packet, which passes to the kernel). Small, since
/// the XDP program builds a flow's entries on its 512-byte stack.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct L4NextHop {
    /// When the FIB was asked, in units of 2^20 ns (about a millisecond; wraps after 49
    /// days, compared with wrapping arithmetic) of CLOCK_MONOTONIC_COARSE; 0 = never.
    pub checked: u32,
    /// The interface the packet leaves by.
    pub ifindex: u32,
    /// Destination MAC then source MAC, as they are written into the frame.
    pub macs: [u8; 12],
    /// The route's MTU, as the lookup reported it.
    pub mtu: u16,
    pub _pad: u16,
}

/// `L4NextHop::checked` is a clock in nanoseconds shifted right by this.
pub const L4_NEXT_HOP_CLOCK_SHIFT: u32 = 20;

/// How long an L4 flow reuses a next hop before asking the FIB again: a route or neighbour
/// change reaches established flows within this time (new flows see it at once). The kernel
/// itself keeps using a stale neighbour entry for seconds (`delay_first_probe_time`, 5 s)
/// before probing it, so a quarter of a second adds little, and one FIB lookup per flow per
/// quarter second costs nothing measurable at the packet rates where the lookup mattered.
pub const L4_NEXT_HOP_TTL_NS: u64 = 250_000_000;

/// How long a TCP flow that has seen a FIN or RST keeps its node source port: 2 MSL, the
/// longest TIME_WAIT, so a new flow never meets an old connection's state at the endpoint.
/// One nanosecond over 60 s so that no configured idle timeout (whole milliseconds) equals
/// it: a flow's `idle_ns` says whether it has closed.
pub const L4_CLOSING_NS: u64 = 60_000_000_001;

/// A closed TCP flow (`L4_CLOSING_NS`) idle this long gives its node port to a new flow that
/// found no free port among those it tried, rather than the new flow being dropped: as Linux's
/// NAT takes a tuple held by a TIME_WAIT connection on its last tries (`nf_nat_used_tuple_harder`).
/// Without it an endpoint takes at most 4536 new connections a minute (each closed flow holds
/// its port for `L4_CLOSING_NS`). Should the endpoint still hold the old connection (TIME_WAIT,
/// or LAST_ACK with the final ACK lost), Linux accepts the new SYN when its timestamp or
/// sequence number is newer, and otherwise answers with an ACK that the client resets, its SYN
/// retried a second later: a delay, never a connection on the old state.
pub const L4_CLOSED_REUSE_NS: u64 = 1_000_000_000;

/// A reply as it arrives from an endpoint: its source and the node port it is sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct L4ReplyKey {
    pub backend: [u32; 4],
    pub backend_port: u16,
    pub snat_port: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: u16,
}

/// What a reply is translated back to: the client's flow as it arrived.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct L4Reply {
    pub client: FlowKey,
    /// Towards the client: the next hop the FIB gave for the endpoint's replies.
    pub hop: L4NextHop,
}

/// `aya::Pod` for each shared type. Each is #[repr(C)], Copy, made only of integers and has no
/// implicit padding (sizes asserted below), so every bit pattern is valid.
#[cfg(feature = "user")]
mod pod {
    macro_rules! pod {
        ($($ty:ident),*) => {
            $(
                // SAFETY: see the module comment: repr(C), integers only, no implicit padding.
                unsafe impl aya::Pod for super::$ty {}
            )*
        };
    }
    pod!(ServiceKey, ServiceValue, WorkerValue, FlowKey, FlowValue, ReverseKey, ReverseValue);
    pod!(GuardCidr, GuardConfig, GuardSource, GuardBucket);
    pod!(L4Service, L4Backend, L4Flow, L4ReplyKey, L4Reply, L4NextHop);
}

/// Compile-time proof that the shared types have no implicit padding.
const _: () = {
    assert!(core::mem::size_of::<ServiceKey>() == 20);
    assert!(core::mem::size_of::<ServiceValue>() == 8);
    assert!(core::mem::size_of::<WorkerValue>() == 8);
    assert!(core::mem::size_of::<FlowKey>() == 40);
    assert!(core::mem::size_of::<FlowValue>() == 12);
    assert!(core::mem::size_of::<ReverseKey>() == 4);
    assert!(core::mem::size_of::<ReverseValue>() == 8);
    assert!(core::mem::size_of::<GuardCidr>() == 20);
    assert!(core::mem::size_of::<GuardConfig>() == 40);
    assert!(core::mem::size_of::<GuardSource>() == 20);
    assert!(core::mem::size_of::<GuardBucket>() == 8);
    assert!(core::mem::size_of::<L4Service>() == 32);
    assert!(core::mem::size_of::<L4Backend>() == 20);
    assert!(core::mem::size_of::<L4Flow>() == 80);
    assert!(core::mem::size_of::<L4ReplyKey>() == 24);
    assert!(core::mem::size_of::<L4Reply>() == 64);
    assert!(core::mem::size_of::<L4NextHop>() == 24);
};

macro_rules! stats {
    ($($(#[$doc:meta])* $variant:ident = $index:literal => $name:literal,)*) => {
        /// One slot of the per-CPU counters array. The discriminant is the array index.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Stat {
            $($(#[$doc])* $variant = $index,)*
        }

        impl Stat {
            /// Every counter, in index order.
            pub const ALL: &'static [Stat] = &[$(Stat::$variant,)*];

            /// The counter's name as exported in metrics and printed by tools.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Stat::$variant => $name,)*
                }
            }
        }
    };
}

stats! {
    /// Every frame XDP saw.
    Packets = 0 => "packets",
    /// Bytes of every frame XDP saw (Ethernet header included).
    Bytes = 1 => "bytes",
    /// Frames whose destination port was rewritten to a worker.
    Steered = 2 => "steered",
    /// Service flows without a conntrack entry, placed through the Maglev table.
    NewFlows = 3 => "new_flows",
    /// Service packets that followed their conntrack entry.
    ConntrackHits = 4 => "conntrack_hits",
    /// Passed: not IPv4 or IPv6.
    PassNotIp = 5 => "pass_not_ip",
    /// Passed: a header is cut short by the end of the frame.
    PassTruncated = 6 => "pass_truncated",
    /// Passed: an IP header with a bad version, or an IPv4 header length under 20 bytes.
    PassBadIpHeader = 7 => "pass_bad_ip_header",
    /// Passed: an IP fragment (non-first fragments carry no ports).
    PassFragment = 8 => "pass_fragment",
    /// Passed: an IPv6 extension header before the transport header.
    PassIpv6Extension = 9 => "pass_ipv6_extension",
    /// Passed: neither TCP nor UDP.
    PassOtherProtocol = 10 => "pass_other_protocol",
    /// Passed: well-formed, but not addressed to a service.
    PassNotService = 11 => "pass_not_service",
    /// Dropped: the service's Maglev slot is empty (no healthy worker).
    DropNoWorker = 12 => "drop_no_worker",
    /// Dropped: the slot names a worker with no listener port.
    DropBadWorker = 13 => "drop_bad_worker",
    /// A new flow was steered but the conntrack insert failed.
    ConntrackInsertFailed = 14 => "conntrack_insert_failed",
    /// TC egress: replies whose source port was restored to the service port.
    EgressRestored = 15 => "egress_restored",
    /// Passed: an IPv4 total length shorter than its header or longer than the frame, or an
    /// IPv6 payload length longer than the frame.
    PassBadIpLength = 16 => "pass_bad_ip_length",
    /// Passed: a TCP data offset under 5 words or past the end of the IP packet, or a UDP
    /// length under 8 bytes or past the end of the IP packet.
    PassBadTransportHeader = 17 => "pass_bad_transport_header",
    /// Dropped by the guard: the source is in `xdp.guard.deny`.
    DropDeny = 18 => "drop_deny",
    /// Dropped by the guard: `xdp.guard.allow` has entries and the source is in none.
    DropNotAllowed = 19 => "drop_not_allowed",
    /// Dropped by the guard: the source opened TCP connections faster than its SYN limit.
    DropSynRate = 20 => "drop_syn_rate",
    /// Dropped by the guard: the source sent UDP datagrams faster than its UDP limit.
    DropUdpRate = 21 => "drop_udp_rate",
    /// L4 services: packets from clients rewritten to an endpoint and sent out by XDP.
    L4Forwarded = 22 => "l4_forwarded",
    /// L4 services: replies from endpoints rewritten back to the client and sent out by XDP.
    L4Replied = 23 => "l4_replied",
    /// L4 services: flows placed through the Maglev table (new, or idle past their timeout).
    L4NewFlows = 24 => "l4_new_flows",
    /// Dropped: an L4 service whose Maglev slot is empty (no healthy endpoint).
    DropL4NoBackend = 25 => "drop_l4_no_backend",
    /// Dropped: no free node source port for a new L4 flow to its endpoint.
    DropL4NoPort = 26 => "drop_l4_no_port",
    /// Passed: an L4 packet for which `bpf_fib_lookup` gave no next hop (no route, the
    /// neighbour not resolved yet, or the packet needs fragmenting); the kernel handles it.
    PassL4NoRoute = 27 => "pass_l4_no_route",
    /// Passed: an L4 packet over IPv6 (the fast path is IPv4 for now), or with IPv4 options.
    PassL4Unsupported = 28 => "pass_l4_unsupported",
    /// L4 services: ICMP errors about a flow (an endpoint's port unreachable, fragmentation
    /// needed, time exceeded) translated back and sent to the flow's client by XDP.
    L4IcmpReplied = 29 => "l4_icmp_replied",
}

impl Stat {
    /// Index into the counters array.
    pub const fn index(self) -> u32 {
        self as u32
    }
}

/// Number of slots in the per-CPU counters array.
pub const STATS_LEN: u32 = Stat::ALL.len() as u32;
