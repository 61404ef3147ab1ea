//! Replaying an actor's events: an ordered push consumer filtered on the actor's subject, started
//! where the first wanted version starts (see [`super::seek`]), read up to the leader's last
//! sequence. Each record
//! is read as the version it holds (its `Aether-Version` header) and its event; reads yield
//! strictly increasing versions, and every record they skip is reported (never a panic).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use aether_core::{Event, ReplayError, StoreError, limits};
use async_nats::HeaderMap;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::push::OrderedConfig;
use futures::{Stream, StreamExt};
use tracing::Instrument;

use super::JetStreamEventStore;
use super::seek::SKIP_BUDGET;
use crate::error::backend;
use crate::layout;

impl JetStreamEventStore {
    /// Streams the actor's records with version >= `from_version` through an ordered push consumer
    /// filtered on the actor's subject: the events in strictly increasing version order, and the
    /// records skipped on the way ([`Order`]).
    pub(super) fn replay(&self, actor_id: &str, from_version: u64) -> ReplayStream {
        enum State {
            Start(JetStreamEventStore, String, u64),
            Reading(
                Box<async_nats::jetstream::consumer::push::Ordered>,
                ReadTarget,
            ),
            Done,
        }
        let start = State::Start(self.clone(), actor_id.to_owned(), from_version);
        futures::stream::unfold(start, |state| async move {
            let (mut messages, mut target) = match state {
                State::Done => return None,
                State::Reading(m, t) => (m, t),
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
                        Ok(Some((m, last_sequence))) => (
                            Box::new(m),
                            ReadTarget {
                                actor_id,
                                order: Order::new(from),
                                last_sequence,
                                timeout: store.inner.request_timeout,
                                records: store.clone(),
                                started,
                            },
                        ),
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
                let actor_id = &target.actor_id;
                let next = match tokio::time::timeout(target.timeout, messages.next()).await {
                    Ok(Some(Ok(m))) => m,
                    // The ordered consumer recreates itself after a missed heartbeat.
                    Ok(Some(Err(e)))
                        if matches!(
                            e.kind(),
                            async_nats::jetstream::consumer::push::OrderedErrorKind::MissingHeartbeat
                        ) =>
                    {
                        continue;
                    }
                    Ok(Some(Err(e))) => {
                        return Some((
                            Err(backend(format!("replaying actor {actor_id:?}"), e)),
                            State::Done,
                        ));
                    }
                    Ok(None) => return None,
                    Err(_) => {
                        return Some((
                            Err(StoreError::Timeout {
                                context: format!("replaying actor {actor_id:?}"),
                            }),
                            State::Done,
                        ));
                    }
                };
                let inner = &target.records.inner;
                inner.stats.records_read.fetch_add(1, Ordering::Relaxed);
                inner.metrics.replayed.increment(1);
                let position = next.info().map_or(0, |info| info.stream_sequence);
                let record = read_record_shared(next.headers.as_ref(), &next.payload, actor_id);
                let item = target.order.admit(position, record, next.payload.clone());
                let done = position >= target.last_sequence;
                if done {
                    let seconds = target.started.elapsed().as_secs_f64();
                    target.records.inner.metrics.replay_seconds.record(seconds);
                }
                match item {
                    Some(item) if done => return Some((Ok(item), State::Done)),
                    Some(item) => return Some((Ok(item), State::Reading(messages, target))),
                    None if done => return None,
                    None => {}
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
    ) -> Result<Option<(async_nats::jetstream::consumer::push::Ordered, u64)>, StoreError> {
        let mut attempt = 1;
        loop {
            match self.open_replay(actor_id, from_version).await {
                Err(e @ (StoreError::Timeout { .. } | StoreError::Unavailable { .. }))
                    if attempt < REPLAY_START_ATTEMPTS
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
    /// replay reads up to it. The ordered consumer may be served by a replica that lags behind
    /// (R3); reading to the leader's last sequence gives read-your-writes all the same. A read
    /// from a version above 1 starts where that version starts ([`Self::find_start`]), not at
    /// the beginning of the actor's history.
    async fn open_replay(
        &self,
        actor_id: &str,
        from_version: u64,
    ) -> Result<Option<(async_nats::jetstream::consumer::push::Ordered, u64)>, StoreError> {
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
        let deliver_policy = if start <= 1 {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence {
                start_sequence: start,
            }
        };
        let consumer = self
            .inner
            .stream
            .create_consumer(OrderedConfig {
                deliver_subject: self.inner.client.new_inbox(),
                filter_subject: subject,
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| backend(context(), e))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| backend(context(), e))?;
        Ok(Some((messages, last.seq)))
    }
}

/// Attempts at starting a replay when the server times out or is unavailable.
const REPLAY_START_ATTEMPTS: u32 = 3;

/// Where a replay stops (the subject's last sequence when it started) and what it yielded so far.
struct ReadTarget {
    actor_id: String,
    order: Order,
    last_sequence: u64,
    timeout: Duration,
    /// The store whose read counters this replay adds to.
    records: JetStreamEventStore,
    /// When the read started (for `aether_store_replay_seconds`).
    started: Instant,
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
