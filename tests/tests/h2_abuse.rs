//! HTTP/2 abuse against the real binary (issue #24): each attack, sent as hand-built frames over
//! a plain TCP connection (prior knowledge), is closed with GOAWAY or held to a limit, the
//! process's memory stays bounded, and a second client on the same (single) worker is served
//! while it happens or right after.
//!
//! - rapid reset (CVE-2023-44487): HEADERS then RST_STREAM, thousands of times in one write →
//!   GOAWAY ENHANCE_YOUR_CALM (`max_pending_accept_reset_streams`);
//! - CONTINUATION flood: one header block that never ends → GOAWAY with an error after a few
//!   frames;
//! - HPACK bomb: one 4 KiB field inserted in the dynamic table, then referenced by one byte
//!   thousands of times (20 MiB decoded from 8 KiB) → the stream refused (431 or
//!   RST_STREAM) or the connection ended, never forwarded;
//! - SETTINGS and PING floods from a client that never reads → the server stops reading
//!   (it answers each before reading on), so the flood stalls in the socket buffers;
//! - empty DATA frames (no END_STREAM; each costs work and carries nothing) → GOAWAY
//!   ENHANCE_YOUR_CALM;
//! - zero window: 50 streams of 1 MiB responses to a client whose window is 0 → at most
//!   `max_send_buf_size` (64 KiB) per stream is held, then the idle timeout ends it;
//! - too many streams: past `h2_max_concurrent_streams`, new streams get REFUSED_STREAM.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    backend::{Backend, Mode},
    http::http_get,
    sluice::Binary,
};

/// RSS growth allowed during an attack: the worker's buffers for one connection are a few MiB;
/// an unbounded queue of 100,000 frames or a 20 MiB header list would show far above this.
const RSS_SLACK_KIB: u64 = 48 * 1024;

#[test]
fn rapid_reset_is_answered_with_goaway() {
    let backend = Backend::with_mode("app", Mode::Name);
    let sluice = Binary::start(&config(backend.addr(), ""));
    let mut h2 = RawH2::connect(sluice.addr, &[]);
    let mut flood = Vec::new();
    for i in 0..2_000u32 {
        let stream = 1 + 2 * i;
        flood.extend(frame(HEADERS, END_STREAM | END_HEADERS, stream, &get_block("/reset")));
        flood.extend(frame(RST_STREAM, 0, stream, &CANCEL.to_be_bytes()));
    }
    h2.send(&flood);
    let goaway = h2.until(Duration::from_secs(10), |f| f.kind == GOAWAY).expect("a GOAWAY");
    assert_eq!(goaway.goaway_code(), Some(ENHANCE_YOUR_CALM), "{goaway:?}");
    assert!(backend.requests() < 200, "{} of 2,000 reset streams reached the backend", backend.requests());
    assert_served(&sluice);
}

#[test]
fn continuation_flood_is_cut_off() {
    let backend = Backend::with_mode("app", Mode::Name);
    let sluice = Binary::start(&config(backend.addr(), ""));
    let mut h2 = RawH2::connect(sluice.addr, &[]);
    let sent = Arc::new(AtomicU64::new(0));
    let writer = {
        let mut stream = h2.stream.try_clone().unwrap();
        let sent = sent.clone();
        thread::spawn(move || {
            let _ = stream.write_all(&frame(HEADERS, 0, 1, &get_block("/continuation")));
            // Literal fields that never end the block: `x-a: aaaa...`, 16 KiB per frame.
            let mut field = vec![0x00, 0x03, b'x', b'-', b'a', 0x7f];
            field.extend(hpack_int_tail(4_000 - 127));
            field.extend(std::iter::repeat_n(b'a', 4_000));
            let payload: Vec<u8> = field.iter().copied().cycle().take(16_384).collect();
            let continuation = frame(CONTINUATION, 0, 1, &payload);
            while sent.load(Ordering::Relaxed) < 64 << 20 {
                if stream.write_all(&continuation).is_err() {
                    return;
                }
                sent.fetch_add(continuation.len() as u64, Ordering::Relaxed);
            }
        })
    };
    let goaway = h2.until(Duration::from_secs(10), |f| f.kind == GOAWAY).expect("a GOAWAY");
    // h2 names the abuse it saw first (too many CONTINUATION frames, a block past the list
    // size, HPACK it would not decode on): any error code, never NO_ERROR.
    assert!(goaway.goaway_code().is_some_and(|code| code != 0), "{goaway:?}");
    // What the writer got out includes what the loopback socket buffers hold (a few MiB); a
    // server that read on would have taken all 64 MiB.
    let taken = sent.load(Ordering::Relaxed);
    assert!(taken < 32 << 20, "{taken} bytes of one header block were taken before the GOAWAY");
    drop(h2);
    writer.join().unwrap();
    assert_eq!(backend.requests(), 0);
    assert_served(&sluice);
}

