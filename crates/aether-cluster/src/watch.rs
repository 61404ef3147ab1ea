//! A watch of keys of the cluster bucket (a node's, of the lease, the map and the records; the
//! leader's, of the liveness keys; a `ClusterClient`'s, of `shardmap`): one push consumer on
//! `$KV.<bucket>.<key filter>`s (last value per key, then every change; no acks,
//! flow control, idle heartbeats), read here rather than through async-nats's `kv::Watch`, for
//! three things that one hides:
//! - **the consumer's lifetime**: its inactive threshold is short, so the consumer of a replaced
//!   or stopped watch leaves the server seconds after its subscription goes (the ordered consumer
//!   behind `kv::Watch` stays 30 s: nodes that reload often piled them up until the server
//!   refused new consumers, JetStream error 10026);
//! - **the end of a load**: an idle heartbeat says the consumer has delivered everything stored
//!   (the pending count on each message is only the server's running estimate: see `fetch` in
//!   `view.rs`);
//! - **failures**: a gap in the consumer sequence or a silent consumer ends the watch, and the
//!   node reloads, instead of the ordered consumer recreating a *named* consumer on its own
//!   (`$JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>`, which the documented permission block
//!   does not grant: only the unnamed `$JS.API.CONSUMER.CREATE.<stream>`).
//!
//! The consumer is not deleted explicitly: that needs `$JS.API.CONSUMER.DELETE`, which the
//! documented permission block does not grant either.

use std::str::FromStr;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use async_nats::jetstream::{self, consumer};
use async_nats::{HeaderMap, StatusCode, Subscriber};
use futures::StreamExt;
use tokio::time::Instant;

use crate::error::BoxError;

/// How often the server sends an idle heartbeat when it has nothing to deliver.
const IDLE_HEARTBEAT: Duration = Duration::from_secs(1);

/// A watch that hears nothing at all (no entry, no heartbeat) for this long has lost its
/// consumer (deleted, or gone with a restarted server) or its link.
const SILENT_AFTER: Duration = Duration::from_secs(3);

/// How long the server keeps the consumer once nobody listens on its delivery subject: the
/// watch was dropped (replaced by a reload, or the node stopped), or the client is reconnecting
/// (a consumer gone by then makes the watch silent, and the node reloads).
const INACTIVE_THRESHOLD: Duration = Duration::from_secs(2);

/// The header of a KV delete or purge (`DEL`, `PURGE`).
const KV_OPERATION: &str = "KV-Operation";

/// What the watch delivered.
#[derive(Debug)]
pub(crate) enum Delivery {
    /// The next bucket entry, in revision order.
    Entry(kv::Entry),
    /// The consumer had nothing to deliver for an idle-heartbeat interval: everything stored so
    /// far has been delivered.
    Idle,
}

/// Why the watch ended. The node reloads the bucket with a fresh watch in every case.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WatchError {
    /// The consumer sequence skipped: entries were lost (a slow subscription dropped some, or the
    /// connection was lost and came back).
    #[error("the bucket watch missed deliveries (consumer sequence {got} after {last})")]
    Gap { last: u64, got: u64 },
    /// Nothing at all arrived, not even an idle heartbeat.
    #[error("the bucket watch heard nothing for {0:?} (its consumer or link is gone)")]
    Silent(Duration),
    /// The subscription ended (the client closed).
    #[error("the bucket watch's subscription ended")]
    Ended,
    /// A delivery that is not a bucket entry.
    #[error("the bucket watch got a malformed delivery: {0}")]
    Malformed(String),
}

