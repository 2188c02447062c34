//! nginx's upstream timeouts, retry conditions and buffering, as ingress-nginx's
//! `proxy-read-timeout`, `proxy-send-timeout`, `proxy-next-upstream`, `-tries`, `-timeout`,
//! `proxy-request-buffering` and `proxy-buffering` configure them, end to end on loopback
//! against raw-socket backends:
//!
//! - `timeouts.read_ms` is the longest gap between two reads from the backend: a response
//!   whose body trickles for longer than the gap (and than `request_ms`) arrives whole, one
//!   that stops mid-body for longer is cut;
//! - the head's bound starts when the upload ends: an upload that flows for longer than the
//!   gap is answered, one that stops for longer than `send_ms` gets a 504;
//! - `retries.on` statuses (`http_503`) send the request to the next endpoint, and the last
//!   response is the answer when none is left; a POST goes again only with `non_idempotent`;
//! - `timeout` sends a timed-out request to the next endpoint, and `retries.timeout_ms` stops
//!   new attempts after it;
//! - request buffering holds a body before the endpoint is chosen (the backend sees the request
//!   only once the client sent it all), and a body held whole goes again after a 503; response
//!   buffering holds the answer until its body came (or the buffer filled); without them both
//!   stream;
//! - slow clients: one that stops reading its response is closed after `limits.send_timeout_ms`
//!   (nginx's `send_timeout`), and its upstream connection with it; one that leaves while its
//!   request is at the backend has the upstream connection closed at once, while a client that
//!   sends its next request meanwhile is still answered; over HTTP/2 (h2c and h2 over TLS) a
//!   stream the client resets, or a connection it closes, cancels the upstream request at once,
//!   and the other streams of a reset one's connection go on; at an HTTP/2 backend the
//!   cancelled request's stream is reset (its handler dropped); a WebSocket or TLS passthrough
//!   client that stops reading is closed after the send timeout too, and counted; a request
//!   whose client left is counted and logged with status 499, as nginx logs it.
//!
//! The backends pace their bytes with sleeps: the pacing is the behaviour under test.

use std::{
    io::Write,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use lb_tests::{
    http::{Client, Ended},
    raw_backend::{BackendConn, RawBackend, backend, config, route},
    sluice::Proxy,
};

#[test]
fn read_timeout_is_a_gap_between_reads_not_a_deadline() {
    // Five chunks 200 ms apart: 1 s in all, never 400 ms without a byte.
    let trickle = RawBackend::start(|mut conn: BackendConn| {
        while conn.next_request().is_some() {
            conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
            for _ in 0..5 {
                std::thread::sleep(Duration::from_millis(200));
                if !conn.send(b"5\r\nhello\r\n") {
                    return;
                }
            }
            conn.send(b"0\r\n\r\n");
        }
    });
    // Half a body, then silence.
    let stalls = RawBackend::start(|mut conn: BackendConn| {
        if conn.next_request().is_some() {
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello");
            std::thread::sleep(Duration::from_secs(3));
        }
    });
    let timeouts = ", timeouts: {request_ms: 300, read_ms: 400}";
    let proxy = Proxy::start(&config(
        &[route("/trickle", "trickle"), route("/stalls", "stalls")],
        &[backend("trickle", trickle.addr, timeouts), backend("stalls", stalls.addr, timeouts)],
    ));
    let mut client = Client::connect(proxy.addr);
    let response = client.get("t", "/trickle");
    assert_eq!((response.status, response.body.as_str()), (200, "hellohellohellohellohello"));
    let mut client = Client::connect(proxy.addr);
    let started = Instant::now();
    client.send(b"GET /stalls HTTP/1.1\r\nHost: t\r\n\r\n");
    let cut = client.read_response(false);
    assert_eq!((cut.status, cut.body.as_slice()), (200, &b"hello"[..]));
    assert_eq!(cut.ended, Ended::Closed, "the response is cut, not completed");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(350) && waited < Duration::from_secs(2), "cut after {waited:?}");
}

