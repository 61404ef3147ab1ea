//! `aether-chaos node`: one Aether cluster node in its own OS process, hosting the bank account
//! on JetStream and putting load on the cluster through its own router. It speaks to the
//! orchestrator in lines: commands on stdin, what happened on stdout.
//!
//! stdout, one line each (the orchestrator timestamps them as they arrive):
//!
//! ```text
//! READY                         joined, serving, load may start
//! TRY <cmd id> <account> <amt>  a deposit is about to be sent (the first attempt)
//! ACK <cmd id>                  the deposit was acknowledged (the owner answered ok)
//! RETRY <cmd id> <kind>         an attempt failed with a retry-safe error; sent again, same id
//! FAIL <cmd id> <kind> <text>   the call ended in an error that is not retried
//! EVENT <what> <detail>         a cluster event (failed, left, leader, stepped-down, and
//!                               `map <epoch> <node>=<shards>,...`)
//! NATS <what>                   a connection event (connected, disconnected, ...)
//! STOPPED                       after `stop`: every call started has its outcome printed
//! LEFT <ok|error text>          after `leave`
//! ```
//!
//! stdin: `load` starts the load, `stop` stops it, `leave` leaves gracefully and exits.
//! End of stdin (the orchestrator went away) ends the process.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aether_cluster::{CallError, ClusterActors, ClusterConfig, ClusterEvent, ClusterNode};
use aether_runtime::{Runtime, SnapshotPolicy};
use aether_store_jetstream::{JetStreamConfig, JetStreamEventStore};
use futures::StreamExt;
use tokio::io::AsyncBufReadExt;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::bank::{Account, Command, account};

/// The settings of a node process, given on its command line by the orchestrator.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct NodeArgs {
    /// Comma-separated server URLs (possibly proxies).
    #[arg(long)]
    pub(crate) urls: String,
    /// The cluster's name.
    #[arg(long)]
    pub(crate) cluster: String,
    /// This node's id.
    #[arg(long)]
    pub(crate) node: String,
    /// The store (stream) name.
    #[arg(long)]
    pub(crate) stream: String,
    /// How many accounts the load spreads over.
    #[arg(long, default_value_t = 256)]
    pub(crate) accounts: u64,
    /// Concurrent callers.
    #[arg(long, default_value_t = 2)]
    pub(crate) workers: u64,
    /// Pause after each acknowledged deposit, per caller (milliseconds).
    #[arg(long, default_value_t = 20)]
    pub(crate) pause_ms: u64,
    /// Distinguishes restarts of the same node id in command ids.
    #[arg(long, default_value_t = 0)]
    pub(crate) incarnation: u32,
}

/// How long a caller keeps re-sending one command while errors are retry-safe: within the
/// runtime's command-id horizon (60 s by default, `aether_runtime::COMMAND_HORIZON`), so a
/// retry is always recognised.
const RETRY_FOR: Duration = Duration::from_secs(50);

/// The cluster settings of a chaos node: failures noticed in seconds, an R3 control plane.
pub(crate) fn cluster_config(args: &NodeArgs) -> ClusterConfig {
    ClusterConfig::new(&args.cluster)
        .node_id(&args.node)
        .shard_count(64)
        .heartbeat_interval(Duration::from_millis(500))
        .failure_timeout(Duration::from_secs(6))
        .lease_ttl(Duration::from_secs(6))
        .rebalance_delay(Duration::from_millis(200))
        .request_timeout(Duration::from_secs(1))
        .handoff_timeout(Duration::from_secs(3))
        .call_timeout(Duration::from_secs(30))
        // A node cut from the two servers it tries first reconnects only after a connection
        // timeout (1 s) on each: the window must outlast that, or fast failover would fail a
        // node that is only moving to the third server.
        .failover_window(FAILOVER_WINDOW)
        .replicas(3)
}

/// How long a node without a connection must stay gone before fast failover fails it: longer
/// than the slowest reconnect here (two connection timeouts of 1 s, then a connect).
const FAILOVER_WINDOW: Duration = Duration::from_secs(3);

/// The store settings every chaos process uses (R3).
pub(crate) fn store_config() -> JetStreamConfig {
    JetStreamConfig::default().replicas(3)
}

