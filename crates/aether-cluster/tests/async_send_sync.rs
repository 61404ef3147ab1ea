//! Compile-time checks: the cluster's handles and futures can cross threads, and placement
//! strategies compose as trait objects.

#![allow(dead_code)]

use std::sync::Arc;

use aether_cluster::{
    ClusterConfig, ClusterError, ClusterEvent, ClusterEvents, ClusterManager, ConsistentHashRing,
    PlacementStrategy, ShardMap,
};

fn is_send_sync<T: Send + Sync>() {}
fn is_send<T: Send>(_: &T) {}

#[test]
fn handles_are_send_and_sync() {
    is_send_sync::<ClusterManager>();
    is_send_sync::<ClusterConfig>();
    is_send_sync::<ClusterError>();
    is_send_sync::<ClusterEvent>();
    is_send_sync::<ShardMap>();
    is_send_sync::<ConsistentHashRing>();
    is_send_sync::<Arc<dyn PlacementStrategy>>();
    fn is_send_only<T: Send>() {}
    is_send_only::<ClusterEvents>();
}

fn futures_are_send(node: ClusterManager) {
    is_send(&node.start());
    is_send(&node.leave());
}
