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
use aether_testkit::nats::NatsServer;

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

/// The users:
/// - `writer`: the writer's block, but actor `forbidden`'s events and snapshot are denied;
/// - `blind`: may open the store and append, but not read records or snapshots;
/// - `mute`: the writer's block, but may not subscribe to its reply inbox.
fn config() -> String {
    format!(
        r#"authorization {{
  users = [
    {{ user: operator, password: operator }}
    {{ user: writer, password: w, permissions: {{
        publish: {{ allow: [{WRITER}], deny: ["ae.events_tenant-a.forbidden", "$KV.events_tenant-a-snapshots.forbidden"] }}
        subscribe: {{ allow: ["_INBOX_writer.>"] }}
    }} }}
    {{ user: blind, password: b, permissions: {{
        publish: {{ allow: [
            "ae.events_tenant-a.*",
            "$JS.API.STREAM.INFO.events_tenant-a",
            "$JS.API.STREAM.INFO.KV_events_tenant-a-snapshots"
        ] }}
        subscribe: {{ allow: ["_INBOX_blind.>"] }}
    }} }}
    {{ user: mute, password: m, permissions: {{
        publish: {{ allow: [{WRITER}] }}
        subscribe: {{ allow: ["_INBOX_other.>"] }}
    }} }}
  ]
}}
"#
    )
}

async fn server() -> (NatsServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("permissions.conf");
    std::fs::write(&conf, config()).unwrap();
    let server =
        NatsServer::start_with("permissions", vec!["-c".into(), conf.display().to_string()])
            .await
            .unwrap();
    // The operator creates the store (stream and snapshot bucket).
    let operator =
        async_nats::ConnectOptions::with_user_and_password("operator".into(), "operator".into())
            .connect(server.url())
            .await
            .unwrap();
    JetStreamEventStore::with_config(operator, "events", config_for("tenant-a", None))
        .await
        .unwrap();
    (server, dir)
}

/// A connection as `user` with its own inbox prefix and a watch installed on it.
async fn connect(
    server: &NatsServer,
    user: &str,
    password: &str,
) -> (async_nats::Client, PermissionWatch) {
    let watch = PermissionWatch::new();
    let client = watch
        .install(async_nats::ConnectOptions::with_user_and_password(
            user.into(),
            password.into(),
        ))
        .custom_inbox_prefix(format!("_INBOX_{user}"))
        .connect(server.url())
        .await
        .unwrap();
    (client, watch)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_appends_and_snapshots_fail_at_once_naming_the_subject() {
    let (server, _dir) = server().await;
    let (client, watch) = connect(&server, "writer", "w").await;
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
    let (server, _dir) = server().await;
    let (client, watch) = connect(&server, "blind", "b").await;
    let store =
        JetStreamEventStore::with_config(client, "events", config_for("tenant-a", Some(watch)))
            .await
            .unwrap();
    // An append to a new actor needs no read.
    store.save_event(event("seen", 1)).await.unwrap();

    let started = Instant::now();
    let replay = store.get_events("seen", 1).await;
    denied(
        "a replay",
        started,
        replay,
        "publish",
        "$JS.API.STREAM.MSG.GET.events_tenant-a",
    );
    let started = Instant::now();
    let latest = store.get_latest_version("seen").await;
    denied(
        "reading the latest version",
        started,
        latest,
        "publish",
        "$JS.API.STREAM.MSG.GET.events_tenant-a",
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
    let (server, _dir) = server().await;

    // Another tenant's store.
    let (client, watch) = connect(&server, "writer", "w").await;
    let started = Instant::now();
    let opened =
        JetStreamEventStore::with_config(client, "events", config_for("tenant-b", Some(watch)))
            .await;
    let took = started.elapsed();
    match opened {
        Err(ConfigError::PermissionDenied {
            operation, subject, ..
        }) => {
            assert_eq!(operation, "publish");
            assert_eq!(subject, "$JS.API.STREAM.INFO.events_tenant-b");
        }
        other => panic!("opening tenant B's store as A: {other:?}"),
    }
    assert!(took < PROMPT, "the refused open took {took:?}");
    eprintln!("opening another tenant's store: refused in {took:?}");

    // A user whose reply inbox is refused: no request can be answered.
    let (client, watch) = connect(&server, "mute", "m").await;
    let started = Instant::now();
    let opened = JetStreamEventStore::with_config(
        client.clone(),
        "events",
        config_for("tenant-a", Some(watch.clone())),
    )
    .await;
    let took = started.elapsed();
    match opened {
        Err(ConfigError::PermissionDenied {
            operation, subject, ..
        }) => {
            assert_eq!(operation, "subscribe");
            assert!(subject.starts_with("_INBOX_mute."), "{subject}");
        }
        other => panic!("opening without a reply inbox: {other:?}"),
    }
    assert!(took < PROMPT, "the open without an inbox took {took:?}");
    eprintln!("opening with a refused reply inbox: refused in {took:?}");
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
    let (server, _dir) = server().await;
    let client = async_nats::ConnectOptions::with_user_and_password("writer".into(), "w".into())
        .custom_inbox_prefix("_INBOX_writer")
        .connect(server.url())
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
