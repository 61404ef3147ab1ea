//! The caller side: [`ClusterActors`] (over the node's `Router`) finds the node that owns an
//! actor's shard and delivers the command there — in process when it is this node, else as a
//! NATS request — holding and re-sending it (same command id) through shard moves and failover
//! until the call timeout. A call's loop is a `Route` state and a `step` that moves it on.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aether_core::{Backoff, CommandId};
use aether_runtime::{Applied, AskError, Runtime};
use bytes::Bytes;
use tokio::time::Instant;

use super::host::{ClusterActor, chain};
use super::router::{RequestError, Router};
use super::shards::{Entered, Serve};
use super::wire::{self, Answer, Call, Status};
use crate::hash::{ShardId, shard_for};

/// Why a call to an actor did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError<E: std::error::Error + 'static> {
    /// The actor refused the command (its domain error, carried across nodes). Nothing was
    /// applied.
    #[error("actor {actor_id} rejected the command: {source}")]
    Rejected {
        /// The actor.
        actor_id: String,
        /// The domain error.
        #[source]
        source: E,
    },
    /// The owning node could not handle the command (its store failed, the actor could not be
    /// activated, ...). Sending the same command id again is safe: it is applied at most once.
    #[error("actor {actor_id} on node {node}: {reason}")]
    Failed {
        /// The actor.
        actor_id: String,
        /// The node that tried.
        node: String,
        /// What went wrong.
        reason: String,
        /// The failure clears by itself (the owner's store was unavailable, timed out, or at a
        /// limit that clears): the same call may succeed shortly. See [`CallError::is_transient`].
        transient: bool,
    },
    /// No node served the actor within the call timeout (no shard map yet, its owner gone and
    /// not yet replaced, a move that did not finish). The command may or may not have been
    /// applied; sending it again with the same command id is safe.
    #[error("actor {actor_id}: no node served it within {waited:?} ({reason})")]
    Unavailable {
        /// The actor.
        actor_id: String,
        /// How long the call waited.
        waited: Duration,
        /// The last obstacle seen.
        reason: String,
    },
    /// The command, or the owner's answer, could not be encoded or decoded (nodes running
    /// different versions of the actor's types?).
    #[error("actor {actor_id}: {context}: {reason}")]
    Codec {
        /// The actor.
        actor_id: String,
        /// What was being encoded or decoded.
        context: String,
        /// The codec's error.
        reason: String,
    },
    /// The NATS server refused the call's request to the actor's owner for the user's
    /// permissions: they forbid publishing to `subject` (the owner's call subject,
    /// `aether-cluster.<cluster>.call.<owner>`), or subscribing to `subject` (the connection's
    /// reply inbox). Reported at once with a permission watch
    /// ([`ClusterConfig::permissions`](crate::ClusterConfig::permissions)); without one the
    /// request times out and the call is held until [`CallError::Unavailable`]. Not transient:
    /// the same call is refused again until an operator grants the permission. A refused
    /// publish delivered nothing; when the refused subject is the reply inbox, the call went out
    /// and may have been applied (sending it again with the same command id is safe).
    #[error("actor {actor_id}: permission denied: the server refused {operation} to {subject:?}")]
    PermissionDenied {
        /// The actor.
        actor_id: String,
        /// `"publish"` or `"subscribe"`.
        operation: &'static str,
        /// The refused subject.
        subject: String,
    },
    /// This node has left or was dropped (or this [`ClusterClient`](crate::ClusterClient) was
    /// closed or dropped).
    #[error("this cluster node or client is stopped; actor {actor_id} cannot be called through it")]
    Stopped {
        /// The actor.
        actor_id: String,
    },
}

