//! The body types every room of the proxy passes around: every response body is a
//! [`ProxyBody`]; [`Held`] keeps a guard (load accounting, a connection slot) alive until its
//! body has been sent; the errors a request body can end with, found again in an error chain by
//! [`find_cause`].

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, combinators::BoxBody};
use hyper::body::{Body, Frame, SizeHint};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every response body the proxy produces.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// A short body from a string (error pages, redirects).
pub fn text(text: impl Into<Bytes>) -> ProxyBody {
    http_body_util::Full::new(text.into()).map_err(|never| match never {}).boxed()
}

pub fn empty() -> ProxyBody {
    http_body_util::Empty::new().map_err(|never| match never {}).boxed()
}

/// The request body exceeded the route's limit.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than {limit} bytes")]
pub struct BodyTooLarge {
    pub limit: u64,
}

/// The client's body failed to parse (a bad chunk, a connection cut mid-body).
#[derive(Debug, thiserror::Error)]
#[error("malformed or truncated request body: {0}")]
pub struct BadRequestBody(#[source] pub BoxError);

/// A response body that holds `hold` (load accounting, a connection slot) until the body has
/// been sent or dropped.
pub struct Held<B, H> {
    inner: B,
    _hold: H,
}

impl<B, H> Held<B, H> {
    pub fn new(inner: B, hold: H) -> Held<B, H> {
        Held { inner, _hold: hold }
    }
}

impl<B, H> Body for Held<B, H>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
    H: Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Finds an error of type `E` anywhere in the source chain of `error`.
pub fn find_cause<'a, E: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// The backend went quiet mid-response for longer than the route allows (nginx's
/// `proxy_read_timeout` between two reads).
#[derive(Debug, thiserror::Error)]
#[error("the backend sent nothing for {gap_ms} ms mid-response")]
pub struct ReadGapExceeded {
    pub gap_ms: u64,
}

/// A response body that fails when no frame comes for `gap_ms` (nginx's `proxy_read_timeout`
/// as a gap between reads, not a deadline). Frames only stamp the coarse clock; the one timer
/// is armed when the body waits, and re-armed only when it fires after progress.
pub struct ReadGap<B> {
    inner: B,
    gap_ms: u64,
    last_ms: u64,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> ReadGap<B> {
    pub fn new(inner: B, gap_ms: u64) -> ReadGap<B> {
        ReadGap { inner, gap_ms, last_ms: crate::now_ms(), timer: None }
    }
}

impl<B> Body for ReadGap<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.last_ms = crate::now_ms();
                return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
            }
            Poll::Pending => {}
        }
        loop {
            let deadline = tokio::time::Instant::now()
                + Duration::from_millis((this.last_ms + this.gap_ms).saturating_sub(crate::now_ms()));
            let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if crate::now_ms() >= this.last_ms + this.gap_ms {
                return Poll::Ready(Some(Err(Box::new(ReadGapExceeded { gap_ms: this.gap_ms }))));
            }
            // Frames came since the timer was armed: wait the rest of the gap from the last one.
            timer.as_mut().reset(deadline);
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `body` with up to `limit` bytes (or all of a shorter body) read before it is returned
/// (nginx's `proxy_buffering`: the backend's answer is taken in before the client gets it).
/// The frames read, and an error that ended the reading, come first, in order.
pub async fn prefilled(mut body: ProxyBody, limit: u64) -> ProxyBody {
    let mut ahead = std::collections::VecDeque::new();
    let mut held = 0u64;
    while held < limit {
        match body.frame().await {
            Some(Ok(frame)) => {
                held += frame.data_ref().map_or(0, |d| d.len() as u64);
                ahead.push_back(Ok(frame));
            }
            Some(Err(e)) => {
                ahead.push_back(Err(e));
                break;
            }
            None => return Prefilled { ahead, rest: None }.boxed(),
        }
    }
    Prefilled { ahead, rest: Some(body) }.boxed()
}

/// A body whose first frames were read ahead ([`prefilled`]).
struct Prefilled {
    ahead: std::collections::VecDeque<Result<Frame<Bytes>, BoxError>>,
    /// The rest; `None` when `ahead` holds all of it.
    rest: Option<ProxyBody>,
}

impl Body for Prefilled {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(frame) = self.ahead.pop_front() {
            return Poll::Ready(Some(frame));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ahead.is_empty() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.rest, self.ahead.is_empty()) {
            (Some(rest), true) => rest.size_hint(),
            (None, _) => {
                let held: u64 = self
                    .ahead
                    .iter()
                    .filter_map(|f| f.as_ref().ok()?.data_ref())
                    .map(|d| d.len() as u64)
                    .sum();
                SizeHint::with_exact(held)
            }
            (Some(_), false) => SizeHint::default(),
        }
    }
}
