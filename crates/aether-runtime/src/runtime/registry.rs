//! The registry of active VMs: the `Shared` state of a runtime, its shards of actor slots,
//! activation and passivation bookkeeping, the sampled LRU eviction at the cap, the idle
//! sweeper, and the counters behind [`RuntimeStats`].

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aether_core::{
    EventBroadcaster, EventStore, Namespace, ReminderStore, SnapshotStore, Upcasters, limits,
};
use tokio::sync::{Notify, mpsc};

use super::vm::{Cell, Envelope, run_vm};
use super::{Rules, lock};
use crate::actor::Actor;
use crate::config::RuntimeConfig;
use crate::error::AskError;
use crate::metrics::Metrics;

const SHARDS: usize = 64;
/// Actors looked at when choosing one to evict (sampled LRU).
const EVICTION_SAMPLE: usize = 64;

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
    /// Commands with an id the actor had already applied, answered from their stored events
    /// instead of being decided again.
    pub duplicates: u64,
}

#[derive(Debug, Default)]
pub(super) struct Stats {
    pub(super) replayed: AtomicU64,
    pub(super) activations: AtomicU64,
    pub(super) passivations: AtomicU64,
    pub(super) conflicts: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) snapshots: AtomicU64,
    pub(super) panics: AtomicU64,
    pub(super) duplicates: AtomicU64,
}

pub(super) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub(super) struct Handle<A: Actor> {
    pub(super) tx: mpsc::Sender<Envelope<A>>,
    pub(super) cell: Arc<Cell<A>>,
    pub(super) generation: u64,
}

/// The way to an active actor: its mailbox, and its cell (for a caller that finds it idle).
pub(super) struct Door<A: Actor> {
    pub(super) tx: mpsc::Sender<Envelope<A>>,
    pub(super) cell: Arc<Cell<A>>,
}

impl<A: Actor> Clone for Door<A> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            cell: self.cell.clone(),
        }
    }
}

impl<A: Actor> Handle<A> {
    fn door(&self) -> Door<A> {
        Door {
            tx: self.tx.clone(),
            cell: self.cell.clone(),
        }
    }
}

pub(super) enum Slot<A: Actor> {
    Active(Handle<A>),
    /// Draining its mailbox and snapshotting; a new activation waits for it.
    Passivating(u64),
}

impl<A: Actor> Slot<A> {
    pub(super) fn generation(&self) -> u64 {
        match self {
            Slot::Active(h) => h.generation,
            Slot::Passivating(g) => *g,
        }
    }
}

type Shard<A> = Mutex<HashMap<Arc<str>, Slot<A>>>;

/// An actor chosen for eviction: id, mailbox, activation.
type Victim<A> = (Arc<str>, mpsc::Sender<Envelope<A>>, u64);

pub(crate) struct Shared<A: Actor> {
    pub(super) store: Arc<dyn EventStore>,
    pub(super) snapshots: Option<Arc<dyn SnapshotStore>>,
    pub(super) bus: Option<(Arc<dyn EventBroadcaster>, Namespace)>,
    /// Where handlers' reminders are set and cancelled (`RuntimeBuilder::reminders`).
    pub(super) reminders: Option<Arc<dyn ReminderStore>>,
    pub(super) config: RuntimeConfig,
    /// Stored events are upcast through these before decoding; new events are written at their
    /// types' current versions.
    pub(crate) upcasters: Upcasters,
    pub(super) shards: Box<[Shard<A>]>,
    hasher: RandomState,
    pub(super) active: AtomicUsize,
    pub(super) closed: AtomicBool,
    generations: AtomicU64,
    evict_cursor: AtomicUsize,
    /// Woken whenever an actor finishes passivating.
    passivated: Notify,
    /// Woken (for shutdown) when the passivation count reaches `drain_target`, and when no
    /// actor is left in memory: one wake-up per batch, not one per actor.
    drained: Notify,
    drain_target: AtomicU64,
    sweeper: AtomicBool,
    clock: AtomicU64,
    /// What a loaded EventStorming model allows this actor type (see `load_model`).
    pub(crate) rules: std::sync::OnceLock<Arc<Rules>>,
    pub(super) stats: Stats,
    pub(super) metrics: Metrics,
}

