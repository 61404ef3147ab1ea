//! What a command handler may do besides deciding events: set and cancel durable reminders,
//! start and stop volatile timers, read the time and learn which reminder fired
//! ([`Actor::decide`](crate::Actor::decide)).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aether_core::CommandId;
use aether_core::reminder::{Reminder, ReminderError, ReminderKey, When, from_unix_millis};
use serde::Serialize;

use crate::Actor;

/// The firing a command came from, when a reminder delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fired {
    /// The reminder's name.
    pub name: String,
    /// When this firing was due.
    pub due: SystemTime,
}

impl Fired {
    /// The firing a command id names (`rem:<due ms>:<name>`, see
    /// [`Firing::command_id`](aether_core::reminder::Firing::command_id)).
    pub fn from_command_id(id: &str) -> Option<Self> {
        let rest = id.strip_prefix("rem:")?;
        let (millis, name) = rest.split_once(':')?;
        Some(Fired {
            name: name.to_owned(),
            due: from_unix_millis(millis.parse().ok()?),
        })
    }
}

/// A command the timer sends to its actor on each tick.
pub(crate) type TimerCommand<A> = Arc<dyn Fn() -> <A as Actor>::Command + Send + Sync>;

/// What the handler asked for; carried out only if its decision is stored.
pub(crate) enum TimeOp<A: Actor> {
    /// Set a reminder (stored before the command's events).
    Remind(Reminder),
    /// Cancel a reminder by name (after the events are stored).
    Forget(String),
    /// Start (or restart) a timer.
    Timer {
        name: String,
        delay: Duration,
        repeat: bool,
        command: TimerCommand<A>,
    },
    /// Stop a timer by name.
    StopTimer(String),
    /// A reminder whose command did not encode: fails the command.
    Failed(ReminderError),
}

/// What a request is about: a reminder or a timer, by name.
#[derive(Debug, PartialEq, Eq)]
enum Target<'a> {
    Reminder(&'a str),
    Timer(&'a str),
}

impl<A: Actor> TimeOp<A> {
    fn target(&self) -> Option<Target<'_>> {
        match self {
            Self::Remind(r) => Some(Target::Reminder(&r.key.name)),
            Self::Forget(n) => Some(Target::Reminder(n)),
            Self::Timer { name, .. } | Self::StopTimer(name) => Some(Target::Timer(name)),
            Self::Failed(_) => None,
        }
    }
}

impl<A: Actor> fmt::Debug for TimeOp<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Remind(r) => f.debug_tuple("Remind").field(r).finish(),
            Self::Forget(n) => f.debug_tuple("Forget").field(n).finish(),
            Self::Timer {
                name,
                delay,
                repeat,
                ..
            } => f
                .debug_struct("Timer")
                .field("name", name)
                .field("delay", delay)
                .field("repeat", repeat)
                .finish(),
            Self::StopTimer(n) => f.debug_tuple("StopTimer").field(n).finish(),
            Self::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
        }
    }
}

/// A command handler's view of time: the actor's reminders (durable, in the runtime's
/// [`ReminderStore`](aether_core::ReminderStore), delivered wherever the actor lives, even after
/// a crash) and timers (volatile, in this process, gone when the actor passivates).
///
/// Reminders set are written before the command's events; cancellations and timers after them,
/// only if the events are stored. So a crash in between, or a decision lost to a concurrent
/// writer and taken again, can leave a reminder set for a decision that was not stored, never
/// lose one: a reminder must be harmless when it fires for such a decision, which a handler
/// that decides on its state is. A refused command carries nothing out.
pub struct Context<A: Actor> {
    actor_id: Arc<str>,
    now: SystemTime,
    fired: Option<Fired>,
    pub(crate) ops: Vec<TimeOp<A>>,
}

impl<A: Actor> fmt::Debug for Context<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("actor_type", &A::TYPE)
            .field("actor_id", &self.actor_id)
            .field("now", &self.now)
            .field("fired", &self.fired)
            .field("ops", &self.ops)
            .finish()
    }
}

