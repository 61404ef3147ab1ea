//! The fenced publish: JetStream's header names, the expected last subject sequence (of the
//! subject written, or of another subject: a fence), per-message TTLs, re-sending while nobody
//! answers, and recognising "someone else wrote first".

use std::time::Duration;

use aether_core::Backoff;
use async_nats::HeaderMap;
use async_nats::HeaderName;
use async_nats::Subject;
use async_nats::jetstream;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;

use crate::codes::{is_wrong_last_sequence, jetstream_code};

/// The stream drops a message whose id it stored within its duplicate window.
pub const MSG_ID: HeaderName = HeaderName::from_static("Nats-Msg-Id");
/// The write succeeds only if the subject's last sequence is this (0: the subject is empty).
pub const EXPECTED_LAST_SUBJECT_SEQUENCE: HeaderName =
    HeaderName::from_static("Nats-Expected-Last-Subject-Sequence");
/// Applies [`EXPECTED_LAST_SUBJECT_SEQUENCE`] to this subject instead of the one written: a fence.
pub const EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: HeaderName =
    HeaderName::from_static("Nats-Expected-Last-Subject-Sequence-Subject");
/// The message's own time to live (`5s`), on streams that allow per-message TTLs.
pub const TTL: HeaderName = HeaderName::from_static("Nats-TTL");
/// Atomic batch publish: the batch's id.
pub const BATCH_ID: HeaderName = HeaderName::from_static("Nats-Batch-Id");
/// Atomic batch publish: the message's place in the batch, from 1.
pub const BATCH_SEQUENCE: HeaderName = HeaderName::from_static("Nats-Batch-Sequence");
/// Atomic batch publish: on the last message, `1` commits the batch.
pub const BATCH_COMMIT: HeaderName = HeaderName::from_static("Nats-Batch-Commit");

/// Re-sends after "no responders": from 5 ms, doubling to 250 ms.
pub const NO_RESPONDERS: Backoff =
    Backoff::new(Duration::from_millis(5), Duration::from_millis(250));

/// The condition a write is published under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence<'a> {
    /// The last sequence expected (0: nothing written yet).
    pub last_sequence: u64,
    /// The subject whose last sequence is checked; `None`: the subject written.
    pub of_subject: Option<&'a str>,
}

impl Fence<'_> {
    /// Expect `last_sequence` as the written subject's last sequence.
    pub const fn subject_at(last_sequence: u64) -> Self {
        Fence {
            last_sequence,
            of_subject: None,
        }
    }

    /// Adds the fence's headers to `headers`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert(
            EXPECTED_LAST_SUBJECT_SEQUENCE,
            self.last_sequence.to_string().as_str(),
        );
        if let Some(subject) = self.of_subject {
            headers.insert(EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT, subject);
        }
    }
}

/// Adds a per-message TTL (whole seconds, rounded up, at least 1: the server's resolution).
pub fn apply_ttl(headers: &mut HeaderMap, ttl: Duration) {
    headers.insert(TTL, ttl_value(ttl).as_str());
}

/// The `Nats-TTL` value of `ttl`: whole seconds, rounded up, at least 1, e.g. `5s`.
pub fn ttl_value(ttl: Duration) -> String {
    format!("{}s", whole_seconds(ttl))
}

/// Whole seconds, rounded up, at least 1: the server's TTL resolution.
pub fn whole_seconds(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// Whether a failed publish was refused because the expected last sequence did not match.
pub fn refused_for_sequence(e: &PublishError) -> bool {
    e.kind() == PublishErrorKind::WrongLastSequence
        || jetstream_code(e).is_some_and(is_wrong_last_sequence)
}

/// Publishes the message `build` makes and waits for the stream's acknowledgement, building and
/// sending it again while nobody answers ("no responders": nothing received it, so nothing was
/// stored; a stream just created, or between leaders), until `patience` would be exceeded.
///
/// The send is boxed: async-nats's send future is ~840 bytes, and inline it would make every
/// caller's future a large allocation.
pub async fn publish_patiently(
    js: &jetstream::Context,
    subject: &Subject,
    mut build: impl FnMut() -> PublishMessage,
    patience: Duration,
) -> Result<PublishAck, PublishError> {
    let started = tokio::time::Instant::now();
    let mut retry = 1;
    loop {
        let sent = Box::pin(js.send_publish(subject.clone(), build())).await;
        let result = match sent {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match result {
            Err(e) if e.kind() == PublishErrorKind::StreamNotFound => {
                let wait = NO_RESPONDERS.delay(retry);
                if started.elapsed() + wait >= patience {
                    return Err(e);
                }
                Box::pin(tokio::time::sleep(wait)).await;
                retry += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_are_whole_seconds_rounded_up() {
        assert_eq!(ttl_value(Duration::from_millis(1)), "1s");
        assert_eq!(ttl_value(Duration::from_secs(5)), "5s");
        assert_eq!(ttl_value(Duration::from_millis(5_001)), "6s");
        assert_eq!(ttl_value(Duration::ZERO), "1s");
    }

    #[test]
    fn a_fence_names_its_subject() {
        let mut h = HeaderMap::new();
        Fence {
            last_sequence: 7,
            of_subject: Some("$KV.b.lease"),
        }
        .apply(&mut h);
        assert_eq!(
            h.get(EXPECTED_LAST_SUBJECT_SEQUENCE).map(|v| v.as_str()),
            Some("7")
        );
        assert_eq!(
            h.get(EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT)
                .map(|v| v.as_str()),
            Some("$KV.b.lease")
        );
        let mut h = HeaderMap::new();
        Fence::subject_at(0).apply(&mut h);
        assert!(h.get(EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT).is_none());
    }
}
