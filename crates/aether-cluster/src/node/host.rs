//! The actor types a node hosts ([`Hosts`]), each behind a type-erased [`Host`]: answers calls
//! from their MessagePack bytes, lists and passivates the active actors of moving shards.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use aether_core::CommandId;
use aether_runtime::{Actor, AskError, Runtime};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::wire::{Answer, Status, encode};

/// An actor type that can live in a cluster: its commands and domain errors cross nodes, so they
/// are serde types (MessagePack on the wire). Implemented for every such [`Actor`].
pub trait ClusterActor:
    Actor<Command: Serialize + DeserializeOwned, Error: Serialize + DeserializeOwned>
{
}

impl<A> ClusterActor for A where
    A: Actor<Command: Serialize + DeserializeOwned, Error: Serialize + DeserializeOwned>
{
}

#[async_trait::async_trait]
pub(crate) trait Host: Send + Sync + fmt::Debug {
    /// Handles a call that arrived from another node.
    async fn serve(&self, actor: &str, id: CommandId, cmd: &[u8], epoch: u64) -> Answer;
    /// Ids of the actors in memory.
    fn active(&self) -> Vec<String>;
    /// Passivates one actor (handles what it has queued, snapshots, leaves memory).
    async fn passivate(&self, actor: &str);
    /// Activates one actor (a no-op if it is in memory).
    async fn activate(&self, actor: &str);
    /// Version conflicts its actors met so far.
    fn conflicts(&self) -> u64;
    /// Shuts the runtime down.
    async fn shutdown(&self);
}

struct TypedHost<A: Actor> {
    runtime: Runtime<A>,
}

/// The actor types this node hosts, by [`Actor::TYPE`].
#[derive(Debug, Default)]
pub(crate) struct Hosts(RwLock<HashMap<&'static str, Arc<dyn Host>>>);

impl Hosts {
    /// Hosts `A`, run by `runtime`; false if `A` is hosted already.
    pub(crate) fn add<A: ClusterActor>(&self, runtime: Runtime<A>) -> bool {
        let mut hosts = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if hosts.contains_key(A::TYPE) {
            return false;
        }
        hosts.insert(A::TYPE, Arc::new(TypedHost { runtime }));
        true
    }

    /// The host of `actor_type`, if this node hosts it.
    pub(crate) fn get(&self, actor_type: &str) -> Option<Arc<dyn Host>> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(actor_type)
            .cloned()
    }

    /// Every hosted type.
    pub(crate) fn all(&self) -> Vec<Arc<dyn Host>> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }
}

impl<A: Actor> fmt::Debug for TypedHost<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedHost")
            .field("actor_type", &A::TYPE)
            .finish()
    }
}

pub(crate) use aether_core::error_chain as chain;

/// The answer a local outcome gives on the wire.
pub(crate) fn answer_of<A: ClusterActor>(
    outcome: Result<aether_runtime::Applied<A::Event>, AskError<A::Error>>,
    epoch: u64,
) -> Answer {
    match outcome {
        Ok(applied) => match encode(&applied.events) {
            Ok(events) => Answer {
                version: Some(applied.version),
                events: Some(events),
                ..Answer::status(Status::Ok, epoch)
            },
            Err(e) => Answer::with_reason(
                Status::Failed,
                epoch,
                format!(
                    "the command was applied (version {}), but its events do not encode for the reply: {e}",
                    applied.version
                ),
            ),
        },
        Err(AskError::Rejected { source, .. }) => match encode(&source) {
            Ok(error) => Answer {
                error: Some(error),
                reason: Some(source.to_string()),
                ..Answer::status(Status::Rejected, epoch)
            },
            Err(e) => Answer::with_reason(
                Status::Failed,
                epoch,
                format!(
                    "the actor refused the command ({source}), and the refusal does not encode: {e}"
                ),
            ),
        },
        Err(e) => Answer {
            transient: e.is_transient(),
            ..Answer::with_reason(Status::Failed, epoch, chain(&e))
        },
    }
}

#[async_trait::async_trait]
impl<A: ClusterActor> Host for TypedHost<A> {
    async fn serve(&self, actor: &str, id: CommandId, cmd: &[u8], epoch: u64) -> Answer {
        let command: A::Command = match rmp_serde::from_slice(cmd) {
            Ok(c) => c,
            Err(e) => {
                return Answer::with_reason(
                    Status::BadRequest,
                    epoch,
                    format!("the command is not a {} command: {e}", A::TYPE),
                );
            }
        };
        answer_of::<A>(self.runtime.ask_once(actor, command, id).await, epoch)
    }

    fn active(&self) -> Vec<String> {
        self.runtime.active_vms()
    }

    async fn passivate(&self, actor: &str) {
        self.runtime.stop_vm(actor).await;
    }

    async fn activate(&self, actor: &str) {
        if let Err(e) = self.runtime.create_vm(actor).await {
            tracing::warn!(actor_type = A::TYPE, actor_id = actor, error = %e, "activating an always-on actor failed");
        }
    }

    fn conflicts(&self) -> u64 {
        self.runtime.stats().conflicts
    }

    async fn shutdown(&self) {
        self.runtime.shutdown().await;
    }
}
