//! Reminders: durable, named schedules of one actor that deliver a command when due.
//!
//! A [`Reminder`] names its actor (type and id) and itself, says [`When`] it is due (once at a
//! time, or every interval) and carries the command to deliver as bytes (MessagePack, the
//! encoding the cluster's calls use). A [`ReminderStore`] keeps reminders outside any node's
//! memory and hands out their firings ([`ReminderStore::due`]); whoever delivers a firing
//! settles it ([`Due::settle`]) once the actor applied it, refused it, or it can never be
//! delivered. Each firing has a deterministic command id ([`Firing::command_id`]), so a firing
//! delivered twice is applied at most once by the runtime's command memory.

use std::fmt;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_core::Stream;

use crate::{CommandId, StoreError};

/// Longest reminder name, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Longest actor type name, in bytes.
pub const MAX_ACTOR_TYPE_BYTES: usize = 256;
/// Longest actor id, in bytes (the event store's rule).
pub const MAX_ACTOR_ID_BYTES: usize = 1024;
/// Largest command a reminder may carry, in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;
/// Shortest interval of a repeating reminder (what the server's scheduler accepts).
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The latest due time, and the longest interval: the end of year 9999 (what RFC 3339 can
/// write), in milliseconds since the Unix epoch.
pub const MAX_TIME_MILLIS: u64 = 253_402_300_799_999;

/// When a reminder is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum When {
    /// Once, at this time (at once if it has passed). Kept to the millisecond.
    At(SystemTime),
    /// Repeatedly, every interval (whole seconds, at least [`MIN_INTERVAL`]: the server's
    /// scheduler counts in seconds), the first time one interval after it is set. Ticks missed
    /// while nobody delivered them fire once.
    Every(Duration),
}

impl When {
    /// Once, `delay` from now (a delay past year 9999 makes a reminder that
    /// [`Reminder::validate`] refuses).
    pub fn after(delay: Duration) -> Self {
        let now = SystemTime::now();
        When::At(
            now.checked_add(delay)
                .unwrap_or(UNIX_EPOCH + Duration::from_millis(MAX_TIME_MILLIS + 1)),
        )
    }

    /// Once, at `time`.
    pub fn at(time: SystemTime) -> Self {
        When::At(time)
    }

    /// Every `interval`.
    pub fn every(interval: Duration) -> Self {
        When::Every(interval)
    }
}

/// Which reminder: its actor (type and id) and its name. An actor's reminders have distinct
/// names; setting a name again replaces the reminder.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReminderKey {
    /// The actor type (`Actor::TYPE`), which says how to decode and route the command.
    pub actor_type: String,
    /// The actor id.
    pub actor_id: String,
    /// The reminder's name within the actor.
    pub name: String,
}

impl ReminderKey {
    /// The key of reminder `name` of actor `actor_id` of type `actor_type`.
    pub fn new(
        actor_type: impl Into<String>,
        actor_id: impl Into<String>,
        name: impl Into<String>,
    ) -> Self {
        Self {
            actor_type: actor_type.into(),
            actor_id: actor_id.into(),
            name: name.into(),
        }
    }

    /// Checks the key against the rules (lengths, no control characters in the type and name).
    pub fn validate(&self) -> Result<(), ReminderError> {
        validate_actor(&self.actor_type, &self.actor_id)?;
        check_text("reminder name", &self.name, MAX_NAME_BYTES).map_err(|reason| {
            ReminderError::Invalid {
                key: Box::new(self.clone()),
                reason,
            }
        })
    }
}

/// Checks an actor type and id against the rules (the key's, without a name): for listing.
pub fn validate_actor(actor_type: &str, actor_id: &str) -> Result<(), ReminderError> {
    let invalid = |reason: String| ReminderError::Invalid {
        key: Box::new(ReminderKey::new(actor_type, actor_id, "")),
        reason,
    };
    check_text("actor type", actor_type, MAX_ACTOR_TYPE_BYTES).map_err(invalid)?;
    if actor_id.is_empty() || actor_id.len() > MAX_ACTOR_ID_BYTES {
        return Err(invalid(format!(
            "the actor id must be 1 to {MAX_ACTOR_ID_BYTES} bytes, it is {}",
            actor_id.len()
        )));
    }
    Ok(())
}

