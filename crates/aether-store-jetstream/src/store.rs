//! [`JetStreamEventStore`]: events in a JetStream stream, snapshots in a KV bucket.
//!
//! This file holds the type, its public API and the `aether-core` trait impls, which delegate to
//! the submodules: [`open`] (stream and bucket setup), [`append`] (publishing events),
//! [`replay`] (reading them back), [`snapshots`] (the KV bucket and replay checkpoints) and
//! [`slots`] (the per-actor version cache and write serialisation); reads go through [`direct`]
//! (direct gets: no server state) or [`consumer`] (a replay consumer for long reads). With a
//! permission watch, [`permissions`] ends a call the server refuses for the user's permissions.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use aether_core::{
    ActorSnapshot, Event, EventBroadcaster, EventStore, EventStoreWithErrors, EventStream,
    Namespace, ReplayResult, SnapshotStore, StoreError, limits,
};
use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use tracing::Instrument;

use self::replay::Replayed;
use self::slots::ActorSlot;
use crate::cache::Bounded;
use crate::config::JetStreamConfig;
use crate::error::ConfigError;
use crate::layout;

mod append;
mod consumer;
mod direct;
mod open;

pub use open::stream_problems;
mod permissions;
mod replay;
mod seek;
mod slots;
mod snapshots;

/// Counters of what this store read from the server (see [`JetStreamEventStore::read_stats`]).
#[derive(Debug, Default)]
struct ReadCounters {
    records_read: AtomicU64,
    lookups: AtomicU64,
}

/// What a [`JetStreamEventStore`] has read from the server since it was opened: the cost of
/// reads, as opposed to what they returned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReadStats {
    /// Records delivered by replays (`get_events`, `stream_events`, activations), including
    /// the few below the requested version that a read starts before and drops, and the records
    /// it skipped as broken.
    pub records_read: u64,
    /// Single-record lookups made to find where a version starts in an actor's subject (each
    /// one server round trip): a read from version `V` makes O(log n) of them, none when a
    /// snapshot's recorded position or this store's last append already tells.
    pub position_lookups: u64,
}

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    stream_name: String,
    subject_prefix: String,
    namespace: Option<Namespace>,
    broadcast_namespace: Namespace,
    snapshots: kv::Store,
    /// Per-actor slots (version cache, write serialisation), least recently used evicted.
    actors: Bounded<Arc<ActorSlot>>,
    /// actor -> (snapshot version, stream sequence of that version), to start replays there.
    checkpoints: Bounded<(u64, u64)>,
    broadcaster: RwLock<Option<Arc<dyn EventBroadcaster>>>,
    closed: AtomicBool,
    max_event_bytes: usize,
    /// `JetStreamConfig::message_ids`.
    message_ids: bool,
    /// `Err(reason)` when the server or stream cannot do atomic batches.
    atomic_batches: Result<(), String>,
    /// Whether the server answers batched direct gets (nats-server 2.11 and newer).
    batch_direct_get: bool,
    /// One permit per replay consumer this store may hold at once
    /// (`JetStreamConfig::max_replay_consumers`).
    replay_consumers: Arc<tokio::sync::Semaphore>,
    /// One permit per atomic batch in flight from this store (the server's per-stream limit).
    batch_slots: tokio::sync::Semaphore,
    request_timeout: Duration,
    /// With `JetStreamConfig::permissions`: the server's refusals that concern a call end it.
    guard: Option<Arc<permissions::Guard>>,
    stats: ReadCounters,
    metrics: crate::metrics::StoreMetrics,
}

