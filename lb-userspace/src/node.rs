//! One node's load balancer: the workers, and the kernel path in front of them when XDP is on.
//! `sluice run` and the end-to-end tests start it the same way.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;

use crate::{
    admin::{AdminServer, AdminState, sources},
    config::{Config, L4Removal, XdpGuardConfig},
    dataplane::{
        Dataplane, Guard, HealthTiming, HeartbeatWriter, L4Spec, L4Supervisor, Protocol, Service, Steering,
        Supervisor, l4_health::L4Target, pin::PinOptions,
    },
    handover::Inherited,
    metrics::{Metrics, ReloadStats},
    proxy::{
        WorkerOptions, Workers,
        snapshot::{Published, Snapshot},
        upstream::{
            endpoint::EndpointRegistry,
            health_check::{CheckTarget, HealthChecker},
        },
    },
};

/// A running node. Stop it with [`Node::stop`]; dropping it also stops everything.
pub struct Node {
    workers: Workers,
    kernel: Option<KernelPath>,
    published: Published,
    registry: EndpointRegistry,
    checker: HealthChecker,
    /// What the workers were started with; a reload cannot change these without a restart.
    started_with: (Vec<std::net::SocketAddr>, usize),
    reloads: Arc<ReloadStats>,
    upgrades: Arc<crate::metrics::UpgradeStats>,
    admin_state: Arc<AdminState>,
    admin: Option<AdminServer>,
    metrics_server: Option<AdminServer>,
    /// Opens the accept loops when the node started holding them (an upgrade in Kubernetes
    /// mode).
    accept_gate: Option<tokio::sync::watch::Sender<bool>>,
    /// The L4 services proxied in user space (those XDP does not balance). Shared with the
    /// thread that retries the services a reload could not bind ([`retry_l4_binds`]).
    l4_proxy: Arc<L4ProxySlot>,
}

/// The userspace L4 proxy behind the node's lock.
struct L4ProxySlot(parking_lot::Mutex<L4ProxyState>);

/// Both changed under the slot's lock only.
struct L4ProxyState {
    /// The proxy, when one runs.
    proxy: Option<crate::proxy::l4::L4Proxy>,
    /// A `sluice-l4-retry` thread is retrying the proxy's unbound services.
    retrying: bool,
}

/// The first retry of an L4 service that could not bind waits this long; each next one twice as
/// long, up to [`L4_RETRY_MAX`].
const L4_RETRY_FIRST: Duration = Duration::from_secs(1);
const L4_RETRY_MAX: Duration = Duration::from_secs(30);

/// How a node starts besides its configuration: plain (the default), or as an upgrade that
/// takes over another process's sockets and pinned kernel state.
#[derive(Default)]
pub struct StartOptions {
    /// Listening sockets handed over by the process this one replaces.
    pub inherited: Option<Arc<Inherited>>,
    /// Pin the kernel side under this directory (reusing it when `inherit`).
    pub pins: Option<PinOptions>,
    /// Start with the accept loops held until [`Node::open_accepting`].
    pub hold_accepting: bool,
}

/// Why a configuration could not be applied to a running node.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("listeners or the worker count changed; restart sluice to apply them")]
    NeedsRestart,
    #[error("the configuration does not compile: {0}")]
    Compile(String),
    #[error("the XDP guard could not be updated: {0}")]
    Guard(String),
}

impl Node {
    /// Starts the workers and, when configured and possible, the kernel path: the programs are
    /// loaded first, the workers bind (their own ports included), then the service is installed
    /// and the interfaces attached, so XDP never steers to a port nobody listens on.
    pub fn start(config: &Config) -> anyhow::Result<Node> {
        Self::start_with(config, StartOptions::default())
    }

