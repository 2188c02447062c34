//! The L4 services in user space, for when XDP does not balance them (the kernel path is off,
//! or a service needs what XDP cannot do: the PROXY protocol either way, IPv6 for now, or
//! `xdp: false`). TCP connections are spliced to a healthy endpoint
//! (`upstream::passthrough::copy_both_ways`, with the PROXY header first when asked; a
//! client's header read and taken off first when the service accepts one); UDP datagrams go through one connected socket per client flow,
//! forgotten after the service's idle timeout. Endpoints are checked as the kernel path checks
//! them (`dataplane::l4_health::probe`). One thread with its own runtime; a flow's endpoint is
//! chosen by a hash of the client's address and port over the healthy endpoints.
//!
//! A reload changes it in place, service by service (a service is its protocol and address):
//! a kept service keeps its socket and its connections and takes the new endpoints, health
//! check and settings for new connections; a removed one stops accepting and lets its
//! connections drain; a new one is bound. An endpoint that leaves (failed check or removed)
//! keeps its connections under `on_endpoint_removal: drain` and has them reset under `reset`,
//! as the kernel path does. On an upgrade the sockets go to the new process and the old one's
//! connections drain, like the workers'.

use std::{
    collections::{BTreeSet, HashMap},
    hash::{Hash, Hasher},
    io,
    net::SocketAddr,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use tokio::{
    net::{TcpListener, TcpStream, UdpSocket},
    sync::{mpsc, watch},
};

use crate::{
    config::{L4Protocol, L4Removal, L4ServiceConfig},
    dataplane::l4_health,
    handover::Inherited,
    proxy::{
        proxy_protocol,
        upstream::passthrough::{CopyBounds, copy_both_ways},
    },
};

/// A write to a side that stopped reading gives up after this.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// A service with `accept_proxy_protocol` closes a connection whose header is not complete
/// within this (nginx's `proxy_protocol_timeout` is 30 s; balancers send it with the first
/// segment).
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a reload waits for a removed service's task to let go of its socket before binding
/// the new ones (an address that moved may overlap the old one).
const RELEASE_WAIT: Duration = Duration::from_secs(1);

/// The running proxy. Dropping it ends every connection at once; [`L4Proxy::stop`] drains.
pub struct L4Proxy {
    runtime: tokio::runtime::Handle,
    /// Ends the runtime's thread, and with it every task still running.
    end: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    services: Vec<Running>,
    /// TCP connections open now, across services: what a drain waits for.
    open: Arc<AtomicUsize>,
    /// Closed until the node opens accepting (a process an upgrade starts waits for it).
    gate: Option<watch::Receiver<bool>>,
    /// The sockets of removed UDP services whose flows still relay replies through them (they
    /// stay bound until the last flow idles out): a service added again at the same address
    /// serves on the same socket, as it could not bind another.
    draining_udp: HashMap<SocketAddr, Weak<UdpSocket>>,
    /// Services of the last reload that could not be bound (their address was taken), until
    /// [`L4Proxy::retry_binds`] binds them or a reload no longer asks for them.
    unbound: Vec<L4ServiceConfig>,
}

/// One service being served.
struct Running {
    shared: Arc<Shared>,
    /// The serving socket (the task has its own handle to the same socket), for the process an
    /// upgrade starts.
    socket: OwnedFd,
    /// Dropping it stops accepting.
    _accepting: watch::Sender<()>,
    /// Held by the serving task until it has let go of its socket.
    alive: Arc<()>,
    /// Dropping it ends the health checkers of the current endpoint set.
    checkers: watch::Sender<()>,
    /// A UDP service's socket, which its flows hold too.
    udp: Option<Weak<UdpSocket>>,
}

/// What a service's tasks read per connection; replaced whole on reload.
struct Shared {
    config: ArcSwap<L4ServiceConfig>,
    healthy: ArcSwap<Vec<SocketAddr>>,
    /// The endpoints whose last check failed (kept across reloads for endpoints that stay).
    down: parking_lot::Mutex<BTreeSet<SocketAddr>>,
    /// Bumped when an endpoint leaves the healthy set: a `reset` service's connections then
    /// look whether theirs did.
    left: watch::Sender<u64>,
}

impl Shared {
    /// Publishes `endpoints` minus the failed ones, telling connections when one left.
    fn publish(&self, endpoints: &[SocketAddr], down: &BTreeSet<SocketAddr>) {
        let healthy: Vec<SocketAddr> = endpoints.iter().filter(|e| !down.contains(e)).copied().collect();
        let before = self.healthy.swap(Arc::new(healthy.clone()));
        if before.iter().any(|e| !healthy.contains(e)) {
            self.left.send_modify(|n| *n += 1);
        }
    }
}

enum Bound {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
    /// The socket of a removed UDP service that is added again while its flows drain.
    UdpDraining(Arc<UdpSocket>),
}

impl Bound {
    fn owned_copy(&self) -> io::Result<OwnedFd> {
        match self {
            Bound::Tcp(listener) => listener.as_fd().try_clone_to_owned(),
            Bound::Udp(socket) => socket.as_fd().try_clone_to_owned(),
            Bound::UdpDraining(socket) => socket.as_fd().try_clone_to_owned(),
        }
    }
}

/// The handover key of a service's socket.
fn handover_key(service: &L4ServiceConfig) -> String {
    format!("l4/{}/{}", service.protocol, service.address)
}

/// The service's socket: the one an upgrade handed over, else a new one.
fn bind(service: &L4ServiceConfig, inherited: Option<&Inherited>) -> io::Result<Bound> {
    let key = handover_key(service);
    let socket = match service.protocol {
        L4Protocol::Tcp => match inherited.and_then(|i| i.take_tcp(&key, service.address)) {
            Some(listener) => Ok(Bound::Tcp(listener)),
            None => std::net::TcpListener::bind(service.address).map(Bound::Tcp),
        },
        L4Protocol::Udp => match inherited.and_then(|i| i.take_udp(&key, service.address)) {
            Some(socket) => Ok(Bound::Udp(socket)),
            None => std::net::UdpSocket::bind(service.address).map(Bound::Udp),
        },
    };
    socket.map_err(|e| {
        io::Error::new(e.kind(), format!("L4 service {} on {}: {e}", service.name, service.address))
    })
}

impl L4Proxy {
    /// Binds (or takes from `inherited`) every service's socket, an error naming the one that
    /// failed, then serves them; accepting waits for `gate` when there is one.
    pub fn start(
        services: Vec<L4ServiceConfig>,
        inherited: Option<&Inherited>,
        gate: Option<watch::Receiver<bool>>,
    ) -> io::Result<L4Proxy> {
        let bound = services.iter().map(|s| bind(s, inherited)).collect::<io::Result<Vec<_>>>()?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let (end, mut ended) = watch::channel(false);
        let thread = std::thread::Builder::new().name("sluice-l4-proxy".into()).spawn(move || {
            runtime.block_on(async move {
                let _ = ended.wait_for(|e| *e).await;
            });
        })?;
        let mut proxy = L4Proxy {
            runtime: handle,
            end,
            thread: Some(thread),
            services: Vec::new(),
            open: Arc::default(),
            gate,
            draining_udp: HashMap::new(),
            unbound: Vec::new(),
        };
        for (service, socket) in services.into_iter().zip(bound) {
            proxy.launch(service, socket)?;
        }
        Ok(proxy)
    }

    /// Serves `services` from now on, service by service (see the module's comment). A new
    /// service that cannot bind is left out and named in the returned errors, and kept for
    /// [`L4Proxy::retry_binds`]; the rest apply.
    pub fn configure(&mut self, services: Vec<L4ServiceConfig>) -> Vec<io::Error> {
        self.unbound.clear();
        let identity = |s: &L4ServiceConfig| (s.protocol, s.address);
        let wanted: HashMap<(L4Protocol, SocketAddr), &L4ServiceConfig> =
            services.iter().map(|s| (identity(s), s)).collect();
        let (kept, removed): (Vec<Running>, Vec<Running>) = std::mem::take(&mut self.services)
            .into_iter()
            .partition(|r| wanted.contains_key(&identity(&r.shared.config.load())));
        let released: Vec<Arc<()>> = removed.iter().map(|r| r.alive.clone()).collect();
        self.draining_udp.retain(|_, socket| socket.strong_count() > 0);
        for running in &removed {
            if let Some(socket) = &running.udp {
                self.draining_udp.insert(running.shared.config.load().address, socket.clone());
            }
        }
        drop(removed);
        wait_released(&released);
        let mut by_identity: HashMap<(L4Protocol, SocketAddr), Running> =
            kept.into_iter().map(|r| (identity(&r.shared.config.load()), r)).collect();
        let mut errors = Vec::new();
        for service in services {
            if let Some(mut running) = by_identity.remove(&identity(&service)) {
                self.update(&mut running, service);
                self.services.push(running);
                continue;
            }
            let draining = match service.protocol {
                L4Protocol::Udp => self.draining_udp.remove(&service.address).and_then(|s| s.upgrade()),
                L4Protocol::Tcp => None,
            };
            let socket = match draining {
                Some(socket) => Ok(Bound::UdpDraining(socket)),
                None => bind(&service, None),
            };
            match socket {
                Ok(socket) => errors.extend(self.launch(service, socket).err()),
                Err(e) => {
                    errors.push(e);
                    self.unbound.push(service);
                }
            }
        }
        errors
    }

    /// How many services of the last reload are still not bound.
    pub fn unbound(&self) -> usize {
        self.unbound.len()
    }

    /// Tries again to bind the services the last reload could not (an address another process
    /// held may be free now): the names of those served from now on, and the errors of those
    /// still not.
    pub fn retry_binds(&mut self) -> (Vec<String>, Vec<io::Error>) {
        let mut served = Vec::new();
        let mut errors = Vec::new();
        for service in std::mem::take(&mut self.unbound) {
            match bind(&service, None) {
                Ok(socket) => {
                    let name = format!("{} ({} {})", service.name, service.protocol, service.address);
                    match self.launch(service, socket) {
                        Ok(()) => served.push(name),
                        Err(e) => errors.push(e),
                    }
                }
                Err(e) => {
                    errors.push(e);
                    self.unbound.push(service);
                }
            }
        }
        (served, errors)
    }

    /// Every service's socket with its handover key, for the process an upgrade starts.
    pub fn handover_sockets(&self) -> Vec<(String, BorrowedFd<'_>)> {
        self.services.iter().map(|r| (handover_key(&r.shared.config.load()), r.socket.as_fd())).collect()
    }

    /// Stops accepting and checking: each socket closes, or stays with the process an upgrade
    /// handed it to. Open connections go on.
    pub fn close(&mut self) {
        let released: Vec<Arc<()>> = self.services.iter().map(|r| r.alive.clone()).collect();
        self.services.clear();
        wait_released(&released);
    }

    /// Closes, lets open TCP connections finish for up to `grace`, then ends the rest (UDP
    /// flows included).
    pub fn stop(mut self, grace: Duration) {
        self.close();
        let deadline = Instant::now() + grace;
        while self.open.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.services.clear();
        let _ = self.end.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// Starts serving one service on its socket (and checking its endpoints).
    fn launch(&mut self, service: L4ServiceConfig, socket: Bound) -> io::Result<()> {
        let copy = socket.owned_copy()?;
        let (left, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            healthy: ArcSwap::from_pointee(service.endpoints.clone()),
            config: ArcSwap::from_pointee(service),
            down: parking_lot::Mutex::new(BTreeSet::new()),
            left,
        });
        let (accepting, stop) = watch::channel(());
        let alive = Arc::new(());
        let serving =
            Serving { shared: shared.clone(), stop, _alive: alive.clone(), gate: self.gate.clone() };
        let open = self.open.clone();
        let _entered = self.runtime.enter();
        let udp_socket = match socket {
            Bound::Tcp(listener) => {
                listener.set_nonblocking(true)?;
                let listener = TcpListener::from_std(listener)?;
                self.runtime.spawn(serve_tcp(serving, listener, open));
                None
            }
            Bound::Udp(socket) => {
                socket.set_nonblocking(true)?;
                Some((serving, Arc::new(UdpSocket::from_std(socket)?)))
            }
            Bound::UdpDraining(socket) => Some((serving, socket)),
        };
        let udp = udp_socket.map(|(serving, socket)| {
            let weak = Arc::downgrade(&socket);
            self.runtime.spawn(serve_udp(serving, socket));
            weak
        });
        let checkers = start_checkers(&self.runtime, &shared);
        self.services.push(Running { shared, socket: copy, _accepting: accepting, alive, checkers, udp });
        Ok(())
    }

    /// A kept service takes its new settings; new endpoints or a new check restart the checks,
    /// an endpoint that stays keeps its health.
    fn update(&self, running: &mut Running, service: L4ServiceConfig) {
        let shared = &running.shared;
        let before = shared.config.load_full();
        if *before == service {
            return;
        }
        let checks_changed =
            before.endpoints != service.endpoints || before.health_check != service.health_check;
        shared.config.store(Arc::new(service));
        if checks_changed {
            let config = shared.config.load();
            let mut down = shared.down.lock();
            down.retain(|e| config.endpoints.contains(e));
            shared.publish(&config.endpoints, &down);
            drop(down);
            running.checkers = start_checkers(&self.runtime, shared);
        }
    }
}

impl Drop for L4Proxy {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Waits (bounded) until every serving task of `released` has dropped its socket.
fn wait_released(released: &[Arc<()>]) {
    let deadline = Instant::now() + RELEASE_WAIT;
    while released.iter().any(|a| Arc::strong_count(a) > 1) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// What a service's serving task holds.
struct Serving {
    shared: Arc<Shared>,
    /// Changes (its sender dropped) when the service stops accepting.
    stop: watch::Receiver<()>,
    /// Dropped with the task, after its socket.
    _alive: Arc<()>,
    gate: Option<watch::Receiver<bool>>,
}

impl Serving {
    /// Waits for the gate; false when the service stopped meanwhile.
    async fn gate_open(&mut self) -> bool {
        let Some(mut gate) = self.gate.clone() else { return true };
        tokio::select! {
            opened = gate.wait_for(|open| *open) => opened.is_ok(),
            _ = self.stop.changed() => false,
        }
    }
}

/// One task per endpoint of the current set: probes every interval (on the blocking pool) and
/// republishes the healthy list when its state changes. The lock is taken only there, never
/// per connection. The returned sender ends them when dropped.
fn start_checkers(runtime: &tokio::runtime::Handle, shared: &Arc<Shared>) -> watch::Sender<()> {
    let (stop_all, stopped) = watch::channel(());
    let config = shared.config.load_full();
    if config.protocol == L4Protocol::Udp && config.health_check.udp_send.is_none() {
        return stop_all;
    }
    for &endpoint in &config.endpoints {
        let (config, shared, mut stopped) = (config.clone(), shared.clone(), stopped.clone());
        runtime.spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(config.health_check.interval_ms));
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = stopped.changed() => return,
                }
                let (check, protocol) = (config.health_check.clone(), config.protocol);
                let up = tokio::task::spawn_blocking(move || l4_health::probe(protocol, endpoint, &check))
                    .await
                    .unwrap_or(false);
                // A reload replaced this set while the probe ran: its answer is not ours to give.
                if stopped.has_changed().is_err() {
                    return;
                }
                let mut down = shared.down.lock();
                let changed = if up { down.remove(&endpoint) } else { down.insert(endpoint) };
                if changed {
                    tracing::info!(%endpoint, healthy = up, "l4 endpoint health changed (user space)");
                    shared.publish(&config.endpoints, &down);
                }
            }
        });
    }
    stop_all
}

