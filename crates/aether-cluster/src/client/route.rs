//! A client's calls: [`ClientActors`] sends each call to the owner in the newest map the client
//! holds and, like a node's call (`node/route.rs`), holds and re-sends it with the same command
//! id while no owner serves the actor, until the call timeout. A client hosts nothing, so a
//! call's loop has no local step: look, send, and catch up or hold.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use aether_core::CommandId;
use aether_runtime::Applied;
use bytes::Bytes;
use tokio::time::Instant;

use super::ClientInner;
use crate::hash::{ShardId, shard_for};
use crate::node::ClusterActor;
use crate::node::route::{CATCH_UP, CallError, HOLD_BACKOFF, Obstacle, remote_outcome};
use crate::node::router::RequestError;
use crate::node::wire::{self, Call, Status};

type Outcome<A> = Result<
    Applied<<A as aether_runtime::Actor>::Event>,
    CallError<<A as aether_runtime::Actor>::Error>,
>;

/// Calls the actors of type `A` from a [`ClusterClient`](super::ClusterClient) (from
/// [`ClusterClient::actors`](super::ClusterClient::actors)). Cheap to clone.
pub struct ClientActors<A: ClusterActor> {
    client: Arc<ClientInner>,
    actor: PhantomData<fn() -> A>,
}

impl<A: ClusterActor> Clone for ClientActors<A> {
    fn clone(&self) -> Self {
        Self::new(Arc::clone(&self.client))
    }
}

impl<A: ClusterActor> fmt::Debug for ClientActors<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientActors")
            .field("actor_type", &A::TYPE)
            .field("client", &self.client.config.name)
            .finish()
    }
}

impl<A: ClusterActor> ClientActors<A> {
    pub(super) fn new(client: Arc<ClientInner>) -> Self {
        Self {
            client,
            actor: PhantomData,
        }
    }

    /// The node that owns `actor_id` in the newest map the client has seen.
    pub fn node_for(&self, actor_id: &str) -> Option<String> {
        self.client.node_for(actor_id)
    }

    /// Sends `command` to actor `actor_id` on the node that owns it and waits for the outcome.
    /// The command gets a new id and is applied at most once, however often it is re-sent.
    pub async fn ask(
        &self,
        actor_id: &str,
        command: A::Command,
    ) -> Result<Applied<A::Event>, CallError<A::Error>> {
        let id = self.client.caller.command_id();
        self.ask_with_id(actor_id, command, id).await
    }

    /// [`ask`](Self::ask) with the caller's own command id (an idempotency key): sending the
    /// same id again — after a timeout, from another process — returns the first outcome
    /// instead of applying the command twice (within the actor's
    /// [`CommandMemory`](aether_runtime::CommandMemory) horizon, 60 s by default).
    pub async fn ask_with_id(
        &self,
        actor_id: &str,
        command: A::Command,
        command_id: impl Into<CommandId>,
    ) -> Result<Applied<A::Event>, CallError<A::Error>> {
        let cmd = wire::encode(&command).map_err(|e| CallError::Codec {
            actor_id: actor_id.to_owned(),
            context: format!("encoding a {} command", A::TYPE),
            reason: e.to_string(),
        })?;
        let mut call = ClientCall::<A> {
            client: &self.client,
            actor_id,
            id: command_id.into(),
            shard: shard_for(actor_id, self.client.shard_count),
            cmd,
            started: Instant::now(),
            held: None,
            waits: 0,
            actor: PhantomData,
        };
        Box::pin(call.run()).await
    }

