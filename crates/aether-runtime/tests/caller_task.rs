//! An ask that finds its actor idle runs on the caller's task (issue 25, "one hop less"). What
//! must still hold: one writer per actor, each caller's messages in the order sent, nothing lost
//! when an ask is abandoned or the actor passivates under load.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aether_core::EventStore;
use aether_runtime::{Actor, Runtime};
use aether_store_memory::InMemoryEventStore;
use serde::{Deserialize, Serialize};

/// Per actor type: whether a decision is under way (a second one at once breaks the rule),
/// how often that happened, and the task of the last decision.
struct Watch {
    deciding: AtomicBool,
    overlaps: AtomicU64,
    last_task: Mutex<Option<tokio::task::Id>>,
}

static WATCH: Watch = Watch {
    deciding: AtomicBool::new(false),
    overlaps: AtomicU64::new(0),
    last_task: Mutex::new(None),
};

/// Checks, per caller, that its commands arrive in the order sent.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Seq {
    count: u64,
    last: Vec<u32>,
    out_of_order: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum SeqEvent {
    Got { caller: usize, n: u32 },
}

#[derive(Debug, Clone)]
enum SeqCommand {
    Got {
        caller: usize,
        n: u32,
    },
    /// Decides slowly (yields for a while), emitting one event for caller 0.
    Slow,
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Actor for Seq {
    const TYPE: &'static str = "seq";
    type Command = SeqCommand;
    type Event = SeqEvent;
    type Error = Never;

    fn handle(&self, _: &SeqCommand) -> Result<Vec<SeqEvent>, Never> {
        Err(Never)
    }

    async fn handle_async(&self, command: &SeqCommand) -> Result<Vec<SeqEvent>, Never> {
        if WATCH.deciding.swap(true, Ordering::SeqCst) {
            WATCH.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        *WATCH.last_task.lock().unwrap() = tokio::task::try_id();
        let decided = match command {
            SeqCommand::Got { caller, n } => {
                // A window in which a second writer would be seen.
                tokio::task::yield_now().await;
                vec![SeqEvent::Got {
                    caller: *caller,
                    n: *n,
                }]
            }
            SeqCommand::Slow => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Vec::new()
            }
        };
        WATCH.deciding.store(false, Ordering::SeqCst);
        Ok(decided)
    }

    fn apply(&mut self, SeqEvent::Got { caller, n }: &SeqEvent) {
        if self.last.len() <= *caller {
            self.last.resize(caller + 1, 0);
        }
        if *n != self.last[*caller] + 1 {
            self.out_of_order += 1;
        }
        self.last[*caller] = *n;
        self.count += 1;
    }
}

async fn fold(store: &InMemoryEventStore, id: &str) -> (Seq, Vec<u64>) {
    let mut state = Seq::default();
    let mut versions = Vec::new();
    for e in store.get_events(id, 1).await.unwrap() {
        versions.push(e.version());
        state.apply(&e.decode().unwrap());
    }
    (state, versions)
}

/// The tests share `WATCH`: they run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "current_thread")]
async fn an_idle_actors_ask_runs_on_the_callers_task() {
    let _serial = SERIAL.lock().await;
    let store = Arc::new(InMemoryEventStore::new());
    let runtime = Runtime::<Seq>::builder(store).build();
    let actor = runtime.actor("idle-1");
    // The first ask activates the actor: its task loads it and handles the command.
    actor
        .ask(SeqCommand::Got { caller: 0, n: 1 })
        .await
        .unwrap();
    let caller = tokio::spawn(async move {
        actor
            .ask(SeqCommand::Got { caller: 0, n: 2 })
            .await
            .unwrap();
        tokio::task::id()
    });
    let caller_task = caller.await.unwrap();
    assert_eq!(
        *WATCH.last_task.lock().unwrap(),
        Some(caller_task),
        "the second ask found the actor idle and ran on its caller's task"
    );
    let (state, _) = runtime.capture_state("idle-1").await.unwrap();
    assert_eq!((state.count, state.out_of_order), (2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_keep_one_writer_and_their_own_order() {
    let _serial = SERIAL.lock().await;
    WATCH.overlaps.store(0, Ordering::SeqCst);
    let store = Arc::new(InMemoryEventStore::new());
    let runtime = Runtime::<Seq>::builder(store.clone()).build();
    const CALLERS: usize = 8;
    const EACH: u32 = 300;
    let mut tasks = Vec::new();
    for caller in 0..CALLERS {
        let actor = runtime.actor("busy-1");
        tasks.push(tokio::spawn(async move {
            for n in 1..=EACH {
                let command = SeqCommand::Got { caller, n };
                // Tells go through the mailbox; an ask after them must not overtake them.
                match n % 3 {
                    0 => actor.tell(command).await.unwrap(),
                    1 => drop(actor.ask(command).await.unwrap()),
                    _ => drop(
                        actor
                            .ask_once(command, format!("{caller}-{n}"))
                            .await
                            .unwrap(),
                    ),
                }
            }
            // Handled once this ask is: every earlier tell of this caller is in.
            actor
                .ask(SeqCommand::Got {
                    caller,
                    n: EACH + 1,
                })
                .await
                .unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let total = CALLERS as u64 * (u64::from(EACH) + 1);
    let (stored, versions) = fold(&store, "busy-1").await;
    assert_eq!(
        versions,
        (1..=total).collect::<Vec<_>>(),
        "no gap, no double"
    );
    assert_eq!(stored.count, total);
    assert_eq!(
        stored.out_of_order, 0,
        "each caller's commands in the order sent"
    );
    assert_eq!(
        WATCH.overlaps.load(Ordering::SeqCst),
        0,
        "one decision at a time"
    );
    assert_eq!(
        runtime.stats().conflicts,
        0,
        "no second writer ever raced the first"
    );
    let (state, version) = runtime.capture_state("busy-1").await.unwrap();
    assert_eq!((state.count, version), (total, total));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_ask_leaves_the_actor_usable_and_in_step_with_the_store() {
    let _serial = SERIAL.lock().await;
    let store = Arc::new(InMemoryEventStore::new());
    let runtime = Runtime::<Seq>::builder(store.clone()).build();
    let actor = runtime.actor("abandoned-1");
    actor
        .ask(SeqCommand::Got { caller: 0, n: 1 })
        .await
        .unwrap();
    // Runs on this task (the actor is idle) and is dropped mid-decision.
    let gave_up =
        tokio::time::timeout(Duration::from_millis(20), actor.ask(SeqCommand::Slow)).await;
    assert!(gave_up.is_err(), "the slow ask was abandoned");
    // The actor is free again: the next asks are handled, in step with the store.
    for n in 2..=5 {
        let applied = actor.ask(SeqCommand::Got { caller: 0, n }).await.unwrap();
        assert_eq!(applied.version, u64::from(n));
    }
    assert_eq!(store.get_latest_version("abandoned-1").await.unwrap(), 5);
    let (state, _) = runtime.capture_state("abandoned-1").await.unwrap();
    assert_eq!((state.count, state.out_of_order), (5, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passivating_under_asks_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let store = Arc::new(InMemoryEventStore::new());
    let runtime = Arc::new(Runtime::<Seq>::builder(store.clone()).build());
    const CALLERS: usize = 4;
    const EACH: u32 = 200;
    let mut tasks = Vec::new();
    for caller in 0..CALLERS {
        let actor = runtime.actor("moving-1");
        tasks.push(tokio::spawn(async move {
            for n in 1..=EACH {
                actor.ask(SeqCommand::Got { caller, n }).await.unwrap();
            }
        }));
    }
    let stopper = {
        let runtime = runtime.clone();
        tokio::spawn(async move {
            let mut stops = 0;
            for _ in 0..50 {
                stops += u32::from(runtime.stop_vm("moving-1").await);
                tokio::task::yield_now().await;
            }
            stops
        })
    };
    for task in tasks {
        task.await.unwrap();
    }
    let stops = stopper.await.unwrap();
    assert!(stops > 0, "the actor was passivated while callers asked");
    let total = CALLERS as u64 * u64::from(EACH);
    let (stored, versions) = fold(&store, "moving-1").await;
    assert_eq!(versions, (1..=total).collect::<Vec<_>>());
    assert_eq!((stored.count, stored.out_of_order), (total, 0));
    assert_eq!(runtime.stats().conflicts, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_stops_waiting_for_room_leaves_the_actor_idle_afterwards() {
    let _serial = SERIAL.lock().await;
    let store = Arc::new(InMemoryEventStore::new());
    let runtime = Runtime::<Seq>::builder(store).mailbox_capacity(1).build();
    let actor = runtime.actor("full-1");
    actor
        .ask(SeqCommand::Got { caller: 0, n: 1 })
        .await
        .unwrap();
    // The actor's task is busy with a slow command, and the one-slot mailbox holds another.
    actor.tell(SeqCommand::Slow).await.unwrap();
    actor.tell(SeqCommand::Slow).await.unwrap();
    // No room: this caller gives up while waiting.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(20),
        actor.tell(SeqCommand::Got { caller: 0, n: 2 }),
    )
    .await;
    assert!(gave_up.is_err(), "the third message found no room");
    // Once the queued commands are handled, nothing is counted as queued any more: the next
    // ask finds the actor idle and runs on its caller's task.
    let _ = runtime.capture_state("full-1").await.unwrap();
    let caller = {
        let actor = actor.clone();
        tokio::spawn(async move {
            actor
                .ask(SeqCommand::Got { caller: 0, n: 2 })
                .await
                .unwrap();
            tokio::task::id()
        })
    };
    let caller_task = caller.await.unwrap();
    assert_eq!(*WATCH.last_task.lock().unwrap(), Some(caller_task));
}

/// Panics in `apply` once, after changing the state, while `ARMED` is set.
static ARMED: AtomicBool = AtomicBool::new(false);

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Fragile {
    applied: u64,
}

impl Actor for Fragile {
    const TYPE: &'static str = "fragile";
    type Command = ();
    type Event = u64;
    type Error = Never;

    fn handle(&self, (): &()) -> Result<Vec<u64>, Never> {
        Ok(vec![1])
    }

    fn apply(&mut self, n: &u64) {
        self.applied += n;
        if ARMED.swap(false, Ordering::SeqCst) {
            panic!("apply failed half-way");
        }
    }
}

/// Snapshots kept in memory, read slowly (a reload takes a while).
#[derive(Debug, Default)]
struct SlowSnapshots(InMemoryEventStore);

#[async_trait::async_trait]
impl aether_core::SnapshotStore for SlowSnapshots {
    async fn get_latest_snapshot(
        &self,
        actor_id: &str,
    ) -> Result<Option<aether_core::ActorSnapshot>, aether_core::StoreError> {
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.0.get_latest_snapshot(actor_id).await
    }

    async fn save_snapshot(
        &self,
        snapshot: aether_core::ActorSnapshot,
    ) -> Result<(), aether_core::StoreError> {
        self.0.save_snapshot(snapshot).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_after_a_panic_abandoned_by_its_caller_is_finished_before_the_next_command() {
    let _serial = SERIAL.lock().await;
    let store = Arc::new(InMemoryEventStore::new());
    let runtime = Runtime::<Fragile>::builder(store.clone())
        .snapshots(Arc::new(SlowSnapshots::default()))
        .build();
    let actor = runtime.actor("fragile-1");
    actor.ask(()).await.unwrap();
    // Appended, then `apply` panics half-way: the actor reloads from the store (slowly) on
    // this caller's task, and the caller gives up during the reload.
    ARMED.store(true, Ordering::SeqCst);
    let gave_up = tokio::time::timeout(Duration::from_millis(100), actor.ask(())).await;
    assert!(gave_up.is_err(), "abandoned during the reload");
    // The next command finds the reload unfinished and finishes it before deciding.
    let applied = actor.ask(()).await.unwrap();
    let stored = store.get_latest_version("fragile-1").await.unwrap();
    assert_eq!((applied.version, stored), (3, 3));
    let (state, version) = runtime.capture_state("fragile-1").await.unwrap();
    assert_eq!(
        (state.applied, version),
        (3, 3),
        "the state folds each stored event once"
    );
}

/// Its `apply` panics on the amount 13, every time.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Unlucky {
    total: u64,
}

impl Actor for Unlucky {
    const TYPE: &'static str = "unlucky";
    type Command = u64;
    type Event = u64;
    type Error = Never;

    fn handle(&self, n: &u64) -> Result<Vec<u64>, Never> {
        Ok(vec![*n])
    }

    fn apply(&mut self, n: &u64) {
        assert!(*n != 13, "13 does not fold");
        self.total += n;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_whose_history_panics_in_apply_is_refused_not_hung() {
    let store = Arc::new(InMemoryEventStore::new());
    for (version, n) in [(1, 1u64), (2, 13)] {
        store
            .save_event(aether_core::Event::new("unlucky-1", "u64", version, &n).unwrap())
            .await
            .unwrap();
    }
    let runtime = Runtime::<Unlucky>::builder(store).build();
    for _ in 0..2 {
        let refused = tokio::time::timeout(Duration::from_secs(5), runtime.ask("unlucky-1", 1))
            .await
            .expect("answered, not hung");
        match refused {
            Err(aether_runtime::AskError::Activation { reason, .. }) => {
                assert!(reason.contains("13 does not fold"), "{reason}");
            }
            other => panic!("expected an activation failure, got {other:?}"),
        }
    }
    assert_eq!(runtime.stats().panics, 2);
    // Other actors are not touched.
    runtime.ask("lucky-1", 2).await.unwrap();
}
