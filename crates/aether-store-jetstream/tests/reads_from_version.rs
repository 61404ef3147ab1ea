//! Reads from a version cost what follows that version, not the history before it, against a
//! real nats-server: counted with `read_stats` (records delivered, position lookups), never
//! timed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use aether_core::{ActorSnapshot, Event, EventStore, EventStoreWithErrors, SnapshotStore};
use aether_store_jetstream::{JetStreamEventStore, ReadStats, layout};
use aether_testkit::nats::NatsServer;
use async_nats::HeaderMap;

fn event(actor: &str, version: u64) -> Event {
    Event::new(actor, "Counted", version, &version).unwrap()
}

/// Appends versions `from..=to` of `actor` in atomic batches of up to 1,000.
async fn append(store: &JetStreamEventStore, actor: &str, from: u64, to: u64) {
    let mut v = from;
    while v <= to {
        let end = (v + 999).min(to);
        store
            .save_events((v..=end).map(|v| event(actor, v)).collect())
            .await
            .unwrap();
        v = end + 1;
    }
}

fn versions(events: &[Event]) -> Vec<u64> {
    events.iter().map(Event::version).collect()
}

fn delta(before: ReadStats, after: ReadStats) -> (u64, u64) {
    (
        after.records_read - before.records_read,
        after.position_lookups - before.position_lookups,
    )
}

