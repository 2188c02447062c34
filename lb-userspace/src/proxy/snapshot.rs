//! The serving snapshot: everything a worker needs to answer a request, compiled from one
//! validated configuration and swapped whole. Workers load it once per request (lock-free,
//! `ArcSwap`), so a request in flight finishes on the routes it started with, and a new
//! snapshot never touches established connections.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::{
    route::RouteTable,
    upstream::{BackendGroup, endpoint::EndpointRegistry},
};
use crate::config::{Config, Limits};

/// One compiled configuration.
pub struct Snapshot {
    /// Increases by one with every snapshot published.
    pub generation: u64,
    pub routes: RouteTable,
    pub backends: Vec<BackendGroup>,
    pub limits: Limits,
    /// Add `x-sluice-worker: <id>` to every response.
    pub worker_id_header: bool,
    pub access_log: crate::config::AccessLogConfig,
    /// Certificates and TLS settings of listeners and hosts (loaded and checked at build).
    pub tls: crate::tls::TlsSnapshot,
    /// The configuration this was built from (for `/api/v1/config`, redacted there).
    pub config: Arc<Config>,
}

impl Snapshot {
    /// Compiles `config`. Endpoint state comes from `registry`, so health and load carry over.
    pub fn build(config: &Config, registry: &EndpointRegistry, generation: u64) -> Result<Snapshot, String> {
        let routes = RouteTable::build(config)?;
        let upstream_tls = config
            .backends
            .iter()
            .map(crate::tls::upstream::UpstreamTls::build)
            .collect::<Result<Vec<_>, String>>()?;
        let key = affinity_key(config);
        let backends: Vec<BackendGroup> = config
            .backends
            .iter()
            .zip(upstream_tls)
            .map(|(backend, tls)| BackendGroup::build(backend, tls, registry, key))
            .collect();
        let backend_index = backends.iter().enumerate().map(|(i, b)| (b.name.as_str(), i)).collect();
        let tls = crate::tls::TlsSnapshot::build(config, &backend_index)?;
        Ok(Snapshot {
            generation,
            routes,
            backends,
            limits: config.limits.clone(),
            worker_id_header: config.worker_id_header,
            access_log: config.access_log.clone(),
            config: Arc::new(config.clone()),
            tls,
        })
    }
}

/// The key for affinity cookies: the configured one, or one random key for the life of the
/// process (cookies then survive reloads, but not restarts or other nodes).
fn affinity_key(config: &Config) -> &[u8] {
    static RANDOM: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    match &config.affinity_key {
        Some(key) => key.0.as_bytes(),
        None => RANDOM.get_or_init(|| {
            tracing::warn!(
                "no affinity_key configured: affinity cookies hold only on this node until it restarts"
            );
            std::array::from_fn(|_| fastrand::u8(..))
        }),
    }
}

/// Where workers find the current snapshot, and how its owner replaces it.
#[derive(Clone)]
pub struct Published {
    current: Arc<ArcSwap<Snapshot>>,
    generation: watch::Sender<u64>,
}

impl Published {
    pub fn new(first: Snapshot) -> Published {
        let generation = first.generation;
        Published {
            current: Arc::new(ArcSwap::from_pointee(first)),
            generation: watch::channel(generation).0,
        }
    }

    /// The current snapshot (lock-free).
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Replaces the snapshot whole and tells the watchers.
    pub fn publish(&self, next: Snapshot) {
        let generation = next.generation;
        self.current.store(Arc::new(next));
        self.generation.send_replace(generation);
    }

    /// Notified with each new generation (the dataplane sync and the admin server watch it).
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}
