//! The proxy's inline HTTP/1.1 upstream client (`lb-userspace/src/proxy/http1/client.rs` and
//! the per-worker keep-alive pools in `proxy/upstream/pool.rs`) end to end on loopback, against raw-socket
//! backends that write exactly the bytes each case needs:
//!
//! - keep-alive connections to a backend are reused across requests (one backend connection
//!   for 50 requests);
//! - a backend that closes (FIN or RST) a keep-alive connection costs no request, retries off:
//!   a close that crossed the request sends it again on a fresh connection, and a close that
//!   arrived before it is seen by the check before reuse (a POST, which cannot go twice, still
//!   gets its 200);
//! - the periodic sweep closes an upstream connection idle for longer than `idle_ms`;
//! - chunked responses written 1 to 7 bytes at a time (with a chunk extension, a 20 KB chunk
//!   and a trailer) arrive decoded byte for byte, the trailer reaches a client that sent
//!   `TE: trailers`, and the connection serves the next request (also after trailers);
//! - HEAD, 204 and 304 responses carry no body, never hang, and keep the connection;
//! - interim 1xx responses (103 Early Hints, a stray 100) are skipped;
//! - bodies delimited by the close (HTTP/1.0, or HTTP/1.1 without a length) arrive whole and
//!   their connections are not reused;
//! - bad framing from a backend (conflicting Content-Length, a malformed chunk) fails that
//!   request only (502, or a cut response, never a hang);
//! - request bodies reach the backend with their framing (Content-Length or chunked);
//! - a 101 response becomes a tunnel, and bytes the backend sent with the 101 head come first.
//!
//! Backends are std threads on blocking sockets with 5 s timeouts; they count the connections
//! they accept so that tests can assert reuse. Nothing waits on a sleep for readiness.

use std::{
    io::Write,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use lb_tests::{
    http::{Client, Ended, IO_TIMEOUT, assert_ok, header_value, pattern},
    raw_backend::{BackendConn, RawBackend, Req, backend, config, route},
    sluice::Proxy,
};

#[test]
fn upstream_connection_is_reused_across_requests() {
    let backend = RawBackend::start(keepalive_ok);
    let proxy = proxy_to(backend.addr, "");
    let mut client = Client::connect(proxy.addr);
    for i in 0..50 {
        assert_ok(&client.get_raw(&format!("/reuse/{i}")), b"ok", &format!("request {i}"));
    }
    // One client connection is served by one worker, whose pool holds the one connection.
    assert_eq!(backend.accepted(), 1, "50 sequential requests share one backend connection");
}

// ---------------------------------------------------------------------------------------------
// 2. Stale keep-alive connections
// ---------------------------------------------------------------------------------------------

/// When a backend closes a keep-alive connection it answered on.
#[derive(Clone, Copy, Debug)]
enum CloseWhen {
    /// Right after writing the response: the close usually arrives before the next request
    /// (the pool's check before reuse sees it), sometimes just after it was sent.
    AfterAnswer,
    /// When the next request arrives, without answering it: the close always crosses that
    /// request, which the proxy must send again on a fresh connection.
    OnNextRequest,
}

/// What a backend that closes its keep-alive connections saw.
#[derive(Default)]
struct Closes {
    answered: AtomicUsize,
    /// Requests read whole and never answered (the connection was closed instead).
    dropped: AtomicUsize,
    /// Connections closed.
    closed: AtomicUsize,
}

/// Answers one request per connection with a keep-alive response (nothing says it will
/// close), then closes as `when` says: with a FIN, or a reset when `reset`.
fn answer_once_then_close(
    closes: Arc<Closes>,
    when: CloseWhen,
    reset: bool,
) -> impl Fn(BackendConn) + Send + Sync {
    move |mut conn: BackendConn| {
        if conn.next_request().is_none() {
            return;
        }
        // Counted first: the client may have the response before this thread runs again.
        closes.answered.fetch_add(1, Ordering::SeqCst);
        if !conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nonce") {
            return;
        }
        if let CloseWhen::OnNextRequest = when {
            if conn.next_request().is_none() {
                return;
            }
            closes.dropped.fetch_add(1, Ordering::SeqCst);
        }
        if reset {
            conn.reset_on_close();
        }
        drop(conn);
        closes.closed.fetch_add(1, Ordering::SeqCst);
    }
}

