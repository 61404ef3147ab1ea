//! `ClusterClient` against real nats-servers: a process that only calls reaches every actor on
//! its owner, applied once, through a graceful leave of a node; starting and stopping clients
//! moves no shard and adds no member; a client of a cluster that does not exist, or a closed
//! one, fails clearly.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use aether_cluster::{CallError, ClientConfig, ClusterClient, ClusterEvent, ClusterNode};
use aether_testkit::nats::NatsServer;
use common::bank::{Account, Command, audit, join};
use common::*;
use futures::{FutureExt, StreamExt};

fn client_config(name: &str) -> ClientConfig {
    ClientConfig::new(name)
        .request_timeout(Duration::from_secs(1))
        .call_timeout(Duration::from_secs(30))
}

/// Waits until `node`'s map gives every shard to one of exactly `owners` and it serves them all.
async fn settled(node: &ClusterNode, owners: &[&str]) {
    until("a settled map", || {
        map_owned_by(node.manager(), owners)
            && node.manager().shards_owned().len() == node.shards_in_use()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reaches_every_actor_once_through_a_graceful_leave() {
    let server = NatsServer::start().await.expect("nats-server");
    let name = cluster_name();
    let (a, _, store) = join(&server, &name, "a").await;
    let (b, _, _) = join(&server, &name, "b").await;
    let (c, _, _) = join(&server, &name, "c").await;
    for node in [&a, &b, &c] {
        settled(node, &["a", "b", "c"]).await;
    }
    let cluster = ClusterClient::connect(server.connect().await.unwrap(), client_config(&name))
        .await
        .expect("the client connects");
    assert_eq!(cluster.shard_count(), SHARDS);
    let accounts = cluster.actors::<Account>();
    let ids: Vec<String> = (0..24).map(|i| format!("acct-{i}")).collect();

    // Calls go to every owner.
    let mut owners = std::collections::BTreeSet::new();
    for id in &ids {
        let applied = accounts.ask(id, Command::Deposit(10)).await.unwrap();
        assert_eq!(applied.version, 1);
        owners.insert(accounts.node_for(id).unwrap());
    }
    assert_eq!(
        owners.len(),
        3,
        "24 accounts over 64 shards reach all three nodes"
    );

    // Calls keep going while c leaves: held and re-sent, never lost, never doubled.
    let calling = {
        let accounts = accounts.clone();
        let ids = ids.clone();
        tokio::spawn(async move {
            for round in 0..5 {
                for id in &ids {
                    let id_of_call = format!("leave-{round}-{id}");
                    accounts
                        .ask_with_id(id, Command::Deposit(1), id_of_call.as_str())
                        .await
                        .unwrap();
                }
            }
        })
    };
    let mut events = a.manager().watch();
    c.leave().await.unwrap();
    calling.await.unwrap();
    settled(&a, &["a", "b"]).await;
    // c's record goes after its shards: wait for a to see it leave.
    tokio::time::timeout(SETTLE, async {
        while let Some(event) = events.next().await {
            if matches!(&event, ClusterEvent::MemberLeft { node_id } if node_id == "c") {
                return;
            }
        }
    })
    .await
    .expect("a sees c leave");
    assert!(
        a.manager()
            .members()
            .iter()
            .all(|m| m.id == "a" || m.id == "b"),
        "the client never appears among the members"
    );

    // Sending a command id again returns the first outcome.
    let again = accounts
        .ask_with_id(&ids[0], Command::Deposit(1), "leave-0-acct-0")
        .await
        .unwrap();
    let (causes, states) = audit(&*store, ids.clone()).await;
    for id in &ids {
        assert_eq!(states[id].balance, 15, "{id}: 10 + 5 x 1");
    }
    assert!(
        causes.values().all(|&n| n == 1),
        "every command stored once"
    );
    assert_eq!(again.version, 2, "the first outcome of leave-0-acct-0");

    cluster.close().await;
    let closed = accounts.ask(&ids[0], Command::Deposit(1)).await;
    assert!(
        matches!(closed, Err(CallError::Stopped { .. })),
        "{closed:?}"
    );
    a.leave().await.unwrap();
    b.leave().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_started_and_stopped_under_load_move_no_shard() {
    let server = NatsServer::start().await.expect("nats-server");
    let name = cluster_name();
    let (a, a_accounts, _) = join(&server, &name, "a").await;
    let (b, _, _) = join(&server, &name, "b").await;
    let (c, _, _) = join(&server, &name, "c").await;
    for node in [&a, &b, &c] {
        settled(node, &["a", "b", "c"]).await;
    }
    let epoch = a.manager().shard_map().unwrap().epoch();
    let mut events = a.manager().watch();

    // Load through a node while clients come and go.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop, served) = (Arc::clone(&stop), Arc::clone(&served));
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                a_accounts
                    .ask(&format!("load-{}", i % 32), Command::Deposit(1))
                    .await
                    .unwrap();
                served.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        })
    };
    for round in 0..50 {
        let cluster = ClusterClient::connect(
            server.connect().await.unwrap(),
            client_config(&name).name(format!("web-{round}")),
        )
        .await
        .expect("the client connects");
        let accounts = cluster.actors::<Account>();
        accounts
            .ask(&format!("client-{round}"), Command::Deposit(1))
            .await
            .unwrap();
        cluster.close().await;
    }
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert!(served.load(Ordering::Relaxed) > 0);

    // Nothing happened to the cluster: same map, same members, no membership event.
    assert_eq!(a.manager().shard_map().unwrap().epoch(), epoch);
    assert_eq!(a.manager().members().len(), 3);
    while let Some(Some(event)) = events.next().now_or_never() {
        assert!(
            !matches!(
                event,
                ClusterEvent::MemberJoined(_)
                    | ClusterEvent::MemberLeft { .. }
                    | ClusterEvent::MemberFailed { .. }
                    | ClusterEvent::ShardMapChanged { .. }
            ),
            "a client changed the cluster: {event:?}"
        );
    }
    for node in [&a, &b, &c] {
        node.leave().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_a_cluster_no_node_started_fails_clearly() {
    let server = NatsServer::start().await.expect("nats-server");
    let err = ClusterClient::connect(
        server.connect().await.unwrap(),
        client_config("nobody-here"),
    )
    .await
    .expect_err("no bucket");
    let text = err.to_string();
    assert!(
        text.contains("has a node of cluster nobody-here started?"),
        "{text}"
    );
    let bad = ClusterClient::connect(
        server.connect().await.unwrap(),
        ClientConfig::new("no.dots"),
    )
    .await
    .expect_err("invalid name");
    assert!(bad.to_string().contains("cluster_name"), "{bad}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_client_leaves_no_consumer_behind() {
    let server = NatsServer::start().await.expect("nats-server");
    let name = cluster_name();
    let (a, _, _) = join(&server, &name, "a").await;
    settled(&a, &["a"]).await;
    let js = async_nats::jetstream::new(server.connect().await.unwrap());
    let consumers = || {
        let js = js.clone();
        let stream = format!("KV_{}", aether_cluster::bucket_name(&name));
        async move {
            js.get_stream(stream)
                .await
                .unwrap()
                .info()
                .await
                .unwrap()
                .state
                .consumer_count
        }
    };
    let before = consumers().await;
    let cluster = ClusterClient::connect(server.connect().await.unwrap(), client_config(&name))
        .await
        .unwrap();
    let accounts = cluster.actors::<Account>();
    accounts.ask("acct-1", Command::Deposit(1)).await.unwrap();
    assert_eq!(consumers().await, before + 1, "the client's watch");

    // Dropped without `close`: its watch goes with it, and the server removes the consumer
    // (inactive threshold 2 s). Polled: the server announces nothing.
    drop(accounts);
    drop(cluster);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while consumers().await != before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dropped client's consumer is still on the server"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.leave().await.unwrap();
}