impl<E: std::error::Error + 'static> CallError<E> {
    /// `true` when calling again with the same command id may succeed shortly: no node served
    /// the actor in time ([`CallError::Unavailable`]), or the owner's store failed in a way that
    /// clears by itself ([`CallError::Failed`] with `transient`). It is never applied twice.
    /// Never for [`CallError::PermissionDenied`].
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unavailable { .. } => true,
            Self::Failed { transient, .. } => *transient,
            _ => false,
        }
    }

    /// The domain error, if the actor refused the command.
    pub fn rejection(&self) -> Option<&E> {
        match self {
            Self::Rejected { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// How long a held call waits at most before it looks again (unless the map or a shard changes
/// first): doubling from 5 ms to 250 ms.
pub(crate) const HOLD_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(5), Duration::from_millis(250));

/// How long a call waits for this node's map to catch up with a newer one an owner answered from.
pub(crate) const CATCH_UP: Duration = Duration::from_millis(200);

/// What keeps a call from being served right now; its text is the `reason` of
/// [`CallError::Unavailable`] when the call runs out of time.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum Obstacle {
    #[error("no shard map yet")]
    NoMap,
    #[error("the cluster has no members to own it")]
    NoOwner,
    #[error("shard {0} waits for its handoff")]
    Pending(ShardId),
    #[error("shard {0} is not yet served here")]
    NotServedHere(ShardId),
    #[error("node {owner} does not own shard {shard} in its map (epoch {epoch})")]
    NotOwner {
        owner: String,
        shard: ShardId,
        epoch: u64,
    },
    #[error("shard {shard} is moving away from node {owner}")]
    Moving { owner: String, shard: ShardId },
    #[error(transparent)]
    Request(#[from] RequestError),
}

/// Calls the actors of type `A` wherever they live in the cluster (from
/// [`ClusterNode::register`](super::ClusterNode::register)). Cheap to clone.
pub struct ClusterActors<A: ClusterActor> {
    router: Arc<Router>,
    runtime: Runtime<A>,
}

impl<A: ClusterActor> Clone for ClusterActors<A> {
    fn clone(&self) -> Self {
        Self {
            router: self.router.clone(),
            runtime: self.runtime.clone(),
        }
    }
}

impl<A: ClusterActor> fmt::Debug for ClusterActors<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterActors")
            .field("actor_type", &A::TYPE)
            .field("node", &self.router.node.config.node_id)
            .finish()
    }
}

impl<A: ClusterActor> ClusterActors<A> {
    pub(super) fn new(router: Arc<Router>, runtime: Runtime<A>) -> Self {
        Self { router, runtime }
    }

    /// The node's shared state (for the always-on marks, `keeper.rs`).
    pub(super) fn node(&self) -> &Arc<super::Shared> {
        &self.router.node
    }

    /// This node's runtime for `A` (the actors it hosts right now).
    pub fn runtime(&self) -> &Runtime<A> {
        &self.runtime
    }

    /// The node that owns `actor_id` in the current shard map.
    pub fn node_for(&self, actor_id: &str) -> Option<String> {
        self.router.node.manager.node_for_actor(actor_id)
    }

    /// Sends `command` to actor `actor_id`, wherever it lives, and waits for the outcome. The
    /// command gets a new id and is applied at most once, however often it has to be re-sent.
    pub async fn ask(
        &self,
        actor_id: &str,
        command: A::Command,
    ) -> Result<Applied<A::Event>, CallError<A::Error>> {
        let id = self.router.command_id();
        self.ask_with_id(actor_id, command, id).await
    }

    /// [`ask`](Self::ask) with the caller's own command id (an idempotency key): sending the
    /// same id again — after a timeout, from another process — returns the first outcome
    /// instead of applying the command twice (an id is remembered for the actor's
    /// [`CommandMemory`](aether_runtime::CommandMemory) horizon, 60 s by default, and always
    /// among its newest 256).
    pub async fn ask_with_id(
        &self,
        actor_id: &str,
        command: A::Command,
        command_id: impl Into<CommandId>,
    ) -> Result<Applied<A::Event>, CallError<A::Error>> {
        self.route(actor_id, command, command_id.into()).await
    }

