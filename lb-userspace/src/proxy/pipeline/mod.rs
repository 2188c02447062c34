//! What a worker does with one request, as named phases:
//!
//! 1. **TLS policy** ([`tls_policy`]): HTTP to HTTPS redirects, 421 for a client-certificate
//!    host reached on another host's session;
//! 2. **route**: match the route table; a redirect route answers here, and so does a CORS
//!    preflight ([`super::cors`]);
//! 3. **admit**: what the route allows in (source ranges, the client's rate limits, the body
//!    size limit);
//! 4. **authenticate** ([`super::access`]): the route's basic auth (401, or 503 when its
//!    credentials could not be read) and external auth (401, 403, a sign-in 302, 500 when the
//!    service fails); the auth service's listed fields go on the request;
//! 5. **prepare**: the request as it goes upstream (rewritten target, forwarding headers and
//!    the route's header changes, the body shared between attempts, the hash key);
//! 6. **choose an endpoint**: the affinity cookie's, or the balancer's;
//! 7. **attempt**: one exchange over a pooled connection, with the route's timeout, retried
//!    within the budget when that is safe;
//! 8. **finish the response**: upgrades handed to a tunnel, hop-by-hop fields stripped, the
//!    affinity cookie, the request id; a status the route's error pages list is answered by
//!    the error backend instead ([`error_page`]); then, on every response of a route (Sluice's
//!    own answers too), its header changes and CORS fields.
//!
//! Errors become short, clear 4xx/5xx responses for this client only. Metrics and the access
//! log wrap the whole ([`handle`]).

mod access_log;
mod error_page;
mod mirror;
pub mod tls_policy;

use std::{
    borrow::Cow,
    net::{IpAddr, SocketAddr},
    ops::ControlFlow,
    sync::Arc,
    time::{Duration, Instant},
};

use http::{
    HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
    header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION, SET_COOKIE, USER_AGENT},
};
use http_body_util::BodyExt;

use self::access_log::{AccessEntry, Logged, RequestLine};
use super::{
    access::{Granted, external_auth::Context as AuthContext},
    body::{self, BadRequestBody, BodyTooLarge, Held, ProxyBody},
    headers::{self, Forwarded, X_REQUEST_ID},
    http1::{
        client::{self as h1_client, Outgoing, RequestFraming},
        framing::parse_length,
        server::{ClientBody, ClientUpgrade, Handler},
    },
    rate_limit::{InProgress, Limiter, Refusal, bandwidth::Throttled},
    real_client,
    route::{Route, RouteAction, RouteLabels},
    snapshot::{Published, Snapshot},
    upstream::{
        BackendGroup, affinity::Pin, balance, endpoint::InflightGuard, passthrough, pool,
        request_body::RequestBody,
    },
};
use crate::metrics::nginx::NginxRequest;
use crate::{
    config::{AffinityMode, RateLimitConfig, RetryOn},
    metrics::{ClientGone, Denial},
    now_ms,
};

/// Response header naming the worker that served a request (when `worker_id_header` is on).
pub const WORKER_HEADER: &str = "x-sluice-worker";

/// What a worker knows about the connection a request came on.
pub struct Connection {
    pub worker: usize,
    pub client: SocketAddr,
    /// The listener's address (the service port, also when XDP steered to a worker port).
    pub listener: SocketAddr,
    /// The listener's index in `config.listeners` (listeners do not change on reload).
    pub listener_index: usize,
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

/// The pipeline is the HTTP server's handler for a connection's requests.
impl Handler for Arc<Connection> {
    fn handle(&self, request: Request<ClientBody>) -> impl Future<Output = Response<ProxyBody>> + Send {
        handle(request, self.clone())
    }
}

/// Who a request is for: the connection's client, or, from a trusted proxy, the client its
/// forwarding header names (then with its own forwarding values).
struct RequestClient<'c> {
    ip: IpAddr,
    forwarded: Cow<'c, Forwarded>,
}

impl<'c> RequestClient<'c> {
    fn of(
        request: &Request<ClientBody>,
        connection: &'c Connection,
        snapshot: &Snapshot,
    ) -> RequestClient<'c> {
        let settings = &snapshot.config.forwarded;
        match real_client::from_headers(connection.client.ip(), request.headers(), settings) {
            Some(ip) => RequestClient {
                ip,
                forwarded: Cow::Owned(connection.forwarded.behind_proxy(ip, settings.use_forwarded_headers)),
            },
            None => {
                RequestClient { ip: connection.client.ip(), forwarded: Cow::Borrowed(&connection.forwarded) }
            }
        }
    }
}

/// A phase's result: `Break` is the answer that ends the request early, `Continue` what the
/// next phase needs.
type Phase<T> = ControlFlow<Response<ProxyBody>, T>;

