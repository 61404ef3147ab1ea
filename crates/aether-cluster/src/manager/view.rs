//! This node's view of the cluster bucket: loading it (last value per key of the lease, the map
//! and the records; not the liveness keys, which only the leader reads), applying each change
//! (members, lease, map) and turning it into [`ClusterEvent`]s, and the watch task.

#[allow(clippy::wildcard_imports)]
use super::*;
use crate::watch::{BucketWatch, Delivery};
use aether_core::Backoff;

/// Pauses between attempts to reload the bucket after the watch failed: doubling from 100 ms to
/// 2 s.
pub(super) const RELOAD_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(100), Duration::from_secs(2));

/// How long loading the bucket may take.
const LOAD_LIMIT: Duration = Duration::from_secs(10);

/// Keys read at once when a reload checks the members it did not deliver.
pub(super) const CONFIRM_READS: usize = 8;

/// What a member's view follows: every key but the liveness keys.
const VIEW_KEYS: [&str; 3] = [KEY_LEADER, KEY_SHARD_MAP, "nodes.>"];

impl Inner {
    /// (Re)loads the whole view from the bucket (last value per key) and returns the watch that
    /// continues from there.
    async fn resync(&self, bucket: &Bucket) -> Result<BucketWatch, ClusterError> {
        // `config` is never deleted -- but if someone did, write it back.
        self.check_settings(bucket).await?;
        self.load(bucket).await
    }

