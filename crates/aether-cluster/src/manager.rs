//! [`ClusterManager`]: one node's membership, election and shard-map tasks.
//!
//! Three tasks per node, all stopped by one cancellation token:
//! - the **watcher** keeps this node's view of the bucket (members, lease, map) and turns changes
//!   into [`ClusterEvent`]s;
//! - the **heartbeat** renews the node's liveness key (revision-checked, with the failure timeout
//!   as its TTL), re-creates it (and the record) if it expired while the node was paused, and
//!   rewrites the record when the node's status changes;
//! - the **leader** task competes for the lease, renews it while it holds it, steps down before
//!   the lease can lapse, follows the liveness keys (failing members whose key is gone), and
//!   publishes shard maps fenced by the lease revision.
//!
//! Only the leader reads the liveness keys, so the control plane's deliveries grow with the
//! node count, not its square: members see the records, which change on joins, leaves and
//! failures only.
//!
//! They live in `manager/view.rs`, `manager/membership.rs`, `manager/leader.rs` and
//! `manager/liveness.rs`; this file holds the public type, the shared state and joining.

mod failover;
mod leader;
mod liveness;
mod membership;
mod view;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use aether_nats::permissions::Refusal;
use async_nats::jetstream::kv::{self, Operation};
use futures::StreamExt;
use tokio::sync::{Notify, broadcast};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::ClusterConfig;
use crate::error::ClusterError;
use crate::events::{ClusterEvent, ClusterEvents};
use crate::hash::{ShardId, shard_for};
use crate::kv::{Bucket, WriteError, whole_seconds};
use crate::map::{ShardMap, plan_between};
use crate::metrics::Metrics;
use crate::placement::{ConsistentHashPlacement, PlacementStrategy};
use crate::record::{ClusterSettings, LeaseRecord, NodeRecord, NodeStatus, decode, encode, now_ms};
use crate::refusals::{Guard, Scope};

/// Bucket key of the cluster's fixed settings.
pub const KEY_CONFIG: &str = "config";
/// Bucket key of the leader lease.
pub const KEY_LEADER: &str = "leader";
/// Bucket key of the shard map.
pub const KEY_SHARD_MAP: &str = "shardmap";
/// Prefix of the node record keys (`nodes.<node id>`).
pub const KEY_NODES_PREFIX: &str = "nodes.";
/// Prefix of the liveness keys (`alive.<node id>`), renewed by every heartbeat with the failure
/// timeout as TTL and followed by the leader only.
pub const KEY_ALIVE_PREFIX: &str = "alive.";
/// Prefix of the always-on marks: `remember.<type token>.<actor token>` (empty value) keeps that
/// actor active on its owner (see `ClusterActors::remember`).
pub const KEY_REMEMBER_PREFIX: &str = "remember.";

/// The leader as this node sees it in the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    /// The lease holder.
    pub node_id: String,
    /// Its fencing term.
    pub term: u64,
}

#[derive(Debug, Default)]
struct View {
    members: BTreeMap<String, NodeRecord>,
    leader: Option<LeaderInfo>,
    map: Option<Arc<ShardMap>>,
    /// Highest bucket revision applied.
    revision: u64,
}

#[derive(Debug, Clone, Copy)]
struct HeldLease {
    term: u64,
    revision: u64,
    valid_until: Instant,
}

#[derive(Debug)]
struct Inner {
    config: ClusterConfig,
    client: async_nats::Client,
    bucket: Mutex<Option<Bucket>>,
    view: RwLock<View>,
    view_changed: Notify,
    lease: Mutex<Option<HeldLease>>,
    events: broadcast::Sender<ClusterEvent>,
    membership_changed: Notify,
    leader_gone: Notify,
    load: AtomicU64,
    /// Set by `mark_leaving`: the record says `leaving`, so the leader moves this node's shards.
    leaving: std::sync::atomic::AtomicBool,
    /// Wakes the heartbeat to write the record now (after a status change).
    beat_now: Notify,
    /// Revision of this node's record (`nodes.<id>`); 0 when it has none.
    record_revision: AtomicU64,
    /// Revision of this node's liveness key (`alive.<id>`).
    alive_revision: AtomicU64,
    /// Set when the watch shows this node's own record gone (failed by a leader or a prober
    /// that found it silent, or deleted) or not as this node would write it, while it runs: the
    /// heartbeat writes it again.
    record_stale: std::sync::atomic::AtomicBool,
    /// The members' current loads, from their liveness keys (kept while this node leads).
    live_loads: Mutex<HashMap<String, u64>>,
    /// An undecodable lease value (revision) and when this node first saw it.
    garbage_lease: Mutex<Option<(u64, Instant)>>,
    incarnation: String,
    started_at_ms: u64,
    cancel: CancellationToken,
    metrics: Metrics,
    /// With `ClusterConfig::permissions`: the server's refusals that concern a request end it.
    guard: Option<Arc<Guard>>,
}

