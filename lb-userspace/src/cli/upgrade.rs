//! Zero-downtime binary upgrades: `sluice upgrade --instance NAME` (or SIGUSR2 to the running
//! process) starts the new binary with the same arguments, hands it every listening socket
//! (`handover`) over a socket pair, and waits until it says it serves; the new process reuses
//! the pinned maps and links (`dataplane::pin`). Then the old process stops accepting, drains
//! and exits. If the new one exits, fails or is not ready in time, it is killed and the old one
//! serves on (logged and counted). One upgrade at a time: requests during one are refused.
//!
//! An instance's control socket is `<run-dir>/<instance>.sock` (handed over too), its pins
//! `<bpffs>/sluice/<instance>/`. `sluice cleanup --instance NAME` removes what a killed
//! instance left.

use std::{
    io::{BufRead, BufReader, Write},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::{
    dataplane::pin::{self, PinOptions},
    handover::{CHANNEL_ENV, CHANNEL_FD, Channel, Inherited, Outcome},
    node::{Node, StartOptions},
};

/// How long a new process may take to receive its sockets.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Naming an instance (needed for upgrades).
#[derive(Debug, Clone, clap::Args)]
pub struct InstanceArgs {
    /// Name of this instance (letters, digits, `-`, `_`): enables zero-downtime upgrades
    /// (`sluice upgrade --instance NAME`, or SIGUSR2) through a control socket in --run-dir and
    /// the kernel side pinned under --bpffs.
    #[arg(long, value_parser = instance_name)]
    pub instance: Option<String>,
    /// Directory of the instances' control sockets.
    #[arg(long, default_value = "/run/sluice", value_name = "DIR")]
    pub run_dir: PathBuf,
    /// The bpffs mount the pins go under (mounted there when it is not bpffs yet).
    #[arg(long, default_value = "/sys/fs/bpf", value_name = "DIR")]
    pub bpffs: PathBuf,
}

/// `sluice upgrade`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpgradeArgs {
    #[arg(long, value_parser = instance_name)]
    pub instance: String,
    #[arg(long, default_value = "/run/sluice", value_name = "DIR")]
    pub run_dir: PathBuf,
    /// The new binary (default: the running binary's path, which a package or a copy may have
    /// replaced since it started).
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// How long the new process may take to serve before the upgrade is abandoned.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub timeout_seconds: u64,
}

/// `sluice cleanup`.
#[derive(Debug, Clone, clap::Args)]
pub struct CleanupArgs {
    #[arg(long, value_parser = instance_name)]
    pub instance: String,
    #[arg(long, default_value = "/run/sluice", value_name = "DIR")]
    pub run_dir: PathBuf,
    #[arg(long, default_value = "/sys/fs/bpf", value_name = "DIR")]
    pub bpffs: PathBuf,
}

fn instance_name(value: &str) -> Result<String, String> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok { Ok(value.to_owned()) } else { Err(format!("{value:?}: use 1-64 letters, digits, '-' or '_'")) }
}

fn control_path(run_dir: &Path, instance: &str) -> PathBuf {
    run_dir.join(format!("{instance}.sock"))
}

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    binary: Option<PathBuf>,
    timeout_seconds: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Reply {
    ok: bool,
    pid: Option<u32>,
    error: Option<String>,
}

