//! Active HTTP health checks: one dedicated thread probes every checked endpoint over a new
//! connection each time, and turns consecutive passes and failures into the endpoint's
//! active-check verdict (`Endpoint::set_check_healthy`, which publishes the health event).
//!
//! Choices:
//! - Checks run per node, not per worker, so N workers do not multiply the probe load.
//! - An endpoint starts healthy (the registry creates it so) and a check that starts or restarts
//!   takes over the endpoint's current verdict: a reload neither blackholes traffic until the
//!   first check nor forgets that an endpoint was down.
//! - An endpoint that stops being checked (its backend lost `health_check`, it left the
//!   snapshot, or the checker is dropped) is set healthy, so no stale verdict keeps it down.
//! - The first check comes after a random delay below the interval, so endpoints added together
//!   (every endpoint at start-up) are not probed in lock step; after that a check comes
//!   `interval_ms` after the previous one ended, as in Envoy.
//! - A check passes when a status in 200..=399 arrives within `timeout_ms` (connect included);
//!   the body is then drained, bounded, only so the server does not see a reset.

use std::{
    collections::HashMap,
    fmt,
    net::SocketAddr,
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri, header, uri::Authority};
use http_body_util::{BodyExt, Empty};
use hyper::{
    body::Incoming,
    client::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use tokio::{net::TcpStream, sync::oneshot, task::AbortHandle};

use crate::{
    config::{BackendProtocol, HealthCheckConfig},
    proxy::upstream::endpoint::Endpoint,
};

/// The `User-Agent` of every check, so backends can tell checks from traffic.
pub const USER_AGENT: &str = "sluice-health-check";

/// At most this much of a response body is read before the connection is dropped.
const MAX_DRAIN_BYTES: usize = 64 * 1024;

/// What to check: one endpoint with its backend's check settings.
#[derive(Clone, Debug)]
pub struct CheckTarget {
    pub endpoint: Arc<Endpoint>,
    pub config: HealthCheckConfig,
    pub protocol: BackendProtocol,
    /// Host header to send (the backend name is fine when nothing better is known).
    pub host: String,
    /// The backend's upstream TLS: checks then speak TLS, as requests do.
    pub tls: Option<Arc<crate::tls::upstream::UpstreamTls>>,
}

impl CheckTarget {
    /// Whether `other` would run exactly this check (the same endpoint, the same settings).
    fn same_check(&self, other: &CheckTarget) -> bool {
        Arc::ptr_eq(&self.endpoint, &other.endpoint)
            && self.config == other.config
            && self.protocol == other.protocol
            && self.host == other.host
            && self.tls.as_ref().map(|t| &t.identity) == other.tls.as_ref().map(|t| &t.identity)
    }
}

/// Runs every active check on one dedicated thread with its own current-thread tokio runtime
/// (checks are per node, not per worker, so N workers do not multiply the probe load).
pub struct HealthChecker {
    runtime: tokio::runtime::Handle,
    /// The running checks by endpoint identity. Only `update` and `drop` take this lock, never
    /// a request, and never the checker thread.
    checks: Mutex<HashMap<usize, Running>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// One running check.
struct Running {
    target: CheckTarget,
    /// Whether this check may still set the endpoint's verdict. Cleared under the lock when the
    /// check stops: the task may be in the middle of a poll on the checker thread when it is
    /// aborted, and must not overwrite the verdict `update` sets after stopping it.
    live: Arc<Mutex<bool>>,
    task: AbortHandle,
}

impl Running {
    fn stop(&self) {
        *self.live.lock() = false;
        self.task.abort();
    }
}

/// The map key of an endpoint: where its `Arc` points. Unique while the map holds the `Arc`.
fn key(endpoint: &Arc<Endpoint>) -> usize {
    Arc::as_ptr(endpoint).addr()
}

impl HealthChecker {
    pub fn start() -> std::io::Result<HealthChecker> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("sluice-health".into()).spawn(move || {
            // Either a stop message or the sender dropping ends the wait. Dropping the runtime
            // then drops every check mid-flight, closing its connection: no check delays stop.
            runtime.block_on(async {
                let _ = stopped.await;
            });
        })?;
        Ok(HealthChecker {
            runtime: handle,
            checks: Mutex::new(HashMap::new()),
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Replaces the set of targets (a full set, after each snapshot build). Targets that are the
    /// same endpoint (`Arc::ptr_eq`) with the same settings keep running with their counters;
    /// removed ones stop; new ones start. A target whose settings changed restarts with fresh
    /// counters but keeps the endpoint's current verdict. An endpoint that stops being checked
    /// is set healthy, so a removed `health_check` does not leave it marked down.
    ///
    /// Takes effect before it returns; never blocks on a check. An endpoint listed twice is
    /// checked once (with its first settings).
    pub fn update(&self, targets: Vec<CheckTarget>) {
        let mut checks = self.checks.lock();
        let mut previous = std::mem::take(&mut *checks);
        let (mut kept, mut started, mut restarted) = (0usize, 0usize, 0usize);
        for target in targets {
            let key = key(&target.endpoint);
            if checks.contains_key(&key) {
                tracing::debug!(
                    backend = %target.endpoint.backend,
                    endpoint = %target.endpoint.address,
                    "endpoint listed twice for health checks; checking it once"
                );
                continue;
            }
            let running = match previous.remove(&key) {
                Some(running) if running.target.same_check(&target) => {
                    kept += 1;
                    running
                }
                Some(running) => {
                    running.stop();
                    restarted += 1;
                    self.spawn(target)
                }
                None => {
                    started += 1;
                    self.spawn(target)
                }
            };
            checks.insert(key, running);
        }
        let stopped = previous.len();
        for running in previous.into_values() {
            running.stop();
            running.target.endpoint.set_check_healthy(true);
        }
        tracing::debug!(checks = checks.len(), kept, started, restarted, stopped, "health checks updated");
    }

    fn spawn(&self, target: CheckTarget) -> Running {
        let live = Arc::new(Mutex::new(true));
        let task = self.runtime.spawn(run_check(target.clone(), live.clone())).abort_handle();
        Running { target, live, task }
    }
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the health-check thread panicked");
        }
        // The thread is gone, so no check can race these: nothing checks the endpoints now.
        for (_, running) in self.checks.get_mut().drain() {
            running.target.endpoint.set_check_healthy(true);
        }
    }
}

/// Consecutive passes and failures, and the verdict they lead to.
#[derive(Debug)]
struct Tally {
    healthy: bool,
    /// Consecutive passes while unhealthy, or consecutive failures while healthy.
    streak: u32,
    healthy_threshold: u32,
    unhealthy_threshold: u32,
}

impl Tally {
    fn new(healthy: bool, config: &HealthCheckConfig) -> Tally {
        // Validation refuses 0; a 0 here still means "one is enough".
        Tally {
            healthy,
            streak: 0,
            healthy_threshold: config.healthy_threshold.max(1),
            unhealthy_threshold: config.unhealthy_threshold.max(1),
        }
    }

    /// Counts one check; the new verdict when this check changes it.
    fn record(&mut self, passed: bool) -> Option<bool> {
        if passed == self.healthy {
            // A result that agrees with the verdict breaks any streak towards the other one.
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let threshold = if self.healthy { self.unhealthy_threshold } else { self.healthy_threshold };
        if self.streak < threshold {
            return None;
        }
        self.healthy = passed;
        self.streak = 0;
        Some(passed)
    }
}

/// The loop of one target: check, count, wait, until aborted.
async fn run_check(target: CheckTarget, live: Arc<Mutex<bool>>) {
    let endpoint = &target.endpoint;
    let interval = Duration::from_millis(target.config.interval_ms.max(1));
    let timeout = Duration::from_millis(target.config.timeout_ms.max(1));
    let template = RequestTemplate::new(&target);
    if let Err(e) = &template {
        tracing::warn!(
            backend = %endpoint.backend,
            endpoint = %endpoint.address,
            path = %target.config.path,
            error = %e,
            "cannot build the health-check request; every check fails"
        );
    }
    let mut tally = Tally::new(endpoint.check_healthy(), &target.config);
    tokio::time::sleep(Duration::from_millis(fastrand::u64(0..interval.as_millis() as u64))).await;
    loop {
        let started = Instant::now();
        let outcome = match &template {
            Ok(template) => {
                probe(endpoint.address, target.protocol, target.tls.as_deref(), template.build(), timeout)
                    .await
            }
            Err(_) => Err(Failure::InvalidRequest),
        };
        tracing::debug!(
            backend = %endpoint.backend,
            endpoint = %endpoint.address,
            elapsed_ms = started.elapsed().as_millis() as u64,
            outcome = %Outcome(&outcome),
            "health check"
        );
        if let Some(healthy) = tally.record(outcome.is_ok()) {
            let live = live.lock();
            if *live {
                if let Err(failure) = &outcome {
                    // The endpoint logs the change itself; this adds why.
                    tracing::info!(
                        backend = %endpoint.backend,
                        endpoint = %endpoint.address,
                        %failure,
                        failures = tally.unhealthy_threshold,
                        "active health check failing"
                    );
                }
                endpoint.set_check_healthy(healthy);
            }
        } else if outcome.is_ok() && tally.healthy && *live.lock() {
            endpoint.check_passed(crate::now_ms());
        }
        tokio::time::sleep(interval).await;
    }
}

/// The parts of a check request that stay the same from check to check.
#[derive(Debug)]
struct RequestTemplate {
    uri: Uri,
    /// Sent as `Host` over HTTP/1.1; over HTTP/2 it is the URI's authority.
    host: HeaderValue,
    h2: bool,
}

impl RequestTemplate {
    fn new(target: &CheckTarget) -> Result<RequestTemplate, http::Error> {
        // A backend name such as `default/web` is no valid host, and a strict server answers
        // 400 to it: then the endpoint's own address is the host, so the check can pass.
        let authority = target
            .host
            .parse::<Authority>()
            .or_else(|_| target.endpoint.address.to_string().parse::<Authority>())?;
        let h2 = target.protocol == BackendProtocol::H2c;
        let uri = if h2 {
            // HTTP/2 carries the host as `:authority` and needs `:scheme`: an absolute URI.
            Uri::builder().scheme("http").authority(authority.clone()).path_and_query(&*target.config.path)
        } else {
            Uri::builder().path_and_query(&*target.config.path)
        }
        .build()?;
        let host = HeaderValue::from_str(authority.as_str())?;
        Ok(RequestTemplate { uri, host, h2 })
    }

    fn build(&self) -> Request<Empty<Bytes>> {
        let mut request = Request::new(Empty::new());
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        if self.h2 {
            // The host travels as `:authority` (from the URI), and HTTP/2 forbids `Connection`:
            // the connection closes anyway when the check drops it.
            *request.version_mut() = http::Version::HTTP_2;
        } else {
            headers.insert(header::HOST, self.host.clone());
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        request
    }
}

/// Why a check failed.
#[derive(Debug)]
enum Failure {
    Connect(std::io::Error),
    Http(hyper::Error),
    Status(StatusCode),
    Timeout,
    InvalidRequest,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "connect: {e}"),
            Failure::Http(e) => write!(f, "http: {e}"),
            Failure::Status(status) => write!(f, "status {status}"),
            Failure::Timeout => f.write_str("timed out"),
            Failure::InvalidRequest => f.write_str("invalid request"),
        }
    }
}

/// Displays a check's outcome for the log.
struct Outcome<'a>(&'a Result<StatusCode, Failure>);

