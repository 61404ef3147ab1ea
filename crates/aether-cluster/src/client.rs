//! [`ClusterClient`]: calls a cluster's actors from a process that is not one of its nodes (a
//! web server, a batch job, a CLI). It follows the shard map and nothing else, routes each call
//! with a command id to the map's owner, and holds and re-sends it through moves exactly as a
//! node's [`ClusterActors`](crate::ClusterActors) does; it takes no shards, writes nothing to
//! the bucket and never appears among the members. docs/cluster.md, "Clients", is the protocol.

mod route;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use aether_core::Backoff;
use aether_nats::permissions::PermissionWatch;
use arc_swap::ArcSwapOption;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{DEFAULT_CALL_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, check_name};
use crate::error::{BoxError, ClusterError};
use crate::hash::{ShardId, shard_for};
use crate::kv::bucket_name;
use crate::manager::{KEY_CONFIG, KEY_SHARD_MAP};
use crate::map::ShardMap;
use crate::metrics::NodeMetrics;
use crate::node::ClusterActor;
use crate::node::router::Caller;
use crate::node::wire;
use crate::record::{ClusterSettings, decode};
use crate::refusals::{Guard, Scope};
use crate::watch::{BucketWatch, Delivery};

pub use route::ClientActors;

/// Pauses between attempts to watch the map again after the watch failed: doubling from 100 ms
/// to 2 s.
const REWATCH_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));

/// A held call reads the map directly (one direct get) at most this often, in case the watch
/// stalled: a map the watch never delivers still reaches the calls.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// An owner without responders is reported to the nodes at most this often.
const REPORT_AT_MOST_EVERY: Duration = Duration::from_millis(500);

/// A [`ClusterClient`]'s settings. Build with [`ClientConfig::new`] and the chained setters.
///
/// ```
/// use std::time::Duration;
/// use aether_cluster::ClientConfig;
/// let config = ClientConfig::new("bank")
///     .name("web-1")
///     .call_timeout(Duration::from_secs(10));
/// assert_eq!(config.get_name(), "web-1");
/// ```
#[derive(Debug, Clone)]
pub struct ClientConfig {
    cluster_name: String,
    name: String,
    call_timeout: Duration,
    request_timeout: Duration,
    permissions: Option<PermissionWatch>,
}

impl ClientConfig {
    /// Defaults for a client of cluster `cluster_name`, named `client-<uuid>`.
    pub fn new(cluster_name: impl Into<String>) -> Self {
        Self {
            cluster_name: cluster_name.into(),
            name: format!("client-{}", uuid::Uuid::new_v4().simple()),
            call_timeout: DEFAULT_CALL_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            permissions: None,
        }
    }

    /// The client's name in logs and metrics (the `node` label); letters, digits, `-`, `_`, at
    /// most 64. Never seen by the cluster.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// How long a call may be held (no owner serves the actor yet, a move) before it fails with
    /// [`CallError::Unavailable`](crate::CallError::Unavailable); as
    /// [`ClusterConfig::call_timeout`](crate::ClusterConfig::call_timeout).
    pub fn call_timeout(mut self, d: Duration) -> Self {
        self.call_timeout = d;
        self
    }

    /// How long one request to an owner waits for its answer before the call is re-sent (same
    /// command id); as [`ClusterConfig::request_timeout`](crate::ClusterConfig::request_timeout).
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }

    /// Reports the server's permission refusals at once, as
    /// [`ClusterConfig::permissions`](crate::ClusterConfig::permissions) does for a node: a
    /// refused read of the bucket fails [`ClusterClient::connect`] with
    /// [`ClusterError::PermissionDenied`], a refused call ends with
    /// [`CallError::PermissionDenied`](crate::CallError::PermissionDenied). `watch` must be
    /// installed on the connection the client is made with.
    pub fn permissions(mut self, watch: PermissionWatch) -> Self {
        self.permissions = Some(watch);
        self
    }

    /// The cluster name.
    pub fn get_cluster_name(&self) -> &str {
        &self.cluster_name
    }

    /// The client's name.
    pub fn get_name(&self) -> &str {
        &self.name
    }

    /// Checks every value.
    pub fn validate(&self) -> Result<(), ClusterError> {
        check_name("cluster_name", &self.cluster_name)?;
        check_name("name", &self.name)?;
        for (field, d) in [
            ("call_timeout", self.call_timeout),
            ("request_timeout", self.request_timeout),
        ] {
            if d < Duration::from_millis(10) || d > Duration::from_secs(3600) {
                return Err(ClusterError::InvalidConfig {
                    field,
                    reason: format!("must be 10ms..=1h, not {d:?}"),
                });
            }
        }
        Ok(())
    }
}

