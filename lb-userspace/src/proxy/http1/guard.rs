//! Strict HTTP/1.1 request framing in front of the HTTP/1 server (`http1::server`, Sluice's own;
//! the guard was first written for hyper's lenient parser, and its contract is the one both
//! follow).
//!
//! hyper 1.x accepts request shapes a load balancer must refuse because a backend (or a
//! proxy in between) may frame them differently — the request smuggling family:
//! `Content-Length` together with `Transfer-Encoding` (hyper lets `chunked` win and drops the
//! length), two `Content-Length` headers with equal values, bare LF line endings (httparse
//! tolerates them), oversized chunk-size lines with leading zeros, and so on.
//!
//! [`H1Guard`] is an IO adapter placed between the accepted socket and hyper. It follows the
//! request framing of the byte stream it hands to hyper:
//!
//! * **head**: held back (in one per-connection buffer) until its final empty line, then
//!   checked as a whole and passed on unchanged;
//! * **body**: by `Content-Length` (bytes counted) or `chunked` (a streaming chunk-line state
//!   machine); body bytes are passed on as soon as they are validated, never buffered whole
//!   (once the buffer is drained, the socket is read straight into hyper's buffer);
//! * then a head again (keep-alive and pipelining: several messages may be in one read).
//!
//! Rules (a head that breaks one never reaches hyper):
//!
//! * a bare LF (LF not after CR) or bare CR (CR not before LF) anywhere in the head;
//! * obs-fold: a header line starting with SP or HTAB (also right after the request line);
//! * anything `httparse::Request::parse` refuses (request line, header names, whitespace
//!   between a field name and its colon, control bytes in values);
//! * both `Content-Length` and `Transfer-Encoding`; more than one `Content-Length` line (even
//!   equal); a length that is not plain digits (`5, 5`, `+5`, empty) or above hyper's maximum;
//! * `Transfer-Encoding` whose last coding is not `chunked`, that names `chunked` more than
//!   once, has an empty or non-token coding, or appears in an HTTP/1.0 request;
//! * more than [`MAX_HEADERS`] header fields, or a head longer than `max_head_bytes`.
//!
//! In a chunked body: a chunk size that is not 1–16 hex digits (no sign, `0x`, or leading
//! whitespace; whitespace after the digits only before `;ext`); control bytes or a bare LF in
//! an extension; a size line or the data not followed by CRLF; a trailer line that is not
//! `token ":" value CRLF` (bare LF, obs-fold, whitespace before the colon).
//!
//! What the server then does — `http1::server` does the same as hyper 1.12, whose behaviour the
//! tests below check; the end-to-end suites check `http1::server`'s:
//!
//! * a rejected head is replaced with [`REJECT_400`], whose method byte `\x01` makes httparse
//!   fail with `Error::Token`: hyper maps it to `Parse::Method` and `Server::on_error`
//!   answers `400 Bad Request`; the guard then reports EOF, so hyper closes the connection;
//! * a head over `max_head_bytes` (and more than [`MAX_HEADERS`] fields) is replaced with
//!   [`REJECT_431`], a `Content-Length` above hyper's limit: `DecodedLength::checked_new`
//!   fails with `Parse::TooLarge` and hyper answers `431 Request Header Fields Too Large`.
//!   This does not depend on hyper's `max_buf_size` (a head the guard has not seen whole is
//!   never handed over), but configuring the same limit there keeps the two consistent;
//! * a bad chunk is an error in the middle of a body whose head hyper already dispatched: the
//!   valid bytes before it are passed on, then the read fails once with
//!   `io::ErrorKind::InvalidData` (`h1_guard: ...` message) and reports EOF afterwards. hyper
//!   hands that error to the request body (the service's body read fails), stops reading and
//!   closes the connection once the response is written.
//!
//! Inspection stops for good (bytes pass through unchanged) after:
//!
//! * the HTTP/2 prior-knowledge preface as the first bytes of the connection (h2c; the h2
//!   crate validates its own framing);
//! * a `CONNECT` request or an HTTP/1.1 request carrying `Upgrade` with `Connection: upgrade`
//!   (the connection may become a tunnel, e.g. a WebSocket), once that request's body ended.
//!   If the backend refuses the upgrade, `http1::server` closes the connection after that
//!   response rather than read further requests the guard would not inspect.
//!
//! Rejections are counted in an optional shared counter ([`H1Guard::with_rejection_counter`],
//! one increment per refused connection) and logged at debug level with the reason.

use std::{
    collections::VecDeque,
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{
    framing::{CHUNK_START, ChunkError, ChunkState, Strictness, is_tchar, parse_length},
    server::{Next, request_from_head},
};

/// The HTTP/2 prior-knowledge connection preface.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Handed to hyper instead of a rejected head: hyper answers `400 Bad Request`.
pub const REJECT_400: &[u8] = b"\x01 / HTTP/1.1\r\n\r\n";

/// Handed to hyper instead of an oversized head: hyper answers `431`.
pub const REJECT_431: &[u8] = b"GET / HTTP/1.1\r\ncontent-length: 18446744073709551615\r\n\r\n";

/// The most header fields a head may have (hyper's default `max_headers`).
pub const MAX_HEADERS: usize = 100;

/// hyper refuses lengths above `u64::MAX - 2` (`DecodedLength::MAX_LEN`).
const MAX_CONTENT_LENGTH: u64 = u64::MAX - 2;

/// First size of the head buffer; it doubles up to `max_head_bytes` when a head needs it.
const INITIAL_BUF: usize = 8 * 1024;

/// Why the guard refused a connection (logged; the counter does not tell them apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rejection {
    BareLf,
    BareCr,
    ObsFold,
    Malformed,
    TooManyHeaders,
    HeadTooLarge,
    ContentLengthWithTransferEncoding,
    MultipleContentLength,
    InvalidContentLength,
    InvalidTransferEncoding,
    TransferEncodingInHttp10,
    MissingHost,
    MultipleHost,
    InvalidHost,
    Chunk(ChunkError),
}

impl Rejection {
    fn as_str(self) -> &'static str {
        match self {
            Rejection::BareLf => "bare LF in the request head",
            Rejection::BareCr => "bare CR in the request head",
            Rejection::ObsFold => "obs-fold (header line starting with whitespace)",
            Rejection::Malformed => "malformed request line or header field",
            Rejection::TooManyHeaders => "too many header fields",
            Rejection::HeadTooLarge => "request head too large",
            Rejection::ContentLengthWithTransferEncoding => "Content-Length with Transfer-Encoding",
            Rejection::MultipleContentLength => "more than one Content-Length",
            Rejection::InvalidContentLength => "invalid Content-Length",
            Rejection::InvalidTransferEncoding => "Transfer-Encoding not ending in a single chunked",
            Rejection::TransferEncodingInHttp10 => "Transfer-Encoding in an HTTP/1.0 request",
            Rejection::MissingHost => "HTTP/1.1 request without Host",
            Rejection::MultipleHost => "more than one Host",
            Rejection::InvalidHost => "invalid Host",
            Rejection::Chunk(reason) => reason.as_str(),
        }
    }

    /// What hyper is handed instead of the head; `None` for errors inside a body.
    fn substitute(self) -> Option<&'static [u8]> {
        match self {
            Rejection::Chunk(_) => None,
            Rejection::TooManyHeaders | Rejection::HeadTooLarge => Some(REJECT_431),
            _ => Some(REJECT_400),
        }
    }
}