/// The node's watch of the bucket; see the module documentation. Dropping it unsubscribes; the
/// server then removes the consumer after [`INACTIVE_THRESHOLD`].
pub(crate) struct BucketWatch {
    subscription: Subscriber,
    client: async_nats::Client,
    /// Only for reading each delivery's metadata (`jetstream::Message::info`).
    context: jetstream::Context,
    /// `$KV.<bucket>.`
    prefix: String,
    bucket: String,
    /// The consumer sequence of the last entry delivered.
    consumer_sequence: u64,
    /// When the watch counts as silent unless something arrives.
    silent_at: Instant,
    /// Keys the consumer had to deliver when it was made (the server's count, last entry per
    /// key): a load can end once that many entries came.
    initial_pending: u64,
}

impl std::fmt::Debug for BucketWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BucketWatch")
            .field("bucket", &self.bucket)
            .field("consumer_sequence", &self.consumer_sequence)
            .finish_non_exhaustive()
    }
}

impl BucketWatch {
    /// Subscribes to a fresh inbox, then creates the consumer delivering to it (so it has
    /// interest from its first message), starting with the last entry of every key matching
    /// one of `keys` (key filters: `shardmap`, `nodes.>`).
    pub(crate) async fn start(
        client: &async_nats::Client,
        kv: &kv::Store,
        keys: &[&str],
    ) -> Result<Self, BoxError> {
        let mut filters: Vec<String> = keys.iter().map(|k| format!("{}{k}", kv.prefix)).collect();
        let (filter_subject, filter_subjects) = if filters.len() == 1 {
            (filters.remove(0), Vec::new())
        } else {
            (String::new(), filters)
        };
        let inbox = client.new_inbox();
        let subscription = client.subscribe(inbox.clone()).await?;
        let config = consumer::push::Config {
            deliver_subject: inbox,
            description: Some("aether cluster watch".to_owned()),
            deliver_policy: consumer::DeliverPolicy::LastPerSubject,
            ack_policy: consumer::AckPolicy::None,
            filter_subject,
            filter_subjects,
            replay_policy: consumer::ReplayPolicy::Instant,
            flow_control: true,
            idle_heartbeat: IDLE_HEARTBEAT,
            inactive_threshold: INACTIVE_THRESHOLD,
            num_replicas: 1,
            memory_storage: true,
            ..Default::default()
        };
        // Unnamed: `$JS.API.CONSUMER.CREATE.<stream>`, as the permission block grants.
        // The creation's answer is the consumer's info (no `CONSUMER.INFO` request, which the
        // permission block does not grant).
        let consumer = kv.stream.create_consumer(config).await?;
        let initial_pending = consumer.cached_info().num_pending;
        Ok(Self {
            subscription,
            client: client.clone(),
            context: jetstream::new(client.clone()),
            prefix: kv.prefix.clone(),
            bucket: kv.name.clone(),
            consumer_sequence: 0,
            silent_at: Instant::now() + SILENT_AFTER,
            initial_pending,
        })
    }

    /// How many entries (the last of each key) the consumer had to deliver when it was made.
    pub(crate) fn initial_pending(&self) -> u64 {
        self.initial_pending
    }

    /// The next delivery. Cancel-safe: nothing is lost if the future is dropped unfinished.
    pub(crate) async fn next(&mut self) -> Result<Delivery, WatchError> {
        loop {
            let message = tokio::time::timeout_at(self.silent_at, self.subscription.next())
                .await
                .map_err(|_| WatchError::Silent(SILENT_AFTER))?
                .ok_or(WatchError::Ended)?;
            self.silent_at = Instant::now() + SILENT_AFTER;
            match message.status {
                None => return self.entry(message).map(Delivery::Entry),
                Some(StatusCode::IDLE_HEARTBEAT) => {
                    // A flow-control request carries a reply subject; an idle heartbeat does not.
                    if let Some(reply) = message.reply {
                        self.answer(reply.to_string());
                        continue;
                    }
                    if self.heartbeat(message.headers.as_ref())? {
                        return Ok(Delivery::Idle);
                    }
                }
                Some(_) => {} // nothing else is meant for a push consumer
            }
        }
    }

