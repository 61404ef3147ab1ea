//! Membership: this node's liveness key (`alive.<id>`, renewed by every heartbeat with the
//! failure timeout as TTL, waiting out a crashed predecessor's on join), its record
//! (`nodes.<id>`, written on join, on status changes, and again if it was failed, deleted or
//! overwritten while the node lives), and deleting both on leave.

#[allow(clippy::wildcard_imports)]
use super::*;
use crate::record::AliveRecord;

impl Inner {
    /// Deletes this incarnation's record (a `DEL` marker: others see it leave), then its
    /// liveness key (best effort: it expires anyway, and the leader then finds no record).
    pub(super) async fn delete_record(&self, bucket: &Bucket) -> Result<(), ClusterError> {
        let key = self.record_key();
        let mut revision = self.record_revision.load(Ordering::SeqCst);
        for _ in 0..3 {
            if revision == 0 {
                self.delete_alive(bucket).await;
                return Ok(()); // never written, or already deleted
            }
            match bucket.delete(&key, revision).await {
                Ok(_) => {
                    self.record_revision.store(0, Ordering::SeqCst);
                    self.delete_alive(bucket).await;
                    return Ok(());
                }
                Err(WriteError::WrongRevision | WriteError::Exists) => {
                    revision = self
                        .own_record_revision(bucket)
                        .await
                        .map_err(|e| self.nats("reading this node's record", e))?
                        .unwrap_or(0);
                }
                Err(e) => return Err(self.nats("deleting this node's record", e)),
            }
        }
        Err(self.nats(
            "deleting this node's record",
            WriteError::Other("its revision kept changing".into()),
        ))
    }

