//! Time in the runtime: reminders a handler sets and cancels (kept in JetStream by a real
//! nats-server, delivered by the dispatcher with their firing's command id), volatile timers
//! that stop when the actor passivates, and the test clock.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use aether_core::reminder::ReminderStore;
use aether_core::{EventStore, ReminderError};
use aether_runtime::reminders::{Dispatcher, Reminders};
use aether_runtime::testing::Timeline;
use aether_runtime::{Actor, AskError, Context, Runtime};
use aether_store_jetstream::{JetStreamConfig, JetStreamReminders};
use aether_store_memory::InMemoryEventStore;
use aether_testkit::nats::NatsServer;
use serde::{Deserialize, Serialize};

/// An order cancelled when unpaid 30 minutes (here: `deadline`) after it was placed; a ticker
/// counts timer ticks while active.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Order {
    placed: bool,
    paid: bool,
    cancelled: bool,
    ticks: u32,
    reminded_by: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Cmd {
    /// Place, with the payment deadline in milliseconds.
    Place(u64),
    Pay,
    CancelUnpaid,
    StartTicking(u64),
    Tick,
    /// Moves the payment deadline: cancel, then set again (milliseconds from now).
    Reschedule(u64),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Ev {
    Placed,
    Paid,
    Cancelled { by: Option<String> },
    Ticked,
}

#[derive(Debug, thiserror::Error, Serialize, Deserialize)]
#[error("refused")]
struct Refused;

impl Actor for Order {
    const TYPE: &'static str = "order";
    type Command = Cmd;
    type Event = Ev;
    type Error = Refused;

    fn handle(&self, _: &Cmd) -> Result<Vec<Ev>, Refused> {
        Err(Refused)
    }

    fn decide(
        &self,
        cmd: &Cmd,
        ctx: &mut Context<Self>,
    ) -> impl Future<Output = Result<Vec<Ev>, Refused>> + Send {
        let events = match cmd {
            Cmd::Place(ms) if !self.placed => {
                ctx.remind_after("payment", Duration::from_millis(*ms), &Cmd::CancelUnpaid);
                vec![Ev::Placed]
            }
            Cmd::Pay if self.placed && !self.cancelled => {
                ctx.cancel_reminder("payment");
                vec![Ev::Paid]
            }
            // Decided on the state: harmless if it fires late, twice, or after payment.
            Cmd::CancelUnpaid if self.placed && !self.paid && !self.cancelled => {
                vec![Ev::Cancelled {
                    by: ctx.fired().map(|f| f.name.clone()),
                }]
            }
            Cmd::Reschedule(ms) => {
                ctx.cancel_reminder("payment");
                ctx.remind_after("payment", Duration::from_millis(*ms), &Cmd::CancelUnpaid);
                vec![]
            }
            Cmd::StartTicking(ms) => {
                ctx.every("tick", Duration::from_millis(*ms), Cmd::Tick);
                vec![]
            }
            Cmd::Tick => vec![Ev::Ticked],
            _ => vec![],
        };
        std::future::ready(Ok(events))
    }

    /// A ticking order ticks again after a passivation: timers are restarted on activation.
    fn on_activate(&self, ctx: &mut Context<Self>) {
        if self.ticks > 0 {
            ctx.every("tick", Duration::from_millis(50), Cmd::Tick);
        }
    }

    fn apply(&mut self, event: &Ev) {
        match event {
            Ev::Placed => self.placed = true,
            Ev::Paid => self.paid = true,
            Ev::Cancelled { by } => {
                self.cancelled = true;
                self.reminded_by = by.clone();
            }
            Ev::Ticked => self.ticks += 1,
        }
    }
}

async fn reminder_store(server: &NatsServer) -> Arc<dyn ReminderStore> {
    Arc::new(
        JetStreamReminders::open(
            server.connect().await.unwrap(),
            "shop",
            &JetStreamConfig::default(),
        )
        .await
        .unwrap(),
    )
}

/// A reminder store on `server`, a memory event store, and a runtime of orders using both.
async fn with_reminders(
    server: &NatsServer,
) -> (
    Arc<dyn ReminderStore>,
    Arc<InMemoryEventStore>,
    Runtime<Order>,
) {
    let reminders = reminder_store(server).await;
    let events = Arc::new(InMemoryEventStore::new());
    let runtime = Runtime::<Order>::builder(events.clone())
        .reminders(reminders.clone())
        .build();
    (reminders, events, runtime)
}

async fn until(what: &str, mut pred: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !pred().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {what} within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handlers_reminder_fires_as_a_command_and_a_cancelled_one_does_not() {
    let server = NatsServer::start().await.unwrap();
    let (reminders, events, runtime) = with_reminders(&server).await;
    let dispatcher = Dispatcher::new(reminders.clone())
        .runtime(runtime.clone())
        .start();

    runtime.ask("unpaid", Cmd::Place(800)).await.unwrap();
    runtime.ask("paid", Cmd::Place(800)).await.unwrap();
    let typed = Reminders::<Order>::new(reminders.clone());
    assert_eq!(typed.list("unpaid").await.unwrap().len(), 1);
    assert!(matches!(
        Reminders::<Order>::command_of(&typed.get("unpaid", "payment").await.unwrap().unwrap()),
        Ok(Cmd::CancelUnpaid)
    ));
    runtime.ask("paid", Cmd::Pay).await.unwrap();
    assert!(typed.list("paid").await.unwrap().is_empty());

    until("the unpaid order cancelled", async || {
        runtime.capture_state("unpaid").await.unwrap().0.cancelled
    })
    .await;
    let (unpaid, _) = runtime.capture_state("unpaid").await.unwrap();
    assert_eq!(unpaid.reminded_by.as_deref(), Some("payment"));
    // Its event carries the firing's command id.
    let stored = events.get_events("unpaid", 2).await.unwrap();
    let cause = stored[0].metadata().causation_id.clone().unwrap();
    assert!(cause.as_str().starts_with("rem:") && cause.as_str().ends_with(":payment"));
    let (paid, _) = runtime.capture_state("paid").await.unwrap();
    assert!(paid.paid && !paid.cancelled);
    assert!(dispatcher.stats().delivered >= 1);
    dispatcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firing_delivered_twice_is_applied_once() {
    let server = NatsServer::start().await.unwrap();
    let (reminders, events, runtime) = with_reminders(&server).await;
    runtime.ask("o", Cmd::Place(0)).await.unwrap();
    // Two dispatchers read the same feed; whatever each is handed, one event results.
    let first = Dispatcher::new(reminders.clone())
        .runtime(runtime.clone())
        .start();
    let second = Dispatcher::new(reminders.clone())
        .runtime(runtime.clone())
        .start();
    until("the order cancelled", async || {
        runtime.capture_state("o").await.unwrap().0.cancelled
    })
    .await;
    // The same firing, delivered again by hand (as a redelivery would): answered, not applied.
    let version = events.get_latest_version("o").await.unwrap();
    let cause = events.get_events("o", version).await.unwrap()[0]
        .metadata()
        .causation_id
        .clone()
        .unwrap();
    runtime
        .ask_once("o", Cmd::CancelUnpaid, cause)
        .await
        .unwrap();
    assert_eq!(events.get_latest_version("o").await.unwrap(), version);
    first.stop().await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_reminds_without_a_store_fails_and_stores_nothing() {
    let events = Arc::new(InMemoryEventStore::new());
    let runtime = Runtime::<Order>::builder(events.clone()).build();
    let err = runtime.ask("o", Cmd::Place(1000)).await.unwrap_err();
    assert!(
        matches!(&err, AskError::Reminder { source, .. } if matches!(**source, ReminderError::Unsupported { .. })),
        "{err}"
    );
    let chain = aether_core::error_chain(&err);
    assert!(chain.contains("RuntimeBuilder::reminders"), "{chain}");
    assert_eq!(events.get_latest_version("o").await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_tick_while_active_and_stop_at_passivation() {
    let events = Arc::new(InMemoryEventStore::new());
    let runtime = Runtime::<Order>::builder(events.clone()).build();
    runtime.ask("t", Cmd::StartTicking(50)).await.unwrap();
    until("three ticks", async || {
        events.get_latest_version("t").await.unwrap() >= 3
    })
    .await;
    assert!(runtime.stop_vm("t").await);
    let stopped = events.get_latest_version("t").await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        events.get_latest_version("t").await.unwrap(),
        stopped,
        "a timer ticked after passivation"
    );
    assert!(
        runtime.active_vms().is_empty(),
        "a timer woke the actor again"
    );
}

#[test]
fn the_test_clock_fires_reminders_and_timers_in_due_order() {
    let mut order = Timeline::<Order>::new();
    order.when(Cmd::Place(30 * 60 * 1000)).unwrap();
    order.when(Cmd::StartTicking(10 * 60 * 1000)).unwrap();
    assert_eq!(order.pending().len(), 2);
    let fired = order.advance(Duration::from_secs(30 * 60));
    let names: Vec<&str> = fired.iter().map(|f| f.name.as_str()).collect();
    // Ticks at 10, 20 and 30 minutes; the deadline at 30 (names order equal times).
    assert_eq!(names, ["tick", "tick", "payment", "tick"]);
    assert!(order.state().cancelled);
    assert_eq!(order.state().reminded_by.as_deref(), Some("payment"));
    assert_eq!(order.state().ticks, 3);
    assert!(order.due("payment").is_none());
    assert!(order.timer_due("tick").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_and_setting_a_reminder_in_one_decision_reschedules_it() {
    let server = NatsServer::start().await.unwrap();
    let (reminders, _, runtime) = with_reminders(&server).await;
    runtime.ask("o", Cmd::Place(3_600_000)).await.unwrap();
    runtime.ask("o", Cmd::Reschedule(300)).await.unwrap();
    // The last request for the name counts: set, not cancelled after the set.
    let typed = Reminders::<Order>::new(reminders.clone());
    assert_eq!(typed.list("o").await.unwrap().len(), 1);
    let dispatcher = Dispatcher::new(reminders).runtime(runtime.clone()).start();
    until("the rescheduled deadline fired", async || {
        runtime.capture_state("o").await.unwrap().0.cancelled
    })
    .await;
    dispatcher.stop().await;

    // The test clock agrees.
    let mut order = Timeline::<Order>::new();
    order.when(Cmd::Place(3_600_000)).unwrap();
    order.when(Cmd::Reschedule(60_000)).unwrap();
    assert_eq!(order.advance(Duration::from_secs(60)).len(), 1);
    assert!(order.state().cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reminder_whose_command_does_not_decode_is_dropped_and_touches_nothing() {
    let server = NatsServer::start().await.unwrap();
    let (reminders, events, runtime) = with_reminders(&server).await;
    // Someone else's bytes under the order type: not MessagePack of an order command.
    for (name, payload) in [("junk", vec![0xc1]), ("other", b"\x91\xa4Nope".to_vec())] {
        reminders
            .set(&aether_core::Reminder::new(
                aether_core::ReminderKey::new(Order::TYPE, "hostile", name),
                aether_core::When::after(Duration::ZERO),
                payload,
            ))
            .await
            .unwrap();
    }
    let dispatcher = Dispatcher::new(reminders).runtime(runtime.clone()).start();
    until("both firings dropped", async || {
        dispatcher.stats().undeliverable >= 2
    })
    .await;
    assert_eq!(dispatcher.stats().delivered, 0);
    assert_eq!(events.get_latest_version("hostile").await.unwrap(), 0);
    dispatcher.stop().await;
}
