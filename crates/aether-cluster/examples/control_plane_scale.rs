//! The control plane at scale, measured: many `ClusterManager`s in this process (1,000 by
//! default, sharing a few NATS connections) on a real nats-server (one, or a 3-server cluster with
//! an R3 bucket), default settings but capacity placement (so that every member holds a shard, up
//! to 1,024 members, and a converged map names every member). It reports the time for all to join and for every member to
//! hold one map naming all of them; the map's convergence after a join, a leave and a kill; the
//! bucket's writes and the server's deliveries per second in steady state against the capacity
//! model's prediction; the server's CPU and memory; and every `MemberFailed` or `MemberLeft`
//! naming a member that was alive (false failures, which must be 0).
//!
//! ```text
//! cargo run --release -p aether-cluster --example control_plane_scale -- \
//!     [--members 1000] [--servers 1|3] [--per-connection 25] [--steady-secs 20]
//! ```
//!
//! It needs a nats-server as the tests do (`cargo xtask nats` provisions one; `NATS_SERVER_BIN`
//! points at it). docs/cluster.md's capacity model quotes its figures.

// A measurement tool, not library code: a failed step ends the run with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::HashSet;
use std::error::Error;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aether_cluster::{CapacityPlacement, ClusterConfig, ClusterEvent, ClusterManager, bucket_name};
use aether_testkit::nats::{NatsCluster, NatsServer};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

type Result<T = (), E = Box<dyn Error + Send + Sync>> = std::result::Result<T, E>;

/// How long a convergence may take before the run fails.
const PATIENCE: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy)]
struct Args {
    members: usize,
    servers: usize,
    per_connection: usize,
    steady: Duration,
}

fn args() -> Result<Args> {
    let mut parsed = Args {
        members: 1000,
        servers: 1,
        per_connection: 25,
        steady: Duration::from_secs(20),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--members" => parsed.members = value.parse()?,
            "--servers" => parsed.servers = value.parse()?,
            "--per-connection" => parsed.per_connection = value.parse::<usize>()?.max(1),
            "--steady-secs" => parsed.steady = Duration::from_secs(value.parse()?),
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    if parsed.servers != 1 && parsed.servers != 3 {
        return Err("--servers is 1 or 3".into());
    }
    Ok(parsed)
}

/// The servers, kept alive for the run, with what is measured of them.
enum Servers {
    One {
        server: Box<NatsServer>,
        monitor: u16,
    },
    Three(NatsCluster),
}

impl Servers {
    async fn start(count: usize) -> Result<Self> {
        if count == 1 {
            let monitor = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let server =
                NatsServer::start_with("scale", vec!["-m".into(), monitor.to_string()]).await?;
            Ok(Self::One {
                server: Box::new(server),
                monitor,
            })
        } else {
            Ok(Self::Three(NatsCluster::start(3).await?))
        }
    }

    fn all(&self) -> Vec<&NatsServer> {
        match self {
            Self::One { server, .. } => vec![&**server],
            Self::Three(cluster) => cluster.nodes().iter().collect(),
        }
    }

    /// CPU seconds used by the servers so far (user + system, from /proc).
    fn cpu_seconds(&self) -> f64 {
        self.all().iter().filter_map(|s| s.cpu_seconds()).sum()
    }

    fn resident_bytes(&self) -> u64 {
        self.all().iter().filter_map(|s| s.resident_bytes()).sum()
    }

    /// Messages the server sent to clients so far (one server's `/varz`; `None` for a cluster,
    /// whose route traffic would be mixed in).
    async fn out_msgs(&self) -> Option<u64> {
        let Self::One { monitor, .. } = self else {
            return None;
        };
        let varz = http_get_json(*monitor, "/varz").await.ok()?;
        varz["out_msgs"].as_u64()
    }
}

async fn http_get_json(port: u16, path: &str) -> Result<serde_json::Value> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let body = text.split_once("\r\n\r\n").ok_or("no HTTP body")?.1;
    Ok(serde_json::from_str(body)?)
}

/// What every member's event stream saw of members that were alive.
#[derive(Debug, Default)]
struct Wrong {
    failed: AtomicU64,
    left: AtomicU64,
    lagged: AtomicU64,
}

struct Member {
    id: String,
    manager: Arc<ClusterManager>,
}

#[tokio::main]
async fn main() -> Result {
    let args = args()?;
    println!("{args:?}");
    let servers = Servers::start(args.servers).await?;
    let outcome = run(args, &servers).await;
    if outcome.is_err() {
        // What the servers said about it.
        for server in servers.all() {
            let log = server.log();
            let notable: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("[ERR]") || l.contains("[WRN]") || l.contains("Slow"))
                .collect();
            for line in &notable[notable.len().saturating_sub(20)..] {
                eprintln!("{}: {line}", server.name());
            }
        }
    }
    outcome
}

