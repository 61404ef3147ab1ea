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

mod actors {
    use aether_cluster::{CallError, ClusterActors, ClusterNode, ShardMigration};
    use aether_runtime::Actor;
    use serde::{Deserialize, Serialize};

    use super::{is_send, is_send_sync};

    #[derive(Default, Serialize, Deserialize)]
    struct Probe;

    #[derive(Debug, thiserror::Error, Serialize, Deserialize)]
    #[error("never")]
    struct Never;

    impl Actor for Probe {
        const TYPE: &'static str = "probe";
        type Command = u8;
        type Event = u8;
        type Error = Never;
        fn handle(&self, c: &u8) -> Result<Vec<u8>, Never> {
            Ok(vec![*c])
        }
        fn apply(&mut self, _: &u8) {}
    }

    #[test]
    fn node_handles_are_send_and_sync() {
        is_send_sync::<ClusterNode>();
        is_send_sync::<ClusterActors<Probe>>();
        is_send_sync::<CallError<Never>>();
        is_send_sync::<ShardMigration>();
    }

    fn node_futures_are_send(node: ClusterNode, actors: ClusterActors<Probe>) {
        is_send(&node.start());
        is_send(&node.leave());
        is_send(&actors.ask("a", 1));
        is_send(&actors.ask_with_id("a", 1, "id"));
        is_send(&actors.tell("a", 1));
    }
}
