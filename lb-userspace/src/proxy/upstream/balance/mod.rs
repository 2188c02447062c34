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

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use http::HeaderMap;

use crate::{
    config::{Balance, HashOn},
    maglev::{MaglevEntry, build_table},
    proxy::upstream::endpoint::Endpoint,
};

/// Longest round-robin schedule. Weights are first reduced by their gcd; if they still sum to
/// more, they are scaled down proportionally (each endpoint keeping at least one slot), so a
/// configuration with huge weights cannot make the build slow or the schedule large.
const MAX_SCHEDULE: u64 = 10_000;

/// Consistent-hash table sizes, all prime as Maglev requires (the builder panics otherwise;
/// a test checks each), in coarse tiers: the smallest with at least [`SLOTS_PER_ENDPOINT`]
/// slots per endpoint. Maglev's balance and minimal-disruption bounds need a table much larger
/// than the endpoint count (the paper suggests over 100x). The tiers are few and far apart on
/// purpose: a table of another size maps every key afresh, so scaling a group must not cross
/// a tier in its everyday range (1 to 64 endpoints share one size).
const HASH_TABLE_SIZES: [u32; 3] = [16_381, 262_139, 1_048_573];
const SLOTS_PER_ENDPOINT: u64 = 255;

/// Rehash probes a consistent-hash fallback tries before walking the table.
const FALLBACK_PROBES: usize = 16;

/// Random draws the power of two choices makes before falling back to a full scan. Enough for
/// the common case (most endpoints available) to never scan.
const SAMPLE_TRIES: usize = 8;

/// Decay window of the Peak EWMA, the same 10 s `Endpoint::observe_latency` uses (and
/// ingress-nginx's `ewma`).
const EWMA_DECAY_MS: f64 = 10_000.0;

