//! This node's view of the cluster bucket: loading it (last value per key), applying each
//! change (members, lease, map) and turning it into [`ClusterEvent`]s, and the watch task with
//! its stalled-watch canary.

#[allow(clippy::wildcard_imports)]
use super::*;
use aether_core::Backoff;

/// Pauses between attempts to reload the bucket after the watch failed: doubling from 100 ms to
/// 2 s.
const RELOAD_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));

impl Inner {
    /// (Re)loads the whole view from the bucket (last value per key) and returns the watch that
    /// continues from there. Members that vanished since the previous view are reported failed.
    async fn resync(&self, bucket: &Bucket) -> Result<kv::Watch, ClusterError> {
        // The load ends at the entry marked `seen_current`, so the bucket must hold at least
        // one: `config`, which nobody deletes -- but if someone did, write it back.
        self.check_settings(bucket).await?;
        self.load(bucket).await
    }

    /// Loads the whole view (see [`resync`](Self::resync)); `config` is known to exist.
    pub(super) async fn load(&self, bucket: &Bucket) -> Result<kv::Watch, ClusterError> {
        let (watch, latest) = match &self.guard {
            None => self.fetch(bucket).await?,
            // A refused consumer (or its delivery subscription) ends the load at once.
            Some(guard) => guard
                .watch(
                    |r| guard.concerns_bucket(r, Scope::Stream),
                    Box::pin(self.fetch(bucket)),
                )
                .await
                .unwrap_or_else(|refusal| {
                    Err(self.denied("watching the cluster bucket", refusal))
                })?,
        };
        let vanished: Vec<String> = {
            let view = self.read_view();
            view.members
                .keys()
                .filter(|id| {
                    latest
                        .get(&format!("{KEY_NODES_PREFIX}{id}"))
                        .is_none_or(|e| e.operation != Operation::Put)
                })
                .cloned()
                .collect()
        };
        for id in vanished {
            self.write_view().members.remove(&id);
            self.emit(ClusterEvent::MemberFailed { node_id: id });
            self.membership_changed.notify_one();
        }
        if !latest.contains_key(KEY_LEADER) && self.read_view().leader.is_some() {
            self.set_leader(None);
        }
        let mut entries: Vec<kv::Entry> = latest.into_values().collect();
        entries.sort_by_key(|e| e.revision);
        for entry in entries {
            self.apply(entry);
        }
        self.update_member_metrics();
        Ok(watch)
    }

