//! Records written straight into an actor's subject by another program: the `Aether-Version`
//! header is a record's version, the current version is read from the last record alone, reads
//! yield strictly increasing versions and report every record they skip, and the store never
//! writes a version twice.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use aether_core::{Event, EventStore, EventStoreWithErrors, StoreError, wire};
use aether_store_jetstream::{JetStreamEventStore, layout};
use aether_testkit::nats::NatsServer;
use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use bytes::Bytes;
use futures::{FutureExt, StreamExt, TryStreamExt};
use uuid::Uuid;

const GARBAGE: &[u8] = b"\xc1 not an event";

fn ev(actor: &str, version: u64) -> Event {
    Event::builder(actor, "Tested")
        .version(version)
        .payload(&version)
        .build()
        .unwrap()
}

/// The headers another program writes, following docs/nats-layout.md.
fn headers(id: Uuid, version: u64) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("Nats-Msg-Id", id.to_string().as_str());
    h.insert(layout::HEADER_VERSION, version.to_string().as_str());
    h.insert(layout::HEADER_EVENT_TYPE, "Tested");
    h
}

/// A record as another program publishes it; `Err` when the expected sequence was stale.
async fn publish(
    js: &async_nats::jetstream::Context,
    subject: &str,
    headers: HeaderMap,
    body: Bytes,
    expected_seq: Option<u64>,
) -> Result<u64, ()> {
    let mut msg = PublishMessage::build().payload(body).headers(headers);
    if let Some(seq) = expected_seq {
        msg = msg.expected_last_subject_sequence(seq);
    }
    let ack = match js.send_publish(subject.to_owned(), msg).await {
        Ok(ack) => ack.await,
        Err(e) => Err(e),
    };
    match ack {
        Ok(ack) => {
            assert!(!ack.duplicate, "no record is published twice");
            Ok(ack.sequence)
        }
        Err(e) if matches!(e.kind(), PublishErrorKind::WrongLastSequence) => Err(()),
        Err(e) => panic!("publishing a foreign record: {e}"),
    }
}

/// A valid record of `event`, its header matching its body.
async fn publish_event(
    js: &async_nats::jetstream::Context,
    subject: &str,
    event: &Event,
    expected_seq: Option<u64>,
) -> Result<u64, ()> {
    let body = Bytes::from(wire::encode_event(event).unwrap());
    publish(
        js,
        subject,
        headers(event.id(), event.version()),
        body,
        expected_seq,
    )
    .await
}

fn versions(events: &[Event]) -> Vec<u64> {
    events.iter().map(Event::version).collect()
}

async fn open(server: &NatsServer) -> (JetStreamEventStore, async_nats::jetstream::Context) {
    let store = JetStreamEventStore::new(server.connect().await.unwrap(), "events")
        .await
        .unwrap();
    let js = async_nats::jetstream::new(server.connect().await.unwrap());
    (store, js)
}

/// Watches the server's read requests for reads of an actor's whole history: a replay consumer
/// delivering everything, or a direct get from the first sequence. A replay makes one; reading the
/// current version never does.
struct HistoryWatch {
    client: async_nats::Client,
    creates: async_nats::Subscriber,
    direct_gets: async_nats::Subscriber,
    marker: async_nats::Subscriber,
}

impl HistoryWatch {
    async fn start(server: &NatsServer) -> Self {
        let client = server.connect().await.unwrap();
        let creates = client.subscribe("$JS.API.CONSUMER.CREATE.>").await.unwrap();
        let direct_gets = client.subscribe("$JS.API.DIRECT.GET.>").await.unwrap();
        let marker = client.subscribe("test.watch.marker").await.unwrap();
        let mut watch = Self {
            client,
            creates,
            direct_gets,
            marker,
        };
        // The subscriptions are registered once the server routes a message to one of them.
        watch.sync().await;
        watch
    }

    /// Waits until everything the server routed to this connection before now has arrived: the
    /// server delivers to one connection in order.
    async fn sync(&mut self) {
        self.client
            .publish("test.watch.marker", Bytes::new())
            .await
            .unwrap();
        self.marker.next().await.unwrap();
    }

    /// How many reads of a whole history started since the last call.
    async fn created(&mut self) -> usize {
        self.sync().await;
        let mut n = 0;
        while let Some(Some(request)) = self.creates.next().now_or_never() {
            // Only a consumer delivering everything reads the history (the store never reads
            // the few records after the last one it saw with a consumer, but if it did, that
            // would start at a sequence).
            let config: serde_json::Value =
                serde_json::from_slice(&request.payload).unwrap_or_default();
            if config["config"]["deliver_policy"] == "all" {
                n += 1;
            }
        }
        while let Some(Some(request)) = self.direct_gets.next().now_or_never() {
            let get: serde_json::Value =
                serde_json::from_slice(&request.payload).unwrap_or_default();
            if get["seq"].as_u64().is_some_and(|seq| seq <= 1) {
                n += 1;
            }
        }
        n
    }
}

