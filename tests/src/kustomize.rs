//! The kustomize that renders `deploy/` for the deploy suite. deploy/ needs kustomize v4 or
//! later (directories in `resources:`, `patches:` with a target), which kubectl embeds from
//! 1.21 on. Debian bookworm's kubectl (kubernetes-client) is 1.20, so where no newer kubectl
//! is installed, `cargo xtask test` installs a standalone kustomize (xtask/src/prereqs.rs) and
//! this module picks it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::on_path;

/// The oldest kustomize major version that renders `deploy/`.
pub const MIN_MAJOR: u32 = 4;

/// A program that renders a kustomization directory to stdout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Renderer {
    /// `kubectl kustomize DIR`, kubectl 1.21 or later.
    Kubectl(PathBuf),
    /// `kustomize build DIR`, kustomize v4 or later.
    Standalone(PathBuf),
}

impl Renderer {
    /// The command that renders `dir`.
    pub fn command(&self, dir: &Path) -> Command {
        let mut cmd;
        match self {
            Renderer::Kubectl(kubectl) => {
                cmd = Command::new(kubectl);
                cmd.arg("kustomize");
            }
            Renderer::Standalone(kustomize) => {
                cmd = Command::new(kustomize);
                cmd.arg("build");
            }
        }
        cmd.arg(dir);
        cmd
    }
}

/// The first renderer found that can render `deploy/`: kubectl when it is 1.21 or later,
/// else a standalone kustomize v4 or later on PATH (or in ~/.cargo/bin, where the installer
/// puts it).
pub fn find() -> Option<Renderer> {
    if let Some(kubectl) = on_path("kubectl")
        && kubectl_minor(&kubectl).is_some_and(|minor| minor >= 21)
    {
        return Some(Renderer::Kubectl(kubectl));
    }
    let kustomize = on_path("kustomize").or_else(|| {
        let installed = install_dir()?.join("kustomize");
        installed.is_file().then_some(installed)
    })?;
    kustomize_major(&kustomize)
        .is_some_and(|major| major >= MIN_MAJOR)
        .then_some(Renderer::Standalone(kustomize))
}

/// Where the installer puts a standalone kustomize: cargo's bin directory, on PATH wherever
/// cargo is (as bpf-linker and cargo-fuzz are).
pub fn install_dir() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .map(|cargo_home| cargo_home.join("bin"))
}

fn stdout_of(cmd: &mut Command) -> Option<String> {
    let output = cmd.output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// kubectl's client minor version (`"minor": "32"`, or `"32+"` on some builds).
fn kubectl_minor(kubectl: &Path) -> Option<u32> {
    let json = stdout_of(Command::new(kubectl).args(["version", "--client", "-o", "json"]))?;
    let value: serde_json::Value = serde_json::from_str(&json).ok()?;
    let minor = value["clientVersion"]["minor"].as_str()?;
    minor.trim_end_matches('+').parse().ok()
}

/// kustomize's major version, from `kustomize version`: `v5.5.0`, or
/// `{Version:kustomize/v4.5.4 GitCommit:...}` from v4.
pub fn kustomize_major(kustomize: &Path) -> Option<u32> {
    parse_major(&stdout_of(Command::new(kustomize).arg("version"))?)
}

fn parse_major(version: &str) -> Option<u32> {
    version.match_indices('v').find_map(|(i, _)| {
        let digits: String = version[i + 1..].chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::parse_major;

    #[test]
    fn kustomize_versions_are_read() {
        assert_eq!(parse_major("v5.5.0\n"), Some(5));
        assert_eq!(
            parse_major(
                "{Version:kustomize/v4.5.4 GitCommit:cf3a452ddd6f83945d39d582243b8592ec627ae3 GoOs:linux}"
            ),
            Some(4)
        );
        assert_eq!(parse_major("{Version:unknown GoOs:linux}"), None);
    }
}
