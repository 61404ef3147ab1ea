//! Snapshots in the KV bucket ([`SnapshotRecord`]: the snapshot and the stream sequence of its
//! version), saved with compare-and-set, and the replay checkpoints they leave behind.

use aether_core::{ActorSnapshot, StoreError, limits};
use async_nats::jetstream::kv;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::JetStreamEventStore;
use super::append::MAX_STALE_RETRIES;
use crate::error::backend;
use crate::layout;

/// A snapshot as kept in the KV bucket: the snapshot and the stream sequence of the event at its
/// version (0 only when no stored record holds that version), so replay after the snapshot can
/// start there.
#[derive(Serialize, Deserialize)]
struct SnapshotRecord {
    snapshot: ActorSnapshot,
    sequence: u64,
}

impl JetStreamEventStore {
    /// The body of `get_latest_snapshot` (the [`SnapshotStore`](aether_core::SnapshotStore) impl).
    pub(super) async fn read_snapshot(
        &self,
        actor_id: &str,
    ) -> Result<Option<ActorSnapshot>, StoreError> {
        self.check_open()?;
        limits::validate_actor_id(actor_id)?;
        let key = layout::actor_token(actor_id);
        let entry = self
            .unanswered_again(|| self.inner.snapshots.entry(key.as_str()))
            .await
            .map_err(|e| backend(format!("reading the snapshot of actor {actor_id:?}"), e))?;
        let Some(entry) = entry.filter(|e| matches!(e.operation, kv::Operation::Put)) else {
            self.inner.metrics.store.snapshot_misses.increment(1);
            return Ok(None);
        };
        self.inner.metrics.store.snapshot_hits.increment(1);
        let record: SnapshotRecord = rmp_serde::from_slice(&entry.value).map_err(|e| {
            StoreError::backend(
                format!("decoding the snapshot record of actor {actor_id:?}"),
                e,
            )
        })?;
        if record.snapshot.actor_id != actor_id {
            return Err(StoreError::backend(
                format!("reading the snapshot of actor {actor_id:?}"),
                format!(
                    "the record under its key belongs to actor {:?}",
                    record.snapshot.actor_id
                ),
            ));
        }
        self.remember_checkpoint(&record);
        Ok(Some(record.snapshot))
    }

    /// The body of `save_snapshot` (the [`SnapshotStore`](aether_core::SnapshotStore) impl).
    pub(super) async fn write_snapshot(&self, snapshot: ActorSnapshot) -> Result<(), StoreError> {
        self.check_open()?;
        limits::check_snapshot(None, &snapshot)?;
        let actor_id = snapshot.actor_id.clone();
        let key = layout::actor_token(&actor_id);
        let sequence = self.snapshot_position(&actor_id, snapshot.version).await?;
        let record = SnapshotRecord { snapshot, sequence };
        let bytes = Bytes::from(rmp_serde::to_vec_named(&record).map_err(|e| {
            StoreError::backend(format!("encoding the snapshot of actor {actor_id:?}"), e)
        })?);
        let context = || format!("saving the snapshot of actor {actor_id:?}");
        // Compare-and-set on the bucket's revision, so concurrent savers cannot go backwards.
        for _ in 0..MAX_STALE_RETRIES {
            let current = self
                .unanswered_again(|| self.inner.snapshots.entry(key.as_str()))
                .await
                .map_err(|e| backend(context(), e))?;
            let outcome = match current {
                Some(entry) if matches!(entry.operation, kv::Operation::Put) => {
                    // A stored record that does not decode is replaced.
                    let stored = rmp_serde::from_slice::<SnapshotRecord>(&entry.value)
                        .ok()
                        .map(|existing| existing.snapshot.version);
                    limits::check_snapshot(stored, &record.snapshot)?;
                    self.unanswered_again(|| {
                        self.inner
                            .snapshots
                            .update(key.as_str(), bytes.clone(), entry.revision)
                    })
                    .await
                    .map(drop)
                    .map_err(|e| {
                        matches!(e.kind(), kv::UpdateErrorKind::WrongLastRevision)
                            .then_some(())
                            .ok_or_else(|| backend(context(), e))
                    })
                }
                _ => self
                    .unanswered_again(|| self.inner.snapshots.create(key.as_str(), bytes.clone()))
                    .await
                    .map(drop)
                    .map_err(|e| {
                        matches!(e.kind(), kv::CreateErrorKind::AlreadyExists)
                            .then_some(())
                            .ok_or_else(|| backend(context(), e))
                    }),
            };
            match outcome {
                Ok(()) => {
                    self.remember_checkpoint(&record);
                    self.inner.metrics.store.snapshot_saves.increment(1);
                    return Ok(());
                }
                Err(Ok(())) => continue, // lost a race with another saver: look again
                Err(Err(e)) => return Err(e),
            }
        }
        Err(StoreError::backend(
            context(),
            "kept losing races with concurrent snapshot writers",
        ))
    }

    /// Runs a bucket request again while nobody serves it, within the request timeout: a bucket
    /// just created on a NATS cluster has no replica answering for a moment. Reads are safe to
    /// send twice, and so are the compare-and-set writes here (a second copy of an applied write
    /// finds the revision moved and is looked at again).
    async fn unanswered_again<T, E, Fut>(&self, attempt: impl FnMut() -> Fut) -> Result<T, E>
    where
        E: aether_nats::classify::NatsError,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        aether_nats::settle::while_unanswered(self.inner.request_timeout, attempt).await
    }

    /// The stream sequence of the record holding `version`, so that a replay after the snapshot
    /// starts right after it: from this store's last append when it wrote that version,
    /// otherwise looked up on the server (the subject's last record, or a search when the actor
    /// has moved on since). 0 when no record holds `version` (a snapshot of a version that is not
    /// stored: a replay after it then searches for its start).
    async fn snapshot_position(&self, actor_id: &str, version: u64) -> Result<u64, StoreError> {
        if let Some(seq) = self
            .existing_slot(actor_id)
            .and_then(|s| s.known())
            .filter(|k| k.version == version)
            .and_then(|k| k.seq)
            .filter(|&s| s > 0)
        {
            return Ok(seq);
        }
        if version == 0 {
            return Ok(0);
        }
        let subject = self.subject_for(actor_id);
        let context =
            || format!("finding the stream position of the snapshot of actor {actor_id:?}");
        let Some(last) = self.last_record(actor_id, &subject, context).await? else {
            return Ok(0);
        };
        Ok(self
            .position_of(actor_id, &subject, version, last)
            .await?
            .unwrap_or(0))
    }

    fn remember_checkpoint(&self, record: &SnapshotRecord) {
        if record.sequence > 0 {
            self.inner.checkpoints.put(
                &record.snapshot.actor_id,
                (record.snapshot.version, record.sequence),
            );
        }
    }
}