    /// [`Node::start`] with the upgrade options.
    pub fn start_with(config: &Config, start: StartOptions) -> anyhow::Result<Node> {
        let registry = EndpointRegistry::default();
        let snapshot = Snapshot::build(config, &registry, 1).map_err(|e| anyhow::anyhow!(e))?;
        let published = Published::new(snapshot);
        let checker = HealthChecker::start().context("cannot start the health checker")?;
        checker.update(check_targets(&published.load()));
        let reloads = Arc::new(ReloadStats::default());
        let mut options =
            WorkerOptions::shared(config.listeners[0].address, config.worker_count(), published.clone());
        options.listeners = config.listeners.iter().map(|l| l.address).collect();
        options.busy_poll = std::time::Duration::from_micros(config.busy_poll_us);
        options.inherited = start.inherited.clone();
        let accept_gate = start.hold_accepting.then(|| tokio::sync::watch::channel(false));
        options.accept_gate = accept_gate.as_ref().map(|(_, rx)| rx.clone());
        // The admin and metrics servers wait behind the same gate: until it opens the old
        // process answers the probes, so readiness never dips during the handover.
        let gate = options.accept_gate.clone();
        let kernel =
            match config.xdp.enabled.then(|| KernelPath::start(config, start.pins.as_ref())).flatten() {
                Some((kernel, heartbeats)) => {
                    options.own_port_base = Some(config.xdp.worker_port_base);
                    options.heartbeats = heartbeats;
                    options.heartbeat_period = kernel.timing.period();
                    Some(kernel)
                }
                None => None,
            };
        let mut metrics = Metrics::new(options.count.max(1));
        metrics.add_source(Arc::new(sources::Endpoints(published.clone())));
        metrics.add_source(Arc::new(sources::Reloads(reloads.clone())));
        let upgrades = Arc::new(crate::metrics::UpgradeStats::default());
        metrics.add_source(Arc::new(sources::Upgrades(upgrades.clone())));
        metrics.add_source(Arc::new(sources::NginxReloads(published.clone(), reloads.clone())));
        metrics.add_source(Arc::new(sources::Tls(published.clone())));
        metrics.add_source(Arc::new(crate::proxy::rate_limit::Evictions));
        if let Some(reader) = kernel.as_ref().and_then(|k| k.dataplane.counters_reader().ok()) {
            metrics.add_source(Arc::new(sources::Xdp(reader)));
        }
        let metrics = Arc::new(metrics);
        options.metrics = metrics.clone();
        let workers = Workers::start(options).with_context(|| {
            let addresses: Vec<String> = config.listeners.iter().map(|l| l.address.to_string()).collect();
            format!("cannot listen on {}", addresses.join(", "))
        })?;
        let kernel = kernel.and_then(|kernel| kernel.steer(config, workers.len()));
        let l4_proxy = start_l4_proxy(
            l4_in_user_space(config, kernel.as_ref()),
            start.inherited.as_deref(),
            gate.clone(),
        )?;
        if kernel.is_none() && config.xdp.guard != XdpGuardConfig::default() {
            tracing::warn!("xdp.guard is set but the kernel path is off: nothing enforces it");
        }
        tracing::info!(
            listeners = ?workers.local_addrs(),
            workers = workers.len(),
            xdp = kernel.is_some(),
            "sluice is serving"
        );
        let started_with = (options_listeners(config), config.worker_count());
        let admin_state = Arc::new(AdminState {
            published: published.clone(),
            workers: workers.len(),
            listeners: workers.local_addrs().to_vec(),
            xdp_wanted: config.xdp.enabled && !config.xdp.interfaces.is_empty(),
            xdp_interfaces: kernel
                .as_ref()
                .map(|k| k.dataplane.attachments().map(|a| a.interface.clone()).collect())
                .unwrap_or_default(),
            xdp_counters: kernel.as_ref().and_then(|k| k.dataplane.counters_reader().ok()),
            reloads: reloads.clone(),
            serving: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            metrics,
        });
        let admin = match &config.admin {
            Some(admin) => Some(
                AdminServer::start_inherited(
                    admin.address,
                    admin_state.clone(),
                    start.inherited.as_deref(),
                    gate.clone(),
                )
                .with_context(|| format!("cannot start the admin server on {}", admin.address))?,
            ),
            None => None,
        };
        if let Some(admin) = &admin {
            tracing::info!(address = %admin.addr(), "admin server listening");
        }
        let metrics_server = match &config.metrics {
            Some(metrics) => {
                Some(start_metrics(metrics, admin_state.clone(), start.inherited.as_deref(), gate.clone())?)
            }
            None => None,
        };
        Ok(Node {
            workers,
            kernel,
            published,
            registry,
            checker,
            started_with,
            reloads,
            upgrades,
            admin_state,
            admin,
            metrics_server,
            accept_gate: accept_gate.map(|(tx, _)| tx),
            l4_proxy: Arc::new(L4ProxySlot(parking_lot::Mutex::new(L4ProxyState {
                proxy: l4_proxy,
                retrying: false,
            }))),
        })
    }

