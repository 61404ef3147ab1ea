//! The JetStream store against raw async-nats doing the same work, on the same nats-server, in
//! the same run (R1 file storage, ~200-byte events). Prints a ratio table at the end
//! (baseline time / Aether time: 1.0 means as fast as raw async-nats).
//!
//! | path | baseline |
//! | --- | --- |
//! | one actor, sequential appends, each checked | publish with the expected-sequence header, awaiting each ack |
//! | 1,000 actors, concurrent appends | pipelined publish (window 256) of the same bytes; and, as a second baseline, the same optimistic-concurrency protocol by hand (per-actor chains with the expected-sequence header and a message id) |
//! | replay of one actor's 100k events, decoded | ordered push consumer over the same messages |
//! | atomic batch of 100 events | hand-written atomic batch publish |
//!
//! Run with `cargo xtask bench -p aether-store-jetstream`. With `AETHER_BENCH_ROWS` set
//! (`cargo xtask bench --report`) it also hands its rows to the benchmark report;
//! `AETHER_BENCH_QUICK` shortens criterion's measurements and writes 2 events per actor (not 10)
//! and replays 20k events (not 100k).

#![allow(missing_docs)] // criterion_group! generates an undocumented public fn
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // benchmark set-up

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aether_core::{Event, EventStore};
use aether_store_jetstream::{JetStreamConfig, JetStreamEventStore};
use aether_testkit::bench::{ReportRow, quick, record_row};
use aether_testkit::nats::NatsServer;
use async_nats::jetstream::consumer::push::OrderedConfig;
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group};
use futures::StreamExt;
use uuid::Uuid;

const SEQUENTIAL: u64 = 500;
const ACTORS: u64 = 1000;
const SHORT: u64 = 50;

/// Events per actor in the concurrent appends: 10, 2 in a quick run.
fn events_per_actor() -> u64 {
    if quick() { 2 } else { 10 }
}

/// Events of the long replay: 100k, 20k in a quick run.
fn replay_len() -> u64 {
    if quick() { 20_000 } else { 100_000 }
}
const BATCH: u64 = 100;
const WINDOW: usize = 256;

struct Env {
    rt: tokio::runtime::Runtime,
    _server: NatsServer,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    store: JetStreamEventStore,
    raw_stream: async_nats::jetstream::stream::Stream,
}

fn payload(i: u64) -> (u64, String) {
    (i, "x".repeat(150))
}

fn event(actor: &str, version: u64) -> Event {
    Event::new(actor, "Benchmarked", version, &payload(version)).unwrap()
}

fn encoded(actor: &str, version: u64) -> Bytes {
    Bytes::from(aether_core::wire::encode_event(&event(actor, version)).unwrap())
}

fn env() -> Env {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (server, client, js, store, raw_stream) = rt.block_on(async {
        let server = NatsServer::start().await.expect("start nats-server");
        let client = server.connect().await.unwrap();
        let js = async_nats::jetstream::new(client.clone());
        let store = JetStreamEventStore::with_config(
            client.clone(),
            "bench",
            JetStreamConfig::default().request_timeout(Duration::from_secs(30)),
        )
        .await
        .unwrap();
        // The baseline writes to a stream of its own with the same settings.
        let raw_stream = js
            .create_stream(async_nats::jetstream::stream::Config {
                name: "raw".into(),
                subjects: vec!["raw.>".into()],
                allow_atomic_publish: true,
                allow_direct: true,
                ..Default::default()
            })
            .await
            .unwrap();
        (server, client, js, store, raw_stream)
    });
    Env {
        rt,
        _server: server,
        client,
        js,
        store,
        raw_stream,
    }
}

