//! The membership watch under overload: many managers in one process on one server, heartbeating
//! fast, while their watches' consumers are deleted again and again through the JetStream API,
//! so that every manager reloads the bucket, all at once, while every liveness key is being
//! rewritten.
//! No member that runs the whole time may be reported failed (or left); a killed one and a
//! leaving one still are, and their watches' consumers leave the server within seconds.
//!
//! Ground truth for "it expired": the test's own consumer on the liveness keys, which sees every
//! expiry marker the server writes.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aether_cluster::{ClusterConfig, ClusterEvent, ClusterManager, bucket_name};
use aether_testkit::nats::NatsServer;
use async_nats::jetstream::{self, consumer};
use futures::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Managers in the process.
const MEMBERS: usize = 60;
/// Times every watch consumer is deleted (each forces every manager to reload).
const ROUNDS: usize = 5;
const HEARTBEAT: Duration = Duration::from_millis(100);
/// Long beside the heartbeat: a running member's liveness key must not expire, even on a loaded
/// machine (checked against the expiry markers).
const FAILURE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound for each wait of the test.
const PATIENCE: Duration = Duration::from_secs(20);
/// The test's own consumer, left alone by the rounds.
const MARKERS: &str = "overload test: expiry markers";

fn config(cluster: &str, id: &str) -> ClusterConfig {
    ClusterConfig::new(cluster)
        .node_id(id)
        .shard_count(64)
        .heartbeat_interval(HEARTBEAT)
        .failure_timeout(FAILURE_TIMEOUT)
        .lease_ttl(Duration::from_secs(3))
        .rebalance_delay(Duration::from_millis(200))
}

fn id(i: usize) -> String {
    format!("m{i:03}")
}

/// What the managers reported, from their event streams.
#[derive(Default)]
struct Reports {
    /// Each observer's members, as its events tell.
    members: BTreeMap<String, BTreeSet<String>>,
    /// (observer, member) for every `MemberFailed`.
    failed: Vec<(String, String)>,
    /// (observer, member) for every `MemberLeft`.
    left: Vec<(String, String)>,
    lagged: u64,
}

impl Reports {
    fn note(&mut self, observer: String, event: ClusterEvent) {
        let members = self.members.entry(observer.clone()).or_default();
        match event {
            ClusterEvent::MemberJoined(r) => {
                members.insert(r.id);
            }
            ClusterEvent::MemberFailed { node_id } => {
                members.remove(&node_id);
                self.failed.push((observer, node_id));
            }
            ClusterEvent::MemberLeft { node_id } => {
                members.remove(&node_id);
                self.left.push((observer, node_id));
            }
            ClusterEvent::Lagged { missed } => self.lagged += missed,
            _ => {}
        }
    }

    /// Whether every one of `observers` sees exactly `expected`.
    fn all_see(&self, observers: &[String], expected: &BTreeSet<String>) -> bool {
        observers
            .iter()
            .all(|o| self.members.get(o).is_some_and(|m| m == expected))
    }
}

/// Takes events until `done` holds; panics after [`PATIENCE`].
async fn until(
    what: &str,
    events: &mut mpsc::UnboundedReceiver<(String, ClusterEvent)>,
    reports: &mut Reports,
    done: impl Fn(&Reports) -> bool,
) {
    let deadline = Instant::now() + PATIENCE;
    while !done(reports) {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some((observer, event))) => reports.note(observer, event),
            Ok(None) => panic!("event streams ended waiting for {what}"),
            Err(_) => panic!("no {what} within {PATIENCE:?}"),
        }
    }
}

/// Takes the events already there.
fn drain(events: &mut mpsc::UnboundedReceiver<(String, ClusterEvent)>, reports: &mut Reports) {
    while let Ok((observer, event)) = events.try_recv() {
        reports.note(observer, event);
    }
}