async fn run(args: Args, servers: &Servers) -> Result {
    let urls: Vec<String> = servers.all().iter().map(|s| s.url()).collect();
    let connections = args.members.div_ceil(args.per_connection) + 1;
    let mut clients = Vec::with_capacity(connections);
    // What the connections went through: a slow consumer or a reconnect loses deliveries.
    let incidents = Arc::new(AtomicU64::new(0));
    for i in 0..connections {
        let url = &urls[i % urls.len()];
        let incidents = Arc::clone(&incidents);
        let client = async_nats::ConnectOptions::new()
            .event_callback(move |event| {
                let incidents = Arc::clone(&incidents);
                async move {
                    incidents.fetch_add(1, Ordering::Relaxed);
                    eprintln!("connection event: {event}");
                }
            })
            .connect(url.as_str())
            .await?;
        clients.push(client);
    }
    let cluster = format!("scale-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let replicas = if args.servers == 3 { 3 } else { 1 };
    // Default settings, but capacity placement: every member holds a shard while there are at
    // least as many shards as members, so "a map naming every member" is what convergence is.
    let config = |id: &str| {
        ClusterConfig::new(cluster.as_str())
            .node_id(id)
            .replicas(replicas)
            .placement(CapacityPlacement)
    };
    let live: Arc<RwLock<HashSet<String>>> = Arc::default();
    let wrong = Arc::new(Wrong::default());
    let make = |i: usize, id: String| -> Result<Member> {
        let client = clients[i % clients.len()].clone();
        let manager = Arc::new(ClusterManager::new(client, config(&id))?);
        let mut events = manager.watch();
        let (live, wrong) = (Arc::clone(&live), Arc::clone(&wrong));
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                let (counter, node_id) = match &event {
                    ClusterEvent::MemberFailed { node_id } => (&wrong.failed, node_id),
                    ClusterEvent::MemberLeft { node_id } => (&wrong.left, node_id),
                    ClusterEvent::Lagged { .. } => {
                        wrong.lagged.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    _ => continue,
                };
                if live.read().unwrap().contains(node_id) {
                    counter.fetch_add(1, Ordering::Relaxed);
                    eprintln!("wrong: {event:?}");
                }
            }
        });
        Ok(Member { id, manager })
    };

    // Join: every member, 32 starts at a time.
    let cpu0 = servers.cpu_seconds();
    let started = Instant::now();
    let mut members = Vec::with_capacity(args.members);
    for i in 0..args.members {
        let id = format!("m{i:05}");
        live.write().unwrap().insert(id.clone());
        members.push(make(i, id)?);
    }
    let joins = futures::stream::iter(members.iter().map(|m| m.manager.start()))
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    for joined in joins {
        joined?;
    }
    let all_joined = started.elapsed();
    let ids: Vec<String> = members.iter().map(|m| m.id.clone()).collect();
    converge(&members, &ids, &[]).await?;
    let converged = started.elapsed();
    let join_cpu = servers.cpu_seconds() - cpu0;
    println!(
        "{} members joined in {all_joined:.2?}; one map naming all of them everywhere after {converged:.2?} (server CPU {join_cpu:.1} s)",
        args.members
    );

    // Steady state.
    let js = async_nats::jetstream::new(clients[0].clone());
    let mut stream = js
        .get_stream(format!("KV_{}", bucket_name(&cluster)))
        .await?;
    let seq0 = stream.info().await?.state.last_sequence;
    let out0 = servers.out_msgs().await;
    let cpu0 = servers.cpu_seconds();
    let t0 = Instant::now();
    tokio::time::sleep(args.steady).await;
    let secs = t0.elapsed().as_secs_f64();
    let writes = (stream.info().await?.state.last_sequence - seq0) as f64 / secs;
    let deliveries = match (out0, servers.out_msgs().await) {
        (Some(a), Some(b)) => Some((b - a) as f64 / secs),
        _ => None,
    };
    let cpu = (servers.cpu_seconds() - cpu0) / secs * 100.0;
    let rss = servers.resident_bytes();
    let n = args.members as f64;
    // One write per member per heartbeat (1 s), one lease renewal per TTL / 5 (2 s).
    let predicted_writes = n + 0.5;
    // At most: each write acked; the leader alone reads the liveness keys; every member reads
    // the lease renewals, and its idle watch gets an idle heartbeat a second.
    let predicted_deliveries = n + n + 0.5 * n + n;
    println!(
        "steady {secs:.0} s: {writes:.0} KV writes/s (model {predicted_writes:.0}); deliveries {} msgs/s (model at most {predicted_deliveries:.0}: acks, the leader's liveness watch, lease renewals and idle heartbeats to every member; the heartbeat-per-record design: {:.0}); server CPU {cpu:.0} % of one core; server memory {:.0} MiB",
        deliveries.map_or("n/a (3 servers)".to_owned(), |d| format!("{d:.0}")),
        n + n * n + 0.5 * n + n,
        rss as f64 / (1024.0 * 1024.0),
    );

    // A join.
    let newcomer_id = "m-new".to_owned();
    live.write().unwrap().insert(newcomer_id.clone());
    let newcomer = make(members.len(), newcomer_id.clone())?;
    let t = Instant::now();
    newcomer.manager.start().await?;
    members.push(newcomer);
    let mut ids: Vec<String> = members.iter().map(|m| m.id.clone()).collect();
    converge(&members, &ids, &[]).await?;
    let after_join = t.elapsed();

    // A leave.
    let leaver = members.remove(1);
    live.write().unwrap().remove(&leaver.id);
    let t = Instant::now();
    leaver.manager.leave().await?;
    ids.retain(|id| *id != leaver.id);
    converge(&members, &ids, &[leaver.id.as_str()]).await?;
    let after_leave = t.elapsed();

    // A kill: the member stops without leaving; its liveness key expires (failure timeout).
    let victim = members.remove(2);
    live.write().unwrap().remove(&victim.id);
    let t = Instant::now();
    drop(victim.manager);
    ids.retain(|id| *id != victim.id);
    converge(&members, &ids, &[victim.id.as_str()]).await?;
    let after_kill = t.elapsed();
    println!(
        "map everywhere after a join {after_join:.2?}, a leave {after_leave:.2?}, a kill {after_kill:.2?} (failure timeout 10 s)"
    );

    let failed = wrong.failed.load(Ordering::Relaxed);
    let left = wrong.left.load(Ordering::Relaxed);
    let lagged = wrong.lagged.load(Ordering::Relaxed);
    let incidents = incidents.load(Ordering::Relaxed);
    println!(
        "false failures: {failed} MemberFailed and {left} MemberLeft naming live members ({lagged} lagged event streams; {incidents} connection events)"
    );
    let report = serde_json::json!({
        "members": args.members,
        "servers": args.servers,
        "join_all_s": all_joined.as_secs_f64(),
        "converged_s": converged.as_secs_f64(),
        "join_server_cpu_s": join_cpu,
        "writes_per_s": writes,
        "writes_model": predicted_writes,
        "deliveries_per_s": deliveries,
        "deliveries_model": predicted_deliveries,
        "server_cpu_percent": cpu,
        "server_rss_bytes": rss,
        "after_join_s": after_join.as_secs_f64(),
        "after_leave_s": after_leave.as_secs_f64(),
        "after_kill_s": after_kill.as_secs_f64(),
        "false_failed": failed,
        "false_left": left,
        "lagged": lagged,
        "connection_events": incidents,
    });
    println!("{report}");

    live.write().unwrap().clear();
    let leaves = futures::stream::iter(members.iter().map(|m| m.manager.leave()))
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    let failed_leaves = leaves.iter().filter(|l| l.is_err()).count();
    if failed_leaves > 0 {
        println!("{failed_leaves} leaves failed");
    }
    if failed + left > 0 {
        return Err(format!("{} false failures", failed + left).into());
    }
    Ok(())
}

