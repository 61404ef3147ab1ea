//! The event bus across nodes, over core NATS.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use aether_core::{
    BroadcastError, EVENT_STORED, Event, EventBroadcaster, EventStored, Namespace, VersionCache,
};
use aether_nats::permissions::{Operation, PermissionWatch, Refusal};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::local::{EventBus, SubscribeOptions, Subscription};
use crate::pattern::Pattern;

mod remote;

pub(crate) use remote::RemotePart;
use remote::{Interest, Remote};

/// Namespaces whose subject a bus keeps built.
const SUBJECT_CACHE: usize = 1024;

/// First token of every bus subject: events of namespace `ns` travel on `aether.<ns>`.
pub const SUBJECT_PREFIX: &str = "aether";
/// Prefix of the reply subject that names the node that published a message
/// (`_AETHER.node.<node id>`), so a node can skip its own echo. A bus sets it only on messages
/// it could receive back (it has a subscription matching their namespace). It is never replied
/// to; the reply field is used because it is cheap, where a header made every message several
/// times more expensive to send and to parse.
pub const NODE_REPLY_PREFIX: &str = "_AETHER.node";

/// Starting a [`NatsEventBus`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// Subscribing to the bus subjects failed.
    #[error("subscribing to {subject} failed")]
    Subscribe {
        /// The subject.
        subject: String,
        /// The cause.
        #[source]
        source: aether_core::BoxError,
    },
    /// The server refused a subject the call needs for the user's permissions (reported only
    /// with a permission watch, [`NatsBusConfig::permissions`]). Not transient.
    #[error("permission denied: the server refused {operation} to {subject:?}")]
    PermissionDenied {
        /// `"publish"` or `"subscribe"`.
        operation: &'static str,
        /// The refused subject.
        subject: String,
    },
}

impl BusError {
    fn denied(refusal: Refusal) -> Self {
        BusError::PermissionDenied {
            operation: refusal.operation.as_str(),
            subject: refusal.subject,
        }
    }
}

/// How long a subscription waits, after the server confirmed it, for the client to hand over a
/// refusal the server sent before that confirmation (the client reads the refusal first, but
/// reports it on its event task; see [`NatsEventBus::subscribe`]).
const REFUSAL_GRACE: std::time::Duration = std::time::Duration::from_millis(25);

/// How a [`NatsEventBus`] starts (see [`NatsEventBus::with_config`]).
///
/// ```no_run
/// use aether_bus::permissions::PermissionWatch;
/// use aether_bus::{NatsBusConfig, NatsEventBus};
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let watch = PermissionWatch::new();
/// let client = watch
///     .install(async_nats::ConnectOptions::new())
///     .connect("nats://127.0.0.1:4222")
///     .await?;
/// let bus = NatsEventBus::with_config(client, NatsBusConfig::default().permissions(watch)).await?;
/// // A subscription the user may not make fails at once:
/// // BusError::PermissionDenied { operation: "subscribe", subject: "aether.tenant-b" }
/// let refused = bus.subscribe("tenant-b".parse()?).await;
/// # drop(refused);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct NatsBusConfig {
    /// Kept in step with EventStored notifications from other nodes (see
    /// [`NatsEventBus::with_version_cache`]).
    pub version_cache: Option<Arc<dyn VersionCache>>,
    /// The permission watch installed on the bus's connection: subscriptions the server refuses
    /// fail with [`BusError::PermissionDenied`], and publishes to a subject it refused lately
    /// with [`BroadcastError::PermissionDenied`] (see [`NatsEventBus::publish`]).
    pub permissions: Option<PermissionWatch>,
}

impl NatsBusConfig {
    /// Sets the version cache (see the field).
    pub fn version_cache(mut self, cache: Arc<dyn VersionCache>) -> Self {
        self.version_cache = Some(cache);
        self
    }

    /// Sets the permission watch (see the field).
    pub fn permissions(mut self, watch: PermissionWatch) -> Self {
        self.permissions = Some(watch);
        self
    }
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    undecodable: AtomicU64,
}

