//! The commands (by id) an actor has folded into its state, so that a command sent again is
//! recognised: those applied within the horizon, at least the newest `min`, at most `max`
//! ([`CommandMemory`]), oldest first, with an index by id hash.

use std::collections::{HashMap, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

use aether_core::{CommandId, CommandRecord};

use crate::config::{CommandMemory, SNAPSHOT_COMMAND_BYTES};

/// A command folded into the state: its id, the hash of the id, its first and last version,
/// and when it was applied (milliseconds since the Unix epoch; 0 when unknown, which counts as
/// old).
pub(super) struct Remembered {
    pub(super) hash: u64,
    pub(super) id: CommandId,
    pub(super) first: u64,
    pub(super) last: u64,
    pub(super) at: u64,
}

impl Remembered {
    fn record(&self) -> CommandRecord {
        let record = CommandRecord::new(&*self.id, self.first, self.last);
        if self.at == 0 {
            record
        } else {
            record.at(self.at)
        }
    }
}

/// The commands (by id) folded into an actor's state, oldest first, and an index from id hash
/// to the position of the newest command with that hash, so that an unknown id (the common
/// case) is told in one lookup and a known one found in another.
///
/// Positions count every command ever pushed: the front's is `next - list.len()`. Commands are
/// only dropped from the front (the oldest), so pruning is amortised O(1) per command.
#[derive(Default)]
pub(super) struct RecentCommands {
    list: VecDeque<Remembered>,
    index: HashMap<u64, u64, std::hash::BuildHasherDefault<Prehashed>>,
    /// The position the next command pushed gets.
    next: u64,
}

/// A `Hasher` for keys that are already hashes.
#[derive(Default)]
struct Prehashed(u64);

impl std::hash::Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed; this fold is never on the hot path.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Allocated only for actors that see command ids.
pub(super) type Recent = Option<Box<RecentCommands>>;

/// Only compared in this process's memory (the string is compared too), never stored.
pub(super) fn id_hash(id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(id.as_bytes())
}

/// `time` in milliseconds since the Unix epoch (0 before it).
pub(super) fn millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// This process's clock, in milliseconds since the Unix epoch.
pub(super) fn now_millis() -> u64 {
    millis(SystemTime::now())
}

/// Capacity kept after pruning, at least: below it the queue and the index are never shrunk.
const KEEP_CAPACITY: usize = 1024;

impl RecentCommands {
    /// The commands of a snapshot (oldest first), less those `memory` drops at `now`.
    pub(super) fn from_snapshot(
        records: Vec<CommandRecord>,
        memory: &CommandMemory,
        now: u64,
    ) -> Self {
        let mut recent = Self::default();
        for r in records {
            recent.push(
                memory,
                Remembered {
                    hash: id_hash(&r.id),
                    id: CommandId::from(r.id),
                    first: r.first,
                    last: r.last,
                    at: r.at.unwrap_or(0),
                },
                now,
            );
        }
        recent.shrink();
        recent
    }

    /// What a snapshot taken at `now` carries, oldest first: the newest commands within the
    /// horizon or among the newest `min`, at most `in_snapshots` of them and at most
    /// [`SNAPSHOT_COMMAND_BYTES`] of ids.
    pub(super) fn to_snapshot(&self, memory: &CommandMemory, now: u64) -> Vec<CommandRecord> {
        let horizon = memory.horizon_millis();
        let mut taken = 0;
        let mut bytes = 0;
        for r in self.list.iter().rev() {
            bytes += r.id.len();
            if taken == memory.in_snapshots
                || bytes > SNAPSHOT_COMMAND_BYTES
                || (taken >= memory.min && r.at.saturating_add(horizon) < now)
            {
                break;
            }
            taken += 1;
        }
        self.list
            .range(self.list.len() - taken..)
            .map(Remembered::record)
            .collect()
    }

    /// The record of command `id` (hashed `hash`), if it is remembered (the newest, should it
    /// be there twice).
    pub(super) fn find(&self, hash: u64, id: &str) -> Option<CommandRecord> {
        let position = *self.index.get(&hash)?;
        let newest = position
            .checked_sub(self.front())
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.list.get(i));
        match newest {
            Some(r) if &*r.id == id => Some(r.record()),
            // Another id with the same 64-bit hash: look through the rest.
            _ => self
                .list
                .iter()
                .rev()
                .find(|r| r.hash == hash && &*r.id == id)
                .map(Remembered::record),
        }
    }

    /// How many commands are remembered.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    /// The position of the oldest command.
    fn front(&self) -> u64 {
        self.next - self.list.len() as u64
    }

    /// Appends `command` (making room first at `max`, so the queue never grows past it), then
    /// drops what `memory` no longer keeps at `now`.
    fn push(&mut self, memory: &CommandMemory, command: Remembered, now: u64) {
        while self.list.len() >= memory.max.max(1) && self.pop_oldest() {}
        self.index.insert(command.hash, self.next);
        self.next += 1;
        self.list.push_back(command);
        self.prune(memory, now);
    }

    /// Drops the oldest commands while more than `min` are held and the oldest is older than the
    /// horizon at `now`. Only the front is looked at: a command behind a younger one waits for
    /// it (times come from several clocks and may be out of order).
    fn prune(&mut self, memory: &CommandMemory, now: u64) {
        let horizon = memory.horizon_millis();
        while self.list.len() > memory.min
            && self
                .list
                .front()
                .is_some_and(|oldest| oldest.at.saturating_add(horizon) < now)
        {
            self.pop_oldest();
        }
    }

    /// Drops the oldest command, and its index entry unless a newer command has the same hash.
    /// Returns whether there was one.
    fn pop_oldest(&mut self) -> bool {
        let position = self.front();
        let Some(old) = self.list.pop_front() else {
            return false;
        };
        if self.index.get(&old.hash) == Some(&position) {
            self.index.remove(&old.hash);
        }
        true
    }

    /// Gives back memory after a burst: when a quarter of the queue's capacity is in use.
    fn shrink(&mut self) {
        let len = self.list.len();
        if self.list.capacity() > KEEP_CAPACITY && len * 4 < self.list.capacity() {
            self.list.shrink_to((len * 2).max(KEEP_CAPACITY));
            self.index.shrink_to((len * 2).max(KEEP_CAPACITY));
        }
    }
}