/// What became of a request, filled in along the way for metrics, the access log and the
/// route's response policy.
#[derive(Default)]
struct Outcome<'s> {
    labels: Option<RouteLabels>,
    upstream: Option<SocketAddr>,
    /// The route chosen, once one is.
    route: Option<&'s Route>,
    /// The request's `Origin`, kept when the route has a CORS policy.
    origin: Option<HeaderValue>,
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
        host: headers::request_host(&request).unwrap_or("").to_owned(),
        path: request.uri().path().to_owned(),
    });
    // ingress-nginx's series: the method and request length, read before the request goes.
    let nginx = snapshot.config.nginx_metrics.then(|| {
        (
            crate::metrics::nginx::method_label(request.method()),
            crate::metrics::nginx::request_head_bytes(&request),
        )
    });
    let mut outcome = Outcome::default();
    let hsts = tls_policy::hsts_for(&request, &snapshot.tls, connection.tls.get());
    let client = RequestClient::of(&request, &connection, &snapshot);
    let client_addr = SocketAddr::new(client.ip, connection.client.port());
    let unanswered = Unanswered::new(&connection, request.version(), request_line, (started, client_addr));
    let mut response = route_and_forward(request, &connection, &client, &snapshot, &mut outcome).await;
    let entry = unanswered.answered();
    if let Some(route) = outcome.route {
        finish_policy(route, outcome.origin.take(), response.headers_mut());
    }
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
    let nginx = nginx.zip(outcome.route).map(|((method, received), route)| {
        let mut recorded =
            NginxRequest::new(connection.metrics.clone(), route.nginx.clone(), method, started, received);
        let head = crate::metrics::nginx::response_head_bytes(&response);
        recorded.answered(response.status().as_u16(), outcome.upstream.is_some(), head);
        recorded
    });
    let entry = entry.map(|mut entry| {
        entry.status = response.status().as_u16();
        entry.upstream = outcome.upstream;
        entry.denied = response.extensions().get::<Denial>().copied();
        entry.request_id =
            response.headers().get(&X_REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        entry
    });
    if entry.is_some() || nginx.is_some() {
        let (head, body) = response.into_parts();
        return Response::from_parts(head, Logged { inner: body, entry, nginx }.boxed());
    }
    response
}

/// nginx's status for a request whose client closed the connection before the response
/// (`ngx_http_request.h`, `NGX_HTTP_CLIENT_CLOSED_REQUEST`); only ever logged, never sent.
const CLIENT_CLOSED_REQUEST: u16 = 499;

/// A request in progress until its response is made. Dropped before that, its client left:
/// the HTTP/1 server saw the client's end of stream while the request was at the backend, or
/// hyper's HTTP/2 server dropped a reset stream's (or a closed connection's) request. The
/// request is counted (`sluice_client_gone_total`) and, when logged, its access log line says
/// 499 as nginx's does; its upstream request is cancelled by the same drop.
struct Unanswered<'c> {
    metrics: &'c crate::metrics::WorkerMetrics,
    protocol: ClientGone,
    /// The line to log, its status 499 until the response comes.
    entry: Option<AccessEntry>,
    answered: bool,
}

impl<'c> Unanswered<'c> {
    /// `line` when the request is logged, with when it began and whom it is for.
    fn new(
        connection: &'c Connection,
        version: Version,
        line: Option<RequestLine>,
        (started, client): (Instant, SocketAddr),
    ) -> Unanswered<'c> {
        Unanswered {
            metrics: &connection.metrics,
            protocol: if version == Version::HTTP_2 { ClientGone::Http2 } else { ClientGone::Http1 },
            entry: line.map(|request| AccessEntry {
                started,
                client,
                worker: connection.worker,
                request,
                status: CLIENT_CLOSED_REQUEST,
                upstream: None,
                denied: None,
                request_id: String::new(),
                bytes: 0,
            }),
            answered: false,
        }
    }

    /// The response came: the access log line, to be finished with it.
    fn answered(mut self) -> Option<AccessEntry> {
        self.answered = true;
        self.entry.take()
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if !self.answered {
            // The entry, if any, is logged as it drops after this.
            self.metrics.client_gone(self.protocol);
        }
    }
}

/// The route's response policy, on every response of the route, Sluice's own answers
/// included (as nginx's `more_set_headers`): its header changes, then the CORS fields for an
/// allowed origin.
fn finish_policy(route: &Route, origin: Option<HeaderValue>, fields: &mut http::HeaderMap) {
    if let Some(changes) = &route.response_headers {
        changes.apply(fields);
    }
    if let Some(cors) = &route.cors
        && let Some(allowed) = cors.allowed_origin(origin.as_ref())
    {
        cors.decorate(allowed, fields);
    }
}

