//! The store's metric handles (names in [`aether_core::store_metrics`], label `store` =
//! `jetstream`), registered once when the store opens so the hot path does no registry lookup.
//! Install the metrics recorder before opening the store.

use aether_core::store_metrics as names;
use metrics::{Counter, Histogram};

const STORE: (&str, &str) = ("store", "jetstream");

#[derive(Debug)]
pub(crate) struct StoreMetrics {
    pub(crate) appends_ok: Counter,
    pub(crate) appends_conflict: Counter,
    pub(crate) appends_error: Counter,
    pub(crate) events: Counter,
    pub(crate) batch_events: Histogram,
    pub(crate) append_seconds: Histogram,
    pub(crate) replay_seconds: Histogram,
    pub(crate) replayed: Counter,
    pub(crate) lookups: Counter,
    pub(crate) snapshot_saves: Counter,
    pub(crate) snapshot_hits: Counter,
    pub(crate) snapshot_misses: Counter,
}

impl StoreMetrics {
    pub(crate) fn new() -> Self {
        let with = |key: &'static str, value: &'static str| [STORE, (key, value)];
        Self {
            appends_ok: metrics::counter!(names::APPENDS, &with("outcome", "ok")),
            appends_conflict: metrics::counter!(names::APPENDS, &with("outcome", "conflict")),
            appends_error: metrics::counter!(names::APPENDS, &with("outcome", "error")),
            events: metrics::counter!(names::EVENTS_APPENDED, &[STORE]),
            batch_events: metrics::histogram!(names::APPEND_BATCH_EVENTS, &[STORE]),
            append_seconds: metrics::histogram!(names::APPEND_SECONDS, &[STORE]),
            replay_seconds: metrics::histogram!(names::REPLAY_SECONDS, &[STORE]),
            replayed: metrics::counter!(names::REPLAYED_EVENTS, &[STORE]),
            lookups: metrics::counter!(names::POSITION_LOOKUPS, &[STORE]),
            snapshot_saves: metrics::counter!(names::SNAPSHOT_SAVES, &[STORE]),
            snapshot_hits: metrics::counter!(names::SNAPSHOT_LOADS, &with("outcome", "hit")),
            snapshot_misses: metrics::counter!(names::SNAPSHOT_LOADS, &with("outcome", "miss")),
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
