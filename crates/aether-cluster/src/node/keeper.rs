//! Always-on actors: the marks `remember.<type token>.<actor token>` in the cluster's bucket say
//! which actors run without calls. Each node keeps the marked actors of the shards it serves
//! active: after every change of the map or of what it serves (a join, a leave, a failover),
//! when an actor is marked, and every [`KEEP_INTERVAL`] (so an actor passivated for idleness
//! comes back). A moved or crashed actor is activated by its new owner as soon as that node
//! serves its shard.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;

use bytes::Bytes;

use super::route::ClusterActors;
use super::shards::Serve;
use super::{ClusterActor, Shared};
use crate::error::ClusterError;
use crate::hash::shard_for;
use crate::manager::KEY_REMEMBER_PREFIX;

/// How often a node checks that its always-on actors are active, at the latest.
pub const KEEP_INTERVAL: Duration = Duration::from_secs(5);
/// The longest always-on mark key: the server closes a connection whose request line passes
/// its 4 KiB limit.
pub(crate) const MAX_KEY_BYTES: usize = 3_584;
/// How long the keeper lets changes gather before a pass.
const COALESCE: Duration = Duration::from_millis(250);
/// Activations one pass runs at once.
const AT_ONCE: usize = 64;

impl<A: ClusterActor> ClusterActors<A> {
    /// Marks actor `actor_id` always-on: its owner keeps it active without calls (its
    /// [`Actor::on_activate`](aether_runtime::Actor::on_activate) runs, so it can start its
    /// timers), and after a move, a crash or a restart its new owner activates it as soon as it
    /// serves the shard (within the failure timeout and a pass of the keeper after a crash).
    /// The mark lives in the cluster's bucket (`remember.<type token>.<actor token>`).
    pub async fn remember(&self, actor_id: &str) -> Result<(), ClusterError> {
        let bucket = self.bucket()?;
        let key = remember_key(A::TYPE, actor_id);
        if key.len() > MAX_KEY_BYTES {
            return Err(ClusterError::InvalidConfig {
                field: "remember",
                reason: format!(
                    "actor id {actor_id:?} makes a key of {} bytes once escaped; at most {} fit \
                     the server's request line",
                    key.len(),
                    MAX_KEY_BYTES
                ),
            });
        }
        bucket
            .put(&key, Bytes::new())
            .await
            .map_err(|e| self.mark_failed("marking", actor_id, e))?;
        self.node().marked.notify_waiters();
        Ok(())
    }

    /// Removes actor `actor_id`'s always-on mark (it is passivated when idle, as any actor).
    pub async fn forget(&self, actor_id: &str) -> Result<(), ClusterError> {
        let bucket = self.bucket()?;
        let key = remember_key(A::TYPE, actor_id);
        bucket
            .remove(&key)
            .await
            .map_err(|e| self.mark_failed("unmarking", actor_id, e))?;
        Ok(())
    }

    fn bucket(&self) -> Result<crate::kv::Bucket, ClusterError> {
        let node = &self.node();
        node.manager
            .bucket()
            .ok_or_else(|| ClusterError::InvalidConfig {
                field: "remember",
                reason: "the node has not joined its cluster yet (call start first)".into(),
            })
    }

    fn mark_failed(&self, what: &str, actor_id: &str, e: crate::kv::WriteError) -> ClusterError {
        ClusterError::Nats {
            cluster: self.node().config.cluster_name.clone(),
            context: format!("{what} actor {actor_id:?} of {} always-on", A::TYPE),
            source: e.to_string().into(),
        }
    }
}

/// The key marking actor `actor_id` of `actor_type` always-on.
pub(crate) fn remember_key(actor_type: &str, actor_id: &str) -> String {
    format!(
        "{KEY_REMEMBER_PREFIX}{}.{}",
        aether_nats::token::encode(actor_type),
        aether_nats::token::encode(actor_id)
    )
}

/// The actor a mark names, if it is one.
fn marked(key: &str) -> Option<(String, String)> {
    let (ty, id) = key.strip_prefix(KEY_REMEMBER_PREFIX)?.split_once('.')?;
    Some((
        aether_nats::token::decode(ty)?,
        aether_nats::token::decode(id)?,
    ))
}

/// Keeps this node's always-on actors active.
#[derive(Debug)]
pub(crate) struct Keeper {
    node: Arc<Shared>,
    /// The actors in memory at the last pass, per always-on type.
    seen: Mutex<HashMap<String, HashSet<String>>>,
}

