//! Appending events: the version check against the per-actor cache, single publishes and atomic
//! batches with the expected last subject sequence, classifying the server's answers (conflict,
//! duplicate, too large, timeout), and the EventStored broadcast after a successful append.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use aether_core::Backoff;
use aether_core::wire;
use aether_core::{
    Event, EventBroadcaster, EventStored, ServerLimit, StoreError, VersionConflict, limits,
};
use aether_nats::classify::limit_reached;
use aether_nats::codes::{
    ErrorCode, is_account_resources, is_duplicate_in_batch, is_message_too_large,
    is_wrong_last_sequence, jetstream_code, server_limit,
};
use aether_nats::publish::{
    BATCH_COMMIT, BATCH_ID, BATCH_SEQUENCE, Fence, MSG_ID, NO_RESPONDERS, publish_patiently,
    refused_for_sequence,
};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::StorageType;
use async_nats::{HeaderMap, HeaderName, HeaderValue, Subject};
use bytes::Bytes;
use serde::Deserialize;
use uuid::Uuid;

use super::JetStreamEventStore;
use super::seek::Last;
use super::slots::Known;
use crate::error::backend;
use crate::layout;

/// Atomic batches a stream accepts in flight by default (nats-server 2.12 to 2.15; an operator
/// may set `max_batch_inflight_per_stream`).
pub(super) const BATCHES_PER_STREAM: usize = 50;
/// Retries of a batch refused because the stream has too many batches in flight.
const BATCHES_IN_FLIGHT: Backoff =
    Backoff::new(Duration::from_millis(2), Duration::from_millis(100));

/// Waits when the server refused a write although nothing moved (a write still in flight).
const IN_FLIGHT: Backoff = Backoff::new(Duration::from_millis(4), Duration::from_millis(200));
/// How many times an append is re-sent after finding the version cache stale.
pub(super) const MAX_STALE_RETRIES: usize = 10;

/// A JetStream reply to a raw (core NATS) publish request, as used for atomic batches.
#[derive(Deserialize)]
struct ApiReply {
    error: Option<ApiError>,
    seq: Option<u64>,
}

#[derive(Deserialize, Debug)]
struct ApiError {
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

/// What the server did with a publish.
enum Published {
    /// Stored at this stream sequence.
    Stored(u64),
    /// Dropped as a duplicate of the message id stored at this sequence.
    Duplicate(u64),
}

/// Why a publish did not store the events.
enum PublishFailure {
    /// The expected last subject sequence did not match: someone else wrote.
    Conflict,
    /// Anything else.
    Error(StoreError),
}

/// What an append does next, decided from what is known of the actor's last record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// The actor's last record is this append's last event: it was stored before (a retry).
    AlreadyStored,
    /// Learn the actor's true last record from the server, then decide again.
    Refresh,
    /// The first version is taken, by what the server says is the last record: a conflict, unless
    /// the record at that version is this very event (a retry without message ids).
    Taken,
    /// Publish, expecting the actor's last record at this stream sequence.
    Publish(u64),
}

/// The append protocol's decision: `known` is what is known of the actor's last record,
/// `refreshed` whether it was read from the server during this append.
fn next(known: &Known, refreshed: bool, first: &Event, last: &Event) -> Next {
    // The batch's structure was checked before; only its first version can conflict.
    if first.version() <= known.version {
        if known.version == last.version() && known.last_id == Some(last.id()) {
            Next::AlreadyStored
        } else if refreshed {
            Next::Taken
        } else {
            // Versions only grow: the conflict stands, but report the true current version.
            Next::Refresh
        }
    } else {
        // No position: only the version is known (told by `update_version_cache`).
        known.seq.map_or(Next::Refresh, Next::Publish)
    }
}