    /// Applies a new configuration by building a snapshot and swapping it in whole: requests
    /// in flight finish on the old one, connections stay open. Endpoint health carries over.
    pub fn apply(&self, config: &Config) -> Result<u64, ApplyError> {
        self.apply_shared(&Arc::new(config.clone()))
    }

    /// [`Node::apply`] of a configuration the caller shares: the snapshot keeps this one (no
    /// copy), and shares with the running snapshot what did not change ([`Snapshot::build_on`]).
    pub fn apply_shared(&self, config: &Arc<Config>) -> Result<u64, ApplyError> {
        let result = self.try_apply(config);
        self.reloads.record(result.is_ok());
        result
    }

    fn try_apply(&self, config: &Arc<Config>) -> Result<u64, ApplyError> {
        if (options_listeners(config), config.worker_count()) != self.started_with {
            return Err(ApplyError::NeedsRestart);
        }
        let current = self.published.load();
        let running = &current.config;
        for (changed, what) in [
            (running.xdp.differs_at_start(&config.xdp), "xdp"),
            (running.admin != config.admin, "admin"),
            (running.metrics != config.metrics, "metrics"),
            (
                running.limits.max_connections_per_worker != config.limits.max_connections_per_worker
                    || running.limits.shutdown_grace_ms != config.limits.shutdown_grace_ms,
                "limits.max_connections_per_worker / shutdown_grace_ms",
            ),
        ] {
            if changed {
                tracing::warn!(
                    setting = what,
                    "changed; it takes effect at the next restart, the rest applies now"
                );
            }
        }
        let generation = current.generation + 1;
        let snapshot = Snapshot::build_on(config.clone(), Some(&current), &self.registry, generation)
            .map_err(ApplyError::Compile)?;
        drop(current);
        // Always, not only when it changed: after a failed update the maps may hold a mix.
        if let Some(kernel) = &self.kernel {
            kernel.apply_guard(&config.xdp.guard).map_err(|e| ApplyError::Guard(e.to_string()))?;
            kernel.apply_l4(config);
        }
        self.apply_l4_proxy(config);
        self.checker.update(check_targets(&snapshot));
        self.published.publish(snapshot);
        self.registry.prune();
        Ok(generation)
    }

    /// Hands the userspace L4 proxy its new set of services: kept services keep their sockets
    /// and connections, removed ones drain, new ones are bound. One that cannot bind (its
    /// address is taken) is logged, left out, and retried in the background with a growing
    /// wait until it binds or a reload no longer asks for it; the rest apply.
    fn apply_l4_proxy(&self, config: &Config) {
        let wanted = l4_in_user_space(config, self.kernel.as_ref());
        let mut state = self.l4_proxy.0.lock();
        let L4ProxyState { proxy: running, retrying } = &mut *state;
        let errors = match running.as_mut() {
            Some(proxy) => proxy.configure(wanted),
            None if wanted.is_empty() => Vec::new(),
            // Started empty and then configured, so that one service that cannot bind does not
            // keep the others from serving.
            None => match crate::proxy::l4::L4Proxy::start(Vec::new(), None, None) {
                Ok(mut proxy) => {
                    let errors = proxy.configure(wanted);
                    *running = Some(proxy);
                    errors
                }
                Err(e) => vec![e],
            },
        };
        for e in errors {
            tracing::error!(error = %e, retry_in = ?L4_RETRY_FIRST, "an L4 service could not be served in user space");
        }
        if running.as_ref().is_some_and(|p| p.unbound() > 0) && !*retrying {
            *retrying = true;
            let slot = Arc::downgrade(&self.l4_proxy);
            let spawned = std::thread::Builder::new()
                .name("sluice-l4-retry".into())
                .spawn(move || retry_l4_binds(slot));
            if let Err(e) = spawned {
                *retrying = false;
                tracing::error!(error = %e, "cannot start retrying the L4 services that could not bind");
            }
        }
    }

