//! The store's reader: two tenants on one NATS account, each with a writer (the writer's block
//! of docs/security.md) and a read-only user whose subject permissions are the reader's block of
//! docs/security.md, exactly as written there (for the other tenant, its namespace substituted).
//! The reader opens its tenant's store by binding, replays (a replay consumer and direct gets),
//! reads versions and snapshots, and the server logs no permission violation while it does; it
//! can neither append nor save a snapshot, and reaches nothing of the other tenant's stream or
//! snapshots.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use aether_core::{ActorSnapshot, Event, EventStore, Namespace, SnapshotStore};
use aether_store_jetstream::{JetStreamConfig, JetStreamEventStore};
use aether_testkit::tenancy::{self, Marker, Role, TenantUser};

/// The users besides the operator: `writer-a`, `writer-b` with the writer's block for their
/// namespace, `reader-a` with the reader's block for `tenant-a`.
const USERS: &[TenantUser] = &[
    TenantUser::new("writer-a", "wa", Role::Writer, "tenant-a"),
    TenantUser::new("writer-b", "wb", Role::Writer, "tenant-b"),
    TenantUser::new("reader-a", "ra", Role::Reader, "tenant-a"),
];

async fn open(client: &async_nats::Client, namespace: &str) -> JetStreamEventStore {
    JetStreamEventStore::with_config(
        client.clone(),
        "events",
        JetStreamConfig::default()
            .namespace(Namespace::new(namespace).unwrap())
            .request_timeout(Duration::from_secs(2)),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_reads_its_tenant_s_store_and_nothing_else() {
    let server = tenancy::start_tenants("readers", USERS).await.unwrap();

    // The operator creates both stores; each tenant's writer fills its own.
    let operator = tenancy::connect_operator(&server).await.unwrap();
    for ns in ["tenant-a", "tenant-b"] {
        open(&operator, ns).await;
    }
    let writer_a = open(
        &tenancy::connect(&server, "writer-a", "wa", Some("_INBOX_tenant-a"))
            .await
            .unwrap(),
        "tenant-a",
    )
    .await;
    let events: Vec<Event> = (1..=300u64)
        .map(|v| Event::new("order-1", "Added", v, &v).unwrap())
        .collect();
    for chunk in events.chunks(50) {
        writer_a.save_events(chunk.to_vec()).await.unwrap();
    }
    writer_a
        .save_snapshot(ActorSnapshot::new("order-1", 300, &"state at 300").unwrap())
        .await
        .unwrap();
    let writer_b = open(
        &tenancy::connect(&server, "writer-b", "wb", Some("_INBOX_tenant-b"))
            .await
            .unwrap(),
        "tenant-b",
    )
    .await;
    writer_b
        .save_event(Event::new("secret-1", "Kept", 1, &"b's data").unwrap())
        .await
        .unwrap();
    writer_b
        .save_snapshot(ActorSnapshot::new("secret-1", 1, &"b's state").unwrap())
        .await
        .unwrap();

    // The reader binds to its store (no create rights) and reads all of it: a long replay (a
    // replay consumer), a short one (direct gets), the latest version, the latest snapshot.
    let reader_client = tenancy::connect(&server, "reader-a", "ra", Some("_INBOX_tenant-a"))
        .await
        .unwrap();
    let reader = open(&reader_client, "tenant-a").await;
    let all = reader.get_events("order-1", 1).await.unwrap();
    assert_eq!(all.len(), 300);
    assert_eq!(all.last().unwrap().decode::<u64>().unwrap(), 300);
    assert_eq!(reader.get_events("order-1", 290).await.unwrap().len(), 11);
    assert_eq!(reader.get_latest_version("order-1").await.unwrap(), 300);
    let snapshot = reader
        .get_latest_snapshot("order-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(snapshot.version, 300);
    assert_eq!(snapshot.decode::<String>().unwrap(), "state at 300");
    assert!(
        tenancy::violations(&server).is_empty(),
        "the reader's block must cover everything a reader does: {:?}",
        tenancy::violations(&server)
    );

    // It cannot write: an append and a snapshot are refused and stored nowhere.
    let append = reader
        .save_event(Event::new("order-1", "Added", 301, &301u64).unwrap())
        .await;
    assert!(append.is_err(), "a reader appended: {append:?}");
    let save = reader
        .save_snapshot(ActorSnapshot::new("order-1", 300, &"forged").unwrap())
        .await;
    assert!(save.is_err(), "a reader saved a snapshot: {save:?}");
    assert_eq!(writer_a.get_latest_version("order-1").await.unwrap(), 300);
    let kept = writer_a
        .get_latest_snapshot("order-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.decode::<String>().unwrap(), "state at 300");

    // It reaches nothing of tenant B's: stream info, snapshot bucket, direct get, publish.
    let short = |c: &async_nats::Client| {
        async_nats::jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(1))
            .build(c.clone())
    };
    assert!(
        short(&reader_client)
            .get_stream("events_tenant-b")
            .await
            .is_err()
    );
    assert!(
        short(&reader_client)
            .get_key_value("events_tenant-b-snapshots")
            .await
            .is_err()
    );
    for subject in [
        "$JS.API.DIRECT.GET.events_tenant-b.ae.events_tenant-b.secret-1",
        "$JS.API.DIRECT.GET.KV_events_tenant-b-snapshots.$KV.events_tenant-b-snapshots.secret-1",
    ] {
        assert!(
            !tenancy::answered(&reader_client, subject, "".into(), Duration::from_secs(2)).await,
            "a direct get of tenant B's data answered: {subject}"
        );
    }
    let forged = short(&reader_client)
        .publish("ae.events_tenant-b.secret-1", "forged".into())
        .await;
    if let Ok(ack) = forged {
        assert!(
            ack.await.is_err(),
            "tenant B's stream acknowledged a forged record"
        );
    }
    assert_eq!(writer_b.get_latest_version("secret-1").await.unwrap(), 1);

    // A subscription to B's subjects receives nothing of what B appends. The marker the operator
    // publishes to the reader's inbox after B's append comes on the same connection: once it is
    // here, anything the server sent before it is here too.
    let mut peek = reader_client
        .subscribe("ae.events_tenant-b.>")
        .await
        .unwrap();
    // (A request answered proves the server has both subscriptions, or refused one.)
    let marker = Marker::subscribe(
        &reader_client,
        "_INBOX_tenant-a",
        "$JS.API.STREAM.INFO.events_tenant-a",
    )
    .await
    .unwrap();
    writer_b
        .save_event(Event::new("secret-1", "Kept", 2, &"more of b's data").unwrap())
        .await
        .unwrap();
    marker
        .arrive(&operator, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        tenancy::nothing_received(&mut peek),
        "the reader saw tenant B's event"
    );
    // Every refusal above was the server's permission check (it logs each one).
    let refused = tenancy::violations(&server);
    let missing = tenancy::not_logged(
        &refused,
        "reader-a",
        &[
            "Publish Violation - Subject \"ae.events_tenant-a.order-1\"",
            "Publish Violation - Subject \"$KV.events_tenant-a-snapshots.order-1\"",
            "Publish Violation - Subject \"$JS.API.STREAM.INFO.events_tenant-b\"",
            "Publish Violation - Subject \"ae.events_tenant-b.secret-1\"",
            "Subscription Violation - Subject \"ae.events_tenant-b.>\"",
        ],
    );
    assert!(missing.is_empty(), "no {missing:?} in {refused:#?}");
    // And nothing else was refused: only the reader's writes and its reaches for tenant B's.
    let unexpected = tenancy::unexpected_violations(&refused, &["reader-a"], |l| {
        l.contains("tenant-b")
            || l.contains("\"ae.events_tenant-a.order-1\"")
            || l.contains("\"$KV.events_tenant-a-snapshots.order-1\"")
    });
    assert!(unexpected.is_empty(), "{unexpected:#?}");
}
