//! The bus for tenants: two tenants on one NATS account, each a namespace with users whose
//! subject permissions are the bus's block of docs/security.md, exactly as written there (for the
//! other tenant, its namespace substituted). Each tenant's buses publish and receive on their
//! namespace and the namespaces below it, and the server logs no permission violation while they
//! do; a tenant's publish to the other's namespace reaches nobody, and its subscription to the
//! other's namespace receives nothing. With a `>` subscriber on the account that never answers,
//! `NatsEventBus::subscribe` still returns at once.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use aether_bus::{NatsEventBus, Pattern, Subscription, round_trip};
use aether_core::{Event, Namespace};
use aether_testkit::tenancy::{self, Role, TenantUser};
use futures::{FutureExt, StreamExt};

/// The users besides the operator (no restrictions): `bus-a`, `bus-b` with the bus's block for
/// their tenant.
const USERS: &[TenantUser] = &[
    TenantUser::new("bus-a", "a", Role::Bus, "tenant-a"),
    TenantUser::new("bus-b", "b", Role::Bus, "tenant-b"),
];

fn ns(s: &str) -> Namespace {
    Namespace::new(s).unwrap()
}

fn pattern(s: &str) -> Pattern {
    s.parse().unwrap()
}

fn ev(actor: &str, v: u64) -> Event {
    Event::builder(actor, "Tested").version(v).build().unwrap()
}

async fn next(sub: &mut Subscription) -> Event {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("an event within 10 s")
        .expect("the subscription is open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_s_bus_uses_its_namespace_and_reaches_nothing_of_the_other() {
    let server = tenancy::start_tenants("bus-tenants", USERS).await.unwrap();
    let a1_client = tenancy::connect(&server, "bus-a", "a", None).await.unwrap();
    let a1 = NatsEventBus::new(a1_client.clone()).await.unwrap();
    let a2 = NatsEventBus::new(tenancy::connect(&server, "bus-a", "a", None).await.unwrap())
        .await
        .unwrap();
    let b_client = tenancy::connect(&server, "bus-b", "b", None).await.unwrap();
    let b = NatsEventBus::new(b_client.clone()).await.unwrap();
    let operator = NatsEventBus::new(tenancy::connect_operator(&server).await.unwrap())
        .await
        .unwrap();

    // Tenant A's buses: its namespace and the ones below it, across connections.
    let mut a_top = a2.subscribe(pattern("tenant-a")).await.unwrap();
    let mut a_below = a2.subscribe(pattern("tenant-a.>")).await.unwrap();
    a1.publish(&ns("tenant-a"), &ev("order-1", 1))
        .await
        .unwrap();
    a1.publish(&ns("tenant-a.orders"), &ev("order-2", 1))
        .await
        .unwrap();
    assert_eq!(next(&mut a_top).await.actor_id(), "order-1");
    assert_eq!(next(&mut a_below).await.actor_id(), "order-2");
    assert!(
        tenancy::violations(&server).is_empty(),
        "the bus's block must cover everything a bus does: {:?}",
        tenancy::violations(&server)
    );

    // A publish by A to B's namespace reaches nobody: B's subscriber gets the operator's marker,
    // published after the server handled A's publish (A's round trip), and nothing before it.
    let mut b_sub = b.subscribe(pattern("tenant-b")).await.unwrap();
    let forged = a1.publish(&ns("tenant-b"), &ev("forged", 1)).await;
    round_trip(&a1_client).await.unwrap();
    operator
        .publish(&ns("tenant-b"), &ev("marker", 1))
        .await
        .unwrap();
    assert_eq!(
        next(&mut b_sub).await.actor_id(),
        "marker",
        "tenant B received tenant A's publish ({forged:?})"
    );

    // A subscription by A to B's namespace (through the bus, or a raw one to every bus subject)
    // receives nothing: after B's event, the operator's marker to A's own namespace arrives on the
    // same connection, and nothing of B's came before it.
    let peek = a1.subscribe(pattern("tenant-b")).await;
    let mut raw_peek = a1_client.subscribe("aether.>").await.unwrap();
    let mut a_own = a1.subscribe(pattern("tenant-a")).await.unwrap();
    b.publish(&ns("tenant-b"), &ev("secret", 1)).await.unwrap();
    round_trip(&b_client).await.unwrap();
    operator
        .publish(&ns("tenant-a"), &ev("marker", 2))
        .await
        .unwrap();
    assert_eq!(next(&mut a_own).await.actor_id(), "marker");
    if let Ok(mut peek) = peek {
        assert!(
            tenancy::nothing_received(&mut peek),
            "tenant A's bus received tenant B's event"
        );
    }
    let raw = raw_peek.next().now_or_never();
    assert!(
        !matches!(raw, Some(Some(ref m)) if m.subject.as_str() == "aether.tenant-b"),
        "tenant A's raw subscription received tenant B's event"
    );

    // Every refusal was the server's permission check.
    let refused = tenancy::violations(&server);
    let missing = tenancy::not_logged(
        &refused,
        "bus-a",
        &[
            "Publish Violation - Subject \"aether.tenant-b\"",
            "Subscription Violation - Subject \"aether.tenant-b\"",
            "Subscription Violation - Subject \"aether.>\"",
        ],
    );
    assert!(missing.is_empty(), "no {missing:?} in {refused:#?}");
    let unexpected = tenancy::unexpected_violations(&refused, &["bus-a"], |l| {
        l.contains("\"aether.tenant-b\"") || l.contains("\"aether.>\"")
    });
    assert!(unexpected.is_empty(), "{unexpected:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_s_bus_subscribes_at_once_with_a_catch_all_subscriber_on_the_account() {
    let server = tenancy::start_tenants("bus-catch-all", USERS)
        .await
        .unwrap();
    // Someone debugging with `nats sub ">"`: it receives everything and answers nothing.
    let debug = tenancy::connect_operator(&server).await.unwrap();
    let mut everything = debug.subscribe(">").await.unwrap();
    debug.flush().await.unwrap();
    round_trip(&debug).await.unwrap();

    let subscriber =
        NatsEventBus::new(tenancy::connect(&server, "bus-a", "a", None).await.unwrap())
            .await
            .unwrap();
    let publisher = NatsEventBus::new(tenancy::connect(&server, "bus-a", "a", None).await.unwrap())
        .await
        .unwrap();
    for v in 1..=3 {
        let started = Instant::now();
        let mut sub = subscriber
            .subscribe(pattern(&format!("tenant-a.s{v}")))
            .await
            .unwrap();
        let took = started.elapsed();
        assert!(took < Duration::from_secs(3), "subscribe took {took:?}");
        // The subscription is in place: what is published right after it arrives.
        publisher
            .publish(&ns(&format!("tenant-a.s{v}")), &ev("order-1", v))
            .await
            .unwrap();
        assert_eq!(next(&mut sub).await.version(), v);
    }
    // The catch-all saw the readiness messages (and the events), and answered none of them. Its
    // own round trip comes back after everything the server sent it before.
    round_trip(&debug).await.unwrap();
    let mut readiness = 0;
    while let Some(Some(m)) = everything.next().now_or_never() {
        readiness += usize::from(m.subject.as_str().starts_with("_AETHER.sync."));
    }
    assert!(
        readiness >= 3,
        "the `>` subscriber saw {readiness} readiness messages"
    );
    assert!(
        tenancy::violations(&server).is_empty(),
        "{:?}",
        tenancy::violations(&server)
    );
}