impl Keeper {
    pub(crate) fn new(node: Arc<Shared>) -> Self {
        Self {
            node,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The keeper's loop: a pass now, then one after each change or interval, until stopped.
    pub(crate) async fn run(self: Arc<Self>) {
        let node = &self.node;
        let mut failed_in_a_row = 0u32;
        loop {
            let map = node.shards.map_changed.notified();
            let served = node.shards.changed.notified();
            let marked = node.marked.notified();
            tokio::pin!(map, served, marked);
            map.as_mut().enable();
            served.as_mut().enable();
            marked.as_mut().enable();
            match self.pass().await {
                Ok(_) => failed_in_a_row = 0,
                Err(e) => {
                    failed_in_a_row = failed_in_a_row.saturating_add(1);
                    // Once, after three passes in a row: a lasting cause (a permission the
                    // node's user lacks, docs/security.md) rather than a passing one.
                    if failed_in_a_row == 3 {
                        tracing::warn!(node = %node.me(), error = %aether_core::error_chain(&e), "reading the always-on marks keeps failing; always-on actors are not kept active; trying again every pass");
                    } else {
                        tracing::debug!(node = %node.me(), error = %e, "reading the always-on marks failed; trying again");
                    }
                }
            }
            tokio::select! {
                () = node.cancel.cancelled() => return,
                () = map => {}
                () = served => {}
                () = marked => {}
                () = tokio::time::sleep(KEEP_INTERVAL) => {}
            }
            // A map change moves many shards one after the other: one pass after the burst,
            // not one per shard (the pass reads the state as it is then).
            tokio::select! {
                () = node.cancel.cancelled() => return,
                () = tokio::time::sleep(COALESCE) => {}
            }
        }
    }

    /// One pass: activates every marked actor of a shard this node serves.
    async fn pass(&self) -> Result<usize, aether_core::StoreError> {
        let node = &self.node;
        let Some(bucket) = node.manager.bucket() else {
            return Ok(0);
        };
        let keys = bucket
            .keys_under(KEY_REMEMBER_PREFIX, node.config.request_timeout)
            .await?;
        let mine: Vec<(String, String)> = keys
            .iter()
            .filter_map(|key| marked(key))
            .filter(|(_, id)| {
                node.shards.state(shard_for(id, node.config.shard_count)) == Serve::Serving
            })
            .collect();
        let count = mine.len();
        self.mark_always_on_types(&bucket, &keys).await;
        futures::stream::iter(mine)
            .for_each_concurrent(AT_ONCE, |(ty, id)| async move {
                // Inside the shard's gate, as a call is: a drain of the shard waits for the
                // activation, and finds the actor among those to passivate.
                let shard = shard_for(&id, node.config.shard_count);
                let Ok(_entered) = node.shards.enter(shard) else {
                    return;
                };
                if let Some(host) = node.hosts.get(&ty) {
                    host.activate(&id).await;
                }
            })
            .await;
        Ok(count)
    }

    /// Marks the actors of the types registered always-on (`ClusterNode::register_always_on`)
    /// that came into memory since the last pass and are not marked (`listed`): an actor of such
    /// a type is remembered within a pass of its activation. An actor already in memory at the
    /// last pass is not marked again, so `forget` holds until its next activation.
    async fn mark_always_on_types(&self, bucket: &crate::kv::Bucket, listed: &[String]) {
        let node = &self.node;
        let types = super::lock(&node.always_on).clone();
        if types.is_empty() {
            return;
        }
        let listed: HashSet<&str> = listed.iter().map(String::as_str).collect();
        for ty in types {
            let Some(host) = node.hosts.get(&ty) else {
                continue;
            };
            let active: HashSet<String> = host.active().into_iter().collect();
            let fresh: Vec<String> = {
                let mut seen = super::lock(&self.seen);
                let before = seen.insert(ty.clone(), active.clone()).unwrap_or_default();
                active.difference(&before).cloned().collect()
            };
            for id in fresh {
                let key = remember_key(&ty, &id);
                if listed.contains(key.as_str()) || key.len() > MAX_KEY_BYTES {
                    continue;
                }
                if let Err(e) = bucket.put(&key, Bytes::new()).await {
                    // Not seen then: tried again on the next pass.
                    if let Some(seen) = super::lock(&self.seen).get_mut(&ty) {
                        seen.remove(&id);
                    }
                    tracing::debug!(node = %node.me(), actor_type = %ty, actor_id = %id, error = %e, "marking an always-on actor failed; next pass");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_names_its_actor_whatever_the_id() {
        for id in ["a", "a.b", "*", ">", "x y", "ünï", "_"] {
            let key = remember_key("order", id);
            assert_eq!(key.matches('.').count(), 2, "{key}");
            assert_eq!(marked(&key), Some(("order".into(), id.into())));
        }
        assert_eq!(marked("remember.only"), None);
        assert_eq!(marked("nodes.a"), None);
    }
}
