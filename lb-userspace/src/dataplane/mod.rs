//! The kernel side as user space sees it: loading the embedded eBPF object, attaching and
//! detaching programs, and every map read and write. Nothing else in the daemon touches aya.

use std::{fmt, str::FromStr};

use aya::{
    Ebpf,
    maps::PerCpuArray,
    programs::{ProgramError, TestRun, TestRunOptions, Xdp, XdpMode, xdp::XdpLinkId},
};
use lb_common::{STATS_MAP, Stat, XDP_PROGRAM};

/// The eBPF object built from `lb-ebpf` by build.rs, embedded so one binary ships.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice-ebpf"));

/// Errors from the kernel side, each saying what to try.
#[derive(Debug, thiserror::Error)]
pub enum Error {
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
        "attaching XDP to {interface} in {mode} mode failed: {source}; retry with `--xdp-mode skb`, or start with --no-xdp"
    )]
    Attach {
        interface: String,
        mode: AttachMode,
        #[source]
        source: ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How the XDP program is attached to an interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Driver (native) mode where the NIC driver supports it, generic otherwise.
    #[default]
    Auto,
    /// Native XDP in the driver; fails on drivers without XDP support.
    Driver,
    /// Generic XDP in the stack; works on every interface, slower.
    Skb,
}

impl AttachMode {
    fn modes_to_try(self) -> &'static [XdpMode] {
        match self {
            AttachMode::Auto => &[XdpMode::Driver, XdpMode::Skb],
            AttachMode::Driver => &[XdpMode::Driver],
            AttachMode::Skb => &[XdpMode::Skb],
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Auto => "auto",
            AttachMode::Driver => "driver",
            AttachMode::Skb => "skb",
        })
    }
}

impl FromStr for AttachMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(AttachMode::Auto),
            "driver" | "native" => Ok(AttachMode::Driver),
            "skb" | "generic" => Ok(AttachMode::Skb),
            other => Err(format!("unknown XDP mode {other:?}; expected auto, driver or skb")),
        }
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

/// The loaded eBPF object. Dropping it detaches every program it attached: the links are
/// bpf_link file descriptors, so even a killed daemon leaves nothing attached.
pub struct Dataplane {
    ebpf: Ebpf,
    attachments: Vec<(Attachment, XdpLinkId)>,
}

impl Dataplane {
    /// Loads the embedded object and its XDP program into the kernel (verifier included).
    pub fn load() -> Result<Self> {
        let mut ebpf = Ebpf::load(EBPF_OBJECT).map_err(Error::Load)?;
        xdp_program(&mut ebpf)?.load().map_err(|source| Error::Program { name: XDP_PROGRAM, source })?;
        Ok(Dataplane { ebpf, attachments: Vec::new() })
    }

    /// Attaches the XDP program to `interface` in the current network namespace. In `Auto`
    /// mode driver mode is tried first and generic mode is the fallback.
    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<Attachment> {
        let program = xdp_program(&mut self.ebpf)?;
        let mut last_error = None;
        for &xdp_mode in mode.modes_to_try() {
            match program.attach(interface, xdp_mode) {
                Ok(link) => {
                    let attachment = Attachment { interface: interface.to_owned(), mode: xdp_mode };
                    self.attachments.push((attachment.clone(), link));
                    return Ok(attachment);
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(Error::Attach {
            interface: interface.to_owned(),
            mode,
            source: last_error.expect("every mode lists at least one XDP mode"),
        })
    }

    /// Where the XDP program is attached now.
    pub fn attachments(&self) -> impl Iterator<Item = &Attachment> {
        self.attachments.iter().map(|(a, _)| a)
    }

    /// Detaches the XDP program from every interface. Also done on drop.
    pub fn detach_all(&mut self) -> Result<()> {
        let program = xdp_program(&mut self.ebpf)?;
        for (_, link) in self.attachments.drain(..) {
            program.detach(link).map_err(|source| Error::Program { name: XDP_PROGRAM, source })?;
        }
        Ok(())
    }

    /// Reads the per-CPU counters and sums them.
    pub fn counters(&self) -> Result<Counters> {
        let map = self.ebpf.map(STATS_MAP).ok_or(Error::Missing(STATS_MAP))?;
        let stats =
            PerCpuArray::<_, u64>::try_from(map).map_err(|source| Error::Map { name: STATS_MAP, source })?;
        let mut counters = Counters::default();
        for stat in Stat::ALL {
            let per_cpu =
                stats.get(&stat.index(), 0).map_err(|source| Error::Map { name: STATS_MAP, source })?;
            counters.values[stat.index() as usize] = per_cpu.iter().sum();
        }
        Ok(counters)
    }

    /// Runs one frame through the XDP program with BPF_PROG_TEST_RUN, without any interface.
    /// Returns the verdict and the frame as the program left it.
    pub fn test_run_xdp(&mut self, frame: &[u8]) -> Result<TestRunOutput> {
        // Room for the frame plus any headroom the program may add later (encapsulation).
        let mut out = vec![0u8; frame.len() + 256];
        let program = xdp_program(&mut self.ebpf)?;
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat: 1,
            ..TestRunOptions::default()
        };
        let result = program.test_run(opts).map_err(|source| Error::Program { name: XDP_PROGRAM, source })?;
        out.truncate(result.data_size_out as usize);
        Ok(TestRunOutput { verdict: result.return_value, frame: out, duration: result.duration })
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        if let Err(e) = self.detach_all() {
            tracing::warn!(error = %e, "detaching XDP on shutdown failed; the kernel detaches it when the link closes");
        }
    }
}

/// What BPF_PROG_TEST_RUN returned for one frame.
#[derive(Debug, Clone)]
pub struct TestRunOutput {
    /// The XDP action (`XDP_PASS` = 2, `XDP_DROP` = 1, `XDP_TX` = 3, `XDP_ABORTED` = 0).
    pub verdict: u32,
    pub frame: Vec<u8>,
    pub duration: std::time::Duration,
}

fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    ebpf.program_mut(XDP_PROGRAM)
        .ok_or(Error::Missing(XDP_PROGRAM))?
        .try_into()
        .map_err(|source| Error::Program { name: XDP_PROGRAM, source })
}
