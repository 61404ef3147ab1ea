//! What the cluster benchmarks share: the counter actor they ask, and the node settings.

use std::time::Duration;

use aether_cluster::ClusterConfig;
use aether_runtime::Actor;
use serde::{Deserialize, Serialize};

/// A counter: each ask adds to it.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct Counter {
    n: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Added {
    Added(u64),
}

#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize)]
#[error("never")]
pub(crate) struct Never;

impl Actor for Counter {
    const TYPE: &'static str = "counter";
    type Command = u64;
    type Event = Added;
    type Error = Never;

    fn handle(&self, by: &u64) -> Result<Vec<Added>, Never> {
        Ok(vec![Added::Added(*by)])
    }

    fn apply(&mut self, Added::Added(by): &Added) {
        self.n += by;
    }
}

/// Fast failure detection and rebalancing, 256 shards.
pub(crate) fn config(cluster: &str, node: &str) -> ClusterConfig {
    ClusterConfig::new(cluster)
        .node_id(node)
        .shard_count(256)
        .heartbeat_interval(Duration::from_millis(300))
        .failure_timeout(Duration::from_secs(2))
        .lease_ttl(Duration::from_secs(2))
        .rebalance_delay(Duration::from_millis(50))
}
