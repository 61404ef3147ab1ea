//! The store's metric handles (names in [`aether_core::store_metrics`], label `store` =
//! `jetstream`), registered once when the store opens so the hot path does no registry lookup.
//! Install the metrics recorder before opening the store.

use aether_core::store_metrics as names;
use metrics::{Counter, Histogram};

const STORE: (&str, &str) = ("store", "jetstream");

/// Every store's handles, plus the JetStream store's own (timings, position lookups).
#[derive(Debug)]
pub(crate) struct StoreMetrics {
    /// The handles every store has.
    pub(crate) store: aether_core::store_metrics::StoreMetrics,
    pub(crate) append_seconds: Histogram,
    pub(crate) replay_seconds: Histogram,
    pub(crate) lookups: Counter,
}

impl StoreMetrics {
    pub(crate) fn new() -> Self {
        Self {
            store: aether_core::store_metrics::StoreMetrics::new(STORE.1),
            append_seconds: metrics::histogram!(names::APPEND_SECONDS, &[STORE]),
            replay_seconds: metrics::histogram!(names::REPLAY_SECONDS, &[STORE]),
            lookups: metrics::counter!(names::POSITION_LOOKUPS, &[STORE]),
        }
    }
}

/// Hits, misses and evictions of one of the store's per-actor caches (label `cache`).
#[derive(Debug, Clone)]
pub(crate) struct CacheMetrics {
    pub(crate) hits: Counter,
    pub(crate) misses: Counter,
    pub(crate) evictions: Counter,
}

impl CacheMetrics {
    pub(crate) fn new(cache: &'static str) -> Self {
        let labels = [STORE, ("cache", cache)];
        Self {
            hits: metrics::counter!(names::CACHE_HITS, &labels),
            misses: metrics::counter!(names::CACHE_MISSES, &labels),
            evictions: metrics::counter!(names::CACHE_EVICTIONS, &labels),
        }
    }

    /// Handles that record nothing (for caches in unit tests).
    #[cfg(test)]
    pub(crate) fn noop() -> Self {
        Self {
            hits: Counter::noop(),
            misses: Counter::noop(),
            evictions: Counter::noop(),
        }
    }
}
