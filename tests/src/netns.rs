//! Network namespaces owned by a test: created with a unique name, deleted on drop (also when
//! the test fails or panics). Deleting a namespace removes every interface inside it.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, bail};

pub(crate) const NETNS_PREFIX: &str = "sluice-t-";

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// Runs `ip ARGS` and fails with its stderr when it fails.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("ip").args(args))
}

pub(crate) fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command.output().with_context(|| format!("cannot run {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// A network namespace that lives as long as this value.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `sluice-t-<pid>-<n>-<role>` with its loopback up.
    pub fn new(role: &str) -> anyhow::Result<Netns> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let name = format!("{NETNS_PREFIX}{}-{id}-{role}", std::process::id());
        ip(&["netns", "add", &name])?;
        let netns = Netns { name };
        ip(&["-n", &netns.name, "link", "set", "lo", "up"])?;
        Ok(netns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        run(self.command("sysctl").args(["-qw", &format!("{key}={value}")]))
    }

    /// Turns checksum offload off on `interface` (both directions; `ethtool -K IF tx off rx
    /// off`, without needing ethtool): the sender then computes every checksum in software
    /// and the receiver verifies it, where veth would otherwise carry partial checksums and
    /// mark what it delivers as already verified. A packet whose checksum a program got wrong
    /// is then dropped by the receiving kernel.
    pub fn checksum_offload_off(&self, interface: &str) -> anyhow::Result<()> {
        let interface = interface.to_owned();
        self.run(move || -> anyhow::Result<()> {
            // ETHTOOL_SRXCSUM, ETHTOOL_STXCSUM with data 0.
            for command in [0x15u32, 0x17] {
                ethtool_set(&interface, command, 0)?;
            }
            Ok(())
        })?
    }

    /// A command that runs inside the namespace (`ip netns exec`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Runs `f` on a new thread that has entered this namespace. Sockets created there stay in
    /// the namespace after `f` returns, so a listener or client built here can be used anywhere.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("cannot open {path}"))?;
        std::thread::spawn(move || -> anyhow::Result<T> {
            // SAFETY: setns with a valid namespace fd only changes this thread's network namespace.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns into {path}: {}", std::io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread inside the namespace panicked"))?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "delete", &self.name]) {
            eprintln!("warning: cleaning up namespace {}: {e:#}", self.name);
        }
    }
}

/// One `SIOCETHTOOL` set command with a `struct ethtool_value` on `interface`.
fn ethtool_set(interface: &str, command: u32, data: u32) -> anyhow::Result<()> {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    let mut value = EthtoolValue { cmd: command, data };
    // SAFETY: a zeroed ifreq is valid; the name is copied within its bounds below.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    anyhow::ensure!(interface.len() < request.ifr_name.len(), "interface name {interface:?} too long");
    for (slot, byte) in request.ifr_name.iter_mut().zip(interface.bytes()) {
        *slot = byte as libc::c_char;
    }
    request.ifr_ifru.ifru_data = (&raw mut value).cast();
    // SAFETY: a datagram socket only for the ioctl, closed below.
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    anyhow::ensure!(socket >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: `request` and the `value` it points to outlive the call.
    let result = unsafe { libc::ioctl(socket, SIOCETHTOOL as _, &raw mut request) };
    let error = std::io::Error::last_os_error();
    // SAFETY: the socket opened above.
    unsafe { libc::close(socket) };
    anyhow::ensure!(result == 0, "SIOCETHTOOL {command:#x} on {interface}: {error}");
    Ok(())
}
