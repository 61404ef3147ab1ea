//! Memory store append and replay against a `Mutex<HashMap<String, Vec<Event>>>` baseline, in
//! the same run, on 1 and 2 threads over distinct actors.
//!
//! - append: per iteration, each thread appends 20,000 events spread over its own 1,000 actors
//!   into a fresh store (events are built outside the timing);
//! - replay: per iteration, each thread reads its own 1,000-event actor back.
//!
//! `cargo xtask bench -- memory` (or `cargo bench -p aether-store-memory`) runs it and prints the
//! ratio table at the end (baseline time / Aether time: above 1 means Aether is faster). With
//! `AETHER_BENCH_ROWS` set (`cargo xtask bench --report`) it also hands its rows to the benchmark
//! report; `AETHER_BENCH_QUICK` shortens criterion's measurements.

#![allow(missing_docs)] // criterion_group! generates an undocumented public fn

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aether_core::{Event, EventStore, StoreError};
use aether_store_memory::InMemoryEventStore;
use aether_testkit::bench::{Better, Estimate, Figure, ReportRow, Spread, record_row};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use futures::FutureExt;

const ACTORS_PER_THREAD: usize = 1000;
const REPLAY_EVENTS: u64 = 1000;
/// Events each thread appends per benchmark iteration (into a fresh store).
const APPEND_EVENTS: u64 = 20_000;

/// The baseline: a plain std structure doing the same job (version check + push, clone on read).
#[derive(Default)]
struct Baseline(Mutex<HashMap<String, Vec<Event>>>);

impl Baseline {
    fn append(&self, event: Event) -> Result<(), &'static str> {
        let mut map = self.0.lock().map_err(|_| "poisoned")?;
        if let Some(events) = map.get_mut(event.actor_id()) {
            if events
                .last()
                .is_some_and(|l| l.version() >= event.version())
            {
                return Err("conflict");
            }
            events.push(event);
        } else {
            map.insert(event.actor_id().to_owned(), vec![event]);
        }
        Ok(())
    }

    fn read(&self, actor: &str) -> Vec<Event> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(actor).cloned().unwrap_or_default()
    }
}

fn aether_append(store: &InMemoryEventStore, event: Event) -> Result<(), StoreError> {
    // The memory store's futures complete on their first poll.
    store.save_event(event).now_or_never().unwrap_or_else(|| {
        Err(StoreError::Timeout {
            context: "the memory store's future was not ready".into(),
        })
    })
}

/// `n` events for thread `t`, spread round-robin over that thread's own actors.
fn events_for(t: usize, n: u64) -> Vec<Event> {
    let actors: Vec<String> = (0..ACTORS_PER_THREAD)
        .map(|a| format!("bench-t{t}-actor-{a}"))
        .collect();
    (0..n)
        .map(|i| {
            let actor = &actors[(i % ACTORS_PER_THREAD as u64) as usize];
            let version = i / ACTORS_PER_THREAD as u64 + 1;
            Event::builder(actor.as_str(), "Incremented")
                .version(version)
                .payload(&(i, "payload of a typical small event"))
                .build()
                .unwrap_or_else(|e| unreachable!("encoding a tuple: {e}"))
        })
        .collect()
}

/// Runs `work(state, input)` on one thread per input, all started together, and returns the
/// wall time until the last one finishes.
fn timed_threads<S: Send + Sync + 'static, T: Send + 'static>(
    state: Arc<S>,
    inputs: Vec<T>,
    work: fn(&S, T),
) -> Duration {
    let barrier = Arc::new(Barrier::new(inputs.len() + 1));
    let handles: Vec<_> = inputs
        .into_iter()
        .map(|input| {
            let (state, barrier) = (state.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                work(&state, input);
            })
        })
        .collect();
    let start = Instant::now();
    barrier.wait();
    for h in handles {
        h.join()
            .unwrap_or_else(|_| unreachable!("bench thread panicked"));
    }
    start.elapsed()
}

