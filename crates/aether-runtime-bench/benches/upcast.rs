//! Replay with upcasting: an actor activated from a history of 100,000 events (memory store, no
//! snapshot) of which every other one is stored in an older shape and goes through one upcasting
//! step (a field rename), against the same replay of a history stored entirely in the current
//! shape, with the same upcasters registered. Issue 28's target: at least 0.7 of the baseline's
//! rate.
//!
//! | row | Aether | baseline |
//! | --- | --- | --- |
//! | `runtime.replay.upcast` | activation folding 100k events, half upcast one step | activation folding 100k current events |
//!
//! The figure is events folded per second, the median of 5 rounds (quick: 20k events, 3
//! rounds), the two histories activated alternately. Without `--bench` it is a smoke run.

#![allow(missing_docs)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // benchmark set-up

use std::sync::Arc;
use std::time::Instant;

use aether_core::{Event, EventStore, Upcasters};
use aether_runtime::{Actor, Runtime, SnapshotPolicy};
use aether_store_jetstream::JetStreamEventStore;
use aether_store_memory::InMemoryEventStore;
use aether_testkit::bench::{Better, Figure, ReportRow, Spread, quick, record_row, two_workers};
use aether_testkit::nats::NatsServer;
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Tally {
    total: u64,
    count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Counted {
    Added { by: u64, note: String },
}

/// The first release's shape: the field was `amount`.
#[derive(Serialize)]
enum CountedV1 {
    Added { amount: u64, note: String },
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Actor for Tally {
    const TYPE: &'static str = "tally";
    type Command = u64;
    type Event = Counted;
    type Error = Never;

    fn handle(&self, n: &u64) -> Result<Vec<Counted>, Never> {
        Ok(vec![Counted::Added {
            by: *n,
            note: String::new(),
        }])
    }

    fn apply(&mut self, Counted::Added { by, .. }: &Counted) {
        self.total += by;
        self.count += 1;
    }
}

fn upcasters() -> Upcasters {
    Upcasters::new().rename_field("Added", 1, "amount", "by")
}

/// `n` events for `id`; with `old_every_other`, the odd versions in the first release's shape.
fn history(id: &str, n: u64, old_every_other: bool) -> Vec<Event> {
    (1..=n)
        .map(|v| {
            let note = "a short note".to_owned();
            let builder = Event::builder(id, "Added").version(v);
            if old_every_other && v % 2 == 1 {
                builder
                    .payload(&CountedV1::Added { amount: v, note })
                    .build()
            } else {
                builder
                    .schema_version(2)
                    .payload(&Counted::Added { by: v, note })
                    .build()
            }
            .unwrap()
        })
        .collect()
}

async fn fill(store: &dyn EventStore, events: Vec<Event>) {
    for chunk in events.chunks(1000) {
        store.save_events(chunk.to_vec()).await.unwrap();
    }
}

/// Events folded per second by one activation of `id`.
async fn activate(runtime: &Runtime<Tally>, id: &str, n: u64) -> f64 {
    runtime.stop_vm(id).await;
    let started = Instant::now();
    let (state, version) = runtime.capture_state(id).await.unwrap();
    let rate = n as f64 / started.elapsed().as_secs_f64();
    assert_eq!((state.count, version), (n, n));
    assert_eq!(state.total, n * (n + 1) / 2);
    rate
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (n, rounds) = match (bench, quick()) {
        (false, _) => (2_000, 1),
        (true, true) => (20_000, 3),
        (true, false) => (100_000, 5),
    };
    let rt = two_workers().unwrap();
    rt.block_on(async {
        let memory = Arc::new(InMemoryEventStore::new());
        measure(memory, "memory", "memory store", n, rounds).await;
        let server = NatsServer::start().await.unwrap();
        let jetstream = Arc::new(
            JetStreamEventStore::new(server.connect().await.unwrap(), "upcast")
                .await
                .unwrap(),
        );
        measure(
            jetstream,
            "jetstream",
            "JetStream store, one R1 file-store server",
            n,
            rounds,
        )
        .await;
    });
}

/// Fills `store` with the two histories and records the row `runtime.replay.upcast.<name>`.
async fn measure(store: Arc<dyn EventStore>, name: &str, what: &str, n: u64, rounds: usize) {
    fill(&*store, history("mixed", n, true)).await;
    fill(&*store, history("current", n, false)).await;
    let runtime = Runtime::<Tally>::builder(store)
        .snapshot_policy(SnapshotPolicy::off())
        .upcasters(upcasters())
        .build();
    // Warm-up: one activation of each.
    activate(&runtime, "mixed", n).await;
    activate(&runtime, "current", n).await;
    let (mut upcast, mut plain, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let u = activate(&runtime, "mixed", n).await;
        let p = activate(&runtime, "current", n).await;
        upcast.push(u);
        plain.push(p);
        ratios.push(u / p);
    }
    let (u, p) = (median(upcast), median(plain));
    println!(
        "{what}: replay of {n} events, half upcast one step: {u:.0} events/s; all current: {p:.0} events/s; ratio {:.2}",
        u / p
    );
    record_row(
        &ReportRow::new(
            format!("runtime.replay.upcast.{name}"),
            format!("activation replaying {n} events ({what}), every other one upcast one step"),
            Better::Higher,
            Figure::new(u, "events/s"),
            "the same replay of current events",
            Figure::new(p, "events/s"),
        )
        .spread(Spread::of_rounds(&ratios)),
    );
    runtime.shutdown().await;
}
