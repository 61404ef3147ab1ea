//! Reminder firings delivered through the cluster: a firing read on any node is routed to its
//! actor's owner, wherever the actor lives now, with the firing's command id.

use std::fmt;

use aether_core::reminder::{Firing, Settled};
use aether_runtime::reminders::{Deliver, decode_command, settle_failure};

use super::ClusterActor;
use super::route::{CallError, ClusterActors};

/// Delivers the firings of `A` to their actors' owners in the cluster.
pub(crate) struct ClusterTarget<A: ClusterActor> {
    actors: ClusterActors<A>,
}

impl<A: ClusterActor> ClusterTarget<A> {
    pub(crate) fn new(actors: ClusterActors<A>) -> Self {
        Self { actors }
    }
}

impl<A: ClusterActor> fmt::Debug for ClusterTarget<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterTarget")
            .field("actors", &self.actors)
            .finish()
    }
}

#[async_trait::async_trait]
impl<A: ClusterActor> Deliver for ClusterTarget<A> {
    async fn deliver(&self, firing: &Firing) -> Settled {
        let command = match decode_command::<A>(firing) {
            Ok(command) => command,
            Err(settled) => return settled,
        };
        match self
            .actors
            .ask_with_id(&firing.key.actor_id, command, firing.command_id())
            .await
        {
            Ok(_) | Err(CallError::Rejected { .. }) => Settled::Delivered,
            // This node is leaving: another one delivers it.
            Err(e @ CallError::Stopped { .. }) => settle_failure(firing, true, &e),
            Err(e) => settle_failure(firing, e.is_transient(), &e),
        }
    }
}