/// `sluice upgrade`: asks the instance to upgrade and prints the outcome.
pub fn request(args: UpgradeArgs) -> anyhow::Result<ExitCode> {
    let path = control_path(&args.run_dir, &args.instance);
    let mut stream = std::os::unix::net::UnixStream::connect(&path).with_context(|| {
        format!(
            "cannot reach instance {} at {}; is `sluice run --instance {}` running?",
            args.instance,
            path.display(),
            args.instance
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(args.timeout_seconds + 15)))?;
    let request = Request { binary: args.binary, timeout_seconds: args.timeout_seconds };
    writeln!(stream, "{}", serde_json::to_string(&request)?)?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).context("waiting for the upgrade's outcome")?;
    let reply: Reply = serde_json::from_str(&line).with_context(|| format!("unexpected answer {line:?}"))?;
    match reply {
        Reply { ok: true, pid: Some(pid), .. } => {
            println!("upgraded: the new process (pid {pid}) serves; the old one drains and exits");
            Ok(ExitCode::SUCCESS)
        }
        Reply { error, .. } => {
            eprintln!("upgrade failed: {}", error.unwrap_or_default());
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `sluice cleanup`: removes what a killed instance left: its control socket and its pins
/// (unpinning the links detaches XDP and TC).
pub fn cleanup(args: CleanupArgs) -> anyhow::Result<ExitCode> {
    let path = control_path(&args.run_dir, &args.instance);
    anyhow::ensure!(
        std::os::unix::net::UnixStream::connect(&path).is_err(),
        "instance {} is running ({} answers); stop it instead",
        args.instance,
        path.display()
    );
    let socket = std::fs::remove_file(&path).is_ok();
    let dir = pin::instance_dir(&args.bpffs, &args.instance);
    let pins = pin::clear(&dir).with_context(|| format!("removing {}", dir.display()))?;
    println!(
        "instance {}: removed {pins} pins and {} control socket",
        args.instance,
        if socket { "its" } else { "no" }
    );
    Ok(ExitCode::SUCCESS)
}

/// The upgrade side of `sluice run`, prepared before the node starts.
pub struct Setup {
    instance: String,
    control_path: PathBuf,
    control: std::os::unix::net::UnixListener,
    /// Set in a process started by an upgrade: where to say it serves (or why it failed).
    channel: Option<Channel>,
    inherited: Option<Arc<Inherited>>,
    pins: PinOptions,
}

impl Setup {
    /// Reads the handover (when started by an upgrade) and takes or binds the control socket.
    /// Without `--instance` there is nothing to set up.
    pub fn prepare(args: &InstanceArgs) -> anyhow::Result<Option<Setup>> {
        let channel = Channel::from_env().context("reading the handover channel")?;
        let result = Self::build(args, channel.as_ref());
        match (result, channel) {
            (Ok(None), Some(_)) => {
                anyhow::bail!("started by an upgrade ({CHANNEL_ENV} set) without --instance")
            }
            (Ok(None), None) => Ok(None),
            (Ok(Some(mut setup)), channel) => {
                setup.channel = channel;
                Ok(Some(setup))
            }
            (Err(e), channel) => {
                if let Some(channel) = channel {
                    let _ = channel.send_failed(&super::render_error(&e));
                }
                Err(e)
            }
        }
    }

    fn build(args: &InstanceArgs, channel: Option<&Channel>) -> anyhow::Result<Option<Setup>> {
        let Some(instance) = args.instance.clone() else { return Ok(None) };
        let inherited = match channel {
            Some(channel) => Some(Arc::new(Inherited::new(
                channel.receive_sockets(RECEIVE_TIMEOUT).context("receiving the listening sockets")?,
            ))),
            None => None,
        };
        let control_path = control_path(&args.run_dir, &instance);
        let control = match inherited.as_ref().and_then(|i| i.take_unix("control")) {
            Some(control) => control,
            None => bind_control(&control_path, &instance)?,
        };
        let pins = PinOptions::new(&args.bpffs, &instance, channel.is_some());
        Ok(Some(Setup { instance, control_path, control, channel: None, inherited, pins }))
    }

    /// How the node starts: on the inherited sockets and pins; an upgraded process in
    /// Kubernetes mode holds its accept loops until it has the cluster's routes.
    pub fn start_options(&self, kubernetes: bool) -> StartOptions {
        StartOptions {
            inherited: self.inherited.clone(),
            pins: Some(self.pins.clone()),
            hold_accepting: kubernetes && self.channel.is_some(),
        }
    }

    /// Tells the old process this one failed to start (it serves on).
    pub fn report_failure(&self, error: &anyhow::Error) {
        if let Some(channel) = &self.channel {
            let _ = channel.send_failed(&super::render_error(error));
        }
    }

    /// Checks that an upgraded node took over everything the old one served with: a kernel
    /// path that did not come up would leave the pinned XDP steering new connections to
    /// worker ports nobody listens on once the old process exits.
    pub fn check_started(&self, node: &Node, config: &crate::config::Config) -> anyhow::Result<()> {
        if self.channel.is_none() {
            return Ok(());
        }
        let wanted = if config.xdp.enabled { config.xdp.interfaces.len() } else { 0 };
        let attached = node.dataplane().map_or(0, |d| d.attachments().count());
        anyhow::ensure!(
            attached == wanted,
            "the kernel path did not take over ({attached} of {wanted} interfaces); see the warning above"
        );
        if let Some(inherited) = &self.inherited {
            let left = inherited.leftover();
            if !left.is_empty() {
                tracing::warn!(sockets = ?left, "handed-over sockets the new configuration does not use; they close");
            }
        }
        Ok(())
    }

    /// Serves upgrade requests until one hands over (returns the new process's pid). An
    /// upgraded process first waits until its node serves, then opens its accept loops and
    /// tells its predecessor.
    pub async fn serve(&mut self, node: &Node) -> anyhow::Result<u32> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut usr2 = signal(SignalKind::user_defined2())?;
        self.control.set_nonblocking(true)?;
        let control = tokio::net::UnixListener::from_std(self.control.try_clone()?)?;
        if let Some(channel) = self.channel.take() {
            while !node.serving() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            node.open_accepting();
            node.own_pins();
            self.inherited = None;
            channel.send_ready().context("telling the old process this one serves")?;
            tracing::info!(instance = %self.instance, "upgrade: serving; the old process drains and exits");
        }
        loop {
            let (request, reply_to) = tokio::select! {
                _ = usr2.recv() => (Request { binary: None, timeout_seconds: 30 }, None),
                accepted = control.accept() => match accepted {
                    Ok((stream, _)) => match read_request(stream).await {
                        Some((request, stream)) => (request, Some(stream)),
                        None => continue,
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "control socket accept failed");
                        continue;
                    }
                },
            };
            let outcome = self.upgrade(node, request, &control, &mut usr2).await;
            let stats = node.upgrades();
            let reply = match &outcome {
                Ok(pid) => {
                    stats.succeeded.fetch_add(1, Ordering::Relaxed);
                    Reply { ok: true, pid: Some(*pid), error: None }
                }
                Err(e) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "upgrade failed; this process serves on");
                    Reply { ok: false, pid: None, error: Some(e.clone()) }
                }
            };
            if let Some(stream) = reply_to {
                send_reply(stream, &reply).await;
            }
            if let Ok(pid) = outcome {
                return Ok(pid);
            }
        }
    }

    /// One upgrade: start, hand over, wait for ready; on failure kill the new process and
    /// resume.
    async fn upgrade(
        &self,
        node: &Node,
        request: Request,
        control: &tokio::net::UnixListener,
        usr2: &mut tokio::signal::unix::Signal,
    ) -> Result<u32, String> {
        let binary = match request.binary {
            Some(binary) => binary,
            None => running_binary().map_err(|e| format!("cannot find the running binary: {e}"))?,
        };
        let timeout = Duration::from_secs(request.timeout_seconds.clamp(1, 600));
        let (channel, theirs) = Channel::pair().map_err(|e| format!("socketpair: {e}"))?;
        let mut command = std::process::Command::new(&binary);
        command
            .args(std::env::args_os().skip(1))
            .env(CHANNEL_ENV, CHANNEL_FD.to_string())
            .stdin(std::process::Stdio::null());
        let raw = theirs.as_raw_fd();
        // SAFETY: the closure only calls dup2/fcntl (async-signal-safe) on a descriptor that
        // stays open in the parent until spawn returns.
        unsafe { command.pre_exec(move || crate::handover::install_in_child(raw)) };
        node.pause_supervision();
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                node.resume_supervision();
                return Err(format!("cannot start {}: {e}", binary.display()));
            }
        };
        drop(theirs);
        let pid = child.id();
        tracing::info!(pid, binary = %binary.display(), "upgrade: new process started; handing over the sockets");
        let l4_sockets = node.l4_handover_sockets();
        let mut sockets = node.handover_sockets();
        sockets.extend(l4_sockets.iter().map(|(key, fd)| (key.clone(), std::os::fd::AsFd::as_fd(fd))));
        sockets.push(("control".to_owned(), std::os::fd::AsFd::as_fd(&self.control)));
        let outcome = match channel.send_sockets(&sockets) {
            Err(e) => Outcome::Failed(format!("the handover failed: {e}")),
            Ok(()) => {
                let wait = tokio::task::spawn_blocking(move || channel.wait_outcome(timeout));
                refuse_others_until(wait, pid, control, usr2, node).await
            }
        };
        match outcome {
            Outcome::Ready { .. } => Ok(pid),
            Outcome::Failed(why) => {
                let _ = child.kill();
                let status = tokio::task::spawn_blocking(move || child.wait()).await;
                node.resume_supervision();
                let status = match status {
                    Ok(Ok(status)) => status.to_string(),
                    _ => "unknown".to_owned(),
                };
                Err(format!("the new process {} (pid {pid}, {status}): {why}", binary.display()))
            }
        }
    }

    /// After a handover the control socket belongs to the new process; otherwise this
    /// process removes its file.
    pub fn close(self, handed_over: bool) {
        if !handed_over {
            let _ = std::fs::remove_file(&self.control_path);
        }
    }
}