/// Notes that the events at `command.first..=command.last` were caused by `command.id`, applied
/// at `command.at`; then drops what `memory` no longer keeps at `now`. The next event of the
/// newest command extends it.
pub(super) fn remember(recent: &mut Recent, memory: &CommandMemory, command: Remembered, now: u64) {
    let recent = recent.get_or_insert_with(Default::default);
    if let Some(prev) = recent.list.back_mut()
        && prev.hash == command.hash
        && prev.id == command.id
    {
        prev.last = command.last;
        return;
    }
    let had = recent.list.len();
    recent.push(memory, command, now);
    if recent.list.len() < had {
        recent.shrink();
    }
}

#[cfg(test)]
mod tests {
    // Test code: a failed expectation panics.
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::time::Duration;

    use super::*;

    /// A second, in milliseconds.
    const S: u64 = 1000;
    /// Some time well after the epoch, in milliseconds.
    const T0: u64 = 1_767_225_600_000;

    fn memory(horizon_s: u64, min: usize, max: usize) -> CommandMemory {
        CommandMemory::default()
            .horizon(Duration::from_secs(horizon_s))
            .min(min)
            .max(max)
    }

    fn command(id: &str, version: u64, at: u64) -> Remembered {
        Remembered {
            hash: id_hash(id),
            id: CommandId::from(id),
            first: version,
            last: version,
            at,
        }
    }

    /// Remembers command `id` at version `version`, applied (and remembered) at `at`.
    fn note(recent: &mut Recent, memory: &CommandMemory, id: &str, version: u64, at: u64) {
        remember(recent, memory, command(id, version, at), at);
    }

    fn knows(recent: &Recent, id: &str) -> bool {
        recent
            .as_ref()
            .is_some_and(|r| r.find(id_hash(id), id).is_some())
    }

    fn ids(records: &[CommandRecord]) -> Vec<&str> {
        records.iter().map(|r| r.id.as_str()).collect()
    }

    #[test]
    fn ids_are_kept_for_the_horizon_then_dropped_beyond_min() {
        let m = memory(60, 2, 1000);
        let mut recent = None;
        // One command a second for 100 s: far more than `min`, fewer than `max`.
        for i in 0..100 {
            note(&mut recent, &m, &format!("c{i}"), i + 1, T0 + i * S);
        }
        // At T0 + 99 s, commands applied at T0 + 39 s or later are within the horizon.
        let r = recent.as_ref().unwrap();
        assert_eq!(r.len(), 61);
        assert!(!knows(&recent, "c38"));
        assert!(knows(&recent, "c39"));
        assert!(knows(&recent, "c99"));
        // An hour later, one more command: all but the newest `min` are dropped.
        note(&mut recent, &m, "late", 101, T0 + 3600 * S);
        assert_eq!(recent.as_ref().unwrap().len(), 2);
        assert!(knows(&recent, "c99") && knows(&recent, "late"));
        assert!(!knows(&recent, "c98"));
    }