fn sequential(c: &mut Criterion, env: &Env) {
    let mut g = c.benchmark_group("js_append_one_actor_sequential");
    g.throughput(Throughput::Elements(SEQUENTIAL));
    g.bench_function("baseline", |b| {
        b.iter_custom(|iters| {
            env.rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let actor = Uuid::new_v4().simple().to_string();
                    let subject = format!("raw.{actor}");
                    let msgs: Vec<Bytes> = (1..=SEQUENTIAL).map(|v| encoded(&actor, v)).collect();
                    let start = Instant::now();
                    let mut last = 0;
                    for bytes in msgs {
                        let msg = PublishMessage::build()
                            .payload(bytes)
                            .message_id(Uuid::now_v7().to_string())
                            .expected_last_subject_sequence(last);
                        let ack = env
                            .js
                            .send_publish(subject.clone(), msg)
                            .await
                            .unwrap()
                            .await
                            .unwrap();
                        last = ack.sequence;
                    }
                    total += start.elapsed();
                }
                total
            })
        })
    });
    g.bench_function("aether", |b| {
        b.iter_custom(|iters| {
            env.rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let actor = Uuid::new_v4().simple().to_string();
                    let events: Vec<Event> = (1..=SEQUENTIAL).map(|v| event(&actor, v)).collect();
                    let start = Instant::now();
                    for e in events {
                        env.store.save_event(e).await.unwrap();
                    }
                    total += start.elapsed();
                }
                total
            })
        })
    });
    g.finish();
}

fn concurrent(c: &mut Criterion, env: &Env) {
    let mut g = c.benchmark_group("js_append_1000_actors_concurrent");
    g.throughput(Throughput::Elements(ACTORS * events_per_actor()));
    g.bench_function("baseline", |b| {
        b.iter_custom(|iters| {
            env.rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let run = Uuid::new_v4().simple().to_string();
                    let msgs: Vec<(String, Bytes)> = (1..=events_per_actor())
                        .flat_map(|v| {
                            let run = run.clone();
                            (0..ACTORS).map(move |a| {
                                let actor = format!("{run}-{a}");
                                (format!("raw.{actor}"), encoded(&actor, v))
                            })
                        })
                        .collect();
                    let start = Instant::now();
                    futures::stream::iter(msgs)
                        .map(|(subject, bytes)| async move {
                            env.js.publish(subject, bytes).await.unwrap()
                        })
                        .buffered(WINDOW)
                        .map(std::future::IntoFuture::into_future)
                        .buffer_unordered(WINDOW)
                        .for_each(|ack: Result<_, _>| async move {
                            ack.unwrap();
                        })
                        .await;
                    total += start.elapsed();
                }
                total
            })
        })
    });
    g.bench_function("baseline_occ", |b| {
        b.iter_custom(|iters| {
            env.rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let run = Uuid::new_v4().simple().to_string();
                    let per_actor: Vec<(String, Vec<Bytes>)> = (0..ACTORS)
                        .map(|a| {
                            let actor = format!("{run}-{a}");
                            (
                                format!("raw.{actor}"),
                                (1..=events_per_actor())
                                    .map(|v| encoded(&actor, v))
                                    .collect(),
                            )
                        })
                        .collect();
                    let js = &env.js;
                    let start = Instant::now();
                    futures::stream::iter(per_actor)
                        .for_each_concurrent(ACTORS as usize, |(subject, msgs)| async move {
                            let mut last = 0;
                            for bytes in msgs {
                                let msg = PublishMessage::build()
                                    .payload(bytes)
                                    .message_id(Uuid::now_v7().to_string())
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
                        .await;
                    total += start.elapsed();
                }
                total
            })
        })
    });
    g.bench_function("aether", |b| {
        b.iter_custom(|iters| {
            env.rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let run = Uuid::new_v4().simple().to_string();
                    let per_actor: Vec<Vec<Event>> = (0..ACTORS)
                        .map(|a| {
                            let actor = format!("{run}-{a}");
                            (1..=events_per_actor()).map(|v| event(&actor, v)).collect()
                        })
                        .collect();
                    let store = &env.store;
                    let start = Instant::now();
                    // Each actor's events in order (each append needs the previous one's
                    // position); all actors in parallel.
                    futures::stream::iter(per_actor)
                        .for_each_concurrent(ACTORS as usize, |events| async move {
                            for e in events {
                                store.save_event(e).await.unwrap();
                            }
                        })
                        .await;
                    total += start.elapsed();
                }
                total
            })
        })
    });
    g.finish();
}

