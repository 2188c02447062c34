//! The kernel side as user space sees it: loading the embedded eBPF object, attaching and
//! detaching programs, and every map read and write. Nothing else in the daemon touches aya.

pub mod guard;
pub mod health;
pub mod l4;
pub mod l4_health;
mod neighbours;
pub mod pin;
pub mod steering;

use std::path::Path;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray},
    programs::{
        ProgramError, SchedClassifier, TestRun, TestRunOptions, Xdp, XdpMode,
        tc::{self, SchedClassifierLinkId, TcAttachType},
        xdp::XdpLinkId,
    },
};
use lb_common::{
    CONNTRACK_MAP, FlowKey, FlowValue, GUARD_ALLOW_MAP, GUARD_CONFIG_MAP, GUARD_DENY_MAP, HEARTBEATS_MAP,
    MAGLEV_MAP, REVERSE_MAP, SERVICES_MAP, STATS_MAP, Stat, TC_EGRESS_PROGRAM, WORKERS_MAP, XDP_PASS_PROGRAM,
    XDP_PROGRAM,
};

use crate::config::AttachMode;

pub use self::{
    guard::{Guard, GuardChanges},
    health::{HealthTiming, HeartbeatWriter, Supervisor},
    l4::{L4Maps, L4Spec},
    l4_health::L4Supervisor,
    steering::{Protocol, Service, Steering},
};

/// The eBPF object built from `lb-ebpf` by build.rs, embedded so one binary ships.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice-ebpf"));

/// The embedded object; empty when the build had no bpf-linker (see `build.rs`).
fn built() -> Result<&'static [u8]> {
    if EBPF_OBJECT.is_empty() { Err(Error::NotBuilt) } else { Ok(EBPF_OBJECT) }
}

/// Errors from the kernel side, each saying what to try.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "this sluice binary was built without its XDP programs (bpf-linker or the nightly rust-src component was missing); run `cargo xtask setup` and build again, or start with --no-xdp"
    )]
    NotBuilt,
    #[error(
        "loading the eBPF object failed: {0}; run as root (or with CAP_BPF and CAP_NET_ADMIN), or start with --no-xdp"
    )]
    Load(#[source] aya::EbpfError),
    #[error("the eBPF object has no program or map named {0}; the binary is inconsistent, rebuild it")]
    Missing(&'static str),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error(
        "there is no network interface {0} here; name one that `ip link` lists (--interface, xdp.interfaces), or start with --no-xdp"
    )]
    NoInterface(String),
    #[error(
        "attaching XDP to {interface} in {mode} mode failed: {source}; retry with `--xdp-mode skb`, or start with --no-xdp"
    )]
    Attach {
        interface: String,
        mode: AttachMode,
        #[source]
        source: ProgramError,
    },
    #[error("steering: {0}")]
    Steering(String),
    #[error("cannot start the health supervisor thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("pinning (upgrades): {0}")]
    Pin(String),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps an aya map error with the name of the map it came from.
fn map_error(name: &'static str) -> impl Fn(aya::maps::MapError) -> Error {
    move |source| Error::Map { name, source }
}

/// The kernel's attach modes to try, in order, for a configured mode.
fn modes_to_try(mode: AttachMode) -> &'static [XdpMode] {
    match mode {
        AttachMode::Auto => &[XdpMode::Driver, XdpMode::Skb],
        AttachMode::Driver => &[XdpMode::Driver],
        AttachMode::Skb => &[XdpMode::Skb],
    }
}

/// One attachment of the XDP program, as reported to operators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub interface: String,
    pub mode: XdpMode,
}

/// The XDP counters summed over every CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    values: [u64; lb_common::STATS_LEN as usize],
}

impl Counters {
    pub fn get(&self, stat: Stat) -> u64 {
        self.values[stat.index() as usize]
    }

    /// Every counter with its name, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (Stat, u64)> + '_ {
        Stat::ALL.iter().map(|&stat| (stat, self.get(stat)))
    }
}

