//! Long reads: a replay consumer that the store names, reads in order and deletes.
//!
//! An ordered push consumer filtered on one actor's subject (no acks, flow control, heartbeats,
//! in memory, one replica), created for one read and deleted when the read ends, fails or is
//! dropped. Its inactive threshold is short, the backstop for a process that dies mid-read. A
//! gap (a consumer sequence that skips, a heartbeat naming a later delivery) or a silent consumer
//! replaces it with a new one from the next sequence, as an ordered consumer does.
//!
//! A store holds at most `JetStreamConfig::max_replay_consumers` of these at once (a permit each);
//! reads beyond that, and reads the server refuses a consumer for, use direct gets instead.

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, ReplayPolicy, push};
use async_nats::{Message, StatusCode, Subscriber};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::OwnedSemaphorePermit;
use uuid::Uuid;

use super::JetStreamEventStore;
use super::direct::RawRecord;
use crate::error::backend;
use aether_core::StoreError;

/// How long the server keeps a replay consumer nobody listens to (the backstop when a process
/// dies mid-read; a read that ends deletes its consumer at once).
pub(super) const INACTIVE_THRESHOLD: Duration = Duration::from_secs(5);
/// How often an idle replay consumer sends a heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// Silence after which the consumer is presumed gone (a server restart) and replaced.
const SILENCE: Duration = Duration::from_secs(6);
/// How many times one read replaces its consumer before giving up.
const MAX_RESETS: u32 = 5;

/// One read's consumer: its name, its deliveries, where the read stands.
pub(super) struct ReplayConsumer {
    store: JetStreamEventStore,
    actor_id: String,
    subject: String,
    name: String,
    deliveries: Subscriber,
    /// Consumer sequence of the last delivery.
    delivered: u64,
    /// The stream sequence to resume from after a reset.
    next: u64,
    resets: u32,
    /// Whether the consumer may still exist on the server (to be deleted).
    live: bool,
    _permit: OwnedSemaphorePermit,
}

