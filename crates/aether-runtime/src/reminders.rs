//! Delivering reminders: the [`Dispatcher`] reads a [`ReminderStore`]'s due firings and hands
//! each to the [`Deliver`] target of its actor type, which applies it as a command with the
//! firing's deterministic id; [`Reminders`] sets and cancels an actor type's reminders with
//! typed commands.
//!
//! Delivery is at least once, application at most once: a firing that is handed out again (its
//! reader died, or settling it failed) carries the same command id, and the actor answers a
//! known id from its stored events instead of applying it again.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use aether_core::Backoff;
use aether_core::reminder::{
    Due, Firing, Reminder, ReminderError, ReminderKey, ReminderStore, Settled, When,
};
use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::metrics::FiringMetrics;
use crate::{Actor, AskError, Runtime};

/// Deliveries that fail for reasons other than a passing outage before a firing is dropped.
pub const MAX_FAILED_DELIVERIES: u64 = 10;
/// Firings one dispatcher delivers at once by default.
pub const DEFAULT_CONCURRENCY: usize = 512;
/// The delays between deliveries of a firing that could not be delivered yet.
const REDELIVERY: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
/// The delays between attempts to read the firings again after the feed failed.
const REOPEN: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

/// Where the firings of one actor type go: applies one firing as a command with its id.
#[async_trait::async_trait]
pub trait Deliver: Send + Sync + fmt::Debug {
    /// Delivers `firing` (its payload decoded as a command, applied with
    /// [`Firing::command_id`]) and says how it ended.
    async fn deliver(&self, firing: &Firing) -> Settled;
}

/// The delay before a firing delivered `delivery` times is handed out again.
pub fn redelivery_delay(delivery: u64) -> Duration {
    REDELIVERY.delay(u32::try_from(delivery).unwrap_or(u32::MAX))
}

/// How an ask's outcome settles a firing: applied or refused are answers; any other failure
/// goes through [`settle_failure`].
pub fn settle_ask<E: std::error::Error>(
    firing: &Firing,
    outcome: Result<(), AskError<E>>,
) -> Settled {
    match outcome {
        Ok(()) | Err(AskError::Rejected { .. }) => Settled::Delivered,
        Err(e) => settle_failure(firing, e.is_transient(), &e),
    }
}

/// How a failed delivery settles a firing: a passing failure is tried again after
/// [`redelivery_delay`]; any other one too, until [`MAX_FAILED_DELIVERIES`], then the firing is
/// dropped with `reason`.
pub fn settle_failure(firing: &Firing, transient: bool, reason: &dyn fmt::Display) -> Settled {
    if transient || firing.delivery < MAX_FAILED_DELIVERIES {
        Settled::Retry(redelivery_delay(firing.delivery))
    } else {
        Settled::Undeliverable(format!(
            "{} deliveries failed, the last with: {reason}",
            firing.delivery
        ))
    }
}

/// Decodes a firing's payload as `A`'s command (MessagePack).
pub fn decode_command<A: Actor>(firing: &Firing) -> Result<A::Command, Settled>
where
    A::Command: DeserializeOwned,
{
    rmp_serde::from_slice(&firing.payload).map_err(|e| {
        Settled::Undeliverable(format!(
            "the command of reminder {} does not decode as a {} command: {e}",
            firing.key,
            A::TYPE
        ))
    })
}

/// Delivers firings to the actors of one [`Runtime`] in this process.
pub struct RuntimeTarget<A: Actor> {
    runtime: Runtime<A>,
}

impl<A: Actor> RuntimeTarget<A> {
    /// Firings of `A` delivered to `runtime`.
    pub fn new(runtime: Runtime<A>) -> Self {
        Self { runtime }
    }
}

impl<A: Actor> fmt::Debug for RuntimeTarget<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuntimeTarget")
            .field("actor_type", &A::TYPE)
            .finish()
    }
}

