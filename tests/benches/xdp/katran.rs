//! Katran (github.com/facebookincubator/katran), measured beside Sluice by `cargo xtask bench
//! xdp --katran-object PATH`: its `balancer_ingress` XDP program, built by hand from Katran's
//! sources (docs/BENCHMARKS.md says how; none of Katran is in this repository), loaded with aya
//! and configured the way Katran's own test provisioning does (katran/lib/testing/utils/
//! KatranTestProvision.cpp): one TCP VIP with flags 0, three IPv4 reals, the VIP's Maglev ring
//! (built here with Sluice's builder: the kernel only indexes it), the default gateway's MAC in
//! the control array, and one connection table (LRU hash) per CPU in `lru_mapping`, as
//! `KatranLb::initLrus` makes them for forwarding cores, so the tiny test-only fallback table
//! is never used. Katran then does what it does in production for an IPv4 TCP packet to its
//! VIP: parse, VIP lookup, connection table (or, for a SYN, consistent hashing and an insert),
//! per-VIP and per-real counters, IP-in-IP encapsulation towards the real, `XDP_TX`.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    time::Duration,
};

use anyhow::{Context, bail, ensure};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, ArrayOfMaps, HashMap, MapData, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
};
use lb_tests::frames;
use lb_userspace::maglev::{MaglevEntry, build_table};

/// The XDP program in Katran's `balancer.bpf.o`.
pub const PROGRAM: &str = "balancer_ingress";
/// Katran's defaults (balancer_consts.h) that the map layout depends on.
const MAX_VIPS: u32 = 512;
const RING_SIZE: u32 = 65537;
/// Indexes into `stats` past the per-VIP slots (balancer_consts.h).
const LRU_CNTRS: u32 = 0;
const LRU_MISS_CNTR: u32 = 1;
const FALLBACK_LRU_CNTR: u32 = 3;
/// Connection-table entries per CPU: Sluice's conntrack holds 262,144 flows in all, so each of
/// Katran's per-CPU tables gets as many (Katran's own default is 8 million split over the
/// forwarding cores). Its size changes nothing per packet but the table's spread in memory.
const LRU_ENTRIES_PER_CPU: u32 = 262_144;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
/// `struct flow_key` and `struct real_pos_lru` (balancer_structs.h): the inner maps' shape.
const FLOW_KEY_SIZE: u32 = 40;
const REAL_POS_LRU_SIZE: u32 = 16;
/// Katran's tests' reals and default gateway MAC (KatranTestProvision.cpp).
pub const REALS: [Ipv4Addr; 3] =
    [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3)];
const GATEWAY_MAC: [u8; 6] = [0x00, 0x00, 0xde, 0xad, 0xbe, 0xaf];
const IPPROTO_IPIP: u8 = 4;

/// `struct vip_definition`: address (IPv4 in the first word), port, protocol; wire bytes.
#[repr(C)]
#[derive(Clone, Copy)]
struct VipDefinition {
    addr: [u32; 4],
    port: u16,
    proto: u8,
    _pad: u8,
}

/// `struct vip_meta`.
#[repr(C)]
#[derive(Clone, Copy)]
struct VipMeta {
    flags: u32,
    vip_num: u32,
}

/// `struct real_definition`: address (IPv4 in the first word), flags (0 = IPv4).
#[repr(C)]
#[derive(Clone, Copy)]
struct RealDefinition {
    addr: [u32; 4],
    flags: u8,
    _pad: [u8; 3],
}

/// `struct lb_stats`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct LbStats {
    v1: u64,
    v2: u64,
}

// SAFETY: repr(C), integers only, its padding byte a field (sizes asserted below): every bit
// pattern is valid and none is uninitialised. The same holds for the three below.
unsafe impl aya::Pod for VipDefinition {}
// SAFETY: as above.
unsafe impl aya::Pod for VipMeta {}
// SAFETY: as above.
unsafe impl aya::Pod for RealDefinition {}
// SAFETY: as above.
unsafe impl aya::Pod for LbStats {}

const _: () = {
    assert!(size_of::<VipDefinition>() == 20);
    assert!(size_of::<VipMeta>() == 8);
    assert!(size_of::<RealDefinition>() == 20);
    assert!(size_of::<LbStats>() == 16);
};

/// Katran's program, loaded and configured with one VIP.
pub struct Katran {
    ebpf: Ebpf,
    /// The per-CPU connection tables; `lru_mapping` holds them too, these handles only keep
    /// user space's descriptors for as long as the program runs.
    _lrus: Vec<MapData>,
}

/// What one BPF_PROG_TEST_RUN call of Katran's program returned.
pub struct Run {
    pub verdict: u32,
    pub frame: Vec<u8>,
    pub duration: Duration,
}

/// Katran's own counters for the paths the bench takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets to a VIP (`LRU_CNTRS` v1).
    pub vip_packets: u64,
    /// VIP packets placed by consistent hashing (`LRU_CNTRS` v2).
    pub placed: u64,
    /// TCP SYNs that missed the connection table (`LRU_MISS_CNTR` v1).
    pub syn_misses: u64,
    /// TCP non-SYNs that missed it (`LRU_MISS_CNTR` v2): must stay 0 for `established`.
    pub other_misses: u64,
    /// Packets that found no per-CPU table (`FALLBACK_LRU_CNTR` v1): must stay 0.
    pub fallback_lru: u64,
}