impl fmt::Display for Outcome<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Ok(status) => write!(f, "passed: status {status}"),
            Err(failure) => write!(f, "failed: {failure}"),
        }
    }
}

/// One check: a new connection, one request, bounded by `timeout` from the connect on.
async fn probe(
    address: SocketAddr,
    protocol: BackendProtocol,
    tls: Option<&crate::tls::upstream::UpstreamTls>,
    request: Request<Empty<Bytes>>,
    timeout: Duration,
) -> Result<StatusCode, Failure> {
    let mut status = None;
    let exchanged =
        tokio::time::timeout(timeout, exchange(address, protocol, tls, request, &mut status)).await;
    let status = match (status, exchanged) {
        // The response head arrived in time; how its body ends does not count.
        (Some(status), _) => status,
        (None, Ok(Err(failure))) => return Err(failure),
        (None, Err(_)) => return Err(Failure::Timeout),
        (None, Ok(Ok(()))) => unreachable!("an exchange that succeeds has a status"),
    };
    if (200..=399).contains(&status.as_u16()) { Ok(status) } else { Err(Failure::Status(status)) }
}

/// Connects, sends `request`, stores the response status in `status` as soon as it arrives,
/// then drains the body (bounded).
async fn exchange(
    address: SocketAddr,
    protocol: BackendProtocol,
    tls: Option<&crate::tls::upstream::UpstreamTls>,
    request: Request<Empty<Bytes>>,
    status: &mut Option<StatusCode>,
) -> Result<(), Failure> {
    let stream = TcpStream::connect(address).await.map_err(Failure::Connect)?;
    // The request is one small write; do not hold it back for an ack.
    let _ = stream.set_nodelay(true);
    match tls {
        // A certificate the backend's CA does not vouch for fails the check, as it fails requests.
        Some(tls) => {
            let stream = tls.connect(stream, address).await.map_err(Failure::Connect)?;
            exchange_on(TokioIo::new(stream), protocol, request, status).await
        }
        None => exchange_on(TokioIo::new(stream), protocol, request, status).await,
    }
}

