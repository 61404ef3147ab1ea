//! The runtime on the memory store: ordering under concurrency, conflicts between two runtimes,
//! passivation, eviction, panics, shutdown, snapshots.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use aether_core::{ActorSnapshot, EventStore, Payload, SnapshotStore};
use aether_runtime::{Actor, AskError, RetryPolicy, Runtime, SnapshotPolicy};
use aether_store_memory::InMemoryEventStore;
use serde::{Deserialize, Serialize};

const SENDERS: usize = 10;

/// Records which sender's n-th command it got, and counts order violations.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Ledger {
    count: u64,
    last: Vec<u32>,
    violations: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum LedgerEvent {
    Recorded { sender: usize, seq: u32 },
}

#[derive(Debug, Clone)]
enum LedgerCommand {
    Record { sender: usize, seq: u32 },
    Refuse,
    Panic,
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("refused on purpose")]
struct Refused;

impl Actor for Ledger {
    const TYPE: &'static str = "ledger";
    type Command = LedgerCommand;
    type Event = LedgerEvent;
    type Error = Refused;

    fn handle(&self, command: &LedgerCommand) -> Result<Vec<LedgerEvent>, Refused> {
        match command {
            LedgerCommand::Record { sender, seq } => Ok(vec![LedgerEvent::Recorded {
                sender: *sender,
                seq: *seq,
            }]),
            LedgerCommand::Refuse => Err(Refused),
            LedgerCommand::Panic => panic!("handler bug"),
        }
    }

    fn apply(&mut self, LedgerEvent::Recorded { sender, seq }: &LedgerEvent) {
        if self.last.len() <= *sender {
            self.last.resize(sender + 1, 0);
        }
        if *seq != self.last[*sender] + 1 {
            self.violations += 1;
        }
        self.last[*sender] = *seq;
        self.count += 1;
    }
}

fn record(sender: usize, seq: u32) -> LedgerCommand {
    LedgerCommand::Record { sender, seq }
}

/// The state a sequential fold of the stored events gives.
async fn fold(store: &InMemoryEventStore, id: &str) -> Ledger {
    let mut state = Ledger::default();
    for e in store.get_events(id, 1).await.unwrap() {
        state.apply(&e.decode().unwrap());
    }
    state
}