impl JetStreamEventStore {
    /// Appends `events` (one actor, checked), all or nothing, at the versions they carry.
    ///
    /// The protocol: decide from what is known of the actor's last record ([`next`]); publish
    /// expecting that record's sequence; if the server refuses (someone else wrote), read the
    /// truth and decide again, at most [`MAX_STALE_RETRIES`] times.
    pub(super) async fn append(&self, events: &[Event]) -> Result<(), StoreError> {
        self.check_open()?;
        let Some((first, last)) = events.first().zip(events.last()) else {
            return Ok(());
        };
        let encoded = self.prepare(events)?;
        let actor_id = first.actor_id();
        let slot = self.slot(actor_id);
        let subject = &slot.subject;
        let serialized = slot.write.lock().await;

        // Not cached: assume a new actor (an empty subject) rather than asking first. The server
        // refuses the write if the subject is not empty, and then the truth is read once.
        let mut known = slot.known().unwrap_or(Known {
            version: 0,
            seq: Some(0),
            last_id: None,
        });
        let mut refreshed = false;
        let mut waits = 0;
        for _ in 0..MAX_STALE_RETRIES {
            match next(&known, refreshed, first, last) {
                Next::AlreadyStored => return Ok(()),
                Next::Refresh => {
                    known = Box::pin(self.refresh(&slot, actor_id)).await?;
                    refreshed = true;
                }
                Next::Taken => return self.taken(actor_id, subject, events, known).await,
                Next::Publish(expected_seq) => {
                    let published = match (events, encoded.as_slice()) {
                        ([event], [bytes]) => {
                            self.publish_one(subject, event, bytes, expected_seq).await
                        }
                        // Boxed: batches are rarer, and their future would swell every append's.
                        _ => {
                            Box::pin(self.publish_batch_patiently(
                                subject,
                                events,
                                &encoded,
                                expected_seq,
                            ))
                            .await
                        }
                    };
                    match published {
                        Ok(Published::Stored(seq)) => {
                            slot.set_known(Some(Known {
                                version: last.version(),
                                seq: Some(seq),
                                last_id: Some(last.id()),
                            }));
                            drop(serialized);
                            self.stored(events).await;
                            return Ok(());
                        }
                        Ok(Published::Duplicate(seq)) => {
                            // The server had this id already (within the duplicate window). Its
                            // answer names an older position, so forget the cache.
                            slot.set_known(None);
                            return Box::pin(self.verify_duplicate(first, seq)).await;
                        }
                        Err(PublishFailure::Conflict) => {
                            // Someone else wrote: learn the truth and decide again.
                            known = Box::pin(self.refresh(&slot, actor_id)).await?;
                            refreshed = true;
                            if next(&known, refreshed, first, last) == Next::AlreadyStored {
                                return Ok(());
                            }
                            if known.seq == Some(expected_seq) {
                                // Refused although nothing moved: on replicated streams another
                                // write to this actor is still in flight. Give it a moment.
                                waits += 1;
                                Box::pin(tokio::time::sleep(IN_FLIGHT.delay(waits))).await;
                            }
                        }
                        Err(PublishFailure::Error(e)) => {
                            // The outcome is unknown (a timeout may still be stored): forget the
                            // cache, so the next call reads the truth; a retry with the same ids
                            // is safe.
                            slot.set_known(None);
                            return Err(e);
                        }
                    }
                }
            }
        }
        Err(StoreError::Unavailable {
            context: format!(
                "appending to actor {actor_id:?}: the server kept refusing the expected position \
                 ({MAX_STALE_RETRIES} attempts) while the actor did not move past version {}",
                known.version
            ),
            source: None,
        })
    }

    /// Checks what can be checked before asking the server (structure, ids, size, that this server
    /// takes batches) and encodes the events.
    fn prepare(&self, events: &[Event]) -> Result<Vec<Bytes>, StoreError> {
        // Structure and ids; the version is checked against the real history by the protocol.
        match limits::check_append(0, events) {
            Ok(()) | Err(StoreError::VersionConflict(_)) => {}
            Err(e) => return Err(e),
        }
        if events.len() > 1
            && let Err(reason) = &self.inner.atomic_batches
        {
            return Err(StoreError::backend(
                format!(
                    "appending a batch of {} events for actor {:?}",
                    events.len(),
                    events.first().map(Event::actor_id).unwrap_or_default()
                ),
                reason.clone(),
            ));
        }
        events
            .iter()
            .map(|e| {
                // Pooled: async-nats drops the bytes on its connection task, often another
                // thread, where a per-event allocation would be freed.
                let bytes = wire::encode_event_pooled(e).map_err(|err| {
                    StoreError::backend(format!("encoding event {}", e.id()), err)
                })?;
                if bytes.len() > self.inner.max_event_bytes {
                    return Err(StoreError::TooLarge {
                        actor_id: e.actor_id().to_owned(),
                        event_id: e.id(),
                        size: bytes.len(),
                        max: self.inner.max_event_bytes,
                    });
                }
                Ok(bytes)
            })
            .collect()
    }

