//! The in-process event bus.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use arc_swap::ArcSwap;
use std::task::{Context, Poll};
use std::time::Duration;

use aether_core::{BroadcastError, Event, EventBroadcaster, Namespace};
use async_trait::async_trait;
use futures::Stream;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::ReusableBoxFuture;

use crate::filter::EventFilter;
use crate::metrics::LocalMetrics;
use crate::pattern::Pattern;

/// What happens when a subscriber's buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Overflow {
    /// Drop the subscriber's oldest buffered events, count and log the loss; publishers never
    /// wait. The default.
    DropOldest,
    /// The publisher waits up to this long for room, then drops the event for this subscriber
    /// (counted and logged).
    Wait(Duration),
}

/// How a subscription buffers and filters.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// Events buffered for the subscriber (default 1024).
    pub capacity: usize,
    /// Policy when the buffer is full (default [`Overflow::DropOldest`]).
    pub overflow: Overflow,
    /// Which events the subscriber wants (default: all).
    pub filter: EventFilter,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self {
            capacity: 1024,
            overflow: Overflow::DropOldest,
            filter: EventFilter::default(),
        }
    }
}

impl SubscribeOptions {
    /// Sets the buffer size (at least 1).
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// Sets the overflow policy.
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.overflow = overflow;
        self
    }

    /// Keeps only events of these types.
    pub fn event_types<I, S>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.filter = self.filter.event_types(types);
        self
    }

    /// Keeps only actors whose id starts with `prefix`.
    pub fn actor_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.filter = self.filter.actor_prefix(prefix);
        self
    }

    /// Sets the whole filter.
    pub fn filter(mut self, filter: EventFilter) -> Self {
        self.filter = filter;
        self
    }
}

enum Sink {
    Ring(broadcast::Sender<Event>),
    Queue(mpsc::Sender<Event>, Duration),
}

struct Subscriber {
    id: u64,
    /// Subscriptions reading this entry's ring (drop-oldest subscribers with identical pattern,
    /// filters and capacity share one ring, so a publish is one send for all of them).
    readers: std::sync::atomic::AtomicUsize,
    capacity: usize,
    pattern: Pattern,
    filter: EventFilter,
    sink: Sink,
    dropped: Arc<AtomicU64>,
    /// `aether_bus_dropped_total{overflow="wait"}`.
    dropped_metric: metrics::Counter,
}

impl Subscriber {
    fn wants(&self, namespace: &Namespace, event: &Event) -> bool {
        self.pattern.matches(namespace) && self.filter.matches(event)
    }

    fn lost(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        self.dropped_metric.increment(n);
        tracing::warn!(
            subscription = self.id,
            pattern = %self.pattern,
            lost = n,
            "a slow subscriber lost events"
        );
    }
}

#[derive(Default)]
struct BusInner {
    /// Read without locking by every publish; replaced whole (under `changes`) by subscribe
    /// and unsubscribe.
    subscribers: ArcSwap<Vec<Arc<Subscriber>>>,
    changes: Mutex<()>,
    next_id: AtomicU64,
    metrics: LocalMetrics,
}

/// The in-process event bus (Go's `EventBus`).
///
/// Subscribers pick namespaces with a [`Pattern`] and get a bounded buffer each; a slow
/// subscriber loses its own oldest events (or makes publishers wait a bounded time, if it asks),
/// never anyone else's. Cloning gives another handle on the same bus.
///
/// ```
/// use aether_bus::EventBus;
/// use aether_core::{Event, Namespace};
/// use futures::StreamExt;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = EventBus::new();
/// let mut orders = bus.subscribe("tenant-a".parse()?);
/// bus.publish(&Namespace::new("tenant-a")?, &Event::new("order-1", "OrderPlaced", 1, &1)?)
///     .await;
/// assert_eq!(orders.next().await.map(|e| e.version()), Some(1));
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct EventBus {
    inner: Arc<BusInner>,
}

impl fmt::Debug for EventBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventBus")
            .field("subscribers", &self.subscriber_count())
            .finish()
    }
}

