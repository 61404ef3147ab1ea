//! The traits that stores, buses and runtimes compose through.
//!
//! All are object safe and `Send + Sync`: layers hold `Arc<dyn EventStore>`,
//! `Arc<dyn SnapshotStore>` and `Arc<dyn EventBroadcaster>`, never a concrete type.

use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use futures_core::Stream;

use crate::error::{BroadcastError, StoreError};
use crate::event::{Event, ReplayResult};
use crate::namespace::Namespace;
use crate::snapshot::ActorSnapshot;

/// A stream of an actor's events in version order, as returned by [`EventStore::stream_events`].
pub type EventStream = Pin<Box<dyn Stream<Item = Result<Event, StoreError>> + Send + 'static>>;

/// An append-only event store with per-actor versions and optimistic concurrency.
///
/// There is no update and no delete: events are immutable, corrections are new events. Every
/// implementation enforces the rules of [`crate::limits`]: a new event's version must be above the
/// actor's latest (else [`StoreError::VersionConflict`], nothing written), a batch is all-or-nothing,
/// and re-appending an already stored event (same id, same version) is an idempotent success, so a
/// retry after a timeout never stores an event twice.
#[async_trait]
pub trait EventStore: Send + Sync + std::fmt::Debug {
    /// Appends one event (Go's `SaveEvent`).
    ///
    /// **While the backend is down, restarting or electing a leader** (the JetStream store on a
    /// NATS cluster), an append fails with a *transient* error ([`StoreError::is_transient`]):
    /// [`StoreError::Unavailable`] when nothing received it (no stream leader: nothing was
    /// stored), [`StoreError::Timeout`] when it was sent but not acknowledged in time (it may have
    /// been stored). Both are safe to retry **with the same event** (same id): a stored one is
    /// recognised and not stored twice. Measured on three local nats-servers with an R3 stream,
    /// killing the stream leader: a new leader took 4-5.5 s; appends sent meanwhile failed as
    /// `Unavailable` after the store's request timeout (5 s by default), appends in flight at the
    /// kill as `Timeout`, and appends flowed again 5-7 s after the kill. The actor runtime retries
    /// these for you (`RetryPolicy::transient_budget`, 20 s by default); direct callers retry
    /// the same event while `is_transient()` holds, for a bounded time — `save_with_retry` in
    /// the repository's `examples/jetstream_store.rs` shows the loop.
    async fn save_event(&self, event: Event) -> Result<(), StoreError>;

    /// Appends several events of one actor, all or nothing: either every event is stored or none
    /// is. An empty batch is a no-op.
    async fn save_events(&self, events: Vec<Event>) -> Result<(), StoreError>;

    /// The actor's events with `version >= from_version`, in version order (Go's `GetEvents`).
    /// An unknown actor has no events. Prefer [`EventStore::stream_events`] for long histories.
    async fn get_events(&self, actor_id: &str, from_version: u64)
    -> Result<Vec<Event>, StoreError>;

    /// Like [`EventStore::get_events`] but streamed, without loading the history into memory.
    /// Records that cannot be decoded are skipped (use
    /// [`EventStoreWithErrors::get_events_with_errors`] to see them).
    fn stream_events(&self, actor_id: &str, from_version: u64) -> EventStream;

    /// The actor's latest version; 0 when it has no events (Go's `GetLatestVersion`).
    async fn get_latest_version(&self, actor_id: &str) -> Result<u64, StoreError>;
}

/// A store that can report malformed stored records instead of silently skipping them (Go's
/// `EventStoreWithErrors`).
#[async_trait]
pub trait EventStoreWithErrors: EventStore {
    /// The good events with `version >= from_version` (strictly increasing versions) plus every
    /// record that was skipped: one that could not be read, or whose version was not above the
    /// versions stored before it.
    async fn get_events_with_errors(
        &self,
        actor_id: &str,
        from_version: u64,
    ) -> Result<ReplayResult, StoreError>;
}

/// Stores the latest snapshot per actor.
#[async_trait]
pub trait SnapshotStore: Send + Sync + std::fmt::Debug {
    /// The actor's newest snapshot, if any.
    async fn get_latest_snapshot(
        &self,
        actor_id: &str,
    ) -> Result<Option<ActorSnapshot>, StoreError>;

    /// Saves a snapshot. Its version must be > 0 and not below the newest stored snapshot's
    /// (else [`StoreError::InvalidSnapshot`]); saving the same version again replaces it.
    async fn save_snapshot(&self, snapshot: ActorSnapshot) -> Result<(), StoreError>;
}

/// Publishes events to a namespace (Go's `EventBroadcaster`); implemented by the buses.
#[async_trait]
pub trait EventBroadcaster: Send + Sync + std::fmt::Debug {
    /// Publishes `event` to every subscriber of `namespace`.
    async fn publish(&self, namespace: &Namespace, event: &Event) -> Result<(), BroadcastError>;
}

/// A store that caches actors' latest versions and can be told about writes made elsewhere
/// (Go's `UpdateVersionCache`). Buses feed it from EventStored notifications of other nodes.
pub trait VersionCache: Send + Sync + std::fmt::Debug {
    /// `actor_id` reached `version` through another writer.
    fn update_version_cache(&self, actor_id: &str, version: u64);
}

impl<T: VersionCache + ?Sized> VersionCache for Arc<T> {
    fn update_version_cache(&self, actor_id: &str, version: u64) {
        (**self).update_version_cache(actor_id, version);
    }
}

macro_rules! forward_event_store {
    ($($ty:ty),*) => {$(
        #[async_trait]
        impl<T: EventStore + ?Sized> EventStore for $ty {
            async fn save_event(&self, event: Event) -> Result<(), StoreError> {
                (**self).save_event(event).await
            }
            async fn save_events(&self, events: Vec<Event>) -> Result<(), StoreError> {
                (**self).save_events(events).await
            }
            async fn get_events(&self, actor_id: &str, from_version: u64) -> Result<Vec<Event>, StoreError> {
                (**self).get_events(actor_id, from_version).await
            }
            fn stream_events(&self, actor_id: &str, from_version: u64) -> EventStream {
                (**self).stream_events(actor_id, from_version)
            }
            async fn get_latest_version(&self, actor_id: &str) -> Result<u64, StoreError> {
                (**self).get_latest_version(actor_id).await
            }
        }

        #[async_trait]
        impl<T: EventStoreWithErrors + ?Sized> EventStoreWithErrors for $ty {
            async fn get_events_with_errors(&self, actor_id: &str, from_version: u64) -> Result<ReplayResult, StoreError> {
                (**self).get_events_with_errors(actor_id, from_version).await
            }
        }

        #[async_trait]
        impl<T: SnapshotStore + ?Sized> SnapshotStore for $ty {
            async fn get_latest_snapshot(&self, actor_id: &str) -> Result<Option<ActorSnapshot>, StoreError> {
                (**self).get_latest_snapshot(actor_id).await
            }
            async fn save_snapshot(&self, snapshot: ActorSnapshot) -> Result<(), StoreError> {
                (**self).save_snapshot(snapshot).await
            }
        }

        #[async_trait]
        impl<T: EventBroadcaster + ?Sized> EventBroadcaster for $ty {
            async fn publish(&self, namespace: &Namespace, event: &Event) -> Result<(), BroadcastError> {
                (**self).publish(namespace, event).await
            }
        }
    )*};
}

forward_event_store!(Arc<T>, &T, Box<T>);
