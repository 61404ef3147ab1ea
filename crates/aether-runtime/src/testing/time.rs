//! A test clock for actors that use time: [`Timeline`] decides commands at a time it controls,
//! keeps the reminders and timers the handlers set, and fires them as time is advanced, without
//! a store, a runtime or any waiting.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aether_core::reminder::{When, firing_command_id};
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::Actor;
use crate::context::{Context, TimeOp, TimerCommand};

/// Reminders and timers: two name spaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Reminder,
    Timer,
}

/// What fires at a due time: a reminder's command (MessagePack) or a timer's.
enum Pending<A: Actor> {
    Reminder {
        payload: Bytes,
        every: Option<Duration>,
    },
    Timer {
        command: TimerCommand<A>,
        every: Option<Duration>,
    },
}

/// One reminder or timer that fired while time was advanced, and what its command decided.
pub struct Fire<A: Actor> {
    /// The reminder's or timer's name.
    pub name: String,
    /// Whether it was a reminder (durable) rather than a timer (volatile).
    pub reminder: bool,
    /// When it was due (the clock stood there while its command was decided).
    pub due: SystemTime,
    /// The events its command decided (already applied), or the refusal.
    pub outcome: Result<Vec<A::Event>, A::Error>,
}

impl<A: Actor> fmt::Debug for Fire<A>
where
    A::Event: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fire")
            .field("name", &self.name)
            .field("reminder", &self.reminder)
            .field("due", &self.due)
            .field(
                "outcome",
                &self.outcome.as_ref().map_err(ToString::to_string),
            )
            .finish()
    }
}

/// An actor on a test clock: `given` past events, `when` commands at the clock's time,
/// `advance` the clock to fire due reminders and timers in due order.
///
/// ```
/// # use aether_runtime::{Actor, Context};
/// # use aether_runtime::testing::Timeline;
/// # use serde::{Deserialize, Serialize};
/// # use std::time::Duration;
/// # #[derive(Default, Serialize, Deserialize)]
/// # struct Order { placed: bool, paid: bool, cancelled: bool }
/// # #[derive(Serialize, Deserialize)]
/// # enum Cmd { Place, Pay, CancelUnpaid }
/// # #[derive(Debug, PartialEq, Serialize, Deserialize)]
/// # enum Ev { Placed, Paid, Cancelled }
/// # #[derive(Debug, thiserror::Error)] #[error("never")] struct Never;
/// # impl Actor for Order {
/// #     const TYPE: &'static str = "order";
/// #     type Command = Cmd; type Event = Ev; type Error = Never;
/// #     fn handle(&self, cmd: &Cmd) -> Result<Vec<Ev>, Never> {
/// #         Ok(match cmd {
/// #             Cmd::Place if !self.placed => vec![Ev::Placed],
/// #             Cmd::Pay if self.placed && !self.cancelled => vec![Ev::Paid],
/// #             Cmd::CancelUnpaid if self.placed && !self.paid && !self.cancelled => vec![Ev::Cancelled],
/// #             _ => vec![],
/// #         })
/// #     }
/// #     fn decide(&self, cmd: &Cmd, ctx: &mut Context<Self>) -> impl Future<Output = Result<Vec<Ev>, Never>> + Send {
/// #         match cmd {
/// #             Cmd::Place => ctx.remind_after("payment", Duration::from_secs(1800), &Cmd::CancelUnpaid),
/// #             Cmd::Pay => ctx.cancel_reminder("payment"),
/// #             Cmd::CancelUnpaid => {}
/// #         }
/// #         std::future::ready(self.handle(cmd))
/// #     }
/// #     fn apply(&mut self, ev: &Ev) {
/// #         match ev { Ev::Placed => self.placed = true, Ev::Paid => self.paid = true, Ev::Cancelled => self.cancelled = true }
/// #     }
/// # }
/// // Not paid within 30 minutes: cancelled.
/// let mut order = Timeline::<Order>::new();
/// order.when(Cmd::Place).unwrap();
/// assert!(order.advance(Duration::from_secs(1799)).is_empty());
/// let fired = order.advance(Duration::from_secs(1));
/// assert_eq!(fired[0].outcome.as_ref().unwrap(), &vec![Ev::Cancelled]);
///
/// // Paid in time: the reminder is cancelled, nothing fires.
/// let mut order = Timeline::<Order>::new();
/// order.when(Cmd::Place).unwrap();
/// order.advance(Duration::from_secs(600));
/// order.when(Cmd::Pay).unwrap();
/// assert!(order.advance(Duration::from_secs(3600)).is_empty());
/// ```
pub struct Timeline<A: Actor> {
    state: A,
    id: Arc<str>,
    now: SystemTime,
    /// Due time, then kind (reminders first), then name: what fires next comes first.
    /// Reminders and timers have separate names, as in the runtime.
    pending: BTreeMap<(SystemTime, Kind, String), Pending<A>>,
}

