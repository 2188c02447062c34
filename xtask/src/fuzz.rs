//! `cargo xtask fuzz [TARGET] --seconds N`: builds the cargo-fuzz targets of `tests/fuzz/` (nightly,
//! libFuzzer) and runs each (or one) for a bounded time, then prints the executions and
//! coverage of each run. `cargo xtask test` runs every target for a few seconds the same way.
//!
//! Each run starts from the committed seeds (`tests/fuzz/seeds/TARGET`, read only) plus what earlier
//! runs on this machine found (`target/fuzz-corpus/TARGET`, where libFuzzer writes new inputs),
//! so the repository's corpus stays small and reviewed. A crash leaves its input under
//! `tests/fuzz/artifacts/TARGET/` (ignored by git) and fails the command with the command that
//! reproduces it.
//!
//! Built with coverage instrumentation but without a sanitizer (`-s none`): the code under test
//! is safe Rust, where ASan finds nothing a panic would not, and a build without it runs
//! several times more inputs per second. Debug assertions and overflow checks are on
//! (cargo-fuzz's default), fat LTO off (the workspace's release profile has it; it only slows
//! the build here), 16 codegen units. lb-userspace's build script skips the nested eBPF build
//! under `--cfg fuzzing`: no target loads a program.
//!
//! Cost on this machine kind (2 cores): see docs/RELIABILITY.md, "Fuzzing".

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, bail};

use crate::{
    build::workspace_root,
    prereqs::{self, Group},
};

/// Seconds per target in `cargo xtask test` unless [`TEST_SECONDS_ENV`] says otherwise.
pub const TEST_SECONDS: u64 = 5;

/// Seconds per target in `cargo xtask test` (0 skips fuzzing there).
pub const TEST_SECONDS_ENV: &str = "SLUICE_FUZZ_SECONDS";

/// What one bounded run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub executions: u64,
    /// libFuzzer's `cov:` (edges covered) and `ft:` (features) at the end.
    pub coverage: u64,
    pub features: u64,
    pub corpus: u64,
}

/// Where the fuzz crate lives (not cargo-fuzz's default `fuzz/`: the workspace's top level is
/// fixed, and tests/ holds what tests).
const FUZZ_DIR: &str = "tests/fuzz";

/// `rustup run nightly cargo fuzz SUBCOMMAND --fuzz-dir tests/fuzz ARGS` from the workspace
/// root, with the outer (stable) cargo's settings removed so the nightly toolchain is the one
/// used.
fn cargo_fuzz(subcommand: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.current_dir(workspace_root())
        .args(["run", "nightly", "cargo", "fuzz", subcommand, "--fuzz-dir", FUZZ_DIR])
        .args(args)
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env("CARGO_PROFILE_RELEASE_LTO", "false");
    cmd
}

/// The build options `build` and `run` share (cargo-fuzz rebuilds when they differ).
const BUILD_OPTIONS: [&str; 4] = ["--sanitizer", "none", "--codegen-units", "16"];