    /// Marks the node ready or not for `/readyz`: a provider that serves only once it has the
    /// cluster's state (Kubernetes) starts not ready and sets it after its first full apply.
    pub fn set_ready(&self, ready: bool) {
        self.admin_state.serving.store(ready, Ordering::Relaxed);
    }

    /// The first step of a graceful stop: `/readyz` answers 503 from now on while everything
    /// keeps serving, so whatever follows readiness (the kubelet, an outer load balancer) stops
    /// sending new connections before the listeners close in [`Node::stop`].
    pub fn begin_drain(&self) {
        self.admin_state.draining.store(true, Ordering::Relaxed);
    }

    /// Counts a configuration that was refused before it reached `apply` (it did not parse or
    /// validate).
    pub fn record_refused(&self) {
        self.reloads.record(false);
    }

    /// Upgrade outcomes so far (counted by `cli`'s upgrade side).
    pub fn upgrades(&self) -> &crate::metrics::UpgradeStats {
        &self.upgrades
    }

    /// Reload outcomes so far.
    pub fn reloads(&self) -> &ReloadStats {
        &self.reloads
    }

    /// The admin server's address, when it runs.
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.admin.as_ref().map(AdminServer::addr)
    }

    /// The metrics listener's address, when it runs.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_server.as_ref().map(AdminServer::addr)
    }

    /// The serving snapshot, for status and tests.
    pub fn published(&self) -> &Published {
        &self.published
    }

    pub fn workers(&self) -> &Workers {
        &self.workers
    }

    /// The loaded programs, when the kernel path is running.
    pub fn dataplane(&self) -> Option<&Dataplane> {
        self.kernel.as_ref().map(|k| &k.dataplane)
    }

    /// Every listening socket with its handover key (workers, admin, metrics), for the process
    /// an upgrade starts.
    pub fn handover_sockets(&self) -> Vec<(String, std::os::fd::BorrowedFd<'_>)> {
        let mut sockets = self.workers.handover_sockets();
        sockets.extend(self.admin.iter().map(|a| ("admin".to_owned(), a.handover_socket())));
        sockets.extend(self.metrics_server.iter().map(|m| ("metrics".to_owned(), m.handover_socket())));
        sockets
    }

    /// The userspace L4 services' sockets with their handover keys (copies: the proxy sits
    /// behind a lock), for the process an upgrade starts.
    pub fn l4_handover_sockets(&self) -> Vec<(String, std::os::fd::OwnedFd)> {
        let state = self.l4_proxy.0.lock();
        let sockets = state.proxy.as_ref().map(|p| p.handover_sockets()).unwrap_or_default();
        sockets.into_iter().filter_map(|(key, fd)| Some((key, fd.try_clone_to_owned().ok()?))).collect()
    }

    /// `limits.shutdown_grace_ms` (fixed at start).
    fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.published.load().config.limits.shutdown_grace_ms)
    }

    /// Stops health supervision for an upgrade, so the new process's supervisor is the only
    /// writer of the steering and L4 tables once it starts.
    pub fn pause_supervision(&self) {
        if let Some(kernel) = &self.kernel {
            kernel.pause();
        }
    }

    /// Resumes supervision after an upgrade failed: the tables are written whole again, as
    /// the failed process may have changed them.
    pub fn resume_supervision(&self) {
        if let Some(kernel) = &self.kernel {
            kernel.resume();
        }
    }

    /// Opens the accept loops of a node started holding them.
    pub fn open_accepting(&self) {
        if let Some(gate) = &self.accept_gate {
            let _ = gate.send(true);
        }
    }

    /// Whether the node serves (`/readyz` minus draining): what an upgraded process waits for
    /// before it reports ready.
    pub fn serving(&self) -> bool {
        self.admin_state.serving.load(Ordering::Relaxed)
    }

    /// This process now owns the pins (an upgraded process, once it serves).
    pub fn own_pins(&self) {
        if let Some(kernel) = &self.kernel {
            kernel.dataplane.own_pins();
        }
    }

    /// The end of a process that handed over: the admin and metrics servers stop at once (the
    /// new process answers probes on the same sockets), the workers stop accepting and drain
    /// in-flight requests and WebSockets up to `limits.shutdown_grace_ms`, and the kernel
    /// side is left pinned and attached for the new process.
    pub fn finish_handover(self) {
        let grace = self.shutdown_grace();
        let Node { workers, kernel, admin, metrics_server, l4_proxy, .. } = self;
        drop((admin, metrics_server));
        if let Some(kernel) = &kernel {
            kernel.dataplane.release_pins();
        }
        drain(workers, l4_proxy.0.lock().proxy.take(), grace);
        if let Some(kernel) = kernel {
            kernel.release();
        }
    }

    /// Closes the listeners and lets in-flight requests and WebSockets finish (up to
    /// `limits.shutdown_grace_ms`), then logs the XDP counters and detaches. XDP stays attached
    /// while connections drain: a connection it steered to a worker's own port reaches that
    /// port only through its rewrite, so detaching first would reset it.
    pub fn stop(self) -> anyhow::Result<()> {
        self.admin_state.serving.store(false, Ordering::Relaxed);
        let grace = self.shutdown_grace();
        let Node { workers, kernel, l4_proxy, .. } = self;
        drain(workers, l4_proxy.0.lock().proxy.take(), grace);
        if let Some(kernel) = kernel {
            kernel.stop()?;
        }
        Ok(())
    }
}

