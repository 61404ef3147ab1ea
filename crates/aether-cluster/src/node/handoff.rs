//! The handoff ([`Handoff`]): following the shard map. When a new map arrives, shards this node
//! lost start draining (in-flight calls finish, their actors are passivated with snapshots, the
//! new owner is told), shards it gained are served at once (their old owner is gone, or
//! confirmed already) or held until the old owner confirms, at most the handoff timeout.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use tracing::Instrument;

use super::shards::{MigrationStatus, Serve, ShardMigration};
use super::wire::{self, Confirmation};
use super::{Shared, lock};
use crate::events::ClusterEvents;
use crate::hash::{ShardId, shard_for};
use crate::map::ShardMap;

/// How often the node re-checks the map, pending handoffs and conflict counters without an event.
const TICK: Duration = Duration::from_millis(250);
/// Actors passivated at once while draining.
const PASSIVATE_AT_ONCE: usize = 64;

/// Applies shard maps to the shard table and hands shards over between nodes.
#[derive(Debug)]
pub(super) struct Handoff {
    node: Arc<Shared>,
    /// The map the shard table was last brought in line with; its lock makes one apply at a time.
    applied: Mutex<Option<Arc<ShardMap>>>,
    /// Handoffs confirmed before this node applied the map that gives it the shard: shard ->
    /// (previous owner, epoch).
    early: Mutex<HashMap<ShardId, (String, u64)>>,
    /// Drains (with their handoff confirmations) still running.
    drains_running: AtomicUsize,
    /// The version conflicts of this node's actors already counted in the double-serve metric.
    conflicts_seen: AtomicU64,
}

impl Handoff {
    pub(super) fn new(node: Arc<Shared>) -> Self {
        Self {
            node,
            applied: Mutex::new(None),
            early: Mutex::new(HashMap::new()),
            drains_running: AtomicUsize::new(0),
            conflicts_seen: AtomicU64::new(0),
        }
    }

    /// Whether this node has handed everything off: the map it applied gives it no shard, it
    /// serves, holds or drains none, and no drain (or its confirmation) is still running.
    pub(super) fn handed_off(&self) -> bool {
        let node = &self.node;
        let owned = lock(&self.applied)
            .as_ref()
            .is_some_and(|m| !m.shards_of(node.me()).is_empty());
        !owned
            && node.shards.serving_count() == 0
            && self.drains_running.load(Ordering::SeqCst) == 0
    }

    /// Applies each newer map the manager reports, and (every tick) serves overdue pending
    /// shards and counts version conflicts.
    pub(super) async fn follow_map(self: Arc<Self>, mut events: ClusterEvents) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.node.cancel.cancelled() => return,
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
        let node = &self.node;
        let Some(map) = node.manager.shard_map() else {
            return;
        };
        let me = node.me().to_owned();
        let mut drains: BTreeMap<Option<String>, Vec<ShardId>> = BTreeMap::new();
        {
            let mut applied = lock(&self.applied);
            if applied.as_ref().is_some_and(|a| a.epoch() >= map.epoch()) {
                return;
            }
            let previous = applied.replace(map.clone());
            node.shards.follow(map.clone());
            let live: HashSet<String> = node.manager.members().into_iter().map(|m| m.id).collect();
            let mut early = lock(&self.early);
            for shard in 0..node.config.shard_count {
                let owner = map.owner(shard);
                let mine = owner == Some(me.as_str());
                let state = node.shards.state(shard);
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
                            None => node.shards.set(shard, Serve::Serving),
                            Some(f) if confirmed.as_ref().is_some_and(|(c, _)| c == f) => {
                                node.shards.set(shard, Serve::Serving);
                                node.shards.record(record);
                            }
                            Some(f) if !live.contains(f) => {
                                record.reason = Some(format!(
                                    "node {f} had failed; its acknowledged work is in the store"
                                ));
                                node.shards.set(shard, Serve::Serving);
                                node.shards.record(record);
                            }
                            Some(f) => {
                                record.status = MigrationStatus::Pending;
                                record.took = None;
                                node.shards.record(record);
                                node.shards.mark_pending(shard, f);
                                node.metrics.moves_started.increment(1);
                            }
                        }
                    }
                    (false, Serve::Serving | Serve::Pending) => {
                        node.shards.set(shard, Serve::Draining);
                        node.shards.record(ShardMigration {
                            shard,
                            from: Some(me.clone()),
                            to: owner.map(str::to_owned),
                            epoch: map.epoch(),
                            status: MigrationStatus::InProgress,
                            reason: None,
                            started: SystemTime::now(),
                            took: None,
                        });
                        node.metrics.moves_started.increment(1);
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
        node.shards.map_changed.notify_waiters();
        if !drains.is_empty() {
            let handoff = self.clone();
            let epoch = map.epoch();
            self.drains_running.fetch_add(1, Ordering::SeqCst);
            let task = tokio::spawn(async move {
                let span = tracing::debug_span!(
                    "aether.cluster.move",
                    cluster = %handoff.node.config.cluster_name,
                    node = %handoff.node.me(),
                    side = "drain",
                    epoch,
                    shards = drains.values().map(Vec::len).sum::<usize>(),
                    to = ?drains.keys().collect::<Vec<_>>(),
                );
                handoff.clone().drain(epoch, drains).instrument(span).await;
                handoff.drains_running.fetch_sub(1, Ordering::SeqCst);
                handoff.node.shards.changed.notify_waiters();
            });
            lock(&node.tasks).push(task);
        }
    }

