//! Runtime policies: conflict retries, snapshots, the command-id memory, activation limits.

use aether_core::Backoff;
use std::time::Duration;

/// What a VM does when another writer appended to its actor first (a version conflict): reload
/// the new events, wait, and run the command again on the new state — the Go examples' retry
/// patterns (exponential backoff with jitter), built in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1). Default 5.
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubled for each further one. Default 1 ms.
    pub base_backoff: Duration,
    /// Cap on one backoff. Default 100 ms.
    pub max_backoff: Duration,
    /// Share of each backoff, in percent (0–100), that is randomised, so competing writers
    /// spread out. Default 50.
    pub jitter_percent: u8,
    /// How long a command keeps re-sending its events (same ids, so never stored twice) while
    /// the store reports a transient failure ([`StoreError::is_transient`]: unavailable or timed
    /// out — a NATS server restarting, a stream leader election — or a server limit that clears
    /// by itself, such as too many atomic batches in flight). Default 20 s: a JetStream
    /// stream-leader election took 4-5.5 s on 3 local servers, and an append in flight at the
    /// failure only times out after the store's request timeout (5 s). `Duration::ZERO`: fail
    /// at once.
    ///
    /// [`StoreError::is_transient`]: aether_core::StoreError::is_transient
    pub transient_budget: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(100),
            jitter_percent: 50,
            transient_budget: Duration::from_secs(20),
        }
    }
}

impl RetryPolicy {
    /// Never retry: a conflict is returned to the caller.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// Sets the number of attempts (at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Sets the first backoff and the cap.
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.base_backoff = base;
        self.max_backoff = max.max(base);
        self
    }

    /// Sets how long a command retries transient store failures (see the field).
    pub fn transient_budget(mut self, budget: Duration) -> Self {
        self.transient_budget = budget;
        self
    }

    /// Sets the randomised share of each backoff, in percent (capped at 100).
    pub fn jitter_percent(mut self, percent: u8) -> Self {
        self.jitter_percent = percent.min(100);
        self
    }

    /// The wait before attempt `attempt` (2 for the first retry): exponential, capped, with
    /// the configured share randomised.
    pub fn backoff_for(&self, attempt: u32) -> Duration {
        self.schedule().delay(attempt.saturating_sub(1))
    }

    /// The policy's retry schedule (the one [`Backoff`] type every layer uses).
    pub fn schedule(&self) -> Backoff {
        Backoff::new(self.base_backoff, self.max_backoff).jitter_percent(self.jitter_percent)
    }
}

/// When the runtime snapshots an actor's state (through the store's `SnapshotStore`).
///
/// Activation loads the latest snapshot and replays only the events after it, so snapshots
/// bound activation cost. `every` is the upper bound on events that accumulate without a
/// snapshot; `min_events` is the lower bound below which a passivation does not bother.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SnapshotPolicy {
    /// Snapshot once this many events were appended since the last snapshot. Default 1,000.
    pub every: Option<u64>,
    /// Snapshot when the actor is passivated (idle, evicted, stopped, shut down). Default on.
    pub on_passivation: bool,
    /// Passivation snapshots only when at least this many events are not yet covered by one.
    /// Default 10.
    pub min_events: u64,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        Self {
            every: Some(1000),
            on_passivation: true,
            min_events: 10,
        }
    }
}

impl SnapshotPolicy {
    /// No snapshots: activation always replays every event.
    pub fn off() -> Self {
        Self {
            every: None,
            on_passivation: false,
            min_events: 0,
        }
    }

    /// Snapshot every `n` events (at least 1), and on passivation.
    pub fn every(n: u64) -> Self {
        Self {
            every: Some(n.max(1)),
            ..Self::default()
        }
    }

    /// Sets whether passivation snapshots.
    pub fn on_passivation(mut self, on: bool) -> Self {
        self.on_passivation = on;
        self
    }

