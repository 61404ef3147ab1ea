//! The per-actor cache: [`ActorSlot`] (subject, write serialisation, and what is [`Known`] of
//! the actor's last record), finding or creating slots, and reading the truth from the server: the
//! version is the `Aether-Version` header of the subject's last record, read in one round trip.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use aether_core::StoreError;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use futures::TryStreamExt;
use uuid::Uuid;

use super::JetStreamEventStore;
use super::replay::{Reader, Replayed, read_record};
use crate::error::backend;

/// What this store knows about an actor's last stored record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Known {
    /// The actor's current version: the version the record at `seq` holds (its `Aether-Version`
    /// header), never below a version this slot saw held at an earlier sequence.
    pub(super) version: u64,
    /// Stream sequence of the subject's last message (0: the subject is empty); `None` when only
    /// the version is known (from `update_version_cache`): the next append reads it first.
    pub(super) seq: Option<u64>,
    /// Id of the last event, if the last record is a valid event at `version` (to recognise a
    /// retried append).
    pub(super) last_id: Option<Uuid>,
}

/// Per-actor state: appends to one actor through one store are serialized by `write`.
pub(super) struct ActorSlot {
    /// The actor's subject, encoded once (cloned per publish without copying).
    pub(super) subject: async_nats::Subject,
    pub(super) write: tokio::sync::Mutex<()>,
    known: Mutex<Option<Known>>,
}

impl ActorSlot {
    pub(super) fn known(&self) -> Option<Known> {
        *self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn set_known(&self, known: Option<Known>) {
        *self.known.lock().unwrap_or_else(PoisonError::into_inner) = known;
    }

    /// Records a view read from the server and returns the view to act on. An older view (lower
    /// sequence than the slot's) is returned as read and replaces nothing. Otherwise the version
    /// never goes down along the sequence: a last record holding a version below one this slot saw
    /// at an earlier sequence (a writer that broke the ordering) leaves the version where it was,
    /// so this store never writes a version again that it saw held. A version only told
    /// (`update_version_cache`, no sequence) is replaced by what the server says.
    pub(super) fn observe(&self, known: Known) -> Known {
        let mut slot = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        let seen = match *slot {
            Some(old) if old.seq.is_some() && old.seq > known.seq => return known,
            Some(old) if old.seq.is_some() && old.version > known.version => Known {
                version: old.version,
                seq: known.seq,
                last_id: None,
            },
            _ => known,
        };
        *slot = Some(seen);
        seen
    }
}

impl JetStreamEventStore {
    /// The body of [`update_version_cache`](Self::update_version_cache).
    pub(super) fn raise_cached_version(&self, actor_id: &str, version: u64) {
        // An id no store would accept (empty, over 1 KiB) is not cached: a hostile notification
        // cannot make an entry larger than a real actor's.
        if version == 0
            || self.inner.closed.load(Ordering::Relaxed)
            || aether_core::limits::validate_actor_id(actor_id).is_err()
        {
            return;
        }
        let slot = self.slot(actor_id);
        let mut known = slot.known.lock().unwrap_or_else(PoisonError::into_inner);
        if known.is_none_or(|k| k.version < version) {
            *known = Some(Known {
                version,
                seq: None,
                last_id: None,
            });
        }
    }

    pub(super) fn existing_slot(&self, actor_id: &str) -> Option<Arc<ActorSlot>> {
        self.inner.actors.get(actor_id)
    }

    /// The actor's slot, created if needed. An evicted slot still in use by an append keeps
    /// working; a second slot for the same actor only loses the local serialisation, never
    /// correctness (the server checks every write's expected position).
    pub(super) fn slot(&self, actor_id: &str) -> Arc<ActorSlot> {
        self.inner.actors.get_or_insert_with(actor_id, || {
            Arc::new(ActorSlot {
                subject: self.subject_for(actor_id).into(),
                write: tokio::sync::Mutex::new(()),
                known: Mutex::new(None),
            })
        })
    }