/// One node of an Aether cluster: joins, heartbeats, competes for leadership, and (while it
/// leads) publishes the shard map. See docs/cluster.md for the protocol.
///
/// ```no_run
/// # async fn demo(client: async_nats::Client) -> Result<(), aether_cluster::ClusterError> {
/// use aether_cluster::{ClusterConfig, ClusterManager};
/// use futures::StreamExt;
///
/// let node = ClusterManager::new(client, ClusterConfig::new("orders"))?;
/// let mut events = node.watch();
/// node.start().await?;
/// if node.is_leader() {
///     println!("leading");
/// }
/// if let Some(map) = node.shard_map() {
///     println!("order-42 lives on {:?}", map.node_for_actor("order-42"));
/// }
/// while let Some(event) = events.next().await {
///     println!("{event:?}");
/// #   break;
/// }
/// node.leave().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ClusterManager {
    inner: Arc<Inner>,
    state: Mutex<State>,
}

#[derive(Debug)]
enum State {
    New,
    Starting,
    Running(Vec<JoinHandle<()>>),
    Stopped,
}

impl Drop for ClusterManager {
    /// Dropping a started node without [`leave`](Self::leave) stops its tasks; the cluster sees
    /// it as failed once its record expires.
    fn drop(&mut self) {
        self.inner.cancel.cancel();
    }
}