/// The end of serving, shared by a stop and a handover: the L4 proxy stops accepting first (its
/// sockets close or stay with the new process), the workers drain, then the L4 connections get
/// what is left of `grace`.
fn drain(workers: Workers, mut l4_proxy: Option<crate::proxy::l4::L4Proxy>, grace: Duration) {
    let deadline = Instant::now() + grace;
    if let Some(proxy) = &mut l4_proxy {
        proxy.close();
    }
    workers.stop();
    if let Some(proxy) = l4_proxy {
        proxy.stop(deadline.saturating_duration_since(Instant::now()));
    }
}

/// Retries binding the L4 services a reload could not, waiting [`L4_RETRY_FIRST`] and then
/// twice as long each time (up to [`L4_RETRY_MAX`]), until none is left unbound or the node
/// stops (its proxy gone).
fn retry_l4_binds(slot: std::sync::Weak<L4ProxySlot>) {
    let mut wait = L4_RETRY_FIRST;
    loop {
        std::thread::sleep(wait);
        let Some(slot) = slot.upgrade() else { return };
        let mut state = slot.0.lock();
        let L4ProxyState { proxy, retrying } = &mut *state;
        let Some(proxy) = proxy.as_mut() else {
            *retrying = false;
            return;
        };
        let (served, errors) = proxy.retry_binds();
        for service in served {
            tracing::info!(service = %service, "L4 service bound on retry; served from now on");
        }
        if proxy.unbound() == 0 {
            *retrying = false;
            return;
        }
        wait = (wait * 2).min(L4_RETRY_MAX);
        for e in errors {
            tracing::warn!(error = %e, retry_in = ?wait, "an L4 service still cannot be served in user space");
        }
    }
}

/// Starts the userspace L4 proxy for `services`, if any.
fn start_l4_proxy(
    services: Vec<crate::config::L4ServiceConfig>,
    inherited: Option<&Inherited>,
    gate: Option<tokio::sync::watch::Receiver<bool>>,
) -> anyhow::Result<Option<crate::proxy::l4::L4Proxy>> {
    if services.is_empty() {
        return Ok(None);
    }
    let names: Vec<String> =
        services.iter().map(|s| format!("{} ({} {})", s.name, s.protocol, s.address)).collect();
    let proxy = crate::proxy::l4::L4Proxy::start(services, inherited, gate)
        .context("cannot serve the L4 services in user space")?;
    tracing::info!(services = %names.join(", "), "L4 services proxied in user space");
    Ok(Some(proxy))
}