/// The programs in the object, for BPF_PROG_TEST_RUN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    /// XDP ingress steering.
    Xdp,
    /// XDP that only passes: the floor for cost measurements.
    XdpPass,
    /// TC egress port restoration.
    TcEgress,
}

impl Program {
    fn name(self) -> &'static str {
        match self {
            Program::Xdp => XDP_PROGRAM,
            Program::XdpPass => XDP_PASS_PROGRAM,
            Program::TcEgress => TC_EGRESS_PROGRAM,
        }
    }
}

/// Reads the XDP counters from any thread.
pub struct CountersReader {
    stats: PerCpuArray<MapData, u64>,
}

impl CountersReader {
    pub fn read(&self) -> Result<Counters> {
        read_counters(&self.stats)
    }
}

/// Sums every counter over the CPUs. A counter past the array's end reads 0: after an upgrade
/// the array is the one the first process created, which an older binary made with fewer
/// counters (`pin::check_pins_match` lets it through), and the program skips what it cannot
/// find.
fn read_counters<T: std::borrow::Borrow<MapData>>(stats: &PerCpuArray<T, u64>) -> Result<Counters> {
    let mut counters = Counters::default();
    for &stat in Stat::ALL {
        counters.values[stat.index() as usize] = match stats.get(&stat.index(), 0) {
            Ok(per_cpu) => per_cpu.iter().sum(),
            Err(aya::maps::MapError::OutOfBounds { .. }) => 0,
            Err(source) => return Err(Error::Map { name: STATS_MAP, source }),
        };
    }
    Ok(counters)
}

/// The loaded eBPF object. Dropping it detaches every program it attached: the links are
/// bpf_link file descriptors, so even a killed daemon leaves nothing attached.
pub struct Dataplane {
    ebpf: Ebpf,
    attachments: Vec<(Attachment, XdpLinkId, SchedClassifierLinkId)>,
    /// With an instance name: the pin directory, its pinned links, and whether this process
    /// owns the pins (removes them when it stops) or handed them over.
    pins: Option<Pins>,
}

struct Pins {
    options: pin::PinOptions,
    links: Vec<pin::PinnedPair>,
    owner: std::sync::atomic::AtomicBool,
}

impl Dataplane {
    /// Loads the embedded object and its programs into the kernel (the verifier runs here).
    pub fn load() -> Result<Self> {
        Self::load_programs(Ebpf::load(built()?).map_err(Error::Load)?, None)
    }

    /// Loads the object with every map pinned in `options.dir`: an upgrade (`inherit`) reuses
    /// the maps pinned there, so conntrack, counters and tables carry over; a fresh start
    /// removes stale pins first. `attach` then adopts or pins the links.
    pub fn load_pinned(options: &pin::PinOptions) -> Result<Self> {
        let bpffs = options.dir.parent().and_then(Path::parent).unwrap_or(&options.dir);
        pin::ensure_bpffs(bpffs)?;
        if !options.inherit {
            let stale = pin::clear(&options.dir)
                .map_err(|e| Error::Pin(format!("removing stale pins in {}: {e}", options.dir.display())))?;
            if stale > 0 {
                tracing::warn!(dir = %options.dir.display(), pins = stale, "removed stale pins of an instance that did not stop cleanly");
            }
        }
        std::fs::create_dir_all(&options.dir)
            .map_err(|e| Error::Pin(format!("cannot create {}: {e}", options.dir.display())))?;
        if options.inherit {
            pin::check_pins_match(&options.dir, built()?)?;
        }
        let names = pin::map_names(built()?)?;
        let mut loader = EbpfLoader::new();
        for name in &names {
            loader.map_pin_path(name, options.dir.join(name));
        }
        let ebpf = loader.load(built()?).map_err(Error::Load)?;
        let owner = std::sync::atomic::AtomicBool::new(!options.inherit);
        let pins = Pins { options: options.clone(), links: Vec::new(), owner };
        Self::load_programs(ebpf, Some(pins))
    }