/// What every remote part of a subscription shares with the bus: how to recognise this node's
/// own messages, the counters, and the version cache to keep in step.
pub(crate) struct Receiving {
    /// Set by [`NatsEventBus::stop`] (and when the bus is dropped) before the token is
    /// cancelled: read on every publish and message, where the token's check takes a lock.
    stopped: AtomicBool,
    /// `_AETHER.node.<node_id>`, the reply subject of this node's messages that it may receive
    /// back itself.
    origin: async_nats::Subject,
    /// The patterns of this bus's NATS subscriptions: a message to a namespace none of them
    /// matches cannot come back, and goes without the reply subject (smaller to send and route).
    interests: ArcSwap<Vec<(u64, Pattern)>>,
    interest_changes: Mutex<()>,
    next_interest: AtomicU64,
    cache: Option<Arc<dyn VersionCache>>,
    counters: Counters,
    metrics: crate::metrics::NatsMetrics,
}

struct Inner {
    client: async_nats::Client,
    permissions: Option<PermissionWatch>,
    node_id: String,
    local: EventBus,
    /// The subjects of namespaces published to (at most [`SUBJECT_CACHE`]), built once: a
    /// fresh one per message would be freed on the client's connection task, another thread.
    subjects: ArcSwap<HashMap<Namespace, async_nats::Subject>>,
    receiving: Arc<Receiving>,
    /// Cancelled by [`NatsEventBus::stop`] and when the last handle goes: every remote part of a
    /// subscription then ends (and unsubscribes).
    stopped: CancellationToken,
    /// The version cache's own catch-all subscription (only with a cache).
    task: Mutex<Option<JoinHandle<()>>>,
}

/// The event bus across nodes (Go's `NATSEventBus`): every event published on one node reaches
/// the matching subscribers on every node, over core NATS subjects `aether.<namespace>`.
///
/// Each subscription is a NATS subscription to its own pattern (`aether.<pattern>`), so the
/// server sends a node only the namespaces it subscribes to, and the subscriber's task decodes
/// each event as it reads it (no hop through another task). Local subscribers get events from
/// their own node at once; when the server sends them back (a subscription on this node
/// matching what this node publishes) they are recognised by the reply subject that carries the
/// publishing node's id ([`NODE_REPLY_PREFIX`]) and skipped. Messages that cannot be decoded
/// are counted ([`NatsEventBus::undecodable`]) and logged. Reconnects are handled by the client.
///
/// Throughput tip: if this node subscribes to namespaces it also publishes to, the server sends
/// its own events back to it (and the bus drops them). A connection made with
/// `async_nats::ConnectOptions::new().no_echo()` saves that traffic, if nothing else on that
/// connection needs to receive its own messages.
///
/// ```no_run
/// use aether_bus::NatsEventBus;
/// use aether_core::{Event, Namespace};
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let bus = NatsEventBus::new(client).await?;
/// let _orders = bus.subscribe("tenant-a".parse()?).await?;
/// bus.publish(&Namespace::new("tenant-a")?, &Event::new("o-1", "OrderPlaced", 1, &1)?).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct NatsEventBus {
    inner: Arc<Inner>,
}

impl fmt::Debug for NatsEventBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsEventBus")
            .field("node_id", &self.inner.node_id)
            .field("received", &self.received())
            .field("undecodable", &self.undecodable())
            .field("stopped", &self.inner.is_stopped())
            .finish_non_exhaustive()
    }
}

/// The subject of `namespace`'s events.
pub fn subject(namespace: &Namespace) -> String {
    prefixed(namespace.as_str())
}

fn prefixed(tail: &str) -> String {
    let mut subject = String::with_capacity(SUBJECT_PREFIX.len() + 1 + tail.len());
    subject.push_str(SUBJECT_PREFIX);
    subject.push('.');
    subject.push_str(tail);
    subject
}

impl NatsEventBus {
    /// A bus on `client` with a random node id (Go's `NewNATSEventBus`).
    pub async fn new(client: async_nats::Client) -> Result<Self, BusError> {
        Self::with_config(client, NatsBusConfig::default()).await
    }

