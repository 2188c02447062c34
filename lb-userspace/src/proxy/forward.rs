//! What a worker does with one request: match a route, answer redirects, pick an endpoint,
//! forward over a pooled upstream connection with timeouts and budgeted retries, and stream the
//! response back. Errors become short, clear 4xx/5xx responses for this client only.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use http::{
    HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
    header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, LOCATION, SET_COOKIE, USER_AGENT},
};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

use super::{
    affinity::Pin,
    body::{self, BadRequestBody, BodyTooLarge, ClientBody, Held, ProxyBody, RequestBody},
    endpoint::now_ms,
    h1_server::ClientUpgrade,
    h1_upstream,
    headers::{self, Forwarded, X_REQUEST_ID},
    routing::RouteLabels,
    snapshot::{Published, Snapshot},
    upstream,
};
use crate::{config::AffinityMode, proxy::balance};

/// Response header naming the worker that served a request (when `worker_id_header` is on).
pub const WORKER_HEADER: &str = "x-sluice-worker";

/// What a worker knows about the connection a request came on.
pub struct Connection {
    pub worker: usize,
    pub client: SocketAddr,
    /// The listener's address (the service port, also when XDP steered to a worker port).
    pub listener: SocketAddr,
    pub scheme: &'static str,
    /// The forwarding headers' values for this connection's requests.
    pub forwarded: Forwarded,
    pub published: Published,
    /// This worker's counters.
    pub metrics: Arc<crate::metrics::WorkerMetrics>,
    /// The TLS session, set by the worker once the handshake finished (before any request);
    /// empty on plain HTTP.
    pub tls: std::sync::OnceLock<crate::tls::Session>,
}

/// What became of a request, filled in along the way for metrics and the access log.
#[derive(Default)]
struct Outcome {
    labels: Option<RouteLabels>,
    upstream: Option<SocketAddr>,
}

/// Labels of requests that matched no route.
fn unrouted() -> RouteLabels {
    static LABELS: std::sync::OnceLock<RouteLabels> = std::sync::OnceLock::new();
    LABELS.get_or_init(|| RouteLabels { virtual_host: "".into(), route: "".into() }).clone()
}

/// Handles one request. Never fails: every problem is a response.
pub async fn handle(request: Request<ClientBody>, connection: Arc<Connection>) -> Response<ProxyBody> {
    let started = Instant::now();
    let snapshot = connection.published.load();
    let log = snapshot.access_log.enabled
        && (snapshot.access_log.sample_rate >= 1.0 || fastrand::f64() < snapshot.access_log.sample_rate);
    let request_line = log.then(|| RequestLine {
        method: request.method().clone(),
        host: request_host(&request).to_owned(),
        path: request.uri().path().to_owned(),
    });
    let mut outcome = Outcome::default();
    let hsts = crate::tls::http::hsts_for(&request, &snapshot.tls, connection.tls.get());
    let mut response = route_and_forward(request, &connection, &snapshot, &mut outcome).await;
    if let Some(hsts) = hsts {
        response.headers_mut().entry(http::header::STRICT_TRANSPORT_SECURITY).or_insert(hsts);
    }
    if snapshot.worker_id_header {
        response.headers_mut().insert(WORKER_HEADER, HeaderValue::from(connection.worker));
    }
    let labels = outcome.labels.unwrap_or_else(unrouted);
    connection.metrics.request(
        &labels.virtual_host,
        &labels.route,
        response.status().as_u16(),
        started.elapsed(),
    );
    if let Some(request_line) = request_line {
        let entry = AccessEntry {
            started,
            client: connection.client,
            worker: connection.worker,
            request: request_line,
            status: response.status().as_u16(),
            upstream: outcome.upstream,
            request_id: response
                .headers()
                .get(&X_REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned(),
            bytes: 0,
        };
        let (head, body) = response.into_parts();
        return Response::from_parts(head, Logged { inner: body, entry: Some(entry) }.boxed());
    }
    response
}

struct RequestLine {
    method: Method,
    host: String,
    path: String,
}

/// One access log line, written when the response body ends (or is dropped), so it carries
/// the bytes sent and the whole duration.
struct AccessEntry {
    started: Instant,
    client: SocketAddr,
    worker: usize,
    request: RequestLine,
    status: u16,
    upstream: Option<SocketAddr>,
    request_id: String,
    bytes: u64,
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
            worker = self.worker,
            request_id = %self.request_id,
        );
    }
}

/// A response body that counts what it sends for the access log.
struct Logged {
    inner: ProxyBody,
    entry: Option<AccessEntry>,
}

