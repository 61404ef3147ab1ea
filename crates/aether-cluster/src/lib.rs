//! # aether-cluster
//!
//! Aether's actors across nodes, coordinated through NATS itself (one JetStream KV bucket per
//! cluster, request/reply between nodes), never through a home-made consensus protocol. Two
//! layers:
//!
//! - [`ClusterNode`] hosts actor types (one [`aether_runtime::Runtime`] each) and makes every
//!   actor reachable from every node: [`ClusterActors::ask`] runs a command on the node that owns
//!   the actor's shard, in process or as a NATS request, applied once per command id; when the
//!   map changes, shards are handed over (drain, passivate with a snapshot, confirm) while calls
//!   are held and re-sent, until [`CallError::Unavailable`] after the call timeout.
//! - [`ClusterManager`], the control plane it builds on (usable alone by observers):
//!   **membership** (per-node records with a TTL renewed by heartbeats), a fenced **leader**
//!   lease, **placement** (actor id -> shard by [`shard_for`], shard -> node by a
//!   [`PlacementStrategy`]) and the versioned **shard map** only the leader can write.
//!
//! The protocol, the bucket layout and a capacity model are in docs/cluster.md.
//!
//! ```no_run
//! # use aether_runtime::{Actor, Runtime};
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Default, Serialize, Deserialize)] struct Counter { n: u64 }
//! # #[derive(Serialize, Deserialize)] struct Added(u64);
//! # #[derive(Debug, thiserror::Error, Serialize, Deserialize)] #[error("never")] struct Never;
//! # impl Actor for Counter {
//! #     const TYPE: &'static str = "counter";
//! #     type Command = u64; type Event = Added; type Error = Never;
//! #     fn handle(&self, by: &u64) -> Result<Vec<Added>, Never> { Ok(vec![Added(*by)]) }
//! #     fn apply(&mut self, Added(by): &Added) { self.n += by }
//! # }
//! # async fn demo(store: std::sync::Arc<dyn aether_core::EventStore>) -> Result<(), Box<dyn std::error::Error>> {
//! use aether_cluster::{ClusterConfig, ClusterNode};
//!
//! let client = async_nats::connect("127.0.0.1:4222").await?;
//! let node = ClusterNode::new(client, ClusterConfig::new("orders").replicas(3))?;
//! let counters = node.register(Runtime::<Counter>::builder(store).build())?;
//! node.start().await?;
//! counters.ask("counter-42", 1).await?; // on whichever node owns counter-42
//! println!("members: {:?}", node.manager().members().iter().map(|m| &m.id).collect::<Vec<_>>());
//! node.leave().await?; // hands its shards over first
//! # Ok(()) }
//! ```

/// Permission refusals heard on the connection ([`permissions::PermissionWatch`], see
/// [`ClusterConfig::permissions`]; defined in `aether-nats`).
pub use aether_nats::permissions;
/// The NATS client this crate is built on, re-exported so callers use the same version.
pub use async_nats;

mod client;
mod config;
mod error;
mod events;
#[cfg(feature = "fault-injection")]
pub mod faults;
mod hash;
mod kv;
mod manager;
mod map;
pub mod metrics;
mod node;
mod placement;
mod record;
mod refusals;
mod ring;
mod watch;

pub use client::{ClientActors, ClientConfig, ClusterClient};
pub use config::{
    ClusterConfig, DEFAULT_CALL_TIMEOUT, DEFAULT_FAILOVER_WINDOW, DEFAULT_FAILURE_TIMEOUT,
    DEFAULT_HANDOFF_TIMEOUT, DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_LEASE_TTL,
    DEFAULT_REBALANCE_DELAY, DEFAULT_REQUEST_TIMEOUT, DEFAULT_SHARD_COUNT,
};
pub use error::{BoxError, ClusterError};
pub use events::{ClusterEvent, ClusterEvents};
pub use hash::{ShardId, shard_for, stable_hash};
pub use kv::bucket_name;
pub use manager::{
    ClusterManager, KEY_ALIVE_PREFIX, KEY_CONFIG, KEY_LEADER, KEY_NODES_PREFIX,
    KEY_REMEMBER_PREFIX, KEY_SHARD_MAP, LeaderInfo,
};
pub use map::{MapDecodeError, RebalancePlan, ShardMap, ShardMove};
pub use node::{
    CallError, ClusterActor, ClusterActors, ClusterNode, KEEP_INTERVAL, MigrationStatus,
    ShardMigration,
};
pub use placement::{CapacityPlacement, ConsistentHashPlacement, PlacementStrategy, shard_key};
pub use record::{NodeRecord, NodeStatus};
pub use ring::{ConsistentHashRing, DEFAULT_VIRTUAL_NODES};
