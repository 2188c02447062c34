//! The eBPF toolchain prerequisites: checked every time (fast when all present), installed when
//! missing and we are root on Debian, otherwise printed as the exact commands to run.

use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// Debian packages: LLVM 22 for bpf-linker, and iproute2 for the test topologies.
const APT_PACKAGES: &[&str] = &["llvm-22-dev", "libpolly-22-dev", "zlib1g-dev", "libzstd-dev", "iproute2"];
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

fn quiet(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).stderr(Stdio::null()).output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

fn missing_apt_packages() -> Vec<&'static str> {
    APT_PACKAGES
        .iter()
        .copied()
        .filter(|pkg| {
            !quiet("dpkg-query", &["-W", "-f=${Status}", pkg])
                .is_some_and(|s| s.contains("install ok installed"))
        })
        .collect()
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
    let Some(path) = quiet("sh", &["-c", "command -v bpf-linker"]) else { return false };
    let path = path.trim();
    if quiet(path, &["--version"]).is_none() {
        return false;
    }
    quiet("ldd", &[path]).is_some_and(|libs| libs.contains("libLLVM.so.22") || libs.contains("libLLVM-22"))
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

fn bpf_linker_install() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args([
        "install",
        "bpf-linker",
        "--locked",
        "--force",
        "--no-default-features",
        "--features",
        "llvm-22",
    ])
    .env("LLVM_PREFIX", LLVM_PREFIX)
    .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX);
    cmd
}

/// Ensures every prerequisite for building the eBPF object is present.
pub fn ensure() -> anyhow::Result<()> {
    let apt_missing = missing_apt_packages();
    let nightly = nightly_present();
    let rust_src = nightly && rust_src_present();
    let linker = bpf_linker_ok();
    if apt_missing.is_empty() && nightly && rust_src && linker {
        return Ok(());
    }
    if !nightly {
        bail!(
            "the nightly toolchain is missing; this machine kind ships it preinstalled. Install it with \
             `rustup toolchain install nightly --component rust-src` where a toolchain can be fetched"
        );
    }
    let can_install = is_root() && std::path::Path::new("/etc/debian_version").exists();
    if !can_install {
        let mut steps = Vec::new();
        if !apt_missing.is_empty() {
            steps.push(format!("sudo apt-get update && sudo apt-get install -y {}", apt_missing.join(" ")));
        }
        if !rust_src {
            steps.push("rustup component add rust-src --toolchain nightly".to_owned());
        }
        if !linker {
            steps.push(format!(
                "LLVM_PREFIX={LLVM_PREFIX} LLVM_SYS_221_PREFIX={LLVM_PREFIX} cargo install bpf-linker --locked --force --no-default-features --features llvm-22"
            ));
        }
        bail!("eBPF build prerequisites are missing; run:\n  {}", steps.join("\n  "));
    }
    if !apt_missing.is_empty() {
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
    Ok(())
}
