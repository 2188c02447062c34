//! HTTP/1.x on a client connection, served by Sluice itself; HTTP/2 (prior knowledge, or
//! ALPN over TLS) is handed to hyper.
//!
//! hyper's HTTP/1 server runs each request through a generic dispatcher (a connection state
//! machine, a read strategy, a queued write buffer, the service call); on a proxy's hot path
//! that was the largest cost after the kernel. This server does only what a keep-alive proxy
//! connection needs, in the connection's own task:
//!
//! * **heads** come from [`H1Guard`](super::guard::H1Guard), which has already refused every
//!   request-smuggling shape; a head the guard replaced is answered `400` (or `431` for the
//!   oversized-head trigger) and the connection closes. The head is copied once out of the read
//!   buffer (header values share that copy), so the buffer stays the connection's own;
//! * the **request body** ([`H1Body`]) reads the same socket, through the connection's shared
//!   [`Wire`], by `Content-Length` or chunked (the upstream client's strict decoder), and answers
//!   `Expect: 100-continue` when it is first read;
//! * the **response** head is written with its first body bytes in one write when they are
//!   ready (the common small response); bodies go out by their `Content-Length`, chunked, or
//!   until the close for an HTTP/1.0 client; `Date` is added when the response has none;
//! * **keep-alive** follows RFC 9112 9.3; the connection closes after a response whose request
//!   body was not read to its end, after a `CONNECT` or a refused upgrade (the guard stops
//!   inspecting after those), and once the owner asks it to close (idle timeout, shutdown):
//!   then at once when no request is in progress, else after the response;
//! * an **upgrade** the backend accepted (101) hands the socket, with any bytes already read,
//!   to the request's [`ClientUpgrade`].

use std::{
    convert::Infallible,
    future::poll_fn,
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes, BytesMut};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
    header::{CONNECTION, CONTENT_LENGTH, DATE, EXPECT, TRANSFER_ENCODING, UPGRADE},
};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use parking_lot::Mutex;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::oneshot,
};

use super::{
    framing::{ChunkDecoder, Decoded, parse_length},
    guard::ParsedHeads,
    wire::{HeadCopy, put_chunk_size, put_decimal, put_field, put_last_chunk},
};
use crate::{
    config::Limits,
    proxy::body::{BoxError, ProxyBody},
};

/// What the server does with each request it reads: the worker hands in the request pipeline,
/// so this codec knows nothing of routing or upstreams. Every problem must be a response.
pub trait Handler: Clone + Send + Sync + 'static {
    fn handle(&self, request: Request<ClientBody>) -> impl Future<Output = Response<ProxyBody>> + Send;
}

/// A client connection's byte stream (plain TCP or TLS, behind the guard), boxed so the
/// request body's type does not carry it.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ClientIo for T {}

/// The HTTP/2 prior-knowledge connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Read size: a request head, or a run of body bytes.
const READ_CHUNK: usize = 8 * 1024;
/// Body data up to this size is copied behind the head, so both go out in one write.
const COALESCE_BELOW: usize = 16 * 1024;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
const BAD_REQUEST: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
const HEAD_TOO_LARGE: &[u8] =
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// The connection's socket and read buffer, shared by the serving loop and the body of the
/// request in progress (which may be read by another task, e.g. hyper's HTTP/2 client).
struct Wire {
    /// `None` once handed to an upgrade.
    io: Option<Box<dyn ClientIo>>,
    read: BytesMut,
    /// How far the current request's body has been read.
    body: Progress,
    /// `Expect: 100-continue` still to answer: bytes of [`CONTINUE`] written so far.
    continue_due: Option<usize>,
}

impl Wire {
    /// The request body was read to its end and no 100-continue is still owed: the stream is
    /// at a message boundary.
    fn body_settled(&self) -> bool {
        matches!(self.body, Progress::Done) && self.continue_due.is_none()
    }
}

