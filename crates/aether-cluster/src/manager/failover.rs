//! Failing a member whose connection is gone, without waiting for its record to expire: the
//! write that a node which confirmed the death (`node/failover.rs`) makes. The record is marked
//! purged, fenced by the revision read, so a member that heartbeated in between keeps its
//! record; if it held the lease, the lease is deleted the same way, so another node leads at
//! once. A member wrongly failed (it was only reconnecting) finds its record gone at its next
//! heartbeat and joins again; its map writes stay fenced meanwhile.

#[allow(clippy::wildcard_imports)]
use super::*;

impl ClusterManager {
    /// Marks `node_id` failed now: its record purged (and the lease deleted, if it holds it),
    /// each only at the revision just read. `Ok(true)` when this call failed the record; `Ok(false)`
    /// when there was nothing to fail (gone already, another incarnation, written in between).
    pub(crate) async fn fail_member(&self, node_id: &str) -> Result<bool, WriteError> {
        let inner = &self.inner;
        let Some(bucket) = lock(&inner.bucket).clone() else {
            return Ok(false);
        };
        if node_id == inner.config.node_id {
            return Ok(false);
        }
        let key = format!("{KEY_NODES_PREFIX}{node_id}");
        let Some(entry) = bucket.entry(&key).await? else {
            return Ok(false);
        };
        let theirs = entry.operation == Operation::Put
            && decode::<NodeRecord>(&entry.value).is_ok_and(|r| r.id == node_id);
        if !theirs {
            return Ok(false);
        }
        match bucket.purge(&key, entry.revision).await {
            Ok(_) => {}
            Err(WriteError::WrongRevision) => return Ok(false),
            Err(e) => return Err(e),
        }
        inner.metrics.confirmed_dead.increment(1);
        tracing::warn!(cluster = %inner.config.cluster_name, node = %inner.config.node_id, failed = node_id, "confirmed a member dead (its connection is gone) and marked it failed");
        if let Some(lease) = bucket.entry(KEY_LEADER).await?
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