#[test]
fn hpack_bomb_is_refused_without_decoding_it_whole() {
    let backend = Backend::with_mode("app", Mode::Name);
    let sluice = Binary::start(&config(backend.addr(), ""));
    let before = sluice.rss_kib();
    for round in 0..20 {
        let mut h2 = RawH2::connect(sluice.addr, &[]);
        let mut block = get_block("/bomb");
        // Literal with incremental indexing, new name: `x-bomb: bbbb...` (4,000 bytes) enters
        // the dynamic table at index 62; then 5,000 one-byte references to it.
        block.extend([0x40, 0x06]);
        block.extend(b"x-bomb");
        block.push(0x7f);
        block.extend(hpack_int_tail(4_000 - 127));
        block.extend(std::iter::repeat_n(b'b', 4_000));
        block.extend(std::iter::repeat_n(0x80 | 62, 5_000));
        h2.send(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &block));
        let answer = h2
            .until(Duration::from_secs(10), |f| {
                f.kind == GOAWAY || (f.stream == 1 && (f.kind == RST_STREAM || f.kind == HEADERS))
            })
            .map_err(|e| format!("round {round}: {e}"));
        if let Ok(f) = &answer
            && f.kind == HEADERS
        {
            // h2 answers 431 in HPACK: `:status 431` is not in the static table, so a literal.
            assert!(f.payload.windows(3).any(|w| w == b"431"), "round {round}: not a 431: {f:?}");
        }
        assert!(answer.is_ok() || h2.closed, "{answer:?}");
    }
    assert_eq!(backend.requests(), 0, "a bomb reached the backend");
    let grown = sluice.rss_kib().saturating_sub(before);
    assert!(grown < RSS_SLACK_KIB, "RSS grew by {grown} KiB over 20 bombs of 20 MiB each");
    assert_served(&sluice);
}

#[test]
fn settings_and_ping_floods_stall_in_the_socket() {
    let backend = Backend::with_mode("app", Mode::Name);
    let sluice = Binary::start(&config(backend.addr(), ""));
    let before = sluice.rss_kib();
    for kind in [SETTINGS, PING] {
        let h2 = RawH2::connect(sluice.addr, &[]);
        let mut stream = h2.stream.try_clone().unwrap();
        stream.set_write_timeout(Some(Duration::from_millis(500))).unwrap();
        let one = match kind {
            SETTINGS => frame(SETTINGS, 0, 0, &[]),
            _ => frame(PING, 0, 0, &[7; 8]),
        };
        let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 1_000).collect();
        // Never read: every frame wants an answer the server cannot write, so it stops reading
        // and the writes stall (a write timeout) well before 100,000 frames.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut frames = 0u64;
        while frames < 1_000_000 && Instant::now() < deadline {
            match stream.write_all(&batch) {
                Ok(()) => frames += 1_000,
                Err(_) => break,
            }
            if frames == 10_000 {
                // The worker still serves others while the flood goes on.
                assert_served(&sluice);
            }
        }
        assert!(frames < 1_000_000, "the server read a million frames it had to answer without writing");
        let grown = sluice.rss_kib().saturating_sub(before);
        assert!(grown < RSS_SLACK_KIB, "RSS grew by {grown} KiB under a flood of {frames} frames");
        assert_served(&sluice);
    }
}

#[test]
fn empty_data_flood_is_answered_with_goaway() {
    let backend = Backend::with_mode("app", Mode::Hold);
    let sluice = Binary::start(&config(backend.addr(), ""));
    let mut h2 = RawH2::connect(sluice.addr, &[]);
    h2.send(&frame(HEADERS, END_HEADERS, 1, &post_block("/empty-data")));
    let empty = frame(DATA, 0, 1, &[]);
    let batch: Vec<u8> = empty.iter().copied().cycle().take(empty.len() * 1_000).collect();
    let mut sent = 0;
    let goaway = loop {
        assert!(sent < 200_000, "200,000 empty DATA frames were taken without a GOAWAY");
        if h2.stream.write_all(&batch).is_ok() {
            sent += 1_000;
        }
        if let Ok(goaway) = h2.until(Duration::from_millis(50), |f| f.kind == GOAWAY) {
            break goaway;
        }
        assert!(!h2.closed, "closed without a GOAWAY");
    };
    assert_eq!(goaway.goaway_code(), Some(ENHANCE_YOUR_CALM), "{goaway:?}");
    assert_served(&sluice);
    backend.release();
}

