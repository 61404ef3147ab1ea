//! `ActorRef`, a handle on one actor (`ask`, `tell`, and the delivery to its mailbox that
//! finds the actor again after a passivation), and `Applied`, what a successful command did.

use std::fmt;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};

use super::lock;
use super::registry::Shared;
use super::vm::{Envelope, Once};
use crate::actor::Actor;
use crate::error::AskError;

/// What a successful command did: the events it appended (already applied) and the actor's
/// version after them.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Applied<E> {
    /// The actor's version after the command (unchanged if it emitted nothing).
    pub version: u64,
    /// The events appended, in order.
    pub events: Vec<E>,
}

impl<E> Applied<E> {
    /// What a command did: the actor's `version` after it and the `events` it appended (for
    /// layers that carry outcomes across processes, like the cluster).
    pub fn new(version: u64, events: Vec<E>) -> Self {
        Self { version, events }
    }
}

/// A handle on one actor: `ask` waits for the outcome, `tell` only for the mailbox. Cheap to
/// create; it remembers the actor's mailbox between messages and finds the actor again after a
/// passivation.
pub struct ActorRef<A: Actor> {
    id: Arc<str>,
    shared: Arc<Shared<A>>,
    cached: Mutex<Option<mpsc::Sender<Envelope<A>>>>,
}

impl<A: Actor> Clone for ActorRef<A> {
    fn clone(&self) -> Self {
        Self {
            id: self.id.clone(),
            shared: self.shared.clone(),
            cached: Mutex::new(lock(&self.cached).clone()),
        }
    }
}

impl<A: Actor> fmt::Debug for ActorRef<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActorRef")
            .field("actor_type", &A::TYPE)
            .field("id", &self.id)
            .finish()
    }
}

impl<A: Actor> ActorRef<A> {
    /// A handle on actor `id` (see [`Runtime::actor`](super::Runtime::actor)).
    pub(super) fn new(id: Arc<str>, shared: Arc<Shared<A>>) -> Self {
        ActorRef {
            id,
            shared,
            cached: Mutex::new(None),
        }
    }

    /// The actor's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Sends `command` and waits until it is handled: the events appended and the new
    /// version, or why not (the actor's own refusal is [`AskError::Rejected`]).
    pub async fn ask(&self, command: A::Command) -> Result<Applied<A::Event>, AskError<A::Error>> {
        let (tx, rx) = oneshot::channel();
        self.deliver(Envelope::Ask(command, tx)).await?;
        rx.await.unwrap_or_else(|_| {
            Err(AskError::NoReply {
                actor_id: self.id.clone(),
            })
        })
    }

    /// Sends `command` with an id and waits until it is handled, applying it **at most once**
    /// per id: its events record `command_id` as their causation id, and if the actor has
    /// already applied a command with this id (a retry after a lost reply, a copy another node
    /// handled first, a conflict lost to such a copy) the answer is rebuilt from the stored
    /// events instead of deciding again. The actor remembers the last
    /// [`REMEMBERED_COMMANDS`](crate::REMEMBERED_COMMANDS) ids, in memory and in its snapshots.
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
    /// # let store = std::sync::Arc::new(aether_store_memory::InMemoryEventStore::new());
    /// let runtime = Runtime::<Counter>::builder(store).build();
    /// let counter = runtime.actor("c-1");
    /// let first = counter.ask_once(5, "payment-77").await?;
    /// let again = counter.ask_once(5, "payment-77").await?; // a retry: not applied twice
    /// assert_eq!(first, again);
    /// assert_eq!(runtime.capture_state("c-1").await?.0.value, 5);
    /// # Ok(()) }
    /// ```
    pub async fn ask_once(
        &self,
        command: A::Command,
        command_id: impl Into<Arc<str>>,
    ) -> Result<Applied<A::Event>, AskError<A::Error>> {
        let (tx, rx) = oneshot::channel();
        self.deliver(Envelope::Once(Box::new(Once {
            command,
            id: command_id.into(),
            reply: Some(tx),
        })))
        .await?;
        rx.await.unwrap_or_else(|_| {
            Err(AskError::NoReply {
                actor_id: self.id.clone(),
            })
        })
    }

    /// Queues `command` with an id (applied at most once per id, as with
    /// [`ask_once`](Self::ask_once)) without waiting for it to be handled.
    pub async fn tell_once(
        &self,
        command: A::Command,
        command_id: impl Into<Arc<str>>,
    ) -> Result<(), AskError<A::Error>> {
        self.deliver(Envelope::Once(Box::new(Once {
            command,
            id: command_id.into(),
            reply: None,
        })))
        .await
    }

    /// Queues `command`; waits only while the mailbox is full. The outcome is not reported
    /// (failures are logged and counted in the metrics).
    pub async fn tell(&self, command: A::Command) -> Result<(), AskError<A::Error>> {
        self.deliver(Envelope::Tell(command)).await
    }

    pub(super) async fn deliver(
        &self,
        mut envelope: Envelope<A>,
    ) -> Result<(), AskError<A::Error>> {
        loop {
            let known = {
                let mut cached = lock(&self.cached);
                match cached.as_ref() {
                    Some(tx) => match tx.try_send(envelope) {
                        Ok(()) => return Ok(()),
                        Err(TrySendError::Full(back)) => {
                            envelope = back;
                            cached.clone()
                        }
                        Err(TrySendError::Closed(back)) => {
                            envelope = back;
                            *cached = None;
                            None
                        }
                    },
                    None => None,
                }
            };
            let tx = match known {
                Some(tx) => tx,
                None => {
                    let tx = self.shared.resolve(&self.id).await?;
                    *lock(&self.cached) = Some(tx.clone());
                    tx
                }
            };
            match tx.send(envelope).await {
                Ok(()) => return Ok(()),
                // The actor passivated between lookup and send: find (or activate) it again.
                Err(mpsc::error::SendError(back)) => {
                    envelope = back;
                    *lock(&self.cached) = None;
                }
            }
        }
    }
}