    /// Hands `drains` (new owner -> shards) off: waits for the calls inside, passivates the
    /// shards' actors (snapshots), then tells each new owner.
    async fn drain(self: Arc<Self>, epoch: u64, drains: BTreeMap<Option<String>, Vec<ShardId>>) {
        let node = &self.node;
        let shards: HashSet<ShardId> = drains.values().flatten().copied().collect();
        for &shard in &shards {
            if !node
                .shards
                .wait_empty(shard, node.config.call_timeout)
                .await
            {
                tracing::warn!(node = %node.me(), shard, "calls still running after the call timeout; draining anyway");
            }
        }
        for host in node.hosts.all() {
            let leaving: Vec<String> = host
                .active()
                .into_iter()
                .filter(|id| shards.contains(&shard_for(id, node.config.shard_count)))
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
            .map(|m| m.shards_of(node.me()).into_iter().collect())
            .unwrap_or_default();
        for &shard in &shards {
            // Given back while draining: serve it again (nobody else served it meanwhile
            // unless they waited out the handoff timeout, which the store's check covers).
            let next = if now_mine.contains(&shard) {
                Serve::Serving
            } else {
                Serve::NotMine
            };
            node.shards.set(shard, next);
            if node
                .shards
                .finish(shard, MigrationStatus::Done, None)
                .is_some()
            {
                node.metrics.moves_done.increment(1);
            }
        }
        for (to, shards) in drains {
            let Some(to) = to.filter(|t| t != node.me()) else {
                continue;
            };
            self.confirm(&to, epoch, shards).await;
        }
    }

    /// Tells `to` that `shards` are drained here, a few times if its acknowledgement is lost
    /// (once if the server refuses the request, with a permission watch).
    async fn confirm(&self, to: &str, epoch: u64, shards: Vec<ShardId>) {
        let node = &self.node;
        let confirmation = Confirmation {
            from: node.me().to_owned(),
            epoch,
            shards,
        };
        let Ok(payload) = wire::encode(&confirmation) else {
            return;
        };
        let subject = wire::handoff_subject(&node.config.cluster_name, to);
        for attempt in 1..=5u32 {
            let request = tokio::time::timeout(
                Duration::from_secs(1),
                node.client.request(subject.clone(), payload.clone()),
            );
            let sent = match &node.guard {
                None => request.await,
                Some(guard) => match guard
                    .watch(|r| guard.concerns_request(r, &subject), Box::pin(request))
                    .await
                {
                    Ok(sent) => sent,
                    // Refused again if re-sent: the new owner serves after its handoff timeout.
                    Err(refusal) => {
                        node.metrics.refused_handoff.increment(1);
                        tracing::warn!(
                            node = %node.me(),
                            to,
                            operation = refusal.operation.as_str(),
                            subject = %refusal.subject,
                            "the NATS server refused the handoff confirmation for the user's permissions ({refusal}); the new owner serves after its handoff timeout"
                        );
                        return;
                    }
                },
            };
            match sent {
                Ok(Ok(_)) => return,
                Ok(Err(e)) => {
                    tracing::debug!(node = %node.me(), to, attempt, error = %e, "handoff not acknowledged")
                }
                Err(_) => {
                    tracing::debug!(node = %node.me(), to, attempt, "handoff not acknowledged in time")
                }
            }
            if node.cancel.is_cancelled() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100) * attempt).await;
        }
        tracing::warn!(node = %node.me(), to, "handoff never acknowledged; the new owner serves after its handoff timeout");
    }

    /// The previous owner drained `confirmation.shards`: serve the ones pending here; remember
    /// the others in case this node has not applied the map that gives them yet.
    pub(super) fn take(&self, confirmation: &Confirmation) {
        let node = &self.node;
        let _span = tracing::debug_span!(
            "aether.cluster.move",
            cluster = %node.config.cluster_name,
            node = %node.me(),
            side = "take",
            epoch = confirmation.epoch,
            shards = confirmation.shards.len(),
            from = confirmation.from.as_str(),
        )
        .entered();
        let mut early = lock(&self.early);
        for &shard in &confirmation.shards {
            if shard >= node.config.shard_count {
                continue;
            }
            match node.shards.state(shard) {
                Serve::Pending => {
                    node.shards.set(shard, Serve::Serving);
                    if let Some(m) = node.shards.finish(shard, MigrationStatus::Done, None) {
                        node.metrics.moves_done.increment(1);
                        tracing::debug!(node = %node.me(), shard, from = ?m.from, took = ?m.took, "shard handed over");
                    }
                }
                Serve::NotMine => {
                    early.insert(shard, (confirmation.from.clone(), confirmation.epoch));
                }
                Serve::Serving | Serve::Draining => {}
            }
        }
    }

    /// Serves pending shards whose old owner failed, or did not confirm within the handoff
    /// timeout.
    fn expire_pending(&self) {
        let node = &self.node;
        let pending = node.shards.pending();
        if pending.is_empty() {
            return;
        }
        let live: HashSet<String> = node.manager.members().into_iter().map(|m| m.id).collect();
        for (shard, from, since) in pending {
            let (status, reason) = if !live.contains(&from) {
                (
                    MigrationStatus::Done,
                    format!("node {from} had failed; its acknowledged work is in the store"),
                )
            } else if since.elapsed() >= node.config.handoff_timeout {
                (
                    MigrationStatus::Failed,
                    format!(
                        "node {from} did not confirm the handoff within {:?}; serving anyway (the store's version check keeps one history)",
                        node.config.handoff_timeout
                    ),
                )
            } else {
                continue;
            };
            if node.shards.state(shard) != Serve::Pending {
                continue;
            }
            tracing::info!(node = %node.me(), shard, %reason, "serving a pending shard");
            node.shards.set(shard, Serve::Serving);
            if node.shards.finish(shard, status, Some(reason)).is_some() {
                match status {
                    MigrationStatus::Failed => node.metrics.moves_failed.increment(1),
                    _ => node.metrics.moves_done.increment(1),
                }
            }
        }
    }

    /// Adds the version conflicts this node's actors met since the last look to the
    /// double-serve metric.
    fn count_conflicts(&self) {
        let total: u64 = self.node.hosts.all().iter().map(|h| h.conflicts()).sum();
        let seen = self.conflicts_seen.swap(total, Ordering::Relaxed);
        if total > seen {
            self.node.metrics.conflicts.increment(total - seen);
        }
    }
}
