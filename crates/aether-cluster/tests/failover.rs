//! Fast failover against a real nats-server, with nodes as child processes: a `kill -9`'d
//! node's actors are served again long before its record would expire (failure timeout 10 s,
//! the default), the follower's and the leader's; a paused node (SIGSTOP) is not failed early.
//! The caller is a `ClusterClient`, which reports owners without responders to the nodes.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use aether_cluster::{ClientActors, ClientConfig, ClusterClient, KEY_LEADER, bucket_name};
use aether_testkit::nats::NatsServer;
use common::bank::{Account, Command};
use common::*;
use tokio::time::Instant;

/// The default failure timeout: a record expires 10 s after its last heartbeat.
const FAILURE_MS: u64 = 10_000;

/// Not a test: the body of a child node hosting the bank actor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a bank node run as a child process by the failover tests"]
async fn child_bank_node() {
    run_bank_child().await;
}

async fn children(server: &NatsServer, name: &str) -> Vec<ChildNode> {
    let mut nodes = Vec::new();
    for id in ["a", "b", "c"] {
        nodes.push(
            ChildNode::spawn_bank_with(
                "child_bank_node",
                &server.url(),
                name,
                id,
                Some(FAILURE_MS),
            )
            .await,
        );
    }
    nodes
}

async fn client(server: &NatsServer, name: &str) -> ClusterClient {
    let config = ClientConfig::new(name)
        .request_timeout(Duration::from_secs(1))
        .call_timeout(Duration::from_secs(60));
    ClusterClient::connect(server.connect().await.unwrap(), config)
        .await
        .expect("the client connects")
}

/// Waits until the client's map has exactly `owners` owners.
async fn owners(cluster: &ClusterClient, owners: usize) {
    until("the map's owners", || {
        cluster
            .shard_map()
            .is_some_and(|m| m.counts().len() == owners)
    })
    .await;
}

/// An account the client's map places on `node`.
fn account_on(cluster: &ClusterClient, node: &str) -> String {
    (0..10_000)
        .map(|i| format!("acct-{i}"))
        .find(|id| cluster.node_for(id).as_deref() == Some(node))
        .expect("an account on the node")
}

/// The node holding the lease, read from the bucket.
async fn leader(server: &NatsServer, name: &str) -> String {
    let kv = async_nats::jetstream::new(server.connect().await.unwrap())
        .get_key_value(bucket_name(name))
        .await
        .unwrap();
    let lease = kv.entry(KEY_LEADER).await.unwrap().expect("a lease");
    let value: rmpv::Value = rmpv::decode::read_value(&mut &lease.value[..]).unwrap();
    value
        .as_map()
        .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some("node")))
        .and_then(|(_, v)| v.as_str())
        .expect("the lease names its node")
        .to_owned()
}

/// Kills `node` and returns how long until a call to one of its accounts succeeded again.
async fn kill_and_call(
    nodes: &[ChildNode],
    node: &str,
    cluster: &ClusterClient,
    accounts: &ClientActors<Account>,
) -> Duration {
    let account = account_on(cluster, node);
    accounts
        .ask(&account, Command::Deposit(1))
        .await
        .expect("served before the kill");
    let child = nodes.iter().find(|n| n.node_id == node).unwrap();
    let killed = Instant::now();
    child.kill9();
    accounts
        .ask(&account, Command::Deposit(1))
        .await
        .expect("served again after the kill");
    let took = killed.elapsed();
    assert_ne!(cluster.node_for(&account).as_deref(), Some(node));
    took
}

/// Three child nodes serving, a client that sees all three, and the first leader.
struct World {
    server: NatsServer,
    nodes: Vec<ChildNode>,
    cluster: ClusterClient,
    accounts: ClientActors<Account>,
    first: String,
}

impl World {
    async fn start() -> Self {
        let server = NatsServer::start().await.expect("nats-server");
        let name = cluster_name();
        let nodes = children(&server, &name).await;
        let cluster = client(&server, &name).await;
        owners(&cluster, 3).await;
        let accounts = cluster.actors::<Account>();
        let first = leader(&server, &name).await;
        Self {
            server,
            nodes,
            cluster,
            accounts,
            first,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_s_actors_are_served_again_long_before_its_record_expires() {
    // Every field bound: a field left to `..` would be dropped here (the server with it).
    let World {
        server: _server,
        nodes,
        cluster,
        accounts,
        first,
    } = World::start().await;
    let follower = ["a", "b", "c"].into_iter().find(|n| *n != first).unwrap();
    let after_follower = kill_and_call(&nodes, follower, &cluster, &accounts).await;
    owners(&cluster, 2).await;
    let after_leader = kill_and_call(&nodes, &first, &cluster, &accounts).await;
    println!(
        "served again {after_follower:?} after the kill of a follower, {after_leader:?} after \
         the kill of the leader (failure timeout {FAILURE_MS} ms)"
    );
    // Far below the failure timeout: the connection's end, not the record's expiry, decided.
    let bound = Duration::from_millis(FAILURE_MS / 2);
    assert!(after_follower < bound, "{after_follower:?}");
    assert!(after_leader < bound, "{after_leader:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_is_not_failed_before_its_record_expires() {
    // Every field bound: a field left to `..` would be dropped here (the server with it).
    let World {
        server: _server,
        nodes,
        cluster,
        accounts,
        first,
    } = World::start().await;
    let paused = nodes.iter().find(|n| n.node_id != first).unwrap();
    let account = account_on(&cluster, &paused.node_id);
    let epoch = cluster.shard_map().unwrap().epoch();

    // Paused: its subscription stays, so calls time out instead of finding no responders, and
    // nothing fails it early. The call is held until the node resumes, then served there.
    paused.pause();
    let paused_at = Instant::now();
    let call = {
        let accounts = accounts.clone();
        let account = account.clone();
        tokio::spawn(async move { accounts.ask(&account, Command::Deposit(1)).await })
    };
    // Well past several request timeouts (1 s), well before the failure timeout (10 s).
    tokio::time::sleep_until(paused_at + Duration::from_secs(4)).await;
    assert_eq!(
        cluster.shard_map().unwrap().epoch(),
        epoch,
        "a paused node was failed before its record expired"
    );
    paused.resume();
    call.await.unwrap().expect("served by the resumed node");
    assert_eq!(
        cluster.node_for(&account).as_deref(),
        Some(paused.node_id.as_str())
    );
}