/// The names of the managers' watch consumers on the bucket's stream (all but the test's).
async fn watch_consumers(stream: &jetstream::stream::Stream) -> BTreeSet<String> {
    stream
        .consumers()
        .try_filter(|c| std::future::ready(c.config.description.as_deref() != Some(MARKERS)))
        .map_ok(|c| c.name)
        .try_collect()
        .await
        .expect("listing consumers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_never_report_a_live_member_failed() {
    let started = Instant::now();
    let nats = NatsServer::start().await.expect("nats server");
    let name = common::cluster_name();
    let (tx, mut events) = mpsc::unbounded_channel();
    let mut reports = Reports::default();
    let mut managers = Vec::new();
    for i in 0..MEMBERS {
        let manager = ClusterManager::new(nats.connect().await.unwrap(), config(&name, &id(i)))
            .expect("valid config");
        let mut stream = manager.watch();
        let tx = tx.clone();
        let observer = id(i);
        tokio::spawn(async move {
            while let Some(event) = stream.next().await {
                if tx.send((observer.clone(), event)).is_err() {
                    return;
                }
            }
        });
        manager.start().await.expect("manager starts");
        managers.push(manager);
    }
    let everyone: BTreeSet<String> = (0..MEMBERS).map(id).collect();
    let observers: Vec<String> = everyone.iter().cloned().collect();
    until(
        "full membership everywhere",
        &mut events,
        &mut reports,
        |r| r.all_see(&observers, &everyone),
    )
    .await;
    println!(
        "{MEMBERS} managers joined and see each other after {:?}",
        started.elapsed()
    );

    // Ground truth: every expiry marker (`MaxAge`) the server writes on a liveness key.
    let js = jetstream::new(nats.connect().await.unwrap());
    let stream = js
        .get_stream(format!("KV_{}", bucket_name(&name)))
        .await
        .unwrap();
    let markers = stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: js.client().new_inbox(),
            description: Some(MARKERS.to_owned()),
            filter_subject: format!("$KV.{}.alive.>", bucket_name(&name)),
            deliver_policy: consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut markers = markers.messages().await.unwrap();
    let (expired_tx, mut expired_rx) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Some(Ok(message)) = markers.next().await {
            let expired = message
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Marker-Reason"))
                .is_some_and(|r| r.as_str() == "MaxAge");
            if expired {
                let key = message.subject.rsplit_once(".alive.").unwrap().1;
                let _ = expired_tx.send(key.to_owned());
            }
        }
    });

    // The overload: every watch consumer deleted, then again once every manager has a new one.
    let mut deleted = 0;
    for round in 1..=ROUNDS {
        let round_started = Instant::now();
        let before = watch_consumers(&stream).await;
        for name in &before {
            // Gone already (a manager reloading): fine.
            if stream.delete_consumer(name).await.is_ok() {
                deleted += 1;
            }
        }
        // No event says "reloaded": poll the server until every manager watches again.
        let deadline = Instant::now() + PATIENCE;
        loop {
            let now = watch_consumers(&stream).await;
            if now.len() >= MEMBERS && now.is_disjoint(&before) {
                println!(
                    "round {round}: every manager reloaded after {:?}",
                    round_started.elapsed()
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: only {} new watches within {PATIENCE:?}",
                now.difference(&before).count()
            );
            drain(&mut events, &mut reports);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    until(
        "full membership after the reloads",
        &mut events,
        &mut reports,
        |r| r.all_see(&observers, &everyone),
    )
    .await;
    drain(&mut events, &mut reports);
    let mut expired = BTreeSet::new();
    while let Ok(key) = expired_rx.try_recv() {
        expired.insert(key);
    }
    let false_failures: Vec<&(String, String)> = reports
        .failed
        .iter()
        .filter(|(_, member)| !expired.contains(member))
        .collect();
    let named: BTreeSet<&String> = false_failures.iter().map(|(_, m)| m).collect();
    println!(
        "{ROUNDS} rounds, {deleted} watch consumers deleted (forced reloads): {} MemberFailed \
         naming {} live members, {} MemberLeft; records that really expired: {expired:?}; \
         lagged events: {}; {:?} so far",
        false_failures.len(),
        named.len(),
        reports.left.len(),
        reports.lagged,
        started.elapsed()
    );
    assert_eq!(
        reports.lagged, 0,
        "an event stream lagged: the counts are incomplete"
    );
    assert!(
        false_failures.is_empty(),
        "live members reported failed: {false_failures:?}"
    );
    assert!(
        reports.left.is_empty(),
        "members reported left: {:?}",
        reports.left
    );

    // A real failure and a real leave are still reported, by everyone else.
    let leaving = managers.remove(1);
    let killed = managers.remove(0);
    let (killed_id, leaving_id) = (killed.node_id().to_owned(), leaving.node_id().to_owned());
    drop(killed); // stops its tasks without deleting its record: it expires
    leaving.leave().await.expect("leaves");
    let gone_at = Instant::now();
    // The two stopped watches' consumers leave the server within seconds, not at the 30 s
    // inactive threshold of an ordered consumer.
    let deadline = gone_at + Duration::from_secs(10);
    // One watch per member, and the leader's of the liveness keys.
    let remaining = MEMBERS - 2 + 1;
    let mut now = watch_consumers(&stream).await.len();
    while now > remaining {
        assert!(
            Instant::now() < deadline,
            "the stopped members' watch consumers are still there {:?} after the stop: {now} \
             consumers for {} members and the leader's liveness watch",
            gone_at.elapsed(),
            MEMBERS - 2
        );
        drain(&mut events, &mut reports);
        tokio::time::sleep(Duration::from_millis(100)).await;
        now = watch_consumers(&stream).await.len();
    }
    println!(
        "the stopped members' watch consumers left the server {:?} after the stop",
        gone_at.elapsed()
    );
    let rest: BTreeSet<String> = everyone
        .iter()
        .filter(|m| **m != killed_id && **m != leaving_id)
        .cloned()
        .collect();
    let watchers: Vec<String> = rest.iter().cloned().collect();
    until(
        "the kill and the leave reported by every other member",
        &mut events,
        &mut reports,
        |r| {
            watchers.iter().all(|w| {
                r.failed.contains(&(w.clone(), killed_id.clone()))
                    && r.left.contains(&(w.clone(), leaving_id.clone()))
            }) && r.all_see(&watchers, &rest)
        },
    )
    .await;
    println!(
        "kill and leave reported everywhere {:?} after",
        gone_at.elapsed()
    );
    assert!(
        reports
            .failed
            .iter()
            .all(|(_, m)| *m == killed_id || expired.contains(m)),
        "only the killed member is reported failed: {:?}",
        reports.failed
    );
    assert!(
        reports.left.iter().all(|(_, m)| *m == leaving_id),
        "only the leaving member is reported left: {:?}",
        reports.left
    );

    println!("test took {:?}", started.elapsed());
}