/// The targets `tests/fuzz/Cargo.toml` declares, as cargo-fuzz lists them.
pub fn targets() -> anyhow::Result<Vec<String>> {
    let output =
        cargo_fuzz("list", &[]).stderr(Stdio::inherit()).output().context("cannot run cargo fuzz list")?;
    if !output.status.success() {
        bail!("cargo fuzz list failed with {}", output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

fn seeds_dir(target: &str) -> PathBuf {
    workspace_root().join(FUZZ_DIR).join("seeds").join(target)
}

fn corpus_dir(target: &str) -> PathBuf {
    workspace_root().join("target").join("fuzz-corpus").join(target)
}

/// Reads libFuzzer's final lines: `#N DONE cov: C ft: F corp: K/...` and the
/// `stat::number_of_executed_units` of `-print_final_stats=1`.
pub fn parse_stats(log: &str) -> Stats {
    let mut stats = Stats::default();
    let field = |line: &str, name: &str| -> Option<u64> {
        let mut words = line.split_whitespace();
        words.find(|w| *w == name)?;
        words.next()?.split('/').next()?.parse().ok()
    };
    for line in log.lines() {
        if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            stats.executions = n.trim().parse().unwrap_or(stats.executions);
        }
        if line.starts_with('#') && line.contains(" cov: ") {
            stats.coverage = field(line, "cov:").unwrap_or(stats.coverage);
            stats.features = field(line, "ft:").unwrap_or(stats.features);
            stats.corpus = field(line, "corp:").unwrap_or(stats.corpus);
        }
    }
    stats
}

/// Runs `target` for `seconds` on one core; fails when libFuzzer found a crash.
fn run_target(target: &str, seconds: u64) -> anyhow::Result<Stats> {
    let corpus = corpus_dir(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("cannot create {}", corpus.display()))?;
    let seeds = seeds_dir(target);
    let mut args = Vec::from(BUILD_OPTIONS);
    args.push(target);
    let corpus_arg = corpus.to_string_lossy().into_owned();
    let seeds_arg = seeds.to_string_lossy().into_owned();
    args.push(&corpus_arg);
    if Path::new(&seeds).is_dir() {
        args.push(&seeds_arg);
    }
    let time = format!("-max_total_time={seconds}");
    args.extend(["--", &time, "-print_final_stats=1", "-max_len=4096", "-timeout=10", "-rss_limit_mb=2048"]);
    let mut cmd = cargo_fuzz("run", &args);
    eprintln!("xtask: running {cmd:?}");
    let output = cmd.stdout(Stdio::inherit()).output().with_context(|| format!("cannot run {cmd:?}"))?;
    let log = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        eprint!("{log}");
        bail!(
            "fuzz target {target} failed ({}); the input is under tests/fuzz/artifacts/{target}/ and \
             `rustup run nightly cargo fuzz run --fuzz-dir tests/fuzz -s none --codegen-units 16 {target} <that file>` \
             reproduces it",
            output.status
        );
    }
    Ok(parse_stats(&log))
}

/// `cargo xtask fuzz`: builds the targets, runs `only` (or all) for `seconds` each and prints
/// what each run did.
pub fn run(only: Option<&str>, seconds: u64) -> anyhow::Result<()> {
    prereqs::ensure(&[Group::Build, Group::Fuzz])?;
    let all = targets()?;
    let chosen: Vec<String> = match only {
        Some(name) if all.iter().any(|t| t == name) => vec![name.to_owned()],
        Some(name) => bail!("no fuzz target {name}; the targets are {}", all.join(", ")),
        None => all,
    };
    let mut build = Vec::from(BUILD_OPTIONS);
    if let [one] = chosen.as_slice() {
        build.push(one);
    }
    let mut cmd = cargo_fuzz("build", &build);
    eprintln!("xtask: running {cmd:?}");
    let started = Instant::now();
    let status = cmd.status().context("cannot run cargo fuzz build")?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    eprintln!("xtask: fuzz targets built in {} s", started.elapsed().as_secs());
    let started = Instant::now();
    let mut results = Vec::new();
    for target in &chosen {
        results.push((target, run_target(target, seconds)?));
    }
    eprintln!("xtask: fuzz targets ran for {} s in all", started.elapsed().as_secs());
    println!("{:<24} {:>12} {:>8} {:>8} {:>8}", "target", "executions", "cov", "ft", "corpus");
    for (target, s) in &results {
        println!("{target:<24} {:>12} {:>8} {:>8} {:>8}", s.executions, s.coverage, s.features, s.corpus);
    }
    Ok(())
}

/// The seconds per target `cargo xtask test` gives each fuzz target.
pub fn test_seconds() -> u64 {
    std::env::var(TEST_SECONDS_ENV).ok().and_then(|s| s.parse().ok()).unwrap_or(TEST_SECONDS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_stats_are_read() {
        let log = "#1024\tpulse  cov: 10 ft: 12 corp: 3/40b exec/s: 512 rss: 40Mb\n\
                   #20000\tDONE   cov: 812 ft: 2311 corp: 301/12Kb lim: 4096 exec/s: 6666 rss: 77Mb\n\
                   Done 20000 runs in 3 second(s)\n\
                   stat::number_of_executed_units: 20004\n\
                   stat::average_exec_per_sec:     6668\n";
        assert_eq!(parse_stats(log), Stats { executions: 20004, coverage: 812, features: 2311, corpus: 301 });
    }
}
