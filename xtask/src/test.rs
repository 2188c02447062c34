//! `cargo xtask test`: installs what the suites need, then runs the unit tests and every
//! end-to-end suite in tests/.
//!
//! The tests that need root (network namespaces, XDP) are marked
//! `#[ignore = "needs root ..."]`: as root they run (`--include-ignored`); without root the test
//! runner reports them as ignored, and the command then fails, naming them, unless
//! [`SKIP_PRIVILEGED`] is set. CI never sets it.

use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::{
    build::{build_sluice, workspace_root},
    prereqs::{self, Group},
};

/// Set to `1` to accept a run without root: the privileged tests are then reported as ignored
/// and the command succeeds.
pub const SKIP_PRIVILEGED: &str = "SLUICE_SKIP_PRIVILEGED_TESTS";

/// The ignored test that is not a test: cleanup.rs runs it in a child process of its own.
const HELPER_TESTS: &[&str] = &["child_role"];

fn cargo_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root()).args(args);
    cmd
}

fn cargo(args: &[&str], test_args: &[String]) -> anyhow::Result<()> {
    let mut cmd = cargo_command(args);
    if !test_args.is_empty() {
        cmd.arg("--").args(test_args);
    }
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status()?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// The ignored tests of the end-to-end suites (the privileged ones) that `extra`'s filter
/// selects, by name.
fn privileged_tests(extra: &[String]) -> anyhow::Result<Vec<String>> {
    let output = cargo_command(&["test", "--package", "lb-tests", "--test", "*", "--quiet", "--"])
        .args(["--list", "--ignored", "--format", "terse"])
        .args(extra)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot list the privileged tests")?;
    if !output.status.success() {
        bail!("listing the privileged tests failed with {}", output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.strip_suffix(": test"))
        .filter(|name| !HELPER_TESTS.contains(name))
        .map(str::to_owned)
        .collect())
}

pub fn run(extra: &[String]) -> anyhow::Result<()> {
    prereqs::ensure(&[Group::Build, Group::Suites, Group::Fuzz])?;
    // The suites run the real binary, so build it (and the eBPF object it embeds) first.
    build_sluice(false)?;
    eprintln!("xtask: == unit tests ==");
    // Every crate's own tests but lb-ebpf's (it only builds for the BPF target) and the
    // end-to-end suites of lb-tests, which come next.
    // sluice-fuzz's targets are libFuzzer programs, run by `crate::fuzz` below.
    cargo(
        &["test", "--workspace", "--exclude", "lb-ebpf", "--exclude", "lb-tests", "--exclude", "sluice-fuzz"],
        extra,
    )?;
    cargo(&["test", "--package", "lb-tests", "--lib"], extra)?;
    // Every fuzz target for a few seconds (its seeds and what earlier runs found): a finding
    // fails the run like a test. Skipped with a name filter, which selects tests, not targets.
    let fuzz_seconds = crate::fuzz::test_seconds();
    if extra.is_empty() && fuzz_seconds > 0 {
        eprintln!("xtask: == fuzz targets, {fuzz_seconds} s each ==");
        crate::fuzz::run(None, fuzz_seconds)?;
    }

    // Every suite runs even when an earlier one fails, so one run shows the whole state.
    let e2e = ["test", "--no-fail-fast", "--package", "lb-tests", "--test", "*"];
    if lb_tests::is_root() {
        eprintln!("xtask: == end-to-end suites, the privileged tests included ==");
        let mut args = vec!["--include-ignored".to_owned()];
        for helper in HELPER_TESTS {
            args.extend(["--skip".to_owned(), (*helper).to_owned()]);
        }
        args.extend_from_slice(extra);
        return cargo(&e2e, &args);
    }
    eprintln!("xtask: == end-to-end suites without root: the privileged tests are reported as ignored ==");
    cargo(&e2e, extra)?;
    let skipped = privileged_tests(extra)?;
    let opted_out = std::env::var(SKIP_PRIVILEGED).is_ok_and(|v| v == "1");
    eprintln!();
    eprintln!(
        "xtask: {} privileged tests did not run (they need root: network namespaces, XDP):",
        skipped.len()
    );
    for name in &skipped {
        eprintln!("xtask:   {name}");
    }
    if opted_out {
        eprintln!("xtask: {SKIP_PRIVILEGED}=1 is set: accepted; run `sudo -E cargo xtask test` to run them");
        return Ok(());
    }
    bail!(
        "{} privileged tests did not run: run `sudo -E cargo xtask test`, or set {SKIP_PRIVILEGED}=1 to accept \
         a run without them",
        skipped.len()
    )
}
