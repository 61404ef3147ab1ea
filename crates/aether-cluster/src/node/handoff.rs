//! Following the shard map: when a new map arrives, shards this node lost start draining
//! (in-flight calls finish, their actors are passivated with snapshots, the new owner is told),
//! shards it gained are served at once (their old owner is gone, or confirmed already) or held
//! until the old owner confirms, at most the handoff timeout.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use tracing::Instrument;

use super::shards::{MigrationStatus, Serve, ShardMigration};
use super::wire::{self, Handoff};
use super::{NodeInner, lock};
use crate::events::ClusterEvents;
use crate::hash::{ShardId, shard_for};

/// How often the node re-checks the map, pending handoffs and conflict counters without an event.
const TICK: Duration = Duration::from_millis(250);
/// Actors passivated at once while draining.
const PASSIVATE_AT_ONCE: usize = 64;

impl NodeInner {
    pub(super) async fn follow_map(self: Arc<Self>, mut events: ClusterEvents) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return,
                _ = events.next() => {}
                _ = tick.tick() => {
                    self.expire_pending();
                    self.count_conflicts();
                }
            }
            self.sync_map();
        }
    }

    /// Brings the shard table in line with the manager's map, if it is newer than the one
    /// applied, and starts the drains it calls for.
    pub(super) fn sync_map(self: &Arc<Self>) {
        let Some(map) = self.manager.shard_map() else {
            return;
        };
        let me = self.me().to_owned();
        let mut drains: BTreeMap<Option<String>, Vec<ShardId>> = BTreeMap::new();
        {
            let mut applied = lock(&self.applied);
            if applied.as_ref().is_some_and(|a| a.epoch() >= map.epoch()) {
                return;
            }
            let previous = applied.replace(map.clone());
            self.current.store(Some(map.clone()));
            let live: HashSet<String> = self.manager.members().into_iter().map(|m| m.id).collect();
            let mut early = lock(&self.early);
            for shard in 0..self.config.shard_count {
                let owner = map.owner(shard);
                let mine = owner == Some(me.as_str());
                let state = self.shards.state(shard);
                let before = previous
                    .as_ref()
                    .and_then(|p| p.owner(shard))
                    .map(str::to_owned);
                match (mine, state) {
                    (true, Serve::NotMine) => {
                        let from = before.filter(|b| *b != me);
                        let confirmed = early.remove(&shard);
                        let mut record = ShardMigration {
                            shard,
                            from: from.clone(),
                            to: Some(me.clone()),
                            epoch: map.epoch(),
                            status: MigrationStatus::Done,
                            reason: None,
                            started: SystemTime::now(),
                            took: Some(Duration::ZERO),
                        };
                        match &from {
                            // First map, or a shard nobody had: nothing to wait for.
                            None => self.shards.set(shard, Serve::Serving),
                            Some(f) if confirmed.as_ref().is_some_and(|(c, _)| c == f) => {
                                self.shards.set(shard, Serve::Serving);
                                self.shards.record(record);
                            }
                            Some(f) if !live.contains(f) => {
                                record.reason = Some(format!(
                                    "node {f} had failed; its acknowledged work is in the store"
                                ));
                                self.shards.set(shard, Serve::Serving);
                                self.shards.record(record);
                            }
                            Some(f) => {
                                record.status = MigrationStatus::Pending;
                                record.took = None;
                                self.shards.record(record);
                                self.shards.mark_pending(shard, f);
                                self.metrics.moves_started.increment(1);
                            }
                        }
                    }
                    (false, Serve::Serving | Serve::Pending) => {
                        self.shards.set(shard, Serve::Draining);
                        self.shards.record(ShardMigration {
                            shard,
                            from: Some(me.clone()),
                            to: owner.map(str::to_owned),
                            epoch: map.epoch(),
                            status: MigrationStatus::InProgress,
                            reason: None,
                            started: SystemTime::now(),
                            took: None,
                        });
                        self.metrics.moves_started.increment(1);
                        drains
                            .entry(owner.map(str::to_owned))
                            .or_default()
                            .push(shard);
                    }
                    // Still mine; still not mine; a drain in progress finishes on its own.
                    _ => {}
                }
            }
        }
        self.map_changed.notify_waiters();
        if !drains.is_empty() {
            let node = self.clone();
            let epoch = map.epoch();
            self.drains_running
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let task = tokio::spawn(async move {
                let span = tracing::debug_span!(
                    "aether.cluster.move",
                    cluster = %node.config.cluster_name,
                    node = %node.me(),
                    side = "drain",
                    epoch,
                    shards = drains.values().map(Vec::len).sum::<usize>(),
                    to = ?drains.keys().collect::<Vec<_>>(),
                );
                node.clone().drain(epoch, drains).instrument(span).await;
                node.drains_running
                    .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                node.shards.changed.notify_waiters();
            });
            lock(&self.tasks).push(task);
        }
    }

    /// Hands `drains` (new owner -> shards) off: waits for the calls inside, passivates the
    /// shards' actors (snapshots), then tells each new owner.
    async fn drain(self: Arc<Self>, epoch: u64, drains: BTreeMap<Option<String>, Vec<ShardId>>) {
        let shards: HashSet<ShardId> = drains.values().flatten().copied().collect();
        for &shard in &shards {
            if !self
                .shards
                .wait_empty(shard, self.config.call_timeout)
                .await
            {
                tracing::warn!(node = %self.me(), shard, "calls still running after the call timeout; draining anyway");
            }
        }
        for host in self.hosts() {
            let leaving: Vec<String> = host
                .active()
                .into_iter()
                .filter(|id| shards.contains(&shard_for(id, self.config.shard_count)))
                .collect();
            futures::stream::iter(leaving)
                .for_each_concurrent(PASSIVATE_AT_ONCE, |id| {
                    let host = host.clone();
                    async move { host.passivate(&id).await }
                })
                .await;
        }
        let now_mine: HashSet<ShardId> = lock(&self.applied)
            .as_ref()
            .map(|m| m.shards_of(self.me()).into_iter().collect())
            .unwrap_or_default();
        for &shard in &shards {
            // Given back while draining: serve it again (nobody else served it meanwhile
            // unless they waited out the handoff timeout, which the store's check covers).
            let next = if now_mine.contains(&shard) {
                Serve::Serving
            } else {
                Serve::NotMine
            };
            self.shards.set(shard, next);
            if self
                .shards
                .finish(shard, MigrationStatus::Done, None)
                .is_some()
            {
                self.metrics.moves_done.increment(1);
            }
        }
        for (to, shards) in drains {
            let Some(to) = to.filter(|t| t != self.me()) else {
                continue;
            };
            self.confirm(&to, epoch, shards).await;
        }
    }

    /// Tells `to` that `shards` are drained here, a few times if its acknowledgement is lost.
    async fn confirm(&self, to: &str, epoch: u64, shards: Vec<ShardId>) {
        let handoff = Handoff {
            from: self.me().to_owned(),
            epoch,
            shards,
        };
        let Ok(payload) = wire::encode(&handoff) else {
            return;
        };
        let subject = wire::handoff_subject(&self.config.cluster_name, to);
        for attempt in 1..=5u32 {
            let sent = tokio::time::timeout(
                Duration::from_secs(1),
                self.client.request(subject.clone(), payload.clone()),
            )
            .await;
            match sent {
                Ok(Ok(_)) => return,
                Ok(Err(e)) => {
                    tracing::debug!(node = %self.me(), to, attempt, error = %e, "handoff not acknowledged")
                }
                Err(_) => {
                    tracing::debug!(node = %self.me(), to, attempt, "handoff not acknowledged in time")
                }
            }
            if self.cancel.is_cancelled() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100) * attempt).await;
        }
        tracing::warn!(node = %self.me(), to, "handoff never acknowledged; the new owner serves after its handoff timeout");
    }

    /// Serves pending shards whose old owner failed, or did not confirm within the handoff
    /// timeout.
    fn expire_pending(&self) {
        let pending = self.shards.pending();
        if pending.is_empty() {
            return;
        }
        let live: HashSet<String> = self.manager.members().into_iter().map(|m| m.id).collect();
        for (shard, from, since) in pending {
            let (status, reason) = if !live.contains(&from) {
                (
                    MigrationStatus::Done,
                    format!("node {from} had failed; its acknowledged work is in the store"),
                )
            } else if since.elapsed() >= self.config.handoff_timeout {
                (
                    MigrationStatus::Failed,
                    format!(
                        "node {from} did not confirm the handoff within {:?}; serving anyway (the store's version check keeps one history)",
                        self.config.handoff_timeout
                    ),
                )
            } else {
                continue;
            };
            if self.shards.state(shard) != Serve::Pending {
                continue;
            }
            tracing::info!(node = %self.me(), shard, %reason, "serving a pending shard");
            self.shards.set(shard, Serve::Serving);
            if self.shards.finish(shard, status, Some(reason)).is_some() {
                match status {
                    MigrationStatus::Failed => self.metrics.moves_failed.increment(1),
                    _ => self.metrics.moves_done.increment(1),
                }
            }
        }
    }

    /// Adds the version conflicts this node's actors met since the last look to the
    /// double-serve metric.
    fn count_conflicts(&self) {
        let total: u64 = self.hosts().iter().map(|h| h.conflicts()).sum();
        let seen = self
            .conflicts_seen
            .swap(total, std::sync::atomic::Ordering::Relaxed);
        if total > seen {
            self.metrics.conflicts.increment(total - seen);
        }
    }
}
