//! Choosing an endpoint within one backend group: smooth weighted round robin, least request
//! (power of two choices), Peak EWMA latency (ingress-nginx `load-balance: ewma`) and
//! consistent hashing (Maglev) on a header, a cookie or the client address.
//!
//! A [`Balancer`] is built once per configuration snapshot, off the request path, and shared
//! by every worker through the snapshot's `Arc`. Everything expensive (schedules, hash
//! tables) is computed at build time; a pick takes no lock and allocates nothing. The only
//! state a pick writes is a relaxed atomic (the round-robin cursor, or the EWMA pick stamps),
//! and the randomness for the power of two choices comes from `fastrand`'s thread-local RNG.
//!
//! Availability is read live at every pick (readiness, health checks and ejections change
//! between snapshots), while weights are read once at build: they only change with a new
//! snapshot, and precomputing them is what makes the round-robin schedule and the hash table
//! possible.

use std::sync::{Arc, atomic::AtomicU64};

mod ewma;
mod hash;
mod least_request;
mod round_robin;

pub use hash::hash_key;

use self::{
    hash::{hash_pick, hash_table},
    round_robin::Schedule,
};
use crate::{config::Balance, proxy::upstream::endpoint::Endpoint};

/// Random draws the power of two choices makes before falling back to a full scan. Enough for
/// the common case (most endpoints available) to never scan.
const SAMPLE_TRIES: usize = 8;

/// Picks endpoints of one backend group.
#[derive(Debug)]
pub struct Balancer {
    /// Each endpoint's weight at build time; 0 never gets traffic.
    weights: Box<[u32]>,
    strategy: Strategy,
}

#[derive(Debug)]
enum Strategy {
    RoundRobin(Schedule),
    LeastRequest,
    Ewma {
        /// When this balancer last picked each endpoint (ms, `crate::now_ms` clock): how
        /// long its latency estimate has gone without fresh samples.
        last_pick_ms: Box<[AtomicU64]>,
    },
    Hash {
        /// Maglev table of endpoint indices.
        table: Box<[u32]>,
        /// For requests without a key.
        fallback: Schedule,
    },
}

impl Balancer {
    /// A balancer for `endpoints`, in the backend's order; their weights are read now
    /// (weights change only with a new snapshot).
    pub fn new(balance: Balance, endpoints: &[Arc<Endpoint>]) -> Balancer {
        // A random start spreads the first picks after each reload: otherwise every snapshot
        // (and every load balancer instance) would begin with the schedule's first endpoint,
        // and a group seeing few requests between frequent endpoint updates would send most
        // of them there.
        Balancer::build(balance, endpoints, fastrand::usize(..))
    }

    fn build(balance: Balance, endpoints: &[Arc<Endpoint>], start: usize) -> Balancer {
        let weights: Box<[u32]> = endpoints.iter().map(|endpoint| endpoint.weight()).collect();
        let strategy = match balance {
            Balance::RoundRobin => Strategy::RoundRobin(Schedule::new(&weights, start)),
            Balance::LeastRequest => Strategy::LeastRequest,
            Balance::Ewma => {
                let now = crate::now_ms();
                Strategy::Ewma { last_pick_ms: endpoints.iter().map(|_| AtomicU64::new(now)).collect() }
            }
            Balance::Hash => Strategy::Hash {
                table: hash_table(endpoints, &weights),
                fallback: Schedule::new(&weights, start),
            },
        };
        Balancer { weights, strategy }
    }