/// Where the next byte of the request stream belongs.
#[derive(Debug)]
enum Framing {
    /// A head, gathered in `buf[ok..end]`.
    Head(HeadScan),
    /// A `Content-Length` body with this many bytes left (never 0).
    Length(u64),
    Chunked(ChunkState),
    /// No more inspection.
    Passthrough,
}

/// Progress of the incremental line scan over the head being gathered (offsets from its start).
#[derive(Debug, Default)]
struct HeadScan {
    /// Bytes already scanned.
    pos: usize,
    /// Where the current line starts.
    line_start: usize,
    /// A non-empty line (the request line) was seen; empty lines before it are skipped.
    in_head: bool,
}

enum HeadStep {
    NeedMore,
    /// The head is complete and this long.
    Complete(usize),
    Reject(Rejection),
    /// The connection starts with the HTTP/2 preface.
    Preface,
}

/// What hyper will be told from now on.
#[derive(Debug)]
enum Stop {
    /// Hand over this substitute head (`sent` bytes of it done), then EOF.
    Substitute {
        bytes: &'static [u8],
        sent: usize,
    },
    /// Fail the next read with this reason, then EOF.
    BodyError {
        reason: Rejection,
        reported: bool,
    },
    Eof,
}

/// The body a validated head announces.
#[derive(Debug, PartialEq, Eq)]
enum Body {
    None,
    Length(u64),
    Chunked,
}

#[derive(Debug, PartialEq, Eq)]
struct HeadInfo {
    body: Body,
    /// CONNECT or an upgrade request: stop inspecting after this message.
    tunnel: bool,
}

/// An IO adapter enforcing strict HTTP/1.1 request framing on the read side; writes pass
/// through unchanged. See the module docs for the rules and what hyper answers.
///
/// Wrap the accepted stream before handing it to hyper (also under hyper-util's `auto`
/// builder: the HTTP/2 preface passes through):
///
/// ```ignore
/// let io = TokioIo::new(H1Guard::new(stream, 64 * 1024).with_rejection_counter(counter));
/// builder.http1().max_buf_size(64 * 1024);
/// builder.serve_connection(io, service).await
/// ```
pub struct H1Guard<S> {
    inner: S,
    max_head: usize,
    /// Initialised storage: `buf[start..ok]` is validated and not yet handed out,
    /// `buf[ok..end]` the head being gathered (body bytes never wait there).
    buf: Vec<u8>,
    start: usize,
    ok: usize,
    end: usize,
    framing: Framing,
    /// The current message opens a tunnel: pass everything through once it ends.
    tunnel_after: bool,
    /// Nothing was validated yet (the HTTP/2 preface is only looked for there).
    at_connection_start: bool,
    stop: Option<Stop>,
    rejections: Option<Arc<AtomicU64>>,
    max_headers: usize,
    head_clock: Option<HeadClock>,
    /// Where the heads this guard checked go, parsed, for the server (see [`ParsedHeads`]).
    parsed: Option<ParsedHeads>,
}

/// The heads a guard checked, in stream order, each as the server takes it: the number of
/// bytes it spans on the stream (empty lines before it included) and the parsed request. The
/// guard has parsed every head with httparse to check it; handing the result over means the
/// server does not parse the same bytes again. Per connection and only ever touched by its
/// own task, so the lock is never contended.
pub type ParsedHeads = Arc<parking_lot::Mutex<VecDeque<(usize, Next)>>>;

/// When the request head now being read started (the connection's start for its first one),
/// shared with the connection's owner so it can cut a client that takes too long to send a
/// head (slowloris) without also cutting idle keep-alive connections, which hyper's own
/// header timer would.
#[derive(Clone, Debug)]
pub struct HeadClock(Arc<AtomicU64>);

impl HeadClock {
    const IDLE: u64 = u64::MAX;

    /// A clock that starts running now (a new connection owes its first head).
    pub fn started() -> HeadClock {
        HeadClock(Arc::new(AtomicU64::new(crate::now_ms())))
    }

    /// Milliseconds the current head has been coming in; `None` between requests.
    pub fn running_for_ms(&self) -> Option<u64> {
        let started = self.0.load(Ordering::Relaxed);
        (started != Self::IDLE).then(|| crate::now_ms().saturating_sub(started))
    }

    fn start(&self) {
        let _ = self.0.compare_exchange(Self::IDLE, crate::now_ms(), Ordering::Relaxed, Ordering::Relaxed);
    }

    fn stop(&self) {
        self.0.store(Self::IDLE, Ordering::Relaxed);
    }
}

impl<S> H1Guard<S> {
    /// Guards `inner`. `max_head_bytes` bounds a request head (request line, headers, final
    /// CRLF, and any empty lines before it): a longer one gets `431`. It is also the most the
    /// head buffer grows to; configure hyper's `max_buf_size` with the same value.
    pub fn new(inner: S, max_head_bytes: usize) -> Self {
        H1Guard {
            inner,
            max_head: max_head_bytes.max(1),
            buf: Vec::new(),
            start: 0,
            ok: 0,
            end: 0,
            framing: Framing::Head(HeadScan::default()),
            tunnel_after: false,
            at_connection_start: true,
            stop: None,
            rejections: None,
            max_headers: MAX_HEADERS,
            head_clock: None,
            parsed: None,
        }
    }

    /// Hands every head it checked, parsed, to `parsed` (the server's end of it).
    pub fn with_parsed_heads(mut self, parsed: ParsedHeads) -> Self {
        self.parsed = Some(parsed);
        self
    }

    /// Refuses heads with more than `max_headers` fields (431), instead of [`MAX_HEADERS`].
    pub fn with_max_headers(mut self, max_headers: usize) -> Self {
        self.max_headers = max_headers.max(1);
        self
    }

    /// Keeps `clock` up to date: running while a head is coming in, idle between requests.
    pub fn with_head_clock(mut self, clock: HeadClock) -> Self {
        self.head_clock = Some(clock);
        self
    }

