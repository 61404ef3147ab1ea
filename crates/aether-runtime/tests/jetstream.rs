//! The runtime on a real JetStream store (a nats-server started by the test kit).

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use aether_core::{EventStore, SnapshotStore};
use aether_runtime::{Actor, RetryPolicy, Runtime, SnapshotPolicy};
use aether_store_jetstream::JetStreamEventStore;
use aether_testkit::nats::NatsServer;
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Tally {
    total: u64,
    adds: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum TallyEvent {
    Added(u64),
}

#[derive(Debug, thiserror::Error)]
#[error("zero is not an amount")]
struct Zero;

impl Actor for Tally {
    const TYPE: &'static str = "tally";
    type Command = u64;
    type Event = TallyEvent;
    type Error = Zero;

    fn handle(&self, n: &u64) -> Result<Vec<TallyEvent>, Zero> {
        if *n == 0 {
            return Err(Zero);
        }
        Ok(vec![TallyEvent::Added(*n)])
    }

    fn apply(&mut self, TallyEvent::Added(n): &TallyEvent) {
        self.total += n;
        self.adds += 1;
    }
}

async fn store(server: &NatsServer) -> Arc<JetStreamEventStore> {
    Arc::new(
        JetStreamEventStore::new(server.connect().await.unwrap(), "runtime")
            .await
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actors_persist_snapshot_and_come_back_on_jetstream() {
    let server = NatsServer::start().await.unwrap();
    let store = store(&server).await;
    let runtime = Runtime::<Tally>::builder(store.clone())
        .snapshots(store.clone())
        .snapshot_policy(SnapshotPolicy::every(10).on_passivation(false))
        .build();
    let actor = runtime.actor("t-1");
    for n in 1..=25 {
        actor.ask(n).await.unwrap();
    }
    assert!(actor.ask(0).await.unwrap_err().is_rejected());
    assert_eq!(store.get_latest_version("t-1").await.unwrap(), 25);
    assert_eq!(
        store
            .get_latest_snapshot("t-1")
            .await
            .unwrap()
            .unwrap()
            .version,
        20
    );
    assert!(runtime.stop_vm("t-1").await);
    let replayed_before = runtime.stats().replayed;
    let (state, version) = runtime.capture_state("t-1").await.unwrap();
    assert_eq!((state.total, state.adds, version), (325, 25, 25));
    assert_eq!(
        runtime.stats().replayed - replayed_before,
        5,
        "snapshot at 20 + 5 events"
    );
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runtimes_on_two_connections_lose_no_update() {
    let server = NatsServer::start().await.unwrap();
    let retry = RetryPolicy::default()
        .max_attempts(100)
        .backoff(Duration::from_micros(200), Duration::from_millis(5));
    let one = Runtime::<Tally>::builder(store(&server).await)
        .retry(retry)
        .build();
    let two = Runtime::<Tally>::builder(store(&server).await)
        .retry(retry)
        .build();
    let tasks: Vec<_> = [one.clone(), two.clone()]
        .into_iter()
        .map(|runtime| {
            tokio::spawn(async move {
                let actor = runtime.actor("contended");
                for _ in 0..40 {
                    actor.ask(1).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let check = store(&server).await;
    assert_eq!(check.get_latest_version("contended").await.unwrap(), 80);
    let conflicts = one.stats().conflicts + two.stats().conflicts;
    assert!(conflicts > 0, "the two writers met");
    one.shutdown().await;
    two.shutdown().await;
}

/// The sequence: a long history written by one process; a restarted process activates
/// the actor only to read it (`capture_state`) and passivates it (a snapshot); from then on
/// every activation reads only what follows that snapshot, and the counts say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_a_read_then_passivate_leaves_activation_constant() {
    const HISTORY: u64 = 100_000;
    let server = NatsServer::start().await.unwrap();
    let writer = store(&server).await;
    let events = |from: u64, to: u64| {
        (from..=to)
            .map(|v| aether_core::Event::new("read-mostly", "Added", v, &TallyEvent::Added(1)))
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    };
    let mut v = 1;
    while v <= HISTORY {
        let end = (v + 999).min(HISTORY);
        writer.save_events(events(v, end)).await.unwrap();
        v = end + 1;
    }
    let policy = SnapshotPolicy::default().min_events(1);
    // The restarted process: no snapshot yet, so the first activation reads everything once.
    let restarted = store(&server).await;
    let runtime = Runtime::<Tally>::builder(restarted.clone())
        .snapshots(restarted.clone())
        .snapshot_policy(policy)
        .build();
    let (state, version) = runtime.capture_state("read-mostly").await.unwrap();
    assert_eq!((state.total, version), (HISTORY, HISTORY));
    assert_eq!(runtime.stats().replayed, HISTORY);
    assert_eq!(restarted.read_stats().records_read, HISTORY);
    assert!(runtime.stop_vm("read-mostly").await);
    assert_eq!(runtime.stats().snapshots, 1);
    // Activations after it, in this process and in a new one, read nothing but the snapshot.
    let mut expected = HISTORY;
    for fresh in [false, true] {
        let store = if fresh {
            store(&server).await
        } else {
            restarted.clone()
        };
        let runtime = Runtime::<Tally>::builder(store.clone())
            .snapshots(store.clone())
            .snapshot_policy(policy)
            .build();
        let before = store.read_stats();
        let (state, version) = runtime.capture_state("read-mostly").await.unwrap();
        assert_eq!((state.total, version), (expected, expected));
        let after = store.read_stats();
        assert_eq!(runtime.stats().replayed, 0, "fresh store: {fresh}");
        assert_eq!(
            after.records_read, before.records_read,
            "fresh store: {fresh}"
        );
        assert_eq!(after.position_lookups, before.position_lookups);
        // One more event by another writer: the next activation reads exactly that one.
        assert!(runtime.stop_vm("read-mostly").await);
        let next = version + 1;
        writer.save_events(events(next, next)).await.unwrap();
        let before = store.read_stats();
        let (_, version) = runtime.capture_state("read-mostly").await.unwrap();
        assert_eq!(version, next);
        expected = next;
        assert_eq!(runtime.stats().replayed, 1);
        assert_eq!(store.read_stats().records_read - before.records_read, 1);
        assert!(runtime.stop_vm("read-mostly").await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activation_waits_out_a_server_restart_instead_of_failing_its_callers() {
    let mut server = NatsServer::start().await.unwrap();
    let client = server.connect().await.unwrap();
    let store = Arc::new(
        JetStreamEventStore::with_config(
            client,
            "outage",
            aether_store_jetstream::JetStreamConfig::default()
                .request_timeout(Duration::from_millis(500)),
        )
        .await
        .unwrap(),
    );
    let runtime = Arc::new(
        Runtime::<Tally>::builder(store.clone())
            .snapshots(store.clone())
            .build(),
    );
    runtime.ask("before", 1).await.unwrap();
    server.kill().await.unwrap();
    // A never-seen actor is activated while the server is down: its reads fail (timed out,
    // nobody answers), which clears by itself, so the activation tries again.
    let asked = {
        let runtime = runtime.clone();
        tokio::spawn(async move { runtime.ask("during", 5).await })
    };
    // Restarted once the activation has failed at least once (polled, bounded).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while runtime.stats().retries == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the activation never retried"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.restart().await.unwrap();
    let applied = asked
        .await
        .unwrap()
        .expect("the caller sees the command applied, not the outage");
    assert_eq!(applied.version, 1);
    assert_eq!(store.get_latest_version("during").await.unwrap(), 1);
    assert!(runtime.stats().retries >= 1);
}
