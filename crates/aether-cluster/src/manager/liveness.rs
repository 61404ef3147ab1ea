//! The leader's follow of the liveness keys (`alive.<id>`): the one reader of every heartbeat.
//! A member whose key is gone (the server's expiry marker, a delete, or no entry at all) has its
//! record marked failed (`PURGE`), fenced on the liveness key's revision that showed it gone: a
//! member that beat again since (it was paused, and is back) keeps its record. Members see the
//! marker through their watch of the records, as they saw an expired record before.

#[allow(clippy::wildcard_imports)]
use super::*;
use crate::kv::Fence;
use crate::record::AliveRecord;
use crate::watch::{BucketWatch, Delivery};
use view::{CONFIRM_READS, RELOAD_BACKOFF};

/// What the leader follows.
const ALIVE_KEYS: [&str; 1] = ["alive.>"];

/// A member's liveness key, as the leader last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Liveness {
    /// It holds a value.
    Live,
    /// A marker at this revision (0: no entry at all): the member is to be failed.
    Gone(u64),
    /// Its record was marked failed on the marker at this revision.
    Failed(u64),
}

impl Inner {
    /// Follows the liveness keys while this node leads, reloading them when the watch fails.
    /// Never returns: dropped when leading ends.
    pub(super) async fn follow_liveness(&self, bucket: &Bucket) {
        lock(&self.live_loads).clear();
        let mut failures = 0;
        loop {
            match self.fetch(bucket, &ALIVE_KEYS).await {
                Ok((watch, latest)) => {
                    failures = 0;
                    let mut states = HashMap::new();
                    for entry in latest.into_values() {
                        self.note_alive(&mut states, &entry);
                    }
                    self.follow(bucket, watch, states).await;
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(cluster = %self.config.cluster_name, error = %e, "loading the liveness keys failed; retrying");
                    tokio::time::sleep(RELOAD_BACKOFF.delay(failures)).await;
                }
            }
        }
    }

    /// Applies the watch's entries, failing a member at once when its key expires, and sweeps
    /// the members every heartbeat interval; returns when the watch fails.
    async fn follow(
        &self,
        bucket: &Bucket,
        mut watch: BucketWatch,
        mut states: HashMap<String, Liveness>,
    ) {
        let mut sweep = tokio::time::interval(self.config.heartbeat_interval);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                next = watch.next() => match next {
                    Ok(Delivery::Entry(entry)) => {
                        let expired = entry.operation == Operation::Purge;
                        self.note_alive(&mut states, &entry);
                        if expired {
                            self.sweep(bucket, &mut states).await;
                        }
                    }
                    Ok(Delivery::Idle) => {}
                    Err(e) => {
                        tracing::warn!(cluster = %self.config.cluster_name, error = %e, "the liveness watch failed; reloading");
                        return;
                    }
                },
                _ = sweep.tick() => self.sweep(bucket, &mut states).await,
            }
        }
    }

    /// Records what one liveness entry says of its member.
    fn note_alive(&self, states: &mut HashMap<String, Liveness>, entry: &kv::Entry) {
        let Some(id) = entry.key.strip_prefix(KEY_ALIVE_PREFIX) else {
            return;
        };
        if entry.operation == Operation::Put {
            // Any value counts as alive; its load is used if it decodes.
            if let Ok(alive) = decode::<AliveRecord>(&entry.value) {
                lock(&self.live_loads).insert(id.to_owned(), alive.load);
            }
            states.insert(id.to_owned(), Liveness::Live);
        } else {
            lock(&self.live_loads).remove(id);
            states.insert(id.to_owned(), Liveness::Gone(entry.revision));
        }
    }

    /// Fails every member of the view whose liveness key is gone. A member the watch said
    /// nothing of yet (it joined a moment ago, or its key was rewritten behind the load) has its
    /// key read from the stream leader first: a value keeps it.
    async fn sweep(&self, bucket: &Bucket, states: &mut HashMap<String, Liveness>) {
        let me = self.config.node_id.as_str();
        let due: Vec<(String, Option<u64>)> = self
            .read_view()
            .members
            .keys()
            .filter(|id| id.as_str() != me)
            .filter_map(|id| match states.get(id) {
                Some(Liveness::Live | Liveness::Failed(_)) => None,
                Some(Liveness::Gone(revision)) => Some((id.clone(), Some(*revision))),
                None => Some((id.clone(), None)),
            })
            .collect();
        if due.is_empty() {
            return;
        }
        let outcomes: Vec<(String, Option<Liveness>)> = futures::stream::iter(due)
            .map(|(id, known)| async move {
                let outcome = self.settle_member(bucket, &id, known).await;
                (id, outcome)
            })
            .buffer_unordered(CONFIRM_READS)
            .collect()
            .await;
        for (id, outcome) in outcomes {
            match outcome {
                Some(state) => {
                    states.insert(id, state);
                }
                None => {
                    states.remove(&id);
                }
            }
        }
    }

    /// Reads `id`'s liveness key if its state is unknown, and fails its record if the key is
    /// gone. The member's new state; `None`: unknown again (a read failed, or the key moved on
    /// between the read and the marker), for the next sweep.
    async fn settle_member(
        &self,
        bucket: &Bucket,
        id: &str,
        known: Option<u64>,
    ) -> Option<Liveness> {
        let alive_key = format!("{KEY_ALIVE_PREFIX}{id}");
        let gone_at = match known {
            Some(revision) => revision,
            None => match bucket.entry_from_leader(&alive_key).await {
                Ok(Some(entry)) if entry.operation == Operation::Put => {
                    return Some(Liveness::Live);
                }
                Ok(Some(marker)) => marker.revision,
                Ok(None) => 0,
                Err(e) => {
                    tracing::debug!(cluster = %self.config.cluster_name, member = id, error = %e, "reading a liveness key failed; trying at the next sweep");
                    return None;
                }
            },
        };
        let fence = Fence {
            last_sequence: gone_at,
            of_subject: Some(&bucket.subject(&alive_key)),
        };
        match bucket
            .purge(&format!("{KEY_NODES_PREFIX}{id}"), fence)
            .await
        {
            Ok(_) => {
                tracing::warn!(cluster = %self.config.cluster_name, node = %self.config.node_id, failed = id, "a member's liveness key is gone; marked it failed");
                Some(Liveness::Failed(gone_at))
            }
            Err(WriteError::WrongRevision) => None, // it beat again meanwhile
            Err(WriteError::Refused(refusal)) => {
                self.note_refused(&self.metrics.refused_map, "map", &refusal);
                None
            }
            Err(e) => {
                tracing::warn!(cluster = %self.config.cluster_name, member = id, error = %e, "marking a member failed failed; retrying at the next sweep");
                None
            }
        }
    }
}
