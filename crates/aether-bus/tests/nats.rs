//! The NATS bus against real servers: the server as the oracle for wildcard matching, two nodes
//! of a cluster, EventStored cache sync, garbage on the wire.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use aether_bus::{NatsEventBus, Pattern, Subscription};
use aether_core::{Event, EventStore, EventStored, Namespace};
use aether_store_jetstream::JetStreamEventStore;
use aether_testkit::nats::{NatsCluster, NatsServer};
use futures::StreamExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const WAIT: Duration = Duration::from_secs(10);

fn ns(s: &str) -> Namespace {
    Namespace::new(s).unwrap()
}

fn ev(actor: &str, v: u64) -> Event {
    Event::builder(actor, "Tested").version(v).build().unwrap()
}

/// The next event that is not a probe (see [`wait_for_interest`]).
async fn next(sub: &mut Subscription) -> Event {
    loop {
        let event = tokio::time::timeout(WAIT, sub.next())
            .await
            .expect("an event within the wait")
            .expect("subscription open");
        if event.actor_id() != PROBE {
            return event;
        }
    }
}

const PROBE: &str = "probe";

/// Publishes probe events on `from` to `namespace` until `sub` sees one: through a cluster of
/// servers, a new subscription's interest reaches the other servers a moment after `subscribe`
/// returns. Each attempt waits for an answer, it does not just sleep; later probes still in
/// flight are skipped by [`next`].
async fn wait_for_interest(from: &NatsEventBus, sub: &mut Subscription, namespace: &str) {
    for v in 1..=100 {
        from.publish(&ns(namespace), &ev(PROBE, v)).await.unwrap();
        if tokio::time::timeout(Duration::from_millis(100), sub.next())
            .await
            .is_ok()
        {
            return;
        }
    }
    panic!("no interest in {namespace} ever reached the publisher's server");
}

/// Probes from `from` until `to` receives one: routes have formed.
async fn wait_until_connected(from: &NatsEventBus, to: &NatsEventBus) {
    let mut probe = to.subscribe(Pattern::new(PROBE).unwrap()).await.unwrap();
    wait_for_interest(from, &mut probe, PROBE).await;
}

