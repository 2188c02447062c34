//! The node's bounded caches of access decisions: verified basic-auth credentials and external
//! auth answers. Keys are SHA-256 digests (of the route's rules and the request's credentials),
//! so they spread evenly over the shards and cannot be forged to collide; each shard has its
//! own lock, so no request waits on a global one, and forgets its oldest entry when full.

use std::collections::VecDeque;

use parking_lot::Mutex;

use crate::FastMap;

const SHARDS: usize = 16;

/// A SHA-256 of what a decision depends on.
pub type Key = [u8; 32];

/// The SHA-256 of `parts`, each length-prefixed so no two lists of parts give one key.
pub fn key_of(parts: &[&[u8]]) -> Key {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        context.update(&(part.len() as u64).to_le_bytes());
        context.update(part);
    }
    context.finish().as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// Values that expire at a time in milliseconds (`crate::now_ms`); `u64::MAX` never does.
#[derive(Debug)]
pub struct DecisionCache<V> {
    shards: Vec<Mutex<Shard<V>>>,
    per_shard: usize,
}

#[derive(Debug)]
struct Shard<V> {
    entries: FastMap<Key, (V, u64)>,
    order: VecDeque<Key>,
}

impl<V: Clone> DecisionCache<V> {
    pub fn new(capacity: usize) -> DecisionCache<V> {
        DecisionCache {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(Shard { entries: FastMap::default(), order: VecDeque::new() }))
                .collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, key: &Key) -> &Mutex<Shard<V>> {
        &self.shards[usize::from(key[0]) % SHARDS]
    }

    /// The value under `key`, unless it expired by `now_ms`.
    pub fn get(&self, key: &Key, now_ms: u64) -> Option<V> {
        let shard = self.shard(key).lock();
        shard.entries.get(key).filter(|(_, expires)| *expires > now_ms).map(|(value, _)| value.clone())
    }

    pub fn insert(&self, key: Key, value: V, expires_ms: u64) {
        let mut shard = self.shard(&key).lock();
        if shard.entries.insert(key, (value, expires_ms)).is_none() {
            shard.order.push_back(key);
        }
        while shard.order.len() > self.per_shard {
            if let Some(oldest) = shard.order.pop_front() {
                shard.entries.remove(&oldest);
            }
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().entries.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_oldest_forgotten_and_expiry_honoured() {
        let cache = DecisionCache::new(64);
        for i in 0u32..10_000 {
            cache.insert(key_of(&[&i.to_le_bytes()]), i, u64::MAX);
        }
        assert!(cache.len() <= 64, "{}", cache.len());
        assert_eq!(cache.get(&key_of(&[&9_999u32.to_le_bytes()]), 0), Some(9_999));
        assert_eq!(cache.get(&key_of(&[&0u32.to_le_bytes()]), 0), None);
        cache.insert(key_of(&[b"short"]), 1, 100);
        assert_eq!(cache.get(&key_of(&[b"short"]), 99), Some(1));
        assert_eq!(cache.get(&key_of(&[b"short"]), 100), None, "expired");
        assert_ne!(key_of(&[b"ab", b"c"]), key_of(&[b"a", b"bc"]), "parts are delimited");
    }
}
