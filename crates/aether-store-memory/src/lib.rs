//! # aether-store-memory
//!
//! [`InMemoryEventStore`]: an in-process [`EventStore`], [`EventStoreWithErrors`] and
//! [`SnapshotStore`] with the same rules as the JetStream store (see [`aether_core::limits`]).
//! Use it embedded, in tests, and as the reference the conformance suite is checked against.
//!
//! ```
//! use aether_core::{Event, EventStore};
//! use aether_store_memory::InMemoryEventStore;
//!
//! # futures::executor::block_on(async {
//! let store = InMemoryEventStore::new();
//! store.save_event(Event::new("order-1", "OrderPlaced", 1, &99.99)?).await?;
//! let conflict = store.save_event(Event::new("order-1", "OrderPlaced", 1, &5.0)?).await;
//! assert!(conflict.is_err_and(|e| e.is_version_conflict()));
//! assert_eq!(store.get_latest_version("order-1").await?, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
//! ```
//!
//! ## Concurrency
//!
//! Actors are spread over [`SHARDS`] independently locked shards by a hash of the actor id, so no
//! lock covers the whole store: appends and reads of actors in different shards never wait for
//! each other. The version check and the write happen under one shard lock, so optimistic
//! concurrency is atomic under any interleaving. Returned [`Event`]s are shared immutable values:
//! nothing a caller does with them can change the stored history.
//!
//! ## Namespaces
//!
//! [`InMemoryEventStore::with_namespace`] gives a view on a separate partition of the same
//! in-process backend, as a JetStream store per namespace shares one server: `a.b` and `a_b` are
//! different partitions and never see each other's events.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::task::{Context, Poll};

use aether_core::store_metrics::StoreMetrics;
use aether_core::{
    ActorSnapshot, Event, EventStore, EventStoreWithErrors, EventStream, Namespace, ReplayResult,
    SnapshotStore, StoreError, limits,
};
use async_trait::async_trait;
use futures::StreamExt;
use hashbrown::{DefaultHashBuilder, HashTable};

/// Number of independently locked shards per namespace (a power of two). More shards let more
/// threads write without touching each other's locks; fewer keep the locks in the CPU's closest
/// cache. 1024 measured best on the project's benchmark (see `benches/memory_store.rs`).
pub const SHARDS: usize = 1024;
const _: () = assert!(SHARDS.is_power_of_two());

/// Events handed out per lock acquisition by [`EventStore::stream_events`].
const STREAM_CHUNK: usize = 256;

#[derive(Default)]
struct ActorLog {
    events: Vec<Event>,
    snapshot: Option<Box<ActorSnapshot>>,
}

impl ActorLog {
    fn latest_version(&self) -> u64 {
        self.events.last().map_or(0, Event::version)
    }

    /// Index of the first event with `version >= from_version`.
    fn start_index(&self, from_version: u64) -> usize {
        self.events.partition_point(|e| e.version() < from_version)
    }

    /// Whether every event of `events` is already stored with the same id at the same version:
    /// a retried append that must succeed without storing anything again.
    fn already_holds(&self, events: &[Event]) -> bool {
        events.iter().all(|e| {
            let i = self.start_index(e.version());
            self.events
                .get(i)
                .is_some_and(|s| s.version() == e.version() && s.id() == e.id())
        })
    }
}

type Shard = HashTable<(Box<str>, ActorLog)>;

/// A shard lock on its own cache line, so threads working on different shards do not slow
/// each other down through false sharing.
#[repr(align(64))]
struct PaddedShard(RwLock<Shard>);

/// One namespace's data: sharded actor logs.
struct Partition {
    hasher: DefaultHashBuilder,
    shards: Box<[PaddedShard]>,
}

impl Partition {
    fn new() -> Self {
        Self {
            hasher: DefaultHashBuilder::default(),
            shards: (0..SHARDS)
                .map(|_| PaddedShard(RwLock::new(HashTable::new())))
                .collect(),
        }
    }

