//! [`Bounded`]: the store's per-actor caches (version and position, snapshot checkpoints) as
//! least-recently-used maps with a fixed capacity, so touching any number of actors — including
//! hostile ids from EventStored notifications — cannot grow memory without bound. The caches
//! only save round trips: an evicted actor's position is read from the server again.

use std::num::NonZeroUsize;
use std::sync::{Mutex, PoisonError};

use lru::LruCache;

use crate::metrics::CacheMetrics;

/// An LRU map from actor id to `V`, at most `capacity` entries.
pub(crate) struct Bounded<V> {
    map: Mutex<LruCache<String, V>>,
    metrics: CacheMetrics,
}

impl<V: Clone> Bounded<V> {
    /// A cache holding at most `capacity` actors (at least 1), counting its hits, misses and
    /// evictions in `metrics`.
    pub(crate) fn new(capacity: usize, metrics: CacheMetrics) -> Self {
        Self {
            map: Mutex::new(LruCache::new(
                NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN),
            )),
            metrics,
        }
    }

    fn insert(&self, map: &mut LruCache<String, V>, actor_id: &str, value: V) {
        if let Some((evicted, _)) = map.push(actor_id.to_owned(), value)
            && evicted != actor_id
        {
            self.metrics.evictions.increment(1);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<String, V>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The entry for `actor_id`, marking it recently used.
    pub(crate) fn get(&self, actor_id: &str) -> Option<V> {
        let found = self.lock().get(actor_id).cloned();
        match found {
            Some(_) => self.metrics.hits.increment(1),
            None => self.metrics.misses.increment(1),
        }
        found
    }

    /// The entry for `actor_id`, created by `make` if absent (evicting the least recently used).
    pub(crate) fn get_or_insert_with(&self, actor_id: &str, make: impl FnOnce() -> V) -> V {
        let mut map = self.lock();
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
        let mut map = self.lock();
        self.insert(&mut map, actor_id, value);
    }

    /// How many actors are cached.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Forgets everything.
    pub(crate) fn clear(&self) {
        self.lock().clear();
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
}
