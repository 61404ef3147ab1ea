//! [`ClusterConfig`]: what a node needs to join a cluster, with checked defaults.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aether_nats::permissions::PermissionWatch;

use crate::error::ClusterError;
use crate::placement::{ConsistentHashPlacement, PlacementStrategy};

/// Shards per cluster when none is given. Fixed for a cluster's life.
pub const DEFAULT_SHARD_COUNT: u32 = 1024;
/// How often a node renews its membership record.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// How long after its last heartbeat a silent node is declared failed. Above the time JetStream
/// takes to elect a new leader for the bucket's stream when a NATS server dies (4-5.5 s measured
/// on R3), so that a server failover is not mistaken for node failures.
pub const DEFAULT_FAILURE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a leader lease lasts without renewal. Above JetStream's stream-leader election time
/// for the same reason: the leader keeps its lease through a NATS server failover.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// How long the leader waits after a membership change before it publishes a map, so that
/// nodes starting together cause one rebalance, not one each.
pub const DEFAULT_REBALANCE_DELAY: Duration = Duration::from_millis(200);

/// A node's cluster settings. Build with [`ClusterConfig::new`] and the chained setters; every
/// value is checked by [`ClusterManager::new`](crate::ClusterManager::new).
///
/// ```
/// use std::time::Duration;
/// use aether_cluster::ClusterConfig;
/// let config = ClusterConfig::new("orders")
///     .node_id("node-a")
///     .shard_count(256)
///     .heartbeat_interval(Duration::from_millis(500))
///     .failure_timeout(Duration::from_secs(3))
///     .metadata("zone", "eu-1")
///     .capacity(2)
///     .replicas(3);
/// assert_eq!(config.get_node_id(), "node-a");
/// ```
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub(crate) cluster_name: String,
    pub(crate) node_id: String,
    pub(crate) shard_count: u32,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) failure_timeout: Duration,
    pub(crate) lease_ttl: Duration,
    pub(crate) rebalance_delay: Duration,
    pub(crate) metadata: BTreeMap<String, String>,
    pub(crate) capacity: u32,
    pub(crate) replicas: usize,
    pub(crate) placement: Arc<dyn PlacementStrategy>,
    pub(crate) call_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) handoff_timeout: Duration,
    pub(crate) failover_window: Duration,
    pub(crate) permissions: Option<PermissionWatch>,
    #[cfg(feature = "fault-injection")]
    pub(crate) faults: crate::faults::FaultPoints,
}

