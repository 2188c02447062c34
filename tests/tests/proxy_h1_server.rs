//! The proxy's own HTTP/1.x server for client connections (`lb-userspace/src/proxy/http1/server.rs`,
//! behind the request-smuggling guard) end to end on loopback: raw request bytes over a
//! `TcpStream` to the proxy, raw-socket backends behind it, and the exact wire behaviour
//! asserted:
//!
//! - pipelining: three requests in one write get three responses in order, and the connection
//!   then serves a fourth;
//! - HTTP/1.0 clients: without `Connection: keep-alive` the proxy closes after the response;
//!   with it the response says `connection: keep-alive` and the connection serves again;
//! - a body of unknown length (a chunked backend response) goes to an HTTP/1.0 client decoded,
//!   without chunked framing or `Content-Length`, delimited by the close (also when the client
//!   asked for keep-alive), and to an HTTP/1.1 client chunked on a connection that stays usable;
//! - a HEAD response keeps its `Content-Length`, carries no body, and keeps the connection;
//! - the proxy's own responses (a 404 for no route) carry `date` and a correct `content-length`;
//! - a malformed request line is a `400` and the connection closes (pipelined bytes after it are
//!   never served);
//! - a refused upgrade (the backend answers `200` to `Connection: upgrade`) is answered with
//!   `connection: close`, then the connection closes without serving the request pipelined
//!   after it;
//! - a response sent before the request body was read (a 404 to a POST) says `connection:
//!   close` and closes the connection,
//!   and a new connection works;
//! - `Connection: close` gets `connection: close` and the close;
//! - a chunked request body with extensions and a trailer reaches the backend decoded (re-encoded
//!   chunked, trailer forwarded), and the client connection serves the next request;
//! - a client that half-closes while its request is at the backend is taken as gone (nginx's
//!   499, hyper's default): the request ends with its upstream connection, and so does the
//!   client's connection.
//!
//! Backends are std threads on blocking sockets with 5 s timeouts. Nothing waits on a sleep for
//! readiness: every read has a socket timeout, and "the connection closed" means a read returned
//! end of file (or a reset) before that timeout.

use std::{
    io::Write,
    net::{Shutdown, SocketAddr},
    sync::{Arc, Mutex},
};

use lb_tests::{
    http::{Client, Ended, RawResponse, assert_ok, header_value, pattern},
    raw_backend::{BackendConn, RawBackend, Req, backend, config, route},
    sluice::Proxy,
};

// ---------------------------------------------------------------------------------------------
// 1. Pipelining
// ---------------------------------------------------------------------------------------------