#[test]
fn the_head_bound_starts_when_the_upload_ends_and_a_stalled_upload_is_a_504() {
    let echo = RawBackend::start(|mut conn: BackendConn| {
        while let Some(request) = conn.next_request() {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", request.body.len());
            if !conn.send(&[head.as_bytes(), &request.body].concat()) {
                return;
            }
        }
    });
    let proxy = Proxy::start(&config(
        &[route("/", "echo")],
        &[backend("echo", echo.addr, ", timeouts: {request_ms: 300, read_ms: 400, send_ms: 400}")],
    ));
    // 1 s of upload, a part every 200 ms: longer than every bound, but never quiet that long.
    let mut client = Client::connect(proxy.addr);
    client.send(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 25\r\n\r\n");
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(200));
        client.send(b"12345");
    }
    let response = client.read_response(false);
    assert_eq!((response.status, response.header("content-length")), (200, Some("25")));
    // An upload that stops: the backend waits for it, and the send gap ends the request.
    let mut client = Client::connect(proxy.addr);
    let started = Instant::now();
    client.send(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 25\r\n\r\n12345");
    let response = client.read_response(false);
    assert_eq!(response.status, 504, "{response:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
}

#[test]
fn status_conditions_send_the_request_to_the_next_endpoint() {
    let (unavailable, ok) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let answering = |status: &'static str, count: Arc<AtomicUsize>| {
        RawBackend::start(move |mut conn: BackendConn| {
            while conn.next_request().is_some() {
                count.fetch_add(1, Ordering::SeqCst);
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: 6\r\nX-From: {status}\r\n\r\nfrom-{}",
                    &status[..1]
                );
                if !conn.send(answer.as_bytes()) {
                    return;
                }
            }
        })
    };
    let a = answering("503 Service Unavailable", unavailable.clone());
    let b = answering("200 OK", ok.clone());
    let c = answering("503 Service Unavailable", Arc::new(AtomicUsize::new(0)));
    let group = |name: &str, endpoints: &[SocketAddr], retries: &str| {
        let list: Vec<String> = endpoints.iter().map(|a| format!("{{address: \"{a}\"}}")).collect();
        format!(
            "  - {{name: {name}, endpoints: [{}], outlier: {{consecutive_failures: 0}}, retries: {{attempts: 2, budget_percent: 100{retries}}}}}\n",
            list.join(", ")
        )
    };
    let proxy = Proxy::start(&config(
        &[route("/retry", "retry"), route("/plain", "plain"), route("/post", "post"), route("/all", "all")],
        &[
            group("retry", &[a.addr, b.addr], ", on: [error, http_503]"),
            group("plain", &[a.addr, b.addr], ""),
            group("post", &[a.addr, b.addr], ", on: [http_503, non_idempotent]"),
            group("all", &[a.addr, c.addr], ", on: [http_503]"),
        ],
    ));
    let mut client = Client::connect(proxy.addr);
    for _ in 0..10 {
        let response = client.get("t", "/retry");
        assert_eq!((response.status, response.body.as_str()), (200, "from-2"));
    }
    assert!(unavailable.load(Ordering::SeqCst) >= 3, "the 503 endpoint was asked first at times");
    let statuses: Vec<u16> = (0..10).map(|_| client.get("t", "/plain").status).collect();
    assert!(statuses.contains(&503) && statuses.contains(&200), "without http_503: {statuses:?}");
    // A POST goes again on a status only with non_idempotent.
    for (path, want) in [("/retry", Some(503)), ("/post", None)] {
        let statuses: Vec<u16> = (0..10)
            .map(|_| Client::connect(proxy.addr).request("POST", "t", path, &[], true).unwrap().status)
            .collect();
        match want {
            Some(status) => assert!(statuses.contains(&status), "{path}: {statuses:?}"),
            None => assert!(statuses.iter().all(|s| *s == 200), "{path}: {statuses:?}"),
        }
    }
    // Every endpoint answered 503: the last answer is the client's, the backend's own body.
    let response = client.get("t", "/all");
    assert_eq!((response.status, response.body.as_str()), (503, "from-5"));
}