    #[test]
    fn the_newest_min_are_kept_whatever_their_age() {
        let m = memory(60, 256, 1000);
        let mut recent = None;
        for i in 0..300 {
            // Each an hour after the last: all old by the next.
            note(&mut recent, &m, &format!("c{i}"), i + 1, T0 + i * 3600 * S);
        }
        assert_eq!(recent.as_ref().unwrap().len(), 256);
        assert!(!knows(&recent, "c43"));
        assert!(knows(&recent, "c44"));
    }

    #[test]
    fn at_max_the_oldest_go_whatever_their_age() {
        let m = memory(60, 4, 100);
        let mut recent = None;
        // 1,000 commands in one millisecond: all within the horizon.
        for i in 0..1000 {
            note(&mut recent, &m, &format!("c{i}"), i + 1, T0);
        }
        let r = recent.as_ref().unwrap();
        assert_eq!(r.len(), 100);
        assert!(r.list.capacity() < 200, "the queue never grows past max");
        assert!(!knows(&recent, "c899"));
        assert!(knows(&recent, "c900") && knows(&recent, "c999"));
        assert_eq!(r.index.len(), 100, "dropped ids leave the index");
    }

    #[test]
    fn consecutive_events_of_one_command_extend_it() {
        let m = CommandMemory::default();
        let mut recent = None;
        note(&mut recent, &m, "a", 1, T0);
        note(&mut recent, &m, "a", 2, T0 + 1);
        note(&mut recent, &m, "b", 3, T0 + 2);
        let r = recent.as_ref().unwrap();
        assert_eq!(r.len(), 2);
        let a = r.find(id_hash("a"), "a").unwrap();
        assert_eq!((a.first, a.last, a.at), (1, 2, Some(T0)));
        assert!(r.find(id_hash("c"), "c").is_none());
    }

    #[test]
    fn ids_with_the_same_hash_are_told_apart() {
        let m = memory(60, 0, 100);
        let mut recent = None;
        // Two ids forced onto one hash: the index points at the newer.
        let mut one = command("one", 1, T0);
        let mut two = command("two", 2, T0);
        one.hash = 7;
        two.hash = 7;
        remember(&mut recent, &m, one, T0);
        remember(&mut recent, &m, two, T0);
        let r = recent.as_ref().unwrap();
        assert_eq!(r.find(7, "two").unwrap().first, 2);
        assert_eq!(r.find(7, "one").unwrap().first, 1);
        assert!(r.find(7, "three").is_none());
        // Dropping the older keeps the newer's index entry.
        let mut r = recent.unwrap();
        assert!(r.pop_oldest());
        assert_eq!(r.find(7, "two").unwrap().first, 2);
        assert!(r.find(7, "one").is_none());
        assert!(r.pop_oldest());
        assert!(r.index.is_empty());
    }

    #[test]
    fn a_snapshot_carries_the_ids_within_the_horizon_with_their_times() {
        let m = memory(60, 2, 1000);
        let mut recent = None;
        for i in 0..10 {
            note(&mut recent, &m, &format!("c{i}"), i + 1, T0 + i * 10 * S);
        }
        // At T0 + 95 s: c4 (40 s) and later are within the horizon.
        let records = recent.as_ref().unwrap().to_snapshot(&m, T0 + 95 * S);
        assert_eq!(ids(&records), ["c4", "c5", "c6", "c7", "c8", "c9"]);
        assert_eq!(records[0].at, Some(T0 + 40 * S));
        // Round trip: activated at once, the same ids, versions and times.
        let back = RecentCommands::from_snapshot(records.clone(), &m, T0 + 95 * S);
        assert_eq!(back.to_snapshot(&m, T0 + 95 * S), records);
        assert!(back.find(id_hash("c4"), "c4").is_some());
        // Activated 30 s later: what passed the horizon meanwhile is dropped.
        let later = RecentCommands::from_snapshot(records, &m, T0 + 125 * S);
        assert_eq!(
            ids(&later.to_snapshot(&m, T0 + 125 * S)),
            ["c7", "c8", "c9"]
        );
        // Much later, only the newest `min` are carried.
        let records = recent.as_ref().unwrap().to_snapshot(&m, T0 + 3600 * S);
        assert_eq!(ids(&records), ["c8", "c9"]);
    }