/// A step of [`Inner::join`].
type JoinStep<'a, T> = Pin<Box<dyn Future<Output = Result<T, ClusterError>> + Send + 'a>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ClusterManager {
    /// A node for `config` on `client`'s NATS (with JetStream). Checks the configuration; does no
    /// I/O until [`start`](Self::start).
    pub fn new(client: async_nats::Client, config: ClusterConfig) -> Result<Self, ClusterError> {
        config.validate()?;
        let (events, _) = broadcast::channel(1024);
        let metrics = Metrics::new(&config.cluster_name, &config.node_id);
        let guard = config
            .permissions
            .clone()
            .map(|watch| Arc::new(Guard::new(watch, &client, &config.cluster_name)));
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                client,
                bucket: Mutex::new(None),
                view: RwLock::new(View::default()),
                view_changed: Notify::new(),
                lease: Mutex::new(None),
                events,
                membership_changed: Notify::new(),
                leader_gone: Notify::new(),
                load: AtomicU64::new(0),
                leaving: std::sync::atomic::AtomicBool::new(false),
                beat_now: Notify::new(),
                record_revision: AtomicU64::new(0),
                alive_revision: AtomicU64::new(0),
                record_stale: std::sync::atomic::AtomicBool::new(false),
                live_loads: Mutex::new(HashMap::new()),
                garbage_lease: Mutex::new(None),
                incarnation: uuid::Uuid::new_v4().to_string(),
                started_at_ms: now_ms(),
                cancel: CancellationToken::new(),
                metrics,
                guard,
            }),
            state: Mutex::new(State::New),
        })
    }

    /// Joins the cluster: opens (or creates) its bucket, checks the shard count, writes this
    /// node's liveness key and record, loads the current members, lease and map, and starts the
    /// node's tasks.
    ///
    /// Fails with [`ClusterError::ShardCountMismatch`] if the cluster has another shard count,
    /// and [`ClusterError::NodeIdInUse`] if another live process holds this node id (after
    /// waiting up to twice the failure timeout for a stale record of a crashed process to expire).
    /// With a permission watch ([`ClusterConfig::permissions`]), a subject the user may not use
    /// fails it at once with [`ClusterError::PermissionDenied`] naming the subject.
    pub async fn start(&self) -> Result<(), ClusterError> {
        let inner = &self.inner;
        {
            let mut state = lock(&self.state);
            match *state {
                State::New => *state = State::Starting,
                State::Starting | State::Running(_) => {
                    return Err(ClusterError::AlreadyStarted {
                        node_id: inner.config.node_id.clone(),
                    });
                }
                State::Stopped => return Err(inner.not_running()),
            }
        }
        match inner.join().await {
            Ok(tasks) => {
                *lock(&self.state) = State::Running(tasks);
                let cfg = &inner.config;
                tracing::info!(cluster = %cfg.cluster_name, node = %cfg.node_id, "joined the cluster");
                Ok(())
            }
            Err(e) => {
                // Leave nothing behind: a record of a node that never runs would get shards.
                let bucket = lock(&inner.bucket).take();
                if let Some(bucket) = bucket {
                    let _ = inner.delete_record(&bucket).await;
                }
                *lock(&self.state) = State::New;
                Err(e)
            }
        }
    }

    /// Leaves gracefully: gives up the lease if this node holds it (so another node takes over
    /// at once), deletes this node's record (others see [`ClusterEvent::MemberLeft`] and the
    /// leader moves its shards) and then its liveness key, and stops the node's tasks. If deleting the record fails (NATS
    /// unreachable), the error says so and `leave` may be called again to retry; otherwise the
    /// record expires after the failure timeout and the node is reported failed.
    pub async fn leave(&self) -> Result<(), ClusterError> {
        let inner = &self.inner;
        let state = std::mem::replace(&mut *lock(&self.state), State::Stopped);
        match state {
            State::Running(tasks) => {
                inner.cancel.cancel();
                for task in tasks {
                    // A task that panicked has nothing left to clean up.
                    let _ = task.await;
                }
            }
            State::Stopped if inner.record_revision.load(Ordering::SeqCst) != 0 => {} // retry the delete
            other => {
                *lock(&self.state) = other;
                return Err(inner.not_running());
            }
        }
        let Some(bucket) = lock(&inner.bucket).clone() else {
            return Err(inner.not_running());
        };
        inner.delete_record(&bucket).await?;
        {
            let mut view = inner.write_view();
            view.members.clear();
            view.leader = None;
        }
        inner.emit(ClusterEvent::MemberLeft {
            node_id: inner.config.node_id.clone(),
        });
        tracing::info!(cluster = %inner.config.cluster_name, node = %inner.config.node_id, "left the cluster");
        Ok(())
    }

    /// Starts a graceful leave without stopping: the record says [`NodeStatus::Leaving`] from
    /// the next heartbeat on (written at once), and the leader moves this node's shards to the
    /// other members. Call [`leave`](Self::leave) once the shards are handed off.
    pub fn mark_leaving(&self) {
        self.inner.leaving.store(true, Ordering::SeqCst);
        self.inner.beat_now.notify_one();
    }

    /// Whether [`mark_leaving`](Self::mark_leaving) was called.
    pub fn is_leaving(&self) -> bool {
        self.inner.leaving.load(Ordering::SeqCst)
    }

    /// A UUID new for every start of this process's node (its record's `incarnation`).
    pub fn incarnation(&self) -> &str {
        &self.inner.incarnation
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.config.node_id
    }

    /// The cluster name.
    pub fn cluster_name(&self) -> &str {
        &self.inner.config.cluster_name
    }

    /// The configuration.
    pub fn config(&self) -> &ClusterConfig {
        &self.inner.config
    }

    /// Whether this node holds a lease it may act on right now. Turns false as soon as the lease
    /// could have lapsed, even before the node's tasks run again (after a pause, say).
    pub fn is_leader(&self) -> bool {
        self.inner.valid_lease().is_some()
    }

    /// This node's fencing term while it leads.
    pub fn term(&self) -> Option<u64> {
        self.inner.valid_lease().map(|l| l.term)
    }

    /// The leader as this node last saw it in the bucket.
    pub fn leader(&self) -> Option<LeaderInfo> {
        self.inner.read_view().leader.clone()
    }

    /// The cluster's bucket, once joined.
    pub(crate) fn bucket(&self) -> Option<Bucket> {
        lock(&self.inner.bucket).clone()
    }

    /// The members this node sees (records alive in the bucket), in id order.
    pub fn members(&self) -> Vec<NodeRecord> {
        self.inner.read_view().members.values().cloned().collect()
    }

    /// The shard map this node has (none before the first leader publishes one).
    pub fn shard_map(&self) -> Option<Arc<ShardMap>> {
        self.inner.read_view().map.clone()
    }

    /// The shard `actor_id` belongs to.
    pub fn shard_for(&self, actor_id: &str) -> ShardId {
        shard_for(actor_id, self.inner.config.shard_count)
    }

    /// The node the current map gives `actor_id`'s shard.
    pub fn node_for_actor(&self, actor_id: &str) -> Option<String> {
        self.shard_map()
            .and_then(|m| m.node_for_actor(actor_id).map(str::to_owned))
    }

    /// The shards the current map gives this node.
    pub fn shards_owned(&self) -> Vec<ShardId> {
        self.shard_map()
            .map(|m| m.shards_of(self.node_id()))
            .unwrap_or_default()
    }

    /// Sets the load this node reports from the next heartbeat on (in its liveness key, which
    /// the leader reads for placement; the record keeps the load of its last write).
    pub fn set_load(&self, load: u64) {
        self.inner.load.store(load, Ordering::Relaxed);
    }

    /// A stream of membership, leadership and shard-map changes from now on. Call it before
    /// [`start`](Self::start) to also see the initial members, lease and map as events.
    pub fn watch(&self) -> ClusterEvents {
        ClusterEvents::new(self.inner.events.subscribe())
    }

    /// The permission guard, with `ClusterConfig::permissions`.
    pub(crate) fn guard(&self) -> Option<&Arc<Guard>> {
        self.inner.guard.as_ref()
    }
}