enum Progress {
    Length(u64),
    Chunked(ChunkDecoder),
    /// Read to its end (or there was none).
    Done,
    /// Broken (bad framing, the client left mid-body): the connection cannot continue.
    Failed,
}

/// A request body as the client connection delivers it: from Sluice's own HTTP/1 server
/// (`Left`), or from hyper's HTTP/2 server (`Right`).
pub type ClientBody = http_body_util::Either<H1Body, Incoming>;

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the client closed the connection in the middle of the request body")]
    Truncated,
    #[error("reading the request body failed: {0}")]
    Io(#[source] io::Error),
    #[error("malformed chunked request body")]
    Chunked,
}

type SharedWire = Arc<Mutex<Wire>>;

/// The body of a request read from this server: it reads the connection's socket.
pub struct H1Body {
    /// `None` for a request without a body.
    wire: Option<SharedWire>,
    hint: SizeHint,
}

impl H1Body {
    fn empty() -> H1Body {
        H1Body { wire: None, hint: SizeHint::with_exact(0) }
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(shared) = &self.wire else { return Poll::Ready(None) };
        let mut guard = shared.lock();
        let wire = &mut *guard;
        let Some(io) = wire.io.as_mut() else { return Poll::Ready(None) };
        // The client waits for this before it sends the body.
        while let Some(written) = wire.continue_due {
            match ready!(Pin::new(&mut *io).poll_write(cx, &CONTINUE[written..])) {
                Ok(0) | Err(_) => {
                    wire.body = Progress::Failed;
                    return Poll::Ready(Some(Err(Box::new(BodyError::Truncated))));
                }
                Ok(n) if written + n == CONTINUE.len() => wire.continue_due = None,
                Ok(n) => wire.continue_due = Some(written + n),
            }
        }
        loop {
            match &mut wire.body {
                Progress::Done => return Poll::Ready(None),
                Progress::Failed => return Poll::Ready(Some(Err(Box::new(BodyError::Truncated)))),
                Progress::Length(remaining) => {
                    if !wire.read.is_empty() {
                        let n = (*remaining).min(wire.read.len() as u64) as usize;
                        *remaining -= n as u64;
                        if *remaining == 0 {
                            wire.body = Progress::Done;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(wire.read.split_to(n).freeze()))));
                    }
                }
                Progress::Chunked(decoder) => match decoder.decode(&mut wire.read) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::Trailers(trailers)) => {
                        wire.body = Progress::Done;
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    Ok(Decoded::Done) => {
                        wire.body = Progress::Done;
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore(_)) => {}
                    Err(_) => {
                        wire.body = Progress::Failed;
                        return Poll::Ready(Some(Err(Box::new(BodyError::Chunked))));
                    }
                },
            }
            wire.read.reserve(READ_CHUNK);
            match ready!(poll_read_into(Pin::new(&mut *io), cx, &mut wire.read)) {
                Ok(0) => {
                    wire.body = Progress::Failed;
                    return Poll::Ready(Some(Err(Box::new(BodyError::Truncated))));
                }
                Ok(_) => {}
                Err(e) => {
                    wire.body = Progress::Failed;
                    return Poll::Ready(Some(Err(Box::new(BodyError::Io(e)))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.wire.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// Reads what is available into the spare capacity of `buffer`.
fn poll_read_into(
    io: Pin<&mut dyn ClientIo>,
    cx: &mut Context<'_>,
    buffer: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    tokio_util::io::poll_read_buf(io, cx, buffer)
}

/// The client side of an upgrade (WebSocket and other `Upgrade` protocols): the connection,
/// once the 101 is written. (Shared only because request extensions must be `Clone`.)
#[derive(Clone)]
pub struct ClientUpgrade(Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl ClientUpgrade {
    /// Takes the request's upgrade handle, when it asked for one.
    pub fn take<B>(request: &mut Request<B>) -> Option<ClientUpgrade> {
        request.extensions_mut().remove::<ClientUpgrade>()
    }

    /// Waits for the 101 to be written, then yields the connection.
    pub async fn connection(self) -> Option<Prefixed> {
        let receiver = self.0.lock().take()?;
        receiver.await.ok().map(|upgraded| Prefixed::new(upgraded.early, upgraded.io))
    }
}

/// The socket after an upgrade and the bytes the client had already sent past the request.
pub struct Upgraded {
    io: Box<dyn ClientIo>,
    early: Bytes,
}

/// A stream that first yields bytes already read from it.
pub struct Prefixed {
    prefix: Bytes,
    io: Box<dyn ClientIo>,
}

impl Prefixed {
    pub fn new(prefix: Bytes, io: Box<dyn ClientIo>) -> Prefixed {
        Prefixed { prefix, io }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// What the next bytes on the connection are.
pub enum Next {
    Request(Box<ParsedHead>),
    /// The HTTP/2 preface: the rest of the connection belongs to hyper.
    H2,
    /// A head the guard refused, or one that does not parse: answer this, then close.
    Refuse(&'static [u8]),
    /// The client left, or the connection was asked to close between requests.
    End,
}

/// A parsed request head and how its connection continues.
pub struct ParsedHead {
    pub(super) request: Request<()>,
    body: Progress,
    keep_alive: bool,
    expects_continue: bool,
    /// Upgrade or CONNECT: the guard stops inspecting after it.
    tunnel: bool,
}

impl ParsedHead {
    /// The request (with no body).
    pub(crate) fn request(&self) -> &Request<()> {
        &self.request
    }
}

/// Serves the connection until the client leaves, an error ends it, or `closing` is set (the
/// owner sets it and polls again: the connection then ends at once between requests, or
/// after the response in progress). `parsed` is the guard's end of [`ParsedHeads`], when the
/// guard in `io` hands over the heads it parsed.
pub async fn serve(
    io: Box<dyn ClientIo>,
    parsed: Option<ParsedHeads>,
    handler: impl Handler,
    limits: Limits,
    closing: &AtomicBool,
) {
    let wire: SharedWire = Arc::new(Mutex::new(Wire {
        io: Some(io),
        read: BytesMut::with_capacity(READ_CHUNK),
        body: Progress::Done,
        continue_due: None,
    }));
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    let mut first = true;
    loop {
        let next = poll_fn(|cx| poll_next(&wire, cx, &limits, closing, first, parsed.as_ref())).await;
        first = false;
        let incoming = match next {
            Next::Request(incoming) => *incoming,
            Next::H2 => return serve_h2(&wire, handler, &limits, closing).await,
            Next::Refuse(response) => {
                let _ = write_all(&wire, response).await;
                let _ = shutdown(&wire).await;
                return;
            }
            Next::End => {
                let _ = shutdown(&wire).await;
                return;
            }
        };
        let ParsedHead { request, body, keep_alive, expects_continue, tunnel } = incoming;
        let head_request = request.method() == Method::HEAD;
        let version = request.version();
        let has_body = !matches!(body, Progress::Done);
        let hint = match &body {
            Progress::Length(n) => SizeHint::with_exact(*n),
            _ => SizeHint::default(),
        };
        {
            let mut w = wire.lock();
            w.body = body;
            w.continue_due = (expects_continue && has_body).then_some(0);
        }
        let body = if has_body { H1Body { wire: Some(wire.clone()), hint } } else { H1Body::empty() };
        let (parts, ()) = request.into_parts();
        let mut request = Request::from_parts(parts, ClientBody::Left(body));
        let upgrade = tunnel.then(|| {
            let (sender, receiver) = oneshot::channel();
            request.extensions_mut().insert(ClientUpgrade(Arc::new(Mutex::new(Some(receiver)))));
            sender
        });
        let Some(response) = answer_unless_gone(&wire, handler.handle(request)).await else {
            // The client left first: the request, with its upstream connection, is dropped.
            return;
        };
        let status = response.status();
        // The response announces a close decided already: after a tunnel request, on the
        // owner's signal, or when a body nobody read to its end leaves the stream mid-message
        // (or a 100-continue never sent means the client may still send it).
        let keep_alive =
            keep_alive && !tunnel && !closing.load(Ordering::Relaxed) && wire.lock().body_settled();
        let Ok(mut keep_alive) =
            write_response(&wire, &mut out, response, head_request, version, keep_alive).await
        else {
            // The client is gone or the response body failed half-way: nothing to save.
            let _ = shutdown(&wire).await;
            return;
        };
        if status == StatusCode::SWITCHING_PROTOCOLS {
            // The connection now speaks another protocol (or, without an upgrade to hand it
            // to, nothing this server can follow).
            let mut w = wire.lock();
            if let (Some(upgrade), Some(io)) = (upgrade, w.io.take()) {
                let early = w.read.split().freeze();
                let _ = upgrade.send(Upgraded { io, early });
            }
            return;
        }
        {
            // The same, for a body still being read while the response went out.
            let mut w = wire.lock();
            keep_alive &= w.body_settled();
            w.continue_due = None;
        }
        if !keep_alive || tunnel || closing.load(Ordering::Relaxed) {
            let _ = shutdown(&wire).await;
            return;
        }
    }
}

/// The handler's response, or `None` when the client closes its side (end of stream, an
/// error) before it comes: the caller drops the request in progress, which closes its upstream
/// connection, so a backend working for a client that left learns it at once instead of when
/// its answer is written (nginx ends such a request the same way and logs 499; a client that
/// half-closes after its request is taken as gone there too). The socket is read only once the
/// request body has been read to its end, and only while nothing is buffered: bytes that come
/// then (a pipelined request) stay in the read buffer for the next head, and a client that
/// sent them is still there.
async fn answer_unless_gone(
    wire: &SharedWire,
    answer: impl Future<Output = Response<ProxyBody>>,
) -> Option<Response<ProxyBody>> {
    let mut answer = std::pin::pin!(answer);
    poll_fn(|cx| {
        if let Poll::Ready(response) = answer.as_mut().poll(cx) {
            return Poll::Ready(Some(response));
        }
        if poll_client_gone(wire, cx) { Poll::Ready(None) } else { Poll::Pending }
    })
    .await
}

/// Reads what the client sends while its request is in progress; true once it closed.
fn poll_client_gone(wire: &SharedWire, cx: &mut Context<'_>) -> bool {
    let mut guard = wire.lock();
    let w = &mut *guard;
    while w.body_settled() && w.read.is_empty() {
        let Some(io) = w.io.as_mut() else { return false };
        w.read.reserve(READ_CHUNK);
        match poll_read_into(Pin::new(&mut **io), cx, &mut w.read) {
            Poll::Ready(Ok(0) | Err(_)) => return true,
            Poll::Ready(Ok(_)) => {}
            Poll::Pending => return false,
        }
    }
    false
}

/// Waits for the next head, the preface, the end, or the closing signal.
fn poll_next(
    wire: &SharedWire,
    cx: &mut Context<'_>,
    limits: &Limits,
    closing: &AtomicBool,
    first: bool,
    parsed: Option<&ParsedHeads>,
) -> Poll<Next> {
    let mut guard = wire.lock();
    let w = &mut *guard;
    loop {
        if first && !w.read.is_empty() {
            let n = w.read.len().min(H2_PREFACE.len());
            if w.read[..n] == H2_PREFACE[..n] {
                if n == H2_PREFACE.len() {
                    return Poll::Ready(Next::H2);
                }
            } else if let Some(next) = next_head(&mut w.read, limits, parsed) {
                return Poll::Ready(next);
            }
        } else if !w.read.is_empty() {
            if let Some(next) = next_head(&mut w.read, limits, parsed) {
                return Poll::Ready(next);
            }
        } else if closing.load(Ordering::Relaxed) && !first {
            // A connection's first request is awaited even when closing (bounded by the head
            // timeout): one accepted just before a shutdown or an upgrade's handover came to a
            // listening socket, and closing it unanswered would fail a request no client could
            // have held back.
            return Poll::Ready(Next::End);
        }
        let Some(io) = w.io.as_mut() else { return Poll::Ready(Next::End) };
        w.read.reserve(READ_CHUNK);
        match ready!(poll_read_into(Pin::new(&mut **io), cx, &mut w.read)) {
            Ok(0) | Err(_) => return Poll::Ready(Next::End),
            Ok(_) => {}
        }
    }
}

/// Takes the complete head at the front of `read` out: the one the guard already parsed
/// (`parsed`), else parsed here (a head the guard substituted, or a server without a guard);
/// `None` for more bytes.
fn next_head(read: &mut BytesMut, limits: &Limits, parsed: Option<&ParsedHeads>) -> Option<Next> {
    if let Some(parsed) = parsed {
        let mut heads = parsed.lock();
        if let Some(&(length, _)) = heads.front() {
            if read.len() < length {
                return None;
            }
            let (_, next) = heads.pop_front()?;
            read.advance(length);
            return Some(next);
        }
    }
    parse_head(read, limits)
}

/// Parses a complete head at the front of `read` (taking it out), or `None` for more bytes.
pub(crate) fn parse_head(read: &mut BytesMut, limits: &Limits) -> Option<Next> {
    let mut fixed = [httparse::EMPTY_HEADER; super::guard::MAX_HEADERS];
    let mut grown;
    let slots: &mut [httparse::Header<'_>] = if limits.max_headers > fixed.len() {
        grown = vec![httparse::EMPTY_HEADER; limits.max_headers];
        &mut grown
    } else {
        &mut fixed
    };
    let mut parsed = httparse::Request::new(slots);
    let length = match parsed.parse(read) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return None,
        Err(_) => return Some(Next::Refuse(BAD_REQUEST)),
    };
    let next = request_from_head(&parsed, &read[..length]);
    read.advance(length);
    Some(next)
}

/// The request a parsed head stands for (`raw` is the head `parsed` points into), or a
/// refusal when it cannot be one.
pub(super) fn request_from_head(parsed: &httparse::Request<'_, '_>, raw: &[u8]) -> Next {
    build_request(parsed, &HeadCopy::new(raw)).unwrap_or(Next::Refuse(BAD_REQUEST))
}

fn build_request(parsed: &httparse::Request<'_, '_>, head: &HeadCopy<'_>) -> Option<Next> {
    let method = Method::from_bytes(parsed.method?.as_bytes()).ok()?;
    let uri = Uri::from_maybe_shared(head.slice(parsed.path?.as_bytes())).ok()?;
    let version = if parsed.version? == 1 { Version::HTTP_11 } else { Version::HTTP_10 };
    // The proxy adds nothing to this map: the upstream fields are described beside it
    // (`headers::UpstreamHeaders`).
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let (mut close, mut keep_alive_asked, mut upgrade_asked, mut has_upgrade) = (false, false, false, false);
    let mut expects_continue = false;
    for header in parsed.headers.iter() {
        let name = HeaderName::from_bytes(header.name.as_bytes()).ok()?;
        let value = HeaderValue::from_maybe_shared(head.slice(header.value)).ok()?;
        if name == CONTENT_LENGTH {
            // The guard let through one plain-digit value; its oversized-head trigger is a
            // length no body can have.
            match parse_length(header.value) {
                Some(n) if n < u64::MAX - 2 => length = Some(n),
                _ => return Some(Next::Refuse(HEAD_TOO_LARGE)),
            }
        } else if name == TRANSFER_ENCODING {
            chunked = true;
        } else if name == CONNECTION {
            for token in header.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_asked |= token.eq_ignore_ascii_case(b"keep-alive");
                upgrade_asked |= token.eq_ignore_ascii_case(b"upgrade");
            }
        } else if name == UPGRADE {
            has_upgrade = true;
        } else if name == EXPECT {
            expects_continue = header.value.eq_ignore_ascii_case(b"100-continue");
        }
        headers.append(name, value);
    }
    let body = if chunked {
        Progress::Chunked(ChunkDecoder::default())
    } else {
        match length {
            Some(n) if n > 0 => Progress::Length(n),
            _ => Progress::Done,
        }
    };
    let keep_alive = if version == Version::HTTP_11 { !close } else { keep_alive_asked && !close };
    let tunnel = method == Method::CONNECT || (version == Version::HTTP_11 && upgrade_asked && has_upgrade);
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Some(Next::Request(Box::new(ParsedHead {
        request,
        body,
        keep_alive,
        expects_continue: expects_continue && version == Version::HTTP_11,
        tunnel,
    })))
}

/// How a response body is framed on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client and no known length).
    Close,
}

/// Writes the response; returns whether the connection may serve another request.
async fn write_response(
    wire: &SharedWire,
    out: &mut Vec<u8>,
    response: Response<ProxyBody>,
    head_request: bool,
    version: Version,
    mut keep_alive: bool,
) -> io::Result<bool> {
    let (parts, body) = response.into_parts();
    let framing = encode_head(out, &parts, body.size_hint(), head_request, version, &mut keep_alive);
    if framing == Framing::None {
        write_all(wire, out).await?;
        flush(wire).await?;
        return Ok(keep_alive);
    }
    write_body(wire, out, body, framing, keep_alive).await
}

/// Writes the response head into `out` and decides the body's framing; clears `keep_alive`
/// when the body can only end with the connection.
fn encode_head(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    body_hint: SizeHint,
    head_request: bool,
    version: Version,
    keep_alive: &mut bool,
) -> Framing {
    let status = parts.status;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut declared: Option<u64> = None;
    let mut has_date = false;
    for (name, value) in &parts.headers {
        if name == CONTENT_LENGTH {
            declared = parse_length(value.as_bytes());
        } else if name == DATE {
            has_date = true;
        }
        put_field(out, name, value);
    }
    let no_body = head_request || status.is_informational() || matches!(status.as_u16(), 204 | 304);
    let framing = if no_body {
        Framing::None
    } else if let Some(length) = declared {
        Framing::Length(length)
    } else if let Some(length) = body_hint.exact() {
        out.extend_from_slice(b"content-length: ");
        put_decimal(out, length);
        out.extend_from_slice(b"\r\n");
        Framing::Length(length)
    } else if version == Version::HTTP_11 {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    } else {
        *keep_alive = false;
        Framing::Close
    };
    if !has_date {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(&http_date());
        out.extend_from_slice(b"\r\n");
    }
    if status != StatusCode::SWITCHING_PROTOCOLS {
        if !*keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        } else if version == Version::HTTP_10 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    framing
}

/// Writes the body after the head in `out`: the first frame with the head when it is ready,
/// small frames coalesced, a body longer than its declared length cut (and the connection
/// with it). Returns whether the connection may serve another request.
async fn write_body(
    wire: &SharedWire,
    out: &mut Vec<u8>,
    mut body: ProxyBody,
    framing: Framing,
    keep_alive: bool,
) -> io::Result<bool> {
    let mut sent: u64 = 0;
    let mut head_pending = true;
    loop {
        // The first frame, if it is ready now, goes out with the head.
        let frame = if head_pending {
            match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    write_all(wire, out).await?;
                    flush(wire).await?;
                    out.clear();
                    head_pending = false;
                    poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
                }
            }
        } else {
            poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        };
        match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if data.is_empty() {
                        continue;
                    }
                    let mut overlong = false;
                    let data = match framing {
                        Framing::Length(length) if data.len() as u64 > length.saturating_sub(sent) => {
                            // More than the length it declared: cut it, and the connection.
                            overlong = true;
                            data.slice(..length.saturating_sub(sent) as usize)
                        }
                        _ => data,
                    };
                    sent += data.len() as u64;
                    if framing == Framing::Chunked {
                        put_chunk_size(out, data.len());
                    }
                    if data.len() < COALESCE_BELOW {
                        out.extend_from_slice(&data);
                    } else {
                        write_all(wire, out).await?;
                        out.clear();
                        write_all(wire, &data).await?;
                    }
                    if framing == Framing::Chunked {
                        out.extend_from_slice(b"\r\n");
                    }
                    write_all(wire, out).await?;
                    out.clear();
                    head_pending = false;
                    if overlong {
                        flush(wire).await?;
                        return Ok(false);
                    }
                }
                Err(frame) => {
                    if let (Ok(trailers), Framing::Chunked) = (frame.into_trailers(), framing) {
                        put_last_chunk(out, Some(&trailers));
                        write_all(wire, out).await?;
                        flush(wire).await?;
                        return Ok(keep_alive);
                    }
                }
            },
            Some(Err(e)) => {
                tracing::debug!(error = %e, "response body failed; closing the client connection");
                return Err(io::Error::other("the response body failed"));
            }
            None => {
                if framing == Framing::Chunked {
                    put_last_chunk(out, None);
                }
                write_all(wire, out).await?;
                flush(wire).await?;
                if let Framing::Length(length) = framing
                    && sent < length
                {
                    return Err(io::Error::other("the response body ended before its length"));
                }
                return Ok(keep_alive && framing != Framing::Close);
            }
        }
    }
}

