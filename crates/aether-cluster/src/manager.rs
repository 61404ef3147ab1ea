//! [`ClusterManager`]: one node's membership, election and shard-map tasks.
//!
//! Three tasks per node, all stopped by one cancellation token:
//! - the **watcher** keeps this node's view of the bucket (members, lease, map) and turns changes
//!   into [`ClusterEvent`]s;
//! - the **heartbeat** renews the node's record (revision-checked, with the failure timeout as
//!   its TTL) and re-creates it if it expired while the node was paused;
//! - the **leader** task competes for the lease, renews it while it holds it, steps down before
//!   the lease can lapse, and publishes shard maps fenced by the lease revision.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

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

/// Bucket key of the cluster's fixed settings.
pub const KEY_CONFIG: &str = "config";
/// Bucket key of the leader lease.
pub const KEY_LEADER: &str = "leader";
/// Bucket key of the shard map.
pub const KEY_SHARD_MAP: &str = "shardmap";
/// Prefix of the node record keys (`nodes.<node id>`).
pub const KEY_NODES_PREFIX: &str = "nodes.";

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
    record_revision: AtomicU64,
    /// The oldest heartbeat revision the watch has not delivered yet, and when it was written.
    canary: Mutex<Option<(u64, Instant)>>,
    /// An undecodable lease value (revision) and when this node first saw it.
    garbage_lease: Mutex<Option<(u64, Instant)>>,
    incarnation: String,
    started_at_ms: u64,
    cancel: CancellationToken,
    metrics: Metrics,
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
                record_revision: AtomicU64::new(0),
                canary: Mutex::new(None),
                garbage_lease: Mutex::new(None),
                incarnation: uuid::Uuid::new_v4().to_string(),
                started_at_ms: now_ms(),
                cancel: CancellationToken::new(),
                metrics,
            }),
            state: Mutex::new(State::New),
        })
    }

    /// Joins the cluster: opens (or creates) its bucket, checks the shard count, writes this
    /// node's record, loads the current members, lease and map, and starts the node's tasks.
    ///
    /// Fails with [`ClusterError::ShardCountMismatch`] if the cluster has another shard count,
    /// and [`ClusterError::NodeIdInUse`] if another live process holds this node id (after
    /// waiting up to twice the failure timeout for a stale record of a crashed process to expire).
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
    /// leader moves its shards), and stops the node's tasks. If deleting the record fails (NATS
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

    /// Sets the load this node reports in its record from the next heartbeat on.
    pub fn set_load(&self, load: u64) {
        self.inner.load.store(load, Ordering::Relaxed);
    }

    /// A stream of membership, leadership and shard-map changes from now on. Call it before
    /// [`start`](Self::start) to also see the initial members, lease and map as events.
    pub fn watch(&self) -> ClusterEvents {
        ClusterEvents::new(self.inner.events.subscribe())
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
        let bucket = Bucket::open(js, &cfg.cluster_name, cfg.replicas)
            .await
            .map_err(|source| self.setup("opening the cluster bucket", source))?;
        bucket
            .check_ttl_support()
            .await
            .map_err(|source| self.setup("checking the cluster bucket", source))?;
        self.check_settings(&bucket).await?;
        *lock(&self.bucket) = Some(bucket.clone());
        let revision = self.create_record(&bucket).await?;
        self.record_revision.store(revision, Ordering::SeqCst);
        let watch = self.load(&bucket).await?;
        Ok(vec![
            tokio::spawn(Arc::clone(self).watch_task(bucket.clone(), watch)),
            tokio::spawn(Arc::clone(self).heartbeat_task(bucket.clone(), revision)),
            tokio::spawn(Arc::clone(self).leader_task(bucket)),
        ])
    }

    /// Deletes this incarnation's record (a `DEL` marker), if it is there.
    async fn delete_record(&self, bucket: &Bucket) -> Result<(), ClusterError> {
        let key = self.record_key();
        let mut revision = self.record_revision.load(Ordering::SeqCst);
        for _ in 0..3 {
            if revision == 0 {
                return Ok(()); // never written, or already deleted
            }
            match bucket.delete(&key, revision).await {
                Ok(_) => {
                    self.record_revision.store(0, Ordering::SeqCst);
                    return Ok(());
                }
                Err(WriteError::WrongRevision | WriteError::Exists) => {
                    revision = self
                        .own_record_revision(bucket)
                        .await
                        .map_err(|e| self.nats("reading this node's record", e))?
                        .unwrap_or(0);
                }
                Err(e) => return Err(self.nats("deleting this node's record", e)),
            }
        }
        Err(self.nats(
            "deleting this node's record",
            WriteError::Other("its revision kept changing".into()),
        ))
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

    fn nats(&self, context: &str, e: WriteError) -> ClusterError {
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

    fn record(&self) -> NodeRecord {
        NodeRecord {
            id: self.config.node_id.clone(),
            metadata: self.config.metadata.clone(),
            capacity: self.config.capacity,
            load: self.load.load(Ordering::Relaxed),
            status: NodeStatus::Active,
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
            Err(e) => {
                return Err(self.setup(
                    "writing the cluster settings",
                    Box::new(std::io::Error::other(e.to_string())),
                ));
            }
        }
        let entry = bucket
            .kv
            .entry(KEY_CONFIG)
            .await
            .map_err(|e| self.setup("reading the cluster settings", Box::new(e)))?;
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

    /// Creates this node's record, waiting out a stale one of a crashed process with the same id.
    async fn create_record(&self, bucket: &Bucket) -> Result<u64, ClusterError> {
        let key = self.record_key();
        let started = Instant::now();
        let patience = self.failure_ttl() * 2;
        loop {
            match bucket
                .create(&key, encode(&self.record()), Some(self.failure_ttl()))
                .await
            {
                Ok(revision) => return Ok(revision),
                Err(WriteError::Exists | WriteError::WrongRevision)
                    if started.elapsed() < patience =>
                {
                    // Our own record, from an earlier start whose reply was lost?
                    if let Ok(Some(revision)) = self.own_record_revision(bucket).await {
                        return Ok(revision);
                    }
                    tracing::warn!(node = %self.config.node_id, "a live record holds this node id; waiting for it to expire");
                    tokio::time::sleep(self.config.heartbeat_interval).await;
                }
                Err(WriteError::Exists | WriteError::WrongRevision) => {
                    return Err(ClusterError::NodeIdInUse {
                        cluster: self.config.cluster_name.clone(),
                        node_id: self.config.node_id.clone(),
                        waited: started.elapsed(),
                    });
                }
                Err(e) => return Err(self.nats("writing this node's record", e)),
            }
        }
    }

    /// The revision of this incarnation's record, if it is there (a write whose ack was lost may
    /// still have landed).
    async fn own_record_revision(&self, bucket: &Bucket) -> Result<Option<u64>, WriteError> {
        let entry = bucket
            .kv
            .entry(self.record_key())
            .await
            .map_err(|e| WriteError::Other(Box::new(e)))?;
        Ok(entry
            .filter(|e| e.operation == Operation::Put)
            .and_then(|e| {
                decode::<NodeRecord>(&e.value)
                    .ok()
                    .filter(|rec| rec.incarnation == self.incarnation)
                    .map(|_| e.revision)
            }))
    }

    /// (Re)loads the whole view from the bucket (last value per key) and returns the watch that
    /// continues from there. Members that vanished since the previous view are reported failed.
    async fn resync(&self, bucket: &Bucket) -> Result<kv::Watch, ClusterError> {
        // The load ends at the entry marked `seen_current`, so the bucket must hold at least
        // one: `config`, which nobody deletes -- but if someone did, write it back.
        self.check_settings(bucket).await?;
        self.load(bucket).await
    }

    /// Loads the whole view (see [`resync`](Self::resync)); `config` is known to exist.
    async fn load(&self, bucket: &Bucket) -> Result<kv::Watch, ClusterError> {
        let mut watch = bucket
            .kv
            .watch_with_history(">")
            .await
            .map_err(|e| self.setup("watching the cluster bucket", Box::new(e)))?;
        let mut latest: BTreeMap<String, kv::Entry> = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let next = tokio::time::timeout_at(deadline, watch.next()).await;
            match next {
                Ok(Some(Ok(entry))) => {
                    let done = entry.seen_current;
                    latest.insert(entry.key.clone(), entry);
                    if done {
                        break;
                    }
                }
                Ok(Some(Err(e))) => {
                    return Err(self.setup("loading the cluster state", Box::new(e)));
                }
                Ok(None) => {
                    return Err(self.setup("loading the cluster state", "the watch ended".into()));
                }
                Err(_) => {
                    return Err(
                        self.setup("loading the cluster state", "timed out after 10s".into())
                    );
                }
            }
        }
        let vanished: Vec<String> = {
            let view = self.read_view();
            view.members
                .keys()
                .filter(|id| {
                    latest
                        .get(&format!("{KEY_NODES_PREFIX}{id}"))
                        .is_none_or(|e| e.operation != Operation::Put)
                })
                .cloned()
                .collect()
        };
        for id in vanished {
            self.write_view().members.remove(&id);
            self.emit(ClusterEvent::MemberFailed { node_id: id });
            self.membership_changed.notify_one();
        }
        if !latest.contains_key(KEY_LEADER) && self.read_view().leader.is_some() {
            self.set_leader(None);
        }
        let mut entries: Vec<kv::Entry> = latest.into_values().collect();
        entries.sort_by_key(|e| e.revision);
        for entry in entries {
            self.apply(entry);
        }
        self.update_member_metrics();
        Ok(watch)
    }

    fn set_leader(&self, leader: Option<LeaderInfo>) {
        let changed = {
            let mut view = self.write_view();
            let changed = view.leader != leader;
            view.leader.clone_from(&leader);
            changed
        };
        if changed {
            let term = leader.as_ref().map_or(0, |l| l.term);
            self.metrics.leader_term.set(term as f64);
            if leader.is_none() {
                self.leader_gone.notify_one();
            }
            self.emit(ClusterEvent::LeaderChanged {
                leader: leader.map(|l| l.node_id),
                term,
            });
        }
    }

    /// Applies one bucket entry to the view and reports what changed.
    fn apply(&self, entry: kv::Entry) {
        {
            let mut view = self.write_view();
            view.revision = view.revision.max(entry.revision);
        }
        let present = entry.operation == Operation::Put;
        let key = entry.key.as_str();
        if key == KEY_LEADER {
            let leader = present
                .then(|| decode::<LeaseRecord>(&entry.value).ok())
                .flatten()
                .map(|l| LeaderInfo {
                    node_id: l.node,
                    term: l.term.unwrap_or(entry.revision),
                });
            self.set_leader(leader);
        } else if key == KEY_SHARD_MAP {
            if !present {
                return;
            }
            let map = match ShardMap::decode(&entry.value) {
                Ok(map) if map.shard_count() != self.config.shard_count => {
                    tracing::warn!(cluster = %self.config.cluster_name, shards = map.shard_count(), "ignoring a shard map with another shard count");
                    return;
                }
                Ok(map) => Arc::new(map),
                Err(e) => {
                    tracing::warn!(cluster = %self.config.cluster_name, error = %e, "ignoring a shard map that does not decode");
                    return;
                }
            };
            let prev = {
                let mut view = self.write_view();
                if view.map.as_ref().is_some_and(|m| m.epoch() >= map.epoch()) {
                    return;
                }
                view.map.replace(Arc::clone(&map))
            };
            let plan = plan_between(prev.as_deref(), &map);
            self.metrics.map_epoch.set(map.epoch() as f64);
            self.metrics
                .shards_owned
                .set(map.shards_of(&self.config.node_id).len() as f64);
            self.emit(ClusterEvent::ShardMapChanged { map, plan });
        } else if let Some(id) = key.strip_prefix(KEY_NODES_PREFIX) {
            // (event, whether placement may change)
            let event = if present {
                let Some(rec) = decode::<NodeRecord>(&entry.value)
                    .ok()
                    .filter(|r| r.id == id)
                else {
                    tracing::warn!(cluster = %self.config.cluster_name, key, "ignoring a node record that does not decode");
                    return;
                };
                let mut view = self.write_view();
                match view.members.insert(id.to_owned(), rec.clone()) {
                    None => Some((ClusterEvent::MemberJoined(rec), true)),
                    Some(old) if old != rec => {
                        let placement = old.status != rec.status || old.capacity != rec.capacity;
                        Some((ClusterEvent::MemberUpdated(rec), placement))
                    }
                    Some(_) => None,
                }
            } else {
                let removed = self.write_view().members.remove(id).is_some();
                let node_id = id.to_owned();
                removed.then_some(match entry.operation {
                    Operation::Delete => (ClusterEvent::MemberLeft { node_id }, true),
                    _ => (ClusterEvent::MemberFailed { node_id }, true),
                })
            };
            if let Some((event, placement)) = event {
                self.update_member_metrics();
                self.emit(event);
                if placement {
                    self.membership_changed.notify_one();
                }
            }
        }
        self.view_changed.notify_waiters();
    }

    fn update_member_metrics(&self) {
        self.metrics
            .members
            .set(self.read_view().members.len() as f64);
    }

    async fn watch_task(self: Arc<Self>, bucket: Bucket, mut watch: kv::Watch) {
        // This node's own heartbeats are the canary: a watch that has not delivered a record
        // this node wrote a while ago is stuck (seen after a NATS server was killed: the ordered
        // consumer neither delivered nor failed), and is replaced.
        let stale_after = (self.config.heartbeat_interval * 3).max(Duration::from_secs(2));
        let mut check = tokio::time::interval(self.config.heartbeat_interval);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let reload = tokio::select! {
                () = self.cancel.cancelled() => return,
                next = watch.next() => match next {
                    Some(Ok(entry)) => {
                        self.apply(entry);
                        false
                    }
                    Some(Err(e)) => {
                        tracing::warn!(cluster = %self.config.cluster_name, error = %e, "cluster watch failed; reloading");
                        true
                    }
                    None => true,
                },
                _ = check.tick() => {
                    let canary = *lock(&self.canary);
                    let stuck = canary.is_some_and(|(revision, written)| {
                        self.read_view().revision < revision && written.elapsed() > stale_after
                    });
                    if stuck {
                        tracing::warn!(cluster = %self.config.cluster_name, "cluster watch stalled; reloading");
                    }
                    stuck
                }
            };
            if !reload {
                continue;
            }
            // Reload everything with a fresh watch (the server may have gone away).
            let mut backoff = Duration::from_millis(100);
            loop {
                if self.cancel.is_cancelled() {
                    return;
                }
                match self.resync(&bucket).await {
                    Ok(w) => {
                        watch = w;
                        *lock(&self.canary) = None;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(cluster = %self.config.cluster_name, error = %e, "reloading the cluster state failed");
                        tokio::select! {
                            () = self.cancel.cancelled() => return,
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
        }
    }

    /// Records a heartbeat write for the watch's liveness check, keeping the oldest write the
    /// watch has not delivered yet.
    fn note_canary(&self, revision: u64) {
        let seen = self.read_view().revision;
        let mut canary = lock(&self.canary);
        if canary.is_none_or(|(r, _)| seen >= r) {
            *canary = Some((revision, Instant::now()));
        }
    }

    async fn heartbeat_task(self: Arc<Self>, bucket: Bucket, mut revision: u64) {
        let key = self.record_key();
        let mut tick = tokio::time::interval(self.config.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate; the record was just written
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let value = encode(&self.record());
            let beat = bucket.update(&key, value.clone(), revision, Some(self.failure_ttl()));
            // Bounded, so one lost ack does not hold up the beats after it (a write that landed
            // anyway is adopted by its incarnation below).
            let beat = tokio::time::timeout(
                self.config.heartbeat_interval.max(Duration::from_secs(1)),
                beat,
            )
            .await
            .unwrap_or_else(|_| {
                Err(WriteError::Other(
                    "no ack within the heartbeat interval".into(),
                ))
            });
            match beat {
                Ok(r) => {
                    revision = r;
                    self.note_canary(r);
                }
                Err(WriteError::WrongRevision | WriteError::Exists) => {
                    match self.own_record_revision(&bucket).await {
                        Ok(Some(r)) => {
                            revision = r; // our last write landed though its ack was lost
                            self.record_revision.store(revision, Ordering::SeqCst);
                            continue;
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(node = %self.config.node_id, error = %e, "heartbeat could not read its record; retrying");
                            continue;
                        }
                    }
                    // The record expired (this node was paused or cut off) or was taken over.
                    match bucket.create(&key, value, Some(self.failure_ttl())).await {
                        Ok(r) => {
                            tracing::warn!(node = %self.config.node_id, "membership record had expired; rejoined");
                            revision = r;
                        }
                        Err(e) => {
                            tracing::error!(node = %self.config.node_id, error = %e, "cannot renew or re-create this node's record")
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(node = %self.config.node_id, error = %e, "heartbeat failed; retrying")
                }
            }
            self.record_revision.store(revision, Ordering::SeqCst);
        }
    }

    async fn leader_task(self: Arc<Self>, bucket: Bucket) {
        let ttl = self.lease_ttl();
        loop {
            if self.cancel.is_cancelled() {
                return;
            }
            // Compete when nobody seems to lead -- or when the view still names this node, which
            // no longer holds a valid lease (it stepped down; the key may linger until its TTL).
            let compete = match &self.read_view().leader {
                None => true,
                Some(l) => l.node_id == self.config.node_id && self.valid_lease().is_none(),
            };
            if compete {
                self.compete(&bucket, ttl).await;
            }
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = self.leader_gone.notified() => {}
                () = tokio::time::sleep(ttl / 3) => {}
            }
        }
    }

    /// One attempt to win the lease; leads until it is lost if the attempt succeeds.
    async fn compete(&self, bucket: &Bucket, ttl: Duration) {
        let sent = Instant::now();
        let lease = LeaseRecord {
            node: self.config.node_id.clone(),
            term: None,
        };
        match bucket.create(KEY_LEADER, encode(&lease), Some(ttl)).await {
            Ok(revision) => {
                let held = HeldLease {
                    term: revision,
                    revision,
                    valid_until: sent + lease_validity(ttl),
                };
                self.lead(bucket, held).await;
            }
            Err(WriteError::Exists | WriteError::WrongRevision) => {
                // A value that is not a lease (written by something else, maybe without a TTL)
                // would block the election forever: write over it -- but only once it has stood
                // for a whole lease TTL, so that a leader whose lease it overwrote has certainly
                // stepped down (its next renewal is refused, and its validity ends within 90 % of
                // the TTL after its last one): never two leaders at once.
                if let Ok(Some(entry)) = bucket.kv.entry(KEY_LEADER).await
                    && entry.operation == Operation::Put
                    && decode::<LeaseRecord>(&entry.value).is_err()
                    && self.garbage_lease_stood(entry.revision, ttl)
                {
                    tracing::warn!(cluster = %self.config.cluster_name, "the leader key holds no lease; replacing it");
                    if let Ok(revision) = bucket
                        .update(KEY_LEADER, encode(&lease), entry.revision, Some(ttl))
                        .await
                    {
                        let held = HeldLease {
                            term: revision,
                            revision,
                            valid_until: sent + lease_validity(ttl),
                        };
                        self.lead(bucket, held).await;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(node = %self.config.node_id, error = %e, "competing for the lease failed")
            }
        }
    }

    /// Whether the undecodable lease at `revision` has been seen for at least `ttl`.
    fn garbage_lease_stood(&self, revision: u64, ttl: Duration) -> bool {
        let mut seen = lock(&self.garbage_lease);
        match *seen {
            Some((r, since)) if r == revision => since.elapsed() >= ttl,
            _ => {
                *seen = Some((revision, Instant::now()));
                false
            }
        }
    }

    /// Gives up leadership: `is_leader()` is false from here on; if the lease may still be this
    /// node's on the server, hands it back (best effort) so others need not wait for its TTL.
    async fn step_down(&self, bucket: &Bucket, held: &HeldLease, reason: &str, hand_back: bool) {
        *lock(&self.lease) = None;
        self.metrics.is_leader.set(0.0);
        tracing::warn!(node = %self.config.node_id, term = held.term, reason, "stepped down");
        self.emit(ClusterEvent::SteppedDown {
            term: held.term,
            reason: reason.to_owned(),
        });
        if hand_back {
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                bucket.delete(KEY_LEADER, held.revision),
            )
            .await;
        }
    }

    /// Holds the lease until it is lost, lapses or the node stops.
    async fn lead(&self, bucket: &Bucket, mut held: HeldLease) {
        let ttl = self.lease_ttl();
        let term = held.term;
        *lock(&self.lease) = Some(held);
        self.metrics.is_leader.set(1.0);
        tracing::info!(node = %self.config.node_id, term, "became leader");
        self.emit(ClusterEvent::BecameLeader { term });

        // Start from the map in force when the lease was won: wait until the view has caught up
        // with the lease's own revision (every earlier map write is before it in the stream).
        let caught_up = tokio::time::timeout_at(held.valid_until, async {
            loop {
                let notified = self.view_changed.notified();
                if self.read_view().revision >= held.revision || self.cancel.is_cancelled() {
                    return;
                }
                tokio::select! {
                    () = notified => {}
                    () = self.cancel.cancelled() => return,
                }
            }
        })
        .await;
        if self.cancel.is_cancelled() {
            self.step_down(bucket, &held, "node stopped", true).await;
            return;
        }
        if caught_up.is_err() {
            self.step_down(
                bucket,
                &held,
                "could not load the cluster state in time",
                true,
            )
            .await;
            return;
        }
        let mut base: Option<Arc<ShardMap>> = self.read_view().map.clone();
        // The highest epoch this leader tried to publish: a write whose ack was lost may have
        // landed, so a retry never reuses its epoch.
        let mut attempted_epoch = 0;
        let mut next_renewal = Instant::now() + renewal_interval(ttl);
        let mut rebalance_at = Some(Instant::now());
        loop {
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => {
                    // Hand the lease back so another node takes over without waiting for the TTL.
                    let valid = Instant::now() < held.valid_until;
                    self.step_down(bucket, &held, "node stopped", valid).await;
                    return;
                }
                () = tokio::time::sleep_until(held.valid_until) => {
                    self.step_down(bucket, &held, "lease not renewed in time", true).await;
                    return;
                }
                () = tokio::time::sleep_until(next_renewal) => {
                    let sent = Instant::now();
                    let lease = LeaseRecord { node: self.config.node_id.clone(), term: Some(term) };
                    let renewal = bucket.update(KEY_LEADER, encode(&lease), held.revision, Some(ttl));
                    // Bounded by the renewal interval (not async-nats's 5 s ack wait), so a lost
                    // ack leaves time for more attempts before the lease's validity ends.
                    let give_up = held.valid_until.min(sent + renewal_interval(ttl));
                    match tokio::time::timeout_at(give_up, renewal).await {
                        Ok(Ok(revision)) => {
                            held.revision = revision;
                            held.valid_until = sent + lease_validity(ttl);
                            next_renewal = sent + renewal_interval(ttl);
                            *lock(&self.lease) = Some(held);
                        }
                        Ok(Err(WriteError::WrongRevision | WriteError::Exists)) => {
                            match self.own_lease_revision(bucket, term).await {
                                // An earlier renewal landed though its ack was lost: adopt it.
                                Ok(Some(revision)) => {
                                    held.revision = revision;
                                    next_renewal = Instant::now() + Duration::from_millis(100);
                                }
                                Ok(None) => {
                                    self.step_down(bucket, &held, "lease lost: it expired or another node holds it", false).await;
                                    return;
                                }
                                Err(e) => {
                                    tracing::warn!(node = %self.config.node_id, error = %e, "reading the lease failed; retrying");
                                    next_renewal = Instant::now() + Duration::from_millis(200).min(renewal_interval(ttl));
                                }
                            }
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(node = %self.config.node_id, error = %e, "lease renewal failed; retrying");
                            next_renewal = Instant::now() + Duration::from_millis(200).min(renewal_interval(ttl));
                        }
                        Err(_) => {
                            tracing::warn!(node = %self.config.node_id, "lease renewal got no ack in time; retrying");
                            next_renewal = Instant::now();
                        }
                    }
                }
                () = self.membership_changed.notified() => {
                    let at = Instant::now() + self.config.rebalance_delay;
                    rebalance_at = Some(rebalance_at.map_or(at, |r| r.min(at)));
                }
                () = tokio::time::sleep_until(rebalance_at.unwrap_or(far)), if rebalance_at.is_some() => {
                    rebalance_at = None;
                    // A map whose ack was lost may still have landed: the view then holds it
                    // (only this leader writes maps in its term), and the next epoch follows it.
                    if let Some(seen) = self.read_view().map.clone()
                        && base.as_ref().is_none_or(|b| seen.epoch() > b.epoch())
                    {
                        base = Some(seen);
                    }
                    match self.rebalance(bucket, &held, base.as_deref(), &mut attempted_epoch).await {
                        Ok(Some(map)) => base = Some(map),
                        Ok(None) => {}
                        Err(RebalanceError::Fenced) => match self.own_lease_revision(bucket, term).await {
                            // The lease moved on only by this node's own renewal whose ack was lost.
                            Ok(Some(revision)) if revision != held.revision => {
                                held.revision = revision;
                                rebalance_at = Some(Instant::now());
                            }
                            Ok(_) => {
                                self.step_down(bucket, &held, "the server refused a shard map: the lease moved on", false).await;
                                return;
                            }
                            Err(e) => {
                                tracing::warn!(node = %self.config.node_id, error = %e, "reading the lease failed; retrying");
                                rebalance_at = Some(Instant::now() + Duration::from_millis(200));
                            }
                        },
                        Err(RebalanceError::Other(e)) => {
                            tracing::warn!(node = %self.config.node_id, error = %e, "publishing the shard map failed; retrying");
                            rebalance_at = Some(Instant::now() + Duration::from_millis(500));
                        }
                    }
                }
            }
        }
    }

    /// The revision of this node's lease for `term`, if it is still there.
    async fn own_lease_revision(
        &self,
        bucket: &Bucket,
        term: u64,
    ) -> Result<Option<u64>, WriteError> {
        let entry = bucket
            .kv
            .entry(KEY_LEADER)
            .await
            .map_err(|e| WriteError::Other(Box::new(e)))?;
        Ok(entry
            .filter(|e| e.operation == Operation::Put)
            .and_then(|e| {
                let lease: LeaseRecord = decode(&e.value).ok()?;
                let their_term = lease.term.unwrap_or(e.revision);
                (lease.node == self.config.node_id && their_term == term).then_some(e.revision)
            }))
    }

    /// Computes the map for the current members and publishes it if it differs from `base`.
    async fn rebalance(
        &self,
        bucket: &Bucket,
        held: &HeldLease,
        base: Option<&ShardMap>,
        attempted_epoch: &mut u64,
    ) -> Result<Option<Arc<ShardMap>>, RebalanceError> {
        let cfg = &self.config;
        let members: Vec<NodeRecord> = self
            .read_view()
            .members
            .values()
            .filter(|m| m.status == NodeStatus::Active)
            .cloned()
            .collect();
        let mut owners = if members.is_empty() {
            Vec::new()
        } else {
            cfg.placement.assign(cfg.shard_count, &members, base)
        };
        let valid = if members.is_empty() {
            owners.is_empty()
        } else {
            owners.len() == cfg.shard_count as usize
                && owners.iter().all(|o| members.iter().any(|m| *m.id == **o))
        };
        if !valid {
            tracing::error!(strategy = ?cfg.placement, "placement strategy returned an invalid assignment; using consistent hashing");
            owners = ConsistentHashPlacement::default().assign(cfg.shard_count, &members, base);
        }
        if base.is_some_and(|b| b.owners() == owners.as_slice()) {
            return Ok(None);
        }
        let Some(epoch) = base
            .map_or(0, ShardMap::epoch)
            .max(*attempted_epoch)
            .checked_add(1)
        else {
            return Err(RebalanceError::Other(
                "the shard map epoch is exhausted (someone wrote epoch u64::MAX)".into(),
            ));
        };
        *attempted_epoch = epoch;
        let map = Arc::new(ShardMap::new(
            epoch,
            held.term,
            cfg.node_id.as_str(),
            cfg.shard_count,
            owners,
        ));
        let write = bucket.fenced_put(
            KEY_SHARD_MAP,
            map.encode().into(),
            KEY_LEADER,
            held.revision,
        );
        match tokio::time::timeout_at(held.valid_until, write).await {
            Ok(Ok(_)) => {
                let moved = base.map_or(map.owners().len(), |b| b.plan_to(&map).len());
                self.metrics.rebalances.increment(1);
                self.metrics.shards_moved.increment(moved as u64);
                tracing::info!(node = %cfg.node_id, epoch, term = held.term, moved, members = members.len(), "published a shard map");
                Ok(Some(map))
            }
            Ok(Err(WriteError::WrongRevision)) => Err(RebalanceError::Fenced),
            Ok(Err(e)) => Err(RebalanceError::Other(e.to_string())),
            Err(_) => Err(RebalanceError::Other("timed out".into())),
        }
    }
}

/// How long a lease may be acted on after the renewal that was *sent* at the start: 90 % of the
/// TTL. The server removes it no earlier than the TTL after it stored the write, which is after
/// the send, so the node stops acting before anyone else can win the lease.
fn lease_validity(ttl: Duration) -> Duration {
    ttl * 9 / 10
}

/// How often the leader renews: a fifth of the TTL, so it keeps the lease through an outage of
/// up to 70 % of the TTL (JetStream's stream-leader election, for one).
fn renewal_interval(ttl: Duration) -> Duration {
    ttl / 5
}

enum RebalanceError {
    Fenced,
    Other(String),
}