impl<A: Actor> Shared<A> {
    /// The shared state of a new runtime (see `RuntimeBuilder::build`).
    pub(super) fn new(
        store: Arc<dyn EventStore>,
        snapshots: Option<Arc<dyn SnapshotStore>>,
        bus: Option<(Arc<dyn EventBroadcaster>, Namespace)>,
        reminders: Option<Arc<dyn ReminderStore>>,
        config: RuntimeConfig,
        upcasters: Upcasters,
    ) -> Self {
        let shards = (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect();
        Shared {
            store,
            snapshots,
            bus,
            reminders,
            config,
            upcasters,
            shards,
            hasher: RandomState::new(),
            active: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            generations: AtomicU64::new(0),
            evict_cursor: AtomicUsize::new(0),
            passivated: Notify::new(),
            drained: Notify::new(),
            drain_target: AtomicU64::new(u64::MAX),
            sweeper: AtomicBool::new(false),
            clock: AtomicU64::new(1),
            rules: std::sync::OnceLock::new(),
            stats: Stats::default(),
            metrics: Metrics::new(A::TYPE),
        }
    }

    pub(super) fn shard(&self, id: &str) -> &Shard<A> {
        let h = self.hasher.hash_one(id);
        &self.shards[(h as usize) % SHARDS]
    }

    /// The use clock: a logical time that advances at every activation and every idle sweep.
    /// Reading it is one load of a rarely written word, so actors stamp it for free; LRU
    /// eviction compares stamps, and the sweeper knows which stamp it saw a period ago.
    pub(super) fn now_ticks(&self) -> u64 {
        self.clock.load(Ordering::Relaxed)
    }

    /// The way to actor `id` if it is in memory and not passivating; never activates it.
    pub(super) fn active_door(&self, id: &str) -> Option<Door<A>> {
        match lock(self.shard(id)).get(id) {
            Some(Slot::Active(handle)) => Some(handle.door()),
            _ => None,
        }
    }

    /// The way to actor `id`, activating it if needed (evicting at the cap).
    pub(super) async fn resolve(
        self: &Arc<Self>,
        id: &Arc<str>,
    ) -> Result<Door<A>, AskError<A::Error>> {
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
                    Some(Slot::Active(h)) => return Ok(h.door()),
                    Some(Slot::Passivating(generation)) => Some((id.clone(), *generation)),
                    None => {
                        if self.active.fetch_add(1, Ordering::AcqRel) < self.config.max_active {
                            let handle = self.spawn_vm(id.clone());
                            let door = handle.door();
                            shard.insert(id.clone(), Slot::Active(handle));
                            self.metrics.active.increment(1.0);
                            return Ok(door);
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
                    let used = h.cell.last_used.load(Ordering::Relaxed);
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
        let cell = Arc::new(Cell::new(self.clock.fetch_add(1, Ordering::Relaxed) + 1));
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(run_vm(self.clone(), id, rx, cell.clone(), generation));
        Handle {
            tx,
            cell,
            generation,
        }
    }

    /// Waits until the activation `generation` of actor `id` has left memory.
    pub(super) async fn wait_gone(&self, id: &str, generation: u64) {
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

    /// Asks every actor of `stops` to passivate, with at most `window` passivations under way at
    /// a time. A full mailbox is not waited on in the first pass: those actors are asked last.
    pub(super) async fn stop_all(&self, stops: Vec<mpsc::Sender<Envelope<A>>>, window: u64) {
        let start = self.stats.passivations.load(Ordering::Acquire);
        let window = window.max(2);
        let mut sent = 0u64;
        let mut busy = Vec::new();
        for tx in stops {
            if sent >= window {
                // Full: wait until half the window has passivated (one wake-up per half window).
                let target = start + sent - window / 2;
                self.drain_target.store(target, Ordering::SeqCst);
                loop {
                    let notified = self.drained.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    if self.stats.passivations.load(Ordering::SeqCst) >= target
                        || self.active.load(Ordering::SeqCst) == 0
                    {
                        break;
                    }
                    notified.await;
                }
            }
            match tx.try_send(Envelope::Stop) {
                Ok(()) => sent += 1,
                Err(mpsc::error::TrySendError::Full(_)) => busy.push(tx),
                // Already gone.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        self.drain_target.store(u64::MAX, Ordering::SeqCst);
        for tx in busy {
            let _ = tx.send(Envelope::Stop).await;
        }
    }

    /// Waits until no actor is in memory (active or passivating).
    pub(super) async fn wait_none_active(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.active.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Marks the actor as leaving (new messages wait for it to finish).
    pub(super) fn begin_passivation(&self, id: &Arc<str>, generation: u64) {
        let mut shard = lock(self.shard(id));
        if let Some(slot) = shard.get_mut(id)
            && matches!(slot, Slot::Active(h) if h.generation == generation)
        {
            *slot = Slot::Passivating(generation);
        }
    }

    pub(super) fn finish_passivation(&self, id: &Arc<str>, generation: u64) {
        {
            let mut shard = lock(self.shard(id));
            if shard
                .get(id)
                .is_some_and(|slot| slot.generation() == generation)
            {
                shard.remove(id);
            }
        }
        let left = self.active.fetch_sub(1, Ordering::SeqCst) - 1;
        self.metrics.active.decrement(1.0);
        self.metrics.passivations.increment(1);
        let done = self.stats.passivations.fetch_add(1, Ordering::SeqCst) + 1;
        self.passivated.notify_waiters();
        if left == 0 || done >= self.drain_target.load(Ordering::SeqCst) {
            self.drained.notify_waiters();
        }
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
                    && h.cell.last_used.load(Ordering::Relaxed) < threshold
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
