//! The runtime: a registry of virtual actors, each a VM task with a mailbox.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use aether_core::{
    ActorSnapshot, Event, EventBroadcaster, EventStore, Namespace, SnapshotStore, limits,
};
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};

use crate::actor::Actor;
use crate::config::{RetryPolicy, RuntimeConfig, SnapshotPolicy};
use crate::error::AskError;
use crate::metrics::Metrics;

const SHARDS: usize = 64;
/// Actors looked at when choosing one to evict (sampled LRU).
const EVICTION_SAMPLE: usize = 64;

type Reply<A> =
    oneshot::Sender<Result<Applied<<A as Actor>::Event>, AskError<<A as Actor>::Error>>>;

type Look<A> = Box<dyn FnOnce(&A, u64) + Send>;

enum Envelope<A: Actor> {
    Ask(A::Command, Reply<A>),
    Tell(A::Command),
    Inspect(Look<A>),
    Stop,
}

/// What a successful command did: the events it appended (already applied) and the actor's
/// version after them.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Applied<E> {
    /// The actor's version after the command (unchanged if it emitted nothing).
    pub version: u64,
    /// The events appended, in order.
    pub events: Vec<E>,
}

/// Counters of the rarer things a runtime did (the [`crate::metrics`] facade has them all).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RuntimeStats {
    /// Actors loaded into memory.
    pub activations: u64,
    /// Actors unloaded.
    pub passivations: u64,
    /// Appends refused with a version conflict.
    pub conflicts: u64,
    /// Commands re-run after a conflict.
    pub retries: u64,
    /// Snapshots saved.
    pub snapshots: u64,
    /// Handler panics.
    pub panics: u64,
    /// Events replayed by activations (after their snapshots).
    pub replayed: u64,
}

#[derive(Debug, Default)]
struct Stats {
    replayed: AtomicU64,
    activations: AtomicU64,
    passivations: AtomicU64,
    conflicts: AtomicU64,
    retries: AtomicU64,
    snapshots: AtomicU64,
    panics: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

struct Handle<A: Actor> {
    tx: mpsc::Sender<Envelope<A>>,
    last_used: Arc<AtomicU64>,
    done: watch::Receiver<bool>,
    generation: u64,
}

enum Slot<A: Actor> {
    Active(Handle<A>),
    /// Draining its mailbox and snapshotting; a new activation waits for it.
    Passivating(watch::Receiver<bool>),
}

type Shard<A> = Mutex<HashMap<Arc<str>, Slot<A>>>;

struct Shared<A: Actor> {
    store: Arc<dyn EventStore>,
    snapshots: Option<Arc<dyn SnapshotStore>>,
    bus: Option<(Arc<dyn EventBroadcaster>, Namespace)>,
    config: RuntimeConfig,
    shards: Box<[Shard<A>]>,
    hasher: RandomState,
    active: AtomicUsize,
    closed: AtomicBool,
    generations: AtomicU64,
    evict_cursor: AtomicUsize,
    epoch: Instant,
    stats: Stats,
    metrics: Metrics,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Configures a [`Runtime`]: the store is required, everything else has a default.
pub struct RuntimeBuilder<A: Actor> {
    store: Arc<dyn EventStore>,
    snapshots: Option<Arc<dyn SnapshotStore>>,
    bus: Option<(Arc<dyn EventBroadcaster>, Namespace)>,
    config: RuntimeConfig,
    _actor: PhantomData<fn() -> A>,
}

impl<A: Actor> fmt::Debug for RuntimeBuilder<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuntimeBuilder")
            .field("actor_type", &A::TYPE)
            .field("store", &self.store)
            .field("snapshots", &self.snapshots.is_some())
            .field("bus", &self.bus.as_ref().map(|(_, ns)| ns))
            .field("config", &self.config)
            .finish()
    }
}

