//! Worker threads. Each worker owns a current-thread tokio runtime and its own SO_REUSEPORT
//! listener, so no lock or queue is shared between workers on the request path. A worker
//! accepts, runs the TLS handshake or a passthrough splice, and serves HTTP with the request
//! pipeline as the HTTP server's handler.

mod activity;
mod busy_poll;

use std::{io, net::SocketAddr, thread::JoinHandle, time::Duration};

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::{Semaphore, mpsc, watch};

use self::activity::{Activity, ActivityIo};
use super::{
    headers::Forwarded,
    http1::guard::{H1Guard, HeadClock, ParsedHeads},
    pipeline::Connection,
    snapshot::{Published, Snapshot},
    upstream::{
        passthrough::{self, CopyEnd},
        pool,
    },
};
use crate::{
    config::Limits,
    dataplane::HeartbeatWriter,
    metrics::{Metrics, SendTimeout, WorkerMetrics},
};

/// How to start the workers.
pub struct WorkerOptions {
    /// The service addresses; every worker accepts on each through one SO_REUSEPORT group.
    pub listeners: Vec<SocketAddr>,
    pub count: usize,
    /// With XDP steering, worker `w` also accepts on its own port for listener `l`:
    /// `own_port_base + l * count + w` (same IP). XDP rewrites each new connection's
    /// destination port to the chosen worker's own port.
    pub own_port_base: Option<u16>,
    /// One heartbeat handle per worker (empty: no heartbeats, as without XDP).
    pub heartbeats: Vec<HeartbeatWriter>,
    /// How often each worker beats.
    pub heartbeat_period: Duration,
    /// The serving snapshot every worker reads per request.
    pub published: Published,
    /// Limits applied when the workers start (`max_connections_per_worker`,
    /// `shutdown_grace_ms`, `defer_accept`); per-connection limits are read from the current
    /// snapshot.
    pub limits: Limits,
    /// One entry per worker.
    pub metrics: Arc<Metrics>,
    /// Busy polling window after the last network work (`busy_poll_us`); zero: off.
    pub busy_poll: Duration,
    /// Listening sockets handed over by the process this one replaces (an upgrade), taken by
    /// key instead of binding.
    pub inherited: Option<Arc<crate::handover::Inherited>>,
    /// When set, accept loops wait until it turns true (an upgraded process in Kubernetes mode
    /// accepts only once it has the cluster's routes; the old process serves until then).
    pub accept_gate: Option<watch::Receiver<bool>>,
}

impl WorkerOptions {
    /// `count` workers sharing `listen`, without own ports or heartbeats.
    pub fn shared(listen: SocketAddr, count: usize, published: Published) -> WorkerOptions {
        let limits = published.load().limits.clone();
        WorkerOptions {
            listeners: vec![listen],
            count,
            own_port_base: None,
            heartbeats: Vec::new(),
            heartbeat_period: Duration::from_millis(75),
            published,
            limits,
            metrics: Arc::new(Metrics::new(count.max(1))),
            busy_poll: Duration::ZERO,
            inherited: None,
            accept_gate: None,
        }
    }

    /// Worker `worker`'s own port for listener `listener`, when workers have them.
    pub fn own_port(&self, listener: usize, worker: usize) -> Option<u16> {
        let base = self.own_port_base?;
        Some(base + (listener * self.count.max(1) + worker) as u16)
    }
}

/// Faults a worker can be told to simulate: operators' drills and the tests that prove a
/// stalled or dead worker is taken out of steering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Block the worker's thread (no accepting, no serving, no heartbeats) for this long.
    Stall(Duration),
    /// End the worker: its listeners and connections close.
    Exit,
}

/// The running workers. Dropping this stops them and joins their threads.
pub struct Workers {
    shutdown: watch::Sender<bool>,
    faults: Vec<mpsc::UnboundedSender<Fault>>,
    threads: Vec<JoinHandle<()>>,
    local_addrs: Vec<SocketAddr>,
    /// A duplicate of every listening socket with its handover key, for an upgrade; closed
    /// first on stop, so a stopped node's ports refuse at once.
    handover: Vec<(String, std::os::fd::OwnedFd)>,
}