    fn locate(&self, actor_id: &str) -> (u64, &RwLock<Shard>) {
        let hash = self.hasher.hash_one(actor_id);
        // The table uses the low bits; pick the shard from the high ones.
        let shard = (hash >> 32) as usize & (SHARDS - 1);
        (hash, &self.shards[shard].0)
    }

    fn read(&self, actor_id: &str) -> (u64, RwLockReadGuard<'_, Shard>) {
        let (hash, lock) = self.locate(actor_id);
        // A poisoned lock only means a panic elsewhere while holding it; the data is still
        // consistent because every mutation is a single push or replace.
        (hash, lock.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn write(&self, actor_id: &str) -> (u64, RwLockWriteGuard<'_, Shard>) {
        let (hash, lock) = self.locate(actor_id);
        (hash, lock.write().unwrap_or_else(|p| p.into_inner()))
    }

    fn with_actor<R>(&self, actor_id: &str, f: impl FnOnce(Option<&ActorLog>) -> R) -> R {
        let (hash, shard) = self.read(actor_id);
        f(shard
            .find(hash, |(k, _)| &**k == actor_id)
            .map(|(_, log)| log))
    }

    /// Runs `f` on the actor's log under the shard's write lock. A log for a new actor is kept
    /// only if `f` succeeds, so refused writes leave nothing behind.
    fn update_actor<R>(
        &self,
        actor_id: &str,
        f: impl FnOnce(&mut ActorLog) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let (hash, mut shard) = self.write(actor_id);
        if let Some((_, log)) = shard.find_mut(hash, |(k, _)| &**k == actor_id) {
            return f(log);
        }
        let mut log = ActorLog::default();
        let result = f(&mut log)?;
        let hasher = &self.hasher;
        shard.insert_unique(hash, (Box::from(actor_id), log), |(k, _)| {
            hasher.hash_one(&**k)
        });
        Ok(result)
    }

    /// Appends one event: the hot path, without a temporary batch or an owned copy of the id.
    fn append_one(&self, event: Event) -> Result<(), StoreError> {
        let (hash, mut shard) = self.write(event.actor_id());
        if let Some((_, log)) = shard.find_mut(hash, |(k, _)| **k == *event.actor_id()) {
            let one = std::slice::from_ref(&event);
            return match limits::check_append(log.latest_version(), one) {
                Ok(()) => {
                    log.events.push(event);
                    Ok(())
                }
                Err(e) if e.is_version_conflict() && log.already_holds(one) => Ok(()),
                Err(e) => Err(e),
            };
        }
        limits::check_append(0, std::slice::from_ref(&event))?;
        let key = Box::from(event.actor_id());
        let log = ActorLog {
            events: vec![event],
            snapshot: None,
        };
        let hasher = &self.hasher;
        shard.insert_unique(hash, (key, log), |(k, _)| hasher.hash_one(&**k));
        Ok(())
    }

    fn append(&self, events: Vec<Event>) -> Result<(), StoreError> {
        let Some(first) = events.first() else {
            return Ok(());
        };
        let actor_id = first.actor_id().to_owned();
        self.update_actor(&actor_id, |log| {
            match limits::check_append(log.latest_version(), &events) {
                Ok(()) => {
                    log.events.extend(events);
                    Ok(())
                }
                Err(e) if e.is_version_conflict() && log.already_holds(&events) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    fn chunk(&self, actor_id: &str, from_version: u64) -> Vec<Event> {
        self.with_actor(actor_id, |log| {
            log.map(|log| {
                let start = log.start_index(from_version);
                let end = log.events.len().min(start.saturating_add(STREAM_CHUNK));
                log.events[start..end].to_vec()
            })
            .unwrap_or_default()
        })
    }
}

/// An in-process event and snapshot store. Cloning gives another handle on the same data.
///
/// See the [crate documentation](crate) for the concurrency and namespace model.
#[derive(Clone)]
pub struct InMemoryEventStore {
    namespace: Option<Namespace>,
    data: Arc<Partition>,
    backend: Arc<Mutex<HashMap<Namespace, Arc<Partition>>>>,
    metrics: Arc<StoreMetrics>,
}

impl Default for InMemoryEventStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for InMemoryEventStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemoryEventStore")
            .field("namespace", &self.namespace)
            .field("shards", &self.data.shards.len())
            .finish_non_exhaustive()
    }
}

impl InMemoryEventStore {
    /// An empty store (Go's `NewInMemoryEventStore`), in no namespace.
    pub fn new() -> Self {
        Self {
            namespace: None,
            data: Arc::new(Partition::new()),
            backend: Arc::default(),
            metrics: Arc::new(StoreMetrics::new("memory")),
        }
    }

    /// A view of `namespace` on the same backend: its own actors, events and snapshots, isolated
    /// from every other namespace and from the un-namespaced store. Views of equal namespaces
    /// share data.
    pub fn with_namespace(&self, namespace: Namespace) -> Self {
        let mut partitions = self.backend.lock().unwrap_or_else(|p| p.into_inner());
        let data = partitions
            .entry(namespace.clone())
            .or_insert_with(|| Arc::new(Partition::new()))
            .clone();
        Self {
            namespace: Some(namespace),
            data,
            backend: self.backend.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// The namespace of this view, if any.
    pub fn namespace(&self) -> Option<&Namespace> {
        self.namespace.as_ref()
    }
}

fn check_actor(actor_id: &str) -> Result<(), StoreError> {
    limits::validate_actor_id(actor_id).map_err(StoreError::from)
}

/// The future returned by a write that already succeeded: zero-sized, so boxing it allocates
/// nothing.
struct Stored;

impl Future for Stored {
    type Output = Result<(), StoreError>;
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Ok(()))
    }
}

type WriteFuture<'a> = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'a>>;

/// Wraps the outcome of a write that has already happened. Only a failure costs an allocation.
fn written<'a>(result: Result<(), StoreError>) -> WriteFuture<'a> {
    match result {
        Ok(()) => Box::pin(Stored),
        Err(e) => Box::pin(std::future::ready(Err(e))),
    }
}

/// Writes happen when `save_event` / `save_events` is called (as a tower `Service::call` may
/// do its work), and the returned future is already complete: a memory write never waits, and
/// this keeps the hot path free of allocations.
#[async_trait]
impl EventStore for InMemoryEventStore {
    fn save_event<'life0, 'async_trait>(&'life0 self, event: Event) -> WriteFuture<'async_trait>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let result = self.data.append_one(event);
        self.metrics.appended(&result, 1);
        written(result)
    }

    fn save_events<'life0, 'async_trait>(
        &'life0 self,
        events: Vec<Event>,
    ) -> WriteFuture<'async_trait>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let count = events.len();
        let result = self.data.append(events);
        self.metrics.appended(&result, count);
        self.metrics.batch_events.record(count as f64);
        written(result)
    }

    async fn get_events(
        &self,
        actor_id: &str,
        from_version: u64,
    ) -> Result<Vec<Event>, StoreError> {
        check_actor(actor_id)?;
        let events = self.data.with_actor(actor_id, |log| {
            log.map(|log| log.events[log.start_index(from_version)..].to_vec())
                .unwrap_or_default()
        });
        self.metrics.replayed.increment(events.len() as u64);
        Ok(events)
    }

    fn stream_events(&self, actor_id: &str, from_version: u64) -> EventStream {
        if let Err(e) = check_actor(actor_id) {
            return futures::stream::once(async move { Err(e) }).boxed();
        }
        let data = self.data.clone();
        let metrics = self.metrics.clone();
        let actor_id = actor_id.to_owned();
        // Read chunk by chunk, each under a short read lock, so a long history is never copied
        // at once and writers are not held up by a slow consumer.
        futures::stream::unfold(Some(from_version), move |next| {
            let data = data.clone();
            let metrics = metrics.clone();
            let actor_id = actor_id.clone();
            async move {
                let from = next?;
                let chunk = data.chunk(&actor_id, from);
                metrics.replayed.increment(chunk.len() as u64);
                let next = match chunk.last() {
                    Some(last) if chunk.len() == STREAM_CHUNK => last.version().checked_add(1),
                    Some(_) => None,
                    None => return None,
                };
                Some((futures::stream::iter(chunk.into_iter().map(Ok)), next))
            }
        })
        .flatten()
        .boxed()
    }

    async fn get_latest_version(&self, actor_id: &str) -> Result<u64, StoreError> {
        check_actor(actor_id)?;
        Ok(self
            .data
            .with_actor(actor_id, |log| log.map_or(0, ActorLog::latest_version)))
    }
}

#[async_trait]
impl EventStoreWithErrors for InMemoryEventStore {
    /// Events are held decoded, so a memory store never holds a malformed record: `errors` is
    /// always empty.
    async fn get_events_with_errors(
        &self,
        actor_id: &str,
        from_version: u64,
    ) -> Result<ReplayResult, StoreError> {
        let events = self.get_events(actor_id, from_version).await?;
        Ok(ReplayResult::new(events, Vec::new()))
    }
}

#[async_trait]
impl SnapshotStore for InMemoryEventStore {
    async fn get_latest_snapshot(
        &self,
        actor_id: &str,
    ) -> Result<Option<ActorSnapshot>, StoreError> {
        check_actor(actor_id)?;
        let found = self.data.with_actor(actor_id, |log| {
            log.and_then(|l| l.snapshot.as_deref().cloned())
        });
        match &found {
            Some(_) => self.metrics.snapshot_hits.increment(1),
            None => self.metrics.snapshot_misses.increment(1),
        }
        Ok(found)
    }

    async fn save_snapshot(&self, snapshot: ActorSnapshot) -> Result<(), StoreError> {
        limits::check_snapshot(None, &snapshot)?;
        let actor_id = snapshot.actor_id.clone();
        let result = self.data.update_actor(&actor_id, |log| {
            limits::check_snapshot(log.snapshot.as_ref().map(|s| s.version), &snapshot)?;
            log.snapshot = Some(Box::new(snapshot));
            Ok(())
        });
        if result.is_ok() {
            self.metrics.snapshot_saves.increment(1);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn ev(actor: &str, v: u64) -> Event {
        Event::builder(actor, "T").version(v).build().unwrap()
    }

    #[tokio::test]
    async fn refused_writes_leave_nothing_behind() {
        let store = InMemoryEventStore::new();
        for i in 0..100 {
            let actor = format!("ghost-{i}");
            assert!(store.save_event(ev(&actor, 0)).await.is_err());
            let bad_batch = vec![ev(&actor, 2), ev(&actor, 1)];
            assert!(store.save_events(bad_batch).await.is_err());
            let snap = ActorSnapshot::new(actor.as_str(), 0, &()).unwrap();
            assert!(store.save_snapshot(snap).await.is_err());
            assert!(store.data.with_actor(&actor, |log| log.is_none()));
        }
    }

    #[tokio::test]
    async fn a_stream_does_not_block_writers() {
        let store = InMemoryEventStore::new();
        let events: Vec<Event> = (1..=1000).map(|v| ev("a", v)).collect();
        store.save_events(events).await.unwrap();
        let mut stream = store.stream_events("a", 0);
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first.version(), 1);
        // Mid-stream, with the stream holding no lock, a writer proceeds.
        store.save_event(ev("a", 1001)).await.unwrap();
        let rest: Vec<_> = stream.collect().await;
        assert_eq!(
            rest.len(),
            1000,
            "the stream sees the history as it reads it"
        );
    }

    #[test]
    fn views_share_a_backend_but_not_data() {
        let root = InMemoryEventStore::new();
        let a = root.with_namespace(Namespace::new("a").unwrap());
        let a2 = a.with_namespace(Namespace::new("a").unwrap());
        assert!(Arc::ptr_eq(&a.data, &a2.data));
        assert!(!Arc::ptr_eq(&a.data, &root.data));
        assert_eq!(a.namespace().map(Namespace::as_str), Some("a"));
        assert!(format!("{a:?}").contains("InMemoryEventStore"));
    }
}