async fn exchange_on<IO>(
    io: IO,
    protocol: BackendProtocol,
    request: Request<Empty<Bytes>>,
    status: &mut Option<StatusCode>,
) -> Result<(), Failure>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    match protocol {
        BackendProtocol::Http1 => {
            let (mut sender, connection) = http1::handshake(io).await.map_err(Failure::Http)?;
            respond(connection, sender.send_request(request), status).await
        }
        BackendProtocol::H2c => {
            // hyper spawns the HTTP/2 connection task beside `connection`; it shuts the
            // connection down once the check drops `connection` (a test checks that no task
            // outlives its check).
            let (mut sender, connection) =
                http2::handshake(TokioExecutor::new(), io).await.map_err(Failure::Http)?;
            respond(connection, sender.send_request(request), status).await
        }
    }
}

/// Drives `connection` in this task (not spawned, so dropping the check closes it) while
/// waiting for `response`.
async fn respond(
    connection: impl Future<Output = hyper::Result<()>>,
    response: impl Future<Output = hyper::Result<Response<Incoming>>>,
    status: &mut Option<StatusCode>,
) -> Result<(), Failure> {
    let work = async {
        let response = response.await.map_err(Failure::Http)?;
        *status = Some(response.status());
        drain(response.into_body()).await;
        Ok(())
    };
    tokio::pin!(connection, work);
    tokio::select! {
        biased;
        done = &mut work => done,
        // The connection ended (closed or failed): the response future now ends at once, with
        // what arrived or with hyper's error, and the body with what is left of it.
        _ = &mut connection => work.await,
    }
}