#[test]
fn local_matching_agrees_with_the_server() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (server, client) = rt.block_on(async {
        let server = NatsServer::start().await.unwrap();
        let client = server.connect().await.unwrap();
        (server, client)
    });
    let token = prop_oneof![Just("a"), Just("b"), Just("c-1"), Just("d_2")];
    let namespace = proptest::collection::vec(token.clone(), 1..4).prop_map(|t| t.join("."));
    let pattern_token = prop_oneof![4 => token.prop_map(str::to_owned), 2 => Just("*".to_owned())];
    let pattern = (
        proptest::collection::vec(pattern_token, 1..4),
        any::<bool>(),
    )
        .prop_map(|(mut tokens, rest)| {
            if rest {
                tokens.push(">".to_owned());
            }
            tokens.join(".")
        });
    let mut runner = TestRunner::new(Config {
        cases: 200,
        ..Config::default()
    });
    runner
        .run(&(namespace, pattern), |(namespace, pattern)| {
            let local = Pattern::new(&pattern).unwrap().matches(&ns(&namespace));
            // The oracle: does a request to the namespace's subject reach a responder subscribed
            // with the pattern? "No responders" comes back at once when it does not.
            // A fresh prefix per case: an earlier case's subscription may still be registered
            // at the server (unsubscribing is asynchronous) and must not answer this one.
            let case = uuid::Uuid::new_v4().simple().to_string();
            let server_says = rt.block_on(async {
                let mut sub = client
                    .subscribe(format!("oracle.{case}.{pattern}"))
                    .await
                    .unwrap();
                client.flush().await.unwrap();
                let c = client.clone();
                let answer = tokio::spawn(async move {
                    if let Some(m) = sub.next().await
                        && let Some(reply) = m.reply
                    {
                        c.publish(reply, "yes".into()).await.unwrap();
                    }
                });
                let got = client
                    .request(format!("oracle.{case}.{namespace}"), "?".into())
                    .await;
                answer.abort();
                match got {
                    Ok(_) => true,
                    Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => false,
                    Err(e) => panic!("oracle request failed: {e}"),
                }
            });
            prop_assert_eq!(
                local,
                server_says,
                "pattern {} vs namespace {}",
                pattern,
                namespace
            );
            Ok(())
        })
        .unwrap();
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_events_and_keep_namespaces_apart() {
    let cluster = NatsCluster::start(3).await.unwrap();
    let bus1 = NatsEventBus::new(cluster.node(0).connect().await.unwrap())
        .await
        .unwrap();
    let bus2 = NatsEventBus::new(cluster.node(1).connect().await.unwrap())
        .await
        .unwrap();
    wait_until_connected(&bus1, &bus2).await;
    wait_until_connected(&bus2, &bus1).await;

    let mut a_on_2 = bus2
        .subscribe(Pattern::new("tenant-a").unwrap())
        .await
        .unwrap();
    let mut b_on_2 = bus2
        .subscribe(Pattern::new("tenant-b").unwrap())
        .await
        .unwrap();
    let mut a_on_1 = bus1
        .subscribe(Pattern::new("tenant-a").unwrap())
        .await
        .unwrap();
    wait_for_interest(&bus1, &mut a_on_2, "tenant-a").await;
    wait_for_interest(&bus1, &mut b_on_2, "tenant-b").await;

    let event = ev("order-1", 1);
    bus1.publish(&ns("tenant-a"), &event).await.unwrap();
    assert_eq!(next(&mut a_on_2).await, event, "arrives on the other node");
    assert_eq!(next(&mut a_on_1).await, event, "and locally");

    // A marker in tenant-b, published after: tenant-b sees the marker and nothing before it.
    let marker = ev("marker", 1);
    bus1.publish(&ns("tenant-b"), &marker).await.unwrap();
    assert_eq!(
        next(&mut b_on_2).await,
        marker,
        "tenant-b never sees tenant-a"
    );
    // Own events are not echoed back: bus1's local subscriber got the event exactly once.
    let marker_a = ev("marker-a", 1);
    bus1.publish(&ns("tenant-a"), &marker_a).await.unwrap();
    assert_eq!(
        next(&mut a_on_1).await,
        marker_a,
        "no echo of the first event in between"
    );
    assert!(bus1.received() >= 1, "bus1 received bus2's probes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stored_keeps_another_stores_cache_in_step() {
    let server = NatsServer::start().await.unwrap();
    let bus1 = NatsEventBus::new(server.connect().await.unwrap())
        .await
        .unwrap();
    // Given its broadcaster at construction (Go's NewJetStreamEventStoreWithBroadcaster).
    let store1 = JetStreamEventStore::new(server.connect().await.unwrap(), "events")
        .await
        .unwrap()
        .with_broadcaster(Arc::new(bus1.clone()));
    let store2 = Arc::new(
        JetStreamEventStore::new(server.connect().await.unwrap(), "events")
            .await
            .unwrap(),
    );
    let bus2 = NatsEventBus::with_version_cache(server.connect().await.unwrap(), store2.clone())
        .await
        .unwrap();
    wait_until_connected(&bus1, &bus2).await;

    store2.save_event(ev("synced", 1)).await.unwrap();
    assert_eq!(store2.cached_version("synced"), Some(1));
    let mut stored = bus2
        .subscribe_to_event_stored(Pattern::new("events").unwrap())
        .await
        .unwrap();
    store1.save_event(ev("synced", 2)).await.unwrap();
    let note = next(&mut stored).await;
    let payload: EventStored = note.decode().unwrap();
    assert_eq!((payload.actor_id.as_str(), payload.version), ("synced", 2));
    // The bus updated store 2's cache before delivering the notification (Go's
    // `UpdateVersionCache`: the newer version is cached; its position is read on the next append).
    assert_eq!(store2.cached_version("synced"), Some(2));
    store2.save_event(ev("synced", 3)).await.unwrap();
    assert_eq!(store2.cached_version("synced"), Some(3));
}

/// Regression: `NatsEventBus::new` returns only once the server has its subscription, so an
/// event another connection publishes right after is delivered (with a mere `flush`, the first
/// messages of a burst were lost now and then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_bus_receives_what_is_published_right_after() {
    let server = NatsServer::start_without_jetstream().await.unwrap();
    let publisher = NatsEventBus::new(server.connect().await.unwrap())
        .await
        .unwrap();
    for round in 0..20 {
        let receiver = NatsEventBus::new(server.connect().await.unwrap())
            .await
            .unwrap();
        let mut sub = receiver
            .subscribe(Pattern::new("first").unwrap())
            .await
            .unwrap();
        let event = ev("first", round + 1);
        publisher.publish(&ns("first"), &event).await.unwrap();
        assert_eq!(next(&mut sub).await, event, "round {round}");
        receiver.stop();
    }
}

