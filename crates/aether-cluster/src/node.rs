//! [`ClusterNode`]: location-transparent actors on top of the control plane. Each node hosts
//! one or more actor types (one [`Runtime`] each); a call for actor `id` from any node runs on
//! the node that owns `id`'s shard in the current map — locally when that is this node, else as
//! a NATS request to the owner. Shard moves hand actors over (drain, passivate with a snapshot,
//! confirm); calls meet a moving shard are held and retried, with the same command id, until the
//! new owner serves. The protocol is in docs/cluster.md.
//!
//! The parts: `route` (the caller side, [`ClusterActors`], [`CallError`]), `serve` (answering
//! other nodes' calls and handoff confirmations), `handoff` (reacting to a new map: draining,
//! pending shards, failover), `shards` (the per-shard gate and migration records), `host` (one
//! actor type behind a trait object) and `wire` (the messages).

mod handoff;
mod host;
mod route;
mod serve;
mod shards;
mod wire;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use aether_runtime::Runtime;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::ClusterConfig;
use crate::error::ClusterError;
use crate::hash::ShardId;
use crate::manager::ClusterManager;
use crate::map::ShardMap;
use crate::metrics::NodeMetrics;

pub use host::ClusterActor;
pub use route::{CallError, ClusterActors};
pub use shards::{MigrationStatus, ShardMigration};

use host::{Host, TypedHost};
use shards::Shards;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) struct NodeInner {
    manager: ClusterManager,
    client: async_nats::Client,
    config: ClusterConfig,
    hosts: RwLock<HashMap<&'static str, Arc<dyn Host>>>,
    shards: Arc<Shards>,
    /// The map the shard table was last brought in line with.
    applied: Mutex<Option<Arc<ShardMap>>>,
    /// The same map, for callers to read without a lock.
    current: arc_swap::ArcSwapOption<ShardMap>,
    /// Handoffs confirmed before this node applied the map that gives it the shard: shard ->
    /// (previous owner, epoch).
    early: Mutex<HashMap<ShardId, (String, u64)>>,
    /// Woken whenever the applied map changes.
    map_changed: Notify,
    next_command: AtomicU64,
    /// Drains (with their handoff confirmations) still running.
    drains_running: std::sync::atomic::AtomicUsize,
    conflicts_seen: AtomicU64,
    metrics: NodeMetrics,
    cancel: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl fmt::Debug for NodeInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterNode")
            .field("cluster", &self.config.cluster_name)
            .field("node", &self.config.node_id)
            .field("serving_shards", &self.shards.serving_count())
            .finish_non_exhaustive()
    }
}

/// One process's place in an Aether cluster: membership and leadership (a [`ClusterManager`]),
/// the actor types it hosts, and the routing that makes every actor reachable from every node.
///
/// ```no_run
/// # use aether_runtime::{Actor, Runtime};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Default, Serialize, Deserialize)] struct Account { balance: i64 }
/// # #[derive(Serialize, Deserialize)] enum Ev { Deposited(i64) }
/// # #[derive(Debug, thiserror::Error, Serialize, Deserialize)] #[error("never")] struct Never;
/// # impl Actor for Account {
/// #     const TYPE: &'static str = "account";
/// #     type Command = i64; type Event = Ev; type Error = Never;
/// #     fn handle(&self, n: &i64) -> Result<Vec<Ev>, Never> { Ok(vec![Ev::Deposited(*n)]) }
/// #     fn apply(&mut self, Ev::Deposited(n): &Ev) { self.balance += n }
/// # }
/// # async fn demo(store: std::sync::Arc<dyn aether_core::EventStore>) -> Result<(), Box<dyn std::error::Error>> {
/// use aether_cluster::{ClusterConfig, ClusterNode};
///
/// let client = async_nats::connect("127.0.0.1:4222").await?;
/// let node = ClusterNode::new(client, ClusterConfig::new("bank").node_id("node-1"))?;
/// let accounts = node.register(Runtime::<Account>::builder(store).build())?;
/// node.start().await?;
/// // From any node: runs on the owner of acct-42's shard, once.
/// let applied = accounts.ask("acct-42", 100).await?;
/// println!("acct-42 is at version {} on {:?}", applied.version, accounts.node_for("acct-42"));
/// node.leave().await?; // hands its shards off first
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ClusterNode {
    inner: Arc<NodeInner>,
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        self.inner.cancel.cancel();
    }
}

