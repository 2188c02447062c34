//! The `sluice` command line: argument parsing and the subcommands.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use std::time::Duration;

use crate::{
    config::Config,
    dataplane::{AttachMode, Dataplane, HealthTiming, HeartbeatWriter, Protocol, Service, Supervisor},
    proxy::{WorkerOptions, Workers},
};

#[derive(Debug, Parser)]
#[command(name = "sluice", version, about = "eBPF-assisted hybrid L4/L7 load balancer")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the load balancer until SIGINT or SIGTERM.
    Run(RunArgs),
    /// Validate a configuration file; prints every error with line:column and exits 1 on error.
    Check {
        /// The YAML configuration file to validate.
        file: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// YAML configuration file; without it the built-in configuration is served.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Do not load or attach XDP: workers share one SO_REUSEPORT listener and nothing else changes.
    #[arg(long)]
    pub no_xdp: bool,
    /// Number of worker threads (overrides the file; 0 = one per CPU).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Interface to attach XDP to (repeatable; overrides the file's xdp.interfaces).
    #[arg(long = "interface", short = 'i')]
    pub interfaces: Vec<String>,
    /// XDP attach mode: auto tries driver mode first and falls back to generic (skb).
    #[arg(long)]
    pub xdp_mode: Option<AttachMode>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run(args),
        Command::Check { file } => match Config::from_file(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    init_logging(args.log_format);
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::builtin(),
    };
    if let Some(workers) = args.workers {
        config.workers = workers;
    }
    if !args.interfaces.is_empty() {
        config.xdp.interfaces = args.interfaces.clone();
    }
    if let Some(mode) = args.xdp_mode {
        config.xdp.mode = mode;
    }
    if args.no_xdp {
        config.xdp.enabled = false;
    }

    let mut options = WorkerOptions::shared(config.listen, config.worker_count());
    let kernel = match config.xdp.enabled.then(|| KernelPath::start(&config)).flatten() {
        Some((kernel, heartbeats)) => {
            options.own_port_base = Some(config.xdp.worker_port_base);
            options.heartbeats = heartbeats;
            options.heartbeat_period = kernel.timing.period();
            Some(kernel)
        }
        None => None,
    };
    let workers = Workers::start(options).with_context(|| format!("cannot listen on {}", config.listen))?;
    // Steer only once every worker is accepting on its own port.
    let kernel = kernel.and_then(|kernel| kernel.steer(&config, workers.len()));
    tracing::info!(listen = %workers.local_addr(), workers = workers.len(), xdp = kernel.is_some(), "sluice is serving");

    wait_for_shutdown_signal()?;
    tracing::info!("shutting down");
    if let Some(kernel) = kernel {
        kernel.stop()?;
    }
    workers.stop();
    Ok(ExitCode::SUCCESS)
}

/// The kernel path: the loaded object, its attachments and the health supervisor. It is an
/// accelerator, not a requirement: when any step fails the reason is logged and the workers
/// serve without it.
struct KernelPath {
    dataplane: Dataplane,
    timing: HealthTiming,
    supervisor: Option<Supervisor>,
}

impl KernelPath {
    /// Loads the programs and opens one heartbeat handle per worker.
    fn start(config: &Config) -> Option<(KernelPath, Vec<HeartbeatWriter>)> {
        let disabled = |e: &dyn std::fmt::Display| {
            tracing::warn!(error = %e, "XDP disabled; serving without the kernel path");
        };
        let dataplane = Dataplane::load().inspect_err(|e| disabled(e)).ok()?;
        let heartbeats: Result<Vec<_>, _> =
            (0..config.worker_count() as u32).map(|w| dataplane.heartbeat_writer(w)).collect();
        let heartbeats = heartbeats.inspect_err(|e| disabled(e)).ok()?;
        let timing = HealthTiming { stall_after: Duration::from_millis(config.xdp.heartbeat_timeout_ms) };
        Some((KernelPath { dataplane, timing, supervisor: None }, heartbeats))
    }

    /// Installs the service, starts health supervision and attaches to the interfaces.
    fn steer(mut self, config: &Config, workers: usize) -> Option<KernelPath> {
        let disabled = |e: &dyn std::fmt::Display| {
            tracing::warn!(error = %e, "XDP disabled; serving without the kernel path");
        };
        let service = Service {
            addr: config.listen.ip(),
            port: config.listen.port(),
            protocol: Protocol::Tcp,
            worker_ports: (0..workers as u16).map(|i| config.xdp.worker_port_base + i).collect(),
        };
        let mut steering = self.dataplane.take_steering().inspect_err(|e| disabled(e)).ok()?;
        steering.install(vec![service]).inspect_err(|e| disabled(e)).ok()?;
        let supervisor = self
            .dataplane
            .start_supervisor(steering, workers as u32, self.timing)
            .inspect_err(|e| disabled(e))
            .ok()?;
        self.supervisor = Some(supervisor);
        for interface in &config.xdp.interfaces {
            match self.dataplane.attach(interface, config.xdp.mode) {
                Ok(attachment) => tracing::info!(interface, mode = ?attachment.mode, "xdp attached"),
                Err(e) => {
                    disabled(&e);
                    return None;
                }
            }
        }
        Some(self)
    }

    /// Logs the counters, detaches and stops supervision.
    fn stop(mut self) -> anyhow::Result<()> {
        match self.dataplane.counters() {
            Ok(counters) => {
                let summary: Vec<String> =
                    counters.iter().map(|(stat, value)| format!("{}={value}", stat.name())).collect();
                tracing::info!(counters = %summary.join(" "), "xdp counters at shutdown");
            }
            Err(e) => tracing::warn!(error = %e, "cannot read XDP counters"),
        }
        self.dataplane.detach_all().context("detaching XDP")?;
        tracing::info!("xdp detached");
        if let Some(supervisor) = self.supervisor.take() {
            supervisor.stop();
        }
        Ok(())
    }
}

fn wait_for_shutdown_signal() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bad_xdp_mode_flag_is_rejected() {
        let err = Cli::try_parse_from(["sluice", "run", "--xdp-mode", "turbo"]).unwrap_err();
        assert!(err.to_string().contains("unknown XDP mode"), "{err}");
    }
}
