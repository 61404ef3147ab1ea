//! Scale: costs that must stay flat (or bounded) as work grows, each printed as a curve with its
//! baseline from the same run, on one R1 file-store nats-server.
//!
//! | row | sizes | baseline |
//! | --- | --- | --- |
//! | append throughput with N actors already in the stream | 0 / 100k / 1M | raw pipelined publish of the same bytes and headers to new subjects of the same stream |
//! | client memory per written actor | 100k / 1M | (the store's version cache holds at most 100k actors) |
//! | server memory per actor subject | 100k / 1M, and at rest after a restart | - |
//! | read the last 10 of n events (`get_events(id, n - 9)`) | 1k / 10k / 100k | raw ordered consumer started at the known sequence |
//! | activation after a snapshot saved by a process that only read the actor | 1k / 10k / 100k | raw reads any activation needs: the snapshot entry and the subject's last record |
//! | runtime memory per active actor, and shutdown | 10k / 100k / 1M | a plain tokio task and mpsc channel per actor in a `HashMap` |
//!
//! Memory rows run in a child process each (this binary again), so that one row's freed memory
//! does not flatter the next; the binary counts live heap bytes (`stats_alloc`) beside the
//! process's resident memory. Run with `cargo xtask bench -p aether-runtime --bench scale`
//! (optionally a row name: `-- --bench read`). Without `--bench` (as `cargo test --all-targets`
//! runs it) it is a quick smoke run with sizes / 100. With `AETHER_BENCH_QUICK` (`cargo xtask
//! bench --report --quick`) the sizes are / 20; with `AETHER_BENCH_ROWS` set the rows with a
//! baseline are also handed to the benchmark report.

#![allow(missing_docs)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // benchmark set-up

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aether_core::{Event, EventStore};
use aether_runtime::{Actor, Runtime, SnapshotPolicy};
use aether_store_jetstream::{JetStreamEventStore, layout};
use aether_store_memory::InMemoryEventStore;
use aether_testkit::bench::{Better, Figure, ReportRow, Spread, quick, record_row, resident_bytes};
use aether_testkit::nats::NatsServer;
use async_nats::HeaderMap;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::push::OrderedConfig;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

static QUICK: AtomicBool = AtomicBool::new(false);

fn size(full: u64) -> u64 {
    if QUICK.load(Ordering::Relaxed) {
        (full / 100).max(10)
    } else if quick() {
        full / 20
    } else {
        full
    }
}

/// A full size as a report row id's suffix (`100k`, `1m`), the same in a quick run.
fn tier(full: u64) -> String {
    match full {
        0 => "0".to_owned(),
        f if f >= 1_000_000 => format!("{}m", f / 1_000_000),
        f if f >= 1_000 => format!("{}k", f / 1_000),
        f => f.to_string(),
    }
}