/// The production event store: events in a JetStream stream, snapshots in a KV bucket, with
/// optimistic concurrency enforced by the server.
///
/// - **Layout:** one stream per (store name, namespace), one subject per actor, the event id as
///   `Nats-Msg-Id`; see `docs/nats-layout.md`.
/// - **Concurrency:** every append carries `Nats-Expected-Last-Subject-Sequence` from a cache of
///   actor → (version, last sequence), so the server refuses a write if anyone else wrote that
///   actor meanwhile — across processes and nodes. A stale cache costs one retry, never a wrong
///   answer; a real conflict returns [`StoreError::VersionConflict`] with the true current version.
///   Appends to one actor through one store are serialized; different actors are pipelined.
/// - **Versions:** a stored record's version is its `Aether-Version` header, and the actor's
///   current version is read from its last record's header in one round trip. Reads yield
///   strictly increasing versions: a record that repeats or goes below a version held before it,
///   or whose body does not decode, is skipped, and reported with its stream sequence and the
///   reason by [`EventStoreWithErrors::get_events_with_errors`].
/// - **Server state:** appends create none (the records after a conflict are read by direct
///   gets). A replay of more than a few hundred records uses a consumer that is deleted when the
///   read ends, at most [`JetStreamConfig::max_replay_consumers`] at once; other reads use direct
///   gets. A refusal for a server limit is [`StoreError::LimitReached`] naming it.
/// - **Batches:** [`EventStore::save_events`] uses JetStream atomic batch publish (nats-server
///   2.12.1 or newer): all events or none.
/// - **Retries:** re-sending an event after a timeout stores it once.
/// - **Permissions:** the server answers a subject the user may not use with silence (its
///   refusal goes to the connection's event callback), so a refused call would time out. With a
///   [`PermissionWatch`](crate::permissions::PermissionWatch) installed on the connection and
///   given to [`JetStreamConfig::permissions`], it fails at once with
///   [`StoreError::PermissionDenied`] naming the subject (not transient).
/// - **Immutability:** the stream denies message delete and purge; retention is by age only.
///
/// ```no_run
/// use aether_core::{Event, EventStore};
/// use aether_store_jetstream::JetStreamEventStore;
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let store = JetStreamEventStore::new(client, "events").await?;
/// store.save_event(Event::new("order-1", "OrderPlaced", 1, &99.99)?).await?;
/// assert_eq!(store.get_latest_version("order-1").await?, 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct JetStreamEventStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for JetStreamEventStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStreamEventStore")
            .field("stream", &self.inner.stream_name)
            .field("namespace", &self.inner.namespace)
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl JetStreamEventStore {
    /// Opens (creating when missing) the store `store_name` with the default configuration
    /// (Go's `NewJetStreamEventStore(nc, "events")`).
    pub async fn new(client: async_nats::Client, store_name: &str) -> Result<Self, ConfigError> {
        Self::with_config(client, store_name, JetStreamConfig::default()).await
    }

    /// Opens the store `store_name` in `namespace` (Go's `NewJetStreamEventStoreWithNamespace`).
    pub async fn with_namespace(
        client: async_nats::Client,
        store_name: &str,
        namespace: Namespace,
    ) -> Result<Self, ConfigError> {
        Self::with_config(
            client,
            store_name,
            JetStreamConfig::default().namespace(namespace),
        )
        .await
    }

    /// Opens the store with `config` (Go's `NewJetStreamEventStoreWithConfig`). Creates the
    /// stream and the snapshot bucket when missing, reuses compatible ones, and refuses a stream
    /// whose settings differ in a way that matters with [`ConfigError::IncompatibleStream`].
    /// While the NATS cluster settles (a creation times out, nobody answers, or there are no peers
    /// to place the replicas on yet: a cluster just formed, a peer lagging or restarting),
    /// creating is tried again for up to 30 s, backing off from 50 ms to 1 s
    /// (`aether_nats::settle`, the policy every layer shares).
    pub async fn with_config(
        client: async_nats::Client,
        store_name: &str,
        config: JetStreamConfig,
    ) -> Result<Self, ConfigError> {
        Self::open(client, store_name, config).await
    }

    /// The stream holding this store's events.
    pub fn stream_name(&self) -> &str {
        &self.inner.stream_name
    }

    /// The store's namespace, if any.
    pub fn namespace(&self) -> Option<&Namespace> {
        self.inner.namespace.as_ref()
    }

    /// The subjects of all this store's events (`ae.<stream>.*`), for projections.
    pub fn subject_filter(&self) -> String {
        format!("{}*", self.inner.subject_prefix)
    }

    /// The subject holding `actor_id`'s events (see [`layout::actor_token`]).
    pub fn subject_for(&self, actor_id: &str) -> String {
        format!(
            "{}{}",
            self.inner.subject_prefix,
            layout::actor_token(actor_id)
        )
    }

    /// The version this store last saw for `actor_id`, without asking the server (Go's
    /// `GetCachedVersion`). `None` when the actor is not cached.
    pub fn cached_version(&self, actor_id: &str) -> Option<u64> {
        self.existing_slot(actor_id)
            .and_then(|s| s.known())
            .map(|k| k.version)
    }

    /// Tells the store that `actor_id` reached `version` elsewhere (Go's `UpdateVersionCache`,
    /// fed by EventStored notifications): when `version` is greater than the cached one, or the
    /// actor is not cached, [`cached_version`](Self::cached_version) returns `version` from now
    /// on. Its stream position is then unknown, so the next append reads it from the server
    /// first (one round trip, instead of a refused write). An equal or lower version changes
    /// nothing. The cache is bounded ([`JetStreamConfig::cache_capacity`]): notifications for
    /// any number of actors cannot grow memory.
    pub fn update_version_cache(&self, actor_id: &str, version: u64) {
        self.raise_cached_version(actor_id, version);
    }

    /// A builder-style [`set_broadcaster`](Self::set_broadcaster), for construction (Go's
    /// `NewJetStreamEventStoreWithBroadcaster`):
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # async fn demo(client: aether_store_jetstream::async_nats::Client, bus: Arc<dyn aether_core::EventBroadcaster>) -> Result<(), Box<dyn std::error::Error>> {
    /// use aether_store_jetstream::JetStreamEventStore;
    /// let store = JetStreamEventStore::new(client, "events").await?.with_broadcaster(bus);
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn with_broadcaster(self, broadcaster: Arc<dyn EventBroadcaster>) -> Self {
        self.set_broadcaster(broadcaster);
        self
    }

    /// What this store has read from the server so far: records delivered by replays and
    /// position lookups. Reads from a version cost what follows that version, not the history
    /// before it:
    ///
    /// ```no_run
    /// # async fn demo(store: aether_store_jetstream::JetStreamEventStore) -> Result<(), aether_core::StoreError> {
    /// use aether_core::EventStore;
    /// let before = store.read_stats();
    /// let tail = store.get_events("order-1", 99_991).await?; // the last 10 of 100k events
    /// let after = store.read_stats();
    /// // At most a few dozen records below the version are read and dropped; usually none.
    /// assert!(after.records_read - before.records_read <= tail.len() as u64 + 32);
    /// # Ok(()) }
    /// ```
    pub fn read_stats(&self) -> ReadStats {
        ReadStats {
            records_read: self.inner.stats.records_read.load(Ordering::Relaxed),
            position_lookups: self.inner.stats.lookups.load(Ordering::Relaxed),
        }
    }

    /// How many actors the store's version cache holds now (at most
    /// [`JetStreamConfig::cache_capacity`]).
    pub fn cached_actors(&self) -> usize {
        self.inner.actors.len()
    }

    /// Publishes an EventStored notification through `broadcaster` after each successful append
    /// (Go's `SetBroadcaster`), to the store's namespace (or, without one, to a namespace named
    /// like the store).
    pub fn set_broadcaster(&self, broadcaster: Arc<dyn EventBroadcaster>) {
        *self
            .inner
            .broadcaster
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(broadcaster);
    }

    /// Closes the store (Go's `Close`): later calls fail with [`StoreError::Unavailable`]. The
    /// connection belongs to the caller and stays open.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.actors.clear();
        self.inner.checkpoints.clear();
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.inner.closed.load(Ordering::Relaxed) {
            Err(StoreError::Unavailable {
                context: format!("using store {} after close", self.inner.stream_name),
                source: None,
            })
        } else {
            Ok(())
        }
    }
}

