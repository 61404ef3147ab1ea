//! Durable projections against a real nats-server: kill and restart mid-stream, parking a failing
//! handler, filters, rebuild.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aether_bus::{Projection, ProjectionConfig, ProjectionError, ProjectionRunner};
use aether_core::{BoxError, Event, EventStore};
use aether_store_jetstream::JetStreamEventStore;
use aether_testkit::nats::NatsServer;
use async_trait::async_trait;

/// A read model: total amount per actor, idempotent by stream position.
#[derive(Debug, Default)]
struct Totals {
    state: Mutex<(u64, BTreeMap<String, u64>)>,
    applied: AtomicU64,
    redelivered: AtomicU64,
    fail_at: Option<u64>,
    resets: AtomicU64,
}

#[async_trait]
impl Projection for Totals {
    async fn apply(&self, event: &Event, position: u64) -> Result<(), BoxError> {
        if Some(event.version()) == self.fail_at && event.actor_id() == "acct-0" {
            return Err("the read model database is down".into());
        }
        let mut state = self.state.lock().unwrap();
        if position <= state.0 {
            self.redelivered.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        state.0 = position;
        *state.1.entry(event.actor_id().to_owned()).or_default() += event.decode::<u64>()?;
        self.applied.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn reset(&self) -> Result<(), BoxError> {
        *self.state.lock().unwrap() = (0, BTreeMap::new());
        self.applied.store(0, Ordering::Relaxed);
        self.resets.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

struct Setup {
    _server: NatsServer,
    js: async_nats::jetstream::Context,
    store: JetStreamEventStore,
    expected: BTreeMap<String, u64>,
    last_position: u64,
    events: u64,
}

async fn setup(actors: u64, per_actor: u64) -> Setup {
    let server = NatsServer::start().await.unwrap();
    let client = server.connect().await.unwrap();
    let store = JetStreamEventStore::new(client.clone(), "events")
        .await
        .unwrap();
    let mut expected = BTreeMap::new();
    for a in 0..actors {
        let actor = format!("acct-{a}");
        let events: Vec<Event> = (1..=per_actor)
            .map(|v| Event::new(actor.as_str(), "Deposited", v, &(v * 10 + a)).unwrap())
            .collect();
        expected.insert(actor, (1..=per_actor).map(|v| v * 10 + a).sum());
        store.save_events(events).await.unwrap();
    }
    let js = async_nats::jetstream::new(client);
    let last_position = js
        .get_stream(store.stream_name())
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .last_sequence;
    Setup {
        _server: server,
        js,
        store,
        expected,
        last_position,
        events: actors * per_actor,
    }
}

fn config(s: &Setup) -> ProjectionConfig {
    ProjectionConfig::new("totals", s.store.stream_name(), s.store.subject_filter())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_projection_resumes_without_losing_or_reapplying() {
    let s = setup(10, 200).await;
    let model = Arc::new(Totals::default());
    let mut first = ProjectionRunner::start(s.js.clone(), config(&s), model.clone())
        .await
        .unwrap();
    first.caught_up_to(s.last_position / 2).await;
    first.stop(); // mid-stream, as a crash
    drop(first);
    let before = model.applied.load(Ordering::Relaxed);
    assert!(
        before < s.events,
        "stopped mid-stream ({before} of {})",
        s.events
    );

    let mut second = ProjectionRunner::start(s.js.clone(), config(&s), model.clone())
        .await
        .unwrap();
    let status = second.caught_up_to(s.last_position).await;
    assert_eq!(status.position, s.last_position);
    assert_eq!(
        model.state.lock().unwrap().1,
        s.expected,
        "the read model equals the fold"
    );
    assert_eq!(
        model.applied.load(Ordering::Relaxed),
        s.events,
        "each event applied once"
    );
    // The restarted runner started after the acknowledged position: at most the few in flight
    // at the crash came again (and the model recognised them).
    assert!(model.redelivered.load(Ordering::Relaxed) < 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_handler_is_retried_then_parked_and_resumes_there() {
    let s = setup(2, 5).await;
    let failing = Arc::new(Totals {
        fail_at: Some(3),
        ..Default::default()
    });
    let cfg = config(&s).retry(3, Duration::from_millis(1), Duration::from_millis(5));
    let runner = ProjectionRunner::start(s.js.clone(), cfg.clone(), failing.clone())
        .await
        .unwrap();
    match runner.join().await {
        Err(ProjectionError::Parked {
            attempts, source, ..
        }) => {
            assert_eq!(attempts, 3);
            assert!(source.to_string().contains("database is down"));
        }
        other => panic!("expected the projection to park, got {other:?}"),
    }
    assert_eq!(
        failing.applied.load(Ordering::Relaxed),
        2,
        "stopped at the bad event"
    );

    // Fixed: the same durable projection continues from the parked event, nothing lost.
    let fixed = Arc::new(Totals::default());
    *fixed.state.lock().unwrap() = failing.state.lock().unwrap().clone();
    let mut runner = ProjectionRunner::start(s.js.clone(), cfg, fixed.clone())
        .await
        .unwrap();
    runner.caught_up_to(s.last_position).await;
    assert_eq!(fixed.state.lock().unwrap().1, s.expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_rebuild() {
    let s = setup(3, 4).await;
    let model = Arc::new(Totals::default());
    let cfg = config(&s).actor_prefix("acct-1");
    let mut runner = ProjectionRunner::start(s.js.clone(), cfg.clone(), model.clone())
        .await
        .unwrap();
    let status = runner.caught_up_to(s.last_position).await;
    assert_eq!((status.applied, status.filtered), (4, 8));
    assert_eq!(model.state.lock().unwrap().1.len(), 1);
    drop(runner);

    let mut rebuilt = ProjectionRunner::rebuild(s.js.clone(), cfg, model.clone())
        .await
        .unwrap();
    rebuilt.caught_up_to(s.last_position).await;
    assert_eq!(model.resets.load(Ordering::Relaxed), 1);
    assert_eq!(
        model.applied.load(Ordering::Relaxed),
        4,
        "applied again from scratch"
    );
}

/// A read model that records every event it is handed: type, schema version and payload.
#[derive(Debug, Default)]
struct Seen(Mutex<Vec<(String, u32, serde_json::Value, u64)>>);

#[async_trait]
impl Projection for Seen {
    async fn apply(&self, event: &Event, position: u64) -> Result<(), BoxError> {
        let data = event.decode::<serde_json::Value>()?;
        self.0.lock().unwrap().push((
            event.event_type().to_owned(),
            event.schema_version(),
            data,
            position,
        ));
        Ok(())
    }

    async fn reset(&self) -> Result<(), BoxError> {
        self.0.lock().unwrap().clear();
        Ok(())
    }
}

/// With upcasters, a projection (and its rebuild) sees only current shapes, the filter applies
/// to them, and a split reaches `apply` as two events at one position. Without the upcaster it
/// needs, it parks at the old event, and resumes there once started with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_see_only_current_shapes() {
    use aether_core::{EventShape, Upcasters, Value};
    use serde_json::json;

    let server = NatsServer::start().await.unwrap();
    let client = server.connect().await.unwrap();
    let store = JetStreamEventStore::new(client.clone(), "evolving")
        .await
        .unwrap();
    let event = |v: u64, t: &str, sv: u32, data: serde_json::Value| {
        Event::builder("acct-1", t)
            .version(v)
            .schema_version(sv)
            .payload(&data)
            .build()
            .unwrap()
    };
    for e in [
        event(1, "Deposited", 1, json!({"amount": 5})),
        event(2, "Deposited", 2, json!({"cents": 7})),
        event(3, "DepositedWithFee", 1, json!({"cents": 9, "fee": 1})),
        event(4, "Noted", 1, json!({"text": "filtered out"})),
    ] {
        store.save_event(e).await.unwrap();
    }
    let upcasters = Upcasters::new()
        .rename_field("Deposited", 1, "amount", "cents")
        .split("DepositedWithFee", 1, |shape| {
            let field = |name| shape.field(name).cloned().unwrap_or(Value::Nil);
            Ok(vec![
                EventShape::new(
                    "Deposited",
                    2,
                    Value::Map(vec![("cents".into(), field("cents"))]),
                ),
                EventShape::new("Fee", 1, Value::Map(vec![("cents".into(), field("fee"))])),
            ])
        });
    let js = async_nats::jetstream::new(client);
    let config = || {
        ProjectionConfig::new("shapes", store.stream_name(), store.subject_filter())
            .event_types(["Deposited", "Fee"])
    };
    let expected = vec![
        ("Deposited".to_owned(), 2, json!({"cents": 5}), 1),
        ("Deposited".to_owned(), 2, json!({"cents": 7}), 2),
        ("Deposited".to_owned(), 2, json!({"cents": 9}), 3),
        ("Fee".to_owned(), 1, json!({"cents": 1}), 3),
    ];

    // No upcasters: every type is at version 1, so the first event passes as it is stored and
    // the `Deposited` at version 2 is newer than this code knows: the projection parks there.
    let seen = Arc::new(Seen::default());
    let runner = ProjectionRunner::start(js.clone(), config(), seen.clone())
        .await
        .unwrap();
    match runner.join().await {
        Err(ProjectionError::Upcast {
            position, source, ..
        }) => {
            assert_eq!(position, 2);
            assert!(source.to_string().contains("schema version 2"), "{source}");
        }
        other => panic!("expected a park on the upcast, got {other:?}"),
    }
    assert_eq!(
        seen.0.lock().unwrap().len(),
        1,
        "the event before it applied"
    );

    // With the upcasters: it resumes at the parked event, and sees only current shapes.
    let mut runner = ProjectionRunner::start(
        js.clone(),
        config().upcasters(upcasters.clone()),
        seen.clone(),
    )
    .await
    .unwrap();
    let status = runner.caught_up_to(4).await;
    assert_eq!((status.position, status.filtered), (4, 1));
    let got = seen.0.lock().unwrap().clone();
    assert_eq!(got[1..], expected[1..]);
    runner.stop();

    // A rebuild replays everything through the upcasters.
    let mut rebuilt =
        ProjectionRunner::rebuild(js.clone(), config().upcasters(upcasters), seen.clone())
            .await
            .unwrap();
    rebuilt.caught_up_to(4).await;
    assert_eq!(*seen.0.lock().unwrap(), expected);
}