fn replay(c: &mut Criterion, env: &Env) {
    let actor = "replayed";
    env.rt.block_on(async {
        for chunk in (1..=replay_len()).collect::<Vec<_>>().chunks(1000) {
            let events = chunk.iter().map(|&v| event(actor, v)).collect();
            env.store.save_events(events).await.unwrap();
        }
    });
    let subject = env.store.subject_for(actor);
    let mut g = c.benchmark_group("js_replay_100k");
    g.throughput(Throughput::Elements(replay_len()));
    g.sample_size(10);
    g.bench_function("baseline", |b| {
        b.iter_custom(|iters| {
            env.rt.block_on(async {
                let stream = env.js.get_stream(env.store.stream_name()).await.unwrap();
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let consumer = stream
                        .create_consumer(OrderedConfig {
                            deliver_subject: env.client.new_inbox(),
                            filter_subject: subject.clone(),
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                    let mut messages = consumer.messages().await.unwrap();
                    let mut n = 0u64;
                    while let Some(m) = messages.next().await {
                        black_box(m.unwrap().payload.len());
                        n += 1;
                        if n == replay_len() {
                            break;
                        }
                    }
                    total += start.elapsed();
                }
                total
            })
        })
    });
    g.bench_function("aether", |b| {
        b.iter_custom(|iters| {
            env.rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let mut events = env.store.stream_events(actor, 0);
                    let mut n = 0u64;
                    while let Some(e) = events.next().await {
                        black_box(e.unwrap().version());
                        n += 1;
                    }
                    assert_eq!(n, replay_len());
                    total += start.elapsed();
                }
                total
            })
        })
    });
    g.finish();
}

/// Reading a short history (an activation without a snapshot): the store's direct gets against
/// a raw ordered push consumer that is deleted after the read (a read leaves nothing behind).
fn replay_short(c: &mut Criterion, env: &Env) {
    let actor = "short";
    env.rt.block_on(async {
        let events = (1..=SHORT).map(|v| event(actor, v)).collect();
        env.store.save_events(events).await.unwrap();
    });
    let subject = env.store.subject_for(actor);
    let mut g = c.benchmark_group("js_replay_short_50");
    g.throughput(Throughput::Elements(SHORT));
    g.bench_function("baseline", |b| {
        b.iter_custom(|iters| {
            env.rt.block_on(async {
                let stream = env.js.get_stream(env.store.stream_name()).await.unwrap();
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let name = format!("bench-{}", uuid::Uuid::new_v4().simple());
                    let consumer = stream
                        .create_consumer(OrderedConfig {
                            name: Some(name.clone()),
                            deliver_subject: env.client.new_inbox(),
                            filter_subject: subject.clone(),
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                    let mut messages = consumer.messages().await.unwrap();
                    let mut n = 0u64;
                    while let Some(m) = messages.next().await {
                        black_box(m.unwrap().payload.len());
                        n += 1;
                        if n == SHORT {
                            break;
                        }
                    }
                    drop(messages);
                    stream.delete_consumer(&name).await.unwrap();
                    total += start.elapsed();
                }
                total
            })
        })
    });
    g.bench_function("raw_direct_batch", |b| {
        b.iter_custom(|iters| {
            env.rt.block_on(async {
                let mut total = Duration::ZERO;
                let api = format!("$JS.API.DIRECT.GET.{}", env.store.stream_name());
                for _ in 0..iters {
                    let start = Instant::now();
                    let inbox = env.client.new_inbox();
                    let mut replies = env.client.subscribe(inbox.clone()).await.unwrap();
                    let body = format!(r#"{{"seq":1,"next_by_subj":"{subject}","batch":256}}"#);
                    env.client
                        .publish_with_reply(api.clone(), inbox, body.into())
                        .await
                        .unwrap();
                    let mut n = 0;
                    while let Some(m) = replies.next().await {
                        if m.status.is_some() {
                            break;
                        }
                        n += 1;
                    }
                    assert_eq!(n, SHORT);
                    total += start.elapsed();
                }
                total
            })
        })
    });
    g.bench_function("aether", |b| {
        b.iter_custom(|iters| {
            env.rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let events = env.store.get_events(actor, 0).await.unwrap();
                    assert_eq!(events.len() as u64, SHORT);
                    black_box(events);
                    total += start.elapsed();
                }
                total
            })
        })
    });
    g.finish();
}