    /// A bus that also keeps `cache` (a `JetStreamEventStore`) in step with EventStored
    /// notifications from other nodes (Go's `NewNATSEventBusWithBroadcaster`). The bus then
    /// receives every namespace (one `aether.>` subscription) to find them.
    pub async fn with_version_cache(
        client: async_nats::Client,
        cache: Arc<dyn VersionCache>,
    ) -> Result<Self, BusError> {
        Self::with_config(client, NatsBusConfig::default().version_cache(cache)).await
    }

    /// A bus started with `config` (a version cache, a permission watch).
    pub async fn with_config(
        client: async_nats::Client,
        config: NatsBusConfig,
    ) -> Result<Self, BusError> {
        let NatsBusConfig {
            version_cache: cache,
            permissions,
        } = config;
        let node_id = uuid::Uuid::new_v4().simple().to_string();
        let receiving = Arc::new(Receiving {
            origin: async_nats::Subject::from(format!("{NODE_REPLY_PREFIX}.{node_id}")),
            stopped: AtomicBool::new(false),
            interests: ArcSwap::default(),
            interest_changes: Mutex::new(()),
            next_interest: AtomicU64::new(0),
            cache,
            counters: Counters::default(),
            metrics: crate::metrics::NatsMetrics::new(),
        });
        let inner = Arc::new(Inner {
            client,
            permissions,
            node_id,
            local: EventBus::new(),
            subjects: ArcSwap::default(),
            receiving,
            stopped: CancellationToken::new(),
            task: Mutex::new(None),
        });
        if inner.receiving.cache.is_some() {
            let subject = prefixed(">");
            let mut messages = inner.subscribe_remote(&subject).await?;
            let receiving = inner.receiving.clone();
            let stopped = inner.stopped.clone();
            let task = tokio::spawn(async move {
                loop {
                    let msg = tokio::select! {
                        () = stopped.cancelled() => break,
                        msg = messages.next() => msg,
                    };
                    let Some(msg) = msg else { break };
                    receiving.keep_cache_in_step(&msg);
                }
            });
            *inner.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
        }
        Ok(Self { inner })
    }

    /// This node's id, carried in the reply subject `_AETHER.node.<id>`.
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// The in-process bus: its subscribers get only this node's events.
    pub fn local(&self) -> &EventBus {
        &self.inner.local
    }

    /// Subscribes to events of every node in the namespaces matching `pattern`.
    ///
    /// Returns once the NATS server has the subscription: whatever any node publishes
    /// afterwards through this server reaches it (through a cluster of servers, the interest
    /// reaches the other servers a moment later, as for any NATS subscription). During an
    /// outage it waits for the client to reconnect, and fails with [`BusError::Subscribe`] if the
    /// server has not confirmed within the client's request timeout.
    ///
    /// With a permission watch ([`NatsBusConfig::permissions`]), a subscription the server
    /// refuses for the user's permissions fails with [`BusError::PermissionDenied`] naming the
    /// subject, in the same round trip (plus up to 25 ms for the client to hand the refusal
    /// over; every subscription waits that long for it). Without one, the server's refusal only
    /// reaches the connection's event callback and the subscription stays silent.
    pub async fn subscribe(&self, pattern: Pattern) -> Result<Subscription, BusError> {
        self.subscribe_with(pattern, SubscribeOptions::default())
            .await
    }

    /// Subscribes with explicit buffering and filters.
    ///
    /// `options.capacity` and `options.overflow` apply to events published on this node. Events
    /// from other nodes wait in the NATS client's buffer for the subscription
    /// (`async_nats::ConnectOptions::subscription_capacity`, 65,536 messages by default); a
    /// subscriber that falls further behind loses the newest of them there, and the client
    /// reports it as `async_nats::Event::SlowConsumer` to its event callback. The filters apply
    /// to both.
    ///
    /// After [`stop`](Self::stop) this returns a subscription to this node's events only.
    pub async fn subscribe_with(
        &self,
        pattern: Pattern,
        options: SubscribeOptions,
    ) -> Result<Subscription, BusError> {
        if self.inner.is_stopped() {
            return Ok(self.inner.local.subscribe_with(pattern, options));
        }
        let filter = options.filter.clone();
        let subject = prefixed(pattern.as_str());
        // The interest is announced before the local part exists: a publish that reaches the
        // local part then also marks its NATS message as this node's (see `publish`).
        let interest = Interest::new(&self.inner.receiving, pattern.clone());
        let mut subscription = self.inner.local.subscribe_with(pattern, options);
        let messages = self.inner.subscribe_remote(&subject).await?;
        subscription.merge(Box::new(RemotePart::new(Remote {
            messages,
            stopped: Box::pin(self.inner.stopped.clone().cancelled_owned()),
            receiving: self.inner.receiving.clone(),
            filter,
            _interest: interest,
        })));
        Ok(subscription)
    }