impl Workers {
    /// Binds every listener, then starts one worker thread per worker. Binding happens here,
    /// before any thread starts, so a taken port is an error to the caller rather than a log
    /// line from a thread.
    pub fn start(options: WorkerOptions) -> io::Result<Workers> {
        let count = options.count.max(1);
        let (shutdown, shutdown_rx) = watch::channel(false);
        // With port 0 the first bind picks the port; the other workers must join that one.
        let mut local_addrs = options.listeners.clone();
        let mut bound: Vec<Vec<Bound>> = Vec::with_capacity(count);
        let mut handover = Vec::new();
        let inherited = options.inherited.as_deref();
        let bind = |a: SocketAddr| reuseport_listener(a, &options.limits);
        for worker in 0..count {
            let mut sockets = Vec::with_capacity(local_addrs.len());
            for (l, addr) in local_addrs.iter_mut().enumerate() {
                let key = format!("worker/{worker}/{l}/shared");
                let shared = crate::handover::listener_for(inherited, &key, *addr, bind)?;
                handover.push((key, shared.try_clone()?.into()));
                *addr = shared.local_addr()?;
                let own = match options.own_port(l, worker) {
                    Some(port) => {
                        let key = format!("worker/{worker}/{l}/own");
                        let own = crate::handover::listener_for(
                            inherited,
                            &key,
                            SocketAddr::new(addr.ip(), port),
                            bind,
                        )?;
                        handover.push((key, own.try_clone()?.into()));
                        Some(own)
                    }
                    None => None,
                };
                sockets.push(Bound { shared, own });
            }
            bound.push(sockets);
        }
        if !options.heartbeats.is_empty() && options.heartbeats.len() != count {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "one heartbeat handle per worker"));
        }
        let mut heartbeats = options.heartbeats.into_iter().map(Some).collect::<Vec<_>>();
        heartbeats.resize_with(count, || None);
        let mut threads = Vec::with_capacity(count);
        let mut faults = Vec::with_capacity(count);
        for (id, (listeners, heartbeat)) in bound.into_iter().zip(heartbeats).enumerate() {
            let (fault_tx, fault_rx) = mpsc::unbounded_channel();
            let worker = Worker {
                id,
                metrics: options.metrics.worker(id),
                published: options.published.clone(),
                limits: options.limits.clone(),
                listeners,
                heartbeat,
                heartbeat_period: options.heartbeat_period,
                busy_poll: options.busy_poll,
                shutdown: shutdown_rx.clone(),
                faults: fault_rx,
                accept_gate: options.accept_gate.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("sluice-worker-{id}"))
                .spawn(move || worker.run())?;
            threads.push(thread);
            faults.push(fault_tx);
        }
        Ok(Workers { shutdown, faults, threads, local_addrs, handover })
    }

    /// Every listening socket with its handover key, for the process that takes over.
    pub fn handover_sockets(&self) -> Vec<(String, std::os::fd::BorrowedFd<'_>)> {
        use std::os::fd::AsFd;
        self.handover.iter().map(|(key, fd)| (key.clone(), fd.as_fd())).collect()
    }

    /// Tells worker `id` to simulate `fault`. Returns false if there is no such worker or it
    /// has already exited.
    pub fn inject(&self, id: usize, fault: Fault) -> bool {
        self.faults.get(id).is_some_and(|tx| tx.send(fault).is_ok())
    }

    /// The addresses the workers accept on, one per listener (ports resolved when 0 was asked).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    pub fn len(&self) -> usize {
        self.threads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    /// Stops accepting on every worker and waits for the threads to end.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.handover.clear();
        let _ = self.shutdown.send(true);
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!("a worker thread panicked");
            }
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

