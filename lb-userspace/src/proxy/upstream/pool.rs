//! Upstream connections, per worker: each worker thread has its own pools (one per backend
//! group) and its own per-endpoint connection caps, so workers share no pool and take no lock
//! that another worker could hold. Pools survive snapshot swaps while a backend's connection
//! settings stay the same.
//!
//! Plain-text HTTP/1.1 backends are spoken to inline, in the request's task, over this
//! worker's idle keep-alive connections (`http1/client.rs`); HTTP/2 (h2c, or ALPN over TLS) and
//! TLS backends go through hyper's pooled client.

use std::{cell::RefCell, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use tokio::{net::TcpStream, sync::Semaphore};

use super::{
    BackendGroup,
    request_body::{AttemptBody, RequestBody},
};
use crate::{
    FastMap,
    config::BackendProtocol,
    now_ms,
    proxy::http1::client::{self as h1_client, Conn, H1Error, Home, Outgoing},
};

/// The connector adds TLS for backends that have it (`crate::tls::upstream`).
pub type UpstreamClient = Client<crate::tls::upstream::Connector, AttemptBody>;

/// Identity of the settings that shape upstream connections: a random-seeded 64-bit hash of
/// their description, made when a snapshot is built, so the request path neither hashes nor
/// compares the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey(u64);

impl PoolKey {
    pub fn of(description: &str) -> PoolKey {
        static SEED: std::sync::OnceLock<foldhash::quality::RandomState> = std::sync::OnceLock::new();
        PoolKey(std::hash::BuildHasher::hash_one(SEED.get_or_init(Default::default), description))
    }
}

/// One backend group's connections in one worker.
struct Pool {
    key: PoolKey,
    /// hyper's client, for HTTP/2 and TLS backends (built on first use).
    client: Option<UpstreamClient>,
    /// Idle HTTP/1.1 connections per endpoint, most recently used last.
    idle: FastMap<SocketAddr, Vec<Conn>>,
    idle_timeout_ms: u64,
    caps: FastMap<SocketAddr, Arc<Semaphore>>,
    max_per_endpoint: usize,
    generation: u64,
}

#[derive(Default)]
struct WorkerPools {
    pools: FastMap<PoolKey, Pool>,
    generation: u64,
}

thread_local! {
    static POOLS: RefCell<WorkerPools> = RefCell::new(WorkerPools::default());
}

/// True when `group` is spoken to inline (plain-text HTTP/1.1).
fn inline(group: &BackendGroup) -> bool {
    group.config.protocol == BackendProtocol::Http1 && group.tls.is_none()
}

fn build_client(group: &BackendGroup) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(group.connect_timeout()));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_millis(group.config.timeouts.idle_ms))
        .pool_max_idle_per_host(group.config.max_connections_per_endpoint)
        .http2_only(group.config.protocol == BackendProtocol::H2c);
    builder.build(crate::tls::upstream::Connector::new(connector, group.tls.clone(), group.connect_timeout()))
}

/// Runs `f` on this worker's pool for `group`, creating it if needed. `generation` is the
/// snapshot's: pools that no snapshot since the previous one uses are dropped.
fn with_pool<T>(group: &BackendGroup, generation: u64, f: impl FnOnce(&mut Pool) -> T) -> T {
    POOLS.with(|pools| {
        let mut pools = pools.borrow_mut();
        if pools.generation != generation {
            let previous = pools.generation;
            pools.pools.retain(|_, pool| pool.generation >= previous);
            pools.generation = generation;
        }
        if !pools.pools.contains_key(&group.pool_key) {
            let key = group.pool_key;
            let pool = Pool {
                key,
                client: None,
                idle: FastMap::default(),
                idle_timeout_ms: group.config.timeouts.idle_ms,
                caps: FastMap::default(),
                max_per_endpoint: group.config.max_connections_per_endpoint,
                generation,
            };
            pools.pools.insert(key, pool);
        }
        let pool = pools.pools.get_mut(&group.pool_key).expect("inserted above");
        pool.generation = generation;
        f(pool)
    })
}

/// The connection slots of `endpoint` in this worker: a request holds one until its response
/// body has been sent.
pub fn cap_for(group: &BackendGroup, endpoint: SocketAddr, generation: u64) -> Arc<Semaphore> {
    with_pool(group, generation, |pool| {
        let max = pool.max_per_endpoint;
        pool.caps.entry(endpoint).or_insert_with(|| Arc::new(Semaphore::new(max))).clone()
    })
}

/// An idle connection to `endpoint` that is still open, if this worker has one.
fn check_out(group: &BackendGroup, endpoint: SocketAddr, generation: u64) -> (Option<Conn>, PoolKey) {
    with_pool(group, generation, |pool| {
        let (timeout, now) = (pool.idle_timeout_ms, now_ms());
        let found = pool.idle.get_mut(&endpoint).and_then(|idle| {
            while let Some(conn) = idle.pop() {
                if now.saturating_sub(conn.idle_since_ms) < timeout && conn.is_quiet() {
                    return Some(conn);
                }
            }
            None
        });
        (found, pool.key)
    })
}