    /// The first version is taken. Without message ids the server cannot say "duplicate", so a
    /// retried single event that others wrote after is recognised by reading the record at its
    /// version; anything else is a conflict at the actor's true version.
    async fn taken(
        &self,
        actor_id: &str,
        subject: &Subject,
        events: &[Event],
        known: Known,
    ) -> Result<(), StoreError> {
        if let [event] = events
            && !self.inner.message_ids
            && Box::pin(self.holds_event(actor_id, subject, event, known)).await?
        {
            return Ok(());
        }
        let attempted = events.first().map_or(0, Event::version);
        Err(VersionConflict::new(actor_id.to_owned(), known.version, attempted).into())
    }

    /// After a successful append: the EventStored broadcast, if a broadcaster is set (boxed:
    /// without one its future would only swell every append's).
    async fn stored(&self, events: &[Event]) {
        if let Some(broadcaster) = self.broadcaster() {
            Box::pin(self.broadcast(broadcaster, events)).await;
        }
    }

    /// Whether the actor's record at `event`'s version is `event` itself (same id), given what
    /// is `known` of its last record.
    async fn holds_event(
        &self,
        actor_id: &str,
        subject: &Subject,
        event: &Event,
        known: Known,
    ) -> Result<bool, StoreError> {
        let Some(seq) = known.seq.filter(|s| *s > 0) else {
            return Ok(false);
        };
        let last = Last {
            seq,
            version: Some(known.version),
        };
        let Some(position) = self
            .position_of(actor_id, subject.as_str(), event.version(), last)
            .await?
        else {
            return Ok(false);
        };
        let stored = self
            .inner
            .stream
            .get_raw_message(position)
            .await
            .map_err(|e| {
                backend(
                    format!(
                        "reading the record at version {} of actor {actor_id:?}",
                        event.version()
                    ),
                    e,
                )
            })?;
        Ok(wire::decode_event(&stored.payload).is_ok_and(|s| s.id() == event.id()))
    }

    /// A publish was dropped as a duplicate of the id stored at `seq`: success if that is this
    /// very event (a retry), an error if the id belongs to another event.
    async fn verify_duplicate(&self, event: &Event, seq: u64) -> Result<(), StoreError> {
        let stored = self.inner.stream.get_raw_message(seq).await.map_err(|e| {
            backend(
                format!("reading the event stored under id {}", event.id()),
                e,
            )
        })?;
        let same = wire::decode_event(&stored.payload).ok();
        match same {
            Some(s) if s.actor_id() == event.actor_id() && s.version() == event.version() => Ok(()),
            Some(s) => Err(StoreError::DuplicateEventId {
                event_id: event.id(),
                stored_actor_id: s.actor_id().to_owned(),
                stored_version: s.version(),
            }),
            None => Err(StoreError::DuplicateEventId {
                event_id: event.id(),
                stored_actor_id: String::new(),
                stored_version: 0,
            }),
        }
    }

    fn classify_publish(
        &self,
        e: async_nats::jetstream::context::PublishError,
        event: &Event,
        size: usize,
    ) -> PublishFailure {
        if refused_for_sequence(&e) {
            return PublishFailure::Conflict;
        }
        let context = format!(
            "appending event {} (version {}) for actor {:?}",
            event.id(),
            event.version(),
            event.actor_id()
        );
        if matches!(e.kind(), PublishErrorKind::MaxPayloadExceeded)
            || jetstream_code(&e).is_some_and(is_message_too_large)
        {
            return PublishFailure::Error(StoreError::TooLarge {
                actor_id: event.actor_id().to_owned(),
                event_id: event.id(),
                size,
                max: self.inner.max_event_bytes,
            });
        }
        PublishFailure::Error(match e.kind() {
            PublishErrorKind::TimedOut => StoreError::Timeout { context },
            PublishErrorKind::BrokenPipe => StoreError::Unavailable {
                context,
                source: Some(Box::new(e)),
            },
            // "No responders": nothing received the message, so nothing was stored (no stream
            // leader: an election under way, or the servers holding the stream are down; or the
            // stream was deleted). Safe to resend with the same event ids.
            PublishErrorKind::StreamNotFound => StoreError::Unavailable {
                context: format!(
                    "{context}: no server answered for stream {} within the request timeout \
                     (a stream leader election, servers down, or the stream deleted); nothing \
                     was stored",
                    self.inner.stream_name
                ),
                source: Some(Box::new(e)),
            },
            _ => self.named_limit(backend(context, e)),
        })
    }

