//! The acceptance criteria of the Go project's issue "Implement Actor Migration Between Cluster
//! Nodes", one test each, against a real nats-server and the JetStream store.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use aether_cluster::{MigrationStatus, ShardMap};
use aether_testkit::nats::NatsServer;
use common::bank::{Bank, Command, Moved, bank_node, join, routing};
use common::*;

/// `a` alone, serving, with `n` accounts that got one deposit each; then `b` joins and both
/// serve the new map.
async fn a_then_b(server: &NatsServer, name: &str, n: usize) -> (Bank, Bank) {
    let a = join(server, name, "a").await;
    until("a map over a", || served(&a.0, 1)).await;
    for i in 0..n {
        a.1.ask(&format!("acct-{i}"), Command::Deposit(1))
            .await
            .unwrap();
    }
    let b = join(server, name, "b").await;
    until("a map over a and b", || served(&a.0, 2) && served(&b.0, 2)).await;
    (a, b)
}

/// "RebalanceShards returns a new shard map with actor assignments."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalancing_returns_a_new_shard_map_with_actor_assignments() {
    let server = NatsServer::start().await.unwrap();
    let name = cluster_name();
    let (a, accounts, _) = join(&server, &name, "a").await;
    until("a map over a", || served(&a, 1)).await;
    let before: ShardMap = (*a.manager().shard_map().unwrap()).clone();
    let (b, _, _) = join(&server, &name, "b").await;
    until("a map over a and b", || served(&a, 2) && served(&b, 2)).await;
    let after = a.manager().shard_map().unwrap();
    assert!(after.epoch() > before.epoch());
    assert_eq!(after.owners().len(), SHARDS as usize);
    let plan = before.plan_to(&after);
    assert!(!plan.is_empty() && plan.moves.iter().all(|m| m.to.as_deref() == Some("b")));
    // Every actor has exactly one node in the new map, and it is the one calls reach.
    for i in 0..50 {
        let id = format!("acct-{i}");
        let owner = after.node_for_actor(&id).unwrap();
        assert_eq!(accounts.node_for(&id).as_deref(), Some(owner));
    }
    b.leave().await.unwrap();
    a.leave().await.unwrap();
}

/// "handleRebalanceRequest processes the migration plan": the old owner drains each moved
/// shard and hands it over; both sides record the move as done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_owner_processes_the_migration_plan() {
    let server = NatsServer::start().await.unwrap();
    let name = cluster_name();
    let ((a, accounts, _), (b, _, _)) = a_then_b(&server, &name, 100).await;
    // The first map of both nodes (epoch 1 had a alone): what moved to b.
    let now = a.manager().shard_map().unwrap();
    let plan: Vec<_> = now.shards_of("b");
    let sent: Vec<_> = a
        .migrations()
        .into_iter()
        .filter(|m| m.to.as_deref() == Some("b"))
        .collect();
    assert_eq!(sent.len(), plan.len());
    assert!(
        sent.iter()
            .all(|m| m.status == MigrationStatus::Done && m.took.is_some())
    );
    // The moved actors left a's memory; the others stayed.
    for id in accounts.runtime().active_vms() {
        assert_eq!(
            accounts.node_for(&id).as_deref(),
            Some("a"),
            "{id} stayed after moving"
        );
    }
    b.leave().await.unwrap();
    a.leave().await.unwrap();
}

/// "handleMigrationRequest accepts actor migrations": the new owner takes the handoff and
/// serves the moved actors (they activate there on their first call).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_new_owner_accepts_migrated_actors() {
    let server = NatsServer::start().await.unwrap();
    let name = cluster_name();
    let ((a, accounts, _), (b, b_accounts, _)) = a_then_b(&server, &name, 50).await;
    // The new owner records a handoff as done once it has confirmed it, which can come a moment
    // after the shards are in use: wait for that event rather than assume it.
    until("b recorded every handoff from a as done", || {
        let from_a: Vec<_> = b
            .migrations()
            .into_iter()
            .filter(|m| m.from.as_deref() == Some("a"))
            .collect();
        !from_a.is_empty() && from_a.iter().all(|m| m.status == MigrationStatus::Done)
    })
    .await;
    let received: Vec<_> = b
        .migrations()
        .into_iter()
        .filter(|m| m.from.as_deref() == Some("a"))
        .collect();
    assert!(!received.is_empty());
    assert!(
        received.iter().all(|m| m.status == MigrationStatus::Done),
        "{received:?}"
    );
    let moved: Vec<String> = (0..50)
        .map(|i| format!("acct-{i}"))
        .filter(|id| b_accounts.node_for(id).as_deref() == Some("b"))
        .collect();
    assert!(!moved.is_empty());
    for id in &moved {
        accounts.ask(id, Command::Deposit(1)).await.unwrap(); // sent from a, served by b
    }
    let mut on_b = b_accounts.runtime().active_vms();
    on_b.sort();
    let mut want = moved.clone();
    want.sort();
    assert_eq!(on_b, want);
    b.leave().await.unwrap();
    a.leave().await.unwrap();
}

