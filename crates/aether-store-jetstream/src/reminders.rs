//! Reminders in JetStream, kept and fired by the server's message schedules (ADR-51).
//!
//! A reminder is one schedule message on its own subject of the reminder stream
//! (`ar.<stream>.s.<type>.<actor>.<name>`, see [`layout`]). The server holds it
//! and, when due, publishes its body and headers to the firing subject
//! (`ar.<stream>.f.<type>.<actor>.<name>`) of the same stream: a one-off reminder's firing and
//! the removal of its schedule are one atomic write; a repeating one stays and fires again.
//! Firings are read by one durable consumer shared by every reader ([`ReminderStore::due`]); the
//! stream's work-queue retention removes a firing when it is settled. Nothing lives in a node's
//! memory: the server's replicas hold the schedules and the pending firings.
//!
//! The layout is a wire contract; docs/reminders.md specifies it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aether_core::StoreError;
use aether_core::reminder::{
    Due, DueFirings, Firing, Reminder, ReminderError, ReminderKey, ReminderStore, Settle, Settled,
    When, from_unix_millis, unix_millis,
};
use aether_nats::classify::store_error;
use aether_nats::server_version::parse_server_version;
use aether_nats::settle::{SETTLE_PATIENCE, while_settling};
use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::stream::{Config as StreamConfig, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use futures::StreamExt;

use crate::config::{JetStreamConfig, Storage};
use crate::error::ConfigError;
use crate::layout;

/// The oldest nats-server whose schedules reminders use (`@every`, `Nats-Schedule-Rollup`).
pub const MIN_SCHEDULES_VERSION: (u32, u32, u32) = (2, 14, 0);

/// Header: the due time of a one-off reminder, milliseconds since the Unix epoch.
pub const HEADER_AT: &str = "Aether-Reminder-At";
/// Header: the interval of a repeating reminder, in milliseconds.
pub const HEADER_EVERY: &str = "Aether-Reminder-Every";
/// The server's schedule headers (ADR-51).
const NATS_SCHEDULE: &str = "Nats-Schedule";
const NATS_SCHEDULE_TARGET: &str = "Nats-Schedule-Target";
const NATS_SCHEDULE_ROLLUP: &str = "Nats-Schedule-Rollup";
const NATS_SCHEDULE_NEXT: &str = "Nats-Schedule-Next";

/// The durable consumer every reader of a reminder stream shares.
pub const DUE_CONSUMER: &str = "aether-due";
/// How long a handed-out firing may stay unsettled, with no word of progress, before it goes to
/// another reader (a reader that was killed, say). Deliveries under way say so every third of
/// it. Fixed when the stream's consumer is created (by the first reader).
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(10);
/// The longest subject of a reminder: the server closes a connection whose request line
/// (subject, reply and sizes) passes its 4 KiB limit, so a longer one is refused before sending.
pub const MAX_SUBJECT_BYTES: usize = 3_584;
/// Firings one reader asks the server for at a time: few, so that firings never wait long in a
/// busy reader's buffer, where no progress is reported for them.
const PULL_BATCH: usize = 64;
/// Schedules one listing request reads.
const LIST_PAGE: usize = 256;

/// Reminders kept in a JetStream stream with message schedules (nats-server 2.14 or newer).
///
/// ```no_run
/// # async fn demo(client: async_nats::Client) -> Result<(), Box<dyn std::error::Error>> {
/// use aether_core::reminder::{Reminder, ReminderKey, ReminderStore, When};
/// use aether_store_jetstream::{JetStreamConfig, JetStreamReminders};
/// use std::time::Duration;
///
/// let reminders = JetStreamReminders::open(client, "orders", &JetStreamConfig::default()).await?;
/// let command = rmp_serde::to_vec_named(&"CancelUnpaid")?;
/// let key = ReminderKey::new("order", "order-42", "payment-deadline");
/// reminders
///     .set(&Reminder::new(key.clone(), When::after(Duration::from_secs(1800)), command))
///     .await?;
/// assert_eq!(reminders.list("order", "order-42").await?.len(), 1);
/// reminders.cancel(&key).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct JetStreamReminders {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    stream: jetstream::stream::Stream,
    stream_name: String,
    /// `ar.<events stream>.`
    prefix: String,
    timeout: Duration,
    ack_wait: Duration,
}