    /// A publish refused for the account's resources is refused for its storage or its
    /// memory, as the stream keeps messages on disk or in memory: name the one it is.
    fn named_limit(&self, error: StoreError) -> StoreError {
        match error {
            StoreError::LimitReached {
                limit: ServerLimit::Resources,
                context,
                source,
            } if jetstream_code(source.as_ref()).is_some_and(is_account_resources) => {
                let limit = match self.inner.stream.cached_info().config.storage {
                    StorageType::File => ServerLimit::Storage,
                    StorageType::Memory => ServerLimit::Memory,
                };
                StoreError::LimitReached {
                    limit,
                    context,
                    source,
                }
            }
            other => other,
        }
    }

    /// The headers of an event's record (`with_id`: with `Nats-Msg-Id`). Names are static (no
    /// allocation), each value is built once, straight into its header.
    fn headers(event: &Event, with_id: bool) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if with_id {
            let mut id = String::with_capacity(36);
            id.push_str(
                event
                    .id()
                    .hyphenated()
                    .encode_lower(&mut Uuid::encode_buffer()),
            );
            headers.insert(MSG_ID, HeaderValue::from(id));
        }
        headers.insert(VERSION, HeaderValue::from(event.version()));
        headers.insert(EVENT_TYPE, HeaderValue::from(event.event_type()));
        if event.schema_version() != 1 {
            headers.insert(SCHEMA_VERSION, HeaderValue::from(event.schema_version()));
        }
        headers
    }

    async fn publish_one(
        &self,
        subject: &Subject,
        event: &Event,
        bytes: &Bytes,
        expected_seq: u64,
    ) -> Result<Published, PublishFailure> {
        // "No responders" (nothing stored: a stream just created, or between leaders) is sent
        // again until the request timeout.
        let published = publish_patiently(
            &self.inner.js,
            subject,
            || {
                PublishMessage::build()
                    .payload(bytes.clone())
                    .headers(Self::headers(event, self.inner.message_ids))
                    .expected_last_subject_sequence(expected_seq)
            },
            self.inner.request_timeout,
        )
        .await;
        match published {
            Ok(ack) if ack.duplicate => Ok(Published::Duplicate(ack.sequence)),
            Ok(ack) => Ok(Published::Stored(ack.sequence)),
            Err(e) => Err(self.classify_publish(e, event, bytes.len())),
        }
    }

    /// [`Self::publish_batch`], at most [`BATCHES_PER_STREAM`] at once from this store, and sent
    /// again while the stream has as many batches in flight as the server accepts (JetStream
    /// 10210, other writers' batches: the batch was refused whole, nothing stored), for up to the
    /// request timeout; then the refusal is returned ([`StoreError::LimitReached`], transient).
    async fn publish_batch_patiently(
        &self,
        subject: &Subject,
        events: &[Event],
        encoded: &[Bytes],
        expected_seq: u64,
    ) -> Result<Published, PublishFailure> {
        let started = tokio::time::Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Never more batches in flight from this store than the server accepts per stream:
            // the rest wait here instead of being refused.
            let permit = self.inner.batch_slots.acquire().await;
            let result = self
                .publish_batch(subject, events, encoded, expected_seq)
                .await;
            drop(permit);
            let refused_for_batches_in_flight = matches!(
                &result,
                Err(PublishFailure::Error(StoreError::LimitReached {
                    limit: ServerLimit::InFlightBatches,
                    ..
                }))
            );
            // Jittered: batches refused together should not all come back together.
            let wait = BATCHES_IN_FLIGHT.jitter_percent(50).delay(attempt);
            if !refused_for_batches_in_flight
                || started.elapsed() + wait >= self.inner.request_timeout
            {
                return result;
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// One all-or-nothing append with JetStream atomic batch publish (ADR-50).
    async fn publish_batch(
        &self,
        subject: &Subject,
        events: &[Event],
        encoded: &[Bytes],
        expected_seq: u64,
    ) -> Result<Published, PublishFailure> {
        let batch_id = Uuid::new_v4().simple().to_string();
        let n = events.len();
        let context = |what: &str| {
            format!(
                "{what} of a batch of {n} events for actor {:?}",
                events.first().map(Event::actor_id).unwrap_or_default()
            )
        };
        for (i, (event, bytes)) in events.iter().zip(encoded).enumerate() {
            let mut headers = Self::headers(event, true);
            headers.insert(BATCH_ID, batch_id.as_str());
            headers.insert(BATCH_SEQUENCE, (i + 1).to_string().as_str());
            if i == 0 {
                Fence::subject_at(expected_seq).apply(&mut headers);
            }
            let commit = i + 1 == n;
            if commit {
                headers.insert(BATCH_COMMIT, "1");
            }
            if i == 0 || commit {
                let reply = self
                    .request_retrying(subject, headers, bytes, i == 0)
                    .await
                    .map_err(|e| {
                        PublishFailure::Error(match e {
                            StoreError::Timeout { .. } => StoreError::Timeout {
                                context: context(if commit { "committing" } else { "starting" }),
                            },
                            other => other,
                        })
                    })?;
                if reply.payload.is_empty() && !commit {
                    continue;
                }
                let parsed: ApiReply = serde_json::from_slice(&reply.payload).map_err(|e| {
                    PublishFailure::Error(StoreError::backend(context("reading the reply"), e))
                })?;
                if let Some(err) = parsed.error {
                    let code = ErrorCode(err.err_code);
                    // A retried batch (its ids stored or being stored) is treated like a
                    // conflict, so the store re-reads the actor and recognises the retry.
                    if is_wrong_last_sequence(code) || is_duplicate_in_batch(code) {
                        return Err(PublishFailure::Conflict);
                    }
                    let refusal = format!("JetStream error {}: {}", err.err_code, err.description);
                    return Err(PublishFailure::Error(match server_limit(code) {
                        Some(limit) => limit_reached(limit, context("appending"), refusal),
                        None => StoreError::backend(context("appending"), refusal),
                    }));
                }
                if commit {
                    return parsed.seq.map(Published::Stored).ok_or_else(|| {
                        PublishFailure::Error(StoreError::backend(
                            context("committing"),
                            "the commit reply carries no sequence",
                        ))
                    });
                }
            } else {
                self.inner
                    .client
                    .publish_with_headers(subject.clone(), headers, bytes.clone())
                    .await
                    .map_err(|e| PublishFailure::Error(backend(context("sending"), e)))?;
            }
        }
        Err(PublishFailure::Error(StoreError::backend(
            context("appending"),
            "empty batch",
        )))
    }

    /// A core NATS request with the store's timeout. When `retry_no_responders` is set, "no
    /// responders" (nothing received the message, so nothing was stored) is retried until the
    /// timeout, as a stream can be briefly without a leader.
    async fn request_retrying(
        &self,
        subject: &Subject,
        headers: HeaderMap,
        payload: &Bytes,
        retry_no_responders: bool,
    ) -> Result<async_nats::Message, StoreError> {
        let started = tokio::time::Instant::now();
        let mut retry = 1;
        let mut backoff = NO_RESPONDERS.delay(retry);
        loop {
            let left = self.inner.request_timeout.saturating_sub(started.elapsed());
            let request = self.inner.client.request_with_headers(
                subject.clone(),
                headers.clone(),
                payload.clone(),
            );
            match tokio::time::timeout(left, request).await {
                Err(_) => {
                    return Err(StoreError::Timeout {
                        context: format!("waiting for a reply on {subject}"),
                    });
                }
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(e))
                    if retry_no_responders
                        && matches!(e.kind(), async_nats::RequestErrorKind::NoResponders)
                        && started.elapsed() + backoff < self.inner.request_timeout =>
                {
                    tokio::time::sleep(backoff).await;
                    retry += 1;
                    backoff = NO_RESPONDERS.delay(retry);
                }
                Ok(Err(e)) => return Err(backend(format!("sending to {subject}"), e)),
            }
        }
    }

    /// The broadcaster, if any (one read of the lock per append).
    fn broadcaster(&self) -> Option<Arc<dyn EventBroadcaster>> {
        self.inner
            .broadcaster
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    async fn broadcast(&self, broadcaster: Arc<dyn EventBroadcaster>, events: &[Event]) {
        for event in events {
            let notification = match EventStored::for_event(event).to_event() {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "could not encode an EventStored notification");
                    continue;
                }
            };
            if let Err(e) = broadcaster
                .publish(&self.inner.broadcast_namespace, &notification)
                .await
            {
                tracing::warn!(
                    error = %e,
                    event_id = %event.id(),
                    "the event is stored, but its EventStored notification was not published"
                );
            }
        }
    }
}

const VERSION: HeaderName = HeaderName::from_static(layout::HEADER_VERSION);
const EVENT_TYPE: HeaderName = HeaderName::from_static(layout::HEADER_EVENT_TYPE);
const SCHEMA_VERSION: HeaderName = HeaderName::from_static(layout::HEADER_SCHEMA_VERSION);