fn reuseport_listener(addr: SocketAddr, limits: &Limits) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    if limits.defer_accept {
        // Whole seconds; the kernel turns them into SYN-ACK retransmissions.
        let seconds = limits.header_read_timeout_ms.div_ceil(1000).clamp(1, i32::MAX as u64) as libc::c_int;
        set_defer_accept(&socket, seconds)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// `TCP_DEFER_ACCEPT` (socket2 has no setter for it).
fn set_defer_accept(socket: &Socket, seconds: libc::c_int) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid socket descriptor, and an int option value of the size passed.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&seconds as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// The sockets of one listener in one worker.
struct Bound {
    shared: std::net::TcpListener,
    own: Option<std::net::TcpListener>,
}

/// One worker thread's state.
struct Worker {
    id: usize,
    metrics: Arc<WorkerMetrics>,
    published: Published,
    limits: Limits,
    listeners: Vec<Bound>,
    heartbeat: Option<HeartbeatWriter>,
    heartbeat_period: Duration,
    busy_poll: Duration,
    shutdown: watch::Receiver<bool>,
    faults: mpsc::UnboundedReceiver<Fault>,
    accept_gate: Option<watch::Receiver<bool>>,
}

impl Worker {
    fn run(self) {
        let id = self.id;
        let mut builder = tokio::runtime::Builder::new_current_thread();
        let spinner = busy_poll::Spinner::install(&mut builder, self.busy_poll);
        let runtime = match builder.enable_all().build() {
            Ok(runtime) => runtime,
            Err(e) => {
                tracing::error!(worker = id, error = %e, "cannot start the worker runtime");
                return;
            }
        };
        runtime.block_on(self.serve(spinner));
    }

    async fn serve(self, spinner: Option<busy_poll::Spinner>) {
        let Worker {
            id,
            metrics,
            published,
            limits,
            listeners,
            heartbeat,
            heartbeat_period,
            busy_poll: _,
            mut shutdown,
            mut faults,
            accept_gate,
        } = self;
        // Each connection holds a permit: the cap on connections per worker, and on shutdown
        // the way to wait for the last one.
        let max_connections = limits.max_connections_per_worker.clamp(1, Semaphore::MAX_PERMITS);
        let slots = Arc::new(Semaphore::new(max_connections));
        // Accept loops and heartbeats are tasks of this worker's own runtime: a stalled
        // thread stops all of them, and aborting the set closes every listener.
        let mut tasks = tokio::task::JoinSet::new();
        for (listener_index, bound) in listeners.into_iter().enumerate() {
            // Connections on a worker's own port came for the shared listener's service.
            let service_addr = bound.shared.local_addr().ok();
            for listener in std::iter::once(bound.shared).chain(bound.own) {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => {
                        let context = AcceptContext {
                            id,
                            service_addr: service_addr.unwrap_or_else(|| ([0, 0, 0, 0], 0).into()),
                            published: published.clone(),
                            slots: slots.clone(),
                            shutdown: shutdown.clone(),
                            metrics: metrics.clone(),
                            listener_index,
                            accept_gate: accept_gate.clone(),
                        };
                        tasks.spawn(accept_loop(listener, context));
                    }
                    Err(e) => {
                        tracing::error!(worker = id, error = %e, "cannot register a listener");
                        return;
                    }
                }
            }
        }
        if let Some(spinner) = spinner {
            tasks.spawn(spinner.run());
        }
        // Idle upstream connections that timed out or were closed by their backend are
        // closed even when no request comes to notice them.
        tasks.spawn(async {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                pool::reap_idle();
            }
        });
        if let Some(mut heartbeat) = heartbeat {
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(heartbeat_period);
                loop {
                    tick.tick().await;
                    heartbeat.beat();
                }
            });
        }
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                fault = faults.recv() => match fault {
                    Some(Fault::Stall(duration)) => {
                        tracing::warn!(worker = id, ?duration, "stalling on request");
                        // Blocking on purpose: the whole runtime stops, as in a real stall.
                        std::thread::sleep(duration);
                    }
                    Some(Fault::Exit) => {
                        tracing::warn!(worker = id, "exiting on request");
                        break;
                    }
                    None => {}
                },
            }
        }
        // Listeners close first; connections then finish their requests (they saw the
        // shutdown signal too) within the grace period.
        tasks.abort_all();
        let grace = Duration::from_millis(limits.shutdown_grace_ms);
        if tokio::time::timeout(grace, slots.acquire_many(max_connections as u32)).await.is_err() {
            tracing::warn!(
                worker = id,
                "connections still open after the shutdown grace period; closing them"
            );
        }
    }
}

