//! HTTP/1.1 to plain-text backends, run inline in the request's own task.
//!
//! hyper's pooled client drives every upstream connection as a task of its own and passes each
//! request and response across channels: per request that is several task wake-ups, a clone of
//! the header map and a URI parse (a third of a worker's user-space time under keep-alive load).
//! Here the request's task writes the head straight from the client's header map into the
//! connection's reused buffer, reads the response head with httparse, and the response body
//! reads the same socket while hyper's server writes it to the client. The connection goes back
//! to this worker's idle list (`upstream.rs`) when its response has been read to the end.
//!
//! HTTP/2 and TLS backends keep hyper's client: multiplexed streams need a connection task.
//!
//! Response framing follows RFC 9112 section 6.3: no body after HEAD, 1xx, 204 and 304;
//! `Transfer-Encoding` ending in `chunked` is decoded (and any other coding reads to the close);
//! one `Content-Length` (repeated lines must agree); otherwise the body runs to the close. A
//! connection is reused only after an HTTP/1.1 response without `Connection: close` whose body
//! was read to its end.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::{Buf, Bytes, BytesMut};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version, header::CONTENT_LENGTH,
};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::{
    framing::{ChunkDecoder, Decoded, READ_CHUNK, parse_length, take},
    wire::{HeadCopy, put_chunk_size, put_decimal, put_field, put_last_chunk},
};
use crate::{
    now_ms,
    proxy::{body::BoxError, headers::UpstreamHeaders},
};

/// Bodies read up to `MAX_READ` at a time, at least [`READ_CHUNK`].
const MAX_READ: usize = 64 * 1024;
/// A response head larger than this is refused (nginx's default `proxy_buffer_size` is 4–8 KiB).
const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_RESPONSE_HEADERS: usize = 128;

/// Why an exchange with a backend failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("cannot connect to the backend: {0}")]
    Connect(#[source] io::Error),
    /// A reused connection failed before any byte of a response: the backend closed it while
    /// it sat idle. The request can go again on a fresh connection.
    #[error("the backend closed an idle keep-alive connection")]
    Stale,
    #[error("connection to the backend failed: {0}")]
    Io(#[source] io::Error),
    #[error("the request body failed: {0}")]
    RequestBody(#[source] BoxError),
    #[error("invalid response from the backend: {0}")]
    Protocol(&'static str),
}

/// Where a connection goes back to once its response has been read to the end. The upstream
/// pool gives every connection it opens its own key and check-in function, so the codec needs
/// no knowledge of pools (and a plain function pointer costs no allocation per request).
#[derive(Clone, Copy)]
pub struct Home {
    pub pool_key: u64,
    pub check_in: fn(Conn),
}

/// One keep-alive connection to an endpoint.
pub struct Conn {
    stream: TcpStream,
    read: BytesMut,
    write: Vec<u8>,
    pub home: Home,
    pub endpoint: SocketAddr,
    /// When it last went idle, on the coarse clock ([`crate::now_ms`]).
    pub idle_since_ms: u64,
    /// It served a response before (so a failure before any response byte may be a close
    /// that crossed the request).
    reused: bool,
}

impl Conn {
    pub async fn connect(endpoint: SocketAddr, home: Home, timeout: Duration) -> Result<Conn, H1Error> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(endpoint)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(H1Error::Connect(e)),
            Err(_) => {
                return Err(H1Error::Connect(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")));
            }
        };
        stream.set_nodelay(true).map_err(H1Error::Connect)?;
        Ok(Conn {
            stream,
            read: BytesMut::with_capacity(READ_CHUNK),
            write: Vec::with_capacity(1024),
            home,
            endpoint,
            idle_since_ms: now_ms(),
            reused: false,
        })
    }

    /// True when nothing arrived while the connection sat idle: no close, no stray bytes.
    /// Costs a system call only when the runtime has seen the socket become readable.
    pub fn is_quiet(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }
}

/// How the request body goes upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body (GET and the like, or an empty body).
    Empty,
    Length(u64),
    Chunked,
}

impl RequestFraming {
    /// The framing of a body that is `empty` or announced its size in `hint`.
    pub fn of(empty: bool, hint: SizeHint) -> RequestFraming {
        if empty {
            RequestFraming::Empty
        } else {
            match hint.exact() {
                Some(length) => RequestFraming::Length(length),
                None => RequestFraming::Chunked,
            }
        }
    }
}

/// The request as it goes upstream; the headers are the client's, already rewritten.
pub struct Outgoing<'a> {
    pub method: &'a Method,
    /// The request target (origin form), already checked by [`valid_target`].
    pub target: &'a str,
    pub headers: &'a UpstreamHeaders<'a>,
    pub framing: RequestFraming,
}

/// A request target the request line can carry: visible ASCII and obs-text, no spaces or
/// controls (a rewrite may produce anything).
pub fn valid_target(target: &str) -> bool {
    !target.is_empty() && target.bytes().all(|b| b > 0x20 && b != 0x7f)
}

/// Sends the request on `conn` and reads the response head. The body (a [`ResponseBody`])
/// owns the connection until it has been read.
pub async fn exchange<B>(
    mut conn: Conn,
    request: &Outgoing<'_>,
    body: B,
) -> Result<Response<ResponseBody>, H1Error>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    encode_head(&mut conn.write, request);
    let reused = conn.reused;
    // A failed write on a reused connection means the backend had closed it.
    let write_failed = |e: io::Error| if reused { H1Error::Stale } else { H1Error::Io(e) };
    conn.stream.write_all(&conn.write).await.map_err(write_failed)?;
    if request.framing != RequestFraming::Empty {
        write_body(&mut conn, body, request.framing).await?;
    }
    let head = read_head(&mut conn, request.method == Method::HEAD).await?;
    conn.reused = true;
    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = head.status;
    *response.version_mut() = head.version;
    *response.headers_mut() = head.headers;
    *response.body_mut() = match head.framing {
        Framing::Length(length) if conn.read.len() as u64 >= length => {
            // The whole body came with the head (the common small response): the connection
            // is free again before the client has even seen the head.
            let data = take(&mut conn.read, length as usize);
            if head.reusable && conn.read.is_empty() {
                (conn.home.check_in)(conn);
            }
            ResponseBody { conn: None, framing: Framing::Done, pending: Some(data), reusable: false }
        }
        framing => ResponseBody { conn: Some(conn), framing, pending: None, reusable: head.reusable },
    };
    Ok(response)
}

