//! The suites' one answering backend: a hyper server on a runtime thread of its own, plain or
//! TLS (ALPN h2 and http/1.1), speaking HTTP/1.1 and HTTP/2 (prior knowledge too), that says
//! who answered. Every response carries the backend's name in `x-backend`, the HTTP version it
//! spoke in `x-version`, the `x-forwarded-proto` it got in `x-seen-proto` and the request
//! target in `x-path`; what else it does is its [`Mode`], which the test can change while it
//! runs: name itself in the body, echo the request head, answer a status, hold requests until
//! released, hang, reset the connection or answer bytes that are not HTTP.
//!
//! For exact bytes on the wire, scripted per connection, see [`crate::raw_backend`].

use std::{
    io::Write,
    net::{SocketAddr, TcpListener},
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU16, AtomicU64, Ordering},
    },
    thread::JoinHandle,
};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ServerConfig;
use tokio::sync::watch;

use crate::netns::Netns;

/// The path [`Backend::with_mode`] backends answer as health checks.
pub const HEALTH_PATH: &str = "/healthz";

/// Header naming the backend that answered.
pub const BACKEND_HEADER: &str = "x-backend";

/// How a [`Backend`] answers requests (other than its health checks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 200, the backend's name and a newline as the body.
    Name,
    /// 200, the request head (request line and header lines) as the body.
    Echo,
    /// Like `Echo`, with hop-by-hop headers in the response (`Connection: x-hop`, `X-Hop`,
    /// `Keep-Alive`) and one end-to-end header (`X-End-To-End`).
    EchoHop,
    /// This status, the backend's name and a newline as the body.
    Status(u16),
    /// Holds each request until [`Backend::release`], then echoes.
    Hold,
    /// Reads the request and never answers.
    Hang,
    /// Reads the request and resets the connection (RST: SO_LINGER 0, then close).
    Reset,
    /// Reads the request and answers bytes that are not HTTP, then closes.
    Garbage,
}

/// Where and how a backend listens.
pub struct Options<'a> {
    /// Listen inside this namespace (the default: this process's).
    pub netns: Option<&'a Netns>,
    /// Port 0 picks a free port.
    pub addr: SocketAddr,
    /// Serve TLS with this configuration (see [`crate::tls::server_config`]).
    pub tls: Option<Arc<ServerConfig>>,
    pub mode: Mode,
    /// Requests for this path are health checks: answered with [`Backend::set_health`]'s
    /// status and counted apart from requests.
    pub health_path: Option<&'a str>,
    /// Every connection starts with a PROXY protocol header (v1 or v2), read before TLS and
    /// kept ([`Backend::proxy_headers`]); a connection without one is closed.
    pub proxy_protocol: bool,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            netns: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: None,
            mode: Mode::Name,
            health_path: None,
            proxy_protocol: false,
        }
    }
}

/// How many request heads a backend keeps ([`Backend::heads`]).
pub const HEADS_KEPT: usize = 64;

struct State {
    name: String,
    mode: Mutex<Mode>,
    health_path: Option<String>,
    /// Status of the health path.
    health: AtomicU16,
    /// Requests received, health checks excluded.
    requests: AtomicU64,
    /// The heads (request line and fields) of the last requests, oldest first.
    heads: Mutex<std::collections::VecDeque<String>>,
    /// Read a PROXY protocol header first on each connection.
    proxy_protocol: bool,
    /// The PROXY protocol headers received, in order.
    proxy_headers: Mutex<Vec<Vec<u8>>>,
    connections: AtomicU64,
    checks_passed: AtomicU64,
    checks_failed: AtomicU64,
    /// Requests held right now (`Mode::Hold`).
    holding: AtomicU64,
    /// True once held requests may go.
    released: watch::Sender<bool>,
    /// True once the backend stops.
    stopped: watch::Sender<bool>,
}

/// A running backend; stops on drop, and its open connections with it.
pub struct Backend {
    addr: SocketAddr,
    state: Arc<State>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    /// A plain backend naming itself ([`Mode::Name`]) on `addr`, inside `netns` when given.
    pub fn start(netns: Option<&Netns>, addr: SocketAddr, name: &str) -> anyhow::Result<Backend> {
        Backend::launch(name, Options { netns, addr, ..Options::default() })
    }