/// Times one round per iteration: every thread appends its prepared events (clones of the same
/// shared events, made outside the timing) into a fresh store.
fn append_rounds<S: Send + Sync + 'static>(
    iters: u64,
    prepared: &[Vec<Event>],
    new_state: fn() -> S,
    work: fn(&S, Vec<Event>),
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        total += timed_threads(Arc::new(new_state()), prepared.to_vec(), work);
    }
    total
}

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("memory_append");
    let prepared: Vec<Vec<Event>> = (0..2).map(|t| events_for(t, APPEND_EVENTS)).collect();
    for threads in [1usize, 2] {
        g.throughput(Throughput::Elements(APPEND_EVENTS * threads as u64));
        let batches = &prepared[..threads];
        g.bench_function(BenchmarkId::new("aether", threads), |b| {
            b.iter_custom(|iters| {
                append_rounds(iters, batches, InMemoryEventStore::new, |s, batch| {
                    for e in batch {
                        black_box(aether_append(s, e)).unwrap_or_else(|e| unreachable!("{e}"));
                    }
                })
            })
        });
        g.bench_function(BenchmarkId::new("baseline", threads), |b| {
            b.iter_custom(|iters| {
                append_rounds(iters, batches, Baseline::default, |s, batch| {
                    for e in batch {
                        black_box(s.append(e)).unwrap_or_else(|e| unreachable!("{e}"));
                    }
                })
            })
        });
    }
    g.finish();
}

fn replay(c: &mut Criterion) {
    let mut g = c.benchmark_group("memory_replay");
    let store = Arc::new(InMemoryEventStore::new());
    let baseline = Arc::new(Baseline::default());
    for t in 0..2 {
        for v in 1..=REPLAY_EVENTS {
            let e = Event::new(format!("replay-{t}"), "Incremented", v, &(v, "payload"))
                .unwrap_or_else(|e| unreachable!("{e}"));
            aether_append(&store, e.clone()).unwrap_or_else(|e| unreachable!("{e}"));
            baseline.append(e).unwrap_or_else(|e| unreachable!("{e}"));
        }
    }
    for threads in [1usize, 2] {
        // Throughput in events replayed per iteration, over all threads.
        g.throughput(Throughput::Elements(REPLAY_EVENTS * threads as u64));
        let s = store.clone();
        g.bench_with_input(
            BenchmarkId::new("aether", threads),
            &threads,
            move |b, &threads| {
                b.iter_custom(|iters| {
                    let inputs = (0..threads)
                        .map(|t| (format!("replay-{t}"), iters))
                        .collect();
                    timed_threads(s.clone(), inputs, |s, (actor, iters)| {
                        for _ in 0..iters {
                            let events = s.get_events(&actor, 0).now_or_never();
                            black_box(events.map(|r| r.map(|v| v.len())));
                        }
                    })
                })
            },
        );
        let s = baseline.clone();
        g.bench_with_input(
            BenchmarkId::new("baseline", threads),
            &threads,
            move |b, &threads| {
                b.iter_custom(|iters| {
                    let inputs = (0..threads)
                        .map(|t| (format!("replay-{t}"), iters))
                        .collect();
                    timed_threads(s.clone(), inputs, |s, (actor, iters)| {
                        for _ in 0..iters {
                            black_box(s.read(&actor).len());
                        }
                    })
                })
            },
        );
    }
    g.finish();
}

/// Criterion's settings; shorter measurements in a quick run.
fn config() -> Criterion {
    if aether_testkit::bench::quick() {
        Criterion::default()
            .sample_size(10)
            .measurement_time(Duration::from_millis(800))
            .warm_up_time(Duration::from_millis(300))
    } else {
        Criterion::default()
            .sample_size(20)
            .measurement_time(Duration::from_secs(3))
            .warm_up_time(Duration::from_secs(1))
    }
}

criterion_group! {
    name = benches;
    config = config();
    targets = append, replay
}

