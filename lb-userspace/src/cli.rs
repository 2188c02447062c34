//! The `sluice` command line: argument parsing and the subcommands.

mod check;
mod keeper;
mod upgrade;
mod webhook;

pub use webhook::WebhookArgs;

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use clap::{Parser, Subcommand, ValueEnum};

use anyhow::Context;
use tokio::sync::{mpsc, watch};

use crate::{
    config::{AttachMode, Config},
    node::Node,
    provider::{
        Desired, Source, Update,
        file::{FileProvider, Overrides},
    },
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
    Run(Box<RunArgs>),
    /// Validate a configuration file (every error with line:column, exit 1 on error), or
    /// translate Ingress manifests offline as the controller would (--ingress FILE...).
    Check(check::CheckArgs),
    /// Serve the validating admission webhook: AdmissionReviews for Ingresses over HTTPS,
    /// decided by the controller's translation against the cluster's Ingresses.
    Webhook(webhook::WebhookArgs),
    /// Print the JSON Schema of the configuration file, for editors' YAML language servers.
    Schema,
    /// Replace a running instance (`sluice run --instance NAME`) by a new binary without
    /// dropping a connection: it takes over the listening sockets and the pinned XDP state,
    /// the old process drains and exits. Same as SIGUSR2 to the running process.
    Upgrade(upgrade::UpgradeArgs),
    /// Remove what a killed instance left: its control socket and its bpffs pins (which keep
    /// XDP attached).
    Cleanup(upgrade::CleanupArgs),
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
    /// On SIGTERM, fail /readyz and keep serving this long before closing the listeners
    /// (overrides the file's limits.shutdown_delay_ms).
    #[arg(long, value_name = "MS")]
    pub shutdown_delay_ms: Option<u64>,
    /// Serve /metrics (only) on this address too, e.g. 0.0.0.0:10254 (overrides the file's
    /// metrics.address).
    #[arg(long, value_name = "ADDRESS")]
    pub metrics_address: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub instance: upgrade::InstanceArgs,
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
    /// A Service (`NAMESPACE/NAME`, typically the LoadBalancer in front of the nodes) whose
    /// addresses are written into the Ingresses' status and follow its changes
    /// (ingress-nginx's flag); --publish-address wins when both are given, as there.
    #[arg(long, value_name = "NAMESPACE/NAME", requires = "kubernetes", value_parser = namespaced_name)]
    pub publish_service: Option<String>,
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
    /// Time one Kubernetes API request may take (head and body; a watch's head) before it is
    /// abandoned and retried.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=300), requires = "kubernetes")]
    pub api_timeout_seconds: u16,
    /// Watches ask the API server to end them after this long; a silent one is given up 5 s
    /// later and resumed.
    #[arg(long, default_value_t = 55, value_parser = clap::value_parser!(u16).range(1..=290), requires = "kubernetes")]
    pub watch_timeout_seconds: u16,
    /// ingress-nginx's controller ConfigMap (`NAMESPACE/NAME`): its cluster-wide keys (HSTS,
    /// ssl-redirect, forwarded headers, PROXY protocol, body size, timeouts, header ConfigMaps)
    /// apply, watched; without it, ingress-nginx's defaults.
    #[arg(long, value_name = "NAMESPACE/NAME", requires = "kubernetes", value_parser = namespaced_name)]
    pub nginx_configmap: Option<String>,
    /// The Service (`NAMESPACE/NAME`, its first port) that serves every host and path no
    /// Ingress claims and answers custom-http-errors (ingress-nginx's flag of the same name);
    /// without it, those get a plain 404.
    #[arg(long, value_name = "NAMESPACE/NAME", requires = "kubernetes", value_parser = namespaced_name)]
    pub default_backend_service: Option<String>,
    /// The TLS Secret (`NAMESPACE/NAME`) served on TLS listeners for names no Ingress TLS host
    /// claims, and without SNI (ingress-nginx's flag); without it, a self-signed certificate
    /// made at start (CN "Kubernetes Ingress Controller Fake Certificate"), as ingress-nginx.
    #[arg(long, value_name = "NAMESPACE/NAME", requires = "kubernetes", value_parser = namespaced_name)]
    pub default_ssl_certificate: Option<String>,
    /// ingress-nginx's tcp-services ConfigMap (`NAMESPACE/NAME`), watched: each entry
    /// `"PORT": "NAMESPACE/SERVICE:PORT[:PROXY[:PROXY]]"` exposes a Service port as a TCP
    /// service on PORT of every node address (an L4 service, balanced in XDP when it can be).
    #[arg(long, value_name = "NAMESPACE/NAME", requires = "kubernetes", value_parser = namespaced_name)]
    pub tcp_services_configmap: Option<String>,
    /// ingress-nginx's udp-services ConfigMap (`NAMESPACE/NAME`), watched: each entry
    /// `"PORT": "NAMESPACE/SERVICE:PORT"` exposes a Service port as a UDP service on PORT.
    #[arg(long, value_name = "NAMESPACE/NAME", requires = "kubernetes", value_parser = namespaced_name)]
    pub udp_services_configmap: Option<String>,
    /// Balance the tcp/udp-services entries in XDP (DNAT and SNAT in the kernel) instead of
    /// proxying them in user space. Only when every endpoint's replies come back through an
    /// interface XDP is attached to: routed pod addresses on other nodes, no overlay, no
    /// endpoint on the node itself (pods behind veths).
    #[arg(long, requires = "kubernetes")]
    pub l4_services_in_xdp: bool,
}