    /// Sets the minimum number of new events for a passivation snapshot.
    pub fn min_events(mut self, n: u64) -> Self {
        self.min_events = n;
        self
    }

    pub(crate) fn after_command(&self, since_snapshot: u64) -> bool {
        self.every.is_some_and(|n| since_snapshot >= n)
    }

    pub(crate) fn at_passivation(&self, since_snapshot: u64) -> bool {
        self.on_passivation && since_snapshot > 0 && since_snapshot >= self.min_events
    }
}

/// The fewest command ids an actor remembers, whatever their age (the default
/// [`CommandMemory::min`]): a command is recognised as long as fewer than this many other
/// commands with ids reached the actor in between, even when it is older than the horizon.
pub const REMEMBERED_COMMANDS: usize = 256;

/// How long an actor remembers a command id at least (the default [`CommandMemory::horizon`]):
/// 60 s, the cluster's default call timeout (30 s, during which a caller re-sends a call with the
/// same id) with as much again as margin for clocks and slow answers.
pub const COMMAND_HORIZON: Duration = Duration::from_secs(60);

/// The most command ids one actor remembers (the default [`CommandMemory::max`]), so memory
/// stays bounded whatever the rate: past it the oldest are forgotten even within the horizon.
pub const MAX_REMEMBERED_COMMANDS: usize = 65_536;

/// The most command ids one snapshot carries (the default [`CommandMemory::in_snapshots`]).
pub const SNAPSHOT_COMMANDS: usize = 4_096;

/// The most bytes of command ids one snapshot carries: its newest ids that fit, so that a
/// snapshot of ids of any length stays well under NATS's 1 MiB payload limit (4,096 ids of 64
/// bytes fit; longer ids mean fewer).
pub const SNAPSHOT_COMMAND_BYTES: usize = 256 * 1024;

/// Which command ids an actor remembers, to recognise a command sent again
/// ([`ActorRef::ask_once`](crate::ActorRef::ask_once)): each id it folded in (its own appends,
/// replayed events, its snapshot's list) with the time it was applied, oldest first.
///
/// An id is kept while it is younger than `horizon`, and in any case while it is among the
/// newest `min`; the oldest are dropped regardless once more than `max` are held. So a command
/// is applied at most once per id when its copies reach the actor within `horizon` of each
/// other, or with fewer than `min` other commands with ids in between; at more than
/// `max / horizon` commands with ids per second, only within `max` commands.
///
/// Times are the command's first event's timestamp (the clock of the process that appended it),
/// compared with this process's clock: clocks that disagree by more than the margin between the
/// horizon and the callers' retry window shorten the memory by the difference.
///
/// Across passivation and moves, an actor remembers what its snapshot carries — the newest
/// `in_snapshots` ids (at most [`SNAPSHOT_COMMAND_BYTES`] of them) of those within the horizon
/// or among the newest `min` — and the ids of the events replayed after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CommandMemory {
    /// Ids younger than this are kept (up to `max`). Default [`COMMAND_HORIZON`] (60 s).
    pub horizon: Duration,
    /// The newest this many ids are kept whatever their age. Default [`REMEMBERED_COMMANDS`]
    /// (256).
    pub min: usize,
    /// At most this many ids per actor (at least `min`, at least 1). Default
    /// [`MAX_REMEMBERED_COMMANDS`] (65,536).
    pub max: usize,
    /// At most this many ids per snapshot (at most `max`). Default [`SNAPSHOT_COMMANDS`]
    /// (4,096).
    pub in_snapshots: usize,
}

impl Default for CommandMemory {
    fn default() -> Self {
        Self {
            horizon: COMMAND_HORIZON,
            min: REMEMBERED_COMMANDS,
            max: MAX_REMEMBERED_COMMANDS,
            in_snapshots: SNAPSHOT_COMMANDS,
        }
    }
}

impl CommandMemory {
    /// Sets how long an id is kept at least (within `max`).
    pub fn horizon(mut self, horizon: Duration) -> Self {
        self.horizon = horizon;
        self
    }