/// A subscriber to `>` on the account (a `nats sub ">"` while debugging) takes every message,
/// the bus's own round trips included: subscribing still returns at once, and events still
/// arrive right after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_all_subscriber_does_not_stall_subscribing() {
    let (server, publisher, receiver) = publisher_and_receiver().await;
    let sniffer = server.connect().await.unwrap();
    let mut everything = sniffer.subscribe(">").await.unwrap();
    sniffer.flush().await.unwrap();
    for round in 0..5 {
        let started = std::time::Instant::now();
        let mut sub = receiver
            .subscribe(Pattern::new(&format!("tenant-{round}")).unwrap())
            .await
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        let event = ev("a", round + 1);
        publisher
            .publish(&ns(&format!("tenant-{round}")), &event)
            .await
            .unwrap();
        assert_eq!(next(&mut sub).await, event, "round {round}");
    }
    // The sniffer saw the traffic (so it really was in the way).
    assert!(tokio::time::timeout(WAIT, everything.next()).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buses_survive_a_server_restart() {
    let (mut server, bus1, bus2) = publisher_and_receiver().await;
    let mut on_2 = bus2.subscribe(Pattern::new("r").unwrap()).await.unwrap();
    let before = ev("before", 1);
    bus1.publish(&ns("r"), &before).await.unwrap();
    assert_eq!(next(&mut on_2).await, before);

    server.restart().await.unwrap();
    // The clients reconnect and re-subscribe on their own; the probe shows when both are back.
    wait_until_connected(&bus1, &bus2).await;
    wait_until_connected(&bus2, &bus1).await;

    let after = ev("after", 1);
    bus1.publish(&ns("r"), &after).await.unwrap();
    assert_eq!(
        next(&mut on_2).await,
        after,
        "events flow again, on the same subscription"
    );
    let back = ev("back", 1);
    let mut on_1 = bus1.subscribe(Pattern::new("r").unwrap()).await.unwrap();
    bus2.publish(&ns("r"), &back).await.unwrap();
    assert_eq!(next(&mut on_1).await, back, "in both directions");
    assert_eq!(bus1.undecodable() + bus2.undecodable(), 0);
}

#[tokio::test]
async fn garbage_on_a_bus_subject_is_counted_and_skipped() {
    let server = NatsServer::start().await.unwrap();
    let client = server.connect().await.unwrap();
    let bus = NatsEventBus::new(client.clone()).await.unwrap();
    let mut sub = bus.subscribe(Pattern::new("g").unwrap()).await.unwrap();
    let mut all = bus.subscribe(Pattern::new(">").unwrap()).await.unwrap();
    client
        .publish("aether.g", "\u{0}garbage".into())
        .await
        .unwrap();
    client
        .publish("aether.bad!namespace", "x".into())
        .await
        .unwrap();
    // A valid event from "another node" (a plain client) after the garbage.
    let event = ev("fine", 1);
    client
        .publish(
            "aether.g",
            aether_core::wire::encode_event(&event).unwrap().into(),
        )
        .await
        .unwrap();
    assert_eq!(next(&mut sub).await, event);
    assert_eq!(next(&mut all).await, event);
    assert_eq!(
        bus.undecodable(),
        3,
        "the garbage body (read by both subscriptions) and the impossible namespace were counted"
    );
    assert_eq!(bus.received(), 2, "the event, once per subscription");

    bus.stop();
    assert!(bus.publish(&ns("g"), &event).await.is_err());
}

/// A server (without JetStream) and two buses on it.
async fn publisher_and_receiver() -> (NatsServer, NatsEventBus, NatsEventBus) {
    let server = NatsServer::start_without_jetstream().await.unwrap();
    let publisher = NatsEventBus::new(server.connect().await.unwrap())
        .await
        .unwrap();
    let receiver = NatsEventBus::new(server.connect().await.unwrap())
        .await
        .unwrap();
    (server, publisher, receiver)
}

/// Each subscription is its own NATS subscription: the server sends a node only the namespaces
/// it asked for (the bus used to receive everything on `aether.>` and filter locally).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_receives_only_the_namespaces_it_subscribes_to() {
    let (_server, publisher, receiver) = publisher_and_receiver().await;
    let mut wanted = receiver
        .subscribe(Pattern::new("eu.*").unwrap())
        .await
        .unwrap();
    for v in 1..=100 {
        publisher
            .publish(&ns("us.orders"), &ev("us", v))
            .await
            .unwrap();
    }
    let event = ev("eu", 1);
    publisher.publish(&ns("eu.orders"), &event).await.unwrap();
    assert_eq!(next(&mut wanted).await, event);
    assert_eq!(
        receiver.received(),
        1,
        "the 100 events of another namespace never reached this node"
    );
}