/// FNV-1a 64-bit parameters (Fowler, Noll, Vo): a fixed hash with published test vectors.
const FNV_OFFSET: u64 = 0xCBF2_9CE4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01B3;

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
                let Some(b) = b else { return Some(a) };
                // Lower (inflight + 1) / weight wins, cross-multiplied to stay in integers
                // (u32 * u32 fits a u64). The + 1 is the load the new request adds: with equal
                // weights it orders like plain in-flight counts, and with unequal weights it
                // still favours the heavier endpoint when both are idle, which a bare
                // inflight / weight (0 = 0) would not.
                let load = |index: usize| u64::from(endpoints[index].inflight()) + 1;
                let cost_a = load(a) * u64::from(self.weights[b]);
                let cost_b = load(b) * u64::from(self.weights[a]);
                Some(cheaper(a, cost_a, b, cost_b))
            }
            Strategy::Ewma { last_pick_ms } => {
                let (a, b) = self.two_choices(eligible)?;
                let chosen = match b {
                    None => a,
                    Some(b) => {
                        let cost = |index: usize| {
                            let last = last_pick_ms[index].load(Ordering::Relaxed);
                            ewma_cost(&endpoints[index], self.weights[index], now_ms.saturating_sub(last))
                        };
                        cheaper(a, cost(a), b, cost(b))
                    }
                };
                let stamp = &last_pick_ms[chosen];
                // Skip the store when the stamp is current: on a busy endpoint this keeps the
                // cache line shared between workers instead of bouncing it every request.
                if stamp.load(Ordering::Relaxed) != now_ms {
                    stamp.store(now_ms, Ordering::Relaxed);
                }
                Some(chosen)
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
fn cheaper<C: PartialOrd>(a: usize, cost_a: C, b: usize, cost_b: C) -> usize {
    if cost_a < cost_b {
        a
    } else if cost_b < cost_a || fastrand::bool() {
        b
    } else {
        a
    }
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
fn ewma_cost(endpoint: &Endpoint, weight: u32, idle_ms: u64) -> (u8, f64) {
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

/// A precomputed smooth weighted round-robin cycle and the shared position in it.
#[derive(Debug)]
struct Schedule {
    /// Endpoint indices; each appears in proportion to its weight.
    slots: Box<[u32]>,
    /// Slots handed out so far (mod `slots.len()` is the next one). Alone on its cache line:
    /// every pick writes it, and the read-only fields next to it would otherwise be
    /// invalidated in every other worker's cache each time.
    cursor: CachePadded<AtomicUsize>,
}

/// Aligns its content to its own cache line (128 bytes covers the adjacent-line prefetch of
/// x86 and the line size of recent ARM cores).
#[derive(Debug)]
#[repr(align(128))]
struct CachePadded<T>(T);

impl Schedule {
    fn new(weights: &[u32], start: usize) -> Schedule {
        let slots = smooth_schedule(weights);
        let start = if slots.is_empty() { 0 } else { start % slots.len() };
        Schedule { slots, cursor: CachePadded(AtomicUsize::new(start)) }
    }

    fn pick(&self, eligible: impl Fn(usize) -> bool, any_eligible: impl Fn() -> bool) -> Option<usize> {
        let len = self.slots.len();
        if len == 0 {
            return None;
        }
        let next = || self.slots[self.cursor.0.fetch_add(1, Ordering::Relaxed) % len] as usize;
        let first = next();
        if eligible(first) {
            return Some(first);
        }
        // Only after a miss: the common case costs one atomic add and one availability check.
        if !any_eligible() {
            return None;
        }
        // Skipped slots are consumed from the shared cursor, not probed locally: over a cycle
        // every slot is then handed out once, so the endpoints still available keep exactly
        // their weighted proportions. Probing forward locally would instead give each
        // unavailable endpoint's slots to whichever endpoint follows it in the schedule.
        // `len` consumed slots cover a whole cycle when the picker is alone, so this finds
        // any eligible endpoint.
        for _ in 1..len {
            let index = next();
            if eligible(index) {
                return Some(index);
            }
        }
        // Other workers took the eligible slots in the meantime (or availability changed
        // under us): one local pass over the cycle, so a pick never fails while an endpoint
        // is available.
        let start = self.cursor.0.load(Ordering::Relaxed);
        (0..len)
            .map(|step| self.slots[start.wrapping_add(step) % len] as usize)
            .find(|&index| eligible(index))
    }
}

/// nginx's smooth weighted round robin, run once over a whole cycle: every step each endpoint
/// earns its weight, the richest (first on ties) is picked and pays the total. It spreads each
/// endpoint's turns evenly over the cycle (`5, 1, 1` gives `a a b a c a a`, not five `a` in a
/// row) and a cycle holds each endpoint exactly `weight` times.
fn smooth_schedule(weights: &[u32]) -> Box<[u32]> {
    let divisor = weights.iter().fold(0, |divisor, &weight| gcd(divisor, u64::from(weight)));
    if divisor == 0 {
        return Box::new([]); // no endpoint with a weight
    }
    let mut reduced: Vec<u64> = weights.iter().map(|&weight| u64::from(weight) / divisor).collect();
    let total: u64 = reduced.iter().sum();
    if total > MAX_SCHEDULE {
        // Proportions are approximate from here; an endpoint whose share rounds to nothing
        // keeps one slot, since a configured endpoint with a weight must get traffic.
        for weight in reduced.iter_mut().filter(|weight| **weight > 0) {
            *weight = (*weight * MAX_SCHEDULE / total).max(1);
        }
    }
    let total: u64 = reduced.iter().sum();
    let index = |i: usize| u32::try_from(i).expect("fewer than 2^32 endpoints");
    let live: Vec<usize> = (0..reduced.len()).filter(|&i| reduced[i] > 0).collect();
    if live.iter().all(|&i| reduced[i] == 1) {
        // Equal weights (the common case): the algorithm would yield the endpoints in order,
        // so skip its O(endpoints x total) run.
        return live.into_iter().map(index).collect();
    }
    let total_signed = i64::try_from(total).expect("schedule length is capped");
    let mut current = vec![0i64; reduced.len()];
    let mut slots = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = live[0];
        for &i in &live {
            // Lossless: each weight is at most the capped total.
            current[i] += reduced[i] as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total_signed;
        slots.push(index(best));
    }
    slots.into_boxed_slice()
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The Maglev table of endpoint indices, empty when no endpoint has a weight.
///
/// Each endpoint's place in the table derives from a fixed hash of its address alone, so
/// every worker, every node and every restart builds the same table from the same endpoints
/// (whatever their order), and a client pinned to an endpoint stays on it whichever load
/// balancer instance receives it. Maglev also keeps a removed endpoint's loss from moving
/// the keys of the others (beyond about 1%).
fn hash_table(endpoints: &[Arc<Endpoint>], weights: &[u32]) -> Box<[u32]> {
    if weights.iter().all(|&weight| weight == 0) {
        return Box::new([]);
    }
    let entries: Vec<MaglevEntry> = endpoints
        .iter()
        .zip(weights)
        .enumerate()
        .map(|(index, (endpoint, &weight))| MaglevEntry {
            key: address_hash(endpoint.address),
            // Maglev reserves 0 for an empty slot, so values are indices + 1.
            value: u32::try_from(index + 1).expect("fewer than 2^32 endpoints"),
            weight,
        })
        .collect();
    let wanted = endpoints.len() as u64 * SLOTS_PER_ENDPOINT;
    let size = HASH_TABLE_SIZES
        .into_iter()
        .find(|&size| u64::from(size) >= wanted)
        .unwrap_or(HASH_TABLE_SIZES[HASH_TABLE_SIZES.len() - 1]);
    // Every slot is owned since some endpoint has a weight, so `value - 1` cannot underflow.
    build_table(&entries, size).into_iter().map(|value| value - 1).collect()
}

/// The endpoint owning `key`'s slot; when it is unavailable or excluded, the next endpoint
/// found walking forward from that slot. The walk depends only on the key and the table, so
/// the fallback is consistent too: a key keeps its fallback endpoint while its own is out,
/// and keys whose endpoint is fine do not move at all. Maglev interleaves the endpoints'
/// slots, so the displaced keys spread over all the others rather than landing on one.
fn hash_pick(
    table: &[u32],
    key: u64,
    eligible: impl Fn(usize) -> bool,
    any_eligible: impl Fn() -> bool,
) -> Option<usize> {
    let size = table.len();
    if size == 0 {
        return None;
    }
    // Multiply-high maps the key onto the table using its high bits, without a division.
    let start = ((u128::from(key) * size as u128) >> 64) as usize;
    let owner = table[start] as usize;
    if eligible(owner) {
        return Some(owner);
    }
    if !any_eligible() {
        return None; // rather than walking the whole table for nothing
    }
    // Rehash the key a few times: each probe lands on a uniformly random slot, so a missing
    // endpoint's keys spread evenly over the others, and the same key always probes the same
    // slots, so its fallback is consistent.
    let mut probe = key;
    for _ in 0..FALLBACK_PROBES {
        probe = splitmix64(probe);
        let candidate = table[((u128::from(probe) * size as u128) >> 64) as usize] as usize;
        if eligible(candidate) {
            return Some(candidate);
        }
    }
    // Almost everything is out: walk the table for whatever is left.
    let mut rejected = owner;
    for step in 1..size {
        let candidate = table[(start + step) % size] as usize;
        // Runs of one endpoint are common; its verdict is already known.
        if candidate == rejected {
            continue;
        }
        if eligible(candidate) {
            return Some(candidate);
        }
        rejected = candidate;
    }
    None
}

/// The key for consistent hashing, from the request: the header's value, the cookie's value,
/// or the client's IP. `None` when the header or cookie is absent, or empty: an empty value
/// identifies nobody, and hashing it would pin every such client to one endpoint.
///
/// With a repeated header the first value counts; with a repeated cookie, the first one
/// across all `Cookie` headers (HTTP/2 clients may split cookies into several). The hash is
/// fixed (see [`stable_hash`]), so every worker and node maps a client the same way.
pub fn hash_key(on: &HashOn, headers: &HeaderMap, client: IpAddr, uri: &http::Uri) -> Option<u64> {
    let value = match on {
        HashOn::Header(name) => headers.get(name.as_str())?.as_bytes(),
        HashOn::Cookie(name) => cookie(headers, name.as_bytes())?,
        HashOn::ClientIp => return Some(ip_hash(client)),
        HashOn::Template(template) => return template_hash(template, headers, client, uri),
    };
    (!value.is_empty()).then(|| stable_hash(value))
}

/// Hashes an ingress-nginx `upstream-hash-by` template: literal text and `$variables`, fed
/// piece by piece into one hash (no string is built). `None` when every variable is empty, so
/// requests without a key fall back to round robin instead of sharing one endpoint.
fn template_hash(template: &str, headers: &HeaderMap, client: IpAddr, uri: &http::Uri) -> Option<u64> {
    let mut state = FNV_OFFSET;
    let mut any = false;
    let mut rest = template.as_bytes();
    while !rest.is_empty() {
        let Some(dollar) = rest.iter().position(|&b| b == b'$') else {
            state = fnv1a(state, rest);
            break;
        };
        state = fnv1a(state, &rest[..dollar]);
        let name_len =
            rest[dollar + 1..].iter().take_while(|b| b.is_ascii_alphanumeric() || **b == b'_').count();
        let name = &rest[dollar + 1..dollar + 1 + name_len];
        rest = &rest[dollar + 1 + name_len..];
        let value: &[u8] = match name {
            b"remote_addr" => {
                any = true;
                state = fnv1a(state, &ip_hash(client).to_le_bytes());
                continue;
            }
            b"request_uri" => uri.path_and_query().map(|p| p.as_str().as_bytes()).unwrap_or(b"/"),
            b"uri" => uri.path().as_bytes(),
            b"args" => uri.query().unwrap_or("").as_bytes(),
            b"host" => headers.get(http::header::HOST).map(|h| h.as_bytes()).unwrap_or(b""),
            _ => {
                if let Some(header) = name.strip_prefix(b"http_") {
                    header_by_variable(headers, header).unwrap_or(b"")
                } else if let Some(cookie_name) = name.strip_prefix(b"cookie_") {
                    cookie(headers, cookie_name).unwrap_or(b"")
                } else {
                    b""
                }
            }
        };
        any |= !value.is_empty();
        state = fnv1a(state, value);
    }
    any.then(|| splitmix64(state))
}

/// The header nginx's `$http_<name>` names: lower case, `_` for `-`.
fn header_by_variable<'a>(headers: &'a HeaderMap, variable: &[u8]) -> Option<&'a [u8]> {
    headers.iter().find_map(|(name, value)| {
        let name = name.as_str().as_bytes();
        (name.len() == variable.len()
            && name.iter().zip(variable).all(|(a, b)| a == b || (*a == b'-' && *b == b'_')))
        .then(|| value.as_bytes())
    })
}

/// The value of cookie `name`, read straight from the `Cookie` headers (RFC 6265 section 5.4:
/// `name=value` pairs separated by `;`), without building a map or allocating. Names are
/// case-sensitive; a quoted value loses its quotes (they are not part of it, section 4.1.1).
fn cookie<'a>(headers: &'a HeaderMap, name: &[u8]) -> Option<&'a [u8]> {
    headers.get_all(http::header::COOKIE).iter().find_map(|header| {
        header.as_bytes().split(|&byte| byte == b';').find_map(|pair| {
            let (key, value) = pair.split_at(pair.iter().position(|&byte| byte == b'=')?);
            (key.trim_ascii() == name).then(|| {
                let value = value[1..].trim_ascii();
                value.strip_prefix(b"\"").and_then(|value| value.strip_suffix(b"\"")).unwrap_or(value)
            })
        })
    })
}