    fn load_programs(mut ebpf: Ebpf, pins: Option<Pins>) -> Result<Self> {
        for name in [XDP_PROGRAM, XDP_PASS_PROGRAM] {
            xdp_program(&mut ebpf, name)?.load().map_err(|source| Error::Program { name, source })?;
        }
        tc_program(&mut ebpf)?.load().map_err(|source| Error::Program { name: TC_EGRESS_PROGRAM, source })?;
        Ok(Dataplane { ebpf, attachments: Vec::new(), pins })
    }

    /// This process now owns the pins: it removes them when it stops for good. An upgraded
    /// process calls it once it serves.
    pub fn own_pins(&self) {
        if let Some(pins) = &self.pins {
            pins.owner.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Gives the pins up to the process that took over: dropping this closes this process's
    /// handles only; the links stay attached and the maps stay pinned.
    pub fn release_pins(&self) {
        if let Some(pins) = &self.pins {
            pins.owner.store(false, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Attaches XDP ingress and TC egress to `interface` in the current network namespace. In
    /// `Auto` mode XDP driver mode is tried first and generic mode is the fallback.
    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<Attachment> {
        // A missing interface is not a mode problem: say so rather than suggest another mode.
        let name = std::ffi::CString::new(interface).map_err(|_| Error::NoInterface(interface.to_owned()))?;
        // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
        if unsafe { libc::if_nametoindex(name.as_ptr()) } == 0 {
            return Err(Error::NoInterface(interface.to_owned()));
        }
        if let Some(attachment) = self.adopt_pinned(interface)? {
            return Ok(attachment);
        }
        let program = xdp_program(&mut self.ebpf, XDP_PROGRAM)?;
        let mut attached = None;
        let mut last_error = None;
        for &xdp_mode in modes_to_try(mode) {
            match program.attach(interface, xdp_mode) {
                Ok(link) => {
                    attached = Some((xdp_mode, link));
                    break;
                }
                Err(e) => last_error = Some(e),
            }
        }
        let Some((xdp_mode, xdp_link)) = attached else {
            return Err(Error::Attach {
                interface: interface.to_owned(),
                mode,
                source: last_error.expect("every mode lists at least one XDP mode"),
            });
        };
        let tc_link = match attach_tc_egress(&mut self.ebpf, interface) {
            Ok(link) => link,
            Err(e) => {
                // Steering without the egress half would break every steered connection.
                let _ = xdp_program(&mut self.ebpf, XDP_PROGRAM)?.detach(xdp_link);
                return Err(e);
            }
        };
        let attachment = Attachment { interface: interface.to_owned(), mode: xdp_mode };
        if let Some(pins) = &self.pins {
            let xdp = xdp_program(&mut self.ebpf, XDP_PROGRAM)?.take_link(xdp_link);
            let xdp = xdp.map_err(|source| Error::Program { name: XDP_PROGRAM, source })?;
            let tc = tc_program(&mut self.ebpf)?.take_link(tc_link);
            let tc = tc.map_err(|source| Error::Program { name: TC_EGRESS_PROGRAM, source })?;
            let pinned = pin::PinnedPair::pin(&pins.options.dir, attachment.clone(), xdp, tc)?;
            self.pins.as_mut().expect("checked above").links.push(pinned);
            return Ok(attachment);
        }
        self.attachments.push((attachment.clone(), xdp_link, tc_link));
        Ok(attachment)
    }

    /// In an upgrade, the links the previous process pinned for `interface` now run this
    /// process's programs (`bpf_link_update`: atomic, no packet sees the interface bare).
    fn adopt_pinned(&mut self, interface: &str) -> Result<Option<Attachment>> {
        let Some(pins) = self.pins.as_ref().filter(|p| p.options.inherit) else { return Ok(None) };
        let dir = pins.options.dir.clone();
        let Some((xdp, tc, mode)) = pin::PinnedPair::find(&dir, interface) else { return Ok(None) };
        let program = xdp_program(&mut self.ebpf, XDP_PROGRAM)?;
        let id =
            program.attach_to_link(xdp).map_err(|source| Error::Program { name: XDP_PROGRAM, source })?;
        let xdp = program.take_link(id).map_err(|source| Error::Program { name: XDP_PROGRAM, source })?;
        let program = tc_program(&mut self.ebpf)?;
        let id = program
            .attach_to_link(tc)
            .map_err(|source| Error::Program { name: TC_EGRESS_PROGRAM, source })?;
        let tc =
            program.take_link(id).map_err(|source| Error::Program { name: TC_EGRESS_PROGRAM, source })?;
        let attachment = Attachment { interface: interface.to_owned(), mode };
        let pinned = pin::PinnedPair::adopted(&dir, attachment.clone(), xdp, tc)?;
        self.pins.as_mut().expect("checked above").links.push(pinned);
        tracing::info!(interface, "xdp and tc links taken over from the previous process");
        Ok(Some(attachment))
    }

    /// Where the programs are attached now.
    pub fn attachments(&self) -> impl Iterator<Item = &Attachment> {
        let pinned = self.pins.iter().flat_map(|p| p.links.iter().map(|l| &l.attachment));
        self.attachments.iter().map(|(a, _, _)| a).chain(pinned)
    }

    /// Detaches every program from every interface. Also done on drop. Pinned links are
    /// unpinned only by the owner of the pins; after a handover they stay for the successor.
    pub fn detach_all(&mut self) -> Result<()> {
        if let Some(pins) = &mut self.pins {
            let owner = pins.owner.load(std::sync::atomic::Ordering::Relaxed);
            for pair in std::mem::take(&mut pins.links) {
                if owner {
                    pair.detach().map_err(|e| Error::Pin(format!("unpinning links: {e}")))?;
                }
            }
            if owner {
                pin::clear(&pins.options.dir)
                    .map_err(|e| Error::Pin(format!("removing {}: {e}", pins.options.dir.display())))?;
            }
        }
        for (_, xdp_link, tc_link) in std::mem::take(&mut self.attachments) {
            xdp_program(&mut self.ebpf, XDP_PROGRAM)?
                .detach(xdp_link)
                .map_err(|source| Error::Program { name: XDP_PROGRAM, source })?;
            tc_program(&mut self.ebpf)?
                .detach(tc_link)
                .map_err(|source| Error::Program { name: TC_EGRESS_PROGRAM, source })?;
        }
        Ok(())
    }

    /// Takes the steering maps out of the object; their single owner from then on writes
    /// services, workers and Maglev tables. Callable once.
    pub fn take_steering(&mut self) -> Result<Steering> {
        Ok(Steering::new(
            self.take_map(SERVICES_MAP, HashMap::try_from)?,
            self.take_map(WORKERS_MAP, Array::try_from)?,
            self.take_map(MAGLEV_MAP, Array::try_from)?,
            self.take_map(REVERSE_MAP, HashMap::try_from)?,
        ))
    }

    /// Opens the guard maps with descriptors of their own, for the one owner that writes the
    /// deny and allow lists and the rate limits. The handle starts from what the maps hold:
    /// a process given maps that already carry entries (pinned maps reused by an upgrade, or
    /// a second handle) removes those no longer configured at its first `apply`.
    pub fn open_guard(&self) -> Result<Guard> {
        let config = Array::try_from(Map::Array(self.open_map(GUARD_CONFIG_MAP)?))
            .map_err(map_error(GUARD_CONFIG_MAP))?;
        let deny = LpmTrie::try_from(Map::LpmTrie(self.open_map(GUARD_DENY_MAP)?))
            .map_err(map_error(GUARD_DENY_MAP))?;
        let allow = LpmTrie::try_from(Map::LpmTrie(self.open_map(GUARD_ALLOW_MAP)?))
            .map_err(map_error(GUARD_ALLOW_MAP))?;
        Guard::new(config, deny, allow)
    }

    /// Opens the L4 maps with descriptors of their own (the services map too: L4 services
    /// have entries there beside the steered ones), for the one owner that writes them.
    pub fn open_l4(&self) -> Result<L4Maps> {
        use lb_common::{L4_BACKENDS_MAP, L4_FLOWS_MAP, L4_MAGLEV_MAP, L4_SERVICES_MAP};
        let services =
            HashMap::try_from(Map::HashMap(self.open_map(SERVICES_MAP)?)).map_err(map_error(SERVICES_MAP))?;
        let settings = Array::try_from(Map::Array(self.open_map(L4_SERVICES_MAP)?))
            .map_err(map_error(L4_SERVICES_MAP))?;
        let backends = Array::try_from(Map::Array(self.open_map(L4_BACKENDS_MAP)?))
            .map_err(map_error(L4_BACKENDS_MAP))?;
        let maglev =
            Array::try_from(Map::Array(self.open_map(L4_MAGLEV_MAP)?)).map_err(map_error(L4_MAGLEV_MAP))?;
        let flows = HashMap::try_from(Map::LruHashMap(self.open_map(L4_FLOWS_MAP)?))
            .map_err(map_error(L4_FLOWS_MAP))?;
        Ok(L4Maps::new(services, settings, backends, maglev, flows))
    }

    /// A descriptor of its own on the loaded map `name` (its owner writes through it while the
    /// program keeps reading the same kernel map).
    fn open_map(&self, name: &'static str) -> Result<MapData> {
        MapData::from_id(self.map_id(name)?).map_err(map_error(name))
    }

    /// Every L4 flow XDP has placed: its client-side 5-tuple, endpoint and node port.
    pub fn l4_flows(&self) -> Result<Vec<(FlowKey, lb_common::L4Flow)>> {
        let name = lb_common::L4_FLOWS_MAP;
        let map_error = |source| Error::Map { name, source };
        let map = self.ebpf.map(name).ok_or(Error::Missing(name))?;
        let flows = HashMap::<_, FlowKey, lb_common::L4Flow>::try_from(map).map_err(map_error)?;
        flows.iter().map(|entry| entry.map_err(map_error)).collect()
    }

    /// A heartbeat handle for `worker`, with its own file descriptor on the heartbeat array.
    pub fn heartbeat_writer(&self, worker: u32) -> Result<HeartbeatWriter> {
        HeartbeatWriter::open(self.map_id(HEARTBEATS_MAP)?, worker)
    }

    /// Starts the thread that keeps `steering` in line with the heartbeats of `workers`.
    pub fn start_supervisor(
        &self,
        steering: Steering,
        workers: u32,
        timing: HealthTiming,
    ) -> Result<Supervisor> {
        let map_error = |source| Error::Map { name: HEARTBEATS_MAP, source };
        let data = MapData::from_id(self.map_id(HEARTBEATS_MAP)?).map_err(map_error)?;
        let heartbeats = Array::try_from(Map::Array(data)).map_err(map_error)?;
        Supervisor::start(steering, heartbeats, workers, timing).map_err(Error::Thread)
    }

    /// Reads the per-CPU counters and sums them.
    pub fn counters(&self) -> Result<Counters> {
        let map = self.ebpf.map(STATS_MAP).ok_or(Error::Missing(STATS_MAP))?;
        let stats =
            PerCpuArray::<_, u64>::try_from(map).map_err(|source| Error::Map { name: STATS_MAP, source })?;
        read_counters(&stats)
    }

    /// A reader of the counters with its own map descriptor, for another thread (the admin
    /// server) to read while this one keeps the programs.
    pub fn counters_reader(&self) -> Result<CountersReader> {
        let map_error = |source| Error::Map { name: STATS_MAP, source };
        let data = MapData::from_id(self.map_id(STATS_MAP)?).map_err(map_error)?;
        let stats = PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(map_error)?;
        Ok(CountersReader { stats })
    }

    /// Every conntrack entry: the flows XDP has steered and where to.
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowValue)>> {
        let map_error = |source| Error::Map { name: CONNTRACK_MAP, source };
        let map = self.ebpf.map(CONNTRACK_MAP).ok_or(Error::Missing(CONNTRACK_MAP))?;
        let conntrack = HashMap::<_, FlowKey, FlowValue>::try_from(map).map_err(map_error)?;
        conntrack.iter().map(|entry| entry.map_err(map_error)).collect()
    }

    /// Runs one frame through `program` with BPF_PROG_TEST_RUN, without any interface.
    /// Returns the verdict and the frame as the program left it. With `repeat > 1` the kernel
    /// does not restore the frame between runs: use it only for programs that do not rewrite.
    /// Threads may call it at once: each run happens on the calling thread's CPU, against the
    /// same maps, as packets on several receive queues would.
    pub fn test_run(&self, program: Program, frame: &[u8], repeat: u32) -> Result<TestRunOutput> {
        // Room for the frame plus any headroom the program may add later (encapsulation).
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::default()
        };
        let name = program.name();
        let loaded = self.ebpf.program(name).ok_or(Error::Missing(name))?;
        let result = match program {
            Program::Xdp | Program::XdpPass => <&Xdp>::try_from(loaded).and_then(|xdp| xdp.test_run(opts)),
            Program::TcEgress => <&SchedClassifier>::try_from(loaded).and_then(|tc| tc.test_run(opts)),
        }
        .map_err(|source| Error::Program { name, source })?;
        out.truncate(result.data_size_out as usize);
        Ok(TestRunOutput { verdict: result.return_value, frame: out, duration: result.duration })
    }

    /// `test_run(Program::Xdp, frame, 1)`.
    pub fn test_run_xdp(&self, frame: &[u8]) -> Result<TestRunOutput> {
        self.test_run(Program::Xdp, frame, 1)
    }

    fn map_id(&self, name: &'static str) -> Result<u32> {
        let map = self.ebpf.map(name).ok_or(Error::Missing(name))?;
        let data = match map {
            Map::Array(data)
            | Map::HashMap(data)
            | Map::LruHashMap(data)
            | Map::PerCpuArray(data)
            | Map::LpmTrie(data) => data,
            _ => return Err(Error::Missing(name)),
        };
        Ok(data.info().map_err(|source| Error::Map { name, source })?.id())
    }

    fn take_map<T>(
        &mut self,
        name: &'static str,
        convert: impl FnOnce(Map) -> Result<T, aya::maps::MapError>,
    ) -> Result<T> {
        let map = self.ebpf.take_map(name).ok_or(Error::Missing(name))?;
        convert(map).map_err(|source| Error::Map { name, source })
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        if let Err(e) = self.detach_all() {
            tracing::warn!(error = %e, "detaching on shutdown failed; the kernel detaches when the links close");
        }
    }
}

/// What BPF_PROG_TEST_RUN returned for one frame.
#[derive(Debug, Clone)]
pub struct TestRunOutput {
    /// The program's return value: an XDP action (`XDP_PASS` = 2, `XDP_DROP` = 1,
    /// `XDP_ABORTED` = 0) or a TC action.
    pub verdict: u32,
    pub frame: Vec<u8>,
    /// The kernel's average time per run.
    pub duration: std::time::Duration,
}

fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .ok_or(Error::Missing(name))?
        .try_into()
        .map_err(|source| Error::Program { name, source })
}

fn tc_program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier> {
    ebpf.program_mut(TC_EGRESS_PROGRAM)
        .ok_or(Error::Missing(TC_EGRESS_PROGRAM))?
        .try_into()
        .map_err(|source| Error::Program { name: TC_EGRESS_PROGRAM, source })
}

/// Attaches TC egress: TCX (a bpf_link) on kernels that have it; older kernels need the clsact
/// qdisc first, which is added only when the plain attach fails.
fn attach_tc_egress(ebpf: &mut Ebpf, interface: &str) -> Result<SchedClassifierLinkId> {
    let program = tc_program(ebpf)?;
    match program.attach(interface, TcAttachType::Egress) {
        Ok(link) => Ok(link),
        Err(_) => {
            let _ = tc::qdisc_add_clsact(interface);
            program
                .attach(interface, TcAttachType::Egress)
                .map_err(|source| Error::Program { name: TC_EGRESS_PROGRAM, source })
        }
    }
}
