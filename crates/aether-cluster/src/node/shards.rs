//! The shard table: the map this node follows and which shards it serves right now, with a gate
//! per shard: callers enter a serving shard (counted), and a shard that starts moving away waits
//! until the last caller is out before its actors are passivated. Also the per-shard migration
//! records.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::{ArcSwapOption, Guard};
use tokio::sync::Notify;

use crate::hash::ShardId;
use crate::map::ShardMap;

/// This node's relation to a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Serve {
    /// Another node owns it (or nobody).
    NotMine = 0,
    /// The map gives it to this node, but the previous owner has not confirmed its handoff:
    /// calls are held.
    Pending = 1,
    /// This node serves it.
    Serving = 2,
    /// The map gave it to another node: no new calls; the in-flight ones finish, then its
    /// actors are passivated and the new owner is told.
    Draining = 3,
}

impl Serve {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Pending,
            2 => Self::Serving,
            3 => Self::Draining,
            _ => Self::NotMine,
        }
    }
}

/// Where a shard move stands (the Go version's `ActorMigration.Status`), as seen by one of the
/// two nodes involved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MigrationStatus {
    /// The new owner waits for the old owner's handoff; calls for the shard are held.
    Pending,
    /// The old owner is draining the shard (finishing in-flight calls, passivating its actors
    /// with snapshots).
    InProgress,
    /// Handed off: the old owner drained and confirmed, or the old owner had failed (its
    /// acknowledged work is all in the store).
    Done,
    /// The handoff was not confirmed in time (see `reason`); the new owner serves anyway,
    /// which is safe because the store's version check lets only one node write each version.
    Failed,
}

/// One shard changing hands, as this node saw it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ShardMigration {
    /// The shard.
    pub shard: ShardId,
    /// The old owner (`None`: it had none).
    pub from: Option<String>,
    /// The new owner (`None`: nobody).
    pub to: Option<String>,
    /// The map epoch that moved it.
    pub epoch: u64,
    /// Where it stands.
    pub status: MigrationStatus,
    /// Why it failed, or how it ended when that is worth knowing.
    pub reason: Option<String>,
    /// When this node started the move.
    pub started: SystemTime,
    /// How long it took (set when done or failed).
    pub took: Option<Duration>,
}

#[derive(Debug)]
pub(crate) struct Shards {
    /// The map the table was last brought in line with (the handoff applies maps), for callers
    /// to read without a lock.
    map: ArcSwapOption<ShardMap>,
    /// Woken whenever that map changes.
    pub(crate) map_changed: Notify,
    state: Vec<AtomicU8>,
    inflight: Vec<AtomicU32>,
    /// Woken when a shard's state changes or its last caller leaves.
    pub(crate) changed: Notify,
    pending_since: Mutex<BTreeMap<ShardId, (String, Instant)>>,
    migrations: Mutex<BTreeMap<ShardId, (ShardMigration, Instant)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A caller inside a serving shard; leaving (drop) lets a drain proceed.
#[derive(Debug)]
pub(crate) struct Entered<'a> {
    shards: &'a Shards,
    shard: ShardId,
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        self.shards.leave(self.shard);
    }
}

impl Shards {
    pub(crate) fn new(count: u32) -> Self {
        Self {
            map: ArcSwapOption::empty(),
            map_changed: Notify::new(),
            state: (0..count).map(|_| AtomicU8::new(0)).collect(),
            inflight: (0..count).map(|_| AtomicU32::new(0)).collect(),
            changed: Notify::new(),
            pending_since: Mutex::new(BTreeMap::new()),
            migrations: Mutex::new(BTreeMap::new()),
        }
    }

    /// The map the table follows. A short read: drop the guard before waiting on anything.
    pub(crate) fn map(&self) -> Guard<Option<Arc<ShardMap>>> {
        self.map.load()
    }

    /// The epoch of the map the table follows (0 before the first).
    pub(crate) fn map_epoch(&self) -> u64 {
        self.map.load().as_ref().map_or(0, |m| m.epoch())
    }

    /// Records `map` as the one the table follows (the caller wakes `map_changed` once the
    /// shards are in line with it).
    pub(crate) fn follow(&self, map: Arc<ShardMap>) {
        self.map.store(Some(map));
    }

    pub(crate) fn state(&self, shard: ShardId) -> Serve {
        self.state
            .get(shard as usize)
            .map_or(Serve::NotMine, |s| Serve::from_u8(s.load(Ordering::SeqCst)))
    }

