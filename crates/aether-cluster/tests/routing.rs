//! Location-transparent actors on real nats-servers: calls from any node reach the owner of the
//! actor's shard and are applied once, through joins, graceful leaves, kill -9 and SIGSTOP of
//! nodes. Nodes that are killed or paused run as child processes. Each command carries an id;
//! the audit counts stored events per id (exactly one event per acknowledged command) and folds
//! every actor's events.
//!
//! The seed's migration acceptance criteria have one test each in `tests/seed_migration.rs`.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aether_cluster::{ClusterActors, ClusterNode, MigrationStatus};
use aether_testkit::nats::{NatsCluster, NatsServer};
use common::bank::{Account, Command, audit, bank_node, routing};
use common::wire::status_and_reason;
use common::*;
use futures::StreamExt;
use tokio::time::Instant;

const SETTLE: Duration = Duration::from_secs(30);

/// Not a test: the body of a child node hosting the bank actor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a bank node run as a child process by the multi-process tests"]
async fn child_bank_node() {
    run_bank_child().await;
}

type Bank = (
    ClusterNode,
    ClusterActors<Account>,
    Arc<aether_store_jetstream::JetStreamEventStore>,
);

/// Waits until every node's map is owned by exactly `owners` (same epoch everywhere) and every
/// node serves all of its shards.
async fn settled(nodes: &[&ClusterNode], owners: &[&str]) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let maps: Vec<_> = nodes.iter().map(|n| n.manager().shard_map()).collect();
        let same = maps.windows(2).all(|w| match (&w[0], &w[1]) {
            (Some(a), Some(b)) => a.epoch() == b.epoch(),
            _ => false,
        });
        let ok = same
            && nodes.iter().all(|n| {
                map_owned_by(n.manager(), owners)
                    && n.manager().shards_owned().len() == n.shards_in_use()
                    && n.migrations().iter().all(|m| {
                        !matches!(
                            m.status,
                            MigrationStatus::Pending | MigrationStatus::InProgress
                        )
                    })
            });
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no settled map over {owners:?} within {SETTLE:?}: {:?}",
            nodes
                .iter()
                .map(|n| (
                    n.node_id().to_owned(),
                    n.manager().shard_map().map(|m| m.epoch()),
                    n.shards_in_use()
                ))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Nodes `ids` on `server`, each hosting the bank actor, settled on one map.
async fn bank_nodes(server: &NatsServer, name: &str, ids: &[&str]) -> Vec<Bank> {
    let mut nodes = Vec::new();
    for id in ids {
        let client = server.connect().await.unwrap();
        nodes.push(bank_node(client, routing(fast_config(name, id)), 1).await);
    }
    settled(&nodes.iter().map(|n| &n.0).collect::<Vec<_>>(), ids).await;
    nodes
}

/// Stops the load and waits for its callers.
async fn finish(stop: &AtomicBool, tasks: Vec<tokio::task::JoinHandle<()>>) {
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
}

/// Deposits of 1, each with its own command id, from `callers` until `stop`; returns the
/// acknowledged ids and every error.
#[derive(Default)]
struct Load {
    acked: Mutex<Vec<(String, String)>>,
    errors: Mutex<Vec<String>>,
    slowest: Mutex<Duration>,
}

fn run_load(
    callers: Vec<(String, ClusterActors<Account>)>,
    actors: usize,
    stop: Arc<AtomicBool>,
) -> (Arc<Load>, Vec<tokio::task::JoinHandle<()>>) {
    let load = Arc::new(Load::default());
    let mut tasks = Vec::new();
    for (name, accounts) in callers {
        for lane in 0..4 {
            let (load, stop, accounts, name) =
                (load.clone(), stop.clone(), accounts.clone(), name.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let actor = format!("acct-{}", (n * 7 + lane * 13) % actors);
                    let id = format!("{name}-{lane}-{n}");
                    let t = Instant::now();
                    match accounts
                        .ask_with_id(&actor, Command::Deposit(1), id.clone())
                        .await
                    {
                        Ok(_) => load.acked.lock().unwrap().push((id, actor)),
                        Err(e) => load.errors.lock().unwrap().push(format!("{actor}: {e}")),
                    }
                    let took = t.elapsed();
                    let mut slowest = load.slowest.lock().unwrap();
                    *slowest = (*slowest).max(took);
                    n += 1;
                }
            }));
        }
    }
    (load, tasks)
}

