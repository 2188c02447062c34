//! TLS passthrough: the client's TLS stream, still encrypted, spliced to an endpoint of the
//! host's backend group (ingress-nginx `ssl-passthrough`). The backend terminates TLS and
//! presents its own certificate. The ClientHello bytes read for the SNI are sent first.

use std::{
    net::IpAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use super::{BackendGroup, balance, endpoint::InflightGuard};
use crate::{now_ms, tls};

/// A connection to a passthrough endpoint; counts as a request in flight on it while open.
pub struct Upstream {
    stream: TcpStream,
    _inflight: InflightGuard,
}

/// Connects to an endpoint of `group`. Endpoints that refuse are tried like retries of a
/// request (up to `retries.attempts` more) and recorded as failures for passive health.
/// `None` (counted) when no endpoint could be reached.
pub async fn connect(group: &BackendGroup, client_ip: IpAddr) -> Option<Upstream> {
    let hash_key = group.config.hash_on.as_ref().and_then(|on| {
        balance::hash_key(on, &http::HeaderMap::new(), client_ip, &http::Uri::from_static("/"))
    });
    let mut tried = Vec::new();
    for _attempt in 0..=group.config.retries.attempts {
        let Some(index) = group.balancer.pick(&group.endpoints, hash_key, now_ms(), &tried) else { break };
        tried.push(index);
        let endpoint = &group.endpoints[index];
        match tokio::time::timeout(group.connect_timeout(), TcpStream::connect(endpoint.address)).await {
            Ok(Ok(stream)) => {
                endpoint.record_success();
                let _ = stream.set_nodelay(true);
                tls::count_passthrough(true);
                return Some(Upstream { stream, _inflight: endpoint.start_request() });
            }
            Ok(Err(e)) => {
                tracing::debug!(backend = %group.name, endpoint = %endpoint.address, error = %e, "passthrough connect failed");
                endpoint.record_failure(&group.config.outlier, now_ms());
            }
            Err(_elapsed) => {
                tracing::debug!(backend = %group.name, endpoint = %endpoint.address, "passthrough connect timed out");
                endpoint.record_failure(&group.config.outlier, now_ms());
            }
        }
    }
    // Nothing to tell the client in TLS terms without a certificate: the caller closes.
    tls::count_passthrough(false);
    None
}

/// Sends the ClientHello bytes already read, then copies both ways until both sides close,
/// nothing moves for `idle`, or a write waits `send_timeout` (a side that stopped reading).
/// References no snapshot, so reloads never cut it.
pub async fn splice(
    client: TcpStream,
    hello: Vec<u8>,
    mut upstream: Upstream,
    idle: Duration,
    send_timeout: Duration,
) -> CopyEnd {
    let mut client = client;
    let bounds = CopyBounds { idle: Some(idle), send_timeout };
    match copy_both_ways(&mut client, &mut upstream.stream, (Vec::new(), hello), bounds).await {
        Ok(end) => end,
        Err(e) => {
            tracing::debug!(error = %e, "passthrough ended with an error");
            CopyEnd::Closed
        }
    }
}

/// How a copy both ways ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyEnd {
    /// Both sides closed (or one failed).
    Closed,
    /// No byte moved either way for the idle bound.
    Idle,
    /// A write to the client waited the send timeout: it stopped reading.
    ClientSendTimeout,
    /// A write to the upstream waited the send timeout.
    UpstreamSendTimeout,
}

/// What ends a copy both ways early.
#[derive(Clone, Copy, Debug)]
pub struct CopyBounds {
    /// No byte either way for this long (`None`: no bound, as for WebSockets).
    pub idle: Option<Duration>,
    /// A write that waits this long, because its reader stopped reading (`limits.send_timeout_ms`,
    /// nginx's `send_timeout` and `proxy_send_timeout`).
    pub send_timeout: Duration,
}

