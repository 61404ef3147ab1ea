//! The runtime: a registry of virtual actors, each a VM task with a mailbox.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant};

use aether_core::{
    ActorSnapshot, Event, EventBroadcaster, EventStore, Namespace, SnapshotStore, limits,
};
use futures::StreamExt;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::actor::Actor;
use crate::config::{RetryPolicy, RuntimeConfig, SnapshotPolicy};
use crate::error::AskError;
use crate::metrics::Metrics;

const SHARDS: usize = 64;
/// Actors looked at when choosing one to evict (sampled LRU).
const EVICTION_SAMPLE: usize = 64;
/// One command in this many has its latency measured.
const LATENCY_SAMPLE: u64 = 8;

type Reply<A> =
    oneshot::Sender<Result<Applied<<A as Actor>::Event>, AskError<<A as Actor>::Error>>>;

/// Double-boxed so the envelope stays two words wide (every mailbox slot has its size).
type Look<A> = Box<Box<dyn FnOnce(&A, u64) + Send>>;

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
    /// The runtime's use clock when the actor last emptied its mailbox.
    last_used: Arc<AtomicU64>,
    generation: u64,
}

enum Slot<A: Actor> {
    Active(Handle<A>),
    /// Draining its mailbox and snapshotting; a new activation waits for it.
    Passivating(u64),
}

impl<A: Actor> Slot<A> {
    fn generation(&self) -> u64 {
        match self {
            Slot::Active(h) => h.generation,
            Slot::Passivating(g) => *g,
        }
    }
}

type Shard<A> = Mutex<HashMap<Arc<str>, Slot<A>>>;

/// The commands of one aggregate in a loaded model and the events each may emit.
#[derive(Debug, Default)]
pub(crate) struct Rules {
    pub(crate) aggregate: String,
    pub(crate) commands: HashMap<String, Vec<String>>,
}

impl Rules {
    fn check<A: Actor>(&self, command: &A::Command, events: &[A::Event]) -> Result<(), String> {
        let declared = match A::command_type(command) {
            Some(name) => Some((
                name,
                self.commands.get(name).ok_or_else(|| {
                    format!(
                        "the model declares no command `{name}` for aggregate `{}`",
                        self.aggregate
                    )
                })?,
            )),
            None => None,
        };
        for event in events {
            let ty = A::event_type(event);
            let allowed = match declared {
                Some((_, emits)) => emits.iter().any(|e| e == ty),
                None => self.commands.values().flatten().any(|e| e == ty),
            };
            if !allowed {
                return Err(match declared {
                    Some((name, _)) => format!(
                        "the model does not let command `{name}` of aggregate `{}` emit event `{ty}`",
                        self.aggregate
                    ),
                    None => format!(
                        "the model does not let aggregate `{}` emit event `{ty}`",
                        self.aggregate
                    ),
                });
            }
        }
        Ok(())
    }
}

/// An actor chosen for eviction: id, mailbox, activation.
type Victim<A> = (Arc<str>, mpsc::Sender<Envelope<A>>, u64);

pub(crate) struct Shared<A: Actor> {
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
    /// Woken whenever an actor finishes passivating.
    passivated: Notify,
    sweeper: AtomicBool,
    clock: AtomicU64,
    /// What a loaded EventStorming model allows this actor type (see `load_model`).
    pub(crate) rules: std::sync::OnceLock<Arc<Rules>>,
    stats: Stats,
    metrics: Metrics,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Configures a [`Runtime`]: the store is required, everything else has a default.
///
/// Setters may come in any order: [`config`](Self::config) replaces the base configuration, and
/// the single-value setters (`snapshot_policy`, `retry`, `idle_timeout`, `max_active`,
/// `mailbox_capacity`) apply on top of it whether they come before or after it.
pub struct RuntimeBuilder<A: Actor> {
    store: Arc<dyn EventStore>,
    snapshots: Option<Arc<dyn SnapshotStore>>,
    bus: Option<(Arc<dyn EventBroadcaster>, Namespace)>,
    config: RuntimeConfig,
    overrides: Vec<Override>,
    _actor: PhantomData<fn() -> A>,
}

/// A setter's value, applied on top of the base configuration at `build`.
#[derive(Debug, Clone)]
enum Override {
    Snapshots(SnapshotPolicy),
    Retry(RetryPolicy),
    IdleTimeout(Option<Duration>),
    MaxActive(usize),
    MailboxCapacity(usize),
}

impl Override {
    fn apply(&self, config: &mut RuntimeConfig) {
        match self {
            Self::Snapshots(p) => config.snapshots = *p,
            Self::Retry(r) => config.retry = *r,
            Self::IdleTimeout(t) => config.idle_timeout = *t,
            Self::MaxActive(n) => config.max_active = *n,
            Self::MailboxCapacity(n) => config.mailbox_capacity = *n,
        }
    }
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
        self.overrides.push(Override::Snapshots(policy));
        self
    }

