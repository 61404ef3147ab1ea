//! The bus against its baselines, in the same run (ratio = baseline time / Aether time):
//!
//! | path | baseline |
//! | --- | --- |
//! | local fan-out, 1 publisher, 4 subscribers, 10k events | `tokio::sync::broadcast` |
//! | NATS bus, one node to another, 10k events (publisher at most 2,000 ahead) | raw core NATS publish/subscribe of the same bytes, same window |
//! | projection catch-up over 100k events | raw durable pull consumer, acking each message |
//!
//! The node-to-node pair (bus and raw bytes) is also measured outside criterion, 5 runs on a
//! server of their own, each run interleaving passes of both sides (`bus_nats_node_to_node/runs`,
//! printed run by run): issue 25's target for that row is `>= 0.8` in 4 of 5 runs, and its report
//! row (`bus.nats.node_to_node`) carries the median and each run's ratio. The criterion group
//! stays for the table and for the rows with the reader decoding and with the echo.
//!
//! Run with `cargo xtask bench -p aether-bus`. With `AETHER_BENCH_ROWS` set
//! (`cargo xtask bench --report`) it also hands its rows to the benchmark report;
//! `AETHER_BENCH_QUICK` shortens criterion's measurements, catches up over 20k events (not
//! 100k) and makes each node-to-node run 20 passes per side (not 50); still 5 runs.

#![allow(missing_docs)] // criterion_group! generates an undocumented public fn
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // benchmark set-up

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use aether_bus::{
    EventBus, NatsEventBus, Pattern, Projection, ProjectionConfig, ProjectionRunner,
    SubscribeOptions,
};
use aether_core::{BoxError, Event, EventStore, Namespace};
use aether_store_jetstream::JetStreamEventStore;
use aether_testkit::bench::{Better, Figure, ReportRow, Spread, quick, record_row};
use aether_testkit::nats::NatsServer;
use async_trait::async_trait;
use criterion::{Criterion, Throughput, criterion_group};
use futures::StreamExt;
use uuid::Uuid;

const FANOUT: u64 = 10_000;
const SUBSCRIBERS: usize = 4;
const REMOTE: u64 = 10_000;
/// Messages a publisher may be ahead of its subscriber (core NATS drops for slow consumers).
const WINDOW: u64 = 1000;

/// Events the projection catches up over: 100k, 20k in a quick run.
fn catch_up_len() -> u64 {
    if quick() { 20_000 } else { 100_000 }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn events(n: u64) -> Vec<Event> {
    (1..=n)
        .map(|v| Event::new("bench", "Benchmarked", v, &(v, "x".repeat(100))).unwrap())
        .collect()
}

fn fanout(c: &mut Criterion) {
    let rt = rt();
    let ns = Namespace::new("bench").unwrap();
    let evs = Arc::new(events(FANOUT));
    let mut g = c.benchmark_group("bus_local_fanout_4");
    g.throughput(Throughput::Elements(FANOUT * SUBSCRIBERS as u64));
    g.bench_function("baseline", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (tx, _) = tokio::sync::broadcast::channel::<Event>(FANOUT as usize);
                    let readers: Vec<_> = (0..SUBSCRIBERS)
                        .map(|_| {
                            let mut rx = tx.subscribe();
                            tokio::spawn(async move {
                                for _ in 0..FANOUT {
                                    black_box(rx.recv().await.unwrap());
                                }
                            })
                        })
                        .collect();
                    let start = Instant::now();
                    for e in evs.iter() {
                        tx.send(e.clone()).unwrap();
                    }
                    for r in readers {
                        r.await.unwrap();
                    }
                    total += start.elapsed();
                }
                total
            })
        })
    });
    g.bench_function("aether", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let bus = EventBus::new();
                    let readers: Vec<_> = (0..SUBSCRIBERS)
                        .map(|_| {
                            let mut sub = bus.subscribe_with(
                                Pattern::exact(&ns),
                                SubscribeOptions::default().capacity(FANOUT as usize),
                            );
                            tokio::spawn(async move {
                                for _ in 0..FANOUT {
                                    black_box(sub.next().await.unwrap());
                                }
                            })
                        })
                        .collect();
                    let start = Instant::now();
                    for e in evs.iter() {
                        bus.publish(&ns, e).await;
                    }
                    for r in readers {
                        r.await.unwrap();
                    }
                    total += start.elapsed();
                }
                total
            })
        })
    });
    g.finish();
}

