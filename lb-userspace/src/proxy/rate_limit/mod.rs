//! Per-client limits (ingress-nginx's `limit-rps`, `limit-rpm`, `limit-connections`; the
//! response bandwidth of `limit-rate` is [`bandwidth`]), kept per node in two fixed tables that
//! every worker shares without a lock.
//!
//! - A table is an array of `AtomicU64` slots in sets of [`WAYS`]; a client (route name and
//!   canonical address, hashed with a per-process random key so that no one can aim at another
//!   client's set) owns at most one slot, found by a 16-bit tag in the slot's top bits. The low
//!   48 bits hold the entry's state, changed by compare-and-swap.
//! - Requests per second or minute are a GCRA bucket (the state is the theoretical arrival
//!   time in microseconds), which is what nginx's `limit_req burst=N nodelay` does observably:
//!   `rps × burst_multiplier` requests more than the first are let through at once, then one
//!   per interval; a refused request costs nothing.
//! - Connections are a count of the client's requests in progress (nginx's `limit_conn`
//!   counts requests being processed), released when the response has been sent.
//! - Memory never grows: a client without a slot takes a free one (an empty slot, a bucket
//!   that has drained, a count at zero), else evicts the entry of its set that holds the least
//!   (the bucket closest to drained, the smallest count), counted in
//!   `sluice_rate_limit_evictions_total`. An attacker's many addresses so evict each other
//!   before they evict a client that is being limited.
//!
//! Two clients whose hashes share a set and a tag (one in 65,536 per set) share a budget.

pub mod bandwidth;

use std::{
    hash::{BuildHasher, RandomState},
    net::IpAddr,
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use prometheus_client::metrics::MetricType;

use crate::{
    config::RateLimitConfig,
    metrics::{Sample, ScrapeSource},
};

/// Slots of the node's request table (8 bytes each: 2 MiB).
const REQUEST_SLOTS: usize = 1 << 18;
/// Slots of the node's connection table (512 KiB).
const CONNECTION_SLOTS: usize = 1 << 16;
/// Slots per set: a client's entry is one of these.
pub const WAYS: usize = 4;
const TAG_SHIFT: u32 = 48;
const STATE_MASK: u64 = (1 << TAG_SHIFT) - 1;
const MICROS_PER_SECOND: u64 = 1_000_000;

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over `rps` or `rpm` (after the burst).
    Requests,
    /// Over `connections`.
    Connections,
}

/// A fixed-size table of per-client entries.
pub struct Table {
    slots: Box<[AtomicU64]>,
    evictions: AtomicU64,
    hasher: RandomState,
}

/// Where a client's entry lives: its set, and its tag in place (never 0, so an empty slot
/// matches no one).
#[derive(Debug, Clone, Copy)]
struct Key {
    set: usize,
    tag: u64,
}

/// How [`Table::find`] found the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    /// The client's own entry.
    Own,
    /// A slot that holds nothing worth keeping.
    Free,
    /// Another client's live entry, which taking it evicts.
    Evicted,
}

impl Table {
    /// A table of `slots` slots (rounded up to a power of two, at least one set).
    pub fn new(slots: usize) -> Table {
        let slots = slots.next_power_of_two().max(WAYS);
        Table {
            slots: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            evictions: AtomicU64::new(0),
            hasher: RandomState::new(),
        }
    }

    /// The number of slots: fixed for the table's life.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Live entries evicted to make room for another client.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    fn key(&self, kind: u8, route: &str, client: IpAddr) -> Key {
        let hash = self.hasher.hash_one((kind, route, client.to_canonical()));
        let sets = self.slots.len() / WAYS;
        Key { set: (hash as usize) & (sets - 1), tag: (hash >> TAG_SHIFT).max(1) << TAG_SHIFT }
    }

    /// The client's slot (index, value, how found): its own, else the one that holds least by
    /// `weight` (0: nothing worth keeping).
    fn find(&self, key: Key, weight: impl Fn(u64) -> u64) -> (usize, u64, Found) {
        let first = key.set * WAYS;
        let mut victim = (first, 0, u64::MAX);
        for (index, slot) in self.slots[first..first + WAYS].iter().enumerate() {
            let value = slot.load(Ordering::Acquire);
            if value & !STATE_MASK == key.tag {
                return (first + index, value, Found::Own);
            }
            let held = if value == 0 { 0 } else { weight(value & STATE_MASK) };
            if held < victim.2 {
                victim = (first + index, value, held);
            }
        }
        let found = if victim.2 == 0 { Found::Free } else { Found::Evicted };
        (victim.0, victim.1, found)
    }

    /// One request at `now` (µs) on a GCRA bucket that lets one request through per
    /// `interval` (µs) and `burst` more at once. A refused request changes nothing.
    fn take(&self, key: Key, now: u64, interval: u64, burst: u64) -> bool {
        let tolerance = interval.saturating_mul(burst);
        loop {
            let (index, current, found) = self.find(key, |arrival| arrival.saturating_sub(now));
            let arrival = match found {
                Found::Own => (current & STATE_MASK).max(now),
                Found::Free | Found::Evicted => now,
            };
            if arrival - now > tolerance {
                return false;
            }
            let next = key.tag | (arrival + interval).min(STATE_MASK);
            if self.slots[index].compare_exchange(current, next, Ordering::AcqRel, Ordering::Relaxed).is_ok()
            {
                if found == Found::Evicted {
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                }
                return true;
            }
        }
    }

    /// Gives back one request taken by [`Table::take`] (another limit refused the request).
    fn give_back(&self, key: Key, interval: u64) {
        let slot = &self.slots[self.find(key, |_| 0).0];
        let mut current = slot.load(Ordering::Acquire);
        while current & !STATE_MASK == key.tag {
            let next = key.tag | (current & STATE_MASK).saturating_sub(interval);
            match slot.compare_exchange(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(now) => current = now,
            }
        }
    }

    /// One more request in progress for the client, unless it has `limit` already.
    fn enter(&self, key: Key, limit: u64) -> Option<usize> {
        loop {
            let (index, current, found) = self.find(key, |count| count);
            let count = if found == Found::Own { current & STATE_MASK } else { 0 };
            if count >= limit {
                return None;
            }
            let next = key.tag | (count + 1);
            if self.slots[index].compare_exchange(current, next, Ordering::AcqRel, Ordering::Relaxed).is_ok()
            {
                if found == Found::Evicted {
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                }
                return Some(index);
            }
        }
    }

    /// One request fewer in progress, unless the entry was evicted meanwhile.
    fn leave(&self, index: usize, tag: u64) {
        let slot = &self.slots[index];
        let mut current = slot.load(Ordering::Acquire);
        while current & !STATE_MASK == tag && current & STATE_MASK > 0 {
            match slot.compare_exchange(current, current - 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(now) => current = now,
            }
        }
    }
}