fn check_text(what: &str, text: &str, max: usize) -> Result<(), String> {
    if text.is_empty() || text.len() > max {
        return Err(format!(
            "the {what} must be 1 to {max} bytes, it is {}",
            text.len()
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(format!("the {what} holds a control character"));
    }
    Ok(())
}

impl fmt::Display for ReminderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{:?}/{:?}", self.actor_type, self.actor_id, self.name)
    }
}

/// A reminder: which one, when it is due, and the command it delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reminder {
    /// Which reminder.
    pub key: ReminderKey,
    /// When it is due.
    pub when: When,
    /// The command delivered when due, encoded as the actor type's commands are on the wire
    /// (MessagePack).
    pub payload: Bytes,
}

impl Reminder {
    /// Reminder `key`, due `when`, delivering `payload`.
    pub fn new(key: ReminderKey, when: When, payload: impl Into<Bytes>) -> Self {
        Self {
            key,
            when,
            payload: payload.into(),
        }
    }

    /// Checks the reminder against the rules: the key's, a payload of at most
    /// [`MAX_PAYLOAD_BYTES`], an interval of at least [`MIN_INTERVAL`] in whole seconds, a time
    /// after the Unix epoch.
    pub fn validate(&self) -> Result<(), ReminderError> {
        self.key.validate()?;
        let invalid = |reason: String| ReminderError::Invalid {
            key: Box::new(self.key.clone()),
            reason,
        };
        if self.payload.len() > MAX_PAYLOAD_BYTES {
            return Err(invalid(format!(
                "the command is {} bytes, at most {MAX_PAYLOAD_BYTES} are allowed",
                self.payload.len()
            )));
        }
        match self.when {
            When::At(time) => match unix_millis(time) {
                None => return Err(invalid("the time is before 1970".into())),
                Some(ms) if ms > MAX_TIME_MILLIS => {
                    return Err(invalid("the time is after year 9999".into()));
                }
                Some(_) => {}
            },
            When::Every(interval) if interval.as_millis() > u128::from(MAX_TIME_MILLIS) => {
                return Err(invalid(format!("the interval {interval:?} is too long")));
            }
            When::Every(interval) => {
                if interval < MIN_INTERVAL || interval.subsec_nanos() != 0 {
                    return Err(invalid(format!(
                        "the interval must be whole seconds, at least {MIN_INTERVAL:?} (the \
                         server's scheduler counts in seconds), it is {interval:?}"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Milliseconds since the Unix epoch, if `time` is not before it.
pub fn unix_millis(time: SystemTime) -> Option<u64> {
    let since = time.duration_since(UNIX_EPOCH).ok()?;
    u64::try_from(since.as_millis()).ok()
}

/// The time `millis` milliseconds after the Unix epoch.
pub fn from_unix_millis(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis)
}

/// One firing of a reminder: due at `due`, delivering `payload`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firing {
    /// Which reminder fired.
    pub key: ReminderKey,
    /// When this firing was due (a repeating reminder's tick), to the millisecond.
    pub due: SystemTime,
    /// Whether the reminder repeats (it stays set after this firing).
    pub repeats: bool,
    /// The command to deliver (MessagePack).
    pub payload: Bytes,
    /// How often this firing was handed out, this time included (1 the first time).
    pub delivery: u64,
}

impl Firing {
    /// The firing's command id: `rem:<due, ms since the epoch>:<name>`. The same firing always
    /// has the same id, whoever delivers it and however often, so the actor applies it at most
    /// once (a firing whose command stores no events leaves no id behind, and is decided again
    /// if delivered again); two firings of one reminder differ in their due time. Command ids
    /// starting with `rem:` are reserved for firings.
    pub fn command_id(&self) -> CommandId {
        firing_command_id(&self.key.name, self.due)
    }
}

/// The command id of the firing of reminder `name` due at `due` (see [`Firing::command_id`]).
pub fn firing_command_id(name: &str, due: SystemTime) -> CommandId {
    let millis = unix_millis(due).unwrap_or(0);
    CommandId::new(format!("rem:{millis}:{name}"))
}

/// How a firing's delivery ended, told to the store by [`Due::settle`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settled {
    /// The actor applied the command, or refused it (a domain answer is an answer): done.
    Delivered,
    /// Not delivered for a reason that passes (the actor's node failed, the store was away):
    /// hand it out again after this delay.
    Retry(Duration),
    /// It can never be delivered (an unknown actor type, a command that does not decode): drop
    /// it, with this reason.
    Undeliverable(String),
}

/// How a store learns the outcome of one firing it handed out.
#[async_trait::async_trait]
pub trait Settle: Send + Sync {
    /// Records the outcome.
    async fn settle(self: Box<Self>, outcome: Settled) -> Result<(), ReminderError>;

    /// Says the delivery is still under way, so the store does not hand the firing to another
    /// reader yet. Default: nothing (a store without a redelivery timer).
    async fn progress(&self) -> Result<(), ReminderError> {
        Ok(())
    }
}

/// A firing handed out by [`ReminderStore::due`], to be delivered and then settled.
pub struct Due {
    /// The firing.
    pub firing: Firing,
    /// How often a delivery still under way should say so ([`Due::progress`]), if the store
    /// hands unsettled firings out again after a while.
    pub keep_alive: Option<std::time::Duration>,
    settle: Box<dyn Settle>,
}

impl Due {
    /// A firing settled through `settle`.
    pub fn new(firing: Firing, settle: Box<dyn Settle>) -> Self {
        Self {
            firing,
            keep_alive: None,
            settle,
        }
    }

    /// The same, with `every` as [`Due::keep_alive`].
    pub fn keep_alive(mut self, every: std::time::Duration) -> Self {
        self.keep_alive = Some(every);
        self
    }

    /// Says the delivery is still under way (see [`Due::keep_alive`]).
    pub async fn progress(&self) -> Result<(), ReminderError> {
        self.settle.progress().await
    }

    /// Tells the store how the delivery ended. A firing never settled is handed out again after
    /// the store's redelivery delay.
    pub async fn settle(self, outcome: Settled) -> Result<(), ReminderError> {
        self.settle.settle(outcome).await
    }
}

impl fmt::Debug for Due {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Due").field("firing", &self.firing).finish()
    }
}

/// The firings of a store as they fall due; an `Err` item is one malformed firing (already
/// dropped by the store) or a failure of the feed, which the reader may read on past.
pub type DueFirings = Pin<Box<dyn Stream<Item = Result<Due, ReminderError>> + Send>>;

/// Where reminders live: set, cancelled, read, and handed out when due.
///
/// Dyn-compatible: layers hold it as `Arc<dyn ReminderStore>`.
#[async_trait::async_trait]
pub trait ReminderStore: Send + Sync + fmt::Debug {
    /// Sets `reminder`, replacing one of the same key. Returns once it is stored.
    async fn set(&self, reminder: &Reminder) -> Result<(), ReminderError>;

    /// Cancels the reminder `key` and drops a firing of it not yet handed out; true if there
    /// was one. A firing already being delivered may still be applied.
    async fn cancel(&self, key: &ReminderKey) -> Result<bool, ReminderError>;

    /// The reminder `key`, if set.
    async fn get(&self, key: &ReminderKey) -> Result<Option<Reminder>, ReminderError>;

    /// The reminders set for actor `actor_id` of type `actor_type`, by name.
    async fn list(&self, actor_type: &str, actor_id: &str) -> Result<Vec<Reminder>, ReminderError>;

    /// The firings as they fall due, shared among every reader of the same store: each firing
    /// goes to one reader at a time, and to another if it is not settled in time.
    async fn due(&self) -> Result<DueFirings, ReminderError>;
}

#[async_trait::async_trait]
impl<T: ReminderStore + ?Sized> ReminderStore for std::sync::Arc<T> {
    async fn set(&self, reminder: &Reminder) -> Result<(), ReminderError> {
        (**self).set(reminder).await
    }
    async fn cancel(&self, key: &ReminderKey) -> Result<bool, ReminderError> {
        (**self).cancel(key).await
    }
    async fn get(&self, key: &ReminderKey) -> Result<Option<Reminder>, ReminderError> {
        (**self).get(key).await
    }
    async fn list(&self, actor_type: &str, actor_id: &str) -> Result<Vec<Reminder>, ReminderError> {
        (**self).list(actor_type, actor_id).await
    }
    async fn due(&self) -> Result<DueFirings, ReminderError> {
        (**self).due().await
    }
}

/// What went wrong with a reminder.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReminderError {
    /// The reminder breaks a rule; nothing was stored.
    #[error("invalid reminder {key}: {reason}")]
    Invalid {
        /// Which reminder.
        key: Box<ReminderKey>,
        /// Which rule, and how.
        reason: String,
    },
    /// A firing or stored reminder that does not follow the layout (written by someone else);
    /// it was dropped.
    #[error("malformed reminder on subject {subject:?}: {reason}")]
    Malformed {
        /// Where it was found.
        subject: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server cannot keep reminders (too old, or the stream does not allow schedules).
    #[error("reminders are not supported here: {reason}")]
    Unsupported {
        /// Why.
        reason: String,
    },
    /// Talking to the backend failed; [`ReminderError::is_transient`] says whether trying again
    /// may help.
    #[error("reminder store failed while {context}")]
    Store {
        /// What was being done.
        context: String,
        /// The backend's failure, classified as a store's.
        #[source]
        source: StoreError,
    },
}

impl ReminderError {
    /// Whether the failure may pass by itself (the backend unavailable or slow).
    pub fn is_transient(&self) -> bool {
        matches!(self, ReminderError::Store { source, .. } if source.is_transient())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ReminderKey {
        ReminderKey::new("order", "order-1", name)
    }

    #[test]
    fn a_firing_id_names_its_tick_and_reminder() {
        let due = from_unix_millis(1_700_000_000_123);
        assert_eq!(
            firing_command_id("pay-by", due).as_str(),
            "rem:1700000000123:pay-by"
        );
    }

    #[test]
    fn bad_reminders_are_refused_with_the_rule_they_break() {
        let at = When::At(from_unix_millis(5));
        let long = "n".repeat(MAX_NAME_BYTES + 1);
        for (reminder, rule) in [
            (Reminder::new(key(""), at, Bytes::new()), "reminder name"),
            (Reminder::new(key(&long), at, Bytes::new()), "reminder name"),
            (Reminder::new(key("a\nb"), at, Bytes::new()), "control"),
            (
                Reminder::new(key("x"), at, vec![0; MAX_PAYLOAD_BYTES + 1]),
                "bytes, at most",
            ),
            (
                Reminder::new(
                    key("x"),
                    When::Every(Duration::from_millis(999)),
                    Bytes::new(),
                ),
                "interval",
            ),
            (
                Reminder::new(
                    key("x"),
                    When::Every(Duration::from_millis(1500)),
                    Bytes::new(),
                ),
                "whole seconds",
            ),
            (
                Reminder::new(ReminderKey::new("order", "", "x"), at, Bytes::new()),
                "actor id",
            ),
        ] {
            let err = reminder.validate().err().map(|e| e.to_string());
            assert!(
                err.as_deref().is_some_and(|e| e.contains(rule)),
                "{reminder:?}: {err:?}"
            );
        }
        let fine = Reminder::new(
            key("pay by"),
            When::Every(Duration::from_secs(60)),
            Bytes::new(),
        );
        assert!(fine.validate().is_ok());
    }
}