    /// A plain backend on loopback in `mode`, whose health checks are `GET` [`HEALTH_PATH`].
    pub fn with_mode(name: &str, mode: Mode) -> Backend {
        Backend::launch(name, Options { mode, health_path: Some(HEALTH_PATH), ..Options::default() }).unwrap()
    }

    /// Backends named `name-0`, `name-1`... on 127.0.0.2, .3, ... sharing one port, as the
    /// endpoints of one EndpointSlice share theirs.
    pub fn loopback_group(name: &str, count: usize) -> Vec<Backend> {
        for _ in 0..20 {
            let first = Backend::start(None, "127.0.0.2:0".parse().unwrap(), &format!("{name}-0")).unwrap();
            let port = first.addr().port();
            let mut all = vec![first];
            for i in 1..count {
                let addr = SocketAddr::from(([127, 0, 0, 2 + i as u8], port));
                match Backend::start(None, addr, &format!("{name}-{i}")) {
                    Ok(b) => all.push(b),
                    Err(_) => break,
                }
            }
            if all.len() == count {
                return all;
            }
        }
        panic!("no common port for {count} backends");
    }

    /// A TLS backend on loopback naming itself.
    pub fn with_tls(name: &str, tls: Arc<ServerConfig>) -> Backend {
        Backend::launch(name, Options { tls: Some(tls), ..Options::default() }).unwrap()
    }

    pub fn launch(name: &str, options: Options<'_>) -> anyhow::Result<Backend> {
        let addr = options.addr;
        let listener = match options.netns {
            Some(ns) => ns.run(move || TcpListener::bind(addr))?,
            None => TcpListener::bind(addr),
        }
        .with_context(|| format!("backend {name}: cannot listen on {addr}"))?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let state = Arc::new(State {
            name: name.to_owned(),
            mode: Mutex::new(options.mode),
            health_path: options.health_path.map(str::to_owned),
            health: AtomicU16::new(200),
            requests: AtomicU64::new(0),
            heads: Mutex::new(std::collections::VecDeque::new()),
            connections: AtomicU64::new(0),
            checks_passed: AtomicU64::new(0),
            checks_failed: AtomicU64::new(0),
            holding: AtomicU64::new(0),
            proxy_protocol: options.proxy_protocol,
            proxy_headers: Mutex::new(Vec::new()),
            released: watch::Sender::new(false),
            stopped: watch::Sender::new(false),
        });
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let thread = {
            let (state, tls) = (state.clone(), options.tls);
            std::thread::Builder::new()
                .name(format!("backend-{name}"))
                .spawn(move || runtime.block_on(accept_loop(listener, state, tls)))?
        };
        Ok(Backend { addr, state, thread: Some(thread) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    /// The status the health path answers (200 at first).
    pub fn set_health(&self, status: u16) {
        self.state.health.store(status, Ordering::Relaxed);
    }

    /// Requests answered or taken so far, health checks excluded.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// The heads of the last [`HEADS_KEPT`] requests (health checks excluded), oldest first:
    /// the request line and the fields as received, names in lower case.
    pub fn heads(&self) -> Vec<String> {
        self.state.heads.lock().unwrap().iter().cloned().collect()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::Relaxed)
    }

    pub fn checks_passed(&self) -> u64 {
        self.state.checks_passed.load(Ordering::Relaxed)
    }

    pub fn checks_failed(&self) -> u64 {
        self.state.checks_failed.load(Ordering::Relaxed)
    }

    /// Requests held right now ([`Mode::Hold`]).
    /// The PROXY protocol headers connections started with ([`Options::proxy_protocol`]).
    pub fn proxy_headers(&self) -> Vec<Vec<u8>> {
        self.state.proxy_headers.lock().unwrap().clone()
    }

    pub fn holding(&self) -> u64 {
        self.state.holding.load(Ordering::Relaxed)
    }

    /// Lets every held request (and every later one) through.
    pub fn release(&self) {
        self.state.released.send_replace(true);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.state.stopped.send_replace(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, tls: Option<Arc<ServerConfig>>) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
    let mut stopped = state.stopped.subscribe();
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted { Ok((stream, _)) => stream, Err(_) => continue },
            _ = stopped.wait_for(|stopped| *stopped) => break,
        };
        state.connections.fetch_add(1, Ordering::Relaxed);
        let (state, tls) = (state.clone(), tls.clone());
        connections.spawn(async move {
            let _ = serve_connection(stream, state, tls).await;
        });
    }
    // Dropping the tasks closes every open connection.
    connections.abort_all();
}

/// What a request asked of its connection after hyper is done with it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ending {
    Normal,
    Reset,
    Garbage,
}

