//! The shard map (which node owns which shard), its wire form and the plan between two maps.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::hash::{ShardId, shard_for};

/// Which node owns each shard, as published by the leader.
///
/// `epoch` grows by one with every map the cluster publishes; `term` is the fencing term of the
/// leader that wrote it (see docs/cluster.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMap {
    epoch: u64,
    term: u64,
    leader: Arc<str>,
    shard_count: u32,
    /// Owner per shard; empty when the cluster had no members.
    owners: Vec<Arc<str>>,
}

/// One shard changing hands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMove {
    /// The shard.
    pub shard: ShardId,
    /// Its owner before (`None`: it had none).
    pub from: Option<Arc<str>>,
    /// Its owner after (`None`: nobody; only when the cluster has no members).
    pub to: Option<Arc<str>>,
}

/// What changes between two shard maps: the moves part 2 of the cluster executes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebalancePlan {
    /// Shards whose owner changes, in shard order.
    pub moves: Vec<ShardMove>,
}

impl RebalancePlan {
    /// Whether nothing moves.
    pub fn is_empty(&self) -> bool {
        self.moves.is_empty()
    }

    /// How many shards move.
    pub fn len(&self) -> usize {
        self.moves.len()
    }
}

/// The map's wire form: a MessagePack map with string keys (docs/cluster.md).
#[derive(Serialize, Deserialize)]
struct WireMap {
    epoch: u64,
    term: u64,
    leader: String,
    shard_count: u32,
    /// Distinct owners, sorted.
    nodes: Vec<String>,
    /// Per shard, the index of its owner in `nodes`; empty when there are no nodes.
    owners: Vec<u32>,
}

/// A stored shard map that could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MapDecodeError {
    /// Not the documented MessagePack map.
    #[error("shard map is not the documented MessagePack map: {0}")]
    Format(#[from] rmp_serde::decode::Error),
    /// Well-formed, but inconsistent.
    #[error("shard map is inconsistent: {0}")]
    Inconsistent(String),
}

impl ShardMap {
    /// A map with the given owners (one per shard, or none at all for an empty cluster).
    pub fn new(
        epoch: u64,
        term: u64,
        leader: impl Into<Arc<str>>,
        shard_count: u32,
        owners: Vec<Arc<str>>,
    ) -> Self {
        Self {
            epoch,
            term,
            leader: leader.into(),
            shard_count,
            owners,
        }
    }

    /// The map version: one more than the map it replaced.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The fencing term of the leader that wrote it.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// The node id of the leader that wrote it.
    pub fn leader(&self) -> &str {
        &self.leader
    }

    /// The cluster's fixed shard count.
    pub fn shard_count(&self) -> u32 {
        self.shard_count
    }

    /// The owner of `shard`, if the map assigns it.
    pub fn owner(&self, shard: ShardId) -> Option<&str> {
        self.owners.get(shard as usize).map(|n| &**n)
    }

    /// The owner of the shard `actor_id` belongs to.
    pub fn node_for_actor(&self, actor_id: &str) -> Option<&str> {
        self.owner(shard_for(actor_id, self.shard_count))
    }

    /// Owner per shard, in shard order (empty for an empty cluster).
    pub fn owners(&self) -> &[Arc<str>] {
        &self.owners
    }

    /// The shards `node_id` owns, in order.
    pub fn shards_of(&self, node_id: &str) -> Vec<ShardId> {
        (0..self.shard_count)
            .filter(|s| self.owner(*s) == Some(node_id))
            .collect()
    }

    /// Shards per owner.
    pub fn counts(&self) -> BTreeMap<&str, usize> {
        let mut counts = BTreeMap::new();
        for o in &self.owners {
            *counts.entry(&**o).or_insert(0) += 1;
        }
        counts
    }

    /// What moves from `self` to `next`.
    pub fn plan_to(&self, next: &ShardMap) -> RebalancePlan {
        plan_between(Some(self), next)
    }

