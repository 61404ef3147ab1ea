//! `RuntimeBuilder`: the store, the optional snapshots and bus, the base configuration, the
//! single-value setters applied on top of it (`Override`, `effective_config`), and `build`.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use aether_core::{
    EventBroadcaster, EventStore, Namespace, ReminderStore, SnapshotStore, Upcasters,
};

use super::Runtime;
use super::registry::Shared;
use crate::actor::Actor;
use crate::config::{CommandMemory, RetryPolicy, RuntimeConfig, SnapshotPolicy};

/// Configures a [`Runtime`]: the store is required, everything else has a default.
///
/// Setters may come in any order: [`config`](Self::config) replaces the base configuration, and
/// the single-value setters (`snapshot_policy`, `retry`, `idle_timeout`, `max_active`,
/// `mailbox_capacity`, `command_memory`) apply on top of it whether they come before or after it.
pub struct RuntimeBuilder<A: Actor> {
    store: Arc<dyn EventStore>,
    snapshots: Option<Arc<dyn SnapshotStore>>,
    bus: Option<(Arc<dyn EventBroadcaster>, Namespace)>,
    reminders: Option<Arc<dyn ReminderStore>>,
    config: RuntimeConfig,
    overrides: Vec<Override>,
    upcasters: Upcasters,
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
    CommandMemory(CommandMemory),
}

impl Override {
    fn apply(&self, config: &mut RuntimeConfig) {
        match self {
            Self::Snapshots(p) => config.snapshots = *p,
            Self::Retry(r) => config.retry = *r,
            Self::IdleTimeout(t) => config.idle_timeout = *t,
            Self::MaxActive(n) => config.max_active = *n,
            Self::MailboxCapacity(n) => config.mailbox_capacity = *n,
            Self::CommandMemory(m) => config.command_memory = *m,
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
            .field("upcasters", &self.upcasters)
            .finish()
    }
}

impl<A: Actor> RuntimeBuilder<A> {
    /// A builder over `store` with the default configuration (see [`Runtime::builder`]).
    pub(super) fn new(store: Arc<dyn EventStore>) -> Self {
        RuntimeBuilder {
            store,
            snapshots: None,
            bus: None,
            reminders: None,
            config: RuntimeConfig::default(),
            overrides: Vec::new(),
            upcasters: Upcasters::new(),
            _actor: PhantomData,
        }
    }

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

    /// Where handlers' reminders are set and cancelled ([`Context::remind`](crate::Context::remind)).
    /// Without it, a command whose handler sets or cancels a reminder fails with
    /// [`AskError::Reminder`](crate::AskError::Reminder). Delivering the reminders is the
    /// [`Dispatcher`](crate::reminders::Dispatcher)'s (or a cluster node's) work.
    pub fn reminders(mut self, reminders: Arc<dyn ReminderStore>) -> Self {
        self.reminders = Some(reminders);
        self
    }

    /// Upcasts stored events through `upcasters` before decoding them (activation, replay,
    /// answering a repeated command), and writes new events at their types' current versions
    /// ([`Upcasters::current_version`]). A stored event newer than these upcasters know, or one
    /// without a step, fails the activation with the [`aether_core::UpcastError`] naming it.
    /// See `docs/schema-evolution.md`.
    pub fn upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = upcasters;
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

    /// Sets which command ids each actor remembers (default [`CommandMemory::default`]: 60 s,
    /// at least 256, at most 65,536 per actor).
    pub fn command_memory(mut self, memory: CommandMemory) -> Self {
        self.overrides.push(Override::CommandMemory(memory));
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
    /// count as 1) and [`CommandMemory`] (`max` at least `min` and 1, `in_snapshots` at most
    /// `max`).
    pub fn effective_config(&self) -> RuntimeConfig {
        let mut config = self.config.clone();
        for o in &self.overrides {
            o.apply(&mut config);
        }
        config.mailbox_capacity = config.mailbox_capacity.max(1);
        config.max_active = config.max_active.max(1);
        config.command_memory = config.command_memory.clamped();
        config
    }

    /// The event store the runtime will write to.
    #[cfg(feature = "model")]
    pub(crate) fn event_store(&self) -> Arc<dyn EventStore> {
        self.store.clone()
    }

    /// The reminder store handlers will use, if set.
    #[cfg(feature = "model")]
    pub(crate) fn reminder_store(&self) -> Option<Arc<dyn ReminderStore>> {
        self.reminders.clone()
    }

    /// Builds the runtime. Actors are activated on their first message.
    pub fn build(self) -> Runtime<A> {
        let config = self.effective_config();
        Runtime {
            shared: Arc::new(Shared::new(
                self.store,
                self.snapshots,
                self.bus,
                self.reminders,
                config,
                self.upcasters,
            )),
        }
    }
}
