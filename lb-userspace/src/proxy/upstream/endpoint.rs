//! Per-endpoint state shared by every worker: readiness, active-check health, passive outlier
//! ejection, in-flight requests and latency. All atomics: reading it on the request path takes
//! no lock. The state of an endpoint outlives configuration reloads: the registry hands the
//! same `Arc<Endpoint>` to every snapshot that keeps the endpoint.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use parking_lot::Mutex;
use tokio::sync::broadcast;

use crate::config::OutlierConfig;

/// Why an endpoint's health changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthChange {
    /// The active check failed `unhealthy_threshold` times in a row.
    CheckFailed,
    /// The active check passed `healthy_threshold` times in a row.
    CheckPassed,
    /// Consecutive request failures ejected it for this long.
    Ejected(Duration),
    /// A passing active check ended its ejection early.
    EjectionEnded,
}

/// A health change, published for the dataplane, metrics and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthEvent {
    pub backend: String,
    pub address: SocketAddr,
    pub change: HealthChange,
}

/// One upstream endpoint of one backend group.
#[derive(Debug)]
pub struct Endpoint {
    /// The group's name, shared by its endpoints (and with the registry's key).
    pub backend: Arc<str>,
    pub address: SocketAddr,
    weight: AtomicU32,
    ready: AtomicBool,
    /// True until an active check says otherwise (and always without active checks).
    check_healthy: AtomicBool,
    ejected_until_ms: AtomicU64,
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    inflight: AtomicU32,
    /// Peak-EWMA latency in nanoseconds, as f64 bits.
    ewma_ns: AtomicU64,
    ewma_stamp_ms: AtomicU64,
    events: broadcast::Sender<HealthEvent>,
}

/// Decay time of the latency EWMA, here and in the Peak EWMA balancer's idle decay: the window
/// ingress-nginx's `ewma` uses (10 s).
pub const EWMA_DECAY_MS: f64 = 10_000.0;

impl Endpoint {
    fn new(backend: Arc<str>, address: SocketAddr, events: broadcast::Sender<HealthEvent>) -> Endpoint {
        Endpoint {
            backend,
            address,
            weight: AtomicU32::new(1),
            ready: AtomicBool::new(true),
            check_healthy: AtomicBool::new(true),
            ejected_until_ms: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            inflight: AtomicU32::new(0),
            ewma_ns: AtomicU64::new(0f64.to_bits()),
            ewma_stamp_ms: AtomicU64::new(0),
            events,
        }
    }