impl EventBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Subscribes to the namespaces matching `pattern` with default options.
    pub fn subscribe(&self, pattern: Pattern) -> Subscription {
        self.subscribe_with(pattern, SubscribeOptions::default())
    }

    /// Subscribes with explicit buffering and filters.
    pub fn subscribe_with(&self, pattern: Pattern, options: SubscribeOptions) -> Subscription {
        let dropped = Arc::new(AtomicU64::new(0));
        let capacity = options.capacity.max(1);
        let _changing = self
            .inner
            .changes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = self.inner.subscribers.load_full();
        if options.overflow == Overflow::DropOldest {
            let shared = current.iter().find(|s| {
                matches!(s.sink, Sink::Ring(_))
                    && s.capacity == capacity
                    && s.pattern == pattern
                    && s.filter == options.filter
            });
            if let Some(entry) = shared
                && let Sink::Ring(tx) = &entry.sink
            {
                entry.readers.fetch_add(1, Ordering::Relaxed);
                return Subscription {
                    id: entry.id,
                    bus: Arc::downgrade(&self.inner),
                    receiver: Receiver::Ring(Ring::new(tx.subscribe())),
                    dropped,
                    metrics: self.inner.metrics.clone(),
                    merged: None,
                };
            }
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (sink, receiver) = match options.overflow {
            Overflow::DropOldest => {
                let (tx, rx) = broadcast::channel(capacity);
                (Sink::Ring(tx), Receiver::Ring(Ring::new(rx)))
            }
            Overflow::Wait(timeout) => {
                let (tx, rx) = mpsc::channel(capacity);
                (Sink::Queue(tx, timeout), Receiver::Queue(rx))
            }
        };
        let mut subscribers = Vec::clone(&current);
        subscribers.push(Arc::new(Subscriber {
            id,
            readers: std::sync::atomic::AtomicUsize::new(1),
            capacity,
            pattern,
            filter: options.filter,
            sink,
            dropped: dropped.clone(),
            dropped_metric: self.inner.metrics.dropped_wait.clone(),
        }));
        self.inner.subscribers.store(Arc::new(subscribers));
        Subscription {
            id,
            bus: Arc::downgrade(&self.inner),
            receiver,
            dropped,
            metrics: self.inner.metrics.clone(),
            merged: None,
        }
    }

    /// Delivers `event` to every subscriber whose pattern matches `namespace` (Go's `Publish`).
    pub async fn publish(&self, namespace: &Namespace, event: &Event) {
        self.inner.metrics.published.increment(1);
        let mut waiting = Vec::new();
        {
            let subscribers = self.inner.subscribers.load();
            for sub in subscribers.iter().filter(|s| s.wants(namespace, event)) {
                match &sub.sink {
                    // A full ring overwrites the oldest; the receiver learns how many it missed.
                    Sink::Ring(tx) => {
                        let _ = tx.send(event.clone());
                    }
                    Sink::Queue(tx, _) => match tx.try_send(event.clone()) {
                        Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => waiting.push(sub.clone()),
                    },
                }
            }
        }
        // Subscribers that asked publishers to wait: only after everyone else has the event.
        for sub in waiting {
            if let Sink::Queue(tx, timeout) = &sub.sink
                && let Err(mpsc::error::SendTimeoutError::Timeout(_)) =
                    tx.send_timeout(event.clone(), *timeout).await
            {
                sub.lost(1);
            }
        }
    }

    /// Number of live subscriptions.
    pub fn subscriber_count(&self) -> usize {
        self.inner
            .subscribers
            .load()
            .iter()
            .map(|s| s.readers.load(Ordering::Relaxed))
            .sum()
    }
}

#[async_trait]
impl EventBroadcaster for EventBus {
    async fn publish(&self, namespace: &Namespace, event: &Event) -> Result<(), BroadcastError> {
        EventBus::publish(self, namespace, event).await;
        Ok(())
    }
}

enum Receiver {
    Ring(Ring),
    Queue(mpsc::Receiver<Event>),
}

type Received = (Result<Event, RecvError>, broadcast::Receiver<Event>);

/// A ring reader. Buffered events are taken with `try_recv` (no future); only an empty ring
/// parks the reader in a `recv` future, which owns the receiver until it hands it back. The
/// future's allocation is made once and reused.
struct Ring {
    /// `None` while the receiver is inside the parked future.
    rx: Option<broadcast::Receiver<Event>>,
    parked: Option<ReusableBoxFuture<'static, Received>>,
    waiting: bool,
}

