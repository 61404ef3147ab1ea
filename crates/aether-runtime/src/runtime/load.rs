//! Loading an actor: its latest snapshot that decodes, then the stored events after it, and why
//! that can fail.

use std::sync::Arc;

use aether_core::{CodecError, StoreError};
use futures::StreamExt;

use super::recent::{Recent, RecentCommands, id_hash, remember};
use super::registry::Shared;
use crate::actor::Actor;
use crate::error::AskError;

/// An actor's state as loaded from the store.
pub(super) struct Loaded<A> {
    pub(super) state: A,
    pub(super) version: u64,
    /// Events applied after the snapshot.
    pub(super) replayed: u64,
    pub(super) recent: Recent,
}

/// Why an actor's history could not be loaded. The store's own error is kept, so a caller can
/// still tell a transient failure (`StoreError::is_transient`) from a permanent one. Sources are
/// boxed: a load's result is held in the task of every actor being activated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(super) enum LoadError {
    /// Reading the latest snapshot failed.
    #[error("loading its snapshot failed: {0}")]
    Snapshot(Box<StoreError>),
    /// Reading the events after the snapshot failed.
    #[error("reading its events failed: {0}")]
    Events(Box<StoreError>),
    /// A stored event is not one of the actor's events.
    #[error("{context}: {error}")]
    Decode {
        /// Which event, and what it should have been.
        context: String,
        /// The codec's error.
        error: Box<CodecError>,
    },
}

impl LoadError {
    /// The caller's error: a store failure stays a store failure, with its kind; anything else
    /// means the actor cannot be activated.
    pub(super) fn into_ask<E: std::error::Error>(self, actor_id: &Arc<str>) -> AskError<E> {
        match self {
            LoadError::Snapshot(source) | LoadError::Events(source) => AskError::Store {
                actor_id: actor_id.clone(),
                source,
            },
            other @ LoadError::Decode { .. } => AskError::Activation {
                actor_id: actor_id.clone(),
                reason: other.to_string(),
            },
        }
    }

    /// [`LoadError::into_ask`] for one more caller of the same failed load.
    pub(super) fn to_ask<E: std::error::Error>(&self, actor_id: &Arc<str>) -> AskError<E> {
        match self {
            LoadError::Snapshot(source) | LoadError::Events(source) => AskError::Store {
                actor_id: actor_id.clone(),
                source: Box::new(source.detached()),
            },
            LoadError::Decode { .. } => AskError::Activation {
                actor_id: actor_id.clone(),
                reason: self.to_string(),
            },
        }
    }
}

/// Loads an actor: the latest snapshot that decodes, then the events after it.
pub(super) async fn load<A: Actor>(shared: &Shared<A>, id: &str) -> Result<Loaded<A>, LoadError> {
    let mut state = A::default();
    let mut version = 0;
    let mut recent: Recent = None;
    if let Some(snapshots) = &shared.snapshots {
        match snapshots.get_latest_snapshot(id).await {
            Ok(Some(snapshot)) => match snapshot.decode::<A>() {
                Ok(decoded) => {
                    state = decoded;
                    version = snapshot.version;
                    if !snapshot.commands.is_empty() {
                        recent = Some(Box::new(RecentCommands::from_snapshot(snapshot.commands)));
                    }
                }
                Err(e) => tracing::warn!(
                    actor_type = A::TYPE,
                    actor_id = id,
                    snapshot_version = snapshot.version,
                    error = %e,
                    "snapshot does not decode into the current state type; replaying all events"
                ),
            },
            Ok(None) => {}
            Err(e) => return Err(LoadError::Snapshot(Box::new(e))),
        }
    }
    let replayed = replay(shared, id, &mut state, &mut version, &mut recent).await?;
    Ok(Loaded {
        state,
        version,
        replayed,
        recent,
    })
}

/// Applies the stored events after `version` to `state`, noting the commands that caused them.
pub(super) async fn replay<A: Actor>(
    shared: &Shared<A>,
    id: &str,
    state: &mut A,
    version: &mut u64,
    recent: &mut Recent,
) -> Result<u64, LoadError> {
    let mut events = shared.store.stream_events(id, *version + 1);
    let mut replayed = 0;
    while let Some(item) = events.next().await {
        let event = item.map_err(|e| LoadError::Events(Box::new(e)))?;
        let decoded: A::Event = event.decode().map_err(|error| LoadError::Decode {
            context: format!(
                "stored event {} (version {}, type {}) is not a {} event",
                event.id(),
                event.version(),
                event.event_type(),
                A::TYPE
            ),
            error: Box::new(error),
        })?;
        state.apply(&decoded);
        *version = event.version();
        if let Some(cause) = &event.metadata().causation_id {
            let same = recent
                .as_ref()
                .and_then(|r| r.list.back())
                .filter(|prev| &*prev.id == cause.as_str())
                .map(|prev| prev.id.clone());
            let id = same.unwrap_or_else(|| cause.as_str().into());
            remember(recent, id_hash(cause), &id, *version, *version);
        }
        replayed += 1;
    }
    Ok(replayed)
}

#[cfg(test)]
mod tests {
    // Test code: a failed expectation panics.
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::error::Error as _;

    use aether_core::{ActorSnapshot, SnapshotStore};
    use aether_store_memory::InMemoryEventStore;
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::Runtime;

    #[derive(Debug)]
    struct Unreachable;

    #[async_trait::async_trait]
    impl SnapshotStore for Unreachable {
        async fn get_latest_snapshot(&self, _: &str) -> Result<Option<ActorSnapshot>, StoreError> {
            Err(StoreError::Timeout {
                context: "reading a snapshot".into(),
            })
        }

        async fn save_snapshot(&self, _: ActorSnapshot) -> Result<(), StoreError> {
            Ok(())
        }
    }

    #[derive(Debug, Default, Serialize, Deserialize)]
    struct Counter(u64);

    #[derive(Debug, thiserror::Error)]
    #[error("never")]
    struct Never;

    impl Actor for Counter {
        const TYPE: &'static str = "counter";
        type Command = ();
        type Event = u64;
        type Error = Never;

        fn handle(&self, (): &()) -> Result<Vec<u64>, Never> {
            Ok(vec![1])
        }

        fn apply(&mut self, n: &u64) {
            self.0 += n;
        }
    }

    #[tokio::test]
    async fn an_activation_that_meets_a_store_outage_reports_it_as_transient() {
        let store = Arc::new(InMemoryEventStore::new());
        let runtime = Runtime::<Counter>::builder(store)
            .snapshots(Arc::new(Unreachable))
            .build();
        let (a, b) = tokio::join!(runtime.ask("c", ()), runtime.ask("c", ()));
        for outcome in [a, b] {
            match outcome {
                Err(AskError::Store { source, .. }) => assert!(source.is_transient(), "{source}"),
                other => panic!("expected a store failure, got {other:?}"),
            }
        }
        let error = runtime.ask("c", ()).await.unwrap_err();
        assert_eq!(
            error.source().map(ToString::to_string).as_deref(),
            Some("timed out while reading a snapshot")
        );
        runtime.shutdown().await;
    }
}