/// The endpoint for a client flow: a hash of its address and port over the healthy ones.
fn pick(healthy: &ArcSwap<Vec<SocketAddr>>, client: SocketAddr) -> Option<SocketAddr> {
    let endpoints = healthy.load();
    if endpoints.is_empty() {
        return None;
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    client.hash(&mut hasher);
    Some(endpoints[(hasher.finish() % endpoints.len() as u64) as usize])
}

/// Counts a TCP connection as open while it lives.
struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    fn new(open: &Arc<AtomicUsize>) -> OpenConnection {
        open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(open.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve_tcp(mut serving: Serving, listener: TcpListener, open: Arc<AtomicUsize>) {
    if serving.gate_open().await {
        accept_tcp(&mut serving, &listener, open).await;
    }
    // The socket first, then `alive`: a reload waiting to bind an overlapping address goes on
    // only once the socket is closed.
    drop(listener);
    drop(serving);
}

async fn accept_tcp(serving: &mut Serving, listener: &TcpListener, open: Arc<AtomicUsize>) {
    let local = listener.local_addr().ok();
    loop {
        let (client, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!(error = %e, "l4 accept failed");
                    continue;
                }
            },
            _ = serving.stop.changed() => return,
        };
        let config = serving.shared.config.load_full();
        // The address the client reached (a service on 0.0.0.0 is bound to none in particular).
        let local = client.local_addr().ok().or(local).unwrap_or(config.address);
        let connection = OpenConnection::new(&open);
        crate::metrics::l4_proxied("tcp");
        tokio::spawn(relay_tcp(client, peer, local, (config, serving.shared.clone()), connection));
    }
}

/// One TCP connection: takes off the client's PROXY header when the service accepts one (its
/// source is then the client), picks an endpoint, connects and copies both ways until either
/// side ends, the idle bound passes, or (`reset` services) the endpoint leaves the healthy set.
async fn relay_tcp(
    client: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    (config, shared): (Arc<L4ServiceConfig>, Arc<Shared>),
    _open: OpenConnection,
) {
    let mut client = client;
    let mut source = peer;
    if config.accept_proxy_protocol {
        match proxy_protocol::read(&mut client, PROXY_HEADER_TIMEOUT).await {
            Ok(header) => source = header.source.unwrap_or(peer),
            Err(e) => {
                tracing::debug!(%peer, error = %e, "l4: connection closed: no valid PROXY protocol header");
                crate::metrics::l4_proxy_protocol_refused(e.reason());
                return;
            }
        }
    }
    let Some(endpoint) = pick(&shared.healthy, source) else {
        tracing::debug!(service = %config.name, "l4: no healthy endpoint; connection closed");
        return;
    };
    let connect_timeout = Duration::from_millis(config.health_check.timeout_ms.max(1000));
    let Ok(Ok(mut upstream)) = tokio::time::timeout(connect_timeout, TcpStream::connect(endpoint)).await
    else {
        tracing::debug!(%endpoint, "l4: endpoint connect failed");
        return;
    };
    let _ = upstream.set_nodelay(true);
    let header = config.proxy_protocol.map(|v| proxy_protocol::encode(v, source, local)).unwrap_or_default();
    let bounds = CopyBounds { idle: Some(config.idle_timeout()), send_timeout: SEND_TIMEOUT };
    let reset = config.on_endpoint_removal == L4Removal::Reset;
    let mut left = shared.left.subscribe();
    tokio::select! {
        _ = copy_both_ways(&mut client, &mut upstream, (Vec::new(), header), bounds) => {}
        () = endpoint_left(&shared, endpoint, &mut left), if reset => {
            // A reset, not a close: the client learns at once that its flow is gone, as
            // from the kernel path's new endpoint.
            let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
            let _ = socket2::SockRef::from(&upstream).set_linger(Some(Duration::ZERO));
        }
    }
}

/// Resolves once `endpoint` is no longer among the healthy endpoints.
async fn endpoint_left(shared: &Shared, endpoint: SocketAddr, left: &mut watch::Receiver<u64>) {
    loop {
        if left.changed().await.is_err() {
            return std::future::pending().await;
        }
        if !shared.healthy.load().contains(&endpoint) {
            return;
        }
    }
}

/// A client flow's socket towards its endpoint and the time of the client's last datagram.
struct UdpFlow {
    upstream: Arc<UdpSocket>,
    last_seen_ms: Arc<AtomicU64>,
}

async fn serve_udp(mut serving: Serving, socket: Arc<UdpSocket>) {
    if serving.gate_open().await {
        receive_udp(&mut serving, &socket).await;
    }
    drop(socket);
    drop(serving);
}

async fn receive_udp(serving: &mut Serving, socket: &Arc<UdpSocket>) {
    // Only this task touches the table; reader tasks report their flow's expiry by channel.
    let mut flows: HashMap<SocketAddr, UdpFlow> = HashMap::new();
    let (expired_tx, mut expired) = mpsc::unbounded_channel::<SocketAddr>();
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, client) = tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok(received) => received,
                Err(_) => continue,
            },
            Some(client) = expired.recv() => {
                flows.remove(&client);
                continue;
            }
            _ = serving.stop.changed() => return,
        };
        let now = crate::now_ms();
        let flow = match flows.entry(client) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                let Some(endpoint) = pick(&serving.shared.healthy, client) else { continue };
                let Ok(upstream) = connect_udp(endpoint).await else { continue };
                let flow =
                    UdpFlow { upstream: Arc::new(upstream), last_seen_ms: Arc::new(AtomicU64::new(now)) };
                tokio::spawn(relay_replies(
                    flow.upstream.clone(),
                    socket.clone(),
                    client,
                    (flow.last_seen_ms.clone(), serving.shared.config.load().idle_timeout()),
                    expired_tx.clone(),
                ));
                crate::metrics::l4_proxied("udp");
                entry.insert(flow)
            }
        };
        flow.last_seen_ms.store(now, Ordering::Relaxed);
        let _ = flow.upstream.send(&buf[..n]).await;
    }
}

