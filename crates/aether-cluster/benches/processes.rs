//! Scaling across processes: the cluster's throughput with each node in its own OS process, for
//! 1, 2 and 3 nodes, against one node alone, in the same run (interleaved rounds).
//!
//! | row | Aether | baseline |
//! | --- | --- | --- |
//! | `cluster.processes.2`, `cluster.processes.3` | asks/s of 2 / 3 node processes together, each asking over all actors (JetStream store) | one node process alone |
//!
//! Each node is this benchmark's own binary run again as a child (`AETHER_BENCH_NODE` set):
//! a `ClusterNode` with the JetStream store that joins, settles, drives its share of the asks
//! (64 in flight) when told, and reports its asks, time and CPU. When the machine has a core for
//! every node and one for the server, each node is pinned to its own core (`taskset`) and the
//! server to the rest; otherwise nothing is pinned and the row says so.
//!
//! Beside each measurement it prints what bounds it: the nodes' and the server's CPU per ask
//! (x, y, from /proc) cap k processes sharing C cores at `C / (x + y)`; with a core per node and
//! one for the server, at `min(k / x, 1 / y)` (the prediction for a machine that has them). CPU
//! per ask grows with k: (k - 1) / k of the asks cross to another node. On this repository's
//! 2-core machine the shared cores are the bound: more processes cannot add throughput there.
//!
//! Run with `cargo xtask bench -p aether-cluster --bench processes`. Without `--bench` (as
//! `cargo test --all-targets` runs it) it is a smoke run: tiny sizes, one round.

#![allow(missing_docs)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // benchmark set-up

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{Counter, config};

use aether_cluster::{ClusterActors, ClusterNode};
use aether_runtime::{Runtime, SnapshotPolicy};
use aether_store_jetstream::JetStreamEventStore;
use aether_testkit::bench::{
    Better, Figure, ReportRow, Spread, cpu_seconds_of, quick, record_row, two_workers,
};
use aether_testkit::nats::NatsServer;
use futures::StreamExt;
use tokio::io::AsyncBufReadExt;

/// Set in a child: `<nats url> <cluster> <node id> <stream>`.
const NODE_ENV: &str = "AETHER_BENCH_NODE";

// ---- the child: one node --------------------------------------------------------------------

/// Runs one node: joins, then follows the parent's lines on stdin:
/// `settle <nodes>` (answers `settled` once its map spans that many nodes and it serves its
/// shards), `run <actors> <asks>` (answers `done <asks> <seconds> <cpu seconds>`), `leave`.
fn child(spec: &str) {
    let parts: Vec<&str> = spec.split(' ').collect();
    let [url, cluster, id, stream] = parts[..] else {
        panic!("{NODE_ENV} must be `<url> <cluster> <id> <stream>`, not {spec:?}");
    };
    let rt = two_workers().unwrap();
    rt.block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let store = Arc::new(
            JetStreamEventStore::new(client.clone(), stream)
                .await
                .unwrap(),
        );
        let runtime = Runtime::<Counter>::builder(store)
            .snapshot_policy(SnapshotPolicy::off())
            .build();
        let node = ClusterNode::new(client, config(cluster, id)).unwrap();
        let actors = node.register(runtime).unwrap();
        node.start().await.unwrap();
        say("ready");
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin());
        loop {
            let mut line = String::new();
            if lines.read_line(&mut line).await.unwrap() == 0 {
                break; // the parent went away
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["settle", nodes] => {
                    settle(&node, nodes.parse().unwrap()).await;
                    say("settled");
                }
                ["run", count, asks] => {
                    let cpu = cpu_seconds_of("/proc/self/stat").unwrap_or(0.0);
                    let started = Instant::now();
                    drive(&actors, count.parse().unwrap(), asks.parse().unwrap(), id).await;
                    let secs = started.elapsed().as_secs_f64();
                    say(&format!(
                        "done {asks} {secs} {}",
                        cpu_seconds_of("/proc/self/stat").unwrap_or(0.0) - cpu
                    ));
                }
                ["leave"] => break,
                other => panic!("unknown command {other:?}"),
            }
        }
        node.leave().await.unwrap();
    });
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