    /// Deletes this incarnation's liveness key if it is still this node's; failures are only
    /// logged (the key expires after the failure timeout).
    async fn delete_alive(&self, bucket: &Bucket) {
        let key = self.alive_key();
        let revision = match self.own_alive_revision(bucket).await {
            Ok(Some(revision)) => revision,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(node = %self.config.node_id, error = %e, "reading this node's liveness key failed; it expires by itself");
                return;
            }
        };
        match bucket.delete(&key, revision).await {
            Ok(_) | Err(WriteError::WrongRevision) => {}
            Err(e) => {
                tracing::debug!(node = %self.config.node_id, error = %e, "deleting this node's liveness key failed; it expires by itself")
            }
        }
        self.alive_revision.store(0, Ordering::SeqCst);
    }

    /// Creates this node's liveness key, waiting out a live one of another process with the
    /// same id (a crashed earlier run's expires within the failure timeout).
    pub(super) async fn create_alive(&self, bucket: &Bucket) -> Result<u64, ClusterError> {
        let key = self.alive_key();
        let started = Instant::now();
        let patience = self.failure_ttl() * 2;
        loop {
            match bucket
                .create(&key, encode(&self.alive()), Some(self.failure_ttl()))
                .await
            {
                Ok(revision) => return Ok(revision),
                Err(WriteError::Exists | WriteError::WrongRevision)
                    if started.elapsed() < patience =>
                {
                    // Our own key, from an earlier attempt whose reply was lost?
                    if let Ok(Some(revision)) = self.own_alive_revision(bucket).await {
                        return Ok(revision);
                    }
                    tracing::warn!(node = %self.config.node_id, "a live process holds this node id; waiting for its liveness key to expire");
                    tokio::time::sleep(self.config.heartbeat_interval).await;
                }
                Err(WriteError::Exists | WriteError::WrongRevision) => {
                    return Err(ClusterError::NodeIdInUse {
                        cluster: self.config.cluster_name.clone(),
                        node_id: self.config.node_id.clone(),
                        waited: started.elapsed(),
                    });
                }
                Err(e) => return Err(self.nats("writing this node's liveness key", e)),
            }
        }
    }

    /// Creates this node's record (no TTL: the leader fails it when the liveness key goes). A
    /// record of another incarnation is stale (this node holds the liveness key): it is marked
    /// failed first, so that others see the old run fail and this one join.
    pub(super) async fn create_record(&self, bucket: &Bucket) -> Result<u64, ClusterError> {
        let key = self.record_key();
        let context = "writing this node's record";
        for _ in 0..5 {
            match bucket.create(&key, encode(&self.record()), None).await {
                Ok(revision) => return Ok(revision),
                Err(WriteError::Exists | WriteError::WrongRevision) => {}
                Err(e) => return Err(self.nats(context, e)),
            }
            let entry = bucket
                .entry(&key)
                .await
                .map_err(|e| self.nats(context, e))?;
            let Some(entry) = entry.filter(|e| e.operation == Operation::Put) else {
                continue; // a marker came or went in between: create again
            };
            if decode::<NodeRecord>(&entry.value).is_ok_and(|r| r.incarnation == self.incarnation) {
                return Ok(entry.revision); // an earlier attempt landed though its ack was lost
            }
            tracing::info!(node = %self.config.node_id, "marking an earlier run's record failed");
            match bucket
                .purge(&key, crate::kv::Fence::subject_at(entry.revision))
                .await
            {
                Ok(_) | Err(WriteError::WrongRevision) => {}
                Err(e) => return Err(self.nats(context, e)),
            }
        }
        Err(self.nats(
            context,
            WriteError::Other("the record kept changing".into()),
        ))
    }

    /// The revision of this incarnation's record, if it is there (a write whose ack was lost may
    /// still have landed).
    async fn own_record_revision(&self, bucket: &Bucket) -> Result<Option<u64>, WriteError> {
        let entry = bucket.entry(&self.record_key()).await?;
        Ok(entry
            .filter(|e| e.operation == Operation::Put)
            .and_then(|e| {
                decode::<NodeRecord>(&e.value)
                    .ok()
                    .filter(|rec| rec.incarnation == self.incarnation)
                    .map(|_| e.revision)
            }))
    }

    /// The revision of this incarnation's liveness key, if it is there.
    async fn own_alive_revision(&self, bucket: &Bucket) -> Result<Option<u64>, WriteError> {
        let entry = bucket.entry(&self.alive_key()).await?;
        Ok(entry
            .filter(|e| e.operation == Operation::Put)
            .and_then(|e| {
                decode::<AliveRecord>(&e.value)
                    .ok()
                    .filter(|alive| alive.incarnation == self.incarnation)
                    .map(|_| e.revision)
            }))
    }

    /// Renews this node's liveness key every heartbeat interval, re-creating it if it expired;
    /// then writes the record if it must be (its status changed, or the watch found it failed,
    /// deleted or overwritten while this node lives). A beat the server refuses (with a permission watch) is logged and counted,
    /// and tried again at the next one.
    pub(super) async fn heartbeat_task(self: Arc<Self>, bucket: Bucket, mut revision: u64) {
        let key = self.alive_key();
        let mut tick = tokio::time::interval(self.config.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate; the key was just written
        // Beats in a row that got no answer at all (not a refusal): the link to the server may
        // have gone silent (half-open) while the client still believes it is connected.
        let mut unanswered = 0u32;
        // The status the record was last written with.
        let mut written = NodeStatus::Active;
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return,
                _ = tick.tick() => {}
                () = self.beat_now.notified() => {}
            }
            let value = encode(&self.alive());
            let beat = bucket.update(&key, value.clone(), revision, Some(self.failure_ttl()));
            // Bounded, so one lost ack does not hold up the beats after it (a write that landed
            // anyway is adopted by its incarnation below).
            let beat = match tokio::time::timeout(
                self.config.heartbeat_interval.max(Duration::from_secs(1)),
                beat,
            )
            .await
            {
                Ok(answered) => {
                    unanswered = 0;
                    answered
                }
                Err(_) => {
                    unanswered += 1;
                    if unanswered >= UNANSWERED_BEFORE_RECONNECT {
                        unanswered = 0;
                        self.reconnect().await;
                    }
                    Err(WriteError::Other(
                        "no ack within the heartbeat interval".into(),
                    ))
                }
            };
            match beat {
                Ok(r) => revision = r,
                Err(WriteError::WrongRevision | WriteError::Exists) => {
                    match self.own_alive_revision(&bucket).await {
                        // Our last write landed though its ack was lost.
                        Ok(Some(r)) => revision = r,
                        Ok(None) => match self.revive(&bucket, value).await {
                            Some(r) => revision = r,
                            None => continue,
                        },
                        Err(WriteError::Refused(refusal)) => {
                            self.note_refused(
                                &self.metrics.refused_heartbeat,
                                "heartbeat",
                                &refusal,
                            );
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(node = %self.config.node_id, error = %e, "heartbeat could not read its liveness key; retrying");
                            continue;
                        }
                    }
                }
                // Answered by a refusal: the link is fine; the beat is tried again next tick.
                Err(WriteError::Refused(refusal)) => {
                    self.note_refused(&self.metrics.refused_heartbeat, "heartbeat", &refusal);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(node = %self.config.node_id, error = %e, "heartbeat failed; retrying");
                    continue;
                }
            }
            self.alive_revision.store(revision, Ordering::SeqCst);
            let status = self.record().status;
            if (status != written || self.record_stale.load(Ordering::SeqCst))
                && self.write_record(&bucket).await
            {
                written = status;
            }
        }
    }

    /// Creates the liveness key again after it expired (this node was paused or cut off for the
    /// failure timeout): the leader fails such a member, so its record is written again too.
    async fn revive(&self, bucket: &Bucket, value: bytes::Bytes) -> Option<u64> {
        match bucket
            .create(&self.alive_key(), value, Some(self.failure_ttl()))
            .await
        {
            Ok(r) => {
                tracing::warn!(node = %self.config.node_id, "liveness key had expired; rejoining");
                self.record_stale.store(true, Ordering::SeqCst);
                Some(r)
            }
            Err(WriteError::Refused(refusal)) => {
                self.note_refused(&self.metrics.refused_heartbeat, "heartbeat", &refusal);
                None
            }
            Err(e) => {
                tracing::error!(node = %self.config.node_id, error = %e, "cannot renew or re-create this node's liveness key");
                None
            }
        }
    }

    /// Writes this node's record as it is now: over this incarnation's (a new status, or a
    /// value someone else wrote over it), or anew where it was failed or deleted while the node
    /// lives. Whether the record now says what this node is.
    async fn write_record(&self, bucket: &Bucket) -> bool {
        let key = self.record_key();
        let value = encode(&self.record());
        let written = match self.own_record_revision(bucket).await {
            Ok(Some(r)) => bucket.update(&key, value, r, None).await,
            Ok(None) => bucket.create(&key, value, None).await,
            Err(e) => Err(e),
        };
        match written {
            Ok(r) => {
                if self.record_stale.swap(false, Ordering::SeqCst) {
                    tracing::warn!(node = %self.config.node_id, "this node's record was failed or changed by someone else; wrote it again");
                }
                self.record_revision.store(r, Ordering::SeqCst);
                true
            }
            Err(WriteError::Refused(refusal)) => {
                self.note_refused(&self.metrics.refused_heartbeat, "heartbeat", &refusal);
                false
            }
            Err(e) => {
                tracing::warn!(node = %self.config.node_id, error = %e, "writing this node's record failed; retrying at the next beat");
                false
            }
        }
    }

    /// Makes the client drop its connection and connect again (to another server of its list
    /// if this one does not answer): heartbeats that get no answer at all mean the link may
    /// have gone silent while the client still believes it is up, and its own pings would
    /// notice only after minutes with default settings.
    async fn reconnect(&self) {
        tracing::warn!(
            node = %self.config.node_id,
            beats = UNANSWERED_BEFORE_RECONNECT,
            "heartbeats got no answer; making the NATS client reconnect"
        );
        if let Err(e) = self.client.force_reconnect().await {
            tracing::warn!(node = %self.config.node_id, error = %e, "forcing a reconnect failed");
        }
    }
}

/// Heartbeats in a row without any answer before the client is made to reconnect.
const UNANSWERED_BEFORE_RECONNECT: u32 = 2;
