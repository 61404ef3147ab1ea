//! The per-actor cache: [`ActorSlot`] (subject, write serialisation, and what is [`Known`] of
//! the actor's last event), finding or creating slots, and reading the truth from the server.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use aether_core::StoreError;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use futures::TryStreamExt;
use uuid::Uuid;

use super::JetStreamEventStore;
use super::replay::{Replayed, decode_event};
use crate::error::backend;

/// What this store knows about an actor's last stored event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Known {
    pub(super) version: u64,
    /// Stream sequence of the subject's last message (0: the subject is empty); `None` when only
    /// the version is known (from `update_version_cache`): the next append reads it first.
    pub(super) seq: Option<u64>,
    /// Id of the last event, if the last message is a valid event.
    pub(super) last_id: Option<Uuid>,
}

/// Per-actor state: appends to one actor through one store are serialized by `write`.
pub(super) struct ActorSlot {
    /// The actor's subject, encoded once.
    pub(super) subject: String,
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

    /// Records a fresher view; an older one (lower sequence) never replaces a newer one.
    pub(super) fn observe(&self, known: Known) {
        let mut slot = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none_or(|k| k.seq.is_none() || k.seq <= known.seq) {
            *slot = Some(known);
        }
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
                subject: self.subject_for(actor_id),
                write: tokio::sync::Mutex::new(()),
                known: Mutex::new(None),
            })
        })
    }

    /// Reads the actor's last message from the stream leader (read-after-write on R3).
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
        match decode_event(&msg.payload, actor_id) {
            Ok(event) => Ok(Known {
                version: event.version(),
                seq: Some(msg.sequence),
                last_id: Some(event.id()),
            }),
            Err(reason) => {
                // A foreign, malformed message is last: the version is that of the last valid
                // event before it; the expected sequence is the malformed message's.
                tracing::warn!(
                    actor_id,
                    sequence = msg.sequence,
                    %reason,
                    "the actor's last message is not a valid event"
                );
                let version = self
                    .replay(actor_id, 0)
                    .try_fold(0u64, |max, item| async move {
                        Ok(match item {
                            Replayed::Event(e) => max.max(e.version()),
                            Replayed::Malformed(_) => max,
                        })
                    })
                    .await?;
                Ok(Known {
                    version,
                    seq: Some(msg.sequence),
                    last_id: None,
                })
            }
        }
    }

    pub(super) async fn refresh(
        &self,
        slot: &ActorSlot,
        actor_id: &str,
    ) -> Result<Known, StoreError> {
        let known = self.fetch_known(actor_id).await?;
        slot.observe(known);
        Ok(known)
    }
}