/// `NAMESPACE/NAME`, both parts non-empty.
fn namespaced_name(value: &str) -> Result<String, String> {
    match value.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => Ok(value.to_owned()),
        _ => Err(format!("{value:?} is not NAMESPACE/NAME")),
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) if args.instance.instance.is_some() && keeper::wanted() => keeper::run(),
        Command::Run(args) => run(*args),
        Command::Status { admin, json } => status(admin, json),
        Command::Schema => {
            println!("{}", serde_json::to_string_pretty(&Config::json_schema())?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Check(args) => check::run(args),
        Command::Webhook(args) => webhook::run(args),
        Command::Upgrade(args) => upgrade::request(args),
        Command::Cleanup(args) => upgrade::cleanup(args),
    }
}

/// An error and its causes on one line, each said once: many errors name their cause in their
/// own message already (`cannot read: No such file...`), and anyhow's `{:#}` would repeat it.
pub fn render_error(error: &anyhow::Error) -> String {
    let mut out = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !out.contains(&cause) {
            out.push_str(": ");
            out.push_str(&cause);
        }
    }
    out
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
    // Until their handlers are installed, SIGHUP and SIGUSR2 would end the process (their
    // default action): a keeper (PID 1) forwards them to every process, this one included
    // while it starts as an upgrade's new process.
    // SAFETY: setting a signal disposition to SIG_IGN has no memory effects.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGUSR2, libc::SIG_IGN);
    }
    init_logging(args.log_format);
    let overrides = Overrides {
        workers: args.workers,
        interfaces: args.interfaces.clone(),
        xdp_mode: args.xdp_mode,
        no_xdp: args.no_xdp,
        shutdown_delay_ms: args.shutdown_delay_ms,
        metrics_address: args.metrics_address,
    };
    let provider = FileProvider::new(args.config.clone(), overrides);
    let mut setup = upgrade::Setup::prepare(&args.instance)?;
    if args.kubernetes.kubernetes {
        return run_kubernetes(&args.kubernetes, &provider, setup);
    }
    let config =
        provider.load().map_err(anyhow::Error::from).inspect_err(|e| report_failure(setup.as_ref(), e))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // Watch before serving: a change made as soon as the listeners answer must not be missed.
    let changes = runtime.block_on(async { provider.changes() });
    let node = start_node(&config, setup.as_ref(), false)?;
    let handed_over = runtime.block_on(async {
        let (updates_tx, updates) = mpsc::channel(1);
        tokio::select! {
            result = provider.run(changes, updates_tx) => result.map_err(Into::into).map(|()| None),
            () = apply_updates(&node, updates) => Ok(None),
            result = drain_on_signal(&node) => result.map(|()| None),
            result = serve_upgrades(&node, setup.as_mut()) => result.map(Some),
        }
    })?;
    finish(node, setup, handed_over)
}

/// Starts the node, on what an upgrade handed over when this process was started by one; a
/// failure is reported to the old process, which serves on.
fn start_node(config: &Config, setup: Option<&upgrade::Setup>, kubernetes: bool) -> anyhow::Result<Node> {
    let options = setup.map(|s| s.start_options(kubernetes)).unwrap_or_default();
    let node = Node::start_with(config, options).inspect_err(|e| report_failure(setup, e))?;
    if let Some(setup) = setup {
        setup.check_started(&node, config).inspect_err(|e| report_failure(Some(setup), e))?;
    }
    Ok(node)
}

fn report_failure(setup: Option<&upgrade::Setup>, error: &anyhow::Error) {
    if let Some(setup) = setup {
        setup.report_failure(error);
    }
}