/// Waits until this node's map spans `nodes` nodes and it serves every shard it owns.
async fn settle(node: &ClusterNode, nodes: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let spans = node
            .manager()
            .shard_map()
            .is_some_and(|m| m.counts().len() == nodes);
        if spans && node.shards_in_use() == node.manager().shards_owned().len() {
            return;
        }
        assert!(Instant::now() < deadline, "no map over {nodes} nodes");
        // Set-up polling; no event says "serving every owned shard".
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `asks` asks over `count` actor ids, 64 in flight.
async fn drive(actors: &ClusterActors<Counter>, count: usize, asks: usize, salt: &str) {
    let salt = salt.bytes().map(usize::from).sum::<usize>();
    futures::stream::iter(0..asks)
        .map(|i| {
            let actors = actors.clone();
            async move {
                let id = format!("tp-{}", (i * 31 + salt * 7) % count);
                actors.ask(&id, 1).await.unwrap();
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
}

// ---- the parent -----------------------------------------------------------------------------

struct NodeProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl NodeProcess {
    fn spawn(spec: &str, core: Option<usize>) -> Self {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = match core {
            Some(core) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(core.to_string()).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        let mut child = cmd
            .env(NODE_ENV, spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut node = Self {
            child,
            stdin,
            stdout,
        };
        node.expect("ready");
        node
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn expect(&mut self, word: &str) -> Vec<String> {
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                self.stdout.read_line(&mut line).unwrap() > 0,
                "a node process ended before saying {word}"
            );
            let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
            if words.first().is_some_and(|w| w == word) {
                return words;
            }
        }
    }
}

/// One run of `k` node processes: asks per second together, and CPU seconds of the nodes and of
/// the server per ask.
struct Run {
    rate: f64,
    node_cpu: f64,
    server_cpu: f64,
}

fn run(server: &NatsServer, k: usize, actors: usize, total: usize, cores: &Cores) -> Run {
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..10];
    let (cluster, stream) = (format!("procs{k}{tag}"), format!("procs{k}{tag}"));
    let mut nodes: Vec<NodeProcess> = (0..k)
        .map(|i| {
            let spec = format!("{} {cluster} n{i} {stream}", server.url());
            NodeProcess::spawn(&spec, cores.node(i))
        })
        .collect();
    for node in &mut nodes {
        node.send(&format!("settle {k}"));
    }
    for node in &mut nodes {
        node.expect("settled");
    }
    let server_cpu = server.cpu_seconds().unwrap_or(0.0);
    let started = Instant::now();
    let per = total / k;
    for node in &mut nodes {
        node.send(&format!("run {actors} {per}"));
    }
    let mut node_cpu = 0.0;
    for node in &mut nodes {
        let done = node.expect("done");
        node_cpu += done[3].parse::<f64>().unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let server_cpu = server.cpu_seconds().unwrap_or(0.0) - server_cpu;
    for node in &mut nodes {
        node.send("leave");
    }
    for node in &mut nodes {
        assert!(
            node.child.wait().unwrap().success(),
            "a node process failed"
        );
    }
    let asks = (per * k) as f64;
    Run {
        rate: asks / secs,
        node_cpu: node_cpu / asks,
        server_cpu: server_cpu / asks,
    }
}

/// Which cores the nodes and the server get: pinned when there is one per node and at least
/// one left for the server.
struct Cores {
    available: usize,
    pinned: bool,
}

impl Cores {
    fn node(&self, i: usize) -> Option<usize> {
        // Nodes on the last cores, the server on the first ones.
        self.pinned.then(|| self.available - 1 - i)
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if let Ok(spec) = std::env::var(NODE_ENV) {
        child(&spec);
        return;
    }
    let smoke = !std::env::args().any(|a| a == "--bench");
    let (actors, total, rounds) = if smoke {
        (10, 200, 1)
    } else if quick() {
        (1_000, 7_500, 3)
    } else {
        (1_000, 30_000, 3)
    };
    let available = std::thread::available_parallelism().map_or(1, usize::from);
    let most = 3;
    let rt = two_workers().unwrap();
    let server = rt.block_on(NatsServer::start()).unwrap();
    let cores = Cores {
        available,
        pinned: available > most,
    };
    if cores.pinned {
        // The server on the cores the nodes do not take.
        let pid = server.process_id().unwrap().to_string();
        let list = format!("0-{}", available - most - 1);
        let status = Command::new("taskset")
            .args(["-a", "-p", "-c", &list, &pid])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "pinning the server failed");
    }
    if smoke {
        println!("smoke run (no --bench): tiny sizes, one round; not a measurement");
    }
    println!(
        "{available} cores; {}",
        if cores.pinned {
            "each node pinned to its own core, the server to the rest"
        } else {
            "too few to pin a core to each node and one to the server: nothing pinned, all share"
        }
    );
    println!(
        "| node processes | asks/s | vs 1 | node CPU per ask | server CPU per ask | bound here: cores / CPU per ask | predicted with a core per node and one for the server |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); most];
    let mut node_cpu: Vec<Vec<f64>> = vec![Vec::new(); most];
    let mut server_cpu: Vec<Vec<f64>> = vec![Vec::new(); most];
    for _ in 0..rounds {
        for k in 1..=most {
            let run = run(&server, k, actors, total, &cores);
            rates[k - 1].push(run.rate);
            node_cpu[k - 1].push(run.node_cpu);
            server_cpu[k - 1].push(run.server_cpu);
        }
    }
    let one = median(&mut rates[0].clone());
    for k in 1..=most {
        let rate = median(&mut rates[k - 1].clone());
        let (x, y) = (
            median(&mut node_cpu[k - 1].clone()),
            median(&mut server_cpu[k - 1].clone()),
        );
        // Everything shares the cores here; with a core per node and one for the server, the
        // nodes bound it at k / x and the server at 1 / y.
        let here = available as f64 / (x + y);
        let pinned = (k as f64 / x).min(1.0 / y);
        let limit = if k as f64 / x <= 1.0 / y {
            "the nodes"
        } else {
            "the server"
        };
        println!(
            "| {k} | {rate:.0} | {:.2}x | {:.1} µs | {:.1} µs | {here:.0}/s | {pinned:.0}/s ({limit}) |",
            rate / one,
            x * 1e6,
            y * 1e6
        );
        if k == 1 {
            continue;
        }
        let per_round: Vec<f64> = rates[k - 1]
            .iter()
            .zip(&rates[0])
            .map(|(r, o)| r / o)
            .collect();
        record_row(
            &ReportRow::new(
                format!("cluster.processes.{k}"),
                format!(
                    "asks per second, {k} node processes over {actors} actors, JetStream, 64 in flight each"
                ),
                Better::Higher,
                Figure::new(rate, "asks/s"),
                "one node process",
                Figure::new(one, "asks/s"),
            )
            .spread(Spread::of_rounds(&per_round))
            .note(format!(
                "{available} cores, {}; CPU per ask: node {:.1} µs, server {:.1} µs; bound here \
                 {here:.0}/s; predicted with a core per node and one for the server: {pinned:.0}/s \
                 (bound by {limit})",
                if cores.pinned { "pinned" } else { "not pinned" },
                x * 1e6,
                y * 1e6
            )),
        );
    }
}
