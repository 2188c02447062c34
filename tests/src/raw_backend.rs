//! A raw-socket backend for the suites that assert exact bytes on the wire
//! (`proxy_upstream_h1.rs`, `proxy_h1_server.rs`): each accepted connection runs the test's own
//! script on a std thread over a blocking socket, reading requests per their framing and
//! writing whatever bytes the test chooses; the backend counts the connections it accepts.
//! Also the configurations these suites put in front of one such backend.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
};

use crate::http::{IO_TIMEOUT, dechunk, find, header_value};

/// A route in YAML flow style: everything under `prefix` goes to `backend`.
pub fn route(prefix: &str, backend: &str) -> String {
    format!("      - {{match: {{path: {{prefix: {prefix}}}}}, backend: {backend}}}\n")
}

/// A backend group with one endpoint; passive ejection off so that failing on purpose never
/// changes which endpoint is available. `extra` adds fields (`", retries: {attempts: 0}"`), or
/// is `""`.
pub fn backend(name: &str, addr: SocketAddr, extra: &str) -> String {
    format!(
        "  - {{name: {name}, endpoints: [{{address: \"{addr}\"}}], outlier: {{consecutive_failures: 0}}{extra}}}\n"
    )
}

/// A whole configuration: one listener, two workers, no XDP, a short shutdown grace.
pub fn config(routes: &[String], backends: &[String]) -> String {
    format!(
        "workers: 2\nxdp: {{enabled: false}}\nlisteners: [{{name: web, address: \"{{listen}}\"}}]\n\
         limits: {{shutdown_grace_ms: 2000}}\n\
         virtual_hosts:\n  - name: all\n    domains: [\"*\"]\n    routes:\n{}backends:\n{}",
        routes.concat(),
        backends.concat()
    )
}

// ---------------------------------------------------------------------------------------------
// Backend
// ---------------------------------------------------------------------------------------------

/// A request as a raw backend read it.
#[derive(Debug, Clone)]
pub struct Req {
    pub head: String,
    pub body: Vec<u8>,
    /// The trailer section of a chunked body (empty otherwise).
    pub trailers: String,
}

impl Req {
    pub fn method(&self) -> &str {
        self.head.split_whitespace().next().unwrap_or("")
    }

    pub fn path(&self) -> &str {
        self.head.split_whitespace().nth(1).unwrap_or("")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.head, name)
    }
}

/// One accepted connection of a raw backend.
pub struct BackendConn {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
    stop: Arc<AtomicBool>,
    /// The proxy closed the connection (a read returned end of file).
    pub closed_by_peer: bool,
}

impl BackendConn {
    /// Reads more; false at the close, an error, the timeout, or once the backend stops.
    pub fn fill(&mut self) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return false;
        }
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => {
                self.closed_by_peer = true;
                false
            }
            Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next request on this connection (its body read per its Content-Length or chunked
    /// framing); `None` once the connection ends.
    pub fn next_request(&mut self) -> Option<Req> {
        let head_end = loop {
            if let Some(pos) = find(&self.buf, b"\r\n\r\n") {
                break pos + 4;
            }
            if !self.fill() {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end);
        let chunked = header_value(&head, "transfer-encoding").is_some_and(|v| v.contains("chunked"));
        let length: Option<usize> = header_value(&head, "content-length").and_then(|v| v.parse().ok());
        let (body, trailers) = if chunked {
            loop {
                if let Some(decoded) = dechunk(&self.buf) {
                    self.buf.drain(..decoded.used);
                    break (decoded.body, decoded.trailers);
                }
                if !self.fill() {
                    return None;
                }
            }
        } else if let Some(length) = length {
            while self.buf.len() < length {
                if !self.fill() {
                    return None;
                }
            }
            (self.buf.drain(..length).collect(), String::new())
        } else {
            (Vec::new(), String::new())
        };
        Some(Req { head, body, trailers })
    }

    pub fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok() && self.stream.flush().is_ok()
    }

    /// Closing now sends a reset instead of a FIN (SO_LINGER with a zero timeout).
    pub fn reset_on_close(&self) {
        use std::os::fd::AsRawFd;
        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
        // SAFETY: the descriptor is open (borrowed from the stream for the call), and the
        // option value points at an initialised `linger` whose size is the length passed.
        let rc = unsafe {
            libc::setsockopt(
                self.stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "setsockopt(SO_LINGER): {}", std::io::Error::last_os_error());
    }
}

/// A raw-socket backend: each accepted connection runs `handler` on a thread of its own.
/// Dropping it stops the accept loop; connection threads end at their connection's close,
/// their 5 s read timeout, or at their next read once the backend stopped.
pub struct RawBackend {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl RawBackend {
    pub fn start(handler: impl Fn(BackendConn) + Send + Sync + 'static) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let handler = Arc::new(handler);
        let acceptor = {
            let (accepted, stop) = (accepted.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
                    stream.set_nodelay(true).unwrap();
                    let (handler, stop) = (handler.clone(), stop.clone());
                    std::thread::spawn(move || {
                        handler(BackendConn { stream, buf: Vec::new(), stop, closed_by_peer: false })
                    });
                }
            })
        };
        RawBackend { addr, accepted, stop, acceptor: Some(acceptor) }
    }

    /// How many connections the backend accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the blocking accept, which then sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// An oauth2-proxy-like auth service: `session=alice` passes with identity fields and a
/// refreshed cookie, `session=forbidden` is 403, `session=broken` 502, `session=slow` answers
/// after 3 s, anything else 401 with a Bearer challenge. It records what it was asked.
pub fn auth_service(seen: Arc<std::sync::Mutex<Vec<Req>>>) -> RawBackend {
    RawBackend::start(move |mut conn| {
        while let Some(request) = conn.next_request() {
            seen.lock().unwrap().push(request.clone());
            let session = request
                .header("cookie")
                .and_then(|c| c.split(';').find_map(|p| p.trim().strip_prefix("session=")))
                .unwrap_or("")
                .to_owned();
            let answer = match session.as_str() {
                "alice" => "HTTP/1.1 202 Accepted\r\nX-Auth-Request-User: alice\r\n\
                            X-Auth-Request-Email: alice@example.com\r\nX-Not-Listed: no\r\n\
                            Set-Cookie: refreshed=1; Path=/\r\nContent-Length: 2\r\n\r\nok"
                    .to_owned(),
                "forbidden" => "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n".to_owned(),
                "broken" => "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n".to_owned(),
                "slow" => {
                    std::thread::sleep(std::time::Duration::from_secs(3));
                    "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_owned()
                }
                _ => "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"sso\"\r\n\
                      Content-Length: 12\r\n\r\nunauthorized"
                    .to_owned(),
            };
            if !conn.send(answer.as_bytes()) {
                return;
            }
        }
    })
}
