//! Commands with ids (`ask_once`): a command is applied at most once per id, even when two
//! runtimes serve the same actor and both receive it, when it is sent again after a lost
//! reply, and after the actor was passivated and activated from its snapshot.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aether_core::{EventStore, SnapshotStore};
use aether_runtime::{Actor, RetryPolicy, Runtime, SnapshotPolicy};
use aether_store_memory::InMemoryEventStore;
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Account {
    balance: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Moved {
    Deposited(i64),
    Fee(i64),
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Actor for Account {
    const TYPE: &'static str = "account";
    type Command = i64;
    type Event = Moved;
    type Error = Never;

    /// Every deposit also charges a fee of 1: two events per command.
    fn handle(&self, amount: &i64) -> Result<Vec<Moved>, Never> {
        Ok(vec![Moved::Deposited(*amount), Moved::Fee(1)])
    }

    fn apply(&mut self, event: &Moved) {
        match event {
            Moved::Deposited(n) => self.balance += n,
            Moved::Fee(n) => self.balance -= n,
        }
    }
}

/// Stored events per causation id.
async fn by_cause(store: &InMemoryEventStore, id: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for e in store.get_events(id, 1).await.unwrap() {
        let cause = e
            .metadata()
            .causation_id
            .clone()
            .expect("every event has a cause");
        *counts.entry(cause.to_string()).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loser_of_a_double_serve_race_answers_with_the_winners_result() {
    let store = Arc::new(InMemoryEventStore::new());
    let one = Runtime::<Account>::builder(store.clone()).build();
    let two = Runtime::<Account>::builder(store.clone()).build();
    // Both runtimes hold the actor at version 2 (a paused old owner and a new owner).
    one.ask_once("acct", 10, "warm-up").await.unwrap();
    two.capture_state("acct").await.unwrap();
    assert_eq!(two.capture_state("acct").await.unwrap().1, 2);

    // The same command reaches both: `one` first, then the stale `two`.
    let first = one.ask_once("acct", 5, "cmd-1").await.unwrap();
    let second = two.ask_once("acct", 5, "cmd-1").await.unwrap();
    assert_eq!(first, second, "the loser answers with the winner's outcome");
    assert_eq!(first.version, 4);
    assert_eq!(first.events, vec![Moved::Deposited(5), Moved::Fee(1)]);
    assert_eq!(two.stats().conflicts, 1, "the loser met the winner's write");
    assert_eq!(two.stats().duplicates, 1);

    assert_eq!(store.get_latest_version("acct").await.unwrap(), 4);
    let causes = by_cause(&store, "acct").await;
    assert_eq!(causes.get("cmd-1"), Some(&2), "{causes:?}");
    assert_eq!(two.capture_state("acct").await.unwrap().0.balance, 9 + 4);
    one.shutdown().await;
    two.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_snapshot_and_reactivation_is_recognised() {
    let store = Arc::new(InMemoryEventStore::new());
    let runtime = Runtime::<Account>::builder(store.clone())
        .snapshots(store.clone())
        .snapshot_policy(SnapshotPolicy::default().on_passivation(true).min_events(1))
        .build();
    let first = runtime.ask_once("acct", 7, "pay-1").await.unwrap();
    assert!(runtime.stop_vm("acct").await);
    let snapshot = store.get_latest_snapshot("acct").await.unwrap().unwrap();
    assert_eq!(snapshot.version, 2);
    assert_eq!(snapshot.commands.len(), 1, "{:?}", snapshot.commands);
    assert_eq!(
        (snapshot.commands[0].first, snapshot.commands[0].last),
        (1, 2)
    );

    // Activated from the snapshot (nothing replayed), the actor still knows the command.
    let again = runtime.ask_once("acct", 7, "pay-1").await.unwrap();
    assert_eq!(first, again);
    assert_eq!(
        runtime.stats().replayed,
        0,
        "the second activation replayed nothing"
    );
    assert_eq!(runtime.stats().duplicates, 1);
    assert_eq!(store.get_latest_version("acct").await.unwrap(), 2);
    // A new id is a new command.
    runtime.ask_once("acct", 7, "pay-2").await.unwrap();
    assert_eq!(runtime.capture_state("acct").await.unwrap().0.balance, 12);
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_sent_to_two_runtimes_is_applied_once() {
    let store = Arc::new(InMemoryEventStore::new());
    let retry = RetryPolicy::default()
        .max_attempts(100)
        .backoff(Duration::from_micros(20), Duration::from_millis(1));
    let one = Runtime::<Account>::builder(store.clone())
        .retry(retry)
        .build();
    let two = Runtime::<Account>::builder(store.clone())
        .retry(retry)
        .build();
    let mut tasks = Vec::new();
    for sender in 0..4 {
        for runtime in [one.clone(), two.clone()] {
            tasks.push(tokio::spawn(async move {
                for n in 0..100 {
                    let id = format!("s{sender}-n{n}");
                    let actor = format!("acct-{}", n % 3);
                    runtime.ask_once(&actor, 1, id).await.unwrap();
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut total = 0;
    for a in 0..3 {
        let causes = by_cause(&store, &format!("acct-{a}")).await;
        assert!(
            causes.values().all(|n| *n == 2),
            "a command applied twice: {causes:?}"
        );
        total += causes.len();
    }
    assert_eq!(total, 400, "every command applied exactly once");
    let dups = one.stats().duplicates + two.stats().duplicates;
    assert_eq!(dups, 400, "every second copy was recognised");
    one.shutdown().await;
    two.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_asks_record_no_cause_and_tell_once_is_at_most_once() {
    let store = Arc::new(InMemoryEventStore::new());
    let runtime = Runtime::<Account>::builder(store.clone()).build();
    let actor = runtime.actor("acct");
    actor.ask(3).await.unwrap();
    actor.tell_once(4, "t-1").await.unwrap();
    actor.tell_once(4, "t-1").await.unwrap();
    let (state, version) = runtime.capture_state("acct").await.unwrap();
    assert_eq!((state.balance, version), (2 + 3, 4));
    let events = store.get_events("acct", 1).await.unwrap();
    assert_eq!(events[0].metadata().causation_id, None);
    assert_eq!(events[2].metadata().causation_id.as_deref(), Some("t-1"));
    runtime.shutdown().await;
}
