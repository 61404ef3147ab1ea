//! The NATS bus against a nats-server whose users may publish and subscribe to some namespaces
//! only. With a permission watch on the connection (`NatsBusConfig::permissions`), a refused
//! subscription fails at once with `BusError::PermissionDenied` naming the subject; a refused
//! publish returns `Ok` the first time (core NATS has no answer), is heard by the watch, and the
//! next publishes to that subject fail at once with `BroadcastError::PermissionDenied`.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use aether_bus::permissions::{Operation, PermissionWatch};
use aether_bus::{
    BusError, NatsBusConfig, NatsEventBus, Projection, ProjectionConfig, ProjectionError,
    ProjectionRunner,
};
use aether_core::{BroadcastError, Event, Namespace, VersionCache};
use aether_testkit::nats::NatsServer;
use aether_testkit::tenancy::{self, Authorization, ConfiguredServer};
use futures::StreamExt;

/// A refusal must be reported well within this (a refused subscription used to succeed and
/// stay silent, a refused round trip to time out after 10 s).
const PROMPT: Duration = Duration::from_secs(2);

/// `tenant-a` may use namespace `tenant-a` and the bus's round trip subjects; `no-sync` may use
/// the namespace but not the round trip subjects; `reader` may read the info of store `events`'s
/// stream in namespace `tenant-a`, but create no consumer on it.
async fn server() -> ConfiguredServer {
    Authorization::with_operator()
        .restricted_user(
            "tenant-a",
            "a",
            r#"{
        publish: { allow: ["aether.tenant-a", "_AETHER.>"] }
        subscribe: { allow: ["aether.tenant-a", "_AETHER.>"] }
    }"#,
        )
        .restricted_user(
            "reader",
            "r",
            r#"{
        publish: { allow: ["$JS.API.STREAM.INFO.events_tenant-a"] }
        subscribe: { allow: ["_INBOX.>"] }
    }"#,
        )
        .restricted_user(
            "no-sync",
            "n",
            r#"{
        publish: { allow: ["aether.tenant-a"] }
        subscribe: { allow: ["aether.tenant-a"] }
    }"#,
        )
        .start("bus-permissions")
        .await
        .unwrap()
}

async fn connect(
    server: &NatsServer,
    user: &str,
    password: &str,
) -> (async_nats::Client, PermissionWatch) {
    tenancy::connect_watched(server, user, password, None)
        .await
        .unwrap()
}

async fn bus(server: &NatsServer, user: &str, password: &str) -> (NatsEventBus, PermissionWatch) {
    let (client, watch) = connect(server, user, password).await;
    let bus =
        NatsEventBus::with_config(client, NatsBusConfig::default().permissions(watch.clone()))
            .await
            .unwrap();
    (bus, watch)
}

fn ns(s: &str) -> Namespace {
    Namespace::new(s).unwrap()
}

fn ev(actor: &str, v: u64) -> Event {
    Event::builder(actor, "Tested").version(v).build().unwrap()
}

