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

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::copy(from, to).with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    Ok(())
}