/// Runs the node until `leave` or the end of stdin. Errors before `READY` end the process with
/// a message on stderr.
pub(crate) async fn run(args: NodeArgs) -> Result<(), String> {
    let addrs = args
        .urls
        .split(',')
        .map(|u| u.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad server url in {:?}: {e}", args.urls))?;
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(1))
        // Only the given URLs: behind proxies, a server's advertised address would go around
        // the fault.
        .ignore_discovered_servers()
        // In the given order: every node starts on server 1 (through its proxy), so cutting a
        // node from servers 1 and 2 always cuts the link it is on.
        .retain_servers_order()
        .event_callback(|event| async move { println!("NATS {}", connection_event(&event)) })
        .connect(addrs)
        .await
        .map_err(|e| format!("connecting to {}: {e}", args.urls))?;
    let store = Arc::new(
        JetStreamEventStore::with_config(client.clone(), &args.stream, store_config())
            .await
            .map_err(|e| format!("opening store {}: {e}", args.stream))?,
    );
    let runtime = Runtime::<Account>::builder(store.clone())
        .snapshots(store)
        .snapshot_policy(SnapshotPolicy::every(50).min_events(1))
        .build();
    let node = ClusterNode::new(client, cluster_config(&args))
        .map_err(|e| format!("cluster config: {e}"))?;
    let accounts = node
        .register(runtime)
        .map_err(|e| format!("registering the account actor: {e}"))?;
    let mut events = node.manager().watch();
    node.start()
        .await
        .map_err(|e| format!("joining cluster {}: {e}", args.cluster))?;
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            if let Some(line) = cluster_event(&event) {
                println!("EVENT {line}");
            }
        }
    });
    println!("READY");

    let running = Arc::new(AtomicBool::new(false));
    let mut callers = JoinSet::new();
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = stdin.next_line().await {
        match line.trim() {
            "load" if !running.swap(true, Ordering::SeqCst) => {
                for worker in 0..args.workers {
                    callers.spawn(caller(
                        accounts.clone(),
                        args.clone(),
                        worker,
                        running.clone(),
                    ));
                }
            }
            "stop" => {
                running.store(false, Ordering::SeqCst);
                while callers.join_next().await.is_some() {}
                println!("STOPPED");
            }
            "leave" => {
                running.store(false, Ordering::SeqCst);
                while callers.join_next().await.is_some() {}
                match node.leave().await {
                    Ok(()) => println!("LEFT ok"),
                    Err(e) => println!("LEFT {e}"),
                }
                return Ok(());
            }
            _ => {}
        }
    }
    Ok(())
}

/// One caller: deposits into pseudo-random accounts, one at a time, each with its own command id,
/// re-sent with the same id while the errors are retry-safe.
async fn caller(
    accounts: ClusterActors<Account>,
    args: NodeArgs,
    worker: u64,
    running: Arc<AtomicBool>,
) {
    // A small LCG: spreads the accounts without a dependency; seeded per node and caller.
    let mut x = u64::from(args.incarnation) << 32
        ^ worker.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ args
            .node
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(131).wrapping_add(u64::from(b)));
    let mut seq = 0u64;
    while running.load(Ordering::SeqCst) {
        seq += 1;
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let actor = account((x >> 33) % args.accounts.max(1));
        let amount = seq % 9 + 1;
        let id = format!("{}.{}.{worker}.{seq}", args.node, args.incarnation);
        println!("TRY {id} {actor} {amount}");
        let started = Instant::now();
        loop {
            match accounts
                .ask_with_id(&actor, Command::Deposit(amount), id.as_str())
                .await
            {
                Ok(_) => {
                    println!("ACK {id}");
                    break;
                }
                Err(e) if e.is_transient() && started.elapsed() < RETRY_FOR => {
                    println!("RETRY {id} {}", call_error_kind(&e));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    let text = e.to_string().replace('\n', " ");
                    println!("FAIL {id} {} {text}", call_error_kind(&e));
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(args.pause_ms)).await;
    }
}

/// A short label for an error, for the report's "errors by kind".
fn call_error_kind<E: std::error::Error>(e: &CallError<E>) -> &'static str {
    match e {
        CallError::Rejected { .. } => "rejected",
        CallError::Failed {
            transient: true, ..
        } => "failed-transient",
        CallError::Failed { .. } => "failed",
        CallError::Unavailable { .. } => "unavailable",
        CallError::Codec { .. } => "codec",
        CallError::Stopped { .. } => "stopped",
        _ => "other",
    }
}

/// The line for a cluster event the orchestrator times faults by; `None` for the others.
fn cluster_event(event: &ClusterEvent) -> Option<String> {
    Some(match event {
        ClusterEvent::MemberFailed { node_id } => format!("failed {node_id}"),
        ClusterEvent::MemberLeft { node_id } => format!("left {node_id}"),
        ClusterEvent::MemberJoined(record) => format!("joined {}", record.id),
        ClusterEvent::BecameLeader { term } => format!("leader {term}"),
        ClusterEvent::SteppedDown { term, .. } => format!("stepped-down {term}"),
        ClusterEvent::ShardMapChanged { map, .. } => {
            let counts: Vec<String> = map
                .counts()
                .into_iter()
                .map(|(node, shards)| format!("{node}={shards}"))
                .collect();
            format!("map {} {}", map.epoch(), counts.join(","))
        }
        ClusterEvent::Lagged { missed } => format!("lagged {missed}"),
        _ => return None,
    })
}

/// A one-word name for a connection event.
fn connection_event(event: &async_nats::Event) -> &'static str {
    match event {
        async_nats::Event::Connected => "connected",
        async_nats::Event::Disconnected => "disconnected",
        async_nats::Event::LameDuckMode => "lame-duck",
        async_nats::Event::SlowConsumer(_) => "slow-consumer",
        async_nats::Event::ServerError(_) => "server-error",
        async_nats::Event::ClientError(_) => "client-error",
        _ => "other",
    }
}