    #[test]
    fn a_snapshot_carries_at_most_its_cap_and_its_bytes() {
        let m = memory(60, 2, 100_000).in_snapshots(4096);
        let mut recent = None;
        for i in 0..10_000 {
            note(&mut recent, &m, &format!("c{i:05}"), i + 1, T0);
        }
        let records = recent.as_ref().unwrap().to_snapshot(&m, T0);
        assert_eq!(records.len(), 4096);
        assert_eq!(
            records.first().unwrap().id,
            "c05904",
            "the newest, oldest first"
        );
        assert_eq!(records.last().unwrap().id, "c09999");
        let snapshot = aether_core::ActorSnapshot::new("a", 10_000, &())
            .unwrap()
            .with_commands(records);
        let size = rmp_serde::to_vec_named(&snapshot).unwrap().len();
        println!("4,096 ids of 6 bytes: {size} bytes in a snapshot");
        assert!(size < 256 * 1024, "{size}");

        // Ids of 1 KiB: only what fits in the byte budget.
        let mut recent = None;
        for i in 0..1000 {
            let id = format!("{i:01024}");
            note(&mut recent, &m, &id, i + 1, T0);
        }
        let records = recent.as_ref().unwrap().to_snapshot(&m, T0);
        assert_eq!(records.len(), SNAPSHOT_COMMAND_BYTES / 1024);
    }

    #[test]
    fn snapshot_ids_without_a_time_count_as_old() {
        let m = memory(60, 3, 1000);
        // An older writer's snapshot: five ids, no times.
        let old: Vec<_> = (0..5)
            .map(|i| CommandRecord::new(format!("c{i}"), i + 1, i + 1))
            .collect();
        let recent = Some(Box::new(RecentCommands::from_snapshot(old, &m, T0)));
        assert_eq!(recent.as_ref().unwrap().len(), 3, "only the newest `min`");
        assert!(!knows(&recent, "c1"));
        assert!(knows(&recent, "c2") && knows(&recent, "c4"));
        // Written back without a time, and pushed out by new ones beyond `min`.
        let mut recent = recent;
        assert_eq!(recent.as_ref().unwrap().to_snapshot(&m, T0)[0].at, None);
        note(&mut recent, &m, "new", 6, T0);
        assert!(!knows(&recent, "c2"));
        assert!(knows(&recent, "c3") && knows(&recent, "new"));
    }

    #[test]
    fn memory_is_given_back_after_a_burst() {
        let m = memory(60, 0, 100_000);
        let mut recent = None;
        for i in 0..50_000 {
            note(&mut recent, &m, &format!("c{i}"), i + 1, T0);
        }
        let burst = recent.as_ref().unwrap().list.capacity();
        // Two minutes later, a command a second.
        for i in 0..10 {
            note(&mut recent, &m, "x", 50_001 + i, T0 + (120 + i) * S);
        }
        let r = recent.as_ref().unwrap();
        assert_eq!(r.len(), 1);
        assert!(
            r.list.capacity() <= KEEP_CAPACITY,
            "{burst} -> {}",
            r.list.capacity()
        );
        assert!(r.index.capacity() <= 2 * KEEP_CAPACITY);
    }

    /// The memory per remembered id, from the tables' sizes (the queue's entries, and the
    /// index's buckets of 16 bytes and one control byte each): 56 bytes of entry and 17 of
    /// index at least, twice that just after a table doubled.
    #[test]
    fn a_remembered_id_costs_under_150_bytes() {
        assert_eq!(size_of::<Remembered>(), 56);
        for n in [1_000, 16_384, 21_000, 65_536] {
            let m = memory(60, 0, 65_536);
            let mut recent = None;
            for i in 0..n {
                note(&mut recent, &m, &format!("c{i}"), i + 1, T0);
            }
            let r = recent.as_ref().unwrap();
            let queue = r.list.capacity() * size_of::<Remembered>();
            let index = r.index.capacity().div_ceil(7).next_power_of_two() * 8 * 17;
            let per_id = (queue + index) as f64 / n as f64;
            println!("{n} ids: {per_id:.1} bytes each (queue {queue}, index {index})");
            assert!(per_id < 150.0, "{n} ids: {per_id:.1} bytes each");
        }
    }
}