async fn connect_udp(endpoint: SocketAddr) -> io::Result<UdpSocket> {
    let bind: SocketAddr = if endpoint.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
    let upstream = UdpSocket::bind(bind).await?;
    upstream.connect(endpoint).await?;
    Ok(upstream)
}

/// Sends the endpoint's datagrams back to the client until the flow has been idle (no
/// datagram either way) for the idle timeout, then reports it expired.
async fn relay_replies(
    upstream: Arc<UdpSocket>,
    socket: Arc<UdpSocket>,
    client: SocketAddr,
    (last_seen_ms, idle): (Arc<AtomicU64>, Duration),
    expired: mpsc::UnboundedSender<SocketAddr>,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let quiet =
            Duration::from_millis(crate::now_ms().saturating_sub(last_seen_ms.load(Ordering::Relaxed)));
        let Some(left) = idle.checked_sub(quiet).filter(|left| !left.is_zero()) else {
            let _ = expired.send(client);
            return;
        };
        // An ICMP error from the endpoint keeps the flow (its client may retry); the idle time
        // running out ends it unless the client sent meanwhile: the loop head decides.
        if let Ok(Ok(n)) = tokio::time::timeout(left, upstream.recv(&mut buf)).await {
            last_seen_ms.store(crate::now_ms(), Ordering::Relaxed);
            let _ = socket.send_to(&buf[..n], client).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::{TcpListener as StdListener, TcpStream as StdStream, UdpSocket as StdUdp},
    };

    use super::*;
    use crate::config::Config;

    fn service(yaml_tail: &str) -> L4ServiceConfig {
        let yaml =
            format!("listeners: [{{name: a, address: '127.0.0.1:1'}}]\nl4_services:\n  - {yaml_tail}\n");
        Config::from_yaml(&yaml, "t.yaml").unwrap().l4_services.remove(0)
    }

    /// A TCP endpoint that answers each connection with its name and closes.
    fn tcp_endpoint(
        name: &'static str,
    ) -> (SocketAddr, std::thread::JoinHandle<()>, Arc<std::sync::atomic::AtomicBool>) {
        let listener = StdListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(mut stream) = stream else { continue };
                let _ = stream.write_all(name.as_bytes());
            }
        });
        (addr, thread, stop)
    }

    #[test]
    fn tcp_connections_spread_over_healthy_endpoints_and_avoid_a_dead_one() {
        let (a, _ta, _) = tcp_endpoint("a");
        let (b, tb, stop_b) = tcp_endpoint("b");
        let port = StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let proxy = L4Proxy::start(vec![service(&format!(
            "{{name: t, address: '127.0.0.1:{port}', endpoints: ['{a}', '{b}'], health_check: {{interval_ms: 100, timeout_ms: 50}}}}"
        ))], None, None)
        .unwrap();
        let ask = || -> String {
            let mut stream = StdStream::connect(("127.0.0.1", port)).unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).unwrap();
            answer
        };
        let answers: Vec<String> = (0..60).map(|_| ask()).collect();
        assert!(answers.iter().any(|a| a == "a") && answers.iter().any(|a| a == "b"), "{answers:?}");
        stop_b.store(true, Ordering::Relaxed);
        let _ = StdStream::connect(b);
        tb.join().unwrap();
        // The bound under test: one interval (+ the check) after b died.
        std::thread::sleep(Duration::from_millis(250));
        let answers: Vec<String> = (0..40).map(|_| ask()).collect();
        assert!(answers.iter().all(|a| a == "a"), "{answers:?}");
        proxy.stop(Duration::ZERO);
    }

    /// A TCP endpoint that answers each connection with the bytes it received up to `hello`.
    fn tcp_recorder() -> SocketAddr {
        let listener = StdListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut buf = [0u8; 256];
                let mut seen = Vec::new();
                while !seen.ends_with(b"hello") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(&seen);
            }
        });
        addr
    }

    #[test]
    fn a_clients_proxy_protocol_header_is_taken_off_and_its_source_sent_on() {
        let endpoint = tcp_recorder();
        let port = StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let proxy = L4Proxy::start(
            vec![service(&format!(
                "{{name: t, address: '127.0.0.1:{port}', endpoints: ['{endpoint}'], accept_proxy_protocol: true, proxy_protocol: v1}}"
            ))],
            None,
            None,
        )
        .unwrap();
        let exchange = |sent: &[u8]| -> Vec<u8> {
            let mut stream = StdStream::connect(("127.0.0.1", port)).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            stream.write_all(sent).unwrap();
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer);
            answer
        };
        let answer = exchange(b"PROXY TCP4 203.0.113.7 198.51.100.1 40000 5432\r\nhello");
        assert_eq!(
            String::from_utf8_lossy(&answer),
            format!("PROXY TCP4 203.0.113.7 127.0.0.1 40000 {port}\r\nhello"),
            "the endpoint sees the client the header named, then the bytes after the header"
        );
        // Without a header the connection is closed before any endpoint sees it.
        assert_eq!(exchange(b"GET / HTTP/1.1\r\n\r\nhello"), b"");
        proxy.stop(Duration::ZERO);
    }

    #[test]
    fn udp_flows_get_their_endpoints_answers_and_expire_when_idle() {
        let endpoint = StdUdp::bind("127.0.0.1:0").unwrap();
        let endpoint_addr = endpoint.local_addr().unwrap();
        let echo = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let mut peers = BTreeSet::new();
            for _ in 0..3 {
                let (n, from) = endpoint.recv_from(&mut buf).unwrap();
                peers.insert(from);
                endpoint.send_to(&buf[..n], from).unwrap();
            }
            peers
        });
        let port = StdUdp::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let proxy = L4Proxy::start(vec![service(&format!(
            "{{name: u, address: '127.0.0.1:{port}', protocol: udp, endpoints: ['{endpoint_addr}'], idle_timeout_ms: 1000}}"
        ))], None, None)
        .unwrap();
        let client = StdUdp::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        client.connect(("127.0.0.1", port)).unwrap();
        let mut buf = [0u8; 64];
        for message in [&b"one"[..], b"two"] {
            client.send(message).unwrap();
            let n = client.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], message);
        }
        // Past the idle timeout the flow is forgotten: the next datagram opens a new one, from
        // another proxy port.
        std::thread::sleep(Duration::from_millis(1300));
        client.send(b"three").unwrap();
        let n = client.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"three");
        let peers = echo.join().unwrap();
        assert_eq!(peers.len(), 2, "one upstream socket per flow, a new one after expiry: {peers:?}");
        proxy.stop(Duration::ZERO);
    }

    /// A TCP endpoint that prefixes every chunk it receives with its name and sends it back,
    /// one thread per connection, until the process ends.
    fn echo_endpoint(name: &'static str) -> SocketAddr {
        let listener = StdListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 256];
                    while let Ok(n @ 1..) = stream.read(&mut buf) {
                        let mut answer = name.as_bytes().to_vec();
                        answer.extend_from_slice(&buf[..n]);
                        if stream.write_all(&answer).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn free_port() -> u16 {
        StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    fn tcp_service(name: &str, port: u16, endpoints: &[SocketAddr], tail: &str) -> L4ServiceConfig {
        let endpoints: Vec<String> = endpoints.iter().map(|e| format!("'{e}'")).collect();
        service(&format!(
            "{{name: {name}, address: '127.0.0.1:{port}', endpoints: [{}], health_check: {{interval_ms: 60000}}{tail}}}",
            endpoints.join(", ")
        ))
    }

    /// Sends `message` and reads one answer (the endpoint's name and the message).
    fn exchange(stream: &mut StdStream, message: &str) -> io::Result<String> {
        stream.write_all(message.as_bytes())?;
        let mut buf = [0u8; 256];
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
        }
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    fn connect(port: u16) -> StdStream {
        let stream = StdStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream
    }

    /// Polls `condition` every 10 ms until it holds or 5 s pass.
    fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_reload_keeps_the_connections_of_a_kept_service_and_places_new_ones_on_new_endpoints() {
        let (a, b) = (echo_endpoint("a:"), echo_endpoint("b:"));
        let port = free_port();
        let mut proxy = L4Proxy::start(vec![tcp_service("t", port, &[a], "")], None, None).unwrap();
        let mut long = connect(port);
        assert_eq!(exchange(&mut long, "1").unwrap(), "a:1");
        // Endpoint a leaves, b comes: a drain service keeps a's connection.
        assert!(proxy.configure(vec![tcp_service("t", port, &[b], "")]).is_empty());
        assert_eq!(exchange(&mut long, "2").unwrap(), "a:2", "the open connection stays on its endpoint");
        for _ in 0..5 {
            assert_eq!(exchange(&mut connect(port), "n").unwrap(), "b:n", "new connections go to b");
        }
        assert_eq!(exchange(&mut long, "3").unwrap(), "a:3");
        proxy.stop(Duration::ZERO);
    }

    #[test]
    fn a_reset_service_resets_the_connections_of_an_endpoint_that_leaves_and_only_those() {
        let (a, b) = (echo_endpoint("a:"), echo_endpoint("b:"));
        let port = free_port();
        let reset = ", on_endpoint_removal: reset";
        let mut proxy = L4Proxy::start(vec![tcp_service("t", port, &[a, b], reset)], None, None).unwrap();
        let mut on_a = Vec::new();
        let mut on_b = Vec::new();
        while on_a.is_empty() || on_b.is_empty() {
            let mut stream = connect(port);
            match exchange(&mut stream, "x").unwrap().as_str() {
                "a:x" => on_a.push(stream),
                _ => on_b.push(stream),
            }
            assert!(on_a.len() + on_b.len() < 200, "the hash never picked both endpoints");
        }
        assert!(proxy.configure(vec![tcp_service("t", port, &[b], reset)]).is_empty());
        let mut stream = on_a.remove(0);
        let deadline = Instant::now() + Duration::from_secs(5);
        let error = loop {
            match exchange(&mut stream, "y") {
                Err(e) => break e,
                Ok(_) => assert!(Instant::now() < deadline, "a's connection was never reset"),
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(
            matches!(error.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe),
            "a's connection is reset, not left open or closed quietly: {error:?}"
        );
        assert_eq!(exchange(&mut on_b[0], "y").unwrap(), "b:y", "b's connection is untouched");
        proxy.stop(Duration::ZERO);
    }

    #[test]
    fn a_reload_binds_new_services_drains_removed_ones_and_reports_what_cannot_bind() {
        let a = echo_endpoint("a:");
        let (first, second) = (free_port(), free_port());
        let mut proxy = L4Proxy::start(vec![tcp_service("one", first, &[a], "")], None, None).unwrap();
        let mut open = connect(first);
        assert_eq!(exchange(&mut open, "1").unwrap(), "a:1");
        let taken = StdListener::bind("127.0.0.1:0").unwrap();
        let busy = taken.local_addr().unwrap().port();
        let errors =
            proxy.configure(vec![tcp_service("two", second, &[a], ""), tcp_service("busy", busy, &[a], "")]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].to_string().contains("busy"), "the error names the service: {}", errors[0]);
        assert_eq!(exchange(&mut connect(second), "2").unwrap(), "a:2", "the new service serves");
        assert!(StdStream::connect(("127.0.0.1", first)).is_err(), "the removed service no longer accepts");
        assert_eq!(exchange(&mut open, "3").unwrap(), "a:3", "its open connection drains");
        // The removed service's port is free again: the same address can come back.
        assert!(proxy.configure(vec![tcp_service("one", first, &[a], "")]).is_empty());
        assert_eq!(exchange(&mut connect(first), "4").unwrap(), "a:4");
        proxy.stop(Duration::ZERO);
    }

    #[test]
    fn a_service_whose_address_was_taken_is_bound_by_a_retry_once_it_is_free() {
        let a = echo_endpoint("a:");
        let other = free_port();
        let taken = StdListener::bind("127.0.0.1:0").unwrap();
        let busy = taken.local_addr().unwrap().port();
        let mut proxy = L4Proxy::start(Vec::new(), None, None).unwrap();
        let errors =
            proxy.configure(vec![tcp_service("busy", busy, &[a], ""), tcp_service("other", other, &[a], "")]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(proxy.unbound(), 1);
        assert_eq!(exchange(&mut connect(other), "1").unwrap(), "a:1", "the other service serves at once");
        let (served, errors) = proxy.retry_binds();
        assert!(served.is_empty() && errors.len() == 1, "still taken: {served:?} {errors:?}");
        assert_eq!(proxy.unbound(), 1);
        drop(taken);
        let (served, errors) = proxy.retry_binds();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(served.len(), 1);
        assert!(served[0].starts_with("busy "), "{served:?}");
        assert_eq!(proxy.unbound(), 0);
        assert_eq!(exchange(&mut connect(busy), "2").unwrap(), "a:2", "bound on the retry, it serves");
        assert_eq!(exchange(&mut connect(other), "3").unwrap(), "a:3");

        // A reload that no longer asks for an unbound service drops it from the retries.
        let taken = StdListener::bind("127.0.0.1:0").unwrap();
        let busy_again = taken.local_addr().unwrap().port();
        assert_eq!(proxy.configure(vec![tcp_service("later", busy_again, &[a], "")]).len(), 1);
        assert_eq!(proxy.unbound(), 1);
        assert!(proxy.configure(Vec::new()).is_empty());
        assert_eq!(proxy.unbound(), 0);
        proxy.stop(Duration::ZERO);
    }

    #[test]
    fn stop_waits_for_open_connections_within_the_grace() {
        let a = echo_endpoint("a:");
        let port = free_port();
        let proxy = L4Proxy::start(vec![tcp_service("t", port, &[a], "")], None, None).unwrap();
        let mut open = connect(port);
        assert_eq!(exchange(&mut open, "1").unwrap(), "a:1");
        let stopping = std::thread::spawn(move || proxy.stop(Duration::from_secs(10)));
        eventually("the listener closes", || StdStream::connect(("127.0.0.1", port)).is_err());
        assert_eq!(exchange(&mut open, "2").unwrap(), "a:2", "the open connection is served while draining");
        assert!(!stopping.is_finished(), "stop waits while a connection is open");
        drop(open);
        stopping.join().unwrap();
    }

    #[test]
    fn a_udp_service_removed_and_added_again_serves_on_the_socket_its_flows_still_hold() {
        let endpoint = StdUdp::bind("127.0.0.1:0").unwrap();
        let endpoint_addr = endpoint.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = endpoint.recv_from(&mut buf) {
                let _ = endpoint.send_to(&buf[..n], from);
            }
        });
        let port = StdUdp::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let udp = service(&format!(
            "{{name: u, address: '127.0.0.1:{port}', protocol: udp, endpoints: ['{endpoint_addr}']}}"
        ));
        let mut proxy = L4Proxy::start(vec![udp.clone()], None, None).unwrap();
        let client = StdUdp::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        client.connect(("127.0.0.1", port)).unwrap();
        let ask = |message: &[u8]| -> Vec<u8> {
            client.send(message).unwrap();
            let mut buf = [0u8; 64];
            let n = client.recv(&mut buf).unwrap();
            buf[..n].to_vec()
        };
        assert_eq!(ask(b"one"), b"one");
        // Removed: its flow keeps the socket bound (for the endpoint's late replies) until it
        // idles out, so the same address could not be bound again meanwhile.
        assert!(proxy.configure(Vec::new()).is_empty());
        assert!(StdUdp::bind(("127.0.0.1", port)).is_err(), "the draining flow holds the socket");
        let errors = proxy.configure(vec![udp]);
        assert!(errors.is_empty(), "added again on the socket it had: {errors:?}");
        assert_eq!(ask(b"two"), b"two");
        proxy.stop(Duration::ZERO);
    }
}
