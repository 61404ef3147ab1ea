//! Replaying an actor's events: an ordered push consumer filtered on the actor's subject, started
//! at a snapshot checkpoint when one is known, read up to the leader's last sequence, with every
//! record decoded (malformed ones reported, never a panic).

use std::time::Duration;

use aether_core::{Event, ReplayError, StoreError, limits};
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::push::OrderedConfig;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use futures::{Stream, StreamExt};

use super::JetStreamEventStore;
use crate::error::backend;

impl JetStreamEventStore {
    fn start_policy(&self, actor_id: &str, from_version: u64) -> DeliverPolicy {
        if from_version <= 1 {
            return DeliverPolicy::All;
        }
        let checkpoint = self.inner.checkpoints.get(actor_id);
        match checkpoint {
            Some((version, seq)) if version < from_version && seq > 0 => {
                DeliverPolicy::ByStartSequence {
                    start_sequence: seq.saturating_add(1),
                }
            }
            _ => DeliverPolicy::All,
        }
    }

    /// Streams the actor's records with version >= `from_version`, malformed ones included,
    /// through an ordered push consumer filtered on the actor's subject.
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
                    if let Err(e) = store
                        .check_open()
                        .and_then(|()| limits::validate_actor_id(&actor_id).map_err(Into::into))
                    {
                        return Some((Err(e), State::Done));
                    }
                    match store.open_replay(&actor_id, from).await {
                        Ok(Some((m, last_sequence))) => (
                            Box::new(m),
                            ReadTarget {
                                actor_id,
                                from,
                                last_sequence,
                                timeout: store.inner.request_timeout,
                            },
                        ),
                        Ok(None) => return None,
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
                let position = next.info().map_or(0, |info| info.stream_sequence);
                let decoded = decode_event(&next.payload, actor_id);
                let raw = next.payload.clone();
                let from = target.from;
                let after = if position >= target.last_sequence {
                    State::Done
                } else {
                    State::Reading(messages, target)
                };
                match decoded {
                    Ok(event) if event.version() < from => {
                        let State::Reading(m, t) = after else {
                            return None;
                        };
                        (messages, target) = (m, t);
                    }
                    Ok(event) => return Some((Ok(Replayed::Event(event)), after)),
                    Err(reason) => {
                        return Some((
                            Ok(Replayed::Malformed(ReplayError::new(position, reason, raw))),
                            after,
                        ));
                    }
                }
            }
        })
        .boxed()
    }

    /// Starts a replay: the subject's last sequence is read from the stream leader first, and the
    /// replay reads up to it. The ordered consumer may be served by a replica that lags behind
    /// (R3); reading to the leader's last sequence gives read-your-writes all the same.
    async fn open_replay(
        &self,
        actor_id: &str,
        from_version: u64,
    ) -> Result<Option<(async_nats::jetstream::consumer::push::Ordered, u64)>, StoreError> {
        let context = || format!("starting a replay of actor {actor_id:?}");
        let subject = self.subject_for(actor_id);
        let last_sequence = match self
            .inner
            .stream
            .get_last_raw_message_by_subject(&subject)
            .await
        {
            Ok(msg) => msg.sequence,
            Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => {
                return Ok(None);
            }
            Err(e) => return Err(backend(context(), e)),
        };
        let deliver_policy = self.start_policy(actor_id, from_version);
        if let DeliverPolicy::ByStartSequence { start_sequence } = deliver_policy
            && start_sequence > last_sequence
        {
            return Ok(None);
        }
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
        Ok(Some((messages, last_sequence)))
    }
}

/// Where a replay stops: the subject's last sequence when it started.
struct ReadTarget {
    actor_id: String,
    from: u64,
    last_sequence: u64,
    timeout: Duration,
}

/// A record read back from the stream.
pub(super) enum Replayed {
    Event(Event),
    Malformed(ReplayError),
}

pub(super) type ReplayStream =
    std::pin::Pin<Box<dyn Stream<Item = Result<Replayed, StoreError>> + Send>>;

/// Decodes a stored message; anything but a valid event of `actor_id` is malformed.
pub(super) fn decode_event(payload: &[u8], actor_id: &str) -> Result<Event, String> {
    let event: Event = aether_core::wire::decode_event(payload)
        .map_err(|e| format!("not an Aether event: {e}"))?;
    if event.actor_id() != actor_id {
        return Err(format!(
            "event {} names actor {:?}, but is stored under actor {actor_id:?}",
            event.id(),
            event.actor_id()
        ));
    }
    Ok(event)
}