#[async_trait::async_trait]
impl<A: Actor> Deliver for RuntimeTarget<A>
where
    A::Command: DeserializeOwned,
{
    async fn deliver(&self, firing: &Firing) -> Settled {
        let command = match decode_command::<A>(firing) {
            Ok(command) => command,
            Err(settled) => return settled,
        };
        let outcome = self
            .runtime
            .ask_once(&firing.key.actor_id, command, firing.command_id())
            .await
            .map(drop);
        settle_ask(firing, outcome)
    }
}

/// Counts of what a dispatcher did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DispatchStats {
    /// Firings applied or answered by their actor.
    pub delivered: u64,
    /// Deliveries that will be tried again.
    pub retried: u64,
    /// Firings dropped as undeliverable (unknown actor type, a command that does not decode,
    /// [`MAX_FAILED_DELIVERIES`] failures).
    pub undeliverable: u64,
    /// Malformed firings the store dropped.
    pub malformed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    delivered: AtomicU64,
    retried: AtomicU64,
    undeliverable: AtomicU64,
    malformed: AtomicU64,
}

/// Reads a reminder store's due firings and delivers each to its actor type's target, at most
/// [`concurrency`](Self::concurrency) at once. Run one per process (or per cluster node): the
/// store shares its firings among all of them.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use aether_core::reminder::ReminderStore;
/// # use aether_runtime::{Actor, Runtime};
/// # async fn demo<A: Actor>(store: Arc<dyn ReminderStore>, runtime: Runtime<A>)
/// # where A::Command: serde::de::DeserializeOwned {
/// use aether_runtime::reminders::Dispatcher;
/// let dispatcher = Dispatcher::new(store).runtime(runtime).start();
/// // ... reminders of A are delivered to `runtime` as they fall due ...
/// dispatcher.stop().await;
/// # }
/// ```
#[derive(Debug)]
pub struct Dispatcher {
    store: Arc<dyn ReminderStore>,
    targets: HashMap<String, Arc<dyn Deliver>>,
    concurrency: usize,
}

impl Dispatcher {
    /// A dispatcher of `store`'s firings, with no targets yet.
    pub fn new(store: Arc<dyn ReminderStore>) -> Self {
        Self {
            store,
            targets: HashMap::new(),
            concurrency: DEFAULT_CONCURRENCY,
        }
    }

    /// Delivers the firings of `actor_type` to `target`.
    pub fn target(mut self, actor_type: impl Into<String>, target: Arc<dyn Deliver>) -> Self {
        self.targets.insert(actor_type.into(), target);
        self
    }

    /// Delivers the firings of `A` to `runtime` in this process.
    pub fn runtime<A: Actor>(self, runtime: Runtime<A>) -> Self
    where
        A::Command: DeserializeOwned,
    {
        self.target(A::TYPE, Arc::new(RuntimeTarget::new(runtime)))
    }

    /// Firings delivered at once (default [`DEFAULT_CONCURRENCY`]; at least 1).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Starts delivering, on a task of the current tokio runtime.
    pub fn start(self) -> DispatcherHandle {
        let (stop, stopped) = watch::channel(false);
        let counters = Arc::new(Counters::default());
        // Metric handles registered once per type, not per firing.
        let routes: Routes = self
            .targets
            .into_iter()
            .map(|(ty, target)| {
                let metrics = FiringMetrics::new(&ty);
                (ty, Route { target, metrics })
            })
            .collect();
        let task = tokio::spawn(run(
            self.store,
            Arc::new(Table {
                routes,
                unknown: FiringMetrics::new("unknown"),
                malformed: FiringMetrics::malformed(),
            }),
            Arc::new(Semaphore::new(self.concurrency)),
            self.concurrency,
            counters.clone(),
            stopped,
        ));
        DispatcherHandle {
            stop,
            counters,
            task: tokio::sync::Mutex::new(Some(task)),
        }
    }
}

