//! The `sluice` command line: argument parsing and the subcommands.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};

use anyhow::Context;

use crate::{
    config::Config,
    dataplane::AttachMode,
    node::Node,
    provider::file::{FileProvider, Overrides},
    proxy::{snapshot::Snapshot, upstream::endpoint::EndpointRegistry},
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
    #[command(flatten)]
    pub kubernetes: KubernetesArgs,
}

/// Kubernetes mode: virtual hosts, backends and certificates come from Ingresses, Services,
/// EndpointSlices and TLS Secrets; listeners, workers, XDP, admin and limits still come from
/// `--config` (or the built-in configuration). See docs/KUBERNETES.md.
#[derive(Debug, Clone, clap::Args)]
pub struct KubernetesArgs {
    /// Serve the cluster's Ingresses (in-cluster service account, or --kubeconfig).
    #[arg(long)]
    pub kubernetes: bool,
    /// Kubeconfig file to reach the API server with (default: in-cluster, then KUBECONFIG).
    #[arg(long, requires = "kubernetes")]
    pub kubeconfig: Option<PathBuf>,
    /// IngressClass name served, besides IngressClasses whose controller is
    /// sluice.dev/ingress-controller.
    #[arg(long, default_value = "sluice", requires = "kubernetes")]
    pub ingress_class: String,
    /// Address (IP or host name) written into the Ingresses' status (repeatable); default:
    /// this node's addresses (NODE_NAME).
    #[arg(long = "publish-address", requires = "kubernetes")]
    pub publish_addresses: Vec<String>,
    /// Namespace of the leader-election Lease (default: POD_NAMESPACE, else `default`).
    #[arg(long, requires = "kubernetes")]
    pub lease_namespace: Option<String>,
    /// This instance's identity in the Lease (default: POD_NAME, else host name and pid).
    #[arg(long, requires = "kubernetes")]
    pub identity: Option<String>,
    /// How long a leader's Lease lasts without renewal before another instance takes over.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600), requires = "kubernetes")]
    pub lease_duration_seconds: u64,
    /// Do not elect a leader or write Ingress status.
    #[arg(long, requires = "kubernetes")]
    pub no_status: bool,
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
            // Compiling the snapshot also loads and checks certificates, keys and CA bundles.
            Ok(config) => match Snapshot::build(&config, &EndpointRegistry::default(), 1) {
                Ok(_) => {
                    println!("{}: ok", file.display());
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{}: {e}", file.display());
                    Ok(ExitCode::FAILURE)
                }
            },
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
    }
}

/// rustls warns on every handshake about client quirks it tolerates (an IP address sent as the
/// SNI, as wrk does): any client could make each handshake write a log line, and on a file
/// next to the configuration wake its watcher too. Handshake failures are counted by reason in
/// the metrics instead; a `RUST_LOG` that names rustls gets its logs back.
const QUIET_RUSTLS: &str = "rustls=error";

/// The log filter directives: `RUST_LOG` (or `info`), with rustls quieted unless named.
fn log_directives(rust_log: Option<&str>) -> String {
    let directives = rust_log.unwrap_or("info");
    if directives.contains("rustls") { directives.to_owned() } else { format!("{directives},{QUIET_RUSTLS}") }
}

fn init_logging(format: LogFormat) {
    let directives = log_directives(std::env::var("RUST_LOG").ok().as_deref());
    let filter = tracing_subscriber::EnvFilter::try_new(directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(log_directives(None)));
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
    if args.kubernetes.kubernetes {
        return run_kubernetes(&args.kubernetes, &provider);
    }
    let config = provider.load()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // Watch before serving: a change made as soon as the listeners answer must not be missed.
    let changes = runtime.block_on(async { provider.changes() });
    let node = Node::start(&config)?;
    runtime.block_on(serve_until_signal(&provider, &node, changes))?;
    tracing::info!("shutting down");
    node.stop()?;
    Ok(ExitCode::SUCCESS)
}

