//! Bodies on their way through the proxy: the request body sent upstream (streamed, limited,
//! and recoverable for a retry as long as nobody has read from it), and the response body that
//! keeps the endpoint's load accounting alive until it has been sent.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body_util::{BodyExt, combinators::BoxBody};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use parking_lot::Mutex;

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

/// A request body as the client connection delivers it: from Sluice's own HTTP/1 server
/// (`Left`), or from hyper's HTTP/2 server (`Right`).
pub type ClientBody = http_body_util::Either<super::h1_server::H1Body, Incoming>;

struct Pending {
    /// A frame read ahead before the request went upstream (to catch a bad first chunk).
    first: Option<Frame<Bytes>>,
    rest: Option<ClientBody>,
}

/// The client's request body, shared between attempts until one starts reading it.
#[derive(Clone)]
pub struct RequestBody {
    /// `None` when the client sent no body (most requests): nothing to share or take.
    pending: Option<Arc<Mutex<Pending>>>,
    hint: SizeHint,
    empty: bool,
    limit: u64,
}

impl RequestBody {
    /// Wraps the client's body. `limit` 0 means unlimited.
    pub fn new(incoming: ClientBody, limit: u64) -> RequestBody {
        let hint = incoming.size_hint();
        let empty = incoming.is_end_stream();
        let pending = (!empty).then(|| Arc::new(Mutex::new(Pending { first: None, rest: Some(incoming) })));
        RequestBody { pending, hint, empty, limit }
    }

    /// Reads the first frame now, so a body that is broken from its first byte (a bad chunk
    /// size) is refused before anything reaches a backend.
    pub async fn prefetch(&self) -> Result<(), BadRequestBody> {
        let Some(shared) = &self.pending else { return Ok(()) };
        let Some(mut incoming) = shared.lock().rest.take() else { return Ok(()) };
        let first = incoming.frame().await.transpose().map_err(BadRequestBody)?;
        let mut pending = shared.lock();
        pending.first = first;
        pending.rest = Some(incoming);
        Ok(())
    }

    /// The client sent no body.
    pub fn is_empty(&self) -> bool {
        self.empty
    }

    /// The body's length as the client announced it.
    pub fn size_hint(&self) -> SizeHint {
        self.hint
    }

    /// True while no attempt has taken the body: a retry may still send it.
    pub fn replayable(&self) -> bool {
        self.pending.as_ref().is_none_or(|shared| shared.lock().rest.is_some())
    }

    /// The body for one attempt. It takes the client's body on its first poll.
    pub fn attempt(&self) -> AttemptBody {
        AttemptBody { shared: self.clone(), taken: None, started: false, seen: 0 }
    }
}

/// The request body of one upstream attempt.
pub struct AttemptBody {
    shared: RequestBody,
    taken: Option<Pending>,
    started: bool,
    seen: u64,
}

impl Body for AttemptBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if !this.started {
            this.started = true;
            if let Some(shared) = &this.shared.pending {
                let mut pending = shared.lock();
                this.taken = Some(Pending { first: pending.first.take(), rest: pending.rest.take() });
            }
        }
        let Some(taken) = this.taken.as_mut() else { return Poll::Ready(None) };
        let frame = match taken.first.take() {
            Some(frame) => frame,
            None => match taken.rest.as_mut() {
                Some(rest) => match Pin::new(rest).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => frame,
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(Box::new(BadRequestBody(e))))),
                    Poll::Ready(None) => return Poll::Ready(None),
                    Poll::Pending => return Poll::Pending,
                },
                None => return Poll::Ready(None),
            },
        };
        if let Some(data) = frame.data_ref() {
            this.seen += data.len() as u64;
            if this.shared.limit > 0 && this.seen > this.shared.limit {
                return Poll::Ready(Some(Err(Box::new(BodyTooLarge { limit: this.shared.limit }))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.shared.empty
    }

    fn size_hint(&self) -> SizeHint {
        // An exact hint makes the upstream request carry Content-Length, as the client's did.
        self.shared.hint
    }
}

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
