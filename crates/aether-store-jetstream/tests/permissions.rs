//! Permission refusals reported promptly: a nats-server with users whose subject permissions
//! forbid some of what a store needs. With a `PermissionWatch` installed on the connection and
//! given to the store (`JetStreamConfig::permissions`), every refused call fails at once with
//! `StoreError::PermissionDenied` (or `ConfigError::PermissionDenied` when opening) naming the
//! refused subject, never a (transient) timeout; calls the user may make keep working.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use aether_core::{ActorSnapshot, Event, EventStore, Namespace, SnapshotStore, StoreError};
use aether_store_jetstream::permissions::{Operation, PermissionWatch};
use aether_store_jetstream::{ConfigError, JetStreamConfig, JetStreamEventStore};
use aether_testkit::tenancy::{self, Authorization, ConfiguredServer};

/// A refusal must be reported well within this (the store's request timeout is 5 s, and a
/// refused request was a timeout before).
const PROMPT: Duration = Duration::from_secs(2);

/// What a writer of store `events` in namespace `tenant-a` may publish to (the writer's block of
/// docs/security.md).
const WRITER: &str = r#"
    "ae.events_tenant-a.*",
    "$JS.API.STREAM.INFO.events_tenant-a",
    "$JS.API.DIRECT.GET.events_tenant-a", "$JS.API.DIRECT.GET.events_tenant-a.>",
    "$JS.API.STREAM.MSG.GET.events_tenant-a",
    "$JS.API.CONSUMER.CREATE.events_tenant-a", "$JS.API.CONSUMER.CREATE.events_tenant-a.>",
    "$JS.API.CONSUMER.DELETE.events_tenant-a.>",
    "$JS.API.CONSUMER.MSG.NEXT.events_tenant-a.>",
    "$JS.ACK.events_tenant-a.>", "$JS.FC.events_tenant-a.>",
    "$JS.API.STREAM.INFO.KV_events_tenant-a-snapshots",
    "$JS.API.DIRECT.GET.KV_events_tenant-a-snapshots", "$JS.API.DIRECT.GET.KV_events_tenant-a-snapshots.>",
    "$JS.API.STREAM.MSG.GET.KV_events_tenant-a-snapshots",
    "$KV.events_tenant-a-snapshots.>"
"#;

/// The users besides the operator:
/// - `writer`: the writer's block, but actor `forbidden`'s events and snapshot are denied;
/// - `blind`: may open the store and append, but not read records or snapshots;
/// - `mute`: the writer's block, but may not subscribe to its reply inbox.
fn users() -> Authorization {
    Authorization::with_operator()
        .restricted_user(
            "writer",
            "w",
            &format!(
                r#"{{
        publish: {{ allow: [{WRITER}], deny: ["ae.events_tenant-a.forbidden", "$KV.events_tenant-a-snapshots.forbidden"] }}
        subscribe: {{ allow: ["_INBOX_writer.>"] }}
    }}"#
            ),
        )
        .restricted_user(
            "blind",
            "b",
            r#"{
        publish: { allow: [
            "ae.events_tenant-a.*",
            "$JS.API.STREAM.INFO.events_tenant-a",
            "$JS.API.STREAM.INFO.KV_events_tenant-a-snapshots"
        ] }
        subscribe: { allow: ["_INBOX_blind.>"] }
    }"#,
        )
        .restricted_user(
            "mute",
            "m",
            &format!(
                r#"{{
        publish: {{ allow: [{WRITER}] }}
        subscribe: {{ allow: ["_INBOX_other.>"] }}
    }}"#
            ),
        )
}

async fn server() -> ConfiguredServer {
    let server = users().start("permissions").await.unwrap();
    // The operator creates the store (stream and snapshot bucket).
    let operator = tenancy::connect_operator(&server).await.unwrap();
    JetStreamEventStore::with_config(operator, "events", config_for("tenant-a", None))
        .await
        .unwrap();
    server
}

fn config_for(namespace: &str, watch: Option<PermissionWatch>) -> JetStreamConfig {
    let config = JetStreamConfig::default()
        .namespace(Namespace::new(namespace).unwrap())
        .request_timeout(Duration::from_secs(5));
    match watch {
        Some(watch) => config.permissions(watch),
        None => config,
    }
}

fn event(actor: &str, version: u64) -> Event {
    Event::new(actor, "Added", version, &version).unwrap()
}

/// Checks that `result` is a prompt permission refusal of `operation` on `subject` (or, when
/// `subject` ends with `*`, a subject starting with the rest), and returns how long it took.
fn denied<T: std::fmt::Debug>(
    what: &str,
    started: Instant,
    result: Result<T, StoreError>,
    operation: &str,
    subject: &str,
) -> Duration {
    let took = started.elapsed();
    let err = result.expect_err(what);
    match &err {
        StoreError::PermissionDenied {
            operation: op,
            subject: refused,
            ..
        } => {
            assert_eq!(*op, operation, "{what}: {err}");
            assert_eq!(refused, subject, "{what}: {err}");
        }
        other => panic!("{what}: expected a permission refusal, got {other:?}"),
    }
    assert!(!err.is_transient(), "{what}: {err}");
    assert!(err.to_string().contains(subject), "{what}: {err}");
    assert!(took < PROMPT, "{what} took {took:?}");
    eprintln!("{what}: refused in {took:?}: {err}");
    took
}