fn encode_head(buf: &mut Vec<u8>, request: &Outgoing<'_>) {
    buf.clear();
    buf.extend_from_slice(request.method.as_str().as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(request.target.as_bytes());
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    request.headers.for_each(|name, value| put_field(buf, name, value));
    match request.framing {
        RequestFraming::Length(length) if !request.headers.has(&CONTENT_LENGTH) => {
            buf.extend_from_slice(b"content-length: ");
            put_decimal(buf, length);
            buf.extend_from_slice(b"\r\n");
        }
        RequestFraming::Chunked => buf.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    buf.extend_from_slice(b"\r\n");
}

async fn write_body<B>(conn: &mut Conn, mut body: B, framing: RequestFraming) -> Result<(), H1Error>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    let mut sent = 0u64;
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(H1Error::RequestBody)?;
        let frame = match frame.into_data() {
            Ok(data) => {
                if data.is_empty() {
                    continue;
                }
                sent += data.len() as u64;
                if framing == RequestFraming::Chunked {
                    conn.write.clear();
                    put_chunk_size(&mut conn.write, data.len());
                    conn.stream.write_all(&conn.write).await.map_err(H1Error::Io)?;
                    conn.stream.write_all(&data).await.map_err(H1Error::Io)?;
                    conn.stream.write_all(b"\r\n").await.map_err(H1Error::Io)?;
                } else {
                    conn.stream.write_all(&data).await.map_err(H1Error::Io)?;
                }
                continue;
            }
            Err(frame) => frame,
        };
        if let Ok(map) = frame.into_trailers() {
            trailers = Some(map);
        }
    }
    match framing {
        RequestFraming::Length(length) if sent != length => {
            Err(H1Error::RequestBody(format!("request body of {sent} bytes, {length} announced").into()))
        }
        RequestFraming::Chunked => {
            conn.write.clear();
            put_last_chunk(&mut conn.write, trailers.as_ref());
            conn.stream.write_all(&conn.write).await.map_err(H1Error::Io)
        }
        _ => Ok(()),
    }
}