/// Calls the actors of a cluster without joining it: a process that only calls (a web server,
/// a job, a CLI) takes no shards, so starting and stopping it moves nothing.
///
/// It needs the bucket's read rights and the right to publish calls (the caller's block in
/// docs/security.md); it reads the shard count from the bucket and follows the shard map with
/// one watch of one key.
///
/// ```no_run
/// # use aether_runtime::Actor;
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
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use aether_cluster::{ClientConfig, ClusterClient};
///
/// let nats = async_nats::connect("127.0.0.1:4222").await?;
/// let cluster = ClusterClient::connect(nats, ClientConfig::new("bank")).await?;
/// let accounts = cluster.actors::<Account>();
/// // Runs on whichever node owns acct-42's shard, once, however often it is re-sent.
/// let applied = accounts.ask("acct-42", 100).await?;
/// println!("acct-42 is at version {}", applied.version);
/// cluster.close().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClusterClient {
    inner: Arc<ClientInner>,
}

/// What a client's handles share.
struct ClientInner {
    config: ClientConfig,
    caller: Caller,
    kv: kv::Store,
    guard: Option<Arc<Guard>>,
    shard_count: u32,
    /// The newest map seen (highest epoch).
    map: ArcSwapOption<ShardMap>,
    /// Woken when a newer map is applied.
    map_changed: Notify,
    /// When a held call last read the map directly.
    refreshed: Mutex<Option<Instant>>,
    /// When each owner without responders was last reported to the nodes.
    reported: Mutex<HashMap<String, Instant>>,
    cancel: CancellationToken,
    follower: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for ClusterClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("ClusterClient")
            .field("cluster", &inner.config.cluster_name)
            .field("name", &inner.config.name)
            .field("shard_count", &inner.shard_count)
            .field("map_epoch", &inner.map.load().as_ref().map(|m| m.epoch()))
            .finish_non_exhaustive()
    }
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl ClusterClient {
    /// Opens cluster `config.cluster_name`'s bucket (it must exist: a node has started), reads
    /// its shard count and its current map, and follows the map from then on.
    pub async fn connect(
        client: async_nats::Client,
        config: ClientConfig,
    ) -> Result<Self, ClusterError> {
        config.validate()?;
        let cluster = config.cluster_name.clone();
        let guard = config
            .permissions
            .clone()
            .map(|watch| Arc::new(Guard::new(watch, &client, &cluster)));
        let setup = |context: &str, source: BoxError| ClusterError::Setup {
            cluster: cluster.clone(),
            context: context.to_owned(),
            source,
        };
        let js = jetstream::ContextBuilder::new()
            .timeout(config.request_timeout)
            .build(client.clone());
        let bucket = bucket_name(&cluster);
        let opening = format!(
            "opening the cluster bucket {bucket} (has a node of cluster {cluster} started?)"
        );
        let kv = guarded(&guard, Scope::Stream, &opening, js.get_key_value(&bucket))
            .await?
            .map_err(|e| setup(&opening, Box::new(e)))?;
        let shard_count = {
            let context = "reading the cluster settings";
            let entry = guarded(
                &guard,
                Scope::Key(KEY_CONFIG),
                context,
                kv.entry(KEY_CONFIG),
            )
            .await?
            .map_err(|e| setup(context, Box::new(e)))?
            .filter(|e| e.operation == kv::Operation::Put)
            .ok_or_else(|| setup(context, "the bucket holds no cluster settings".into()))?;
            let settings: ClusterSettings =
                decode(&entry.value).map_err(|e| ClusterError::Corrupt {
                    cluster: cluster.clone(),
                    key: KEY_CONFIG.into(),
                    reason: e.to_string(),
                })?;
            settings.shard_count
        };
        let metrics = NodeMetrics::new(&cluster, &config.name);
        let incarnation = uuid::Uuid::new_v4().simple().to_string();
        let caller = Caller::new(
            client,
            &cluster,
            config.request_timeout,
            guard.clone(),
            metrics,
            &incarnation,
        );
        let inner = Arc::new(ClientInner {
            config,
            caller,
            kv,
            guard,
            shard_count,
            map: ArcSwapOption::empty(),
            map_changed: Notify::new(),
            refreshed: Mutex::new(None),
            reported: Mutex::new(HashMap::new()),
            cancel: CancellationToken::new(),
            follower: Mutex::new(None),
        });
        // The watch delivers the stored map too; read it now as well, so that `connect` returns
        // with the map.
        let watch = inner.watch_map().await?;
        inner.refresh().await?;
        let task = tokio::spawn(ClientInner::follow(
            Arc::downgrade(&inner),
            inner.cancel.clone(),
            watch,
        ));
        *lock(&inner.follower) = Some(task);
        Ok(Self { inner })
    }

    /// The handle that calls actors of type `A` (cheap; as many as wanted).
    pub fn actors<A: ClusterActor>(&self) -> ClientActors<A> {
        ClientActors::new(Arc::clone(&self.inner))
    }

    /// The newest shard map the client has seen.
    pub fn shard_map(&self) -> Option<Arc<ShardMap>> {
        self.inner.map.load_full()
    }

    /// The cluster's shard count (read from its bucket).
    pub fn shard_count(&self) -> u32 {
        self.inner.shard_count
    }

    /// The shard of `actor_id`.
    pub fn shard_for(&self, actor_id: &str) -> ShardId {
        shard_for(actor_id, self.inner.shard_count)
    }

    /// The node that owns `actor_id` in the newest map seen.
    pub fn node_for(&self, actor_id: &str) -> Option<String> {
        self.inner.node_for(actor_id)
    }

    /// The client's settings.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Stops following the map; calls in progress and later end with
    /// [`CallError::Stopped`](crate::CallError::Stopped). Dropping every handle does the same.
    pub async fn close(&self) {
        self.inner.cancel.cancel();
        self.inner.map_changed.notify_waiters();
        let task = lock(&self.inner.follower).take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }
}