impl Katran {
    /// Loads Katran's object from `path` and configures `vip` (TCP) over [`REALS`].
    pub fn load(path: &Path, vip: SocketAddrV4) -> anyhow::Result<Katran> {
        let mut ebpf = EbpfLoader::new()
            .load_file(path)
            .with_context(|| format!("loading Katran's object {}", path.display()))?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .with_context(|| {
                format!("{} has no program {PROGRAM}: not Katran's balancer.bpf.o?", path.display())
            })?
            .try_into()?;
        program.load().context("Katran's balancer_ingress did not pass the verifier")?;

        let mut vips: HashMap<_, VipDefinition, VipMeta> = HashMap::try_from(map(&mut ebpf, "vip_map")?)?;
        let key = VipDefinition {
            addr: [u32::from_ne_bytes(vip.ip().octets()), 0, 0, 0],
            port: vip.port().to_be(),
            proto: frames::IPPROTO_TCP,
            _pad: 0,
        };
        vips.insert(key, VipMeta { flags: 0, vip_num: 0 }, 0)?;
        // Real ids start from 1: 0 in a ring slot means an uninitialised ring.
        let mut reals: Array<_, RealDefinition> = Array::try_from(map(&mut ebpf, "reals")?)?;
        for (index, real) in REALS.iter().enumerate() {
            let value =
                RealDefinition { addr: [u32::from_ne_bytes(real.octets()), 0, 0, 0], flags: 0, _pad: [0; 3] };
            reals.set(index as u32 + 1, value, 0)?;
        }
        let entries: Vec<MaglevEntry> = (1..=REALS.len() as u32)
            .map(|id| MaglevEntry { key: u64::from(id), value: id, weight: 1 })
            .collect();
        let ring = build_table(&entries, RING_SIZE);
        let mut rings: Array<_, u32> = Array::try_from(map(&mut ebpf, "ch_rings")?)?;
        for (slot, &real) in ring.iter().enumerate() {
            rings.set(slot as u32, real, 0)?;
        }
        // `struct ctl_value` is a union of a u64 and the MAC in its first six bytes.
        let mut control: Array<_, u64> = Array::try_from(map(&mut ebpf, "ctl_array")?)?;
        let mut mac = [0u8; 8];
        mac[..6].copy_from_slice(&GATEWAY_MAC);
        control.set(0, u64::from_ne_bytes(mac), 0)?;

        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
        let mut lru_mapping: ArrayOfMaps<_, MapData> = ArrayOfMaps::try_from(map(&mut ebpf, "lru_mapping")?)?;
        let mut lrus = Vec::with_capacity(cpus);
        for cpu in 0..cpus as u32 {
            let shape = aya_obj::Map::new_from_params(
                BPF_MAP_TYPE_LRU_HASH,
                FLOW_KEY_SIZE,
                REAL_POS_LRU_SIZE,
                LRU_ENTRIES_PER_CPU,
                0,
            );
            let lru = MapData::create(shape, "katran_lru", None).context("creating a per-CPU table")?;
            lru_mapping.set(cpu, &lru, 0).with_context(|| format!("lru_mapping[{cpu}]"))?;
            lrus.push(lru);
        }
        Ok(Katran { ebpf, _lrus: lrus })
    }

    /// One BPF_PROG_TEST_RUN call (repeat 1) of Katran's program on `frame`.
    pub fn run(&self, frame: &[u8]) -> anyhow::Result<Run> {
        // Room for the encapsulating header Katran adds in front.
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat: 1,
            ..Default::default()
        };
        let program: &Xdp = self.ebpf.program(PROGRAM).context("Katran's program")?.try_into()?;
        let result = program.test_run(opts)?;
        out.truncate(result.data_size_out as usize);
        Ok(Run { verdict: result.return_value, frame: out, duration: result.duration })
    }

    /// Katran's counters, summed over the CPUs.
    pub fn counters(&self) -> anyhow::Result<Counters> {
        let stats: PerCpuArray<_, LbStats> =
            PerCpuArray::try_from(self.ebpf.map("stats").context("Katran's stats map")?)?;
        let read = |index: u32| -> anyhow::Result<LbStats> {
            let values = stats.get(&(MAX_VIPS + index), 0)?;
            Ok(values
                .iter()
                .fold(LbStats::default(), |sum, v| LbStats { v1: sum.v1 + v.v1, v2: sum.v2 + v.v2 }))
        };
        let (lru, miss, fallback) = (read(LRU_CNTRS)?, read(LRU_MISS_CNTR)?, read(FALLBACK_LRU_CNTR)?);
        Ok(Counters {
            vip_packets: lru.v1,
            placed: lru.v2,
            syn_misses: miss.v1,
            other_misses: miss.v2,
            fallback_lru: fallback.v1,
        })
    }
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name).with_context(|| format!("Katran's object has no map {name}"))
}

/// The real an encapsulated frame is sent to, checked to be IP-in-IP to one of [`REALS`] with
/// the gateway's MAC and a valid outer header checksum, the original packet inside.
pub fn encapsulated_to(frame: &[u8], inner: &[u8]) -> anyhow::Result<Ipv4Addr> {
    let outer = frames::ETH_HLEN;
    ensure!(
        frame.len() == inner.len() + 20,
        "not one IPv4 header longer: {} vs {}",
        frame.len(),
        inner.len()
    );
    ensure!(frame[..6] == GATEWAY_MAC, "not sent to the gateway's MAC");
    ensure!(frame[outer + 9] == IPPROTO_IPIP, "outer protocol {} is not IP-in-IP", frame[outer + 9]);
    ensure!(frames::checksum_fold(0, &frame[outer..outer + 20]) == 0, "outer IP checksum");
    ensure!(frame[outer + 20..] == inner[frames::ETH_HLEN..], "the inner packet was changed");
    let real = Ipv4Addr::new(frame[outer + 16], frame[outer + 17], frame[outer + 18], frame[outer + 19]);
    if !REALS.contains(&real) {
        bail!("encapsulated to {real}, not a real");
    }
    Ok(real)
}