fn refused_subscription(
    what: &str,
    started: Instant,
    result: Result<impl std::fmt::Debug, BusError>,
) -> String {
    let took = started.elapsed();
    let subject = match result {
        Err(BusError::PermissionDenied { operation, subject }) => {
            assert_eq!(operation, "subscribe", "{what}");
            subject
        }
        other => panic!("{what}: expected a permission refusal, got {other:?}"),
    };
    assert!(took < PROMPT, "{what} took {took:?}");
    eprintln!("{what}: refused in {took:?} ({subject})");
    subject
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_subscription_fails_at_once_naming_the_subject() {
    let server = server().await;
    let (bus, watch) = bus(&server, "tenant-a", "a").await;

    let started = Instant::now();
    let refused = bus.subscribe("tenant-b".parse().unwrap()).await;
    let subject = refused_subscription("a subscription to another tenant", started, refused);
    assert_eq!(subject, "aether.tenant-b");
    assert!(watch.refusals() >= 1);

    // The allowed one works, and receives other nodes' events.
    let started = Instant::now();
    let mut own = bus.subscribe("tenant-a".parse().unwrap()).await.unwrap();
    eprintln!("an allowed subscription took {:?}", started.elapsed());
    let operator = NatsEventBus::new(tenancy::connect_operator(&server).await.unwrap())
        .await
        .unwrap();
    operator
        .publish(&ns("tenant-a"), &ev("o-1", 1))
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), own.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.actor_id(), "o-1");

    // A wildcard reaching beyond what the user may read is refused whole.
    let started = Instant::now();
    let refused = bus.subscribe(">".parse().unwrap()).await;
    assert_eq!(
        refused_subscription("a subscription to every namespace", started, refused),
        "aether.>"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_round_trip_fails_at_once_naming_its_subject() {
    let server = server().await;
    let (bus, _watch) = bus(&server, "no-sync", "n").await;
    let started = Instant::now();
    let refused = bus.subscribe("tenant-a".parse().unwrap()).await;
    let subject = refused_subscription(
        "a subscription without the round trip's rights",
        started,
        refused,
    );
    assert!(subject.starts_with("_AETHER.sync."), "{subject}");
}

#[derive(Debug)]
struct NoCache;

impl VersionCache for NoCache {
    fn update_version_cache(&self, _: &str, _: u64) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_cache_bus_without_the_rights_to_every_namespace_does_not_start() {
    let server = server().await;
    let (client, watch) = connect(&server, "tenant-a", "a").await;
    let started = Instant::now();
    let started_bus = NatsEventBus::with_config(
        client,
        NatsBusConfig::default()
            .version_cache(Arc::new(NoCache))
            .permissions(watch),
    )
    .await;
    assert_eq!(
        refused_subscription("a version cache bus", started, started_bus),
        "aether.>"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_to_a_refused_subject_fail_once_the_watch_heard_the_refusal() {
    let server = server().await;
    let (bus, watch) = bus(&server, "tenant-a", "a").await;

    // Core NATS has no answer: the first publish returns Ok, and the refusal comes to the watch.
    bus.publish(&ns("tenant-b"), &ev("x", 1)).await.unwrap();
    let started = Instant::now();
    while watch
        .recently_refused(Operation::Publish, "aether.tenant-b")
        .is_none()
    {
        assert!(
            started.elapsed() < PROMPT,
            "the watch never heard the refusal"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "the watch heard the refused publish after {:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let again = bus.publish(&ns("tenant-b"), &ev("x", 2)).await;
    match again {
        Err(BroadcastError::PermissionDenied { operation, subject }) => {
            assert_eq!(operation, "publish");
            assert_eq!(subject, "aether.tenant-b");
        }
        other => panic!("expected a permission refusal, got {other:?}"),
    }
    assert!(started.elapsed() < PROMPT);
    // Other subjects are not affected.
    bus.publish(&ns("tenant-a"), &ev("y", 1)).await.unwrap();
}

struct Ignore;

#[async_trait::async_trait]
impl Projection for Ignore {
    async fn apply(&self, _: &Event, _: u64) -> Result<(), aether_core::BoxError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_without_the_right_to_a_consumer_fails_to_start_at_once() {
    let server = server().await;
    let operator = tenancy::connect_operator(&server).await.unwrap();
    let store = aether_store_jetstream::JetStreamEventStore::with_namespace(
        operator,
        "events",
        ns("tenant-a"),
    )
    .await
    .unwrap();
    let (client, watch) = connect(&server, "reader", "r").await;
    let config = ProjectionConfig::new("totals", store.stream_name(), store.subject_filter())
        .permissions(watch);
    let started = Instant::now();
    let refused =
        ProjectionRunner::start(async_nats::jetstream::new(client), config, Arc::new(Ignore)).await;
    let took = started.elapsed();
    match refused {
        Err(ProjectionError::PermissionDenied {
            operation, subject, ..
        }) => {
            assert_eq!(operation, "publish");
            assert!(
                subject.starts_with("$JS.API.CONSUMER.") && subject.contains(".events_tenant-a."),
                "{subject}"
            );
        }
        other => panic!("expected a permission refusal, got {other:?}"),
    }
    assert!(took < PROMPT, "the refused projection took {took:?}");
    eprintln!("a projection without consumer rights: refused in {took:?}");
}