async fn raw_batch(
    client: &async_nats::Client,
    subject: &str,
    msgs: &[Bytes],
    expected: u64,
) -> u64 {
    let batch = Uuid::new_v4().simple().to_string();
    let n = msgs.len();
    let mut seq = 0;
    for (i, bytes) in msgs.iter().enumerate() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Batch-Id", batch.as_str());
        headers.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
        headers.insert("Nats-Msg-Id", Uuid::now_v7().to_string().as_str());
        if i == 0 {
            headers.insert(
                "Nats-Expected-Last-Subject-Sequence",
                expected.to_string().as_str(),
            );
        }
        if i + 1 == n {
            headers.insert("Nats-Batch-Commit", "1");
        }
        if i == 0 || i + 1 == n {
            let reply = client
                .request_with_headers(subject.to_owned(), headers, bytes.clone())
                .await
                .unwrap();
            if i + 1 == n {
                let v: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
                seq = v["seq"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("batch failed: {v}"));
            }
        } else {
            client
                .publish_with_headers(subject.to_owned(), headers, bytes.clone())
                .await
                .unwrap();
        }
    }
    seq
}

fn batch(c: &mut Criterion, env: &Env) {
    let mut g = c.benchmark_group("js_atomic_batch_100");
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function("baseline", |b| {
        b.iter_custom(|iters| {
            env.rt.block_on(async {
                let actor = Uuid::new_v4().simple().to_string();
                let subject = format!("raw.{actor}");
                let mut last = 0;
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    let msgs: Vec<Bytes> = (1..=BATCH)
                        .map(|v| encoded(&actor, i * BATCH + v))
                        .collect();
                    let start = Instant::now();
                    last = raw_batch(&env.client, &subject, &msgs, last).await;
                    total += start.elapsed();
                }
                total
            })
        })
    });
    g.bench_function("aether", |b| {
        b.iter_custom(|iters| {
            env.rt.block_on(async {
                let actor = Uuid::new_v4().simple().to_string();
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    let events: Vec<Event> =
                        (1..=BATCH).map(|v| event(&actor, i * BATCH + v)).collect();
                    let start = Instant::now();
                    env.store.save_events(events).await.unwrap();
                    total += start.elapsed();
                }
                total
            })
        })
    });
    g.finish();
}

fn all(c: &mut Criterion) {
    let env = Arc::new(env());
    sequential(c, &env);
    concurrent(c, &env);
    replay(c, &env);
    replay_short(c, &env);
    batch(c, &env);
    black_box(&env.raw_stream);
}

/// Criterion's settings; shorter measurements in a quick run.
fn config() -> Criterion {
    if quick() {
        Criterion::default()
            .sample_size(10)
            .measurement_time(Duration::from_secs(1))
            .warm_up_time(Duration::from_millis(300))
    } else {
        Criterion::default()
            .sample_size(10)
            .measurement_time(Duration::from_secs(5))
            .warm_up_time(Duration::from_secs(1))
    }
}

criterion_group! {
    name = benches;
    config = config();
    targets = all
}

fn mean_ns(group: &str, function: &str) -> Option<f64> {
    aether_testkit::bench::mean_ns(&[group, function])
}

fn summary_occ() {
    let group = "js_append_1000_actors_concurrent";
    if let (Some(b), Some(a)) = (mean_ns(group, "baseline_occ"), mean_ns(group, "aether")) {
        let ops = (ACTORS * events_per_actor()) as f64;
        println!(
            "| 1,000 actors, concurrent appends vs the same OCC protocol by hand | {:.0} msg/s | {:.0} msg/s | {:.2}x |",
            ops / b * 1e9,
            ops / a * 1e9,
            b / a
        );
    }
}