#[test]
fn timeouts_go_to_the_next_endpoint_within_the_retry_timeout() {
    let hangs = RawBackend::start(|mut conn: BackendConn| {
        if conn.next_request().is_some() {
            std::thread::sleep(Duration::from_secs(3));
        }
    });
    let ok = RawBackend::start(|mut conn: BackendConn| {
        while conn.next_request().is_some() {
            if !conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") {
                return;
            }
        }
    });
    // Round robin starts each group at its first endpoint on each worker; the hanging one is
    // listed first, so a first attempt meets it.
    let group = |name: &str, retries: &str| {
        format!(
            "  - {{name: {name}, endpoints: [{{address: \"{}\"}}, {{address: \"{}\"}}], outlier: {{consecutive_failures: 0}}, timeouts: {{request_ms: 300}}, retries: {{attempts: 1, budget_percent: 100{retries}}}}}\n",
            hangs.addr, ok.addr
        )
    };
    let proxy = Proxy::start(&config(
        &[route("/timeout", "timeout"), route("/error", "error"), route("/bounded", "bounded")],
        &[
            group("timeout", ", on: [error, timeout]"),
            group("error", ""),
            group("bounded", ", on: [timeout], timeout_ms: 200"),
        ],
    ));
    let statuses = |path: &str| -> Vec<u16> {
        (0..4).map(|_| Client::connect(proxy.addr).get("t", path).status).collect()
    };
    assert!(statuses("/timeout").iter().all(|s| *s == 200), "timeout goes to the next endpoint");
    assert!(statuses("/error").contains(&504), "without timeout the 504 is the answer");
    assert!(statuses("/bounded").contains(&504), "no attempt starts 200 ms after the first");
}

