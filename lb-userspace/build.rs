//! Builds the kernel programs (`lb-ebpf`) with a nightly toolchain into `OUT_DIR`, so the
//! `sluice` binary embeds its own eBPF object and one binary ships.
//!
//! The toolchain is `SLUICE_EBPF_TOOLCHAIN` when set (the image build pins a dated nightly
//! there), else `nightly`. The nested build's output is shown only when it fails: aya-build,
//! which this replaces, echoed each of its ~70 `Compiling ...` lines as a cargo warning into
//! every first build.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

/// Names the rustup toolchain that builds the kernel programs.
const TOOLCHAIN_ENV: &str = "SLUICE_EBPF_TOOLCHAIN";
/// The kernel programs' binary target in lb-ebpf/Cargo.toml.
const EBPF_BINARY: &str = "sluice-ebpf";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed={TOOLCHAIN_ENV}");
    let toolchain = std::env::var(TOOLCHAIN_ENV).unwrap_or_else(|_| "nightly".to_owned());
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.join("../lb-ebpf");
    let ebpf_dir =
        ebpf_dir.canonicalize().with_context(|| format!("lb-ebpf not found at {}", ebpf_dir.display()))?;
    println!("cargo:rerun-if-changed={}", ebpf_dir.display());
    // lb-common is a dependency of lb-ebpf; a change there must rebuild the object too.
    println!("cargo:rerun-if-changed={}", manifest_dir.join("../lb-common/src").display());
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    if std::env::var_os("CARGO_CFG_FUZZING").is_some() {
        // The fuzz targets (`fuzz/`, built by cargo-fuzz with `--cfg fuzzing`) only call the
        // parsers and never load a program: an empty object spares them a nested nightly
        // build-std build of the kernel programs.
        return std::fs::write(out_dir.join(EBPF_BINARY), b"").context("cannot write the empty eBPF object");
    }
    if let Some((missing, watch)) = missing_tools(&toolchain) {
        // `cargo xtask setup` is the installer, and xtask links this crate (through the test
        // harness): on a fresh machine this build must succeed before anything can install
        // the tools. The binary then has no kernel programs and says so when asked to load
        // them (the workers serve without XDP); watching where the tools land makes the first
        // build after their install build the real object.
        println!(
            "cargo:warning=building without the XDP programs: {missing}. `cargo xtask setup` installs it; the next build then includes them"
        );
        for path in watch {
            println!("cargo:rerun-if-changed={}", path.display());
        }
        // bpf-linker may also arrive on PATH from elsewhere.
        println!("cargo:rerun-if-env-changed=PATH");
        return std::fs::write(out_dir.join(EBPF_BINARY), b"").context("cannot write the empty eBPF object");
    }
    let target = match std::env::var("CARGO_CFG_TARGET_ENDIAN")?.as_str() {
        "big" => "bpfeb-unknown-none",
        _ => "bpfel-unknown-none",
    };
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH")?;
    let arch = if arch.starts_with("riscv64") { "riscv64".to_owned() } else { arch };
    // Its own target directory: the outer cargo holds a lock on ours.
    let target_dir = out_dir.join("ebpf-target");
    let mut build = Command::new("rustup");
    build
        .args(["run", &toolchain, "cargo", "build", "--package", "lb-ebpf", "--bins", "--release"])
        .args(["--target", target, "-Z", "build-std=core", "--target-dir"])
        .arg(&target_dir)
        .current_dir(&ebpf_dir)
        // The flags aya-build passed: the architecture for aya-ebpf's cfgs, BTF for CO-RE.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            format!("--cfg=bpf_target_arch=\"{arch}\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf"),
        )
        // The outer build's compiler settings would pick the wrong toolchain.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    let output = build.output().with_context(|| {
        format!(
            "cannot run rustup to build the eBPF programs with {toolchain}; `cargo xtask setup` installs it"
        )
    })?;
    if !output.status.success() {
        // Cargo shows a failed build script's output: the nested build's, in full.
        eprint!("{}", String::from_utf8_lossy(&output.stdout));
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        bail!(
            "building the eBPF programs (lb-ebpf) with toolchain {toolchain} failed ({}); its output is above. \
             `cargo xtask setup` installs the nightly rust-src component and bpf-linker",
            output.status
        );
    }
    let built = target_dir.join(target).join("release").join(EBPF_BINARY);
    copy(&built, &out_dir.join(EBPF_BINARY))
}

/// What the nested build would miss, and the paths where the install will put it: bpf-linker
/// (looked up on `PATH` as rustc will, installed by `cargo install` into `$CARGO_HOME/bin`) and
/// the toolchain's `rust-src` component (for `-Z build-std`). A toolchain that cannot be run
/// is left to the build to report.
fn missing_tools(toolchain: &str) -> Option<(String, Vec<PathBuf>)> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")));
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("bpf-linker").is_file()));
    if !on_path {
        let installed = cargo_home.map(|home| home.join("bin").join("bpf-linker"));
        return Some(("bpf-linker is not installed".to_owned(), installed.into_iter().collect()));
    }
    let sysroot =
        Command::new("rustup").args(["run", toolchain, "rustc", "--print", "sysroot"]).output().ok()?;
    if !sysroot.status.success() {
        return None;
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    let core = sysroot.join("lib/rustlib/src/rust/library/core/Cargo.toml");
    if !core.is_file() {
        return Some((format!("the {toolchain} toolchain has no rust-src component"), vec![core]));
    }
    None
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::copy(from, to).with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    Ok(())
}