/// Every acknowledged command is stored exactly once, nothing else is stored, and each actor's
/// balance is the number of deposits acknowledged for it.
async fn check_exactly_once(store: &dyn aether_core::EventStore, load: &Load, actors: usize) {
    let acked = load.acked.lock().unwrap().clone();
    let names: Vec<String> = (0..actors).map(|i| format!("acct-{i}")).collect();
    let (causes, states) = audit(store, names).await;
    let twice: Vec<_> = causes.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "commands applied twice: {twice:?}");
    let acked_ids: HashSet<&str> = acked.iter().map(|(id, _)| id.as_str()).collect();
    let missing: Vec<_> = acked_ids
        .iter()
        .filter(|id| !causes.contains_key(**id))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not stored: {missing:?}"
    );
    let mut per_actor: BTreeMap<&str, i64> = BTreeMap::new();
    for (_, actor) in &acked {
        *per_actor.entry(actor.as_str()).or_default() += 1;
    }
    for (actor, n) in per_actor {
        assert_eq!(
            states[actor].balance, n,
            "{actor}: balance vs acknowledged deposits"
        );
    }
    // Only commands that errored may be stored without an acknowledgement.
    let unacked = causes.len() - acked_ids.len();
    assert!(
        unacked <= load.errors.lock().unwrap().len(),
        "{unacked} stored commands nobody sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_route_every_call_to_its_owner_and_apply_it_once() {
    let nats = NatsCluster::start(3).await.unwrap();
    let name = cluster_name();
    let mut nodes: Vec<Bank> = Vec::new();
    for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
        let client = nats.node(i).connect().await.unwrap();
        nodes.push(bank_node(client, routing(fast_config(&name, id)), 3).await);
    }
    settled(
        &nodes.iter().map(|n| &n.0).collect::<Vec<_>>(),
        &["a", "b", "c"],
    )
    .await;

    const ACTORS: usize = 1000;
    let calls = nodes.iter().map(|(node, accounts, _)| {
        let (me, accounts) = (node.node_id().to_owned(), accounts.clone());
        async move {
            futures::stream::iter(0..ACTORS)
                .map(|i| {
                    let (me, accounts) = (me.clone(), accounts.clone());
                    async move {
                        let actor = format!("acct-{i}");
                        let applied = accounts
                            .ask_with_id(&actor, Command::Deposit(1), format!("{me}-{i}"))
                            .await
                            .unwrap_or_else(|e| panic!("{me} -> {actor}: {e}"));
                        assert_eq!(applied.events.len(), 1);
                    }
                })
                .buffer_unordered(32)
                .collect::<Vec<()>>()
                .await;
        }
    });
    futures::future::join_all(calls).await;

    // Each actor ran on its owner only.
    for (node, accounts, _) in &nodes {
        let active = accounts.runtime().active_vms();
        assert!(!active.is_empty());
        for id in active {
            assert_eq!(
                accounts.node_for(&id).as_deref(),
                Some(node.node_id()),
                "{id} ran off its owner"
            );
        }
    }
    let (causes, states) = audit(&*nodes[0].2, (0..ACTORS).map(|i| format!("acct-{i}"))).await;
    assert_eq!(causes.len(), 3 * ACTORS);
    assert!(causes.values().all(|n| *n == 1));
    assert!(states.values().all(|s| s.balance == 3));

    // A domain error crosses nodes typed; a remote actor answers with its full state.
    let (_, remote_caller, _) = nodes
        .iter()
        .find(|(n, a, _)| a.node_for("acct-0").as_deref() != Some(n.node_id()))
        .unwrap();
    let refused = remote_caller
        .ask("acct-0", Command::Withdraw(100))
        .await
        .unwrap_err();
    assert_eq!(refused.rejection().unwrap().balance, 3);
    for (node, _, _) in &nodes {
        node.leave().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_joins_under_load() {
    let server = NatsServer::start().await.unwrap();
    let name = cluster_name();
    let mut nodes = bank_nodes(&server, &name, &["a", "b", "c"]).await;
    const ACTORS: usize = 200;
    let stop = Arc::new(AtomicBool::new(false));
    let callers = nodes
        .iter()
        .map(|(n, a, _)| (n.node_id().to_owned(), a.clone()))
        .collect();
    let (load, tasks) = run_load(callers, ACTORS, stop.clone());
    wait_acked(&load, 300).await;
    let before = nodes[0].0.manager().shard_map().unwrap();

    nodes.push(
        bank_node(
            server.connect().await.unwrap(),
            routing(fast_config(&name, "d")),
            1,
        )
        .await,
    );
    settled(
        &nodes.iter().map(|n| &n.0).collect::<Vec<_>>(),
        &["a", "b", "c", "d"],
    )
    .await;
    let after = nodes[0].0.manager().shard_map().unwrap();
    load.more(300).await;
    finish(&stop, tasks).await;

    // About a quarter of the shards moved, all of them to the new node.
    let plan = before.plan_to(&after);
    assert!(
        (8..=28).contains(&plan.len()),
        "{} of 64 shards moved",
        plan.len()
    );
    assert!(plan.moves.iter().all(|m| m.to.as_deref() == Some("d")));
    // The new node recorded each move as done (handed over by a confirmed drain).
    let d = &nodes[3].0;
    let received: Vec<_> = d
        .migrations()
        .into_iter()
        .filter(|m| m.to.as_deref() == Some("d"))
        .collect();
    assert_eq!(received.len(), plan.len());
    assert!(
        received.iter().all(|m| m.status == MigrationStatus::Done),
        "{received:?}"
    );
    let errors = load.errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "callers saw errors: {errors:?}");
    check_exactly_once(&*nodes[0].2, &load, ACTORS).await;
    println!(
        "join under load: {} calls, {} shards moved, slowest call {:?}",
        load.acked.lock().unwrap().len(),
        plan.len(),
        *load.slowest.lock().unwrap()
    );
    for (node, _, _) in &nodes {
        node.leave().await.unwrap();
    }
}