/// Default for [`ClusterConfig::call_timeout`].
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for [`ClusterConfig::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Default for [`ClusterConfig::failover_window`].
pub const DEFAULT_FAILOVER_WINDOW: Duration = Duration::from_millis(500);
/// Default for [`ClusterConfig::handoff_timeout`].
pub const DEFAULT_HANDOFF_TIMEOUT: Duration = Duration::from_secs(10);

impl ClusterConfig {
    /// Defaults for a node of cluster `cluster_name` (letters, digits, `-`, `_`; at most 64),
    /// with a generated node id.
    pub fn new(cluster_name: impl Into<String>) -> Self {
        Self {
            cluster_name: cluster_name.into(),
            node_id: format!("node-{}", uuid::Uuid::new_v4().simple()),
            shard_count: DEFAULT_SHARD_COUNT,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            failure_timeout: DEFAULT_FAILURE_TIMEOUT,
            lease_ttl: DEFAULT_LEASE_TTL,
            rebalance_delay: DEFAULT_REBALANCE_DELAY,
            metadata: BTreeMap::new(),
            capacity: 1,
            replicas: 1,
            placement: Arc::new(ConsistentHashPlacement::default()),
            call_timeout: DEFAULT_CALL_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            handoff_timeout: DEFAULT_HANDOFF_TIMEOUT,
            failover_window: DEFAULT_FAILOVER_WINDOW,
            permissions: None,
            #[cfg(feature = "fault-injection")]
            faults: crate::faults::FaultPoints::default(),
        }
    }

    /// How long a call to an actor (`ClusterActors::ask`) may wait in all for a node to serve
    /// it — across retries, shard moves and failover — before it fails with
    /// `CallError::Unavailable`. Default 30 s: longer than the failure timeout, so that a
    /// crashed owner's actors answer from their new node within it.
    pub fn call_timeout(mut self, d: Duration) -> Self {
        self.call_timeout = d;
        self
    }

    /// How long one request to another node may take before it is sent again (with the same
    /// command id, so it is applied at most once). Default 5 s.
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }

    /// How long a new owner holds calls for a shard while waiting for the old owner's handoff
    /// before serving anyway (safe: the store's version check decides). Default 10 s.
    pub fn handoff_timeout(mut self, d: Duration) -> Self {
        self.handoff_timeout = d;
        self
    }

    /// How long a member whose connection is gone (its call subject has no responders) must
    /// stay gone, with no heartbeat of it stored, before this node fails it without waiting for
    /// its record to expire (docs/cluster.md, "Fast failover"; default 500 ms). The window lasts
    /// at least one heartbeat interval + 100 ms whatever is set. Set it above the longest time
    /// your nodes may take to reconnect (a node that tries unreachable servers first needs about
    /// its connection timeout for each), or to the failure timeout or more to turn fast failover
    /// off. Give every node of a cluster the same value.
    pub fn failover_window(mut self, d: Duration) -> Self {
        self.failover_window = d;
        self
    }

    /// This node's id (letters, digits, `-`, `_`; at most 64). Default: `node-<uuid>`.
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.node_id = id.into();
        self
    }

    /// Shards in the cluster, 1..=65536. Must equal the cluster's (checked on join).
    pub fn shard_count(mut self, n: u32) -> Self {
        self.shard_count = n;
        self
    }

    /// How often this node renews its record (at least 100 ms).
    pub fn heartbeat_interval(mut self, d: Duration) -> Self {
        self.heartbeat_interval = d;
        self
    }

    /// How long after its last heartbeat this node counts as failed: the record's TTL. Whole
    /// seconds (rounded up; NATS TTLs have one-second resolution), at least twice the heartbeat
    /// interval.
    pub fn failure_timeout(mut self, d: Duration) -> Self {
        self.failure_timeout = d;
        self
    }

    /// The leader lease's TTL (whole seconds, rounded up, at least 1 s). The leader renews every
    /// fifth of it and steps down if a renewal has not succeeded 90 % of the way through (so it
    /// keeps the lease through an outage of up to 70 % of the TTL).
    pub fn lease_ttl(mut self, d: Duration) -> Self {
        self.lease_ttl = d;
        self
    }

    /// How long the leader lets membership settle before publishing a map (at most 60 s).
    pub fn rebalance_delay(mut self, d: Duration) -> Self {
        self.rebalance_delay = d;
        self
    }

    /// Adds a metadata label to this node's record.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Relative capacity for capacity-aware placement (default 1).
    pub fn capacity(mut self, capacity: u32) -> Self {
        self.capacity = capacity;
        self
    }

    /// Replicas of the cluster bucket, 1..=5, used when this node creates it (3 on a 3-server
    /// NATS cluster, so the control plane survives a server). Default 1.
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// The placement strategy the node uses while it leads (default: consistent hashing).
    pub fn placement(mut self, strategy: impl PlacementStrategy + 'static) -> Self {
        self.placement = Arc::new(strategy);
        self
    }

    /// Reports the server's permission refusals on the node's connection at once (default: no
    /// watch). `watch` must be installed on the connection the node is made with
    /// ([`PermissionWatch::install`]). With it:
    ///
    /// - joining ([`ClusterManager::start`](crate::ClusterManager::start),
    ///   [`ClusterNode::start`](crate::ClusterNode::start)) fails at once with
    ///   [`ClusterError::PermissionDenied`] naming the refused subject (the bucket, a key of it,
    ///   the node's own call or handoff subject, the reply inbox);
    /// - a call routed to another node whose request the server refuses (publishing to
    ///   `aether-cluster.<cluster>.call.<owner>`, or the reply inbox) ends at once with
    ///   [`CallError::PermissionDenied`](crate::CallError::PermissionDenied), not transient;
    /// - refused heartbeats, lease and map writes and handoff confirmations are logged and counted
    ///   in [`metrics::REFUSED`](crate::metrics::REFUSED); the node keeps its usual retry cadence.
    ///
    /// Without it, the server's refusal reaches only the connection's event callback, and each
    /// refused request times out (a call is then held and re-sent until
    /// [`CallError::Unavailable`](crate::CallError::Unavailable)).
    ///
    /// ```no_run
    /// use aether_cluster::permissions::PermissionWatch;
    /// use aether_cluster::{ClusterConfig, ClusterNode};
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let watch = PermissionWatch::new(); // one per connection
    /// let user = async_nats::ConnectOptions::with_user_and_password("node-a".into(), "pw".into());
    /// let client = watch
    ///     .install(user)
    ///     .custom_inbox_prefix("_INBOX_tenant-a")
    ///     .connect("nats://127.0.0.1:4222")
    ///     .await?;
    /// let node = ClusterNode::new(client, ClusterConfig::new("tenant-a").permissions(watch))?;
    /// // A node whose user may not write the cluster's bucket now fails to start at once:
    /// // ClusterError::PermissionDenied {
    /// //     operation: "publish", subject: "$KV.aether-cluster-tenant-a.config", ..
    /// // }
    /// node.start().await?;
    /// # Ok(()) }
    /// ```
    pub fn permissions(mut self, watch: PermissionWatch) -> Self {
        self.permissions = Some(watch);
        self
    }

    /// Holds the node at the given fault points (feature `fault-injection`; tests only).
    #[cfg(feature = "fault-injection")]
    pub fn fault_points(mut self, faults: crate::faults::FaultPoints) -> Self {
        self.faults = faults;
        self
    }

    /// The cluster name.
    pub fn get_cluster_name(&self) -> &str {
        &self.cluster_name
    }

    /// The node id.
    pub fn get_node_id(&self) -> &str {
        &self.node_id
    }

    /// The shard count.
    pub fn get_shard_count(&self) -> u32 {
        self.shard_count
    }

    /// Checks every value.
    pub fn validate(&self) -> Result<(), ClusterError> {
        let bad = |field, reason: String| Err(ClusterError::InvalidConfig { field, reason });
        check_name("cluster_name", &self.cluster_name)?;
        check_name("node_id", &self.node_id)?;
        if !(1..=65_536).contains(&self.shard_count) {
            return bad(
                "shard_count",
                format!("must be 1..=65536, not {}", self.shard_count),
            );
        }
        if self.heartbeat_interval < Duration::from_millis(100) {
            return bad(
                "heartbeat_interval",
                format!("must be at least 100ms, not {:?}", self.heartbeat_interval),
            );
        }
        if self.failure_timeout < Duration::from_secs(1)
            || self.failure_timeout / 2 < self.heartbeat_interval
        {
            return bad(
                "failure_timeout",
                format!(
                    "must be at least 1s and twice the heartbeat interval ({:?}), not {:?}",
                    self.heartbeat_interval, self.failure_timeout
                ),
            );
        }
        if self.lease_ttl < Duration::from_secs(1) || self.lease_ttl > Duration::from_secs(3600) {
            return bad(
                "lease_ttl",
                format!("must be 1s..=1h, not {:?}", self.lease_ttl),
            );
        }
        if self.failure_timeout > Duration::from_secs(3600) {
            return bad(
                "failure_timeout",
                format!("must be at most 1h, not {:?}", self.failure_timeout),
            );
        }
        if self.rebalance_delay > Duration::from_secs(60) {
            return bad(
                "rebalance_delay",
                format!("must be at most 60s, not {:?}", self.rebalance_delay),
            );
        }
        for (field, d) in [
            ("call_timeout", self.call_timeout),
            ("request_timeout", self.request_timeout),
            ("handoff_timeout", self.handoff_timeout),
            ("failover_window", self.failover_window),
        ] {
            if d < Duration::from_millis(10) || d > Duration::from_secs(3600) {
                return bad(field, format!("must be 10ms..=1h, not {d:?}"));
            }
        }
        if !(1..=5).contains(&self.replicas) {
            return bad("replicas", format!("must be 1..=5, not {}", self.replicas));
        }
        let meta: usize = self.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
        if meta > 16 * 1024 {
            return bad(
                "metadata",
                format!("must total at most 16 KiB, not {meta} bytes"),
            );
        }
        Ok(())
    }
}