/// A refusal on `route`: counted, and tagged (as a response extension, never sent) with why
/// for the access log.
fn denied(
    connection: &Connection,
    route: &Route,
    why: Denial,
    mut answer: Response<ProxyBody>,
) -> Response<ProxyBody> {
    connection.metrics.denied(&route.labels.route, why);
    answer.extensions_mut().insert(why);
    answer
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

fn path_and_query(uri: &Uri) -> &str {
    uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// ingress-nginx's from-to-www-redirect `Location` (its `ngx_srv_redirect.lua`): the scheme
/// and port the client used (a trusted proxy's `X-Forwarded-Proto` / `-Port`, else this
/// connection's scheme and listener port), always written, and the request target without one
/// trailing `/`.
fn nginx_www_location(
    redirect: &crate::proxy::route::Redirect,
    request: &Request<ClientBody>,
    request_host: &str,
    (connection, forwarded): (&Connection, &Forwarded),
    target: &str,
) -> String {
    let fields = request.headers();
    let scheme = forwarded.proxy_scheme(fields).and_then(|s| std::str::from_utf8(s).ok());
    let scheme = scheme.unwrap_or(connection.scheme);
    let port =
        forwarded.proxy_port(fields).map_or_else(|| connection.listener.port().to_string(), str::to_owned);
    let host = redirect.host().unwrap_or_else(|| crate::tls::resolver::strip_port(request_host));
    let target = target.strip_suffix('/').unwrap_or(target);
    format!("{scheme}://{host}:{port}{target}")
}

/// The phases in order; each returns the early answer or what the next one needs.
async fn route_and_forward<'s>(
    mut request: Request<ClientBody>,
    connection: &Connection,
    client: &RequestClient<'_>,
    snapshot: &'s Arc<Snapshot>,
    outcome: &mut Outcome<'s>,
) -> Response<ProxyBody> {
    if let Some(response) =
        tls_policy::before_request(&request, &snapshot.tls, connection.tls.get(), &client.forwarded)
    {
        return response;
    }
    let client_certificate =
        match tls_policy::client_certificate(&request, &snapshot.tls, connection.tls.get()) {
            ControlFlow::Continue(client_certificate) => client_certificate,
            ControlFlow::Break(answer) => return answer,
        };
    let host = headers::request_host(&request).unwrap_or("").to_owned();
    let (route, group) =
        match choose_route(&request, &host, (connection, &client.forwarded), snapshot, outcome) {
            ControlFlow::Continue(chosen) => chosen,
            ControlFlow::Break(answer) => return answer,
        };
    let session = connection.tls.get();
    let forced = route.https_redirect.as_ref();
    if let Some(answer) =
        tls_policy::route_redirect(&request, forced, &snapshot.tls, session, &client.forwarded)
    {
        return answer;
    }
    // A CORS preflight is answered before the access checks, as nginx's rewrite phase comes
    // before its access phase: browsers send it without credentials.
    if let Some(cors) = &route.cors {
        outcome.origin = request.headers().get(http::header::ORIGIN).cloned();
        if let Some(answer) = cors.preflight(request.method(), request.headers()) {
            return answer;
        }
    }
    let (limit, admitted) = match admit(&request, route, client.ip, connection, snapshot) {
        ControlFlow::Continue(admitted) => admitted,
        ControlFlow::Break(answer) => return answer,
    };
    let granted =
        match authenticate(&mut request, route, connection, client, (&host, snapshot.generation)).await {
            ControlFlow::Continue(granted) => granted,
            ControlFlow::Break(answer) => return answer,
        };

    // Prepare: the client's fields as they go upstream; the client's map itself stays as it
    // came.
    let upgrade = headers::upgrade_request(request.headers());
    let client_upgrade = upgrade.as_ref().and_then(|_| ClientUpgrade::take(&mut request));
    let (parts, incoming) = request.into_parts();
    let upstream_path = route.rewrite_path_and_query(path_and_query(&parts.uri));
    let upstream_headers = headers::UpstreamHeaders::new(&parts.headers, &client.forwarded, &host, upgrade)
        .with_changes(route.request_headers.as_ref())
        .with_client_certificate(client_certificate.map(|c| c.headers.as_slice()));
    let body = RequestBody::new(incoming, limit);
    if let Err(e) = body.prefetch(group.config.buffering.request_bytes).await {
        tracing::debug!(error = %e, "request body refused before forwarding");
        return error(StatusCode::BAD_REQUEST, "malformed request body");
    }
    if !h1_client::valid_target(&upstream_path) {
        return error(StatusCode::BAD_REQUEST, "request target cannot be forwarded");
    }
    if client_upgrade.is_none() {
        let original = mirror::Original { method: &parts.method, target: &upstream_path, host: &host };
        mirror::copy(route, original, (&upstream_headers, &body), connection, snapshot);
    }
    let exchange = Exchange {
        group,
        outgoing: Outgoing {
            method: &parts.method,
            target: &upstream_path,
            headers: &upstream_headers,
            framing: RequestFraming::of(body.is_empty(), body.size_hint()),
        },
        request_id: upstream_headers.request_id().clone(),
        hash_key: group
            .config
            .hash_on
            .as_ref()
            .and_then(|on| balance::hash_key(on, &parts.headers, client.ip, &parts.uri)),
        timeout: route.timeout.unwrap_or(Duration::from_millis(group.config.timeouts.request_ms)),
        user_agent: parts.headers.get(USER_AGENT),
        affinity: pin_by_affinity(group, &parts.headers),
        body,
        client_upgrade: client_upgrade.map(|client| Upgrading::new(client, connection, snapshot)),
    };
    group.retry_budget.deposit();
    let response = forward(exchange, connection, snapshot, outcome).await;
    let sent = error_page::Sent { parts: &parts, headers: &upstream_headers, client, host: &host };
    let response = error_page::intercept(response, route, sent, connection, snapshot, outcome).await;
    let mut response = admitted.until_sent(response);
    if let Some(granted) = granted {
        set_auth_cookies(&mut response, granted);
    }
    response
}

/// Route: the route for this host, method, path and headers, and its backend group. A
/// redirect route answers here.
fn choose_route<'s>(
    request: &Request<ClientBody>,
    host: &str,
    (connection, forwarded): (&Connection, &Forwarded),
    snapshot: &'s Snapshot,
    outcome: &mut Outcome<'s>,
) -> Phase<(&'s Route, &'s BackendGroup)> {
    let uri = request.uri();
    let Some(route) = snapshot.routes.find(
        connection.listener_index,
        host,
        request.method(),
        uri.path(),
        uri.query(),
        request.headers(),
    ) else {
        return ControlFlow::Break(error(StatusCode::NOT_FOUND, "no route for this host and path"));
    };
    outcome.labels = Some(route.labels.clone());
    outcome.route = Some(route);
    let backend_index = match &route.action {
        RouteAction::Redirect(redirect) => {
            let upstream_path = route.rewrite_path_and_query(path_and_query(request.uri()));
            let mut response = Response::new(body::empty());
            *response.status_mut() = redirect.status();
            let location = if route.redirect_keeps_port {
                nginx_www_location(redirect, request, host, (connection, forwarded), &upstream_path)
            } else {
                redirect.location(connection.scheme, host, &upstream_path)
            };
            let Ok(location) = HeaderValue::from_str(&location) else {
                return ControlFlow::Break(error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "redirect target is not a valid header",
                ));
            };
            response.headers_mut().insert(LOCATION, location);
            return ControlFlow::Break(response);
        }
        RouteAction::Respond(status) => {
            let mut response = Response::new(body::empty());
            *response.status_mut() = *status;
            return ControlFlow::Break(response);
        }
        RouteAction::Backend(index) => *index,
    };
    match snapshot.backends.get(backend_index) {
        Some(group) => ControlFlow::Continue((route, group)),
        None => ControlFlow::Break(error(StatusCode::INTERNAL_SERVER_ERROR, "route names a missing backend")),
    }
}