    /// Subscribes to EventStored notifications (published by stores through a bus) in the
    /// namespaces matching `pattern` (Go's `SubscribeToEventStored`). Decode the payload with
    /// `event.decode::<aether_core::EventStored>()`.
    pub async fn subscribe_to_event_stored(
        &self,
        pattern: Pattern,
    ) -> Result<Subscription, BusError> {
        self.subscribe_with(
            pattern,
            SubscribeOptions::default().event_types([EVENT_STORED]),
        )
        .await
    }

    /// Publishes `event` to the local subscribers and to every other node.
    ///
    /// A core NATS publish has no answer: when the server refuses the subject for the user's
    /// permissions, the publish still returns `Ok`, and the refusal reaches only the
    /// connection's event callback. With a permission watch ([`NatsBusConfig::permissions`]),
    /// that first refusal is heard (and logged) by the watch, and later publishes to the same
    /// subject, within the watch's memory (a minute by default), fail at once with
    /// [`BroadcastError::PermissionDenied`] (counted in `aether_bus_refused_total`), local
    /// subscribers included.
    pub async fn publish(
        &self,
        namespace: &Namespace,
        event: &Event,
    ) -> Result<(), BroadcastError> {
        if self.inner.is_stopped() {
            return Err(BroadcastError::Closed);
        }
        let to = self.inner.subject(namespace);
        if let Some(refused) = self
            .inner
            .permissions
            .as_ref()
            .and_then(|watch| watch.recently_refused(Operation::Publish, to.as_str()))
        {
            self.inner.receiving.metrics.refused_publish.increment(1);
            return Err(BroadcastError::PermissionDenied {
                operation: refused.operation.as_str(),
                subject: refused.subject,
            });
        }
        self.inner.local.publish(namespace, event).await;
        let payload = aether_core::wire::encode_event_pooled(event).map_err(|e| {
            BroadcastError::Transport {
                context: format!("encoding event {}", event.id()),
                source: Box::new(e),
            }
        })?;
        // After the local delivery: a subscription whose local part got the event has its
        // interest registered by now, so its NATS part will recognise the echo.
        let receiving = &self.inner.receiving;
        let sent = if receiving.interested_in(namespace) {
            self.inner
                .client
                .publish_with_reply(to, receiving.origin.clone(), payload)
                .await
        } else {
            self.inner.client.publish(to, payload).await
        };
        sent.map_err(|e| BroadcastError::Transport {
            context: format!("publishing event {} to {}", event.id(), subject(namespace)),
            source: Box::new(e),
        })?;
        self.inner.receiving.metrics.published.increment(1);
        Ok(())
    }

    /// Messages from other nodes delivered to this node's subscriptions (once per subscription
    /// that read it).
    pub fn received(&self) -> u64 {
        self.inner
            .receiving
            .counters
            .received
            .load(Ordering::Relaxed)
    }

    /// Messages on bus subjects that could not be decoded (and were skipped), once per
    /// subscription that read them.
    pub fn undecodable(&self) -> u64 {
        self.inner
            .receiving
            .counters
            .undecodable
            .load(Ordering::Relaxed)
    }

    /// Stops receiving from other nodes and refuses further publishes (Go's `Stop`). Every
    /// subscription's NATS part ends (it unsubscribes); the subscriptions stay open for this
    /// node's own events, of which there are no more from this bus.
    pub fn stop(&self) {
        self.inner.stop();
    }
}

