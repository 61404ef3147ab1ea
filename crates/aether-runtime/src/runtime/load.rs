//! Loading an actor: its latest snapshot that decodes, then the stored events after it, and why
//! that can fail.

use std::sync::Arc;

use aether_core::{CodecError, Event, StoreError, UpcastError, Upcasters};
use futures::StreamExt;

use super::outage::through_outages;
use super::recent::{Recent, RecentCommands, Remembered, id_hash, millis, now_millis, remember};
use super::registry::{Shared, bump};
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
pub(crate) enum LoadError {
    /// Reading the latest snapshot failed.
    #[error("loading its snapshot failed: {0}")]
    Snapshot(Box<StoreError>),
    /// Reading the events after the snapshot failed.
    #[error("reading its events failed: {0}")]
    Events(Box<StoreError>),
    /// The actor's `apply` (or its `Default`) panicked while the history was folded in.
    #[error("folding in its history panicked: {message}")]
    Panicked {
        /// The panic's message.
        message: String,
    },
    /// A stored event could not be upcast to its current shape.
    #[error("{context}: {error}")]
    Upcast {
        /// Which event.
        context: String,
        /// The upcasters' error.
        error: Arc<UpcastError>,
    },
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
    /// Whether the store failed in a way that clears by itself (unavailable, timed out): worth
    /// loading again.
    pub(super) fn is_transient(&self) -> bool {
        match self {
            LoadError::Snapshot(source) | LoadError::Events(source) => source.is_transient(),
            LoadError::Decode { .. } | LoadError::Panicked { .. } | LoadError::Upcast { .. } => {
                false
            }
        }
    }

    /// The caller's error: a store failure stays a store failure, with its kind; anything else
    /// means the actor cannot be activated.
    pub(crate) fn into_ask<E: std::error::Error>(self, actor_id: &Arc<str>) -> AskError<E> {
        match self {
            LoadError::Snapshot(source) | LoadError::Events(source) => AskError::Store {
                actor_id: actor_id.clone(),
                source,
            },
            LoadError::Upcast { context, error } => AskError::Upcast {
                actor_id: actor_id.clone(),
                context,
                source: error,
            },
            other @ (LoadError::Decode { .. } | LoadError::Panicked { .. }) => {
                AskError::Activation {
                    actor_id: actor_id.clone(),
                    reason: other.to_string(),
                }
            }
        }
    }

    /// [`LoadError::into_ask`] for one more caller of the same failed load.
    pub(super) fn to_ask<E: std::error::Error>(&self, actor_id: &Arc<str>) -> AskError<E> {
        match self {
            LoadError::Snapshot(source) | LoadError::Events(source) => AskError::Store {
                actor_id: actor_id.clone(),
                source: Box::new(source.detached()),
            },
            LoadError::Upcast { context, error } => AskError::Upcast {
                actor_id: actor_id.clone(),
                context: context.clone(),
                source: error.clone(),
            },
            LoadError::Decode { .. } | LoadError::Panicked { .. } => AskError::Activation {
                actor_id: actor_id.clone(),
                reason: self.to_string(),
            },
        }
    }
}

/// [`load`], again while the store fails transiently (a NATS server restarting, a stream or
/// bucket whose replicas are not serving yet), for up to `RetryPolicy::transient_budget`, as an
/// append is re-sent through outages: the commands waiting for the activation are not failed
/// for a blip. Any other failure, or the last transient one, is returned.
pub(super) async fn load_through_outages<A: Actor>(
    shared: &Shared<A>,
    id: &str,
) -> Result<Loaded<A>, LoadError> {
    let started = tokio::time::Instant::now();
    let first = load(shared, id).await;
    through_outages(
        shared.config.retry.transient_budget,
        started,
        first,
        LoadError::is_transient,
        |failure, retries| {
            bump(&shared.stats.retries);
            shared.metrics.retries.increment(1);
            tracing::debug!(actor_type = A::TYPE, actor_id = id, reason = %failure, retries, "store unavailable while activating; loading again");
        },
        || load(shared, id),
    )
    .await
}

