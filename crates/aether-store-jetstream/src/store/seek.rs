//! Finding where a version starts in an actor's subject without reading the history before it.
//!
//! Versions grow with the stream sequence (every append is checked against the subject's last
//! sequence), so the first record holding a version `>= V` can be found by a search over
//! sequences: the stream leader answers "the first message of this subject at or after sequence
//! `s`" in one round trip (`STREAM.MSG.GET` with `next_by_subj`). The search alternates an
//! interpolation step (exact for an actor alone in its stream, close for evenly interleaved
//! actors) with a bisection step (so it never takes more than about `2 log2(n)` probes), and stops
//! as soon as at most [`SKIP_BUDGET`] records can lie between its lower bound and version `V`:
//! reading and dropping those costs less than another round trip.
//!
//! What the store already knows narrows the search first: a snapshot's recorded position (the
//! checkpoints) and the position of this store's last append (the version cache).

use std::sync::atomic::Ordering;

use aether_core::StoreError;
use async_nats::jetstream::stream::RawMessageErrorKind;

use super::JetStreamEventStore;
use super::replay::read_record;
use crate::error::backend;

/// At most this many records below the wanted version may be read and dropped instead of
/// searched past (one round trip costs about as much as reading a few dozen records).
pub(super) const SKIP_BUDGET: u64 = 32;

/// The subject's last record, as read from the stream leader when a read starts.
#[derive(Debug, Clone, Copy)]
pub(super) struct Last {
    pub(super) seq: u64,
    /// The version it holds (`None`: it breaks the layout contract and holds none).
    pub(super) version: Option<u64>,
}

/// One probe's answer: the first record of the subject at or after the probed sequence.
struct Probe {
    seq: u64,
    version: Option<u64>,
}

impl JetStreamEventStore {
    /// The subject's last record, from the stream leader; `None` when the subject is empty.
    pub(super) async fn last_record(
        &self,
        actor_id: &str,
        subject: &str,
        context: impl FnOnce() -> String,
    ) -> Result<Option<Last>, StoreError> {
        match self
            .inner
            .stream
            .get_last_raw_message_by_subject(subject)
            .await
        {
            Ok(msg) => Ok(Some(Last {
                seq: msg.sequence,
                version: read_record(Some(&msg.headers), &msg.payload, actor_id).version,
            })),
            Err(e) if matches!(e.kind(), RawMessageErrorKind::NoMessageFound) => Ok(None),
            Err(e) => Err(backend(context(), e)),
        }
    }

    /// The stream sequence to start reading `actor_id`'s records with version `>= from` at,
    /// given its subject's `last` record; `None` when no record holds such a version. Records
    /// before the returned sequence all hold versions below `from` (as long as the records obey
    /// the layout contract's ordering); at most `budget` records after it do.
    pub(super) async fn find_start(
        &self,
        actor_id: &str,
        subject: &str,
        from: u64,
        last: Last,
        budget: u64,
    ) -> Result<Option<u64>, StoreError> {
        if from <= 1 {
            return Ok(Some(1));
        }
        match last.version {
            Some(v) if v < from => return Ok(None),
            Some(v) if v == from => return Ok(Some(last.seq)),
            _ => {}
        }
        // Lower bound: every record before `lo` holds a version <= `lo_version` (< from).
        let (mut lo, mut lo_version) = (1u64, 0u64);
        if let Some((version, seq)) = self.inner.checkpoints.get(actor_id)
            && version < from
            && seq > 0
            && seq < last.seq
        {
            (lo, lo_version) = (seq + 1, version);
        }
        if let Some(known) = self.existing_slot(actor_id).and_then(|s| s.known())
            && let Some(seq) = known.seq.filter(|&s| s > 0 && s <= last.seq)
        {
            if known.version == from {
                return Ok(Some(seq));
            }
            if known.version < from && seq + 1 > lo {
                (lo, lo_version) = (seq + 1, known.version);
            }
        }
        // Upper bound: the first record holding a version >= from is at or before `hi`.
        let (mut hi, mut hi_version) = (last.seq, last.version);
        let mut bisect = false;
        while lo < hi && from - lo_version > budget {
            let mid = match hi_version.filter(|&v| v > lo_version && !bisect) {
                // Where `from` would sit if versions were spread evenly over [lo, hi].
                Some(hv) => {
                    let span = u128::from(hi - lo);
                    let share = u128::from(from - lo_version - 1) * span
                        / u128::from(hv - lo_version - 1).max(1);
                    lo + u64::try_from(share).unwrap_or(0)
                }
                None => lo + (hi - lo) / 2,
            }
            .clamp(lo, hi - 1);
            bisect = !bisect;
            match self.probe(actor_id, subject, mid).await? {
                // No record in [mid, hi): the first one >= from is at hi or before mid.
                None => hi = mid,
                Some(p) if p.seq >= hi => hi = mid,
                Some(Probe {
                    seq,
                    version: Some(v),
                }) if v < from => (lo, lo_version) = (seq + 1, v),
                Some(Probe {
                    seq,
                    version: Some(v),
                }) if v == from => return Ok(Some(seq)),
                // At or above `from`, or a record holding no version (starting earlier is the
                // safe side: a read drops what is below `from`).
                Some(Probe { version, .. }) => (hi, hi_version) = (mid, version),
            }
        }
        Ok(Some(lo))
    }

    /// The first record of the subject at or after `seq`, from the stream leader.
    async fn probe(
        &self,
        actor_id: &str,
        subject: &str,
        seq: u64,
    ) -> Result<Option<Probe>, StoreError> {
        self.inner.stats.lookups.fetch_add(1, Ordering::Relaxed);
        self.inner.metrics.lookups.increment(1);
        match self
            .inner
            .stream
            .get_first_raw_message_by_subject(subject, seq)
            .await
        {
            Ok(msg) => {
                let version = read_record(Some(&msg.headers), &msg.payload, actor_id).version;
                Ok(Some(Probe {
                    seq: msg.sequence,
                    version,
                }))
            }
            Err(e) if matches!(e.kind(), RawMessageErrorKind::NoMessageFound) => Ok(None),
            Err(e) => Err(backend(
                format!("looking up a version's position for actor {actor_id:?}"),
                e,
            )),
        }
    }

    /// The stream sequence of the record holding exactly `version`, if there is one (given the
    /// subject's `last` record).
    pub(super) async fn position_of(
        &self,
        actor_id: &str,
        subject: &str,
        version: u64,
        last: Last,
    ) -> Result<Option<u64>, StoreError> {
        if last.version == Some(version) {
            return Ok(Some(last.seq));
        }
        let Some(start) = self.find_start(actor_id, subject, version, last, 0).await? else {
            return Ok(None);
        };
        Ok(match self.probe(actor_id, subject, start).await? {
            Some(Probe {
                seq,
                version: Some(v),
            }) if v == version => Some(seq),
            _ => None,
        })
    }
}