    /// Sends `command` and returns once its owner has handled it, without reporting the outcome:
    /// a refusal counts as delivered; failures to deliver are returned. Applied at most once.
    pub async fn tell(
        &self,
        actor_id: &str,
        command: A::Command,
    ) -> Result<(), CallError<A::Error>> {
        match self.ask(actor_id, command).await {
            Ok(_) | Err(CallError::Rejected { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// One call on its way.
struct ClientCall<'a, A: ClusterActor> {
    client: &'a ClientInner,
    actor_id: &'a str,
    id: CommandId,
    shard: ShardId,
    /// The command, encoded once and re-sent as is.
    cmd: Bytes,
    started: Instant,
    /// When the call was first held.
    held: Option<Instant>,
    /// Waits so far, for the backoff.
    waits: u32,
    actor: PhantomData<fn() -> A>,
}

impl<A: ClusterActor> ClientCall<'_, A> {
    /// Look the owner up, send, and on an answer that is not an outcome catch up or hold; the
    /// message flow of docs/cluster.md without the local step.
    async fn run(&mut self) -> Outcome<A> {
        let client = self.client;
        loop {
            if client.cancel.is_cancelled() {
                return Err(CallError::Stopped {
                    actor_id: self.actor_id.to_owned(),
                });
            }
            // Armed before the map is read: a map that arrives after the read wakes a hold.
            let changed = client.map_changed.notified();
            let map = client.map.load_full();
            let Some(map) = map else {
                self.hold(Obstacle::NoMap, changed).await?;
                continue;
            };
            let Some(owner) = map.owner(self.shard).map(str::to_owned) else {
                self.hold(Obstacle::NoOwner, changed).await?;
                continue;
            };
            let epoch = map.epoch();
            let call = Call {
                actor_type: A::TYPE.to_owned(),
                actor: self.actor_id.to_owned(),
                id: self.id.to_string(),
                epoch,
                cmd: self.cmd.clone(),
            };
            let deadline = self.started + self.client.config.call_timeout;
            let metrics = &self.client.caller.metrics;
            // Abandoned when the owner is replaced in the map (failed, say: a request to a node
            // that died is never answered); sent again with the same id.
            let request = self.client.caller.request(&owner, &call, deadline);
            let replaced = self.owner_replaced(&owner);
            let sent = tokio::select! {
                biased;
                sent = request => sent,
                () = replaced => {
                    metrics.remote_retried.increment(1);
                    continue;
                }
            };
            let answer = match sent {
                Ok(answer) => answer,
                Err(RequestError::Refused { refusal, .. }) => {
                    self.note_held();
                    return Err(CallError::PermissionDenied {
                        actor_id: self.actor_id.to_owned(),
                        operation: refusal.operation.as_str(),
                        subject: refusal.subject,
                    });
                }
                Err(e) => {
                    if let RequestError::NoResponders { owner } = &e {
                        self.client.report_suspect(owner).await;
                    }
                    metrics.remote_retried.increment(1);
                    self.hold(Obstacle::Request(e), changed).await?;
                    continue;
                }
            };
            let obstacle = match answer.status {
                Status::Ok | Status::Rejected | Status::Failed | Status::BadRequest => {
                    self.note_held();
                    return remote_outcome::<A>(self.actor_id, &owner, answer);
                }
                // The owner has a newer map than the client: wait for it briefly (the watch
                // brings it), else read it, and send again at once.
                Status::NotOwner if answer.epoch > epoch => {
                    self.catch_up(epoch).await;
                    continue;
                }
                Status::NotOwner => Obstacle::NotOwner {
                    owner,
                    shard: self.shard,
                    epoch: answer.epoch,
                },
                Status::Moving => Obstacle::Moving {
                    owner,
                    shard: self.shard,
                },
            };
            metrics.remote_retried.increment(1);
            self.hold(obstacle, changed).await?;
        }
    }

    /// Waits at most [`CATCH_UP`] for a map newer than `epoch`, then reads it directly if the
    /// watch has not brought one.
    async fn catch_up(&self, epoch: u64) {
        let changed = self.client.map_changed.notified();
        if self.map_epoch() <= epoch {
            let _ = tokio::time::timeout(CATCH_UP, changed).await;
        }
        if self.map_epoch() <= epoch
            && let Err(e) = self.client.refresh().await
        {
            tracing::debug!(client = %self.client.config.name, error = %e, "reading the shard map failed");
        }
    }

    /// Returns once the client's map no longer gives the call's shard to `owner`.
    async fn owner_replaced(&self, owner: &str) {
        loop {
            let changed = self.client.map_changed.notified();
            let still = self
                .client
                .map
                .load()
                .as_ref()
                .is_some_and(|map| map.owner(self.shard) == Some(owner));
            if !still {
                return;
            }
            changed.await;
        }
    }

    fn map_epoch(&self) -> u64 {
        self.client.map.load().as_ref().map_or(0, |m| m.epoch())
    }

    /// Fails the call once its deadline has passed; otherwise waits for a newer map or one
    /// backoff period (reading the map directly at most every second, in case the watch
    /// stalled).
    async fn hold(
        &mut self,
        obstacle: Obstacle,
        changed: tokio::sync::futures::Notified<'_>,
    ) -> Result<(), CallError<A::Error>> {
        let client = self.client;
        let now = Instant::now();
        let deadline = self.started + client.config.call_timeout;
        if now >= deadline {
            client.caller.metrics.unavailable.increment(1);
            return Err(CallError::Unavailable {
                actor_id: self.actor_id.to_owned(),
                waited: self.started.elapsed(),
                reason: obstacle.to_string(),
            });
        }
        if self.held.is_none() {
            self.held = Some(now);
            client.caller.metrics.held.increment(1);
            tracing::debug!(client = %client.config.name, actor_id = self.actor_id, reason = %obstacle, "call held");
        }
        self.waits = self.waits.saturating_add(1);
        let wake = deadline.min(now + HOLD_BACKOFF.delay(self.waits));
        tokio::select! {
            () = changed => {}
            () = client.cancel.cancelled() => {}
            () = tokio::time::sleep_until(wake) => client.refresh_if_due().await,
        }
        Ok(())
    }

    /// Records how long the call was held, if it was.
    fn note_held(&self) {
        if let Some(since) = self.held {
            self.client
                .caller
                .metrics
                .hold_seconds
                .record(since.elapsed().as_secs_f64());
        }
    }
}