/// "SendMessage routes to the correct node": from either node, each call runs on its owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_routed_to_the_correct_node() {
    let server = NatsServer::start().await.unwrap();
    let name = cluster_name();
    let (a, a_acc, _) = join(&server, &name, "a").await;
    let (b, b_acc, _) = join(&server, &name, "b").await;
    until("a map over a and b", || served(&a, 2) && served(&b, 2)).await;
    for i in 0..40 {
        let id = format!("acct-{i}");
        let caller = if i % 2 == 0 { &a_acc } else { &b_acc };
        caller.ask(&id, Command::Deposit(1)).await.unwrap();
    }
    for (node, acc) in [(&a, &a_acc), (&b, &b_acc)] {
        for id in acc.runtime().active_vms() {
            assert_eq!(acc.node_for(&id).as_deref(), Some(node.node_id()));
        }
    }
    let total = a_acc.runtime().active_count() + b_acc.runtime().active_count();
    assert_eq!(total, 40, "each actor is active on exactly one node");
    b.leave().await.unwrap();
    a.leave().await.unwrap();
}

/// "Actors can be migrated with state preserved": after a move, the actor answers from its new
/// node with its whole history (snapshot and events), and refuses what its state forbids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrated_actors_keep_their_state() {
    let server = NatsServer::start().await.unwrap();
    let name = cluster_name();
    let (a, accounts, _) = join(&server, &name, "a").await;
    until("a map over a", || served(&a, 1)).await;
    // 150 deposits: past the snapshot every 100 events, so the new owner starts from a snapshot.
    for _ in 0..150 {
        accounts
            .ask("acct-state", Command::Deposit(2))
            .await
            .unwrap();
    }
    // Move it: nodes join until one of them owns acct-state.
    let mut others = Vec::new();
    for id in ["b", "c", "d", "e"] {
        others.push(
            bank_node(
                server.connect().await.unwrap(),
                routing(fast_config(&name, id)),
                1,
            )
            .await,
        );
        until("the joiner served", || {
            served(&others.last().unwrap().0, others.len() + 1)
        })
        .await;
        if accounts.node_for("acct-state").as_deref() != Some("a") {
            break;
        }
    }
    let owner = accounts.node_for("acct-state").unwrap();
    assert_ne!(owner, "a", "acct-state never moved");
    let (_, new_home, _) = others
        .iter()
        .find(|(n, _, _)| n.node_id() == owner)
        .unwrap();
    let applied = accounts
        .ask("acct-state", Command::Deposit(0))
        .await
        .unwrap();
    assert_eq!(applied.version, 151);
    assert_eq!(applied.events, vec![Moved::Deposited(0)]);
    let (state, version) = new_home
        .runtime()
        .capture_state("acct-state")
        .await
        .unwrap();
    assert_eq!((state.balance, version), (300, 151));
    let refused = accounts
        .ask("acct-state", Command::Withdraw(301))
        .await
        .unwrap_err();
    assert_eq!(refused.rejection().unwrap().balance, 300);
    assert!(
        new_home.runtime().stats().replayed < 100,
        "activation used the snapshot"
    );
    for (n, _, _) in &others {
        n.leave().await.unwrap();
    }
    a.leave().await.unwrap();
}

/// "Failed migrations are handled gracefully": the old owner is killed in the middle of the
/// cluster's life; its shards are served elsewhere, no call fails, nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_whose_old_owner_dies_is_handled_gracefully() {
    let server = NatsServer::start().await.unwrap();
    let name = cluster_name();
    let (a, accounts, _) = join(&server, &name, "a").await;
    let b = ChildNode::spawn_bank("child_bank_node", &server.url(), &name, "b").await;
    until("a map over a and b", || served(&a, 2)).await;
    let on_b: Vec<String> = (0..40)
        .map(|i| format!("acct-{i}"))
        .filter(|id| accounts.node_for(id).as_deref() == Some("b"))
        .collect();
    assert!(!on_b.is_empty());
    for id in &on_b {
        accounts.ask(id, Command::Deposit(5)).await.unwrap();
    }
    b.kill9();
    // Calls made while b is dead are held until its shards are a's, then answered in full.
    for id in &on_b {
        let applied = accounts.ask(id, Command::Deposit(1)).await.unwrap();
        assert_eq!(applied.version, 2, "{id}");
    }
    assert_eq!(accounts.node_for(&on_b[0]).as_deref(), Some("a"));
    let failover: Vec<_> = a
        .migrations()
        .into_iter()
        .filter(|m| m.from.as_deref() == Some("b"))
        .collect();
    assert!(!failover.is_empty());
    assert!(
        failover.iter().all(|m| m.status == MigrationStatus::Done
            && m.reason.as_deref().is_some_and(|r| r.contains("failed"))),
        "{failover:?}"
    );
    a.leave().await.unwrap();
}

/// Not a test: the body of a child node hosting the bank actor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a bank node run as a child process by the multi-process tests"]
async fn child_bank_node() {
    run_bank_child().await;
}
