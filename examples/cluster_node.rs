//! One node of a bank cluster: bank accounts as event-sourced actors, reachable from every node.
//! A call for `acct-42` runs on the node that owns its shard, once, wherever it was sent.
//!
//! Three terminals, a local 3-server NATS cluster (configs shipped in `examples/nats/`):
//!
//! ```text
//! cargo xtask nats                                    # provisions nats-server
//! for i in 1 2 3; do target/tools/nats-server/bin/nats-server -c examples/nats/cluster-$i.conf & done
//! cargo run --example cluster_node -- serve node-1
//! cargo run --example cluster_node -- serve node-2
//! cargo run --example cluster_node -- serve node-3
//! cargo run --example cluster_node -- client acct-1 acct-2 acct-42
//! ```
//!
//! `serve NODE_ID` runs a node until Ctrl-C, then leaves gracefully (its shards are handed off
//! first). `client ACCOUNT...` joins as a short-lived node, deposits 10 into each account from
//! there, prints where each account lives and its balance, and leaves. Without arguments the
//! example runs three nodes in this process, calls accounts from each, lets one leave and shows
//! that the others serve its accounts with their full history. `NATS_URL` picks the servers
//! (default `nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224` for serve and
//! client, `nats://127.0.0.1:4222` for the demo). With `METRICS_ADDR` (e.g. `127.0.0.1:9464`) a
//! `serve` node also serves its Prometheus metrics at `http://METRICS_ADDR/metrics`, for the
//! dashboard in `docs/grafana/aether.json`.

use std::sync::Arc;
use std::time::Duration;

use aether::cluster::{ClusterActors, ClusterConfig, ClusterNode, async_nats};
use aether::runtime::{Actor, Runtime, SnapshotPolicy};
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
            eprintln!(
                "  for i in 1 2 3; do target/tools/nats-server/bin/nats-server -c examples/nats/cluster-$i.conf & done"
            );
            std::process::exit(2);
        }
    }
}

/// A node hosting accounts, on the JetStream store every node shares.
async fn node(
    client: async_nats::Client,
    config: ClusterConfig,
    replicas: usize,
) -> Result<(ClusterNode, ClusterActors<Account>), Error> {
    let store = Arc::new(
        JetStreamEventStore::with_config(
            client.clone(),
            "bank",
            JetStreamConfig::default().replicas(replicas),
        )
        .await?,
    );
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
    // First, so that the store, runtime and node built below register their metrics with it.
    if let Ok(addr) = std::env::var("METRICS_ADDR") {
        aether::metrics::install_prometheus(addr.parse()?)?;
        println!("{node_id}: metrics at http://{addr}/metrics");
    }
    let config = ClusterConfig::new("bank").node_id(node_id).replicas(3);
    let (node, _accounts) = node(connect(urls).await, config, 3).await?;
    println!("{node_id} serving; Ctrl-C leaves gracefully");
    let mut events = node.manager().watch();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            event = futures::StreamExt::next(&mut events) => {
                if let Some(aether::cluster::ClusterEvent::ShardMapChanged { map, plan }) = event {
                    println!("map {}: {} shards here, {} moved", map.epoch(), map.shards_of(node_id).len(), plan.len());
                }
            }
        }
    }
    node.leave().await?;
    println!("{node_id} handed its shards off and left");
    Ok(())
}

async fn client(urls: &str, accounts: &[String]) -> Result<(), Error> {
    let me = format!("client-{}", std::process::id());
    let config = ClusterConfig::new("bank").node_id(me.as_str()).replicas(3);
    let (node, bank) = node(connect(urls).await, config, 3).await?;
    for account in accounts {
        let applied = bank.ask(account, Command::Deposit(10)).await?;
        let owner = bank.node_for(account).unwrap_or_default();
        println!(
            "{account}: on {owner}, version {}, events {:?}",
            applied.version, applied.events
        );
    }
    node.leave().await?;
    Ok(())
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