    /// The MessagePack bytes stored in KV.
    pub fn encode(&self) -> Vec<u8> {
        let mut nodes: Vec<&str> = self.owners.iter().map(|n| &**n).collect();
        nodes.sort_unstable();
        nodes.dedup();
        let owners = self
            .owners
            .iter()
            .map(|o| nodes.binary_search(&&**o).map_or(0, |i| i as u32))
            .collect();
        let wire = WireMap {
            epoch: self.epoch,
            term: self.term,
            leader: self.leader.to_string(),
            shard_count: self.shard_count,
            nodes: nodes.into_iter().map(str::to_owned).collect(),
            owners,
        };
        // Serialising plain integers, strings and vectors into a Vec cannot fail.
        rmp_serde::to_vec_named(&wire).unwrap_or_default()
    }

    /// Reads the bytes [`encode`](Self::encode) writes (or another implementation of the doc).
    pub fn decode(bytes: &[u8]) -> Result<Self, MapDecodeError> {
        let wire: WireMap = rmp_serde::from_slice(bytes)?;
        if wire.shard_count == 0 {
            return Err(MapDecodeError::Inconsistent("shard_count is 0".into()));
        }
        if !wire.owners.is_empty() && wire.owners.len() != wire.shard_count as usize {
            return Err(MapDecodeError::Inconsistent(format!(
                "{} owners for {} shards",
                wire.owners.len(),
                wire.shard_count
            )));
        }
        let nodes: Vec<Arc<str>> = wire.nodes.into_iter().map(Arc::from).collect();
        let owners = wire
            .owners
            .iter()
            .map(|&i| {
                nodes.get(i as usize).cloned().ok_or_else(|| {
                    MapDecodeError::Inconsistent(format!(
                        "owner index {i} but only {} nodes",
                        nodes.len()
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            epoch: wire.epoch,
            term: wire.term,
            leader: Arc::from(wire.leader),
            shard_count: wire.shard_count,
            owners,
        })
    }
}

/// The moves from `prev` (none: every shard is new) to `next`.
pub(crate) fn plan_between(prev: Option<&ShardMap>, next: &ShardMap) -> RebalancePlan {
    let moves = (0..next.shard_count)
        .filter_map(|s| {
            let from = prev.and_then(|p| p.owners.get(s as usize)).cloned();
            let to = next.owners.get(s as usize).cloned();
            (from != to).then_some(ShardMove { shard: s, from, to })
        })
        .collect();
    RebalancePlan { moves }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(owners: &[&str]) -> ShardMap {
        ShardMap::new(
            3,
            7,
            "a",
            owners.len() as u32,
            owners.iter().map(|o| Arc::from(*o)).collect(),
        )
    }

    #[test]
    fn round_trips_and_stays_small() {
        let m = map(&["b", "a", "b", "c"]);
        let bytes = m.encode();
        assert_eq!(ShardMap::decode(&bytes).unwrap(), m);
        let empty = ShardMap::new(1, 1, "a", 8, vec![]);
        assert_eq!(ShardMap::decode(&empty.encode()).unwrap(), empty);
    }

    #[test]
    fn inconsistent_maps_are_refused() {
        let mut wire = WireMap {
            epoch: 1,
            term: 1,
            leader: "a".into(),
            shard_count: 2,
            nodes: vec!["a".into()],
            owners: vec![0, 1],
        };
        let bytes = rmp_serde::to_vec_named(&wire).unwrap();
        assert!(matches!(
            ShardMap::decode(&bytes),
            Err(MapDecodeError::Inconsistent(_))
        ));
        wire.owners = vec![0];
        let bytes = rmp_serde::to_vec_named(&wire).unwrap();
        assert!(matches!(
            ShardMap::decode(&bytes),
            Err(MapDecodeError::Inconsistent(_))
        ));
        assert!(matches!(
            ShardMap::decode(b"\xc1"),
            Err(MapDecodeError::Format(_))
        ));
    }

    #[test]
    fn plans_list_only_changes() {
        let a = map(&["a", "b", "c"]);
        let b = map(&["a", "c", "c"]);
        let plan = a.plan_to(&b);
        assert_eq!(plan.len(), 1);
        assert_eq!(plan.moves[0].shard, 1);
        assert_eq!(plan.moves[0].from.as_deref(), Some("b"));
        assert_eq!(plan.moves[0].to.as_deref(), Some("c"));
    }
}
