//! Two tenants on one NATS account, each a namespace with a user whose subject permissions are the
//! writer's block of docs/security.md, exactly as written there (for the other tenant, its
//! namespace substituted): each can open its own store
//! (created beforehand by an operator: binding needs no create rights), append, read, replay and
//! snapshot, and can neither read nor write the other's stream or snapshots.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use aether_core::{ActorSnapshot, Event, EventStore, Namespace, SnapshotStore};
use aether_store_jetstream::{JetStreamConfig, JetStreamEventStore};
use aether_testkit::tenancy::{self, Role, TenantUser};

/// The users besides the operator: `tenant-a`, `tenant-b` with the writer's block for their
/// namespace.
const USERS: &[TenantUser] = &[
    TenantUser::new("tenant-a", "a", Role::Writer, "tenant-a"),
    TenantUser::new("tenant-b", "b", Role::Writer, "tenant-b"),
];

fn config_for(namespace: &str, timeout: Duration) -> JetStreamConfig {
    JetStreamConfig::default()
        .namespace(Namespace::new(namespace).unwrap())
        .request_timeout(timeout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_use_their_own_store_and_cannot_reach_the_other() {
    let server = tenancy::start_tenants("tenants", USERS).await.unwrap();

    // The operator creates both stores (streams and snapshot buckets).
    let operator = tenancy::connect_operator(&server).await.unwrap();
    for ns in ["tenant-a", "tenant-b"] {
        JetStreamEventStore::with_config(
            operator.clone(),
            "events",
            config_for(ns, Duration::from_secs(5)),
        )
        .await
        .unwrap();
    }

    // Each tenant binds to its own store and uses all of it.
    let a = tenancy::connect(&server, "tenant-a", "a", Some("_INBOX_tenant-a"))
        .await
        .unwrap();
    let store_a = JetStreamEventStore::with_config(
        a.clone(),
        "events",
        config_for("tenant-a", Duration::from_secs(5)),
    )
    .await
    .unwrap();
    for v in 1..=300u64 {
        store_a
            .save_event(Event::new("order-1", "Added", v, &v).unwrap())
            .await
            .unwrap();
    }
    // A long replay (a consumer) and a short one (direct gets), a conflict's refresh, snapshots.
    assert_eq!(store_a.get_events("order-1", 1).await.unwrap().len(), 300);
    assert_eq!(store_a.get_events("order-1", 290).await.unwrap().len(), 11);
    let stale = store_a
        .save_event(Event::new("order-1", "Added", 300, &0u64).unwrap())
        .await;
    assert!(stale.unwrap_err().is_version_conflict());
    store_a
        .save_snapshot(ActorSnapshot::new("order-1", 300, &"state").unwrap())
        .await
        .unwrap();
    assert_eq!(
        store_a
            .get_latest_snapshot("order-1")
            .await
            .unwrap()
            .unwrap()
            .version,
        300
    );
    assert_eq!(store_a.get_latest_version("order-1").await.unwrap(), 300);

    // Tenant A can neither read nor write tenant B's subjects. (Opening B's store as A fails
    // too, but only after the store's settle patience: the server drops a request it refuses
    // without an answer, so the client sees a timeout. Issue 26 asks for a prompt permission
    // error.)
    let short = Duration::from_millis(500);
    let b = tenancy::connect(&server, "tenant-b", "b", Some("_INBOX_tenant-b"))
        .await
        .unwrap();
    let store_b = JetStreamEventStore::with_config(
        b.clone(),
        "events",
        config_for("tenant-b", Duration::from_secs(5)),
    )
    .await
    .unwrap();
    store_b
        .save_event(Event::new("secret-1", "Kept", 1, &"b's data").unwrap())
        .await
        .unwrap();

    let js_a = async_nats::jetstream::new(a.clone());
    // A publish to B's subject is dropped by the server (a permission violation), never stored.
    a.publish("ae.events_tenant-b.secret-1", "forged".into())
        .await
        .unwrap();
    a.flush().await.unwrap();
    assert_eq!(store_b.get_latest_version("secret-1").await.unwrap(), 1);
    assert_eq!(store_b.get_events("secret-1", 1).await.unwrap().len(), 1);
    // B's stream info, messages and snapshots are out of A's reach.
    let mut timed = async_nats::jetstream::ContextBuilder::new()
        .timeout(short)
        .build(a.clone());
    assert!(timed.get_stream("events_tenant-b").await.is_err());
    timed = async_nats::jetstream::ContextBuilder::new()
        .timeout(short)
        .build(a.clone());
    assert!(
        timed
            .get_key_value("events_tenant-b-snapshots")
            .await
            .is_err()
    );
    assert!(
        !tenancy::answered(
            &a,
            "$JS.API.DIRECT.GET.events_tenant-b.ae.events_tenant-b.secret-1",
            "".into(),
            Duration::from_secs(2),
        )
        .await
    );
    // A subscription to B's subjects is refused by the server: nothing arrives.
    let mut peek = a.subscribe("ae.events_tenant-b.>").await.unwrap();
    store_b
        .save_event(Event::new("secret-1", "Kept", 2, &"more of b's data").unwrap())
        .await
        .unwrap();
    let peeked = tokio::time::timeout(
        Duration::from_millis(500),
        futures::StreamExt::next(&mut peek),
    )
    .await;
    assert!(
        !matches!(peeked, Ok(Some(_))),
        "tenant A saw tenant B's event"
    );
    drop(js_a);
}