#[tokio::test]
async fn reads_yield_strictly_increasing_versions_and_report_the_rest() {
    let server = NatsServer::start().await.unwrap();
    let (store, js) = open(&server).await;
    let actor = "disordered";
    let subject = store.subject_for(actor);

    // Another program writes versions 1, 3, 2, 3, bypassing the concurrency check.
    let records = [ev(actor, 1), ev(actor, 3), ev(actor, 2), ev(actor, 3)];
    let mut seqs = Vec::new();
    for event in &records {
        seqs.push(publish_event(&js, &subject, event, None).await.unwrap());
    }

    let events = store.get_events(actor, 0).await.unwrap();
    assert_eq!(versions(&events), [1, 3]);
    assert_eq!(events[0].id(), records[0].id());
    assert_eq!(events[1].id(), records[1].id());
    let streamed: Vec<Event> = store.stream_events(actor, 0).try_collect().await.unwrap();
    assert_eq!(versions(&streamed), [1, 3]);

    let replay = store.get_events_with_errors(actor, 0).await.unwrap();
    assert_eq!(versions(&replay.events), [1, 3]);
    let errors: Vec<(u64, &str)> = replay
        .errors
        .iter()
        .map(|e| (e.position, e.reason.as_str()))
        .collect();
    assert_eq!(
        errors,
        [
            (seqs[2], "version 2 after 3"),
            (seqs[3], "version 3 repeated")
        ]
    );
    assert_eq!(
        replay.errors[0].raw,
        Bytes::from(wire::encode_event(&records[2]).unwrap())
    );

    // From version 2 on: the same, restricted to versions >= 2.
    let replay = store.get_events_with_errors(actor, 2).await.unwrap();
    assert_eq!(versions(&replay.events), [3]);
    let positions: Vec<u64> = replay.errors.iter().map(|e| e.position).collect();
    assert_eq!(positions, [seqs[2], seqs[3]]);

    // The current version is the last record's header, and the store goes on above it.
    assert_eq!(store.get_latest_version(actor).await.unwrap(), 3);
    store.save_event(ev(actor, 4)).await.unwrap();
    assert_eq!(
        versions(&store.get_events(actor, 0).await.unwrap()),
        [1, 3, 4]
    );
}

#[tokio::test]
async fn an_undecodable_record_holds_the_version_in_its_header() {
    let server = NatsServer::start().await.unwrap();
    let (store, js) = open(&server).await;
    let actor = "undecodable";
    let subject = store.subject_for(actor);
    for v in 1..=4 {
        store.save_event(ev(actor, v)).await.unwrap();
    }
    let mut watch = HistoryWatch::start(&server).await;

    // Another program writes version 5 with a body Aether cannot decode, following the layout
    // (version header, expected sequence).
    let last = js
        .get_stream(store.stream_name())
        .await
        .unwrap()
        .get_last_raw_message_by_subject(&subject)
        .await
        .unwrap();
    let garbage_seq = publish(
        &js,
        &subject,
        headers(Uuid::now_v7(), 5),
        Bytes::from_static(GARBAGE),
        Some(last.sequence),
    )
    .await
    .unwrap();

    assert_eq!(store.get_latest_version(actor).await.unwrap(), 5);
    match store.save_event(ev(actor, 5)).await {
        Err(StoreError::VersionConflict(c)) => {
            assert_eq!((c.current_version, c.attempted_version), (5, 5));
        }
        other => panic!("expected a conflict at version 5, got {other:?}"),
    }
    store.save_event(ev(actor, 6)).await.unwrap();

    // A store that has not seen the actor reads the same from the headers.
    let (fresh, _) = open(&server).await;
    assert_eq!(fresh.get_latest_version(actor).await.unwrap(), 6);
    match fresh.save_event(ev(actor, 5)).await {
        Err(StoreError::VersionConflict(c)) => assert_eq!(c.current_version, 6),
        other => panic!("expected a conflict, got {other:?}"),
    }

    // None of that replayed the history: reading the current version is one read of the last
    // record.
    assert_eq!(watch.created().await, 0, "the history was not read");

    let replay = store.get_events_with_errors(actor, 0).await.unwrap();
    assert_eq!(versions(&replay.events), [1, 2, 3, 4, 6]);
    assert_eq!(replay.errors.len(), 1, "{:?}", replay.errors);
    assert_eq!(replay.errors[0].position, garbage_seq);
    assert_eq!(replay.errors[0].raw, Bytes::from_static(GARBAGE));
    assert!(
        replay.errors[0]
            .reason
            .starts_with("body does not decode: "),
        "{}",
        replay.errors[0].reason
    );
    assert_eq!(
        versions(&store.get_events(actor, 0).await.unwrap()),
        [1, 2, 3, 4, 6]
    );
    // The watch sees replays (so its zero above means something).
    assert!(watch.created().await > 0);
}

