//! The cluster's call paths against their baselines, in the same run (interleaved rounds):
//!
//! | path | baseline | target |
//! | --- | --- | --- |
//! | remote ask p50 / p99 (owner on another node, memory store shared by the nodes) | raw NATS request/reply of the same bytes, answered by a plain subscriber | <= 1.3x |
//! | remote ask on the JetStream store | the same raw request/reply | reported (the append dominates) |
//! | local ask through `ClusterActors` | `Runtime::ask` on a plain runtime | <= 1.1x |
//! | throughput, 3 nodes, 1,000 actors, asks from all nodes (JetStream) | one node alone | the scaling is reported |
//! | a node joins 3 nodes holding 10k active actors, under load | — | time until the map is stable; calls held, the longest wait |
//!
//! Run with `cargo xtask bench -p aether-cluster` (a filter argument such as `remote`, `local`,
//! `throughput` or `join` selects rows). Prints a table; no assertion on speed. With
//! `AETHER_BENCH_QUICK` (`cargo xtask bench --report --quick`) the sizes are a quarter; with
//! `AETHER_BENCH_ROWS` set the rows are also handed to the benchmark report.

#![allow(missing_docs)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // benchmark set-up

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod common;

use common::{Counter, config};

use aether_cluster::{ClusterActors, ClusterNode};
use aether_core::EventStore;
use aether_runtime::{Runtime, SnapshotPolicy};
use aether_store_jetstream::JetStreamEventStore;
use aether_store_memory::InMemoryEventStore;
use aether_testkit::bench::{Better, Figure, ReportRow, Spread, quick, record_row};
use aether_testkit::nats::NatsServer;
use futures::StreamExt;
use serde::Serialize;

/// Without `--bench` (as `cargo test --all-targets` runs it) the benchmark is a quick smoke run.
static QUICK: AtomicBool = AtomicBool::new(false);

/// `full` in a benchmark run, a quarter in a quick run (`AETHER_BENCH_QUICK`), a hundredth
/// (at least 10) in a smoke run.
fn n(full: usize) -> usize {
    if QUICK.load(Ordering::Relaxed) {
        (full / 100).max(10)
    } else if quick() {
        full / 4
    } else {
        full
    }
}

fn rounds() -> usize {
    if QUICK.load(Ordering::Relaxed) { 1 } else { 5 }
}

async fn node(
    server: &NatsServer,
    cluster: &str,
    id: &str,
    store: Arc<dyn EventStore>,
) -> (ClusterNode, ClusterActors<Counter>) {
    let client = server.connect().await.unwrap();
    let runtime = Runtime::<Counter>::builder(store)
        .snapshot_policy(SnapshotPolicy::off())
        .build();
    let node = ClusterNode::new(client, config(cluster, id)).unwrap();
    let actors = node.register(runtime).unwrap();
    node.start().await.unwrap();
    (node, actors)
}

/// Waits until every node has the same map over `n` nodes and serves all of its shards.
async fn settle(nodes: &[&ClusterNode], n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let epochs: Vec<_> = nodes
            .iter()
            .map(|x| x.manager().shard_map().map(|m| m.epoch()))
            .collect();
        let ok = epochs.windows(2).all(|w| w[0] == w[1])
            && nodes.iter().all(|x| {
                x.manager()
                    .shard_map()
                    .is_some_and(|m| m.counts().len() == n)
                    && x.shards_in_use() == x.manager().shards_owned().len()
            });
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "no stable map over {n} nodes");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

struct Lat {
    p50: Duration,
    p99: Duration,
}

fn lat(mut samples: Vec<Duration>) -> Lat {
    samples.sort_unstable();
    let at = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    Lat {
        p50: at(0.5),
        p99: at(0.99),
    }
}

/// An actor id whose shard `actors` routes to node `owner`.
fn actor_on(actors: &ClusterActors<Counter>, owner: &str) -> String {
    (0..)
        .map(|i| format!("bench-{i}"))
        .find(|id| actors.node_for(id).as_deref() == Some(owner))
        .unwrap()
}

/// `Vec<u8>` as MessagePack bin (what `bytes::Bytes` does in the library).
fn as_bin<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(v)
}

#[derive(Serialize)]
struct RawCall<'a> {
    #[serde(rename = "type")]
    t: &'a str,
    actor: &'a str,
    id: &'a str,
    epoch: u64,
    #[serde(serialize_with = "as_bin")]
    cmd: Vec<u8>,
}

/// One raw checked append per call, as a hand-written owner would do it: a JetStream publish
/// expecting the subject's last sequence, with the contract's headers, awaiting the ack.
struct RawAppend {
    js: async_nats::jetstream::Context,
    body: bytes::Bytes,
    last: u64,
    version: u64,
}

