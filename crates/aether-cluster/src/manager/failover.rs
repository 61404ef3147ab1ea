//! Failing a member whose connection is gone, without waiting for its liveness key to expire:
//! the write that a node which confirmed the death (`node/failover.rs`) makes. The record is
//! marked purged, fenced by the liveness key's revision read before the probes, so a member that
//! heartbeated while it was probed (or a new incarnation that joined) keeps its record; if it
//! held the lease, the lease is deleted the same way, so another node leads at once. A member
//! wrongly failed (it was only reconnecting) sees its record gone and writes it again; its map
//! writes stay fenced meanwhile.

#[allow(clippy::wildcard_imports)]
use super::*;

impl ClusterManager {
    /// The revision of `node_id`'s liveness key as the stream leader has it, if the key holds a
    /// value: what a failover fences its marker on, read before it probes.
    pub(crate) async fn member_revision(&self, node_id: &str) -> Result<Option<u64>, WriteError> {
        let Some(bucket) = lock(&self.inner.bucket).clone() else {
            return Ok(None);
        };
        let key = format!("{KEY_ALIVE_PREFIX}{node_id}");
        Ok(bucket
            .entry_from_leader(&key)
            .await?
            .and_then(|entry| (entry.operation == Operation::Put).then_some(entry.revision)))
    }

    /// Marks `node_id` failed now: its record purged, only if its liveness key is still at
    /// `revision` (read before the probes, so a heartbeat during them, or a new incarnation,
    /// refuses the marker), and the lease deleted if it holds it. `Ok(true)` when this call failed the
    /// record; `Ok(false)` when the record moved on.
    pub(crate) async fn fail_member(
        &self,
        node_id: &str,
        revision: u64,
    ) -> Result<bool, WriteError> {
        let inner = &self.inner;
        let Some(bucket) = lock(&inner.bucket).clone() else {
            return Ok(false);
        };
        if node_id == inner.config.node_id {
            return Ok(false);
        }
        let key = format!("{KEY_NODES_PREFIX}{node_id}");
        let alive = bucket.subject(&format!("{KEY_ALIVE_PREFIX}{node_id}"));
        let fence = crate::kv::Fence {
            last_sequence: revision,
            of_subject: Some(&alive),
        };
        match bucket.purge(&key, fence).await {
            Ok(_) => {}
            Err(WriteError::WrongRevision) => return Ok(false),
            Err(e) => return Err(e),
        }
        inner.metrics.confirmed_dead.increment(1);
        tracing::warn!(cluster = %inner.config.cluster_name, node = %inner.config.node_id, failed = node_id, "confirmed a member dead (its connection is gone) and marked it failed");
        if let Some(lease) = bucket.entry_from_leader(KEY_LEADER).await?
            && lease.operation == Operation::Put
            && decode::<LeaseRecord>(&lease.value).is_ok_and(|l| l.node == node_id)
        {
            match bucket.delete(KEY_LEADER, lease.revision).await {
                Ok(_) | Err(WriteError::WrongRevision) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}