impl<A: Actor> Context<A> {
    /// The context of a command to `actor_id` at `now`, with id `command_id`.
    pub fn new(actor_id: Arc<str>, now: SystemTime, command_id: Option<&CommandId>) -> Self {
        Self {
            actor_id,
            now,
            fired: command_id.and_then(|id| Fired::from_command_id(id.as_str())),
            ops: Vec::new(),
        }
    }

    /// The actor's id.
    pub fn actor_id(&self) -> &str {
        &self.actor_id
    }

    /// The time the command is decided at (the test clock's, under [`crate::testing`]).
    pub fn now(&self) -> SystemTime {
        self.now
    }

    /// The reminder firing this command came from, if a reminder delivered it.
    pub fn fired(&self) -> Option<&Fired> {
        self.fired.as_ref()
    }

    /// Sets the actor's reminder `name`: `command` is delivered to the actor `when` due
    /// (replacing a reminder of that name).
    pub fn remind(&mut self, name: &str, when: When, command: &A::Command)
    where
        A::Command: Serialize,
    {
        let key = ReminderKey::new(A::TYPE, &*self.actor_id, name);
        let op = match rmp_serde::to_vec_named(command) {
            Ok(payload) => TimeOp::Remind(Reminder::new(key, when, payload)),
            Err(e) => TimeOp::Failed(ReminderError::Invalid {
                key: Box::new(key),
                reason: format!("the command does not encode: {e}"),
            }),
        };
        self.push(op);
    }

    /// Adds a request; an earlier request for the same reminder (set or cancel) or the same
    /// timer (start or stop) is dropped: the last one counts. So "cancel x, then set x"
    /// reschedules x, as it reads, although reminders are set before the events and cancelled
    /// after them.
    fn push(&mut self, op: TimeOp<A>) {
        if let Some(target) = op.target() {
            self.ops
                .retain(|earlier| earlier.target().as_ref() != Some(&target));
        }
        self.ops.push(op);
    }

    /// Sets reminder `name` due `delay` after [`now`](Self::now).
    pub fn remind_after(&mut self, name: &str, delay: Duration, command: &A::Command)
    where
        A::Command: Serialize,
    {
        match self.now.checked_add(delay) {
            Some(at) => self.remind(name, When::At(at), command),
            None => self.ops.push(TimeOp::Failed(ReminderError::Invalid {
                key: Box::new(ReminderKey::new(A::TYPE, &*self.actor_id, name)),
                reason: format!("a delay of {delay:?} is past what a time can hold"),
            })),
        }
    }

    /// Cancels the actor's reminder `name` (a firing already being delivered may still arrive).
    pub fn cancel_reminder(&mut self, name: &str) {
        self.push(TimeOp::Forget(name.to_owned()));
    }

    /// Starts timer `name`: `command` is sent to the actor once, `delay` from now, if the actor
    /// is still in memory (replacing a timer of that name).
    pub fn after(&mut self, name: &str, delay: Duration, command: A::Command)
    where
        A::Command: Clone,
    {
        self.timer(name, delay, false, command);
    }

    /// Starts timer `name`: `command` is sent to the actor every `interval` while it is in
    /// memory (replacing a timer of that name).
    pub fn every(&mut self, name: &str, interval: Duration, command: A::Command)
    where
        A::Command: Clone,
    {
        self.timer(name, interval, true, command);
    }

    fn timer(&mut self, name: &str, delay: Duration, repeat: bool, command: A::Command)
    where
        A::Command: Clone,
    {
        self.push(TimeOp::Timer {
            name: name.to_owned(),
            delay,
            repeat,
            command: Arc::new(move || command.clone()),
        });
    }

    /// Stops timer `name`.
    pub fn stop_timer(&mut self, name: &str) {
        self.push(TimeOp::StopTimer(name.to_owned()));
    }

    /// The reminders this command set, in order (for tests of a handler).
    pub fn reminders_set(&self) -> impl Iterator<Item = &Reminder> {
        self.ops.iter().filter_map(|op| match op {
            TimeOp::Remind(r) => Some(r),
            _ => None,
        })
    }

    /// The reminders this command cancelled, by name.
    pub fn reminders_cancelled(&self) -> impl Iterator<Item = &str> {
        self.ops.iter().filter_map(|op| match op {
            TimeOp::Forget(n) => Some(n.as_str()),
            _ => None,
        })
    }
}