fn memory() -> Arc<InMemoryEventStore> {
    Arc::new(InMemoryEventStore::new())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_returns_events_and_domain_errors() {
    let store = memory();
    let runtime = Runtime::<Ledger>::builder(store.clone()).build();
    let a = runtime.actor("a");
    let applied = a.ask(record(0, 1)).await.unwrap();
    assert_eq!(applied.version, 1);
    assert_eq!(
        applied.events,
        vec![LedgerEvent::Recorded { sender: 0, seq: 1 }]
    );
    let refused = a.ask(LedgerCommand::Refuse).await.unwrap_err();
    assert_eq!(refused.rejection(), Some(&Refused));
    assert_eq!(
        store.get_latest_version("a").await.unwrap(),
        1,
        "nothing stored"
    );
    let stored = store.get_events("a", 1).await.unwrap();
    assert_eq!(
        stored[0].event_type(),
        "Recorded",
        "named after the variant"
    );
    let bad = runtime.ask("", record(0, 1)).await.unwrap_err();
    assert!(matches!(bad, AskError::Activation { .. }), "{bad}");
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_actors_keep_per_actor_order_under_concurrent_senders() {
    const ACTORS: usize = 1000;
    const PER_SENDER: u32 = 10; // 10 senders x 10 = 100 commands per actor
    let store = memory();
    let runtime = Runtime::<Ledger>::builder(store.clone()).build();
    let senders: Vec<_> = (0..SENDERS)
        .map(|sender| {
            let runtime = runtime.clone();
            tokio::spawn(async move {
                let refs: Vec<_> = (0..ACTORS)
                    .map(|i| runtime.actor(format!("ledger-{i}")))
                    .collect();
                for seq in 1..=PER_SENDER {
                    // Interleaved: every actor gets this sender's seq before anyone gets seq+1.
                    for (i, actor) in refs.iter().enumerate() {
                        if (i + sender) % 2 == 0 {
                            actor.tell(record(sender, seq)).await.unwrap();
                        } else {
                            actor.ask(record(sender, seq)).await.unwrap();
                        }
                    }
                }
            })
        })
        .collect();
    for s in senders {
        s.await.unwrap();
    }
    for i in 0..ACTORS {
        let id = format!("ledger-{i}");
        let (state, version) = runtime.capture_state(&id).await.unwrap();
        assert_eq!(state.count, u64::from(PER_SENDER) * SENDERS as u64);
        assert_eq!(
            state.violations, 0,
            "{id} saw a sender's commands out of order"
        );
        assert_eq!(version, state.count);
        assert_eq!(
            state,
            fold(&store, &id).await,
            "{id}: state = fold of events"
        );
    }
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runtimes_on_one_store_lose_no_update() {
    let store = memory();
    let retry = RetryPolicy::default()
        .max_attempts(50)
        .backoff(Duration::from_micros(50), Duration::from_millis(2));
    let one = Runtime::<Ledger>::builder(store.clone())
        .retry(retry)
        .build();
    let two = Runtime::<Ledger>::builder(store.clone())
        .retry(retry)
        .build();
    // Both hold the actor at version 0; the second writer is certain to meet a conflict.
    one.capture_state("shared").await.unwrap();
    two.capture_state("shared").await.unwrap();
    one.ask("shared", record(4, 1)).await.unwrap();
    two.ask("shared", record(4, 2)).await.unwrap();
    let tasks: Vec<_> = (0..4)
        .map(|sender| {
            let runtime = if sender % 2 == 0 {
                one.clone()
            } else {
                two.clone()
            };
            tokio::spawn(async move {
                let actor = runtime.actor("shared");
                for seq in 1..=50 {
                    actor.ask(record(sender, seq)).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(store.get_latest_version("shared").await.unwrap(), 202);
    let folded = fold(&store, "shared").await;
    assert_eq!((folded.count, folded.violations), (202, 0));
    let conflicts = one.stats().conflicts + two.stats().conflicts;
    let retries = one.stats().retries + two.stats().retries;
    assert!(
        conflicts > 0 && retries > 0,
        "conflicts {conflicts}, retries {retries}"
    );
    one.shutdown().await;
    two.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passivation_under_load_loses_nothing_and_snapshots() {
    let store = memory();
    let runtime = Runtime::<Ledger>::builder(store.clone())
        .snapshots(store.clone())
        .snapshot_policy(SnapshotPolicy::every(7).min_events(1))
        .build();
    let load: Vec<_> = (0..4)
        .map(|sender| {
            let runtime = runtime.clone();
            tokio::spawn(async move {
                for seq in 1..=100 {
                    for i in 0..20 {
                        runtime
                            .tell(&format!("p-{i}"), record(sender, seq))
                            .await
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    // Meanwhile, passivate actors over and over.
    let stopper = {
        let runtime = runtime.clone();
        tokio::spawn(async move {
            let mut stopped = 0;
            for round in 0..200 {
                if runtime.stop_vm(&format!("p-{}", round % 20)).await {
                    stopped += 1;
                }
                tokio::task::yield_now().await;
            }
            stopped
        })
    };
    for l in load {
        l.await.unwrap();
    }
    let stopped = stopper.await.unwrap();
    for i in 0..20 {
        let id = format!("p-{i}");
        let (state, _) = runtime.capture_state(&id).await.unwrap();
        assert_eq!((state.count, state.violations), (400, 0), "{id}");
        assert_eq!(state, fold(&store, &id).await);
    }
    let stats = runtime.stats();
    assert!(stopped > 0 && stats.passivations >= stopped, "{stats:?}");
    assert!(
        stats.activations > 20,
        "reactivated after passivation: {stats:?}"
    );
    assert!(stats.snapshots > 0, "{stats:?}");
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn idle_actors_are_passivated_and_come_back() {
    let store = memory();
    let runtime = Runtime::<Ledger>::builder(store.clone())
        .snapshots(store.clone())
        .snapshot_policy(SnapshotPolicy::off().on_passivation(true).min_events(1))
        .idle_timeout(Some(Duration::from_secs(10)))
        .build();
    runtime.ask("idle", record(0, 1)).await.unwrap();
    assert_eq!(runtime.active_vms(), vec!["idle".to_owned()]);
    // The clock is paused: sleeping lets the runtime's own timers run to completion.
    tokio::time::sleep(Duration::from_secs(25)).await;
    assert!(runtime.active_vms().is_empty());
    assert_eq!(runtime.stats().passivations, 1);
    assert_eq!(runtime.stats().snapshots, 1, "snapshot on passivation");
    let snapshot = store.get_latest_snapshot("idle").await.unwrap().unwrap();
    assert_eq!(snapshot.version, 1);
    let applied = runtime.ask("idle", record(0, 2)).await.unwrap();
    assert_eq!(applied.version, 2);
    assert_eq!(runtime.stats().replayed, 0, "activated from the snapshot");
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_evicts_the_least_recently_used() {
    let store = memory();
    let runtime = Runtime::<Ledger>::builder(store.clone())
        .max_active(8)
        .build();
    for round in 1..=3 {
        for i in 0..100 {
            runtime
                .ask(&format!("e-{i}"), record(0, round))
                .await
                .unwrap();
            assert!(runtime.active_count() <= 8, "{}", runtime.active_count());
            assert!(runtime.active_vms().contains(&format!("e-{i}")));
        }
    }
    for i in 0..100 {
        let folded = fold(&store, &format!("e-{i}")).await;
        assert_eq!((folded.count, folded.violations), (3, 0));
    }
    assert!(runtime.stats().passivations >= 300 - 8);
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_restarts_only_its_actor() {
    let store = memory();
    let runtime = Runtime::<Ledger>::builder(store.clone()).build();
    runtime.ask("victim", record(0, 1)).await.unwrap();
    runtime.ask("bystander", record(0, 1)).await.unwrap();
    let err = runtime
        .ask("victim", LedgerCommand::Panic)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AskError::Panicked { message, .. } if message == "handler bug"),
        "{err}"
    );
    assert_eq!(runtime.stats().panics, 1);
    // The victim was reloaded and continues at the right version; the bystander never noticed.
    assert_eq!(
        runtime.ask("victim", record(0, 2)).await.unwrap().version,
        2
    );
    assert_eq!(
        runtime
            .ask("bystander", record(0, 2))
            .await
            .unwrap()
            .version,
        2
    );
    let (victim, _) = runtime.capture_state("victim").await.unwrap();
    assert_eq!((victim.count, victim.violations), (2, 0));
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_handles_every_queued_command() {
    let store = memory();
    let runtime = Runtime::<Ledger>::builder(store.clone())
        .snapshots(store.clone())
        .mailbox_capacity(1024)
        .build();
    for seq in 1..=50 {
        for i in 0..10 {
            runtime
                .tell(&format!("s-{i}"), record(0, seq))
                .await
                .unwrap();
        }
    }
    runtime.shutdown().await;
    for i in 0..10 {
        let id = format!("s-{i}");
        assert_eq!(store.get_latest_version(&id).await.unwrap(), 50, "{id}");
        let snapshot = store.get_latest_snapshot(&id).await.unwrap().unwrap();
        assert_eq!(snapshot.version, 50, "snapshotted at shutdown");
    }
    assert_eq!(runtime.active_count(), 0);
    let late = runtime.ask("s-0", record(0, 51)).await.unwrap_err();
    assert!(matches!(late, AskError::ShutDown { .. }), "{late}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activation_replays_only_after_the_snapshot_and_survives_a_bad_one() {
    let store = memory();
    let runtime = Runtime::<Ledger>::builder(store.clone())
        .snapshots(store.clone())
        .snapshot_policy(SnapshotPolicy::every(100).on_passivation(false))
        .build();
    let actor = runtime.actor("long");
    for seq in 1..=250 {
        actor.ask(record(0, seq)).await.unwrap();
    }
    assert!(runtime.stop_vm("long").await);
    let before = runtime.stats().replayed;
    let (state, version) = runtime.capture_state("long").await.unwrap();
    assert_eq!((state.count, version), (250, 250));
    assert_eq!(
        runtime.stats().replayed - before,
        50,
        "snapshot at 200, then 50 events"
    );

    // A snapshot whose state no longer decodes: full replay, with a warning.
    assert!(runtime.stop_vm("long").await);
    store
        .save_snapshot(ActorSnapshot::from_encoded(
            "long",
            250,
            Payload::encode(&"not a ledger").unwrap(),
        ))
        .await
        .unwrap();
    let before = runtime.stats().replayed;
    let (state, _) = runtime.capture_state("long").await.unwrap();
    assert_eq!((state.count, state.violations), (250, 0));
    assert_eq!(runtime.stats().replayed - before, 250);
    runtime.shutdown().await;
}

/// A zero mailbox or cap used to panic in `mpsc::channel` or spin forever in activation; both
/// now count as 1 (documented on `RuntimeConfig`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_mailbox_and_zero_cap_are_clamped_not_fatal() {
    let mut config = aether_runtime::RuntimeConfig::default();
    config.mailbox_capacity = 0;
    config.max_active = 0;
    let builder = Runtime::<Ledger>::builder(memory()).config(config);
    let effective = builder.effective_config();
    assert_eq!((effective.mailbox_capacity, effective.max_active), (1, 1));
    let runtime = builder.build();
    for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
        let applied = tokio::time::timeout(Duration::from_secs(10), runtime.ask(id, record(0, 1)))
            .await
            .unwrap_or_else(|_| panic!("ask {i} hung"))
            .unwrap();
        assert_eq!(applied.version, 1);
    }
    assert!(runtime.active_count() <= 1);
    let zero_by_setter = Runtime::<Ledger>::builder(memory())
        .mailbox_capacity(0)
        .max_active(0);
    assert_eq!(zero_by_setter.effective_config().mailbox_capacity, 1);
    runtime.shutdown().await;
}

/// `.config()` replaces the base configuration, but never drops what a setter gave, before or
/// after it.
#[test]
fn setters_survive_a_later_config() {
    let policy = SnapshotPolicy::every(7);
    let after = Runtime::<Ledger>::builder(memory())
        .snapshot_policy(policy)
        .max_active(3)
        .config(aether_runtime::RuntimeConfig::default())
        .effective_config();
    assert_eq!(after.snapshots, policy);
    assert_eq!(after.max_active, 3);
    let mut base = aether_runtime::RuntimeConfig::default();
    base.mailbox_capacity = 9;
    let before = Runtime::<Ledger>::builder(memory())
        .config(base)
        .snapshot_policy(policy)
        .effective_config();
    assert_eq!(before.snapshots, policy);
    assert_eq!(before.mailbox_capacity, 9);
}

/// Shutdown with many actors, some of them busy: every queued command is handled, every actor
/// passivates with its snapshot, commands after shutdown are refused, and nothing stays active.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_of_many_actors_stops_them_all_and_loses_nothing() {
    const ACTORS: usize = 5_000;
    let store = memory();
    let runtime = Runtime::<Ledger>::builder(store.clone())
        .snapshots(store.clone())
        .snapshot_policy(SnapshotPolicy::off().on_passivation(true).min_events(1))
        .build();
    let record = |seq| LedgerCommand::Record { sender: 0, seq };
    for i in 0..ACTORS {
        runtime.ask(&format!("many-{i}"), record(1)).await.unwrap();
    }
    // A few actors with commands still queued when shutdown starts.
    for i in 0..10 {
        for seq in 2..=20 {
            runtime
                .tell(&format!("many-{i}"), record(seq))
                .await
                .unwrap();
        }
    }
    runtime.shutdown().await;
    assert_eq!(runtime.active_count(), 0);
    assert!(runtime.active_vms().is_empty());
    let stats = runtime.stats();
    assert_eq!(stats.passivations, ACTORS as u64);
    assert_eq!(stats.snapshots, ACTORS as u64);
    for i in 0..ACTORS {
        let id = format!("many-{i}");
        let want = if i < 10 { 20 } else { 1 };
        assert_eq!(store.get_latest_version(&id).await.unwrap(), want, "{id}");
        let snapshot = store.get_latest_snapshot(&id).await.unwrap().unwrap();
        assert_eq!(snapshot.version, want, "{id}: snapshot at its last version");
    }
    assert!(matches!(
        runtime.ask("many-0", record(99)).await,
        Err(AskError::ShutDown { .. })
    ));
}