/// Reads criterion's mean estimate (ns per iteration) of one benchmark, if it ran.
fn mean_ns(group: &str, function: &str, threads: usize) -> Option<f64> {
    aether_testkit::bench::mean_ns(&[group, function, &threads.to_string()])
}

fn summary() {
    let mut rows = Vec::new();
    for (group, per) in [
        ("memory_append", APPEND_EVENTS as f64),
        ("memory_replay", REPLAY_EVENTS as f64),
    ] {
        for threads in [1usize, 2] {
            let (Some(a), Some(b)) = (
                mean_ns(group, "aether", threads),
                mean_ns(group, "baseline", threads),
            ) else {
                continue;
            };
            // Per-iteration time covers `threads` threads working at once.
            let ops = per * threads as f64;
            rows.push(format!(
                "{group:<14} {threads} thread(s): aether {:>8.1} ns/op ({:>6.2} M ops/s), baseline {:>8.1} ns/op ({:>6.2} M ops/s), ratio baseline/aether = {:.2}x",
                a / ops,
                ops / a * 1e3,
                b / ops,
                ops / b * 1e3,
                b / a
            ));
        }
    }
    for (group, per) in [
        ("memory_append", APPEND_EVENTS as f64),
        ("memory_replay", REPLAY_EVENTS as f64),
    ] {
        if let (Some(one), Some(two)) = (mean_ns(group, "aether", 1), mean_ns(group, "aether", 2)) {
            rows.push(format!(
                "{group:<14} aether scaling: 2 threads do {:.2}x the work of 1 thread per unit of time",
                (2.0 * per / two) / (per / one)
            ));
        }
    }
    if !rows.is_empty() {
        println!("\n== memory store vs Mutex<HashMap<String, Vec<Event>>> (same run) ==");
        if aether_testkit::bench::quick() {
            println!("(quick run: shorter measurements)");
        }
        for r in rows {
            println!("{r}");
        }
    }
}

/// Hands the rows of the table above to the benchmark report (estimates written since `since`).
fn record(since: SystemTime) {
    let est = |group: &str, function: &str, threads: usize| {
        aether_testkit::bench::estimate(&[group, function, &threads.to_string()], since)
    };
    for (group, per, what) in [
        ("memory_append", APPEND_EVENTS as f64, "append"),
        ("memory_replay", REPLAY_EVENTS as f64, "replay"),
    ] {
        for threads in [1usize, 2] {
            if let (Some(a), Some(b)) = (
                est(group, "aether", threads),
                est(group, "baseline", threads),
            ) {
                record_row(&ReportRow::criterion_rate(
                    format!("memory.{what}.{threads}"),
                    format!("memory store {what}, {threads} thread(s) on distinct actors"),
                    per * threads as f64,
                    "events",
                    a,
                    "Mutex<HashMap<String, Vec<Event>>>",
                    b,
                ));
            }
        }
        if let (Some(one), Some(two)) = (est(group, "aether", 1), est(group, "aether", 2)) {
            record_row(&scaling(what, per, one, two));
        }
    }
}

/// Aether on 2 threads against Aether on 1: the work done per unit of time.
fn scaling(what: &str, per: f64, one: Estimate, two: Estimate) -> ReportRow {
    let rate = |ns: f64, threads: f64| per * threads / ns * 1e9;
    ReportRow::new(
        format!("memory.{what}.scaling"),
        format!("memory store {what}: 2 threads over distinct actors against 1"),
        Better::Higher,
        Figure::new(rate(two.mean, 2.0), "events/s"),
        "Aether on 1 thread",
        Figure::new(rate(one.mean, 1.0), "events/s"),
    )
    .spread(Some(Spread {
        low: rate(two.high, 2.0) / rate(one.low, 1.0),
        high: rate(two.low, 2.0) / rate(one.high, 1.0),
        how: "from criterion's 95% intervals of both means".to_owned(),
    }))
}

fn main() {
    let started = SystemTime::now();
    benches();
    Criterion::default().configure_from_args().final_summary();
    if std::env::args().any(|a| a == "--bench") {
        summary();
        record(started);
    }
}