/// Admit: what the route lets in. A client address outside its source ranges is refused
/// (403, counted), then one over its rate limits (the configured status, counted); then the
/// body size limit (0: unlimited) is returned with what the response holds of the limits, and
/// an announced body over it is refused before anything is read.
fn admit(
    request: &Request<ClientBody>,
    route: &Route,
    client_ip: IpAddr,
    connection: &Connection,
    snapshot: &Snapshot,
) -> Phase<(u64, Admitted)> {
    if let Some(ranges) = &route.source_ranges
        && !ranges.admits(client_ip)
    {
        let answer = error(StatusCode::FORBIDDEN, "this client address may not use this route");
        return ControlFlow::Break(denied(connection, route, Denial::SourceRange, answer));
    }
    let admitted =
        match route.rate_limit.as_deref().map(|l| limited(l, route, client_ip, connection, &snapshot.limits))
        {
            None => Admitted::default(),
            Some(ControlFlow::Continue(admitted)) => admitted,
            Some(ControlFlow::Break(answer)) => return ControlFlow::Break(answer),
        };
    let limit = route.max_body_bytes.unwrap_or(snapshot.limits.max_body_bytes);
    if let Some(length) = request.headers().get(CONTENT_LENGTH).and_then(|v| parse_length(v.as_bytes()))
        && limit > 0
        && length > limit
    {
        return ControlFlow::Break(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large for this route",
        ));
    }
    ControlFlow::Continue((limit, admitted))
}

