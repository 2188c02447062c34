//! `cargo xtask bench <what>`: the benchmarks. The measuring code lives in bench targets of the
//! lb-tests crate, which can use lb-userspace; xtask cannot, because building lb-userspace needs
//! the eBPF toolchain that xtask itself installs. So each benchmark here makes sure the
//! prerequisites exist, then runs its bench target through cargo.

use std::process::Command;

use anyhow::bail;
use clap::Subcommand;

use crate::{build::workspace_root, prereqs};

#[derive(Subcommand, Clone, Copy, Debug)]
pub enum BenchTarget {
    /// Nanoseconds per packet of the XDP program (BPF_PROG_TEST_RUN): non-service packet,
    /// new-flow SYN, established flow, against an XDP_PASS-only floor. Needs root.
    Xdp,
}

impl BenchTarget {
    /// The bench target in lb-tests (tests/benches/<name>.rs).
    fn target(self) -> &'static str {
        match self {
            BenchTarget::Xdp => "xdp",
        }
    }

    fn needs_root(self) -> bool {
        match self {
            BenchTarget::Xdp => true,
        }
    }
}

pub fn run(what: BenchTarget) -> anyhow::Result<()> {
    // Checked here too, before any build, so a non-root run fails in a second, not after one.
    if what.needs_root() && !lb_tests::is_root() {
        let name = what.target();
        bail!(
            "`cargo xtask bench {name}` needs root (loading BPF programs, BPF_PROG_TEST_RUN); \
             run `sudo -E cargo xtask bench {name}`"
        );
    }
    // lb-tests' bench targets build lb-userspace, whose build script builds the eBPF object.
    prereqs::ensure()?;
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root()).args(["bench", "--package", "lb-tests", "--bench", what.target()]);
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status()?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}