    /// Sends `command` and returns once its owner has handled it, without reporting the outcome:
    /// a refusal counts as delivered; failures to deliver (no node served the actor, the owner
    /// failed) are returned. Like `ask`, the command is applied at most once.
    pub async fn tell(
        &self,
        actor_id: &str,
        command: A::Command,
    ) -> Result<(), CallError<A::Error>> {
        match self
            .route(actor_id, command, self.router.command_id())
            .await
        {
            Ok(_) | Err(CallError::Rejected { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Delivers `command` to the owner of `actor_id` and waits for the outcome: the message
    /// flow of docs/cluster.md, one [`Route`] state at a time.
    async fn route(&self, actor_id: &str, command: A::Command, id: CommandId) -> Outcome<A> {
        let shard = shard_for(actor_id, self.router.node.config.shard_count);
        // The common case, without the state machine: this node owns the shard and serves it.
        if let Some(entered) = self.serving_here(shard) {
            let outcome = self.runtime.ask_once(actor_id, command, id).await;
            drop(entered);
            return local_outcome::<A>(actor_id, self.router.node.me(), outcome);
        }
        // Boxed: a local call's future stays small.
        Box::pin(async move {
            let mut call = Routing::new(self, actor_id, command, id, shard);
            let mut state = Route::Look;
            loop {
                state = match call.step(state).await {
                    Route::Done(outcome) => return outcome,
                    next => next,
                };
            }
        })
        .await
    }

    /// Inside `shard`'s gate, if this node's map gives it the shard and it serves it now
    /// (what `Routing::look` then `Routing::local` find on their way to the runtime).
    fn serving_here(&self, shard: ShardId) -> Option<Entered<'_>> {
        let node = &*self.router.node;
        if node.cancel.is_cancelled() {
            return None;
        }
        let mine = node
            .shards
            .map()
            .as_ref()
            .is_some_and(|map| map.owner(shard) == Some(node.me()));
        if !mine {
            return None;
        }
        node.shards.enter(shard).ok()
    }
}

type Outcome<A> = Result<
    Applied<<A as aether_runtime::Actor>::Event>,
    CallError<<A as aether_runtime::Actor>::Error>,
>;

/// Where a call stands; [`Routing::step`] moves it on.
enum Route<A: ClusterActor> {
    /// Look the shard's owner up in the map this node applied.
    Look,
    /// This node owns the shard: run the command here if the shard is served.
    Local,
    /// `owner` owns the shard in this node's map of `epoch`: send it the call.
    Remote { owner: String, epoch: u64 },
    /// The owner answered from a newer map than this node's (`epoch`): wait briefly for it, then
    /// look again (the call is not held).
    CatchUp { epoch: u64 },
    /// No node serves the actor right now: wait for a change or one backoff period, then look
    /// again; fail once the call timeout has passed.
    Held(Obstacle),
    /// The call is over.
    Done(Outcome<A>),
}

/// One call on its way: what stays the same across attempts, and what is worked out on first
/// use only.
struct Routing<'a, A: ClusterActor> {
    actors: &'a ClusterActors<A>,
    actor_id: &'a str,
    id: CommandId,
    shard: ShardId,
    cmd: Cmd<A::Command>,
    /// When the call was first held.
    held: Option<Instant>,
    /// (started, deadline); see [`deadline`](Self::deadline).
    clock: Option<(Instant, Instant)>,
    /// Waits so far, for the backoff.
    waits: u32,
}

/// The command, as a value (for this node) or encoded (for others), converted lazily.
enum Cmd<C> {
    Value(C),
    Bytes(Bytes),
    /// Handed to this node's runtime: the call is over.
    Given,
}

impl<'a, A: ClusterActor> Routing<'a, A> {
    fn new(
        actors: &'a ClusterActors<A>,
        actor_id: &'a str,
        command: A::Command,
        id: CommandId,
        shard: ShardId,
    ) -> Self {
        Self {
            actors,
            actor_id,
            id,
            shard,
            cmd: Cmd::Value(command),
            held: None,
            clock: None,
            waits: 0,
        }
    }

    async fn step(&mut self, state: Route<A>) -> Route<A> {
        match state {
            Route::Look => self.look(),
            Route::Local => self.local().await,
            Route::Remote { owner, epoch } => self.remote(owner, epoch).await,
            Route::CatchUp { epoch } => self.catch_up(epoch).await,
            Route::Held(obstacle) => self.hold(obstacle).await,
            done @ Route::Done(_) => done,
        }
    }

    /// Where the map this node applied puts the shard (or `Stopped`, once the node is).
    ///
    /// The map is read without a lock, and the look arms no notification (that would cost two
    /// locks per call on the fast path): a change between this look and a hold's wait costs at
    /// most one backoff period.
    fn look(&self) -> Route<A> {
        let node = &*self.actors.router.node;
        if node.cancel.is_cancelled() {
            return Route::Done(Err(CallError::Stopped {
                actor_id: self.actor_id.to_owned(),
            }));
        }
        // A short read: arc-swap's guard is dropped here, before any wait.
        let map = node.shards.map();
        let Some(map) = map.as_ref() else {
            return Route::Held(Obstacle::NoMap);
        };
        match map.owner(self.shard) {
            None => Route::Held(Obstacle::NoOwner),
            Some(owner) if owner == node.me() => Route::Local,
            Some(owner) => Route::Remote {
                owner: owner.to_owned(),
                epoch: map.epoch(),
            },
        }
    }

    /// Runs the command in this node's runtime, inside the shard's gate (a drain waits for the
    /// calls inside).
    async fn local(&mut self) -> Route<A> {
        let actors = self.actors;
        let node = &*actors.router.node;
        let entered = match node.shards.enter(self.shard) {
            Ok(entered) => entered,
            Err(Serve::Pending) => return Route::Held(Obstacle::Pending(self.shard)),
            Err(_) => return Route::Held(Obstacle::NotServedHere(self.shard)),
        };
        let command = match std::mem::replace(&mut self.cmd, Cmd::Given) {
            Cmd::Value(c) => c,
            Cmd::Bytes(b) => match decode_command::<A>(self.actor_id, &b) {
                Ok(c) => c,
                Err(e) => return Route::Done(Err(e)),
            },
            Cmd::Given => return Route::Done(Err(given::<A>(self.actor_id))),
        };
        let outcome = actors
            .runtime
            .ask_once(self.actor_id, command, self.id.clone())
            .await;
        drop(entered);
        self.note_held();
        Route::Done(local_outcome::<A>(self.actor_id, node.me(), outcome))
    }

    /// Sends the call to `owner` and reads its answer: an outcome, or why to look again.
    async fn remote(&mut self, owner: String, epoch: u64) -> Route<A> {
        let router = &*self.actors.router;
        let cmd = match self.encoded() {
            Ok(cmd) => cmd,
            Err(e) => return Route::Done(Err(e)),
        };
        let call = Call {
            actor_type: A::TYPE.to_owned(),
            actor: self.actor_id.to_owned(),
            id: self.id.to_string(),
            epoch,
            cmd,
        };
        let deadline = self.deadline().1;
        // A request in flight when its owner is replaced in the map (failed, say: a request to a
        // node that died is never answered) is abandoned and the call looks again; re-sending
        // it with the same id is safe.
        let request = router.request(&owner, &call, deadline);
        let replaced = self.owner_replaced(&owner);
        let sent = tokio::select! {
            biased;
            sent = request => sent,
            () = replaced => {
                router.node.metrics.remote_retried.increment(1);
                return Route::Look;
            }
        };
        let answer = match sent {
            Ok(answer) => answer,
            // Final: the same request would be refused again.
            Err(RequestError::Refused { refusal, .. }) => {
                self.note_held();
                return Route::Done(Err(CallError::PermissionDenied {
                    actor_id: self.actor_id.to_owned(),
                    operation: refusal.operation.as_str(),
                    subject: refusal.subject,
                }));
            }
            Err(e) => {
                if let RequestError::NoResponders { owner } = &e {
                    // Its connection may be gone: the failover checks (full queue: dropped, and
                    // reported again by the next call).
                    let _ = router.node.suspects.try_send(owner.clone());
                }
                router.node.metrics.remote_retried.increment(1);
                return Route::Held(Obstacle::Request(e));
            }
        };
        let shard = self.shard;
        let obstacle = match answer.status {
            Status::Ok | Status::Rejected | Status::Failed | Status::BadRequest => {
                self.note_held();
                return Route::Done(remote_outcome::<A>(self.actor_id, &owner, answer));
            }
            // This node's map is behind the owner's: wait for it, briefly.
            Status::NotOwner if answer.epoch > epoch => return Route::CatchUp { epoch },
            Status::NotOwner => Obstacle::NotOwner {
                owner,
                shard,
                epoch: answer.epoch,
            },
            Status::Moving => Obstacle::Moving { owner, shard },
        };
        router.node.metrics.remote_retried.increment(1);
        Route::Held(obstacle)
    }

    /// Returns once this node's map no longer gives the call's shard to `owner`.
    async fn owner_replaced(&self, owner: &str) {
        let shards = &self.actors.router.node.shards;
        loop {
            let mapped = shards.map_changed.notified();
            let still = shards
                .map()
                .as_ref()
                .is_some_and(|map| map.owner(self.shard) == Some(owner));
            if !still {
                return;
            }
            mapped.await;
        }
    }

    /// Waits (at most [`CATCH_UP`]) for this node to apply a map newer than `epoch`.
    async fn catch_up(&self, epoch: u64) -> Route<A> {
        let shards = &self.actors.router.node.shards;
        let mapped = shards.map_changed.notified();
        if shards.map_epoch() <= epoch {
            let _ = tokio::time::timeout(CATCH_UP, mapped).await;
        }
        Route::Look
    }

    /// Fails the call once its deadline has passed; otherwise waits until the map or a shard's
    /// state changes, at most one backoff period, and looks again.
    async fn hold(&mut self, obstacle: Obstacle) -> Route<A> {
        let node = &*self.actors.router.node;
        let now = Instant::now();
        let (started, deadline) = self.deadline();
        if now >= deadline {
            node.metrics.unavailable.increment(1);
            return Route::Done(Err(CallError::Unavailable {
                actor_id: self.actor_id.to_owned(),
                waited: started.elapsed(),
                reason: obstacle.to_string(),
            }));
        }
        if self.held.is_none() {
            self.held = Some(now);
            node.metrics.held.increment(1);
            tracing::debug!(node = %node.me(), actor_id = self.actor_id, reason = %obstacle, "call held");
        }
        self.waits = self.waits.saturating_add(1);
        let wake = deadline.min(now + HOLD_BACKOFF.delay(self.waits));
        let mapped = node.shards.map_changed.notified();
        let moved = node.shards.changed.notified();
        tokio::pin!(mapped, moved);
        let _ = tokio::time::timeout_at(wake, futures::future::select(mapped, moved)).await;
        Route::Look
    }

    /// When the call started and when it must end. Read from the clock on first use only: the
    /// fast path (a local call on a served shard) needs no deadline.
    fn deadline(&mut self) -> (Instant, Instant) {
        let timeout = self.actors.router.node.config.call_timeout;
        *self.clock.get_or_insert_with(|| {
            let now = Instant::now();
            (now, now + timeout)
        })
    }

    /// The command for another node, encoded on first use only (a local call never pays for
    /// it) and kept for every re-send.
    fn encoded(&mut self) -> Result<Bytes, CallError<A::Error>> {
        match &self.cmd {
            Cmd::Bytes(b) => Ok(b.clone()),
            Cmd::Value(c) => {
                let b = wire::encode(c).map_err(|e| CallError::Codec {
                    actor_id: self.actor_id.to_owned(),
                    context: format!("encoding a {} command", A::TYPE),
                    reason: e.to_string(),
                })?;
                self.cmd = Cmd::Bytes(b.clone());
                Ok(b)
            }
            Cmd::Given => Err(given::<A>(self.actor_id)),
        }
    }

    /// Records how long the call was held, if it was.
    fn note_held(&self) {
        if let Some(since) = self.held {
            self.actors
                .router
                .node
                .metrics
                .hold_seconds
                .record(since.elapsed().as_secs_f64());
        }
    }
}

fn decode_command<A: ClusterActor>(
    actor_id: &str,
    bytes: &[u8],
) -> Result<A::Command, CallError<A::Error>> {
    rmp_serde::from_slice(bytes).map_err(|e| CallError::Codec {
        actor_id: actor_id.to_owned(),
        context: format!("decoding a {} command", A::TYPE),
        reason: e.to_string(),
    })
}

/// A command asked for after it went to this node's runtime: a call ends there, so this never
/// happens; an error rather than a panic all the same.
fn given<A: ClusterActor>(actor_id: &str) -> CallError<A::Error> {
    CallError::Codec {
        actor_id: actor_id.to_owned(),
        context: format!("sending a {} command", A::TYPE),
        reason: "the command was handed to this node's runtime already".to_owned(),
    }
}

fn local_outcome<A: ClusterActor>(
    actor_id: &str,
    node: &str,
    outcome: Result<Applied<A::Event>, AskError<A::Error>>,
) -> Result<Applied<A::Event>, CallError<A::Error>> {
    outcome.map_err(|e| match e {
        AskError::Rejected { source, .. } => CallError::Rejected {
            actor_id: actor_id.to_owned(),
            source,
        },
        other => CallError::Failed {
            actor_id: actor_id.to_owned(),
            node: node.to_owned(),
            transient: other.is_transient(),
            reason: chain(&other),
        },
    })
}

pub(crate) fn remote_outcome<A: ClusterActor>(
    actor_id: &str,
    node: &str,
    answer: Answer,
) -> Result<Applied<A::Event>, CallError<A::Error>> {
    let codec = |context: &str, e: rmp_serde::decode::Error| CallError::Codec {
        actor_id: actor_id.to_owned(),
        context: format!("{context} from node {node}"),
        reason: e.to_string(),
    };
    match answer.status {
        Status::Ok => {
            let events: Vec<A::Event> = match &answer.events {
                Some(bytes) => wire::decode(bytes).map_err(|e| codec("decoding the events", e))?,
                None => Vec::new(),
            };
            Ok(Applied::new(answer.version.unwrap_or(0), events))
        }
        Status::Rejected => {
            let bytes = answer.error.unwrap_or_default();
            let source: A::Error =
                wire::decode(&bytes).map_err(|e| codec("decoding the domain error", e))?;
            Err(CallError::Rejected {
                actor_id: actor_id.to_owned(),
                source,
            })
        }
        _ => Err(CallError::Failed {
            actor_id: actor_id.to_owned(),
            node: node.to_owned(),
            transient: answer.transient,
            reason: answer
                .reason
                .unwrap_or_else(|| "failed without a reason".to_owned()),
        }),
    }
}