/// What an admitted request keeps of its route's rate limit until its response is sent.
#[derive(Default)]
struct Admitted {
    in_progress: Option<InProgress<'static>>,
    /// Response bytes per second after the first bytes (the second number).
    bandwidth: Option<(u64, u64)>,
}

impl Admitted {
    /// The response, holding the request's place among its client's requests in progress
    /// until sent, at the route's bandwidth.
    fn until_sent(self, response: Response<ProxyBody>) -> Response<ProxyBody> {
        if self.in_progress.is_none() && self.bandwidth.is_none() {
            return response;
        }
        response.map(|body| match self.bandwidth {
            Some((rate, after)) => Held::new(Throttled::new(body, rate, after), self.in_progress).boxed(),
            None => Held::new(body, self.in_progress).boxed(),
        })
    }
}

/// The client's rate limits on this route (node-wide): refused with the configured status,
/// counted, or admitted.
fn limited(
    limit: &RateLimitConfig,
    route: &Route,
    client_ip: IpAddr,
    connection: &Connection,
    limits: &crate::config::Limits,
) -> Phase<Admitted> {
    let bandwidth = (limit.response_bytes_per_second > 0)
        .then_some((limit.response_bytes_per_second, limit.response_rate_after_bytes));
    let (status, why) = match Limiter::node().admit(limit, &route.labels.route, client_ip) {
        Ok(in_progress) => return ControlFlow::Continue(Admitted { in_progress, bandwidth }),
        Err(Refusal::Requests) => (limits.rate_limit_status, Denial::RateLimit),
        Err(Refusal::Connections) => (limits.connection_limit_status, Denial::ConnectionLimit),
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let answer = error(status, "too many requests from this client address");
    ControlFlow::Break(denied(connection, route, why, answer))
}

/// Authenticate: the route's access rules; a refusal is answered here and counted. What the
/// external auth service grants is set on the request (replacing the client's fields).
async fn authenticate(
    request: &mut Request<ClientBody>,
    route: &Route,
    connection: &Connection,
    client: &RequestClient<'_>,
    (host, generation): (&str, u64),
) -> Phase<Option<Granted>> {
    let Some(access) = &route.access else { return ControlFlow::Continue(None) };
    let context = AuthContext {
        scheme: connection.scheme,
        host,
        // The real client: the auth service sees what the backend would.
        client: SocketAddr::new(client.ip, connection.client.port()),
        forwarded: &client.forwarded,
        generation,
    };
    match access.check(request, &context).await {
        Ok(mut granted) => {
            for (name, value) in granted.request_fields.drain(..) {
                request.headers_mut().insert(name, value);
            }
            ControlFlow::Continue(Some(granted))
        }
        Err(refusal) => {
            let mut answer = if refusal.status == StatusCode::FOUND {
                let mut redirect = Response::new(body::empty());
                *redirect.status_mut() = StatusCode::FOUND;
                redirect
            } else {
                error(refusal.status, refusal.message)
            };
            for (name, value) in refusal.fields {
                answer.headers_mut().append(name, value);
            }
            ControlFlow::Break(denied(connection, route, refusal.denial, answer))
        }
    }
}

/// The auth service's cookies: on 2xx and 3xx responses, or on every one when the route says
/// so (ingress-nginx's `add_header Set-Cookie` with or without `always`).
fn set_auth_cookies(response: &mut Response<ProxyBody>, granted: Granted) {
    let status = response.status().as_u16();
    if granted.always_set_cookie || (200..400).contains(&status) {
        for cookie in granted.cookies {
            response.headers_mut().append(SET_COOKIE, cookie);
        }
    }
}

/// Cookie affinity before the first attempt.
struct Affinity {
    /// The endpoint a valid cookie pins the first attempt to.
    pinned: Option<usize>,
    /// The response carries a new cookie.
    issue_cookie: bool,
}

/// In balanced mode an unavailable pinned endpoint gives up its client (re-pinned with a new
/// cookie); in persistent mode the client stays while the endpoint exists.
fn pin_by_affinity(group: &BackendGroup, headers: &http::HeaderMap) -> Affinity {
    let Some(affinity) = &group.affinity else { return Affinity { pinned: None, issue_cookie: false } };
    match affinity.pinned(headers) {
        Pin::Endpoint(i)
            if affinity.mode() == AffinityMode::Persistent || group.endpoints[i].is_available(now_ms()) =>
        {
            Affinity { pinned: Some(i), issue_cookie: false }
        }
        _ => Affinity { pinned: None, issue_cookie: true },
    }
}

/// A prepared request and what its attempts need.
struct Exchange<'a> {
    group: &'a BackendGroup,
    outgoing: Outgoing<'a>,
    body: RequestBody,
    request_id: HeaderValue,
    hash_key: Option<u64>,
    timeout: Duration,
    user_agent: Option<&'a HeaderValue>,
    affinity: Affinity,
    client_upgrade: Option<Upgrading>,
}

