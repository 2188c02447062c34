//! Throwaway HTTP/1.1 backends that say who answered: every response carries the backend's
//! name in the `x-backend` header and as its body. Keep-alive and Content-Length bodies work,
//! which is all the suites need from an upstream.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context;

use crate::netns::Netns;

/// Header naming the backend that answered.
pub const BACKEND_HEADER: &str = "x-backend";

/// A running backend; stops on drop.
pub struct Backend {
    name: String,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
    /// Open connections, shut down on drop so a stopped backend is really gone.
    connections: Arc<Mutex<HashMap<u64, TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    /// Starts a backend listening on `addr`, inside `netns` when given (port 0 picks a port).
    pub fn start(netns: Option<&Netns>, addr: SocketAddr, name: &str) -> anyhow::Result<Backend> {
        let listener = match netns {
            Some(ns) => ns.run(move || TcpListener::bind(addr))?,
            None => TcpListener::bind(addr),
        }
        .with_context(|| format!("backend {name}: cannot listen on {addr}"))?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(Mutex::new(HashMap::new()));
        let thread = {
            let (stop, requests, name, connections) =
                (stop.clone(), requests.clone(), name.to_owned(), connections.clone());
            std::thread::spawn(move || accept_loop(listener, &name, &stop, &requests, &connections))
        };
        Ok(Backend { name: name.to_owned(), addr, stop, requests, connections, thread: Some(thread) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if let Ok(connections) = self.connections.lock() {
            for connection in connections.values() {
                let _ = connection.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    name: &str,
    stop: &AtomicBool,
    requests: &Arc<AtomicU64>,
    connections: &Arc<Mutex<HashMap<u64, TcpStream>>>,
) {
    let mut next_id = 0u64;
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                next_id += 1;
                let id = next_id;
                if let (Ok(mut open), Ok(clone)) = (connections.lock(), stream.try_clone()) {
                    open.insert(id, clone);
                }
                let connections = connections.clone();
                let (name, requests) = (name.to_owned(), requests.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &name, &requests);
                    if let Ok(mut open) = connections.lock() {
                        open.remove(&id);
                    }
                });
            }
            // Non-blocking accept: poll the stop flag between connections.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

fn serve(stream: TcpStream, name: &str, requests: &AtomicU64) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let Some(head) = read_head(&mut reader)? else { return Ok(()) };
        let mut body_len = 0usize;
        let mut close = false;
        for line in head.lines().skip(1) {
            let Some((key, value)) = line.split_once(':') else { continue };
            let value = value.trim();
            if key.eq_ignore_ascii_case("content-length") {
                body_len = value.parse().unwrap_or(0);
            } else if key.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
                close = true;
            }
        }
        let mut body = vec![0u8; body_len];
        reader.read_exact(&mut body)?;
        requests.fetch_add(1, Ordering::Relaxed);
        let text = format!("{name}\n");
        // One write per response: several small writes would wait on delayed ACKs (Nagle).
        let response = format!(
            "HTTP/1.1 200 OK\r\n{BACKEND_HEADER}: {name}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{}\r\n{text}",
            text.len(),
            if close { "connection: close\r\n" } else { "" },
        );
        writer.write_all(response.as_bytes())?;
        writer.flush()?;
        if close {
            return Ok(());
        }
    }
}

/// Reads one request head up to the blank line; `None` at a clean end of stream.
fn read_head(reader: &mut impl BufRead) -> std::io::Result<Option<String>> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        if line == "\r\n" || line == "\n" {
            return Ok(Some(head));
        }
        head.push_str(&line);
        if head.len() > 64 * 1024 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "request head too large"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::http_get;

    #[test]
    fn backend_names_itself_and_counts() {
        let backend = Backend::start(None, "127.0.0.1:0".parse().unwrap(), "b1").unwrap();
        let response = http_get(backend.addr(), "/x").unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.header(BACKEND_HEADER), Some("b1"));
        assert_eq!(response.body, "b1\n");
        assert_eq!(backend.requests(), 1);
    }
}
