//! Permission refusals reported promptly by the cluster: a nats-server with users whose subject
//! permissions forbid some of what a node needs. With a `PermissionWatch` installed on the
//! connection and given to the node (`ClusterConfig::permissions`), a refused join fails at once
//! with `ClusterError::PermissionDenied` naming the subject, a call whose request to the owner is
//! refused ends at once with `CallError::PermissionDenied` (not transient, never held until the
//! call timeout), and refused heartbeats and lease renewals after the join are logged, counted and
//! tried again at the usual pace (no spinning, no forced reconnect).

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aether_cluster::permissions::{Operation, PermissionWatch};
use aether_cluster::{CallError, ClusterError, ClusterEvent, ClusterManager, ClusterNode};
use aether_core::EventStore;
use aether_testkit::nats::NatsServer;
use common::bank::{Command, bank_node, routing};
use common::{Node, cluster_name, fast_config};

/// A refusal must be reported well within this (a refused request was a timeout before: 5 s
/// for a bucket write, the call timeout for a call).
const PROMPT: Duration = Duration::from_secs(2);

/// The server's name: in its config file too, so that it can reload it.
const NAME: &str = "cluster-permissions";

/// How long the nodes get to agree on a map.
const SETTLE: Duration = Duration::from_secs(30);

/// A user's block: everything, except publishing to `deny_publish` and subscribing to
/// `deny_subscribe`.
fn user(name: &str, deny_publish: &[String], deny_subscribe: &[String]) -> String {
    let list = |subjects: &[String]| {
        subjects
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        r#"    {{ user: {name}, password: {name}, permissions: {{
        publish: {{ allow: [">"], deny: [{}] }}
        subscribe: {{ allow: [">"], deny: [{}] }}
    }} }}
"#,
        list(deny_publish),
        list(deny_subscribe)
    )
}

fn write_config(path: &PathBuf, users: &[String]) {
    let conf = format!(
        "server_name: {NAME:?}\nauthorization {{\n  users = [\n    {{ user: operator, password: operator }}\n{}  ]\n}}\n",
        users.concat()
    );
    std::fs::write(path, conf).unwrap();
}

/// A server with `users` (and `operator`, who may do anything), and its config file.
async fn server(users: &[String]) -> (NatsServer, PathBuf) {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "cluster-permissions-{}.conf",
        uuid::Uuid::new_v4().simple()
    ));
    write_config(&path, users);
    let server = NatsServer::start_with(NAME, vec!["-c".into(), path.display().to_string()])
        .await
        .unwrap();
    (server, path)
}

/// A connection as `user` (password: the name) with a watch installed on it, and the count of
/// its (re)connections.
async fn connect(
    server: &NatsServer,
    user: &str,
) -> (async_nats::Client, PermissionWatch, Arc<AtomicU64>) {
    let watch = PermissionWatch::new();
    let connections = Arc::new(AtomicU64::new(0));
    let (observer, counted) = (watch.clone(), connections.clone());
    let client = async_nats::ConnectOptions::with_user_and_password(user.into(), user.into())
        .event_callback(move |event| {
            if matches!(event, async_nats::Event::Connected) {
                counted.fetch_add(1, Ordering::SeqCst);
            }
            observer.observe(&event);
            std::future::ready(())
        })
        .connect(server.url())
        .await
        .unwrap();
    (client, watch, connections)
}