pub(crate) fn check_name(field: &'static str, name: &str) -> Result<(), ClusterError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ClusterError::InvalidConfig {
            field,
            reason: format!("must be 1 to 64 ASCII letters, digits, '-' or '_', not {name:?}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        ClusterConfig::new("c").validate().unwrap();
    }

    #[test]
    fn bad_values_are_refused_with_their_field() {
        let cases = [
            (ClusterConfig::new("a.b"), "cluster_name"),
            (ClusterConfig::new("").node_id("x"), "cluster_name"),
            (ClusterConfig::new("c").node_id("n*"), "node_id"),
            (ClusterConfig::new("c").node_id("x".repeat(65)), "node_id"),
            (ClusterConfig::new("c").shard_count(0), "shard_count"),
            (
                ClusterConfig::new("c").heartbeat_interval(Duration::ZERO),
                "heartbeat_interval",
            ),
            (
                ClusterConfig::new("c").failure_timeout(Duration::from_millis(1500)),
                "failure_timeout",
            ),
            (
                ClusterConfig::new("c").lease_ttl(Duration::from_millis(10)),
                "lease_ttl",
            ),
            (ClusterConfig::new("c").replicas(0), "replicas"),
            (
                ClusterConfig::new("c").heartbeat_interval(Duration::MAX),
                "failure_timeout",
            ),
            (
                ClusterConfig::new("c").metadata("k", "v".repeat(20_000)),
                "metadata",
            ),
        ];
        for (config, field) in cases {
            match config.validate() {
                Err(ClusterError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }
}