impl std::fmt::Debug for ReplayConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayConsumer")
            .field("name", &self.name)
            .field("subject", &self.subject)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl ReplayConsumer {
    /// Creates a consumer delivering `subject`'s records from stream sequence `start`.
    pub(super) async fn open(
        store: &JetStreamEventStore,
        actor_id: &str,
        subject: &str,
        start: u64,
        permit: OwnedSemaphorePermit,
    ) -> Result<Self, StoreError> {
        let (name, deliveries) = create(store, actor_id, subject, start).await?;
        Ok(Self {
            store: store.clone(),
            actor_id: actor_id.to_owned(),
            subject: subject.to_owned(),
            name,
            deliveries,
            delivered: 0,
            next: start,
            resets: 0,
            live: true,
            _permit: permit,
        })
    }

    /// The next record, in stream order.
    pub(super) async fn next(&mut self) -> Result<RawRecord, StoreError> {
        loop {
            let message = match tokio::time::timeout(SILENCE, self.deliveries.next()).await {
                Ok(Some(message)) => message,
                Ok(None) | Err(_) => {
                    self.reset("no delivery or heartbeat").await?;
                    continue;
                }
            };
            match message.status {
                None => match self.in_order(message) {
                    Some(record) => return Ok(record),
                    None => self.reset("a delivery out of order").await?,
                },
                Some(StatusCode::IDLE_HEARTBEAT) => {
                    if self.control(&message).await {
                        self.reset("a heartbeat naming a missed delivery").await?;
                    }
                }
                // Anything else (the consumer deleted, a leader change): start again.
                Some(_) => self.reset("a status from the server").await?,
            }
        }
    }

    /// The delivery as a record when it is the next one of this consumer; `None` on a gap.
    fn in_order(&mut self, message: Message) -> Option<RawRecord> {
        // Its position is in its reply subject (the JetStream ack subject).
        let delivery = async_nats::jetstream::Message {
            message,
            context: self.store.inner.js.clone(),
        };
        let (consumer_seq, stream_seq) = {
            let info = delivery.info().ok()?;
            (info.consumer_sequence, info.stream_sequence)
        };
        if consumer_seq != self.delivered + 1 {
            return None;
        }
        self.delivered = consumer_seq;
        self.next = stream_seq + 1;
        let message = delivery.message;
        Some(RawRecord {
            seq: stream_seq,
            headers: message.headers,
            payload: message.payload,
        })
    }

    /// Answers a flow-control request or a stalled-consumer heartbeat; `true` when a heartbeat
    /// says the consumer delivered more than this read received.
    async fn control(&self, message: &Message) -> bool {
        let client = &self.store.inner.client;
        if let Some(reply) = &message.reply {
            // Flow control: the server waits for this before sending more.
            let _ = client.publish(reply.clone(), Bytes::new()).await;
            return false;
        }
        let headers = message.headers.as_ref();
        if let Some(stalled) = headers.and_then(|h| h.get("Nats-Consumer-Stalled")) {
            let _ = client.publish(stalled.to_string(), Bytes::new()).await;
        }
        headers
            .and_then(|h| h.get(async_nats::header::NATS_LAST_CONSUMER))
            .and_then(|v| v.as_str().parse::<u64>().ok())
            .is_some_and(|last| last != self.delivered)
    }

    /// Replaces the consumer with a new one from the next sequence.
    async fn reset(&mut self, why: &str) -> Result<(), StoreError> {
        self.resets += 1;
        tracing::debug!(consumer = %self.name, why, resets = self.resets, "replacing a replay consumer");
        self.delete().await;
        if self.resets > MAX_RESETS {
            return Err(StoreError::Timeout {
                context: format!(
                    "replaying actor {:?}: the replay consumer was replaced {MAX_RESETS} times \
                     ({why})",
                    self.actor_id
                ),
            });
        }
        let (name, deliveries) =
            create(&self.store, &self.actor_id, &self.subject, self.next).await?;
        self.name = name;
        self.deliveries = deliveries;
        self.delivered = 0;
        self.live = true;
        Ok(())
    }

    /// Deletes the consumer on the server (a failure is left to the inactive threshold).
    async fn delete(&mut self) {
        if !std::mem::take(&mut self.live) {
            return;
        }
        let _ = self.deliveries.unsubscribe().await;
        if let Err(e) = self.store.inner.stream.delete_consumer(&self.name).await {
            tracing::debug!(consumer = %self.name, error = %e, "deleting a replay consumer failed; it expires when inactive");
        }
    }

    /// Ends the read: deletes the consumer now.
    pub(super) async fn close(mut self) {
        self.delete().await;
    }
}

impl Drop for ReplayConsumer {
    fn drop(&mut self) {
        if !self.live {
            return;
        }
        // Dropped mid-read: delete it in the background (the unsubscription alone would leave it
        // to the inactive threshold).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let stream = self.store.inner.stream.clone();
            let name = std::mem::take(&mut self.name);
            runtime.spawn(async move {
                let _ = stream.delete_consumer(&name).await;
            });
        }
    }
}

/// Creates a replay consumer (subscribed first, so no delivery is missed) and returns its name
/// and deliveries.
async fn create(
    store: &JetStreamEventStore,
    actor_id: &str,
    subject: &str,
    start: u64,
) -> Result<(String, Subscriber), StoreError> {
    let context = || format!("starting a replay of actor {actor_id:?}");
    let inner = &store.inner;
    let name = format!("aether-replay-{}", Uuid::new_v4().simple());
    let inbox = inner.client.new_inbox();
    let deliveries = inner
        .client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| StoreError::backend(context(), e))?;
    let deliver_policy = if start <= 1 {
        DeliverPolicy::All
    } else {
        DeliverPolicy::ByStartSequence {
            start_sequence: start,
        }
    };
    inner
        .stream
        .create_consumer(push::Config {
            name: Some(name.clone()),
            deliver_subject: inbox,
            filter_subject: subject.to_owned(),
            deliver_policy,
            ack_policy: AckPolicy::None,
            max_deliver: 1,
            replay_policy: ReplayPolicy::Instant,
            flow_control: true,
            idle_heartbeat: HEARTBEAT,
            inactive_threshold: INACTIVE_THRESHOLD,
            memory_storage: true,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .map_err(|e| backend(context(), e))?;
    Ok((name, deliveries))
}
