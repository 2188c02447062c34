//! Response bandwidth per request (ingress-nginx's `limit-rate` and `limit-rate-after`): the
//! first `after` bytes of a body go as they come, the rest at `rate` bytes per second on
//! average. A chunk waits until the bytes before it have had their time, and chunks are cut
//! to a tenth of a second's worth, so the pace is even rather than one long stall per large
//! read. Only this response waits; the worker serves others meanwhile.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// A body sent no faster than its rate.
pub struct Throttled<B> {
    inner: B,
    rate: u64,
    after: u64,
    sent: u64,
    started: Option<Instant>,
    /// Data read from `inner` and not sent yet.
    pending: Option<Bytes>,
    wait: Option<Pin<Box<Sleep>>>,
}

impl<B> Throttled<B> {
    /// `rate` bytes per second (more than 0) once `after` bytes have gone.
    pub fn new(inner: B, rate: u64, after: u64) -> Throttled<B> {
        Throttled { inner, rate: rate.max(1), after, sent: 0, started: None, pending: None, wait: None }
    }

    /// When `self.sent` bytes have had their time.
    fn due(&self, started: Instant) -> Instant {
        let throttled = self.sent.saturating_sub(self.after);
        started + Duration::from_secs_f64(throttled as f64 / self.rate as f64)
    }

    /// The next piece of `data` to send: up to the unthrottled allowance while it lasts, else a
    /// tenth of a second's worth.
    fn cut(&mut self, mut data: Bytes) -> Bytes {
        let most = match self.after.checked_sub(self.sent) {
            Some(free) if free > 0 => free,
            _ => (self.rate / 10).max(1),
        };
        let most = usize::try_from(most).unwrap_or(usize::MAX);
        if data.len() > most {
            let piece = data.split_to(most);
            self.pending = Some(data);
            return piece;
        }
        data
    }
}

impl<B> Body for Throttled<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        loop {
            if let Some(wait) = &mut this.wait {
                ready!(wait.as_mut().poll(cx));
                this.wait = None;
            }
            let data = match this.pending.take() {
                Some(data) => data,
                None => match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) if !data.is_empty() => data,
                        Ok(_) => continue,
                        Err(frame) => return Poll::Ready(Some(Ok(frame))),
                    },
                    other => return Poll::Ready(other),
                },
            };
            let started = *this.started.get_or_insert_with(Instant::now);
            let due = this.due(started);
            if due > Instant::now() {
                this.pending = Some(data);
                this.wait = Some(Box::pin(tokio::time::sleep_until(due)));
                continue;
            }
            let piece = this.cut(data);
            this.sent += piece.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let pending = self.pending.as_ref().map_or(0, |p| p.len() as u64);
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + pending);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + pending);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Full, StreamBody};

    use super::*;

    /// Collects `body`, returning its bytes and how long the (paused) clock took.
    async fn timed<B: Body<Data = Bytes> + Unpin>(body: B) -> (Vec<u8>, Duration)
    where
        B::Error: std::fmt::Debug,
    {
        let start = Instant::now();
        let bytes = body.collect().await.unwrap().to_bytes().to_vec();
        (bytes, start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_free_bytes_the_body_goes_at_the_rate() {
        let data: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        // 100,000 free, then 200,000 at 50,000 B/s: 4 s, less the last tenth-second piece.
        let (out, took) = timed(Throttled::new(Full::new(Bytes::from(data.clone())), 50_000, 100_000)).await;
        assert_eq!(out, data);
        assert!(took >= Duration::from_millis(3_850) && took <= Duration::from_millis(4_000), "{took:?}");
        // No limit reached: no wait.
        let (out, took) = timed(Throttled::new(Full::new(Bytes::from_static(b"small")), 10, 1024)).await;
        assert_eq!((out.as_slice(), took), (&b"small"[..], Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn many_small_chunks_and_trailers_keep_their_order() {
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = (0..100)
            .map(|i| Ok(Frame::data(Bytes::from(vec![i as u8; 1000]))))
            .chain([Ok(Frame::trailers(http::HeaderMap::new()))])
            .collect();
        let mut body = Throttled::new(StreamBody::new(futures::stream::iter(frames)), 20_000, 0);
        let start = Instant::now();
        let mut data = Vec::new();
        let mut trailers = false;
        while let Some(frame) = body.frame().await {
            let frame = frame.unwrap();
            assert!(!trailers, "data after the trailers");
            match frame.into_data() {
                Ok(chunk) => data.extend_from_slice(&chunk),
                Err(frame) => trailers = frame.is_trailers(),
            }
        }
        assert!(trailers);
        assert_eq!(data.len(), 100_000);
        assert!(data.chunks(1000).enumerate().all(|(i, c)| c.iter().all(|&b| b == i as u8)));
        // 100,000 B at 20,000 B/s: 5 s, less the last piece.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(4_900) && took <= Duration::from_millis(5_000), "{took:?}");
    }
}