/// Checks that `result` is a prompt `ClusterError::PermissionDenied` of `operation` on
/// `subject`.
fn join_denied(
    what: &str,
    started: Instant,
    result: Result<(), ClusterError>,
    operation: &str,
    subject: &str,
) {
    let took = started.elapsed();
    let err = result.expect_err(what);
    match &err {
        ClusterError::PermissionDenied {
            operation: op,
            subject: refused,
            ..
        } => {
            assert_eq!(*op, operation, "{what}: {err}");
            assert_eq!(refused, subject, "{what}: {err}");
        }
        other => panic!("{what}: expected a permission refusal, got {other:?}"),
    }
    assert!(err.is_permission_denied());
    let text = err.to_string();
    assert!(text.starts_with("permission denied while "), "{text}");
    assert!(text.contains(subject), "{text}");
    assert!(took < PROMPT, "{what} took {took:?}");
    eprintln!("{what}: refused in {took:?}: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_may_not_use_the_cluster_fails_to_start_at_once() {
    let cluster = cluster_name();
    let bucket = format!("$KV.aether-cluster-{cluster}");
    let (server, _conf) = server(&[
        user("readonly", &[format!("{bucket}.>")], &[]),
        user("nameless", &[format!("{bucket}.nodes.>")], &[]),
        user(
            "deaf",
            &[],
            &[format!("aether-cluster.{cluster}.call.deaf-1")],
        ),
    ])
    .await;

    // May read, not write, the cluster's bucket: the settings cannot be written.
    let (client, watch, _) = connect(&server, "readonly").await;
    let node = ClusterNode::new(
        client.clone(),
        fast_config(&cluster, "readonly-1").permissions(watch.clone()),
    )
    .unwrap();
    let started = Instant::now();
    let joined = node.start().await;
    join_denied(
        "a node joining without writing the bucket",
        started,
        joined,
        "publish",
        &format!("{bucket}.config"),
    );
    assert_eq!(watch.refusals(), 1);

    // The control plane alone, once the settings exist, as a user who may not write records.
    let (operator, ..) = connect(&server, "operator").await;
    let first = Node::start(operator, fast_config(&cluster, "operator-1")).await;
    let (client, watch, _) = connect(&server, "nameless").await;
    let manager = ClusterManager::new(
        client,
        fast_config(&cluster, "nameless-1").permissions(watch.clone()),
    )
    .unwrap();
    let started = Instant::now();
    let joined = manager.start().await;
    join_denied(
        "a manager joining without writing its record",
        started,
        joined,
        "publish",
        &format!("{bucket}.nodes.nameless-1"),
    );
    assert!(
        first.manager.members().iter().all(|m| m.id == "operator-1"),
        "{:?}",
        first.manager.members()
    );

    // May not subscribe to its own call subject: it could never be called.
    let (client, watch, _) = connect(&server, "deaf").await;
    let node =
        ClusterNode::new(client, fast_config(&cluster, "deaf-1").permissions(watch)).unwrap();
    let started = Instant::now();
    let joined = node.start().await;
    join_denied(
        "a node that may not hear its calls",
        started,
        joined,
        "subscribe",
        &format!("aether-cluster.{cluster}.call.deaf-1"),
    );
    // It left nothing behind (refused before joining, or it left again at once).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !first.manager.members().iter().all(|m| m.id == "operator-1") {
        assert!(
            Instant::now() < deadline,
            "the refused node stays a member: {:?}",
            first.manager.members()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.manager.leave().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_the_server_refuses_fails_at_once_and_is_not_transient() {
    let cluster = cluster_name();
    let call_b = format!("aether-cluster.{cluster}.call.node-b");
    let (server, _conf) = server(&[
        user("caller-a", std::slice::from_ref(&call_b), &[]),
        user("node-b", &[], &[]),
    ])
    .await;
    let (client_a, watch_a, _) = connect(&server, "caller-a").await;
    let (client_b, watch_b, _) = connect(&server, "node-b").await;
    let (node_a, accounts_a, store) = bank_node(
        client_a,
        routing(fast_config(&cluster, "node-a")).permissions(watch_a.clone()),
        1,
    )
    .await;
    let (node_b, accounts_b, _) = bank_node(
        client_b,
        routing(fast_config(&cluster, "node-b")).permissions(watch_b),
        1,
    )
    .await;
    let both = |node: &ClusterNode| {
        node.manager()
            .shard_map()
            .is_some_and(|m| m.counts().len() == 2)
    };
    let deadline = Instant::now() + SETTLE;
    while !(both(&node_a) && both(&node_b)) {
        assert!(
            Instant::now() < deadline,
            "no map with both nodes within {SETTLE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let owned_by = |owner: &str| {
        (0..10_000)
            .map(|i| format!("acct-{i}"))
            .find(|id| accounts_a.node_for(id).as_deref() == Some(owner))
            .unwrap()
    };
    let on_b = owned_by("node-b");
    let on_a = owned_by("node-a");

    let denied = |what: &str, started: Instant, err: CallError<_>| {
        let took = started.elapsed();
        match &err {
            CallError::PermissionDenied {
                actor_id,
                operation,
                subject,
            } => {
                assert_eq!(actor_id, &on_b, "{what}: {err}");
                assert_eq!(*operation, "publish", "{what}: {err}");
                assert_eq!(subject, &call_b, "{what}: {err}");
            }
            other => panic!("{what}: expected a permission refusal, got {other:?}"),
        }
        assert!(!err.is_transient(), "{what}: {err}");
        assert!(err.to_string().contains(&call_b), "{what}: {err}");
        assert!(took < PROMPT, "{what} took {took:?}");
        eprintln!("{what}: refused in {took:?}: {err}");
    };
    let started = Instant::now();
    let err = accounts_a
        .ask(&on_b, Command::Deposit(5))
        .await
        .expect_err("A may not call B");
    denied("ask", started, err);
    let started = Instant::now();
    let err = accounts_a
        .ask_with_id(&on_b, Command::Deposit(5), "key-1")
        .await
        .expect_err("A may not call B");
    denied("ask_with_id", started, err);
    let started = Instant::now();
    let err = accounts_a
        .tell(&on_b, Command::Deposit(5))
        .await
        .expect_err("A may not call B");
    denied("tell", started, err);
    assert!(
        watch_a
            .recently_refused(Operation::Publish, &call_b)
            .is_some()
    );

    // Nothing reached B; everything else works: A's own actors, and B calling A's.
    assert_eq!(store.get_latest_version(&on_b).await.unwrap(), 0);
    accounts_a.ask(&on_a, Command::Deposit(1)).await.unwrap();
    accounts_b.ask(&on_a, Command::Deposit(1)).await.unwrap();
    let applied = accounts_b.ask(&on_b, Command::Deposit(7)).await.unwrap();
    assert_eq!(applied.version, 1);

    node_b.leave().await.unwrap();
    node_a.leave().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_heartbeats_and_renewals_are_retried_at_their_pace_without_reconnecting() {
    let cluster = cluster_name();
    let bucket = format!("$KV.aether-cluster-{cluster}");
    let (server, conf) = server(&[user("node", &[], &[])]).await;
    let (client, watch, connections) = connect(&server, "node").await;
    let mut node = Node::start(
        client,
        fast_config(&cluster, "n1").permissions(watch.clone()),
    )
    .await;
    node.until("leadership", SETTLE, ClusterManager::is_leader)
        .await;
    let connected = connections.load(Ordering::SeqCst);

    // The operator takes the node's liveness key (what heartbeats write) and the lease away from
    // its user: a reload applies to the connections already open.
    let record = format!("{bucket}.alive.n1");
    let lease = format!("{bucket}.leader");
    write_config(
        &conf,
        &[user("node", &[record.clone(), lease.clone()], &[])],
    );
    let pid = rustix::process::Pid::from_raw(i32::try_from(server.process_id().unwrap()).unwrap())
        .unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();

    let stepped = node
        .event("stepping down", SETTLE, |e| {
            matches!(e, ClusterEvent::SteppedDown { .. })
        })
        .await;
    eprintln!("{stepped:?}");
    assert!(watch.recently_refused(Operation::Publish, &lease).is_some());
    // The beats go on being refused, at the heartbeat's pace.
    let before = watch.refusals();
    let window = Duration::from_secs(3);
    tokio::time::sleep(window).await;
    let refused = watch.refusals() - before;
    assert!(
        watch
            .recently_refused(Operation::Publish, &record)
            .is_some(),
        "the heartbeat was refused"
    );
    // Heartbeats every 300 ms (10 in 3 s) and, the lease lost, a bid for it every TTL / 3
    // (about 5): spinning would be thousands.
    eprintln!("{refused} refusals in {window:?}");
    assert!(
        (5..=40).contains(&refused),
        "{refused} refusals in {window:?}"
    );
    // A refusal is an answer: the link is fine, and the client was not made to reconnect.
    assert_eq!(connections.load(Ordering::SeqCst), connected);
    assert!(!node.manager.is_leader());
    drop(node);
}
