//! The event bus across nodes, over core NATS.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use aether_core::{
    BroadcastError, EVENT_STORED, Event, EventBroadcaster, EventStored, Namespace, VersionCache,
};
use async_trait::async_trait;
use futures::StreamExt;
use tokio::task::JoinHandle;

use crate::local::{EventBus, SubscribeOptions, Subscription};
use crate::pattern::Pattern;

/// First token of every bus subject: events of namespace `ns` travel on `aether.<ns>`.
pub const SUBJECT_PREFIX: &str = "aether";
/// Prefix of the reply subject that names the node that published a message
/// (`_AETHER.node.<node id>`), so a node can skip its own echo. It is never replied to; the
/// reply field is used because it costs nothing, where a header made every message several
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
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    echoes: AtomicU64,
    undecodable: AtomicU64,
}

struct Inner {
    client: async_nats::Client,
    node_id: String,
    /// `_AETHER.node.<node_id>`, the reply subject of everything this node publishes.
    origin: async_nats::Subject,
    local: EventBus,
    cache: Option<Arc<dyn VersionCache>>,
    counters: Counters,
    metrics: crate::metrics::NatsMetrics,
    stopped: AtomicBool,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// The event bus across nodes (Go's `NATSEventBus`): every event published on one node reaches
/// the matching subscribers on every node, over core NATS subjects `aether.<namespace>`.
///
/// Local subscribers get events from their own node at once (not echoed back through NATS: the
/// publishing node's id travels in the reply subject, see [`NODE_REPLY_PREFIX`]). Messages that cannot be decoded
/// are counted ([`NatsEventBus::undecodable`]) and logged. Reconnects are handled by the client.
///
/// Throughput tip: the server sends a node's own events back to it (and the bus drops them). A
/// connection made with `async_nats::ConnectOptions::new().no_echo()` saves that traffic
/// (node to node on a 2-core machine: 334k instead of 274k events per second, the bus bench's
/// `aether_no_echo`), if nothing else on that connection needs to receive its own messages.
///
/// ```no_run
/// use aether_bus::NatsEventBus;
/// use aether_core::{Event, Namespace};
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let bus = NatsEventBus::new(client).await?;
/// let _orders = bus.subscribe("tenant-a".parse()?);
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
            .field("stopped", &self.inner.stopped.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The subject of `namespace`'s events.
pub fn subject(namespace: &Namespace) -> String {
    let ns = namespace.as_str();
    let mut subject = String::with_capacity(SUBJECT_PREFIX.len() + 1 + ns.len());
    subject.push_str(SUBJECT_PREFIX);
    subject.push('.');
    subject.push_str(ns);
    subject
}

impl NatsEventBus {
    /// A bus on `client` with a random node id (Go's `NewNATSEventBus`).
    pub async fn new(client: async_nats::Client) -> Result<Self, BusError> {
        Self::start(client, None).await
    }

    /// A bus that also keeps `cache` (a `JetStreamEventStore`) in step with EventStored
    /// notifications from other nodes (Go's `NewNATSEventBusWithBroadcaster`).
    pub async fn with_version_cache(
        client: async_nats::Client,
        cache: Arc<dyn VersionCache>,
    ) -> Result<Self, BusError> {
        Self::start(client, Some(cache)).await
    }

    async fn start(
        client: async_nats::Client,
        cache: Option<Arc<dyn VersionCache>>,
    ) -> Result<Self, BusError> {
        let subject = format!("{SUBJECT_PREFIX}.>");
        let mut messages =
            client
                .subscribe(subject.clone())
                .await
                .map_err(|e| BusError::Subscribe {
                    subject: subject.clone(),
                    source: Box::new(e),
                })?;
        // Make sure the server has the subscription before anyone publishes to us.
        round_trip(&client).await.map_err(|e| BusError::Subscribe {
            subject,
            source: Box::new(e),
        })?;
        let node_id = uuid::Uuid::new_v4().simple().to_string();
        let inner = Arc::new(Inner {
            client,
            origin: async_nats::Subject::from(format!("{NODE_REPLY_PREFIX}.{node_id}")),
            node_id,
            local: EventBus::new(),
            cache,
            counters: Counters::default(),
            metrics: crate::metrics::NatsMetrics::new(),
            stopped: AtomicBool::new(false),
            task: Mutex::new(None),
        });
        let weak = Arc::downgrade(&inner);
        let task = tokio::spawn(async move {
            while let Some(msg) = messages.next().await {
                let Some(inner) = weak.upgrade() else { break };
                inner.receive(msg).await;
            }
        });
        *inner.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
        Ok(Self { inner })
    }

    /// This node's id, carried in the reply subject `_AETHER.node.<id>`.
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// The in-process bus that local subscribers read from.
    pub fn local(&self) -> &EventBus {
        &self.inner.local
    }

    /// Subscribes to events of every node in the namespaces matching `pattern`.
    pub fn subscribe(&self, pattern: Pattern) -> Subscription {
        self.inner.local.subscribe(pattern)
    }

    /// Subscribes with explicit buffering and filters.
    pub fn subscribe_with(&self, pattern: Pattern, options: SubscribeOptions) -> Subscription {
        self.inner.local.subscribe_with(pattern, options)
    }

    /// Subscribes to EventStored notifications (published by stores through a bus) in the
    /// namespaces matching `pattern` (Go's `SubscribeToEventStored`). Decode the payload with
    /// `event.decode::<aether_core::EventStored>()`.
    pub fn subscribe_to_event_stored(&self, pattern: Pattern) -> Subscription {
        self.subscribe_with(
            pattern,
            SubscribeOptions::default().event_types([EVENT_STORED]),
        )
    }

    /// Publishes `event` to the local subscribers and to every other node.
    pub async fn publish(
        &self,
        namespace: &Namespace,
        event: &Event,
    ) -> Result<(), BroadcastError> {
        if self.inner.stopped.load(Ordering::Relaxed) {
            return Err(BroadcastError::Closed);
        }
        self.inner.local.publish(namespace, event).await;
        let payload =
            aether_core::wire::encode_event(event).map_err(|e| BroadcastError::Transport {
                context: format!("encoding event {}", event.id()),
                source: Box::new(e),
            })?;
        self.inner
            .client
            .publish_with_reply(
                subject(namespace),
                self.inner.origin.clone(),
                payload.into(),
            )
            .await
            .map_err(|e| BroadcastError::Transport {
                context: format!("publishing event {} to {}", event.id(), subject(namespace)),
                source: Box::new(e),
            })?;
        self.inner.metrics.published.increment(1);
        Ok(())
    }

    /// Messages received from other nodes.
    pub fn received(&self) -> u64 {
        self.inner.counters.received.load(Ordering::Relaxed)
    }

    /// Messages on bus subjects that could not be decoded (and were skipped).
    pub fn undecodable(&self) -> u64 {
        self.inner.counters.undecodable.load(Ordering::Relaxed)
    }

    /// Stops receiving from other nodes and refuses further publishes (Go's `Stop`). Local
    /// subscriptions stay open but receive nothing more from other nodes.
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        if let Some(task) = self
            .inner
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

/// The namespace (from the subject) and the event (from the body) of a bus message.
fn decode(msg: &async_nats::Message) -> Result<(Namespace, Event), String> {
    let namespace = msg
        .subject
        .as_str()
        .strip_prefix(SUBJECT_PREFIX)
        .and_then(|s| s.strip_prefix('.'))
        .ok_or_else(|| "subject outside the bus prefix".to_owned())
        .and_then(|ns| Namespace::new(ns).map_err(|e| e.to_string()))?;
    let event = aether_core::wire::decode_event_shared(&msg.payload)
        .map_err(|e| format!("not an Aether event: {e}"))?;
    Ok((namespace, event))
}

impl Inner {
    fn undecodable(&self, msg: &async_nats::Message, reason: &str) {
        self.counters.undecodable.fetch_add(1, Ordering::Relaxed);
        self.metrics.undecodable.increment(1);
        tracing::warn!(
            subject = %msg.subject,
            bytes = msg.payload.len(),
            %reason,
            "skipping a bus message that cannot be decoded"
        );
    }

    async fn receive(&self, msg: async_nats::Message) {
        if msg.reply.as_ref() == Some(&self.origin) {
            self.counters.echoes.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let (namespace, event) = match decode(&msg) {
            Ok(ok) => ok,
            Err(reason) => return self.undecodable(&msg, &reason),
        };
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        self.metrics.received.increment(1);
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
        self.local.publish(&namespace, &event).await;
    }
}

/// Waits until the server has processed everything `client` sent so far (its subscriptions
/// included). `Client::flush` is not enough: it only writes the socket, and a message another
/// connection publishes right after could still miss the new subscription. A request nobody
/// answers does the round trip: the server replies "no responders" after handling what came
/// before it on this connection.
pub async fn round_trip(client: &async_nats::Client) -> Result<(), async_nats::RequestError> {
    let subject = format!("_AETHER.sync.{}", uuid::Uuid::new_v4().simple());
    match client.request(subject, bytes::Bytes::new()).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
        Err(e) => Err(e),
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

#[async_trait]
impl EventBroadcaster for NatsEventBus {
    async fn publish(&self, namespace: &Namespace, event: &Event) -> Result<(), BroadcastError> {
        NatsEventBus::publish(self, namespace, event).await
    }
}