impl Inner {
    /// Subscribes to `subject` and waits until the server has the subscription; with a
    /// permission watch, fails if the server refused it (or the round trip's subjects).
    async fn subscribe_remote(&self, subject: &str) -> Result<async_nats::Subscriber, BusError> {
        let Some(watch) = &self.permissions else {
            return self.subscribe_confirmed(subject).await;
        };
        let concerns = |r: &Refusal| {
            r.is(Operation::Subscribe, subject) || r.subject.starts_with(ROUND_TRIP_PREFIX)
        };
        // Made before subscribing: the refusal cannot come before it.
        let mut watcher = watch.watcher();
        let confirmed = {
            let subscribed = std::pin::pin!(self.subscribe_confirmed(subject));
            let refused = std::pin::pin!(watcher.refusal(concerns));
            match futures::future::select(subscribed, refused).await {
                futures::future::Either::Left((confirmed, _)) => confirmed,
                futures::future::Either::Right((refusal, _)) => Err(BusError::denied(refusal)),
            }
        };
        let refused = match confirmed {
            Ok(messages) => {
                // The server handles the subscription before the round trip's message and
                // sends its refusal first; the client reads it first too, but hands it to the
                // event callback on another task.
                match tokio::time::timeout(REFUSAL_GRACE, watcher.refusal(concerns)).await {
                    Ok(refusal) => BusError::denied(refusal),
                    Err(_) => return Ok(messages),
                }
            }
            Err(e) => e,
        };
        if matches!(refused, BusError::PermissionDenied { .. }) {
            self.receiving.metrics.refused_subscribe.increment(1);
        }
        Err(refused)
    }

    /// Subscribes to `subject` and waits until the server has the subscription.
    async fn subscribe_confirmed(&self, subject: &str) -> Result<async_nats::Subscriber, BusError> {
        let failed = |source: aether_core::BoxError| BusError::Subscribe {
            subject: subject.to_owned(),
            source,
        };
        let messages = self
            .client
            .subscribe(subject.to_owned())
            .await
            .map_err(|e| failed(Box::new(e)))?;
        // Make sure the server has the subscription before anyone publishes to us.
        round_trip(&self.client)
            .await
            .map_err(|e| failed(Box::new(e)))?;
        Ok(messages)
    }

    fn subject(&self, namespace: &Namespace) -> async_nats::Subject {
        if let Some(subject) = self.subjects.load().get(namespace) {
            return subject.clone();
        }
        let subject = async_nats::Subject::from(subject(namespace));
        let cached = self.subjects.load();
        if cached.len() < SUBJECT_CACHE {
            let mut more = HashMap::clone(&cached);
            more.insert(namespace.clone(), subject.clone());
            // A concurrent insert may be lost: it is only a cache.
            self.subjects.store(Arc::new(more));
        }
        subject
    }

    fn is_stopped(&self) -> bool {
        self.receiving.stopped.load(Ordering::Acquire)
    }

    fn stop(&self) {
        self.receiving.stopped.store(true, Ordering::Release);
        self.stopped.cancel();
        if let Some(task) = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            // Aborting drops the NATS subscription, which unsubscribes.
            task.abort();
        }
    }
}

/// The namespace token (from the subject) and the event (from the body) of a bus message.
fn decode(msg: &async_nats::Message) -> Result<Event, String> {
    let namespace = msg
        .subject
        .as_str()
        .strip_prefix(SUBJECT_PREFIX)
        .and_then(|s| s.strip_prefix('.'))
        .ok_or_else(|| "subject outside the bus prefix".to_owned())?;
    Namespace::check(namespace).map_err(|e| e.to_string())?;
    aether_core::wire::decode_event_shared(&msg.payload)
        .map_err(|e| format!("not an Aether event: {e}"))
}

impl Receiving {
    fn interested_in(&self, namespace: &Namespace) -> bool {
        self.interests
            .load()
            .iter()
            .any(|(_, pattern)| pattern.matches(namespace))
    }

    fn is_echo(&self, msg: &async_nats::Message) -> bool {
        msg.reply.as_ref() == Some(&self.origin)
    }

