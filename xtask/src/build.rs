//! Building: the eBPF object (through lb-userspace's build script, so the object reported is
//! exactly the one the binary embeds) and the `sluice` binary.

use std::{
    io::BufReader,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, bail};
use cargo_metadata::Message;

use crate::prereqs;

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is inside the workspace").to_path_buf()
}

/// Builds lb-userspace and returns (the `sluice` binary, the embedded eBPF object).
fn cargo_build(release: bool) -> anyhow::Result<(PathBuf, PathBuf)> {
    prereqs::ensure(&[prereqs::Group::Build])?;
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root())
        .args([
            "build",
            "--package",
            "lb-userspace",
            "--bin",
            "sluice",
            "--message-format=json-render-diagnostics",
        ])
        .stdout(Stdio::piped());
    if release {
        cmd.arg("--release");
    }
    let mut child = cmd.spawn().context("cannot run cargo build")?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let (mut object, mut binary) = (None, None);
    for message in Message::parse_stream(BufReader::new(stdout)) {
        match message.context("cargo printed invalid JSON")? {
            Message::BuildScriptExecuted(script) if script.package_id.repr.contains("lb-userspace") => {
                object = Some(script.out_dir.join("sluice-ebpf").into_std_path_buf());
            }
            Message::CompilerArtifact(artifact) if artifact.target.name == "sluice" => {
                binary = artifact.executable.map(|p| p.into_std_path_buf());
            }
            _ => {}
        }
    }
    if !child.wait()?.success() {
        bail!("cargo build of lb-userspace failed (see the errors above)");
    }
    let object = object.context("cargo did not report lb-userspace's build script output")?;
    let binary = binary.context("cargo did not report the sluice binary")?;
    check_bpf_elf(&object)?;
    Ok((binary, object))
}

/// Builds and returns the eBPF object's path, after checking that it is a BPF ELF.
pub fn build_ebpf(release: bool) -> anyhow::Result<PathBuf> {
    cargo_build(release).map(|(_, object)| object)
}

/// Builds and returns the `sluice` binary's path.
pub fn build_sluice(release: bool) -> anyhow::Result<PathBuf> {
    cargo_build(release).map(|(binary, _)| binary)
}

/// ELF magic, 64-bit, little-endian, machine EM_BPF (247).
fn check_bpf_elf(path: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    const EM_BPF: u16 = 247;
    let ok = bytes.len() > 20
        && bytes[..4] == *b"\x7fELF"
        && bytes[4] == 2
        && bytes[5] == 1
        && u16::from_le_bytes([bytes[18], bytes[19]]) == EM_BPF;
    if !ok {
        bail!("{} is not a little-endian 64-bit eBPF ELF object", path.display());
    }
    Ok(())
}