/// Reads the bearer token (when there is one) and starts the metrics listener.
fn start_metrics(
    metrics: &crate::config::MetricsConfig,
    state: Arc<AdminState>,
    inherited: Option<&Inherited>,
    gate: Option<tokio::sync::watch::Receiver<bool>>,
) -> anyhow::Result<AdminServer> {
    let token = match &metrics.bearer_token_file {
        Some(path) => {
            let token = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read metrics.bearer_token_file {}", path.display()))?;
            let token = token.trim().to_owned();
            anyhow::ensure!(!token.is_empty(), "metrics.bearer_token_file {} is empty", path.display());
            Some(token)
        }
        None => None,
    };
    let protected = token.is_some();
    let server = AdminServer::start_metrics_inherited(metrics.address, state, token, inherited, gate)
        .with_context(|| format!("cannot start the metrics listener on {}", metrics.address))?;
    tracing::info!(address = %server.addr(), bearer_token = protected, "metrics listening");
    Ok(server)
}

fn options_listeners(config: &Config) -> Vec<std::net::SocketAddr> {
    config.listeners.iter().map(|l| l.address).collect()
}

/// Every endpoint with an active health check in `snapshot`.
fn check_targets(snapshot: &Snapshot) -> Vec<CheckTarget> {
    snapshot
        .backends
        .iter()
        .filter_map(|group| Some((group, group.config.health_check.clone()?)))
        .flat_map(|(group, check)| {
            group.endpoints.iter().map(move |endpoint| CheckTarget {
                endpoint: endpoint.clone(),
                config: check.clone(),
                protocol: group.config.protocol,
                host: group.name.clone(),
                tls: group.tls.clone(),
            })
        })
        .collect()
}

/// The kernel path: the loaded object, its attachments and the health supervisor. It is an
/// accelerator, not a requirement: when any step fails the reason is logged and the workers
/// serve without it.
struct KernelPath {
    dataplane: Dataplane,
    timing: HealthTiming,
    supervisor: parking_lot::Mutex<Supervision>,
    workers: u32,
    /// Written on start and by reloads; the lock is never on a packet or request path.
    guard: Option<parking_lot::Mutex<Guard>>,
    /// The L4 services' health checks and tables.
    l4: parking_lot::Mutex<L4Tables>,
    /// The source address of L4 traffic towards endpoints.
    snat: Option<std::net::Ipv4Addr>,
}

/// Who writes the L4 maps.
enum L4Tables {
    /// No L4 service yet: the maps (opened before steering takes the services map) wait for
    /// the first one.
    Idle(Option<crate::dataplane::L4Maps>),
    Running(L4Supervisor),
    /// Stopped for an upgrade, with the services last configured, for a resume.
    Paused(crate::dataplane::L4Maps, Vec<L4Target>),
}

/// The steering tables, owned by the running supervisor or held while an upgrade runs.
enum Supervision {
    Running(Supervisor),
    Paused(Box<Steering>),
    Gone,
}

impl KernelPath {
    /// Loads the programs and opens one heartbeat handle per worker.
    fn start(config: &Config, pins: Option<&PinOptions>) -> Option<(KernelPath, Vec<HeartbeatWriter>)> {
        let disabled = |e: &dyn std::fmt::Display| {
            tracing::warn!(error = %e, "XDP disabled; serving without the kernel path");
        };
        let loaded = match pins {
            Some(pins) => Dataplane::load_pinned(pins),
            None => Dataplane::load(),
        };
        let dataplane = loaded.inspect_err(|e| disabled(e)).ok()?;
        let heartbeats: Result<Vec<_>, _> =
            (0..config.worker_count() as u32).map(|w| dataplane.heartbeat_writer(w)).collect();
        let heartbeats = heartbeats.inspect_err(|e| disabled(e)).ok()?;
        let timing = HealthTiming { stall_after: Duration::from_millis(config.xdp.heartbeat_timeout_ms) };
        let supervisor = parking_lot::Mutex::new(Supervision::Gone);
        Some((
            KernelPath {
                dataplane,
                timing,
                supervisor,
                workers: config.worker_count() as u32,
                guard: None,
                l4: parking_lot::Mutex::new(L4Tables::Idle(None)),
                snat: None,
            },
            heartbeats,
        ))
    }

