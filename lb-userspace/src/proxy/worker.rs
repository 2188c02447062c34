//! Worker threads. Each worker owns a current-thread tokio runtime and its own SO_REUSEPORT
//! listener, so no lock or queue is shared between workers on the request path.
//!
//! The foundation's workers answer every request themselves with their id; the proxy issue
//! replaces the handler with routing to upstreams.

use std::{convert::Infallible, io, net::SocketAddr, thread::JoinHandle};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;

/// Response header naming the worker that served a request; tests and the demo read it.
pub const WORKER_HEADER: &str = "x-sluice-worker";

/// The running workers. Dropping this stops them and joins their threads.
pub struct Workers {
    shutdown: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
    local_addr: SocketAddr,
}

impl Workers {
    /// Binds `count` SO_REUSEPORT listeners on `listen` and starts one worker thread per
    /// listener. Binding happens here, before any thread starts, so a taken port is an error to
    /// the caller rather than a log line from a thread.
    pub fn start(listen: SocketAddr, count: usize) -> io::Result<Workers> {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut listeners = Vec::with_capacity(count);
        let mut addr = listen;
        for _ in 0..count.max(1) {
            let listener = reuseport_listener(addr)?;
            // With port 0 the first bind picks the port; the others must join that one.
            addr = listener.local_addr()?;
            listeners.push(listener);
        }
        let mut threads = Vec::with_capacity(listeners.len());
        for (id, listener) in listeners.into_iter().enumerate() {
            let shutdown_rx = shutdown_rx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("sluice-worker-{id}"))
                .spawn(move || run_worker(id, listener, shutdown_rx))?;
            threads.push(thread);
        }
        Ok(Workers { shutdown, threads, local_addr: addr })
    }

    /// The address the workers accept on (the resolved port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
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

fn run_worker(id: usize, listener: std::net::TcpListener, mut shutdown: watch::Receiver<bool>) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(worker = id, error = %e, "cannot start the worker runtime");
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!(worker = id, error = %e, "cannot register the listener");
                return;
            }
        };
        tracing::debug!(worker = id, "worker accepting");
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _peer)) => {
                        let _ = stream.set_nodelay(true);
                        tokio::spawn(serve_connection(id, stream));
                    }
                    // Out of file descriptors and similar: keep serving what we have.
                    Err(e) => tracing::warn!(worker = id, error = %e, "accept failed"),
                },
            }
        }
    });
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
        let workers = Workers::start("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        assert_eq!(workers.len(), 2);
        let addr = workers.local_addr();
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
        let err = Workers::start(holder.local_addr().unwrap(), 1).err().expect("bind must fail");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }
}