    /// The event in `msg` from another node, or `None` (an echo of this node's own event, or
    /// undecodable: counted and logged).
    fn accept(&self, msg: &async_nats::Message) -> Option<Event> {
        if self.is_echo(msg) {
            return None;
        }
        let event = match decode(msg) {
            Ok(event) => event,
            Err(reason) => {
                self.counters.undecodable.fetch_add(1, Ordering::Relaxed);
                self.metrics.undecodable.increment(1);
                tracing::warn!(
                    subject = %msg.subject,
                    bytes = msg.payload.len(),
                    %reason,
                    "skipping a bus message that cannot be decoded"
                );
                return None;
            }
        };
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        self.metrics.received.increment(1);
        // The cache learns of a notification before anyone reads it.
        self.update_cache(&event);
        Some(event)
    }

    fn update_cache(&self, event: &Event) {
        if event.event_type() == EVENT_STORED
            && let Some(cache) = &self.cache
        {
            match event.decode::<EventStored>() {
                Ok(stored) => cache.update_version_cache(&stored.actor_id, stored.version),
                Err(e) => {
                    tracing::warn!(error = %e, "an EventStored notification has an unreadable payload");
                }
            }
        }
    }

    /// The version cache's catch-all subscription: only EventStored notifications matter
    /// (undecodable messages are counted by the subscriptions that read them). It does not
    /// register an interest, so this node's own messages may come back without the reply
    /// subject; raising the cache to a version this node wrote itself changes nothing.
    fn keep_cache_in_step(&self, msg: &async_nats::Message) {
        if self.is_echo(msg) {
            return;
        }
        if let Ok(event) = decode(msg) {
            self.update_cache(&event);
        }
    }
}

/// Waits until the server has processed everything `client` sent so far (its subscriptions
/// included). `Client::flush` is not enough: it only writes the socket, and a message another
/// connection publishes right after could still miss the new subscription. A message sent to a
/// subject only this call subscribes to comes back after the server handled everything before
/// it on this connection. (A request nobody answers would also do, but a `>` subscriber on the
/// account, a `nats sub ">"` while debugging, takes such a request and never answers it.)
pub async fn round_trip(client: &async_nats::Client) -> Result<(), RoundTripError> {
    let subject = format!("{ROUND_TRIP_PREFIX}{}", uuid::Uuid::new_v4().simple());
    let mut echo = client
        .subscribe(subject.clone())
        .await
        .map_err(RoundTripError::Subscribe)?;
    client
        .publish(subject, bytes::Bytes::new())
        .await
        .map_err(RoundTripError::Publish)?;
    let came_back = tokio::time::timeout(ROUND_TRIP_PATIENCE, echo.next()).await;
    // Leaving the subscription is best effort: the connection may be closing.
    let _ = echo.unsubscribe().await;
    match came_back {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(RoundTripError::Closed),
        Err(_) => Err(RoundTripError::TimedOut(ROUND_TRIP_PATIENCE)),
    }
}

/// The subjects of [`round_trip`]'s messages (`_AETHER.sync.<random>`): a user of the bus needs
/// to publish and subscribe to them.
const ROUND_TRIP_PREFIX: &str = "_AETHER.sync.";

/// How long [`round_trip`] waits for its message to come back.
const ROUND_TRIP_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// Why [`round_trip`] could not confirm that the server is in step.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RoundTripError {
    /// Subscribing to the echo subject failed.
    #[error("subscribing to the round trip's subject failed")]
    Subscribe(#[source] async_nats::SubscribeError),
    /// Publishing the echo failed.
    #[error("publishing the round trip's message failed")]
    Publish(#[source] async_nats::PublishError),
    /// The message did not come back in time (the server is slow or unreachable).
    #[error("the round trip's message did not come back within {0:?}")]
    TimedOut(std::time::Duration),
    /// The connection closed.
    #[error("the connection closed during the round trip")]
    Closed,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop();
    }
}

#[async_trait]
impl EventBroadcaster for NatsEventBus {
    async fn publish(&self, namespace: &Namespace, event: &Event) -> Result<(), BroadcastError> {
        NatsEventBus::publish(self, namespace, event).await
    }
}
