//! The access log: one line per request, written when the response body ends (or is dropped),
//! so it carries the bytes sent and the whole duration.

use std::{
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http::Method;
use hyper::body::{Body, Frame, SizeHint};

use crate::proxy::body::{BoxError, ProxyBody};

/// The request as the access log names it, taken before the request is consumed.
pub struct RequestLine {
    pub method: Method,
    pub host: String,
    pub path: String,
}

/// One access log line, written when it is dropped.
pub struct AccessEntry {
    pub started: Instant,
    pub client: SocketAddr,
    pub worker: usize,
    pub request: RequestLine,
    pub status: u16,
    pub upstream: Option<SocketAddr>,
    /// Why an access check refused the request, if one did.
    pub denied: Option<crate::metrics::Denial>,
    pub request_id: String,
    pub bytes: u64,
}

impl Drop for AccessEntry {
    fn drop(&mut self) {
        tracing::info!(
            target: "sluice::access",
            client = %self.client.ip().to_canonical(),
            host = %self.request.host,
            method = %self.request.method,
            path = %self.request.path,
            status = self.status,
            bytes = self.bytes,
            duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            upstream = %self.upstream.map(|u| u.to_string()).unwrap_or_default(),
            denied = self.denied.map(|why| why.name()).unwrap_or(""),
            worker = self.worker,
            request_id = %self.request_id,
        );
    }
}

/// A response body that counts what it sends for the access log and ingress-nginx's series,
/// both recorded when it ends.
pub struct Logged {
    pub inner: ProxyBody,
    pub entry: Option<AccessEntry>,
    pub nginx: Option<crate::metrics::nginx::NginxRequest>,
}

impl Body for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let bytes = data.len() as u64;
            if let Some(entry) = self.entry.as_mut() {
                entry.bytes += bytes;
            }
            if let Some(nginx) = self.nginx.as_mut() {
                nginx.sent(bytes);
            }
        }
        if let Poll::Ready(None) = polled {
            // The end of the body: log now rather than when the connection lets go of it.
            self.entry.take();
            self.nginx.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