    /// Installs the service, starts health supervision and attaches to the interfaces.
    fn steer(mut self, config: &Config, workers: usize) -> Option<KernelPath> {
        let disabled = |e: &dyn std::fmt::Display| {
            tracing::warn!(error = %e, "XDP disabled; serving without the kernel path");
        };
        let services = config
            .listeners
            .iter()
            .enumerate()
            .map(|(l, listener)| Service {
                addr: listener.address.ip(),
                port: listener.address.port(),
                protocol: Protocol::Tcp,
                worker_ports: (0..workers).map(|w| config.worker_port(l, w)).collect(),
            })
            .collect();
        // The L4 maps share the services map with steering: opened before steering takes it.
        *self.l4.get_mut() =
            L4Tables::Idle(Some(self.dataplane.open_l4().inspect_err(|e| disabled(e)).ok()?));
        let mut steering = self.dataplane.take_steering().inspect_err(|e| disabled(e)).ok()?;
        steering.install(services).inspect_err(|e| disabled(e)).ok()?;
        let supervisor = self
            .dataplane
            .start_supervisor(steering, workers as u32, self.timing)
            .inspect_err(|e| disabled(e))
            .ok()?;
        self.workers = workers as u32;
        *self.supervisor.get_mut() = Supervision::Running(supervisor);
        let mut guard = self.dataplane.open_guard().inspect_err(|e| disabled(e)).ok()?;
        guard.apply(&config.xdp.guard).inspect_err(|e| disabled(e)).ok()?;
        self.guard = Some(parking_lot::Mutex::new(guard));
        self.snat = config
            .xdp
            .snat_address
            .or_else(|| config.xdp.interfaces.first().and_then(|i| crate::dataplane::l4::interface_v4(i)));
        self.apply_l4(config);
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

    /// Applies a reloaded `xdp.guard` (a diff; nothing is written when it did not change).
    fn apply_guard(&self, settings: &XdpGuardConfig) -> crate::dataplane::Result<()> {
        let Some(guard) = &self.guard else { return Ok(()) };
        let changes = guard.lock().apply(settings)?;
        if changes.added + changes.removed > 0 {
            tracing::info!(added = changes.added, removed = changes.removed, "xdp guard lists updated");
        }
        Ok(())
    }

    /// Balances `config.l4_services` in XDP: starts the supervisor at the first service and
    /// hands it every later set (it diffs). While paused for an upgrade the set is kept for
    /// the resume.
    fn apply_l4(&self, config: &Config) {
        let targets = l4_targets(config, self.snat);
        let mut l4 = self.l4.lock();
        match &mut *l4 {
            L4Tables::Running(supervisor) => supervisor.configure(targets),
            L4Tables::Paused(_, kept) => *kept = targets,
            L4Tables::Idle(_) if targets.is_empty() => {}
            L4Tables::Idle(maps) => {
                let Some(maps) = maps.take() else {
                    tracing::error!("the L4 maps are not open: the L4 services are not balanced in XDP");
                    return;
                };
                match L4Supervisor::start(maps, targets) {
                    Ok(supervisor) => *l4 = L4Tables::Running(supervisor),
                    Err(e) => tracing::error!(error = %e, "cannot start the L4 supervisor thread"),
                }
            }
        }
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
        if let L4Tables::Running(l4) = std::mem::replace(self.l4.get_mut(), L4Tables::Idle(None)) {
            l4.stop();
        }
        self.dataplane.detach_all().context("detaching XDP")?;
        tracing::info!("xdp detached");
        if let Supervision::Running(supervisor) =
            std::mem::replace(self.supervisor.get_mut(), Supervision::Gone)
        {
            supervisor.stop();
        }
        Ok(())
    }

    fn pause(&self) {
        let mut supervision = self.supervisor.lock();
        if let Supervision::Running(supervisor) = std::mem::replace(&mut *supervision, Supervision::Gone)
            && let Some(steering) = supervisor.stop()
        {
            *supervision = Supervision::Paused(Box::new(steering));
        }
        let mut l4 = self.l4.lock();
        if let L4Tables::Running(supervisor) = std::mem::replace(&mut *l4, L4Tables::Idle(None)) {
            *l4 = match supervisor.stop() {
                Some((maps, targets)) => L4Tables::Paused(maps, targets),
                None => {
                    tracing::error!("the L4 supervisor ended abnormally; the L4 tables stay as they are");
                    L4Tables::Idle(None)
                }
            };
        }
    }

    fn resume(&self) {
        let mut supervision = self.supervisor.lock();
        if let Supervision::Paused(mut steering) = std::mem::replace(&mut *supervision, Supervision::Gone) {
            if let Err(e) = steering.rewrite() {
                tracing::error!(error = %e, "rewriting the steering tables failed");
            }
            match self.dataplane.start_supervisor(*steering, self.workers, self.timing) {
                Ok(supervisor) => *supervision = Supervision::Running(supervisor),
                Err(e) => {
                    tracing::error!(error = %e, "cannot restart health supervision; steering stays as it is")
                }
            }
        }
        let mut l4 = self.l4.lock();
        if let L4Tables::Paused(mut maps, targets) = std::mem::replace(&mut *l4, L4Tables::Idle(None)) {
            maps.forget_written();
            match L4Supervisor::start(maps, targets) {
                Ok(supervisor) => *l4 = L4Tables::Running(supervisor),
                Err(e) => tracing::error!(error = %e, "cannot restart the L4 supervisor thread"),
            }
        }
    }

    /// After a handover: logs the counters (shared with the new process from now on) and
    /// closes this process's handles; the pins keep everything attached.
    fn release(self) {
        if let Ok(counters) = self.dataplane.counters() {
            let summary: Vec<String> =
                counters.iter().map(|(stat, value)| format!("{}={value}", stat.name())).collect();
            tracing::info!(counters = %summary.join(" "), "xdp counters at handover");
        }
        tracing::info!("xdp left attached for the new process");
    }
}

/// Why XDP does not balance `service`, if it does not: the PROXY protocol (no XDP program can
/// add bytes to a flow or take them off), IPv6 (the fast path is IPv4 for now), or no node
/// address for SNAT.
fn not_in_xdp(
    service: &crate::config::L4ServiceConfig,
    snat: Option<std::net::Ipv4Addr>,
) -> Option<&'static str> {
    if !service.xdp {
        Some("its xdp setting is false")
    } else if service.proxy_protocol.is_some() {
        Some("it sends the PROXY protocol")
    } else if service.accept_proxy_protocol {
        Some("it reads a PROXY protocol header from its clients")
    } else if !service.address.is_ipv4() {
        Some("it is an IPv6 service")
    } else if snat.is_none() {
        Some("no node IPv4 address for its source (set xdp.snat_address)")
    } else {
        None
    }
}

