//! `cargo xtask test`: the unit tests, then the privileged suites in tests/ as root.

use std::process::Command;

use anyhow::bail;

use crate::build::{build_sluice, workspace_root};

fn cargo(args: &[&str], extra: &[String]) -> anyhow::Result<()> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root()).args(args);
    if !extra.is_empty() {
        cmd.arg("--").args(extra);
    }
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status()?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// The end-to-end suites under tests/tests, by name.
fn privileged_suites() -> Vec<String> {
    let dir = workspace_root().join("tests/tests");
    let mut suites: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.strip_suffix(".rs").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    suites.sort();
    suites
}

pub fn run(extra: &[String]) -> anyhow::Result<()> {
    // The suites run the real binary, so build it (and the eBPF object it embeds) first.
    build_sluice(false)?;
    eprintln!("xtask: == unit tests ==");
    // Every crate's own tests but lb-ebpf's (it only builds for the BPF target) and the
    // end-to-end suites of lb-tests, which come next.
    cargo(&["test", "--workspace", "--exclude", "lb-ebpf", "--exclude", "lb-tests"], extra)?;
    cargo(&["test", "--package", "lb-tests", "--lib"], extra)?;

    let suites = privileged_suites();
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!();
        eprintln!("##############################################################################");
        eprintln!("## SKIPPED: {} privileged suites need root (network namespaces, XDP):", suites.len());
        for suite in &suites {
            eprintln!("##   tests/tests/{suite}.rs");
        }
        eprintln!("## Run `sudo -E cargo xtask test` to run them.");
        eprintln!("##############################################################################");
        return Ok(());
    }
    eprintln!("xtask: == privileged end-to-end suites: {} ==", suites.join(", "));
    cargo(&["test", "--package", "lb-tests", "--test", "*"], extra)
}