    pub(crate) fn set(&self, shard: ShardId, serve: Serve) {
        if let Some(s) = self.state.get(shard as usize) {
            s.store(serve as u8, Ordering::SeqCst);
        }
        if serve != Serve::Pending {
            lock(&self.pending_since).remove(&shard);
        }
        self.changed.notify_waiters();
    }

    /// Enters `shard` if this node serves it; otherwise says how it stands.
    pub(crate) fn enter(&self, shard: ShardId) -> Result<Entered<'_>, Serve> {
        let Some(count) = self.inflight.get(shard as usize) else {
            return Err(Serve::NotMine);
        };
        // Counted first, checked second; a drain sets its state first and counts second, so
        // one of the two always sees the other.
        count.fetch_add(1, Ordering::SeqCst);
        match self.state(shard) {
            Serve::Serving => Ok(Entered {
                shards: self,
                shard,
            }),
            other => {
                self.leave(shard);
                Err(other)
            }
        }
    }

    /// A caller leaves `shard`. Only a drain waits for that, so only a draining shard's last
    /// caller wakes the waiters (waking held callers here would make them spin).
    fn leave(&self, shard: ShardId) {
        let left = self.inflight[shard as usize].fetch_sub(1, Ordering::SeqCst);
        if left == 1 && self.state(shard) == Serve::Draining {
            self.changed.notify_waiters();
        }
    }

    /// Waits (at most `patience`) until no caller is inside `shard`.
    pub(crate) async fn wait_empty(&self, shard: ShardId, patience: Duration) -> bool {
        let until = tokio::time::Instant::now() + patience;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.inflight[shard as usize].load(Ordering::SeqCst) == 0 {
                return true;
            }
            let now = tokio::time::Instant::now();
            if now >= until {
                return false;
            }
            // The timeout is a safety net only; leaving callers wake the drain.
            let _ = tokio::time::timeout_at(until.min(now + Duration::from_millis(100)), notified)
                .await;
        }
    }

    pub(crate) fn mark_pending(&self, shard: ShardId, from: &str) {
        lock(&self.pending_since).insert(shard, (from.to_owned(), Instant::now()));
        self.set_raw(shard, Serve::Pending);
    }

    fn set_raw(&self, shard: ShardId, serve: Serve) {
        if let Some(s) = self.state.get(shard as usize) {
            s.store(serve as u8, Ordering::SeqCst);
        }
        self.changed.notify_waiters();
    }

    /// Pending shards: (shard, previous owner, since).
    pub(crate) fn pending(&self) -> Vec<(ShardId, String, Instant)> {
        lock(&self.pending_since)
            .iter()
            .map(|(s, (from, at))| (*s, from.clone(), *at))
            .collect()
    }

    pub(crate) fn serving_count(&self) -> usize {
        self.state
            .iter()
            .filter(|s| Serve::from_u8(s.load(Ordering::Relaxed)) != Serve::NotMine)
            .count()
    }

    pub(crate) fn record(&self, migration: ShardMigration) {
        lock(&self.migrations).insert(migration.shard, (migration, Instant::now()));
    }

    /// Updates the record of `shard`'s latest move (if it is from `epoch` or later).
    pub(crate) fn finish(
        &self,
        shard: ShardId,
        status: MigrationStatus,
        reason: Option<String>,
    ) -> Option<ShardMigration> {
        let mut all = lock(&self.migrations);
        let (m, started) = all.get_mut(&shard)?;
        if matches!(m.status, MigrationStatus::Done | MigrationStatus::Failed) {
            return None;
        }
        m.status = status;
        m.reason = reason;
        m.took = Some(started.elapsed());
        Some(m.clone())
    }

    pub(crate) fn migrations(&self) -> Vec<ShardMigration> {
        lock(&self.migrations)
            .values()
            .map(|(m, _)| m.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_drain_waits_for_callers_inside_and_refuses_new_ones() {
        let shards = std::sync::Arc::new(Shards::new(4));
        shards.set(1, Serve::Serving);
        let inside = shards.enter(1).unwrap();
        assert_eq!(shards.enter(2).unwrap_err(), Serve::NotMine);
        shards.set(1, Serve::Draining);
        assert_eq!(shards.enter(1).unwrap_err(), Serve::Draining);
        assert!(!shards.wait_empty(1, Duration::from_millis(20)).await);
        let waiter = {
            let shards = shards.clone();
            tokio::spawn(async move { shards.wait_empty(1, Duration::from_secs(5)).await })
        };
        drop(inside);
        assert!(waiter.await.unwrap());
    }
}