/// A request that asked for an upgrade: its handle on the client connection, and what bounds
/// the tunnel if the backend agrees.
struct Upgrading {
    client: ClientUpgrade,
    send_timeout: Duration,
    metrics: Arc<crate::metrics::WorkerMetrics>,
}

impl Upgrading {
    fn new(client: ClientUpgrade, connection: &Connection, snapshot: &Snapshot) -> Upgrading {
        let send_timeout = Duration::from_millis(snapshot.limits.send_timeout_ms);
        Upgrading { client, send_timeout, metrics: connection.metrics.clone() }
    }
}

/// A response a status condition (`retries.on: [http_503]`...) set aside while the next
/// endpoint is asked: the answer if no later attempt answers.
type SetAside =
    (Response<pool::UpstreamBody>, usize, bool, (InflightGuard, tokio::sync::OwnedSemaphorePermit));

/// Choose an endpoint, attempt, and go to the next endpoint on the backend's retry conditions
/// while that is safe, within the budget and `retries.timeout_ms`.
async fn forward(
    mut exchange: Exchange<'_>,
    connection: &Connection,
    snapshot: &Snapshot,
    outcome: &mut Outcome<'_>,
) -> Response<ProxyBody> {
    let group = exchange.group;
    let retries = &group.config.retries;
    let first_started = now_ms();
    let mut tried: Vec<usize> = Vec::new();
    // The answer when no attempt succeeds, made only then: built up front, its text and
    // header map cost about 2,000 instructions on every request (4% under HTTP/2).
    let mut last_error: Option<Response<ProxyBody>> = None;
    let mut set_aside: Option<SetAside> = None;
    for attempt in 0..=retries.attempts {
        if attempt > 0 {
            if retries.timeout_ms.is_some_and(|bound| now_ms().saturating_sub(first_started) >= bound)
                || !group.retry_budget.withdraw()
            {
                break;
            }
            connection.metrics.retry(&group.label);
        }
        let was_pinned = exchange.affinity.pinned.is_some();
        let Some(index) = choose_endpoint(&mut exchange, &tried) else { break };
        tried.push(index);
        let endpoint = &group.endpoints[index];
        outcome.upstream = Some(endpoint.address);
        let cap = pool::cap_for(group, endpoint.address, snapshot.generation);
        let Ok(slot) = cap.acquire_owned().await else { break };
        let inflight = endpoint.start_request();

        let started = Instant::now();
        let sent = bounded(
            &exchange,
            pool::send(group, endpoint.address, snapshot.generation, &exchange.outgoing, &exchange.body),
        )
        .await;
        match sent {
            Some(Ok(response)) => {
                endpoint.observe_latency(started.elapsed(), now_ms());
                if response.status().is_server_error() {
                    endpoint.record_failure(&group.config.outlier, now_ms());
                } else {
                    endpoint.record_success();
                }
                let first_pinned = was_pinned && attempt == 0;
                if attempt < retries.attempts && may_go_again(&exchange, Again::Status(response.status())) {
                    set_aside = Some((response, index, first_pinned, (inflight, slot)));
                    continue;
                }
                return answer(&mut exchange, response, index, first_pinned, (inflight, slot)).await;
            }
            Some(Err(e)) => {
                drop(inflight);
                set_aside = None;
                match attempt_failed(&exchange, &e, endpoint, connection) {
                    ControlFlow::Continue(answer) => last_error = Some(answer),
                    ControlFlow::Break(answer) => return answer,
                }
                if !may_go_again(&exchange, Again::Failed(&e)) {
                    break;
                }
            }
            None => {
                endpoint.record_failure(&group.config.outlier, now_ms());
                set_aside = None;
                last_error = Some(error(StatusCode::GATEWAY_TIMEOUT, "the backend did not answer in time"));
                if !may_go_again(&exchange, Again::TimedOut) {
                    break;
                }
            }
        }
    }
    match set_aside {
        Some((response, index, first_pinned, hold)) => {
            answer(&mut exchange, response, index, first_pinned, hold).await
        }
        None => last_error.unwrap_or_else(|| {
            error(StatusCode::SERVICE_UNAVAILABLE, "no healthy endpoint for this backend")
        }),
    }
}

