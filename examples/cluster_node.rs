//! One node of a bank cluster: bank accounts as event-sourced actors, reachable from every node.
//! A call for `acct-42` runs on the node that owns its shard, once, wherever it was sent.
//!
//! Three terminals, a local 3-server NATS cluster (configs shipped in `examples/nats/`; each
//! server keeps its JetStream data in `target/nats-cluster/aether-N/` and its log in
//! `target/nats-cluster/aether-N.log`, relative to the working directory, and the data is kept
//! between sessions: `rm -rf target/nats-cluster` starts clean):
//!
//! ```text
//! cargo xtask nats                                    # provisions nats-server
//! mkdir -p target/nats-cluster
//! for i in 1 2 3; do target/tools/nats-server/bin/nats-server -c examples/nats/cluster-$i.conf & done
//! cargo run --example cluster_node -- serve node-1
//! cargo run --example cluster_node -- serve node-2
//! cargo run --example cluster_node -- serve node-3
//! cargo run --example cluster_node -- client acct-1 acct-2 acct-42
//! ```
//!
//! `serve NODE_ID` runs a node until Ctrl-C or SIGTERM (what systemd, Kubernetes and docker
//! send), then leaves gracefully: its shards are handed off first, so their calls go on at once
//! on the other nodes. `client ACCOUNT...` calls the cluster without joining it (a
//! `ClusterClient`: it takes no shards, so it moves nothing), deposits 10 into each account,
//! prints where each account lives and its balance; while a call is held (its owner was killed,
//! say) it says every second what the call waits for. Without
//! arguments the example runs three nodes in this process, calls accounts from each, lets one
//! leave and shows that the others serve its accounts with their full history. `NATS_URL` picks
//! the servers (default `nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224` for
//! serve and client, `nats://127.0.0.1:4222` for the demo). With `METRICS_ADDR` (e.g.
//! `127.0.0.1:9464`) a `serve` node also serves its Prometheus metrics at
//! `http://METRICS_ADDR/metrics`, for the dashboard in `docs/grafana/aether.json`.

use std::sync::Arc;
use std::time::Duration;

use aether::cluster::{
    CallError, ClientActors, ClientConfig, ClusterActors, ClusterClient, ClusterConfig,
    ClusterEvent, ClusterNode, DEFAULT_FAILURE_TIMEOUT, async_nats,
};
use aether::runtime::{Actor, Applied, Runtime, SnapshotPolicy};
use aether::store::jetstream::{JetStreamConfig, JetStreamEventStore};
use serde::{Deserialize, Serialize};

/// An account's state: the fold of its events.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Account {
    balance: u64,
}