async fn serve_connection(
    mut stream: tokio::net::TcpStream,
    state: Arc<State>,
    tls: Option<Arc<ServerConfig>>,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    if state.proxy_protocol {
        let header = read_proxy_header(&mut stream).await?;
        state.proxy_headers.lock().unwrap().push(header);
    }
    // A second handle on the socket, for what hyper cannot do: reset it, or write bytes that
    // are not HTTP on it.
    let raw = {
        let std_stream = stream.into_std()?;
        let raw = std_stream.try_clone()?;
        (std_stream, raw)
    };
    let (stream, raw) = (tokio::net::TcpStream::from_std(raw.0)?, raw.1);
    let ending = Arc::new(Mutex::new(Ending::Normal));
    let service = {
        let ending = ending.clone();
        service_fn(move |request: Request<Incoming>| {
            let (state, ending) = (state.clone(), ending.clone());
            async move { answer(request, &state, &ending).await }
        })
    };
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    match tls {
        Some(config) => {
            let stream = tokio_rustls::TlsAcceptor::from(config).accept(stream).await?;
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        }
        None => {
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        }
    }
    // hyper has closed its handle; the socket lives on in `raw` until it is dropped here.
    let ending = *ending.lock().unwrap();
    match ending {
        Ending::Normal => {}
        Ending::Reset => set_linger_zero(&raw),
        Ending::Garbage => {
            let mut raw = raw;
            raw.write_all(b"SSH-2.0-OpenSSH_9.6\r\nthis is not HTTP at all\r\n\r\n")?;
        }
    }
    Ok(())
}

/// Reads a PROXY protocol header (v1 line or v2 binary) and nothing after it; anything else is
/// an error. Written apart from Sluice's parser, so that a test checks one against the other.
async fn read_proxy_header(stream: &mut tokio::net::TcpStream) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let mut header = vec![0u8; 6];
    stream.read_exact(&mut header).await?;
    if header == b"PROXY " {
        while !header.ends_with(b"\r\n") {
            if header.len() > 107 {
                return Err(invalid("PROXY v1 line too long"));
            }
            header.push(stream.read_u8().await?);
        }
        return Ok(header);
    }
    header.resize(16, 0);
    stream.read_exact(&mut header[6..]).await?;
    if header[..12] != *b"\r\n\r\n\0\r\nQUIT\n" {
        return Err(invalid("no PROXY protocol header"));
    }
    let len = usize::from(u16::from_be_bytes([header[14], header[15]]));
    header.resize(16 + len, 0);
    stream.read_exact(&mut header[16..]).await?;
    Ok(header)
}

/// Closing the socket now sends a reset instead of a FIN.
fn set_linger_zero(socket: &std::net::TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: the descriptor is this connection's open socket (borrowed for the call), and
    // `linger` is a valid `struct linger` whose size is passed along with it.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast::<libc::c_void>(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// The error a request returns to make hyper drop its connection without answering.
#[derive(Debug)]
struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the test backend drops this connection")
    }
}

impl std::error::Error for DropConnection {}

