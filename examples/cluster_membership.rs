//! Three cluster nodes agree on a leader and a shard map; one leaves and only its shards move.
//!
//! The three nodes run in one process here for brevity; in production each is its own process
//! on its own machine, all pointed at the same NATS (with JetStream).
//!
//! ```text
//! cargo xtask nats && target/tools/nats-server/bin/nats-server -js     # a server, JetStream on
//! cargo run --example cluster_membership
//! ```
//! `NATS_URL` picks another server (default `nats://127.0.0.1:4222`).

use std::time::Duration;

use aether::cluster::{ClusterConfig, ClusterEvent, ClusterManager, async_nats};
use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let cluster = format!("demo-{}", std::process::id());
    let mut nodes = Vec::new();
    for id in ["node-a", "node-b", "node-c"] {
        let Ok(client) = async_nats::connect(url.as_str()).await else {
            eprintln!("cannot reach nats-server at {url}; start one with JetStream on, e.g.:");
            eprintln!("  cargo xtask nats && target/tools/nats-server/bin/nats-server -js");
            std::process::exit(2);
        };
        let config = ClusterConfig::new(cluster.as_str())
            .node_id(id)
            .shard_count(256)
            .failure_timeout(Duration::from_secs(3))
            .lease_ttl(Duration::from_secs(3));
        let node = ClusterManager::new(client, config)?;
        node.start().await?;
        nodes.push(node);
    }

    // Wait until the leader's map covers all three nodes, as seen by node-a.
    let mut events = nodes[0].watch();
    let covers =
        |n: &ClusterManager, k: usize| n.shard_map().is_some_and(|m| m.counts().len() == k);
    while !covers(&nodes[0], 3) {
        tokio::time::timeout(Duration::from_secs(10), events.next()).await?;
    }
    let leader = nodes[0].leader().ok_or("no leader")?;
    let map = nodes[0].shard_map().ok_or("no map")?;
    println!(
        "leader: {} (term {}), map epoch {}",
        leader.node_id,
        leader.term,
        map.epoch()
    );
    for (node, shards) in map.counts() {
        println!("  {node} owns {shards} of {} shards", map.shard_count());
    }
    for actor in ["order-1", "order-2", "order-42"] {
        println!(
            "  {actor} -> shard {} -> {}",
            nodes[0].shard_for(actor),
            map.node_for_actor(actor).unwrap_or("-")
        );
    }

    // node-c leaves gracefully: the leader moves only node-c's shards.
    let leaving = nodes.pop().ok_or("no node")?;
    leaving.leave().await?;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.next()).await? {
            Some(ClusterEvent::ShardMapChanged { map: next, plan }) if next.counts().len() == 2 => {
                let only_c = plan
                    .moves
                    .iter()
                    .all(|m| m.from.as_deref() == Some("node-c"));
                println!(
                    "node-c left: epoch {} moved {} shards, all from node-c: {only_c}",
                    next.epoch(),
                    plan.len()
                );
                assert!(only_c, "a shard moved between nodes that stayed");
                break;
            }
            Some(_) => {}
            None => return Err("event stream ended".into()),
        }
    }
    for node in nodes {
        node.leave().await?;
    }
    Ok(())
}