fn idle_closes_cost_no_request(when: CloseWhen, reset: bool) {
    let closes = Arc::new(Closes::default());
    let backend = RawBackend::start(answer_once_then_close(closes.clone(), when, reset));
    // No retries: only the stale-connection path may send a request again.
    let proxy = proxy_to(backend.addr, ", retries: {attempts: 0}");
    let mut client = Client::connect(proxy.addr);
    for i in 0..200 {
        // Some requests right after the previous response (the close may still be on its way),
        // some after a pause of a few milliseconds (the close has arrived).
        if i % 4 == 3 {
            std::thread::sleep(Duration::from_millis(1 + (i % 3) as u64 * 2));
        }
        let what = format!("request {i} ({when:?}, reset {reset})");
        assert_ok(&client.get_raw(&format!("/stale/{i}")), b"once", &what);
    }
    assert_eq!(closes.answered.load(Ordering::SeqCst), 200, "{when:?}: each request answered once");
    assert_eq!(backend.accepted(), 200, "{when:?}: one connection per answered request");
    match when {
        CloseWhen::OnNextRequest => {
            // Every request but the first met a connection closed under it, and went again.
            assert_eq!(closes.dropped.load(Ordering::SeqCst), 199, "requests that met a closing connection");
        }
        CloseWhen::AfterAnswer => {
            // Once the close has arrived, the check before reuse sees it: a POST, whose body
            // cannot be sent twice (a stale connection would make it a 502), goes on a fresh
            // connection.
            for i in 0..20 {
                wait_until("the backend to close its connections", || {
                    closes.closed.load(Ordering::SeqCst) == backend.accepted()
                });
                let body = format!("post body {i}");
                let request = format!(
                    "POST /stale/post/{i} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                client.send(request.as_bytes());
                let what = format!("POST {i} after the close (reset {reset})");
                assert_ok(&client.read_response(false), b"once", &what);
            }
            assert_eq!(backend.accepted(), 220);
        }
    }
}

#[test]
fn backend_closing_idle_connections_costs_no_request() {
    idle_closes_cost_no_request(CloseWhen::AfterAnswer, false);
    idle_closes_cost_no_request(CloseWhen::OnNextRequest, false);
}

#[test]
fn backend_resetting_idle_connections_costs_no_request() {
    idle_closes_cost_no_request(CloseWhen::AfterAnswer, true);
    idle_closes_cost_no_request(CloseWhen::OnNextRequest, true);
}

#[test]
fn idle_upstream_connection_is_closed_by_the_sweep_after_idle_ms() {
    // When the proxy closed each connection (EOF seen by the backend), after it answered.
    let closed_at: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let backend = {
        let closed_at = closed_at.clone();
        RawBackend::start(move |mut conn: BackendConn| {
            while conn.next_request().is_some() {
                if !conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") {
                    return;
                }
            }
            // `next_request` ends at the close or at the 5 s read timeout: only a close counts.
            if conn.closed_by_peer {
                closed_at.lock().unwrap().push(Instant::now());
            }
        })
    };
    let proxy = proxy_to(backend.addr, ", timeouts: {idle_ms: 500}");
    let mut client = Client::connect(proxy.addr);
    assert_ok(&client.get_raw("/sweep/1"), b"ok", "first request");
    let idle_since = Instant::now();
    // Nothing else happens on this worker: only the periodic sweep can close the connection.
    wait_until("the idle upstream connection to be closed", || !closed_at.lock().unwrap().is_empty());
    let idle = closed_at.lock().unwrap()[0] - idle_since;
    println!("idle upstream connection closed after {idle:?} (idle_ms 500, sweep every 1 s)");
    assert!(idle >= Duration::from_millis(450), "closed at the idle timeout, not before: {idle:?}");
    // Upper bound with slack: the sweep runs every second, so the close comes by ~1.5 s; 1 s
    // more is allowed for a loaded machine.
    assert!(idle < Duration::from_millis(2500), "closed by the sweep soon after the idle timeout: {idle:?}");
    // The client's own connection is still open and served on a new backend connection.
    assert_ok(&client.get_raw("/sweep/2"), b"ok", "after the sweep");
    assert_eq!(backend.accepted(), 2);
}