impl Ring {
    fn new(rx: broadcast::Receiver<Event>) -> Self {
        Self {
            rx: Some(rx),
            parked: None,
            waiting: false,
        }
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        id: u64,
        dropped: &AtomicU64,
    ) -> Poll<Option<Event>> {
        loop {
            if self.waiting {
                let Some(parked) = self.parked.as_mut() else {
                    return Poll::Ready(None);
                };
                let (got, rx) = std::task::ready!(parked.poll(cx));
                self.waiting = false;
                self.rx = Some(rx);
                match got {
                    Ok(event) => return Poll::Ready(Some(event)),
                    Err(RecvError::Lagged(n)) => lagged(id, dropped, n),
                    Err(RecvError::Closed) => return Poll::Ready(None),
                }
                continue;
            }
            let Some(rx) = self.rx.as_mut() else {
                return Poll::Ready(None);
            };
            match rx.try_recv() {
                Ok(event) => return Poll::Ready(Some(event)),
                Err(TryRecvError::Lagged(n)) => lagged(id, dropped, n),
                Err(TryRecvError::Closed) => return Poll::Ready(None),
                Err(TryRecvError::Empty) => {
                    let Some(rx) = self.rx.take() else {
                        return Poll::Ready(None);
                    };
                    match self.parked.as_mut() {
                        Some(parked) => parked.set(recv_owned(rx)),
                        None => self.parked = Some(ReusableBoxFuture::new(recv_owned(rx))),
                    }
                    self.waiting = true;
                }
            }
        }
    }
}

async fn recv_owned(mut rx: broadcast::Receiver<Event>) -> Received {
    let got = rx.recv().await;
    (got, rx)
}

/// Polls a subscription's own buffer (given to a [`Merged`] source).
pub(crate) type PollLocal<'a> = dyn FnMut(&mut Context<'_>) -> Poll<Option<Event>> + 'a;

/// Another source of events a subscription reads beside its own buffer, taking turns with it so
/// neither starves the other: how a bus across nodes adds other nodes' events to a subscription
/// of this one. This layer only polls it.
pub(crate) trait Merged: Send + Sync {
    /// The next event of either source (`local` polls the subscription's own buffer); `None`
    /// once both have ended.
    fn poll_with_local(
        &mut self,
        cx: &mut Context<'_>,
        local: &mut PollLocal<'_>,
    ) -> Poll<Option<Event>>;
}

/// A live subscription: a [`Stream`] of events. Dropping it unsubscribes.
pub struct Subscription {
    id: u64,
    bus: Weak<BusInner>,
    receiver: Receiver,
    dropped: Arc<AtomicU64>,
    metrics: LocalMetrics,
    /// Other nodes' events, for a subscription made through a bus across nodes.
    merged: Option<Box<dyn Merged>>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// Events this subscriber lost because it read too slowly: events of this node (from a
    /// `NatsEventBus`, other nodes' events are buffered and dropped by the NATS client, see
    /// `NatsEventBus::subscribe_with`).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Reads `other` beside this subscription's own buffer (only buses across nodes do).
    #[allow(dead_code)]
    pub(crate) fn merge(&mut self, other: Box<dyn Merged>) {
        self.merged = Some(other);
    }

    fn poll_any(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let Self {
            id,
            receiver,
            dropped,
            metrics,
            ..
        } = self;
        if let Some(merged) = self.merged.as_mut() {
            return merged.poll_with_local(cx, &mut |local_cx| {
                poll_receiver(receiver, *id, dropped, metrics, local_cx)
            });
        }
        poll_receiver(receiver, *id, dropped, metrics, cx)
    }
}

/// The next event of a local subscription's own buffer.
fn poll_receiver(
    receiver: &mut Receiver,
    id: u64,
    dropped: &AtomicU64,
    metrics: &LocalMetrics,
    cx: &mut Context<'_>,
) -> Poll<Option<Event>> {
    match receiver {
        Receiver::Queue(rx) => rx.poll_recv(cx),
        Receiver::Ring(ring) => {
            let before = dropped.load(Ordering::Relaxed);
            let next = ring.poll_next(cx, id, dropped);
            let lost = dropped.load(Ordering::Relaxed) - before;
            if lost > 0 {
                metrics.dropped_oldest.increment(lost);
            }
            next
        }
    }
}

impl Stream for Subscription {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let next = self.poll_any(cx);
        if let Poll::Ready(Some(_)) = &next {
            self.metrics.delivered.increment(1);
        }
        next
    }
}

fn lagged(id: u64, dropped: &AtomicU64, n: u64) {
    dropped.fetch_add(n, Ordering::Relaxed);
    tracing::warn!(
        subscription = id,
        lost = n,
        "a slow subscriber lost its oldest events"
    );
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(bus) = self.bus.upgrade() {
            let _changing = bus.changes.lock().unwrap_or_else(PoisonError::into_inner);
            let mut subscribers = Vec::clone(&bus.subscribers.load_full());
            subscribers
                .retain(|s| s.id != self.id || s.readers.fetch_sub(1, Ordering::Relaxed) > 1);
            bus.subscribers.store(Arc::new(subscribers));
        }
    }
}
