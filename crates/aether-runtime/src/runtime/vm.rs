//! The VM: one task per active actor. It activates the actor (`load`: latest snapshot, then the
//! later events), serves its mailbox one envelope at a time, handles commands (decide, append at
//! the expected version, apply, publish; on a conflict fold in the other writer's events and
//! retry), catches handler panics and reloads, takes snapshots, and drains the mailbox on
//! passivation.
//!
//! One command's write protocol is in `write` (`Vm::decide_and_append`).
//!
//! The actor's state lives in a [`Cell`] behind an async lock, so that a caller who finds the
//! actor idle (nothing queued, nobody holding the lock) runs its ask on its own task
//! ([`Cell::idle`]): one command, one writer, no hop to the actor's task and back. The task
//! takes the same lock for every envelope, so the single-writer rule holds either way.

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::Poll;
use std::time::Instant;

use aether_core::{ActorSnapshot, CommandId};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::Applied;
use super::load::{LoadError, load, load_through_outages};
use super::recent::{Recent, now_millis};
use super::registry::{Shared, bump};
use super::timers::Timers;
use crate::actor::Actor;
use crate::error::AskError;

mod time;
mod write;

/// One command in this many has its latency measured.
const LATENCY_SAMPLE: u32 = 8;

type Reply<A> =
    oneshot::Sender<Result<Applied<<A as Actor>::Event>, AskError<<A as Actor>::Error>>>;

/// Double-boxed so the envelope stays two words wide (every mailbox slot has its size).
type Look<A> = Box<Box<dyn FnOnce(&A, u64) + Send>>;

pub(super) enum Envelope<A: Actor> {
    Ask(A::Command, Reply<A>),
    Tell(A::Command),
    /// A command with an id (boxed: rarer, and it must not widen every mailbox slot).
    Once(Box<Once<A>>),
    Inspect(Look<A>),
    Stop,
}

/// A command that carries an id: its events record the id as their causation id, and a command
/// whose id the actor has already applied is answered from the stored events, not decided again.
pub(super) struct Once<A: Actor> {
    pub(super) command: A::Command,
    pub(super) id: CommandId,
    pub(super) reply: Option<Reply<A>>,
}

/// An active actor: its state (taken by the task when it loads, given back when it leaves), and
/// what callers read to tell whether it is idle.
pub(super) struct Cell<A: Actor> {
    vm: tokio::sync::Mutex<Option<Vm<A>>>,
    /// Envelopes handed to the mailbox by `ActorRef` and not yet handled: an ask may run on its
    /// caller's task only when this is zero, so it never overtakes a message sent before it.
    /// (32 bits: a mailbox holds far fewer, and every idle actor keeps this cell.)
    pub(super) queued: AtomicU32,
    /// Set when the actor starts to passivate: callers go through the mailbox, which is closed.
    draining: AtomicBool,
    /// The runtime's use clock when the actor last finished a command with nothing queued.
    pub(super) last_used: AtomicU64,
}

impl<A: Actor> Cell<A> {
    pub(super) fn new(now: u64) -> Self {
        Self {
            vm: tokio::sync::Mutex::new(None),
            queued: AtomicU32::new(0),
            draining: AtomicBool::new(false),
            last_used: AtomicU64::new(now),
        }
    }

    /// The actor's state, locked for its task: at once when no caller holds it, otherwise
    /// after waiting (boxed: that wait's state would otherwise widen every idle actor's task).
    async fn lock(&self) -> tokio::sync::MutexGuard<'_, Option<Vm<A>>> {
        match self.vm.try_lock() {
            Ok(guard) => guard,
            Err(_) => Box::pin(self.vm.lock()).await,
        }
    }

    /// The actor, if it is loaded, not leaving, holds nobody's command and has nothing queued:
    /// the caller may run one command on its own task. Checked under the lock: the task
    /// counts an envelope handled before it lets go of the lock, so a zero count seen here
    /// means every message sent before this one has been handled.
    pub(super) fn idle(&self) -> Option<Idle<'_, A>> {
        if self.draining.load(Ordering::Acquire) {
            return None;
        }
        let guard = self.vm.try_lock().ok()?;
        let vm = tokio::sync::MutexGuard::try_map(guard, Option::as_mut).ok()?;
        (self.queued.load(Ordering::Acquire) == 0).then_some(Idle { cell: self, vm })
    }
}

