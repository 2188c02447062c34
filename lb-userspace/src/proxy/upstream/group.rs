//! A backend group as the workers use it: its endpoints (state shared across snapshots), its
//! balancer, retry budget and affinity, the identity of its connection pools and its TLS.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use super::{
    affinity::CookieAffinity,
    balance::Balancer,
    endpoint::{Endpoint, EndpointRegistry},
    pool::PoolKey,
};
use crate::{
    config::{BackendConfig, RetryConfig},
    now_ms,
    tls::upstream::UpstreamTls,
};

/// A backend group as the workers use it.
pub struct BackendGroup {
    pub name: String,
    /// The name as a metric label, shared so counting never allocates.
    pub label: Arc<str>,
    /// The configuration's own (shared, not copied: a rebuild that keeps the group's
    /// configuration is told by the pointer).
    pub config: Arc<BackendConfig>,
    /// In the configuration's order; shared with every other snapshot that keeps them.
    pub endpoints: Vec<Arc<Endpoint>>,
    pub balancer: Balancer,
    pub retry_budget: RetryBudget,
    /// Cookie session affinity, when configured.
    pub affinity: Option<CookieAffinity>,
    /// Identity of the settings that shape upstream connections; workers keep their pools
    /// across snapshots while it stays the same.
    pub pool_key: PoolKey,
    /// TLS towards the endpoints, when the backend has `tls`.
    pub tls: Option<Arc<UpstreamTls>>,
}

impl BackendGroup {
    /// Compiles one configured backend. Endpoint state comes from `registry`, so health and
    /// load carry over from the previous snapshot.
    pub fn build(
        backend: &Arc<BackendConfig>,
        tls: Option<UpstreamTls>,
        registry: &EndpointRegistry,
        affinity_key: &[u8],
    ) -> BackendGroup {
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
            .map(|c| CookieAffinity::new(c, affinity_key, &backend.name, &endpoints));
        BackendGroup {
            affinity,
            name: backend.name.clone(),
            label: backend.name.as_str().into(),
            balancer: Balancer::new(backend.balance, &endpoints),
            endpoints,
            retry_budget: RetryBudget::new(&backend.retries),
            pool_key: PoolKey::of(&format!(
                "{}|{:?}|{:?}|{}|{}",
                backend.name,
                backend.protocol,
                backend.timeouts,
                backend.max_connections_per_endpoint,
                tls.as_ref().map_or("", |t| t.identity.as_str())
            )),
            tls: tls.map(Arc::new),
            config: Arc::clone(backend),
        }
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.config.timeouts.connect_ms)
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
    pub fn new(config: &RetryConfig) -> RetryBudget {
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
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_budget_allows_a_share_of_requests() {
        let budget = RetryBudget::new(&RetryConfig {
            attempts: 2,
            budget_percent: 20,
            min_retries_per_second: 0,
            ..RetryConfig::default()
        });
        assert!(!budget.withdraw(), "nothing saved up yet");
        for _ in 0..10 {
            budget.deposit();
        }
        assert!(budget.withdraw() && budget.withdraw(), "20% of 10 requests: two retries");
        assert!(!budget.withdraw());
    }

    #[test]
    fn retry_budget_starts_with_the_per_second_floor() {
        let budget = RetryBudget::new(&RetryConfig {
            attempts: 2,
            budget_percent: 0,
            min_retries_per_second: 3,
            ..RetryConfig::default()
        });
        assert!(budget.withdraw() && budget.withdraw() && budget.withdraw());
        assert!(!budget.withdraw());
    }
}