    /// Loads the whole view and returns the watch that continues from there.
    ///
    /// A member of the view is reported gone only on what the bucket says of its record: a
    /// delete marker (left) or an expiry or purge marker (failed), delivered by the load or read
    /// directly. That the load did not deliver its key at all says nothing: the record may have
    /// been rewritten behind the point where the load ended (see [`fetch`](Self::fetch)). Such a
    /// key is read from the stream leader (`STREAM.MSG.GET`, no consumer; never a replica that
    /// lags, whose old marker would report a live member gone): a value keeps the member (its newer revision
    /// comes through the watch), a marker reports it, and no entry at all (its marker expired
    /// too) reports it failed. The lease likewise. A read that fails fails the load before the
    /// view changes; the caller tries again.
    pub(super) async fn load(&self, bucket: &Bucket) -> Result<BucketWatch, ClusterError> {
        let (watch, latest) = match &self.guard {
            None => self.fetch(bucket, &VIEW_KEYS).await?,
            // A refused consumer (or its delivery subscription) ends the load at once.
            Some(guard) => guard
                .watch(
                    |r| guard.concerns_bucket(r, Scope::Stream),
                    Box::pin(self.fetch(bucket, &VIEW_KEYS)),
                )
                .await
                .unwrap_or_else(|refusal| {
                    Err(self.denied("watching the cluster bucket", refusal))
                })?,
        };
        let (unseen, lease_unseen) = {
            let view = self.read_view();
            let unseen: Vec<String> = view
                .members
                .keys()
                .filter(|id| !latest.contains_key(&format!("{KEY_NODES_PREFIX}{id}")))
                .cloned()
                .collect();
            (
                unseen,
                view.leader.is_some() && !latest.contains_key(KEY_LEADER),
            )
        };
        let context = "reading a key the reload did not deliver";
        let confirmed: Vec<(String, Option<kv::Entry>)> = futures::stream::iter(unseen)
            .map(|id| async move {
                let entry = bucket
                    .entry_from_leader(&format!("{KEY_NODES_PREFIX}{id}"))
                    .await;
                entry.map(|e| (id, e))
            })
            .buffer_unordered(CONFIRM_READS)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()
            .map_err(|e| self.nats(context, e))?;
        let lease_gone = if lease_unseen {
            let lease = bucket
                .entry_from_leader(KEY_LEADER)
                .await
                .map_err(|e| self.nats(context, e))?;
            lease.is_none_or(|e| e.operation != Operation::Put)
        } else {
            false
        };
        for (id, entry) in confirmed {
            match entry {
                Some(e) if e.operation == Operation::Put => {
                    tracing::debug!(cluster = %self.config.cluster_name, node = %id, revision = e.revision, "a member the reload did not deliver is alive");
                }
                Some(marker) => self.drop_member(&id, marker.operation),
                None => self.drop_member(&id, Operation::Purge),
            }
        }
        if lease_gone {
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

    /// A watch of `keys`, and the last entry of each key it delivered while loading.
    ///
    /// The load ends once the watch delivered as many entries as its consumer had to deliver
    /// when it was made (the server's count of keys, last entry per key), at the first entry at
    /// or after `through` (the bucket's last revision before the consumer was made), or when
    /// the consumer says it is idle. Every key whose last entry was stored by then is delivered
    /// before that, unless the key was written again meanwhile: with one revision kept per key,
    /// the older one is removed and the key moves behind the end of the load, to come through
    /// the watch (hence the reads in [`load`](Self::load)).
    ///
    /// It does not end at the first entry with nothing pending (async-nats's `seen_current`):
    /// that count is the server's running estimate, lowered at once when a write removes a key's
    /// older revision but raised for the new one only when the stream's signal loop gets to it.
    /// Under steady writes it reads 0 while the newest entries are still to come.
    pub(super) async fn fetch(
        &self,
        bucket: &Bucket,
        keys: &[&str],
    ) -> Result<(BucketWatch, BTreeMap<String, kv::Entry>), ClusterError> {
        // Creating the watch's consumer can time out while a just-created replicated bucket
        // elects its stream leader, or on a loaded server; a delivery can be lost when the
        // connection drops in the middle (a gap). A few attempts, each from scratch, then the
        // error.
        let deadline = Instant::now() + LOAD_LIMIT;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (context, error) = match self.open_watch(bucket, keys).await {
                Ok((through, watch)) => match read_load(watch, through, deadline).await {
                    Ok(loaded) => return Ok(loaded),
                    Err(e) => ("loading the cluster state", e),
                },
                Err(e) => ("watching the cluster bucket", e),
            };
            if attempt >= 4 || Instant::now() >= deadline {
                return Err(self.setup(context, error));
            }
            tracing::debug!(node = %self.config.node_id, error = %error, attempt, "{context} failed; retrying");
            tokio::time::sleep(Duration::from_millis(250) * attempt).await;
        }
    }

    /// The bucket's last revision, then a watch of `keys` starting with the last entry of each.
    async fn open_watch(
        &self,
        bucket: &Bucket,
        keys: &[&str],
    ) -> Result<(u64, BucketWatch), crate::error::BoxError> {
        let through = bucket.kv.stream.get_info().await?.state.last_sequence;
        let watch = BucketWatch::start(&self.client, &bucket.kv, keys).await?;
        Ok((through, watch))
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
            let lease = present
                .then(|| decode::<LeaseRecord>(&entry.value).ok())
                .flatten();
            if present && lease.is_none() {
                self.metrics.malformed_lease.increment(1);
            }
            let leader = lease.map(|l| LeaderInfo {
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
                    self.metrics.malformed_map.increment(1);
                    tracing::warn!(cluster = %self.config.cluster_name, shards = map.shard_count(), "ignoring a shard map with another shard count");
                    return;
                }
                Ok(map) => Arc::new(map),
                Err(e) => {
                    self.metrics.malformed_map.increment(1);
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
            if !present {
                self.drop_member(id, entry.operation);
                return;
            }
            let Some(rec) = decode::<NodeRecord>(&entry.value)
                .ok()
                .filter(|r| r.id == id)
            else {
                self.metrics.malformed_record.increment(1);
                tracing::warn!(cluster = %self.config.cluster_name, key, "ignoring a node record that does not decode");
                return;
            };
            if id == self.config.node_id && !self.says_what_i_am(&rec) {
                // Someone wrote over this node's record (a forged status, say).
                self.rewrite_own_record();
            }
            // (event, whether placement may change)
            let event = match self.write_view().members.insert(id.to_owned(), rec.clone()) {
                None => Some((ClusterEvent::MemberJoined(rec), true)),
                Some(old) if old != rec => {
                    let placement = old.status != rec.status || old.capacity != rec.capacity;
                    Some((ClusterEvent::MemberUpdated(rec), placement))
                }
                Some(_) => None,
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

    /// Removes member `id` from the view, if it is there, and reports it: left for a delete
    /// marker (`DEL`), failed for anything else (its record expired, or was purged).
    fn drop_member(&self, id: &str, operation: Operation) {
        if self.write_view().members.remove(id).is_none() {
            return;
        }
        if id == self.config.node_id {
            // Failed by the leader or a prober while this node runs (it was paused, or cut off
            // for longer than the failure timeout), or deleted by someone else.
            self.rewrite_own_record();
        }
        let node_id = id.to_owned();
        self.update_member_metrics();
        self.emit(match operation {
            Operation::Delete => ClusterEvent::MemberLeft { node_id },
            _ => ClusterEvent::MemberFailed { node_id },
        });
        self.membership_changed.notify_one();
        self.view_changed.notify_waiters();
    }

    /// Whether `rec` (this node's key) is this node's record as it would write it (the load
    /// aside: the record keeps the load of its last write).
    fn says_what_i_am(&self, rec: &NodeRecord) -> bool {
        let mine = self.record();
        rec.incarnation == mine.incarnation
            && rec.status == mine.status
            && rec.capacity == mine.capacity
            && rec.metadata == mine.metadata
    }

    /// Makes the heartbeat write this node's record again, unless the node is stopping.
    fn rewrite_own_record(&self) {
        if !self.cancel.is_cancelled() {
            self.record_stale.store(true, Ordering::SeqCst);
            self.beat_now.notify_one();
        }
    }

    fn update_member_metrics(&self) {
        self.metrics
            .members
            .set(self.read_view().members.len() as f64);
    }

    /// Follows the bucket, reloading it when the watch fails or ends. A stalled watch ends by
    /// itself: its consumer's idle heartbeats stop, and it reports itself silent.
    pub(super) async fn watch_task(self: Arc<Self>, bucket: Bucket, mut watch: BucketWatch) {
        loop {
            let reload = tokio::select! {
                () = self.cancel.cancelled() => return,
                next = watch.next() => match next {
                    Ok(Delivery::Entry(entry)) => {
                        self.apply(entry);
                        false
                    }
                    Ok(Delivery::Idle) => false,
                    Err(e) => {
                        tracing::warn!(cluster = %self.config.cluster_name, error = %e, "cluster watch failed; reloading");
                        true
                    }
                },
            };
            if reload {
                match self.reload(&bucket, watch).await {
                    Some(fresh) => watch = fresh,
                    None => return, // stopped
                }
            }
        }
    }

    /// Replaces `old` by a fresh load of the bucket, retrying with a backoff; `None` once the
    /// node stops. `old` goes first, so its consumer leaves the server while the load runs.
    async fn reload(&self, bucket: &Bucket, old: BucketWatch) -> Option<BucketWatch> {
        drop(old);
        let mut failures = 0;
        loop {
            if self.cancel.is_cancelled() {
                return None;
            }
            match self.resync(bucket).await {
                Ok(watch) => return Some(watch),
                Err(e) => {
                    if e.is_permission_denied() {
                        self.metrics.refused_watch.increment(1);
                    }
                    tracing::warn!(cluster = %self.config.cluster_name, error = %e, "reloading the cluster state failed");
                    failures += 1;
                    tokio::select! {
                        () = self.cancel.cancelled() => return None,
                        () = tokio::time::sleep(RELOAD_BACKOFF.delay(failures)) => {}
                    }
                }
            }
        }
    }
}

/// Reads `watch` until the load is complete (see [`Inner::fetch`]), keeping the last entry of each
/// key; `through` is the bucket's last revision before the watch's consumer was made.
async fn read_load(
    mut watch: BucketWatch,
    through: u64,
    deadline: Instant,
) -> Result<(BucketWatch, BTreeMap<String, kv::Entry>), crate::error::BoxError> {
    let mut latest: BTreeMap<String, kv::Entry> = BTreeMap::new();
    let mut delivered = 0u64;
    while delivered < watch.initial_pending() {
        match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(Ok(Delivery::Entry(entry))) => {
                delivered += 1;
                let done = entry.revision >= through;
                latest.insert(entry.key.clone(), entry);
                if done {
                    break;
                }
            }
            Ok(Ok(Delivery::Idle)) => break,
            Ok(Err(e)) => return Err(Box::new(e)),
            Err(_) => return Err(format!("timed out after {LOAD_LIMIT:?}").into()),
        }
    }
    Ok((watch, latest))
}