    /// Sets how many of the newest ids are kept whatever their age.
    pub fn min(mut self, min: usize) -> Self {
        self.min = min;
        self
    }

    /// Sets the most ids kept per actor.
    pub fn max(mut self, max: usize) -> Self {
        self.max = max;
        self
    }

    /// Sets the most ids carried by a snapshot.
    pub fn in_snapshots(mut self, n: usize) -> Self {
        self.in_snapshots = n;
        self
    }

    /// The same memory with its bounds made consistent: `max` at least `min` and at least 1,
    /// `in_snapshots` at most `max`.
    pub(crate) fn clamped(mut self) -> Self {
        self.max = self.max.max(self.min).max(1);
        self.in_snapshots = self.in_snapshots.min(self.max);
        self
    }

    /// The horizon in milliseconds (saturating).
    pub(crate) fn horizon_millis(&self) -> u64 {
        u64::try_from(self.horizon.as_millis()).unwrap_or(u64::MAX)
    }
}

/// Runtime settings (see [`crate::RuntimeBuilder`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RuntimeConfig {
    /// Commands buffered per actor before senders wait. Default 64; 0 counts as 1.
    pub mailbox_capacity: usize,
    /// Passivate an actor that handled nothing for this long (a sweep every half of it stops
    /// actors idle for at least this, so one goes between 1 and 1.5 of these after its last
    /// command). `None`: never. Default 5 minutes.
    pub idle_timeout: Option<Duration>,
    /// At most this many actors in memory; activating one more passivates the least recently
    /// used. Default 100,000; 0 counts as 1.
    pub max_active: usize,
    /// Conflict handling.
    pub retry: RetryPolicy,
    /// Snapshot policy (used only with a snapshot store).
    pub snapshots: SnapshotPolicy,
    /// Which command ids each actor remembers (see [`CommandMemory`]).
    pub command_memory: CommandMemory,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            mailbox_capacity: 64,
            idle_timeout: Some(Duration::from_secs(300)),
            max_active: 100_000,
            retry: RetryPolicy::default(),
            snapshots: SnapshotPolicy::default(),
            command_memory: CommandMemory::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered_within_bounds() {
        let p = RetryPolicy::default()
            .backoff(Duration::from_millis(10), Duration::from_millis(40))
            .jitter_percent(50);
        for _ in 0..100 {
            let b2 = p.backoff_for(2);
            assert!(b2 >= Duration::from_millis(5) && b2 <= Duration::from_millis(10));
            let b3 = p.backoff_for(3);
            assert!(b3 >= Duration::from_millis(10) && b3 <= Duration::from_millis(20));
            let b9 = p.backoff_for(9);
            assert!(b9 >= Duration::from_millis(20) && b9 <= Duration::from_millis(40));
        }
        let exact = p.jitter_percent(0);
        assert_eq!(exact.backoff_for(3), Duration::from_millis(20));
    }

    #[test]
    fn snapshot_policy_bounds() {
        let p = SnapshotPolicy::every(100).min_events(10);
        assert!(!p.after_command(99));
        assert!(p.after_command(100));
        assert!(!p.at_passivation(9));
        assert!(p.at_passivation(10));
        assert!(!SnapshotPolicy::off().at_passivation(1000));
        assert!(!SnapshotPolicy::off().after_command(1000));
    }

    #[test]
    fn command_memory_bounds_are_made_consistent() {
        let m = CommandMemory::default()
            .min(10)
            .max(5)
            .in_snapshots(100)
            .clamped();
        assert_eq!((m.min, m.max, m.in_snapshots), (10, 10, 10));
        let m = CommandMemory::default().min(0).max(0).clamped();
        assert_eq!(m.max, 1);
        assert_eq!(CommandMemory::default().horizon_millis(), 60_000);
        let forever = CommandMemory::default().horizon(Duration::MAX);
        assert_eq!(forever.horizon_millis(), u64::MAX);
    }
}