/// The current time as an HTTP date, made at most once per second per worker thread.
fn http_date() -> [u8; 29] {
    use std::cell::Cell;
    thread_local! {
        static CACHED: Cell<(u64, [u8; 29])> = const { Cell::new((u64::MAX, [0; 29])) };
    }
    let now = std::time::SystemTime::now();
    let second = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|cached| {
        let (at, text) = cached.get();
        if at == second {
            return text;
        }
        let mut fresh = [0u8; 29];
        let formatted = httpdate::fmt_http_date(now);
        fresh.copy_from_slice(&formatted.as_bytes()[..29]);
        cached.set((second, fresh));
        fresh
    })
}

async fn write_all(wire: &SharedWire, mut data: &[u8]) -> io::Result<()> {
    poll_fn(|cx| {
        let mut guard = wire.lock();
        let Some(io) = guard.io.as_mut() else { return Poll::Ready(Err(io::ErrorKind::NotConnected.into())) };
        while !data.is_empty() {
            let n = ready!(Pin::new(&mut **io).poll_write(cx, data))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            data = &data[n..];
        }
        Poll::Ready(Ok(()))
    })
    .await
}

async fn flush(wire: &SharedWire) -> io::Result<()> {
    poll_fn(|cx| match wire.lock().io.as_mut() {
        Some(io) => Pin::new(&mut **io).poll_flush(cx),
        None => Poll::Ready(Ok(())),
    })
    .await
}

