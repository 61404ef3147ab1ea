//! Fencing through the library: a leader held between its decision to publish a shard map and
//! the write (a fault point, as a long pause would) is deposed meanwhile; its own fenced write
//! must be refused by the server and the node must step down. Remove the fence headers from the
//! leader's map write and this test fails.
//!
//! Needs the `fault-injection` feature (`cargo test -p aether-cluster --features fault-injection
//! --test fencing`; `cargo xtask ci` runs it with `--all-features`).

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use aether_cluster::faults::FaultPoints;
use aether_cluster::{ClusterEvent, KEY_LEADER, KEY_SHARD_MAP, ShardMap, bucket_name};
use aether_testkit::nats::NatsServer;
use async_nats::jetstream::kv::Operation;
use common::*;
use tokio::sync::{Notify, mpsc};

/// Holds the leader at its map write while armed: reports arriving, waits for the release.
struct Gate {
    armed: AtomicBool,
    arrived: mpsc::UnboundedSender<()>,
    release: Notify,
}

impl Gate {
    fn points(gate: &Arc<Self>) -> FaultPoints {
        let gate = Arc::clone(gate);
        FaultPoints::new().before_map_write(move || {
            let gate = Arc::clone(&gate);
            Box::pin(async move {
                if gate.armed.swap(false, Ordering::SeqCst) {
                    let released = gate.release.notified();
                    let _ = gate.arrived.send(());
                    released.await;
                }
            })
        })
    }
}

/// A lease record as docs/cluster.md specifies it (`{ node }`, MessagePack map), from another
/// implementation's point of view.
fn lease_of(node: &str) -> Vec<u8> {
    let value = rmpv::Value::Map(vec![("node".into(), node.into())]);
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &value).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_deposed_before_its_map_write_is_refused_by_the_server_and_steps_down() {
    let server = NatsServer::start().await.expect("nats-server");
    let name = cluster_name();
    let (arrived, mut arrivals) = mpsc::unbounded_channel();
    let gate = Arc::new(Gate {
        armed: AtomicBool::new(true),
        arrived,
        release: Notify::new(),
    });
    let config = fast_config(&name, "a").fault_points(Gate::points(&gate));
    let mut node = Node::start(server.connect().await.unwrap(), config).await;

    // The node wins the lease and decides to publish its first map: held before the write.
    tokio::time::timeout(SETTLE, arrivals.recv())
        .await
        .expect("the leader reaches its map write")
        .expect("gate open");
    assert!(node.manager.is_leader());
    let term = node.manager.term().expect("a term");

    // Meanwhile another node takes the lease (as if this one had paused past its TTL).
    let client = server.connect().await.unwrap();
    let kv = async_nats::jetstream::new(client)
        .get_key_value(bucket_name(&name))
        .await
        .unwrap();
    let lease = kv.entry(KEY_LEADER).await.unwrap().expect("the lease");
    assert_eq!(lease.operation, Operation::Put);
    let stolen_at = kv
        .update(KEY_LEADER, lease_of("usurper").into(), lease.revision)
        .await
        .expect("the usurper's lease");

    // The deposed leader goes on with its real write: the server refuses it for the fence.
    gate.release.notify_one();
    let stepped = node
        .event("a step-down", SETTLE, |e| {
            matches!(e, ClusterEvent::SteppedDown { .. })
        })
        .await;
    let ClusterEvent::SteppedDown { term: held, reason } = stepped else {
        unreachable!()
    };
    assert_eq!(held, term);
    assert!(
        reason.contains("refused a shard map"),
        "the step-down must come from the refused map write, not a later renewal: {reason}"
    );
    assert!(!node.manager.is_leader());

    // Nothing the deposed leader wrote stands: no map of its term, the usurper's lease intact.
    if let Some(entry) = kv.entry(KEY_SHARD_MAP).await.unwrap()
        && entry.operation == Operation::Put
    {
        let map = ShardMap::decode(&entry.value).unwrap();
        assert_ne!(
            map.term(),
            term,
            "the deposed leader's map was stored: {map:?}"
        );
    }
    let now = kv.entry(KEY_LEADER).await.unwrap().expect("the lease");
    assert_eq!(now.revision, stolen_at);
    node.manager.leave().await.unwrap();
}