#[test]
fn zero_window_streams_hold_bounded_memory_and_end_on_idle() {
    let big = BigBackend::start(1 << 20);
    let sluice = Binary::start(&config(big.addr, "idle_timeout_ms: 2000"));
    let before = sluice.rss_kib();
    // SETTINGS_INITIAL_WINDOW_SIZE 0: the server may send no DATA on any stream.
    let mut h2 = RawH2::connect(sluice.addr, &[(INITIAL_WINDOW_SIZE, 0)]);
    h2.send(&frame(SETTINGS, ACK, 0, &[]));
    let mut requests = Vec::new();
    for i in 0..50u32 {
        requests.extend(frame(HEADERS, END_STREAM | END_HEADERS, 1 + 2 * i, &get_block("/big")));
    }
    h2.send(&requests);
    lb_tests::wait_for(Duration::from_secs(10), "the backend to be asked 50 times", || {
        (big.served.load(Ordering::Relaxed) >= 50).then_some(())
    })
    .unwrap();
    let grown = sluice.rss_kib().saturating_sub(before);
    assert!(grown < RSS_SLACK_KIB, "RSS grew by {grown} KiB holding 50 stalled 1 MiB responses");
    assert_served(&sluice);
    // Nothing moves: the idle timeout ends the connection (GOAWAY, then the close).
    let started = Instant::now();
    let end = h2.until(Duration::from_secs(15), |f| f.kind == GOAWAY);
    assert!(end.is_ok() || h2.closed, "the stalled connection was never ended: {end:?}");
    let _ = h2.until(Duration::from_secs(15), |_| false);
    assert!(h2.closed, "the stalled connection stayed open after its GOAWAY");
    assert!(started.elapsed() < Duration::from_secs(15), "ended after {:?}", started.elapsed());
}

#[test]
fn streams_past_the_limit_are_refused() {
    let backend = Backend::with_mode("app", Mode::Hold);
    let sluice = Binary::start(&config(backend.addr(), "h2_max_concurrent_streams: 10"));
    let mut h2 = RawH2::connect(sluice.addr, &[]);
    h2.send(&frame(SETTINGS, ACK, 0, &[]));
    let mut requests = Vec::new();
    for i in 0..30u32 {
        requests.extend(frame(HEADERS, END_STREAM | END_HEADERS, 1 + 2 * i, &get_block("/held")));
    }
    h2.send(&requests);
    let mut refused = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while refused < 20 && Instant::now() < deadline {
        match h2.until(deadline.saturating_duration_since(Instant::now()), |f| {
            f.kind == RST_STREAM || f.kind == GOAWAY
        }) {
            Ok(f) if f.kind == RST_STREAM => {
                assert_eq!(u32::from_be_bytes(f.payload[..4].try_into().unwrap()), REFUSED_STREAM, "{f:?}");
                refused += 1;
            }
            other => panic!("expected RST_STREAM REFUSED_STREAM, got {other:?}"),
        }
    }
    assert_eq!(refused, 20, "20 of 30 streams past the limit of 10 are refused");
    lb_tests::wait_for(Duration::from_secs(10), "10 requests at the backend", || {
        (backend.holding() == 10).then_some(())
    })
    .unwrap();
    assert_served(&sluice);
    backend.release();
}

// ---------------------------------------------------------------------------------------------
// Helpers

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 1;
const ACK: u8 = 1;
const END_HEADERS: u8 = 4;
const CANCEL: u32 = 8;
const REFUSED_STREAM: u32 = 7;
const ENHANCE_YOUR_CALM: u32 = 11;
const INITIAL_WINDOW_SIZE: u16 = 4;

/// One worker (the second client shares the attacked worker), no XDP, `limits` added; `/other`
/// goes to a backend of its own, so a held attacked backend does not hold the second client.
fn config(backend: SocketAddr, limits: &str) -> String {
    format!(
        "workers: 1\nxdp: {{enabled: false}}\nlisteners: [{{name: web, address: \"{{listen}}\"}}]\n\
         limits: {{shutdown_grace_ms: 1000{}{limits}}}\n\
         virtual_hosts:\n  - name: all\n    domains: [\"*\"]\n    routes:\n\
         \x20     - match: {{path: {{prefix: /other}}}}\n        backend: other\n\
         \x20     - backend: app\n\
         backends:\n  - name: app\n    endpoints: [{{address: \"{backend}\"}}]\n\
         \x20 - name: other\n    endpoints: [{{address: \"{}\"}}]\n",
        if limits.is_empty() { "" } else { ", " },
        other_backend(),
    )
}