    /// A standalone endpoint (tests and tools); real ones come from the registry.
    pub fn detached(backend: &str, address: SocketAddr) -> Arc<Endpoint> {
        Arc::new(Endpoint::new(backend.into(), address, broadcast::channel(1).0))
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    pub fn set_weight(&self, weight: u32) {
        self.weight.store(weight, Ordering::Relaxed);
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn check_healthy(&self) -> bool {
        self.check_healthy.load(Ordering::Relaxed)
    }

    /// Whether the endpoint is ejected at `now_ms`.
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        now_ms < self.ejected_until_ms.load(Ordering::Relaxed)
    }

    /// Ready, passing its active check, not ejected, and with a weight: it may take requests.
    pub fn is_available(&self, now_ms: u64) -> bool {
        self.is_ready() && self.check_healthy() && !self.is_ejected(now_ms) && self.weight() > 0
    }

    /// Sets the active-check verdict; publishes an event when it changes.
    pub fn set_check_healthy(&self, healthy: bool) {
        if self.check_healthy.swap(healthy, Ordering::Relaxed) != healthy {
            let change = if healthy { HealthChange::CheckPassed } else { HealthChange::CheckFailed };
            if healthy {
                // A passing check also ends any ejection: the endpoint proved itself.
                self.ejected_until_ms.store(0, Ordering::Relaxed);
                self.consecutive_failures.store(0, Ordering::Relaxed);
            }
            self.publish(change);
        }
    }

    /// An active check passed while the verdict is healthy: any ejection ends, as when the
    /// verdict turns healthy. Without this an endpoint ejected by request failures faster than
    /// its checks failed (a backend killed under load and restarted within
    /// `unhealthy_threshold` checks) stayed out for the whole ejection although every check
    /// passed. Envoy does the same (`successful_active_health_check_uneject_host`, default on).
    pub fn check_passed(&self, now_ms: u64) {
        if self.is_ejected(now_ms) {
            self.ejected_until_ms.store(0, Ordering::Relaxed);
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.publish(HealthChange::EjectionEnded);
        }
    }

    /// A request to this endpoint got an answer that was not a 5xx.
    pub fn record_success(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// A request failed to connect or got a 5xx. Ejects the endpoint once the failures reach
    /// `outlier.consecutive_failures`, each ejection longer than the last (up to the max).
    pub fn record_failure(&self, outlier: &OutlierConfig, now_ms: u64) {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if outlier.consecutive_failures == 0
            || failures < outlier.consecutive_failures
            || self.is_ejected(now_ms)
        {
            return;
        }
        let ejections = self.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let duration =
            outlier.base_ejection_ms.saturating_mul(u64::from(ejections)).min(outlier.max_ejection_ms);
        self.ejected_until_ms.store(now_ms + duration, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.publish(HealthChange::Ejected(Duration::from_millis(duration)));
    }

    /// Requests in flight to this endpoint, across all workers.
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard drops.
    pub fn start_request(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard { endpoint: self.clone() }
    }

    /// Folds one observed latency into the peak EWMA: a slower sample takes over at once
    /// (the peak), a faster one decays in with the time since the last sample.
    pub fn observe_latency(&self, latency: Duration, now_ms: u64) {
        let sample = latency.as_nanos() as f64;
        let previous = f64::from_bits(self.ewma_ns.load(Ordering::Relaxed));
        let last = self.ewma_stamp_ms.swap(now_ms, Ordering::Relaxed);
        let next = if sample > previous || previous == 0.0 {
            sample
        } else {
            let w = (-(now_ms.saturating_sub(last) as f64) / EWMA_DECAY_MS).exp();
            previous * w + sample * (1.0 - w)
        };
        self.ewma_ns.store(next.to_bits(), Ordering::Relaxed);
    }

    /// The peak-EWMA latency in nanoseconds (0 before any sample).
    pub fn ewma_ns(&self) -> f64 {
        f64::from_bits(self.ewma_ns.load(Ordering::Relaxed))
    }

    fn publish(&self, change: HealthChange) {
        tracing::info!(backend = %self.backend, endpoint = %self.address, ?change, "endpoint health changed");
        // No subscriber is fine: the event is informational.
        let _ = self.events.send(HealthEvent {
            backend: self.backend.to_string(),
            address: self.address,
            change,
        });
    }
}

/// Decrements the endpoint's in-flight count when dropped.
#[derive(Debug)]
pub struct InflightGuard {
    endpoint: Arc<Endpoint>,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.endpoint.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A group's endpoints in the registry, found by address: a set of the endpoints themselves (8 bytes an entry)
/// rather than a map from a copy of the address (40).
type GroupEndpoints = std::collections::HashSet<ByAddress>;

/// An endpoint that hashes and compares as its address.
struct ByAddress(Arc<Endpoint>);

impl std::hash::Hash for ByAddress {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.address.hash(state);
    }
}

impl PartialEq for ByAddress {
    fn eq(&self, other: &ByAddress) -> bool {
        self.0.address == other.0.address
    }
}

impl Eq for ByAddress {}

impl std::borrow::Borrow<SocketAddr> for ByAddress {
    fn borrow(&self) -> &SocketAddr {
        &self.0.address
    }
}

/// Hands out one `Endpoint` per (backend, address), so health and load survive reloads.
/// Used when a snapshot is built, never on the request path.
pub struct EndpointRegistry {
    /// By group, then address: a group's name is held once for all its endpoints, and a lookup
    /// by `&str` allocates nothing (a snapshot looks up every endpoint of every group it builds).
    endpoints: Mutex<HashMap<Arc<str>, GroupEndpoints>>,
    events: broadcast::Sender<HealthEvent>,
}

impl Default for EndpointRegistry {
    fn default() -> Self {
        EndpointRegistry { endpoints: Mutex::new(HashMap::new()), events: broadcast::channel(1024).0 }
    }
}

impl EndpointRegistry {
    /// The endpoint for (backend, address), created on first use.
    pub fn get(&self, backend: &str, address: SocketAddr) -> Arc<Endpoint> {
        let mut endpoints = self.endpoints.lock();
        if let Some(found) = endpoints.get(backend).and_then(|group| group.get(&address)) {
            return Arc::clone(&found.0);
        }
        let name =
            endpoints.get_key_value(backend).map_or_else(|| Arc::from(backend), |(name, _)| Arc::clone(name));
        let endpoint = Arc::new(Endpoint::new(Arc::clone(&name), address, self.events.clone()));
        endpoints.entry(name).or_default().insert(ByAddress(Arc::clone(&endpoint)));
        endpoint
    }

    /// Forgets endpoints no snapshot uses any more (only the registry holds them).
    pub fn prune(&self) {
        self.endpoints.lock().retain(|_, group| {
            group.retain(|endpoint| Arc::strong_count(&endpoint.0) > 1);
            !group.is_empty()
        });
    }

    /// Health changes of every endpoint.
    pub fn subscribe(&self) -> broadcast::Receiver<HealthEvent> {
        self.events.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outlier(failures: u32) -> OutlierConfig {
        OutlierConfig { consecutive_failures: failures, base_ejection_ms: 1_000, max_ejection_ms: 2_500 }
    }

    #[test]
    fn consecutive_failures_eject_for_a_growing_interval() {
        let registry = EndpointRegistry::default();
        let mut events = registry.subscribe();
        let endpoint = registry.get("b", "127.0.0.1:1".parse().unwrap());
        let config = outlier(3);
        endpoint.record_failure(&config, 0);
        endpoint.record_failure(&config, 0);
        endpoint.record_success();
        endpoint.record_failure(&config, 0);
        endpoint.record_failure(&config, 0);
        assert!(endpoint.is_available(0), "a success in between resets the count");
        endpoint.record_failure(&config, 0);
        assert!(!endpoint.is_available(0) && endpoint.is_available(1_000), "first ejection: 1 s");
        assert_eq!(events.try_recv().unwrap().change, HealthChange::Ejected(Duration::from_secs(1)));
        for _ in 0..3 {
            endpoint.record_failure(&config, 1_000);
        }
        assert!(endpoint.is_ejected(2_999) && !endpoint.is_ejected(3_000), "second ejection: 2 s");
        for _ in 0..3 {
            endpoint.record_failure(&config, 3_000);
        }
        assert!(endpoint.is_ejected(5_499) && !endpoint.is_ejected(5_500), "capped at the max");
    }

    #[test]
    fn zero_disables_ejection_and_a_passing_check_ends_one() {
        let endpoint = Endpoint::detached("b", "127.0.0.1:1".parse().unwrap());
        for _ in 0..100 {
            endpoint.record_failure(&outlier(0), 0);
        }
        assert!(endpoint.is_available(0));
        for _ in 0..3 {
            endpoint.record_failure(&outlier(3), 0);
        }
        assert!(!endpoint.is_available(0));
        endpoint.set_check_healthy(false);
        endpoint.set_check_healthy(true);
        assert!(endpoint.is_available(0));
    }

    #[test]
    fn registry_keeps_state_across_lookups_and_prunes_unused() {
        let registry = EndpointRegistry::default();
        let address = "127.0.0.1:1".parse().unwrap();
        let first = registry.get("b", address);
        first.set_check_healthy(false);
        assert!(!registry.get("b", address).check_healthy(), "same state for the same key");
        assert!(registry.get("other", address).check_healthy(), "per backend");
        let second = registry.get("b", "127.0.0.1:2".parse().unwrap());
        assert!(Arc::ptr_eq(&first.backend, &second.backend), "a group's endpoints share its name");
        drop((first, second));
        registry.prune();
        assert!(registry.endpoints.lock().is_empty(), "groups without endpoints go too");
        assert!(registry.get("b", address).check_healthy(), "pruned, then created afresh");
    }

    #[test]
    fn peak_ewma_takes_peaks_at_once_and_decays_slowly() {
        let endpoint = Endpoint::detached("b", "127.0.0.1:1".parse().unwrap());
        endpoint.observe_latency(Duration::from_millis(10), 0);
        endpoint.observe_latency(Duration::from_millis(50), 100);
        assert_eq!(endpoint.ewma_ns(), 50e6, "a slower sample is the new peak");
        endpoint.observe_latency(Duration::from_millis(10), 1_100);
        let decayed = endpoint.ewma_ns();
        assert!(decayed < 50e6 && decayed > 40e6, "one second of a 10 s window: {decayed}");
    }

    #[test]
    fn inflight_counts_until_the_guard_drops() {
        let endpoint = Endpoint::detached("b", "127.0.0.1:1".parse().unwrap());
        let a = endpoint.start_request();
        let b = endpoint.start_request();
        assert_eq!(endpoint.inflight(), 2);
        drop(a);
        drop(b);
        assert_eq!(endpoint.inflight(), 0);
    }
}
