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
