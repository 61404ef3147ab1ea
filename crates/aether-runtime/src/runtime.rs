//! The runtime: a registry of virtual actors, each a VM task with a mailbox.
//!
//! This file holds [`Runtime`] and its public methods; the parts live in submodules:
//! `builder` ([`RuntimeBuilder`]), `registry` (the shards of active VMs, activation bookkeeping,
//! eviction, the idle sweeper, [`RuntimeStats`]), `vm` (the per-actor task), `load` (an
//! actor's state from its snapshot and events), `recent` (the command ids an actor remembers)
//! and `actor_ref` ([`ActorRef`], [`Applied`]).

mod actor_ref;
mod builder;
pub(crate) mod load;
mod outage;
mod recent;
mod registry;
mod timers;
mod vm;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use aether_core::{CommandId, EventStore};
use tokio::sync::oneshot;

use crate::actor::Actor;
use crate::error::AskError;

pub use actor_ref::{ActorRef, Applied};

/// How many actors [`Runtime::shutdown`] lets passivate at the same time.
pub const SHUTDOWN_WINDOW: u64 = 1024;
pub use builder::RuntimeBuilder;
pub use registry::RuntimeStats;
use registry::{Shared, Slot};
use vm::Envelope;

/// The commands of one aggregate in a loaded model and the events each may emit.
#[derive(Debug, Default)]
pub(crate) struct Rules {
    pub(crate) aggregate: String,
    pub(crate) commands: HashMap<String, Vec<String>>,
}

