//! # aether-cluster
//!
//! The control plane of an Aether cluster, kept in NATS itself (one JetStream KV bucket per
//! cluster), never in a home-made consensus protocol:
//!
//! - **membership**: every node keeps a record (`nodes.<id>`) with a per-key TTL renewed by its
//!   heartbeats; a silent node's record expires and it is reported failed; a graceful
//!   [`leave`](ClusterManager::leave) deletes it at once;
//! - **leader election**: a lease key created with a TTL and renewed by revision-checked writes;
//!   its creation revision is the leader's fencing **term**, and the leader steps down before the
//!   lease can lapse;
//! - **placement**: actor id -> shard by a stable hash ([`shard_for`]), shard -> node by a
//!   [`PlacementStrategy`] ([`ConsistentHashPlacement`] by default, [`CapacityPlacement`]);
//! - **shard map**: one versioned document the leader writes, fenced by its lease revision so
//!   that a deposed leader's write is refused by the server; every node watches it.
//!
//! Actor routing, shard moves and failover build on this (cluster part 2). The protocol, the
//! bucket layout and a capacity model are in docs/cluster.md.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use aether_cluster::{ClusterConfig, ClusterManager};
//! let client = async_nats::connect("127.0.0.1:4222").await?;
//! let node = ClusterManager::new(client, ClusterConfig::new("orders").replicas(3))?;
//! node.start().await?;
//! println!("members: {:?}", node.members().iter().map(|m| &m.id).collect::<Vec<_>>());
//! println!("order-42 is on {:?}", node.node_for_actor("order-42"));
//! node.leave().await?;
//! # Ok(()) }
//! ```

/// The NATS client this crate is built on, re-exported so callers use the same version.
pub use async_nats;

mod config;
mod error;
mod events;
mod hash;
mod kv;
mod manager;
mod map;
pub mod metrics;
mod node;
mod placement;
mod record;
mod ring;

pub use config::{
    ClusterConfig, DEFAULT_CALL_TIMEOUT, DEFAULT_FAILURE_TIMEOUT, DEFAULT_HANDOFF_TIMEOUT,
    DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_LEASE_TTL, DEFAULT_REBALANCE_DELAY,
    DEFAULT_REQUEST_TIMEOUT, DEFAULT_SHARD_COUNT,
};
pub use error::{BoxError, ClusterError};
pub use events::{ClusterEvent, ClusterEvents};
pub use hash::{ShardId, shard_for, stable_hash};
pub use kv::bucket_name;
pub use manager::{
    ClusterManager, KEY_CONFIG, KEY_LEADER, KEY_NODES_PREFIX, KEY_SHARD_MAP, LeaderInfo,
};
pub use map::{MapDecodeError, RebalancePlan, ShardMap, ShardMove};
pub use node::{
    CallError, ClusterActor, ClusterActors, ClusterNode, MigrationStatus, ShardMigration,
};
pub use placement::{CapacityPlacement, ConsistentHashPlacement, PlacementStrategy, shard_key};
pub use record::{NodeRecord, NodeStatus};
pub use ring::{ConsistentHashRing, DEFAULT_VIRTUAL_NODES};
