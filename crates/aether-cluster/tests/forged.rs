//! What a forged cluster message can and cannot do (docs/security.md), from a client with
//! publish rights on a cluster's subjects and its bucket, against a real nats-server:
//!
//! - garbage calls and handoffs leave the node serving; a call without a reply subject is not
//!   even read; confirmations for shards that are not pending change nothing;
//! - a well-formed forged call runs its command like any caller's; a command id already applied
//!   is not applied again, and a forger that uses an id first decides the outcome of the caller
//!   that uses it later;
//! - the bucket takes a well-formed map, lease or record from anyone who may publish to it: the
//!   fence binds only writers that send it; a forged map with a higher epoch reroutes every call
//!   until the leader publishes the next map, a forged lease without TTL deposes the leader and
//!   blocks elections until it is deleted, a forged record is a member until deleted.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use aether_cluster::{
    ClusterEvent, ClusterEvents, KEY_LEADER, KEY_SHARD_MAP, MigrationStatus, ShardMap, bucket_name,
};
use aether_testkit::nats::NatsServer;
use common::bank::{Command, Moved, audit, bank_node, join, routing};
use common::wire::{call, status_and_version};
use common::{SETTLE, SHARDS, cluster_name, fast_config, served, until};
use futures::StreamExt;
use tokio::time::Instant;

