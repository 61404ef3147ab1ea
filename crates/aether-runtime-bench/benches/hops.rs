//! Thread wake-ups per command: how many context switches (voluntary and involuntary, the whole
//! process, `getrusage`) one sequential command costs, on a 2-worker tokio runtime.
//!
//! | row | Aether | baseline |
//! | --- | --- | --- |
//! | memory | `ActorRef::ask` on the memory store, one actor, each command emitting one event | a raw tokio mpsc + oneshot actor doing the same work on a `Vec` |
//! | jetstream | `ActorRef::ask` on the JetStream store (one R1 file-store server), one actor | a raw JetStream publish with the expected last subject sequence, awaited one at a time, on the caller's task |
//!
//! A command that crosses from the caller's task to the actor's task and back wakes a thread
//! twice when the two tasks sit on different workers; issue 25 asks for that hop to go. The
//! figures are medians of 5 rounds (quick: 3). The report row's figure is the wall time per
//! command (a switch count can be zero, which makes no ratio); its note gives the switches.
//! Without `--bench` it is a smoke run (small sizes, one round).

#![allow(missing_docs)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // benchmark set-up

use std::sync::Arc;
use std::time::{Duration, Instant};

use aether_core::{Event, wire};
use aether_runtime::{Actor, Runtime};
use aether_store_jetstream::{JetStreamEventStore, layout};
use aether_store_memory::InMemoryEventStore;
use aether_testkit::bench::{Better, Figure, ReportRow, Spread, quick, record_row};
use aether_testkit::nats::NatsServer;
use async_nats::HeaderMap;
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Default, Serialize, Deserialize)]
struct Tally {
    total: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Added {
    Added(u64),
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Actor for Tally {
    const TYPE: &'static str = "tally";
    type Command = u64;
    type Event = Added;
    type Error = Never;

    fn handle(&self, n: &u64) -> Result<Vec<Added>, Never> {
        Ok(vec![Added::Added(*n)])
    }

    fn apply(&mut self, Added::Added(n): &Added) {
        self.total += n;
    }
}

/// Context switches of this process so far (voluntary + involuntary, all threads).
fn switches() -> u64 {
    use nix::sys::resource::{UsageWho, getrusage};
    let usage = getrusage(UsageWho::RUSAGE_SELF).unwrap();
    (usage.voluntary_context_switches() + usage.involuntary_context_switches()) as u64
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    switches: f64,
    wall_us: f64,
}

async fn measure<F: Future<Output = ()>>(n: u64, work: F) -> Sample {
    let (before, started) = (switches(), Instant::now());
    work.await;
    Sample {
        switches: (switches() - before) as f64 / n as f64,
        wall_us: started.elapsed().as_secs_f64() * 1e6 / n as f64,
    }
}

enum RawMsg {
    Add(u64, oneshot::Sender<u64>),
}

/// The baseline actor: a task owning a `Vec` of events behind a bounded mailbox.
fn raw_actor() -> mpsc::Sender<RawMsg> {
    let (tx, mut rx) = mpsc::channel::<RawMsg>(64);
    tokio::spawn(async move {
        let mut events = Vec::new();
        let mut total = 0;
        while let Some(RawMsg::Add(n, reply)) = rx.recv().await {
            let event = Event::new("raw", "Added", events.len() as u64 + 1, &Added::Added(n))
                .expect("encodes");
            events.push(event);
            total += n;
            let _ = reply.send(total);
        }
    });
    tx
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Rows {
    aether: Vec<Sample>,
    raw: Vec<Sample>,
}

impl Rows {
    fn print_and_record(&self, id: &str, path: &str, baseline: &str) {
        let s = |v: &[Sample]| median(v.iter().map(|s| s.switches).collect());
        let w = |v: &[Sample]| median(v.iter().map(|s| s.wall_us).collect());
        let (a, r) = (s(&self.aether), s(&self.raw));
        println!(
            "{path}: Aether {a:.2} switches/command ({:.2} us), {baseline} {r:.2} ({:.2} us)",
            w(&self.aether),
            w(&self.raw)
        );
        // Switches can be zero (nothing crossed threads), so the row's figure is the wall time
        // per command and the switches go in its note.
        let per_round: Vec<f64> = self
            .aether
            .iter()
            .zip(&self.raw)
            .map(|(a, r)| a.wall_us / r.wall_us)
            .collect();
        record_row(
            &ReportRow::new(
                id,
                path,
                Better::Lower,
                Figure::new(w(&self.aether), "us/command"),
                baseline,
                Figure::new(w(&self.raw), "us/command"),
            )
            .spread(Spread::of_rounds(&per_round))
            .note(format!(
                "context switches per command (getrusage, whole process): Aether {a:.2}, \
                 baseline {r:.2}"
            )),
        );
    }
}

async fn memory_rows(n: u64, rounds: usize) -> Rows {
    let runtime = Runtime::<Tally>::builder(Arc::new(InMemoryEventStore::new())).build();
    let raw = raw_actor();
    let mut rows = Rows {
        aether: Vec::new(),
        raw: Vec::new(),
    };
    for round in 0..rounds {
        let actor = runtime.actor(format!("m-{round}"));
        actor.ask(0).await.unwrap(); // activated before measuring
        rows.aether.push(
            measure(n, async {
                for i in 0..n {
                    actor.ask(i).await.unwrap();
                }
            })
            .await,
        );
        rows.raw.push(
            measure(n, async {
                for i in 0..n {
                    let (tx, rx) = oneshot::channel();
                    raw.send(RawMsg::Add(i, tx)).await.unwrap();
                    rx.await.unwrap();
                }
            })
            .await,
        );
    }
    rows
}

async fn jetstream_rows(server: &NatsServer, n: u64, rounds: usize) -> Rows {
    let client = server.connect().await.unwrap();
    let store = Arc::new(
        JetStreamEventStore::new(client.clone(), "hops")
            .await
            .unwrap(),
    );
    let runtime = Runtime::<Tally>::builder(store).build();
    let js = async_nats::jetstream::new(client);
    let body = Bytes::from(
        wire::encode_event(&Event::new("raw", "Added", 1, &Added::Added(1)).unwrap()).unwrap(),
    );
    let mut rows = Rows {
        aether: Vec::new(),
        raw: Vec::new(),
    };
    for round in 0..rounds {
        let actor = runtime.actor(format!("j-{round}"));
        actor.ask(0).await.unwrap();
        rows.aether.push(
            measure(n, async {
                for i in 0..n {
                    actor.ask(i).await.unwrap();
                }
            })
            .await,
        );
        let subject = format!(
            "{}{}",
            layout::subject_prefix("hops"),
            layout::actor_token(&format!("raw-{round}"))
        );
        rows.raw.push(
            measure(n, async {
                let mut last = 0;
                for version in 1..=n {
                    let mut headers = HeaderMap::new();
                    headers.insert(layout::HEADER_VERSION, version.to_string().as_str());
                    headers.insert(layout::HEADER_EVENT_TYPE, "Added");
                    let msg = PublishMessage::build()
                        .payload(body.clone())
                        .headers(headers)
                        .expected_last_subject_sequence(last);
                    last = js
                        .send_publish(subject.clone(), msg)
                        .await
                        .unwrap()
                        .await
                        .unwrap()
                        .sequence;
                }
            })
            .await,
        );
    }
    rows
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (memory_n, js_n, rounds) = match (bench, quick()) {
        (false, _) => (200, 20, 1),
        (true, true) => (20_000, 500, 3),
        (true, false) => (100_000, 2_000, 5),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let memory = memory_rows(memory_n, rounds).await;
        memory.print_and_record(
            "runtime.hops.memory",
            &format!("sequential ask, one actor, memory store ({memory_n} commands)"),
            "raw tokio mpsc + oneshot actor",
        );
        let server = NatsServer::start().await.unwrap();
        let js = jetstream_rows(&server, js_n, rounds).await;
        js.print_and_record(
            "runtime.hops.jetstream",
            &format!("sequential ask, one actor, JetStream store ({js_n} commands)"),
            "raw checked publish on the caller's task",
        );
        tokio::time::sleep(Duration::ZERO).await;
    });
}