#[test]
fn request_buffering_holds_the_body_before_the_endpoint_and_replays_it() {
    let seen_at = Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorder = {
        let seen_at = seen_at.clone();
        RawBackend::start(move |mut conn: BackendConn| {
            // The head alone: when the request reached the backend.
            while lb_tests::http::find(&conn.buf, b"\r\n\r\n").is_none() {
                if !conn.fill() {
                    return;
                }
            }
            seen_at.lock().unwrap().push(Instant::now());
            if conn.next_request().is_some() {
                conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            }
        })
    };
    let proxy = Proxy::start(&config(
        &[route("/buffered", "buffered"), route("/streamed", "streamed")],
        &[
            // The send gap counts from when the held body went on, not from its first byte.
            backend(
                "buffered",
                recorder.addr,
                ", buffering: {request_bytes: 1024}, timeouts: {read_ms: 200, send_ms: 200}",
            ),
            backend("streamed", recorder.addr, ""),
        ],
    ));
    let mut reached_before_the_rest = Vec::new();
    for path in ["/buffered", "/streamed"] {
        let mut client = Client::connect(proxy.addr);
        client.send(format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n12345").as_bytes());
        std::thread::sleep(Duration::from_millis(300));
        let rest_sent = Instant::now();
        client.send(b"67890");
        assert_eq!(client.read_response(false).status, 200, "{path}");
        let reached = *seen_at.lock().unwrap().last().unwrap();
        reached_before_the_rest.push(reached < rest_sent);
    }
    assert_eq!(reached_before_the_rest, [false, true], "buffered waits for the body, streamed does not");

    // A body held whole is the request's to send again: a POST meeting a 503 goes on.
    let unavailable = RawBackend::start(|mut conn: BackendConn| {
        while conn.next_request().is_some() {
            conn.send(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let ok = RawBackend::start(|mut conn: BackendConn| {
        while let Some(request) = conn.next_request() {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", request.body.len());
            if !conn.send(&[head.as_bytes(), &request.body].concat()) {
                return;
            }
        }
    });
    let group = |name: &str, buffering: &str| {
        format!(
            "  - {{name: {name}, endpoints: [{{address: \"{}\"}}, {{address: \"{}\"}}], outlier: {{consecutive_failures: 0}}, retries: {{attempts: 1, budget_percent: 100, on: [http_503, non_idempotent]}}{buffering}}}\n",
            unavailable.addr, ok.addr
        )
    };
    let proxy = Proxy::start(&config(
        &[route("/held", "held"), route("/streamed", "streamed")],
        &[group("held", ", buffering: {request_bytes: 1024}"), group("streamed", "")],
    ));
    let post = |path: &str| {
        let mut client = Client::connect(proxy.addr);
        client.send(format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello").as_bytes());
        let response = client.read_response(false);
        (response.status, response.header("content-length").map(str::to_owned))
    };
    for _ in 0..4 {
        assert_eq!(post("/held"), (200, Some("5".to_owned())), "the whole body reached the second endpoint");
    }
    let streamed: Vec<u16> = (0..4).map(|_| post("/streamed").0).collect();
    assert!(streamed.contains(&503), "a streamed body cannot go again: {streamed:?}");
}

#[test]
fn response_buffering_holds_the_answer_until_its_body_came() {
    let slow = RawBackend::start(|mut conn: BackendConn| {
        while conn.next_request().is_some() {
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello");
            std::thread::sleep(Duration::from_millis(300));
            if !conn.send(b"world") {
                return;
            }
        }
    });
    let proxy = Proxy::start(&config(
        &[route("/buffered", "buffered"), route("/streamed", "streamed")],
        &[
            backend("buffered", slow.addr, ", buffering: {response_bytes: 4096}"),
            backend("streamed", slow.addr, ""),
        ],
    ));
    let head_after = |path: &str| {
        let mut client = Client::connect(proxy.addr);
        let started = Instant::now();
        client.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        while lb_tests::http::find(&client.buf, b"\r\n\r\n").is_none() {
            client.fill().expect("the response head comes");
        }
        let waited = started.elapsed();
        (waited, client.read_response(false))
    };
    let (buffered, response) = head_after("/buffered");
    assert_eq!(response.body, b"helloworld");
    let (streamed, response) = head_after("/streamed");
    assert_eq!(response.body, b"helloworld");
    assert!(buffered >= Duration::from_millis(250), "the head waited for the body: {buffered:?}");
    assert!(streamed < Duration::from_millis(250), "the head went at once: {streamed:?}");
}

/// Why and when a backend's write of a long body stopped.
type WriteEnd = (std::io::ErrorKind, Instant);

#[test]
fn a_client_that_stops_reading_is_closed_after_the_send_timeout() {
    // 64 MiB, far more than the socket buffers between the backend and the client hold.
    const BODY: usize = 64 << 20;
    let (ended_tx, ended) = std::sync::mpsc::channel::<WriteEnd>();
    let big = RawBackend::start(move |mut conn: BackendConn| {
        if conn.next_request().is_none() {
            return;
        }
        let chunk = vec![b'x'; 64 * 1024];
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BODY}\r\n\r\n");
        let mut result = conn.stream.write_all(head.as_bytes());
        for _ in 0..BODY / chunk.len() {
            if result.is_err() {
                break;
            }
            result = conn.stream.write_all(&chunk);
        }
        // The backend's own write timeout (10 s) shows as WouldBlock; the proxy closing the
        // connection as a broken pipe or a reset.
        if let Err(e) = result {
            let _ = ended_tx.send((e.kind(), Instant::now()));
        }
    });
    let yaml = config(&[route("/", "big")], &[backend("big", big.addr, "")]).replace(
        "limits: {shutdown_grace_ms: 2000}",
        "limits: {shutdown_grace_ms: 2000, send_timeout_ms: 500}",
    );
    let proxy = Proxy::start(&yaml);
    let mut client = Client::connect(proxy.addr);
    client.send(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n");
    while lb_tests::http::find(&client.buf, b"\r\n\r\n").is_none() {
        client.fill().expect("the response head comes");
    }
    // The client now reads nothing: the proxy's writes to it wait, and 500 ms later the proxy
    // closes it with the request, whose upstream connection the backend then sees closed.
    let stalled = Instant::now();
    let (kind, at) = ended.recv_timeout(Duration::from_secs(15)).expect("the backend's write ends");
    assert!(
        matches!(kind, std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset),
        "the proxy closed the backend's connection, not the backend's own timeout: {kind:?}"
    );
    let waited = at.duration_since(stalled);
    assert!(waited < Duration::from_secs(5), "closed {waited:?} after the client stopped reading");
    // What the socket buffers held comes, then the close: the body is cut.
    let ended = loop {
        if let Err(ended) = client.fill() {
            break ended;
        }
    };
    assert_eq!(ended, Ended::Closed);
    assert!(client.buf.len() < BODY, "the whole body came ({} bytes)", client.buf.len());
}

#[test]
fn a_client_that_leaves_cancels_its_upstream_request_at_once() {
    // Takes the request and never answers: it reports when its connection closed, and
    // whether the proxy closed it (its own 10 s read timeout otherwise).
    let (got_tx, got) = std::sync::mpsc::channel::<String>();
    let (closed_tx, closed) = std::sync::mpsc::channel::<(bool, Instant)>();
    let slow = RawBackend::start(move |mut conn: BackendConn| {
        while let Some(request) = conn.next_request() {
            let _ = got_tx.send(request.path().to_owned());
            if request.path() == "/first" {
                // In progress for a while: the client sends its next request meanwhile.
                std::thread::sleep(Duration::from_millis(300));
                conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst");
                continue;
            }
            if request.path() == "/second" {
                conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond");
                continue;
            }
            while conn.fill() {}
            let _ = closed_tx.send((conn.closed_by_peer, Instant::now()));
            return;
        }
    });
    let proxy = Proxy::start(&config(&[route("/", "slow")], &[backend("slow", slow.addr, "")]));
    let wait = Duration::from_secs(10);

    let mut client = Client::connect(proxy.addr);
    client.send(b"GET /hangs HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(got.recv_timeout(wait).expect("the backend gets the request"), "/hangs");
    drop(client);
    let left = Instant::now();
    let (by_proxy, at) = closed.recv_timeout(Duration::from_secs(15)).expect("the backend's read ends");
    assert!(by_proxy, "the proxy closed the upstream connection (not the backend's read timeout)");
    let waited = at.duration_since(left);
    assert!(waited < Duration::from_secs(1), "the backend learnt {waited:?} after the client left");

    // A client still there is not taken for gone: a request it sends while its first is in
    // progress (pipelined) waits its turn, and both are answered in order.
    let mut client = Client::connect(proxy.addr);
    client.send(b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(got.recv_timeout(wait).expect("the backend gets the request"), "/first");
    client.send(b"GET /second HTTP/1.1\r\nHost: t\r\n\r\n");
    let first = client.read_response(false);
    let second = client.read_response(false);
    assert_eq!((first.status, first.body.as_slice()), (200, &b"first"[..]));
    assert_eq!((second.status, second.body.as_slice()), (200, &b"second"[..]));
}

/// How an HTTP/2 client abandons its request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Abandon {
    /// RST_STREAM(CANCEL) on the request's stream; the connection stays.
    ResetStream,
    /// The connection closed.
    CloseConnection,
}

#[test]
fn an_h2_client_that_resets_its_stream_or_leaves_cancels_the_upstream_request_at_once() {
    // `/hangs` is taken and never answered: the backend reports when its connection closed and
    // whether the proxy closed it (its own 10 s read timeout otherwise). `/ok` is answered.
    let (got_tx, got) = std::sync::mpsc::channel::<String>();
    let (closed_tx, closed) = std::sync::mpsc::channel::<(bool, Instant)>();
    let slow = RawBackend::start(move |mut conn: BackendConn| {
        while let Some(request) = conn.next_request() {
            let _ = got_tx.send(request.path().to_owned());
            if request.path() == "/ok" {
                conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                continue;
            }
            while conn.fill() {}
            let _ = closed_tx.send((conn.closed_by_peer, Instant::now()));
            return;
        }
    });
    let leaf = lb_tests::tls::Ca::new("h2 cancel CA").leaf(&["a.test"]);
    let plain = config(&[route("/", "slow")], &[backend("slow", slow.addr, "")]);
    let tls = plain.replace(
        "listeners: [{name: web, address: \"{listen}\"}]\n",
        &format!(
            "listeners: [{{name: web, address: \"{{listen}}\", tls: {{default_certificate: a}}}}]\ncertificates:\n{}",
            lb_tests::tls::inline_certificate("a", &leaf)
        ),
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for (over_tls, yaml) in [(false, plain), (true, tls)] {
        let proxy = Proxy::start(&yaml);
        for abandon in [Abandon::ResetStream, Abandon::CloseConnection] {
            let what = format!("{} {abandon:?}", if over_tls { "h2 over TLS" } else { "h2c" });
            let (mut sender, connection) = runtime.block_on(h2_connect(proxy.addr, over_tls));
            let request = {
                let mut sender = sender.clone();
                runtime.spawn(async move { sender.send_request(h2_get("/hangs")).await })
            };
            let path =
                got.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| panic!("{what}: no request"));
            assert_eq!(path, "/hangs", "{what}");
            // Dropping hyper's response future resets the stream (RST_STREAM CANCEL); dropping
            // the connection's task closes the socket.
            request.abort();
            if abandon == Abandon::CloseConnection {
                connection.abort();
            }
            let left = Instant::now();
            let (by_proxy, at) = closed
                .recv_timeout(Duration::from_secs(15))
                .unwrap_or_else(|_| panic!("{what}: the read never ended"));
            assert!(by_proxy, "{what}: the proxy closed the upstream connection (not the backend's timeout)");
            let waited = at.duration_since(left);
            assert!(
                waited < Duration::from_secs(1),
                "{what}: the backend learnt {waited:?} after the client"
            );
            if abandon == Abandon::ResetStream {
                // The connection and its other streams go on.
                let response = runtime.block_on(sender.send_request(h2_get("/ok"))).expect("the next stream");
                assert_eq!(response.status(), 200, "{what}: the next stream on the same connection");
                assert_eq!(got.recv_timeout(Duration::from_secs(5)).unwrap(), "/ok");
                connection.abort();
            }
        }
    }
}

/// An HTTP/2 connection to the proxy, prior knowledge in plain text or ALPN `h2` over TLS (any
/// certificate accepted), and the task that drives it.
async fn h2_connect(
    addr: SocketAddr,
    tls: bool,
) -> (hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>, tokio::task::JoinHandle<()>)
{
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let executor = TokioExecutor::new();
    if !tls {
        let (sender, connection) =
            hyper::client::conn::http2::handshake(executor, TokioIo::new(tcp)).await.unwrap();
        return (sender, tokio::spawn(async move { drop(connection.await) }));
    }
    let config =
        lb_tests::tls::client_config(lb_tests::tls::ClientOptions { alpn: &[b"h2"], ..Default::default() });
    let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
    let stream = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, connection) =
        hyper::client::conn::http2::handshake(executor, TokioIo::new(stream)).await.unwrap();
    (sender, tokio::spawn(async move { drop(connection.await) }))
}

fn h2_get(path: &str) -> http::Request<http_body_util::Empty<bytes::Bytes>> {
    http::Request::builder().uri(format!("https://a.test{path}")).body(http_body_util::Empty::new()).unwrap()
}

/// A backend that, once its trigger came (`trigger` returns true for the connection), writes
/// 64 MiB and reports why and when its write ended.
fn endless_writer(
    trigger: impl Fn(&mut BackendConn) -> bool + Send + Sync + 'static,
) -> (RawBackend, std::sync::mpsc::Receiver<WriteEnd>) {
    const BODY: usize = 64 << 20;
    let (ended_tx, ended) = std::sync::mpsc::channel::<WriteEnd>();
    let backend = RawBackend::start(move |mut conn: BackendConn| {
        if !trigger(&mut conn) {
            return;
        }
        let chunk = vec![b'x'; 64 * 1024];
        let mut result = Ok(());
        for _ in 0..BODY / chunk.len() {
            result = conn.stream.write_all(&chunk);
            if result.is_err() {
                break;
            }
        }
        if let Err(e) = result {
            let _ = ended_tx.send((e.kind(), Instant::now()));
        }
    });
    (backend, ended)
}

/// The backend's write ended because the proxy closed its connection (not on the backend's
/// own 10 s write timeout), within 5 s of `stalled` with a send timeout of 500 ms.
fn assert_cut_by_the_proxy(ended: &std::sync::mpsc::Receiver<WriteEnd>, stalled: Instant, what: &str) {
    let (kind, at) = ended
        .recv_timeout(Duration::from_secs(15))
        .unwrap_or_else(|_| panic!("{what}: the write never ended"));
    assert!(
        matches!(kind, std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset),
        "{what}: the proxy closed the backend's connection, not the backend's own timeout: {kind:?}"
    );
    let waited = at.duration_since(stalled);
    assert!(waited < Duration::from_secs(5), "{what}: closed {waited:?} after the client stopped reading");
}

/// A sample of the node's admin `/metrics` (`name{labels}` as written there; 0 when absent).
fn metric(proxy: &Proxy, sample: &str) -> u64 {
    let admin = proxy.node.admin_addr().expect("the test configuration has an admin server");
    let text = lb_tests::http::request(admin, "GET", "admin", "/metrics", &[]).unwrap().body;
    text.lines().find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0)
}

/// `sluice_send_timeouts{kind}`.
fn send_timeouts(proxy: &Proxy, kind: &str) -> u64 {
    metric(proxy, &format!("sluice_send_timeouts_total{{kind=\"{kind}\"}}"))
}

#[test]
fn a_websocket_client_that_stops_reading_is_closed_after_the_send_timeout() {
    // Upgrades, then sends for ever.
    let (ws, ended) = endless_writer(|conn| {
        conn.next_request().is_some()
            && conn.send(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            )
    });
    let yaml = config(&[route("/", "ws")], &[backend("ws", ws.addr, "")]).replace(
        "limits: {shutdown_grace_ms: 2000}",
        "limits: {shutdown_grace_ms: 2000, send_timeout_ms: 500}\nadmin: {address: \"127.0.0.1:0\"}",
    );
    let proxy = Proxy::start(&yaml);
    let mut client = Client::connect(proxy.addr);
    client.send(
        b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    while lb_tests::http::find(&client.buf, b"\r\n\r\n").is_none() {
        client.fill().expect("the 101 comes");
    }
    assert!(client.buf.starts_with(b"HTTP/1.1 101"), "{:?}", String::from_utf8_lossy(&client.buf[..40]));
    // The client reads no more: the tunnel's writes to it wait, and 500 ms later the tunnel
    // ends with both connections (before, it waited for ever).
    assert_cut_by_the_proxy(&ended, Instant::now(), "WebSocket");
    lb_tests::wait_for(Duration::from_secs(5), "the send timeout counted", || {
        (send_timeouts(&proxy, "tunnel") == 1).then_some(())
    })
    .unwrap();
}

#[test]
fn a_passthrough_client_that_stops_reading_is_closed_after_the_send_timeout() {
    // Takes the ClientHello, then sends for ever (what a TLS server sending a large response
    // to a client that stopped reading looks like to the proxy).
    let (pass, ended) = endless_writer(|conn| conn.fill());
    let leaf = lb_tests::tls::Ca::new("passthrough CA").leaf(&["default.test"]);
    let yaml = format!(
        "workers: 2\nxdp: {{enabled: false}}\nlimits: {{shutdown_grace_ms: 2000, send_timeout_ms: 500}}\n\
         admin: {{address: \"127.0.0.1:0\"}}\n\
         listeners: [{{name: web, address: \"{{listen}}\", tls: {{default_certificate: d}}}}]\ncertificates:\n{}\
         virtual_hosts:\n  - {{name: pass, domains: [pass.test], tls: {{passthrough: pass}}, routes: [{{backend: pass}}]}}\n\
         backends:\n{}",
        lb_tests::tls::inline_certificate("d", &leaf),
        backend("pass", pass.addr, "")
    );
    let proxy = Proxy::start(&yaml);
    let mut client = std::net::TcpStream::connect(proxy.addr).unwrap();
    let mut hello = Vec::new();
    let config = lb_tests::tls::client_config(lb_tests::tls::ClientOptions::default());
    rustls::ClientConnection::new(config, rustls::pki_types::ServerName::try_from("pass.test").unwrap())
        .unwrap()
        .write_tls(&mut hello)
        .unwrap();
    client.write_all(&hello).unwrap();
    // Never read: the splice's writes to the client wait (before, for ever, the idle timeout
    // never firing while a write waited).
    assert_cut_by_the_proxy(&ended, Instant::now(), "passthrough");
    lb_tests::wait_for(Duration::from_secs(5), "the send timeout counted", || {
        (send_timeouts(&proxy, "passthrough") == 1).then_some(())
    })
    .unwrap();
    drop(client);
}

#[test]
fn a_request_whose_client_left_is_logged_as_499_and_counted() {
    // Takes each request and never answers, until the proxy closes the connection.
    let (got_tx, got) = std::sync::mpsc::channel::<String>();
    let hangs = RawBackend::start(move |mut conn: BackendConn| {
        if let Some(request) = conn.next_request() {
            let _ = got_tx.send(request.path().to_owned());
            while conn.fill() {}
        }
    });
    let admin = SocketAddr::from(([127, 0, 0, 1], lb_tests::free_port()));
    let yaml = config(&[route("/", "hangs")], &[backend("hangs", hangs.addr, "")]).replace(
        "limits: {shutdown_grace_ms: 2000}",
        &format!("limits: {{shutdown_grace_ms: 2000}}\nadmin: {{address: \"{admin}\"}}"),
    );
    let sluice = lb_tests::sluice::Binary::start(&yaml);
    let wait = Duration::from_secs(10);

    let mut client = Client::connect(sluice.addr);
    client.send(b"GET /gone-h1 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(got.recv_timeout(wait).unwrap(), "/gone-h1");
    drop(client);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (sender, connection) = runtime.block_on(h2_connect(sluice.addr, false));
    let request = {
        let mut sender = sender.clone();
        runtime.spawn(async move { sender.send_request(h2_get("/gone-h2")).await })
    };
    assert_eq!(got.recv_timeout(wait).unwrap(), "/gone-h2");
    request.abort();

    let gone = |protocol: &str| {
        let sample = format!("sluice_client_gone_total{{protocol=\"{protocol}\"}} ");
        let text = lb_tests::http::request(admin, "GET", "admin", "/metrics", &[]).ok()?.body;
        text.lines().find_map(|l| l.strip_prefix(sample.as_str())?.trim().parse::<u64>().ok())
    };
    lb_tests::wait_for(wait, "both requests counted", || {
        (gone("http1")? == 1 && gone("h2")? == 1).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", sluice.child.output()));
    for path in ["/gone-h1", "/gone-h2"] {
        let line = lb_tests::wait_for(wait, &format!("the access log line of {path}"), || {
            sluice.child.output().lines().find(|l| l.contains(&format!("path={path}"))).map(str::to_owned)
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", sluice.child.output()));
        assert!(line.contains("status=499") && line.contains("bytes=0"), "{line}");
    }
    connection.abort();
}

#[test]
fn a_client_that_leaves_cancels_its_stream_at_an_h2_backend() {
    // An HTTP/2 backend (prior knowledge) whose handler never answers and reports when hyper
    // drops it: on the stream's RST_STREAM, or the connection's end.
    let (got_tx, got) = std::sync::mpsc::channel::<String>();
    let (dropped_tx, dropped) = std::sync::mpsc::channel::<Instant>();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let backend_addr = listener.local_addr().unwrap();
    runtime.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        while let Ok((stream, _)) = listener.accept().await {
            let (got_tx, dropped_tx) = (got_tx.clone(), dropped_tx.clone());
            let service =
                hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let _ = got_tx.send(request.uri().path().to_owned());
                    let guard = SendOnDrop(Some(dropped_tx.clone()));
                    async move {
                        let _guard = guard;
                        std::future::pending::<()>().await;
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Empty::<
                            bytes::Bytes,
                        >::new(
                        )))
                    }
                });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    let proxy = Proxy::start(&config(&[route("/", "h2")], &[backend("h2", backend_addr, ", protocol: h2c")]));
    let wait = Duration::from_secs(10);
    // An HTTP/1 client that closes, then an HTTP/2 client that resets its stream.
    let mut client = Client::connect(proxy.addr);
    client.send(b"GET /h1-leaves HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(got.recv_timeout(wait).expect("the backend gets the request"), "/h1-leaves");
    drop(client);
    let left = Instant::now();
    let at = dropped.recv_timeout(wait).expect("the backend's stream is cancelled");
    assert!(
        at.duration_since(left) < Duration::from_secs(1),
        "cancelled {:?} after",
        at.duration_since(left)
    );
    let (sender, connection) = runtime.block_on(h2_connect(proxy.addr, false));
    let request = {
        let mut sender = sender.clone();
        runtime.spawn(async move { sender.send_request(h2_get("/h2-resets")).await })
    };
    assert_eq!(got.recv_timeout(wait).expect("the backend gets the request"), "/h2-resets");
    request.abort();
    let left = Instant::now();
    let at = dropped.recv_timeout(wait).expect("the backend's stream is cancelled");
    assert!(
        at.duration_since(left) < Duration::from_secs(1),
        "cancelled {:?} after",
        at.duration_since(left)
    );
    connection.abort();
}

/// Sends the time it is dropped.
struct SendOnDrop(Option<std::sync::mpsc::Sender<Instant>>);

impl Drop for SendOnDrop {
    fn drop(&mut self) {
        if let Some(sender) = self.0.take() {
            let _ = sender.send(Instant::now());
        }
    }
}