/// Waits for the new process's verdict, refusing every other upgrade request meanwhile.
async fn refuse_others_until(
    mut wait: tokio::task::JoinHandle<Outcome>,
    pid: u32,
    control: &tokio::net::UnixListener,
    usr2: &mut tokio::signal::unix::Signal,
    node: &Node,
) -> Outcome {
    let refusal = format!("an upgrade is in progress (new process pid {pid}); try again when it ends");
    loop {
        tokio::select! {
            outcome = &mut wait => return outcome.unwrap_or_else(|e| Outcome::Failed(e.to_string())),
            _ = usr2.recv() => {
                node.upgrades().refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(pid, "SIGUSR2 refused: an upgrade is in progress");
            }
            accepted = control.accept() => {
                // The request is read first: a reply to a client still writing it would reset.
                if let Ok((stream, _)) = accepted
                    && let Some((_, stream)) = read_request(stream).await
                {
                    node.upgrades().refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(pid, "upgrade request refused: an upgrade is in progress");
                    let reply = Reply { ok: false, pid: None, error: Some(refusal.clone()) };
                    send_reply(stream, &reply).await;
                }
            }
        }
    }
}

async fn read_request(stream: tokio::net::UnixStream) -> Option<(Request, tokio::net::UnixStream)> {
    let mut reader = tokio::io::BufReader::new(stream);
    let mut line = String::new();
    let read = tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await;
    let stream = reader.into_inner();
    if !matches!(read, Ok(Ok(n)) if n > 0) {
        return None;
    }
    match serde_json::from_str(&line) {
        Ok(request) => Some((request, stream)),
        Err(e) => {
            let reply = Reply { ok: false, pid: None, error: Some(format!("bad request: {e}")) };
            send_reply(stream, &reply).await;
            None
        }
    }
}

async fn send_reply(mut stream: tokio::net::UnixStream, reply: &Reply) {
    let mut line = serde_json::to_string(reply).unwrap_or_default();
    line.push('\n');
    let _ = stream.write_all(line.as_bytes()).await;
}

/// The running binary's path: `/proc/self/exe`, whose target says `(deleted)` when the file was
/// replaced since; the path then names the replacement.
fn running_binary() -> std::io::Result<PathBuf> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let text = exe.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => exe,
    })
}

/// Binds the control socket; a socket file that answers means the instance runs already.
fn bind_control(path: &Path, instance: &str) -> anyhow::Result<std::os::unix::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if path.exists() {
        anyhow::ensure!(
            std::os::unix::net::UnixStream::connect(path).is_err(),
            "instance {instance} is already running ({} answers): upgrade it with `sluice upgrade --instance {instance}`, or name this one differently",
            path.display()
        );
        std::fs::remove_file(path).with_context(|| format!("removing the stale {}", path.display()))?;
    }
    std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("cannot bind the control socket {}", path.display()))
}
