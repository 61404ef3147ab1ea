//! `ActorRef`, a handle on one actor (`ask`, `tell`, and the delivery to its mailbox that
//! finds the actor again after a passivation), and `Applied`, what a successful command did.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::oneshot;

use aether_core::CommandId;

use super::lock;
use super::registry::{Door, Shared};
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
///
/// An ask that finds the actor idle (loaded, nothing queued, no command running) runs on the
/// caller's own task instead of crossing to the actor's task and back; otherwise it waits in
/// the mailbox. Either way the actor handles one command at a time, and messages from one
/// caller are handled in the order they were sent. Dropping an ask's future before it
/// completes abandons the command like a lost reply: it may or may not have been stored (a
/// command id, [`ask_once`](Self::ask_once), makes a retry safe).
pub struct ActorRef<A: Actor> {
    id: Arc<str>,
    shared: Arc<Shared<A>>,
    cached: Mutex<Option<Door<A>>>,
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
        let door = self.door().await?;
        if let Some(idle) = door.cell.idle() {
            return idle.ask(command, None).await;
        }
        let (tx, rx) = oneshot::channel();
        self.send(door, Envelope::Ask(command, tx)).await?;
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
    /// events instead of deciding again. The actor remembers the ids it applied for a time
    /// ([`CommandMemory`](crate::CommandMemory): 60 s by default, at least the newest 256, at
    /// most 65,536), in memory and (the newest 4,096 of them) in its snapshots.
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
        command_id: impl Into<CommandId>,
    ) -> Result<Applied<A::Event>, AskError<A::Error>> {
        let id = command_id.into();
        let door = self.door().await?;
        if let Some(idle) = door.cell.idle() {
            return idle.ask(command, Some(id)).await;
        }
        let (tx, rx) = oneshot::channel();
        self.send(
            door,
            Envelope::Once(Box::new(Once {
                command,
                id,
                reply: Some(tx),
            })),
        )
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
        command_id: impl Into<CommandId>,
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

    /// Queues `command` only if the actor is in memory now (a timer's tick): never activates
    /// it. False when it is not (passivating, passivated), or its mailbox closed meanwhile.
    pub(super) async fn tell_if_active(&self, command: A::Command) -> bool {
        let Some(door) = self.shared.active_door(&self.id) else {
            return false;
        };
        let counted = Queued::count(&door.cell.queued);
        match door.tx.send(Envelope::Tell(command)).await {
            Ok(()) => {
                counted.sent();
                true
            }
            Err(_) => false,
        }
    }

    /// Hands `envelope` to the actor's mailbox (activating the actor if needed).
    pub(super) async fn deliver(&self, envelope: Envelope<A>) -> Result<(), AskError<A::Error>> {
        let door = self.door().await?;
        self.send(door, envelope).await
    }

    /// The way to the actor: the one remembered, or found (activating the actor) now.
    async fn door(&self) -> Result<Door<A>, AskError<A::Error>> {
        if let Some(door) = lock(&self.cached).as_ref()
            && !door.tx.is_closed()
        {
            return Ok(door.clone());
        }
        let door = self.shared.resolve(&self.id).await?;
        *lock(&self.cached) = Some(door.clone());
        Ok(door)
    }

    /// Puts `envelope` in the mailbox behind `door`, waiting while it is full; when the actor
    /// passivated in between, finds (or activates) it again.
    async fn send(
        &self,
        mut door: Door<A>,
        mut envelope: Envelope<A>,
    ) -> Result<(), AskError<A::Error>> {
        loop {
            let counted = Queued::count(&door.cell.queued);
            let refused = match door.tx.try_send(envelope) {
                Ok(()) => {
                    counted.sent();
                    return Ok(());
                }
                Err(TrySendError::Full(back)) => match door.tx.send(back).await {
                    Ok(()) => {
                        counted.sent();
                        return Ok(());
                    }
                    Err(tokio::sync::mpsc::error::SendError(back)) => back,
                },
                Err(TrySendError::Closed(back)) => back,
            };
            drop(counted);
            // The actor passivated between lookup and send: find (or activate) it again.
            envelope = refused;
            *lock(&self.cached) = None;
            door = self.shared.resolve(&self.id).await?;
            *lock(&self.cached) = Some(door.clone());
        }
    }
}

/// One envelope counted in an actor's queued count (see `Cell::idle`) while it is being handed
/// to the mailbox: counted before the actor's task can see it, so the count never falls below
/// the envelopes it has yet to handle; uncounted again unless it was sent (refused by a closed
/// mailbox, or given up by a caller that stopped waiting for room).
struct Queued<'a> {
    count: &'a AtomicU32,
    sent: bool,
}

impl<'a> Queued<'a> {
    fn count(count: &'a AtomicU32) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self { count, sent: false }
    }

    /// The envelope is in the mailbox: the actor's task uncounts it once handled.
    fn sent(mut self) {
        self.sent = true;
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if !self.sent {
            self.count.fetch_sub(1, Ordering::AcqRel);
        }
    }
}