impl ClientInner {
    fn node_for(&self, actor_id: &str) -> Option<String> {
        let map = self.map.load();
        map.as_ref()
            .and_then(|m| m.owner(shard_for(actor_id, self.shard_count)))
            .map(str::to_owned)
    }

    /// Tells the nodes (one of them, through the suspect subject's queue group) that `owner`
    /// had no responders, at most every [`REPORT_AT_MOST_EVERY`] per owner: a node checks it and
    /// fails it if its connection is gone (docs/cluster.md, "Fast failover").
    async fn report_suspect(&self, owner: &str) {
        {
            let mut reported = lock(&self.reported);
            let now = Instant::now();
            reported.retain(|_, at| now.duration_since(*at) < REPORT_AT_MOST_EVERY);
            if reported.contains_key(owner) {
                return;
            }
            reported.insert(owner.to_owned(), now);
        }
        let subject = wire::suspect_subject(&self.config.cluster_name);
        if let Err(e) = self
            .caller
            .client()
            .publish(subject, Bytes::from(owner.to_owned()))
            .await
        {
            tracing::debug!(client = %self.config.name, error = %e, "reporting a gone node failed");
        }
    }

    /// A watch of the `shardmap` key: its stored map, then every write.
    async fn watch_map(&self) -> Result<BucketWatch, ClusterError> {
        let context = "watching the shard map";
        guarded(
            &self.guard,
            Scope::Stream,
            context,
            BucketWatch::start(self.caller.client(), &self.kv, &[KEY_SHARD_MAP]),
        )
        .await?
        .map_err(|source| ClusterError::Setup {
            cluster: self.config.cluster_name.clone(),
            context: context.to_owned(),
            source,
        })
    }