impl JetStreamEventStore {
    /// An append with its span (`aether.store.append`) and metrics.
    async fn recorded_append(&self, events: &[Event]) -> Result<(), StoreError> {
        let count = events.len();
        let span = append_span("jetstream", events);
        let started = std::time::Instant::now();
        let result = match &self.inner.guard {
            None => self.append(events).instrument(span).await,
            // Boxed: the race would swell every append's future (see `append`).
            Some(guard) => {
                let token = events.first().map(|e| layout::actor_token(e.actor_id()));
                Box::pin(guard.call(
                    token.as_deref(),
                    || append_context(events),
                    self.append(events),
                ))
                .instrument(span)
                .await
            }
        };
        let m = &self.inner.metrics;
        m.store.appended(&result, count);
        m.store.batch_events.record(count as f64);
        m.append_seconds.record(started.elapsed().as_secs_f64());
        result
    }
}

/// What an append was doing, for its errors.
fn append_context(events: &[Event]) -> String {
    match events {
        [event] => format!(
            "appending event {} (version {}) for actor {:?}",
            event.id(),
            event.version(),
            event.actor_id()
        ),
        _ => format!(
            "appending a batch of {} events for actor {:?}",
            events.len(),
            events.first().map(Event::actor_id).unwrap_or_default()
        ),
    }
}

