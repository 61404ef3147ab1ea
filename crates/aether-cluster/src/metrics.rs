//! The cluster's metrics (`aether_cluster_*`), recorded through the `metrics` facade with the
//! labels `cluster` and `node` (both bounded: one per node process).

use metrics::{Counter, Gauge};

/// Gauge: members this node sees (records alive in the cluster bucket).
pub const MEMBERS: &str = "aether_cluster_members";
/// Gauge: 1 while this node holds a valid leader lease, else 0.
pub const IS_LEADER: &str = "aether_cluster_is_leader";
/// Gauge: the term of the leader this node sees (0 when none).
pub const LEADER_TERM: &str = "aether_cluster_leader_term";
/// Gauge: shards the current map gives this node.
pub const SHARDS_OWNED: &str = "aether_cluster_shards_owned";
/// Gauge: epoch of the shard map this node has.
pub const MAP_EPOCH: &str = "aether_cluster_map_epoch";
/// Counter: shard maps this node published as leader.
pub const REBALANCES: &str = "aether_cluster_rebalances_total";
/// Counter: shards moved by the maps this node published as leader.
pub const SHARDS_MOVED: &str = "aether_cluster_shards_moved_total";

#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    pub members: Gauge,
    pub is_leader: Gauge,
    pub leader_term: Gauge,
    pub shards_owned: Gauge,
    pub map_epoch: Gauge,
    pub rebalances: Counter,
    pub shards_moved: Counter,
}

impl Metrics {
    pub(crate) fn new(cluster: &str, node: &str) -> Self {
        let labels = [("cluster", cluster.to_owned()), ("node", node.to_owned())];
        Self {
            members: metrics::gauge!(MEMBERS, &labels),
            is_leader: metrics::gauge!(IS_LEADER, &labels),
            leader_term: metrics::gauge!(LEADER_TERM, &labels),
            shards_owned: metrics::gauge!(SHARDS_OWNED, &labels),
            map_epoch: metrics::gauge!(MAP_EPOCH, &labels),
            rebalances: metrics::counter!(REBALANCES, &labels),
            shards_moved: metrics::counter!(SHARDS_MOVED, &labels),
        }
    }
}