impl Inner {
    /// The I/O part of `start`: bucket, settings, record, view, tasks.
    async fn join(self: &Arc<Self>) -> Result<Vec<JoinHandle<()>>, ClusterError> {
        if self.cancel.is_cancelled() {
            return Err(self.not_running());
        }
        let cfg = &self.config;
        let js = async_nats::jetstream::new(self.client.clone());
        let context = "opening the cluster bucket";
        let bucket = self
            .joining(
                context,
                Box::pin(async {
                    Bucket::open(js, &cfg.cluster_name, cfg.replicas, self.guard.clone())
                        .await
                        .map_err(|source| self.setup(context, source))
                }),
            )
            .await?;
        let context = "checking the cluster bucket";
        self.joining(
            context,
            Box::pin(async {
                bucket
                    .check_ttl_support()
                    .await
                    .map_err(|source| self.setup(context, source))
            }),
        )
        .await?;
        self.joining(
            "checking the cluster settings",
            Box::pin(self.check_settings(&bucket)),
        )
        .await?;
        *lock(&self.bucket) = Some(bucket.clone());
        let alive = self
            .joining(
                "writing this node's liveness key",
                Box::pin(self.create_alive(&bucket)),
            )
            .await?;
        self.alive_revision.store(alive, Ordering::SeqCst);
        let revision = self
            .joining(
                "writing this node's record",
                Box::pin(self.create_record(&bucket)),
            )
            .await?;
        self.record_revision.store(revision, Ordering::SeqCst);
        let watch = self
            .joining("loading the cluster state", Box::pin(self.load(&bucket)))
            .await?;
        Ok(vec![
            tokio::spawn(Arc::clone(self).watch_task(bucket.clone(), watch)),
            tokio::spawn(Arc::clone(self).heartbeat_task(bucket.clone(), alive)),
            tokio::spawn(Arc::clone(self).leader_task(bucket)),
        ])
    }

    fn read_view(&self) -> std::sync::RwLockReadGuard<'_, View> {
        self.view.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_view(&self) -> std::sync::RwLockWriteGuard<'_, View> {
        self.view.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn valid_lease(&self) -> Option<HeldLease> {
        lock(&self.lease).filter(|l| Instant::now() < l.valid_until)
    }

    fn emit(&self, event: ClusterEvent) {
        // No receivers is fine.
        let _ = self.events.send(event);
    }

    fn not_running(&self) -> ClusterError {
        ClusterError::NotRunning {
            node_id: self.config.node_id.clone(),
        }
    }

    fn setup(&self, context: &str, source: crate::error::BoxError) -> ClusterError {
        ClusterError::Setup {
            cluster: self.config.cluster_name.clone(),
            context: context.to_owned(),
            source,
        }
    }

    /// `step` of joining (`context`), ended at once, with a permission watch, by a refusal of
    /// anything of the bucket. Boxed: the steps are large, and the race would hold them twice.
    async fn joining<T>(&self, context: &str, step: JoinStep<'_, T>) -> Result<T, ClusterError> {
        match &self.guard {
            None => step.await,
            Some(guard) => guard
                .watch(|r| guard.concerns_bucket(r, Scope::Join), step)
                .await
                .unwrap_or_else(|refusal| Err(self.denied(context, refusal))),
        }
    }