impl hyper::body::Body for Logged {
    type Data = bytes::Bytes;
    type Error = body::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, body::BoxError>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
            && let Some(entry) = self.entry.as_mut()
        {
            entry.bytes += data.len() as u64;
        }
        if let std::task::Poll::Ready(None) = polled {
            // The end of the body: log now rather than when the connection lets go of it.
            self.entry.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A short plain-text error response.
pub fn error(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let mut response = Response::new(body::text(format!(
        "{} {}: {message}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// The request's host: `:authority` (HTTP/2, absolute-form) or the Host header.
fn request_host<B>(request: &Request<B>) -> &str {
    request
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| request.headers().get(HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("")
}

fn path_and_query(uri: &Uri) -> &str {
    uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

async fn route_and_forward(
    mut request: Request<ClientBody>,
    connection: &Connection,
    snapshot: &Snapshot,
    outcome: &mut Outcome,
) -> Response<ProxyBody> {
    // HTTP to HTTPS redirects, and client-certificate hosts reached on another host's session.
    if let Some(response) = crate::tls::http::before_request(&request, &snapshot.tls, connection.tls.get()) {
        return response;
    }
    let host = request_host(&request).to_owned();
    let Some(route) = snapshot.routes.find(&host, request.method(), request.uri().path(), request.headers())
    else {
        return error(StatusCode::NOT_FOUND, "no route for this host and path");
    };
    outcome.labels = Some(route.labels.clone());
    let backend_index = match &route.action {
        super::routing::RouteAction::Redirect(redirect) => {
            let upstream_path = route.rewrite_path_and_query(path_and_query(request.uri()));
            let mut response = Response::new(body::empty());
            *response.status_mut() = redirect.status();
            let location = redirect.location(connection.scheme, &host, &upstream_path);
            match HeaderValue::from_str(&location) {
                Ok(location) => response.headers_mut().insert(LOCATION, location),
                Err(_) => {
                    return error(StatusCode::INTERNAL_SERVER_ERROR, "redirect target is not a valid header");
                }
            };
            return response;
        }
        super::routing::RouteAction::Backend(index) => *index,
    };
    let Some(group) = snapshot.backends.get(backend_index) else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "route names a missing backend");
    };

    let limit = route.max_body_bytes.unwrap_or(snapshot.limits.max_body_bytes);
    if let Some(length) =
        request.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && limit > 0
        && length > limit
    {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large for this route");
    }

    let upgrade = headers::upgrade_request(request.headers());
    let client_upgrade = upgrade.as_ref().and_then(|_| ClientUpgrade::take(&mut request));
    let (parts, incoming) = request.into_parts();
    let upstream_path = route.rewrite_path_and_query(path_and_query(&parts.uri));
    // The client's fields as they go upstream; the client's map itself stays as it came.
    let upstream_headers =
        headers::UpstreamHeaders::new(&parts.headers, &connection.forwarded, &host, upgrade);
    let request_id = upstream_headers.request_id().clone();

    let body = RequestBody::new(incoming, limit);
    if let Err(e) = body.prefetch().await {
        tracing::debug!(error = %e, "request body refused before forwarding");
        return error(StatusCode::BAD_REQUEST, "malformed request body");
    }

    let hash_key = group
        .config
        .hash_on
        .as_ref()
        .and_then(|on| balance::hash_key(on, &parts.headers, connection.client.ip(), &parts.uri));
    let timeout = route.timeout.unwrap_or(std::time::Duration::from_millis(group.config.timeouts.request_ms));
    group.retry_budget.deposit();

    // Cookie affinity: a valid cookie pins the first attempt. In balanced mode an unavailable
    // pinned endpoint gives up its client (re-pinned with a new cookie); in persistent mode
    // the client stays while the endpoint exists.
    let (mut pinned, mut issue_cookie) = match &group.affinity {
        None => (None, false),
        Some(affinity) => match affinity.pinned(&parts.headers) {
            Pin::Endpoint(i)
                if affinity.mode() == AffinityMode::Persistent
                    || group.endpoints[i].is_available(now_ms()) =>
            {
                (Some(i), false)
            }
            _ => (None, true),
        },
    };
    if !h1_upstream::valid_target(&upstream_path) {
        return error(StatusCode::BAD_REQUEST, "request target cannot be forwarded");
    }
    let outgoing = h1_upstream::Outgoing {
        method: &parts.method,
        target: &upstream_path,
        headers: &upstream_headers,
        framing: h1_upstream::RequestFraming::of(&body),
    };
    let mut tried: Vec<usize> = Vec::new();
    let mut last_error = error(StatusCode::SERVICE_UNAVAILABLE, "no healthy endpoint for this backend");
    for attempt in 0..=group.config.retries.attempts {
        if attempt > 0 {
            if !group.retry_budget.withdraw() {
                break;
            }
            connection.metrics.retry(&group.label);
        }
        let now = now_ms();
        let was_pinned = pinned.is_some();
        let index = match pinned.take() {
            Some(index) => index,
            None => match group.balancer.pick(&group.endpoints, hash_key, now, &tried) {
                Some(index) => index,
                None => break,
            },
        };
        if was_pinned
            && let Some(affinity) = &group.affinity
            && affinity.config.change_on_failure
        {
            // If this attempt fails, the retry re-pins the client with a new cookie.
            issue_cookie = true;
        }
        tried.push(index);
        let endpoint = &group.endpoints[index];
        outcome.upstream = Some(endpoint.address);
        let cap = upstream::cap_for(group, endpoint.address, snapshot.generation);
        let Ok(slot) = cap.acquire_owned().await else { break };
        let inflight = endpoint.start_request();

        let started = Instant::now();
        let outcome = tokio::time::timeout(
            timeout,
            upstream::send(group, endpoint.address, snapshot.generation, &outgoing, &body),
        )
        .await;
        match outcome {
            Ok(Ok(response)) => {
                endpoint.observe_latency(started.elapsed(), now_ms());
                if response.status().is_server_error() {
                    endpoint.record_failure(&group.config.outlier, now_ms());
                } else {
                    endpoint.record_success();
                }
                if response.status() == StatusCode::SWITCHING_PROTOCOLS
                    && let Some(client_upgrade) = client_upgrade
                {
                    let (mut head, upstream_upgrade) = upstream::upgrade(response);
                    if let Some(upstream_upgrade) = upstream_upgrade {
                        tokio::spawn(tunnel(client_upgrade, upstream_upgrade, inflight, slot));
                    }
                    head.headers.insert(X_REQUEST_ID.clone(), request_id);
                    return Response::from_parts(head, body::empty());
                }
                let (mut head, upstream_body) = response.into_parts();
                headers::strip_hop_by_hop(&mut head.headers);
                if let Some(affinity) = &group.affinity
                    && (issue_cookie && !(was_pinned && attempt == 0))
                    && let Some(cookie) =
                        affinity.set_cookie(index, parts.headers.get(USER_AGENT).map(|v| v.as_bytes()))
                {
                    head.headers.append(SET_COOKIE, cookie);
                }
                // This hop speaks its own version to the client, whatever the backend spoke.
                head.version = Version::HTTP_11;
                head.headers.insert(X_REQUEST_ID.clone(), request_id);
                let body = Held::new(upstream_body, (inflight, slot)).boxed();
                return Response::from_parts(head, body);
            }
            Ok(Err(e)) => {
                drop(inflight);
                let cause: &(dyn std::error::Error + 'static) = &e;
                if body::find_cause::<BodyTooLarge>(cause).is_some() {
                    return error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large for this route");
                }
                if body::find_cause::<BadRequestBody>(cause).is_some() {
                    return error(StatusCode::BAD_REQUEST, "malformed request body");
                }
                let connect_failed = e.is_connect();
                if connect_failed {
                    connection.metrics.connect_error(&group.label);
                }
                endpoint.record_failure(&group.config.outlier, now_ms());
                tracing::debug!(backend = %group.name, endpoint = %endpoint.address, error = %e, connect_failed, "upstream attempt failed");
                last_error = error(
                    StatusCode::BAD_GATEWAY,
                    if connect_failed {
                        "cannot connect to the backend"
                    } else {
                        "the backend failed to answer"
                    },
                );
                // A connect failure never reached the backend; anything else only retries when
                // repeating the request is safe and the body is still ours to send.
                let may_retry = body.replayable() && (connect_failed || is_idempotent(&parts.method));
                if !may_retry {
                    break;
                }
            }
            Err(_elapsed) => {
                endpoint.record_failure(&group.config.outlier, now_ms());
                return error(StatusCode::GATEWAY_TIMEOUT, "the backend did not answer in time");
            }
        }
    }
    last_error
}

/// Copies bytes both ways between the upgraded client and upstream connections (WebSocket and
/// other Upgrade protocols). It references no snapshot, so configuration changes never cut it.
async fn tunnel<H: Send + 'static>(
    client: ClientUpgrade,
    upstream: upstream::UpstreamUpgrade,
    hold: super::endpoint::InflightGuard,
    slot: H,
) {
    let Some(mut client) = client.connection().await else {
        tracing::debug!("the client connection ended before its upgrade");
        return;
    };
    let copied = match upstream {
        upstream::UpstreamUpgrade::H1 { mut stream, early } => {
            // What the backend sent right after its 101 came in the same read as the head.
            match client.write_all(&early).await {
                Ok(()) => tokio::io::copy_bidirectional(&mut client, &mut stream).await,
                Err(e) => Err(e),
            }
        }
        upstream::UpstreamUpgrade::Hyper(upgrade) => match upgrade.await {
            Ok(upstream) => {
                tokio::io::copy_bidirectional(&mut client, &mut hyper_util::rt::TokioIo::new(upstream)).await
            }
            Err(e) => {
                tracing::debug!(error = %e, "upstream upgrade failed");
                return;
            }
        },
    };
    if let Err(e) = copied {
        tracing::debug!(error = %e, "tunnel closed with an error");
    }
    drop((hold, slot));
}