    /// Adds 1 to `counter` when the guard refuses the connection (a substituted head or a
    /// failed body; at most once per connection, since a refusal ends it).
    pub fn with_rejection_counter(mut self, counter: Arc<AtomicU64>) -> Self {
        self.rejections = Some(counter);
        self
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped stream; bytes read from it but not handed out yet are lost.
    pub fn into_inner(self) -> S {
        self.inner
    }

    fn reject(&mut self, reason: Rejection) {
        tracing::debug!(reason = reason.as_str(), "h1_guard: refusing request");
        if let Some(counter) = &self.rejections {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        // What was validated before still goes out; the rest is dropped.
        self.end = self.ok;
        self.stop = Some(match reason.substitute() {
            Some(bytes) => Stop::Substitute { bytes, sent: 0 },
            None => Stop::BodyError { reason, reported: false },
        });
    }

    /// Validates as much of `buf[ok..end]` as possible (moving `ok`), stopping at an
    /// incomplete head or a rejection.
    fn process_buffered(&mut self) {
        while self.ok < self.end && self.stop.is_none() {
            if let Framing::Head(scan) = &mut self.framing {
                let data = &self.buf[self.ok..self.end];
                let step = if self.at_connection_start && data.starts_with(&H2_PREFACE[..1]) {
                    preface_step(data)
                } else {
                    None
                };
                match step.unwrap_or_else(|| scan_head(scan, data, self.max_head)) {
                    HeadStep::NeedMore => return,
                    HeadStep::Preface => {
                        self.framing = Framing::Passthrough;
                        self.ok = self.end;
                        if let Some(clock) = &self.head_clock {
                            clock.stop();
                        }
                    }
                    HeadStep::Reject(reason) => self.reject(reason),
                    HeadStep::Complete(len) => {
                        match check_head(&data[..len], self.max_headers, self.parsed.is_some()) {
                            Ok((info, next)) => {
                                if let (Some(parsed), Some(next)) = (&self.parsed, next) {
                                    parsed.lock().push_back((len, next));
                                }
                                if let Some(clock) = &self.head_clock {
                                    clock.stop();
                                }
                                self.ok += len;
                                self.at_connection_start = false;
                                self.tunnel_after = info.tunnel;
                                self.framing = match info.body {
                                    Body::None => after_message(info.tunnel),
                                    Body::Length(n) => Framing::Length(n),
                                    Body::Chunked => Framing::Chunked(CHUNK_START),
                                };
                            }
                            Err(reason) => self.reject(reason),
                        }
                    }
                }
            } else {
                let (n, rejected) =
                    advance_body(&mut self.framing, self.tunnel_after, &self.buf[self.ok..self.end]);
                self.ok += n;
                if let Some(reason) = rejected {
                    self.reject(reason);
                }
            }
        }
    }

    /// Keeps bytes read past the end of a message (the start of the next head) for inspection.
    fn stash(&mut self, rest: &[u8]) {
        debug_assert_eq!(self.start, self.end, "stash with undelivered bytes");
        if self.buf.len() < rest.len() {
            self.buf.resize(rest.len().max(INITIAL_BUF), 0);
        }
        self.buf[..rest.len()].copy_from_slice(rest);
        self.start = 0;
        self.ok = 0;
        self.end = rest.len();
        if let (Some(clock), false) = (&self.head_clock, rest.is_empty()) {
            clock.start();
        }
    }
}

impl<S: AsyncRead + Unpin> H1Guard<S> {
    /// Reads more of the head being gathered into `buf` (everything before it was handed out).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        debug_assert_eq!(self.start, self.ok);
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.ok = 0;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            // A head still shorter than max_head (else it was refused), so this grows.
            let len = (self.buf.len() * 2).max(INITIAL_BUF).min(self.max_head.max(self.end + 1));
            self.buf.resize(len, 0);
        }
        let mut read = ReadBuf::new(&mut self.buf[self.end..]);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut read))?;
        let n = read.filled().len();
        if n == 0 {
            // EOF: an incomplete head is dropped; hyper sees a clean end.
            self.end = self.ok;
            self.stop = Some(Stop::Eof);
        } else {
            if let Some(clock) = &self.head_clock {
                // The first byte of a head starts its clock (a no-op while it runs already).
                clock.start();
            }
            self.end += n;
        }
        Poll::Ready(Ok(()))
    }
}

/// `Some` while the connection's first bytes are (a prefix of) the HTTP/2 preface.
fn preface_step(data: &[u8]) -> Option<HeadStep> {
    let n = data.len().min(H2_PREFACE.len());
    if data[..n] != H2_PREFACE[..n] {
        None
    } else if n == H2_PREFACE.len() {
        Some(HeadStep::Preface)
    } else {
        Some(HeadStep::NeedMore)
    }
}

/// The framing once a message ends.
fn after_message(tunnel: bool) -> Framing {
    if tunnel { Framing::Passthrough } else { Framing::Head(HeadScan::default()) }
}

/// Scans the head gathered so far (`data` starts at the head) line by line.
fn scan_head(scan: &mut HeadScan, data: &[u8], max_head: usize) -> HeadStep {
    let limit = data.len().min(max_head);
    while scan.pos < limit {
        let Some(k) = data[scan.pos..limit].iter().position(|&b| b == b'\r' || b == b'\n') else {
            scan.pos = limit;
            break;
        };
        let at = scan.pos + k;
        if data[at] == b'\n' {
            return HeadStep::Reject(Rejection::BareLf);
        }
        if at + 1 == limit {
            // A CR whose LF has not been read (or would be past the limit).
            scan.pos = at;
            break;
        }
        if data[at + 1] != b'\n' {
            return HeadStep::Reject(Rejection::BareCr);
        }
        let line = &data[scan.line_start..at];
        scan.pos = at + 2;
        scan.line_start = at + 2;
        if line.is_empty() {
            if scan.in_head {
                return HeadStep::Complete(at + 2);
            }
            // An empty line before the request line: ignored, as by httparse (RFC 9112 §2.2).
        } else {
            if scan.in_head && matches!(line[0], b' ' | b'\t') {
                return HeadStep::Reject(Rejection::ObsFold);
            }
            scan.in_head = true;
        }
    }
    if data.len() >= max_head { HeadStep::Reject(Rejection::HeadTooLarge) } else { HeadStep::NeedMore }
}

/// Checks a complete head (already free of bare CR/LF and obs-fold) and finds its body; with
/// `parse`, also the request the server takes from the same parse ([`ParsedHeads`]).
fn check_head(head: &[u8], max_headers: usize, parse: bool) -> Result<(HeadInfo, Option<Next>), Rejection> {
    // The usual limit fits on the stack; a larger configured one costs an allocation per head.
    let mut on_stack = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut on_heap;
    let headers: &mut [httparse::Header<'_>] = if max_headers <= MAX_HEADERS {
        &mut on_stack[..max_headers]
    } else {
        on_heap = vec![httparse::EMPTY_HEADER; max_headers];
        &mut on_heap
    };
    let mut req = httparse::Request::new(headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        Err(httparse::Error::TooManyHeaders) => return Err(Rejection::TooManyHeaders),
        _ => return Err(Rejection::Malformed),
    }
    let http11 = req.version == Some(1);
    let mut content_length = None;
    let mut transfer_encoding = false;
    let mut chunked_count = 0u32;
    let mut last_is_chunked = false;
    let mut upgrade = false;
    let mut connection_upgrade = false;
    let mut host: Option<&[u8]> = None;
    for header in req.headers.iter() {
        let name = header.name.as_bytes();
        if name.eq_ignore_ascii_case(b"host") {
            if host.is_some() {
                return Err(Rejection::MultipleHost);
            }
            host = Some(header.value);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            if content_length.is_some() {
                return Err(Rejection::MultipleContentLength);
            }
            content_length = Some(
                parse_length(header.value)
                    .filter(|&n| n <= MAX_CONTENT_LENGTH)
                    .ok_or(Rejection::InvalidContentLength)?,
            );
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
            // hyper reads the value as a visible-ASCII string; anything else is refused.
            if !header.value.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b)) {
                return Err(Rejection::InvalidTransferEncoding);
            }
            for coding in header.value.split(|&b| b == b',') {
                let mut parts = coding.splitn(2, |&b| b == b';');
                let name = trim_ows(parts.next().unwrap_or_default());
                let has_params = parts.next().is_some();
                if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
                    return Err(Rejection::InvalidTransferEncoding);
                }
                last_is_chunked = name.eq_ignore_ascii_case(b"chunked");
                if last_is_chunked {
                    if has_params {
                        return Err(Rejection::InvalidTransferEncoding);
                    }
                    chunked_count += 1;
                }
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            connection_upgrade |= header
                .value
                .split(|&b| b == b',')
                .any(|token| trim_ows(token).eq_ignore_ascii_case(b"upgrade"));
        }
    }
    check_host(host, http11)?;
    let body = if transfer_encoding {
        if content_length.is_some() {
            return Err(Rejection::ContentLengthWithTransferEncoding);
        }
        if !http11 {
            return Err(Rejection::TransferEncodingInHttp10);
        }
        if !last_is_chunked || chunked_count != 1 {
            return Err(Rejection::InvalidTransferEncoding);
        }
        Body::Chunked
    } else {
        match content_length {
            None | Some(0) => Body::None,
            Some(n) => Body::Length(n),
        }
    };
    // hyper upgrades on CONNECT, and on Upgrade in HTTP/1.1 only.
    let tunnel = req.method == Some("CONNECT") || (http11 && upgrade && connection_upgrade);
    let next = parse.then(|| request_from_head(&req, head));
    Ok((HeadInfo { body, tunnel }, next))
}

