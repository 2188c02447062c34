//! Upstream connections, per worker: each worker thread has its own pooled keep-alive clients
//! (one per backend group) and its own per-endpoint connection caps, so workers share no pool
//! and take no lock that another worker could hold. Pools survive snapshot swaps while a
//! backend's connection settings stay the same.

use std::{cell::RefCell, collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use tokio::sync::Semaphore;

use super::{body::AttemptBody, snapshot::BackendGroup};
use crate::config::BackendProtocol;

/// The connector adds TLS for backends that have it (`crate::tls::upstream`).
pub type UpstreamClient = Client<crate::tls::upstream::Connector, AttemptBody>;

/// One backend group's client in one worker.
struct Pool {
    client: UpstreamClient,
    caps: HashMap<SocketAddr, Arc<Semaphore>>,
    max_per_endpoint: usize,
    generation: u64,
}

#[derive(Default)]
struct WorkerPools {
    pools: HashMap<String, Pool>,
    generation: u64,
}

thread_local! {
    static POOLS: RefCell<WorkerPools> = RefCell::new(WorkerPools::default());
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

/// This worker's client for `group`, and the connection slot cap for `endpoint`.
/// `generation` is the snapshot's: pools no snapshot since uses are dropped.
pub fn client_for(
    group: &BackendGroup,
    endpoint: SocketAddr,
    generation: u64,
) -> (UpstreamClient, Arc<Semaphore>) {
    POOLS.with(|pools| {
        let mut pools = pools.borrow_mut();
        if pools.generation != generation {
            // A new snapshot: forget pools of backends that the previous one did not use.
            let previous = pools.generation;
            pools.pools.retain(|_, pool| pool.generation >= previous);
            pools.generation = generation;
        }
        // Look up by &str first: the key is only cloned when a pool is created.
        if !pools.pools.contains_key(&group.pool_key) {
            let pool = Pool {
                client: build_client(group),
                caps: HashMap::new(),
                max_per_endpoint: group.config.max_connections_per_endpoint,
                generation,
            };
            pools.pools.insert(group.pool_key.clone(), pool);
        }
        let pool = pools.pools.get_mut(&group.pool_key).expect("inserted above");
        pool.generation = generation;
        let max = pool.max_per_endpoint;
        let cap = pool.caps.entry(endpoint).or_insert_with(|| Arc::new(Semaphore::new(max))).clone();
        (pool.client.clone(), cap)
    })
}