/// A running [`Dispatcher`]: its counts, and [`stop`](Self::stop). Dropping it stops reading new
/// firings; deliveries under way finish.
#[derive(Debug)]
pub struct DispatcherHandle {
    stop: watch::Sender<bool>,
    counters: Arc<Counters>,
    task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl DispatcherHandle {
    /// What the dispatcher did so far.
    pub fn stats(&self) -> DispatchStats {
        let c = &self.counters;
        DispatchStats {
            delivered: c.delivered.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            undeliverable: c.undeliverable.load(Ordering::Relaxed),
            malformed: c.malformed.load(Ordering::Relaxed),
        }
    }

    /// Stops reading firings and waits for the deliveries under way. Firings read but not
    /// delivered are handed out again by the store.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.lock().await.take() {
            let _ = task.await;
        }
    }
}

impl Drop for DispatcherHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// The dispatcher's loop: read the feed (again after it fails), deliver each firing on its own
/// task within the concurrency limit, until stopped; then wait for those tasks.
async fn run(
    store: Arc<dyn ReminderStore>,
    targets: Arc<Table>,
    slots: Arc<Semaphore>,
    concurrency: usize,
    counters: Arc<Counters>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    'feed: while !*stopped.borrow() {
        let mut feed = tokio::select! {
            opened = store.due() => match opened {
                Ok(feed) => feed,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, "reading reminder firings failed; trying again");
                    tokio::select! {
                        () = tokio::time::sleep(REOPEN.delay(failures)) => continue 'feed,
                        _ = stopped.changed() => break 'feed,
                    }
                }
            },
            _ = stopped.changed() => break 'feed,
        };
        loop {
            let permit = tokio::select! {
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break 'feed,
                },
                _ = stopped.changed() => break 'feed,
            };
            let next = tokio::select! {
                next = feed.next() => next,
                _ = stopped.changed() => break 'feed,
            };
            match next {
                Some(Ok(due)) => {
                    failures = 0;
                    let targets = targets.clone();
                    let counters = counters.clone();
                    tokio::spawn(async move {
                        deliver(due, &targets, &counters).await;
                        drop(permit);
                    });
                }
                Some(Err(ReminderError::Malformed { subject, reason })) => {
                    counters.malformed.fetch_add(1, Ordering::Relaxed);
                    targets.malformed.increment(1);
                    tracing::warn!(%subject, %reason, "dropped a malformed reminder firing");
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "the reminder feed failed; reading it again");
                    failures = failures.saturating_add(1);
                    tokio::time::sleep(REOPEN.delay(failures)).await;
                    continue 'feed;
                }
                None => continue 'feed,
            }
        }
    }
    // Every slot back means every delivery under way has settled.
    let all = u32::try_from(concurrency).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
}

/// A type's target and its metric handles.
struct Route {
    target: Arc<dyn Deliver>,
    metrics: FiringMetrics,
}

type Routes = HashMap<String, Route>;

/// Where firings go, by actor type, with the handles for the rest.
struct Table {
    routes: Routes,
    /// Firings of a type this dispatcher has no target for.
    unknown: FiringMetrics,
    malformed: metrics::Counter,
}

