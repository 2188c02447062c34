//! The client's request body on its way upstream: streamed, limited, and recoverable for a
//! retry as long as no attempt has read from it.

use std::{
    collections::VecDeque,
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
    /// Frames read ahead before the request went upstream: the first (to catch a bad first
    /// chunk), or as many as request buffering holds.
    ahead: VecDeque<Frame<Bytes>>,
    rest: Option<ClientBody>,
    /// `ahead` is the whole body: each attempt gets a copy, so any attempt may send it again.
    complete: bool,
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
                pending: Mutex::new(Pending {
                    ahead: VecDeque::new(),
                    rest: Some(incoming),
                    complete: false,
                }),
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
    /// size) is refused before anything reaches a backend; with request buffering, reads on
    /// until `buffer` bytes are held or the body ends (nginx's `proxy_request_buffering` with
    /// `client_body_buffer_size`), so the endpoint is chosen only once the client sent them,
    /// and a body held whole can go again to another endpoint.
    pub async fn prefetch(&self, buffer: u64) -> Result<(), BadRequestBody> {
        let Some(shared) = &self.pending else { return Ok(()) };
        let Some(mut incoming) = shared.pending.lock().rest.take() else { return Ok(()) };
        let (mut ahead, mut held, mut complete) = (VecDeque::new(), 0u64, false);
        loop {
            match incoming.frame().await.transpose().map_err(BadRequestBody)? {
                Some(frame) => {
                    held += frame.data_ref().map_or(0, |d| d.len() as u64);
                    ahead.push_back(frame);
                }
                None => {
                    complete = true;
                    break;
                }
            }
            if held >= buffer || (self.limit > 0 && held > self.limit) {
                break;
            }
        }
        shared.progress_ms.store(crate::now_ms(), Ordering::Relaxed);
        let mut pending = shared.pending.lock();
        pending.ahead = ahead;
        pending.complete = complete;
        pending.rest = (!complete).then_some(incoming);
        Ok(())
    }

    /// The whole body is held (or there is none): every attempt, and a mirrored copy, gets
    /// all of it.
    pub fn is_whole(&self) -> bool {
        self.pending.as_ref().is_none_or(|shared| shared.pending.lock().complete)
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
        self.pending.as_ref().is_none_or(|shared| {
            let pending = shared.pending.lock();
            pending.complete || pending.rest.is_some()
        })
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
                this.taken = Some(if pending.complete {
                    Pending { ahead: pending.ahead.iter().map(copy).collect(), rest: None, complete: true }
                } else {
                    Pending {
                        ahead: std::mem::take(&mut pending.ahead),
                        rest: pending.rest.take(),
                        complete: false,
                    }
                });
            }
        }
        let Some(taken) = this.taken.as_mut() else { return Poll::Ready(None) };
        let progress = |ms: u64| {
            if let Some(shared) = &this.shared.pending {
                shared.progress_ms.store(ms, Ordering::Relaxed);
            }
        };
        let frame = match taken.ahead.pop_front() {
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

/// A copy of a held frame (the bytes are shared, not copied).
fn copy(frame: &Frame<Bytes>) -> Frame<Bytes> {
    match (frame.data_ref(), frame.trailers_ref()) {
        (Some(data), _) => Frame::data(data.clone()),
        (None, Some(trailers)) => Frame::trailers(trailers.clone()),
        (None, None) => Frame::data(Bytes::new()),
    }
}