/// Waits for an event matching `pred`.
async fn event(events: &mut ClusterEvents, what: &str, pred: impl Fn(&ClusterEvent) -> bool) {
    let deadline = Instant::now() + SETTLE;
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(e)) if pred(&e) => return,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the event stream ended waiting for {what}"),
            Err(_) => panic!("no {what} within {SETTLE:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_calls_and_handoffs_leave_the_node_serving() {
    let server = NatsServer::start().await.unwrap();
    let name = cluster_name();
    let (node, accounts, store) = join(&server, &name, "a").await;
    until("a map over a", || served(&node, 1)).await;
    accounts.ask("acct-1", Command::Deposit(7)).await.unwrap();
    let serving = node.shards_in_use();
    let moves = node.migrations().len();
    let forger = server.connect().await.unwrap();
    let calls = format!("aether-cluster.{name}.call.a");
    let handoffs = format!("aether-cluster.{name}.handoff.a");

    // Calls without a reply subject are dropped unread, garbage or not: this one is never run.
    forger
        .publish(calls.clone(), b"\xc1 garbage".to_vec().into())
        .await
        .unwrap();
    forger
        .publish(
            calls.clone(),
            call("acct-1", "no-reply-1", 0, &Command::Deposit(1000)).into(),
        )
        .await
        .unwrap();
    // Garbage with a reply subject gets `bad_request`. The node reads its calls in order, so
    // this answer also shows that the two above were read (and skipped).
    let answer = forger
        .request(calls.clone(), b"\x92\x01".to_vec().into())
        .await
        .unwrap();
    assert_eq!(status_and_version(&answer.payload).0, "bad_request");

    // Handoffs: garbage, a truncated map, a confirmation for shards out of range and for shards
    // this node serves already. Then a confirmation asked for an acknowledgement: the node reads
    // its handoffs in order, so the acknowledgement shows it has read everything before.
    for body in [
        b"\xc1 garbage".to_vec(),
        b"\x83\xa4from".to_vec(),
        rmp_serde::to_vec_named(&serde_json::json!({
            "from": "ghost", "epoch": u64::MAX, "shards": [SHARDS, u32::MAX]
        }))
        .unwrap(),
    ] {
        forger.publish(handoffs.clone(), body.into()).await.unwrap();
    }
    let all: Vec<u32> = (0..SHARDS).collect();
    let confirmation =
        rmp_serde::to_vec_named(&serde_json::json!({"from": "ghost", "epoch": 1, "shards": all}))
            .unwrap();
    forger
        .request(handoffs, confirmation.into())
        .await
        .expect("a well-formed confirmation is acknowledged");

    // The node serves as before: same shards, no move recorded, commands applied.
    assert_eq!(node.shards_in_use(), serving);
    assert_eq!(node.migrations().len(), moves);
    let applied = accounts.ask("acct-1", Command::Deposit(1)).await.unwrap();
    assert_eq!(applied.version, 2);
    let (causes, states) = audit(&*store, ["acct-1".to_owned()]).await;
    assert_eq!(
        causes.get("no-reply-1"),
        None,
        "a call without a reply was run"
    );
    assert_eq!(states["acct-1"].balance, 8);
    node.leave().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_call_is_as_good_as_a_caller_s_and_command_ids_are_first_come() {
    let server = NatsServer::start().await.unwrap();
    let name = cluster_name();
    let (node, accounts, store) = join(&server, &name, "a").await;
    until("a map over a", || served(&node, 1)).await;
    let forger = server.connect().await.unwrap();
    let subject = format!("aether-cluster.{name}.call.a");
    let forge = |id: &str, command: Command| {
        let forger = forger.clone();
        let subject = subject.clone();
        let body = call("acct-1", id, 0, &command);
        async move {
            let reply = forger.request(subject, body.into()).await.unwrap();
            status_and_version(&reply.payload)
        }
    };

    // The caller's command, then a forged call with the caller's id and another command: the
    // id is known, so the forged command is not decided; the answer is the caller's outcome.
    let first = accounts
        .ask_with_id("acct-1", Command::Deposit(5), "caller-1")
        .await
        .unwrap();
    assert_eq!(first.version, 1);
    assert_eq!(
        forge("caller-1", Command::Deposit(1000)).await,
        ("ok".into(), Some(1))
    );
    // A forged call with an id of its own runs, as any caller's would.
    assert_eq!(
        forge("forged-1", Command::Withdraw(5)).await,
        ("ok".into(), Some(2))
    );
    // An id the forger uses first is the forger's: the caller's later command with that id is
    // answered with the forger's outcome and never applied.
    assert_eq!(
        forge("caller-2", Command::Deposit(1)).await,
        ("ok".into(), Some(3))
    );
    let preempted = accounts
        .ask_with_id("acct-1", Command::Deposit(100), "caller-2")
        .await
        .unwrap();
    assert_eq!(preempted.version, 3);
    assert_eq!(preempted.events, vec![Moved::Deposited(1)]);

    let (causes, states) = audit(&*store, ["acct-1".to_owned()]).await;
    assert_eq!(causes.get("caller-1"), Some(&1));
    assert_eq!(causes.get("forged-1"), Some(&1));
    assert_eq!(causes.get("caller-2"), Some(&1));
    assert_eq!(
        states["acct-1"].balance, 1,
        "5 - 5 + 1: the 1000 and the 100 never applied"
    );
    node.leave().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bucket_takes_a_well_formed_map_lease_or_record_from_anyone_who_may_write_it() {
    let server = NatsServer::start().await.unwrap();
    let name = cluster_name();
    let config = routing(fast_config(&name, "a")).call_timeout(Duration::from_secs(1));
    let (a, accounts, _store) = bank_node(server.connect().await.unwrap(), config, 1).await;
    until("a map over a", || served(&a, 1)).await;
    accounts.ask("acct-1", Command::Deposit(1)).await.unwrap();
    let kv = async_nats::jetstream::new(server.connect().await.unwrap())
        .get_key_value(bucket_name(&name))
        .await
        .unwrap();
    let mut events = a.manager().watch();

    // A map with the next epoch, written with a plain put (no fence): every node takes it (all
    // shards to a node that does not exist), and the leader, looking again at every new map,
    // replaces it with its own placement after the rebalance delay: calls are served again
    // without any membership change.
    let epoch = a.manager().shard_map().unwrap().epoch();
    let ghost_map = ShardMap::new(
        epoch + 1,
        1,
        "ghost",
        SHARDS,
        vec!["ghost".into(); SHARDS as usize],
    );
    kv.put(KEY_SHARD_MAP, ghost_map.encode().into())
        .await
        .unwrap();
    event(
        &mut events,
        "the forged map",
        |e| matches!(e, ClusterEvent::ShardMapChanged { map, .. } if map.epoch() == epoch + 1),
    )
    .await;
    event(&mut events, "the leader's map over the forged one", |e| {
        matches!(e, ClusterEvent::ShardMapChanged { map, .. }
            if map.epoch() > epoch + 1 && map.counts().get("a") == Some(&(SHARDS as usize)))
    })
    .await;
    let applied = accounts.ask("acct-1", Command::Deposit(1)).await.unwrap();
    assert_eq!(applied.version, 2);
    let (b, _, _) = join(&server, &name, "b").await;
    until("a map over a and b", || served(&a, 2) && served(&b, 2)).await;

    // A well-formed lease for another node, with no TTL: the leader's next renewal is refused and
    // it steps down; nobody competes while the key names a holder, so nobody leads until the key
    // is deleted.
    let leader = a.manager().leader().unwrap().node_id;
    let leader_node = if leader == "a" { &a } else { &b };
    let mut leader_events = leader_node.manager().watch();
    let lease = rmp_serde::to_vec_named(&serde_json::json!({ "node": "ghost" })).unwrap();
    kv.put(KEY_LEADER, lease.into()).await.unwrap();
    event(&mut leader_events, "the leader stepping down", |e| {
        matches!(e, ClusterEvent::SteppedDown { .. })
    })
    .await;
    assert_eq!(a.manager().leader().unwrap().node_id, "ghost");
    assert!(!a.manager().is_leader() && !b.manager().is_leader());
    kv.delete(KEY_LEADER).await.unwrap();
    event(&mut events, "a real leader again", |e| {
        matches!(e, ClusterEvent::LeaderChanged { leader: Some(l), .. } if l == "a" || l == "b")
    })
    .await;

    // A well-formed record with no liveness key behind it: the leader marks it failed at its
    // next sweep (a heartbeat interval), so it never holds shards for long.
    let record = serde_json::json!({
        "id": "ghost", "capacity": 1, "status": "active", "started_at_ms": 0,
        "version": "forged", "shard_count": SHARDS, "incarnation": "forged",
    });
    kv.put(
        "nodes.ghost",
        rmp_serde::to_vec_named(&record).unwrap().into(),
    )
    .await
    .unwrap();
    event(
        &mut events,
        "the forged member",
        |e| matches!(e, ClusterEvent::MemberJoined(r) if r.id == "ghost"),
    )
    .await;
    event(
        &mut events,
        "the forged member failed by the leader",
        |e| matches!(e, ClusterEvent::MemberFailed { node_id } if node_id == "ghost"),
    )
    .await;
    until("a map without it", || served(&a, 2) && served(&b, 2)).await;
    assert!(a.migrations().iter().all(|m| !matches!(
        m.status,
        MigrationStatus::Pending | MigrationStatus::InProgress
    )));
    b.leave().await.unwrap();
    a.leave().await.unwrap();
}