/// One pass of the raw baseline: `bytes` published on core NATS from `a`, read on `b` (each
/// message decoded into an `Event` when `decode`), the publisher at most two windows ahead; the
/// time from the first publish to the last message read.
async fn raw_pass(
    a: &async_nats::Client,
    b: &async_nats::Client,
    bytes: &[bytes::Bytes],
    decode: bool,
) -> Duration {
    let subject = format!("raw.{}", Uuid::new_v4().simple());
    let mut sub = b.subscribe(subject.clone()).await.unwrap();
    // Not `flush`: that only writes the socket, and the first messages could reach the server
    // before the subscription does.
    aether_bus::round_trip(b).await.unwrap();
    let (seen_tx, mut seen) = tokio::sync::watch::channel(0u64);
    let reader = tokio::spawn(async move {
        for i in 1..=REMOTE {
            let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
                .await
                .unwrap_or_else(|_| panic!("raw: stuck after {i}"));
            let m = m.unwrap();
            if decode {
                black_box(aether_core::wire::decode_event(&m.payload).unwrap());
            } else {
                black_box(m);
            }
            if i.is_multiple_of(WINDOW) || i == REMOTE {
                seen_tx.send_replace(i);
            }
        }
    });
    let start = Instant::now();
    for (i, m) in bytes.iter().enumerate() {
        a.publish(subject.clone(), m.clone()).await.unwrap();
        let sent = i as u64 + 1;
        if sent.is_multiple_of(WINDOW) {
            // At most two windows in flight: core NATS drops for slow consumers.
            seen.wait_for(|n| *n + WINDOW >= sent).await.unwrap();
        }
    }
    a.flush().await.unwrap();
    reader.await.unwrap();
    start.elapsed()
}

/// One pass of the bus: `evs` published on `bus1`, read from a new subscription on `bus2`, the
/// publisher at most two windows ahead; the time from the first publish to the last event read.
async fn bus_pass(
    bus1: &NatsEventBus,
    bus2: &NatsEventBus,
    ns: &Namespace,
    evs: &[Event],
) -> Duration {
    let mut sub = bus2
        .subscribe_with(
            Pattern::exact(ns),
            SubscribeOptions::default().capacity(REMOTE as usize),
        )
        .await
        .unwrap();
    let (seen_tx, mut seen) = tokio::sync::watch::channel(0u64);
    let reader = tokio::spawn(async move {
        for i in 1..=REMOTE {
            let e = tokio::time::timeout(Duration::from_secs(5), sub.next())
                .await
                .unwrap_or_else(|_| panic!("bus: stuck after {i}"));
            black_box(e.unwrap());
            if i.is_multiple_of(WINDOW) || i == REMOTE {
                seen_tx.send_replace(i);
            }
        }
    });
    let start = Instant::now();
    for (i, e) in evs.iter().enumerate() {
        bus1.publish(ns, e).await.unwrap();
        let sent = i as u64 + 1;
        if sent.is_multiple_of(WINDOW) {
            seen.wait_for(|n| *n + WINDOW >= sent).await.unwrap();
        }
    }
    reader.await.unwrap();
    start.elapsed()
}

/// The events of the node-to-node path and their encoded bytes (the raw baseline's payloads).
fn remote_events() -> (Vec<Event>, Vec<bytes::Bytes>) {
    let evs = events(REMOTE);
    let bytes = evs
        .iter()
        .map(|e| aether_core::wire::encode_event(e).unwrap().into())
        .collect();
    (evs, bytes)
}