/// What the guard makes of the head at the start of `data` on its own, without a stream
/// around it (`crate::fuzzing`): `Ok(None)` for more bytes, `Ok(Some((length, request)))`,
/// or the reason it is refused and whether httparse refused it.
pub(crate) fn inspect_head(
    data: &[u8],
    max_head: usize,
    max_headers: usize,
) -> Result<Option<(usize, Next)>, (&'static str, bool)> {
    let refused = |reason: Rejection| {
        (reason.as_str(), matches!(reason, Rejection::Malformed | Rejection::TooManyHeaders))
    };
    match scan_head(&mut HeadScan::default(), data, max_head.max(1)) {
        HeadStep::NeedMore | HeadStep::Preface => Ok(None),
        HeadStep::Reject(reason) => Err(refused(reason)),
        HeadStep::Complete(len) => match check_head(&data[..len], max_headers.max(1), true) {
            Ok((_, next)) => Ok(next.map(|next| (len, next))),
            Err(reason) => Err(refused(reason)),
        },
    }
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// RFC 9112 section 3.2: an HTTP/1.1 request has exactly one Host, any request at most one
/// (checked by the caller), and its value is an authority (`host[:port]`, not empty), as nginx
/// requires. An absolute-form target's authority still wins over Host (section 3.2.2; routing
/// reads the target), so the two may differ.
fn check_host(host: Option<&[u8]>, http11: bool) -> Result<(), Rejection> {
    match host {
        None if http11 => Err(Rejection::MissingHost),
        Some(host) if !valid_authority(host) => Err(Rejection::InvalidHost),
        _ => Ok(()),
    }
}

/// `host[:port]` as RFC 3986 allows it: a reg-name or IPv4 address (unreserved, sub-delims,
/// percent-encodings) or a bracketed IP literal, then an optional decimal port.
fn valid_authority(value: &[u8]) -> bool {
    let port = if value.first() == Some(&b'[') {
        let Some(close) = value.iter().position(|&b| b == b']') else { return false };
        let literal = &value[1..close];
        if literal.is_empty() || !literal.iter().all(|&b| b.is_ascii_hexdigit() || b":.vV".contains(&b)) {
            return false;
        }
        &value[close + 1..]
    } else {
        let end = value.iter().position(|&b| b == b':').unwrap_or(value.len());
        let reg_name = |b: &u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(b);
        if end == 0 || !value[..end].iter().all(reg_name) {
            return false;
        }
        &value[end..]
    };
    match port {
        [] => true,
        [b':', digits @ ..] => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

/// Validates body bytes in a non-head framing. Returns how many bytes of `data` were valid;
/// fewer than all when the message ended (the framing is then a head or passthrough) or
/// with the reason of a rejection at the first invalid byte.
fn advance_body(framing: &mut Framing, tunnel_after: bool, data: &[u8]) -> (usize, Option<Rejection>) {
    let mut i = 0;
    while i < data.len() {
        match framing {
            Framing::Head(_) => break,
            Framing::Passthrough => return (data.len(), None),
            Framing::Length(left) => {
                let take = (*left).min((data.len() - i) as u64);
                i += take as usize;
                *left -= take;
                if *left == 0 {
                    *framing = after_message(tunnel_after);
                }
            }
            Framing::Chunked(state) => match state.advance(&data[i..], Strictness::Strict) {
                Ok((n, done)) => {
                    i += n;
                    if done {
                        *framing = after_message(tunnel_after);
                    }
                }
                Err((n, reason)) => return (i + n, Some(Rejection::Chunk(reason))),
            },
        }
    }
    (i, None)
}

impl<S: AsyncRead + Unpin> AsyncRead for H1Guard<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            // 1. Validated bytes waiting in the buffer go first.
            if this.start < this.ok {
                let n = out.remaining().min(this.ok - this.start);
                out.put_slice(&this.buf[this.start..this.start + n]);
                this.start += n;
                if this.start == this.end {
                    this.start = 0;
                    this.ok = 0;
                    this.end = 0;
                }
                return Poll::Ready(Ok(()));
            }
            // 2. After a refusal or EOF.
            if let Some(stop) = &mut this.stop {
                return match stop {
                    Stop::Substitute { bytes, sent } if *sent < bytes.len() => {
                        let n = out.remaining().min(bytes.len() - *sent);
                        out.put_slice(&bytes[*sent..*sent + n]);
                        *sent += n;
                        Poll::Ready(Ok(()))
                    }
                    Stop::BodyError { reason, reported } if !*reported => {
                        *reported = true;
                        Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("h1_guard: refused request body: {}", reason.as_str()),
                        )))
                    }
                    _ => Poll::Ready(Ok(())),
                };
            }
            // 3. Bytes already read: a head being gathered, maybe followed by more messages.
            if this.ok < this.end {
                this.process_buffered();
                if this.start < this.ok || this.stop.is_some() {
                    continue;
                }
            }
            // 4. Read more.
            if let Framing::Head(_) = this.framing {
                ready!(this.poll_fill(cx))?;
                continue;
            }
            // Body or passthrough, nothing buffered: read straight into hyper's buffer.
            let before = out.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, out))?;
            let got = out.filled().len() - before;
            if got == 0 {
                this.stop = Some(Stop::Eof);
                return Poll::Ready(Ok(()));
            }
            if let Framing::Passthrough = this.framing {
                return Poll::Ready(Ok(()));
            }
            let (n, rejected) = advance_body(&mut this.framing, this.tunnel_after, &out.filled()[before..]);
            if n < got {
                if rejected.is_none() {
                    // The message ended: the rest starts the next head, which waits for inspection.
                    this.stash(&out.filled()[before + n..]);
                }
                out.set_filled(before + n);
            }
            if let Some(reason) = rejected {
                this.reject(reason);
            }
            if n > 0 {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for H1Guard<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::VecDeque, task::Waker};

    use super::*;

    /// Hands out its chunks one per read (less when the reader's buffer is smaller); never pends.
    struct Script(VecDeque<Vec<u8>>);

    impl AsyncRead for Script {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            out: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let chunks = &mut self.get_mut().0;
            if let Some(front) = chunks.front_mut() {
                let n = out.remaining().min(front.len());
                out.put_slice(&front[..n]);
                front.drain(..n);
                if front.is_empty() {
                    chunks.pop_front();
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    /// RFC 9112 section 3.2's Host rules, as nginx applies them: one Host on HTTP/1.1, at most
    /// one on HTTP/1.0, an authority as its value; an absolute-form target may name another.
    #[test]
    fn host_rules() {
        let head =
            |text: &str| check_head(text.replace('|', "\r\n").as_bytes(), MAX_HEADERS, false).map(|_| ());
        assert_eq!(head("GET / HTTP/1.1|Host: a.example||"), Ok(()));
        assert_eq!(head("GET / HTTP/1.1|Host: a.example:8080||"), Ok(()));
        assert_eq!(head("GET / HTTP/1.1|Host: 192.0.2.1||"), Ok(()));
        assert_eq!(head("GET / HTTP/1.1|Host: [2001:db8::1]:443||"), Ok(()));
        assert_eq!(head("GET / HTTP/1.0||"), Ok(()), "HTTP/1.0 needs no Host");
        assert_eq!(head("GET http://a.example/x HTTP/1.1|Host: A.example||"), Ok(()));
        assert_eq!(head("GET / HTTP/1.1|X: y||"), Err(Rejection::MissingHost));
        assert_eq!(head("GET / HTTP/1.1|Host: a|Host: a||"), Err(Rejection::MultipleHost));
        assert_eq!(head("GET / HTTP/1.0|Host: a|host: b||"), Err(Rejection::MultipleHost));
        for bad in ["", "a b", "a/b", "a?b", "user@a", "a:80x", "a:123456", "[::1", "[zz]", "a:80:90"] {
            assert_eq!(
                head(&format!("GET / HTTP/1.1|Host: {bad}||")),
                Err(Rejection::InvalidHost),
                "{bad:?}"
            );
        }
        assert_eq!(
            head("GET http://a.example/x HTTP/1.1|Host: b.example||"),
            Ok(()),
            "the target's authority wins"
        );
    }

    /// Pipelined heads go to the server parsed, in order, each with the bytes it spans (empty
    /// lines before it included), whatever the read boundaries; a refused head is not handed
    /// over (the server answers the substitute it is sent instead).
    #[test]
    fn checked_heads_are_handed_over_parsed() {
        let first = b"GET /one HTTP/1.1\r\nHost: a\r\ncontent-length: 3\r\n\r\n";
        let second = b"\r\nPOST /two?x=1 HTTP/1.1\r\nHost: b\r\ntransfer-encoding: chunked\r\n\r\n";
        let stream = [
            &first[..],
            b"abc",
            second,
            b"0\r\n\r\n",
            b"GET /bad HTTP/1.1\r\nHost: c\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
        ]
        .concat();
        for split in [1, 7, stream.len()] {
            let parsed = ParsedHeads::default();
            let chunks: Vec<Vec<u8>> = stream.chunks(split).map(<[u8]>::to_vec).collect();
            let mut guard = H1Guard::new(Script(chunks.into()), 64 * 1024).with_parsed_heads(parsed.clone());
            let mut cx = Context::from_waker(Waker::noop());
            let mut storage = vec![0u8; 4096];
            while let Poll::Ready(Ok(())) =
                Pin::new(&mut guard).poll_read(&mut cx, &mut ReadBuf::new(&mut storage))
            {
                if parsed.lock().len() == 2 && guard.stop.is_some() {
                    break;
                }
            }
            let heads: Vec<(usize, String)> = parsed
                .lock()
                .drain(..)
                .map(|(length, next)| match next {
                    Next::Request(head) => {
                        (length, format!("{} {}", head.request.method(), head.request.uri()))
                    }
                    _ => panic!("a checked head is a request"),
                })
                .collect();
            assert_eq!(
                heads,
                [(first.len(), "GET /one".to_owned()), (second.len(), "POST /two?x=1".to_owned())],
                "split {split}"
            );
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum End {
        Eof,
        Error(io::ErrorKind),
    }

    /// Reads the guard over `chunks` with `out_cap`-byte reads until EOF or an error.
    fn drive(chunks: Vec<Vec<u8>>, out_cap: usize, max_head: usize) -> (Vec<u8>, End, u64) {
        let counter = Arc::new(AtomicU64::new(0));
        let mut guard = H1Guard::new(Script(chunks.into()), max_head).with_rejection_counter(counter.clone());
        let mut cx = Context::from_waker(Waker::noop());
        let mut storage = vec![0u8; out_cap];
        let mut output = Vec::new();
        loop {
            let mut out = ReadBuf::new(&mut storage);
            let end = match Pin::new(&mut guard).poll_read(&mut cx, &mut out) {
                Poll::Ready(Ok(())) if out.filled().is_empty() => End::Eof,
                Poll::Ready(Ok(())) => {
                    output.extend_from_slice(out.filled());
                    continue;
                }
                Poll::Ready(Err(e)) => End::Error(e.kind()),
                Poll::Pending => panic!("the scripted input never pends"),
            };
            // Whatever comes next must be a clean EOF.
            let mut out = ReadBuf::new(&mut storage);
            let after = Pin::new(&mut guard).poll_read(&mut cx, &mut out);
            assert!(matches!(after, Poll::Ready(Ok(()))) && out.filled().is_empty(), "no EOF after {end:?}");
            return (output, end, counter.load(Ordering::Relaxed));
        }
    }

    /// The ways `input` is cut into reads: whole, byte by byte, fixed sizes, every two-way cut.
    fn splits(input: &[u8]) -> Vec<Vec<Vec<u8>>> {
        let mut all = vec![vec![input.to_vec()]];
        for size in [1, 2, 3, 7, 16, 61] {
            all.push(input.chunks(size).map(<[u8]>::to_vec).collect());
        }
        for cut in 1..input.len() {
            all.push(vec![input[..cut].to_vec(), input[cut..].to_vec()]);
        }
        all
    }

    /// Checks the output, the ending and the rejection count for every split and read size.
    fn check(input: &[u8], max_head: usize, want: &[u8], want_end: End, want_rejections: u64) {
        for chunks in splits(input) {
            for out_cap in [1, 3, 17, 4096] {
                let cuts: Vec<usize> = chunks.iter().map(Vec::len).collect();
                let (output, end, rejections) = drive(chunks.clone(), out_cap, max_head);
                let context =
                    format!("input {:?}, reads {cuts:?}, out_cap {out_cap}", String::from_utf8_lossy(input));
                assert_eq!(String::from_utf8_lossy(&output), String::from_utf8_lossy(want), "{context}");
                assert_eq!(end, want_end, "{context}");
                assert_eq!(rejections, want_rejections, "{context}");
            }
        }
    }

    fn accepted(input: &[u8]) {
        check(input, 64 * 1024, input, End::Eof, 0);
    }

    /// `valid` passes, then the head `bad` is replaced with the 400 trigger.
    fn refused_head(valid: &[u8], bad: &[u8]) {
        let input = [valid, bad].concat();
        check(&input, 64 * 1024, &[valid, REJECT_400].concat(), End::Eof, 1);
    }

    /// `valid` passes, then the first byte of `bad` fails the read.
    fn refused_body(valid: &[u8], bad: &[u8]) {
        let input = [valid, bad].concat();
        check(&input, 64 * 1024, valid, End::Error(io::ErrorKind::InvalidData), 1);
    }

    const GET: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
    const POST_5: &[u8] = b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
    const CHUNKED_HEAD: &[u8] = b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";

    #[test]
    fn keep_alive_and_pipelined_requests_pass_unchanged() {
        accepted(GET);
        accepted(POST_5);
        accepted(
            &[POST_5, GET, POST_5, b"PUT /d HTTP/1.1\r\nHost: x\r\ncontent-length: 0\r\n\r\n", GET].concat(),
        );
        // Empty lines before a request line are tolerated (as hyper does).
        accepted(&[b"\r\n\r\n", GET, b"\r\n", POST_5].concat());
        accepted(b"POST / HTTP/1.0\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nabcGET / HTTP/1.0\r\n\r\n");
        accepted(b"GET / HTTP/1.1\r\nHost: x\r\nX-Empty:\r\nX-Tab:\tv\tw\t\r\nX-Obs: caf\xc3\xa9\r\n\r\n");
    }

    #[test]
    fn chunked_bodies_with_extensions_and_trailers_pass_unchanged() {
        let body: &[u8] =
            b"5;name=value\r\nhello\r\nA ;ext\r\n0123456789\r\nb;a=\"q s\";b\r\nhello world\r\n\
            0000000000000003\r\nabc\r\n0\r\nX-Trailer: 1\r\nX-Other:\tv a l\r\n\r\n";
        accepted(&[CHUNKED_HEAD, body, GET].concat());
        accepted(&[CHUNKED_HEAD, b"0\r\n\r\n", CHUNKED_HEAD, b"1\r\nz\r\n0;last\r\n\r\n", POST_5].concat());
        accepted(
            &[
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\nTRANSFER-ENCODING: Chunked\r\n\r\n0\r\n\r\n",
                GET,
            ]
            .concat(),
        );
        accepted(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip , chunked\r\n\r\nFfFfFfFfFfFfFfFf\r\n",
        );
    }

    #[test]
    fn h2_preface_upgrade_and_connect_switch_to_passthrough() {
        let tunnel_bytes: &[u8] =
            b"\x00\x00\x00\x04\x00\n\n\r garbage \x01 / HTTP/1.1\r\nContent-Length: 1\r\n\r\n";
        accepted(&[H2_PREFACE.as_slice(), tunnel_bytes].concat());
        accepted(H2_PREFACE);
        let ws: &[u8] =
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\r\n";
        accepted(&[GET, ws, tunnel_bytes].concat());
        // An upgrade request's body is still framed; the tunnel starts after it.
        accepted(
            &[
                b"POST / HTTP/1.1\r\nHost: x\r\nUpgrade: x\r\nConnection: upgrade\r\nContent-Length: 2\r\n\r\nab",
                tunnel_bytes,
            ]
            .concat(),
        );
        accepted(
            &[b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", tunnel_bytes].concat(),
        );
        // Without `Connection: upgrade`, or in HTTP/1.0, hyper does not upgrade: still inspected.
        refused_head(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.1\nHost: x\r\n\r\n",
        );
        refused_head(b"GET / HTTP/1.0\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n", b"GET /\n\n");
        // The preface only counts as the first bytes of the connection, and whole.
        refused_head(GET, H2_PREFACE);
        refused_head(b"", b"PRI * HTTP/2.0\r\n\r\nSX\r\n\r\n");
    }

    #[test]
    fn smuggling_heads_are_replaced_with_a_400_trigger() {
        let bad_heads: &[&[u8]] = &[
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 6\r\n\r\nhello!",
            b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nContent-Length: 0x5\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nContent-Length:\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 18446744073709551614\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked;x=1\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip,,chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding:\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: \xffchunked, chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            // obs-fold, also right after the request line.
            b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\tb\r\n\r\n",
            b"GET / HTTP/1.1\r\n Host: x\r\n\r\n",
            // Bare LF and bare CR.
            b"GET / HTTP/1.1\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\nX-A: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n\n",
            b"\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\rX-A: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\r\n",
            // What httparse refuses.
            b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost\t: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHo(st: x\r\n\r\n",
            b"GET / HTTP/1.1\r\n: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nX-A: a\x00b\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET / HTTP/1.1 \r\n\r\n",
            b"G\x01T / HTTP/1.1\r\n\r\n",
        ];
        for bad in bad_heads {
            refused_head(b"", bad);
        }
        // Pipelined after valid requests, the valid ones still go through first.
        refused_head(&[POST_5, GET].concat(), bad_heads[0]);
        refused_head(&[CHUNKED_HEAD, b"0\r\n\r\n"].concat(), bad_heads[2]);
    }

    #[test]
    fn oversized_heads_and_too_many_fields_are_replaced_with_a_431_trigger() {
        let max = 128;
        // Exactly `max` bytes is fine.
        let head = [b"GET / HTTP/1.1\r\nHost: x\r\nX: ".as_slice(), &[b'a'; 128 - 32], b"\r\n\r\n"].concat();
        assert_eq!(head.len(), max);
        check(&head, max, &head, End::Eof, 0);
        // One more is not, with or without a line end in sight.
        let head = [b"GET / HTTP/1.1\r\nHost: x\r\nX: ".as_slice(), &[b'a'; 128 - 31], b"\r\n\r\n"].concat();
        check(&head, max, REJECT_431, End::Eof, 1);
        check(&[b'a'; 300], max, REJECT_431, End::Eof, 1);
        let input = [POST_5, &head].concat();
        check(&input, max, &[POST_5, REJECT_431].concat(), End::Eof, 1);
        // Leading empty lines count: hyper keeps them in its buffer too.
        let input = [&[b'\r', b'\n'].repeat(60)[..], GET].concat();
        check(&input, max, REJECT_431, End::Eof, 1);

        let fields = |n: usize| {
            let mut head = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
            for i in 1..n {
                head.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
            }
            head.extend_from_slice(b"\r\n");
            head
        };
        let head = fields(MAX_HEADERS);
        check(&head, 64 * 1024, &head, End::Eof, 0);
        check(&fields(MAX_HEADERS + 1), 64 * 1024, REJECT_431, End::Eof, 1);
    }

    #[test]
    fn bad_chunks_fail_the_read_after_the_valid_bytes() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b"zz\r\nhello\r\n0\r\n\r\n"),
            (b"", b"-1\r\n"),
            (b"", b"+5\r\nhello\r\n"),
            (b"", b" 5\r\nhello\r\n"),
            (b"", b"\r\n"),
            (b"", b";ext\r\n"),
            (b"0", b"x5\r\nhello\r\n"),
            (b"5 ", b"\r\nhello\r\n"),
            (b"5", b"\nhello\r\n"),
            (b"5\r", b"\rhello\r\n"),
            (b"5;a", b"\nhello\r\n"),
            (b"5;a", b"\x00\r\nhello\r\n"),
            (b"0000000000000005", b"5\r\nhello\r\n"),
            (b"5\r\nhello", b"X\r\n0\r\n\r\n"),
            (b"5\r\nhello", b"\n0\r\n\r\n"),
            (b"5\r\nhello\r", b"\r0\r\n\r\n"),
            (b"5\r\nhello\r\n", b"\r\n"),
            (b"0\r\nX: a", b"\nY: b\r\n\r\n"),
            (b"0\r\nX: a\r\n", b" b\r\n\r\n"),
            (b"0\r\nX", b" : a\r\n\r\n"),
            (b"0\r\n", b":a\r\n\r\n"),
            (b"0\r\nX: a", b"\x01\r\n\r\n"),
            (b"0\r\nX: a\r", b"X\r\n\r\n"),
            (b"0\r\n", b"\n"),
            (b"0\r\n\r", b"\r"),
        ];
        for (valid, bad) in cases {
            refused_body(&[CHUNKED_HEAD, valid].concat(), bad);
        }
        // After valid pipelined messages.
        refused_body(&[POST_5, CHUNKED_HEAD, b"3\r\nabc\r\n"].concat(), b"-3\r\n");
    }

    #[test]
    fn eof_drops_an_incomplete_head_but_passes_a_partial_body() {
        check(b"GET / HTTP/1.1\r\nHost: x\r\n", 64 * 1024, b"", End::Eof, 0);
        check(&[GET, b"GET / HT"].concat(), 64 * 1024, GET, End::Eof, 0);
        check(&H2_PREFACE[..10], 64 * 1024, b"", End::Eof, 0);
        accepted(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc");
        accepted(&[CHUNKED_HEAD, b"5\r\nhel"].concat());
    }

    /// Real sockets, a real hyper server, raw client bytes.
    mod e2e {
        use std::{convert::Infallible, net::SocketAddr, time::Duration};

        use bytes::Bytes;
        use http_body_util::{BodyExt, Full};
        use hyper::{
            Request, Response,
            body::Incoming,
            header::{CONNECTION, UPGRADE},
            server::conn::http1,
            service::service_fn,
        };
        use hyper_util::{
            rt::{TokioExecutor, TokioIo},
            server::conn::auto,
        };
        use tokio::{
            io::{AsyncReadExt, AsyncWriteExt},
            net::{TcpListener, TcpStream},
            sync::mpsc,
            time::timeout,
        };

        use super::super::H1Guard;
        use super::*;

        const LIMIT: usize = 64 * 1024;
        const PATIENCE: Duration = Duration::from_secs(10);

        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        enum Mode {
            /// `http1::Builder` over the guard.
            Guarded,
            /// hyper-util's `auto::Builder` over the guard (HTTP/1 and the HTTP/2 preface).
            GuardedAuto,
            /// `http1::Builder` alone, to show what the guard adds.
            Bare,
        }

        #[derive(Debug, PartialEq, Eq)]
        enum BodyOutcome {
            Len(usize),
            Error,
        }

        struct Server {
            addr: SocketAddr,
            /// Requests the service saw.
            seen: Arc<AtomicU64>,
            /// Connections the guard refused.
            rejected: Arc<AtomicU64>,
            bodies: mpsc::UnboundedReceiver<BodyOutcome>,
        }

        impl Server {
            async fn next_body(&mut self) -> BodyOutcome {
                timeout(PATIENCE, self.bodies.recv()).await.expect("no body outcome").expect("server gone")
            }
        }

        /// Echoes the body length (500 when reading the body fails); answers an `Upgrade`
        /// with 101 and then echoes the tunnel.
        async fn handle(
            mut req: Request<Incoming>,
            seen: Arc<AtomicU64>,
            bodies: mpsc::UnboundedSender<BodyOutcome>,
        ) -> Result<Response<Full<Bytes>>, Infallible> {
            seen.fetch_add(1, Ordering::SeqCst);
            if req.headers().contains_key(UPGRADE) {
                let upgrade = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    let Ok(upgraded) = upgrade.await else { return };
                    let mut io = TokioIo::new(upgraded);
                    let mut buf = [0u8; 256];
                    while let Ok(n @ 1..) = io.read(&mut buf).await {
                        if io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                let response = Response::builder()
                    .status(101)
                    .header(CONNECTION, "upgrade")
                    .header(UPGRADE, "echo")
                    .body(Full::default());
                return Ok(response.unwrap());
            }
            match req.into_body().collect().await {
                Ok(body) => {
                    let len = body.to_bytes().len();
                    let _ = bodies.send(BodyOutcome::Len(len));
                    Ok(Response::new(Full::new(Bytes::from(len.to_string()))))
                }
                Err(_) => {
                    let _ = bodies.send(BodyOutcome::Error);
                    let response = Response::builder().status(500).body(Full::new(Bytes::from("body error")));
                    Ok(response.unwrap())
                }
            }
        }

        async fn start(mode: Mode) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let seen = Arc::new(AtomicU64::new(0));
            let rejected = Arc::new(AtomicU64::new(0));
            let (tx, bodies) = mpsc::unbounded_channel();
            let (seen2, rejected2) = (seen.clone(), rejected.clone());
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (seen, tx) = (seen2.clone(), tx.clone());
                    let svc = service_fn(move |req| handle(req, seen.clone(), tx.clone()));
                    let guarded = H1Guard::new(stream, LIMIT).with_rejection_counter(rejected2.clone());
                    tokio::spawn(async move {
                        match mode {
                            Mode::Guarded => {
                                let io = TokioIo::new(guarded);
                                let conn =
                                    http1::Builder::new().max_buf_size(LIMIT).serve_connection(io, svc);
                                let _ = conn.with_upgrades().await;
                            }
                            Mode::GuardedAuto => {
                                let mut builder = auto::Builder::new(TokioExecutor::new());
                                builder.http1().max_buf_size(LIMIT);
                                let _ =
                                    builder.serve_connection_with_upgrades(TokioIo::new(guarded), svc).await;
                            }
                            Mode::Bare => {
                                let io = TokioIo::new(guarded.into_inner());
                                let _ =
                                    http1::Builder::new().max_buf_size(LIMIT).serve_connection(io, svc).await;
                            }
                        }
                    });
                }
            });
            Server { addr, seen, rejected, bodies }
        }

        /// Sends `request` and reads until the server closes the connection.
        async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            // The server may answer and close before reading everything: the write may fail.
            let _ = stream.write_all(request).await;
            let mut response = Vec::new();
            let read_all = async { while let Ok(1..) = stream.read_buf(&mut response).await {} };
            timeout(PATIENCE, read_all).await.expect("the server neither answered nor closed");
            String::from_utf8_lossy(&response).into_owned()
        }

        /// Reads one response with a `content-length` body: (status, body).
        async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> (u16, String) {
            let read = async {
                loop {
                    if let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4) {
                        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                        let status = head[9..12].parse().unwrap();
                        let len: usize = head
                            .lines()
                            .find_map(|line| line.strip_prefix("content-length: "))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        if buf.len() >= head_end + len {
                            let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned();
                            buf.drain(..head_end + len);
                            return (status, body);
                        }
                    }
                    assert!(stream.read_buf(buf).await.unwrap() > 0, "closed mid-response: {buf:?}");
                }
            };
            timeout(PATIENCE, read).await.expect("no response")
        }

        const SEQUENCE: [(&[u8], usize); 3] = [
            (b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", 5),
            (b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;e=1\r\nabc\r\n4\r\ndefg\r\n0\r\nX-T: 1\r\n\r\n", 7),
            (b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n", 0),
        ];

        #[tokio::test]
        async fn keep_alive_sequence_gets_three_200s() {
            for mode in [Mode::Guarded, Mode::GuardedAuto] {
                let mut server = start(mode).await;
                let mut stream = TcpStream::connect(server.addr).await.unwrap();
                let mut buf = Vec::new();
                for (request, len) in SEQUENCE {
                    stream.write_all(request).await.unwrap();
                    assert_eq!(
                        read_response(&mut stream, &mut buf).await,
                        (200, len.to_string()),
                        "{mode:?}"
                    );
                    assert_eq!(server.next_body().await, BodyOutcome::Len(len));
                }
                assert_eq!(server.seen.load(Ordering::SeqCst), 3);
                assert_eq!(server.rejected.load(Ordering::SeqCst), 0);
            }
        }

        #[tokio::test]
        async fn pipelined_sequence_gets_three_200s() {
            let mut server = start(Mode::Guarded).await;
            let mut stream = TcpStream::connect(server.addr).await.unwrap();
            stream.write_all(&SEQUENCE.map(|(request, _)| request).concat()).await.unwrap();
            let mut buf = Vec::new();
            for (_, len) in SEQUENCE {
                assert_eq!(read_response(&mut stream, &mut buf).await, (200, len.to_string()));
                assert_eq!(server.next_body().await, BodyOutcome::Len(len));
            }
        }

        /// Each ends with `Connection: close` so that an accepted one ends the exchange too.
        const SMUGGLING: &[(&str, &[u8])] = &[
            (
                "CL then TE",
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
            ),
            (
                "TE then CL",
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\nConnection: close\r\n\r\n0\r\n\r\n",
            ),
            (
                "two equal CLs",
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
            ),
            (
                "two different CLs",
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\nConnection: close\r\n\r\nabcd",
            ),
            ("CL list", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\nConnection: close\r\n\r\nabc"),
            (
                "TE chunked, identity",
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\nConnection: close\r\n\r\n0\r\n\r\n",
            ),
            (
                "TE xchunked",
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
            ),
            ("obs-fold", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\nConnection: close\r\n\r\n"),
            ("bare LF in the request line", b"GET / HTTP/1.1\nHost: x\r\nConnection: close\r\n\r\n"),
            ("bare LF in a header", b"GET / HTTP/1.1\r\nHost: x\nConnection: close\r\n\r\n"),
            ("bare LF everywhere", b"GET / HTTP/1.1\nHost: x\nConnection: close\n\n"),
            ("space before colon", b"GET / HTTP/1.1\r\nHost : x\r\nConnection: close\r\n\r\n"),
        ];

        #[tokio::test]
        async fn smuggling_shapes_get_400_and_never_reach_the_service() {
            for mode in [Mode::Guarded, Mode::GuardedAuto] {
                let server = start(mode).await;
                for (i, (shape, request)) in SMUGGLING.iter().enumerate() {
                    let response = exchange(server.addr, request).await;
                    assert!(
                        response.starts_with("HTTP/1.1 400 Bad Request\r\n"),
                        "{mode:?} {shape}: {response:?}"
                    );
                    assert_eq!(server.seen.load(Ordering::SeqCst), 0, "{mode:?} {shape}");
                    assert_eq!(server.rejected.load(Ordering::SeqCst), i as u64 + 1, "{mode:?} {shape}");
                }
            }
        }

        /// Without the guard hyper serves these (when this starts failing, hyper got stricter).
        #[tokio::test]
        async fn hyper_alone_serves_some_smuggling_shapes() {
            let mut server = start(Mode::Bare).await;
            for (shape, request) in SMUGGLING {
                if ["TE then CL", "CL then TE", "two equal CLs", "bare LF everywhere"].contains(shape) {
                    let response = exchange(server.addr, request).await;
                    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{shape}: {response:?}");
                    assert!(matches!(server.next_body().await, BodyOutcome::Len(_)));
                }
            }
        }

        #[tokio::test]
        async fn bad_chunk_sizes_fail_the_body_and_get_no_200() {
            let sizes: &[&[u8]] = &[b"zz", b"-1", b"0x5", b"5 ", b"00000000000000005"];
            for (i, size) in sizes.iter().enumerate() {
                let mut server = start(Mode::Guarded).await;
                let request = [
                    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".as_slice(),
                    size,
                    b"\r\nhello\r\n0\r\n\r\n",
                ]
                .concat();
                let response = exchange(server.addr, &request).await;
                let size = String::from_utf8_lossy(size);
                assert!(!response.starts_with("HTTP/1.1 200"), "{size}: {response:?}");
                assert_eq!(server.next_body().await, BodyOutcome::Error, "{size}");
                assert_eq!(server.seen.load(Ordering::SeqCst), 1, "{size}");
                assert_eq!(server.rejected.load(Ordering::SeqCst), 1, "{size} ({i})");
            }
        }

        #[tokio::test]
        async fn oversized_head_gets_431() {
            for mode in [Mode::Guarded, Mode::GuardedAuto] {
                let server = start(mode).await;
                let request = [
                    b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".as_slice(),
                    &[b'a'; 70 * 1024],
                    b"\r\nConnection: close\r\n\r\n",
                ]
                .concat();
                let response = exchange(server.addr, &request).await;
                assert!(
                    response.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
                    "{mode:?}: {response:?}"
                );
                assert_eq!(server.seen.load(Ordering::SeqCst), 0);
                assert_eq!(server.rejected.load(Ordering::SeqCst), 1);
            }
        }

        #[tokio::test]
        async fn upgrade_tunnel_and_h2_prior_knowledge_pass_through() {
            let server = start(Mode::Guarded).await;
            let mut stream = TcpStream::connect(server.addr).await.unwrap();
            stream
                .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: upgrade\r\n\r\n")
                .await
                .unwrap();
            let mut buf = Vec::new();
            assert_eq!(read_response(&mut stream, &mut buf).await.0, 101);
            // Bytes the guard would refuse in a head.
            let tunnel = b"\n\n\x00 / HTTP/1.1\nContent-Length: 1, 2\r\n\r\n";
            stream.write_all(tunnel).await.unwrap();
            while buf.len() < tunnel.len() {
                assert!(timeout(PATIENCE, stream.read_buf(&mut buf)).await.unwrap().unwrap() > 0);
            }
            assert_eq!(buf, tunnel);

            // h2c prior knowledge under the auto builder: the server answers with SETTINGS.
            let server = start(Mode::GuardedAuto).await;
            let mut stream = TcpStream::connect(server.addr).await.unwrap();
            stream.write_all(H2_PREFACE).await.unwrap();
            stream.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
            let mut frame = [0u8; 9];
            timeout(PATIENCE, stream.read_exact(&mut frame)).await.unwrap().unwrap();
            assert_eq!(frame[3], 4, "first server frame is SETTINGS: {frame:?}");
            assert_eq!(server.rejected.load(Ordering::SeqCst), 0);
        }
    }
}
