//! What a stronger acknowledgement costs: the same appends against a nats-server with the
//! default disk sync (`jetstream { sync_interval: 2m }`: files flushed every two minutes) and
//! against one with `sync_interval: always` (each write fsynced before it is acknowledged), in
//! the same run (docs/reliability.md).
//!
//! | row | Aether | baseline |
//! | --- | --- | --- |
//! | `js.append.sync_always.sequential` | one actor, sequential checked appends, `sync_interval: always` | the same, default sync |
//! | `js.append.sync_always.concurrent` | 100 actors x 10 events, concurrent, `sync_interval: always` | the same, default sync |
//!
//! The figures are events per second, medians of 3 rounds (quick: 1), each round alternating the
//! two servers. The ratio is always / default: what the stronger promise keeps of the
//! throughput. Without `--bench` it is a smoke run (small sizes).

#![allow(missing_docs)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // benchmark set-up

use std::time::Instant;

use aether_core::{Event, EventStore};
use aether_store_jetstream::JetStreamEventStore;
use aether_testkit::bench::{Better, Figure, ReportRow, Spread, quick, record_row, two_workers};
use aether_testkit::nats::NatsServer;

async fn server(name: &str, sync_always: bool) -> (NatsServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("server.conf");
    let body = if sync_always {
        "jetstream { sync_interval: always }\n"
    } else {
        "jetstream {}\n"
    };
    std::fs::write(&conf, body).unwrap();
    let server = NatsServer::start_with(name, vec!["-c".into(), conf.display().to_string()])
        .await
        .unwrap();
    (server, dir)
}

async fn store(server: &NatsServer, name: &str) -> JetStreamEventStore {
    JetStreamEventStore::new(server.connect().await.unwrap(), name)
        .await
        .unwrap()
}

/// Events per second of `n` sequential appends to one new actor.
async fn sequential(store: &JetStreamEventStore, actor: &str, n: u64) -> f64 {
    let payload = "x".repeat(200);
    let started = Instant::now();
    for v in 1..=n {
        store
            .save_event(Event::new(actor, "Appended", v, &payload).unwrap())
            .await
            .unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// Events per second of `actors` x `per_actor` appends, the actors concurrently.
async fn concurrent(store: &JetStreamEventStore, prefix: &str, actors: u64, per_actor: u64) -> f64 {
    let payload = "x".repeat(200);
    let started = Instant::now();
    let tasks = (0..actors).map(|a| {
        let payload = payload.clone();
        async move {
            let actor = format!("{prefix}-{a}");
            for v in 1..=per_actor {
                store
                    .save_event(Event::new(actor.as_str(), "Appended", v, &payload).unwrap())
                    .await
                    .unwrap();
            }
        }
    });
    futures::future::join_all(tasks).await;
    (actors * per_actor) as f64 / started.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn record(id: &str, path: &str, always: Vec<f64>, default: Vec<f64>) {
    let ratios: Vec<f64> = always.iter().zip(&default).map(|(a, d)| a / d).collect();
    let (a, d) = (median(always), median(default));
    println!(
        "{path}: sync always {a:.0} events/s, default {d:.0} events/s, ratio {:.2}",
        a / d
    );
    record_row(
        &ReportRow::new(
            id,
            path,
            Better::Higher,
            Figure::new(a, "events/s"),
            "the same appends, default sync (sync_interval 2m)",
            Figure::new(d, "events/s"),
        )
        .spread(Spread::of_rounds(&ratios)),
    );
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (n, actors, per_actor, rounds) = match (bench, quick()) {
        (false, _) => (20, 5, 2, 1),
        (true, true) => (200, 50, 5, 1),
        (true, false) => (1_000, 100, 10, 3),
    };
    let rt = two_workers().unwrap();
    rt.block_on(async {
        let (always_server, _a) = server("sync-always", true).await;
        let (default_server, _d) = server("sync-default", false).await;
        let always = store(&always_server, "durability").await;
        let default = store(&default_server, "durability").await;
        let (mut seq_a, mut seq_d, mut con_a, mut con_d) = (vec![], vec![], vec![], vec![]);
        for round in 0..rounds {
            seq_d.push(sequential(&default, &format!("s-{round}"), n).await);
            seq_a.push(sequential(&always, &format!("s-{round}"), n).await);
            con_d.push(concurrent(&default, &format!("c-{round}"), actors, per_actor).await);
            con_a.push(concurrent(&always, &format!("c-{round}"), actors, per_actor).await);
        }
        record(
            "js.append.sync_always.sequential",
            &format!("JetStream append, one actor, {n} sequential checked appends, sync_interval always (R1 file store)"),
            seq_a,
            seq_d,
        );
        record(
            "js.append.sync_always.concurrent",
            &format!("JetStream append, {actors} actors x {per_actor} events, concurrent, sync_interval always (R1 file store)"),
            con_a,
            con_d,
        );
    });
}