impl Rules {
    fn check<A: Actor>(&self, command: &A::Command, events: &[A::Event]) -> Result<(), String> {
        let declared = match A::command_type(command) {
            Some(name) => Some((
                name,
                self.commands.get(name).ok_or_else(|| {
                    format!(
                        "the model declares no command `{name}` for aggregate `{}`",
                        self.aggregate
                    )
                })?,
            )),
            None => None,
        };
        for event in events {
            let ty = A::event_type(event);
            let allowed = match declared {
                Some((_, emits)) => emits.iter().any(|e| e == ty),
                None => self.commands.values().flatten().any(|e| e == ty),
            };
            if !allowed {
                return Err(match declared {
                    Some((name, _)) => format!(
                        "the model does not let command `{name}` of aggregate `{}` emit event `{ty}`",
                        self.aggregate
                    ),
                    None => format!(
                        "the model does not let aggregate `{}` emit event `{ty}`",
                        self.aggregate
                    ),
                });
            }
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Hosts virtual actors of type `A` (the seed's `Runtime`): callers address actors by id; an
/// actor is activated on its first message (snapshot + later events), handles commands one at
/// a time, and is passivated when idle or evicted at the cap. Cloning gives another handle.
///
/// ```
/// # use aether_runtime::{Actor, Runtime};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Default, Clone, Serialize, Deserialize)] struct Counter { value: u64 }
/// # #[derive(Debug, PartialEq, Serialize, Deserialize)] enum Ev { Added(u64) }
/// # #[derive(Debug, thiserror::Error)] #[error("never")] struct Never;
/// # impl Actor for Counter {
/// #     const TYPE: &'static str = "counter";
/// #     type Command = u64; type Event = Ev; type Error = Never;
/// #     fn handle(&self, n: &u64) -> Result<Vec<Ev>, Never> { Ok(vec![Ev::Added(*n)]) }
/// #     fn apply(&mut self, Ev::Added(n): &Ev) { self.value += n }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use aether_store_memory::InMemoryEventStore;
///
/// let store = Arc::new(InMemoryEventStore::new());
/// let runtime = Runtime::<Counter>::builder(store.clone()).snapshots(store).build();
/// let counter = runtime.actor("counter-1");
/// let applied = counter.ask(5).await?;
/// assert_eq!((applied.version, applied.events), (1, vec![Ev::Added(5)]));
/// counter.tell(2).await?;
/// assert_eq!(runtime.capture_state("counter-1").await?.0.value, 7);
/// runtime.shutdown().await;
/// # Ok(()) }
/// ```
pub struct Runtime<A: Actor> {
    pub(crate) shared: Arc<Shared<A>>,
}

impl<A: Actor> Clone for Runtime<A> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<A: Actor> fmt::Debug for Runtime<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("actor_type", &A::TYPE)
            .field("active", &self.active_count())
            .field("closed", &self.shared.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<A: Actor> Runtime<A> {
    /// Starts configuring a runtime over `store`.
    pub fn builder(store: Arc<dyn EventStore>) -> RuntimeBuilder<A> {
        RuntimeBuilder::new(store)
    }

    /// A handle on actor `id` (nothing is activated until it gets a message). Keep the handle
    /// to send many messages: it remembers the actor's mailbox.
    pub fn actor(&self, id: impl Into<Arc<str>>) -> ActorRef<A> {
        ActorRef::new(id.into(), self.shared.clone())
    }

    /// Sends `command` to actor `id` and waits for the outcome.
    pub async fn ask(
        &self,
        id: &str,
        command: A::Command,
    ) -> Result<Applied<A::Event>, AskError<A::Error>> {
        self.actor(id).ask(command).await
    }

    /// Sends `command` with an id to actor `id`, applied at most once per id (see
    /// [`ActorRef::ask_once`]).
    pub async fn ask_once(
        &self,
        id: &str,
        command: A::Command,
        command_id: impl Into<CommandId>,
    ) -> Result<Applied<A::Event>, AskError<A::Error>> {
        self.actor(id).ask_once(command, command_id).await
    }

    /// Queues `command` for actor `id` without waiting for it to be handled.
    pub async fn tell(&self, id: &str, command: A::Command) -> Result<(), AskError<A::Error>> {
        self.actor(id).tell(command).await
    }

    /// Activates actor `id` now (the seed's `CreateVM`); a no-op if it is active.
    pub async fn create_vm(&self, id: &str) -> Result<(), AskError<A::Error>> {
        let id: Arc<str> = id.into();
        self.shared.resolve(&id).await.map(drop)
    }

    /// Passivates actor `id` (the seed's `StopVM`): it handles what is already queued,
    /// snapshots under the policy and leaves memory. Returns whether it was active.
    pub async fn stop_vm(&self, id: &str) -> bool {
        let found = {
            let shard = lock(self.shared.shard(id));
            match shard.get(id) {
                Some(Slot::Active(h)) => Some((Some(h.tx.clone()), h.generation)),
                Some(Slot::Passivating(generation)) => Some((None, *generation)),
                None => None,
            }
        };
        let Some((tx, generation)) = found else {
            return false;
        };
        if let Some(tx) = tx {
            let _ = tx.send(Envelope::Stop).await;
        }
        self.shared.wait_gone(id, generation).await;
        true
    }

    /// Ids of the actors in memory (the seed's `GetActiveVMs`).
    pub fn active_vms(&self) -> Vec<String> {
        self.shared
            .shards
            .iter()
            .flat_map(|shard| {
                lock(shard)
                    .iter()
                    .filter(|(_, slot)| matches!(slot, Slot::Active(_)))
                    .map(|(id, _)| id.to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Number of actors in memory (passivating ones included).
    pub fn active_count(&self) -> usize {
        self.shared.active.load(Ordering::Relaxed)
    }

    /// The current state and version of actor `id`, activating it if needed (the seed's
    /// `CaptureState`).
    pub async fn capture_state(&self, id: &str) -> Result<(A, u64), AskError<A::Error>>
    where
        A: Clone,
    {
        let actor = self.actor(id);
        let (tx, rx) = oneshot::channel();
        actor
            .deliver(Envelope::Inspect(Box::new(Box::new(
                move |state: &A, version| {
                    let _ = tx.send((state.clone(), version));
                },
            ))))
            .await?;
        rx.await.map_err(|_| AskError::NoReply {
            actor_id: id.into(),
        })
    }

    /// Counters of activations, passivations, conflicts, retries, snapshots and panics.
    pub fn stats(&self) -> RuntimeStats {
        let s = &self.shared.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RuntimeStats {
            activations: get(&s.activations),
            passivations: get(&s.passivations),
            conflicts: get(&s.conflicts),
            retries: get(&s.retries),
            snapshots: get(&s.snapshots),
            panics: get(&s.panics),
            replayed: get(&s.replayed),
            duplicates: get(&s.duplicates),
        }
    }

    /// Stops taking new commands, lets every actor handle what is already in its mailbox,
    /// snapshots under the policy and waits until all are passivated. Commands sent after this
    /// starts get [`AskError::ShutDown`].
    ///
    /// Actors stop in parallel, at most [`SHUTDOWN_WINDOW`] at a time (so a million actors
    /// saving snapshots do not send a million requests at once), and the runtime's actor table
    /// gives its memory back when they are gone.
    pub async fn shutdown(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        loop {
            let mut present = false;
            let mut stops = Vec::new();
            for shard in self.shared.shards.iter() {
                for slot in lock(shard).values() {
                    present = true;
                    if let Slot::Active(h) = slot {
                        stops.push(h.tx.clone());
                    }
                }
            }
            if !present {
                break;
            }
            self.shared.stop_all(stops, SHUTDOWN_WINDOW).await;
            self.shared.wait_none_active().await;
        }
        for shard in self.shared.shards.iter() {
            lock(shard).shrink_to_fit();
        }
    }
}