fn summary() {
    println!("\n== JetStream store vs raw async-nats (same server, same run) ==");
    if quick() {
        println!(
            "(quick run: shorter measurements, {} events per actor, {} events replayed)",
            events_per_actor(),
            replay_len()
        );
    }
    println!("| path | baseline | aether | ratio (baseline time / aether time) |");
    println!("| --- | --- | --- | --- |");
    let replay = format!("replay {}k events of one actor", replay_len() / 1000);
    for (group, ops, name) in [
        (
            "js_append_one_actor_sequential",
            SEQUENTIAL,
            "one actor, sequential OCC appends",
        ),
        (
            "js_append_1000_actors_concurrent",
            ACTORS * events_per_actor(),
            "1,000 actors, concurrent appends",
        ),
        ("js_replay_100k", replay_len(), replay.as_str()),
        (
            "js_replay_short_50",
            SHORT,
            "read 50 events (direct gets vs a consumer created, read and deleted)",
        ),
        ("js_atomic_batch_100", BATCH, "atomic batch of 100"),
    ] {
        if let (Some(b), Some(a)) = (mean_ns(group, "baseline"), mean_ns(group, "aether")) {
            let rate = |ns: f64| ops as f64 / ns * 1e9;
            println!(
                "| {name} | {:.0} msg/s | {:.0} msg/s | {:.2}x |",
                rate(b),
                rate(a),
                b / a
            );
        }
    }
}

/// Hands the rows of the tables above to the benchmark report (estimates written since
/// `since`).
fn record(since: SystemTime) {
    let concurrent = ACTORS * events_per_actor();
    for (id, group, baseline_fn, units, path, baseline) in [
        (
            "js.append.sequential",
            "js_append_one_actor_sequential",
            "baseline",
            SEQUENTIAL,
            format!("JetStream append, one actor, {SEQUENTIAL} sequential OCC-checked appends"),
            "raw publish with the expected-sequence header, awaiting each ack",
        ),
        (
            "js.append.concurrent",
            "js_append_1000_actors_concurrent",
            "baseline",
            concurrent,
            format!(
                "JetStream append, {ACTORS} actors x {} events, concurrent",
                events_per_actor()
            ),
            "raw pipelined publish (window 256), same bytes",
        ),
        (
            "js.append.concurrent_occ",
            "js_append_1000_actors_concurrent",
            "baseline_occ",
            concurrent,
            format!(
                "JetStream append, {ACTORS} actors x {} events, concurrent",
                events_per_actor()
            ),
            "the same OCC protocol by hand (checked chains per actor)",
        ),
        (
            "js.replay.long",
            "js_replay_100k",
            "baseline",
            replay_len(),
            format!(
                "JetStream replay, one actor, {}k events, decoded",
                replay_len() / 1000
            ),
            "raw ordered push consumer, same messages",
        ),
        (
            "js.replay.short",
            "js_replay_short_50",
            "baseline",
            SHORT,
            format!("JetStream read of a {SHORT}-event history (direct gets)"),
            "raw ordered consumer created, read and deleted",
        ),
        (
            "js.batch",
            "js_atomic_batch_100",
            "baseline",
            BATCH,
            format!("JetStream atomic batch of {BATCH} events"),
            "hand-written atomic batch publish",
        ),
    ] {
        let est = |function: &str| aether_testkit::bench::estimate(&[group, function], since);
        if let (Some(a), Some(b)) = (est("aether"), est(baseline_fn)) {
            record_row(&ReportRow::criterion_rate(
                id,
                path,
                units as f64,
                "events",
                a,
                baseline,
                b,
            ));
        }
    }
}

fn main() {
    let started = SystemTime::now();
    benches();
    Criterion::default().configure_from_args().final_summary();
    if std::env::args().any(|a| a == "--bench") {
        summary();
        summary_occ();
        record(started);
    }
}
