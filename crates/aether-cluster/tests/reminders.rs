//! Reminders through the cluster, against real nats-servers: firings read on any node are
//! applied once by their actor's owner (counted by command id in the event stream), with a node
//! killed (`kill -9`) and a NATS server killed while they fall due; a reminder of an actor that
//! moved fires on its new owner; cancellation races firings.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aether_cluster::KEEP_INTERVAL;
use aether_core::reminder::{When, firing_command_id};
use aether_runtime::reminders::Reminders;
use aether_store_jetstream::{JetStreamConfig, JetStreamReminders};
use aether_testkit::nats::{NatsCluster, NatsServer};
use common::bank::{self, Account, Command};
use common::*;
use futures::StreamExt;
use tokio::time::Instant;

/// How long a handed-out firing may go unsettled in these tests (the default is 30 s).
const ACK_WAIT: Duration = Duration::from_secs(4);

async fn reminders(client: async_nats::Client, replicas: usize) -> Arc<JetStreamReminders> {
    Arc::new(
        JetStreamReminders::open_with_ack_wait(
            client,
            bank::STREAM,
            &JetStreamConfig::default().replicas(replicas),
            ACK_WAIT,
        )
        .await
        .expect("reminders open"),
    )
}

/// Not a test: the body of a child node hosting the bank actor and delivering reminders.
/// `AETHER_REMINDER_CHILD` = urls|cluster|node_id|replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a node run as a child process by the reminder tests"]
async fn child_reminder_node() {
    let Ok(spec) = std::env::var("AETHER_REMINDER_CHILD") else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let [urls, cluster, node_id, replicas] = parts[..] else {
        panic!("AETHER_REMINDER_CHILD must be urls|cluster|node_id|replicas, not {spec:?}");
    };
    let replicas: usize = replicas.parse().expect("replicas");
    let addrs: Vec<async_nats::ServerAddr> =
        urls.split(',').map(|u| u.parse().expect("url")).collect();
    let client = async_nats::connect(addrs).await.expect("child connects");
    let config = bank::routing(fast_config(cluster, node_id));
    let (node, _accounts, _store) = bank::bank_node(client.clone(), config, replicas).await;
    node.deliver_reminders(reminders(client, replicas).await)
        .expect("delivers reminders");
    println!("NODE started");
    std::future::pending::<()>().await;
}