/// Commands cross nodes, so they are serde types (as are the domain errors).
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Command {
    Deposit(u64),
    Withdraw(u64),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Moved {
    Deposited(u64),
    Withdrawn(u64),
}

#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize)]
#[error("insufficient funds: balance {balance}, asked {asked}")]
struct InsufficientFunds {
    balance: u64,
    asked: u64,
}

impl Actor for Account {
    const TYPE: &'static str = "account";
    type Command = Command;
    type Event = Moved;
    type Error = InsufficientFunds;

    fn handle(&self, command: &Command) -> Result<Vec<Moved>, InsufficientFunds> {
        match command {
            Command::Deposit(n) => Ok(vec![Moved::Deposited(*n)]),
            Command::Withdraw(n) if *n > self.balance => Err(InsufficientFunds {
                balance: self.balance,
                asked: *n,
            }),
            Command::Withdraw(n) => Ok(vec![Moved::Withdrawn(*n)]),
        }
    }

    fn apply(&mut self, event: &Moved) {
        match event {
            Moved::Deposited(n) => self.balance += n,
            Moved::Withdrawn(n) => self.balance -= n,
        }
    }
}

type Error = Box<dyn std::error::Error>;

async fn connect(urls: &str) -> async_nats::Client {
    let addrs: Vec<async_nats::ServerAddr> =
        urls.split(',').filter_map(|u| u.parse().ok()).collect();
    match async_nats::connect(addrs).await {
        Ok(client) => client,
        Err(e) => {
            eprintln!("cannot reach NATS at {urls} ({e}); start servers with JetStream, e.g.:");
            eprintln!("  cargo xtask nats");
            eprintln!("  mkdir -p target/nats-cluster");
            eprintln!(
                "  for i in 1 2 3; do target/tools/nats-server/bin/nats-server -c examples/nats/cluster-$i.conf & done"
            );
            std::process::exit(2);
        }
    }
}

/// The JetStream store every node shares.
async fn store(
    client: &async_nats::Client,
    replicas: usize,
) -> Result<Arc<JetStreamEventStore>, Error> {
    let config = JetStreamConfig::default().replicas(replicas);
    Ok(Arc::new(
        JetStreamEventStore::with_config(client.clone(), "bank", config).await?,
    ))
}

/// A node hosting accounts, on the JetStream store every node shares.
async fn node(
    client: async_nats::Client,
    config: ClusterConfig,
    replicas: usize,
) -> Result<(ClusterNode, ClusterActors<Account>), Error> {
    let store = store(&client, replicas).await?;
    let runtime = Runtime::<Account>::builder(store.clone())
        .snapshots(store)
        .snapshot_policy(SnapshotPolicy::every(100))
        .build();
    let node = ClusterNode::new(client, config)?;
    let accounts = node.register(runtime)?;
    node.start().await?;
    Ok((node, accounts))
}

/// Waits until this node's map covers `n` nodes and the node serves its shards.
async fn settle(node: &ClusterNode, n: usize) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let map = node.manager().shard_map();
        if map.is_some_and(|m| m.counts().len() == n)
            && node.shards_in_use() == node.manager().shards_owned().len()
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("the map did not cover {n} nodes within 30 s").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn serve(urls: &str, node_id: &str) -> Result<(), Error> {
    // Before anything else: a signal that arrives while the node starts is not lost.
    let mut stop = StopSignals::listen()?;
    // First, so that the store, runtime and node built below register their metrics with it.
    if let Ok(addr) = std::env::var("METRICS_ADDR") {
        aether::metrics::install_prometheus(addr.parse()?)?;
        println!("{node_id}: metrics at http://{addr}/metrics");
    }
    let config = ClusterConfig::new("bank").node_id(node_id).replicas(3);
    let (node, _accounts) = node(connect(urls).await, config, 3).await?;
    println!("{node_id} serving; Ctrl-C or SIGTERM leaves gracefully");
    let mut events = node.manager().watch();
    let signal = loop {
        tokio::select! {
            signal = stop.next() => break signal?,
            event = futures::StreamExt::next(&mut events) => match event {
                Some(ClusterEvent::ShardMapChanged { map, plan }) => println!(
                    "map {}: {} shards here, {} moved",
                    map.epoch(),
                    map.shards_of(node_id).len(),
                    plan.len()
                ),
                Some(ClusterEvent::MemberLeft { node_id }) => println!("{node_id} left"),
                Some(ClusterEvent::MemberFailed { node_id }) => {
                    println!(
                        "{node_id} failed (its connection was found gone, or no heartbeat for the failure timeout)"
                    );
                }
                _ => {}
            },
        }
    };
    let started = tokio::time::Instant::now();
    println!(
        "{node_id}: {signal}: leaving gracefully, handing off {} shards",
        node.manager().shards_owned().len()
    );
    tokio::select! {
        left = node.leave() => left?,
        again = stop.next() => {
            again?;
            let message = "second signal: stopped before its shards were handed off";
            return Err(format!("{node_id}: {message}").into());
        }
    }
    println!(
        "{node_id} left: its shards were handed off ({} ms)",
        started.elapsed().as_millis()
    );
    Ok(())
}

/// The signals that stop `serve`: Ctrl-C (SIGINT) and, on unix, SIGTERM (what systemd,
/// Kubernetes and docker send).
struct StopSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Listens from now on.
    fn listen() -> Result<Self, Error> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// The next signal's name.
    async fn next(&mut self) -> Result<&'static str, Error> {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => Ok("Ctrl-C"),
                _ = self.terminate.recv() => Ok("SIGTERM"),
            }
        }
        #[cfg(not(unix))]
        {
            tokio::signal::ctrl_c().await?;
            Ok("Ctrl-C")
        }
    }
}

async fn client(urls: &str, accounts: &[String]) -> Result<(), Error> {
    let nats = connect(urls).await;
    // Reads balances from the store (latest snapshot and the events after it) and writes
    // nothing: accounts are changed only through the cluster, on their owners.
    let reader = {
        let store = store(&nats, 3).await?;
        Runtime::<Account>::builder(store.clone())
            .snapshots(store)
            .snapshot_policy(SnapshotPolicy::off())
            .build()
    };
    // Not a member: it follows the shard map and sends calls to the owners, so starting and
    // stopping it moves no shard.
    let config = ClientConfig::new("bank").name(format!("client-{}", std::process::id()));
    let cluster = ClusterClient::connect(nats, config).await?;
    let bank = cluster.actors::<Account>();
    for account in accounts {
        let applied = ask_saying_why_held(&cluster, &bank, account, Command::Deposit(10)).await?;
        let owner = bank.node_for(account).unwrap_or_default();
        let (state, version) = reader.capture_state(account).await?;
        // Read afresh for the next account of the same id.
        reader.stop_vm(account).await;
        println!(
            "{account}: deposited 10 on {owner} (version {}); balance {} (version {version})",
            applied.version, state.balance
        );
    }
    reader.shutdown().await;
    cluster.close().await;
    Ok(())
}