/// The backend of `/other`, one for the whole suite.
fn other_backend() -> SocketAddr {
    static OTHER: std::sync::OnceLock<Backend> = std::sync::OnceLock::new();
    OTHER.get_or_init(|| Backend::with_mode("other", Mode::Name)).addr()
}

/// Another client is answered by the same worker within a few seconds.
fn assert_served(sluice: &Binary) {
    let response = http_get(sluice.addr, "/other").expect("a second client is served");
    assert_eq!(response.status, 200, "{response:?}");
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// The bytes after a 7-bit prefix full of ones (RFC 7541 5.1) for `rest` = value - 127.
fn hpack_int_tail(mut rest: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
    out
}

/// `:method`, `:scheme http`, `:path`, `:authority test` as HPACK without the dynamic table.
fn request_block(method_index: u8, path: &str) -> Vec<u8> {
    let mut block = vec![0x80 | method_index, 0x86];
    // Literal without indexing, indexed name: :path (4), :authority (1).
    block.extend([0x04, path.len() as u8]);
    block.extend(path.as_bytes());
    block.extend([0x01, 4]);
    block.extend(b"test");
    block
}

fn get_block(path: &str) -> Vec<u8> {
    request_block(2, path)
}

fn post_block(path: &str) -> Vec<u8> {
    request_block(3, path)
}

#[derive(Debug)]
struct Frame {
    kind: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    fn goaway_code(&self) -> Option<u32> {
        (self.kind == GOAWAY && self.payload.len() >= 8)
            .then(|| u32::from_be_bytes(self.payload[4..8].try_into().unwrap()))
    }
}

/// A prior-knowledge HTTP/2 connection driven frame by frame.
struct RawH2 {
    stream: TcpStream,
    read: Vec<u8>,
    closed: bool,
}

impl RawH2 {
    /// Sends the preface and a SETTINGS frame with `settings`.
    fn connect(addr: SocketAddr, settings: &[(u16, u32)]) -> RawH2 {
        let stream = TcpStream::connect(addr).unwrap();
        let mut payload = Vec::new();
        for (id, value) in settings {
            payload.extend(id.to_be_bytes());
            payload.extend(value.to_be_bytes());
        }
        let mut h2 = RawH2 { stream, read: Vec::new(), closed: false };
        h2.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        h2.send(&frame(SETTINGS, 0, 0, &payload));
        h2
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The first frame within `within` that `wanted` accepts; frames before it are dropped.
    fn until(&mut self, within: Duration, mut wanted: impl FnMut(&Frame) -> bool) -> Result<Frame, String> {
        let deadline = Instant::now() + within;
        loop {
            while self.read.len() >= 9 {
                let len = (usize::from(self.read[0]) << 16)
                    | (usize::from(self.read[1]) << 8)
                    | usize::from(self.read[2]);
                if self.read.len() < 9 + len {
                    break;
                }
                let frame = Frame {
                    kind: self.read[3],
                    stream: u32::from_be_bytes(self.read[5..9].try_into().unwrap()) & 0x7fff_ffff,
                    payload: self.read[9..9 + len].to_vec(),
                };
                self.read.drain(..9 + len);
                if wanted(&frame) {
                    return Ok(frame);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no such frame within {within:?}"));
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut buf = [0u8; 16 * 1024];
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.closed = true;
                    return Err("the connection closed".into());
                }
                Ok(n) => self.read.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => {
                    self.closed = true;
                    return Err(format!("the connection failed: {e}"));
                }
            }
        }
    }
}

/// An HTTP/1.1 backend answering every request with `size` bytes, one connection each, as
/// fast as the proxy takes them.
struct BigBackend {
    addr: SocketAddr,
    served: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl BigBackend {
    fn start(size: usize) -> BigBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopping) = (served.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let count = count.clone();
                thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                    let _ = conn.write_all(
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n")
                            .as_bytes(),
                    );
                    let _ = conn.write_all(&vec![b'z'; size]);
                });
            }
        });
        BigBackend { addr, served, stop }
    }
}

impl Drop for BigBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}