/// Checks that opening failed promptly with a permission refusal, and returns the refused
/// operation and subject.
fn open_denied(
    what: &str,
    started: Instant,
    result: Result<JetStreamEventStore, ConfigError>,
) -> (&'static str, String) {
    let took = started.elapsed();
    let refused = match result {
        Err(ConfigError::PermissionDenied {
            operation, subject, ..
        }) => (operation, subject),
        other => panic!("{what}: expected a permission refusal, got {other:?}"),
    };
    assert!(took < PROMPT, "{what} took {took:?}");
    eprintln!("{what}: refused in {took:?}");
    refused
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_appends_and_snapshots_fail_at_once_naming_the_subject() {
    let server = server().await;
    let (client, watch) = tenancy::connect_watched(&server, "writer", "w", Some("_INBOX_writer"))
        .await
        .unwrap();
    let store = JetStreamEventStore::with_config(
        client,
        "events",
        config_for("tenant-a", Some(watch.clone())),
    )
    .await
    .unwrap();

    // What the user may do works.
    store.save_event(event("allowed", 1)).await.unwrap();
    store
        .save_snapshot(ActorSnapshot::new("allowed", 1, &"state").unwrap())
        .await
        .unwrap();

    let subject = store.subject_for("forbidden");
    let started = Instant::now();
    let single = store.save_event(event("forbidden", 1)).await;
    denied("a single append", started, single, "publish", &subject);

    let started = Instant::now();
    let batch = store
        .save_events(vec![event("forbidden", 1), event("forbidden", 2)])
        .await;
    denied("a batch append", started, batch, "publish", &subject);

    let started = Instant::now();
    let snapshot = store
        .save_snapshot(ActorSnapshot::new("forbidden", 1, &"state").unwrap())
        .await;
    denied(
        "a snapshot save",
        started,
        snapshot,
        "publish",
        "$KV.events_tenant-a-snapshots.forbidden",
    );

    // The connection is fine: allowed calls go on working, and nothing was stored.
    store.save_event(event("allowed", 2)).await.unwrap();
    assert_eq!(store.get_latest_version("forbidden").await.unwrap(), 0);
    assert!(store.get_events("forbidden", 1).await.unwrap().is_empty());
    assert!(watch.refusals() >= 3);
    assert!(
        watch
            .recently_refused(Operation::Publish, &subject)
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_reads_fail_at_once_naming_the_subject() {
    let server = server().await;
    let (client, watch) = tenancy::connect_watched(&server, "blind", "b", Some("_INBOX_blind"))
        .await
        .unwrap();
    let store =
        JetStreamEventStore::with_config(client, "events", config_for("tenant-a", Some(watch)))
            .await
            .unwrap();
    // An append to a new actor needs no read.
    store.save_event(event("seen", 1)).await.unwrap();

    let msg_get = "$JS.API.STREAM.MSG.GET.events_tenant-a";
    let started = Instant::now();
    let replay = store.get_events("seen", 1).await;
    denied("a replay", started, replay, "publish", msg_get);
    let started = Instant::now();
    let latest = store.get_latest_version("seen").await;
    denied(
        "reading the latest version",
        started,
        latest,
        "publish",
        msg_get,
    );
    let started = Instant::now();
    let snapshot = store.get_latest_snapshot("seen").await;
    let took = started.elapsed();
    match snapshot {
        Err(StoreError::PermissionDenied { subject, .. }) => {
            // A direct get or a message get of the bucket's stream, as the bucket allows.
            assert!(
                subject.starts_with("$JS.API.")
                    && subject.contains(".KV_events_tenant-a-snapshots"),
                "{subject}"
            );
        }
        other => panic!("reading a snapshot: {other:?}"),
    }
    assert!(took < PROMPT, "reading a snapshot took {took:?}");
    eprintln!("a snapshot read: refused in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_open_fails_at_once_naming_the_subject() {
    let server = server().await;

    // Another tenant's store.
    let (client, watch) = tenancy::connect_watched(&server, "writer", "w", Some("_INBOX_writer"))
        .await
        .unwrap();
    let started = Instant::now();
    let opened =
        JetStreamEventStore::with_config(client, "events", config_for("tenant-b", Some(watch)))
            .await;
    let (operation, subject) = open_denied("opening another tenant's store", started, opened);
    assert_eq!(operation, "publish");
    assert_eq!(subject, "$JS.API.STREAM.INFO.events_tenant-b");

    // A user whose reply inbox is refused: no request can be answered.
    let (client, watch) = tenancy::connect_watched(&server, "mute", "m", Some("_INBOX_mute"))
        .await
        .unwrap();
    let started = Instant::now();
    let opened = JetStreamEventStore::with_config(
        client.clone(),
        "events",
        config_for("tenant-a", Some(watch.clone())),
    )
    .await;
    let (operation, subject) = open_denied("opening with a refused reply inbox", started, opened);
    assert_eq!(operation, "subscribe");
    assert!(subject.starts_with("_INBOX_mute."), "{subject}");
    // The client subscribes its inbox once per connection: the watch remembers the refusal,
    // and the next open fails at once too.
    let started = Instant::now();
    let again =
        JetStreamEventStore::with_config(client, "events", config_for("tenant-a", Some(watch)))
            .await;
    assert!(
        matches!(again, Err(ConfigError::PermissionDenied { .. })),
        "{again:?}"
    );
    assert!(started.elapsed() < PROMPT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_watch_a_refused_append_is_still_a_timeout() {
    let server = server().await;
    let client = tenancy::connect(&server, "writer", "w", Some("_INBOX_writer"))
        .await
        .unwrap();
    let store = JetStreamEventStore::with_config(
        client,
        "events",
        config_for("tenant-a", None).request_timeout(Duration::from_millis(500)),
    )
    .await
    .unwrap();
    let refused = store.save_event(event("forbidden", 1)).await;
    assert!(
        matches!(refused, Err(StoreError::Timeout { .. })),
        "{refused:?}"
    );
}