fn remote(c: &mut Criterion) {
    let rt = rt();
    let server = rt.block_on(NatsServer::start()).unwrap();
    let ns = Namespace::new("bench").unwrap();
    let (evs, bytes) = remote_events();
    let mut g = c.benchmark_group("bus_nats_node_to_node");
    g.throughput(Throughput::Elements(REMOTE));
    g.sample_size(10);
    // "baseline": raw bytes in, raw bytes out. "baseline_decoded": the same, and the reader
    // decodes each message into an `Event` (what any subscriber of events must do).
    for (name, decode) in [("baseline", false), ("baseline_decoded", true)] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let a = server.connect().await.unwrap();
                    let bconn = server.connect().await.unwrap();
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += raw_pass(&a, &bconn, &bytes, decode).await;
                    }
                    total
                })
            })
        });
    }
    // "aether_echo": the publishing node also subscribes to the namespace, so the server sends
    // it its own events back (and it drops them, recognised by the reply subject).
    for (name, echo) in [("aether", false), ("aether_echo", true)] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let bus1 = NatsEventBus::new(server.connect().await.unwrap())
                        .await
                        .unwrap();
                    // A node reads its subscriptions: its own events arrive in process, the
                    // server's copies are read and dropped.
                    let own = if echo {
                        let mut own = bus1.subscribe(Pattern::exact(&ns)).await.unwrap();
                        Some(tokio::spawn(async move {
                            while let Some(e) = own.next().await {
                                black_box(e);
                            }
                        }))
                    } else {
                        None
                    };
                    let bus2 = NatsEventBus::new(server.connect().await.unwrap())
                        .await
                        .unwrap();
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += bus_pass(&bus1, &bus2, &ns, &evs).await;
                    }
                    bus1.stop();
                    bus2.stop();
                    drop(bus1);
                    if let Some(own) = own {
                        own.await.unwrap();
                    }
                    total
                })
            })
        });
    }
    g.finish();
}

/// Runs of the node-to-node measurement: issue 25 wants the bus at 0.8 of raw core NATS or
/// better "in 4 of 5 runs" (the report judges the runs; `NODE_TO_NODE_TARGET` only words the
/// row's note).
const RUNS: usize = 5;
const NODE_TO_NODE_TARGET: f64 = 0.8;

/// Passes of each side in one run, after a warm-up pass of each.
fn passes_per_run() -> u32 {
    if quick() { 20 } else { 50 }
}

/// One run's rates, events/s.
#[derive(Debug, Clone, Copy)]
struct Run {
    aether: f64,
    baseline: f64,
}

impl Run {
    fn ratio(&self) -> f64 {
        self.aether / self.baseline
    }
}