/// A report row of durations (lower is better), spread over the paired rounds.
fn time_row(
    id: String,
    path: String,
    ours: &[Duration],
    raw: &[Duration],
    baseline: &str,
) -> ReportRow {
    let per_round: Vec<f64> = ours
        .iter()
        .zip(raw)
        .map(|(o, r)| o.as_secs_f64() / r.as_secs_f64())
        .collect();
    let us = |v: &[Duration]| Figure::new(median(v.to_vec()).as_secs_f64() * 1e6, "us");
    ReportRow::new(id, path, Better::Lower, us(ours), baseline, us(raw))
        .spread(Spread::of_rounds(&per_round))
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Tally {
    n: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Added(u64, String);

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Actor for Tally {
    const TYPE: &'static str = "tally";
    type Command = u64;
    type Event = Added;
    type Error = Never;

    fn handle(&self, by: &u64) -> Result<Vec<Added>, Never> {
        Ok(vec![Added(*by, "x".repeat(150))])
    }

    fn apply(&mut self, Added(by, _): &Added) {
        self.n += by;
    }
}

fn event(actor: &str, version: u64) -> Event {
    Event::new(actor, "Added", version, &Added(1, "x".repeat(150))).unwrap()
}

fn row(what: &str, size: u64, aether: &str, baseline: &str, ratio: &str) {
    println!("| {what} | {size} | {aether} | {baseline} | {ratio} |");
}

fn per_sec(n: u64, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn us(d: Duration) -> String {
    format!("{:.0} us", d.as_secs_f64() * 1e6)
}

const WINDOW: usize = 512;

/// Appends version 1 of `count` new actors named `prefix-i` through the store, `WINDOW` at a time.
async fn aether_appends(store: &JetStreamEventStore, prefix: &str, count: u64) -> Duration {
    let started = Instant::now();
    futures::stream::iter(0..count)
        .map(|i| {
            let store = store.clone();
            let id = format!("{prefix}-{i}");
            async move { store.save_event(event(&id, 1)).await.unwrap() }
        })
        .buffer_unordered(WINDOW)
        .collect::<Vec<()>>()
        .await;
    started.elapsed()
}

/// The same bytes and headers as the store's appends, published by hand with a window of acks.
async fn raw_appends(
    js: &async_nats::jetstream::Context,
    store: &JetStreamEventStore,
    prefix: &str,
    count: u64,
) -> Duration {
    let started = Instant::now();
    futures::stream::iter(0..count)
        .map(|i| {
            let id = format!("{prefix}-{i}");
            let ev = event(&id, 1);
            let body = aether_core::wire::encode_event(&ev).unwrap();
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
            headers.insert("Nats-Msg-Id", ev.id().to_string().as_str());
            headers.insert(layout::HEADER_VERSION, "1");
            let subject = store.subject_for(&id);
            async move {
                js.publish_with_headers(subject, headers, body.into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(WINDOW)
        .collect::<Vec<()>>()
        .await;
    started.elapsed()
}

async fn appends_at_scale(server: &mut NatsServer) {
    let client = server.connect().await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let store = JetStreamEventStore::new(client.clone(), "scale")
        .await
        .unwrap();
    let measured = size(20_000);
    let (client0, server0) = (resident_bytes(), server.resident_bytes());
    let mut existing = 0u64;
    for full in [0, 100_000, 1_000_000] {
        let level = size(full);
        if level > existing {
            aether_appends(&store, &format!("fill-{existing}"), level - existing).await;
            existing = level;
            let grew = |now: Option<u64>, then: Option<u64>| {
                now.zip(then)
                    .map_or(0.0, |(n, t)| n.saturating_sub(t) as f64 / level as f64)
            };
            row(
                "client memory per written actor (store cache holds at most 100k)",
                level,
                &format!("{:.0} B", grew(resident_bytes(), client0)),
                "-",
                "-",
            );
            row(
                "server memory per actor subject (right after writing)",
                level,
                &format!("{:.0} B", grew(server.resident_bytes(), server0)),
                "-",
                "-",
            );
        }
        let (mut ours, mut raw) = (Vec::new(), Vec::new());
        for round in 0..2 {
            ours.push(aether_appends(&store, &format!("new-{level}-{round}"), measured).await);
            raw.push(raw_appends(&js, &store, &format!("raw-{level}-{round}"), measured).await);
        }
        let per_round: Vec<f64> = ours
            .iter()
            .zip(&raw)
            .map(|(o, r)| r.as_secs_f64() / o.as_secs_f64())
            .collect();
        record_row(
            &ReportRow::new(
                format!("scale.append.{}", tier(full)),
                format!("append throughput, {level} actors already stored ({measured} new actors, 512 in flight)"),
                Better::Higher,
                Figure::new(per_sec(measured, median(ours.clone())), "events/s"),
                "raw pipelined publish, same bytes and headers",
                Figure::new(per_sec(measured, median(raw.clone())), "events/s"),
            )
            .spread(Spread::of_rounds(&per_round)),
        );
        let (a, b) = (
            per_sec(measured, median(ours)),
            per_sec(measured, median(raw)),
        );
        row(
            "append throughput, N actors already stored (new actors, 512 in flight)",
            level,
            &format!("{a:.0}/s"),
            &format!("{b:.0}/s"),
            &format!("{:.2}x", a / b),
        );
    }
    let subjects = existing + 8 * measured;
    server.restart().await.unwrap();
    let client = server.connect().await.unwrap();
    // The stream is loaded once it answers.
    let js = async_nats::jetstream::new(client);
    let info = js
        .get_stream("scale")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    row(
        "disk per stored event (stream bytes / messages; ~200-byte events)",
        info.state.messages,
        &format!(
            "{:.0} B",
            info.state.bytes as f64 / info.state.messages.max(1) as f64
        ),
        "-",
        "-",
    );
    row(
        "server memory per actor subject at rest (after a restart; whole process)",
        subjects,
        &format!(
            "{:.0} B",
            server.resident_bytes().unwrap_or(0) as f64 / subjects as f64
        ),
        "-",
        "-",
    );
}

async fn write_history(store: &JetStreamEventStore, actor: &str, n: u64) {
    let mut v = 1;
    while v <= n {
        let end = (v + 999).min(n);
        store
            .save_events((v..=end).map(|v| event(actor, v)).collect())
            .await
            .unwrap();
        v = end + 1;
    }
}

/// Reads `count` messages of `subject` from `start` with an ordered consumer.
async fn raw_read(
    stream: &async_nats::jetstream::stream::Stream,
    client: &async_nats::Client,
    subject: &str,
    start: u64,
    count: u64,
) {
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_subject: client.new_inbox(),
            filter_subject: subject.to_owned(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    for _ in 0..count {
        let m = messages.next().await.unwrap().unwrap();
        std::hint::black_box(aether_core::wire::decode_event(&m.payload).unwrap());
    }
}

async fn reads_and_activation(server: &NatsServer) {
    let client = server.connect().await.unwrap();
    let writer = JetStreamEventStore::new(client.clone(), "history")
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream(writer.stream_name()).await.unwrap();
    let bucket = js
        .get_key_value(format!("{}-snapshots", writer.stream_name()))
        .await
        .unwrap();
    for full in [1_000, 10_000, 100_000] {
        let n = size(full);
        let actor = format!("hist-{n}");
        let subject = writer.subject_for(&actor);
        write_history(&writer, &actor, n).await;
        let first = n.saturating_sub(9).max(1);
        let start_seq = stream
            .get_last_raw_message_by_subject(&subject)
            .await
            .unwrap()
            .sequence
            - (n - first);
        // A process that did not write the history (a restart).
        let reader = JetStreamEventStore::new(server.connect().await.unwrap(), "history")
            .await
            .unwrap();
        let (mut ours, mut raw) = (Vec::new(), Vec::new());
        for _ in 0..15 {
            let t = Instant::now();
            let tail = reader.get_events(&actor, first).await.unwrap();
            ours.push(t.elapsed());
            assert_eq!(tail.len() as u64, n - first + 1);
            let t = Instant::now();
            raw_read(&stream, &client, &subject, start_seq, n - first + 1).await;
            raw.push(t.elapsed());
        }
        record_row(&time_row(
            format!("scale.read_last_10.{}", tier(full)),
            format!("read the last 10 of {n} events, new process"),
            &ours,
            &raw,
            "raw ordered consumer at the known sequence",
        ));
        let (a, b) = (median(ours), median(raw));
        row(
            "read the last 10 events (get_events from n-9), new process",
            n,
            &us(a),
            &format!("{} (raw consumer at the known sequence)", us(b)),
            &format!("{:.2}x", a.as_secs_f64() / b.as_secs_f64()),
        );
        // The sequence: a restarted process reads the actor and passivates it.
        let runtime = Runtime::<Tally>::builder(Arc::new(reader.clone()))
            .snapshots(Arc::new(reader.clone()))
            .snapshot_policy(SnapshotPolicy::default().min_events(1))
            .build();
        runtime.capture_state(&actor).await.unwrap();
        runtime.stop_vm(&actor).await;
        let (mut ours, mut raw) = (Vec::new(), Vec::new());
        for _ in 0..15 {
            let fresh = JetStreamEventStore::new(server.connect().await.unwrap(), "history")
                .await
                .unwrap();
            let runtime = Runtime::<Tally>::builder(Arc::new(fresh.clone()))
                .snapshots(Arc::new(fresh.clone()))
                .build();
            let t = Instant::now();
            let (state, _) = runtime.capture_state(&actor).await.unwrap();
            ours.push(t.elapsed());
            assert_eq!(state.n, n);
            assert_eq!(runtime.stats().replayed, 0);
            let t = Instant::now();
            let entry = bucket.entry(layout::actor_token(&actor)).await.unwrap();
            std::hint::black_box(entry);
            std::hint::black_box(
                stream
                    .get_last_raw_message_by_subject(&subject)
                    .await
                    .unwrap(),
            );
            raw.push(t.elapsed());
        }
        record_row(&time_row(
            format!("scale.activation.{}", tier(full)),
            format!("activation of a {n}-event actor after a read-only process's snapshot"),
            &ours,
            &raw,
            "raw reads: the snapshot entry and the last record",
        ));
        let (a, b) = (median(ours), median(raw));
        row(
            "activation after a read-only process's snapshot, new process",
            n,
            &us(a),
            &format!("{} (raw: snapshot entry + last record)", us(b)),
            &format!("{:.2}x", a.as_secs_f64() / b.as_secs_f64()),
        );
    }
}

/// Counts live heap bytes, so "memory held" means what the code holds, not what the allocator
/// keeps for reuse (glibc rarely gives small freed blocks back to the OS).
#[global_allocator]
static HEAP: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

fn live_heap() -> f64 {
    let s = HEAP.stats();
    s.bytes_allocated as f64 - s.bytes_deallocated as f64 + s.bytes_reallocated as f64
}

/// What a memory child reports: resident and heap memory per active actor, shutdown time,
/// heap still held after shutdown (the runtime still alive) and after dropping it.
#[derive(Debug, Serialize, Deserialize)]
struct MemoryReport {
    rss_per_actor: f64,
    heap_per_actor: f64,
    stop: Duration,
    held_after_stop: f64,
    held_after_drop: f64,
}

/// Runs in a child process: `n` active actors (Aether, or the plain tokio structure).
async fn memory_child(kind: &str, n: u64) -> MemoryReport {
    let (rss0, heap0) = (resident_bytes().unwrap_or(0), live_heap());
    let active = || {
        (
            resident_bytes().unwrap_or(0).saturating_sub(rss0) as f64 / n as f64,
            (live_heap() - heap0) / n as f64,
        )
    };
    let ((rss_per_actor, heap_per_actor), stop, held_after_stop) = if kind == "aether" {
        let runtime = Runtime::<Tally>::builder(Arc::new(InMemoryEventStore::new()))
            .max_active(n as usize)
            .build();
        for i in 0..n {
            runtime.create_vm(&format!("m-{i}")).await.unwrap();
        }
        // Let every activation finish loading.
        runtime.capture_state("m-0").await.unwrap();
        tokio::task::yield_now().await;
        let per_actor = active();
        let t = Instant::now();
        runtime.shutdown().await;
        let stop = t.elapsed();
        (per_actor, stop, live_heap() - heap0)
    } else {
        let mut map = HashMap::new();
        let mut tasks = Vec::new();
        for i in 0..n {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(64);
            tasks.push(tokio::spawn(async move {
                let mut state = Tally::default();
                while let Some(by) = rx.recv().await {
                    if by == 0 {
                        break;
                    }
                    state.n += by;
                }
                std::hint::black_box(state);
            }));
            map.insert(Arc::<str>::from(format!("m-{i}")), tx);
        }
        tokio::task::yield_now().await;
        let per_actor = active();
        let t = Instant::now();
        for tx in map.values() {
            let _ = tx.try_send(0);
        }
        for task in tasks {
            task.await.unwrap();
        }
        let stop = t.elapsed();
        let held = live_heap() - heap0;
        drop(map);
        (per_actor, stop, held)
    };
    MemoryReport {
        rss_per_actor,
        heap_per_actor,
        stop,
        held_after_stop,
        held_after_drop: live_heap() - heap0,
    }
}

fn spawn_memory_child(kind: &str, n: u64) -> MemoryReport {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env("AETHER_SCALE_CHILD", format!("{kind}:{n}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap()
}

fn runtime_memory() {
    let mb = |b: f64| format!("{:.1} MB", b / 1e6);
    for full in [10_000, 100_000, 1_000_000] {
        let n = size(full);
        let plain = spawn_memory_child("plain", n);
        let ours = spawn_memory_child("aether", n);
        let plain_name = "a tokio task + mpsc per actor in a HashMap";
        for (what, path, ours, plain, unit) in [
            (
                "memory.rss",
                "runtime memory per active actor, resident",
                ours.rss_per_actor,
                plain.rss_per_actor,
                "B",
            ),
            (
                "memory.heap",
                "runtime memory per active actor, live heap",
                ours.heap_per_actor,
                plain.heap_per_actor,
                "B",
            ),
            (
                "shutdown",
                "shutdown of all active actors",
                ours.stop.as_secs_f64() * 1e3,
                plain.stop.as_secs_f64() * 1e3,
                "ms",
            ),
        ] {
            record_row(&ReportRow::new(
                format!("scale.{what}.{}", tier(full)),
                format!("{path}, {n} actors (memory store)"),
                Better::Lower,
                Figure::new(ours, unit),
                plain_name,
                Figure::new(plain, unit),
            ));
        }
        row(
            "runtime memory per active actor, resident (memory store)",
            n,
            &format!("{:.0} B", ours.rss_per_actor),
            &format!("{:.0} B (tokio task + mpsc + HashMap)", plain.rss_per_actor),
            &format!("{:.2}x", ours.rss_per_actor / plain.rss_per_actor.max(1.0)),
        );
        row(
            "runtime memory per active actor, live heap",
            n,
            &format!("{:.0} B", ours.heap_per_actor),
            &format!("{:.0} B", plain.heap_per_actor),
            &format!(
                "{:.2}x",
                ours.heap_per_actor / plain.heap_per_actor.max(1.0)
            ),
        );
        row(
            "shutdown of all active actors",
            n,
            &format!("{:.0} ms", ours.stop.as_secs_f64() * 1e3),
            &format!(
                "{:.0} ms (stop message to each task, join all)",
                plain.stop.as_secs_f64() * 1e3
            ),
            &format!(
                "{:.2}x",
                ours.stop.as_secs_f64() / plain.stop.as_secs_f64().max(1e-9)
            ),
        );
        row(
            "live heap held after shutdown / after drop",
            n,
            &format!(
                "{} / {}",
                mb(ours.held_after_stop),
                mb(ours.held_after_drop)
            ),
            &format!(
                "{} (tasks joined, map kept) / {}",
                mb(plain.held_after_stop),
                mb(plain.held_after_drop)
            ),
            "-",
        );
    }
}

fn main() {
    QUICK.store(!std::env::args().any(|a| a == "--bench"), Ordering::Relaxed);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if let Ok(child) = std::env::var("AETHER_SCALE_CHILD") {
        let (kind, n) = child.split_once(':').unwrap();
        let report = rt.block_on(memory_child(kind, n.parse().unwrap()));
        println!("{}", serde_json::to_string(&report).unwrap());
        return;
    }
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let want = |row: &str| filter.as_deref().is_none_or(|f| row.contains(f));
    if QUICK.load(Ordering::Relaxed) {
        println!("smoke run (no --bench): sizes / 100, debug build; not a measurement");
    } else if quick() {
        println!("quick run: sizes / 20");
    }
    println!("| row | size | Aether | baseline (same run) | ratio |");
    println!("| --- | --- | --- | --- | --- |");
    if want("memory") || want("shutdown") {
        runtime_memory();
    }
    rt.block_on(async {
        let mut server = NatsServer::start().await.unwrap();
        if want("read") || want("activation") {
            reads_and_activation(&server).await;
        }
        if want("append") {
            appends_at_scale(&mut server).await;
        }
    });
}