impl ClusterNode {
    /// A node for `config` on `client` (NATS with JetStream). Register actor types, then
    /// [`start`](Self::start).
    pub fn new(client: async_nats::Client, config: ClusterConfig) -> Result<Self, ClusterError> {
        let manager = ClusterManager::new(client.clone(), config.clone())?;
        let metrics = NodeMetrics::new(&config.cluster_name, &config.node_id);
        Ok(Self {
            inner: Arc::new(NodeInner {
                manager,
                client,
                shards: Arc::new(Shards::new(config.shard_count)),
                config,
                hosts: RwLock::new(HashMap::new()),
                applied: Mutex::new(None),
                current: arc_swap::ArcSwapOption::empty(),
                early: Mutex::new(HashMap::new()),
                map_changed: Notify::new(),
                next_command: AtomicU64::new(0),
                drains_running: std::sync::atomic::AtomicUsize::new(0),
                conflicts_seen: AtomicU64::new(0),
                metrics,
                cancel: CancellationToken::new(),
                tasks: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Hosts actor type `A` on this node, run by `runtime`, and returns the handle that calls
    /// `A` actors anywhere in the cluster. Every node of the cluster registers the same types
    /// (a call for a type a node does not host fails with a clear error). Build the runtime on
    /// the store every node shares, with snapshots, so that moved actors activate quickly.
    pub fn register<A: ClusterActor>(
        &self,
        runtime: Runtime<A>,
    ) -> Result<ClusterActors<A>, ClusterError> {
        let mut hosts = self
            .inner
            .hosts
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if hosts.contains_key(A::TYPE) {
            return Err(ClusterError::InvalidConfig {
                field: "register",
                reason: format!("actor type {:?} is already registered", A::TYPE),
            });
        }
        hosts.insert(
            A::TYPE,
            Arc::new(TypedHost {
                runtime: runtime.clone(),
            }),
        );
        Ok(ClusterActors::new(self.inner.clone(), runtime))
    }

    /// Starts serving calls, joins the cluster and follows its shard map.
    pub async fn start(&self) -> Result<(), ClusterError> {
        let inner = &self.inner;
        let cfg = &inner.config;
        let nats = |context: &str, e: async_nats::SubscribeError| ClusterError::Nats {
            cluster: cfg.cluster_name.clone(),
            context: context.to_owned(),
            source: Box::new(e),
        };
        // Listen before joining: once the map names this node, calls must find it.
        let calls = inner
            .client
            .subscribe(wire::call_subject(&cfg.cluster_name, &cfg.node_id))
            .await
            .map_err(|e| nats("subscribing to calls", e))?;
        let handoffs = inner
            .client
            .subscribe(wire::handoff_subject(&cfg.cluster_name, &cfg.node_id))
            .await
            .map_err(|e| nats("subscribing to handoffs", e))?;
        let events = inner.manager.watch();
        inner.manager.start().await?;
        inner.sync_map();
        let mut tasks = lock(&inner.tasks);
        tasks.push(tokio::spawn(inner.clone().serve_calls(calls)));
        tasks.push(tokio::spawn(inner.clone().serve_handoffs(handoffs)));
        tasks.push(tokio::spawn(inner.clone().follow_map(events)));
        Ok(())
    }

    /// Leaves gracefully: asks the leader to move this node's shards elsewhere, hands each one
    /// off (in-flight calls finish, actors are passivated with snapshots, the new owners are
    /// told), then leaves the membership and shuts the runtimes down. Callers see no errors:
    /// calls that meet a moving shard are held and re-sent to the new owner.
    ///
    /// If the handoff does not finish within the call timeout (no other node to take the
    /// shards, say), the node leaves anyway; its actors' acknowledged work is in the store.
    pub async fn leave(&self) -> Result<(), ClusterError> {
        let inner = &self.inner;
        inner.manager.mark_leaving();
        let until = tokio::time::Instant::now() + inner.config.call_timeout;
        loop {
            let notified = inner.shards.changed.notified();
            let mapped = inner.map_changed.notified();
            tokio::pin!(notified, mapped);
            notified.as_mut().enable();
            mapped.as_mut().enable();
            let owned = lock(&inner.applied)
                .as_ref()
                .is_some_and(|m| !m.shards_of(&inner.config.node_id).is_empty());
            if !owned
                && inner.shards.serving_count() == 0
                && inner.drains_running.load(Ordering::SeqCst) == 0
            {
                break;
            }
            if tokio::time::Instant::now() >= until {
                tracing::warn!(node = %inner.config.node_id, "shards not handed off within the call timeout; leaving anyway");
                break;
            }
            let _ = tokio::time::timeout_at(
                until.min(tokio::time::Instant::now() + Duration::from_millis(200)),
                futures::future::select(notified, mapped),
            )
            .await;
        }
        let left = inner.manager.leave().await;
        inner.stop().await;
        left
    }

    /// The control plane: members, leader, shard map, cluster events.
    pub fn manager(&self) -> &ClusterManager {
        &self.inner.manager
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.config.node_id
    }

    /// The latest move of each shard this node took part in (as old or new owner).
    pub fn migrations(&self) -> Vec<ShardMigration> {
        self.inner.shards.migrations()
    }

    /// How many shards this node serves, holds or drains right now.
    pub fn shards_in_use(&self) -> usize {
        self.inner.shards.serving_count()
    }
}

impl NodeInner {
    fn me(&self) -> &str {
        &self.config.node_id
    }

    fn hosts(&self) -> Vec<Arc<dyn Host>> {
        self.hosts
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    fn host(&self, actor_type: &str) -> Option<Arc<dyn Host>> {
        self.hosts
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(actor_type)
            .cloned()
    }

    /// A command id unique in the cluster: this process's incarnation and a counter.
    fn command_id(&self) -> Arc<str> {
        let n = self.next_command.fetch_add(1, Ordering::Relaxed);
        // 64 random bits of the incarnation are plenty next to a per-process counter; built on
        // the stack so that the id costs one allocation.
        let incarnation = self.manager.incarnation().as_bytes();
        let prefix = &incarnation[..incarnation.len().min(16)];
        let mut buf = [0u8; 16 + 1 + 16];
        buf[..prefix.len()].copy_from_slice(prefix);
        let mut len = prefix.len();
        buf[len] = b'-';
        len += 1;
        let digits = (64 - n.leading_zeros()).div_ceil(4).max(1) as usize;
        for i in 0..digits {
            let nibble = (n >> (4 * (digits - 1 - i))) & 0xf;
            buf[len + i] = b"0123456789abcdef"[nibble as usize];
        }
        len += digits;
        std::str::from_utf8(&buf[..len]).map_or_else(|_| format!("{n:x}").into(), Arc::from)
    }

    /// Stops the node's tasks and runtimes.
    async fn stop(&self) {
        self.cancel.cancel();
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
        for host in self.hosts() {
            host.shutdown().await;
        }
    }
}