    /// A watch of the whole bucket, and the last entry of each key (read until caught up).
    async fn fetch(
        &self,
        bucket: &Bucket,
    ) -> Result<(kv::Watch, BTreeMap<String, kv::Entry>), ClusterError> {
        // Creating the watch's consumer can time out while a just-created replicated bucket
        // elects its stream leader, or on a loaded server: a few attempts, then the error.
        let mut attempt = 0;
        let mut watch = loop {
            attempt += 1;
            match bucket.kv.watch_with_history(">").await {
                Ok(watch) => break watch,
                Err(e) if attempt < 4 => {
                    tracing::debug!(node = %self.config.node_id, error = %e, attempt, "creating the bucket watch failed; retrying");
                    tokio::time::sleep(Duration::from_millis(250) * attempt).await;
                }
                Err(e) => return Err(self.setup("watching the cluster bucket", Box::new(e))),
            }
        };
        let mut latest: BTreeMap<String, kv::Entry> = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let next = tokio::time::timeout_at(deadline, watch.next()).await;
            match next {
                Ok(Some(Ok(entry))) => {
                    let done = entry.seen_current;
                    latest.insert(entry.key.clone(), entry);
                    if done {
                        break;
                    }
                }
                Ok(Some(Err(e))) => {
                    return Err(self.setup("loading the cluster state", Box::new(e)));
                }
                Ok(None) => {
                    return Err(self.setup("loading the cluster state", "the watch ended".into()));
                }
                Err(_) => {
                    return Err(
                        self.setup("loading the cluster state", "timed out after 10s".into())
                    );
                }
            }
        }
        Ok((watch, latest))
    }

    fn set_leader(&self, leader: Option<LeaderInfo>) {
        let changed = {
            let mut view = self.write_view();
            let changed = view.leader != leader;
            view.leader.clone_from(&leader);
            changed
        };
        if changed {
            let term = leader.as_ref().map_or(0, |l| l.term);
            self.metrics.leader_term.set(term as f64);
            if leader.is_none() {
                self.leader_gone.notify_one();
            }
            self.emit(ClusterEvent::LeaderChanged {
                leader: leader.map(|l| l.node_id),
                term,
            });
        }
    }

    /// Applies one bucket entry to the view and reports what changed.
    fn apply(&self, entry: kv::Entry) {
        {
            let mut view = self.write_view();
            view.revision = view.revision.max(entry.revision);
        }
        let present = entry.operation == Operation::Put;
        let key = entry.key.as_str();
        if key == KEY_LEADER {
            let leader = present
                .then(|| decode::<LeaseRecord>(&entry.value).ok())
                .flatten()
                .map(|l| LeaderInfo {
                    node_id: l.node,
                    term: l.term.unwrap_or(entry.revision),
                });
            self.set_leader(leader);
        } else if key == KEY_SHARD_MAP {
            if !present {
                return;
            }
            let map = match ShardMap::decode(&entry.value) {
                Ok(map) if map.shard_count() != self.config.shard_count => {
                    tracing::warn!(cluster = %self.config.cluster_name, shards = map.shard_count(), "ignoring a shard map with another shard count");
                    return;
                }
                Ok(map) => Arc::new(map),
                Err(e) => {
                    tracing::warn!(cluster = %self.config.cluster_name, error = %e, "ignoring a shard map that does not decode");
                    return;
                }
            };
            let prev = {
                let mut view = self.write_view();
                if view.map.as_ref().is_some_and(|m| m.epoch() >= map.epoch()) {
                    return;
                }
                view.map.replace(Arc::clone(&map))
            };
            let plan = plan_between(prev.as_deref(), &map);
            self.metrics.map_epoch.set(map.epoch() as f64);
            self.metrics
                .shards_owned
                .set(map.shards_of(&self.config.node_id).len() as f64);
            let written_by_another = map.leader() != self.config.node_id;
            self.emit(ClusterEvent::ShardMapChanged { map, plan });
            // The leader looks again at a new map that does not name it as its writer (a forged or
            // stray put, or a former leader's): it is replaced by the leader's placement after
            // the rebalance delay, when that differs, instead of standing until the next
            // membership change. Its own maps do not wake it (a placement that moves shards
            // each time it runs would otherwise publish without end).
            if written_by_another {
                self.membership_changed.notify_one();
            }
        } else if let Some(id) = key.strip_prefix(KEY_NODES_PREFIX) {
            // (event, whether placement may change)
            let event = if present {
                let Some(rec) = decode::<NodeRecord>(&entry.value)
                    .ok()
                    .filter(|r| r.id == id)
                else {
                    tracing::warn!(cluster = %self.config.cluster_name, key, "ignoring a node record that does not decode");
                    return;
                };
                let mut view = self.write_view();
                match view.members.insert(id.to_owned(), rec.clone()) {
                    None => Some((ClusterEvent::MemberJoined(rec), true)),
                    Some(old) if old != rec => {
                        let placement = old.status != rec.status || old.capacity != rec.capacity;
                        Some((ClusterEvent::MemberUpdated(rec), placement))
                    }
                    Some(_) => None,
                }
            } else {
                let removed = self.write_view().members.remove(id).is_some();
                let node_id = id.to_owned();
                removed.then_some(match entry.operation {
                    Operation::Delete => (ClusterEvent::MemberLeft { node_id }, true),
                    _ => (ClusterEvent::MemberFailed { node_id }, true),
                })
            };
            if let Some((event, placement)) = event {
                self.update_member_metrics();
                self.emit(event);
                if placement {
                    self.membership_changed.notify_one();
                }
            }
        }
        self.view_changed.notify_waiters();
    }

    fn update_member_metrics(&self) {
        self.metrics
            .members
            .set(self.read_view().members.len() as f64);
    }

    /// Follows the bucket, reloading it when the watch fails, ends or stalls.
    pub(super) async fn watch_task(self: Arc<Self>, bucket: Bucket, mut watch: kv::Watch) {
        // This node's own heartbeats are the canary: a watch that has not delivered a record
        // this node wrote a while ago is stuck (seen after a NATS server was killed: the ordered
        // consumer neither delivered nor failed), and is replaced.
        let stale_after = (self.config.heartbeat_interval * 3).max(Duration::from_secs(2));
        let mut check = tokio::time::interval(self.config.heartbeat_interval);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let reload = tokio::select! {
                () = self.cancel.cancelled() => return,
                next = watch.next() => match next {
                    Some(Ok(entry)) => {
                        self.apply(entry);
                        false
                    }
                    Some(Err(e)) => {
                        tracing::warn!(cluster = %self.config.cluster_name, error = %e, "cluster watch failed; reloading");
                        true
                    }
                    None => true,
                },
                _ = check.tick() => {
                    let canary = *lock(&self.canary);
                    let stuck = canary.is_some_and(|(revision, written)| {
                        self.read_view().revision < revision && written.elapsed() > stale_after
                    });
                    if stuck {
                        tracing::warn!(cluster = %self.config.cluster_name, "cluster watch stalled; reloading");
                    }
                    stuck
                }
            };
            if !reload {
                continue;
            }
            // Reload everything with a fresh watch (the server may have gone away).
            let mut failures = 0;
            loop {
                if self.cancel.is_cancelled() {
                    return;
                }
                match self.resync(&bucket).await {
                    Ok(w) => {
                        watch = w;
                        *lock(&self.canary) = None;
                        break;
                    }
                    Err(e) => {
                        if e.is_permission_denied() {
                            self.metrics.refused_watch.increment(1);
                        }
                        tracing::warn!(cluster = %self.config.cluster_name, error = %e, "reloading the cluster state failed");
                        failures += 1;
                        tokio::select! {
                            () = self.cancel.cancelled() => return,
                            () = tokio::time::sleep(RELOAD_BACKOFF.delay(failures)) => {}
                        }
                    }
                }
            }
        }
    }

    /// Records a heartbeat write for the watch's liveness check, keeping the oldest write the
    /// watch has not delivered yet.
    pub(super) fn note_canary(&self, revision: u64) {
        let seen = self.read_view().revision;
        let mut canary = lock(&self.canary);
        if canary.is_none_or(|(r, _)| seen >= r) {
            *canary = Some((revision, Instant::now()));
        }
    }
}
