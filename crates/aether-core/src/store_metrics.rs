//! Names of the metrics every Aether event store records through the
//! [`metrics`](https://docs.rs/metrics) facade (the list with types, labels and meanings is
//! `docs/metrics.md`). Stores label them with `store` (e.g. `"jetstream"`, `"memory"`); label
//! values are bounded: never an actor id or an event id.

/// Counter: append calls, by `outcome` (`ok`, `conflict`, `error`).
pub const APPENDS: &str = "aether_store_appends_total";
/// Counter: events stored.
pub const EVENTS_APPENDED: &str = "aether_store_events_appended_total";
/// Histogram: events per append call.
pub const APPEND_BATCH_EVENTS: &str = "aether_store_append_batch_events";
/// Histogram: seconds per append call.
pub const APPEND_SECONDS: &str = "aether_store_append_seconds";
/// Histogram: seconds per read, from its start to its last record.
pub const REPLAY_SECONDS: &str = "aether_store_replay_seconds";
/// Counter: records delivered by reads.
pub const REPLAYED_EVENTS: &str = "aether_store_replayed_events_total";
/// Counter: single-record lookups made to find where a version starts.
pub const POSITION_LOOKUPS: &str = "aether_store_position_lookups_total";
/// Counter: snapshots saved.
pub const SNAPSHOT_SAVES: &str = "aether_store_snapshot_saves_total";
/// Counter: snapshot reads, by `outcome` (`hit`, `miss`).
pub const SNAPSHOT_LOADS: &str = "aether_store_snapshot_loads_total";
/// Counter: per-actor cache lookups answered, by `cache`.
pub const CACHE_HITS: &str = "aether_store_cache_hits_total";
/// Counter: per-actor cache lookups not answered, by `cache`.
pub const CACHE_MISSES: &str = "aether_store_cache_misses_total";
/// Counter: per-actor cache entries evicted at capacity, by `cache`.
pub const CACHE_EVICTIONS: &str = "aether_store_cache_evictions_total";

/// Every name above, for tests and dashboards that check what is documented.
pub const ALL: [&str; 12] = [
    APPENDS,
    EVENTS_APPENDED,
    APPEND_BATCH_EVENTS,
    APPEND_SECONDS,
    REPLAY_SECONDS,
    REPLAYED_EVENTS,
    POSITION_LOOKUPS,
    SNAPSHOT_SAVES,
    SNAPSHOT_LOADS,
    CACHE_HITS,
    CACHE_MISSES,
    CACHE_EVICTIONS,
];

/// The handles of the metrics every store records, registered once when the store is created (no
/// registry lookup on the hot path), labelled `store` = the store's kind. Install the metrics
/// recorder before creating the store.
#[cfg(feature = "metrics")]
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StoreMetrics {
    /// [`APPENDS`], outcome `ok`.
    pub appends_ok: metrics::Counter,
    /// [`APPENDS`], outcome `conflict`.
    pub appends_conflict: metrics::Counter,
    /// [`APPENDS`], outcome `error`.
    pub appends_error: metrics::Counter,
    /// [`EVENTS_APPENDED`].
    pub events: metrics::Counter,
    /// [`APPEND_BATCH_EVENTS`].
    pub batch_events: metrics::Histogram,
    /// [`REPLAYED_EVENTS`].
    pub replayed: metrics::Counter,
    /// [`SNAPSHOT_SAVES`].
    pub snapshot_saves: metrics::Counter,
    /// [`SNAPSHOT_LOADS`], outcome `hit`.
    pub snapshot_hits: metrics::Counter,
    /// [`SNAPSHOT_LOADS`], outcome `miss`.
    pub snapshot_misses: metrics::Counter,
}

#[cfg(feature = "metrics")]
impl StoreMetrics {
    /// Registers the handles with label `store` = `store` (e.g. `"memory"`).
    pub fn new(store: &'static str) -> Self {
        let store = ("store", store);
        let with = |key: &'static str, value: &'static str| [store, (key, value)];
        Self {
            appends_ok: metrics::counter!(APPENDS, &with("outcome", "ok")),
            appends_conflict: metrics::counter!(APPENDS, &with("outcome", "conflict")),
            appends_error: metrics::counter!(APPENDS, &with("outcome", "error")),
            events: metrics::counter!(EVENTS_APPENDED, &[store]),
            batch_events: metrics::histogram!(APPEND_BATCH_EVENTS, &[store]),
            replayed: metrics::counter!(REPLAYED_EVENTS, &[store]),
            snapshot_saves: metrics::counter!(SNAPSHOT_SAVES, &[store]),
            snapshot_hits: metrics::counter!(SNAPSHOT_LOADS, &with("outcome", "hit")),
            snapshot_misses: metrics::counter!(SNAPSHOT_LOADS, &with("outcome", "miss")),
        }
    }

    /// Counts an append call of `events` events by its outcome (and the events, if stored).
    pub fn appended(&self, result: &Result<(), crate::StoreError>, events: usize) {
        match result {
            Ok(()) => {
                self.appends_ok.increment(1);
                self.events.increment(events as u64);
            }
            Err(crate::StoreError::VersionConflict { .. }) => self.appends_conflict.increment(1),
            Err(_) => self.appends_error.increment(1),
        }
    }
}