/// A subscription from a NATS bus ends when the bus is gone (every handle dropped), and a
/// stopped bus's subscriptions get nothing more from other nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_or_dropping_the_bus_ends_remote_delivery() {
    let (_server, publisher, receiver) = publisher_and_receiver().await;
    let mut sub = receiver
        .subscribe(Pattern::new("s").unwrap())
        .await
        .unwrap();
    let first = ev("s", 1);
    publisher.publish(&ns("s"), &first).await.unwrap();
    assert_eq!(next(&mut sub).await, first);

    receiver.stop();
    // Subscribing after a stop gives this node's events only (and needs no server).
    let mut late = receiver
        .subscribe(Pattern::new("s").unwrap())
        .await
        .unwrap();
    assert!(receiver.publish(&ns("s"), &first).await.is_err());
    drop(receiver);
    let ended = tokio::time::timeout(WAIT, sub.next()).await.unwrap();
    assert_eq!(ended, None, "the subscription ends with its bus");
    assert_eq!(tokio::time::timeout(WAIT, late.next()).await.unwrap(), None);
}

/// A subscription's local part (this node's events) and NATS part (other nodes' events) fed
/// at once from two tasks: every event arrives exactly once, none of this node's own twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_and_remote_events_interleave_without_loss_or_echo() {
    const N: u64 = 2_000;
    let (_server, other, node) = publisher_and_receiver().await;
    let mut sub = node
        .subscribe_with(
            Pattern::new("mix").unwrap(),
            aether_bus::SubscribeOptions::default().capacity(N as usize),
        )
        .await
        .unwrap();
    let publish = |bus: NatsEventBus, actor: &'static str| {
        tokio::spawn(async move {
            for v in 1..=N {
                bus.publish(&ns("mix"), &ev(actor, v)).await.unwrap();
                if v % 100 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let (mine, theirs) = (
        publish(node.clone(), "mine"),
        publish(other.clone(), "theirs"),
    );
    let mut seen = std::collections::BTreeMap::<String, Vec<u64>>::new();
    for _ in 0..2 * N {
        let e = next(&mut sub).await;
        seen.entry(e.actor_id().to_owned())
            .or_default()
            .push(e.version());
    }
    mine.await.unwrap();
    theirs.await.unwrap();
    let expected: Vec<u64> = (1..=N).collect();
    assert_eq!(
        seen.get("mine"),
        Some(&expected),
        "own events once each, in order"
    );
    assert_eq!(
        seen.get("theirs"),
        Some(&expected),
        "the other node's, in order"
    );
    assert_eq!(sub.dropped(), 0);
    assert_eq!(
        node.received(),
        N,
        "no echo was taken for another node's event"
    );
}

/// `subscribe` during an outage (the server killed): once the server is back and the client
/// has reconnected, the subscription is confirmed and receives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_made_during_an_outage_works_once_the_server_is_back() {
    let (mut server, publisher, receiver) = publisher_and_receiver().await;
    server.kill().await.unwrap();
    let pending = {
        let receiver = receiver.clone();
        tokio::spawn(async move { receiver.subscribe(Pattern::new("outage").unwrap()).await })
    };
    server.restart().await.unwrap();
    let mut sub = tokio::time::timeout(2 * WAIT, pending)
        .await
        .expect("subscribe returns within the client's request timeout")
        .unwrap()
        .expect("confirmed once the server is back");
    wait_for_interest(&publisher, &mut sub, "outage").await;
    let event = ev("after-outage", 1);
    publisher.publish(&ns("outage"), &event).await.unwrap();
    assert_eq!(next(&mut sub).await, event);
}
