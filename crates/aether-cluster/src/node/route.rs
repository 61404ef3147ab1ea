//! The caller side: [`ClusterActors`] finds the node that owns an actor's shard and delivers the
//! command there — in process when it is this node, else as a NATS request — holding and
//! re-sending it (same command id) through shard moves and failover until the call timeout.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aether_runtime::{Applied, AskError, Runtime};
use bytes::Bytes;
use tokio::time::Instant;
use tracing::Instrument;

use super::NodeInner;
use super::host::{ClusterActor, chain};
use super::shards::Serve;
use super::wire::{self, Answer, Call, Status};
use crate::hash::shard_for;

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
    /// This node has left or was dropped.
    #[error("this cluster node is stopped; actor {actor_id} cannot be called through it")]
    Stopped {
        /// The actor.
        actor_id: String,
    },
}

impl<E: std::error::Error + 'static> CallError<E> {
    /// The domain error, if the actor refused the command.
    pub fn rejection(&self) -> Option<&E> {
        match self {
            Self::Rejected { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Calls the actors of type `A` wherever they live in the cluster (from
/// [`ClusterNode::register`](super::ClusterNode::register)). Cheap to clone.
pub struct ClusterActors<A: ClusterActor> {
    node: Arc<NodeInner>,
    runtime: Runtime<A>,
}

impl<A: ClusterActor> Clone for ClusterActors<A> {
    fn clone(&self) -> Self {
        Self {
            node: self.node.clone(),
            runtime: self.runtime.clone(),
        }
    }
}

impl<A: ClusterActor> fmt::Debug for ClusterActors<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterActors")
            .field("actor_type", &A::TYPE)
            .field("node", &self.node.config.node_id)
            .finish()
    }
}

/// The command, as a value (for this node) or encoded (for others), converted lazily.
enum Cmd<C> {
    Value(C),
    Bytes(Bytes),
}

impl<A: ClusterActor> ClusterActors<A> {
    pub(super) fn new(node: Arc<NodeInner>, runtime: Runtime<A>) -> Self {
        Self { node, runtime }
    }

    /// This node's runtime for `A` (the actors it hosts right now).
    pub fn runtime(&self) -> &Runtime<A> {
        &self.runtime
    }

    /// The node that owns `actor_id` in the current shard map.
    pub fn node_for(&self, actor_id: &str) -> Option<String> {
        self.node.manager.node_for_actor(actor_id)
    }

    /// Sends `command` to actor `actor_id`, wherever it lives, and waits for the outcome. The
    /// command gets a new id and is applied at most once, however often it has to be re-sent.
    pub async fn ask(
        &self,
        actor_id: &str,
        command: A::Command,
    ) -> Result<Applied<A::Event>, CallError<A::Error>> {
        let id = self.node.command_id();
        self.ask_with_id(actor_id, command, id).await
    }

    /// [`ask`](Self::ask) with the caller's own command id (an idempotency key): sending the
    /// same id again — after a timeout, from another process — returns the first outcome
    /// instead of applying the command twice (within the last
    /// [`REMEMBERED_COMMANDS`](aether_runtime::REMEMBERED_COMMANDS) commands of the actor).
    pub async fn ask_with_id(
        &self,
        actor_id: &str,
        command: A::Command,
        command_id: impl Into<Arc<str>>,
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
        match self.route(actor_id, command, self.node.command_id()).await {
            Ok(_) | Err(CallError::Rejected { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn route(
        &self,
        actor_id: &str,
        command: A::Command,
        id: Arc<str>,
    ) -> Result<Applied<A::Event>, CallError<A::Error>> {
        let node = &*self.node;
        let shard = shard_for(actor_id, node.config.shard_count);
        let mut cmd = Cmd::Value(command);
        let mut held: Option<Instant> = None;
        // Read the clock only off the fast path (the first local attempt needs no deadline).
        let mut clock: Option<(Instant, Instant)> = None;
        let mut deadline = || {
            *clock.get_or_insert_with(|| {
                let now = Instant::now();
                (now, now + node.config.call_timeout)
            })
        };
        let mut backoff = Duration::from_millis(5);
        let mut reason;
        loop {
            if node.cancel.is_cancelled() {
                return Err(CallError::Stopped {
                    actor_id: actor_id.to_owned(),
                });
            }
            // The fast path arms no notification (that costs two locks per call); a change
            // between this look and the wait below costs at most one backoff period.
            // The map this node applied (the one its shard table follows), read without a lock.
            let map = node.current.load();
            let epoch = map.as_ref().map_or(0, |m| m.epoch());
            let have_map = map.is_some();
            let owner = match map.as_ref().and_then(|m| m.owner(shard)) {
                Some(o) if o == node.me() => Some(None),
                Some(o) => Some(Some(o.to_owned())),
                None => None,
            };
            drop(map);
            match owner {
                None => {
                    reason = if !have_map {
                        "no shard map yet".to_owned()
                    } else {
                        "the cluster has no members to own it".to_owned()
                    };
                }
                Some(None) => match node.shards.enter(shard) {
                    Ok(entered) => {
                        let command = match cmd {
                            Cmd::Value(c) => c,
                            Cmd::Bytes(b) => self.decode_command(actor_id, &b)?,
                        };
                        let outcome = self.runtime.ask_once(actor_id, command, id).await;
                        drop(entered);
                        node.note_held(held);
                        return local_outcome::<A>(actor_id, node.me(), outcome);
                    }
                    Err(state) => {
                        reason = match state {
                            Serve::Pending => format!("shard {shard} waits for its handoff"),
                            _ => format!("shard {shard} is not yet served here"),
                        };
                    }
                },
                Some(Some(owner)) => {
                    let bytes = match &cmd {
                        Cmd::Bytes(b) => b.clone(),
                        Cmd::Value(c) => {
                            let b = wire::encode(c).map_err(|e| CallError::Codec {
                                actor_id: actor_id.to_owned(),
                                context: format!("encoding a {} command", A::TYPE),
                                reason: e.to_string(),
                            })?;
                            cmd = Cmd::Bytes(b.clone());
                            b
                        }
                    };
                    let call = Call {
                        actor_type: A::TYPE.to_owned(),
                        actor: actor_id.to_owned(),
                        id: id.to_string(),
                        epoch,
                        cmd: bytes,
                    };
                    match node.request(&owner, &call, deadline().1).await {
                        Ok(answer) => match answer.status {
                            Status::Ok | Status::Rejected | Status::Failed | Status::BadRequest => {
                                node.note_held(held);
                                return remote_outcome::<A>(actor_id, &owner, answer);
                            }
                            Status::NotOwner => {
                                reason = format!(
                                    "node {owner} does not own shard {shard} in its map (epoch {})",
                                    answer.epoch
                                );
                                if answer.epoch > epoch {
                                    // This node's map is behind: wait for it, briefly.
                                    let mapped = node.map_changed.notified();
                                    if node.applied_epoch() <= epoch {
                                        let _ = tokio::time::timeout(
                                            Duration::from_millis(200),
                                            mapped,
                                        )
                                        .await;
                                    }
                                    continue;
                                }
                            }
                            Status::Moving => {
                                reason = format!("shard {shard} is moving away from node {owner}");
                            }
                        },
                        Err(why) => reason = why,
                    }
                    node.metrics.remote_retried.increment(1);
                }
            }
            let now = Instant::now();
            let (started, deadline) = deadline();
            if now >= deadline {
                node.metrics.unavailable.increment(1);
                return Err(CallError::Unavailable {
                    actor_id: actor_id.to_owned(),
                    waited: started.elapsed(),
                    reason,
                });
            }
            if held.is_none() {
                held = Some(now);
                node.metrics.held.increment(1);
                tracing::debug!(node = %node.me(), actor_id, %reason, "call held");
            }
            let wake = deadline.min(now + backoff);
            backoff = (backoff * 2).min(Duration::from_millis(250));
            let mapped = node.map_changed.notified();
            let moved = node.shards.changed.notified();
            tokio::pin!(mapped, moved);
            let _ = tokio::time::timeout_at(wake, futures::future::select(mapped, moved)).await;
        }
    }

    fn decode_command(
        &self,
        actor_id: &str,
        bytes: &[u8],
    ) -> Result<A::Command, CallError<A::Error>> {
        rmp_serde::from_slice(bytes).map_err(|e| CallError::Codec {
            actor_id: actor_id.to_owned(),
            context: format!("decoding a {} command", A::TYPE),
            reason: e.to_string(),
        })
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
            reason: chain(&other),
        },
    })
}

fn remote_outcome<A: ClusterActor>(
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
            reason: answer
                .reason
                .unwrap_or_else(|| "failed without a reason".to_owned()),
        }),
    }
}

impl NodeInner {
    /// One request to `owner`, bounded by the request timeout and the call's deadline. `Err`
    /// says why there is no answer (the call is then re-sent with the same id).
    async fn request(&self, owner: &str, call: &Call, deadline: Instant) -> Result<Answer, String> {
        let payload = wire::encode(call).map_err(|e| format!("encoding the call: {e}"))?;
        let subject = wire::call_subject(&self.config.cluster_name, owner);
        let until = deadline.min(Instant::now() + self.config.request_timeout);
        let started = std::time::Instant::now();
        let span = tracing::debug_span!(
            "aether.cluster.call",
            cluster = %self.config.cluster_name,
            actor_type = call.actor_type.as_str(),
            actor_id = call.actor.as_str(),
            command_id = call.id.as_str(),
            owner,
        );
        let reply = tokio::time::timeout_at(until, self.client.request(subject, payload))
            .instrument(span)
            .await;
        self.metrics
            .remote_seconds
            .record(started.elapsed().as_secs_f64());
        let message = match reply {
            Err(_) => return Err(format!("node {owner} did not answer in time")),
            Ok(Err(e)) => {
                return Err(match e.kind() {
                    async_nats::RequestErrorKind::NoResponders => {
                        format!("node {owner} is not listening (gone?)")
                    }
                    _ => format!("request to node {owner} failed: {e}"),
                });
            }
            Ok(Ok(m)) => m,
        };
        let answer: Answer = wire::decode(&message.payload)
            .map_err(|e| format!("node {owner} sent an answer that does not decode: {e}"))?;
        match answer.status {
            Status::Ok => self.metrics.remote_ok.increment(1),
            Status::Rejected => self.metrics.remote_rejected.increment(1),
            Status::Failed | Status::BadRequest => self.metrics.remote_failed.increment(1),
            Status::NotOwner | Status::Moving => {}
        }
        Ok(answer)
    }

    fn note_held(&self, held: Option<Instant>) {
        if let Some(since) = held {
            self.metrics
                .hold_seconds
                .record(since.elapsed().as_secs_f64());
        }
    }

    /// The shard map this node applied (what its shard table follows).
    pub(super) fn applied_epoch(&self) -> u64 {
        self.current.load().as_ref().map_or(0, |m| m.epoch())
    }
}