impl fmt::Debug for JetStreamReminders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStreamReminders")
            .field("stream", &self.inner.stream_name)
            .finish()
    }
}

impl JetStreamReminders {
    /// Opens (creating when missing) the reminders of store `store_name` in `config`'s namespace,
    /// with its replicas, storage and request timeout.
    pub async fn open(
        client: async_nats::Client,
        store_name: &str,
        config: &JetStreamConfig,
    ) -> Result<Self, ConfigError> {
        Self::open_with_ack_wait(client, store_name, config, DEFAULT_ACK_WAIT).await
    }

    /// [`open`](Self::open) with the time a handed-out firing may stay unsettled before another
    /// reader gets it (default [`DEFAULT_ACK_WAIT`]).
    pub async fn open_with_ack_wait(
        client: async_nats::Client,
        store_name: &str,
        config: &JetStreamConfig,
        ack_wait: Duration,
    ) -> Result<Self, ConfigError> {
        layout::validate_store_name(store_name)?;
        let server = client.server_info();
        if !server.jetstream {
            return Err(ConfigError::JetStreamNotEnabled);
        }
        if parse_server_version(&server.version) < Some(MIN_SCHEDULES_VERSION) {
            let (a, b, c) = MIN_SCHEDULES_VERSION;
            return Err(ConfigError::ServerTooOld {
                version: server.version.clone(),
                need: format!("reminders need message schedules of nats-server {a}.{b}.{c}"),
            });
        }
        let events = layout::stream_name(store_name, config.namespace.as_ref());
        let stream_name = layout::reminder_stream(&events);
        let prefix = layout::reminder_prefix(&events);
        let want = StreamConfig {
            name: stream_name.clone(),
            subjects: vec![format!("{prefix}>")],
            retention: RetentionPolicy::WorkQueue,
            storage: match config.storage {
                Storage::File => StorageType::File,
                Storage::Memory => StorageType::Memory,
            },
            num_replicas: config.replicas,
            allow_direct: true,
            allow_rollup: true,
            allow_message_schedules: true,
            description: Some(format!("Aether reminders of stream {events}")),
            ..Default::default()
        };
        let js = jetstream::ContextBuilder::new()
            .timeout(config.request_timeout)
            .build(client.clone());
        let what = format!("opening reminder stream {stream_name}");
        let stream = match js.get_stream(&stream_name).await {
            Ok(stream) => stream,
            Err(_) => while_settling(&what, SETTLE_PATIENCE, || {
                js.get_or_create_stream(want.clone())
            })
            .await
            .map_err(|e| ConfigError::Server {
                context: what.clone(),
                source: Box::new(e),
            })?,
        };
        let found = &stream.cached_info().config;
        let mut differences = Vec::new();
        if !found.allow_message_schedules {
            differences.push("allow_msg_schedules is off (nothing would fire)");
        }
        if found.retention != RetentionPolicy::WorkQueue {
            differences.push("retention is not work-queue (settled firings would stay)");
        }
        if !found.allow_direct {
            differences.push("allow_direct is off (reading and listing need direct gets)");
        }
        if !found.allow_rollup {
            differences.push("allow_rollup_hdrs is off (a firing replaces an unsettled one)");
        }
        if !found.subjects.iter().any(|s| *s == format!("{prefix}>")) {
            differences.push("its subjects do not include the reminder subjects");
        }
        if !differences.is_empty() {
            return Err(ConfigError::IncompatibleStream {
                stream: stream_name,
                differences: differences.join("; "),
            });
        }
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                stream,
                stream_name,
                prefix,
                timeout: config.request_timeout,
                ack_wait,
            }),
        })
    }

    /// The reminder stream's name.
    pub fn stream_name(&self) -> &str {
        &self.inner.stream_name
    }

    /// The subject holding reminder `key`'s schedule.
    pub fn schedule_subject(&self, key: &ReminderKey) -> String {
        self.subject("s", key)
    }

    /// The subject `key`'s firings are published to.
    pub fn firing_subject(&self, key: &ReminderKey) -> String {
        self.subject("f", key)
    }

    /// The schedule subject of `key`, checked against [`MAX_SUBJECT_BYTES`].
    fn checked_subject(&self, key: &ReminderKey) -> Result<String, ReminderError> {
        key.validate()?;
        let subject = self.schedule_subject(key);
        if subject.len() > MAX_SUBJECT_BYTES {
            return Err(ReminderError::Invalid {
                key: Box::new(key.clone()),
                reason: format!(
                    "its type, actor id and name make a subject of {} bytes once escaped; at \
                     most {MAX_SUBJECT_BYTES} fit the server's request line",
                    subject.len()
                ),
            });
        }
        Ok(subject)
    }

    fn subject(&self, kind: &str, key: &ReminderKey) -> String {
        format!(
            "{}{kind}.{}.{}.{}",
            self.inner.prefix,
            layout::actor_token(&key.actor_type),
            layout::actor_token(&key.actor_id),
            layout::actor_token(&key.name)
        )
    }

    /// The key a subject of this stream names, with its kind (`s` or `f`).
    fn key_of(&self, subject: &str) -> Result<(String, ReminderKey), ReminderError> {
        let malformed = |reason: &str| ReminderError::Malformed {
            subject: subject.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = subject
            .strip_prefix(&self.inner.prefix)
            .ok_or_else(|| malformed("not a subject of this reminder stream"))?;
        let mut tokens = rest.split('.');
        let (Some(kind), Some(ty), Some(id), Some(name), None) = (
            tokens.next(),
            tokens.next(),
            tokens.next(),
            tokens.next(),
            tokens.next(),
        ) else {
            return Err(malformed(
                "expected <kind>.<type>.<actor>.<name> after the prefix",
            ));
        };
        let decode = |token: &str| {
            layout::actor_from_token(token).ok_or_else(|| malformed("a token that does not decode"))
        };
        let key = ReminderKey::new(decode(ty)?, decode(id)?, decode(name)?);
        Ok((kind.to_owned(), key))
    }

    /// The reminder a stored schedule message describes.
    fn decode(
        &self,
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: Bytes,
    ) -> Result<Reminder, ReminderError> {
        let (_, key) = self.key_of(subject)?;
        let malformed = |reason: &str| ReminderError::Malformed {
            subject: subject.to_owned(),
            reason: reason.to_owned(),
        };
        let when = match (
            header_millis(headers, HEADER_AT),
            header_millis(headers, HEADER_EVERY),
        ) {
            (Some(at), None) => When::At(from_unix_millis(at)),
            (None, Some(every)) => When::Every(Duration::from_millis(every)),
            _ => {
                return Err(malformed(
                    "neither Aether-Reminder-At nor Aether-Reminder-Every",
                ));
            }
        };
        Ok(Reminder::new(key, when, payload))
    }

    /// A firing handed out by the due consumer, or why it is malformed.
    fn firing(&self, message: &jetstream::Message) -> Result<Firing, ReminderError> {
        let subject = message.subject.as_str();
        let (kind, key) = self.key_of(subject)?;
        let malformed = |reason: &str| ReminderError::Malformed {
            subject: subject.to_owned(),
            reason: reason.to_owned(),
        };
        if kind != "f" {
            return Err(malformed("not a firing subject"));
        }
        let headers = message.headers.as_ref();
        let (due, repeats) = match (
            header_millis(headers, HEADER_AT),
            header_millis(headers, HEADER_EVERY),
        ) {
            (Some(at), None) => (from_unix_millis(at), false),
            (None, Some(every)) => {
                // The tick that fired: the next one the server announces, less one interval.
                let next = headers
                    .and_then(|h| h.get(NATS_SCHEDULE_NEXT))
                    .and_then(|v| parse_rfc3339_millis(v.as_str()))
                    .ok_or_else(|| malformed("a repeating firing without Nats-Schedule-Next"))?;
                (from_unix_millis(next.saturating_sub(every)), true)
            }
            _ => {
                return Err(malformed(
                    "neither Aether-Reminder-At nor Aether-Reminder-Every",
                ));
            }
        };
        let delivery = message.info().map(|i| i.delivered).unwrap_or(1);
        Ok(Firing {
            key,
            due,
            repeats,
            payload: message.payload.clone(),
            delivery: u64::try_from(delivery).unwrap_or(1),
        })
    }
}

