//! Shard -> node placement: the [`PlacementStrategy`] trait and its two implementations.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::map::ShardMap;
use crate::record::NodeRecord;
use crate::ring::{ConsistentHashRing, DEFAULT_VIRTUAL_NODES};

/// Decides which node owns each shard. Only the leader runs it; its result is published as the
/// shard map, so strategies need not agree across versions — but they should move as little as
/// possible when membership changes.
pub trait PlacementStrategy: Send + Sync + fmt::Debug {
    /// The owner of each shard `0..shard_count` given the nodes that may own shards (`members`,
    /// sorted by id, never empty) and the map in force (`current`, if any). Must return exactly
    /// `shard_count` owners, each one of `members`.
    fn assign(
        &self,
        shard_count: u32,
        members: &[NodeRecord],
        current: Option<&ShardMap>,
    ) -> Vec<Arc<str>>;
}

/// The ring position of a shard.
pub fn shard_key(shard: u32) -> String {
    format!("shard-{shard}")
}

/// The default: shards on a [`ConsistentHashRing`] of the members. A join moves about 1/N of
/// the shards, all to the new node; a leave moves only the leaver's shards. Ignores capacity and
/// load.
#[derive(Debug, Clone)]
pub struct ConsistentHashPlacement {
    virtual_nodes: u32,
}

impl ConsistentHashPlacement {
    /// With `virtual_nodes` points per node.
    pub fn new(virtual_nodes: u32) -> Self {
        Self {
            virtual_nodes: virtual_nodes.max(1),
        }
    }
}

impl Default for ConsistentHashPlacement {
    fn default() -> Self {
        Self::new(DEFAULT_VIRTUAL_NODES)
    }
}

impl PlacementStrategy for ConsistentHashPlacement {
    fn assign(
        &self,
        shard_count: u32,
        members: &[NodeRecord],
        _current: Option<&ShardMap>,
    ) -> Vec<Arc<str>> {
        let ring = ConsistentHashRing::with_nodes(
            self.virtual_nodes,
            members.iter().map(|m| m.id.as_str()),
        );
        let ids: BTreeMap<&str, Arc<str>> = members
            .iter()
            .map(|m| (m.id.as_str(), Arc::from(m.id.as_str())))
            .collect();
        (0..shard_count)
            .filter_map(|s| {
                ring.get_node(&shard_key(s))
                    .and_then(|n| ids.get(n).cloned())
            })
            .collect()
    }
}

/// Capacity-aware and sticky: each node's share of the shards is proportional to its
/// `capacity` (largest-remainder rounding); shards stay where they are while their owner is
/// within its share, and only orphaned or surplus shards move — each to the node furthest below
/// its share, the least loaded (`load`) first on ties. Nodes with capacity 0 get no shards unless
/// every node has capacity 0 (then all count as equal).
#[derive(Debug, Clone, Default)]
pub struct CapacityPlacement;

impl PlacementStrategy for CapacityPlacement {
    fn assign(
        &self,
        shard_count: u32,
        members: &[NodeRecord],
        current: Option<&ShardMap>,
    ) -> Vec<Arc<str>> {
        if members.is_empty() {
            return Vec::new();
        }
        let all_zero = members.iter().all(|m| m.capacity == 0);
        let weight = |m: &NodeRecord| if all_zero { 1 } else { u64::from(m.capacity) };
        let total: u64 = members.iter().map(weight).sum();
        let n = u64::from(shard_count);
        // Largest remainder: floor shares, then one more to the largest remainders (id order on ties).
        let mut quota: Vec<u64> = members.iter().map(|m| weight(m) * n / total).collect();
        let mut rest: Vec<(u64, usize)> = members
            .iter()
            .enumerate()
            .map(|(i, m)| (weight(m) * n % total, i))
            .collect();
        rest.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let missing = n - quota.iter().sum::<u64>();
        for &(_, i) in rest.iter().take(missing as usize) {
            quota[i] += 1;
        }
        let index: BTreeMap<&str, usize> = members
            .iter()
            .enumerate()
            .map(|(i, m)| (m.id.as_str(), i))
            .collect();
        let ids: Vec<Arc<str>> = members.iter().map(|m| Arc::from(m.id.as_str())).collect();
        let mut owner: Vec<Option<usize>> = vec![None; shard_count as usize];
        let mut held = vec![0u64; members.len()];
        if let Some(cur) = current.filter(|c| c.shard_count() == shard_count) {
            for (s, o) in cur.owners().iter().enumerate() {
                if let Some(&i) = index.get(&**o)
                    && s < owner.len()
                    && held[i] < quota[i]
                {
                    held[i] += 1;
                    owner[s] = Some(i);
                }
            }
        }
        for slot in owner.iter_mut().filter(|o| o.is_none()) {
            let pick = (0..members.len())
                .filter(|&i| held[i] < quota[i])
                .max_by(|&a, &b| {
                    (quota[a] - held[a])
                        .cmp(&(quota[b] - held[b]))
                        .then(members[b].load.cmp(&members[a].load))
                        .then(b.cmp(&a))
                });
            if let Some(i) = pick {
                held[i] += 1;
                *slot = Some(i);
            }
        }
        owner
            .into_iter()
            .map(|o| ids[o.unwrap_or(0)].clone())
            .collect()
    }
}