/// Sets `count` reminders, one per account `acct-<i>`, each depositing 1, due from `first` on,
/// spread over `spread`. Returns each account's firing command id.
async fn set_many(
    store: Arc<JetStreamReminders>,
    count: usize,
    first: SystemTime,
    spread: Duration,
) -> HashMap<String, String> {
    let reminders = Reminders::<Account>::new(store);
    let plan: Vec<(String, SystemTime)> = (0..count)
        .map(|i| {
            let offset = spread.mul_f64(i as f64 / count as f64);
            // Whole milliseconds: what the store keeps.
            let due = first + Duration::from_millis(offset.as_millis() as u64);
            (format!("acct-{i}"), due)
        })
        .collect();
    futures::stream::iter(plan.iter().cloned())
        .map(|(account, due)| {
            let reminders = reminders.clone();
            async move {
                reminders
                    .remind(&account, "top-up", When::At(due), &Command::Deposit(1))
                    .await
                    .expect("reminder set");
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
    plan.into_iter()
        .map(|(account, due)| {
            let id = firing_command_id("top-up", due).to_string();
            (account, id)
        })
        .collect()
}

/// Waits until the reminder stream holds nothing (every reminder fired and settled).
async fn until_all_fired(client: async_nats::Client, stream: &str, within: Duration) {
    let js = async_nats::jetstream::new(client);
    let deadline = Instant::now() + within;
    loop {
        let left = match js.get_stream(stream).await {
            Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(u64::MAX),
            Err(_) => u64::MAX,
        };
        if left == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{left} reminders or firings left after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every account holds exactly one event, caused by its reminder's firing.
async fn audit_once(store: &dyn aether_core::EventStore, expected: &HashMap<String, String>) {
    let (causes, states) = bank::audit(store, expected.keys().cloned()).await;
    let mut wrong = Vec::new();
    for (account, id) in expected {
        let state = &states[account];
        if state.balance != 1 || causes.get(id) != Some(&1) {
            wrong.push(format!(
                "{account}: balance {}, {:?} x{:?}",
                state.balance,
                id,
                causes.get(id)
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} accounts not topped up exactly once: {:?}",
        wrong.len(),
        expected.len(),
        &wrong[..wrong.len().min(10)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reminders_fire_once_each_across_nodes_and_follow_moved_actors() {
    let server = NatsServer::start().await.unwrap();
    let name = cluster_name();
    let store = reminders(server.connect().await.unwrap(), 1).await;
    let mut nodes = Vec::new();
    for id in ["a", "b", "c"] {
        let (node, accounts, events) = bank::join(&server, &name, id).await;
        node.deliver_reminders(store.clone()).unwrap();
        nodes.push((node, accounts, events));
    }
    until("three owners", || served(&nodes[0].0, 3)).await;

    // Due in 3 s: before then node "c" leaves, so its actors move and fire on new owners.
    let first = SystemTime::now() + Duration::from_secs(3);
    let expected = set_many(store.clone(), 600, first, Duration::from_secs(2)).await;
    let moved: Vec<&String> = expected
        .keys()
        .filter(|a| nodes[0].1.node_for(a).as_deref() == Some("c"))
        .collect();
    assert!(!moved.is_empty());
    let (c, _, _) = nodes.pop().unwrap();
    c.leave().await.unwrap();
    until("two owners", || served(&nodes[0].0, 2)).await;

    until_all_fired(
        server.connect().await.unwrap(),
        store.stream_name(),
        Duration::from_secs(60),
    )
    .await;
    audit_once(nodes[0].2.as_ref(), &expected).await;
    for account in moved {
        let owner = nodes[0].1.node_for(account);
        assert!(
            matches!(owner.as_deref(), Some("a" | "b")),
            "{account} on {owner:?}"
        );
    }
    let delivered: u64 = nodes
        .iter()
        .filter_map(|(n, _, _)| n.reminder_stats())
        .map(|s| s.delivered)
        .sum();
    assert!(delivered >= 1, "the remaining nodes delivered firings");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_racing_a_firing_never_applies_it_twice_and_an_early_cancel_always_wins() {
    let server = NatsServer::start().await.unwrap();
    let name = cluster_name();
    let store = reminders(server.connect().await.unwrap(), 1).await;
    let (node, accounts, events) = bank::join(&server, &name, "a").await;
    node.deliver_reminders(store.clone()).unwrap();
    until("one owner", || served(&node, 1)).await;

    let reminders = Reminders::<Account>::new(store.clone());
    // Far enough ahead for 200 sets and 100 cancels on a busy machine.
    let due = SystemTime::now() + Duration::from_secs(6);
    for i in 0..200 {
        reminders
            .remind(
                &format!("acct-{i}"),
                "top-up",
                When::At(due),
                &Command::Deposit(1),
            )
            .await
            .unwrap();
    }
    // The first half cancelled well before due; the rest at the moment they fall due.
    for i in 0..100 {
        assert!(
            reminders
                .cancel(&format!("acct-{i}"), "top-up")
                .await
                .unwrap()
        );
    }
    // From 100 ms before they fall due: some cancels win, some firings do.
    let race = due - Duration::from_millis(100);
    tokio::time::sleep(race.duration_since(SystemTime::now()).unwrap_or_default()).await;
    for i in 100..200 {
        reminders
            .cancel(&format!("acct-{i}"), "top-up")
            .await
            .unwrap();
    }
    until_all_fired(
        server.connect().await.unwrap(),
        store.stream_name(),
        Duration::from_secs(30),
    )
    .await;
    // A firing leaves the stream when it is settled, after its command was applied.
    let ids = (0..200).map(|i| format!("acct-{i}"));
    let (_, states) = bank::audit(events.as_ref(), ids).await;
    for i in 0..100 {
        assert_eq!(
            states[&format!("acct-{i}")].balance,
            0,
            "cancelled early, yet fired"
        );
    }
    for i in 100..200 {
        let state = &states[&format!("acct-{i}")];
        assert!(
            state.operations <= 1,
            "acct-{i}: a firing applied twice: {state:?}"
        );
    }
    let raced: i64 = (100..200)
        .map(|i| states[&format!("acct-{i}")].balance)
        .sum();
    assert!((0..=100).contains(&raced));
    println!("cancel raced 100 firings: {raced} fired first");
    drop(accounts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_reminders_fire_once_with_a_node_and_a_nats_server_killed_while_due() {
    let mut servers = NatsCluster::start(3).await.unwrap();
    let name = cluster_name();
    let urls = servers.urls();
    let mut children = Vec::new();
    for id in ["a", "b", "c"] {
        let spec = format!("{urls}|{name}|{id}|3");
        children.push(
            ChildNode::spawn_env("child_reminder_node", "AETHER_REMINDER_CHILD", spec, id).await,
        );
    }
    let client = servers.connect().await.unwrap();
    let store = reminders(client.clone(), 3).await;
    let count = 10_000;
    let first = SystemTime::now() + Duration::from_secs(8);
    let started = Instant::now();
    let expected = set_many(store.clone(), count, first, Duration::from_secs(12)).await;
    println!("set {count} reminders in {:?}", started.elapsed());

    // A third of the way in: node "b" dies; two thirds: a NATS server (the stream leader) dies.
    let until_due = first.duration_since(SystemTime::now()).unwrap_or_default();
    tokio::time::sleep(until_due + Duration::from_secs(4)).await;
    children[1].kill9();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let leader = servers.stream_leader(store.stream_name()).await.unwrap();
    servers.node_mut(leader).kill().await.unwrap();
    println!("killed node b and NATS server {leader}");

    until_all_fired(
        client.clone(),
        store.stream_name(),
        Duration::from_secs(180),
    )
    .await;
    println!(
        "all fired {:?} after the first was due",
        SystemTime::now().duration_since(first).unwrap_or_default()
    );
    let events = bank::store(client, 3).await;
    audit_once(events.as_ref(), &expected).await;
}

/// Whether any of `nodes` holds `account` in memory.
fn active_on(nodes: &[bank::Bank], account: &str) -> Option<String> {
    nodes
        .iter()
        .find(|(_, accounts, _)| accounts.runtime().active_vms().iter().any(|a| a == account))
        .map(|(node, _, _)| node.node_id().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_always_on_actor_runs_without_calls_and_its_new_owner_activates_it_after_a_crash() {
    let server = NatsServer::start().await.unwrap();
    let name = cluster_name();
    let mut nodes = Vec::new();
    for id in ["a", "b", "c"] {
        nodes.push(bank::join(&server, &name, id).await);
    }
    until("three owners", || served(&nodes[0].0, 3)).await;
    let on_c = (0..10_000)
        .map(|i| format!("acct-{i}"))
        .find(|a| nodes[0].1.node_for(a).as_deref() == Some("c"))
        .unwrap();
    // Marked from node "a"; activated by its owner "c", with no call.
    nodes[0].1.remember(&on_c).await.unwrap();
    until("the marked actor active on its owner", || {
        active_on(&nodes, &on_c).as_deref() == Some("c")
    })
    .await;
    // Passivated (as for idleness): back within the keeper's interval.
    assert!(nodes[2].1.runtime().stop_vm(&on_c).await);
    let stopped = Instant::now();
    until("the actor active again", || {
        active_on(&nodes, &on_c).is_some()
    })
    .await;
    assert!(stopped.elapsed() <= KEEP_INTERVAL + Duration::from_secs(3));

    // Node "c" crashes (dropped without leaving): the new owner activates the actor once the
    // failure timeout has passed and the map moved the shard.
    let (c, c_accounts, _) = nodes.pop().unwrap();
    let crashed = Instant::now();
    drop(c_accounts);
    drop(c);
    until("the actor active on a new owner", || {
        matches!(active_on(&nodes, &on_c).as_deref(), Some("a" | "b"))
    })
    .await;
    let took = crashed.elapsed();
    println!(
        "always-on actor active again {took:?} after its owner crashed (failure timeout {FAILURE_TIMEOUT:?})"
    );
    // Within the failure timeout and a second here (1.9 s measured); the bound leaves room for
    // a loaded machine.
    assert!(
        took <= FAILURE_TIMEOUT + Duration::from_secs(4),
        "{took:?} after the crash"
    );

    // Forgotten: no longer brought back. A keeper pass that read the mark before it was
    // removed may still activate it once: passivate it after such a pass could have ended,
    // then see that no later pass brings it back.
    nodes[0].1.forget(&on_c).await.unwrap();
    tokio::time::sleep(KEEP_INTERVAL + Duration::from_secs(1)).await;
    for (_, accounts, _) in &nodes {
        accounts.runtime().stop_vm(&on_c).await;
    }
    tokio::time::sleep(KEEP_INTERVAL + Duration::from_secs(1)).await;
    assert_eq!(active_on(&nodes, &on_c), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_actor_of_an_always_on_type_is_kept_active_after_its_first_call() {
    let server = NatsServer::start().await.unwrap();
    let name = cluster_name();
    let mut nodes = Vec::new();
    for id in ["a", "b"] {
        let client = server.connect().await.unwrap();
        let store = bank::store(client.clone(), 1).await;
        let node = aether_cluster::ClusterNode::new(client, bank::routing(fast_config(&name, id)))
            .unwrap();
        let accounts = node
            .register_always_on(aether_runtime::Runtime::<Account>::builder(store.clone()).build())
            .unwrap();
        node.start().await.unwrap();
        nodes.push((node, accounts, store));
    }
    until("two owners", || served(&nodes[0].0, 2)).await;
    // One call activates the actor; from then on its owner keeps it in memory.
    nodes[0]
        .1
        .ask("acct-typed", Command::Deposit(1))
        .await
        .unwrap();
    let owner = nodes[0].1.node_for("acct-typed").unwrap();
    let on = |id: &str| {
        nodes
            .iter()
            .position(|(n, _, _)| n.node_id() == id)
            .unwrap()
    };
    // The keeper marks it within a pass; then passivated, it comes back.
    let kv = async_nats::jetstream::new(server.connect().await.unwrap())
        .get_key_value(aether_cluster::bucket_name(&name))
        .await
        .unwrap();
    let deadline = Instant::now() + KEEP_INTERVAL + Duration::from_secs(2);
    while kv
        .get("remember.account.acct-typed")
        .await
        .unwrap()
        .is_none()
    {
        assert!(Instant::now() < deadline, "not marked within a keeper pass");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(nodes[on(&owner)].1.runtime().stop_vm("acct-typed").await);
    until("the actor active again without a call", || {
        active_on(&nodes, "acct-typed").is_some()
    })
    .await;
}