/// The targeted pair (`bus.nats.node_to_node`) measured [`RUNS`] times outside criterion, on a
/// server of its own: each run connects both sides afresh, warms each up with one pass, then
/// interleaves [`passes_per_run`] passes of the bus and of raw core NATS (the order alternating
/// pass by pass) and compares the two rates. Prints each run's ratio.
fn node_to_node_runs() -> Vec<Run> {
    let rt = rt();
    let server = rt.block_on(NatsServer::start()).unwrap();
    let ns = Namespace::new("bench").unwrap();
    let (evs, bytes) = remote_events();
    let passes = passes_per_run();
    let runs = rt.block_on(async {
        let mut runs = Vec::with_capacity(RUNS);
        for run in 1..=RUNS {
            let a = server.connect().await.unwrap();
            let b = server.connect().await.unwrap();
            let bus1 = NatsEventBus::new(server.connect().await.unwrap())
                .await
                .unwrap();
            let bus2 = NatsEventBus::new(server.connect().await.unwrap())
                .await
                .unwrap();
            bus_pass(&bus1, &bus2, &ns, &evs).await;
            raw_pass(&a, &b, &bytes, false).await;
            let (mut ours, mut raw) = (Duration::ZERO, Duration::ZERO);
            for pass in 0..passes {
                if pass % 2 == 0 {
                    ours += bus_pass(&bus1, &bus2, &ns, &evs).await;
                    raw += raw_pass(&a, &b, &bytes, false).await;
                } else {
                    raw += raw_pass(&a, &b, &bytes, false).await;
                    ours += bus_pass(&bus1, &bus2, &ns, &evs).await;
                }
            }
            bus1.stop();
            bus2.stop();
            let rate = |t: Duration| (REMOTE * u64::from(passes)) as f64 / t.as_secs_f64();
            let r = Run {
                aether: rate(ours),
                baseline: rate(raw),
            };
            println!(
                "bus_nats_node_to_node run {run} of {RUNS} ({passes} passes of {REMOTE} events \
                 each side): aether {:.0} ev/s, raw core NATS {:.0} ev/s, ratio {:.2}",
                r.aether,
                r.baseline,
                r.ratio()
            );
            runs.push(r);
        }
        runs
    });
    drop(server);
    runs
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The row of the runs: the median rates and the median per-run ratio, the per-run ratios'
/// min-max, each run's ratio (the report counts those meeting the target) and how many do.
fn record_runs(runs: &[Run]) {
    let ratios: Vec<f64> = runs.iter().map(Run::ratio).collect();
    let meeting = ratios.iter().filter(|&&r| r >= NODE_TO_NODE_TARGET).count();
    let spread = Spread::of_rounds(&ratios).map(|s| Spread {
        how: format!("min-max of {} runs", ratios.len()),
        ..s
    });
    let row = ReportRow::new(
        "bus.nats.node_to_node",
        format!(
            "NATS bus, one node to another, {REMOTE} events, {} runs",
            runs.len()
        ),
        Better::Higher,
        Figure::new(median(runs.iter().map(|r| r.aether).collect()), "events/s"),
        "raw core NATS publish/subscribe, same bytes",
        Figure::new(
            median(runs.iter().map(|r| r.baseline).collect()),
            "events/s",
        ),
    )
    .ratio(median(ratios.clone()))
    .spread(spread)
    .note(format!(
        "{meeting} of {} runs >= {NODE_TO_NODE_TARGET}",
        ratios.len()
    ))
    .rounds(ratios);
    record_row(&row);
}

#[derive(Default)]
struct Count(AtomicU64);

#[async_trait]
impl Projection for Count {
    async fn apply(&self, event: &Event, _position: u64) -> Result<(), BoxError> {
        black_box(event.version());
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn catch_up(c: &mut Criterion) {
    let rt = rt();
    let server = rt.block_on(NatsServer::start()).unwrap();
    let (store, js, last) = rt.block_on(async {
        let client = server.connect().await.unwrap();
        let store = JetStreamEventStore::new(client.clone(), "bench")
            .await
            .unwrap();
        for chunk in (1..=catch_up_len()).collect::<Vec<_>>().chunks(1000) {
            let batch = chunk
                .iter()
                .map(|&v| Event::new("acct", "Deposited", v, &(v, "x".repeat(100))).unwrap())
                .collect();
            store.save_events(batch).await.unwrap();
        }
        let js = async_nats::jetstream::new(client);
        let last = js
            .get_stream(store.stream_name())
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .last_sequence;
        (store, js, last)
    });
    let mut g = c.benchmark_group("bus_projection_catch_up_100k");
    g.throughput(Throughput::Elements(catch_up_len()));
    g.sample_size(10);
    g.bench_function("baseline", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let stream = js.get_stream(store.stream_name()).await.unwrap();
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let name = format!("raw{}", Uuid::new_v4().simple());
                    let start = Instant::now();
                    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
                        .create_consumer(async_nats::jetstream::consumer::pull::Config {
                            durable_name: Some(name.clone()),
                            filter_subject: store.subject_filter(),
                            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
                            max_ack_pending: 1024,
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                    let mut messages = consumer.messages().await.unwrap();
                    while let Some(m) = messages.next().await {
                        let m = m.unwrap();
                        let seq = m.info().unwrap().stream_sequence;
                        black_box(aether_core::wire::decode_event(&m.payload).unwrap());
                        m.ack().await.unwrap();
                        if seq == last {
                            break;
                        }
                    }
                    total += start.elapsed();
                    stream.delete_consumer(&name).await.unwrap();
                }
                total
            })
        })
    });
    g.bench_function("aether", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let name = format!("proj{}", Uuid::new_v4().simple());
                    let config =
                        ProjectionConfig::new(name, store.stream_name(), store.subject_filter());
                    let count = Arc::new(Count::default());
                    let start = Instant::now();
                    let mut runner =
                        ProjectionRunner::start(js.clone(), config.clone(), count.clone())
                            .await
                            .unwrap();
                    runner.caught_up_to(last).await;
                    total += start.elapsed();
                    assert_eq!(count.0.load(Ordering::Relaxed), catch_up_len());
                    runner.stop();
                    let stream = js.get_stream(store.stream_name()).await.unwrap();
                    stream.delete_consumer(&config.name).await.unwrap();
                }
                total
            })
        })
    });
    g.finish();
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
    targets = fanout, remote, catch_up
}

fn mean_ns(group: &str, function: &str) -> Option<f64> {
    aether_testkit::bench::mean_ns(&[group, function])
}