/// How an attempt ended, for the retry conditions.
enum Again<'e> {
    Status(StatusCode),
    Failed(&'e pool::UpstreamError),
    TimedOut,
}

/// Whether the request may go to the next endpoint after `outcome`, by the backend's
/// `retries.on` (nginx's `proxy_next_upstream`): the condition is listed, the body is still
/// ours to send, and the request is idempotent, or never reached the backend, or
/// `non_idempotent` is listed.
fn may_go_again(exchange: &Exchange<'_>, outcome: Again<'_>) -> bool {
    let on = &exchange.group.config.retries.on;
    let (condition, reached) = match outcome {
        Again::Status(status) => {
            let listed = on.iter().any(|c| c.status() == Some(status.as_u16()));
            if !listed {
                return false;
            }
            (RetryOn::Error, true)
        }
        Again::Failed(e) if e.is_connect() => (RetryOn::Error, false),
        Again::Failed(e) if e.is_invalid_response() => (RetryOn::InvalidHeader, true),
        Again::Failed(_) => (RetryOn::Error, true),
        Again::TimedOut => (RetryOn::Timeout, true),
    };
    let status_condition = matches!(outcome, Again::Status(_));
    (status_condition || on.contains(&condition))
        && exchange.body.replayable()
        && (!reached || is_idempotent(exchange.outgoing.method) || on.contains(&RetryOn::NonIdempotent))
}

/// An attempt's wait for the response head, `None` when it ran out. With `timeouts.read_ms`
/// or `send_ms` the bound is nginx's: a gap since the upload last moved (`send_ms` while it goes
/// on, else `read_ms`), then `read_ms` from the moment it ended, so a long upload is not cut
/// while it flows; otherwise the route's deadline for the whole exchange.
async fn bounded<T>(exchange: &Exchange<'_>, send: impl std::future::Future<Output = T>) -> Option<T> {
    let timeouts = &exchange.group.config.timeouts;
    if timeouts.read_ms.is_none() && timeouts.send_ms.is_none() {
        return tokio::time::timeout(exchange.timeout, send).await.ok();
    }
    let read_ms = timeouts.read_ms.unwrap_or(exchange.timeout.as_millis() as u64);
    let send_ms = timeouts.send_ms.unwrap_or(read_ms);
    let started = now_ms();
    let mut send = std::pin::pin!(send);
    loop {
        // Counted from this attempt's start at the earliest: the body may have moved (or
        // ended, for a body held whole) before it, while it was buffered or a retry waited.
        let deadline = match exchange.body.progress() {
            Some((moved, false)) => moved.max(started) + send_ms,
            Some((ended, true)) => ended.max(started) + read_ms,
            None => started + read_ms,
        };
        let now = now_ms();
        if deadline <= now {
            return None;
        }
        if let Ok(sent) = tokio::time::timeout(Duration::from_millis(deadline - now), &mut send).await {
            return Some(sent);
        }
    }
}

/// Choose an endpoint: the affinity cookie's for the first attempt, else the balancer's among
/// those not tried yet. A pinned attempt that fails re-pins the client when the backend says
/// so (`change_on_failure`).
fn choose_endpoint(exchange: &mut Exchange<'_>, tried: &[usize]) -> Option<usize> {
    let group = exchange.group;
    if let Some(index) = exchange.affinity.pinned.take() {
        if let Some(affinity) = &group.affinity
            && affinity.config.change_on_failure
        {
            // If this attempt fails, the retry re-pins the client with a new cookie.
            exchange.affinity.issue_cookie = true;
        }
        return Some(index);
    }
    group.balancer.pick(&group.endpoints, exchange.hash_key, now_ms(), tried)
}

/// A failed attempt: `Break` when the failure is the client's (its body) and ends the request,
/// else the answer to give if no retry succeeds. The endpoint's passive health hears of it.
fn attempt_failed(
    exchange: &Exchange<'_>,
    e: &pool::UpstreamError,
    endpoint: &crate::proxy::upstream::endpoint::Endpoint,
    connection: &Connection,
) -> Phase<Response<ProxyBody>> {
    let group = exchange.group;
    let cause: &(dyn std::error::Error + 'static) = e;
    if body::find_cause::<BodyTooLarge>(cause).is_some() {
        return ControlFlow::Break(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large for this route",
        ));
    }
    if body::find_cause::<BadRequestBody>(cause).is_some() {
        return ControlFlow::Break(error(StatusCode::BAD_REQUEST, "malformed request body"));
    }
    let connect_failed = e.is_connect();
    if connect_failed {
        connection.metrics.connect_error(&group.label);
    }
    endpoint.record_failure(&group.config.outlier, now_ms());
    tracing::debug!(backend = %group.name, endpoint = %endpoint.address, error = %e, connect_failed, "upstream attempt failed");
    ControlFlow::Continue(error(
        StatusCode::BAD_GATEWAY,
        if connect_failed { "cannot connect to the backend" } else { "the backend failed to answer" },
    ))
}