/// A parsed response head and what it says about the body and the connection.
pub(crate) struct Head {
    pub(crate) status: StatusCode,
    version: Version,
    pub(crate) headers: HeaderMap,
    framing: Framing,
    pub(crate) reusable: bool,
}

impl Head {
    /// How the body is delimited, by name, with its length when it has one.
    pub(crate) fn framing(&self) -> (&'static str, Option<u64>) {
        match &self.framing {
            Framing::Length(n) => ("length", Some(*n)),
            Framing::Chunked(_) => ("chunked", None),
            Framing::UntilClose => ("until-close", None),
            Framing::Upgraded => ("upgraded", None),
            Framing::Done => ("done", None),
        }
    }
}

async fn read_head(conn: &mut Conn, head_request: bool) -> Result<Head, H1Error> {
    let mut received = false;
    loop {
        if !conn.read.is_empty()
            && let Some((length, head)) = parse_head(&conn.read, head_request)?
        {
            conn.read.advance(length);
            return Ok(head);
        }
        conn.read.reserve(READ_CHUNK);
        let stale = conn.reused && !received;
        match conn.stream.read_buf(&mut conn.read).await {
            Ok(0) if stale => return Err(H1Error::Stale),
            Ok(0) => return Err(H1Error::Protocol("the backend closed the connection before answering")),
            Ok(_) => received = true,
            Err(_) if stale => return Err(H1Error::Stale),
            Err(e) => return Err(H1Error::Io(e)),
        }
    }
}

/// The final response head at the start of `read` (interim 1xx heads before it skipped) and
/// how many bytes they all span, `None` when more bytes are needed. Pure, so the fuzz targets
/// run the same code the client does (`crate::fuzzing`).
pub(crate) fn parse_head(read: &[u8], head_request: bool) -> Result<Option<(usize, Head)>, H1Error> {
    let mut offset = 0;
    loop {
        let rest = &read[offset..];
        let mut slots = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        let mut parsed = httparse::Response::new(&mut slots);
        match parsed.parse(rest) {
            Ok(httparse::Status::Complete(length)) => {
                let code = parsed.code.unwrap_or(0);
                if (100..200).contains(&code) && code != 101 {
                    // Interim responses (103 Early Hints, a stray 100): the final one follows.
                    offset += length;
                    continue;
                }
                let head = interpret(&parsed, &rest[..length], head_request)?;
                return Ok(Some((offset + length, head)));
            }
            Ok(httparse::Status::Partial) if rest.len() >= MAX_HEAD_BYTES => {
                return Err(H1Error::Protocol("response head too large"));
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(H1Error::Protocol("too many response headers"));
            }
            Err(_) => return Err(H1Error::Protocol("malformed response head")),
        }
    }
}

/// The head's meaning. `raw` is the head `parsed` points into: it is copied once and the
/// header values share that copy (one allocation, not one per value), while the read buffer
/// stays the connection's own for the next response.
fn interpret(parsed: &httparse::Response<'_, '_>, raw: &[u8], head_request: bool) -> Result<Head, H1Error> {
    let head = HeadCopy::new(raw);
    let value_of = |value: &[u8]| {
        HeaderValue::from_maybe_shared(head.slice(value))
            .map_err(|_| H1Error::Protocol("invalid header value"))
    };
    let status = StatusCode::from_u16(parsed.code.unwrap_or(0))
        .map_err(|_| H1Error::Protocol("invalid status code"))?;
    let version = if parsed.version == Some(1) { Version::HTTP_11 } else { Version::HTTP_10 };
    // Room for what this hop adds (request id, cookie, HSTS, worker id) without regrowing.
    let mut headers = HeaderMap::with_capacity(parsed.headers.len() + 4);
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut chunked = false;
    let mut close = version == Version::HTTP_10;
    for header in parsed.headers.iter() {
        let name = HeaderName::from_bytes(header.name.as_bytes())
            .map_err(|_| H1Error::Protocol("invalid header name"))?;
        let value = value_of(header.value)?;
        if name == CONTENT_LENGTH {
            let length = parse_length(header.value).ok_or(H1Error::Protocol("invalid Content-Length"))?;
            if content_length.is_some_and(|seen| seen != length) {
                return Err(H1Error::Protocol("conflicting Content-Length values"));
            }
            content_length = Some(length);
        } else if name == http::header::TRANSFER_ENCODING {
            transfer_encoding = true;
            // The last coding of the last line decides (RFC 9112 6.3).
            chunked = header
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == http::header::CONNECTION {
            for token in header.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && version == Version::HTTP_10 {
                    close = false;
                }
            }
        }
        headers.append(name, value);
    }
    let no_body = head_request || matches!(status.as_u16(), 204 | 304);
    // Both headers (RFC 9112 6.3: a sender never sends them together): a backend that does is
    // not trusted with another request, even on a response without a body (HEAD, 204, 304).
    if transfer_encoding && content_length.is_some() {
        close = true;
    }
    let framing = if status == StatusCode::SWITCHING_PROTOCOLS {
        Framing::Upgraded
    } else if no_body {
        Framing::Length(0)
    } else if transfer_encoding {
        // Transfer-Encoding wins over Content-Length.
        if chunked {
            Framing::Chunked(ChunkDecoder::default())
        } else {
            close = true;
            Framing::UntilClose
        }
    } else if let Some(length) = content_length {
        Framing::Length(length)
    } else {
        close = true;
        Framing::UntilClose
    };
    Ok(Head { status, version, headers, framing, reusable: !close })
}