/// A request counted among its client's requests in progress until this is dropped (when
/// its response has been sent).
#[must_use]
pub struct InProgress<'a> {
    table: &'a Table,
    index: usize,
    tag: u64,
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.table.leave(self.index, self.tag);
    }
}

/// The node's limiter: the request and connection tables and the clock they count in.
pub struct Limiter {
    requests: Table,
    connections: Table,
    epoch: Instant,
}

impl Limiter {
    pub fn new(request_slots: usize, connection_slots: usize) -> Limiter {
        Limiter {
            requests: Table::new(request_slots),
            connections: Table::new(connection_slots),
            epoch: Instant::now(),
        }
    }

    /// The node's limiter, shared by every worker and kept across configuration changes (a
    /// route keeps its budgets while its name stays). Allocated when first used.
    pub fn node() -> &'static Limiter {
        NODE.get_or_init(|| Limiter::new(REQUEST_SLOTS, CONNECTION_SLOTS))
    }

    pub fn requests(&self) -> &Table {
        &self.requests
    }

    pub fn connections(&self) -> &Table {
        &self.connections
    }

    /// Admits a request of `client` on `route` now, or says which limit refused it.
    pub fn admit(
        &self,
        limit: &RateLimitConfig,
        route: &str,
        client: IpAddr,
    ) -> Result<Option<InProgress<'_>>, Refusal> {
        let now = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(STATE_MASK);
        self.admit_at(limit, route, client, now)
    }

    /// [`Limiter::admit`] at `now` µs. Connections first, then `rps`, then `rpm`: whichever
    /// refuses, the request costs the client nothing.
    pub fn admit_at(
        &self,
        limit: &RateLimitConfig,
        route: &str,
        client: IpAddr,
        now: u64,
    ) -> Result<Option<InProgress<'_>>, Refusal> {
        if limit.allowlist.iter().any(|cidr| cidr.contains(client)) {
            return Ok(None);
        }
        let in_progress = match limit.connections {
            0 => None,
            most => {
                let key = self.connections.key(0, route, client);
                let index = self.connections.enter(key, u64::from(most)).ok_or(Refusal::Connections)?;
                Some(InProgress { table: &self.connections, index, tag: key.tag })
            }
        };
        let burst = |rate: u32| u64::from(rate) * u64::from(limit.burst_multiplier);
        let per_second = (limit.rps > 0)
            .then(|| (self.requests.key(1, route, client), MICROS_PER_SECOND / u64::from(limit.rps)));
        if let Some((key, interval)) = per_second
            && !self.requests.take(key, now, interval, burst(limit.rps))
        {
            return Err(Refusal::Requests);
        }
        if limit.rpm > 0 {
            let key = self.requests.key(2, route, client);
            let interval = 60 * MICROS_PER_SECOND / u64::from(limit.rpm);
            if !self.requests.take(key, now, interval, burst(limit.rpm)) {
                if let Some((key, interval)) = per_second {
                    self.requests.give_back(key, interval);
                }
                return Err(Refusal::Requests);
            }
        }
        Ok(in_progress)
    }
}

static NODE: OnceLock<Limiter> = OnceLock::new();

/// `sluice_rate_limit_evictions_total`, by table, read at scrape time.
#[derive(Debug)]
pub struct Evictions;

impl ScrapeSource for Evictions {
    fn samples(&self, emit: &mut dyn FnMut(Sample)) {
        let node = NODE.get();
        for (table, value) in [
            ("requests", node.map_or(0, |n| n.requests.evictions())),
            ("connections", node.map_or(0, |n| n.connections.evictions())),
        ] {
            emit(Sample {
                name: "sluice_rate_limit_evictions",
                help: "Rate-limit entries of one client evicted to make room for another (the tables have a fixed size)",
                kind: MetricType::Counter,
                unit: None,
                labels: vec![("table", table.to_owned())],
                value: value as f64,
            });
        }
    }
}

#[cfg(test)]
mod tests;