/// The span of one append: the actor, the versions, the events' ids and the correlation and
/// causation ids of the first event (a command's events share them). The ids are formatted
/// only when a subscriber wants the span.
pub(crate) fn append_span(store: &'static str, events: &[Event]) -> tracing::Span {
    let first = events.first();
    let meta = first.map(Event::metadata);
    let span = tracing::debug_span!(
        "aether.store.append",
        store,
        actor_id = first.map(Event::actor_id),
        events = events.len(),
        first_version = first.map(Event::version),
        event_ids = tracing::field::Empty,
        correlation_id = meta.and_then(|m| m.correlation_id.as_deref()),
        causation_id = meta.and_then(|m| m.causation_id.as_deref()),
    );
    if !span.is_disabled() {
        let ids: Vec<String> = events.iter().map(|e| e.id().to_string()).collect();
        span.record("event_ids", ids.join(",").as_str());
    }
    span
}

#[async_trait]
impl EventStore for JetStreamEventStore {
    async fn save_event(&self, event: Event) -> Result<(), StoreError> {
        self.recorded_append(std::slice::from_ref(&event)).await
    }

    async fn save_events(&self, events: Vec<Event>) -> Result<(), StoreError> {
        self.recorded_append(&events).await
    }

    async fn get_events(
        &self,
        actor_id: &str,
        from_version: u64,
    ) -> Result<Vec<Event>, StoreError> {
        self.stream_events(actor_id, from_version)
            .try_collect()
            .await
    }

    fn stream_events(&self, actor_id: &str, from_version: u64) -> EventStream {
        self.replay(actor_id, from_version)
            .filter_map(|item| async move {
                match item {
                    Ok(Replayed::Event(e)) => Some(Ok(e)),
                    Ok(Replayed::Skipped { error, .. }) => {
                        tracing::warn!(
                            position = error.position,
                            reason = %error.reason,
                            "skipping a record during replay"
                        );
                        None
                    }
                    Err(e) => Some(Err(e)),
                }
            })
            .boxed()
    }

    /// Always asks the server (one read of the actor's last record: its `Aether-Version`
    /// header), and refreshes the cache when it was stale (Go's `GetLatestVersion`).
    async fn get_latest_version(&self, actor_id: &str) -> Result<u64, StoreError> {
        self.check_open()?;
        limits::validate_actor_id(actor_id)?;
        let known = match &self.inner.guard {
            None => self.fetch_known(actor_id).await?,
            Some(guard) => {
                guard
                    .call(
                        Some(&layout::actor_token(actor_id)),
                        || format!("reading the latest version of actor {actor_id:?}"),
                        self.fetch_known(actor_id),
                    )
                    .await?
            }
        };
        // Refresh a cached entry, but do not start caching actors that are only read.
        Ok(match self.existing_slot(actor_id) {
            Some(slot) => slot.observe(known).version,
            None => known.version,
        })
    }
}

impl aether_core::VersionCache for JetStreamEventStore {
    fn update_version_cache(&self, actor_id: &str, version: u64) {
        JetStreamEventStore::update_version_cache(self, actor_id, version);
    }
}

#[async_trait]
impl EventStoreWithErrors for JetStreamEventStore {
    async fn get_events_with_errors(
        &self,
        actor_id: &str,
        from_version: u64,
    ) -> Result<ReplayResult, StoreError> {
        let mut events = Vec::new();
        let mut errors = Vec::new();
        let mut replay = self.replay(actor_id, from_version);
        while let Some(item) = replay.next().await {
            match item? {
                Replayed::Event(e) => events.push(e),
                Replayed::Skipped { error, .. } => errors.push(error),
            }
        }
        Ok(ReplayResult::new(events, errors))
    }
}

#[async_trait]
impl SnapshotStore for JetStreamEventStore {
    async fn get_latest_snapshot(
        &self,
        actor_id: &str,
    ) -> Result<Option<ActorSnapshot>, StoreError> {
        match &self.inner.guard {
            None => self.read_snapshot(actor_id).await,
            Some(guard) => {
                guard
                    .call(
                        Some(&layout::actor_token(actor_id)),
                        || format!("reading the snapshot of actor {actor_id:?}"),
                        self.read_snapshot(actor_id),
                    )
                    .await
            }
        }
    }

    async fn save_snapshot(&self, snapshot: ActorSnapshot) -> Result<(), StoreError> {
        match &self.inner.guard {
            None => self.write_snapshot(snapshot).await,
            Some(guard) => {
                let actor_id = snapshot.actor_id.clone();
                guard
                    .call(
                        Some(&layout::actor_token(&actor_id)),
                        || format!("saving the snapshot of actor {actor_id:?}"),
                        self.write_snapshot(snapshot),
                    )
                    .await
            }
        }
    }
}
