//! [`ClusterNode`]: location-transparent actors on top of the control plane. Each node hosts
//! one or more actor types (one [`Runtime`] each); a call for actor `id` from any node runs on
//! the node that owns `id`'s shard in the current map — locally when that is this node, else as
//! a NATS request to the owner. Shard moves hand actors over (drain, passivate with a snapshot,
//! confirm); calls that meet a moving shard are held and retried, with the same command id, until
//! the new owner serves. The protocol is in docs/cluster.md.
//!
//! A node is a few parts, each a type that owns its state, composed by `NodeInner`:
//! `route` ([`ClusterActors`] and [`CallError`]: a call's way to its owner), `router`
//! (`Router`: command ids and the requests to other nodes), `serve`
//! (`Server`: answering other nodes' calls, receiving handoff confirmations) and `handoff`
//! (`Handoff`: applying maps — drains, pending shards, failover, confirmations). What they all
//! read is `Shared`: the control plane, the hosted types (`host`), the shard table (`shards`:
//! the map followed, per-shard state and gate, migration records) and the node's settings;
//! `wire` holds the messages.

mod failover;
mod handoff;
mod host;
mod keeper;
mod reminders;
pub(crate) mod route;
pub(crate) mod router;
mod serve;
mod shards;
pub(crate) mod wire;

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aether_core::reminder::ReminderStore;
use aether_runtime::Runtime;
use aether_runtime::reminders::{Deliver, Dispatcher, DispatcherHandle};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::ClusterConfig;
use crate::error::ClusterError;
use crate::manager::ClusterManager;
use crate::metrics::NodeMetrics;
use crate::refusals::Guard;

pub use host::ClusterActor;
pub use keeper::KEEP_INTERVAL;
pub use route::{CallError, ClusterActors};
pub use shards::{MigrationStatus, ShardMigration};

use failover::Failover;
use handoff::Handoff;
use host::Hosts;
use router::Router;
use serve::Server;
use shards::Shards;

/// How long `ClusterNode::start`, with a permission watch, waits after the server confirmed the
/// node's subscriptions for the client to hand over a refusal the server sent before that.
const REFUSAL_GRACE: Duration = Duration::from_millis(25);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What every part of a node reads: the control plane, the connection, the settings, the hosted
/// actor types, the shard table, the metrics, and what stops the node.
#[derive(Debug)]
struct Shared {
    manager: ClusterManager,
    client: async_nats::Client,
    config: ClusterConfig,
    hosts: Hosts,
    shards: Shards,
    metrics: NodeMetrics,
    /// With `ClusterConfig::permissions`: the server's refusals that concern a request end it.
    guard: Option<Arc<Guard>>,
    /// Nodes a call found without responders, for the failover to check.
    suspects: tokio::sync::mpsc::Sender<String>,
    cancel: CancellationToken,
    /// The node's tasks (listeners, the map follower, drains), stopped with it.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Woken when an actor is marked always-on from this node (the keeper looks at once).
    marked: tokio::sync::Notify,
    /// The actor types every actor of which is always-on (`register_always_on`).
    always_on: Mutex<Vec<String>>,
}

impl Shared {
    fn me(&self) -> &str {
        &self.config.node_id
    }

    /// Stops the node's tasks and runtimes.
    async fn stop(&self) {
        self.cancel.cancel();
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
        for host in self.hosts.all() {
            host.shutdown().await;
        }
    }
}

/// A node's parts: the caller side, the answering side, the handoff and the failover, over what
/// they share.
struct NodeInner {
    node: Arc<Shared>,
    router: Arc<Router>,
    server: Arc<Server>,
    handoff: Arc<Handoff>,
    failover: Arc<Failover>,
    /// What the failover takes suspects from, until `start` hands it over.
    suspects: Mutex<Option<tokio::sync::mpsc::Receiver<String>>>,
    /// Where each registered type's reminder firings go (through the cluster's routing).
    reminder_targets: Mutex<Vec<(String, Arc<dyn Deliver>)>>,
    /// The reminder dispatcher, once started.
    reminders: Mutex<Option<Arc<DispatcherHandle>>>,
}

impl fmt::Debug for NodeInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterNode")
            .field("cluster", &self.node.config.cluster_name)
            .field("node", &self.node.config.node_id)
            .field("serving_shards", &self.node.shards.serving_count())
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
    inner: NodeInner,
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        self.inner.node.cancel.cancel();
    }
}