impl RawAppend {
    async fn new(client: &async_nats::Client) -> Self {
        let js = async_nats::jetstream::new(client.clone());
        js.create_stream(async_nats::jetstream::stream::Config {
            name: format!("BENCH_RAW_{}", uuid::Uuid::new_v4().simple()),
            subjects: vec!["bench.rawappend".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        let event = aether_core::Event::new("bench-raw", "Added", 1, &1u64).unwrap();
        let body = bytes::Bytes::from(aether_core::wire::encode_event(&event).unwrap());
        Self {
            js,
            body,
            last: 0,
            version: 0,
        }
    }

    async fn append(&mut self) {
        self.version += 1;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Aether-Version", self.version.to_string().as_str());
        headers.insert("Aether-Event-Type", "Added");
        let message = async_nats::jetstream::message::PublishMessage::build()
            .payload(self.body.clone())
            .headers(headers)
            .expected_last_subject_sequence(self.last);
        let ack = self
            .js
            .send_publish("bench.rawappend", message)
            .await
            .unwrap()
            .await
            .unwrap();
        self.last = ack.sequence;
    }
}

/// Remote ask latency vs raw request/reply of the same bytes (a call and an answer of the
/// sizes Aether sends), rounds interleaved; `id` names the report row.
async fn remote(server: &NatsServer, store: Arc<dyn EventStore>, label: &str, id: &str) {
    let cluster = format!("bench{}", uuid::Uuid::new_v4().simple());
    let (a, a_actors) = node(server, &cluster, "a", store.clone()).await;
    let (b, _b_actors) = node(server, &cluster, "b", store).await;
    settle(&[&a, &b], 2).await;
    let target = actor_on(&a_actors, "b");
    a_actors.ask(&target, 1).await.unwrap(); // activate

    let call = rmp_serde::to_vec_named(&RawCall {
        t: "counter",
        actor: &target,
        id: "3f1c2a4e-5b6d-4c7e-8f90-a1b2c3d4e5f6-1a2b",
        epoch: 3,
        cmd: rmp_serde::to_vec_named(&1u64).unwrap(),
    })
    .unwrap();
    let answer = bytes::Bytes::from(vec![0u8; 40]);
    let responder = server.connect().await.unwrap();
    // With the JetStream store, the baseline's responder also does what the owner must: one
    // checked append (expected last subject sequence, the contract's headers, an event of the
    // size Aether stores), awaiting its ack before answering.
    let raw_append = if id.ends_with("jetstream") {
        Some(RawAppend::new(&responder).await)
    } else {
        None
    };
    let baseline = if raw_append.is_some() {
        "raw NATS request/reply plus one raw checked append"
    } else {
        "raw NATS request/reply, same bytes"
    };
    let mut sub = responder.subscribe("bench.raw").await.unwrap();
    let replier = responder.clone();
    let echo = tokio::spawn(async move {
        let mut raw_append = raw_append;
        while let Some(m) = sub.next().await {
            if let Some(append) = raw_append.as_mut() {
                append.append().await;
            }
            if let Some(r) = m.reply {
                replier.publish(r, answer.clone()).await.unwrap();
            }
        }
    });
    let requester = server.connect().await.unwrap();
    let call = bytes::Bytes::from(call);
    let (mut raw, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..rounds() {
        for _ in 0..n(2_000) {
            let t = Instant::now();
            requester.request("bench.raw", call.clone()).await.unwrap();
            raw.push(t.elapsed());
        }
        for _ in 0..n(2_000) {
            let t = Instant::now();
            a_actors.ask(&target, 1).await.unwrap();
            ours.push(t.elapsed());
        }
    }
    echo.abort();
    // Per round: the ratio of the medians.
    let per_round: Vec<f64> = ours
        .chunks(n(2_000))
        .zip(raw.chunks(n(2_000)))
        .map(|(o, r)| lat(o.to_vec()).p50.as_secs_f64() / lat(r.to_vec()).p50.as_secs_f64())
        .collect();
    let (raw, ours) = (lat(raw), lat(ours));
    let us = |d: Duration| Figure::new(d.as_secs_f64() * 1e6, "us");
    let row = ReportRow::new(
        id,
        format!("remote ask p50 (owner on another node), {label}"),
        Better::Lower,
        us(ours.p50),
        baseline,
        us(raw.p50),
    )
    .spread(Spread::of_rounds(&per_round));
    record_row(&row);
    println!(
        "| remote ask, {label} | p50 {:.1?} / p99 {:.1?} | {baseline}: p50 {:.1?} / p99 {:.1?} | {:.2}x / {:.2}x |",
        ours.p50,
        ours.p99,
        raw.p50,
        raw.p99,
        ours.p50.as_secs_f64() / raw.p50.as_secs_f64(),
        ours.p99.as_secs_f64() / raw.p99.as_secs_f64()
    );
    a.leave().await.unwrap();
    b.leave().await.unwrap();
}

/// Local ask through the cluster vs the plain runtime, rounds interleaved.
async fn local(server: &NatsServer) {
    let cluster = format!("bench{}", uuid::Uuid::new_v4().simple());
    let store: Arc<dyn EventStore> = Arc::new(InMemoryEventStore::new());
    let (a, actors) = node(server, &cluster, "a", store).await;
    settle(&[&a], 1).await;
    let plain = Runtime::<Counter>::builder(Arc::new(InMemoryEventStore::new()))
        .snapshot_policy(SnapshotPolicy::off())
        .build();
    actors.ask("local-1", 1).await.unwrap();
    plain.ask("local-1", 1).await.unwrap();
    // Per-round ratios, their median reported (the machine's noise moves both sides alike).
    // The callers run in a task, as an application's would (not on the thread that blocks on
    // the runtime).
    let (base, ours, ratios, once) = tokio::spawn(async move {
        let (mut base, mut ours, mut ratios, mut once) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds() * 2 {
            let t = Instant::now();
            for _ in 0..n(20_000) {
                plain.ask("local-1", 1).await.unwrap();
            }
            let b = t.elapsed().as_secs_f64();
            let t = Instant::now();
            for _ in 0..n(20_000) {
                actors.ask("local-1", 1).await.unwrap();
            }
            let o = t.elapsed().as_secs_f64();
            let t = Instant::now();
            for i in 0..n(20_000) {
                plain
                    .ask_once("local-2", 1, format!("{i:x}"))
                    .await
                    .unwrap();
            }
            once.push(t.elapsed().as_secs_f64() * 1e6 / n(20_000) as f64);
            base.push(b * 1e6 / n(20_000) as f64);
            ours.push(o * 1e6 / n(20_000) as f64);
            ratios.push(o / b);
        }
        (base, ours, ratios, once)
    })
    .await
    .unwrap();
    let (mut base, mut ours, mut ratios, mut once) = (base, ours, ratios, once);
    record_row(
        &ReportRow::new(
            "cluster.local",
            "local ask through ClusterActors (memory store)",
            Better::Lower,
            Figure::new(median(&mut ours.clone()), "us"),
            "Runtime::ask on a plain runtime",
            Figure::new(median(&mut base.clone()), "us"),
        )
        .ratio(median(&mut ratios.clone()))
        .spread(Spread::of_rounds(&ratios))
        .note("the ratio is the median of per-round ratios"),
    );
    println!(
        "| local ask through ClusterActors (memory store) | {:.2} us | Runtime::ask {:.2} us (Runtime::ask_once with an id: {:.2} us) | {:.2}x (median of {} rounds; min {:.2}x) |",
        median(&mut ours),
        median(&mut base),
        median(&mut once),
        median(&mut ratios),
        ratios.len(),
        ratios.iter().copied().fold(f64::INFINITY, f64::min)
    );
    a.leave().await.unwrap();
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Asks per second from `callers` (64 concurrent each) over `actors` ids, `total` in all.
async fn drive(callers: &[ClusterActors<Counter>], actors: usize, total: usize) -> f64 {
    let per = total / callers.len();
    let t = Instant::now();
    let tasks: Vec<_> = callers
        .iter()
        .enumerate()
        .map(|(c, a)| {
            let a = a.clone();
            tokio::spawn(async move {
                futures::stream::iter(0..per)
                    .map(|i| {
                        let a = a.clone();
                        async move {
                            let id = format!("tp-{}", (i * 31 + c * 7) % actors);
                            a.ask(&id, 1).await.unwrap();
                        }
                    })
                    .buffer_unordered(64)
                    .collect::<Vec<()>>()
                    .await;
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    (per * callers.len()) as f64 / t.elapsed().as_secs_f64()
}

async fn jetstream(server: &NatsServer, name: &str) -> Arc<dyn EventStore> {
    Arc::new(
        JetStreamEventStore::new(server.connect().await.unwrap(), name)
            .await
            .unwrap(),
    )
}

async fn throughput(server: &NatsServer) {
    let actors = n(1_000);
    let total = n(30_000);
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..10];
    let (solo, solo_actors) = node(
        server,
        &format!("bench1{tag}"),
        "solo",
        jetstream(server, &format!("tp1{tag}")).await,
    )
    .await;
    settle(&[&solo], 1).await;
    let cluster = format!("bench3{tag}");
    let mut nodes = Vec::new();
    for id in ["a", "b", "c"] {
        let store = jetstream(server, &format!("tp3{tag}")).await;
        nodes.push(node(server, &cluster, id, store).await);
    }
    settle(&nodes.iter().map(|n| &n.0).collect::<Vec<_>>(), 3).await;
    let callers: Vec<_> = nodes.iter().map(|n| n.1.clone()).collect();
    let (mut one, mut three) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        one.push(drive(std::slice::from_ref(&solo_actors), actors, total).await);
        three.push(drive(&callers, actors, total).await);
    }
    let per_round: Vec<f64> = three.iter().zip(&one).map(|(t, o)| t / o).collect();
    let (one, three) = (median(&mut one), median(&mut three));
    record_row(
        &ReportRow::new(
            "cluster.throughput",
            format!("asks per second, 3 nodes over {actors} actors, JetStream, 64 in flight per calling node"),
            Better::Higher,
            Figure::new(three, "asks/s"),
            "one node alone",
            Figure::new(one, "asks/s"),
        )
        .spread(Spread::of_rounds(&per_round)),
    );
    println!(
        "| throughput, 1,000 actors, JetStream, 64 asks in flight per calling node | 3 nodes {three:.0}/s | 1 node {one:.0}/s | {:.2}x |",
        three / one
    );
    solo.leave().await.unwrap();
    for (n, _) in &nodes {
        n.leave().await.unwrap();
    }
}

async fn join_with_active_actors(server: &NatsServer) {
    let active_actors = n(10_000);
    const LANES: usize = 16;
    let cluster = format!("bench{}", uuid::Uuid::new_v4().simple());
    let store: Arc<dyn EventStore> = Arc::new(InMemoryEventStore::new());
    let mut nodes = Vec::new();
    for id in ["a", "b", "c"] {
        nodes.push(node(server, &cluster, id, store.clone()).await);
    }
    settle(&nodes.iter().map(|n| &n.0).collect::<Vec<_>>(), 3).await;
    drive(&[nodes[0].1.clone()], active_actors, active_actors * 2).await;
    let active: usize = nodes.iter().map(|n| n.1.runtime().active_count()).sum();
    // Load during the join: every call timed; the longest is the longest a call was held.
    let stop = Arc::new(AtomicBool::new(false));
    let slowest = Arc::new(AtomicU64::new(0));
    let slow_calls = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for (_, actors) in &nodes {
        for lane in 0..LANES {
            let actors = actors.clone();
            let (stop, slowest, slow_calls, done) = (
                stop.clone(),
                slowest.clone(),
                slow_calls.clone(),
                done.clone(),
            );
            load.push(tokio::spawn(async move {
                let mut i = lane;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    actors
                        .ask(&format!("tp-{}", i % active_actors), 1)
                        .await
                        .unwrap();
                    let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
                    slowest.fetch_max(us, Ordering::Relaxed);
                    if us > 10_000 {
                        slow_calls.fetch_add(1, Ordering::Relaxed);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                    i += LANES;
                }
            }));
        }
    }
    // A moment of steady load before the join (not a synchronisation: the join is measured).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    nodes.push(node(server, &cluster, "d", store.clone()).await);
    settle(&nodes.iter().map(|n| &n.0).collect::<Vec<_>>(), 4).await;
    let stable = t.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let moved = nodes[3]
        .0
        .migrations()
        .iter()
        .filter(|m| m.to.as_deref() == Some("d"))
        .count();
    println!(
        "| a node joins 3 nodes holding {active} active actors, under load | map stable and served {stable:.1?} after start ({moved} of 256 shards moved) | {} calls, {} over 10 ms, longest {:.1?} | — |",
        done.load(Ordering::Relaxed),
        slow_calls.load(Ordering::Relaxed),
        Duration::from_micros(slowest.load(Ordering::Relaxed))
    );
    for (n, _) in &nodes {
        n.leave().await.unwrap();
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument selects rows by name.
    QUICK.store(!std::env::args().any(|a| a == "--bench"), Ordering::Relaxed);
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let want = |row: &str| filter.as_deref().is_none_or(|f| row.contains(f));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = NatsServer::start().await.unwrap();
        if QUICK.load(Ordering::Relaxed) {
            println!("smoke run (no --bench): sizes / 100, debug build; not a measurement");
        } else if quick() {
            println!("quick run: sizes / 4");
        }
        println!("| path | Aether | baseline (same run) | ratio |");
        println!("| --- | --- | --- | --- |");
        if want("remote") {
            remote(
                &server,
                Arc::new(InMemoryEventStore::new()),
                "memory store",
                "cluster.remote.memory",
            )
            .await;
            remote(
                &server,
                jetstream(&server, "remote").await,
                "JetStream store",
                "cluster.remote.jetstream",
            )
            .await;
        }
        if want("local") {
            local(&server).await;
        }
        if want("throughput") {
            throughput(&server).await;
        }
        if want("join") {
            join_with_active_actors(&server).await;
        }
    });
}
