//! Request mirroring (Gateway API `RequestMirror`): copies of a route's requests sent to other
//! backend groups, fire and forget. A copy leaves once the request is prepared (the same
//! target, forwarding headers, request id and route header changes as the original), runs in
//! a task of its own and never delays, changes or fails the client's answer; its answer is
//! read (to keep the connection) and dropped.
//!
//! Bounded: at most [`IN_FLIGHT_PER_WORKER`] copies per worker, each one within its group's
//! request timeout and connection cap (a full cap drops the copy rather than waiting); a body
//! is copied only when the route held it whole (request buffering), never by holding back a
//! streamed one. Every copy is counted by outcome (`sluice_mirrored_requests`).

use std::{cell::Cell, sync::Arc, time::Duration};

use http::{HeaderMap, HeaderValue, Method, header::CONTENT_LENGTH};
use http_body_util::BodyExt;

use super::Connection;
use crate::{
    metrics::Mirrored,
    now_ms,
    proxy::{
        header_ops::HeaderOps,
        headers::{Forwarded, UpstreamHeaders},
        http1::client::{Outgoing, RequestFraming},
        route::Route,
        snapshot::Snapshot,
        upstream::{pool, request_body::RequestBody},
    },
};

/// Copies in flight on one worker beyond which new ones are dropped: a slow mirror backend
/// must not pile up tasks, memory and sockets.
pub const IN_FLIGHT_PER_WORKER: usize = 128;

/// The most of a copy's answer read so its connection can be reused; past it the connection
/// is dropped.
const ANSWER_READ_LIMIT: usize = 64 * 1024;

thread_local! {
    // Workers run current-thread runtimes: a copy's task lives on the worker that spawned it.
    static IN_FLIGHT: Cell<usize> = const { Cell::new(0) };
}

/// The original request, as prepared for its own backend (its fields and body are passed
/// beside it).
pub struct Original<'a> {
    pub method: &'a Method,
    /// The target as it goes upstream (rewritten).
    pub target: &'a str,
    pub host: &'a str,
}

/// Sends the copies `route`'s mirrors draw for this request; `snapshot` is the request's
/// (the route's backend indexes are into it).
pub fn copy(
    route: &Route,
    original: Original<'_>,
    (upstream, body): (&UpstreamHeaders<'_>, &RequestBody),
    connection: &Connection,
    snapshot: &Arc<Snapshot>,
) {
    for mirror in &route.mirrors {
        if !mirror.draws() {
            continue;
        }
        let metrics = connection.metrics.clone();
        if mirror.body && !body.is_whole() {
            metrics.mirrored(Mirrored::BodyNotHeld);
            continue;
        }
        if IN_FLIGHT.get() >= IN_FLIGHT_PER_WORKER {
            metrics.mirrored(Mirrored::Dropped);
            continue;
        }
        let (client_headers, forwarded) = upstream.client_parts();
        let mut headers = client_headers.clone();
        let body = if mirror.body {
            body.clone()
        } else {
            headers.remove(CONTENT_LENGTH);
            RequestBody::empty()
        };
        let copy = Copy {
            backend: mirror.backend,
            method: original.method.clone(),
            target: original.target.to_owned(),
            headers,
            forwarded: forwarded.clone(),
            host: mirror.host.as_deref().unwrap_or(original.host).to_owned(),
            request_id: upstream.request_id().clone(),
            changes: route.request_headers.clone(),
            body,
        };
        let in_flight = InFlight::enter();
        let snapshot = snapshot.clone();
        tokio::spawn(async move {
            let outcome = copy.send(&snapshot).await;
            metrics.mirrored(outcome);
            drop(in_flight);
        });
    }
}

/// Counts a copy in flight on this worker while it lives.
struct InFlight;

impl InFlight {
    fn enter() -> InFlight {
        IN_FLIGHT.set(IN_FLIGHT.get() + 1);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.set(IN_FLIGHT.get().saturating_sub(1));
    }
}

/// One copy, owned: it outlives the request's borrows.
struct Copy {
    backend: usize,
    method: Method,
    target: String,
    headers: HeaderMap,
    forwarded: Forwarded,
    host: String,
    request_id: HeaderValue,
    changes: Option<HeaderOps>,
    body: RequestBody,
}

impl Copy {
    async fn send(self, snapshot: &Snapshot) -> Mirrored {
        let Some(group) = snapshot.backends.get(self.backend) else { return Mirrored::Dropped };
        let Some(index) = group.balancer.pick(&group.endpoints, None, now_ms(), &[]) else {
            return Mirrored::Failed;
        };
        let endpoint = &group.endpoints[index];
        let cap = pool::cap_for(group, endpoint.address, snapshot.generation);
        let Ok(_slot) = cap.try_acquire_owned() else { return Mirrored::Dropped };
        let _inflight = endpoint.start_request();
        let headers = UpstreamHeaders::new(&self.headers, &self.forwarded, &self.host, None)
            .with_request_id(self.request_id.clone())
            .with_changes(self.changes.as_ref());
        let outgoing = Outgoing {
            method: &self.method,
            target: &self.target,
            headers: &headers,
            framing: RequestFraming::of(self.body.is_empty(), self.body.size_hint()),
        };
        let exchange = async {
            let response =
                pool::send(group, endpoint.address, snapshot.generation, &outgoing, &self.body).await.ok()?;
            let mut body = response.into_body();
            let mut read = 0;
            while read <= ANSWER_READ_LIMIT {
                match body.frame().await {
                    Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len()),
                    Some(Err(_)) => return None,
                    None => break,
                }
            }
            Some(())
        };
        let timeout = Duration::from_millis(group.config.timeouts.request_ms);
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Some(())) => Mirrored::Sent,
            _ => Mirrored::Failed,
        }
    }
}