impl ClusterNode {
    /// A node for `config` on `client` (NATS with JetStream). Register actor types, then
    /// [`start`](Self::start).
    pub fn new(client: async_nats::Client, config: ClusterConfig) -> Result<Self, ClusterError> {
        let manager = ClusterManager::new(client.clone(), config.clone())?;
        let metrics = NodeMetrics::new(&config.cluster_name, &config.node_id);
        let guard = manager.guard().cloned();
        let (suspects, suspected) = tokio::sync::mpsc::channel(failover::QUEUE);
        let node = Arc::new(Shared {
            guard,
            suspects,
            manager,
            client,
            shards: Shards::new(config.shard_count),
            config,
            hosts: Hosts::default(),
            metrics,
            cancel: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
            marked: tokio::sync::Notify::new(),
            always_on: Mutex::new(Vec::new()),
        });
        let handoff = Arc::new(Handoff::new(node.clone()));
        Ok(Self {
            inner: NodeInner {
                router: Arc::new(Router::new(node.clone())),
                server: Arc::new(Server::new(node.clone(), handoff.clone())),
                handoff,
                failover: Arc::new(Failover::new(node.clone())),
                suspects: Mutex::new(Some(suspected)),
                reminder_targets: Mutex::new(Vec::new()),
                reminders: Mutex::new(None),
                node,
            },
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
        if !self.inner.node.hosts.add(runtime.clone()) {
            return Err(ClusterError::InvalidConfig {
                field: "register",
                reason: format!("actor type {:?} is already registered", A::TYPE),
            });
        }
        let actors = ClusterActors::new(self.inner.router.clone(), runtime);
        lock(&self.inner.reminder_targets).push((
            A::TYPE.to_owned(),
            Arc::new(reminders::ClusterTarget::new(actors.clone())),
        ));
        Ok(actors)
    }

    /// [`register`](Self::register), with every actor of type `A` always-on: each actor of the
    /// type that is activated anywhere in the cluster (by its first call) is marked as with
    /// [`ClusterActors::remember`] within a pass of the keeper ([`KEEP_INTERVAL`]), and then
    /// kept active by its owner, after moves and crashes too. Every node registers the type the
    /// same way. [`ClusterActors::forget`] unmarks one until its next activation.
    pub fn register_always_on<A: ClusterActor>(
        &self,
        runtime: Runtime<A>,
    ) -> Result<ClusterActors<A>, ClusterError> {
        let actors = self.register(runtime)?;
        lock(&self.inner.node.always_on).push(A::TYPE.to_owned());
        Ok(actors)
    }

    /// Adds a reminder target for `actor_type` that is not a registered cluster actor (the
    /// deadlines of a `ModelRuntime` this node runs, say: `node.add_reminder_target("model",
    /// models.deadlines())`). Call before [`deliver_reminders`](Self::deliver_reminders).
    pub fn add_reminder_target(&self, actor_type: &str, target: Arc<dyn Deliver>) {
        lock(&self.inner.reminder_targets).push((actor_type.to_owned(), target));
    }

    /// Delivers the firings of `store`'s reminders to the actor types registered so far, through
    /// the cluster: each firing is read by one node and routed to its actor's owner with the
    /// firing's command id, so it is applied once wherever the actor lives now. Every node
    /// calls it; the store shares the firings among them. Stopped by [`leave`](Self::leave) (a
    /// firing read but not delivered goes to another node).
    pub fn deliver_reminders(&self, store: Arc<dyn ReminderStore>) -> Result<(), ClusterError> {
        let mut running = lock(&self.inner.reminders);
        if running.is_some() {
            return Err(ClusterError::InvalidConfig {
                field: "deliver_reminders",
                reason: "reminders are delivered already".into(),
            });
        }
        let dispatcher = lock(&self.inner.reminder_targets)
            .iter()
            .fold(Dispatcher::new(store), |d, (ty, target)| {
                d.target(ty.clone(), target.clone())
            });
        *running = Some(Arc::new(dispatcher.start()));
        Ok(())
    }

    /// What this node's reminder dispatcher did so far (`None` before
    /// [`deliver_reminders`](Self::deliver_reminders)).
    pub fn reminder_stats(&self) -> Option<aether_runtime::reminders::DispatchStats> {
        lock(&self.inner.reminders).as_ref().map(|d| d.stats())
    }

    /// Starts serving calls, joins the cluster and follows its shard map.
    ///
    /// With a permission watch ([`ClusterConfig::permissions`]), a subject the user may not use
    /// (subscribing to this node's call or handoff subject, anything joining needs) fails it at
    /// once with [`ClusterError::PermissionDenied`] naming the subject, and the node leaves
    /// nothing behind in the cluster.
    pub async fn start(&self) -> Result<(), ClusterError> {
        let node = &self.inner.node;
        let cfg = &node.config;
        let nats = |context: &str, e: async_nats::SubscribeError| ClusterError::Nats {
            cluster: cfg.cluster_name.clone(),
            context: context.to_owned(),
            source: Box::new(e),
        };
        let call_subject = wire::call_subject(&cfg.cluster_name, &cfg.node_id);
        let handoff_subject = wire::handoff_subject(&cfg.cluster_name, &cfg.node_id);
        // Made before subscribing, so that the server's refusal of either cannot be missed.
        let mut watcher = node.guard.as_ref().map(|guard| guard.watcher());
        let refused_subscription = |r: &aether_nats::permissions::Refusal| {
            Guard::refuses_subscription(r, &call_subject)
                || Guard::refuses_subscription(r, &handoff_subject)
        };
        let denied = |refusal: aether_nats::permissions::Refusal| {
            let context = if refusal.subject == call_subject {
                "subscribing to calls"
            } else {
                "subscribing to handoffs"
            };
            ClusterError::denied(refusal, format!("{context} (cluster {})", cfg.cluster_name))
        };
        // Listen before joining: once the map names this node, calls must find it.
        let calls = node
            .client
            .subscribe(call_subject.clone())
            .await
            .map_err(|e| nats("subscribing to calls", e))?;
        let handoffs = node
            .client
            .subscribe(handoff_subject.clone())
            .await
            .map_err(|e| nats("subscribing to handoffs", e))?;
        if let Some(watcher) = &mut watcher {
            // A subscription is never answered: the server refuses it before it answers the
            // flush's ping. The client reads the refusal first too, but hands it over on another
            // task: wait a little for it after the flush (and check again after joining).
            let confirmed = async {
                let _ = node.client.flush().await;
                tokio::time::sleep(REFUSAL_GRACE).await;
            };
            let confirmed = std::pin::pin!(confirmed);
            let refused = std::pin::pin!(watcher.refusal(refused_subscription));
            if let futures::future::Either::Right((refusal, _)) =
                futures::future::select(confirmed, refused).await
            {
                return Err(denied(refusal));
            }
        }
        // Callers' reports of owners without responders (best effort: a user without the right
        // to it still fails members its own calls find gone).
        let reports = match node
            .client
            .queue_subscribe(
                wire::suspect_subject(&cfg.cluster_name),
                wire::SUSPECT_QUEUE.to_owned(),
            )
            .await
        {
            Ok(reports) => Some(reports),
            Err(e) => {
                tracing::warn!(node = %node.me(), error = %e, "not taking callers' reports of gone nodes");
                None
            }
        };
        let events = node.manager.watch();
        node.manager.start().await?;
        if let Some(watcher) = &mut watcher
            && let Some(refusal) =
                futures::FutureExt::now_or_never(watcher.refusal(refused_subscription))
        {
            // Joined, but unreachable: leave again, so that no shard is given to this node.
            if let Err(e) = node.manager.leave().await {
                tracing::warn!(node = %node.me(), error = %e, "leaving after a refused subscription failed");
            }
            return Err(denied(refusal));
        }
        self.inner.handoff.sync_map();
        let mut tasks = lock(&node.tasks);
        tasks.push(tokio::spawn(self.inner.server.clone().serve_calls(calls)));
        tasks.push(tokio::spawn(
            self.inner.server.clone().serve_handoffs(handoffs),
        ));
        tasks.push(tokio::spawn(self.inner.handoff.clone().follow_map(events)));
        tasks.push(tokio::spawn(
            Arc::new(keeper::Keeper::new(node.clone())).run(),
        ));
        if let Some(suspected) = lock(&self.inner.suspects).take() {
            tasks.push(tokio::spawn(
                self.inner.failover.clone().run(suspected, reports),
            ));
        }
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
        let node = &self.inner.node;
        let reminders = lock(&self.inner.reminders).take();
        if let Some(reminders) = reminders {
            reminders.stop().await;
        }
        node.manager.mark_leaving();
        let until = tokio::time::Instant::now() + node.config.call_timeout;
        loop {
            let notified = node.shards.changed.notified();
            let mapped = node.shards.map_changed.notified();
            tokio::pin!(notified, mapped);
            notified.as_mut().enable();
            mapped.as_mut().enable();
            if self.inner.handoff.handed_off() {
                break;
            }
            if tokio::time::Instant::now() >= until {
                tracing::warn!(node = %node.me(), "shards not handed off within the call timeout; leaving anyway");
                break;
            }
            let _ = tokio::time::timeout_at(
                until.min(tokio::time::Instant::now() + Duration::from_millis(200)),
                futures::future::select(notified, mapped),
            )
            .await;
        }
        let left = node.manager.leave().await;
        node.stop().await;
        left
    }

    /// The control plane: members, leader, shard map, cluster events.
    pub fn manager(&self) -> &ClusterManager {
        &self.inner.node.manager
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        self.inner.node.me()
    }

    /// The latest move of each shard this node took part in (as old or new owner).
    pub fn migrations(&self) -> Vec<ShardMigration> {
        self.inner.node.shards.migrations()
    }

    /// How many shards this node serves, holds or drains right now.
    pub fn shards_in_use(&self) -> usize {
        self.inner.node.shards.serving_count()
    }
}