impl Load {
    /// Waits for `n` more acknowledged calls.
    async fn more(&self, n: usize) {
        let now = self.acked.lock().unwrap().len();
        wait_acked(self, now + n).await;
    }

    fn assert_no_errors(&self, what: &str) {
        let errors = self.errors.lock().unwrap().clone();
        assert!(errors.is_empty(), "{what}: {errors:?}");
    }
}

async fn wait_acked(load: &Load, n: usize) {
    let deadline = Instant::now() + SETTLE;
    while load.acked.lock().unwrap().len() < n {
        let errors = load.errors.lock().unwrap().clone();
        assert!(errors.is_empty(), "callers saw errors: {errors:?}");
        assert!(
            Instant::now() < deadline,
            "fewer than {n} calls acknowledged within {SETTLE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_leave_under_load_returns_no_errors() {
    let server = NatsServer::start().await.unwrap();
    let name = cluster_name();
    let mut nodes = bank_nodes(&server, &name, &["a", "b", "c"]).await;
    const ACTORS: usize = 200;
    let stop = Arc::new(AtomicBool::new(false));
    // Load from a and b; c leaves.
    let callers = nodes[..2]
        .iter()
        .map(|(n, a, _)| (n.node_id().to_owned(), a.clone()))
        .collect();
    let (load, tasks) = run_load(callers, ACTORS, stop.clone());
    wait_acked(&load, 300).await;
    let leaver = nodes.pop().unwrap();
    let t = Instant::now();
    leaver.0.leave().await.unwrap();
    let took = t.elapsed();
    settled(&nodes.iter().map(|n| &n.0).collect::<Vec<_>>(), &["a", "b"]).await;
    load.more(300).await;
    finish(&stop, tasks).await;
    load.assert_no_errors("callers saw errors during a graceful leave");
    check_exactly_once(&*nodes[0].2, &load, ACTORS).await;
    let handed: Vec<_> = leaver
        .0
        .migrations()
        .into_iter()
        .filter(|m| m.from.as_deref() == Some("c"))
        .collect();
    assert!(
        !handed.is_empty() && handed.iter().all(|m| m.status == MigrationStatus::Done),
        "{handed:?}"
    );
    println!(
        "graceful leave under load: leave took {took:?}, {} calls, slowest {:?}",
        load.acked.lock().unwrap().len(),
        *load.slowest.lock().unwrap()
    );
    for (node, _, _) in &nodes {
        node.leave().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_s_actors_answer_from_another_node_with_every_acknowledged_effect() {
    let server = NatsServer::start().await.unwrap();
    let name = cluster_name();
    let a = bank_nodes(&server, &name, &["a"]).await.remove(0);
    let b = ChildNode::spawn_bank("child_bank_node", &server.url(), &name, "b").await;
    let c = ChildNode::spawn_bank("child_bank_node", &server.url(), &name, "c").await;
    let owners = ["a", "b", "c"];
    settled(&[&a.0], &owners).await;
    const ACTORS: usize = 200;
    let stop = Arc::new(AtomicBool::new(false));
    let (load, tasks) = run_load(vec![("a".into(), a.1.clone())], ACTORS, stop.clone());
    wait_acked(&load, 300).await;

    b.kill9();
    let killed = Instant::now();
    settled(&[&a.0], &["a", "c"]).await;
    let moved_after = killed.elapsed();
    load.more(300).await;
    finish(&stop, tasks).await;
    load.assert_no_errors("callers saw errors across a kill -9");
    check_exactly_once(&*a.2, &load, ACTORS).await;
    let slowest = *load.slowest.lock().unwrap();
    assert!(
        slowest < Duration::from_secs(30),
        "a call waited {slowest:?}"
    );
    println!("kill -9 under load: map without b after {moved_after:?}, slowest call {slowest:?}");
    drop(c);
    a.0.leave().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_stops_serving_when_resumed_and_nothing_is_applied_twice() {
    let server = NatsServer::start().await.unwrap();
    let name = cluster_name();
    let a = bank_nodes(&server, &name, &["a"]).await.remove(0);
    let b = ChildNode::spawn_bank("child_bank_node", &server.url(), &name, "b").await;
    settled(&[&a.0], &["a", "b"]).await;
    const ACTORS: usize = 100;
    let stop = Arc::new(AtomicBool::new(false));
    let (load, tasks) = run_load(vec![("a".into(), a.1.clone())], ACTORS, stop.clone());
    wait_acked(&load, 300).await;

    b.pause();
    // b's record expires; its shards move to a, which serves b's actors from the store.
    settled(&[&a.0], &["a"]).await;
    load.more(300).await;
    // Resumed, b answers the calls it had queued with a stale map and stale actors: the store
    // refuses its writes, it recognises copies of commands a already applied, and it gets its
    // shards back only through a new map and a handoff.
    b.resume();
    settled(&[&a.0], &["a", "b"]).await;
    load.more(300).await;
    finish(&stop, tasks).await;
    load.assert_no_errors("callers saw errors across a pause");
    check_exactly_once(&*a.2, &load, ACTORS).await;
    println!(
        "pause/resume under load: {} calls, slowest {:?}",
        load.acked.lock().unwrap().len(),
        *load.slowest.lock().unwrap()
    );
    a.0.leave().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfirmed_handoff_fails_over_to_serving_and_loses_nothing() {
    let server = NatsServer::start().await.unwrap();
    let name = cluster_name();
    // b's failure timeout is long: paused, it stays a member, so its shards move by a join
    // (not by a failure) and their handoff is never confirmed.
    let b = ChildNode::spawn_bank_with("child_bank_node", &server.url(), &name, "b", Some(60_000))
        .await;
    let a = bank_node(
        server.connect().await.unwrap(),
        routing(fast_config(&name, "a")),
        1,
    )
    .await;
    settled(&[&a.0], &["a", "b"]).await;
    for i in 0..50 {
        a.1.ask(&format!("acct-{i}"), Command::Deposit(10))
            .await
            .unwrap();
    }
    b.pause();
    let c = bank_node(
        server.connect().await.unwrap(),
        routing(fast_config(&name, "c")),
        1,
    )
    .await;
    // c gets some of b's shards and holds their calls for the handoff timeout, then serves.
    let from_b: Vec<String> = (0..50)
        .map(|i| format!("acct-{i}"))
        .filter(|id| a.1.node_for(id).as_deref() == Some("b"))
        .collect();
    let deadline = Instant::now() + SETTLE;
    let moved = loop {
        let moved: Vec<String> = from_b
            .iter()
            .filter(|id| c.1.node_for(id).as_deref() == Some("c"))
            .cloned()
            .collect();
        if !moved.is_empty() {
            break moved;
        }
        assert!(Instant::now() < deadline, "no actor of b moved to c");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let t = Instant::now();
    let applied = c.1.ask(&moved[0], Command::Deposit(1)).await.unwrap();
    assert_eq!(applied.version, 2, "the moved actor kept its state");
    let held = t.elapsed();
    assert!(
        held >= Duration::from_secs(2),
        "the call was held for the handoff: {held:?}"
    );
    let failed: Vec<_> =
        c.0.migrations()
            .into_iter()
            .filter(|m| m.status == MigrationStatus::Failed)
            .collect();
    assert!(!failed.is_empty(), "{:?}", c.0.migrations());
    assert!(
        failed
            .iter()
            .all(|m| m.from.as_deref() == Some("b") && m.reason.is_some())
    );
    b.resume();
    println!(
        "unconfirmed handoff: call held {held:?}, {} shard moves failed over",
        failed.len()
    );
    drop(b);
    c.0.leave().await.unwrap();
    a.0.leave().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_caller_written_from_the_doc_calls_actors_once() {
    let server = NatsServer::start().await.unwrap();
    let name = cluster_name();
    let nodes = bank_nodes(&server, &name, &["a", "b"]).await;
    // An id with a dot, a wildcard and non-ASCII: one subject token for the store, any bytes here.
    let actor = "konto-ü.*";
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/py_caller.py");
    let mut cmd = aether_testkit::python::command(script).unwrap_or_else(|e| panic!("{e}"));
    let out = cmd
        .arg(server.url())
        .arg(&name)
        .arg(actor)
        .arg("py-cmd-1")
        .output()
        .await
        .unwrap();
    let seen = python_result("py_caller.py", &out);
    assert_eq!(seen["first"]["status"], "ok", "{seen}");
    assert_eq!(seen["first"]["version"], 1);
    assert_eq!(
        seen["first"]["events"],
        serde_json::json!([{"Deposited": 5}])
    );
    assert_eq!(
        seen["first"]["owner"],
        nodes[0].1.node_for(actor).unwrap().as_str()
    );
    // The retry with the same id is answered from the stored event, not applied again.
    assert_eq!(seen["again"], seen["first"]);
    assert_eq!(seen["refused"]["status"], "rejected");
    assert_eq!(
        seen["refused"]["error"],
        serde_json::json!({"balance": 5, "asked": 1_000_000})
    );
    let (causes, states) = audit(&*nodes[0].2, [actor.to_owned()]).await;
    assert_eq!(causes.get("py-cmd-1"), Some(&1));
    assert_eq!(states[actor].balance, 5);
    for (node, _, _) in &nodes {
        node.leave().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_calls_get_a_clear_answer_and_change_nothing() {
    let server = NatsServer::start().await.unwrap();
    let name = cluster_name();
    let nodes = bank_nodes(&server, &name, &["a"]).await;
    let (_, accounts, store) = &nodes[0];
    accounts.ask("acct-1", Command::Deposit(7)).await.unwrap();
    let raw = server.connect().await.unwrap();
    let subject = format!("aether-cluster.{name}.call.a");
    let call = |t: &str, actor: &str, cmd: Vec<u8>, epoch: u64| {
        #[derive(serde::Serialize)]
        struct Call<'a> {
            #[serde(rename = "type")]
            t: &'a str,
            actor: &'a str,
            id: &'a str,
            epoch: u64,
            #[serde(with = "serde_bytes_compat")]
            cmd: Vec<u8>,
        }
        rmp_serde::to_vec_named(&Call {
            t,
            actor,
            id: "hostile-1",
            epoch,
            cmd,
        })
        .unwrap()
    };
    let deposit = rmp_serde::to_vec_named(&Command::Deposit(1)).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "garbage bytes",
            b"\xc1\xff not msgpack".to_vec(),
            "bad_request",
        ),
        ("empty body", Vec::new(), "bad_request"),
        (
            "unknown actor type",
            call("nope", "acct-1", deposit.clone(), 0),
            "bad_request",
        ),
        (
            "empty actor id",
            call("account", "", deposit.clone(), 0),
            "bad_request",
        ),
        (
            "a command of another type",
            call("account", "acct-1", b"\x92\x01\x02".to_vec(), 0),
            "bad_request",
        ),
        (
            "a huge epoch (held briefly, then served by the owner's map)",
            call("account", "acct-1", deposit.clone(), u64::MAX),
            "ok",
        ),
    ];
    for (what, body, want) in cases {
        let reply = raw.request(subject.clone(), body.into()).await.unwrap();
        let (status, reason) = status_and_reason(&reply.payload);
        assert_eq!(status, want, "{what}: {reason:?}");
        if want == "bad_request" {
            assert!(reason.is_some_and(|r| !r.is_empty()), "{what}");
        }
    }
    // Only the well-formed call was applied; the actor is intact.
    let (causes, states) = audit(&**store, ["acct-1".to_owned()]).await;
    assert_eq!(causes.get("hostile-1"), Some(&1));
    assert_eq!(states["acct-1"].balance, 8);
    nodes[0].0.leave().await.unwrap();
}

mod serde_bytes_compat {
    pub(super) fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_nobody_serves_fails_clearly_after_the_call_timeout() {
    let server = NatsServer::start().await.unwrap();
    let name = cluster_name();
    // b stays a member for a minute while paused: its shards are not moved.
    let b = ChildNode::spawn_bank_with("child_bank_node", &server.url(), &name, "b", Some(60_000))
        .await;
    let client = server.connect().await.unwrap();
    let config = routing(fast_config(&name, "a"))
        .call_timeout(Duration::from_millis(1500))
        .request_timeout(Duration::from_millis(300));
    let (a, accounts, _) = bank_node(client, config, 1).await;
    settled(&[&a], &["a", "b"]).await;
    let on_b = (0..100)
        .map(|i| format!("acct-{i}"))
        .find(|id| accounts.node_for(id).as_deref() == Some("b"))
        .unwrap();
    b.pause();
    let t = Instant::now();
    let err = accounts.ask(&on_b, Command::Deposit(1)).await.unwrap_err();
    let took = t.elapsed();
    assert!(
        matches!(&err, aether_cluster::CallError::Unavailable { reason, .. } if reason.contains("did not answer")),
        "{err}"
    );
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "{took:?}"
    );
    println!("unavailable after {took:?}: {err}");
    b.resume();
    a.leave().await.unwrap();
}