    /// Publishes every appended event on `bus` in `namespace`, after it is stored.
    pub fn bus(mut self, bus: Arc<dyn EventBroadcaster>, namespace: Namespace) -> Self {
        self.bus = Some((bus, namespace));
        self
    }

    /// Sets the conflict retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.overrides.push(Override::Retry(retry));
        self
    }

    /// Passivates actors idle this long (`None`: never).
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.overrides.push(Override::IdleTimeout(timeout));
        self
    }

    /// Caps the actors in memory (0 counts as 1).
    pub fn max_active(mut self, max: usize) -> Self {
        self.overrides.push(Override::MaxActive(max));
        self
    }

    /// Sets the mailbox size per actor (0 counts as 1).
    pub fn mailbox_capacity(mut self, capacity: usize) -> Self {
        self.overrides.push(Override::MailboxCapacity(capacity));
        self
    }

    /// Replaces the base configuration. Values given with the single-value setters are kept,
    /// before or after this call.
    pub fn config(mut self, config: RuntimeConfig) -> Self {
        self.config = config;
        self
    }

    /// The configuration `build` uses: the base, the setters' values in the order given, and
    /// the clamps documented on [`RuntimeConfig`] (`mailbox_capacity` and `max_active` of 0
    /// count as 1).
    pub fn effective_config(&self) -> RuntimeConfig {
        let mut config = self.config.clone();
        for o in &self.overrides {
            o.apply(&mut config);
        }
        config.mailbox_capacity = config.mailbox_capacity.max(1);
        config.max_active = config.max_active.max(1);
        config
    }

    /// Builds the runtime. Actors are activated on their first message.
    pub fn build(self) -> Runtime<A> {
        let config = self.effective_config();
        let shards = (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect();
        Runtime {
            shared: Arc::new(Shared {
                store: self.store,
                snapshots: self.snapshots,
                bus: self.bus,
                config,
                shards,
                hasher: RandomState::new(),
                active: AtomicUsize::new(0),
                closed: AtomicBool::new(false),
                generations: AtomicU64::new(0),
                evict_cursor: AtomicUsize::new(0),
                passivated: Notify::new(),
                sweeper: AtomicBool::new(false),
                clock: AtomicU64::new(1),
                rules: std::sync::OnceLock::new(),
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
    pub(crate) shared: Arc<Shared<A>>,
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
            overrides: Vec::new(),
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
                Some(Slot::Active(h)) => Some((Some(h.tx.clone()), h.generation)),
                Some(Slot::Passivating(generation)) => Some((None, *generation)),
                None => None,
            }
        };
        let Some((tx, generation)) = found else {
            return false;
        };
        if let Some(tx) = tx {
            let _ = tx.send(Envelope::Stop).await;
        }
        self.shared.wait_gone(id, generation).await;
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
            .deliver(Envelope::Inspect(Box::new(Box::new(
                move |state: &A, version| {
                    let _ = tx.send((state.clone(), version));
                },
            ))))
            .await?;
        rx.await.map_err(|_| AskError::NoReply {
            actor_id: id.into(),
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
                for (id, slot) in lock(shard).iter() {
                    let tx = match slot {
                        Slot::Active(h) => Some(h.tx.clone()),
                        Slot::Passivating(_) => None,
                    };
                    waits.push((id.clone(), tx, slot.generation()));
                }
            }
            if waits.is_empty() {
                return;
            }
            for (id, tx, generation) in waits {
                if let Some(tx) = tx {
                    let _ = tx.send(Envelope::Stop).await;
                }
                self.shared.wait_gone(&id, generation).await;
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
                actor_id: self.id.clone(),
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

    /// The use clock: a logical time that advances at every activation and every idle sweep.
    /// Reading it is one load of a rarely written word, so actors stamp it for free; LRU
    /// eviction compares stamps, and the sweeper knows which stamp it saw a period ago.
    fn now_ticks(&self) -> u64 {
        self.clock.load(Ordering::Relaxed)
    }

    /// The mailbox of actor `id`, activating it if needed (evicting at the cap).
    async fn resolve(
        self: &Arc<Self>,
        id: &Arc<str>,
    ) -> Result<mpsc::Sender<Envelope<A>>, AskError<A::Error>> {
        if let Err(e) = limits::validate_actor_id(id) {
            return Err(AskError::Activation {
                actor_id: id.clone(),
                reason: format!("invalid actor id: {e}"),
            });
        }
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(AskError::ShutDown {
                    actor_id: id.clone(),
                });
            }
            let waiting = {
                let mut shard = lock(self.shard(id));
                match shard.get(id) {
                    Some(Slot::Active(h)) => return Ok(h.tx.clone()),
                    Some(Slot::Passivating(generation)) => Some((id.clone(), *generation)),
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
            let (gone, generation) = match waiting {
                Some(wait) => wait,
                // At the cap: passivate the least recently used actor and wait for it.
                None => match self.pick_victim() {
                    Some((victim, tx, generation)) => {
                        let _ = tx.send(Envelope::Stop).await;
                        (victim, generation)
                    }
                    None => {
                        // Every actor is already leaving: let them finish.
                        tokio::task::yield_now().await;
                        continue;
                    }
                },
            };
            self.wait_gone(&gone, generation).await;
        }
    }

    /// The least recently used of a sample of active actors.
    fn pick_victim(&self) -> Option<Victim<A>> {
        let start = self.evict_cursor.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(u64, Victim<A>)> = None;
        let mut seen = 0;
        for i in 0..SHARDS {
            let shard = lock(&self.shards[(start + i) % SHARDS]);
            for (id, slot) in shard.iter() {
                if let Slot::Active(h) = slot {
                    let used = h.last_used.load(Ordering::Relaxed);
                    if best.as_ref().is_none_or(|(b, _)| used < *b) {
                        best = Some((used, (id.clone(), h.tx.clone(), h.generation)));
                    }
                    seen += 1;
                }
            }
            if seen >= EVICTION_SAMPLE {
                break;
            }
        }
        best.map(|(_, victim)| victim)
    }

    fn spawn_vm(self: &Arc<Self>, id: Arc<str>) -> Handle<A> {
        if let Some(idle) = self.config.idle_timeout
            && !self.sweeper.swap(true, Ordering::AcqRel)
        {
            tokio::spawn(sweep(Arc::downgrade(self), idle));
        }
        let (tx, rx) = mpsc::channel(self.config.mailbox_capacity);
        let last_used = Arc::new(AtomicU64::new(
            self.clock.fetch_add(1, Ordering::Relaxed) + 1,
        ));
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(run_vm(self.clone(), id, rx, last_used.clone(), generation));
        Handle {
            tx,
            last_used,
            generation,
        }
    }

    /// Waits until the activation `generation` of actor `id` has left memory.
    async fn wait_gone(&self, id: &str, generation: u64) {
        loop {
            let notified = self.passivated.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let present = lock(self.shard(id))
                .get(id)
                .is_some_and(|slot| slot.generation() == generation);
            if !present {
                return;
            }
            notified.await;
        }
    }

    /// Marks the actor as leaving (new messages wait for it to finish).
    fn begin_passivation(&self, id: &Arc<str>, generation: u64) {
        let mut shard = lock(self.shard(id));
        if let Some(slot) = shard.get_mut(id)
            && matches!(slot, Slot::Active(h) if h.generation == generation)
        {
            *slot = Slot::Passivating(generation);
        }
    }

    fn finish_passivation(&self, id: &Arc<str>, generation: u64) {
        {
            let mut shard = lock(self.shard(id));
            if shard
                .get(id)
                .is_some_and(|slot| slot.generation() == generation)
            {
                shard.remove(id);
            }
        }
        self.active.fetch_sub(1, Ordering::AcqRel);
        self.metrics.active.decrement(1.0);
        self.metrics.passivations.increment(1);
        bump(&self.stats.passivations);
        self.passivated.notify_waiters();
    }
}

/// Passivates actors idle for `idle`: every half of it, the sweeper advances the use clock
/// and stops the actors whose stamp predates the advance two sweeps ago (unused for at least
/// `idle`) and whose mailbox is empty. Ends with the runtime.
async fn sweep<A: Actor>(shared: std::sync::Weak<Shared<A>>, idle: Duration) {
    let mut tick = tokio::time::interval((idle / 2).max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut marks = std::collections::VecDeque::with_capacity(3);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        marks.push_back(shared.clock.fetch_add(1, Ordering::Relaxed) + 1);
        if marks.len() < 3 {
            continue;
        }
        let threshold = marks.pop_front().unwrap_or(0);
        let mut idle_ones = Vec::new();
        for shard in shared.shards.iter() {
            for slot in lock(shard).values() {
                if let Slot::Active(h) = slot
                    && h.last_used.load(Ordering::Relaxed) < threshold
                    && h.tx.capacity() == h.tx.max_capacity()
                {
                    idle_ones.push(h.tx.clone());
                }
            }
        }
        for tx in idle_ones {
            // A full mailbox means the actor is not idle after all.
            let _ = tx.try_send(Envelope::Stop);
        }
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
    commands: u64,
}

async fn run_vm<A: Actor>(
    shared: Arc<Shared<A>>,
    id: Arc<str>,
    mut rx: mpsc::Receiver<Envelope<A>>,
    last_used: Arc<AtomicU64>,
    generation: u64,
) {
    bump(&shared.stats.activations);
    shared.metrics.activations.increment(1);
    // Rare paths are boxed so they do not grow every idle actor's task.
    let mut vm = match Box::pin(load(&shared, &id)).await {
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
                commands: 0,
            }
        }
        Err(reason) => {
            tracing::warn!(actor_type = A::TYPE, actor_id = %id, %reason, "activation failed");
            shared.begin_passivation(&id, generation);
            rx.close();
            while let Some(envelope) = rx.recv().await {
                if let Envelope::Ask(_, reply) = envelope {
                    let _ = reply.send(Err(AskError::Activation {
                        actor_id: id.clone(),
                        reason: reason.clone(),
                    }));
                }
            }
            shared.finish_passivation(&id, generation);
            return;
        }
    };

    // One loop for serving and for draining (a single await of `process` keeps the task small).
    let mut draining = false;
    while let Some(envelope) = rx.recv().await {
        if matches!(envelope, Envelope::Stop) {
            if !draining {
                // Passivation: refuse new sends, handle what is queued, then leave.
                draining = true;
                shared.begin_passivation(&id, generation);
                rx.close();
            }
            continue;
        }
        shared.metrics.mailbox.record(rx.len() as f64);
        Box::pin(vm.process(envelope)).await;
        if !draining && rx.is_empty() {
            last_used.store(shared.now_ticks(), Ordering::Relaxed);
        }
    }
    if !draining {
        shared.begin_passivation(&id, generation);
    }
    if vm.broken.is_none() && shared.config.snapshots.at_passivation(vm.since_snapshot) {
        Box::pin(vm.snapshot()).await;
    }
    shared.finish_passivation(&id, generation);
}

impl<A: Actor> Vm<A> {
    async fn process(&mut self, envelope: Envelope<A>) {
        let (command, reply) = match envelope {
            Envelope::Ask(command, reply) => (command, Some(reply)),
            Envelope::Tell(command) => (command, None),
            Envelope::Inspect(look) => return look(&self.state, self.version),
            Envelope::Stop => return,
        };
        let outcome = self.command(&command).await;
        match reply {
            Some(reply) => {
                let _ = reply.send(outcome);
            }
            None => {
                if let Err(e) = outcome {
                    tracing::debug!(actor_type = A::TYPE, actor_id = %self.id, error = %e, "told command failed");
                }
            }
        }
        self.after_command().await;
    }

    async fn command(
        &mut self,
        command: &A::Command,
    ) -> Result<Applied<A::Event>, AskError<A::Error>> {
        if let Some(reason) = &self.broken {
            self.shared.metrics.failed.increment(1);
            return Err(AskError::Activation {
                actor_id: self.id.clone(),
                reason: reason.clone(),
            });
        }
        // Latency is sampled (one command in 8): reading the clock twice per command would be
        // a noticeable share of a local round trip.
        self.commands = self.commands.wrapping_add(1);
        let started = self
            .commands
            .is_multiple_of(LATENCY_SAMPLE)
            .then(Instant::now);
        // Panics are caught around each poll of the pinned future (not by wrapping it in a
        // combinator, which would move it and double its size in every actor's task).
        let caught = {
            let mut decide = std::pin::pin!(self.decide_and_append(command));
            std::future::poll_fn(|cx| {
                match std::panic::catch_unwind(AssertUnwindSafe(|| decide.as_mut().poll(cx))) {
                    Ok(Poll::Pending) => Poll::Pending,
                    Ok(Poll::Ready(outcome)) => Poll::Ready(Ok(outcome)),
                    Err(panic) => Poll::Ready(Err(panic)),
                }
            })
            .await
        };
        let outcome = match caught {
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
                Box::pin(self.reload()).await;
                Err(AskError::Panicked {
                    actor_id: self.id.clone(),
                    message,
                })
            }
        };
        let m = &self.shared.metrics;
        if let Some(started) = started {
            m.latency.record(started.elapsed().as_secs_f64());
        }
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
                        actor_id: self.id.clone(),
                        context: format!("encoding a {event_type} event"),
                        source: Box::new(source),
                    })
            })
            .collect()
    }

    async fn decide_and_append(
        &mut self,
        command: &A::Command,
    ) -> Result<Applied<A::Event>, AskError<A::Error>> {
        let mut attempt = 1;
        loop {
            let events = match self.state.handle_async(command).await {
                Ok(events) => events,
                Err(source) => {
                    // A refusal is final only if it was decided on the latest state: another
                    // writer may have appended since (one version read, on this path only).
                    if attempt < self.shared.config.retry.max_attempts
                        && Box::pin(self.behind_the_store()).await
                    {
                        Box::pin(self.catch_up()).await?;
                        attempt += 1;
                        bump(&self.shared.stats.retries);
                        self.shared.metrics.retries.increment(1);
                        continue;
                    }
                    return Err(AskError::Rejected {
                        actor_id: self.id.clone(),
                        source,
                    });
                }
            };
            if let Some(rules) = self.shared.rules.get() {
                rules
                    .check::<A>(command, &events)
                    .map_err(|reason| AskError::NotInModel {
                        actor_id: self.id.clone(),
                        reason,
                    })?;
            }
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
                    if let Some(stored) = to_publish {
                        Box::pin(self.publish(stored)).await;
                    }
                    return Ok(Applied {
                        version: self.version,
                        events,
                    });
                }
                Err(e) if e.is_version_conflict() => {
                    bump(&self.shared.stats.conflicts);
                    self.shared.metrics.conflicts.increment(1);
                    if attempt >= self.shared.config.retry.max_attempts {
                        return Err(AskError::Conflict {
                            actor_id: self.id.clone(),
                            attempts: attempt,
                        });
                    }
                    // Another writer got there first: fold in its events, wait, decide again.
                    Box::pin(self.catch_up()).await?;
                    attempt += 1;
                    bump(&self.shared.stats.retries);
                    self.shared.metrics.retries.increment(1);
                    Box::pin(tokio::time::sleep(
                        self.shared.config.retry.backoff_for(attempt),
                    ))
                    .await;
                }
                Err(source) => {
                    return Err(AskError::Store {
                        actor_id: self.id.clone(),
                        source: Box::new(source),
                    });
                }
            }
        }
    }

    async fn publish(&self, stored: Vec<Event>) {
        let Some((bus, namespace)) = &self.shared.bus else {
            return;
        };
        for event in &stored {
            if let Err(e) = bus.publish(namespace, event).await {
                tracing::warn!(actor_type = A::TYPE, actor_id = %self.id, error = %e, "publishing an appended event failed");
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
                actor_id: self.id.clone(),
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
            Box::pin(self.snapshot()).await;
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