    /// Index of the endpoint to use, among those available at `now_ms`, never one listed in
    /// `exclude` (the endpoints a retry already tried). `hash_key` is used by `Hash` (`None`
    /// falls back to weighted round robin) and ignored otherwise. `None` when nothing is
    /// available.
    ///
    /// `endpoints` must be the slice the balancer was built from.
    pub fn pick(
        &self,
        endpoints: &[Arc<Endpoint>],
        hash_key: Option<u64>,
        now_ms: u64,
        exclude: &[usize],
    ) -> Option<usize> {
        debug_assert_eq!(endpoints.len(), self.weights.len(), "pick with the endpoints of another build");
        let eligible = |index: usize| {
            // An index past `endpoints` (a mismatched slice in release builds) is never used.
            self.weights.get(index).is_some_and(|&weight| weight > 0)
                && !exclude.contains(&index)
                && endpoints.get(index).is_some_and(|endpoint| endpoint.is_available(now_ms))
        };
        let any_eligible = || (0..self.weights.len()).any(eligible);
        match &self.strategy {
            Strategy::RoundRobin(schedule) => schedule.pick(eligible, any_eligible),
            Strategy::LeastRequest => {
                let (a, b) = self.two_choices(eligible)?;
                Some(b.map_or(a, |b| least_request::choose(endpoints, &self.weights, a, b)))
            }
            Strategy::Ewma { last_pick_ms } => {
                let (a, b) = self.two_choices(eligible)?;
                Some(ewma::choose(endpoints, &self.weights, last_pick_ms, now_ms, a, b))
            }
            Strategy::Hash { table, fallback } => match hash_key {
                Some(key) => hash_pick(table, key, eligible, any_eligible),
                None => fallback.pick(eligible, any_eligible),
            },
        }
    }

    /// Two distinct random eligible endpoints for the power of two choices, uniformly among
    /// the eligible ones; the second is `None` when only one is eligible, and the whole is
    /// `None` when none is.
    fn two_choices(&self, eligible: impl Fn(usize) -> bool) -> Option<(usize, Option<usize>)> {
        let first = self.sample(&eligible, None)?;
        Some((first, self.sample(&eligible, Some(first))))
    }

    /// One uniformly random eligible endpoint other than `other`.
    fn sample(&self, eligible: &impl Fn(usize) -> bool, other: Option<usize>) -> Option<usize> {
        let count = self.weights.len();
        if count == 0 {
            return None;
        }
        // Rejection sampling: uniform among the eligible, and almost always done in one or
        // two draws. Probing forward from a random index instead would hand an endpoint
        // the share of every unavailable one before it.
        for _ in 0..SAMPLE_TRIES {
            let index = fastrand::usize(..count);
            if Some(index) != other && eligible(index) {
                return Some(index);
            }
        }
        // Few eligible endpoints (or bad luck): reservoir-sample one in a single pass, still
        // uniform and without allocating.
        let eligible_others = (0..count).filter(|&index| Some(index) != other && eligible(index));
        eligible_others.enumerate().fold(None, |chosen, (seen, index)| {
            // The `seen + 1`-th eligible endpoint replaces the choice with probability
            // 1 / (seen + 1), which leaves each one chosen with equal probability.
            if fastrand::usize(..=seen) == 0 { Some(index) } else { chosen }
        })
    }
}

