//! The admin server: health and readiness probes, Prometheus metrics, the live status and
//! configuration as JSON (`sluice status` reads it), on its own thread and runtime so it never
//! competes with the workers' request path. Loopback by default.

pub mod sources;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use http::{Method, Request, Response, StatusCode, header::CONTENT_TYPE};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::{
    dataplane::CountersReader,
    metrics::{Metrics, ReloadStats},
    now_ms,
    proxy::{
        body::{self, ProxyBody},
        route::RouteAction,
        snapshot::Published,
    },
};

/// The dashboard: one self-contained page (inline CSS and JS) that polls `/api/v1/status` and
/// `/metrics`.
const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// What the admin server reports on.
pub struct AdminState {
    pub published: Published,
    pub workers: usize,
    pub listeners: Vec<SocketAddr>,
    /// XDP was asked for (enabled with interfaces).
    pub xdp_wanted: bool,
    /// Interfaces XDP is attached to.
    pub xdp_interfaces: Vec<String>,
    pub xdp_counters: Option<CountersReader>,
    pub reloads: Arc<ReloadStats>,
    /// Set once the node serves; cleared when it starts shutting down.
    pub serving: AtomicBool,
    /// Set on SIGTERM: not ready from then on, whatever else says (a configuration applied
    /// during the shutdown delay must not make the node ready again).
    pub draining: AtomicBool,
    pub metrics: Arc<Metrics>,
}

impl AdminState {
    /// Ready: serving, not draining, and the kernel path attached when it was asked for.
    pub fn ready(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
            && !self.draining.load(Ordering::Relaxed)
            && (!self.xdp_wanted || !self.xdp_interfaces.is_empty())
    }

    pub fn status(&self) -> Value {
        let snapshot = self.published.load();
        let now = now_ms();
        let backends: Vec<Value> = snapshot
            .backends
            .iter()
            .map(|group| {
                let endpoints: Vec<Value> = group
                    .endpoints
                    .iter()
                    .map(|e| {
                        json!({
                            "address": e.address.to_string(),
                            "weight": e.weight(),
                            "ready": e.is_ready(),
                            "check_healthy": e.check_healthy(),
                            "ejected": e.is_ejected(now),
                            "available": e.is_available(now),
                            "inflight": e.inflight(),
                            "latency_ewma_ms": e.ewma_ns() / 1e6,
                        })
                    })
                    .collect();
                json!({"name": group.name, "balance": format!("{:?}", group.config.balance), "endpoints": endpoints})
            })
            .collect();
        let routes: Vec<Value> = snapshot
            .routes
            .routes()
            .map(|r| {
                let backend = match r.action {
                    RouteAction::Backend(i) => snapshot.backends.get(i).map(|g| g.name.as_str()),
                    RouteAction::Redirect(_) | RouteAction::Respond(_) => None,
                };
                json!({
                    "name": r.name,
                    "virtual_host": &*r.labels.virtual_host,
                    "backend": backend,
                    "redirect": matches!(r.action, RouteAction::Redirect(_)),
                    "direct_response": match r.action {
                        RouteAction::Respond(status) => Some(status.as_u16()),
                        _ => None,
                    },
                })
            })
            .collect();
        // Connections per worker, in worker order (what the dashboard draws as bars).
        let worker_connections: Vec<Value> = self
            .metrics
            .workers()
            .iter()
            .enumerate()
            .map(|(id, w)| json!({"worker": id, "accepted": w.accepted(), "active": w.active_connections()}))
            .collect();
        let xdp = match &self.xdp_counters {
            Some(reader) => match reader.read() {
                Ok(counters) => {
                    let map: serde_json::Map<String, Value> =
                        counters.iter().map(|(stat, value)| (stat.name().to_owned(), json!(value))).collect();
                    json!({"attached": self.xdp_interfaces, "counters": map})
                }
                Err(e) => json!({"attached": self.xdp_interfaces, "error": e.to_string()}),
            },
            None => json!({"attached": [], "wanted": self.xdp_wanted}),
        };
        json!({
            "ready": self.ready(),
            "draining": self.draining.load(Ordering::Relaxed),
            "generation": snapshot.generation,
            "workers": self.workers,
            "worker_connections": worker_connections,
            "listeners": self.listeners.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
            "routes": routes,
            "backends": backends,
            "xdp": xdp,
            "reloads": {
                "succeeded": self.reloads.succeeded.load(Ordering::Relaxed),
                "failed": self.reloads.failed.load(Ordering::Relaxed),
                "last_success_unix": self.reloads.last_success_unix.load(Ordering::Relaxed),
            },
        })
    }
}

