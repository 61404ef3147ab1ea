//! Command ids are remembered for a time (`CommandMemory`), not a count: a retry 20 s after the
//! first copy is recognised behind 20,000 other commands, the memory survives passivation (the
//! snapshot's ids up to its cap, and the ids of the events replayed after it, also through a
//! JetStream snapshot bucket), and ids of replayed events older than the horizon are kept only
//! within `min`.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aether_core::{ActorSnapshot, CommandRecord, Event, EventStore, SnapshotStore};
use aether_runtime::{Actor, CommandMemory, Runtime, SnapshotPolicy};
use aether_store_jetstream::JetStreamEventStore;
use aether_store_memory::InMemoryEventStore;
use aether_testkit::nats::NatsServer;
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Account {
    balance: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Moved {
    Deposited(i64),
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Actor for Account {
    const TYPE: &'static str = "account";
    type Command = i64;
    type Event = Moved;
    type Error = Never;

    fn handle(&self, amount: &i64) -> Result<Vec<Moved>, Never> {
        Ok(vec![Moved::Deposited(*amount)])
    }

    fn apply(&mut self, Moved::Deposited(n): &Moved) {
        self.balance += n;
    }
}

/// How many stored events of actor `id` name `cause` as their cause.
async fn caused_by(store: &InMemoryEventStore, id: &str, cause: &str) -> usize {
    store
        .get_events(id, 1)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.metadata().causation_id.as_deref() == Some(cause))
        .count()
}

/// 1,000 commands a second to one actor for 21 s; 20 s after the first was applied (some
/// 20,000 commands later, far past the 256 the actor used to remember), its id comes again
/// with another amount: it is answered from its stored event, not applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_20_s_and_20_000_commands_later_is_not_applied_again() {
    let store = Arc::new(InMemoryEventStore::new());
    let runtime = Runtime::<Account>::builder(store.clone()).build();
    let actor = runtime.actor("busy");

    let first = actor.ask_once(1, "c0").await.unwrap();
    let applied = Instant::now();
    let mut sent = 1u64;
    let mut retried = None;
    // 10 commands every 10 ms; ticks missed under load are caught up at once.
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while applied.elapsed() < Duration::from_secs(21) {
        tick.tick().await;
        for _ in 0..10 {
            actor.ask_once(1, format!("c{sent}")).await.unwrap();
            sent += 1;
        }
        if retried.is_none() && applied.elapsed() >= Duration::from_secs(20) {
            let before = runtime.capture_state("busy").await.unwrap();
            let again = actor.ask_once(1_000_000, "c0").await.unwrap();
            let after = runtime.capture_state("busy").await.unwrap();
            assert_eq!(again, first, "answered with the first outcome");
            assert_eq!(after, before, "the state is unchanged");
            retried = Some((applied.elapsed(), sent - 1));
        }
    }
    let (late, between) = retried.expect("the retry was sent");
    println!("retried {late:?} after the first copy, {between} commands in between");
    assert!(late >= Duration::from_secs(20));
    assert!(
        between >= 10_000,
        "about 1,000 commands a second: {between} in 20 s"
    );
    assert_eq!(runtime.stats().duplicates, 1);
    assert_eq!(caused_by(&store, "busy", "c0").await, 1);
    let (state, version) = runtime.capture_state("busy").await.unwrap();
    assert_eq!((state.balance, version), (sent as i64, sent));
    runtime.shutdown().await;
}

