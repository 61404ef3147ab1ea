//! What reads leave on the server: a long replay's consumer is deleted when the read ends or is
//! dropped, a store never holds more than its bound, short reads hold none, and a server limit
//! reaches the caller as an error naming it.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write as _;
use std::time::{Duration, Instant};

use aether_core::{Event, EventStore, ServerLimit, StoreError};
use aether_store_jetstream::{JetStreamConfig, JetStreamEventStore};
use aether_testkit::nats::NatsServer;
use futures::StreamExt;

/// Long enough for a replay consumer (more than 256 records).
const LONG: u64 = 1000;

fn ev(actor: &str, version: u64) -> Event {
    Event::builder(actor, "Read")
        .version(version)
        .payload(&version)
        .build()
        .unwrap()
}

async fn open(client: &async_nats::Client, config: JetStreamConfig) -> JetStreamEventStore {
    JetStreamEventStore::with_config(client.clone(), "events", config)
        .await
        .expect("open the store")
}

async fn consumers(client: &async_nats::Client, stream: &str) -> usize {
    let js = async_nats::jetstream::new(client.clone());
    let mut stream = js.get_stream(stream).await.unwrap();
    stream.info().await.unwrap().state.consumer_count
}

/// Waits up to a second for the stream's consumers to drop to `want`.
async fn consumers_drop_to(client: &async_nats::Client, stream: &str, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let n = consumers(client, stream).await;
        if n <= want {
            return;
        }
        assert!(Instant::now() < deadline, "{n} consumers after a second");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn seed(store: &JetStreamEventStore, actor: &str, n: u64) {
    store
        .save_events((1..=n).map(|v| ev(actor, v)).collect())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_long_replay_deletes_its_consumer_when_it_ends_or_is_dropped() {
    let server = NatsServer::start().await.unwrap();
    let client = server.connect().await.unwrap();
    let store = open(&client, JetStreamConfig::default()).await;
    let stream = store.stream_name().to_owned();
    seed(&store, "long", LONG).await;
    seed(&store, "short", 200).await;

    // A short read holds no consumer at any point; a long one holds one while it reads.
    let mut short = store.stream_events("short", 0);
    short.next().await.unwrap().unwrap();
    assert_eq!(
        consumers(&client, &stream).await,
        0,
        "a short read uses none"
    );
    assert_eq!(short.count().await, 199);
    let mut long = store.stream_events("long", 0);
    for v in 1..=10 {
        assert_eq!(long.next().await.unwrap().unwrap().version(), v);
    }
    assert_eq!(consumers(&client, &stream).await, 1, "a long read uses one");
    // Read to the end: the consumer is gone when the last event is returned.
    assert_eq!(long.count().await as u64, LONG - 10);
    assert_eq!(consumers(&client, &stream).await, 0);

    // Dropped mid-read: gone within a second.
    let mut long = store.stream_events("long", 0);
    long.next().await.unwrap().unwrap();
    assert_eq!(consumers(&client, &stream).await, 1);
    drop(long);
    consumers_drop_to(&client, &stream, 0).await;

    // The whole history, and a read from a version, are complete and in order.
    let all = store.get_events("long", 0).await.unwrap();
    assert!(all.iter().map(Event::version).eq(1..=LONG));
    let tail = store.get_events("long", 300).await.unwrap();
    assert!(tail.iter().map(Event::version).eq(300..=LONG));
    assert_eq!(consumers(&client, &stream).await, 0);
}

#[tokio::test]
async fn a_store_holds_at_most_its_bound_and_reads_the_rest_by_direct_gets() {
    let server = NatsServer::start().await.unwrap();
    let client = server.connect().await.unwrap();
    let store = open(&client, JetStreamConfig::default().max_replay_consumers(1)).await;
    let stream = store.stream_name().to_owned();
    for a in ["a", "b", "c"] {
        seed(&store, a, LONG).await;
    }
    let mut reads: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|a| store.stream_events(a, 0))
        .collect();
    for read in &mut reads {
        assert_eq!(read.next().await.unwrap().unwrap().version(), 1);
    }
    assert_eq!(
        consumers(&client, &stream).await,
        1,
        "one permit, one consumer"
    );
    for read in reads {
        assert_eq!(read.count().await as u64, LONG - 1);
    }
    assert_eq!(consumers(&client, &stream).await, 0);

    // No permits at all: every read by direct gets.
    let direct = open(&client, JetStreamConfig::default().max_replay_consumers(0)).await;
    let mut read = direct.stream_events("a", 0);
    read.next().await.unwrap().unwrap();
    assert_eq!(consumers(&client, &stream).await, 0);
    assert_eq!(read.count().await as u64, LONG - 1);
}

/// An account that may store 1 MiB on disk: appends beyond it fail with an error naming the
/// storage limit, not transient (retrying cannot help), and nothing is stored.
#[tokio::test]
async fn a_full_account_is_an_error_naming_the_storage_limit() {
    let mut conf = tempfile::NamedTempFile::new().unwrap();
    write!(
        conf,
        "accounts {{ APP {{ jetstream {{ max_file: 1MB }}, users [ {{ user: app, password: app }} ] }} }}\n\
         no_auth_user: app\n"
    )
    .unwrap();
    let server = NatsServer::start_with(
        "aether-full",
        vec!["-c".into(), conf.path().display().to_string()],
    )
    .await
    .unwrap();
    let client = server.connect().await.unwrap();
    let store = open(&client, JetStreamConfig::default()).await;
    let big = "x".repeat(100 * 1024);
    let mut refused = None;
    for v in 1..=40 {
        let event = Event::builder("heavy", "Big")
            .version(v)
            .payload(&big)
            .build()
            .unwrap();
        match store.save_event(event).await {
            Ok(()) => {}
            Err(e) => {
                refused = Some((v, e));
                break;
            }
        }
    }
    let (v, e) = refused.expect("the account's storage limit refused an append");
    match &e {
        StoreError::LimitReached { limit, .. } => assert_eq!(*limit, ServerLimit::Storage),
        other => panic!("expected LimitReached, got {other:?}"),
    }
    assert!(!e.is_transient(), "a full disk does not clear by itself");
    assert!(e.to_string().contains("storage limit"), "{e}");
    assert_eq!(
        store.get_latest_version("heavy").await.unwrap(),
        v - 1,
        "nothing of the refused append was stored"
    );
}