/// `bank.ask`, saying every second what the call waits for while it is held (its owner was
/// killed, say, and the cluster has not failed it yet).
async fn ask_saying_why_held(
    cluster: &ClusterClient,
    bank: &ClientActors<Account>,
    account: &str,
    command: Command,
) -> Result<Applied<Moved>, CallError<InsufficientFunds>> {
    let call = bank.ask(account, command);
    tokio::pin!(call);
    let started = tokio::time::Instant::now();
    let every = Duration::from_secs(1);
    let mut ticks = tokio::time::interval_at(started + every, every);
    loop {
        tokio::select! {
            outcome = &mut call => return outcome,
            _ = ticks.tick() => println!(
                "waiting {} s for {account}: {}",
                started.elapsed().as_secs(),
                held_for(cluster, account)
            ),
        }
    }
}

/// What a held call for `account` waits for, as far as the shard map tells.
fn held_for(cluster: &ClusterClient, account: &str) -> String {
    let Some(owner) = cluster.node_for(account) else {
        return "no shard map gives it an owner yet".to_owned();
    };
    let timeout = DEFAULT_FAILURE_TIMEOUT.as_secs();
    format!(
        "its owner {owner} does not serve it (moving it, paused or stopped); a stopped {owner} \
         is failed as soon as a node finds its connection gone, a paused one after the failure \
         timeout ({timeout} s), and its shards go to another node"
    )
}

/// Three nodes in one process: calls from each, then one leaves and the others take over.
async fn demo(url: &str) -> Result<(), Error> {
    let cluster = format!("bank-demo-{}", std::process::id());
    let config = |id: &str| {
        ClusterConfig::new(cluster.as_str())
            .node_id(id)
            .shard_count(64)
            .failure_timeout(Duration::from_secs(3))
            .lease_ttl(Duration::from_secs(3))
    };
    let mut nodes = Vec::new();
    for id in ["node-a", "node-b", "node-c"] {
        nodes.push(node(connect(url).await, config(id), 1).await?);
    }
    for (n, _) in &nodes {
        settle(n, 3).await?;
    }
    let ids: Vec<String> = (1..=6)
        .map(|i| format!("acct-{}-{i}", std::process::id()))
        .collect();
    for (n, bank) in &nodes {
        for id in &ids {
            bank.ask(id, Command::Deposit(10)).await?;
        }
        println!("{} deposited 10 into {} accounts", n.node_id(), ids.len());
    }
    for id in &ids {
        println!(
            "  {id} lives on {}",
            nodes[0].1.node_for(id).unwrap_or_default()
        );
    }
    // A domain error crosses nodes typed.
    match nodes[0].1.ask(&ids[0], Command::Withdraw(1_000)).await {
        Err(e) => println!(
            "withdraw 1000 from {}: {}",
            ids[0],
            e.rejection()
                .map_or_else(|| e.to_string(), ToString::to_string)
        ),
        Ok(_) => return Err("an overdraft was accepted".into()),
    }
    let (leaver, _) = nodes.remove(2);
    leaver.leave().await?;
    println!("node-c left; its shards were handed off");
    for (n, _) in &nodes {
        settle(n, 2).await?;
    }
    for id in &ids {
        let applied = nodes[0].1.ask(id, Command::Deposit(1)).await?;
        println!(
            "  {id} now on {}, version {} (all 3 deposits kept)",
            nodes[0].1.node_for(id).unwrap_or_default(),
            applied.version
        );
        if applied.version != 4 {
            return Err(format!("{id} lost history: version {}", applied.version).into());
        }
    }
    for (n, _) in &nodes {
        n.leave().await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cluster_urls = "nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224";
    match args.first().map(String::as_str) {
        Some("serve") => {
            let id = args.get(1).ok_or("usage: cluster_node serve NODE_ID")?;
            serve(
                &std::env::var("NATS_URL").unwrap_or_else(|_| cluster_urls.into()),
                id,
            )
            .await
        }
        Some("client") => {
            client(
                &std::env::var("NATS_URL").unwrap_or_else(|_| cluster_urls.into()),
                &args[1..],
            )
            .await
        }
        Some(other) => Err(format!(
            "unknown mode {other:?}: use serve NODE_ID, client ACCOUNT..., or nothing for the demo"
        )
        .into()),
        None => {
            demo(&std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into()))
                .await
        }
    }
}