/// Passivated with 5,000 ids, the actor's snapshot carries the newest 4,096; events stored
/// after the snapshot (by another runtime) add theirs on the next activation. Both are
/// recognised after reactivation; the snapshot is within its cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_survives_passivation_through_the_snapshot_and_the_replay() {
    let store = Arc::new(InMemoryEventStore::new());
    let runtime = Runtime::<Account>::builder(store.clone())
        .snapshots(store.clone())
        .snapshot_policy(SnapshotPolicy::default().min_events(1))
        .build();
    let actor = runtime.actor("acct");
    let mut answers = Vec::new();
    for i in 0..5000 {
        answers.push(actor.ask_once(1, format!("c{i}")).await.unwrap());
    }
    assert!(runtime.stop_vm("acct").await);
    let snapshot = store.get_latest_snapshot("acct").await.unwrap().unwrap();
    assert_eq!(snapshot.version, 5000);
    assert_eq!(snapshot.commands.len(), aether_runtime::SNAPSHOT_COMMANDS);
    assert_eq!(snapshot.commands[0].id, "c904", "the newest, oldest first");
    assert!(snapshot.commands.iter().all(|c| c.at.is_some()));

    // Another writer appends after the snapshot.
    let other = Runtime::<Account>::builder(store.clone()).build();
    for i in 0..10 {
        other.ask_once("acct", 1, format!("d{i}")).await.unwrap();
    }
    other.shutdown().await;

    // Reactivated: the snapshot's ids and the replayed events' ids are known.
    let again = actor.ask_once(1_000, "c1000").await.unwrap();
    assert_eq!(again, answers[1000]);
    assert_eq!(
        runtime.stats().replayed,
        10,
        "only the events after the snapshot"
    );
    let d3 = actor.ask_once(1_000, "d3").await.unwrap();
    assert_eq!(d3.version, 5004);
    let newest = actor.ask_once(1_000, "c4999").await.unwrap();
    assert_eq!(newest, answers[4999]);
    assert_eq!(runtime.stats().duplicates, 3);
    let (state, version) = runtime.capture_state("acct").await.unwrap();
    assert_eq!((state.balance, version), (5010, 5010));
    runtime.shutdown().await;
}

/// Events stored two minutes ago (past the 60 s horizon) and one stored now: on activation the
/// old commands' ids are kept only within `min`, the recent one is known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_ids_older_than_the_horizon_are_kept_only_within_min() {
    let store = Arc::new(InMemoryEventStore::new());
    let two_minutes_ago = SystemTime::now() - Duration::from_secs(120);
    for v in 1..=3u64 {
        let event = Event::builder("acct", "Deposited")
            .version(v)
            .payload(&Moved::Deposited(1))
            .causation_id(format!("old-{v}"))
            .timestamp(if v == 3 {
                SystemTime::now()
            } else {
                two_minutes_ago
            })
            .build()
            .unwrap();
        store.save_event(event).await.unwrap();
    }
    // The stored event's type is the variant's name.
    assert_eq!(
        aether_runtime::event_type_of(&Moved::Deposited(1)),
        "Deposited"
    );

    // No minimum: the two old ids are forgotten, the recent one is known.
    let forgetful = Runtime::<Account>::builder(store.clone())
        .command_memory(CommandMemory::default().min(0))
        .build();
    assert_eq!(
        forgetful
            .ask_once("acct", 1, "old-3")
            .await
            .unwrap()
            .version,
        3
    );
    assert_eq!(forgetful.stats().duplicates, 1);
    assert_eq!(
        forgetful
            .ask_once("acct", 1, "old-1")
            .await
            .unwrap()
            .version,
        4,
        "forgotten, so applied as a new command"
    );
    forgetful.shutdown().await;

    // The default keeps the newest 256 whatever their age.
    let runtime = Runtime::<Account>::builder(store.clone()).build();
    assert_eq!(
        runtime.ask_once("acct", 1, "old-2").await.unwrap().version,
        2
    );
    assert_eq!(runtime.stats().duplicates, 1);
    runtime.shutdown().await;
}