/// Returns a connection whose response was read to its end to its pool's idle list.
fn check_in(mut conn: Conn) {
    POOLS.with(|pools| {
        let mut pools = pools.borrow_mut();
        let Some(pool) = pools.pools.get_mut(&PoolKey(conn.home.pool_key)) else { return };
        let max = pool.max_per_endpoint;
        let idle = pool.idle.entry(conn.endpoint).or_default();
        if idle.len() < max {
            conn.idle_since_ms = now_ms();
            idle.push(conn);
        }
    });
}

/// Closes this worker's idle connections that timed out or that the backend closed. Each
/// worker runs it periodically, so idle sockets do not linger without traffic.
pub fn reap_idle() {
    POOLS.with(|pools| {
        let mut pools = pools.borrow_mut();
        for pool in pools.pools.values_mut() {
            let (timeout, now) = (pool.idle_timeout_ms, now_ms());
            pool.idle.retain(|_, idle| {
                idle.retain(|conn| now.saturating_sub(conn.idle_since_ms) < timeout && conn.is_quiet());
                !idle.is_empty()
            });
        }
    });
}

fn hyper_client(group: &BackendGroup, generation: u64) -> UpstreamClient {
    with_pool(group, generation, |pool| pool.client.get_or_insert_with(|| build_client(group)).clone())
}

/// Why an attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    H1(#[from] H1Error),
    #[error(transparent)]
    Hyper(#[from] hyper_util::client::legacy::Error),
}

impl UpstreamError {
    /// The attempt never reached the backend.
    pub fn is_connect(&self) -> bool {
        match self {
            UpstreamError::H1(e) => matches!(e, H1Error::Connect(_)),
            UpstreamError::Hyper(e) => e.is_connect(),
        }
    }

    /// The backend answered with something that is not a valid response head (nginx's
    /// `invalid_header`).
    pub fn is_invalid_response(&self) -> bool {
        matches!(self, UpstreamError::H1(H1Error::Protocol(_)))
    }
}

/// A response body from either kind of upstream connection: Sluice's own HTTP/1.1 client
/// (`Left`) or hyper's client (`Right`, h2c and TLS backends).
pub type UpstreamBody = http_body_util::Either<h1_client::ResponseBody, Incoming>;

/// The backend side of a protocol switch (101 Switching Protocols).
pub enum UpstreamUpgrade {
    H1 { stream: TcpStream, early: Bytes },
    Hyper(hyper::upgrade::OnUpgrade),
}

/// Splits a 101 response into its head and the backend's side of the new protocol.
pub fn upgrade(response: Response<UpstreamBody>) -> (http::response::Parts, Option<UpstreamUpgrade>) {
    let (head, body) = response.into_parts();
    match body {
        UpstreamBody::Left(body) => {
            (head, body.into_upgraded().map(|(stream, early)| UpstreamUpgrade::H1 { stream, early }))
        }
        UpstreamBody::Right(body) => {
            let mut response = Response::from_parts(head, body);
            let upgrade = hyper::upgrade::on(&mut response);
            (response.into_parts().0, Some(UpstreamUpgrade::Hyper(upgrade)))
        }
    }
}

/// Sends one attempt of `request` to `endpoint` and returns the response head (its body still
/// streaming). A request that met a keep-alive connection the backend had just closed goes
/// again on a fresh connection, as long as its body is still ours to send.
pub async fn send(
    group: &BackendGroup,
    endpoint: SocketAddr,
    generation: u64,
    request: &Outgoing<'_>,
    body: &RequestBody,
) -> Result<Response<UpstreamBody>, UpstreamError> {
    if inline(group) {
        let (idle, key) = check_out(group, endpoint, generation);
        let home = Home { pool_key: key.0, check_in };
        let timeout = group.connect_timeout();
        let conn = match idle {
            Some(conn) => conn,
            None => Conn::connect(endpoint, home, timeout).await?,
        };
        let response = match h1_client::exchange(conn, request, body.attempt()).await {
            Err(H1Error::Stale) if body.replayable() => {
                let conn = Conn::connect(endpoint, home, timeout).await?;
                h1_client::exchange(conn, request, body.attempt()).await?
            }
            result => result?,
        };
        return Ok(response.map(UpstreamBody::Left));
    }
    let client = hyper_client(group, generation);
    let mut upstream_request = Request::new(body.attempt());
    *upstream_request.method_mut() = request.method.clone();
    *upstream_request.headers_mut() = request.headers.to_map();
    *upstream_request.version_mut() = match group.config.protocol {
        BackendProtocol::Http1 => Version::HTTP_11,
        BackendProtocol::H2c => Version::HTTP_2,
    };
    // `valid_target` was checked by the caller; the authority is an IP and port.
    *upstream_request.uri_mut() = Uri::try_from(format!("http://{endpoint}{}", request.target))
        .map_err(|_| H1Error::Protocol("request target cannot be forwarded"))?;
    Ok(client.request(upstream_request).await?.map(UpstreamBody::Right))
}