/// How the rest of a response body is delimited.
enum Framing {
    Length(u64),
    Chunked(ChunkDecoder),
    UntilClose,
    /// 101: the connection now carries another protocol (see [`ResponseBody::into_upgraded`]).
    Upgraded,
    Done,
}

/// The body of a response from an HTTP/1.1 backend, read from its connection as the client
/// takes it.
pub struct ResponseBody {
    conn: Option<Conn>,
    framing: Framing,
    /// Bytes already read (a body that came whole with the head).
    pending: Option<Bytes>,
    reusable: bool,
}

impl ResponseBody {
    fn empty() -> ResponseBody {
        ResponseBody { conn: None, framing: Framing::Done, pending: None, reusable: false }
    }

    /// After a 101: the connection to the backend, and whatever it sent after the head.
    pub fn into_upgraded(mut self) -> Option<(TcpStream, Bytes)> {
        if !matches!(self.framing, Framing::Upgraded) {
            return None;
        }
        let mut conn = self.conn.take()?;
        let early = conn.read.split().freeze();
        Some((conn.stream, early))
    }

    /// The body was read to its end: the connection serves the next request.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        if let Some(conn) = self.conn.take()
            && self.reusable
            && conn.read.is_empty()
        {
            (conn.home.check_in)(conn);
        }
    }

    /// Reads more from the backend into the connection's buffer; `Ok(0)` at its close.
    fn poll_fill(conn: &mut Conn, want: u64, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let want = (want.min(MAX_READ as u64) as usize).max(READ_CHUNK);
        conn.read.reserve(want);
        loop {
            ready!(conn.stream.poll_read_ready(cx))?;
            match conn.stream.try_read_buf(&mut conn.read) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(data) = this.pending.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        loop {
            let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
            let want = match &mut this.framing {
                Framing::Done | Framing::Upgraded => return Poll::Ready(None),
                Framing::Length(0) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(remaining) => {
                    if !conn.read.is_empty() {
                        let n = (*remaining).min(conn.read.len() as u64);
                        *remaining -= n;
                        let data = take(&mut conn.read, n as usize);
                        if *remaining == 0 {
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    *remaining
                }
                Framing::Chunked(decoder) => match decoder.decode(&mut conn.read) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::Trailers(trailers)) => {
                        // Trailers end the body: a reader may stop polling once it has them.
                        this.finish();
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    Ok(Decoded::Done) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore(want)) => want,
                    Err(e) => {
                        this.conn = None;
                        this.framing = Framing::Done;
                        return Poll::Ready(Some(Err(Box::new(H1Error::Protocol(e.0)))));
                    }
                },
                Framing::UntilClose => {
                    if !conn.read.is_empty() {
                        let n = conn.read.len();
                        return Poll::Ready(Some(Ok(Frame::data(take(&mut conn.read, n)))));
                    }
                    MAX_READ as u64
                }
            };
            match ready!(Self::poll_fill(conn, want, cx)) {
                Ok(0) if matches!(this.framing, Framing::UntilClose) => {
                    this.conn = None;
                    this.framing = Framing::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.conn = None;
                    this.framing = Framing::Done;
                    return Poll::Ready(Some(Err(Box::new(H1Error::Protocol(
                        "the backend closed mid-body",
                    )))));
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    this.framing = Framing::Done;
                    return Poll::Ready(Some(Err(Box::new(H1Error::Io(e)))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_none() && matches!(self.framing, Framing::Done | Framing::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.pending, &self.framing) {
            (Some(data), Framing::Done) => SizeHint::with_exact(data.len() as u64),
            (None, Framing::Done | Framing::Upgraded) => SizeHint::with_exact(0),
            (None, Framing::Length(remaining)) => SizeHint::with_exact(*remaining),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &[u8], head_request: bool) -> Result<Head, H1Error> {
        let mut slots = [httparse::EMPTY_HEADER; 16];
        let mut parsed = httparse::Response::new(&mut slots);
        assert!(parsed.parse(raw).unwrap().is_complete());
        interpret(&parsed, raw, head_request)
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let h = head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false).unwrap();
        assert!(matches!(h.framing, Framing::Length(5)) && h.reusable);
        let h = head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true).unwrap();
        assert!(matches!(h.framing, Framing::Length(0)) && h.reusable, "no body after HEAD");
        let h = head(b"HTTP/1.1 204 No Content\r\n\r\n", false).unwrap();
        assert!(matches!(h.framing, Framing::Length(0)));
        let h = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", false).unwrap();
        assert!(matches!(h.framing, Framing::Chunked(_)) && h.reusable);
        let h = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", false)
            .unwrap();
        assert!(matches!(h.framing, Framing::Chunked(_)) && !h.reusable, "both headers: not reused");
        // Found by the h1_response fuzz target: without a body (HEAD, 204, 304) as well.
        let both = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        let h = head(both, true).unwrap();
        assert!(
            matches!(h.framing, Framing::Length(0)) && !h.reusable,
            "both headers after HEAD: not reused"
        );
        let h = head(
            b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(matches!(h.framing, Framing::Length(0)) && !h.reusable, "both headers on 304: not reused");
        let h = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false).unwrap();
        assert!(matches!(h.framing, Framing::UntilClose) && !h.reusable);
        let h = head(b"HTTP/1.1 200 OK\r\n\r\n", false).unwrap();
        assert!(matches!(h.framing, Framing::UntilClose) && !h.reusable);
        let h = head(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n", false).unwrap();
        assert!(!h.reusable);
        let h = head(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false).unwrap();
        assert!(!h.reusable);
        let h =
            head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n", false).unwrap();
        assert!(h.reusable);
        let h = head(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", false).unwrap();
        assert!(matches!(h.framing, Framing::Upgraded));
        let h = head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", false).unwrap();
        assert!(matches!(h.framing, Framing::Length(5)));
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
        ] {
            assert!(head(bad, false).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn request_heads_carry_the_framing() {
        let mut client = HeaderMap::new();
        client.insert("host", HeaderValue::from_static("example.test"));
        client.insert("x-request-id", HeaderValue::from_static("id-1"));
        let forwarded = crate::proxy::headers::Forwarded::new("192.0.2.7:1".parse().unwrap(), "http", 80);
        let headers = crate::proxy::headers::UpstreamHeaders::new(&client, &forwarded, "example.test", None);
        let mut buf = Vec::new();
        let request = Outgoing {
            method: &Method::POST,
            target: "/upload?x=1",
            headers: &headers,
            framing: RequestFraming::Chunked,
        };
        encode_head(&mut buf, &request);
        assert_eq!(
            String::from_utf8_lossy(&buf),
            "POST /upload?x=1 HTTP/1.1\r\nhost: example.test\r\nx-request-id: id-1\r\n\
             x-forwarded-for: 192.0.2.7\r\nx-real-ip: 192.0.2.7\r\nx-forwarded-proto: http\r\n\
             x-forwarded-port: 80\r\nx-forwarded-host: example.test\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        let request = Outgoing { framing: RequestFraming::Length(3), ..request };
        encode_head(&mut buf, &request);
        assert!(buf.ends_with(b"content-length: 3\r\n\r\n"));
        assert!(valid_target("/a?b=c%20d"));
        assert!(!valid_target("/a b") && !valid_target("/a\r\nx") && !valid_target(""));
    }
}