/// How long a connection open when the server stops may still be read and answered before
/// it closes once idle.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// The running admin server; stops on drop.
pub struct AdminServer {
    shutdown: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
    /// A duplicate of the listening socket, for an upgrade to take over.
    handover: std::os::fd::OwnedFd,
}

impl AdminServer {
    /// Binds `addr` now (a taken port is an error to the caller) and serves on a new thread.
    pub fn start(addr: SocketAddr, state: Arc<AdminState>) -> std::io::Result<AdminServer> {
        Self::start_inherited(addr, state, None, None)
    }

    /// `start`, on the admin socket an upgrade handed over when there is one; with `gate`,
    /// accepting only once it turns true (the old process answers probes until then).
    pub fn start_inherited(
        addr: SocketAddr,
        state: Arc<AdminState>,
        inherited: Option<&crate::handover::Inherited>,
        gate: Option<watch::Receiver<bool>>,
    ) -> std::io::Result<AdminServer> {
        let listener = crate::handover::listener_for(inherited, "admin", addr, std::net::TcpListener::bind)?;
        Self::serve(listener, "sluice-admin", gate, move |request| route(&state, request))
    }

    /// The listening socket, for the process an upgrade starts.
    pub fn handover_socket(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.handover)
    }

    /// The metrics listener: `/metrics` only (no configuration, no status), for Prometheus off
    /// the node's loopback; with a token, a scrape must carry `Authorization: Bearer TOKEN`.
    pub fn start_metrics(
        addr: SocketAddr,
        state: Arc<AdminState>,
        token: Option<String>,
    ) -> std::io::Result<AdminServer> {
        Self::start_metrics_inherited(addr, state, token, None, None)
    }

    /// `start_metrics`, on the socket an upgrade handed over when there is one.
    pub fn start_metrics_inherited(
        addr: SocketAddr,
        state: Arc<AdminState>,
        token: Option<String>,
        inherited: Option<&crate::handover::Inherited>,
        gate: Option<watch::Receiver<bool>>,
    ) -> std::io::Result<AdminServer> {
        let listener =
            crate::handover::listener_for(inherited, "metrics", addr, std::net::TcpListener::bind)?;
        Self::serve(listener, "sluice-metrics", gate, move |request| {
            metrics_route(&state, token.as_deref(), request)
        })
    }

    fn serve(
        listener: std::net::TcpListener,
        thread_name: &str,
        gate: Option<watch::Receiver<bool>>,
        route: impl Fn(Request<Incoming>) -> Response<ProxyBody> + Send + Sync + 'static,
    ) -> std::io::Result<AdminServer> {
        let route = Arc::new(route);
        let handover = listener.try_clone()?.into();
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (shutdown, mut shutdown_rx) = watch::channel(false);
        let thread = std::thread::Builder::new().name(thread_name.into()).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => return tracing::error!(error = %e, "cannot start the admin runtime"),
            };
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
                if let Some(mut gate) = gate {
                    tokio::select! {
                        _ = shutdown_rx.changed() => return,
                        opened = gate.wait_for(|open| *open) => if opened.is_err() { return },
                    }
                }
                let mut connections = tokio::task::JoinSet::new();
                loop {
                    tokio::select! {
                        _ = shutdown_rx.changed() => break,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let route = route.clone();
                            let mut shutdown = shutdown_rx.clone();
                            connections.spawn(async move {
                                let service = service_fn(move |request| {
                                    let response = route(request);
                                    async move { Ok::<_, Infallible>(response) }
                                });
                                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                                let connection = builder.serve_connection(TokioIo::new(stream), service);
                                tokio::pin!(connection);
                                tokio::select! {
                                    _ = connection.as_mut() => {}
                                    _ = shutdown.changed() => {
                                        // Accepted just before the stop, its request may not
                                        // be read yet: hyper counts that idle and would close
                                        // it unanswered (an upgrade's probe, seen under load).
                                        // It gets a moment to be read and answered first.
                                        let grace = tokio::time::timeout(STOP_GRACE, connection.as_mut());
                                        if grace.await.is_err() {
                                            connection.as_mut().graceful_shutdown();
                                            let _ = connection.await;
                                        }
                                    }
                                }
                            });
                        }
                    }
                }
                // A probe or scrape in flight gets its answer (an upgrade stops this server
                // while the new process already answers on the same socket); idle
                // connections close within `STOP_GRACE`.
                drop(listener);
                let drained = async { while connections.join_next().await.is_some() {} };
                let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drained).await;
            });
        })?;
        Ok(AdminServer { shutdown, thread: Some(thread), addr, handover })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn json_response(status: StatusCode, value: &Value) -> Response<ProxyBody> {
    let mut response = Response::new(body::text(format!("{value:#}\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}

fn text_response(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(body::text(text));
    *response.status_mut() = status;
    response
}

fn route(state: &AdminState, request: Request<Incoming>) -> Response<ProxyBody> {
    if request.method() != Method::GET {
        return text_response(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match request.uri().path() {
        "/healthz" => text_response(StatusCode::OK, "ok\n"),
        "/readyz" if state.ready() => text_response(StatusCode::OK, "ready\n"),
        "/readyz" => text_response(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        "/api/v1/status" => json_response(StatusCode::OK, &state.status()),
        "/api/v1/config" => json_response(StatusCode::OK, &redacted_config(state)),
        "/dashboard" => {
            let mut response = text_response(StatusCode::OK, DASHBOARD_HTML);
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, http::HeaderValue::from_static("text/html; charset=utf-8"));
            // Nothing but this page and its own API: no external scripts, styles, fonts or images.
            headers.insert(
                http::header::CONTENT_SECURITY_POLICY,
                http::HeaderValue::from_static(
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                     connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'",
                ),
            );
            headers.insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
            response
        }
        "/metrics" => metrics_response(state),
        _ => text_response(
            StatusCode::NOT_FOUND,
            "not found; try /healthz, /readyz, /metrics, /api/v1/status, /api/v1/config, /dashboard\n",
        ),
    }
}

fn metrics_response(state: &AdminState) -> Response<ProxyBody> {
    let mut response = Response::new(body::text(state.metrics.render()));
    response.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// The metrics listener's one page, behind the bearer token when there is one.
fn metrics_route(state: &AdminState, token: Option<&str>, request: Request<Incoming>) -> Response<ProxyBody> {
    if let Some(token) = token
        && !bearer_matches(request.headers(), token)
    {
        let mut response = text_response(StatusCode::UNAUTHORIZED, "a bearer token is required\n");
        response
            .headers_mut()
            .insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
        return response;
    }
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => metrics_response(state),
        (&Method::GET, _) => text_response(StatusCode::NOT_FOUND, "only /metrics here\n"),
        _ => text_response(StatusCode::METHOD_NOT_ALLOWED, "GET only\n"),
    }
}

/// `Authorization: Bearer TOKEN` with exactly `token`, compared in time independent of where
/// the first difference is.
fn bearer_matches(headers: &http::HeaderMap, token: &str) -> bool {
    let Some(sent) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (sent, token) = (sent.trim().as_bytes(), token.as_bytes());
    sent.len() == token.len() && sent.iter().zip(token).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Field names whose values are secrets: shown as "<redacted>" by `/api/v1/config`.
fn is_secret(field: &str) -> bool {
    field == "key_pem"
        || field.ends_with("_key")
        || field == "key"
        || field.contains("secret")
        || field.contains("password")
        || field.contains("token")
}

fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (field, value) in map.iter_mut() {
                if is_secret(field) && !value.is_null() {
                    *value = Value::String("<redacted>".into());
                } else {
                    redact(value);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// The serving configuration as JSON with key material replaced.
pub fn redacted_config(state: &AdminState) -> Value {
    let snapshot = state.published.load();
    let mut value =
        serde_json::to_value(&*snapshot.config).unwrap_or_else(|e| json!({"error": e.to_string()}));
    redact(&mut value);
    json!({"generation": snapshot.generation, "config": value})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_must_match_exactly() {
        let with = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::AUTHORIZATION, value.parse().unwrap());
            headers
        };
        assert!(bearer_matches(&with("Bearer s3cret"), "s3cret"));
        assert!(!bearer_matches(&with("Bearer s3cre"), "s3cret"));
        assert!(!bearer_matches(&with("Bearer s3creT"), "s3cret"));
        assert!(!bearer_matches(&with("Basic s3cret"), "s3cret"));
        assert!(!bearer_matches(&http::HeaderMap::new(), "s3cret"));
    }

    #[test]
    fn secrets_are_redacted_at_any_depth() {
        let mut value = json!({"certificates": [{"name": "a", "cert_pem": "CERT", "key_pem": "PRIVATE"}],
                               "affinity": {"cookie_key": "k", "secret": "s"}, "plain": "kept"});
        redact(&mut value);
        let text = value.to_string();
        assert!(!text.contains("PRIVATE") && !text.contains("\"k\"") && !text.contains("\"s\""), "{text}");
        assert!(text.contains("CERT") && text.contains("kept"), "{text}");
    }
}