    /// Checks an idle heartbeat, which names the last consumer sequence sent, and says whether
    /// the consumer is idle: not if it waits for flow control (it names the request again,
    /// answered here).
    fn heartbeat(&self, headers: Option<&HeaderMap>) -> Result<bool, WatchError> {
        let Some(headers) = headers else {
            return Ok(true);
        };
        let sent = headers
            .get(async_nats::header::NATS_LAST_CONSUMER)
            .and_then(|s| s.as_str().parse::<u64>().ok());
        if let Some(sent) = sent.filter(|sent| *sent != self.consumer_sequence) {
            return Err(WatchError::Gap {
                last: self.consumer_sequence,
                got: sent,
            });
        }
        match headers.get("Nats-Consumer-Stalled") {
            Some(stalled) => {
                self.answer(stalled.as_str().to_owned());
                Ok(false)
            }
            None => Ok(true),
        }
    }

    /// Answers a flow-control request (`$JS.FC.<stream>.…`), without holding up the watch.
    fn answer(&self, subject: String) {
        let client = self.client.clone();
        tokio::spawn(async move {
            if let Err(e) = client.publish(subject, bytes::Bytes::new()).await {
                tracing::debug!(error = %e, "answering the bucket watch's flow control failed");
            }
        });
    }

    fn entry(&mut self, message: async_nats::Message) -> Result<kv::Entry, WatchError> {
        let message = jetstream::Message {
            message,
            context: self.context.clone(),
        };
        let info = message
            .info()
            .map_err(|e| WatchError::Malformed(format!("reading the delivery's metadata: {e}")))?;
        if info.consumer_sequence != self.consumer_sequence + 1 {
            return Err(WatchError::Gap {
                last: self.consumer_sequence,
                got: info.consumer_sequence,
            });
        }
        let (revision, created, delta) = (info.stream_sequence, info.published, info.pending);
        self.consumer_sequence = info.consumer_sequence;
        let message = message.message;
        let key = message
            .subject
            .strip_prefix(self.prefix.as_str())
            .ok_or_else(|| {
                WatchError::Malformed(format!("subject {} is not in the bucket", message.subject))
            })?
            .to_owned();
        Ok(kv::Entry {
            bucket: self.bucket.clone(),
            key,
            operation: operation(message.headers.as_ref()),
            value: message.payload,
            revision,
            delta,
            created,
            seen_current: delta == 0,
        })
    }
}

/// The KV operation of a delivery: a `KV-Operation` header (`DEL`, `PURGE`), else the server's
/// marker reason (`MaxAge` and `Purge` remove the value: a purge; `Remove`: a delete), else a
/// value. The same reading as async-nats's KV.
pub(crate) fn operation(headers: Option<&HeaderMap>) -> Operation {
    let Some(headers) = headers else {
        return Operation::Put;
    };
    if let Some(op) = headers.get(KV_OPERATION) {
        return Operation::from_str(op.as_str()).unwrap_or(Operation::Put);
    }
    match headers.get(async_nats::header::NATS_MARKER_REASON) {
        None => Operation::Put,
        Some(reason) if reason.as_str() == "Remove" => Operation::Delete,
        Some(_) => Operation::Purge,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_and_operations_read_as_the_kv_does() {
        let with = |name: &str, value: &str| {
            let mut h = HeaderMap::new();
            h.insert(name, value);
            h
        };
        assert_eq!(operation(None), Operation::Put);
        assert_eq!(operation(Some(&HeaderMap::new())), Operation::Put);
        assert_eq!(
            operation(Some(&with(KV_OPERATION, "DEL"))),
            Operation::Delete
        );
        assert_eq!(
            operation(Some(&with(KV_OPERATION, "PURGE"))),
            Operation::Purge
        );
        let marker = |reason| operation(Some(&with("Nats-Marker-Reason", reason)));
        assert_eq!(marker("MaxAge"), Operation::Purge);
        assert_eq!(marker("Purge"), Operation::Purge);
        assert_eq!(marker("Remove"), Operation::Delete);
    }
}
