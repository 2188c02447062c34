//! Worker threads. Each worker owns a current-thread tokio runtime and its own SO_REUSEPORT
//! listener, so no lock or queue is shared between workers on the request path.
//!
//! The foundation's workers answer every request themselves with their id; the proxy issue
//! replaces the handler with routing to upstreams.

use std::{convert::Infallible, io, net::SocketAddr, thread::JoinHandle, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::{mpsc, watch};

use crate::dataplane::HeartbeatWriter;

/// Response header naming the worker that served a request; tests and the demo read it.
pub const WORKER_HEADER: &str = "x-sluice-worker";

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
}

impl WorkerOptions {
    /// `count` workers sharing `listen`, without own ports or heartbeats.
    pub fn shared(listen: SocketAddr, count: usize) -> WorkerOptions {
        WorkerOptions {
            listeners: vec![listen],
            count,
            own_port_base: None,
            heartbeats: Vec::new(),
            heartbeat_period: Duration::from_millis(75),
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
        for worker in 0..count {
            let mut sockets = Vec::with_capacity(local_addrs.len());
            for (l, addr) in local_addrs.iter_mut().enumerate() {
                let shared = reuseport_listener(*addr)?;
                *addr = shared.local_addr()?;
                let own = match options.own_port(l, worker) {
                    Some(port) => Some(reuseport_listener(SocketAddr::new(addr.ip(), port))?),
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
                listeners,
                heartbeat,
                heartbeat_period: options.heartbeat_period,
                shutdown: shutdown_rx.clone(),
                faults: fault_rx,
            };
            let thread = std::thread::Builder::new()
                .name(format!("sluice-worker-{id}"))
                .spawn(move || worker.run())?;
            threads.push(thread);
            faults.push(fault_tx);
        }
        Ok(Workers { shutdown, faults, threads, local_addrs })
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

fn reuseport_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// The sockets of one listener in one worker.
struct Bound {
    shared: std::net::TcpListener,
    own: Option<std::net::TcpListener>,
}

/// One worker thread's state.
struct Worker {
    id: usize,
    listeners: Vec<Bound>,
    heartbeat: Option<HeartbeatWriter>,
    heartbeat_period: Duration,
    shutdown: watch::Receiver<bool>,
    faults: mpsc::UnboundedReceiver<Fault>,
}

impl Worker {
    fn run(self) {
        let id = self.id;
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(e) => {
                tracing::error!(worker = id, error = %e, "cannot start the worker runtime");
                return;
            }
        };
        runtime.block_on(self.serve());
    }

    async fn serve(self) {
        let Worker { id, listeners, heartbeat, heartbeat_period, mut shutdown, mut faults } = self;
        // Accept loops and heartbeats are tasks of this worker's own runtime: a stalled
        // thread stops all of them, and aborting the set closes every listener.
        let mut tasks = tokio::task::JoinSet::new();
        for bound in listeners {
            for listener in std::iter::once(bound.shared).chain(bound.own) {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => {
                        tasks.spawn(accept_loop(id, listener));
                    }
                    Err(e) => {
                        tracing::error!(worker = id, error = %e, "cannot register a listener");
                        return;
                    }
                }
            }
        }
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
        tasks.abort_all();
    }
}

async fn accept_loop(id: usize, listener: tokio::net::TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(id, stream));
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

async fn serve_connection(id: usize, stream: tokio::net::TcpStream) {
    let service =
        service_fn(
            move |request: Request<Incoming>| async move { Ok::<_, Infallible>(answer(id, &request)) },
        );
    // HTTP/1.1 with keep-alive, and HTTP/2 with prior knowledge, on the same port.
    if let Err(e) =
        auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await
    {
        tracing::debug!(worker = id, error = %e, "connection ended with an error");
    }
}

fn answer(id: usize, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let body = format!("sluice worker {id}: {} {}\n", request.method(), request.uri().path());
    Response::builder()
        .header(WORKER_HEADER, id.to_string())
        .header(hyper::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
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

    #[test]
    fn workers_answer_with_their_id_and_stop() {
        let workers = Workers::start(WorkerOptions::shared("127.0.0.1:0".parse().unwrap(), 2)).unwrap();
        assert_eq!(workers.len(), 2);
        let addr = workers.local_addrs()[0];
        let response = get(addr);
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        let id = response
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{WORKER_HEADER}: ")))
            .expect("worker header present");
        assert!(id == "0" || id == "1", "{response}");
        assert!(response.ends_with(&format!("sluice worker {id}: GET /hello\n")), "{response}");
        workers.stop();
        assert!(std::net::TcpStream::connect(addr).is_err(), "listeners closed after stop");
    }

    #[test]
    fn taken_port_is_an_error() {
        let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = Workers::start(WorkerOptions::shared(holder.local_addr().unwrap(), 1))
            .err()
            .expect("bind must fail");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }
}
