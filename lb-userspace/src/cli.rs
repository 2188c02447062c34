//! The `sluice` command line: argument parsing and the subcommands.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};

use crate::{
    config::Config,
    dataplane::AttachMode,
    node::Node,
    provider::file::{FileProvider, Overrides, ReloadStats},
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
    let overrides = Overrides {
        workers: args.workers,
        interfaces: args.interfaces.clone(),
        xdp_mode: args.xdp_mode,
        no_xdp: args.no_xdp,
    };
    let provider = FileProvider::new(args.config.clone(), overrides);
    let config = provider.load()?;
    let node = Node::start(&config)?;
    let stats = ReloadStats::default();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(serve_until_signal(&provider, &node, &stats))?;
    tracing::info!("shutting down");
    node.stop()?;
    Ok(ExitCode::SUCCESS)
}

/// Waits for SIGINT or SIGTERM, reloading on SIGHUP and whenever the file changes.
async fn serve_until_signal(provider: &FileProvider, node: &Node, stats: &ReloadStats) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let watched = match provider.watch() {
        Ok(watched) => watched,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the configuration file; reload with SIGHUP");
            None
        }
    };
    let (_watcher, mut changes) = match watched {
        Some((watcher, changes)) => (Some(watcher), Some(changes)),
        None => (None, None),
    };
    loop {
        let changed = async {
            match changes.as_mut() {
                Some(changes) => changes.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = tokio::signal::ctrl_c() => return r.map_err(Into::into),
            _ = term.recv() => return Ok(()),
            _ = hangup.recv() => reload(provider, node, stats, "SIGHUP"),
            Some(()) = changed => reload(provider, node, stats, "file changed"),
        }
    }
}

/// Loads and applies the configuration; a bad one is refused and the old one keeps serving.
fn reload(provider: &FileProvider, node: &Node, stats: &ReloadStats, why: &str) {
    let result = provider
        .load()
        .map_err(|e| e.to_string())
        .and_then(|config| node.apply(&config).map_err(|e| e.to_string()));
    match result {
        Ok(generation) => {
            stats.record(true);
            tracing::info!(why, generation, "configuration reloaded");
        }
        Err(e) => {
            stats.record(false);
            tracing::error!(why, error = %e, "configuration refused; the previous one keeps serving");
        }
    }
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
