//! A command survives a JetStream stream-leader election: the stream leader of an R3 stream on
//! three real nats-servers is killed (SIGKILL) while actors take commands; no caller sees an
//! error, and every event is stored exactly once.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use aether_core::EventStore;
use aether_runtime::{Actor, Runtime};
use aether_store_jetstream::{JetStreamConfig, JetStreamEventStore};
use aether_testkit::nats::NatsCluster;
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Counter {
    n: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum CounterEvent {
    Incremented,
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Actor for Counter {
    const TYPE: &'static str = "counter";
    type Command = ();
    type Event = CounterEvent;
    type Error = Never;

    fn handle(&self, (): &()) -> Result<Vec<CounterEvent>, Never> {
        Ok(vec![CounterEvent::Incremented])
    }

    fn apply(&mut self, _: &CounterEvent) {
        self.n += 1;
    }
}

const ACTORS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_survive_the_loss_of_the_stream_leader() {
    let mut nats = NatsCluster::start(3).await.unwrap();
    let store = Arc::new(
        JetStreamEventStore::with_config(
            nats.connect().await.unwrap(),
            "failover",
            JetStreamConfig::default().replicas(3),
        )
        .await
        .unwrap(),
    );
    // The default RetryPolicy: transient store failures are retried with the same event ids.
    // (With `transient_budget(Duration::ZERO)` callers see "store failed" errors here.)
    let runtime = Runtime::<Counter>::builder(store.clone()).build();

    // Writers: each actor takes commands one after another until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..ACTORS)
        .map(|i| {
            let (runtime, stop, acked) = (runtime.clone(), stop.clone(), acked.clone());
            tokio::spawn(async move {
                let mut ok = 0u64;
                let mut errors = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match runtime.ask(&format!("counter-{i}"), ()).await {
                        Ok(_) => {
                            ok += 1;
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                (ok, errors)
            })
        })
        .collect();

    // Let load build, then kill the server leading the stream.
    while acked.load(Ordering::Relaxed) < 200 {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let victim = nats.stream_leader(store.stream_name()).await.unwrap();
    let leader = nats.node(victim).name().to_owned();
    let before_kill = acked.load(Ordering::Relaxed);
    let killed_at = tokio::time::Instant::now();
    nats.node_mut(victim).kill().await.unwrap();
    // Keep the load on until appends flow again well after the election.
    let resumed_from = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = acked.load(Ordering::Relaxed);
        if killed_at.elapsed() > Duration::from_secs(2) && now > before_kill + 100 {
            break now;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(60),
            "appends never resumed after the kill"
        );
    };
    eprintln!(
        "killed {leader} after {before_kill} commands; {} more by {:?} after the kill",
        resumed_from - before_kill,
        killed_at.elapsed()
    );
    stop.store(true, Ordering::Relaxed);

    // Zero errors to callers, and every acknowledged command is one stored event.
    let mut total = 0;
    for (i, w) in writers.into_iter().enumerate() {
        let (ok, errors) = w.await.unwrap();
        assert!(
            errors.is_empty(),
            "counter-{i}: {} errors, first: {:?}",
            errors.len(),
            errors.first()
        );
        let events = store.get_events(&format!("counter-{i}"), 0).await.unwrap();
        let versions: Vec<u64> = events.iter().map(|e| e.version()).collect();
        assert_eq!(
            versions,
            (1..=ok).collect::<Vec<_>>(),
            "counter-{i}: each event once, in order"
        );
        let ids: HashSet<_> = events.iter().map(|e| e.id()).collect();
        assert_eq!(ids.len() as u64, ok, "counter-{i}: no event stored twice");
        total += ok;
    }
    assert_eq!(total, acked.load(Ordering::Relaxed));
    eprintln!("runtime stats: {:?}", runtime.stats());
    runtime.shutdown().await;
}
