//! Connection activity tracking for idle timeouts: an IO wrapper that stamps the time of the
//! last byte read or written (one relaxed atomic store per IO call), and tells busy polling
//! that the worker did network work.

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

/// When a connection last moved a byte.
#[derive(Clone, Debug)]
pub struct Activity(Arc<AtomicU64>);

impl Default for Activity {
    fn default() -> Self {
        Activity(Arc::new(AtomicU64::new(now_ms())))
    }
}

impl Activity {
    fn touch(&self) {
        self.0.store(now_ms(), Ordering::Relaxed);
        super::busy_poll::worked();
    }

    /// How long since the last byte.
    pub fn idle_for(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.0.load(Ordering::Relaxed)))
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
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
