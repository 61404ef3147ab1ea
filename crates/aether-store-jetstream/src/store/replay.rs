//! Replaying an actor's events: the records of the actor's subject from where the first wanted
//! version starts (see [`super::seek`]) up to the leader's last sequence, read by direct gets
//! ([`super::direct`]) when they are few and by a replay consumer ([`super::consumer`]) when they
//! are many. Each record is read as the version it holds (its `Aether-Version` header) and its
//! event; reads yield strictly increasing versions, and every record they skip is reported (never
//! a panic).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use aether_core::{Event, ReplayError, StoreError, limits};
use async_nats::HeaderMap;
use futures::{Stream, StreamExt};
use tracing::Instrument;

use super::JetStreamEventStore;
use super::consumer::ReplayConsumer;
use super::direct::{PAGE, RawRecord};
use super::seek::{Last, SKIP_BUDGET};
use crate::layout;

/// A read of at most this many records uses direct gets; a longer one a replay consumer, when
/// one of the store's permits is free and the server accepts it.
pub(super) const DIRECT_READ_MAX: u64 = 256;

impl JetStreamEventStore {
    /// Streams the actor's records with version >= `from_version`: the events in strictly
    /// increasing version order, and the records skipped on the way ([`Order`]).
    pub(super) fn replay(&self, actor_id: &str, from_version: u64) -> ReplayStream {
        let replay = self.replay_unguarded(actor_id, from_version);
        match &self.inner.guard {
            None => replay,
            Some(guard) => super::permissions::Guard::stream(
                guard,
                layout::actor_token(actor_id),
                format!("reading the events of actor {actor_id:?} from version {from_version}"),
                replay,
            )
            .boxed(),
        }
    }

    /// [`Self::replay`] without a permission watch.
    fn replay_unguarded(&self, actor_id: &str, from_version: u64) -> ReplayStream {
        enum State {
            Start(JetStreamEventStore, String, u64),
            Reading(Box<Reading>),
            Done,
        }
        struct Reading {
            reader: Reader,
            order: Order,
            started: Instant,
        }
        let start = State::Start(self.clone(), actor_id.to_owned(), from_version);
        futures::stream::unfold(start, |state| async move {
            let mut reading = match state {
                State::Done => return None,
                State::Reading(r) => r,
                State::Start(store, actor_id, from) => {
                    let started = Instant::now();
                    if let Err(e) = store
                        .check_open()
                        .and_then(|()| limits::validate_actor_id(&actor_id).map_err(Into::into))
                    {
                        return Some((Err(e), State::Done));
                    }
                    let span = tracing::debug_span!(
                        "aether.store.replay",
                        store = "jetstream",
                        actor_id = actor_id.as_str(),
                        from_version = from,
                    );
                    let opened = store
                        .open_replay_retrying(&actor_id, from)
                        .instrument(span)
                        .await;
                    match opened {
                        Ok(Some(reader)) => Box::new(Reading {
                            reader,
                            order: Order::new(from),
                            started,
                        }),
                        Ok(None) => {
                            let seconds = started.elapsed().as_secs_f64();
                            store.inner.metrics.replay_seconds.record(seconds);
                            return None;
                        }
                        Err(e) => return Some((Err(e), State::Done)),
                    }
                }
            };
            loop {
                let record = match reading.reader.next().await {
                    Ok(Some(record)) => record,
                    Ok(None) => {
                        let seconds = reading.started.elapsed().as_secs_f64();
                        reading
                            .reader
                            .store
                            .inner
                            .metrics
                            .replay_seconds
                            .record(seconds);
                        return None;
                    }
                    Err(e) => return Some((Err(e), State::Done)),
                };
                let inner = &reading.reader.store.inner;
                inner.stats.records_read.fetch_add(1, Ordering::Relaxed);
                inner.metrics.store.replayed.increment(1);
                let actor_id = &reading.reader.actor_id;
                let parsed = read_record_shared(record.headers.as_ref(), &record.payload, actor_id);
                if let Some(item) = reading.order.admit(record.seq, parsed, record.payload) {
                    return Some((Ok(item), State::Reading(reading)));
                }
            }
        })
        .boxed()
    }

