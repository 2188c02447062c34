//! The `sluice` command line: argument parsing and the subcommands.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};

use crate::{config::Config, dataplane::AttachMode, node::Node};

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

    let node = Node::start(&config)?;
    wait_for_shutdown_signal()?;
    tracing::info!("shutting down");
    node.stop()?;
    Ok(ExitCode::SUCCESS)
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
