//! The client's request body on its way upstream: streamed, limited, and recoverable for a
//! retry as long as no attempt has read from it.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use parking_lot::Mutex;

use crate::proxy::{
    body::{BadRequestBody, BodyTooLarge, BoxError},
    http1::server::ClientBody,
};

struct Pending {
    /// A frame read ahead before the request went upstream (to catch a bad first chunk).
    first: Option<Frame<Bytes>>,
    rest: Option<ClientBody>,
}

/// What attempts share of a body: the body itself until one takes it, and how its sending goes.
struct Shared {
    pending: Mutex<Pending>,
    /// When an attempt last took a frame (coarse milliseconds, `crate::now_ms`), with
    /// [`ENDED`] set once the whole body was taken: the upstream writer takes the next frame
    /// only when it wrote the previous one, so this is when the upload last moved.
    progress_ms: AtomicU64,
}

/// The bit of `progress_ms` that says the body has ended.
const ENDED: u64 = 1 << 63;

/// The client's request body, shared between attempts until one starts reading it.
#[derive(Clone)]
pub struct RequestBody {
    /// `None` when the client sent no body (most requests): nothing to share or take.
    pending: Option<Arc<Shared>>,
    hint: SizeHint,
    empty: bool,
    limit: u64,
}

impl RequestBody {
    /// Wraps the client's body. `limit` 0 means unlimited.
    pub fn new(incoming: ClientBody, limit: u64) -> RequestBody {
        let hint = incoming.size_hint();
        let empty = incoming.is_end_stream();
        let pending = (!empty).then(|| {
            Arc::new(Shared {
                pending: Mutex::new(Pending { first: None, rest: Some(incoming) }),
                progress_ms: AtomicU64::new(crate::now_ms()),
            })
        });
        RequestBody { pending, hint, empty, limit }
    }

    /// No body (a subrequest's).
    pub fn empty() -> RequestBody {
        RequestBody { pending: None, hint: SizeHint::with_exact(0), empty: true, limit: 0 }
    }

    /// Reads the first frame now, so a body that is broken from its first byte (a bad chunk
    /// size) is refused before anything reaches a backend.
    pub async fn prefetch(&self) -> Result<(), BadRequestBody> {
        let Some(shared) = &self.pending else { return Ok(()) };
        let Some(mut incoming) = shared.pending.lock().rest.take() else { return Ok(()) };
        let first = incoming.frame().await.transpose().map_err(BadRequestBody)?;
        let mut pending = shared.pending.lock();
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
        self.pending.as_ref().is_none_or(|shared| shared.pending.lock().rest.is_some())
    }

    /// When the upload last moved (coarse milliseconds) and whether it has ended; `None` when
    /// there was no body.
    pub fn progress(&self) -> Option<(u64, bool)> {
        let ms = self.pending.as_ref()?.progress_ms.load(Ordering::Relaxed);
        Some((ms & !ENDED, ms & ENDED != 0))
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
                let mut pending = shared.pending.lock();
                this.taken = Some(Pending { first: pending.first.take(), rest: pending.rest.take() });
            }
        }
        let Some(taken) = this.taken.as_mut() else { return Poll::Ready(None) };
        let progress = |ms: u64| {
            if let Some(shared) = &this.shared.pending {
                shared.progress_ms.store(ms, Ordering::Relaxed);
            }
        };
        let frame = match taken.first.take() {
            Some(frame) => frame,
            None => match taken.rest.as_mut() {
                Some(rest) => match Pin::new(rest).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => frame,
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(Box::new(BadRequestBody(e))))),
                    Poll::Ready(None) => {
                        progress(crate::now_ms() | ENDED);
                        return Poll::Ready(None);
                    }
                    Poll::Pending => return Poll::Pending,
                },
                None => {
                    progress(crate::now_ms() | ENDED);
                    return Poll::Ready(None);
                }
            },
        };
        progress(crate::now_ms());
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