/// Hands the rows of the table to the benchmark report (estimates written since `since`).
fn record(since: SystemTime) {
    for (id, group, units, path, baseline, baseline_fn, ours) in [
        (
            "bus.local.fanout",
            "bus_local_fanout_4",
            FANOUT * SUBSCRIBERS as u64,
            format!("local bus fan-out, 1 publisher, {SUBSCRIBERS} subscribers, {FANOUT} events"),
            "tokio::sync::broadcast",
            "baseline",
            "aether",
        ),
        (
            "bus.nats.node_to_node_decoded",
            "bus_nats_node_to_node",
            REMOTE,
            format!("NATS bus, one node to another, {REMOTE} events"),
            "raw core NATS, the reader decoding each event",
            "baseline_decoded",
            "aether",
        ),
        (
            "bus.nats.echo",
            "bus_nats_node_to_node",
            REMOTE,
            format!(
                "NATS bus, one node to another, the publisher also subscribed, {REMOTE} events"
            ),
            "raw core NATS publish/subscribe, same bytes",
            "baseline",
            "aether_echo",
        ),
        (
            "bus.projection.catch_up",
            "bus_projection_catch_up_100k",
            catch_up_len(),
            format!("projection catch-up over {}k events", catch_up_len() / 1000),
            "raw durable pull consumer, acking each message",
            "baseline",
            "aether",
        ),
    ] {
        let est = |function: &str| aether_testkit::bench::estimate(&[group, function], since);
        if let (Some(a), Some(b)) = (est(ours), est(baseline_fn)) {
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
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--bench") {
        // The runs go by the name `bus_nats_node_to_node/runs`: a filter argument that is not
        // part of it leaves them out, as criterion leaves out the benchmarks it does not match.
        let filter = args.iter().skip(1).find(|a| !a.starts_with('-'));
        let runs = if filter.is_none_or(|f| "bus_nats_node_to_node/runs".contains(f.as_str())) {
            let runs = node_to_node_runs();
            record_runs(&runs);
            runs
        } else {
            Vec::new()
        };
        record(started);
        println!("\n== aether-bus vs baselines (same run) ==");
        if quick() {
            println!(
                "(quick run: shorter measurements, catch-up over {} events)",
                catch_up_len()
            );
        }
        let catch_up = format!("projection catch-up over {}k events", catch_up_len() / 1000);
        println!("| path | baseline | aether | ratio (baseline time / aether time) |");
        println!("| --- | --- | --- | --- |");
        for (group, n, name, baseline, ours) in [
            (
                "bus_local_fanout_4",
                FANOUT * SUBSCRIBERS as u64,
                "local fan-out, 1 publisher, 4 subscribers",
                "baseline",
                "aether",
            ),
            (
                "bus_nats_node_to_node",
                REMOTE,
                "NATS bus, one node to another (raw bytes)",
                "baseline",
                "aether",
            ),
            (
                "bus_nats_node_to_node",
                REMOTE,
                "NATS bus, one node to another (raw bytes, decoded by the reader)",
                "baseline_decoded",
                "aether",
            ),
            (
                "bus_nats_node_to_node",
                REMOTE,
                "NATS bus, the publishing node also subscribed (its echoes dropped; raw bytes)",
                "baseline",
                "aether_echo",
            ),
            (
                "bus_projection_catch_up_100k",
                catch_up_len(),
                catch_up.as_str(),
                "baseline",
                "aether",
            ),
        ] {
            if let (Some(b), Some(a)) = (mean_ns(group, baseline), mean_ns(group, ours)) {
                let rate = |ns: f64| n as f64 / ns * 1e9;
                println!(
                    "| {name} | {:.0} ev/s | {:.0} ev/s | {:.2}x |",
                    rate(b),
                    rate(a),
                    b / a
                );
            }
        }
        if !runs.is_empty() {
            let ratios: Vec<f64> = runs.iter().map(Run::ratio).collect();
            let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
            println!(
                "| NATS bus, one node to another, {} interleaved runs (median; runs: {}) | {:.0} \
                 ev/s | {:.0} ev/s | {:.2}x |",
                runs.len(),
                each.join(", "),
                median(runs.iter().map(|r| r.baseline).collect()),
                median(runs.iter().map(|r| r.aether).collect()),
                median(ratios),
            );
        }
    }
}