async fn answer(
    request: Request<Incoming>,
    state: &State,
    ending: &Mutex<Ending>,
) -> Result<Response<Full<Bytes>>, DropConnection> {
    let head = request_head(&request);
    let path = request.uri().path().to_owned();
    let target = request.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let version = format!("{:?}", request.version());
    let proto =
        request.headers().get("x-forwarded-proto").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    // The body is read whole before answering, as the proxy sends it.
    let _ = request.into_body().collect().await;
    let respond = |status: u16, extra: &[(&str, &str)], body: String| {
        let mut response = Response::builder()
            .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
            .header(BACKEND_HEADER, state.name.as_str())
            .header("x-version", version.as_str())
            .header("x-seen-proto", proto.as_str())
            .header("x-path", target.as_str())
            .header("content-type", "text/plain");
        for (name, value) in extra {
            response = response.header(*name, *value);
        }
        Ok(response.body(Full::new(Bytes::from(body))).unwrap())
    };
    if state.health_path.as_deref() == Some(path.as_str()) {
        let status = state.health.load(Ordering::Relaxed);
        let counter = if (200..400).contains(&status) { &state.checks_passed } else { &state.checks_failed };
        counter.fetch_add(1, Ordering::Relaxed);
        return respond(status, &[], "health\n".to_owned());
    }
    state.requests.fetch_add(1, Ordering::Relaxed);
    {
        let mut heads = state.heads.lock().unwrap();
        if heads.len() == HEADS_KEPT {
            heads.pop_front();
        }
        heads.push_back(head.clone());
    }
    let mode = *state.mode.lock().unwrap();
    let name = format!("{}\n", state.name);
    match mode {
        Mode::Name => respond(200, &[], name),
        Mode::Echo => respond(200, &[], head),
        Mode::EchoHop => respond(
            200,
            &[("connection", "x-hop"), ("x-hop", "1"), ("keep-alive", "timeout=5"), ("x-end-to-end", "1")],
            head,
        ),
        Mode::Status(code) => respond(code, &[], name),
        Mode::Hold => {
            state.holding.fetch_add(1, Ordering::Relaxed);
            let (mut released, mut stopped) = (state.released.subscribe(), state.stopped.subscribe());
            tokio::select! {
                _ = released.wait_for(|released| *released) => {}
                _ = stopped.wait_for(|stopped| *stopped) => {}
            }
            state.holding.fetch_sub(1, Ordering::Relaxed);
            respond(200, &[], head)
        }
        Mode::Hang => {
            let _ = state.stopped.subscribe().wait_for(|stopped| *stopped).await;
            Err(DropConnection)
        }
        Mode::Reset => {
            *ending.lock().unwrap() = Ending::Reset;
            Err(DropConnection)
        }
        Mode::Garbage => {
            *ending.lock().unwrap() = Ending::Garbage;
            Err(DropConnection)
        }
    }
}

/// The request line and header lines as received (names as hyper keeps them: lower case).
fn request_head(request: &Request<Incoming>) -> String {
    let target = request.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut head = format!("{} {target} {:?}\r\n", request.method(), request.version());
    for (name, value) in request.headers() {
        head.push_str(&format!("{name}: {}\r\n", String::from_utf8_lossy(value.as_bytes())));
    }
    head
}

/// What an echoing backend ([`Mode::Echo`]) received, read from its answer: the request line
/// and the header fields (names in lower case, in order).
pub struct Echoed {
    pub line: String,
    pub headers: Vec<(String, String)>,
}

impl Echoed {
    pub fn of(response: &crate::http::HttpResponse) -> Echoed {
        assert_eq!(response.status, 200, "an echo response: {response:?}");
        let mut lines = response.body.lines();
        let line = lines.next().unwrap_or("").to_owned();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Echoed { line, headers }
    }

    /// The request target the backend received.
    pub fn target(&self) -> &str {
        self.line.split_whitespace().nth(1).unwrap_or("")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }

    pub fn count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(k, _)| k == name).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Client, http_get};

    #[test]
    fn backend_names_itself_and_counts() {
        let backend = Backend::start(None, "127.0.0.1:0".parse().unwrap(), "b1").unwrap();
        let response = http_get(backend.addr(), "/x").unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.header(BACKEND_HEADER), Some("b1"));
        assert_eq!(response.header("x-path"), Some("/x"));
        assert_eq!(response.body, "b1\n");
        assert_eq!(backend.requests(), 1);
    }

    #[test]
    fn modes_change_what_the_backend_answers() {
        let backend = Backend::with_mode("m", Mode::Echo);
        let mut client = Client::connect(backend.addr());
        let echoed = client.request("GET", "h.test", "/e?q=1", &[("x-one", "1")], false).unwrap();
        assert!(echoed.body.starts_with("GET /e?q=1 HTTP/1.1\r\n"), "{echoed:?}");
        assert!(echoed.body.contains("x-one: 1\r\n"), "{echoed:?}");
        backend.set_mode(Mode::Status(503));
        assert_eq!(client.get("h.test", "/s").status, 503, "the mode changes on an open connection");
        backend.set_health(500);
        assert_eq!(client.get("h.test", "/healthz").status, 500);
        assert_eq!((backend.checks_failed(), backend.requests()), (1, 2), "health checks are apart");
        backend.set_mode(Mode::Garbage);
        let garbage = client.request("GET", "h.test", "/g", &[], false);
        assert!(garbage.is_err(), "not HTTP: {garbage:?}");
        assert_eq!(backend.connections(), 1);
    }
}