    /// Reads the stored map (one direct get, no consumer) and applies it if it is newer.
    async fn refresh(&self) -> Result<(), ClusterError> {
        let context = "reading the shard map";
        let entry = guarded(
            &self.guard,
            Scope::Key(KEY_SHARD_MAP),
            context,
            self.kv.entry(KEY_SHARD_MAP),
        )
        .await?
        .map_err(|e| ClusterError::Nats {
            cluster: self.config.cluster_name.clone(),
            context: context.to_owned(),
            source: Box::new(e),
        })?;
        if let Some(entry) = entry {
            self.apply(&entry);
        }
        *lock(&self.refreshed) = Some(Instant::now());
        Ok(())
    }

    /// [`refresh`](Self::refresh), unless one ran within [`REFRESH_EVERY`]: what a held call
    /// does in case the watch stalled.
    async fn refresh_if_due(&self) {
        let due = lock(&self.refreshed).is_none_or(|at| at.elapsed() >= REFRESH_EVERY);
        if due && let Err(e) = self.refresh().await {
            tracing::debug!(client = %self.config.name, error = %e, "reading the shard map failed");
        }
    }

    /// Takes a map from the bucket if it is newer than the one held; ignores anything else.
    fn apply(&self, entry: &kv::Entry) {
        if entry.operation != kv::Operation::Put {
            return;
        }
        let map = match ShardMap::decode(&entry.value) {
            Ok(map) if map.shard_count() == self.shard_count => map,
            Ok(map) => {
                tracing::warn!(client = %self.config.name, shards = map.shard_count(), "ignoring a shard map with another shard count");
                return;
            }
            Err(e) => {
                tracing::warn!(client = %self.config.name, error = %e, "ignoring a shard map that does not decode");
                return;
            }
        };
        let newer = self
            .map
            .load()
            .as_ref()
            .is_none_or(|held| held.epoch() < map.epoch());
        if newer {
            self.map.store(Some(Arc::new(map)));
            self.map_changed.notify_waiters();
        }
    }

    /// Follows the map: applies every write the watch delivers; when the watch fails (missed
    /// deliveries, silence, its subscription gone), watches again (with a backoff), which
    /// delivers the stored map first, so nothing written meanwhile is missed.
    ///
    /// The task holds the client weakly, so dropping every handle drops the client, whose
    /// `Drop` cancels the task, which drops the watch (its consumer leaves the server 2 s later).
    async fn follow(client: Weak<Self>, cancel: CancellationToken, mut watch: BucketWatch) {
        let mut failures = 0;
        loop {
            let next = tokio::select! {
                () = cancel.cancelled() => return,
                next = watch.next() => next,
            };
            let Some(this) = client.upgrade() else { return };
            match next {
                Ok(Delivery::Entry(entry)) => {
                    failures = 0;
                    this.apply(&entry);
                    continue;
                }
                Ok(Delivery::Idle) => continue,
                Err(e) => {
                    tracing::warn!(client = %this.config.name, error = %e, "the shard map watch failed; watching again");
                }
            }
            drop(this);
            loop {
                failures += 1;
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(REWATCH_BACKOFF.delay(failures)) => {}
                }
                let Some(this) = client.upgrade() else { return };
                match this.watch_map().await {
                    Ok(again) => {
                        watch = again;
                        this.refresh_if_due().await;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(client = %this.config.name, error = %e, "watching the shard map failed; trying again");
                    }
                }
            }
        }
    }
}

/// Runs a request of the bucket, ended at once with a permission watch by a refusal that
/// concerns it (`scope`): the outer error is the refusal, the inner one the request's.
async fn guarded<T>(
    guard: &Option<Arc<Guard>>,
    scope: Scope<'_>,
    context: &str,
    request: impl std::future::Future<Output = T>,
) -> Result<T, ClusterError> {
    match guard {
        None => Ok(request.await),
        Some(guard) => guard
            .watch(|r| guard.concerns_bucket(r, scope), Box::pin(request))
            .await
            .map_err(|refusal| ClusterError::denied(refusal, context)),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