    /// Reads the actor's last record from the stream leader (read-after-write on R3), in one
    /// round trip. Its version is the record's `Aether-Version` header; the body is decoded only
    /// to learn the event id (a body that does not decode leaves `last_id` unknown). Without a
    /// usable header the body's version counts.
    ///
    /// A last record with neither (no header and a body that does not decode) breaks the layout
    /// contract: only then is the actor's history replayed to find the highest version a record
    /// holds. A writer that follows docs/nats-layout.md (the header on every record) never
    /// causes that scan.
    pub(super) async fn fetch_known(&self, actor_id: &str) -> Result<Known, StoreError> {
        let subject = self.subject_for(actor_id);
        let msg = match self
            .inner
            .stream
            .get_last_raw_message_by_subject(&subject)
            .await
        {
            Ok(msg) => msg,
            Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => {
                return Ok(Known {
                    version: 0,
                    seq: Some(0),
                    last_id: None,
                });
            }
            Err(e) => {
                return Err(backend(
                    format!("reading the last event of actor {actor_id:?}"),
                    e,
                ));
            }
        };
        let record = read_record(Some(&msg.headers), &msg.payload, actor_id);
        if let Some(version) = record.version {
            if let Err(reason) = &record.event {
                tracing::debug!(
                    actor_id,
                    sequence = msg.sequence,
                    version,
                    %reason,
                    "the actor's last record holds a version but is not a valid event"
                );
            }
            return Ok(Known {
                version,
                seq: Some(msg.sequence),
                last_id: record.event.ok().map(|e| e.id()),
            });
        }
        // No version header and no decodable body: the record holds no version. The expected
        // sequence is still this record's; the version is the highest a record before it holds.
        tracing::warn!(
            actor_id,
            sequence = msg.sequence,
            reason = record.event.err().unwrap_or_default(),
            "the actor's last record holds no version (no Aether-Version header, and the body \
             does not decode): replaying its history to find the current version"
        );
        let version = self
            .replay(actor_id, 0)
            .try_fold(0u64, |max, item| async move {
                Ok(match item {
                    Replayed::Event(e) => max.max(e.version()),
                    Replayed::Skipped { holds, .. } => max.max(holds.unwrap_or(0)),
                })
            })
            .await?;
        Ok(Known {
            version,
            seq: Some(msg.sequence),
            last_id: None,
        })
    }

    /// Reads the actor's last record and records it in `slot` ([`ActorSlot::observe`]); returns
    /// the view to act on.
    pub(super) async fn refresh(
        &self,
        slot: &ActorSlot,
        actor_id: &str,
    ) -> Result<Known, StoreError> {
        let seen = slot.known().and_then(|k| k.seq);
        let mut known = self.fetch_known(actor_id).await?;
        // Several records arrived since the one this store saw last: one of them may hold a
        // higher version than the last (a writer that broke the ordering, 7 then 6). Read them,
        // so that no version a record holds is written again.
        if let (Some(seen), Some(last)) = (seen, known.seq)
            && last > seen.saturating_add(1)
        {
            let between = self.highest_version_between(actor_id, seen, last).await?;
            if between > known.version {
                known.version = between;
                known.last_id = None;
            }
        }
        Ok(slot.observe(known))
    }

    /// The highest version held by the actor's records after sequence `after` up to `last`,
    /// read by direct gets (no consumer: a burst of conflicts creates no server-side state).
    async fn highest_version_between(
        &self,
        actor_id: &str,
        after: u64,
        last: u64,
    ) -> Result<u64, StoreError> {
        let subject = self.subject_for(actor_id);
        let mut reader = Reader::direct(self, actor_id, subject, after.saturating_add(1), last);
        let mut highest = 0;
        while let Some(record) = reader.next().await? {
            let read = read_record(record.headers.as_ref(), &record.payload, actor_id);
            highest = highest.max(read.version.unwrap_or(0));
        }
        Ok(highest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(version: u64, seq: Option<u64>, id: Option<Uuid>) -> Known {
        Known {
            version,
            seq,
            last_id: id,
        }
    }

    #[test]
    fn the_version_never_goes_down_along_the_sequence() {
        let slot = ActorSlot {
            subject: "ae.events.a".into(),
            write: tokio::sync::Mutex::new(()),
            known: Mutex::new(None),
        };
        let id = Uuid::now_v7();
        assert_eq!(
            slot.observe(known(5, Some(10), Some(id))),
            known(5, Some(10), Some(id))
        );
        // A later record below version 5 (a writer that broke the ordering): the version stays.
        assert_eq!(
            slot.observe(known(2, Some(11), Some(id))),
            known(5, Some(11), None)
        );
        assert_eq!(slot.known(), Some(known(5, Some(11), None)));
        // A later record above it moves it on.
        assert_eq!(
            slot.observe(known(7, Some(12), Some(id))),
            known(7, Some(12), Some(id))
        );
        // An older view is returned as read but does not replace the slot's.
        assert_eq!(
            slot.observe(known(6, Some(11), None)),
            known(6, Some(11), None)
        );
        assert_eq!(slot.known(), Some(known(7, Some(12), Some(id))));
        // A version only told is replaced by what the server says, even when lower.
        slot.set_known(Some(known(100, None, None)));
        assert_eq!(
            slot.observe(known(7, Some(12), None)),
            known(7, Some(12), None)
        );
    }
}