/// The cheaper of two candidates; a tie is broken at random so equal endpoints share evenly
/// whatever order the candidates came in.
pub(super) fn cheaper<C: PartialOrd>(a: usize, cost_a: C, b: usize, cost_b: C) -> usize {
    if cost_a < cost_b {
        a
    } else if cost_b < cost_a || fastrand::bool() {
        b
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{IpAddr, Ipv6Addr, SocketAddr},
        thread,
        time::Duration,
    };

    use http::{HeaderMap, HeaderValue};

    use super::{
        hash::{HASH_TABLE_SIZES, address_hash, splitmix64, stable_hash},
        round_robin::{MAX_SCHEDULE, smooth_schedule},
        *,
    };
    use crate::{
        config::HashOn,
        maglev::try_build_table,
        numeric::{FNV1A_64_START, fnv1a_64},
    };

    fn address(i: usize) -> SocketAddr {
        SocketAddr::from(([10, 1, (i / 256) as u8, (i % 256) as u8], 8080))
    }

    /// Detached endpoints with these weights, at addresses `address(0..)`.
    fn endpoints(weights: &[u32]) -> Vec<Arc<Endpoint>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| {
                let endpoint = Endpoint::detached("b", address(i));
                endpoint.set_weight(weight);
                endpoint
            })
            .collect()
    }

    /// How often each endpoint is picked over `picks` picks without a key.
    fn counts(
        balancer: &Balancer,
        endpoints: &[Arc<Endpoint>],
        picks: usize,
        exclude: &[usize],
    ) -> Vec<usize> {
        let mut counts = vec![0; endpoints.len()];
        for _ in 0..picks {
            counts[balancer.pick(endpoints, None, 0, exclude).expect("an endpoint is available")] += 1;
        }
        counts
    }

    /// Well-spread keys, as `hash_key` yields.
    fn key(i: usize) -> u64 {
        stable_hash(&i.to_le_bytes())
    }

    fn keyed_pick(balancer: &Balancer, endpoints: &[Arc<Endpoint>], key: u64) -> usize {
        balancer.pick(endpoints, Some(key), 0, &[]).expect("an endpoint is available")
    }

    fn assert_near(actual: usize, expected: f64, tolerance: f64, what: &str) {
        let actual = actual as f64;
        assert!(
            (actual - expected).abs() <= expected * tolerance,
            "{what}: {actual}, expected {expected:.0} ± {:.0}%",
            tolerance * 100.0
        );
    }

    #[test]
    fn round_robin_is_exact_over_whole_cycles() {
        let endpoints = endpoints(&[1, 2, 3]);
        // Random start: any 100 whole cycles hold each endpoint `weight` times per cycle.
        let balancer = Balancer::new(Balance::RoundRobin, &endpoints);
        assert_eq!(counts(&balancer, &endpoints, 600, &[]), [100, 200, 300]);
    }

    #[test]
    fn round_robin_is_smooth() {
        let endpoints = endpoints(&[5, 1, 1]);
        let balancer = Balancer::build(Balance::RoundRobin, &endpoints, 0);
        let sequence: Vec<usize> =
            (0..14).map(|_| balancer.pick(&endpoints, None, 0, &[]).unwrap()).collect();
        // nginx's own example: `a a b a c a a`, not five `a` in a row.
        assert_eq!(sequence, [0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);

        // Whatever the start, the heavy endpoint never runs as long as a block schedule would.
        let balancer = Balancer::new(Balance::RoundRobin, &endpoints);
        let (mut run, mut longest) = (0, 0);
        for _ in 0..700 {
            run = if balancer.pick(&endpoints, None, 0, &[]) == Some(0) { run + 1 } else { 0 };
            longest = longest.max(run);
        }
        assert_eq!(longest, 4, "longest run of the weight-5 endpoint");

        let endpoints = self::endpoints(&[1, 2, 3]);
        let balancer = Balancer::build(Balance::RoundRobin, &endpoints, 0);
        let sequence: Vec<usize> = (0..6).map(|_| balancer.pick(&endpoints, None, 0, &[]).unwrap()).collect();
        assert_eq!(sequence, [2, 1, 0, 2, 1, 2]);
    }

    #[test]
    fn round_robin_reduces_and_caps_weights() {
        assert_eq!(smooth_schedule(&[100, 200, 300]), smooth_schedule(&[1, 2, 3]));
        assert_eq!(&*smooth_schedule(&[7, 0, 7]), [0, 2], "zero weight gets no slot");
        assert!(smooth_schedule(&[0, 0]).is_empty());

        let schedule = smooth_schedule(&[1, 1_000_000, 3, 4_000_000]);
        assert!(schedule.len() as u64 <= MAX_SCHEDULE + 4, "length {}", schedule.len());
        let slots = |index: u32| schedule.iter().filter(|&&slot| slot == index).count();
        assert!(slots(0) >= 1 && slots(2) >= 1, "tiny weights keep a slot");
        let ratio = slots(3) as f64 / slots(1) as f64;
        assert!((3.9..=4.1).contains(&ratio), "large weights keep their ratio: {ratio}");
    }

    #[test]
    fn round_robin_skips_unavailable_and_keeps_proportions() {
        let endpoints = endpoints(&[1, 2, 3]);
        let balancer = Balancer::new(Balance::RoundRobin, &endpoints);
        endpoints[2].set_ready(false);
        // The weight-3 endpoint's slots must not all go to its neighbour in the schedule.
        assert_eq!(counts(&balancer, &endpoints, 300, &[]), [100, 200, 0]);

        endpoints[2].set_ready(true);
        endpoints[1].set_check_healthy(false);
        assert_eq!(counts(&balancer, &endpoints, 400, &[]), [100, 0, 300]);

        endpoints[2].set_weight(0);
        assert_eq!(counts(&balancer, &endpoints, 10, &[]), [10, 0, 0], "live weight 0 is unavailable");
    }

    #[test]
    fn round_robin_honours_exclude() {
        let endpoints = endpoints(&[1, 2, 3]);
        let balancer = Balancer::new(Balance::RoundRobin, &endpoints);
        assert_eq!(counts(&balancer, &endpoints, 300, &[2]), [100, 200, 0]);
        assert_eq!(counts(&balancer, &endpoints, 50, &[0, 2]), [0, 50, 0]);
        assert_eq!(balancer.pick(&endpoints, None, 0, &[0, 1, 2]), None);
    }

    #[test]
    fn nothing_available_gives_none() {
        let endpoints = endpoints(&[1, 2, 3]);
        let balancers: Vec<Balancer> =
            [Balance::RoundRobin, Balance::LeastRequest, Balance::Ewma, Balance::Hash]
                .into_iter()
                .map(|balance| Balancer::new(balance, &endpoints))
                .collect();
        endpoints[0].set_ready(false);
        endpoints[1].set_check_healthy(false);
        endpoints[2].set_weight(0);
        for balancer in &balancers {
            assert_eq!(balancer.pick(&endpoints, None, 0, &[]), None, "{balancer:?}");
            assert_eq!(balancer.pick(&endpoints, Some(key(1)), 0, &[]), None, "{balancer:?}");
        }
        // Excluded is as good as unavailable.
        endpoints[0].set_ready(true);
        for balancer in &balancers {
            assert_eq!(balancer.pick(&endpoints, Some(key(1)), 0, &[0]), None, "{balancer:?}");
            assert_eq!(balancer.pick(&endpoints, Some(key(1)), 0, &[]), Some(0), "{balancer:?}");
        }
        for balance in [Balance::RoundRobin, Balance::LeastRequest, Balance::Ewma, Balance::Hash] {
            assert_eq!(Balancer::new(balance, &[]).pick(&[], Some(1), 0, &[]), None);
            let drained = self::endpoints(&[0, 0]);
            assert_eq!(Balancer::new(balance, &drained).pick(&drained, Some(1), 0, &[]), None);
        }
    }

    #[test]
    fn least_request_prefers_the_less_loaded() {
        let endpoints = endpoints(&[1, 1, 1]);
        let balancer = Balancer::new(Balance::LeastRequest, &endpoints);
        let _busy: Vec<_> = (0..5).map(|_| endpoints[1].start_request()).collect();
        let _busier: Vec<_> = (0..10).map(|_| endpoints[2].start_request()).collect();
        let counts = counts(&balancer, &endpoints, 30_000, &[]);
        // The idle endpoint wins every pair it is in (2/3 of the pairs), the busiest none.
        assert_near(counts[0], 20_000.0, 0.05, "idle");
        assert_near(counts[1], 10_000.0, 0.1, "busy");
        assert_eq!(counts[2], 0, "busiest");

        // With two endpoints the pair is always both: the less loaded always wins.
        let endpoints = self::endpoints(&[1, 1]);
        let balancer = Balancer::new(Balance::LeastRequest, &endpoints);
        let _busy = endpoints[0].start_request();
        assert_eq!(self::counts(&balancer, &endpoints, 1_000, &[]), [0, 1_000]);
        // Unless excluded or unavailable, then the other is the only choice.
        assert_eq!(self::counts(&balancer, &endpoints, 10, &[1]), [10, 0]);
        endpoints[1].set_ready(false);
        assert_eq!(self::counts(&balancer, &endpoints, 10, &[]), [10, 0]);
    }

    #[test]
    fn least_request_spreads_evenly_when_equal() {
        let endpoints = endpoints(&[1, 1, 1, 1]);
        let balancer = Balancer::new(Balance::LeastRequest, &endpoints);
        for count in counts(&balancer, &endpoints, 40_000, &[]) {
            assert_near(count, 10_000.0, 0.05, "equal endpoints");
        }
        // Also when most endpoints are out (the sampler's slow path) and some excluded.
        let endpoints = self::endpoints(&[1; 20]);
        let balancer = Balancer::new(Balance::LeastRequest, &endpoints);
        for endpoint in &endpoints[3..] {
            endpoint.set_ready(false);
        }
        let counts = counts(&balancer, &endpoints, 30_000, &[1]);
        assert_near(counts[0], 15_000.0, 0.05, "first");
        assert_near(counts[2], 15_000.0, 0.05, "third");
        assert_eq!(counts.iter().sum::<usize>(), counts[0] + counts[2]);
    }

    #[test]
    fn least_request_weighs_the_load() {
        let endpoints = endpoints(&[1, 3]);
        let balancer = Balancer::new(Balance::LeastRequest, &endpoints);
        assert_eq!(counts(&balancer, &endpoints, 100, &[]), [0, 100], "idle: the heavier one");
        let _light: Vec<_> = (0..2).map(|_| endpoints[0].start_request()).collect();
        let _heavy: Vec<_> = (0..4).map(|_| endpoints[1].start_request()).collect();
        // 3 / 1 against 5 / 3.
        assert_eq!(counts(&balancer, &endpoints, 100, &[]), [0, 100]);
        let _heavier: Vec<_> = (0..5).map(|_| endpoints[1].start_request()).collect();
        // 3 / 1 against 10 / 3.
        assert_eq!(counts(&balancer, &endpoints, 100, &[]), [100, 0]);
    }

    #[test]
    fn ewma_prefers_the_faster_endpoint_weighted_by_load() {
        let endpoints = endpoints(&[1, 1]);
        let balancer = Balancer::new(Balance::Ewma, &endpoints);
        let now = crate::now_ms();
        endpoints[0].observe_latency(Duration::from_millis(10), now);
        endpoints[1].observe_latency(Duration::from_millis(50), now);
        let pick = || balancer.pick(&endpoints, None, now, &[]);
        assert!((0..100).all(|_| pick() == Some(0)));
        // 10 ms x (3 + 1) is still cheaper than 50 ms idle, 10 ms x (5 + 1) is not.
        let mut load: Vec<_> = (0..3).map(|_| endpoints[0].start_request()).collect();
        assert!((0..100).all(|_| pick() == Some(0)));
        load.extend((0..2).map(|_| endpoints[0].start_request()));
        assert!((0..100).all(|_| pick() == Some(1)));
    }

    #[test]
    fn ewma_probes_an_untried_endpoint_once() {
        let endpoints = endpoints(&[1, 1]);
        let balancer = Balancer::new(Balance::Ewma, &endpoints);
        let now = crate::now_ms();
        endpoints[0].observe_latency(Duration::from_millis(1), now);
        let pick = || balancer.pick(&endpoints, None, now, &[]);
        assert!((0..100).all(|_| pick() == Some(1)), "untried and idle: probed");
        let probe = endpoints[1].start_request();
        assert!((0..100).all(|_| pick() == Some(0)), "probe in flight: left alone");
        drop(probe);
        endpoints[1].observe_latency(Duration::from_millis(5), now);
        assert!((0..100).all(|_| pick() == Some(0)), "measured slower");
    }

    #[test]
    fn ewma_of_an_endpoint_left_idle_decays() {
        let endpoints = endpoints(&[1, 1]);
        let balancer = Balancer::new(Balance::Ewma, &endpoints);
        let start = crate::now_ms();
        endpoints[0].observe_latency(Duration::from_millis(10), start);
        endpoints[1].observe_latency(Duration::from_millis(100), start);
        // The fast one takes all the traffic, while the slow one's estimate decays unrefreshed
        // until it beats the fast one's: 100 ms x e^(-t / 10 s) < 10 ms from t = 23 s.
        let mut now = start;
        while balancer.pick(&endpoints, None, now, &[]) == Some(0) {
            now += 100;
            assert!(now - start <= 24_000, "the slow endpoint was never retried");
        }
        assert!(now - start >= 22_000, "retried after {} ms only", now - start);
        // It got a request, so a fresh sample is coming; meanwhile its stamp is fresh and its
        // estimate back in force.
        assert_eq!(balancer.pick(&endpoints, None, now + 1, &[]), Some(0));
    }

    #[test]
    fn hash_maps_a_key_to_one_endpoint_and_spreads_keys() {
        let endpoints = endpoints(&[1; 5]);
        let balancer = Balancer::new(Balance::Hash, &endpoints);
        let other = Balancer::new(Balance::Hash, &endpoints);
        let mut counts = [0; 5];
        for i in 0..50_000 {
            let chosen = keyed_pick(&balancer, &endpoints, key(i));
            assert_eq!(keyed_pick(&balancer, &endpoints, key(i)), chosen, "same key, same endpoint");
            assert_eq!(keyed_pick(&other, &endpoints, key(i)), chosen, "same on another build");
            counts[chosen] += 1;
        }
        for count in counts {
            assert_near(count, 10_000.0, 0.1, "keys per endpoint");
        }
    }

    #[test]
    fn hash_follows_weights() {
        let endpoints = endpoints(&[1, 3]);
        let balancer = Balancer::new(Balance::Hash, &endpoints);
        let heavy = (0..40_000).filter(|&i| keyed_pick(&balancer, &endpoints, key(i)) == 1).count();
        assert_near(heavy, 30_000.0, 0.05, "weight 3 of 4");
    }

    #[test]
    fn hash_table_depends_on_addresses_not_order() {
        let endpoints = endpoints(&[1, 2, 1, 1, 3, 1, 1]);
        let balancer = Balancer::new(Balance::Hash, &endpoints);
        let reversed: Vec<_> = endpoints.iter().rev().cloned().collect();
        let other = Balancer::new(Balance::Hash, &reversed);
        for i in 0..10_000 {
            let address = endpoints[keyed_pick(&balancer, &endpoints, key(i))].address;
            assert_eq!(reversed[keyed_pick(&other, &reversed, key(i))].address, address, "key {i}");
        }
    }

    #[test]
    fn removing_an_endpoint_moves_about_its_share_of_keys() {
        const N: usize = 10;
        const KEYS: usize = 50_000;
        let all = endpoints(&[1; N]);
        let before = Balancer::new(Balance::Hash, &all);
        let removed = 4;
        let mut rest = all.clone();
        rest.remove(removed);
        let after = Balancer::new(Balance::Hash, &rest);

        let (mut moved, mut collateral) = (0, 0);
        for i in 0..KEYS {
            let old = all[keyed_pick(&before, &all, key(i))].address;
            let new = rest[keyed_pick(&after, &rest, key(i))].address;
            if old != new {
                moved += 1;
                if old != address(removed) {
                    collateral += 1;
                }
            }
        }
        // The removed endpoint's keys (about 1/N) must move; Maglev moves only ~1% more.
        assert_near(moved - collateral, (KEYS / N) as f64, 0.1, "keys of the removed endpoint");
        assert!(collateral <= KEYS * 2 / 100, "{collateral} keys moved between remaining endpoints");
    }

    #[test]
    fn hash_fallback_is_consistent() {
        let endpoints = endpoints(&[1; 5]);
        let balancer = Balancer::new(Balance::Hash, &endpoints);
        let owners: Vec<usize> = (0..20_000).map(|i| keyed_pick(&balancer, &endpoints, key(i))).collect();

        endpoints[2].set_check_healthy(false);
        let mut fallbacks = [0; 5];
        for (i, &owner) in owners.iter().enumerate() {
            let chosen = keyed_pick(&balancer, &endpoints, key(i));
            if owner == 2 {
                assert_ne!(chosen, 2);
                assert_eq!(keyed_pick(&balancer, &endpoints, key(i)), chosen, "same key, same fallback");
                // Excluding the endpoint (a retry) falls back the same way.
                endpoints[2].set_check_healthy(true);
                assert_eq!(balancer.pick(&endpoints, Some(key(i)), 0, &[2]), Some(chosen));
                endpoints[2].set_check_healthy(false);
                fallbacks[chosen] += 1;
            } else {
                assert_eq!(chosen, owner, "key {i} moved although its endpoint is up");
            }
        }
        // The displaced keys spread over the others instead of all landing on one.
        for (index, &count) in fallbacks.iter().enumerate().filter(|&(index, _)| index != 2) {
            assert_near(
                count,
                owners.iter().filter(|&&owner| owner == 2).count() as f64 / 4.0,
                0.3,
                &format!("fallbacks to {index}"),
            );
        }

        // A retry excluding the fallback too gets yet another, still consistently.
        let i = owners.iter().position(|&owner| owner == 2).unwrap();
        let first = keyed_pick(&balancer, &endpoints, key(i));
        let second = balancer.pick(&endpoints, Some(key(i)), 0, &[first]).unwrap();
        assert!(second != first && second != 2);
        assert_eq!(balancer.pick(&endpoints, Some(key(i)), 0, &[first]), Some(second));
    }

    #[test]
    fn hash_without_a_key_is_weighted_round_robin() {
        let endpoints = endpoints(&[1, 2, 3]);
        let balancer = Balancer::new(Balance::Hash, &endpoints);
        assert_eq!(counts(&balancer, &endpoints, 600, &[]), [100, 200, 300]);
    }

    #[test]
    fn hash_table_sizes_are_prime_and_large_enough() {
        for size in HASH_TABLE_SIZES {
            assert!(try_build_table(&[], size).is_ok(), "{size} is not prime");
        }
        for (count, size) in
            [(1, 16_381), (3, 16_381), (4, 16_381), (64, 16_381), (65, 262_139), (5_000, 1_048_573)]
        {
            let balancer = Balancer::new(Balance::Hash, &endpoints(&vec![1; count]));
            let Strategy::Hash { table, .. } = &balancer.strategy else { unreachable!() };
            assert_eq!(table.len(), size, "{count} endpoints");
        }
    }

    #[test]
    fn hash_key_reads_header_cookie_and_client_ip() {
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-user", HeaderValue::from_static("alice"));
        headers.insert("x-empty", HeaderValue::from_static(""));
        headers.append(http::header::COOKIE, HeaderValue::from_static("a=1; sticky=abc; b=2"));
        // A second Cookie header (HTTP/2 may split them), quotes, odd spacing, empty values.
        headers.append(
            http::header::COOKIE,
            HeaderValue::from_static("c=\"quoted\";d =  spaced ;e=;f; sticky=later"),
        );
        let uri = http::Uri::from_static("/");
        let header = |name: &str| hash_key(&HashOn::Header(name.to_owned()), &headers, client, &uri);
        let cookie = |name: &str| hash_key(&HashOn::Cookie(name.to_owned()), &headers, client, &uri);

        assert_eq!(header("x-user"), Some(stable_hash(b"alice")));
        assert_eq!(header("X-User"), header("x-user"), "header names are case-insensitive");
        assert_eq!(header("x-other"), None);
        assert_eq!(header("x-empty"), None);
        assert_eq!(cookie("sticky"), Some(stable_hash(b"abc")), "the first one wins");
        assert_eq!(cookie("a"), Some(stable_hash(b"1")));
        assert_eq!(cookie("b"), Some(stable_hash(b"2")));
        assert_eq!(cookie("Sticky"), None, "cookie names are case-sensitive");
        assert_eq!(cookie("stick"), None);
        assert_eq!(cookie("ticky"), None);
        let mut lookalikes = HeaderMap::new();
        lookalikes.insert(http::header::COOKIE, HeaderValue::from_static("nosticky=no; sticky=yes"));
        assert_eq!(
            hash_key(&HashOn::Cookie("sticky".to_owned()), &lookalikes, client, &uri),
            Some(stable_hash(b"yes")),
            "a cookie whose name ends with the wanted one is another cookie"
        );
        assert_eq!(cookie("missing"), None);
        assert_eq!(cookie("c"), Some(stable_hash(b"quoted")));
        assert_eq!(cookie("d"), Some(stable_hash(b"spaced")));
        assert_eq!(cookie("e"), None);
        assert_eq!(cookie("f"), None);

        let ip = |ip: &str| hash_key(&HashOn::ClientIp, &HeaderMap::new(), ip.parse().unwrap(), &uri);
        assert_eq!(ip("192.0.2.7"), Some(stable_hash(&[192, 0, 2, 7])));
        assert_eq!(ip("::ffff:192.0.2.7"), ip("192.0.2.7"), "IPv4-mapped is the IPv4 client");
        assert_ne!(ip("192.0.2.8"), ip("192.0.2.7"));
        assert_eq!(
            ip("2001:db8::1"),
            Some(stable_hash(&Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).octets()))
        );
        assert_ne!(header("x-user"), cookie("sticky"));
    }

    #[test]
    fn hashes_are_pinned() {
        // Reference vectors: FNV-1a 64 of "" and "a" (Fowler, Noll, Vo), SplitMix64 seeded
        // with 1234567. If this fails, every hashed client moves endpoint during a rolling
        // upgrade, and instances of different versions disagree; change it only on purpose.
        assert_eq!(fnv1a_64(FNV1A_64_START, b""), 0xCBF2_9CE4_8422_2325);
        assert_eq!(fnv1a_64(FNV1A_64_START, b"a"), 0xAF63_DC4C_8601_EC8C);
        assert_eq!(splitmix64(1_234_567), 0x599E_D017_FB08_FC85);
        assert_eq!(address_hash(address(1)), address_hash("[::ffff:10.1.0.1]:8080".parse().unwrap()));
        assert_ne!(address_hash(address(1)), address_hash(SocketAddr::from(([10, 1, 0, 1], 8081))));
    }

    #[test]
    fn concurrent_round_robin_keeps_the_proportions() {
        let endpoints = Arc::new(endpoints(&[1, 2, 3]));
        let balancer = Arc::new(Balancer::build(Balance::RoundRobin, &endpoints, 0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (balancer, endpoints) = (balancer.clone(), endpoints.clone());
                thread::spawn(move || counts(&balancer, &endpoints, 10_000, &[]))
            })
            .collect();
        let mut total = [0; 3];
        for thread in threads {
            for (sum, count) in total.iter_mut().zip(thread.join().unwrap()) {
                *sum += count;
            }
        }
        // Every slot is handed out exactly once, whoever takes it, so the proportions are not
        // just close but exact: 40_000 picks are 6_666 whole cycles of `2 1 0 2 1 2` plus
        // `2 1 0 2`. A cursor that lost or repeated increments under contention would be off.
        assert_eq!(total, [6_667, 13_333, 20_000]);
    }

    #[test]
    fn templates_combine_variables_and_skip_requests_without_a_key() {
        let client: IpAddr = "198.18.0.1".parse().unwrap();
        let other: IpAddr = "198.18.0.2".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-user", "alice".parse().unwrap());
        headers.insert(http::header::COOKIE, "a=1; session=s1".parse().unwrap());
        let uri: http::Uri = "/cart?item=3".parse().unwrap();
        let key = |template: &str, headers: &HeaderMap, client: IpAddr, uri: &http::Uri| {
            hash_key(&HashOn::Template(template.to_owned()), headers, client, uri)
        };
        let both = key("$remote_addr$request_uri", &headers, client, &uri).unwrap();
        assert_eq!(key("$remote_addr$request_uri", &headers, client, &uri), Some(both), "stable");
        assert_ne!(key("$remote_addr$request_uri", &headers, other, &uri), Some(both), "address counts");
        let other_uri: http::Uri = "/cart?item=4".parse().unwrap();
        assert_ne!(key("$remote_addr$request_uri", &headers, client, &other_uri), Some(both), "query counts");
        assert_eq!(
            key("$http_x_user", &headers, client, &uri),
            key("$http_x_user", &headers, other, &other_uri),
            "a header-only template ignores the rest"
        );
        assert!(key("$cookie_session", &headers, client, &uri).is_some());
        assert_eq!(key("$cookie_missing$http_missing", &headers, client, &uri), None, "no key, no hash");
    }
}