/// Waits until every member holds the same map, which names exactly `ids` (none of `gone`).
async fn converge(members: &[Member], ids: &[String], gone: &[&str]) -> Result {
    let deadline = Instant::now() + PATIENCE;
    let want: HashSet<&str> = ids.iter().map(String::as_str).collect();
    loop {
        let epochs: HashSet<Option<u64>> = members
            .iter()
            .map(|m| m.manager.shard_map().map(|map| map.epoch()))
            .collect();
        let settled = epochs.len() == 1
            && members[0].manager.shard_map().is_some_and(|map| {
                let owners = map.counts();
                owners.keys().all(|o| want.contains(o))
                    && owners.len() == want.len().min(map.shard_count() as usize)
                    && gone.iter().all(|g| !owners.contains_key(*g))
            });
        if settled {
            return Ok(());
        }
        if Instant::now() > deadline {
            let leaders = members.iter().filter(|m| m.manager.is_leader()).count();
            let seen: Vec<usize> = members.iter().map(|m| m.manager.members().len()).collect();
            let named = members[0].manager.shard_map().map(|m| m.counts().len());
            return Err(format!(
                "no common map naming {} members within {PATIENCE:?}: {} epochs among the \
                 members, {leaders} leaders, members seen from {} to {}, the first member's map names {named:?}",
                ids.len(),
                epochs.len(),
                seen.iter().min().unwrap_or(&0),
                seen.iter().max().unwrap_or(&0),
            )
            .into());
        }
        // A measurement tool polling the members' state; no event says "every member has it".
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