/// An idle actor, held by a caller for one command (see [`Cell::idle`]).
pub(super) struct Idle<'a, A: Actor> {
    cell: &'a Cell<A>,
    vm: tokio::sync::MappedMutexGuard<'a, Vm<A>>,
}

impl<A: Actor> Idle<'_, A> {
    /// Handles `command` (with its id, if any) on the caller's task, as the actor's task would.
    /// Dropped before it finishes (the caller gave up), the command is abandoned like a lost
    /// reply: it may or may not be stored, and the actor folds in whatever the store holds
    /// before its next decision (an append at a stale version is refused).
    pub(super) async fn ask(
        mut self,
        command: A::Command,
        id: Option<CommandId>,
    ) -> Result<Applied<A::Event>, AskError<A::Error>> {
        let outcome = self.vm.decide(&command, id.as_ref()).await;
        self.vm.after_command().await;
        let now = self.vm.shared.now_ticks();
        self.cell.last_used.store(now, Ordering::Relaxed);
        outcome
    }
}

struct Vm<A: Actor> {
    shared: Arc<Shared<A>>,
    id: Arc<str>,
    state: A,
    version: u64,
    since_snapshot: u64,
    /// Set when a reload after a panic failed: the state is unknown, so every command is
    /// refused until the actor is activated again.
    /// (Boxed `String`: one word, so the timers' word costs an idle actor nothing.)
    #[allow(
        clippy::box_collection,
        reason = "one word in every idle actor, not two"
    )]
    broken: Option<Box<String>>,
    /// Set while a reload after a panic is under way (see `reload`).
    reloading: bool,
    /// Commands handled (wrapping), for the latency sample.
    commands: u32,
    recent: Recent,
    /// Volatile timers, aborted when the VM is dropped (passivation).
    timers: Timers,
}

pub(super) async fn run_vm<A: Actor>(
    shared: Arc<Shared<A>>,
    id: Arc<str>,
    mut rx: mpsc::Receiver<Envelope<A>>,
    cell: Arc<Cell<A>>,
    generation: u64,
) {
    bump(&shared.stats.activations);
    shared.metrics.activations.increment(1);
    // Loaded straight into the cell, under its lock (callers meanwhile use the mailbox): the
    // state never sits in this task's future, which every idle actor keeps.
    let mut slot = cell.lock().await;
    // Rare paths are boxed so they do not grow every idle actor's task.
    let loaded = catching(Box::pin(load_through_outages(&shared, &id)))
        .await
        .unwrap_or_else(|message| {
            bump(&shared.stats.panics);
            shared.metrics.panics.increment(1);
            Err(LoadError::Panicked { message })
        });
    match loaded {
        Ok(loaded) => {
            let replayed = loaded.replayed;
            shared.metrics.replayed.record(replayed as f64);
            shared.stats.replayed.fetch_add(replayed, Ordering::Relaxed);
            *slot = Some(Vm {
                shared: shared.clone(),
                id: id.clone(),
                state: loaded.state,
                version: loaded.version,
                since_snapshot: replayed,
                broken: None,
                reloading: false,
                commands: 0,
                recent: loaded.recent,
                timers: Timers::default(),
            });
        }
        Err(failure) => {
            drop(slot);
            Box::pin(refuse_all(&shared, &id, rx, failure, generation)).await;
            return;
        }
    }
    if let Some(vm) = slot.as_mut() {
        let ops = vm.activation_ops();
        if !ops.is_empty() {
            Box::pin(vm.activated(ops)).await;
        }
    }
    drop(slot);

    // One loop for serving and for draining (a single await of `process` keeps the task small).
    let mut draining = false;
    while let Some(envelope) = rx.recv().await {
        if matches!(envelope, Envelope::Stop) {
            if !draining {
                // Passivation: refuse new sends, handle what is queued, then leave.
                draining = true;
                cell.draining.store(true, Ordering::Release);
                shared.begin_passivation(&id, generation);
                rx.close();
            }
            continue;
        }
        shared.metrics.mailbox.record(rx.len() as f64);
        {
            let mut vm = cell.lock().await;
            if let Some(vm) = vm.as_mut() {
                Box::pin(vm.process(envelope)).await;
            }
            // Counted handled before the lock is let go (see `Cell::idle`).
            cell.queued.fetch_sub(1, Ordering::AcqRel);
        }
        if !draining && rx.is_empty() {
            cell.last_used.store(shared.now_ticks(), Ordering::Relaxed);
        }
    }
    if !draining {
        cell.draining.store(true, Ordering::Release);
        shared.begin_passivation(&id, generation);
    }
    // Under the lock: a caller running a command on its task finishes it first, and none
    // starts after (the actor is draining), so the snapshot holds every command.
    let mut slot = cell.lock().await;
    if let Some(vm) = slot.as_mut()
        && vm.broken.is_none()
        && shared.config.snapshots.at_passivation(vm.since_snapshot)
    {
        Box::pin(vm.snapshot()).await;
    }
    *slot = None;
    drop(slot);
    shared.finish_passivation(&id, generation);
}