/// The L4 services XDP balances.
fn l4_targets(config: &Config, snat: Option<std::net::Ipv4Addr>) -> Vec<L4Target> {
    let mut targets = Vec::new();
    for service in &config.l4_services {
        if let Some(why) = not_in_xdp(service, snat) {
            tracing::info!(service = %service.name, reason = why, "L4 service proxied in user space, not XDP");
            continue;
        }
        tracing::info!(
            service = %service.name,
            address = %service.address,
            endpoints = service.endpoints.len(),
            "L4 service balanced in XDP"
        );
        targets.push(L4Target {
            spec: L4Spec {
                address: service.address,
                protocol: service.protocol,
                endpoints: service.endpoints.clone(),
                idle_timeout: service.idle_timeout(),
                reset_on_removal: service.on_endpoint_removal == L4Removal::Reset,
                snat: snat.expect("checked by not_in_xdp"),
            },
            check: service.health_check.clone(),
        });
    }
    targets
}

/// The L4 services the workers' side proxies: all of them without the kernel path, else those
/// XDP does not balance.
fn l4_in_user_space(config: &Config, kernel: Option<&KernelPath>) -> Vec<crate::config::L4ServiceConfig> {
    config
        .l4_services
        .iter()
        .filter(|s| kernel.is_none_or(|k| not_in_xdp(s, k.snat).is_some()))
        .cloned()
        .collect()
}