// ---------------------------------------------------------------------------------------------
// 3. Chunked responses in tiny writes
// ---------------------------------------------------------------------------------------------

/// The decoded body of [`chunked_response`].
fn chunked_payload() -> Vec<u8> {
    let mut body = b"hello".to_vec();
    body.extend_from_slice(&pattern(20_000, 7));
    body.extend_from_slice(b", world");
    body.extend_from_slice(&pattern(1, 9));
    body
}

/// A simple checksum for the trailer.
fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0u64, |sum, &b| sum.wrapping_mul(31).wrapping_add(b as u64))
}

/// `chunked_payload` as a chunked response: a chunk extension, a 20 000-byte chunk (upper-case
/// hex size), and an `x-checksum` trailer (announced in `Trailer` when `trailer`).
fn chunked_response(trailer: bool) -> Vec<u8> {
    let payload = chunked_payload();
    let (a, rest) = payload.split_at(5);
    let (b, rest) = rest.split_at(20_000);
    let (c, d) = rest.split_at(7);
    let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n".to_vec();
    if trailer {
        out.extend_from_slice(b"Trailer: x-checksum\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(b"5;a=b\r\n");
    out.extend_from_slice(a);
    out.extend_from_slice(format!("\r\n{:X}\r\n", b.len()).as_bytes());
    out.extend_from_slice(b);
    out.extend_from_slice(format!("\r\n{:x}\r\n", c.len()).as_bytes());
    out.extend_from_slice(c);
    out.extend_from_slice(format!("\r\n{:x};last\r\n", d.len()).as_bytes());
    out.extend_from_slice(d);
    out.extend_from_slice(b"\r\n0\r\n");
    if trailer {
        out.extend_from_slice(format!("x-checksum: {}\r\n", checksum(&payload)).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Writes `bytes` in pieces of 1 to 7 bytes, with a short pause every few pieces.
fn write_in_tiny_pieces(conn: &mut BackendConn, bytes: &[u8]) -> bool {
    let mut seed = 0x2545_f491u32;
    let mut pos = 0;
    let mut pieces = 0;
    while pos < bytes.len() {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let n = (1 + seed % 7) as usize;
        let end = (pos + n).min(bytes.len());
        if !conn.send(&bytes[pos..end]) || conn.stream.flush().is_err() {
            return false;
        }
        pos = end;
        pieces += 1;
        if pieces % 64 == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    true
}

/// Answers each request with [`chunked_response`] written in tiny pieces; `/no-trailer`
/// paths get it without the trailer.
fn tiny_chunked(mut conn: BackendConn) {
    while let Some(request) = conn.next_request() {
        let response = chunked_response(!request.path().starts_with("/no-trailer"));
        if !write_in_tiny_pieces(&mut conn, &response) {
            return;
        }
    }
}

#[test]
fn chunked_response_split_into_tiny_writes_arrives_intact_with_trailers() {
    let backend = RawBackend::start(tiny_chunked);
    let proxy = proxy_to(backend.addr, "");
    let payload = chunked_payload();
    let mut client = Client::connect(proxy.addr);

    // Without a trailer: the body, then the connection serves the next request.
    for i in 0..2 {
        let response = client.get_raw(&format!("/no-trailer/{i}"));
        assert_ok(&response, &payload, &format!("chunked response {i}"));
        assert_eq!(response.header("transfer-encoding"), Some("chunked"), "{:?}", response.head);
    }
    assert_eq!(backend.accepted(), 1, "the connection is reused after a chunked body");

    // With a trailer, to a client that accepts trailers: hyper's server sends the fields that
    // the response announced in `Trailer`.
    client.send(b"GET /trailer HTTP/1.1\r\nHost: t\r\nTE: trailers\r\n\r\n");
    let response = client.read_response(false);
    assert_ok(&response, &payload, "chunked response with a trailer");
    let expected = format!("{}", checksum(&payload));
    assert_eq!(
        header_value(&format!("\r\n{}", response.trailers), "x-checksum"),
        Some(expected.as_str()),
        "the trailer reaches the client: {:?}",
        response.trailers
    );
    // The client connection keeps working after a response with trailers.
    assert_ok(&client.get_raw("/no-trailer/after"), &payload, "after the trailer");
}

#[test]
fn connection_is_reused_after_a_chunked_response_with_trailers() {
    let backend = RawBackend::start(tiny_chunked);
    let proxy = proxy_to(backend.addr, "");
    let payload = chunked_payload();
    let mut client = Client::connect(proxy.addr);
    // To a client that takes trailers and to one that does not (hyper drops them then).
    for (i, te) in ["TE: trailers\r\n", "", "TE: trailers\r\n"].into_iter().enumerate() {
        client.send(format!("GET /trailer/{i} HTTP/1.1\r\nHost: t\r\n{te}\r\n").as_bytes());
        assert_ok(&client.read_response(false), &payload, &format!("response {i} with a trailer"));
        assert_eq!(
            backend.accepted(),
            1,
            "response {i} ({te:?}): the connection is reused after a chunked body with trailers"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Responses without a body
// ---------------------------------------------------------------------------------------------

#[test]
fn head_204_and_304_responses_carry_no_body_and_keep_the_connection() {
    let backend = RawBackend::start(|mut conn: BackendConn| {
        while let Some(request) = conn.next_request() {
            let response: &[u8] = match (request.method(), request.path()) {
                // A HEAD answer announces the GET body's length and sends none.
                ("HEAD", _) => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Kind: head\r\n\r\n",
                (_, "/204") => b"HTTP/1.1 204 No Content\r\nX-Kind: 204\r\n\r\n",
                (_, "/304") => b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nX-Kind: 304\r\n\r\n",
                _ => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Kind: get\r\n\r\nhello",
            };
            if !conn.send(response) {
                return;
            }
        }
    });
    let proxy = proxy_to(backend.addr, "");
    let mut client = Client::connect(proxy.addr);
    for round in 0..2 {
        client.send(b"HEAD /thing HTTP/1.1\r\nHost: t\r\n\r\n");
        let head = client.read_response(true);
        assert_eq!(head.status, 200, "HEAD, round {round}: {head:?}");
        assert_eq!(head.header("x-kind"), Some("head"));

        let no_content = client.get_raw("/204");
        assert_eq!(no_content.status, 204, "round {round}: {no_content:?}");
        assert_eq!(no_content.header("x-kind"), Some("204"), "not a HEAD body read as this head");

        client.send(b"GET /304 HTTP/1.1\r\nHost: t\r\nIf-None-Match: \"v1\"\r\n\r\n");
        let not_modified = client.read_response(false);
        assert_eq!(not_modified.status, 304, "round {round}: {not_modified:?}");
        assert_eq!(not_modified.header("etag"), Some("\"v1\""));

        // A GET after them gets its own body: nothing was left over on either connection.
        let get = client.get_raw("/thing");
        assert_ok(&get, b"hello", &format!("GET after HEAD, 204 and 304, round {round}"));
        assert_eq!(get.header("x-kind"), Some("get"));
    }
    assert!(client.buf.is_empty(), "no stray bytes to the client: {:?}", client.buf);
    assert_eq!(backend.accepted(), 1, "HEAD, 204 and 304 keep the backend connection");
}

// ---------------------------------------------------------------------------------------------
// 5. Interim responses
// ---------------------------------------------------------------------------------------------

#[test]
fn interim_103_response_is_skipped() {
    let backend = RawBackend::start(|mut conn: BackendConn| {
        while let Some(request) = conn.next_request() {
            let hints = "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n";
            let last = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Final: yes\r\n\r\nfinal";
            let sent = match request.path() {
                // The interim and the final response in one write.
                "/together" => conn.send(format!("{hints}{last}").as_bytes()),
                // Two interim responses (one a stray 100) in their own writes, then the final.
                _ => {
                    conn.send(hints.as_bytes())
                        && conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")
                        && conn.send(last.as_bytes())
                }
            };
            if !sent {
                return;
            }
        }
    });
    let proxy = proxy_to(backend.addr, "");
    let mut client = Client::connect(proxy.addr);
    for path in ["/together", "/apart", "/together"] {
        let response = client.get_raw(path);
        assert_ok(&response, b"final", path);
        assert_eq!(response.header("x-final"), Some("yes"), "{path}: the final head: {:?}", response.head);
    }
    assert_eq!(backend.accepted(), 1, "the connection is reused after interim responses");
}

// ---------------------------------------------------------------------------------------------
// 6. Bodies delimited by the close
// ---------------------------------------------------------------------------------------------

#[test]
fn body_until_close_and_http10_responses_are_complete_and_not_reused() {
    let big = pattern(100_000, 3);
    let backend = {
        let big = big.clone();
        RawBackend::start(move |mut conn: BackendConn| {
            let Some(request) = conn.next_request() else { return };
            // HTTP/1.0 without a length, or HTTP/1.1 without a length: the body runs to the close.
            let status = if request.path().starts_with("/http10") {
                "HTTP/1.0 200 OK\r\n\r\n"
            } else {
                "HTTP/1.1 200 OK\r\nX-Until: close\r\n\r\n"
            };
            let mut response = status.as_bytes().to_vec();
            response.extend_from_slice(&big);
            if conn.send(&response) {
                let _ = conn.stream.shutdown(std::net::Shutdown::Write);
                // Waits for the proxy to close its side (so the close is the proxy's to see).
                while conn.fill() {}
            }
        })
    };
    let proxy = proxy_to(backend.addr, "");
    let mut client = Client::connect(proxy.addr);
    for (i, path) in ["/http10/a", "/http10/b", "/http11-no-length"].into_iter().enumerate() {
        assert_ok(&client.get_raw(path), &big, path);
        assert_eq!(backend.accepted(), i + 1, "{path}: a body delimited by the close is never reused");
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Bad framing from a backend
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_backend_framing_is_a_502_for_that_request_only() {
    let backend = RawBackend::start(|mut conn: BackendConn| {
        while let Some(request) = conn.next_request() {
            let response: &[u8] = match request.path() {
                "/bad-length" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
                // A malformed chunk size; the connection then stays open (the proxy must not wait).
                "/bad-chunk" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                _ => b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood",
            };
            if !conn.send(response) {
                return;
            }
        }
    });
    let proxy = proxy_to(backend.addr, ", retries: {attempts: 0}");

    let mut client = Client::connect(proxy.addr);
    assert_ok(&client.get_raw("/good/1"), b"good", "before");
    let conflicting = client.get_raw("/bad-length");
    assert_eq!(conflicting.status, 502, "conflicting Content-Length values: {conflicting:?}");
    // The client's connection still serves, on a fresh backend connection.
    assert_ok(&client.get_raw("/good/2"), b"good", "after the 502 on the same client connection");

    let mut client = Client::connect(proxy.addr);
    let started = Instant::now();
    let cut = client.get_raw("/bad-chunk");
    assert_eq!(
        cut.ended,
        Ended::Closed,
        "a malformed chunk cuts the response (no complete body, no hang): {cut:?}"
    );
    assert!(matches!(cut.status, 0 | 200 | 502), "{cut:?}");
    // Upper bound with slack: the cut is immediate; 3 s only tells it from a hang.
    assert!(started.elapsed() < Duration::from_secs(3), "cut after {:?}", started.elapsed());

    let mut client = Client::connect(proxy.addr);
    assert_ok(&client.get_raw("/good/3"), b"good", "a new client connection after the cut response");
}

// ---------------------------------------------------------------------------------------------
// 8. Request bodies
// ---------------------------------------------------------------------------------------------

#[test]
fn post_bodies_reach_the_backend_with_their_framing() {
    let seen: Arc<Mutex<Vec<Req>>> = Arc::default();
    let backend = {
        let seen = seen.clone();
        RawBackend::start(move |mut conn: BackendConn| {
            while let Some(request) = conn.next_request() {
                let count = request.body.len().to_string();
                seen.lock().unwrap().push(request);
                let response = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{count}", count.len());
                if !conn.send(response.as_bytes()) {
                    return;
                }
            }
        })
    };
    let proxy = proxy_to(backend.addr, "");
    let mut client = Client::connect(proxy.addr);

    let body = pattern(100_000, 11);
    let mut request = b"POST /upload/length HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n".to_vec();
    request.extend_from_slice(&body);
    client.send(&request);
    assert_ok(&client.read_response(false), b"100000", "POST with Content-Length");

    let chunked_body = pattern(99_999, 13);
    let mut request =
        b"POST /upload/chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let mut rest = &chunked_body[..];
    for size in [1usize, 1000, 16_384, 7, 40_000].into_iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
        rest = tail;
    }
    request.extend_from_slice(b"0\r\n\r\n");
    client.send(&request);
    assert_ok(&client.read_response(false), b"99999", "chunked POST");

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let (length, chunked) = (&seen[0], &seen[1]);
    assert_eq!(length.path(), "/upload/length");
    assert_eq!(length.header("content-length"), Some("100000"), "{}", length.head);
    assert_eq!(length.header("transfer-encoding"), None, "{}", length.head);
    assert!(length.body == body, "the Content-Length body arrives byte for byte");
    assert_eq!(chunked.path(), "/upload/chunked");
    assert_eq!(chunked.header("transfer-encoding"), Some("chunked"), "{}", chunked.head);
    assert_eq!(chunked.header("content-length"), None, "{}", chunked.head);
    assert!(chunked.body == chunked_body, "the chunked body arrives byte for byte");
    assert_eq!(backend.accepted(), 1, "both requests on one backend connection");
}

// ---------------------------------------------------------------------------------------------
// 9. Upgrades
// ---------------------------------------------------------------------------------------------

#[test]
fn upgrade_forwards_bytes_sent_with_the_101() {
    let backend = RawBackend::start(|mut conn: BackendConn| {
        let Some(request) = conn.next_request() else { return };
        if request.header("upgrade") != Some("echo-test") {
            let _ = conn.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 10\r\n\r\nno upgrade");
            return;
        }
        // The 101 head and the first bytes of the new protocol in one write.
        if !conn.send(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo-test\r\n\r\nHELLO",
        ) {
            return;
        }
        // Then an echo, starting with whatever came after the request head.
        let early = std::mem::take(&mut conn.buf);
        if !conn.send(&early) {
            return;
        }
        while conn.fill() {
            let data = std::mem::take(&mut conn.buf);
            if !conn.send(&data) {
                return;
            }
        }
    });
    let proxy = proxy_to(backend.addr, "");
    let mut client = Client::connect(proxy.addr);
    client.send(b"GET /echo HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo-test\r\n\r\n");
    let switched = client.read_response(false);
    assert_eq!(switched.status, 101, "{switched:?}");
    assert_eq!(switched.header("upgrade"), Some("echo-test"), "{:?}", switched.head);
    assert_eq!(client.read_exact_bytes(5), b"HELLO", "the bytes sent with the 101 come first");
    for message in [&b"ping"[..], b"second message", &pattern(50_000, 5)] {
        client.send(message);
        assert!(client.read_exact_bytes(message.len()) == message, "echoed through the tunnel");
    }
    assert_eq!(backend.accepted(), 1);
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// This suite's helpers (the raw-socket kit is lb_tests::http and lb_tests::raw_backend)
// ---------------------------------------------------------------------------------------------

/// A proxy sending everything to the one backend at `addr` (`extra` as in [`backend`]).
fn proxy_to(addr: SocketAddr, extra: &str) -> Proxy {
    Proxy::start(&config(&[route("/", "raw")], &[backend("raw", addr, extra)]))
}

/// Polls `check` until it holds (for at most 5 s).
fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    lb_tests::wait_for(IO_TIMEOUT, what, || check().then_some(())).unwrap();
}

// ---------------------------------------------------------------------------------------------
// 1. Reuse
// ---------------------------------------------------------------------------------------------

/// Answers every request on every connection with a keep-alive `200 ok`.
fn keepalive_ok(mut conn: BackendConn) {
    while conn.next_request().is_some() {
        if !conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") {
            return;
        }
    }
}