    /// Counts and logs a request of a running node's task (`what`: `"heartbeat"`, ...) that the
    /// server refused; the task tries again at its usual cadence.
    fn note_refused(&self, counter: &metrics::Counter, what: &str, refusal: &Refusal) {
        counter.increment(1);
        tracing::warn!(
            cluster = %self.config.cluster_name,
            node = %self.config.node_id,
            what,
            operation = refusal.operation.as_str(),
            subject = %refusal.subject,
            "the NATS server refused this node's {what} request for the user's permissions ({refusal}); retrying at the usual pace"
        );
    }

    /// The error of a request the server refused while `context`.
    fn denied(&self, context: &str, refusal: Refusal) -> ClusterError {
        ClusterError::denied(
            refusal,
            format!("{context} (cluster {})", self.config.cluster_name),
        )
    }

    fn nats(&self, context: &str, e: WriteError) -> ClusterError {
        if let WriteError::Refused(refusal) = e {
            return self.denied(context, refusal);
        }
        ClusterError::Nats {
            cluster: self.config.cluster_name.clone(),
            context: context.to_owned(),
            source: match e {
                WriteError::Other(source) => source,
                other => other.to_string().into(),
            },
        }
    }

    fn record_key(&self) -> String {
        format!("{KEY_NODES_PREFIX}{}", self.config.node_id)
    }

    fn alive_key(&self) -> String {
        format!("{KEY_ALIVE_PREFIX}{}", self.config.node_id)
    }

    fn alive(&self) -> crate::record::AliveRecord {
        crate::record::AliveRecord {
            incarnation: self.incarnation.clone(),
            load: self.load.load(Ordering::Relaxed),
        }
    }

    fn record(&self) -> NodeRecord {
        NodeRecord {
            id: self.config.node_id.clone(),
            metadata: self.config.metadata.clone(),
            capacity: self.config.capacity,
            load: self.load.load(Ordering::Relaxed),
            status: if self.leaving.load(Ordering::SeqCst) {
                NodeStatus::Leaving
            } else {
                NodeStatus::Active
            },
            started_at_ms: self.started_at_ms,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            shard_count: self.config.shard_count,
            incarnation: self.incarnation.clone(),
        }
    }

    fn failure_ttl(&self) -> Duration {
        Duration::from_secs(whole_seconds(self.config.failure_timeout))
    }

    fn lease_ttl(&self) -> Duration {
        Duration::from_secs(whole_seconds(self.config.lease_ttl))
    }

    /// Writes the cluster's settings if this is its first node, else checks them.
    async fn check_settings(&self, bucket: &Bucket) -> Result<(), ClusterError> {
        let cfg = &self.config;
        let mine = ClusterSettings {
            shard_count: cfg.shard_count,
        };
        match bucket.create(KEY_CONFIG, encode(&mine), None).await {
            Ok(_) => return Ok(()),
            Err(WriteError::Exists) => {}
            Err(WriteError::Refused(refusal)) => {
                return Err(self.denied("writing the cluster settings", refusal));
            }
            Err(e) => {
                return Err(self.setup(
                    "writing the cluster settings",
                    Box::new(std::io::Error::other(e.to_string())),
                ));
            }
        }
        let context = "reading the cluster settings";
        let entry = bucket.entry(KEY_CONFIG).await.map_err(|e| match e {
            WriteError::Refused(refusal) => self.denied(context, refusal),
            WriteError::Other(source) => self.setup(context, source),
            other => self.setup(context, other.to_string().into()),
        })?;
        let Some(entry) = entry.filter(|e| e.operation == Operation::Put) else {
            return Err(self.setup(
                "reading the cluster settings",
                "the settings vanished while joining".into(),
            ));
        };
        let theirs: ClusterSettings = decode(&entry.value).map_err(|e| ClusterError::Corrupt {
            cluster: cfg.cluster_name.clone(),
            key: KEY_CONFIG.into(),
            reason: e.to_string(),
        })?;
        if theirs.shard_count != cfg.shard_count {
            return Err(ClusterError::ShardCountMismatch {
                cluster: cfg.cluster_name.clone(),
                cluster_shards: theirs.shard_count,
                configured: cfg.shard_count,
            });
        }
        Ok(())
    }
}