/// After a failed activation: takes no new sends, and answers every queued command with the
/// failure, with its kind (a transient store failure is worth a retry).
async fn refuse_all<A: Actor>(
    shared: &Shared<A>,
    id: &Arc<str>,
    mut rx: mpsc::Receiver<Envelope<A>>,
    failure: LoadError,
    generation: u64,
) {
    tracing::warn!(actor_type = A::TYPE, actor_id = %id, reason = %failure, "activation failed");
    shared.begin_passivation(id, generation);
    rx.close();
    while let Some(envelope) = rx.recv().await {
        let reply = match envelope {
            Envelope::Ask(_, reply) => Some(reply),
            Envelope::Once(once) => once.reply,
            _ => None,
        };
        if let Some(reply) = reply {
            let _ = reply.send(Err(failure.to_ask(id)));
        }
    }
    shared.finish_passivation(id, generation);
}

impl<A: Actor> Vm<A> {
    async fn process(&mut self, envelope: Envelope<A>) {
        let (command, reply, id) = match envelope {
            Envelope::Ask(command, reply) => (command, Some(reply), None),
            Envelope::Tell(command) => (command, None, None),
            Envelope::Once(once) => {
                let Once { command, id, reply } = *once;
                (command, reply, Some(id))
            }
            Envelope::Inspect(look) => return look(&self.state, self.version),
            Envelope::Stop => return,
        };
        let outcome = self.decide(&command, id.as_ref()).await;
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

    /// One command, in its span (the answer is sent before `after_command`'s snapshot).
    async fn decide(
        &mut self,
        command: &A::Command,
        id: Option<&CommandId>,
    ) -> Result<Applied<A::Event>, AskError<A::Error>> {
        let span = tracing::debug_span!(
            "aether.runtime.command",
            actor_type = A::TYPE,
            actor_id = &*self.id,
            command_id = id.map(CommandId::as_str),
            version = tracing::field::Empty,
            event_ids = tracing::field::Empty,
            error = tracing::field::Empty,
        );
        let outcome = self.command(command, id).instrument(span.clone()).await;
        if !span.is_disabled() {
            match &outcome {
                Ok(applied) => span.record("version", applied.version),
                Err(e) => span.record("error", tracing::field::display(e)),
            };
        }
        outcome
    }

    async fn command(
        &mut self,
        command: &A::Command,
        command_id: Option<&CommandId>,
    ) -> Result<Applied<A::Event>, AskError<A::Error>> {
        if self.reloading {
            Box::pin(self.reload()).await;
        }
        if let Some(reason) = &self.broken {
            self.shared.metrics.failed.increment(1);
            return Err(AskError::Activation {
                actor_id: self.id.clone(),
                reason: reason.to_string(),
            });
        }
        // Latency is sampled (one command in 8): reading the clock twice per command would be
        // a noticeable share of a local round trip.
        self.commands = self.commands.wrapping_add(1);
        let started = self
            .commands
            .is_multiple_of(LATENCY_SAMPLE)
            .then(Instant::now);
        // Boxed on its own: inline, it would make the envelope's future (boxed per envelope)
        // larger than 1 KiB, glibc's slow path.
        let caught = catching(Box::pin(self.decide_and_append(command, command_id))).await;
        let outcome = match caught {
            Ok(outcome) => outcome,
            Err(message) => {
                self.count_panic();
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
        // Cleared once the reload has an outcome: a reload abandoned half-way (its caller,
        // running the command on its own task, gave up) is done again before the next command.
        self.reloading = true;
        let loaded = catching(load(&self.shared, &self.id))
            .await
            .unwrap_or_else(|message| Err(LoadError::Panicked { message }));
        self.reloading = false;
        match loaded {
            Ok(loaded) => {
                self.state = loaded.state;
                self.version = loaded.version;
                self.since_snapshot = loaded.replayed;
                self.recent = loaded.recent;
            }
            Err(failure) => {
                tracing::error!(actor_type = A::TYPE, actor_id = %self.id, reason = %failure, "reload after a panic failed");
                // Kept as a message: until it is activated again this VM refuses every command,
                // so a retry meets the same refusal whatever the store's failure was.
                self.broken = Some(Box::new(format!("reload after a panic failed: {failure}")));
            }
        }
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
            Ok(s) => match &self.recent {
                Some(recent) => s.with_commands(
                    recent.to_snapshot(&self.shared.config.command_memory, now_millis()),
                ),
                None => s,
            }
            .with_state_version(A::STATE_VERSION),
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

/// Runs `future`, catching a panic in any of its polls (around each poll of the pinned future,
/// not by wrapping it in a combinator, which would move it): the panic's message instead of
/// the output.
async fn catching<F: Future>(future: F) -> Result<F::Output, String> {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| {
        match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(panic) => Poll::Ready(Err(aether_core::panic_message(panic.as_ref()))),
        }
    })
    .await
}

/// Boxes the future of a rare step (a fold-in, a backoff, a duplicate's answer, a publish):
/// inline, its state would widen the future of every command (boxed while it runs), though
/// few commands reach it.
fn rare<F: Future>(future: F) -> Pin<Box<F>> {
    Box::pin(future)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default, serde::Serialize, serde::Deserialize)]
    struct Unit;

    #[derive(Debug, thiserror::Error)]
    #[error("never")]
    struct Never;

    impl Actor for Unit {
        const TYPE: &'static str = "unit";
        type Command = ();
        type Event = ();
        type Error = Never;

        fn handle(&self, (): &()) -> Result<Vec<()>, Never> {
            Ok(Vec::new())
        }

        fn apply(&mut self, (): &()) {}
    }

    /// Every idle actor keeps its task's future and its cell: they must not grow unnoticed
    /// (the budget is 2 KiB per idle actor, design.md section 6).
    #[test]
    fn an_idle_actor_keeps_a_small_task_and_cell() {
        let shared = Arc::new(Shared::<Unit>::new(
            Arc::new(aether_store_memory::InMemoryEventStore::new()),
            None,
            None,
            None,
            crate::config::RuntimeConfig::default(),
            aether_core::Upcasters::new(),
        ));
        let (_tx, rx) = mpsc::channel(8);
        let task = run_vm(shared, "a".into(), rx, Arc::new(Cell::<Unit>::new(0)), 0);
        let (task, cell) = (std::mem::size_of_val(&task), size_of::<Cell<Unit>>());
        assert!(
            task <= 256,
            "the actor's task future is {task} bytes (was 240)"
        );
        assert!(cell <= 128, "the actor's cell is {cell} bytes (was 128)");
    }
}