impl<A: Actor> RuntimeBuilder<A> {
    /// Saves snapshots through `snapshots` (usually the same store) and loads them on
    /// activation, under the configured [`SnapshotPolicy`].
    pub fn snapshots(mut self, snapshots: Arc<dyn SnapshotStore>) -> Self {
        self.snapshots = Some(snapshots);
        self
    }

    /// Sets when snapshots are taken (default [`SnapshotPolicy::default`]).
    pub fn snapshot_policy(mut self, policy: SnapshotPolicy) -> Self {
        self.config.snapshots = policy;
        self
    }

    /// Publishes every appended event on `bus` in `namespace`, after it is stored.
    pub fn bus(mut self, bus: Arc<dyn EventBroadcaster>, namespace: Namespace) -> Self {
        self.bus = Some((bus, namespace));
        self
    }

    /// Sets the conflict retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.config.retry = retry;
        self
    }

    /// Passivates actors idle this long (`None`: never).
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.idle_timeout = timeout;
        self
    }

    /// Caps the actors in memory (at least 1).
    pub fn max_active(mut self, max: usize) -> Self {
        self.config.max_active = max.max(1);
        self
    }

    /// Sets the mailbox size per actor (at least 1).
    pub fn mailbox_capacity(mut self, capacity: usize) -> Self {
        self.config.mailbox_capacity = capacity.max(1);
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: RuntimeConfig) -> Self {
        self.config = config;
        self
    }

    /// Builds the runtime. Actors are activated on their first message.
    pub fn build(self) -> Runtime<A> {
        let shards = (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect();
        Runtime {
            shared: Arc::new(Shared {
                store: self.store,
                snapshots: self.snapshots,
                bus: self.bus,
                config: self.config,
                shards,
                hasher: RandomState::new(),
                active: AtomicUsize::new(0),
                closed: AtomicBool::new(false),
                generations: AtomicU64::new(0),
                evict_cursor: AtomicUsize::new(0),
                epoch: Instant::now(),
                stats: Stats::default(),
                metrics: Metrics::new(A::TYPE),
            }),
        }
    }
}

/// Hosts virtual actors of type `A` (the seed's `Runtime`): callers address actors by id; an
/// actor is activated on its first message (snapshot + later events), handles commands one at
/// a time, and is passivated when idle or evicted at the cap. Cloning gives another handle.
///
/// ```
/// # use aether_runtime::{Actor, Runtime};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Default, Clone, Serialize, Deserialize)] struct Counter { value: u64 }
/// # #[derive(Debug, PartialEq, Serialize, Deserialize)] enum Ev { Added(u64) }
/// # #[derive(Debug, thiserror::Error)] #[error("never")] struct Never;
/// # impl Actor for Counter {
/// #     const TYPE: &'static str = "counter";
/// #     type Command = u64; type Event = Ev; type Error = Never;
/// #     fn handle(&self, n: &u64) -> Result<Vec<Ev>, Never> { Ok(vec![Ev::Added(*n)]) }
/// #     fn apply(&mut self, Ev::Added(n): &Ev) { self.value += n }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use aether_store_memory::InMemoryEventStore;
///
/// let store = Arc::new(InMemoryEventStore::new());
/// let runtime = Runtime::<Counter>::builder(store.clone()).snapshots(store).build();
/// let counter = runtime.actor("counter-1");
/// let applied = counter.ask(5).await?;
/// assert_eq!((applied.version, applied.events), (1, vec![Ev::Added(5)]));
/// counter.tell(2).await?;
/// assert_eq!(runtime.capture_state("counter-1").await?.0.value, 7);
/// runtime.shutdown().await;
/// # Ok(()) }
/// ```
pub struct Runtime<A: Actor> {
    shared: Arc<Shared<A>>,
}