/// A snapshot written before command times existed (records without `at`): its ids are still
/// recognised, within `min`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_of_an_old_snapshot_without_times_are_recognised() {
    let store = Arc::new(InMemoryEventStore::new());
    let runtime = Runtime::<Account>::builder(store.clone())
        .snapshots(store.clone())
        .build();
    runtime.ask_once("acct", 5, "pay-1").await.unwrap();
    runtime.stop_vm("acct").await;
    let snapshot = ActorSnapshot::new("acct", 1, &Account { balance: 5 })
        .unwrap()
        .with_commands(vec![CommandRecord::new("pay-1", 1, 1)]);
    store.save_snapshot(snapshot).await.unwrap();

    let again = runtime.ask_once("acct", 5, "pay-1").await.unwrap();
    assert_eq!(
        (again.version, again.events),
        (1, vec![Moved::Deposited(5)])
    );
    assert_eq!(runtime.stats().duplicates, 1);
    assert_eq!(runtime.stats().replayed, 0, "activated from the snapshot");
    runtime.shutdown().await;
}

/// A VM that decided on a stale state (paused, say, while another node applied the same
/// command long ago) loses its append, folds in the other writer's events, and finds its
/// command among them even though the memory drops an id that old at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_loser_finds_its_command_among_the_folded_events_past_the_horizon() {
    let store = Arc::new(InMemoryEventStore::new());
    let stale = Runtime::<Account>::builder(store.clone())
        .command_memory(CommandMemory::default().min(0))
        .build();
    // Active at version 1 (a plain ask: no id to remember).
    stale.ask("acct", 1).await.unwrap();
    // Another writer applied "pay-1" two minutes ago (as far as its event's time goes).
    let event = Event::builder("acct", "Deposited")
        .version(2)
        .payload(&Moved::Deposited(7))
        .causation_id("pay-1")
        .timestamp(SystemTime::now() - Duration::from_secs(120))
        .build()
        .unwrap();
    store.save_event(event).await.unwrap();

    let answer = stale.ask_once("acct", 7, "pay-1").await.unwrap();
    assert_eq!(
        (answer.version, answer.events),
        (2, vec![Moved::Deposited(7)])
    );
    assert_eq!(stale.stats().conflicts, 1, "the append lost");
    assert_eq!(stale.stats().duplicates, 1);
    assert_eq!(caused_by(&store, "acct", "pay-1").await, 1);
    assert_eq!(stale.capture_state("acct").await.unwrap().0.balance, 8);
    stale.shutdown().await;
}

/// Through a JetStream snapshot bucket (its MessagePack encoding): 1,000 ids come back in order,
/// with their times, and are recognised after reactivation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jetstream_snapshot_carries_more_than_256_ids() {
    let server = NatsServer::start().await.unwrap();
    let store = Arc::new(
        JetStreamEventStore::new(server.connect().await.unwrap(), "applied-once")
            .await
            .unwrap(),
    );
    let runtime = Runtime::<Account>::builder(store.clone())
        .snapshots(store.clone())
        .snapshot_policy(SnapshotPolicy::default().min_events(1))
        .build();
    let actor = runtime.actor("acct");
    let mut answers = Vec::new();
    for i in 0..1000 {
        answers.push(actor.ask_once(1, format!("c{i}")).await.unwrap());
    }
    assert!(runtime.stop_vm("acct").await);
    let snapshot = store.get_latest_snapshot("acct").await.unwrap().unwrap();
    let ids: Vec<_> = snapshot.commands.iter().map(|c| c.id.clone()).collect();
    let sent: Vec<_> = (0..1000).map(|i| format!("c{i}")).collect();
    assert_eq!(ids, sent, "every id, oldest first");
    assert!(snapshot.commands.iter().all(|c| c.at.is_some()));

    assert_eq!(actor.ask_once(5, "c10").await.unwrap(), answers[10]);
    assert_eq!(actor.ask_once(5, "c999").await.unwrap(), answers[999]);
    assert_eq!(runtime.stats().duplicates, 2);
    assert_eq!(runtime.stats().replayed, 0, "activated from the snapshot");
    assert_eq!(runtime.capture_state("acct").await.unwrap().0.balance, 1000);
    runtime.shutdown().await;
}
