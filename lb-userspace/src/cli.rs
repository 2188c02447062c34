//! The `sluice` command line: argument parsing and the subcommands.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};

use anyhow::Context;

use crate::{
    config::Config,
    dataplane::AttachMode,
    node::Node,
    provider::file::{FileProvider, Overrides},
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
    /// Ask a running instance's admin server for its workers, routes, backends and health.
    Status {
        /// The admin server's address (the configuration's `admin.address`).
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: std::net::SocketAddr,
        /// Print the raw JSON instead of the summary.
        #[arg(long)]
        json: bool,
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
        Command::Status { admin, json } => status(admin, json),
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
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(serve_until_signal(&provider, &node))?;
    tracing::info!("shutting down");
    node.stop()?;
    Ok(ExitCode::SUCCESS)
}

/// Fetches `/api/v1/status` and prints it.
fn status(admin: std::net::SocketAddr, raw: bool) -> anyhow::Result<ExitCode> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&admin, std::time::Duration::from_secs(3))
        .with_context(|| {
            format!("cannot reach the admin server at {admin}; is sluice running with `admin.address` set?")
        })?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    write!(stream, "GET /api/v1/status HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").context("the admin server sent no HTTP response")?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200"),
        "the admin server answered: {}",
        head.lines().next().unwrap_or("")
    );
    // The body may be chunked; the JSON object is what sits between the outer braces.
    let json =
        &body[body.find('{').context("no JSON in the response")?..=body.rfind('}').context("no JSON")?];
    let status: serde_json::Value =
        serde_json::from_str(json).context("the admin server sent invalid JSON")?;
    if raw {
        println!("{status:#}");
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", render_status(&status));
    Ok(ExitCode::SUCCESS)
}

/// The human summary of a status document.
pub fn render_status(status: &serde_json::Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ready: {}   generation: {}   workers: {}   listeners: {}",
        status["ready"],
        status["generation"],
        status["workers"],
        status["listeners"]
            .as_array()
            .map(|l| l.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(", "))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "reloads: {} ok, {} failed",
        status["reloads"]["succeeded"], status["reloads"]["failed"]
    );
    let routes = status["routes"].as_array().map(Vec::len).unwrap_or(0);
    let _ = writeln!(out, "routes: {routes}");
    for backend in status["backends"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "backend {} ({})",
            backend["name"].as_str().unwrap_or("?"),
            backend["balance"].as_str().unwrap_or("?")
        );
        for e in backend["endpoints"].as_array().into_iter().flatten() {
            let state = if e["available"] == true {
                "up"
            } else if e["ready"] == false {
                "not ready"
            } else if e["check_healthy"] == false {
                "failing checks"
            } else if e["ejected"] == true {
                "ejected"
            } else {
                "down"
            };
            let _ = writeln!(
                out,
                "  {:<28} {:<15} weight {:<4} inflight {:<5} ewma {:.2} ms",
                e["address"].as_str().unwrap_or("?"),
                state,
                e["weight"],
                e["inflight"],
                e["latency_ewma_ms"].as_f64().unwrap_or(0.0)
            );
        }
    }
    let attached = status["xdp"]["attached"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(", "))
        .unwrap_or_default();
    if attached.is_empty() {
        let _ = writeln!(out, "xdp: not attached");
    } else {
        let _ = writeln!(out, "xdp: attached to {attached}");
        if let Some(counters) = status["xdp"]["counters"].as_object() {
            for (name, value) in counters.iter().filter(|(_, v)| v.as_u64() != Some(0)) {
                let _ = writeln!(out, "  {name:<24} {value}");
            }
        }
    }
    out
}

/// Waits for SIGINT or SIGTERM, reloading on SIGHUP and whenever the file changes.
async fn serve_until_signal(provider: &FileProvider, node: &Node) -> anyhow::Result<()> {
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
            _ = hangup.recv() => reload(provider, node, "SIGHUP"),
            Some(()) = changed => reload(provider, node, "file changed"),
        }
    }
}

/// Loads and applies the configuration; a bad one is refused and the old one keeps serving.
fn reload(provider: &FileProvider, node: &Node, why: &str) {
    let config = match provider.load() {
        Ok(config) => config,
        Err(e) => {
            node.record_refused();
            tracing::error!(why, error = %e, "configuration refused; the previous one keeps serving");
            return;
        }
    };
    match node.apply(&config) {
        Ok(generation) => tracing::info!(why, generation, "configuration reloaded"),
        Err(e) => tracing::error!(why, error = %e, "configuration refused; the previous one keeps serving"),
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