#[test]
fn pipelined_requests_are_answered_in_order_and_the_connection_stays_open() {
    let backend = Backend::start();
    let proxy = proxy_to(backend.addr());
    let mut client = Client::connect(proxy.addr);
    let paths = ["/app/pipe/one", "/app/pipe/two", "/app/pipe/three"];
    let requests: String =
        paths.iter().map(|path| format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n")).collect();
    // All three heads in one write (and so, on loopback, usually in one read of the proxy).
    client.send(requests.as_bytes());
    for (i, path) in paths.into_iter().enumerate() {
        let response = client.read_response(false);
        assert_path(&response, path, &format!("pipelined response {i}"));
        assert_eq!(
            response.header("connection"),
            None,
            "response {i} keeps the connection: {:?}",
            response.head
        );
    }
    // The connection is still open: a fourth request on it.
    assert_path(&client.get_raw("/app/pipe/four"), "/app/pipe/four", "a request after the pipelined ones");
    assert!(client.buf.is_empty(), "no stray bytes: {:?}", String::from_utf8_lossy(&client.buf));
    let seen: Vec<String> = backend.seen().iter().map(|r| r.path().to_owned()).collect();
    assert_eq!(seen, ["/app/pipe/one", "/app/pipe/two", "/app/pipe/three", "/app/pipe/four"]);
}

// ---------------------------------------------------------------------------------------------
// 2. HTTP/1.0 clients
// ---------------------------------------------------------------------------------------------

#[test]
fn http10_client_is_closed_after_the_response_unless_it_asks_for_keep_alive() {
    let backend = Backend::start();
    let proxy = proxy_to(backend.addr());

    // No keep-alive: the response, then the close.
    let mut client = Client::connect(proxy.addr);
    client.send(b"GET /app/old HTTP/1.0\r\nHost: t\r\n\r\n");
    let response = client.read_response(false);
    assert_path(&response, "/app/old", "HTTP/1.0 without keep-alive");
    assert!(response.head.starts_with("HTTP/1.1 200 "), "{:?}", response.head);
    assert_ne!(
        response.header("connection").map(str::to_ascii_lowercase).as_deref(),
        Some("keep-alive"),
        "{:?}",
        response.head
    );
    client.assert_closed("HTTP/1.0 without keep-alive");

    // Keep-alive: the response says so, and a second request is answered on the connection.
    let mut client = Client::connect(proxy.addr);
    for (i, path) in ["/app/old/ka/1", "/app/old/ka/2"].into_iter().enumerate() {
        client.send(format!("GET {path} HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\r\n").as_bytes());
        let response = client.read_response(false);
        assert_path(&response, path, &format!("HTTP/1.0 keep-alive request {i}"));
        assert_eq!(response.header("connection"), Some("keep-alive"), "request {i}: {:?}", response.head);
        assert!(response.header("content-length").is_some(), "request {i}: {:?}", response.head);
    }
    assert!(client.buf.is_empty(), "no stray bytes: {:?}", String::from_utf8_lossy(&client.buf));
}

// ---------------------------------------------------------------------------------------------
// 3. Bodies of unknown length
// ---------------------------------------------------------------------------------------------

#[test]
fn body_of_unknown_length_is_close_delimited_for_http10_and_chunked_for_http11() {
    let backend = Backend::start();
    let proxy = proxy_to(backend.addr());

    // HTTP/1.0, with and without a keep-alive wish: no length is known, so only the close can
    // end the body.
    for keep_alive in ["", "Connection: keep-alive\r\n"] {
        let what = format!("HTTP/1.0 client ({keep_alive:?})");
        let mut client = Client::connect(proxy.addr);
        client.send(format!("GET /app/chunked/old HTTP/1.0\r\nHost: t\r\n{keep_alive}\r\n").as_bytes());
        let response = client.read_response(false);
        assert_eq!(response.status, 200, "{what}: {response:?}");
        assert_eq!(response.header("x-kind"), Some("chunked"), "{what}: {:?}", response.head);
        assert_eq!(
            response.header("transfer-encoding"),
            None,
            "{what}: no chunked framing: {:?}",
            response.head
        );
        assert_eq!(response.header("content-length"), None, "{what}: no length: {:?}", response.head);
        assert_eq!(response.header("connection"), Some("close"), "{what}: {:?}", response.head);
        assert_eq!(response.ended, Ended::Complete, "{what}: the body ends with the close: {response:?}");
        assert!(
            response.body == chunked_body(),
            "{what}: the decoded body, nothing else: {:?}",
            String::from_utf8_lossy(&response.body)
        );
    }

    // HTTP/1.1: chunked, and the connection serves the next request.
    let mut client = Client::connect(proxy.addr);
    for i in 0..2 {
        let response = client.get_raw(&format!("/app/chunked/new/{i}"));
        assert_ok(&response, &chunked_body(), &format!("HTTP/1.1 client, response {i}"));
        assert_eq!(response.header("transfer-encoding"), Some("chunked"), "{:?}", response.head);
        assert_eq!(response.header("content-length"), None, "{:?}", response.head);
        assert_eq!(response.header("connection"), None, "{:?}", response.head);
    }
    assert_path(&client.get_raw("/app/after-chunked"), "/app/after-chunked", "after two chunked responses");
}

// ---------------------------------------------------------------------------------------------
// 4. HEAD
// ---------------------------------------------------------------------------------------------

#[test]
fn head_response_keeps_its_length_has_no_body_and_keeps_the_connection() {
    let backend = Backend::start();
    let proxy = proxy_to(backend.addr());
    let mut client = Client::connect(proxy.addr);
    for round in 0..2 {
        client.send(b"HEAD /app/head HTTP/1.1\r\nHost: t\r\n\r\n");
        let head = client.read_response(true);
        assert_eq!(head.status, 200, "round {round}: {head:?}");
        assert_eq!(head.header("x-kind"), Some("head"), "round {round}: {:?}", head.head);
        assert_eq!(head.header("content-length"), Some("1000"), "round {round}: {:?}", head.head);
        assert_eq!(head.header("transfer-encoding"), None, "round {round}: {:?}", head.head);
        assert!(client.buf.is_empty(), "round {round}: no body after a HEAD head: {:?}", client.buf);
        // The next response is the GET's own: no body bytes of the HEAD were sent before it.
        let path = format!("/app/after-head/{round}");
        assert_path(&client.get_raw(&path), &path, &format!("GET after HEAD, round {round}"));
    }
    assert!(client.buf.is_empty(), "no stray bytes: {:?}", String::from_utf8_lossy(&client.buf));
}

// ---------------------------------------------------------------------------------------------
// 5. The proxy's own responses
// ---------------------------------------------------------------------------------------------

#[test]
fn own_404_carries_date_and_a_correct_content_length() {
    let backend = Backend::start();
    let proxy = proxy_to(backend.addr());
    let mut client = Client::connect(proxy.addr);
    for path in ["/no/route/here", "/also-nothing"] {
        let response = client.get_raw(path);
        assert_eq!(response.status, 404, "{path}: {response:?}");
        assert_eq!(response.ended, Ended::Complete, "{path}: {response:?}");
        let date =
            response.header("date").unwrap_or_else(|| panic!("{path}: a date header: {:?}", response.head));
        // IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
        assert_eq!(date.len(), 29, "{path}: {date:?}");
        assert!(date.ends_with(" GMT") && date.as_bytes()[3] == b',', "{path}: {date:?}");
        let length: usize = response
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{path}: a content-length: {:?}", response.head));
        assert!(length > 0, "{path}: the 404 explains itself");
        assert_eq!(response.body.len(), length, "{path}: {response:?}");
        assert_eq!(response.header("transfer-encoding"), None, "{:?}", response.head);
        assert!(String::from_utf8_lossy(&response.body).starts_with("404 "), "{response:?}");
    }
    // Both 404s came on one connection (the length was right, so it stayed in step), and it
    // still serves a routed request; a backend response without a Date gets one.
    let proxied = client.get_raw("/app/after-404");
    assert_path(&proxied, "/app/after-404", "after the 404s");
    assert_eq!(date_lines(&proxied.head), 1, "{:?}", proxied.head);
    // A backend's own Date is kept, not doubled.
    let dated = client.get_raw("/app/dated");
    assert_ok(&dated, b"dated", "a response with its own Date");
    assert_eq!(dated.header("date"), Some("Sun, 06 Nov 1994 08:49:37 GMT"), "{:?}", dated.head);
    assert_eq!(date_lines(&dated.head), 1, "{:?}", dated.head);
    assert_eq!(backend.seen().len(), 2, "the 404s never reached the backend");
}

/// How many `Date` fields a response head has.
fn date_lines(head: &str) -> usize {
    head.lines().filter(|line| line.to_ascii_lowercase().starts_with("date:")).count()
}

// ---------------------------------------------------------------------------------------------
// 6. Malformed request lines
// ---------------------------------------------------------------------------------------------

#[test]
fn malformed_request_line_is_a_400_and_the_connection_closes() {
    let backend = Backend::start();
    let proxy = proxy_to(backend.addr());
    for bad in [
        &b"GET  HTTP/1.1\r\nHost: t\r\n\r\n"[..],
        b"GET /app/a b HTTP/1.1\r\nHost: t\r\n\r\n",
        b"BREW / HTTP/9.9\r\nHost: t\r\n\r\n",
        b"GET /app/x\r\nHost: t\r\n\r\n",
    ] {
        let what = format!("{:?}", String::from_utf8_lossy(bad));
        let mut client = Client::connect(proxy.addr);
        // A valid request pipelined after the bad one must never be served.
        let mut request = bad.to_vec();
        request.extend_from_slice(b"GET /app/pipelined-after-bad HTTP/1.1\r\nHost: t\r\n\r\n");
        client.send(&request);
        let response = client.read_response(false);
        assert_eq!(response.status, 400, "{what}: {response:?}");
        assert_eq!(response.ended, Ended::Complete, "{what}: {response:?}");
        assert_eq!(response.header("connection"), Some("close"), "{what}: {:?}", response.head);
        client.assert_closed(&what);
    }
    assert!(backend.seen().is_empty(), "nothing reached the backend: {:?}", backend.seen());
    // The proxy still serves well-formed requests.
    let mut client = Client::connect(proxy.addr);
    assert_path(&client.get_raw("/app/fine"), "/app/fine", "a new connection after the 400s");
}

/// RFC 9112 section 3.2, as nginx holds it: an HTTP/1.1 request without Host, any request with
/// two, or a Host that is not an authority is a 400 and never reaches a backend; an HTTP/1.0
/// request may leave Host out.
#[test]
fn host_missing_repeated_or_invalid_is_a_400() {
    let backend = Backend::start();
    let proxy = proxy_to(backend.addr());
    for bad in [
        &b"GET /app/no-host HTTP/1.1\r\n\r\n"[..],
        b"GET /app/two HTTP/1.1\r\nHost: t\r\nHost: t\r\n\r\n",
        b"GET /app/two-10 HTTP/1.0\r\nHost: t\r\nhost: u\r\n\r\n",
        b"GET /app/empty HTTP/1.1\r\nHost: \r\n\r\n",
        b"GET /app/slash HTTP/1.1\r\nHost: t/evil\r\n\r\n",
        b"GET /app/at HTTP/1.1\r\nHost: user@t\r\n\r\n",
    ] {
        let what = format!("{:?}", String::from_utf8_lossy(bad));
        let mut client = Client::connect(proxy.addr);
        client.send(bad);
        let response = client.read_response(false);
        assert_eq!(response.status, 400, "{what}: {response:?}");
        client.assert_closed(&what);
    }
    assert!(backend.seen().is_empty(), "nothing reached the backend: {:?}", backend.seen());
    let mut client = Client::connect(proxy.addr);
    client.send(b"GET /app/http10 HTTP/1.0\r\n\r\n");
    assert_path(&client.read_response(false), "/app/http10", "HTTP/1.0 without Host");
}

// ---------------------------------------------------------------------------------------------
// 7. Refused upgrades
// ---------------------------------------------------------------------------------------------

#[test]
fn refused_upgrade_is_answered_then_the_connection_closes() {
    let backend = Backend::start();
    let proxy = proxy_to(backend.addr());
    let mut client = Client::connect(proxy.addr);
    // The upgrade request and a plain one after it, in one write: after a refused upgrade the
    // guard no longer inspects the stream, so the server must not serve what follows.
    client.send(
        b"GET /app/refuse-upgrade HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n\
          GET /app/after-upgrade HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    let response = client.read_response(false);
    assert_ok(&response, b"no upgrade!", "the refused upgrade's response");
    assert_eq!(response.header("x-kind"), Some("no-upgrade"), "{:?}", response.head);
    assert_eq!(response.header("connection"), Some("close"), "the close is announced: {:?}", response.head);
    client.assert_closed("after a refused upgrade");
    let seen: Vec<String> = backend.seen().iter().map(|r| r.path().to_owned()).collect();
    assert_eq!(seen, ["/app/refuse-upgrade"], "the request after the refused upgrade is never forwarded");

    // Without anything pipelined: the response, then the close.
    let mut client = Client::connect(proxy.addr);
    client.send(
        b"GET /app/refuse-upgrade/2 HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    );
    assert_ok(&client.read_response(false), b"no upgrade!", "the second refused upgrade");
    client.assert_closed("after the second refused upgrade");
}

// ---------------------------------------------------------------------------------------------
// 8. Unread request bodies
// ---------------------------------------------------------------------------------------------

#[test]
fn response_before_the_request_body_was_read_closes_the_connection() {
    let backend = Backend::start();
    let proxy = proxy_to(backend.addr());
    let mut client = Client::connect(proxy.addr);
    // The body looks like requests: were the proxy to read on after the 404, it would serve
    // them.
    let body: Vec<u8> =
        b"GET /app/smuggled HTTP/1.1\r\nHost: t\r\n\r\n".iter().copied().cycle().take(100_000).collect();
    let mut request = b"POST /no/route HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n".to_vec();
    request.extend_from_slice(&body);
    // Loopback buffers take it all; the proxy may close (even reset) before, which is fine.
    let _ = client.stream.write_all(&request);
    let response = client.read_response(false);
    assert_eq!(response.status, 404, "{response:?}");
    assert_eq!(response.ended, Ended::Complete, "{response:?}");
    assert_eq!(response.header("connection"), Some("close"), "the close is announced: {response:?}");
    client.assert_closed("after a response that left the request body unread");
    assert!(backend.seen().is_empty(), "nothing reached the backend: {:?}", backend.seen());

    let mut client = Client::connect(proxy.addr);
    assert_path(&client.get_raw("/app/fresh"), "/app/fresh", "a new connection");
    assert_path(&client.get_raw("/app/fresh/2"), "/app/fresh/2", "a second request on it");
}

// ---------------------------------------------------------------------------------------------
// 9. Connection: close
// ---------------------------------------------------------------------------------------------

#[test]
fn connection_close_request_gets_connection_close_and_the_close() {
    let backend = Backend::start();
    let proxy = proxy_to(backend.addr());
    for (i, token) in ["close", "Close", "keep-alive, close"].into_iter().enumerate() {
        let mut client = Client::connect(proxy.addr);
        let path = format!("/app/close/{i}");
        client.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: {token}\r\n\r\n").as_bytes());
        let response = client.read_response(false);
        assert_path(&response, &path, token);
        assert_eq!(response.header("connection"), Some("close"), "{token}: {:?}", response.head);
        client.assert_closed(token);
    }
    // The proxy does not forward the client's hop-by-hop `Connection: close`.
    for request in backend.seen() {
        assert!(
            request.header("connection").is_none_or(|v| !v.to_ascii_lowercase().contains("close")),
            "{}",
            request.head
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 10. Chunked request bodies
// ---------------------------------------------------------------------------------------------

#[test]
fn chunked_request_body_with_a_trailer_reaches_the_backend_decoded() {
    let backend = Backend::start();
    let proxy = proxy_to(backend.addr());
    let mut client = Client::connect(proxy.addr);
    let big = pattern(20_000, 5);
    let mut request = b"POST /app/upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    request.extend_from_slice(b"5;name=value\r\nhello\r\n");
    request.extend_from_slice(format!("{:X}\r\n", big.len()).as_bytes());
    request.extend_from_slice(&big);
    request.extend_from_slice(b"\r\n1\r\n!\r\n0\r\nX-Checksum: 1234\r\n\r\n");
    let mut expected = b"hello".to_vec();
    expected.extend_from_slice(&big);
    expected.push(b'!');
    // The request in two writes, split inside the big chunk.
    let (first, second) = request.split_at(request.len() / 2);
    client.send(first);
    client.send(second);
    let response = client.read_response(false);
    assert_path(&response, "/app/upload", "the chunked POST");
    assert_eq!(
        response.header("x-body-length"),
        Some(expected.len().to_string().as_str()),
        "{:?}",
        response.head
    );
    // The trailer was consumed with the body: the connection serves the next request.
    assert_path(&client.get_raw("/app/after-upload"), "/app/after-upload", "after the chunked POST");

    let seen = backend.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let upload = &seen[0];
    assert_eq!(upload.method(), "POST");
    assert_eq!(upload.path(), "/app/upload");
    assert_eq!(upload.header("transfer-encoding"), Some("chunked"), "{}", upload.head);
    assert_eq!(upload.header("content-length"), None, "{}", upload.head);
    assert!(upload.body == expected, "the body arrives decoded, byte for byte ({} bytes)", upload.body.len());
    assert_eq!(
        header_value(&format!("\r\n{}", upload.trailers), "x-checksum"),
        Some("1234"),
        "the trailer is forwarded: {:?}",
        upload.trailers
    );
}

// ---------------------------------------------------------------------------------------------
// 11. Client half-close
// ---------------------------------------------------------------------------------------------

#[test]
fn client_half_close_while_the_backend_works_ends_the_request() {
    // Takes each request and never answers: it reports whether the proxy closed the connection
    // (its own read timeout otherwise).
    let (got_tx, got) = std::sync::mpsc::channel::<Req>();
    let (closed_tx, closed) = std::sync::mpsc::channel::<bool>();
    let hangs = RawBackend::start(move |mut conn: BackendConn| {
        if let Some(request) = conn.next_request() {
            let _ = got_tx.send(request);
            while conn.fill() {}
            let _ = closed_tx.send(conn.closed_by_peer);
        }
    });
    let proxy = proxy_to(hangs.addr);
    let wait = std::time::Duration::from_secs(10);
    let body = pattern(50_000, 9);
    let mut post =
        format!("POST /app/post/half-close HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n", body.len())
            .into_bytes();
    post.extend_from_slice(&body);
    for request in [&b"GET /app/big/half-close HTTP/1.1\r\nHost: t\r\n\r\n"[..], &post] {
        let mut client = Client::connect(proxy.addr);
        client.send(request);
        let seen = got.recv_timeout(wait).expect("the request reaches the backend");
        assert!(seen.path().ends_with("/half-close"));
        // A client's end of stream is all the proxy sees of a client that left: as nginx (499)
        // and hyper's HTTP/1 server by default, the request ends, and its upstream connection.
        client.stream.shutdown(Shutdown::Write).unwrap();
        assert!(closed.recv_timeout(wait).expect("the backend's read ends"), "the proxy closed it");
        client.assert_closed("a half-closed client whose request was in progress");
    }
    let seen_post = got.try_recv();
    assert!(seen_post.is_err(), "nothing was sent again: {seen_post:?}");
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// Configuration (the raw-socket kit is lb_tests::http and lb_tests::raw_backend)
// ---------------------------------------------------------------------------------------------

/// A proxy sending paths under `/app` to the one backend at `addr`; every other path has no
/// route (the proxy answers 404 itself).
fn proxy_to(addr: SocketAddr) -> Proxy {
    Proxy::start(&config(&[route("/app", "raw")], &[backend("raw", addr, "")]))
}

// ---------------------------------------------------------------------------------------------
// The recording backend
// ---------------------------------------------------------------------------------------------

/// The body of the chunked responses of [`Backend`], in the pieces it writes.
const CHUNKS: [&[u8]; 4] = [b"first,", b"second chunk,", b"3", b"the last one"];

/// The decoded body of a chunked response of [`Backend`].
fn chunked_body() -> Vec<u8> {
    CHUNKS.concat()
}

/// The body of `/app/big` responses.
fn big_body() -> Vec<u8> {
    pattern(200_000, 17)
}

/// A backend that records what it reads and answers by path:
///
/// - `HEAD`: `200` with `Content-Length: 1000` and no body;
/// - `/app/chunked...`: `200`, chunked (with chunk extensions), each chunk of [`CHUNKS`] in a
///   write of its own, then the last chunk in another;
/// - `/app/big...`: `200` with the 200 000 bytes of [`big_body`];
/// - `/app/dated...`: `200` with a `Date` of its own;
/// - `/app/refuse-upgrade...`: `200` with a body (an upgrade request refused);
/// - anything else: `200` whose `x-path` header and body are the request's path (a request with
///   a body gets `x-body-length` too).
///
/// Every response carries `Content-Length` unless chunked.
struct Backend {
    raw: RawBackend,
    seen: Arc<Mutex<Vec<Req>>>,
}

impl Backend {
    fn start() -> Backend {
        let seen: Arc<Mutex<Vec<Req>>> = Arc::default();
        let raw = {
            let seen = seen.clone();
            RawBackend::start(move |mut conn: BackendConn| {
                while let Some(request) = conn.next_request() {
                    seen.lock().unwrap().push(request.clone());
                    if !answer(&mut conn, &request) {
                        return;
                    }
                }
            })
        };
        Backend { raw, seen }
    }

    fn addr(&self) -> SocketAddr {
        self.raw.addr
    }

    fn seen(&self) -> Vec<Req> {
        self.seen.lock().unwrap().clone()
    }
}

fn answer(conn: &mut BackendConn, request: &Req) -> bool {
    let path = request.path().to_owned();
    if request.method() == "HEAD" {
        return conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nX-Kind: head\r\n\r\n");
    }
    if path.starts_with("/app/chunked") {
        if !conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Kind: chunked\r\n\r\n") {
            return false;
        }
        for chunk in CHUNKS {
            let piece = [format!("{:x};piece\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
            if !conn.send(&piece) {
                return false;
            }
        }
        return conn.send(b"0\r\n\r\n");
    }
    if path.starts_with("/app/big") {
        let mut response =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", big_body().len()).into_bytes();
        response.extend_from_slice(&big_body());
        return conn.send(&response);
    }
    if path.starts_with("/app/dated") {
        return conn.send(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\ndated",
        );
    }
    if path.starts_with("/app/refuse-upgrade") {
        return conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-Kind: no-upgrade\r\n\r\nno upgrade!");
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Path: {path}\r\nX-Body-Length: {}\r\n\r\n{path}",
        path.len(),
        request.body.len()
    );
    conn.send(response.as_bytes())
}

// ---------------------------------------------------------------------------------------------
// Assertions
// ---------------------------------------------------------------------------------------------

/// A `200` from the default answer of [`Backend`] for `path`.
fn assert_path(response: &RawResponse, path: &str, what: &str) {
    assert_ok(response, path.as_bytes(), what);
    assert_eq!(response.header("x-path"), Some(path), "{what}: {:?}", response.head);
}
