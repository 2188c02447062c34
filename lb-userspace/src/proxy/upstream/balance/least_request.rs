//! Least request with the power of two choices: of two endpoints sampled at random, the one
//! with fewer requests in flight for its weight.

use std::sync::Arc;

use super::cheaper;
use crate::proxy::upstream::endpoint::Endpoint;

/// The less loaded of the sampled endpoints `a` and `b`: lower (inflight + 1) / weight wins,
/// cross-multiplied to stay in integers (u32 * u32 fits a u64). The + 1 is the load the new
/// request adds: with equal weights it orders like plain in-flight counts, and with unequal
/// weights it still favours the heavier endpoint when both are idle, which a bare
/// inflight / weight (0 = 0) would not.
pub(super) fn choose(endpoints: &[Arc<Endpoint>], weights: &[u32], a: usize, b: usize) -> usize {
    let load = |index: usize| u64::from(endpoints[index].inflight()) + 1;
    let cost_a = load(a) * u64::from(weights[b]);
    let cost_b = load(b) * u64::from(weights[a]);
    cheaper(a, cost_a, b, cost_b)
}