impl<A: Actor> Clone for Runtime<A> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<A: Actor> fmt::Debug for Runtime<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("actor_type", &A::TYPE)
            .field("active", &self.active_count())
            .field("closed", &self.shared.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<A: Actor> Runtime<A> {
    /// Starts configuring a runtime over `store`.
    pub fn builder(store: Arc<dyn EventStore>) -> RuntimeBuilder<A> {
        RuntimeBuilder {
            store,
            snapshots: None,
            bus: None,
            config: RuntimeConfig::default(),
            _actor: PhantomData,
        }
    }

    /// A handle on actor `id` (nothing is activated until it gets a message). Keep the handle
    /// to send many messages: it remembers the actor's mailbox.
    pub fn actor(&self, id: impl Into<Arc<str>>) -> ActorRef<A> {
        ActorRef {
            id: id.into(),
            shared: self.shared.clone(),
            cached: Mutex::new(None),
        }
    }

    /// Sends `command` to actor `id` and waits for the outcome.
    pub async fn ask(
        &self,
        id: &str,
        command: A::Command,
    ) -> Result<Applied<A::Event>, AskError<A::Error>> {
        self.actor(id).ask(command).await
    }

    /// Queues `command` for actor `id` without waiting for it to be handled.
    pub async fn tell(&self, id: &str, command: A::Command) -> Result<(), AskError<A::Error>> {
        self.actor(id).tell(command).await
    }

    /// Activates actor `id` now (the seed's `CreateVM`); a no-op if it is active.
    pub async fn create_vm(&self, id: &str) -> Result<(), AskError<A::Error>> {
        let id: Arc<str> = id.into();
        self.shared.resolve(&id).await.map(drop)
    }

    /// Passivates actor `id` (the seed's `StopVM`): it handles what is already queued,
    /// snapshots under the policy and leaves memory. Returns whether it was active.
    pub async fn stop_vm(&self, id: &str) -> bool {
        let found = {
            let shard = lock(self.shared.shard(id));
            match shard.get(id) {
                Some(Slot::Active(h)) => Some((Some(h.tx.clone()), h.done.clone())),
                Some(Slot::Passivating(done)) => Some((None, done.clone())),
                None => None,
            }
        };
        let Some((tx, mut done)) = found else {
            return false;
        };
        if let Some(tx) = tx {
            let _ = tx.send(Envelope::Stop).await;
        }
        let _ = done.wait_for(|d| *d).await;
        true
    }

    /// Ids of the actors in memory (the seed's `GetActiveVMs`).
    pub fn active_vms(&self) -> Vec<String> {
        self.shared
            .shards
            .iter()
            .flat_map(|shard| {
                lock(shard)
                    .iter()
                    .filter(|(_, slot)| matches!(slot, Slot::Active(_)))
                    .map(|(id, _)| id.to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Number of actors in memory (passivating ones included).
    pub fn active_count(&self) -> usize {
        self.shared.active.load(Ordering::Relaxed)
    }

    /// The current state and version of actor `id`, activating it if needed (the seed's
    /// `CaptureState`).
    pub async fn capture_state(&self, id: &str) -> Result<(A, u64), AskError<A::Error>>
    where
        A: Clone,
    {
        let actor = self.actor(id);
        let (tx, rx) = oneshot::channel();
        actor
            .deliver(Envelope::Inspect(Box::new(move |state: &A, version| {
                let _ = tx.send((state.clone(), version));
            })))
            .await?;
        rx.await.map_err(|_| AskError::NoReply {
            actor_id: id.to_owned(),
        })
    }

    /// Counters of activations, passivations, conflicts, retries, snapshots and panics.
    pub fn stats(&self) -> RuntimeStats {
        let s = &self.shared.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RuntimeStats {
            activations: get(&s.activations),
            passivations: get(&s.passivations),
            conflicts: get(&s.conflicts),
            retries: get(&s.retries),
            snapshots: get(&s.snapshots),
            panics: get(&s.panics),
            replayed: get(&s.replayed),
        }
    }

    /// Stops taking new commands, lets every actor handle what is already in its mailbox,
    /// snapshots under the policy and waits until all are passivated. Commands sent after this
    /// starts get [`AskError::ShutDown`].
    pub async fn shutdown(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        loop {
            let mut waits = Vec::new();
            for shard in self.shared.shards.iter() {
                for slot in lock(shard).values() {
                    match slot {
                        Slot::Active(h) => waits.push((Some(h.tx.clone()), h.done.clone())),
                        Slot::Passivating(done) => waits.push((None, done.clone())),
                    }
                }
            }
            if waits.is_empty() {
                return;
            }
            for (tx, mut done) in waits {
                if let Some(tx) = tx {
                    let _ = tx.send(Envelope::Stop).await;
                }
                let _ = done.wait_for(|d| *d).await;
            }
        }
    }
}

/// A handle on one actor: `ask` waits for the outcome, `tell` only for the mailbox. Cheap to
/// create; it remembers the actor's mailbox between messages and finds the actor again after a
/// passivation.
pub struct ActorRef<A: Actor> {
    id: Arc<str>,
    shared: Arc<Shared<A>>,
    cached: Mutex<Option<mpsc::Sender<Envelope<A>>>>,
}

impl<A: Actor> Clone for ActorRef<A> {
    fn clone(&self) -> Self {
        Self {
            id: self.id.clone(),
            shared: self.shared.clone(),
            cached: Mutex::new(lock(&self.cached).clone()),
        }
    }
}

impl<A: Actor> fmt::Debug for ActorRef<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActorRef")
            .field("actor_type", &A::TYPE)
            .field("id", &self.id)
            .finish()
    }
}

impl<A: Actor> ActorRef<A> {
    /// The actor's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Sends `command` and waits until it is handled: the events appended and the new
    /// version, or why not (the actor's own refusal is [`AskError::Rejected`]).
    pub async fn ask(&self, command: A::Command) -> Result<Applied<A::Event>, AskError<A::Error>> {
        let (tx, rx) = oneshot::channel();
        self.deliver(Envelope::Ask(command, tx)).await?;
        rx.await.unwrap_or_else(|_| {
            Err(AskError::NoReply {
                actor_id: self.id.to_string(),
            })
        })
    }

    /// Queues `command`; waits only while the mailbox is full. The outcome is not reported
    /// (failures are logged and counted in the metrics).
    pub async fn tell(&self, command: A::Command) -> Result<(), AskError<A::Error>> {
        self.deliver(Envelope::Tell(command)).await
    }

    async fn deliver(&self, mut envelope: Envelope<A>) -> Result<(), AskError<A::Error>> {
        loop {
            let known = {
                let mut cached = lock(&self.cached);
                match cached.as_ref() {
                    Some(tx) => match tx.try_send(envelope) {
                        Ok(()) => return Ok(()),
                        Err(TrySendError::Full(back)) => {
                            envelope = back;
                            cached.clone()
                        }
                        Err(TrySendError::Closed(back)) => {
                            envelope = back;
                            *cached = None;
                            None
                        }
                    },
                    None => None,
                }
            };
            let tx = match known {
                Some(tx) => tx,
                None => {
                    let tx = self.shared.resolve(&self.id).await?;
                    *lock(&self.cached) = Some(tx.clone());
                    tx
                }
            };
            match tx.send(envelope).await {
                Ok(()) => return Ok(()),
                // The actor passivated between lookup and send: find (or activate) it again.
                Err(mpsc::error::SendError(back)) => {
                    envelope = back;
                    *lock(&self.cached) = None;
                }
            }
        }
    }
}

impl<A: Actor> Shared<A> {
    fn shard(&self, id: &str) -> &Shard<A> {
        let h = self.hasher.hash_one(id);
        &self.shards[(h as usize) % SHARDS]
    }

    fn now_ticks(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// The mailbox of actor `id`, activating it if needed (evicting at the cap).
    async fn resolve(
        self: &Arc<Self>,
        id: &Arc<str>,
    ) -> Result<mpsc::Sender<Envelope<A>>, AskError<A::Error>> {
        if let Err(e) = limits::validate_actor_id(id) {
            return Err(AskError::Activation {
                actor_id: id.to_string(),
                reason: format!("invalid actor id: {e}"),
            });
        }
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(AskError::ShutDown {
                    actor_id: id.to_string(),
                });
            }
            let waiting = {
                let mut shard = lock(self.shard(id));
                match shard.get(id) {
                    Some(Slot::Active(h)) => return Ok(h.tx.clone()),
                    Some(Slot::Passivating(done)) => Some(done.clone()),
                    None => {
                        if self.active.fetch_add(1, Ordering::AcqRel) < self.config.max_active {
                            let handle = self.spawn_vm(id.clone());
                            let tx = handle.tx.clone();
                            shard.insert(id.clone(), Slot::Active(handle));
                            self.metrics.active.increment(1.0);
                            return Ok(tx);
                        }
                        self.active.fetch_sub(1, Ordering::AcqRel);
                        None
                    }
                }
            };
            let mut wait = match waiting {
                Some(done) => done,
                // At the cap: passivate the least recently used actor and wait for it.
                None => match self.pick_victim() {
                    Some((tx, done)) => {
                        let _ = tx.send(Envelope::Stop).await;
                        done
                    }
                    None => {
                        // Every actor is already leaving: let them finish.
                        tokio::task::yield_now().await;
                        continue;
                    }
                },
            };
            let _ = wait.wait_for(|d| *d).await;
        }
    }

    /// The least recently used of a sample of active actors.
    fn pick_victim(&self) -> Option<(mpsc::Sender<Envelope<A>>, watch::Receiver<bool>)> {
        let start = self.evict_cursor.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(u64, mpsc::Sender<Envelope<A>>, watch::Receiver<bool>)> = None;
        let mut seen = 0;
        for i in 0..SHARDS {
            let shard = lock(&self.shards[(start + i) % SHARDS]);
            for slot in shard.values() {
                if let Slot::Active(h) = slot {
                    let used = h.last_used.load(Ordering::Relaxed);
                    if best.as_ref().is_none_or(|(b, _, _)| used < *b) {
                        best = Some((used, h.tx.clone(), h.done.clone()));
                    }
                    seen += 1;
                }
            }
            if seen >= EVICTION_SAMPLE {
                break;
            }
        }
        best.map(|(_, tx, done)| (tx, done))
    }

    fn spawn_vm(self: &Arc<Self>, id: Arc<str>) -> Handle<A> {
        let (tx, rx) = mpsc::channel(self.config.mailbox_capacity);
        let (done_tx, done) = watch::channel(false);
        let last_used = Arc::new(AtomicU64::new(self.now_ticks()));
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(run_vm(
            self.clone(),
            id,
            rx,
            done_tx,
            last_used.clone(),
            generation,
        ));
        Handle {
            tx,
            last_used,
            done,
            generation,
        }
    }

    /// Marks the actor as leaving (new messages wait for it to finish).
    fn begin_passivation(&self, id: &Arc<str>, generation: u64, done: &watch::Sender<bool>) {
        let mut shard = lock(self.shard(id));
        if let Some(slot) = shard.get_mut(id)
            && matches!(slot, Slot::Active(h) if h.generation == generation)
        {
            *slot = Slot::Passivating(done.subscribe());
        }
    }

    fn finish_passivation(&self, id: &Arc<str>, done: &watch::Sender<bool>) {
        {
            let mut shard = lock(self.shard(id));
            if matches!(shard.get(id), Some(Slot::Passivating(_))) {
                shard.remove(id);
            }
        }
        self.active.fetch_sub(1, Ordering::AcqRel);
        self.metrics.active.decrement(1.0);
        self.metrics.passivations.increment(1);
        bump(&self.stats.passivations);
        done.send_replace(true);
    }
}

/// Loads an actor: the latest snapshot that decodes, then the events after it.
async fn load<A: Actor>(shared: &Shared<A>, id: &str) -> Result<(A, u64, u64), String> {
    let mut state = A::default();
    let mut version = 0;
    if let Some(snapshots) = &shared.snapshots {
        match snapshots.get_latest_snapshot(id).await {
            Ok(Some(snapshot)) => match snapshot.decode::<A>() {
                Ok(decoded) => {
                    state = decoded;
                    version = snapshot.version;
                }
                Err(e) => tracing::warn!(
                    actor_type = A::TYPE,
                    actor_id = id,
                    snapshot_version = snapshot.version,
                    error = %e,
                    "snapshot does not decode into the current state type; replaying all events"
                ),
            },
            Ok(None) => {}
            Err(e) => return Err(format!("loading its snapshot failed: {e}")),
        }
    }
    let replayed = replay(shared, id, &mut state, &mut version).await?;
    Ok((state, version, replayed))
}

/// Applies the stored events after `version` to `state`.
async fn replay<A: Actor>(
    shared: &Shared<A>,
    id: &str,
    state: &mut A,
    version: &mut u64,
) -> Result<u64, String> {
    let mut events = shared.store.stream_events(id, *version + 1);
    let mut replayed = 0;
    while let Some(item) = events.next().await {
        let event = item.map_err(|e| format!("reading its events failed: {e}"))?;
        let decoded: A::Event = event.decode().map_err(|e| {
            format!(
                "stored event {} (version {}, type {}) is not a {} event: {e}",
                event.id(),
                event.version(),
                event.event_type(),
                A::TYPE
            )
        })?;
        state.apply(&decoded);
        *version = event.version();
        replayed += 1;
    }
    Ok(replayed)
}

struct Vm<A: Actor> {
    shared: Arc<Shared<A>>,
    id: Arc<str>,
    state: A,
    version: u64,
    since_snapshot: u64,
    /// Set when a reload after a panic failed: the state is unknown, so every command is
    /// refused until the actor is activated again.
    broken: Option<String>,
}

async fn run_vm<A: Actor>(
    shared: Arc<Shared<A>>,
    id: Arc<str>,
    mut rx: mpsc::Receiver<Envelope<A>>,
    done: watch::Sender<bool>,
    last_used: Arc<AtomicU64>,
    generation: u64,
) {
    bump(&shared.stats.activations);
    shared.metrics.activations.increment(1);
    let mut vm = match load(&shared, &id).await {
        Ok((state, version, replayed)) => {
            shared.metrics.replayed.record(replayed as f64);
            shared.stats.replayed.fetch_add(replayed, Ordering::Relaxed);
            Vm {
                shared: shared.clone(),
                id: id.clone(),
                state,
                version,
                since_snapshot: replayed,
                broken: None,
            }
        }
        Err(reason) => {
            tracing::warn!(actor_type = A::TYPE, actor_id = %id, %reason, "activation failed");
            shared.begin_passivation(&id, generation, &done);
            rx.close();
            while let Some(envelope) = rx.recv().await {
                if let Envelope::Ask(_, reply) = envelope {
                    let _ = reply.send(Err(AskError::Activation {
                        actor_id: id.to_string(),
                        reason: reason.clone(),
                    }));
                }
            }
            shared.finish_passivation(&id, &done);
            return;
        }
    };

    let idle = shared.config.idle_timeout;
    let sleep = tokio::time::sleep(idle.unwrap_or(Duration::from_secs(86_400)));
    tokio::pin!(sleep);
    let mut handled = 0u64;
    let mut seen = 0u64;
    loop {
        let envelope = tokio::select! {
            biased;
            envelope = rx.recv() => envelope,
            () = &mut sleep, if idle.is_some() => {
                if handled == seen {
                    break;
                }
                seen = handled;
                sleep.as_mut().reset(tokio::time::Instant::now() + idle.unwrap_or_default());
                continue;
            }
        };
        let Some(envelope) = envelope else { break };
        if matches!(envelope, Envelope::Stop) {
            break;
        }
        handled += 1;
        shared.metrics.mailbox.record(rx.len() as f64);
        vm.process(envelope).await;
        if rx.is_empty() {
            last_used.store(shared.now_ticks(), Ordering::Relaxed);
        }
    }

    // Passivation: refuse new sends, handle what is queued, snapshot, leave.
    shared.begin_passivation(&id, generation, &done);
    rx.close();
    while let Some(envelope) = rx.recv().await {
        vm.process(envelope).await;
    }
    if vm.broken.is_none() && shared.config.snapshots.at_passivation(vm.since_snapshot) {
        vm.snapshot().await;
    }
    shared.finish_passivation(&id, &done);
}

impl<A: Actor> Vm<A> {
    async fn process(&mut self, envelope: Envelope<A>) {
        match envelope {
            Envelope::Ask(command, reply) => {
                let outcome = self.command(&command).await;
                let _ = reply.send(outcome);
                self.after_command().await;
            }
            Envelope::Tell(command) => {
                if let Err(e) = self.command(&command).await {
                    tracing::debug!(actor_type = A::TYPE, actor_id = %self.id, error = %e, "told command failed");
                }
                self.after_command().await;
            }
            Envelope::Inspect(look) => look(&self.state, self.version),
            Envelope::Stop => {}
        }
    }

    async fn command(
        &mut self,
        command: &A::Command,
    ) -> Result<Applied<A::Event>, AskError<A::Error>> {
        if let Some(reason) = &self.broken {
            self.shared.metrics.failed.increment(1);
            return Err(AskError::Activation {
                actor_id: self.id.to_string(),
                reason: reason.clone(),
            });
        }
        let started = Instant::now();
        let outcome = match AssertUnwindSafe(self.decide_and_append(command))
            .catch_unwind()
            .await
        {
            Ok(outcome) => outcome,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a non-string panic".to_owned());
                bump(&self.shared.stats.panics);
                self.shared.metrics.panics.increment(1);
                tracing::error!(actor_type = A::TYPE, actor_id = %self.id, %message, "handler panicked; reloading the actor from the store");
                self.reload().await;
                Err(AskError::Panicked {
                    actor_id: self.id.to_string(),
                    message,
                })
            }
        };
        let m = &self.shared.metrics;
        m.latency.record(started.elapsed().as_secs_f64());
        match &outcome {
            Ok(_) => m.ok.increment(1),
            Err(AskError::Rejected { .. }) => m.rejected.increment(1),
            Err(_) => m.failed.increment(1),
        }
        outcome
    }

    async fn reload(&mut self) {
        match load(&self.shared, &self.id).await {
            Ok((state, version, replayed)) => {
                self.state = state;
                self.version = version;
                self.since_snapshot = replayed;
            }
            Err(reason) => {
                tracing::error!(actor_type = A::TYPE, actor_id = %self.id, %reason, "reload after a panic failed");
                self.broken = Some(format!("reload after a panic failed: {reason}"));
            }
        }
    }

    fn encode(&self, events: &[A::Event]) -> Result<Vec<Event>, AskError<A::Error>> {
        events
            .iter()
            .zip(self.version + 1..)
            .map(|(event, version)| {
                let event_type = A::event_type(event);
                Event::builder(&*self.id, event_type)
                    .version(version)
                    .payload(event)
                    .build()
                    .map_err(|source| AskError::Codec {
                        actor_id: self.id.to_string(),
                        context: format!("encoding a {event_type} event"),
                        source,
                    })
            })
            .collect()
    }

    async fn decide_and_append(
        &mut self,
        command: &A::Command,
    ) -> Result<Applied<A::Event>, AskError<A::Error>> {
        let retry = self.shared.config.retry;
        let mut attempt = 1;
        loop {
            let events = match self.state.handle_async(command).await {
                Ok(events) => events,
                Err(source) => {
                    // A refusal is final only if it was decided on the latest state: another
                    // writer may have appended since (one version read, on this path only).
                    if attempt < retry.max_attempts && self.behind_the_store().await {
                        self.catch_up().await?;
                        attempt += 1;
                        bump(&self.shared.stats.retries);
                        self.shared.metrics.retries.increment(1);
                        continue;
                    }
                    return Err(AskError::Rejected {
                        actor_id: self.id.to_string(),
                        source,
                    });
                }
            };
            if events.is_empty() {
                return Ok(Applied {
                    version: self.version,
                    events,
                });
            }
            let mut stored = self.encode(&events)?;
            let to_publish = self.shared.bus.as_ref().map(|_| stored.clone());
            let appended = if stored.len() == 1 {
                match stored.pop() {
                    Some(one) => self.shared.store.save_event(one).await,
                    None => Ok(()),
                }
            } else {
                self.shared.store.save_events(stored).await
            };
            match appended {
                Ok(()) => {
                    for event in &events {
                        self.state.apply(event);
                    }
                    let n = events.len() as u64;
                    self.version += n;
                    self.since_snapshot += n;
                    self.shared.metrics.events.increment(n);
                    if let (Some((bus, namespace)), Some(stored)) = (&self.shared.bus, to_publish) {
                        for event in &stored {
                            if let Err(e) = bus.publish(namespace, event).await {
                                tracing::warn!(actor_type = A::TYPE, actor_id = %self.id, error = %e, "publishing an appended event failed");
                            }
                        }
                    }
                    return Ok(Applied {
                        version: self.version,
                        events,
                    });
                }
                Err(e) if e.is_version_conflict() => {
                    bump(&self.shared.stats.conflicts);
                    self.shared.metrics.conflicts.increment(1);
                    if attempt >= retry.max_attempts {
                        return Err(AskError::Conflict {
                            actor_id: self.id.to_string(),
                            attempts: attempt,
                        });
                    }
                    // Another writer got there first: fold in its events, wait, decide again.
                    self.catch_up().await?;
                    attempt += 1;
                    bump(&self.shared.stats.retries);
                    self.shared.metrics.retries.increment(1);
                    tokio::time::sleep(retry.backoff_for(attempt)).await;
                }
                Err(source) => {
                    return Err(AskError::Store {
                        actor_id: self.id.to_string(),
                        source,
                    });
                }
            }
        }
    }

    /// Whether the store holds events this VM has not applied.
    async fn behind_the_store(&self) -> bool {
        match self.shared.store.get_latest_version(&self.id).await {
            Ok(latest) => latest > self.version,
            Err(e) => {
                tracing::warn!(actor_type = A::TYPE, actor_id = %self.id, error = %e, "could not check for newer events before refusing");
                false
            }
        }
    }

    /// Folds in the events other writers appended.
    async fn catch_up(&mut self) -> Result<(), AskError<A::Error>> {
        let replayed = replay(&self.shared, &self.id, &mut self.state, &mut self.version)
            .await
            .map_err(|reason| AskError::Activation {
                actor_id: self.id.to_string(),
                reason,
            })?;
        self.since_snapshot += replayed;
        Ok(())
    }

    async fn after_command(&mut self) {
        if self.shared.snapshots.is_some()
            && self
                .shared
                .config
                .snapshots
                .after_command(self.since_snapshot)
        {
            self.snapshot().await;
        }
    }

    async fn snapshot(&mut self) {
        let Some(snapshots) = &self.shared.snapshots else {
            return;
        };
        let snapshot = match ActorSnapshot::new(&*self.id, self.version, &self.state) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(actor_type = A::TYPE, actor_id = %self.id, error = %e, "state does not encode; no snapshot");
                return;
            }
        };
        match snapshots.save_snapshot(snapshot).await {
            Ok(()) => {
                self.since_snapshot = 0;
                bump(&self.shared.stats.snapshots);
                self.shared.metrics.snapshots.increment(1);
            }
            Err(e) => {
                tracing::warn!(actor_type = A::TYPE, actor_id = %self.id, error = %e, "saving a snapshot failed");
            }
        }
    }
}