async fn shutdown(wire: &SharedWire) -> io::Result<()> {
    poll_fn(|cx| match wire.lock().io.as_mut() {
        Some(io) => Pin::new(&mut **io).poll_shutdown(cx),
        None => Poll::Ready(Ok(())),
    })
    .await
}

/// Response bytes hyper's HTTP/2 server buffers per stream.
const H2_SEND_BUFFER: usize = 64 * 1024;

/// Hands the connection (with the preface bytes read so far) to hyper's HTTP/2 server.
async fn serve_h2(wire: &SharedWire, handler: impl Handler, limits: &Limits, closing: &AtomicBool) {
    let (io, prefix) = {
        let mut w = wire.lock();
        let Some(io) = w.io.take() else { return };
        (io, w.read.split().freeze())
    };
    let mut builder = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        // Past it, new streams are refused (RST_STREAM REFUSED_STREAM).
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        // The same bound as an HTTP/1 head (hyper's default is 16 KiB). A header list decoded
        // past it is refused (431, never forwarded); h2 ends the connection (GOAWAY) for one far
        // past it (an HPACK bomb) and for more CONTINUATION frames than it can take.
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        // Rapid-reset guard (CVE-2023-44487): a client that keeps resetting streams it opened
        // is cut off instead of keeping the worker busy.
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(100))
        // Response data queued per stream for a client that does not take it (a zero window, a
        // client that stops reading): past this the upstream body is not read on (hyper's
        // default is 400 KiB; 100 stalled streams then held 40 MiB).
        .max_send_buf_size(H2_SEND_BUFFER);
    // Each stream's future is boxed where it is made: hyper moves it into its stream task and
    // then into tokio's task, and the pipeline's future is kilobytes (9 KiB in a debug build),
    // so each move was a memcpy of all of it; boxed, only the pointer moves.
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let handler = handler.clone();
        Box::pin(async move { Ok::<_, Infallible>(handler.handle(request.map(ClientBody::Right)).await) })
    });
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(Prefixed::new(prefix, io)), service);
    tokio::pin!(conn);
    // After the GOAWAY, streams a client does not take (its window kept at zero, or it stopped
    // reading) would hold the connection open for ever: they get one more idle period.
    let mut drain: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let result = poll_fn(|cx| {
        if drain.is_none() && closing.load(Ordering::Relaxed) {
            conn.as_mut().graceful_shutdown();
            drain =
                Some(Box::pin(tokio::time::sleep(std::time::Duration::from_millis(limits.idle_timeout_ms))));
        }
        if let Some(drain) = drain.as_mut()
            && drain.as_mut().poll(cx).is_ready()
        {
            tracing::debug!("HTTP/2 streams still open one idle period after the GOAWAY; closing");
            return Poll::Ready(Ok(()));
        }
        conn.as_mut().poll(cx)
    })
    .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "HTTP/2 connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::proxy::body;

    /// Answers 200 and records each request's target.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<String>>>);

    impl Handler for Recorder {
        fn handle(&self, request: Request<ClientBody>) -> impl Future<Output = Response<ProxyBody>> + Send {
            self.0.lock().push(request.uri().to_string());
            std::future::ready(Response::new(body::text("ok")))
        }
    }

    fn parsed(head: &[u8]) -> Next {
        let mut slots = [httparse::EMPTY_HEADER; 16];
        let mut request = httparse::Request::new(&mut slots);
        assert!(matches!(request.parse(head), Ok(httparse::Status::Complete(n)) if n == head.len()));
        request_from_head(&request, head)
    }

    /// The server takes a head the guard handed over instead of parsing the bytes again: a
    /// queued head that differs from the bytes on the wire is the one served. Without a queued
    /// head (a guard's substitute, or no guard) it parses the bytes itself.
    #[tokio::test]
    async fn a_handed_over_head_is_not_parsed_again() {
        let on_wire = b"GET /on-the-wire HTTP/1.1\r\nHost: a\r\n\r\n";
        let queued = b"GET /handed-over HTTP/1.1\r\nHost: a\r\n\r\n";
        let heads = ParsedHeads::default();
        heads.lock().push_back((on_wire.len(), parsed(queued)));
        let (mut client, server) = tokio::io::duplex(4096);
        let recorder = Recorder::default();
        let closing = AtomicBool::new(false);
        let serving =
            serve(Box::new(server), Some(heads.clone()), recorder.clone(), Limits::default(), &closing);
        let talking = async {
            // The second request has no queued head: the server parses it.
            client
                .write_all(
                    &[&on_wire[..], b"GET /second HTTP/1.1\r\nHost: a\r\nconnection: close\r\n\r\n"].concat(),
                )
                .await
                .unwrap();
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).await.unwrap();
            answer
        };
        let ((), answer) = tokio::join!(serving, talking);
        let answer = String::from_utf8_lossy(&answer);
        assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 2, "{answer}");
        assert_eq!(*recorder.0.lock(), ["/handed-over", "/second"]);
        assert!(heads.lock().is_empty());
    }
}