/// Copies bytes both ways between `client` and `upstream` (TLS passthrough, WebSocket and other
/// upgraded tunnels), each end of stream passed on as a half-close. `early` is what to write
/// first: (to the client, to the upstream). The two directions go on independently, so one
/// whose reader stopped never stalls the other, and each write that waits is timed: past
/// `bounds.send_timeout` the copy ends (tokio's `copy_bidirectional`, used before for tunnels,
/// waited for ever, holding the connection, its worker slot and the upstream connection). One
/// timer serves both bounds; it wakes at most once per bound when nothing happens.
pub async fn copy_both_ways<A, B>(
    client: &mut A,
    upstream: &mut B,
    early: (Vec<u8>, Vec<u8>),
    bounds: CopyBounds,
) -> std::io::Result<CopyEnd>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (mut down, mut up) = (Direction::new(early.0), Direction::new(early.1));
    let send_ms = bounds.send_timeout.as_millis() as u64;
    let idle_ms = bounds.idle.map(|idle| idle.as_millis() as u64);
    let mut last_moved = now_ms();
    loop {
        let now = now_ms();
        if idle_ms.is_some_and(|idle| now >= last_moved + idle) {
            return Ok(CopyEnd::Idle);
        }
        if down.write_waits_since.is_some_and(|since| now >= since + send_ms) {
            return Ok(CopyEnd::ClientSendTimeout);
        }
        if up.write_waits_since.is_some_and(|since| now >= since + send_ms) {
            return Ok(CopyEnd::UpstreamSendTimeout);
        }
        // A write that begins to wait after now is timed from later than now: waking a send
        // timeout from now is never late for it.
        let mut wake = now + send_ms;
        for since in [down.write_waits_since, up.write_waits_since].into_iter().flatten() {
            wake = wake.min(since + send_ms);
        }
        if let Some(idle) = idle_ms {
            wake = wake.min(last_moved + idle);
        }
        let copied = std::future::poll_fn(|cx| {
            let mut moved = false;
            let to_upstream =
                up.poll_copy(cx, Pin::new(&mut *client), Pin::new(&mut *upstream), &mut moved)?;
            let to_client =
                down.poll_copy(cx, Pin::new(&mut *upstream), Pin::new(&mut *client), &mut moved)?;
            if moved {
                last_moved = now_ms();
            }
            if to_upstream.is_ready() && to_client.is_ready() { Poll::Ready(Ok(())) } else { Poll::Pending }
        });
        tokio::select! {
            copied = copied => return copied.map(|()| CopyEnd::Closed),
            () = tokio::time::sleep(Duration::from_millis(wake.saturating_sub(now).max(1))) => {}
        }
    }
}

/// One direction of a copy both ways: what was read and not yet written, and since when a
/// write has been waiting.
struct Direction {
    buf: Vec<u8>,
    pos: usize,
    cap: usize,
    read_done: bool,
    shut_down: bool,
    /// Written since the last flush.
    need_flush: bool,
    /// `now_ms` of the first write (or flush, or shutdown) that found the writer full, until
    /// one goes through.
    write_waits_since: Option<u64>,
}

impl Direction {
    fn new(early: Vec<u8>) -> Direction {
        let cap = early.len();
        let mut buf = early;
        buf.resize(cap.max(COPY_BUFFER), 0);
        Direction {
            buf,
            pos: 0,
            cap,
            read_done: false,
            shut_down: false,
            need_flush: false,
            write_waits_since: None,
        }
    }

    /// A write that could not go through now.
    fn waits(&mut self) -> Poll<std::io::Result<()>> {
        self.write_waits_since.get_or_insert_with(now_ms);
        Poll::Pending
    }

    /// Copies until the reader or the writer has to wait; ready once the reader's end of
    /// stream was passed on.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
        moved: &mut bool,
    ) -> Poll<std::io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            while self.pos < self.cap {
                match writer.as_mut().poll_write(cx, &self.buf[self.pos..self.cap]) {
                    Poll::Pending => return self.waits(),
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        self.pos += n;
                        self.need_flush = true;
                        self.write_waits_since = None;
                        *moved = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                }
            }
            if self.read_done {
                if !self.shut_down {
                    match writer.as_mut().poll_shutdown(cx) {
                        Poll::Pending => return self.waits(),
                        Poll::Ready(result) => {
                            result?;
                            self.shut_down = true;
                            self.write_waits_since = None;
                        }
                    }
                }
                return Poll::Ready(Ok(()));
            }
            let mut read = ReadBuf::new(&mut self.buf);
            match reader.as_mut().poll_read(cx, &mut read) {
                Poll::Pending => {
                    if self.need_flush {
                        match writer.as_mut().poll_flush(cx) {
                            Poll::Pending => return self.waits(),
                            Poll::Ready(result) => {
                                result?;
                                self.need_flush = false;
                                self.write_waits_since = None;
                            }
                        }
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let n = read.filled().len();
                    if n == 0 {
                        self.read_done = true;
                    } else {
                        (self.pos, self.cap) = (0, n);
                        *moved = true;
                    }
                }
            }
        }
    }
}

/// Bytes read at a time in each direction (what `copy_bidirectional` used, and this file before).
const COPY_BUFFER: usize = 16 * 1024;