/// What an accept loop hands to each connection.
struct AcceptContext {
    id: usize,
    service_addr: SocketAddr,
    published: Published,
    slots: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
    metrics: Arc<WorkerMetrics>,
    /// The listener's index in the configuration: which TLS settings apply.
    listener_index: usize,
    accept_gate: Option<watch::Receiver<bool>>,
}

async fn accept_loop(listener: tokio::net::TcpListener, context: AcceptContext) {
    let id = context.id;
    if let Some(mut gate) = context.accept_gate.clone()
        && gate.wait_for(|open| *open).await.is_err()
    {
        return;
    }
    loop {
        // At the connection cap, wait for a slot before accepting more.
        let Ok(slot) = context.slots.clone().acquire_owned().await else { return };
        match listener.accept().await {
            Ok((stream, peer)) => {
                // Network work for busy polling: a TLS handshake runs before the connection's
                // I/O is wrapped in `ActivityIo`.
                busy_poll::worked();
                let _ = stream.set_nodelay(true);
                let client = Client { stream, slot, listener_index: context.listener_index };
                tokio::spawn(open_connection(client, peer, context.for_connection()));
            }
            // Out of file descriptors and similar: keep serving what we have, and give the
            // condition a moment to clear instead of spinning on it.
            Err(e) => {
                tracing::warn!(worker = id, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

impl AcceptContext {
    fn for_connection(&self) -> ConnectionContext {
        ConnectionContext {
            id: self.id,
            service_addr: self.service_addr,
            published: self.published.clone(),
            shutdown: self.shutdown.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// What a connection's task takes from its accept loop.
struct ConnectionContext {
    id: usize,
    service_addr: SocketAddr,
    published: Published,
    shutdown: watch::Receiver<bool>,
    metrics: Arc<WorkerMetrics>,
}

/// A connection's task: on a PROXY protocol listener, the header first (its source is the
/// client; a connection without a valid one is closed and counted), then TLS and HTTP.
async fn open_connection(mut client: Client, peer: SocketAddr, context: ConnectionContext) {
    let ConnectionContext { id, service_addr, published, shutdown, metrics } = context;
    metrics.connection_opened();
    // The handshake uses the snapshot of the accept, the one that set the scheme.
    let snapshot = published.load();
    let mut client_addr = peer;
    if snapshot.config.listeners.get(client.listener_index).is_some_and(|l| l.proxy_protocol) {
        let limit = Duration::from_millis(snapshot.limits.header_read_timeout_ms);
        match super::proxy_protocol::read(&mut client.stream, limit).await {
            Ok(header) => client_addr = header.source.unwrap_or(peer),
            Err(e) => {
                tracing::debug!(worker = id, %peer, error = %e, "connection closed: no valid PROXY protocol header");
                metrics.proxy_protocol_refused(e.reason());
                metrics.connection_closed();
                return;
            }
        }
    }
    let tls = snapshot.tls.listener(client.listener_index).is_some();
    let scheme = if tls { "https" } else { "http" };
    let forwarded = Forwarded::new(client_addr, scheme, service_addr.port())
        .with_full_forwarded_for(snapshot.config.forwarded.compute_full_forwarded_for);
    let connection = Arc::new(Connection {
        worker: id,
        client: client_addr,
        listener: service_addr,
        listener_index: client.listener_index,
        scheme,
        forwarded,
        published,
        metrics,
        tls: std::sync::OnceLock::new(),
    });
    serve_client(client, connection.clone(), shutdown, snapshot).await;
    connection.metrics.connection_closed();
}

/// An accepted client socket, the worker's connection slot it holds, and which listener took it.
struct Client {
    stream: tokio::net::TcpStream,
    slot: tokio::sync::OwnedSemaphorePermit,
    listener_index: usize,
}

/// On a TLS listener, runs the handshake in this connection's task (never in the accept loop)
/// and serves HTTP over TLS, or splices a passthrough host's connection; a failed handshake
/// (counted by reason) closes only this connection. Plain listeners serve HTTP at once.
async fn serve_client(
    client: Client,
    connection: Arc<Connection>,
    shutdown: watch::Receiver<bool>,
    snapshot: Arc<Snapshot>,
) {
    let Client { stream, slot, listener_index } = client;
    let Some(listener) = snapshot.tls.listener(listener_index).cloned() else {
        drop(snapshot);
        return serve_connection(stream, slot, connection, shutdown).await;
    };
    let limit = Duration::from_millis(snapshot.limits.header_read_timeout_ms);
    match crate::tls::accept(stream, &listener, &snapshot.tls, limit).await {
        crate::tls::Accepted::Terminated(stream, session) => {
            // The connection keeps only its session: a reload may replace the snapshot now.
            drop((listener, snapshot));
            let _ = connection.tls.set(session);
            serve_connection(*stream, slot, connection, shutdown).await;
        }
        crate::tls::Accepted::Passthrough { client, hello, backend, proxy_protocol } => {
            let Some(group) = snapshot.backends.get(backend) else { return };
            let idle = Duration::from_millis(snapshot.limits.idle_timeout_ms);
            let send_timeout = Duration::from_millis(snapshot.limits.send_timeout_ms);
            let Some(upstream) = passthrough::connect(group, connection.client.ip()).await else {
                return;
            };
            drop((listener, snapshot));
            let first_bytes = match proxy_protocol {
                Some(version) => {
                    // The address the client dialled: the socket's own, with the service's
                    // port (XDP steering moved the packets to this worker's port).
                    let local = client.local_addr().map_or(connection.listener.ip(), |a| a.ip());
                    let dialled = std::net::SocketAddr::new(local, connection.listener.port());
                    let header = super::proxy_protocol::encode(version, connection.client, dialled);
                    [header, hello].concat()
                }
                None => hello,
            };
            let end = passthrough::splice(client, first_bytes, upstream, idle, send_timeout).await;
            if matches!(end, CopyEnd::ClientSendTimeout | CopyEnd::UpstreamSendTimeout) {
                tracing::debug!(worker = connection.worker, client = %connection.client, ?end, "passthrough send timed out");
                connection.metrics.send_timeout(SendTimeout::Passthrough);
            }
            drop(slot);
        }
        crate::tls::Accepted::Failed(reason) => {
            tracing::debug!(worker = connection.worker, client = %connection.client, reason = reason.name(), "TLS handshake failed");
        }
        crate::tls::Accepted::Closed => {}
    }
}

/// Serves one client connection: HTTP/1.1 (keep-alive, upgrades) or HTTP/2 (prior knowledge,
/// or ALPN over TLS), with the current snapshot's limits, until the client leaves, the
/// connection sits idle past the limit, or the worker shuts down (then in-flight requests
/// finish first).
async fn serve_connection<S>(
    stream: S,
    slot: tokio::sync::OwnedSemaphorePermit,
    connection: Arc<Connection>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limits = connection.published.load().limits.clone();
    let activity = Activity::default();
    let head_clock = HeadClock::started();
    // The guard refuses request-smuggling shapes before the server parses a head.
    // The guard hands the heads it parsed to the server, which then need not parse them again.
    let parsed = ParsedHeads::default();
    let guard =
        H1Guard::new(ActivityIo::new(stream, activity.clone()).with_slot(slot), limits.max_header_bytes)
            .with_max_headers(limits.max_headers)
            .with_head_clock(head_clock.clone())
            .with_parsed_heads(parsed.clone());
    // Set to end the connection: at once between requests, else after the response.
    let closing = AtomicBool::new(false);
    let conn = super::http1::server::serve(
        Box::new(guard),
        Some(parsed),
        connection.clone(),
        limits.clone(),
        &closing,
    );
    tokio::pin!(conn);
    let idle_limit = Duration::from_millis(limits.idle_timeout_ms);
    let header_limit_ms = limits.header_read_timeout_ms;
    let send_limit = Duration::from_millis(limits.send_timeout_ms);
    loop {
        // One timer for whichever limit comes first: the connection task polls it on every
        // wake-up, so a second one would cost on every request.
        let head_wait = header_limit_ms.saturating_sub(head_clock.running_for_ms().unwrap_or(0));
        let mut wait = Duration::from_millis(head_wait);
        if !closing.load(Ordering::Relaxed) {
            wait = wait.min(idle_limit.saturating_sub(activity.idle_for()));
        }
        // A write that begins to wait after now does not wake this loop: waking a send timeout
        // from now is never late for it.
        wait = wait.min(send_limit.saturating_sub(activity.write_waiting_for().unwrap_or_default()));
        let check = tokio::time::sleep(wait.max(Duration::from_millis(10)));
        tokio::select! {
            () = check => {
                if head_clock.running_for_ms().is_some_and(|ms| ms >= header_limit_ms) {
                    // Slowloris, or a client that never sends: no request is in progress to
                    // finish, so the connection just closes.
                    tracing::debug!(worker = connection.worker, client = %connection.client, "request head timed out");
                    return;
                }
                if activity.write_waiting_for().is_some_and(|waited| waited >= send_limit) {
                    // The client stopped reading: what is still to be written to it would hold
                    // the connection, the request and its upstream connection for ever.
                    tracing::debug!(worker = connection.worker, client = %connection.client, "send timed out: the client takes no bytes");
                    connection.metrics.send_timeout(SendTimeout::Http);
                    return;
                }
                if !closing.load(Ordering::Relaxed) && activity.idle_for() >= idle_limit {
                    // Finishes a request still waiting for its backend, then closes.
                    closing.store(true, Ordering::Relaxed);
                }
            }
            () = conn.as_mut() => return,
            changed = shutdown.changed(), if !closing.load(Ordering::Relaxed) => {
                let _ = changed;
                closing.store(true, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    fn get(addr: SocketAddr) -> String {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.write_all(b"GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    fn published() -> Published {
        let config = crate::config::Config::builtin();
        let registry = crate::proxy::upstream::endpoint::EndpointRegistry::default();
        Published::new(crate::proxy::snapshot::Snapshot::build(&config, &registry, 1).unwrap())
    }

    #[test]
    fn workers_answer_with_their_id_and_stop() {
        let workers =
            Workers::start(WorkerOptions::shared("127.0.0.1:0".parse().unwrap(), 2, published())).unwrap();
        assert_eq!(workers.len(), 2);
        let addr = workers.local_addrs()[0];
        let response = get(addr);
        // The built-in configuration has no routes: a 404 that names the worker.
        assert!(response.starts_with("HTTP/1.1 404"), "{response}");
        let id = response
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{}: ", crate::proxy::WORKER_HEADER)))
            .expect("worker header present");
        assert!(id == "0" || id == "1", "{response}");
        workers.stop();
        assert!(std::net::TcpStream::connect(addr).is_err(), "listeners closed after stop");
    }

    #[test]
    fn taken_port_is_an_error() {
        let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = Workers::start(WorkerOptions::shared(holder.local_addr().unwrap(), 1, published()))
            .err()
            .expect("bind must fail");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }
}
