//! The serving snapshot: everything a worker needs to answer a request, compiled from one
//! validated configuration and swapped whole. Workers load it once per request (lock-free,
//! `ArcSwap`), so a request in flight finishes on the routes it started with, and a new
//! snapshot never touches established connections.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::{
    affinity::CookieAffinity,
    balance::Balancer,
    endpoint::{Endpoint, EndpointRegistry, now_ms},
    routing::RouteTable,
};
use crate::config::{BackendConfig, Config, Limits};

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

/// A backend group as the workers use it.
pub struct BackendGroup {
    pub name: String,
    /// The name as a metric label, shared so counting never allocates.
    pub label: Arc<str>,
    pub config: BackendConfig,
    /// In the configuration's order; shared with every other snapshot that keeps them.
    pub endpoints: Vec<Arc<Endpoint>>,
    pub balancer: Balancer,
    pub retry_budget: RetryBudget,
    /// Cookie session affinity, when configured.
    pub affinity: Option<CookieAffinity>,
    /// Identity of the settings that shape upstream connections; workers keep their pools
    /// across snapshots while it stays the same.
    pub pool_key: super::upstream::PoolKey,
    /// TLS towards the endpoints, when the backend has `tls`.
    pub tls: Option<Arc<crate::tls::upstream::UpstreamTls>>,
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
        let backends: Vec<BackendGroup> = config
            .backends
            .iter()
            .zip(upstream_tls)
            .map(|(backend, tls)| {
                let endpoints: Vec<Arc<Endpoint>> = backend
                    .endpoints
                    .iter()
                    .map(|e| {
                        let endpoint = registry.get(&backend.name, e.address);
                        endpoint.set_weight(e.weight);
                        endpoint.set_ready(e.ready);
                        endpoint
                    })
                    .collect();
                let affinity = backend
                    .cookie_affinity
                    .as_ref()
                    .map(|c| CookieAffinity::new(c, affinity_key(config), &backend.name, &endpoints));
                BackendGroup {
                    affinity,
                    name: backend.name.clone(),
                    label: backend.name.as_str().into(),
                    balancer: Balancer::new(backend.balance, &endpoints),
                    endpoints,
                    retry_budget: RetryBudget::new(&backend.retries),
                    pool_key: super::upstream::PoolKey::of(&format!(
                        "{}|{:?}|{:?}|{}|{}",
                        backend.name,
                        backend.protocol,
                        backend.timeouts,
                        backend.max_connections_per_endpoint,
                        tls.as_ref().map_or("", |t| t.identity.as_str())
                    )),
                    tls: tls.map(Arc::new),
                    config: backend.clone(),
                }
            })
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

/// Retries may add at most `budget_percent` of the requests, plus `min_retries_per_second`
/// (the retry budget of Envoy, Finagle and linkerd): a backend in trouble is not hammered by
/// retries of every failure. Tokens are hundredths of a retry; all atomics.
pub struct RetryBudget {
    tokens: AtomicU64,
    refilled_at_ms: AtomicU64,
    percent: u64,
    per_second: u64,
}

/// The budget never saves up more than this many retries.
const RETRY_BUDGET_CAP: u64 = 1_000 * 100;

impl RetryBudget {
    pub fn new(config: &crate::config::RetryConfig) -> RetryBudget {
        let per_second = u64::from(config.min_retries_per_second) * 100;
        RetryBudget {
            tokens: AtomicU64::new(per_second),
            refilled_at_ms: AtomicU64::new(now_ms()),
            percent: u64::from(config.budget_percent),
            per_second,
        }
    }

    /// Every request pays into the budget.
    pub fn deposit(&self) {
        self.add(self.percent);
    }

    /// Takes one retry from the budget, if there is one.
    pub fn withdraw(&self) -> bool {
        let now = now_ms();
        let last = self.refilled_at_ms.load(Ordering::Relaxed);
        if now > last
            && self.refilled_at_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.add(self.per_second * (now - last) / 1_000);
        }
        self.tokens.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| t.checked_sub(100)).is_ok()
    }

    fn add(&self, amount: u64) {
        let _ = self
            .tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| Some((t + amount).min(RETRY_BUDGET_CAP)));
    }
}

impl BackendGroup {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.config.timeouts.connect_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RetryConfig;

    #[test]
    fn retry_budget_allows_a_share_of_requests() {
        let budget =
            RetryBudget::new(&RetryConfig { attempts: 2, budget_percent: 20, min_retries_per_second: 0 });
        assert!(!budget.withdraw(), "nothing saved up yet");
        for _ in 0..10 {
            budget.deposit();
        }
        assert!(budget.withdraw() && budget.withdraw(), "20% of 10 requests: two retries");
        assert!(!budget.withdraw());
    }

    #[test]
    fn retry_budget_starts_with_the_per_second_floor() {
        let budget =
            RetryBudget::new(&RetryConfig { attempts: 2, budget_percent: 0, min_retries_per_second: 3 });
        assert!(budget.withdraw() && budget.withdraw() && budget.withdraw());
        assert!(!budget.withdraw());
    }
}
