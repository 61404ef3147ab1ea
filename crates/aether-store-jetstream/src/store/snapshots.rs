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
/// version (0 if unknown), so replay after the snapshot can start there.
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
            .inner
            .snapshots
            .entry(key)
            .await
            .map_err(|e| backend(format!("reading the snapshot of actor {actor_id:?}"), e))?;
        let Some(entry) = entry.filter(|e| matches!(e.operation, kv::Operation::Put)) else {
            return Ok(None);
        };
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
        let sequence = self
            .existing_slot(&actor_id)
            .and_then(|s| s.known())
            .filter(|k| k.version == snapshot.version)
            .and_then(|k| k.seq)
            .unwrap_or(0);
        let record = SnapshotRecord { snapshot, sequence };
        let bytes = Bytes::from(rmp_serde::to_vec_named(&record).map_err(|e| {
            StoreError::backend(format!("encoding the snapshot of actor {actor_id:?}"), e)
        })?);
        let context = || format!("saving the snapshot of actor {actor_id:?}");
        // Compare-and-set on the bucket's revision, so concurrent savers cannot go backwards.
        for _ in 0..MAX_STALE_RETRIES {
            let current = self
                .inner
                .snapshots
                .entry(key.as_str())
                .await
                .map_err(|e| backend(context(), e))?;
            let outcome = match current {
                Some(entry) if matches!(entry.operation, kv::Operation::Put) => {
                    // A stored record that does not decode is replaced.
                    let stored = rmp_serde::from_slice::<SnapshotRecord>(&entry.value)
                        .ok()
                        .map(|existing| existing.snapshot.version);
                    limits::check_snapshot(stored, &record.snapshot)?;
                    self.inner
                        .snapshots
                        .update(key.as_str(), bytes.clone(), entry.revision)
                        .await
                        .map(drop)
                        .map_err(|e| {
                            matches!(e.kind(), kv::UpdateErrorKind::WrongLastRevision)
                                .then_some(())
                                .ok_or_else(|| backend(context(), e))
                        })
                }
                _ => self
                    .inner
                    .snapshots
                    .create(key.as_str(), bytes.clone())
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

    fn remember_checkpoint(&self, record: &SnapshotRecord) {
        if record.sequence > 0 {
            self.inner.checkpoints.put(
                &record.snapshot.actor_id,
                (record.snapshot.version, record.sequence),
            );
        }
    }
}
