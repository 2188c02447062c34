//! Connection activity tracking for idle and send timeouts: an IO wrapper that stamps the time
//! of the last byte read or written (one relaxed atomic store per IO call) and the moment a
//! write to the client began to wait (the client stopped reading), and tells busy polling that
//! the worker did network work.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::now_ms;

/// When a connection last moved a byte, and since when a write to it has been waiting.
#[derive(Clone, Debug)]
pub struct Activity(Arc<Stamps>);

#[derive(Debug)]
struct Stamps {
    last: AtomicU64,
    /// When a write first found the socket full, [`NOT_WAITING`] since one went through.
    write_waiting_since: AtomicU64,
}

const NOT_WAITING: u64 = u64::MAX;

impl Default for Activity {
    fn default() -> Self {
        Activity(Arc::new(Stamps {
            last: AtomicU64::new(now_ms()),
            write_waiting_since: AtomicU64::new(NOT_WAITING),
        }))
    }
}

impl Activity {
    fn touch(&self) {
        self.0.last.store(now_ms(), Ordering::Relaxed);
        super::busy_poll::worked();
    }

    /// How long since the last byte.
    pub fn idle_for(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.0.last.load(Ordering::Relaxed)))
    }

    /// A write (or flush, or shutdown) found the socket full: the clock starts, unless it runs.
    fn write_waits(&self) {
        if self.0.write_waiting_since.load(Ordering::Relaxed) == NOT_WAITING {
            self.0.write_waiting_since.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// A write went through: the client takes bytes again.
    fn write_moved(&self) {
        if self.0.write_waiting_since.load(Ordering::Relaxed) != NOT_WAITING {
            self.0.write_waiting_since.store(NOT_WAITING, Ordering::Relaxed);
        }
    }

    /// How long a write to the client has been waiting for room (nginx's `send_timeout` counts
    /// the same: the time between two successful writes while one is due); `None` when none is.
    pub fn write_waiting_for(&self) -> Option<Duration> {
        let since = self.0.write_waiting_since.load(Ordering::Relaxed);
        (since != NOT_WAITING).then(|| Duration::from_millis(now_ms().saturating_sub(since)))
    }

    /// Records how a write-side call of the IO ended.
    fn write_polled<T>(&self, result: &Poll<io::Result<T>>, moved: impl FnOnce(&T) -> bool) {
        match result {
            Poll::Ready(Ok(value)) if moved(value) => {
                self.touch();
                self.write_moved();
            }
            Poll::Ready(_) => self.write_moved(),
            Poll::Pending => self.write_waits(),
        }
    }
}

/// Stamps `activity` on every successful read or write of `inner`.
pub struct ActivityIo<S> {
    inner: S,
    activity: Activity,
    /// The worker's connection slot, held as long as the client's socket is: the HTTP server
    /// hands the socket to a WebSocket tunnel on an upgrade, and a worker that shuts down waits
    /// for the tunnel too (up to the grace period) because it waits for every slot.
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl<S> ActivityIo<S> {
    pub fn new(inner: S, activity: Activity) -> ActivityIo<S> {
        ActivityIo { inner, activity, _slot: None }
    }

    /// Holds `slot` until this IO is dropped.
    pub fn with_slot(mut self, slot: tokio::sync::OwnedSemaphorePermit) -> ActivityIo<S> {
        self._slot = Some(slot);
        self
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ActivityIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ActivityIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        self.activity.write_polled(&result, |&n| n > 0);
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.activity.write_polled(&result, |()| false);
        result
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.activity.write_polled(&result, |()| false);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.activity.write_polled(&result, |&n| n > 0);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