/// Delivers one firing to its target and settles it. A delivery that takes a while says so
/// every [`Due::keep_alive`], so the store does not hand the firing to another reader meanwhile.
async fn deliver(due: Due, table: &Table, counters: &Counters) {
    let firing = &due.firing;
    let route = table.routes.get(&firing.key.actor_type);
    let outcome = match route {
        Some(route) => {
            let work = route.target.deliver(firing);
            match due.keep_alive {
                None => work.await,
                Some(every) => {
                    tokio::pin!(work);
                    loop {
                        tokio::select! {
                            outcome = &mut work => break outcome,
                            () = tokio::time::sleep(every) => {
                                if let Err(e) = due.progress().await {
                                    tracing::debug!(reminder = %firing.key, error = %e, "reporting progress failed");
                                }
                            }
                        }
                    }
                }
            }
        }
        // Perhaps another reader has it (a node of a newer version): handed out again, and
        // dropped only after [`MAX_FAILED_DELIVERIES`].
        None => settle_failure(
            firing,
            false,
            &format_args!("no target for actor type {:?} here", firing.key.actor_type),
        ),
    };
    let metrics = route.map_or(&table.unknown, |r| &r.metrics);
    let counter = match &outcome {
        Settled::Delivered => {
            let late = SystemTime::now()
                .duration_since(firing.due)
                .unwrap_or_default();
            metrics.lateness.record(late.as_secs_f64());
            metrics.delivered.increment(1);
            &counters.delivered
        }
        Settled::Retry(_) => {
            metrics.retried.increment(1);
            &counters.retried
        }
        _ => {
            tracing::warn!(reminder = %firing.key, ?outcome, "dropped an undeliverable firing");
            metrics.undeliverable.increment(1);
            &counters.undeliverable
        }
    };
    let key = firing.key.clone();
    if let Err(e) = due.settle(outcome).await {
        // Not settled: the store hands it out again, with the same command id.
        tracing::warn!(reminder = %key, error = %e, "settling a firing failed");
    }
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Sets, cancels and reads the reminders of actor type `A`, with typed commands.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use std::time::Duration;
/// # use aether_core::reminder::{ReminderStore, When};
/// # use aether_runtime::Actor;
/// # async fn demo<A: Actor>(store: Arc<dyn ReminderStore>, command: A::Command)
/// # -> Result<(), aether_core::ReminderError> where A::Command: serde::Serialize {
/// use aether_runtime::reminders::Reminders;
/// let reminders = Reminders::<A>::new(store);
/// reminders.remind("order-42", "payment-deadline", When::after(Duration::from_secs(1800)), &command).await?;
/// reminders.cancel("order-42", "payment-deadline").await?;
/// # Ok(()) }
/// ```
pub struct Reminders<A: Actor> {
    store: Arc<dyn ReminderStore>,
    actor: PhantomData<fn() -> A>,
}

impl<A: Actor> Clone for Reminders<A> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            actor: PhantomData,
        }
    }
}

impl<A: Actor> fmt::Debug for Reminders<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reminders")
            .field("actor_type", &A::TYPE)
            .field("store", &self.store)
            .finish()
    }
}

impl<A: Actor> Reminders<A> {
    /// The reminders of `A` in `store`.
    pub fn new(store: Arc<dyn ReminderStore>) -> Self {
        Self {
            store,
            actor: PhantomData,
        }
    }

    /// The key of `actor_id`'s reminder `name`.
    pub fn key(&self, actor_id: &str, name: &str) -> ReminderKey {
        ReminderKey::new(A::TYPE, actor_id, name)
    }

    /// Sets reminder `name` of `actor_id`: `command` is delivered to it `when` due (replacing a
    /// reminder of the same name).
    pub async fn remind(
        &self,
        actor_id: &str,
        name: &str,
        when: When,
        command: &A::Command,
    ) -> Result<(), ReminderError>
    where
        A::Command: Serialize,
    {
        let key = self.key(actor_id, name);
        let payload = rmp_serde::to_vec_named(command).map_err(|e| ReminderError::Invalid {
            key: Box::new(key.clone()),
            reason: format!("the command does not encode: {e}"),
        })?;
        self.store.set(&Reminder::new(key, when, payload)).await
    }

    /// Cancels reminder `name` of `actor_id`; true if it was set.
    pub async fn cancel(&self, actor_id: &str, name: &str) -> Result<bool, ReminderError> {
        self.store.cancel(&self.key(actor_id, name)).await
    }

    /// Reminder `name` of `actor_id`, if set.
    pub async fn get(&self, actor_id: &str, name: &str) -> Result<Option<Reminder>, ReminderError> {
        self.store.get(&self.key(actor_id, name)).await
    }

    /// The reminders set for `actor_id`, by name.
    pub async fn list(&self, actor_id: &str) -> Result<Vec<Reminder>, ReminderError> {
        self.store.list(A::TYPE, actor_id).await
    }

    /// The command reminder `reminder` carries, decoded.
    pub fn command_of(reminder: &Reminder) -> Result<A::Command, ReminderError>
    where
        A::Command: DeserializeOwned,
    {
        rmp_serde::from_slice(&reminder.payload).map_err(|e| ReminderError::Malformed {
            subject: reminder.key.to_string(),
            reason: format!("the command does not decode: {e}"),
        })
    }
}