/// `sluice run --kubernetes`: the node starts on the base configuration, then serves the
/// cluster's Ingresses on top of it; the base file still reloads (SIGHUP or change).
fn run_kubernetes(args: &KubernetesArgs, provider: &FileProvider) -> anyhow::Result<ExitCode> {
    use crate::provider::kube::{KubeOptions, KubeProvider, leader::StatusOptions};
    let base = provider.load()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    // Watch before serving: a change made as soon as the listeners answer must not be missed.
    let changes = runtime.block_on(async { provider.changes() });
    let node = Node::start(&base)?;
    // Not ready (`/readyz` 503) until the first full view of the cluster is applied.
    node.set_ready(false);
    let status = (!args.no_status).then(|| {
        let mut status = StatusOptions::default()
            .with_lease_duration(std::time::Duration::from_secs(args.lease_duration_seconds));
        if let Some(namespace) = &args.lease_namespace {
            status.lease_namespace = namespace.clone();
        }
        if let Some(identity) = &args.identity {
            status.identity = identity.clone();
        }
        status.publish_addresses = args.publish_addresses.clone();
        status
    });
    let options = KubeOptions {
        kubeconfig: args.kubeconfig.clone(),
        ingress_class: args.ingress_class.clone(),
        status,
        ..KubeOptions::default()
    };
    runtime.block_on(async {
        let kube = KubeProvider::connect(options).await?;
        let (base_tx, base_rx) = tokio::sync::watch::channel(base);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let serve = kube.run(&node, base_rx, stop_rx);
        let mut serve = std::pin::pin!(serve);
        tokio::select! {
            result = &mut serve => return result,
            result = base_until_signal(provider, &node, &base_tx, changes) => result?,
        }
        let _ = stop_tx.send(true);
        serve.await
    })?;
    tracing::info!("shutting down");
    node.stop()?;
    Ok(ExitCode::SUCCESS)
}

/// Kubernetes mode's signal loop: SIGINT or SIGTERM return; SIGHUP and changes of the base
/// file send the reloaded base configuration to the provider.
async fn base_until_signal(
    provider: &FileProvider,
    node: &Node,
    base: &tokio::sync::watch::Sender<Config>,
    mut changes: crate::provider::file::Changes,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    loop {
        let why = tokio::select! {
            r = tokio::signal::ctrl_c() => return r.map_err(Into::into),
            _ = term.recv() => return Ok(()),
            _ = hangup.recv() => "SIGHUP",
            () = changes.next() => "file changed",
        };
        match provider.load() {
            Ok(config) => {
                tracing::info!(why, "base configuration reloaded; rebuilding with the Kubernetes state");
                base.send_replace(config);
            }
            Err(e) => {
                node.record_refused();
                tracing::error!(why, error = %e, "base configuration refused; the previous one keeps serving");
            }
        }
    }
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
async fn serve_until_signal(
    provider: &FileProvider,
    node: &Node,
    mut changes: crate::provider::file::Changes,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            r = tokio::signal::ctrl_c() => return r.map_err(Into::into),
            _ = term.recv() => return Ok(()),
            _ = hangup.recv() => reload(provider, node, "SIGHUP"),
            () = changes.next() => reload(provider, node, "file changed"),
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
    fn rustls_logs_are_quiet_unless_rust_log_names_rustls() {
        assert_eq!(log_directives(None), "info,rustls=error");
        assert_eq!(log_directives(Some("debug,sluice::access=off")), "debug,sluice::access=off,rustls=error");
        assert_eq!(log_directives(Some("info,rustls=debug")), "info,rustls=debug");
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn kubernetes_flags_need_kubernetes_mode() {
        let err = Cli::try_parse_from(["sluice", "run", "--kubeconfig", "k"]).unwrap_err();
        assert!(err.to_string().contains("--kubernetes"), "{err}");
        let cli =
            Cli::try_parse_from(["sluice", "run", "--kubernetes", "--publish-address", "192.0.2.1"]).unwrap();
        let Command::Run(args) = cli.command else { panic!("run") };
        assert_eq!(args.kubernetes.ingress_class, "sluice");
        assert_eq!(args.kubernetes.publish_addresses, ["192.0.2.1"]);
        assert_eq!(args.kubernetes.lease_duration_seconds, 15);
    }

    #[test]
    fn bad_xdp_mode_flag_is_rejected() {
        let err = Cli::try_parse_from(["sluice", "run", "--xdp-mode", "turbo"]).unwrap_err();
        assert!(err.to_string().contains("unknown XDP mode"), "{err}");
    }
}
