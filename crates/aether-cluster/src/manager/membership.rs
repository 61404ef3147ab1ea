//! Membership: creating this node's record (waiting out a crashed predecessor's), the
//! heartbeat that renews it with the failure timeout as TTL, and deleting it on leave.

#[allow(clippy::wildcard_imports)]
use super::*;

impl Inner {
    /// Deletes this incarnation's record (a `DEL` marker), if it is there.
    pub(super) async fn delete_record(&self, bucket: &Bucket) -> Result<(), ClusterError> {
        let key = self.record_key();
        let mut revision = self.record_revision.load(Ordering::SeqCst);
        for _ in 0..3 {
            if revision == 0 {
                return Ok(()); // never written, or already deleted
            }
            match bucket.delete(&key, revision).await {
                Ok(_) => {
                    self.record_revision.store(0, Ordering::SeqCst);
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

    /// Creates this node's record, waiting out a stale one of a crashed process with the same id.
    pub(super) async fn create_record(&self, bucket: &Bucket) -> Result<u64, ClusterError> {
        let key = self.record_key();
        let started = Instant::now();
        let patience = self.failure_ttl() * 2;
        loop {
            match bucket
                .create(&key, encode(&self.record()), Some(self.failure_ttl()))
                .await
            {
                Ok(revision) => return Ok(revision),
                Err(WriteError::Exists | WriteError::WrongRevision)
                    if started.elapsed() < patience =>
                {
                    // Our own record, from an earlier start whose reply was lost?
                    if let Ok(Some(revision)) = self.own_record_revision(bucket).await {
                        return Ok(revision);
                    }
                    tracing::warn!(node = %self.config.node_id, "a live record holds this node id; waiting for it to expire");
                    tokio::time::sleep(self.config.heartbeat_interval).await;
                }
                Err(WriteError::Exists | WriteError::WrongRevision) => {
                    return Err(ClusterError::NodeIdInUse {
                        cluster: self.config.cluster_name.clone(),
                        node_id: self.config.node_id.clone(),
                        waited: started.elapsed(),
                    });
                }
                Err(e) => return Err(self.nats("writing this node's record", e)),
            }
        }
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

    /// Renews this node's record every heartbeat interval, re-creating it if it expired. A beat
    /// the server refuses (with a permission watch) is logged and counted, and tried again at the
    /// next one.
    pub(super) async fn heartbeat_task(self: Arc<Self>, bucket: Bucket, mut revision: u64) {
        let key = self.record_key();
        let mut tick = tokio::time::interval(self.config.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate; the record was just written
        // Beats in a row that got no answer at all (not a refusal): the link to the server may
        // have gone silent (half-open) while the client still believes it is connected.
        let mut unanswered = 0u32;
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return,
                _ = tick.tick() => {}
                () = self.beat_now.notified() => {}
            }
            let value = encode(&self.record());
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
                Ok(r) => {
                    revision = r;
                    self.note_canary(r);
                }
                Err(WriteError::WrongRevision | WriteError::Exists) => {
                    match self.own_record_revision(&bucket).await {
                        Ok(Some(r)) => {
                            revision = r; // our last write landed though its ack was lost
                            self.record_revision.store(revision, Ordering::SeqCst);
                            continue;
                        }
                        Ok(None) => {}
                        Err(WriteError::Refused(refusal)) => {
                            self.note_refused(
                                &self.metrics.refused_heartbeat,
                                "heartbeat",
                                &refusal,
                            );
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(node = %self.config.node_id, error = %e, "heartbeat could not read its record; retrying");
                            continue;
                        }
                    }
                    // The record expired (this node was paused or cut off) or was taken over.
                    match bucket.create(&key, value, Some(self.failure_ttl())).await {
                        Ok(r) => {
                            tracing::warn!(node = %self.config.node_id, "membership record had expired; rejoined");
                            revision = r;
                        }
                        Err(WriteError::Refused(refusal)) => {
                            self.note_refused(
                                &self.metrics.refused_heartbeat,
                                "heartbeat",
                                &refusal,
                            );
                        }
                        Err(e) => {
                            tracing::error!(node = %self.config.node_id, error = %e, "cannot renew or re-create this node's record")
                        }
                    }
                }
                // Answered by a refusal: the link is fine; the beat is tried again next tick.
                Err(WriteError::Refused(refusal)) => {
                    self.note_refused(&self.metrics.refused_heartbeat, "heartbeat", &refusal);
                }
                Err(e) => {
                    tracing::warn!(node = %self.config.node_id, error = %e, "heartbeat failed; retrying")
                }
            }
            self.record_revision.store(revision, Ordering::SeqCst);
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
