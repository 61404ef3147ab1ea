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
/// Counter: requests of this node the NATS server refused for the user's permissions, by `what`
/// (`heartbeat`, `lease`, `map`, `watch`: the control plane's after joining; `call`, `handoff`:
/// requests to other nodes). Counted only with a permission watch
/// ([`ClusterConfig::permissions`](crate::ClusterConfig::permissions)).
pub const REFUSED: &str = "aether_cluster_refused_total";

/// Counter: messages this node received that are not in the documented format and were
/// dropped or refused, by `what`: `call` (answered `bad_request`), `handoff` (a confirmation,
/// dropped), `record`, `lease`, `map` (bucket values, ignored).
pub const MALFORMED: &str = "aether_cluster_malformed_total";

/// Counter: members this node confirmed dead without waiting for their records to expire
/// (their call subject had no responders at every probe: the connection is gone) and marked
/// failed.
pub const CONFIRMED_DEAD: &str = "aether_cluster_members_confirmed_dead_total";

#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    pub members: Gauge,
    pub is_leader: Gauge,
    pub leader_term: Gauge,
    pub shards_owned: Gauge,
    pub map_epoch: Gauge,
    pub rebalances: Counter,
    pub shards_moved: Counter,
    pub refused_heartbeat: Counter,
    pub refused_lease: Counter,
    pub refused_map: Counter,
    pub refused_watch: Counter,
    pub confirmed_dead: Counter,
    pub malformed_record: Counter,
    pub malformed_lease: Counter,
    pub malformed_map: Counter,
}

impl Metrics {
    pub(crate) fn new(cluster: &str, node: &str) -> Self {
        let labels = [("cluster", cluster.to_owned()), ("node", node.to_owned())];
        let refused = |what: &'static str| {
            let [cluster, node] = labels.clone();
            metrics::counter!(REFUSED, &[cluster, node, ("what", what.to_owned())])
        };
        Self {
            members: metrics::gauge!(MEMBERS, &labels),
            is_leader: metrics::gauge!(IS_LEADER, &labels),
            leader_term: metrics::gauge!(LEADER_TERM, &labels),
            shards_owned: metrics::gauge!(SHARDS_OWNED, &labels),
            map_epoch: metrics::gauge!(MAP_EPOCH, &labels),
            rebalances: metrics::counter!(REBALANCES, &labels),
            shards_moved: metrics::counter!(SHARDS_MOVED, &labels),
            refused_heartbeat: refused("heartbeat"),
            refused_lease: refused("lease"),
            refused_map: refused("map"),
            refused_watch: refused("watch"),
            confirmed_dead: metrics::counter!(CONFIRMED_DEAD, &labels),
            malformed_record: malformed(&labels, "record"),
            malformed_lease: malformed(&labels, "lease"),
            malformed_map: malformed(&labels, "map"),
        }
    }
}

/// Counter: calls this node sent to another node, by `outcome` (`ok`, `rejected`, `failed`,
/// `retried`: not owner, moving, no responders or timed out, sent again).
pub const REMOTE_CALLS: &str = "aether_cluster_remote_calls_total";
/// Histogram: seconds per call sent to another node (one request/reply).
pub const REMOTE_CALL_SECONDS: &str = "aether_cluster_remote_call_seconds";
/// Counter: calls this node answered for other nodes.
pub const CALLS_SERVED: &str = "aether_cluster_calls_served_total";
/// Counter: calls that had to wait for a shard move or a failover before a node served them.
pub const CALLS_HELD: &str = "aether_cluster_calls_held_total";
/// Histogram: seconds a held call waited.
pub const CALL_HOLD_SECONDS: &str = "aether_cluster_call_hold_seconds";
/// Counter: calls that failed because no node served the actor within the call timeout.
pub const CALLS_UNAVAILABLE: &str = "aether_cluster_calls_unavailable_total";
/// Counter: shard moves this node took part in, by `status` (`started`, `done`, `failed`).
pub const MOVES: &str = "aether_cluster_moves_total";
/// Counter: version conflicts met by this node's actors — another writer, typically a second
/// node serving the same actor for a moment, wrote first; the store's check kept one history.
pub const DOUBLE_SERVE_CONFLICTS: &str = "aether_cluster_double_serve_conflicts_total";

#[derive(Debug, Clone)]
pub(crate) struct NodeMetrics {
    pub remote_ok: Counter,
    pub remote_rejected: Counter,
    pub remote_failed: Counter,
    pub remote_retried: Counter,
    pub remote_seconds: metrics::Histogram,
    pub served: Counter,
    pub held: Counter,
    pub hold_seconds: metrics::Histogram,
    pub unavailable: Counter,
    pub moves_started: Counter,
    pub moves_done: Counter,
    pub moves_failed: Counter,
    pub conflicts: Counter,
    pub refused_call: Counter,
    pub refused_handoff: Counter,
    pub malformed_call: Counter,
    pub malformed_handoff: Counter,
}

impl NodeMetrics {
    pub(crate) fn new(cluster: &str, node: &str) -> Self {
        let l = |extra: Option<(&'static str, &'static str)>| {
            let mut v = vec![("cluster", cluster.to_owned()), ("node", node.to_owned())];
            if let Some((k, val)) = extra {
                v.push((k, val.to_owned()));
            }
            v
        };
        Self {
            remote_ok: metrics::counter!(REMOTE_CALLS, &l(Some(("outcome", "ok")))),
            remote_rejected: metrics::counter!(REMOTE_CALLS, &l(Some(("outcome", "rejected")))),
            remote_failed: metrics::counter!(REMOTE_CALLS, &l(Some(("outcome", "failed")))),
            remote_retried: metrics::counter!(REMOTE_CALLS, &l(Some(("outcome", "retried")))),
            remote_seconds: metrics::histogram!(REMOTE_CALL_SECONDS, &l(None)),
            served: metrics::counter!(CALLS_SERVED, &l(None)),
            held: metrics::counter!(CALLS_HELD, &l(None)),
            hold_seconds: metrics::histogram!(CALL_HOLD_SECONDS, &l(None)),
            unavailable: metrics::counter!(CALLS_UNAVAILABLE, &l(None)),
            moves_started: metrics::counter!(MOVES, &l(Some(("status", "started")))),
            moves_done: metrics::counter!(MOVES, &l(Some(("status", "done")))),
            moves_failed: metrics::counter!(MOVES, &l(Some(("status", "failed")))),
            conflicts: metrics::counter!(DOUBLE_SERVE_CONFLICTS, &l(None)),
            refused_call: metrics::counter!(REFUSED, &l(Some(("what", "call")))),
            refused_handoff: metrics::counter!(REFUSED, &l(Some(("what", "handoff")))),
            malformed_call: metrics::counter!(MALFORMED, &l(Some(("what", "call")))),
            malformed_handoff: metrics::counter!(MALFORMED, &l(Some(("what", "handoff")))),
        }
    }
}

/// The [`MALFORMED`] counter for `what`, with the node's `labels`.
fn malformed(labels: &[(&'static str, String); 2], what: &'static str) -> Counter {
    let [cluster, node] = labels.clone();
    metrics::counter!(MALFORMED, &[cluster, node, ("what", what.to_owned())])
}
