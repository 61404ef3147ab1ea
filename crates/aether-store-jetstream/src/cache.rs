//! [`Bounded`]: the store's per-actor caches (version and position, snapshot checkpoints) as
//! least-recently-used maps with a fixed capacity, so touching any number of actors — including
//! hostile ids from EventStored notifications — cannot grow memory without bound. The caches
//! only save round trips: an evicted actor's position is read from the server again.

use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, PoisonError};

use lru::LruCache;

use crate::metrics::CacheMetrics;

/// Caches of at least this many entries are split into [`SHARDS`] independently locked maps, so
/// appends to different actors on different threads rarely meet on one lock.
const SHARDED_FROM: usize = 4096;
const SHARDS: usize = 16;

/// An LRU map from actor id to `V`, at most `capacity` entries (split into shards for large
/// capacities: then the least recently used entry of the actor's shard is evicted). The maps
/// grow with use instead of reserving the whole capacity up front, so a store that touches few
/// actors keeps a small, cache-friendly table.
pub(crate) struct Bounded<V> {
    shards: Box<[Mutex<LruCache<String, V>>]>,
    /// Entries per shard.
    per_shard: usize,
    hasher: RandomState,
    metrics: CacheMetrics,
}

impl<V: Clone> Bounded<V> {
    /// A cache holding at most `capacity` actors (at least 1), counting its hits, misses and
    /// evictions in `metrics`.
    pub(crate) fn new(capacity: usize, metrics: CacheMetrics) -> Self {
        let capacity = capacity.max(1);
        let shards = if capacity >= SHARDED_FROM { SHARDS } else { 1 };
        Self {
            shards: (0..shards)
                .map(|_| Mutex::new(LruCache::unbounded()))
                .collect(),
            per_shard: capacity / shards,
            hasher: RandomState::new(),
            metrics,
        }
    }

    fn lock(&self, actor_id: &str) -> std::sync::MutexGuard<'_, LruCache<String, V>> {
        let shard = if self.shards.len() == 1 {
            0
        } else {
            (self.hasher.hash_one(actor_id) as usize) % self.shards.len()
        };
        self.shards[shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn insert(&self, map: &mut LruCache<String, V>, actor_id: &str, value: V) {
        if map.put(actor_id.to_owned(), value).is_none() && map.len() > self.per_shard {
            map.pop_lru();
            self.metrics.evictions.increment(1);
        }
    }

    /// The entry for `actor_id`, marking it recently used.
    pub(crate) fn get(&self, actor_id: &str) -> Option<V> {
        let found = self.lock(actor_id).get(actor_id).cloned();
        match found {
            Some(_) => self.metrics.hits.increment(1),
            None => self.metrics.misses.increment(1),
        }
        found
    }

    /// The entry for `actor_id`, created by `make` if absent (evicting the least recently used).
    pub(crate) fn get_or_insert_with(&self, actor_id: &str, make: impl FnOnce() -> V) -> V {
        let mut map = self.lock(actor_id);
        if let Some(v) = map.get(actor_id) {
            self.metrics.hits.increment(1);
            return v.clone();
        }
        self.metrics.misses.increment(1);
        let v = make();
        self.insert(&mut map, actor_id, v.clone());
        v
    }

    /// Sets the entry for `actor_id`.
    pub(crate) fn put(&self, actor_id: &str, value: V) {
        let mut map = self.lock(actor_id);
        self.insert(&mut map, actor_id, value);
    }

    /// How many actors are cached.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Forgets everything (and gives the tables' memory back).
    pub(crate) fn clear(&self) {
        for shard in &self.shards {
            *shard.lock().unwrap_or_else(PoisonError::into_inner) = LruCache::unbounded();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_at_most_its_capacity_and_keeps_the_recently_used() {
        let cache = Bounded::new(3, CacheMetrics::noop());
        for i in 0..1000 {
            cache.put(&format!("a{i}"), i);
            assert!(cache.len() <= 3);
        }
        assert_eq!(cache.get("a999"), Some(999));
        assert_eq!(cache.get("a0"), None);
        let _ = cache.get("a997"); // used: survives the next insert
        cache.put("b", 1);
        assert_eq!(cache.get("a997"), Some(997));
        assert_eq!(cache.get("a998"), None);
        assert_eq!(cache.get_or_insert_with("c", || 5), 5);
        assert_eq!(cache.get_or_insert_with("c", || 6), 5);
        let zero = Bounded::new(0, CacheMetrics::noop());
        zero.put("x", 1);
        assert_eq!(zero.len(), 1);
    }

    #[test]
    fn large_caches_are_sharded_and_still_bounded() {
        let cache = Bounded::new(SHARDED_FROM, CacheMetrics::noop());
        assert_eq!(cache.shards.len(), SHARDS);
        for i in 0..20_000 {
            cache.put(&format!("a{i}"), i);
        }
        assert!(cache.len() <= SHARDED_FROM);
        // Recently written entries are all still there.
        for i in 19_900..20_000 {
            assert_eq!(cache.get(&format!("a{i}")), Some(i));
        }
        cache.clear();
        assert_eq!(cache.len(), 0);
    }
}