/// Finish the response: a 101 the client asked for becomes a tunnel; otherwise hop-by-hop
/// fields go, the affinity cookie and the request id are added, and the body keeps `hold`
/// (load accounting and the connection slot) until it has been sent.
fn finish_response<H: Send + Sync + Unpin + 'static>(
    exchange: &mut Exchange<'_>,
    response: Response<pool::UpstreamBody>,
    index: usize,
    first_pinned: bool,
    hold: (InflightGuard, H),
) -> Response<ProxyBody> {
    let request_id = exchange.request_id.clone();
    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(upgrading) = exchange.client_upgrade.take()
    {
        let (mut head, upstream_upgrade) = pool::upgrade(response);
        if let Some(upstream_upgrade) = upstream_upgrade {
            tokio::spawn(tunnel(upgrading, upstream_upgrade, hold));
        }
        head.headers.insert(X_REQUEST_ID.clone(), request_id);
        return Response::from_parts(head, body::empty());
    }
    let (mut head, upstream_body) = response.into_parts();
    headers::strip_hop_by_hop(&mut head.headers);
    if let Some(affinity) = &exchange.group.affinity
        && exchange.affinity.issue_cookie
        && !first_pinned
        && let Some((name, value)) = affinity.pin_field(index, exchange.user_agent.map(|v| v.as_bytes()))
    {
        head.headers.append(name, value);
    }
    // This hop speaks its own version to the client, whatever the backend spoke.
    head.version = Version::HTTP_11;
    head.headers.insert(X_REQUEST_ID.clone(), request_id);
    let body = match exchange.group.config.timeouts.read_ms {
        Some(gap_ms) => Held::new(body::ReadGap::new(upstream_body, gap_ms), hold).boxed(),
        None => Held::new(upstream_body, hold).boxed(),
    };
    Response::from_parts(head, body)
}

/// The finished response, with response buffering (`buffering.response_bytes`) read ahead
/// before it goes to the client.
async fn answer<H: Send + Sync + Unpin + 'static>(
    exchange: &mut Exchange<'_>,
    response: Response<pool::UpstreamBody>,
    index: usize,
    first_pinned: bool,
    hold: (InflightGuard, H),
) -> Response<ProxyBody> {
    let limit = exchange.group.config.buffering.response_bytes;
    let upgrade = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let response = finish_response(exchange, response, index, first_pinned, hold);
    if limit == 0 || upgrade {
        return response;
    }
    let (head, body) = response.into_parts();
    Response::from_parts(head, body::prefilled(body, limit).await)
}

/// Copies bytes both ways between the upgraded client and upstream connections (WebSocket and
/// other Upgrade protocols), until both close or a write to either waits past
/// `limits.send_timeout_ms` (a side that stopped reading; counted). No idle bound: WebSockets
/// stay open while quiet. It references no snapshot, so configuration changes never cut it.
async fn tunnel<H: Send + 'static>(upgrading: Upgrading, upstream: pool::UpstreamUpgrade, hold: H) {
    let Upgrading { client, send_timeout, metrics } = upgrading;
    let Some(mut client) = client.connection().await else {
        tracing::debug!("the client connection ended before its upgrade");
        return;
    };
    let bounds = passthrough::CopyBounds { idle: None, send_timeout };
    let copied = match upstream {
        // What the backend sent right after its 101 came in the same read as the head.
        pool::UpstreamUpgrade::H1 { mut stream, early } => {
            passthrough::copy_both_ways(&mut client, &mut stream, (early.to_vec(), Vec::new()), bounds).await
        }
        pool::UpstreamUpgrade::Hyper(upgrade) => match upgrade.await {
            Ok(upstream) => {
                let mut upstream = hyper_util::rt::TokioIo::new(upstream);
                passthrough::copy_both_ways(&mut client, &mut upstream, (Vec::new(), Vec::new()), bounds)
                    .await
            }
            Err(e) => {
                tracing::debug!(error = %e, "upstream upgrade failed");
                return;
            }
        },
    };
    match copied {
        Ok(end @ (passthrough::CopyEnd::ClientSendTimeout | passthrough::CopyEnd::UpstreamSendTimeout)) => {
            tracing::debug!(?end, "tunnel send timed out");
            metrics.send_timeout(crate::metrics::SendTimeout::Tunnel);
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "tunnel closed with an error"),
    }
    drop(hold);
}