/// Enough lookups for a search over `n` stream positions: about two per halving.
fn lookup_bound(n: u64) -> u64 {
    2 * (u64::BITS - n.leading_zeros()) as u64 + 2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_the_tail_of_a_long_history_reads_only_the_tail() {
    let server = NatsServer::start().await.expect("start nats-server");
    let client = server.connect().await.unwrap();
    let store = JetStreamEventStore::new(client.clone(), "tail")
        .await
        .unwrap();
    for n in [1_000u64, 10_000, 100_000] {
        let actor = format!("long-{n}");
        append(&store, &actor, 1, n).await;
        // A store that did not write the events knows nothing about where they are.
        let reader = JetStreamEventStore::new(client.clone(), "tail")
            .await
            .unwrap();
        let before = reader.read_stats();
        let tail = reader.get_events(&actor, n - 9).await.unwrap();
        let (read, lookups) = delta(before, reader.read_stats());
        assert_eq!(versions(&tail), (n - 9..=n).collect::<Vec<_>>());
        println!("{n} events: the last 10 cost {read} records and {lookups} lookups");
        assert!(
            read <= 10 + 32,
            "{n} events: reading the last 10 read {read} records"
        );
        assert!(
            lookups <= lookup_bound(n),
            "{n} events: {lookups} position lookups"
        );
        // Beyond the end, and exactly the last one.
        assert!(reader.get_events(&actor, n + 1).await.unwrap().is_empty());
        assert_eq!(versions(&reader.get_events(&actor, n).await.unwrap()), [n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_from_any_version_of_interleaved_actors_equal_the_filtered_full_read() {
    let server = NatsServer::start().await.expect("start nats-server");
    let client = server.connect().await.unwrap();
    let store = JetStreamEventStore::new(client.clone(), "mixed")
        .await
        .unwrap();
    // Three actors written in uneven turns, so versions and stream positions do not line up.
    let (mut a, mut b, mut c) = (0u64, 0u64, 0u64);
    for round in 0..300u64 {
        a += 1;
        store.save_event(event("a", a)).await.unwrap();
        if round % 3 == 0 {
            b += 1;
            store.save_event(event("b", b)).await.unwrap();
        }
        if round % 7 < 5 {
            for _ in 0..(round % 4) {
                c += 1;
                store.save_event(event("c", c)).await.unwrap();
            }
        }
    }
    for (actor, n) in [("a", a), ("b", b), ("c", c)] {
        let reader = JetStreamEventStore::new(client.clone(), "mixed")
            .await
            .unwrap();
        let all = versions(&reader.get_events(actor, 0).await.unwrap());
        assert_eq!(all, (1..=n).collect::<Vec<_>>());
        for from in [
            0,
            1,
            2,
            3,
            n / 3,
            n / 2,
            n - 40,
            n - 33,
            n - 1,
            n,
            n + 1,
            n + 100,
        ] {
            let before = reader.read_stats();
            let got = versions(&reader.get_events(actor, from).await.unwrap());
            let (read, lookups) = delta(before, reader.read_stats());
            let want: Vec<u64> = all.iter().copied().filter(|&v| v >= from).collect();
            assert_eq!(got, want, "actor {actor}, from {from}");
            assert!(
                read <= want.len() as u64 + 32,
                "actor {actor}, from {from}: read {read} records for {} events",
                want.len()
            );
            assert!(
                lookups <= lookup_bound(1_000),
                "actor {actor}, from {from}: {lookups} lookups"
            );
        }
    }
}

/// Publishes a record the way a foreign writer would: `version` as the header (if any), `body`.
async fn publish_raw(
    js: &async_nats::jetstream::Context,
    subject: &str,
    version: Option<u64>,
    body: Vec<u8>,
) {
    let mut headers = HeaderMap::new();
    if let Some(v) = version {
        headers.insert(layout::HEADER_VERSION, v.to_string().as_str());
    }
    js.publish_with_headers(subject.to_owned(), headers, body.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_without_a_version_never_make_a_read_miss_an_event() {
    let server = NatsServer::start().await.expect("start nats-server");
    let client = server.connect().await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let store = JetStreamEventStore::new(client.clone(), "odd")
        .await
        .unwrap();
    let subject = store.subject_for("x");
    // 1..=200, with records that hold no version (no header, garbage body) in between.
    for v in 1..=200u64 {
        if v % 50 == 0 {
            publish_raw(&js, &subject, None, b"not an event".to_vec()).await;
        }
        let body = aether_core::wire::encode_event(&event("x", v)).unwrap();
        publish_raw(&js, &subject, Some(v), body).await;
    }
    let reader = JetStreamEventStore::new(client.clone(), "odd")
        .await
        .unwrap();
    for from in [2, 49, 50, 51, 99, 100, 150, 151, 199, 200] {
        let result = reader.get_events_with_errors("x", from).await.unwrap();
        assert_eq!(
            versions(&result.events),
            (from..=200).collect::<Vec<_>>(),
            "from {from}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_saved_by_a_store_that_wrote_nothing_records_its_position() {
    let server = NatsServer::start().await.expect("start nats-server");
    let client = server.connect().await.unwrap();
    let writer = JetStreamEventStore::new(client.clone(), "snap")
        .await
        .unwrap();
    append(&writer, "s", 1, 20_000).await;
    append(&writer, "t", 1, 5).await;
    // A restarted process: it read the actor and saves a snapshot of version 12,345 (not the
    // last one) and of the last version of another actor.
    let restarted = JetStreamEventStore::new(client.clone(), "snap")
        .await
        .unwrap();
    let snapshot = ActorSnapshot::new("s", 12_345, &12_345u64).unwrap();
    restarted.save_snapshot(snapshot).await.unwrap();
    restarted
        .save_snapshot(ActorSnapshot::new("t", 5, &5u64).unwrap())
        .await
        .unwrap();
    // A third process loads the snapshot and reads what follows it: no search, no history.
    let later = JetStreamEventStore::new(client.clone(), "snap")
        .await
        .unwrap();
    for (actor, version, last) in [("s", 12_345u64, 20_000u64), ("t", 5, 5)] {
        let loaded = later.get_latest_snapshot(actor).await.unwrap().unwrap();
        assert_eq!(loaded.version, version);
        let before = later.read_stats();
        let rest = later.get_events(actor, version + 1).await.unwrap();
        let (read, lookups) = delta(before, later.read_stats());
        assert_eq!(versions(&rest), (version + 1..=last).collect::<Vec<_>>());
        assert_eq!(
            read,
            last - version,
            "{actor}: records read after the snapshot"
        );
        assert_eq!(
            lookups, 0,
            "{actor}: the snapshot's recorded position is used"
        );
    }
}
