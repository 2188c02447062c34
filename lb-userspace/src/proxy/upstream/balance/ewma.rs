//! Peak EWMA (ingress-nginx `load-balance: ewma`, Finagle): the power of two choices by
//! latency estimate times load, the estimate decaying while an endpoint goes unpicked.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use super::cheaper;
use crate::proxy::upstream::endpoint::{EWMA_DECAY_MS, Endpoint};

/// The cheaper of two sampled endpoints by [`ewma_cost`], stamped as picked at `now_ms`
/// (`last_pick_ms` is the balancer's per-endpoint stamp).
pub(super) fn choose(
    endpoints: &[Arc<Endpoint>],
    weights: &[u32],
    last_pick_ms: &[AtomicU64],
    now_ms: u64,
    a: usize,
    b: Option<usize>,
) -> usize {
    let chosen = match b {
        None => a,
        Some(b) => {
            let cost = |index: usize| {
                let last = last_pick_ms[index].load(Ordering::Relaxed);
                ewma_cost(&endpoints[index], weights[index], now_ms.saturating_sub(last))
            };
            cheaper(a, cost(a), b, cost(b))
        }
    };
    let stamp = &last_pick_ms[chosen];
    // Skip the store when the stamp is current: on a busy endpoint this keeps the cache line
    // shared between workers instead of bouncing it every request.
    if stamp.load(Ordering::Relaxed) != now_ms {
        stamp.store(now_ms, Ordering::Relaxed);
    }
    chosen
}

/// Peak-EWMA cost of an endpoint, compared lexicographically (lower is better):
///
/// - `(0, 0)`: no latency sample yet and nothing in flight. Preferred, so a new endpoint
///   gets probed at once instead of being starved by endpoints that already have a (higher
///   than zero) estimate.
/// - `(1, ewma * (inflight + 1) / weight)`: the usual cost, ingress-nginx's and Finagle's
///   (the + 1 counts the new request). The estimate decays towards zero with the time since
///   this balancer last picked the endpoint, as ingress-nginx decays it on every read: the
///   estimate only moves when a response comes back, so without the decay an endpoint that
///   was once slow would lose every comparison, never be picked again and never get the
///   sample that shows it recovered.
/// - `(2, inflight / weight)`: no sample yet but a probe is in flight. Avoided until the
///   probe answers (Finagle's penalty), so a new endpoint takes one request rather than
///   every request that races in before its first response; among such endpoints (a group
///   that just started under load) the least loaded wins.
pub(super) fn ewma_cost(endpoint: &Endpoint, weight: u32, idle_ms: u64) -> (u8, f64) {
    let inflight = f64::from(endpoint.inflight());
    let weight = f64::from(weight);
    let ewma = endpoint.ewma_ns();
    if ewma > 0.0 {
        let decayed = ewma * (-(idle_ms as f64) / EWMA_DECAY_MS).exp();
        (1, decayed * (inflight + 1.0) / weight)
    } else if inflight == 0.0 {
        (0, 0.0)
    } else {
        (2, inflight / weight)
    }
}
