//! Reading an actor's records without server-side state: direct gets.
//!
//! One request (`$JS.API.DIRECT.GET.<stream>` with `seq`, `next_by_subj` and `batch`, servers
//! 2.11 and newer) returns the subject's next records from a sequence, followed by an end-of-batch
//! status. Any replica may answer, and a replica may lag the leader: the reads here always run up
//! to a record the stream leader reported, so a page that brings nothing new is completed by the
//! leader itself (`STREAM.MSG.GET` next-by-subject), which guarantees progress.
//!
//! The write path reads this way (the few records after a conflict), as do short replays: no
//! consumer is created, so no burst of conflicts or activations can exhaust a server limit.

use async_nats::HeaderMap;
use async_nats::jetstream::stream::RawMessageErrorKind;
use bytes::Bytes;

use super::JetStreamEventStore;
use crate::error::backend;
use aether_core::StoreError;

/// Records one direct-get request asks for.
pub(super) const PAGE: usize = 256;

/// A stored record as read back: its stream sequence, headers and body.
#[derive(Debug)]
pub(super) struct RawRecord {
    pub(super) seq: u64,
    pub(super) headers: Option<HeaderMap>,
    pub(super) payload: Bytes,
}

impl JetStreamEventStore {
    /// The subject's next records in `from..=last`, in order, at most `max` of them (at least
    /// one when the subject has a record in that range, as it does when `last` is its last
    /// record as the leader reported it). Empty when there is none.
    pub(super) async fn read_page(
        &self,
        actor_id: &str,
        subject: &str,
        from: u64,
        last: u64,
        max: usize,
    ) -> Result<Vec<RawRecord>, StoreError> {
        if from > last {
            return Ok(Vec::new());
        }
        let mut records = if self.inner.batch_direct_get {
            self.direct_batch(actor_id, subject, from, max).await?
        } else {
            Vec::new()
        };
        records.retain(|r| r.seq >= from && r.seq <= last);
        if records.is_empty() {
            // The replica that answered lags (or the server has no batches): ask the leader.
            records.extend(self.leader_next(actor_id, subject, from).await?);
            records.retain(|r| r.seq <= last);
        }
        Ok(records)
    }

    /// One batched direct get: the subject's records from sequence `from`, at most `max`.
    async fn direct_batch(
        &self,
        actor_id: &str,
        subject: &str,
        from: u64,
        max: usize,
    ) -> Result<Vec<RawRecord>, StoreError> {
        let context = || format!("reading the records of actor {actor_id:?} from sequence {from}");
        let records = aether_nats::direct::batch(
            &self.inner.client,
            &self.inner.stream_name,
            subject,
            from,
            max,
            self.inner.request_timeout,
            &context,
        )
        .await?;
        Ok(records
            .into_iter()
            .map(|r| RawRecord {
                seq: r.seq,
                headers: r.headers,
                payload: r.payload,
            })
            .collect())
    }

    /// The subject's first record at or after `from`, from the stream leader.
    async fn leader_next(
        &self,
        actor_id: &str,
        subject: &str,
        from: u64,
    ) -> Result<Option<RawRecord>, StoreError> {
        match self
            .inner
            .stream
            .get_first_raw_message_by_subject(subject, from)
            .await
        {
            Ok(msg) => Ok(Some(RawRecord {
                seq: msg.sequence,
                headers: Some(msg.headers),
                payload: msg.payload,
            })),
            Err(e) if matches!(e.kind(), RawMessageErrorKind::NoMessageFound) => Ok(None),
            Err(e) => Err(backend(
                format!("reading the record of actor {actor_id:?} at or after sequence {from}"),
                e,
            )),
        }
    }
}