    /// [`Self::open_replay`], tried again (up to [`REPLAY_START_ATTEMPTS`] times) when the
    /// server timed out or was unavailable: starting a read changes nothing, and right after a
    /// server of a cluster dies the first requests may go unanswered while leaders move.
    async fn open_replay_retrying(
        &self,
        actor_id: &str,
        from_version: u64,
    ) -> Result<Option<Reader>, StoreError> {
        let mut attempt = 1;
        loop {
            match self.open_replay(actor_id, from_version).await {
                Err(e)
                    if e.is_transient()
                        && attempt < REPLAY_START_ATTEMPTS
                        && !self.inner.closed.load(Ordering::Relaxed) =>
                {
                    tracing::debug!(actor_id, attempt, error = %e, "starting a replay again");
                    tokio::time::sleep(Duration::from_millis(100) * attempt).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Starts a replay: the subject's last record is read from the stream leader first, and the
    /// replay reads up to it (read-your-writes even when a lagging replica serves the reads). A
    /// read from a version above 1 starts where that version starts ([`Self::find_start`]), not
    /// at the beginning of the actor's history.
    async fn open_replay(
        &self,
        actor_id: &str,
        from_version: u64,
    ) -> Result<Option<Reader>, StoreError> {
        let context = || format!("starting a replay of actor {actor_id:?}");
        let subject = self.subject_for(actor_id);
        let Some(last) = self.last_record(actor_id, &subject, context).await? else {
            return Ok(None);
        };
        let Some(start) = self
            .find_start(actor_id, &subject, from_version, last, SKIP_BUDGET)
            .await?
        else {
            return Ok(None);
        };
        let mut reader = Reader::direct(self, actor_id, subject, start, last.seq);
        if expected_records(from_version, start, last) > DIRECT_READ_MAX {
            reader.use_consumer().await?;
        }
        Ok(Some(reader))
    }
}

/// At most how many records a read from version `from`, starting at sequence `start`, meets up
/// to the `last` record: no more than the sequences in between, and (versions rising by at least
/// one per record) no more than the versions from `from` to the last one, plus the few below
/// `from` that a read may start before.
fn expected_records(from: u64, start: u64, last: Last) -> u64 {
    let by_sequence = last.seq.saturating_sub(start) + 1;
    let by_version = last.version.map_or(u64::MAX, |v| {
        (v.saturating_sub(from.max(1)) + 1).saturating_add(SKIP_BUDGET)
    });
    by_sequence.min(by_version)
}

/// Attempts at starting a replay when the server times out or is unavailable.
const REPLAY_START_ATTEMPTS: u32 = 3;

/// Reads one actor's records in stream order up to a known last sequence, by direct gets or by
/// a replay consumer; switches to direct gets when the consumer cannot continue for a server
/// limit.
pub(super) struct Reader {
    store: JetStreamEventStore,
    actor_id: String,
    subject: String,
    /// The next stream sequence to read.
    next: u64,
    /// The last sequence to read (the subject's last record when the read started).
    last: u64,
    /// Records read by direct get and not yet returned.
    page: VecDeque<RawRecord>,
    consumer: Option<ReplayConsumer>,
}

impl Reader {
    /// A reader of `subject`'s records in `start..=last` by direct gets.
    pub(super) fn direct(
        store: &JetStreamEventStore,
        actor_id: &str,
        subject: String,
        start: u64,
        last: u64,
    ) -> Self {
        Self {
            store: store.clone(),
            actor_id: actor_id.to_owned(),
            subject,
            next: start,
            last,
            page: VecDeque::new(),
            consumer: None,
        }
    }

    /// Reads through a replay consumer if the store has a permit free and the server accepts
    /// one; stays with direct gets otherwise (a server limit refusing the consumer is not an
    /// error: the read goes on without it).
    async fn use_consumer(&mut self) -> Result<(), StoreError> {
        let Ok(permit) = self
            .store
            .inner
            .replay_consumers
            .clone()
            .try_acquire_owned()
        else {
            return Ok(());
        };
        match ReplayConsumer::open(
            &self.store,
            &self.actor_id,
            &self.subject,
            self.next,
            permit,
        )
        .await
        {
            Ok(consumer) => {
                self.consumer = Some(consumer);
                Ok(())
            }
            Err(StoreError::LimitReached { limit, .. }) => {
                tracing::debug!(
                    actor_id = self.actor_id,
                    %limit,
                    "the server refused a replay consumer; reading by direct gets"
                );
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The next record up to the last sequence; `None` when the read is complete.
    pub(super) async fn next(&mut self) -> Result<Option<RawRecord>, StoreError> {
        if self.next > self.last {
            self.finish().await;
            return Ok(None);
        }
        let record = match self.consumer.as_mut() {
            Some(consumer) => match consumer.next().await {
                Ok(record) => record,
                Err(StoreError::LimitReached { .. }) => {
                    // Its replacement was refused: go on by direct gets from where it stood.
                    self.consumer = None;
                    return Box::pin(self.next()).await;
                }
                Err(e) => return Err(e),
            },
            None => {
                if self.page.is_empty() {
                    let page = self
                        .store
                        .read_page(&self.actor_id, &self.subject, self.next, self.last, PAGE)
                        .await?;
                    self.page = page.into();
                }
                match self.page.pop_front() {
                    Some(record) => record,
                    // The leader reported a record at `last`, so this is only reached when
                    // the history was cut meanwhile (retention by age).
                    None => {
                        self.next = self.last + 1;
                        return Ok(None);
                    }
                }
            }
        };
        if record.seq > self.last {
            self.next = record.seq;
            self.finish().await;
            return Ok(None);
        }
        self.next = record.seq + 1;
        if self.next > self.last {
            self.finish().await;
        }
        Ok(Some(record))
    }

    /// Deletes the replay consumer, if any, as soon as the read has what it needs.
    async fn finish(&mut self) {
        if let Some(consumer) = self.consumer.take() {
            consumer.close().await;
        }
    }
}

/// A record read back from the stream.
pub(super) enum Replayed {
    /// An event, its version above every version held by the records before it.
    Event(Event),
    /// A record the read skipped, and why; `holds` is the version it holds, if any.
    Skipped {
        error: ReplayError,
        holds: Option<u64>,
    },
}

pub(super) type ReplayStream =
    std::pin::Pin<Box<dyn Stream<Item = Result<Replayed, StoreError>> + Send>>;

/// What a stored record says about itself.
#[derive(Debug)]
pub(super) struct Record {
    /// The version the record holds: its `Aether-Version` header; without a usable header, the
    /// version in its body; `None` when it has neither (a record that breaks the contract).
    pub(super) version: Option<u64>,
    /// The event, when the body decodes as an event of this actor at that version; otherwise
    /// why not.
    pub(super) event: Result<Event, String>,
}

/// Reads a stored record: the version it holds and its event.
pub(super) fn read_record(headers: Option<&HeaderMap>, payload: &[u8], actor_id: &str) -> Record {
    record(headers, decode_event(payload, actor_id))
}

/// [`read_record`] for a received body: the event's payload shares it (decoded once, not copied).
pub(super) fn read_record_shared(
    headers: Option<&HeaderMap>,
    payload: &bytes::Bytes,
    actor_id: &str,
) -> Record {
    let event = aether_core::wire::decode_event_shared(payload)
        .map_err(|e| format!("body does not decode: {e}"))
        .and_then(|event| of_actor(event, actor_id));
    record(headers, event)
}

fn record(headers: Option<&HeaderMap>, decoded: Result<Event, String>) -> Record {
    let header = headers
        .and_then(|h| h.get(layout::HEADER_VERSION))
        .and_then(|v| parse_version(v.as_str()));
    match (header, decoded) {
        (Some(held), Ok(event)) if event.version() != held => Record {
            version: Some(held),
            event: Err(format!(
                "header {} is {held}, but the body is version {}",
                layout::HEADER_VERSION,
                event.version()
            )),
        },
        (header, event) => Record {
            version: header.or_else(|| event.as_ref().ok().map(Event::version)),
            event,
        },
    }
}

/// A version header: decimal digits of a version above 0; anything else is no version.
fn parse_version(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|&v| v > 0)
}

/// The ordering rule of reads: versions yielded are strictly increasing. A record is yielded
/// when its body decodes (as an event of this actor, at the version its header gives) and its
/// version is above every version held by the records before it, decodable or not; any other
/// record is skipped and reported with its stream sequence and the reason. Records whose version
/// is below the replay's `from` are left out silently.
#[derive(Debug)]
pub(super) struct Order {
    from: u64,
    /// The highest version held by the records read so far (0: none).
    high: u64,
}

impl Order {
    pub(super) fn new(from: u64) -> Self {
        Self { from, high: 0 }
    }

    /// Decides what a read does with the record at `position` (`raw` is its body): `None` when
    /// it is left out silently (below `from`).
    pub(super) fn admit(
        &mut self,
        position: u64,
        record: Record,
        raw: bytes::Bytes,
    ) -> Option<Replayed> {
        let holds = record.version;
        let in_range = holds.is_none_or(|v| v >= self.from);
        let reason = match record.event {
            Ok(event) if event.version() > self.high => {
                self.high = event.version();
                return in_range.then_some(Replayed::Event(event));
            }
            Ok(event) if event.version() == self.high => format!("version {} repeated", self.high),
            Ok(event) => format!("version {} after {}", event.version(), self.high),
            Err(reason) => {
                self.high = self.high.max(holds.unwrap_or(0));
                reason
            }
        };
        in_range.then(|| Replayed::Skipped {
            error: ReplayError::new(position, reason, raw),
            holds,
        })
    }
}

/// Decodes a stored body; anything but a valid event of `actor_id` is an error.
pub(super) fn decode_event(payload: &[u8], actor_id: &str) -> Result<Event, String> {
    let event: Event = aether_core::wire::decode_event(payload)
        .map_err(|e| format!("body does not decode: {e}"))?;
    of_actor(event, actor_id)
}

/// `event` if it names `actor_id`, else why it does not belong under that actor's subject.
fn of_actor(event: Event, actor_id: &str) -> Result<Event, String> {
    if event.actor_id() != actor_id {
        return Err(format!(
            "event {} names actor {:?}, but is stored under actor {actor_id:?}",
            event.id(),
            event.actor_id()
        ));
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use bytes::Bytes;

    fn body(actor: &str, version: u64) -> Bytes {
        let event = Event::builder(actor, "Tested")
            .version(version)
            .build()
            .unwrap();
        Bytes::from(aether_core::wire::encode_event(&event).unwrap())
    }

    fn headers(version: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(layout::HEADER_VERSION, version);
        h
    }

    /// A skipped record: (position, reason, version held).
    type Skip = (u64, String, Option<u64>);

    /// Feeds (header, body) records through one `Order`; returns the yielded versions and the
    /// skipped records.
    fn run(from: u64, records: &[(Option<&str>, Bytes)]) -> (Vec<u64>, Vec<Skip>) {
        let mut order = Order::new(from);
        let (mut yielded, mut skipped) = (Vec::new(), Vec::new());
        for (i, (header, raw)) in records.iter().enumerate() {
            let h = header.map(headers);
            let record = read_record(h.as_ref(), raw, "a");
            match order.admit(i as u64 + 1, record, raw.clone()) {
                Some(Replayed::Event(e)) => yielded.push(e.version()),
                Some(Replayed::Skipped { error, holds }) => {
                    assert_eq!(&error.raw, raw);
                    skipped.push((error.position, error.reason, holds));
                }
                None => {}
            }
        }
        (yielded, skipped)
    }

    #[test]
    fn the_header_is_the_version_and_the_body_the_fallback() {
        let r = read_record(Some(&headers("7")), &body("a", 7), "a");
        assert_eq!(r.version, Some(7));
        assert_eq!(r.event.unwrap().version(), 7);
        let r = read_record(Some(&headers("7")), b"junk", "a");
        assert_eq!(r.version, Some(7));
        assert!(r.event.unwrap_err().starts_with("body does not decode: "));
        for bad in ["", "0", "x", "-1", "+3", " 3", "99999999999999999999999"] {
            let r = read_record(Some(&headers(bad)), &body("a", 4), "a");
            assert_eq!(
                r.version,
                Some(4),
                "header {bad:?}: the body's version counts"
            );
        }
        let r = read_record(None, b"junk", "a");
        assert_eq!(r.version, None);
        let r = read_record(Some(&headers("5")), &body("a", 4), "a");
        assert_eq!(r.version, Some(5));
        assert_eq!(
            r.event.unwrap_err(),
            "header Aether-Version is 5, but the body is version 4"
        );
        let r = read_record(Some(&headers("4")), &body("b", 4), "a");
        assert_eq!(r.version, Some(4));
        assert!(r.event.is_err());
    }

    #[test]
    fn reads_yield_strictly_increasing_versions() {
        let (yielded, skipped) = run(
            0,
            &[
                (Some("1"), body("a", 1)),
                (Some("3"), body("a", 3)),
                (Some("2"), body("a", 2)),
                (Some("3"), body("a", 3)),
                (Some("5"), Bytes::from_static(b"junk")),
                (None, body("a", 5)),
                (None, Bytes::from_static(b"junk")),
                (Some("6"), body("a", 6)),
            ],
        );
        assert_eq!(yielded, [1, 3, 6]);
        let reasons: Vec<(u64, &str, Option<u64>)> = skipped
            .iter()
            .map(|(p, r, h)| (*p, r.split(':').next().unwrap(), *h))
            .collect();
        assert_eq!(
            reasons,
            [
                (3, "version 2 after 3", Some(2)),
                (4, "version 3 repeated", Some(3)),
                (5, "body does not decode", Some(5)),
                (6, "version 5 repeated", Some(5)),
                (7, "body does not decode", None),
            ]
        );
    }

    #[test]
    fn records_below_from_are_left_out_silently() {
        let (yielded, skipped) = run(
            3,
            &[
                (Some("1"), body("a", 1)),
                (Some("2"), Bytes::from_static(b"junk")),
                (Some("3"), body("a", 3)),
                (Some("2"), body("a", 2)),
                (Some("3"), body("a", 3)),
                (Some("4"), body("a", 4)),
            ],
        );
        assert_eq!(yielded, [3, 4]);
        assert_eq!(
            skipped,
            [(5, "version 3 repeated".to_owned(), Some(3))],
            "the same as a read from 0, restricted to versions >= 3"
        );
    }
}