/// A NATS failure while `context`, classified by aether-nats.
fn failure<E: aether_nats::classify::NatsError>(context: String, e: E) -> ReminderError {
    ReminderError::Store {
        source: store_error(context.clone(), e),
        context,
    }
}

fn header_millis(headers: Option<&HeaderMap>, name: &str) -> Option<u64> {
    headers?.get(name)?.as_str().trim().parse().ok()
}

fn parse_rfc3339_millis(text: &str) -> Option<u64> {
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// `millis` (since 1970) as an RFC 3339 UTC time with milliseconds, as `Nats-Schedule: @at`
/// takes it (`2026-12-06T19:00:00.123Z`).
pub fn rfc3339(millis: u64) -> Option<String> {
    let nanos = i128::from(millis) * 1_000_000;
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()?;
    t.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

#[async_trait::async_trait]
impl ReminderStore for JetStreamReminders {
    async fn set(&self, reminder: &Reminder) -> Result<(), ReminderError> {
        reminder.validate()?;
        let key = &reminder.key;
        let subject = self.checked_subject(key)?;
        let mut headers = HeaderMap::new();
        match reminder.when {
            When::At(time) => {
                let millis = unix_millis(time).unwrap_or(0);
                let at = rfc3339(millis).ok_or_else(|| ReminderError::Invalid {
                    key: Box::new(key.clone()),
                    reason: "the time cannot be written as RFC 3339".into(),
                })?;
                headers.insert(NATS_SCHEDULE, format!("@at {at}").as_str());
                headers.insert(HEADER_AT, millis.to_string().as_str());
            }
            When::Every(interval) => {
                let millis = interval.as_millis();
                headers.insert(NATS_SCHEDULE, format!("@every {millis}ms").as_str());
                headers.insert(HEADER_EVERY, millis.to_string().as_str());
            }
            // `When` is non-exhaustive for users, not for this crate; kept for the future.
            #[allow(unreachable_patterns)]
            _ => {
                return Err(ReminderError::Unsupported {
                    reason: format!("schedule {:?}", reminder.when),
                });
            }
        }
        headers.insert(NATS_SCHEDULE_TARGET, self.firing_subject(key).as_str());
        // At most one unsettled firing per reminder: a newer one replaces it.
        headers.insert(NATS_SCHEDULE_ROLLUP, "sub");
        let context = || format!("setting reminder {key}");
        let js = jetstream::ContextBuilder::new()
            .timeout(self.inner.timeout)
            .build(self.inner.client.clone());
        let ack = js
            .publish_with_headers(subject, headers, reminder.payload.clone())
            .await
            .map_err(|e| failure(context(), e))?;
        ack.await.map_err(|e| failure(context(), e))?;
        Ok(())
    }

    async fn cancel(&self, key: &ReminderKey) -> Result<bool, ReminderError> {
        key.validate()?;
        // One purge covers the schedule and a firing not yet settled: `*` is the kind token.
        let filter = format!(
            "{}*.{}.{}.{}",
            self.inner.prefix,
            layout::actor_token(&key.actor_type),
            layout::actor_token(&key.actor_id),
            layout::actor_token(&key.name)
        );
        let context = || format!("cancelling reminder {key}");
        let purged = self
            .inner
            .stream
            .purge()
            .filter(filter)
            .await
            .map_err(|e| failure(context(), e))?;
        Ok(purged.purged > 0)
    }

    async fn get(&self, key: &ReminderKey) -> Result<Option<Reminder>, ReminderError> {
        let subject = self.checked_subject(key)?;
        match self
            .inner
            .stream
            .direct_get_last_for_subject(subject.clone())
            .await
        {
            Ok(message) => self
                .decode(&subject, Some(&message.headers), message.payload)
                .map(Some),
            Err(e) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => {
                let context = format!("reading reminder {key}");
                Err(failure(context, e))
            }
        }
    }

    async fn list(&self, actor_type: &str, actor_id: &str) -> Result<Vec<Reminder>, ReminderError> {
        aether_core::reminder::validate_actor(actor_type, actor_id)?;
        let filter = format!(
            "{}s.{}.{}.*",
            self.inner.prefix,
            layout::actor_token(actor_type),
            layout::actor_token(actor_id)
        );
        let context = || format!("listing the reminders of {actor_type} {actor_id:?}");
        let mut from = 1;
        let mut found = Vec::new();
        loop {
            let page = aether_nats::direct::batch(
                &self.inner.client,
                &self.inner.stream_name,
                &filter,
                from,
                LIST_PAGE,
                self.inner.timeout,
                &context,
            )
            .await
            .map_err(|source| ReminderError::Store {
                context: context(),
                source,
            })?;
            let Some(last) = page.last().map(|r| r.seq) else {
                break;
            };
            let full = page.len() >= LIST_PAGE;
            for record in page {
                // Someone else's message on a schedule subject is skipped, not fatal.
                if let Ok(reminder) =
                    self.decode(&record.subject, record.headers.as_ref(), record.payload)
                {
                    found.push(reminder);
                }
            }
            if !full {
                break;
            }
            from = last + 1;
        }
        found.sort_by(|a, b| a.key.name.cmp(&b.key.name));
        Ok(found)
    }

    async fn due(&self) -> Result<DueFirings, ReminderError> {
        let filter = format!("{}f.>", self.inner.prefix);
        let context = || format!("reading the firings of {}", self.inner.stream_name);
        let consumer = while_settling(&context(), SETTLE_PATIENCE, || {
            self.inner.stream.get_or_create_consumer(
                DUE_CONSUMER,
                pull::Config {
                    durable_name: Some(DUE_CONSUMER.to_owned()),
                    filter_subject: filter.clone(),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: self.inner.ack_wait,
                    max_ack_pending: 20_000,
                    description: Some("Aether: reminder firings, shared by every reader".into()),
                    ..Default::default()
                },
            )
        })
        .await
        .map_err(|e| failure(context(), e))?;
        // The consumer's own ack wait (the first reader's): progress is reported in time for it.
        let keep_alive = consumer.cached_info().config.ack_wait / 3;
        let messages = consumer
            .stream()
            .max_messages_per_batch(PULL_BATCH)
            .messages()
            .await
            .map_err(|e| failure(context(), e))?;
        let this = self.clone();
        let stream = messages.then(move |next| {
            let this = this.clone();
            async move {
                let message = next.map_err(|e| {
                    let context = format!("reading the firings of {}", this.inner.stream_name);
                    failure(context, e)
                })?;
                match this.firing(&message) {
                    Ok(firing) => {
                        Ok(Due::new(firing, Box::new(Pending { message })).keep_alive(keep_alive))
                    }
                    Err(e) => {
                        // Never deliverable: dropped, so it is not handed out forever.
                        let _ = message.ack_with(AckKind::Term).await;
                        Err(e)
                    }
                }
            }
        });
        Ok(Box::pin(stream))
    }
}

/// A firing handed out and not yet settled: its message, acknowledged by the outcome.
struct Pending {
    message: jetstream::Message,
}

#[async_trait::async_trait]
impl Settle for Pending {
    async fn settle(self: Box<Self>, outcome: Settled) -> Result<(), ReminderError> {
        let result = match outcome {
            // Confirmed by the server: once this returns, no reader gets the firing again.
            Settled::Delivered => self.message.double_ack().await,
            Settled::Retry(after) => self.message.ack_with(AckKind::Nak(Some(after))).await,
            Settled::Undeliverable(_) => self.message.ack_with(AckKind::Term).await,
            #[allow(unreachable_patterns)]
            _ => self.message.ack_with(AckKind::Nak(None)).await,
        };
        result.map_err(|e| ack_failed(&self.message, "settling", e))
    }

    async fn progress(&self) -> Result<(), ReminderError> {
        self.message
            .ack_with(AckKind::Progress)
            .await
            .map_err(|e| ack_failed(&self.message, "reporting progress on", e))
    }
}

fn ack_failed(message: &jetstream::Message, what: &str, e: async_nats::Error) -> ReminderError {
    ReminderError::Store {
        context: format!("{what} a firing on {}", message.subject),
        source: StoreError::Unavailable {
            context: "acknowledging".into(),
            source: Some(e.to_string().into()),
        },
    }
}