/// Loads an actor: the latest snapshot that decodes, then the events after it.
///
/// With a snapshot store, the snapshot and the actor's latest version are read at once: an actor
/// that was never written (or whose snapshot covers its history) is loaded in one round trip, and
/// the events are read only when there are some after the snapshot.
pub(super) async fn load<A: Actor>(shared: &Shared<A>, id: &str) -> Result<Loaded<A>, LoadError> {
    let mut state = A::default();
    let mut version = 0;
    let mut recent: Recent = None;
    let Some(snapshots) = &shared.snapshots else {
        let replayed = replay(shared, id, &mut state, &mut version, &mut recent, None)
            .await?
            .events;
        return Ok(Loaded {
            state,
            version,
            replayed,
            recent,
        });
    };
    let (snapshot, latest) = futures::future::join(
        snapshots.get_latest_snapshot(id),
        shared.store.get_latest_version(id),
    )
    .await;
    match snapshot {
        Ok(Some(snapshot)) if snapshot.state_version != A::STATE_VERSION => tracing::info!(
            actor_type = A::TYPE,
            actor_id = id,
            snapshot_version = snapshot.version,
            snapshot_state_version = snapshot.state_version,
            state_version = A::STATE_VERSION,
            "snapshot taken under another state version; replaying all events"
        ),
        Ok(Some(snapshot)) => match snapshot.decode::<A>() {
            Ok(decoded) => {
                state = decoded;
                version = snapshot.version;
                if !snapshot.commands.is_empty() {
                    recent = Some(Box::new(RecentCommands::from_snapshot(
                        snapshot.commands,
                        &shared.config.command_memory,
                        now_millis(),
                    )));
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
    let latest = latest.map_err(|e| LoadError::Events(Box::new(e)))?;
    // Nothing stored after what the snapshot holds (or nothing at all): no read of events. An
    // event stored since is folded in by the first append's version conflict, as any stale read.
    let replayed = if latest > version {
        replay(shared, id, &mut state, &mut version, &mut recent, None)
            .await?
            .events
    } else {
        0
    };
    Ok(Loaded {
        state,
        version,
        replayed,
        recent,
    })
}

/// What [`replay`] folded in.
pub(super) struct Replayed {
    /// Events applied.
    pub(super) events: u64,
    /// The versions of the first and last folded event caused by the command looked for.
    pub(super) wanted: Option<(u64, u64)>,
}

/// Applies the stored events after `version` to `state`, noting the commands that caused them
/// (applied at their events' timestamps; those past the horizon now are dropped as they come),
/// and where the events of command `wanted` are among them, whether the memory keeps it or not.
pub(super) async fn replay<A: Actor>(
    shared: &Shared<A>,
    id: &str,
    state: &mut A,
    version: &mut u64,
    recent: &mut Recent,
    wanted: Option<&str>,
) -> Result<Replayed, LoadError> {
    let mut events = shared.store.stream_events(id, *version + 1);
    let mut replayed = Replayed {
        events: 0,
        wanted: None,
    };
    let now = now_millis();
    while let Some(item) = events.next().await {
        let event = item.map_err(|e| LoadError::Events(Box::new(e)))?;
        let at = event.version();
        let cause = event.metadata().causation_id.clone();
        let time = event.timestamp();
        decode_current::<A>(&shared.upcasters, event, |decoded| state.apply(&decoded))?;
        *version = at;
        if let Some(cause) = cause {
            if wanted.is_some_and(|w| w == &*cause) {
                let first = replayed.wanted.map_or(at, |(first, _)| first);
                replayed.wanted = Some((first, at));
            }
            let command = Remembered {
                hash: id_hash(&cause),
                id: cause,
                first: at,
                last: at,
                at: millis(time),
            };
            remember(recent, &shared.config.command_memory, command, now);
        }
        replayed.events += 1;
    }
    Ok(replayed)
}

/// Hands `event` to `each` as the actor's event type: decoded at once when it is in its
/// current shape, else upcast first (which may give several events, or none). Returns whether
/// it was upcast. The one path from a stored event to `A::Event`: activation, replay, a repeated
/// command's answer and the replay check all use it.
pub(crate) fn decode_current<A: Actor>(
    upcasters: &Upcasters,
    event: Event,
    mut each: impl FnMut(A::Event),
) -> Result<bool, LoadError> {
    let decode =
        |event: &Event| {
            event.decode::<A::Event>().map_err(|error| LoadError::Decode {
            context: format!(
                "stored event {} (version {}, type {} at schema version {}) is not a {} event",
                event.id(),
                event.version(),
                event.event_type(),
                event.schema_version(),
                A::TYPE
            ),
            error: Box::new(error),
        })
        };
    let context = |event: &Event| {
        format!(
            "stored event {} (version {}, type {} at schema version {})",
            event.id(),
            event.version(),
            event.event_type(),
            event.schema_version()
        )
    };
    let shapes = upcasters
        .upcast_shapes(&event)
        .map_err(|error| LoadError::Upcast {
            context: context(&event),
            error: Arc::new(error),
        })?;
    let Some(shapes) = shapes else {
        each(decode(&event)?);
        return Ok(false);
    };
    for shape in shapes {
        let decoded = shape
            .decode::<A::Event>()
            .map_err(|error| LoadError::Decode {
                context: format!(
                    "{} upcast to type {} at schema version {} is not a {} event",
                    context(&event),
                    shape.event_type,
                    shape.schema_version,
                    A::TYPE
                ),
                error: Box::new(error),
            })?;
        each(decoded);
    }
    Ok(true)
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

    #[derive(Debug, Default, Clone, Serialize, Deserialize)]
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

    // Paused time: the activation loads again for the whole transient budget (20 s) first.
    #[tokio::test(start_paused = true)]
    async fn an_activation_that_meets_a_store_outage_reports_it_as_transient() {
        let store = Arc::new(InMemoryEventStore::new());
        let runtime = Runtime::<Counter>::builder(store)
            .snapshots(Arc::new(Unreachable))
            .build();
        let started = tokio::time::Instant::now();
        let (a, b) = tokio::join!(runtime.ask("c", ()), runtime.ask("c", ()));
        assert!(
            started.elapsed() >= std::time::Duration::from_secs(20),
            "tried for the budget"
        );
        assert!(runtime.stats().retries >= 2, "{:?}", runtime.stats());
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

    /// An in-memory store that counts reads of events.
    #[derive(Debug, Default)]
    struct Counting {
        inner: InMemoryEventStore,
        event_reads: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl aether_core::EventStore for Counting {
        async fn save_event(&self, event: aether_core::Event) -> Result<(), StoreError> {
            self.inner.save_event(event).await
        }
        async fn save_events(&self, events: Vec<aether_core::Event>) -> Result<(), StoreError> {
            self.inner.save_events(events).await
        }
        async fn get_events(
            &self,
            actor_id: &str,
            from: u64,
        ) -> Result<Vec<aether_core::Event>, StoreError> {
            self.event_reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.inner.get_events(actor_id, from).await
        }
        fn stream_events(&self, actor_id: &str, from: u64) -> aether_core::EventStream {
            self.event_reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.inner.stream_events(actor_id, from)
        }
        async fn get_latest_version(&self, actor_id: &str) -> Result<u64, StoreError> {
            self.inner.get_latest_version(actor_id).await
        }
    }

    /// With snapshots, a never-seen actor and an actor whose snapshot covers its history are
    /// activated without reading events (the snapshot and the latest version are read at once);
    /// an actor with events after its snapshot reads only those.
    #[tokio::test]
    async fn activation_reads_events_only_when_there_are_some_to_read() {
        let store = Arc::new(Counting::default());
        let snapshots = Arc::new(InMemoryEventStore::new());
        let reads = || store.event_reads.load(std::sync::atomic::Ordering::Relaxed);
        let runtime = Runtime::<Counter>::builder(store.clone())
            .snapshots(snapshots.clone())
            .build();
        // Never written: no read of events.
        runtime.ask("fresh", ()).await.unwrap();
        assert_eq!(reads(), 0);
        // Covered by a snapshot at its last version: none either.
        runtime.ask("covered", ()).await.unwrap();
        runtime.ask("covered", ()).await.unwrap();
        runtime.stop_vm("covered").await;
        snapshots
            .save_snapshot(ActorSnapshot::new("covered", 2, &Counter(2)).unwrap())
            .await
            .unwrap();
        let before = reads();
        runtime.ask("covered", ()).await.unwrap();
        assert_eq!(reads(), before);
        // Events after the snapshot: read, and folded in.
        runtime.stop_vm("covered").await;
        aether_core::EventStore::save_event(
            &*store,
            aether_core::Event::new("covered", "u64", 4, &5u64).unwrap(),
        )
        .await
        .unwrap();
        let before = reads();
        let (state, version) = runtime.capture_state("covered").await.unwrap();
        assert_eq!(reads(), before + 1);
        assert_eq!((state.0, version), (2 + 1 + 5, 4));
        runtime.shutdown().await;
    }
}