/// Upgrade requests until one hands over (the new process's pid); without `--instance`,
/// SIGUSR2 is refused with the reason (its default action would end the process).
async fn serve_upgrades(node: &Node, setup: Option<&mut upgrade::Setup>) -> anyhow::Result<u32> {
    if let Some(setup) = setup {
        return setup.serve(node).await;
    }
    let mut usr2 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2())?;
    loop {
        usr2.recv().await;
        node.upgrades().refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!("SIGUSR2 refused: upgrades need `sluice run --instance NAME`");
    }
}

/// The end of `sluice run`: after a handover, drain and leave the kernel side to the new
/// process; otherwise the normal stop.
fn finish(node: Node, setup: Option<upgrade::Setup>, handed_over: Option<u32>) -> anyhow::Result<ExitCode> {
    match handed_over {
        Some(pid) => {
            tracing::info!(new_pid = pid, "handed over; closing the listeners here and draining connections");
            node.finish_handover();
        }
        None => {
            tracing::info!("closing the listeners; draining connections");
            node.stop()?;
        }
    }
    if let Some(setup) = setup {
        setup.close(handed_over.is_some());
    }
    tracing::info!("exiting");
    Ok(ExitCode::SUCCESS)
}

/// `sluice run --kubernetes`: the node starts on the base configuration, then serves the
/// cluster's Ingresses on top of it; the base file still reloads (SIGHUP or change).
fn run_kubernetes(
    args: &KubernetesArgs,
    provider: &FileProvider,
    mut setup: Option<upgrade::Setup>,
) -> anyhow::Result<ExitCode> {
    use crate::provider::kube::KubeProvider;
    let base =
        provider.load().map_err(anyhow::Error::from).inspect_err(|e| report_failure(setup.as_ref(), e))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    // Everything that can fail before serving fails before the listeners open: the kubeconfig
    // (or in-cluster credentials) is read here; nothing reaches the API server yet.
    let kube = runtime
        .block_on(KubeProvider::connect(kube_options(args)))
        .inspect_err(|e| report_failure(setup.as_ref(), e))?;
    // Watch before serving: a change made as soon as the listeners answer must not be missed.
    let changes = runtime.block_on(async { provider.changes() });
    let node = start_node(&base, setup.as_ref(), true)?;
    // Not ready (`/readyz` 503) until the first full view of the cluster is applied; an
    // upgraded process also holds its accept loops until then.
    node.set_ready(false);
    let mut handed_over = None;
    runtime.block_on(async {
        let (base_tx, base_rx) = watch::channel(Arc::new(base));
        let (stop_tx, stop_rx) = watch::channel(crate::provider::kube::Stop::Running);
        let (updates_tx, updates) = mpsc::channel(1);
        let (file_tx, file_updates) = mpsc::channel(1);
        let serve = kube.run(base_rx, updates_tx.clone(), stop_rx);
        let mut serve = std::pin::pin!(serve);
        tokio::select! {
            result = &mut serve => return result,
            result = provider.run(changes, file_tx) => result?,
            () = base_from_file(file_updates, &base_tx, &updates_tx) => {}
            () = apply_updates(&node, updates) => {}
            result = drain_on_signal(&node) => result?,
            result = serve_upgrades(&node, setup.as_mut()) => handed_over = Some(result?),
        }
        let _ = stop_tx.send(match handed_over {
            Some(_) => crate::provider::kube::Stop::HandedOver,
            None => crate::provider::kube::Stop::Shutdown,
        });
        serve.await
    })?;
    finish(node, setup, handed_over)
}

/// What the Kubernetes provider is told by the command line.
fn kube_options(args: &KubernetesArgs) -> crate::provider::kube::KubeOptions {
    use crate::provider::kube::{KubeOptions, leader::StatusOptions};
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
        status.publish_service = args.publish_service.clone();
        status
    });
    let api = crate::provider::kube::api::ApiSettings {
        request_timeout: std::time::Duration::from_secs(u64::from(args.api_timeout_seconds)),
        watch_timeout: std::time::Duration::from_secs(u64::from(args.watch_timeout_seconds)),
        ..Default::default()
    };
    KubeOptions {
        kubeconfig: args.kubeconfig.clone(),
        ingress_class: args.ingress_class.clone(),
        status,
        api,
        controller_configmap: args.nginx_configmap.clone(),
        default_backend_service: args.default_backend_service.clone(),
        default_ssl_certificate: args.default_ssl_certificate.clone(),
        tcp_services_configmap: args.tcp_services_configmap.clone(),
        udp_services_configmap: args.udp_services_configmap.clone(),
        l4_in_xdp: args.l4_services_in_xdp,
        ..KubeOptions::default()
    }
}

