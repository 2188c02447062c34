//! Entry points for the coverage-guided fuzz targets in `tests/fuzz/` (cargo-fuzz, libFuzzer):
//! each runs, on bytes and with no socket or runtime, the code a connection runs. Not an API: hidden
//! from the documentation and used by nothing else in the crate. The parsers that are already
//! public (the chunk machine in `proxy::http1::framing`, `tls::sni`, `proxy::proxy_protocol`,
//! the annotation reader, `Config::from_yaml`) are fuzzed directly; this module only opens the
//! HTTP/1 heads, whose functions stay private to their codec.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, Waker},
};

use bytes::BytesMut;
use tokio::io::{AsyncRead, ReadBuf};

pub use crate::proxy::http1::guard::{MAX_HEADERS, REJECT_400, REJECT_431};
use crate::{
    config::Limits,
    proxy::http1::{
        client,
        guard::{self, H1Guard, ParsedHeads},
        server::{self, Next},
    },
};

/// A request head as the server takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    pub http11: bool,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// What the server does next with a head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    Request(RequestHead),
    /// Answers these bytes and closes.
    Refuse(&'static [u8]),
    H2,
    End,
}

fn head_of(next: &Next) -> Head {
    match next {
        Next::Request(parsed) => {
            let request = parsed.request();
            Head::Request(RequestHead {
                method: request.method().as_str().to_owned(),
                target: request.uri().to_string(),
                http11: request.version() == http::Version::HTTP_11,
                headers: request
                    .headers()
                    .iter()
                    .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
                    .collect(),
            })
        }
        Next::Refuse(answer) => Head::Refuse(answer),
        Next::H2 => Head::H2,
        Next::End => Head::End,
    }
}

/// How a guarded stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardEnd {
    /// A clean end (after a substituted head too).
    Eof,
    /// A refused body: the read failed with `InvalidData`.
    BodyRefused,
}

/// What the guard handed on from a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardRun {
    /// Every byte the server was given.
    pub passed: Vec<u8>,
    pub end: GuardEnd,
    /// The heads the guard parsed for the server: bytes each spans and the request.
    pub heads: Vec<(usize, Head)>,
}

/// Bytes delivered in reads of the sizes `sizes` cycles through (0 stands for 1), always ready.
struct Trickle<'a> {
    data: &'a [u8],
    sizes: &'a [u8],
    turn: usize,
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let size = self.sizes.get(self.turn % self.sizes.len().max(1)).copied().unwrap_or(u8::MAX);
        self.turn += 1;
        let n = usize::from(size.max(1)).min(self.data.len()).min(out.remaining());
        out.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

/// Feeds `input` through an [`H1Guard`] in reads of the sizes `reads` cycles through, and
/// reads it out the same way, to its end.
pub fn guard(input: &[u8], reads: &[u8], max_head: usize, max_headers: usize) -> GuardRun {
    let parsed = ParsedHeads::default();
    let mut guard = H1Guard::new(Trickle { data: input, sizes: reads, turn: 0 }, max_head)
        .with_max_headers(max_headers)
        .with_parsed_heads(parsed.clone());
    let mut cx = Context::from_waker(Waker::noop());
    let mut passed = Vec::new();
    let mut out = [0u8; 512];
    let mut turn = 0;
    let end = loop {
        let size = usize::from(reads.get(turn % reads.len().max(1)).copied().unwrap_or(u8::MAX).max(1));
        turn += 1;
        let mut buf = ReadBuf::new(&mut out[..size.min(512)]);
        match Pin::new(&mut guard).poll_read(&mut cx, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().is_empty() => break GuardEnd::Eof,
            Poll::Ready(Ok(())) => passed.extend_from_slice(buf.filled()),
            Poll::Ready(Err(e)) => {
                assert_eq!(e.kind(), io::ErrorKind::InvalidData, "the guard failed with {e}");
                break GuardEnd::BodyRefused;
            }
            Poll::Pending => unreachable!("the input is always ready"),
        }
    };
    let heads = parsed.lock().iter().map(|(len, next)| (*len, head_of(next))).collect();
    GuardRun { passed, end, heads }
}

/// The guard's verdict on the head at the start of `data`: `Ok(None)` for more bytes, the
/// bytes it spans and the request, or the reason it is refused and whether httparse refused it.
pub fn guard_head(
    data: &[u8],
    max_head: usize,
    max_headers: usize,
) -> Result<Option<(usize, Head)>, (&'static str, bool)> {
    guard::inspect_head(data, max_head, max_headers).map(|head| head.map(|(len, next)| (len, head_of(&next))))
}

/// The server's own parse of the head at the start of `data` (a connection without a guard,
/// or a substituted head): the bytes it took and what it does next; `None` for more bytes.
pub fn server_head(data: &[u8]) -> Option<(usize, Head)> {
    let mut read = BytesMut::from(data);
    let next = server::parse_head(&mut read, &Limits::default())?;
    Some((data.len() - read.len(), head_of(&next)))
}

/// A response head as the upstream client takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// `length`, `chunked`, `until-close`, `upgraded` or `done`.
    pub framing: &'static str,
    pub length: Option<u64>,
    /// The connection may carry another request after this response.
    pub reusable: bool,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// The upstream client's parse of the response at the start of `data`: the bytes its head
/// (with interim heads before it) spans and what it says, `None` for more bytes, or the
/// client's error.
pub fn response_head(data: &[u8], head_request: bool) -> Result<Option<(usize, ResponseHead)>, String> {
    let parsed = client::parse_head(data, head_request).map_err(|e| e.to_string())?;
    Ok(parsed.map(|(len, head)| {
        let (framing, length) = head.framing();
        let headers = head
            .headers
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
            .collect();
        (
            len,
            ResponseHead { status: head.status.as_u16(), framing, length, reusable: head.reusable, headers },
        )
    }))
}