impl<A: Actor> fmt::Debug for Timeline<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timeline")
            .field("actor_type", &A::TYPE)
            .field("now", &self.now)
            .field("pending", &self.pending.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl<A: Actor> Default for Timeline<A> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: Actor> Timeline<A> {
    /// A fresh actor (`A::default()`, id `"test"`) with the clock at 2026-01-01T00:00:00Z.
    pub fn new() -> Self {
        Self::starting_at(UNIX_EPOCH + Duration::from_secs(1_767_225_600))
    }

    /// A fresh actor with the clock at `now`.
    pub fn starting_at(now: SystemTime) -> Self {
        Self {
            state: A::default(),
            id: Arc::from("test"),
            now,
            pending: BTreeMap::new(),
        }
    }

    /// Applies past `events` to the state.
    pub fn given(mut self, events: impl IntoIterator<Item = A::Event>) -> Self {
        for event in events {
            self.state.apply(&event);
        }
        self
    }

    /// The clock.
    pub fn now(&self) -> SystemTime {
        self.now
    }

    /// The state.
    pub fn state(&self) -> &A {
        &self.state
    }

    /// The reminders and timers set, by name, with when each is next due, in due order.
    pub fn pending(&self) -> Vec<(&str, SystemTime)> {
        self.pending
            .keys()
            .map(|(due, _, name)| (name.as_str(), *due))
            .collect()
    }

    /// When reminder `name` is next due, if set.
    pub fn due(&self, name: &str) -> Option<SystemTime> {
        self.next(Kind::Reminder, name)
    }

    /// When timer `name` next ticks, if it runs.
    pub fn timer_due(&self, name: &str) -> Option<SystemTime> {
        self.next(Kind::Timer, name)
    }

    fn next(&self, kind: Kind, name: &str) -> Option<SystemTime> {
        self.pending
            .keys()
            .find(|(_, k, n)| *k == kind && n == name)
            .map(|(due, _, _)| *due)
    }

    /// Decides `command` now (as the runtime does, through [`Actor::decide`]), applies its
    /// events and keeps the reminders and timers it set.
    pub fn when(&mut self, command: A::Command) -> Result<Vec<A::Event>, A::Error> {
        self.decide(command, None)
    }

    fn decide(&mut self, command: A::Command, id: Option<&str>) -> Result<Vec<A::Event>, A::Error> {
        let id = id.map(aether_core::CommandId::new);
        let mut ctx = Context::new(self.id.clone(), self.now, id.as_ref());
        let events = futures::executor::block_on(self.state.decide(&command, &mut ctx))?;
        for event in &events {
            self.state.apply(event);
        }
        for op in ctx.ops {
            self.carry_out(op);
        }
        Ok(events)
    }

    fn remove(&mut self, kind: Kind, name: &str) {
        self.pending
            .retain(|(_, k, n), _| !(*k == kind && n == name));
    }

    fn carry_out(&mut self, op: TimeOp<A>) {
        match op {
            TimeOp::Remind(reminder) => {
                let name = reminder.key.name.clone();
                self.remove(Kind::Reminder, &name);
                let (due, every) = match reminder.when {
                    When::At(at) => (at, None),
                    When::Every(interval) => (self.now + interval, Some(interval)),
                    #[allow(unreachable_patterns)]
                    _ => return,
                };
                let payload = reminder.payload;
                self.pending.insert(
                    (due, Kind::Reminder, name),
                    Pending::Reminder { payload, every },
                );
            }
            TimeOp::Forget(name) => self.remove(Kind::Reminder, &name),
            TimeOp::StopTimer(name) => self.remove(Kind::Timer, &name),
            TimeOp::Timer {
                name,
                delay,
                repeat,
                command,
            } => {
                self.remove(Kind::Timer, &name);
                let every = repeat.then_some(delay);
                self.pending.insert(
                    (self.now + delay, Kind::Timer, name),
                    Pending::Timer { command, every },
                );
            }
            TimeOp::Failed(e) => panic!("{}: a reminder could not be set: {e}", A::TYPE),
        }
    }

    /// Moves the clock forward by `by`, firing every reminder and timer that falls due, in
    /// due order (the clock stands at each one's due time while its command is decided; what
    /// that command sets is fired too if it falls due in time).
    pub fn advance(&mut self, by: Duration) -> Vec<Fire<A>>
    where
        A::Command: DeserializeOwned,
    {
        let until = self.now + by;
        let mut fired = Vec::new();
        while let Some(entry) = self.pending.first_entry() {
            if entry.key().0 > until {
                break;
            }
            let ((due, kind, name), pending) = entry.remove_entry();
            self.now = self.now.max(due);
            let (command, reminder, again) = match pending {
                Pending::Reminder { payload, every } => {
                    let command: A::Command = rmp_serde::from_slice(&payload).unwrap_or_else(|e| {
                        panic!("{}: reminder {name:?} carries no command: {e}", A::TYPE)
                    });
                    let again = every.map(|i| (due + i, Pending::Reminder { payload, every }));
                    (command, true, again)
                }
                Pending::Timer { command, every } => {
                    let make = command.clone();
                    let again = every.map(|i| (due + i, Pending::Timer { command, every }));
                    (make(), false, again)
                }
            };
            if let Some((next, pending)) = again {
                self.pending.insert((next, kind, name.clone()), pending);
            }
            let id = reminder.then(|| firing_command_id(&name, due).to_string());
            let outcome = self.decide(command, id.as_deref());
            fired.push(Fire {
                name,
                reminder,
                due,
                outcome,
            });
        }
        self.now = until.max(self.now);
        fired
    }
}