/// Hash of a client address. IPv4-mapped IPv6 addresses (what a dual-stack listener reports
/// for IPv4 clients) hash like the IPv4 address, so a client keeps its endpoint whichever
/// listener it reached.
fn ip_hash(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(ip) => stable_hash(&ip.octets()),
        IpAddr::V6(ip) => stable_hash(&ip.octets()),
    }
}

/// Maglev key of an endpoint: its address's octets, then its port (big endian).
fn address_hash(address: SocketAddr) -> u64 {
    let state = match address.ip().to_canonical() {
        IpAddr::V4(ip) => fnv1a(FNV_OFFSET, &ip.octets()),
        IpAddr::V6(ip) => fnv1a(FNV_OFFSET, &ip.octets()),
    };
    splitmix64(fnv1a(state, &address.port().to_be_bytes()))
}

/// A hash that is the same on every machine, process and version, unlike `std`'s randomly
/// keyed `RandomState`: FNV-1a, then SplitMix64's finaliser. FNV-1a alone mixes its last
/// bytes poorly into the high bits, which the table lookup uses.
///
/// Changing it moves every hashed client to another endpoint, so tests pin it.
fn stable_hash(bytes: &[u8]) -> u64 {
    splitmix64(fnv1a(FNV_OFFSET, bytes))
}

fn fnv1a(state: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(state, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME))
}

/// SplitMix64 (Steele, Lea and Flood, OOPSLA 2014): a bijective, well-avalanching mixer
/// defined by integer arithmetic alone.
fn splitmix64(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv6Addr, thread, time::Duration};

    use http::HeaderValue;

    use super::*;
    use crate::maglev::try_build_table;

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
        assert_eq!(fnv1a(FNV_OFFSET, b""), 0xCBF2_9CE4_8422_2325);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xAF63_DC4C_8601_EC8C);
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