/// Reads and discards up to `MAX_DRAIN_BYTES` of body; errors do not matter any more.
async fn drain(mut body: Incoming) {
    let mut seen = 0;
    while seen < MAX_DRAIN_BYTES {
        match body.frame().await {
            Some(Ok(frame)) => seen += frame.data_ref().map_or(0, Bytes::len),
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io,
        sync::atomic::{AtomicU16, Ordering},
    };

    use http::Version;
    use http_body_util::Full;
    use hyper::service::service_fn;

    use super::*;
    use crate::proxy::upstream::endpoint::{EndpointRegistry, HealthChange};

    /// Test server behaviours besides a status code.
    const CLOSE: u16 = 0;
    /// Reads the request, never answers.
    const HANG: u16 = 1;
    /// Accepts the connection, never reads from it (no HTTP/2 handshake either).
    const SILENT: u16 = 2;

    /// One request (or, for `SILENT`, one connection) the test server saw.
    #[derive(Clone, Debug)]
    struct Seen {
        /// The status it answered, or the behaviour.
        answer: u16,
        /// The endpoint's check verdict when the request arrived.
        healthy: bool,
        connection: usize,
        version: Version,
        uri: Uri,
        host: Option<HeaderValue>,
        user_agent: Option<HeaderValue>,
        connection_header: Option<HeaderValue>,
    }

    struct Shared {
        behaviour: AtomicU16,
        seen: parking_lot::Mutex<Vec<Seen>>,
        endpoint: Arc<Endpoint>,
    }

    /// A tiny HTTP/1.1 or h2c server whose answer the test flips. Stops when dropped.
    struct TestServer {
        shared: Arc<Shared>,
        _runtime: tokio::runtime::Runtime,
    }

    impl TestServer {
        /// Starts a server and the endpoint for it (made by `endpoint`).
        fn start(h2: bool, endpoint: impl FnOnce(SocketAddr) -> Arc<Endpoint>) -> TestServer {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let shared = Arc::new(Shared {
                behaviour: AtomicU16::new(200),
                seen: parking_lot::Mutex::new(Vec::new()),
                endpoint: endpoint(listener.local_addr().unwrap()),
            });
            let runtime =
                tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            let state = shared.clone();
            runtime.spawn(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                for connection in 0.. {
                    let (stream, _) = listener.accept().await.unwrap();
                    tokio::spawn(serve(state.clone(), connection, stream, h2));
                }
            });
            TestServer { shared, _runtime: runtime }
        }

        fn endpoint(&self) -> Arc<Endpoint> {
            self.shared.endpoint.clone()
        }

        fn answer(&self, behaviour: u16) {
            self.shared.behaviour.store(behaviour, Ordering::SeqCst);
        }

        fn seen(&self) -> Vec<Seen> {
            self.shared.seen.lock().clone()
        }

        /// Requests answered `answer` while the endpoint's verdict was `healthy`.
        fn count(&self, answer: u16, healthy: bool) -> usize {
            self.shared.seen.lock().iter().filter(|s| s.answer == answer && s.healthy == healthy).count()
        }
    }

    async fn serve(shared: Arc<Shared>, connection: usize, stream: TcpStream, h2: bool) {
        if shared.behaviour.load(Ordering::SeqCst) == SILENT {
            shared.seen.lock().push(Seen {
                answer: SILENT,
                healthy: shared.endpoint.check_healthy(),
                connection,
                version: Version::HTTP_09,
                uri: Uri::default(),
                host: None,
                user_agent: None,
                connection_header: None,
            });
            // Hold the connection open, unread, until the server stops.
            let _held = stream;
            return std::future::pending().await;
        }
        let service = service_fn(move |request: Request<Incoming>| {
            let shared = shared.clone();
            async move {
                let answer = shared.behaviour.load(Ordering::SeqCst);
                let headers = request.headers();
                shared.seen.lock().push(Seen {
                    answer,
                    healthy: shared.endpoint.check_healthy(),
                    connection,
                    version: request.version(),
                    uri: request.uri().clone(),
                    host: headers.get(header::HOST).cloned(),
                    user_agent: headers.get(header::USER_AGENT).cloned(),
                    connection_header: headers.get(header::CONNECTION).cloned(),
                });
                match answer {
                    HANG => std::future::pending().await,
                    CLOSE => Err(io::Error::other("closing without an answer")),
                    status => Ok(Response::builder()
                        .status(status)
                        .body(Full::new(Bytes::from_static(b"checked\n")))
                        .unwrap()),
                }
            }
        });
        let io = TokioIo::new(stream);
        // Errors are expected: the checker drops connections, CLOSE fails on purpose.
        if h2 {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(io, service)
                .await;
        } else {
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        }
    }

    fn check_config(interval_ms: u64, timeout_ms: u64, healthy: u32, unhealthy: u32) -> HealthCheckConfig {
        HealthCheckConfig {
            path: "/healthz?probe=1".into(),
            interval_ms,
            timeout_ms,
            healthy_threshold: healthy,
            unhealthy_threshold: unhealthy,
        }
    }

    fn target(endpoint: Arc<Endpoint>, config: HealthCheckConfig, protocol: BackendProtocol) -> CheckTarget {
        CheckTarget { endpoint, config, protocol, host: "web.example".into(), tls: None }
    }

    fn detached(address: SocketAddr) -> Arc<Endpoint> {
        Endpoint::detached("web", address)
    }

    /// Polls `condition` until it holds; fails the test after `within`.
    fn wait_until(within: Duration, what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    const WITHIN: Duration = Duration::from_secs(3);

    #[test]
    fn tally_needs_consecutive_results_to_change_the_verdict() {
        let mut tally = Tally::new(true, &check_config(1, 1, 2, 3));
        assert_eq!(tally.record(false), None);
        assert_eq!(tally.record(false), None);
        assert_eq!(tally.record(true), None, "a pass breaks the failure streak");
        assert_eq!(tally.record(false), None);
        assert_eq!(tally.record(false), None);
        assert_eq!(tally.record(false), Some(false), "the third failure in a row");
        assert_eq!(tally.record(false), None, "already unhealthy");
        assert_eq!(tally.record(true), None);
        assert_eq!(tally.record(false), None, "a failure breaks the pass streak");
        assert_eq!(tally.record(true), None);
        assert_eq!(tally.record(true), Some(true), "the second pass in a row");
        let mut zero = Tally::new(true, &check_config(1, 1, 0, 0));
        assert_eq!(zero.record(false), Some(false), "a threshold of 0 acts as 1");
        assert_eq!(zero.record(true), Some(true));
    }

    #[test]
    fn request_template_uses_the_host_or_falls_back_to_the_address() {
        let endpoint = detached("10.0.0.7:8080".parse().unwrap());
        let mut check = target(endpoint, check_config(1, 1, 1, 1), BackendProtocol::Http1);
        let request = RequestTemplate::new(&check).unwrap().build();
        assert_eq!(request.uri(), "/healthz?probe=1");
        assert_eq!(request.headers()[header::HOST], "web.example");
        assert_eq!(request.headers()[header::CONNECTION], "close");
        assert_eq!(request.headers()[header::USER_AGENT], USER_AGENT);
        check.host = "default/web".into();
        let request = RequestTemplate::new(&check).unwrap().build();
        assert_eq!(request.headers()[header::HOST], "10.0.0.7:8080", "not a valid host");
        check.protocol = BackendProtocol::H2c;
        let request = RequestTemplate::new(&check).unwrap().build();
        assert_eq!(request.uri(), "http://10.0.0.7:8080/healthz?probe=1");
        assert!(request.headers().get(header::CONNECTION).is_none(), "forbidden in HTTP/2");
        check.config.path = "/bad path".into();
        assert!(RequestTemplate::new(&check).is_err());
    }

    #[test]
    fn healthy_endpoint_stays_healthy_and_gets_the_configured_request() {
        let server = TestServer::start(false, detached);
        let checker = HealthChecker::start().unwrap();
        checker.update(vec![target(server.endpoint(), check_config(20, 500, 2, 2), BackendProtocol::Http1)]);
        wait_until(WITHIN, "three checks", || server.seen().len() >= 3);
        let seen = server.seen();
        assert!(seen.iter().all(|s| s.answer == 200 && s.healthy), "{seen:?}");
        assert!(server.endpoint().check_healthy());
        let first = &seen[0];
        assert_eq!(first.version, Version::HTTP_11);
        assert_eq!(first.uri, "/healthz?probe=1");
        assert_eq!(first.host.as_ref().unwrap(), "web.example");
        assert_eq!(first.user_agent.as_ref().unwrap(), USER_AGENT);
        assert_eq!(first.connection_header.as_ref().unwrap(), "close");
        let mut connections = seen.iter().map(|s| s.connection).collect::<Vec<_>>();
        connections.dedup();
        assert_eq!(connections.len(), seen.len(), "a new connection for every check");
    }

    #[test]
    fn failures_reach_the_unhealthy_threshold_and_passes_the_healthy_one() {
        let registry = EndpointRegistry::default();
        let mut events = registry.subscribe();
        let server = TestServer::start(false, |address| registry.get("web", address));
        let checker = HealthChecker::start().unwrap();
        checker.update(vec![target(server.endpoint(), check_config(20, 500, 2, 3), BackendProtocol::Http1)]);
        wait_until(WITHIN, "a first check", || !server.seen().is_empty());
        server.answer(500);
        wait_until(WITHIN, "unhealthy", || !server.endpoint().check_healthy());
        assert_eq!(server.count(500, true), 3, "exactly unhealthy_threshold failures: {:?}", server.seen());
        server.answer(200);
        wait_until(WITHIN, "healthy again", || server.endpoint().check_healthy());
        assert_eq!(server.count(200, false), 2, "exactly healthy_threshold passes: {:?}", server.seen());
        // The endpoint flips its verdict before it publishes the event: wait for the events too.
        let mut changes = Vec::new();
        wait_until(WITHIN, "two events", || {
            changes.extend(std::iter::from_fn(|| events.try_recv().ok()).map(|event| event.change));
            changes.len() >= 2
        });
        assert_eq!(changes, [HealthChange::CheckFailed, HealthChange::CheckPassed]);
    }

    #[test]
    fn a_passing_check_ends_an_ejection_its_verdict_never_saw() {
        // Requests ejected the endpoint (a restart under load) while every check passed: the
        // verdict stays healthy, and the next pass ends the ejection.
        let server = TestServer::start(false, detached);
        let endpoint = server.endpoint();
        let outlier = crate::config::OutlierConfig {
            consecutive_failures: 1,
            base_ejection_ms: 60_000,
            max_ejection_ms: 60_000,
        };
        endpoint.record_failure(&outlier, crate::now_ms());
        assert!(endpoint.is_ejected(crate::now_ms()) && endpoint.check_healthy());
        let checker = HealthChecker::start().unwrap();
        checker.update(vec![target(endpoint.clone(), check_config(20, 500, 2, 3), BackendProtocol::Http1)]);
        wait_until(WITHIN, "the ejection to end", || !endpoint.is_ejected(crate::now_ms()));
        assert!(server.count(200, true) >= 1, "ended by a check: {:?}", server.seen());
    }

    #[test]
    fn refused_connection_makes_an_endpoint_unhealthy() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = closed.local_addr().unwrap();
        drop(closed);
        let endpoint = detached(address);
        let checker = HealthChecker::start().unwrap();
        checker.update(vec![target(endpoint.clone(), check_config(20, 500, 1, 2), BackendProtocol::Http1)]);
        wait_until(WITHIN, "unhealthy", || !endpoint.check_healthy());
    }

    #[test]
    fn hanging_silent_and_closing_servers_fail_over_both_protocols() {
        let servers =
            [(false, HANG), (false, SILENT), (false, CLOSE), (true, HANG), (true, SILENT), (true, CLOSE)]
                .map(|(h2, behaviour)| {
                    let server = TestServer::start(h2, detached);
                    server.answer(behaviour);
                    (server, if h2 { BackendProtocol::H2c } else { BackendProtocol::Http1 })
                });
        let checker = HealthChecker::start().unwrap();
        let started = Instant::now();
        checker.update(
            servers
                .iter()
                .map(|(server, protocol)| target(server.endpoint(), check_config(20, 60, 1, 2), *protocol))
                .collect(),
        );
        for (server, protocol) in &servers {
            let behaviour = server.shared.behaviour.load(Ordering::SeqCst);
            wait_until(WITHIN, &format!("{protocol:?} {behaviour} unhealthy"), || {
                !server.endpoint().check_healthy()
            });
            assert!(
                server.count(behaviour, true) >= 2,
                "{protocol:?} {behaviour}: the server saw the checks"
            );
        }
        assert!(started.elapsed() < Duration::from_secs(2), "bounded by the timeout");
        checker.update(Vec::new());
        assert!(servers.iter().all(|(server, _)| server.endpoint().check_healthy()), "unchecked: healthy");
        // Nothing a check started (connections, hyper's HTTP/2 tasks) outlives it for long.
        let metrics = checker.runtime.metrics();
        wait_until(WITHIN, "no task left", || metrics.num_alive_tasks() == 0);
    }

    #[test]
    fn update_keeps_unchanged_checks_restarts_changed_ones_and_releases_removed_ones() {
        let server = TestServer::start(false, detached);
        let other = TestServer::start(false, detached);
        server.answer(500);
        let checker = HealthChecker::start().unwrap();
        let watched = target(server.endpoint(), check_config(30, 500, 1, 4), BackendProtocol::Http1);
        checker.update(vec![watched.clone()]);
        wait_until(WITHIN, "two failures", || server.count(500, true) >= 2);
        let before = server.count(500, true);
        // An equal target built afresh, as a snapshot rebuild would.
        let same = target(server.endpoint(), check_config(30, 500, 1, 4), BackendProtocol::Http1);
        checker.update(vec![
            same,
            target(other.endpoint(), check_config(30, 500, 1, 4), BackendProtocol::Http1),
        ]);
        assert!(before < 4 && server.endpoint().check_healthy(), "the update came before the verdict");
        wait_until(WITHIN, "unhealthy", || !server.endpoint().check_healthy());
        assert_eq!(server.count(500, true), 4, "the update did not reset the count: {:?}", server.seen());
        wait_until(WITHIN, "the other checked", || !other.seen().is_empty());

        // New settings: a new check with new counters, but the verdict stays.
        let mut changed = watched.clone();
        changed.config.healthy_threshold = 3;
        let restarted_at = server.seen().len();
        checker.update(vec![changed]);
        wait_until(WITHIN, "checks after the restart", || server.seen().len() >= restarted_at + 2);
        assert!(!server.endpoint().check_healthy(), "a restart does not forget the verdict");

        // Removed: healthy at once, and checked no more.
        checker.update(Vec::new());
        assert!(server.endpoint().check_healthy(), "an unchecked endpoint is healthy");
        let metrics = checker.runtime.metrics();
        wait_until(WITHIN, "no check left", || metrics.num_alive_tasks() == 0);
    }

    #[test]
    fn h2c_checks_pass_and_fail() {
        let server = TestServer::start(true, detached);
        let checker = HealthChecker::start().unwrap();
        checker.update(vec![target(server.endpoint(), check_config(20, 500, 1, 2), BackendProtocol::H2c)]);
        wait_until(WITHIN, "two checks", || server.seen().len() >= 2);
        let first = &server.seen()[0];
        assert_eq!(first.version, Version::HTTP_2);
        assert_eq!(first.uri, "http://web.example/healthz?probe=1");
        assert_eq!(first.user_agent.as_ref().unwrap(), USER_AGENT);
        assert!(server.endpoint().check_healthy());
        server.answer(503);
        wait_until(WITHIN, "unhealthy", || !server.endpoint().check_healthy());
        assert_eq!(server.count(503, true), 2);
    }

    #[test]
    fn drop_stops_at_once_and_leaves_endpoints_healthy() {
        let server = TestServer::start(false, detached);
        server.answer(500);
        let checker = HealthChecker::start().unwrap();
        checker.update(vec![target(server.endpoint(), check_config(20, 500, 1, 1), BackendProtocol::Http1)]);
        wait_until(WITHIN, "unhealthy", || !server.endpoint().check_healthy());
        // A long interval: a stop that waited for the next check would take a minute.
        checker.update(vec![target(
            server.endpoint(),
            check_config(60_000, 500, 1, 1),
            BackendProtocol::Http1,
        )]);
        let stopping = Instant::now();
        drop(checker);
        assert!(stopping.elapsed() < Duration::from_secs(1), "took {:?}", stopping.elapsed());
        assert!(server.endpoint().check_healthy());
    }
}
