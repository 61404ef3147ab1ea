//! The in-process bus: patterns, filters, bounded subscribers, unsubscribe on drop.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use aether_bus::{EventBus, Overflow, Pattern, SubscribeOptions};
use aether_core::{Event, Namespace};
use futures::StreamExt;

fn ns(s: &str) -> Namespace {
    Namespace::new(s).unwrap()
}

fn ev(actor: &str, ty: &str, v: u64) -> Event {
    Event::builder(actor, ty).version(v).build().unwrap()
}

fn p(s: &str) -> Pattern {
    Pattern::new(s).unwrap()
}

/// Everything buffered right now, without waiting.
fn drain(sub: &mut aether_bus::Subscription) -> Vec<Event> {
    let mut out = Vec::new();
    // `unconstrained`: tokio's cooperative budget would otherwise end the drain early.
    while let Some(Some(e)) = tokio::task::unconstrained(sub.next()).now_or_never() {
        out.push(e);
    }
    out
}

use futures::FutureExt;

#[tokio::test]
async fn namespaces_are_isolated_and_patterns_follow_nats_rules() {
    let bus = EventBus::new();
    let mut a = bus.subscribe(p("tenant-a"));
    let mut b = bus.subscribe(p("tenant-b"));
    let mut all = bus.subscribe(p(">"));
    let mut eu = bus.subscribe(p("eu.*"));
    bus.publish(&ns("tenant-a"), &ev("x", "T", 1)).await;
    bus.publish(&ns("tenant-b"), &ev("y", "T", 1)).await;
    bus.publish(&ns("eu.orders"), &ev("z", "T", 1)).await;
    bus.publish(&ns("eu.orders.v2"), &ev("w", "T", 1)).await;
    let ids = |v: Vec<Event>| {
        v.iter()
            .map(|e| e.actor_id().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(drain(&mut a)), ["x"]);
    assert_eq!(ids(drain(&mut b)), ["y"]);
    assert_eq!(ids(drain(&mut eu)), ["z"]);
    assert_eq!(ids(drain(&mut all)), ["x", "y", "z", "w"]);
}

#[tokio::test]
async fn filters_by_event_type_and_actor_prefix() {
    let bus = EventBus::new();
    let mut placed = bus.subscribe_with(
        p("shop"),
        SubscribeOptions::default().event_types(["OrderPlaced"]),
    );
    let mut orders = bus.subscribe_with(
        p("shop"),
        SubscribeOptions::default().actor_prefix("order-"),
    );
    bus.publish(&ns("shop"), &ev("order-1", "OrderPlaced", 1))
        .await;
    bus.publish(&ns("shop"), &ev("order-1", "OrderShipped", 2))
        .await;
    bus.publish(&ns("shop"), &ev("cart-1", "OrderPlaced", 1))
        .await;
    assert_eq!(drain(&mut placed).len(), 2);
    let o = drain(&mut orders);
    assert_eq!(o.len(), 2);
    assert!(o.iter().all(|e| e.actor_id() == "order-1"));
}

#[tokio::test]
async fn dropping_a_subscription_unsubscribes() {
    let bus = EventBus::new();
    let sub = bus.subscribe(p("a"));
    let _other = bus.subscribe(p("b"));
    assert_eq!(bus.subscriber_count(), 2);
    drop(sub);
    assert_eq!(bus.subscriber_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_loses_only_its_own_oldest_events() {
    let bus = EventBus::new();
    let capacity = 1024;
    let mut never_reads =
        bus.subscribe_with(p("load"), SubscribeOptions::default().capacity(capacity));
    // The healthy subscriber asks publishers to wait for it (bounded), so it misses nothing.
    let mut reader = bus.subscribe_with(
        p("load"),
        SubscribeOptions::default()
            .capacity(capacity)
            .overflow(Overflow::Wait(Duration::from_secs(10))),
    );
    let total = 100_000u64;
    let consumer = tokio::spawn(async move {
        let mut n = 0u64;
        let mut last = 0;
        while n < total {
            let Some(e) = reader.next().await else { break };
            assert!(e.version() > last, "in order");
            last = e.version();
            n += 1;
        }
        (n, reader.dropped())
    });
    let event = ev("a", "T", 1);
    for v in 1..=total {
        let e = event.to_builder().version(v).build().unwrap();
        bus.publish(&ns("load"), &e).await;
    }
    let (received, reader_dropped) = consumer.await.unwrap();
    assert_eq!(
        (received, reader_dropped),
        (total, 0),
        "the healthy subscriber got everything"
    );
    // The slow one holds at most `capacity` events and counted the rest as lost.
    let kept = drain(&mut never_reads);
    assert!(kept.len() <= capacity, "{}", kept.len());
    assert_eq!(kept.len() as u64 + never_reads.dropped(), total);
    assert_eq!(
        kept.last().map(Event::version),
        Some(total),
        "the newest are kept"
    );
}

#[tokio::test]
async fn a_waiting_policy_bounds_the_wait_and_counts_the_loss() {
    let bus = EventBus::new();
    let mut slow = bus.subscribe_with(
        p("w"),
        SubscribeOptions::default()
            .capacity(1)
            .overflow(Overflow::Wait(Duration::from_millis(20))),
    );
    bus.publish(&ns("w"), &ev("a", "T", 1)).await;
    bus.publish(&ns("w"), &ev("a", "T", 2)).await; // waits 20 ms, then drops
    assert_eq!(slow.dropped(), 1);
    assert_eq!(
        drain(&mut slow)
            .iter()
            .map(Event::version)
            .collect::<Vec<_>>(),
        [1]
    );
}

#[tokio::test]
async fn identical_subscriptions_share_a_ring_but_not_their_losses() {
    let bus = EventBus::new();
    let opts = || SubscribeOptions::default().capacity(4);
    let mut fast = bus.subscribe_with(p("s"), opts());
    let mut slow = bus.subscribe_with(p("s"), opts());
    assert_eq!(bus.subscriber_count(), 2);
    for v in 1..=3 {
        bus.publish(&ns("s"), &ev("a", "T", v)).await;
    }
    assert_eq!(drain(&mut fast).len(), 3);
    for v in 4..=10 {
        bus.publish(&ns("s"), &ev("a", "T", v)).await;
    }
    assert_eq!(drain(&mut fast).len(), 4, "fast kept up to its capacity");
    let slow_got = drain(&mut slow);
    assert_eq!(slow_got.len() as u64 + slow.dropped(), 10);
    assert_eq!(fast.dropped(), 3);
    drop(slow);
    assert_eq!(bus.subscriber_count(), 1);
    bus.publish(&ns("s"), &ev("a", "T", 11)).await;
    assert_eq!(
        drain(&mut fast).len(),
        1,
        "the shared ring lives on for the remaining reader"
    );
    drop(fast);
    assert_eq!(bus.subscriber_count(), 0);
}