/// What the foreign writer published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Foreign {
    Valid,
    Undecodable,
    OutOfOrder,
    /// Published after the store wrote on top of what it read: always refused.
    Stale,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_writer_racing_the_store_never_makes_it_write_a_version_twice() {
    let server = NatsServer::start().await.unwrap();
    let (store, js) = open(&server).await;
    let actor = "contested";
    let subject = store.subject_for(actor);
    store.save_event(ev(actor, 1)).await.unwrap();
    let mut watch = HistoryWatch::start(&server).await;

    // Another program, for about two seconds: it reads the last record's version header and
    // publishes with the expected sequence, as the layout says; but some records have a body
    // Aether cannot decode, some repeat or go below the current version, and on every fourth turn
    // it lets the store write between its read and its publish, so that its publish is refused (a
    // race it loses for certain, whatever the scheduling: the store's wins are counted through
    // `store_acks`).
    let (store_acks, acks_seen) = tokio::sync::watch::channel(0u64);
    let foreign = tokio::spawn({
        let js = js.clone();
        let subject = subject.clone();
        let stream = js.get_stream(store.stream_name()).await.unwrap();
        let mut acks_seen = acks_seen;
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            let mut written: HashMap<u64, Foreign> = HashMap::new();
            let mut refused = 0;
            let mut stale_turns = 0;
            let mut turn = 0u64;
            while tokio::time::Instant::now() < deadline {
                let (seq, current) = match stream.get_last_raw_message_by_subject(&subject).await {
                    Ok(m) => {
                        let header = m.headers.get(layout::HEADER_VERSION).unwrap();
                        (m.sequence, header.as_str().parse::<u64>().unwrap())
                    }
                    Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => (0, 0),
                    Err(e) => panic!("{e}"),
                };
                turn += 1;
                let kind = match turn % 4 {
                    0 => Foreign::Valid,
                    1 => Foreign::Undecodable,
                    2 => Foreign::OutOfOrder,
                    _ => Foreign::Stale,
                };
                let published = match kind {
                    Foreign::Valid => {
                        publish_event(&js, &subject, &ev(actor, current + 1), Some(seq)).await
                    }
                    Foreign::Undecodable => {
                        let h = headers(Uuid::now_v7(), current + 1);
                        let body = Bytes::from_static(GARBAGE);
                        publish(&js, &subject, h, body, Some(seq)).await
                    }
                    Foreign::OutOfOrder => {
                        // Repeat the current version, or go one below it.
                        let version = if (turn / 4).is_multiple_of(2) {
                            current
                        } else {
                            current - 1
                        };
                        publish_event(&js, &subject, &ev(actor, version.max(1)), Some(seq)).await
                    }
                    Foreign::Stale => {
                        // The first acknowledgement counted after the read may be for a record
                        // written before it; the second is for a write the store began after
                        // the read had returned, so the read's sequence is no longer the last.
                        let seen = *acks_seen.borrow_and_update();
                        acks_seen.wait_for(|n| *n >= seen + 2).await.unwrap();
                        stale_turns += 1;
                        publish_event(&js, &subject, &ev(actor, current + 1), Some(seq)).await
                    }
                };
                match published {
                    Ok(seq) => {
                        assert_ne!(kind, Foreign::Stale, "a stale expected sequence is refused");
                        written.insert(seq, kind);
                    }
                    Err(()) => refused += 1,
                }
            }
            (written, refused, stale_turns)
        }
    });

    // The store appends the next version it believes free, taking the current version from
    // each conflict.
    let mut acked: Vec<Event> = Vec::new();
    let mut conflicts = 0;
    let mut current = 1;
    while !foreign.is_finished() {
        let event = ev(actor, current + 1);
        match store.save_event(event.clone()).await {
            Ok(()) => {
                current = event.version();
                acked.push(event);
                store_acks.send_modify(|n| *n += 1);
            }
            Err(StoreError::VersionConflict(c)) => {
                assert!(c.current_version >= event.version(), "{c:?}");
                conflicts += 1;
                current = c.current_version;
            }
            Err(other) => panic!("the store must keep up with the foreign writer: {other}"),
        }
    }
    let (written, refused, stale_turns) = foreign.await.unwrap();
    let kinds: HashSet<Foreign> = written.values().copied().collect();
    assert_eq!(
        kinds.len(),
        3,
        "the foreign writer wrote every kind it can win with"
    );
    assert!(
        stale_turns > 0 && refused >= stale_turns,
        "{refused} refused"
    );
    // Every foreign record written after the store's last acknowledged one makes its next
    // append conflict; the foreign writer won at least three times.
    assert!(conflicts > 0, "the store met the foreign records");
    assert!(!acked.is_empty());
    // A foreign writer that follows the layout never makes the store replay the history.
    assert_eq!(watch.created().await, 0, "the history was not read");

    // Every record, as stored.
    let stream = js.get_stream(store.stream_name()).await.unwrap();
    let last = stream
        .get_last_raw_message_by_subject(&subject)
        .await
        .unwrap()
        .sequence;
    let mut records = Vec::new();
    for seq in 1..=last {
        let m = stream.get_raw_message(seq).await.unwrap();
        let header: u64 = m
            .headers
            .get(layout::HEADER_VERSION)
            .unwrap()
            .as_str()
            .parse()
            .unwrap();
        records.push((seq, header, m.payload));
    }

    // The store's acknowledged writes: each stored once, at its version, and no two at the same
    // version.
    let mut stored_ids: HashMap<Uuid, Vec<u64>> = HashMap::new();
    for (_, header, body) in &records {
        if let Ok(e) = wire::decode_event(body) {
            stored_ids.entry(e.id()).or_default().push(*header);
        }
    }
    let mut store_versions = HashSet::new();
    for event in &acked {
        assert_eq!(
            stored_ids.get(&event.id()).map(Vec::as_slice),
            Some(&[event.version()][..]),
            "event {} is stored once, its header its version",
            event.id()
        );
        assert!(
            store_versions.insert(event.version()),
            "the store wrote version {} twice",
            event.version()
        );
    }

    // The documented rule, applied to the records by hand: yielded when the body decodes at the
    // header's version and the version is above every version held before it.
    let mut high = 0;
    let mut expected_events = Vec::new();
    let mut anomalies = Vec::new();
    for (seq, header, body) in &records {
        match wire::decode_event(body) {
            Ok(e) if e.version() == *header && *header > high => expected_events.push(e.id()),
            _ => anomalies.push(*seq),
        }
        high = high.max(*header);
    }

    let replay = store.get_events_with_errors(actor, 0).await.unwrap();
    let got: Vec<Uuid> = replay.events.iter().map(Event::id).collect();
    assert_eq!(got, expected_events);
    assert!(
        replay
            .events
            .windows(2)
            .all(|w| w[0].version() < w[1].version()),
        "strictly increasing versions"
    );
    let positions: Vec<u64> = replay.errors.iter().map(|e| e.position).collect();
    assert_eq!(positions, anomalies, "every anomaly is reported, in order");
    let reasons: HashMap<u64, &str> = replay
        .errors
        .iter()
        .map(|e| (e.position, e.reason.as_str()))
        .collect();
    for (seq, kind) in &written {
        let reason = reasons.get(seq).copied();
        match kind {
            Foreign::Undecodable => assert!(
                reason.is_some_and(|r| r.starts_with("body does not decode: ")),
                "record {seq}: {reason:?}"
            ),
            Foreign::OutOfOrder => assert!(
                reason.is_some_and(|r| r.ends_with(" repeated") || r.contains(" after ")),
                "record {seq}: {reason:?}"
            ),
            Foreign::Valid | Foreign::Stale => {}
        }
    }
    let plain: Vec<Uuid> = store
        .get_events(actor, 0)
        .await
        .unwrap()
        .iter()
        .map(Event::id)
        .collect();
    assert_eq!(plain, expected_events);
    // The store read every record after the last one it saw before writing, so none of its
    // writes reuses a version a foreign record holds: every acknowledged event is read back.
    let unread = acked.iter().filter(|e| !plain.contains(&e.id())).count();
    assert_eq!(
        unread, 0,
        "store writes at a version a foreign record already held"
    );
    eprintln!(
        "{} records: {} by the store ({conflicts} conflicts, {unread} below a foreign version), \
         {} foreign ({refused} refused), {} reported",
        records.len(),
        acked.len(),
        written.len(),
        anomalies.len()
    );
}