/// Returns when the node may close its listeners: on SIGINT or SIGTERM `/readyz` turns 503 at
/// once and everything (providers included) keeps serving for `limits.shutdown_delay_ms`, read
/// now so a reload changes it; a second signal ends the delay early.
async fn drain_on_signal(node: &Node) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut next_signal = async || {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        }
    };
    let first = next_signal().await;
    node.begin_drain();
    let delay_ms = node.published().load().config.limits.shutdown_delay_ms;
    tracing::info!(signal = first, delay_ms, "shutting down: not ready; serving on for the shutdown delay");
    tokio::select! {
        () = tokio::time::sleep(std::time::Duration::from_millis(delay_ms)) => {}
        second = next_signal() => tracing::info!(signal = second, "second signal; shutdown delay cut short"),
    }
    Ok(())
}

/// Kubernetes mode: the file's configurations become the Kubernetes provider's base; a file
/// that is refused goes to the node as a refusal of the base.
async fn base_from_file(
    mut file: mpsc::Receiver<Update>,
    base: &watch::Sender<Arc<Config>>,
    node: &mpsc::Sender<Update>,
) {
    while let Some(update) = file.recv().await {
        match update {
            Update::Serve(Desired { config, source, .. }) => {
                let why = source.why();
                tracing::info!(why, "base configuration reloaded; rebuilding with the Kubernetes state");
                base.send_replace(config);
            }
            Update::Refused { source, error } => {
                let refused = Update::Refused { source: Source::Base { why: source.why() }, error };
                if node.send(refused).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Serves what the providers emit, in order, until they stop: each configuration is applied
/// whole, each refusal counted. Every configuration applied makes the node ready (Kubernetes
/// mode starts not ready, until its first translation serves).
async fn apply_updates(node: &Node, mut updates: mpsc::Receiver<Update>) {
    while let Some(update) = updates.recv().await {
        match update {
            Update::Serve(desired) => match node.apply_shared(&desired.config) {
                Ok(generation) => {
                    node.set_ready(true);
                    log_applied(&desired, generation);
                    drop(desired);
                    crate::allocator::release_freed();
                }
                Err(e) => log_not_applied(desired.source, &e.to_string()),
            },
            Update::Refused { source, error } => {
                node.record_refused();
                log_refused(source, &error);
            }
        }
    }
}

fn log_applied(desired: &Desired, generation: u64) {
    match desired.source {
        Source::File { why } | Source::Base { why } => {
            tracing::info!(why, generation, "configuration reloaded")
        }
        Source::Kubernetes => tracing::info!(
            generation,
            ingresses = desired.ingresses.unwrap_or(0),
            virtual_hosts = desired.config.virtual_hosts.len(),
            backends = desired.config.backends.len(),
            took_ms = desired.started.elapsed().as_millis() as u64,
            translate_ms = desired.translated.map_or(0, |t| t.as_millis() as u64),
            "Kubernetes configuration applied"
        ),
    }
}

/// A configuration the node could not apply (it does not compile, or needs a restart).
fn log_not_applied(source: Source, error: &str) {
    match source {
        Source::File { why } | Source::Base { why } => {
            tracing::error!(why, error = %error, "configuration refused; the previous one keeps serving")
        }
        Source::Kubernetes => tracing::error!(
            error = %error,
            "Kubernetes configuration refused; the previous one keeps serving"
        ),
    }
}

/// A configuration the provider refused before it reached the node (it does not parse or
/// validate).
fn log_refused(source: Source, error: &str) {
    match source {
        Source::File { why } => {
            tracing::error!(why, error = %error, "configuration refused; the previous one keeps serving")
        }
        Source::Base { why } => tracing::error!(
            why,
            error = %error,
            "base configuration refused; the previous one keeps serving"
        ),
        Source::Kubernetes => tracing::error!(
            error = %error,
            "Kubernetes configuration does not validate; the previous one keeps serving"
        ),
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
    fn an_error_chain_says_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory (os error 2)");
        let named = crate::config::Error::Read { source_name: "x.yaml".into(), source: io };
        assert_eq!(
            render_error(&anyhow::Error::new(named)),
            "x.yaml: cannot read: No such file or directory (os error 2)"
        );
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address in use");
        let wrapped = anyhow::Error::new(io).context("cannot start the admin server on 127.0.0.1:9901");
        assert_eq!(render_error(&wrapped), "cannot start the admin server on 127.0.0.1:9901: Address in use");
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
