//! The cluster bucket: setup, and the revision-checked, TTL-carrying writes async-nats's KV API
//! does not offer (an update with a TTL, a write fenced by another key's revision).

use std::sync::Arc;
use std::time::Duration;

use aether_nats::permissions::Refusal;
pub(crate) use aether_nats::publish::Fence;
use aether_nats::publish::{apply_ttl, publish_patiently, refused_for_sequence};
use aether_nats::settle::{SETTLE_PATIENCE, while_settling};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, kv};
use async_nats::{HeaderMap, HeaderName};
use bytes::Bytes;

use crate::error::BoxError;
use crate::refusals::{Guard, Scope};

pub(crate) use aether_nats::publish::whole_seconds;

/// A KV delete: the marker's operation header.
const KV_OPERATION: HeaderName = HeaderName::from_static("KV-Operation");

/// How long delete markers (graceful leave, expiry) stay in the bucket.
pub(crate) const MARKER_TTL: Duration = Duration::from_secs(60);

/// The bucket of cluster `name`.
/// Public: other tools find the bucket by this name.
pub fn bucket_name(cluster: &str) -> String {
    format!("aether-cluster-{cluster}")
}

/// How long a write is re-sent while the bucket's stream has no responders.
const NO_STREAM_PATIENCE: Duration = Duration::from_secs(5);

/// Why a write did not happen.
#[derive(Debug)]
pub(crate) enum WriteError {
    /// The expected revision (or, for a fenced write, the fence key's revision) did not match.
    WrongRevision,
    /// The key exists (for a create).
    Exists,
    /// The server refused a subject the request needs for the user's permissions (reported
    /// only with a permission watch): nothing was written unless the refused subject is the
    /// reply inbox.
    Refused(Refusal),
    /// Anything else: the write may or may not have happened.
    Other(BoxError),
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::WrongRevision => f.write_str("wrong last revision"),
            Self::Exists => f.write_str("key exists"),
            Self::Refused(refusal) => write!(
                f,
                "permission denied: the server refused {refusal} (the user's permissions)"
            ),
            Self::Other(e) => write!(f, "{e}"),
        }
    }
}

/// The cluster's KV bucket with the writes the protocol needs.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    js: jetstream::Context,
    pub(crate) kv: kv::Store,
    /// `$KV.<bucket>.`
    prefix: String,
    /// With a permission watch: the server's refusals that concern a request end it.
    guard: Option<Arc<Guard>>,
}

/// Consumers the bucket's stream allows: one watch per member and per `ClusterClient`, the
/// leader's second, and replaced watches for their last 2 s. Set explicitly because
/// nats-server 2.15 limits a stream that sets none to 1,000 consumers, which would cap a cluster
/// below 1,000 members.
pub(crate) const MAX_CONSUMERS: i32 = 100_000;

/// The bucket's stream, as a KV bucket's (what async-nats's `create_key_value` makes, see
/// docs/cluster.md "The bucket"), with the consumer limit set.
fn stream_config(cluster: &str, replicas: usize) -> jetstream::stream::Config {
    let name = bucket_name(cluster);
    jetstream::stream::Config {
        name: format!("KV_{name}"),
        description: Some(format!(
            "Aether cluster {cluster}: node records, leader lease, shard map"
        )),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_message_size: 1024 * 1024,
        max_consumers: MAX_CONSUMERS,
        storage: jetstream::stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        allow_direct: true,
        num_replicas: replicas.max(1),
        discard: jetstream::stream::DiscardPolicy::New,
        allow_message_ttl: true,
        subject_delete_marker_ttl: Some(MARKER_TTL),
        ..Default::default()
    }
}

impl Bucket {
    /// Opens the bucket, creating it if it does not exist. With `guard`, its reads and writes
    /// end at once when the server refuses them (see `crate::refusals`); opening itself is
    /// guarded by the caller.
    pub(crate) async fn open(
        js: jetstream::Context,
        cluster: &str,
        replicas: usize,
        guard: Option<Arc<Guard>>,
    ) -> Result<Self, BoxError> {
        let name = bucket_name(cluster);
        let kv = match js.get_key_value(&name).await {
            Ok(kv) => kv,
            Err(_) => {
                let config = stream_config(cluster, replicas);
                // Creation is idempotent: tried again while the NATS cluster settles.
                let created = while_settling(
                    &format!("creating the cluster bucket {name}"),
                    SETTLE_PATIENCE,
                    || js.create_stream(config.clone()),
                )
                .await;
                // Bound as a KV bucket (a `STREAM.INFO`), whoever created it: another node may
                // have in between (its config then stands as it is).
                match (created, js.get_key_value(&name).await) {
                    (_, Ok(kv)) => kv,
                    (Err(create), Err(_)) => return Err(Box::new(create)),
                    (Ok(_), Err(bind)) => return Err(Box::new(bind)),
                }
            }
        };
        Ok(Self {
            js,
            kv,
            prefix: format!("$KV.{name}."),
            guard,
        })
    }

    /// The last entry of `key` (a value, or a delete or expiry marker), if any.
    pub(crate) async fn entry(&self, key: &str) -> Result<Option<kv::Entry>, WriteError> {
        let read = || async {
            self.kv
                .entry(key)
                .await
                .map_err(|e| WriteError::Other(Box::new(e)))
        };
        self.read_key(key, read()).await
    }

    /// The last entry of `key` as the stream leader has it (`$JS.API.STREAM.MSG.GET`), never
    /// from a replica that lags: for decisions a stale read must not make (that a member is
    /// gone, the revision a failover fences on).
    pub(crate) async fn entry_from_leader(
        &self,
        key: &str,
    ) -> Result<Option<kv::Entry>, WriteError> {
        let subject = self.subject(key);
        let read = || async {
            match self
                .kv
                .stream
                .get_last_raw_message_by_subject(&subject)
                .await
            {
                Ok(message) => Ok(Some(kv::Entry {
                    bucket: self.kv.name.clone(),
                    key: key.to_owned(),
                    operation: crate::watch::operation(Some(&message.headers)),
                    value: message.payload,
                    revision: message.sequence,
                    delta: 0,
                    created: message.time,
                    seen_current: false,
                })),
                Err(e)
                    if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
                {
                    Ok(None)
                }
                Err(e) => Err(WriteError::Other(Box::new(e))),
            }
        };
        self.read_key(key, read()).await
    }

    /// Runs `read` of `key`, ended at once with a permission watch by a refusal that concerns
    /// the key.
    async fn read_key<T>(
        &self,
        key: &str,
        read: impl std::future::Future<Output = Result<T, WriteError>>,
    ) -> Result<T, WriteError> {
        match &self.guard {
            None => read.await,
            // Boxed: the race would hold the read twice in every caller's future.
            Some(guard) => guard
                .watch(
                    |r| guard.concerns_bucket(r, Scope::Key(key)),
                    Box::pin(read),
                )
                .await
                .unwrap_or_else(|refusal| Err(WriteError::Refused(refusal))),
        }
    }

    /// Fails unless the bucket's stream has per-message TTLs and delete markers: without them a
    /// dead node's record or a lapsed lease would never be seen to go (a bucket created by
    /// something else than Aether, say).
    pub(crate) async fn check_ttl_support(&self) -> Result<(), BoxError> {
        let status = self
            .kv
            .status()
            .await
            .map_err(|e| Box::new(e) as BoxError)?;
        let config = &status.info.config;
        if !config.allow_message_ttl || config.subject_delete_marker_ttl.is_none() {
            return Err(format!(
                "bucket {} exists without per-message TTLs and delete markers \
                 (stream allow_msg_ttl and subject_delete_marker_ttl); delete it or let Aether create it",
                status.bucket
            )
            .into());
        }
        Ok(())
    }

    pub(crate) fn subject(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    async fn publish(
        &self,
        key: &str,
        headers: HeaderMap,
        value: Bytes,
    ) -> Result<u64, WriteError> {
        // No responders: nothing received the write (a bucket just created on another server
        // of a cluster, a stream between leaders). Sending again is safe, for a while.
        let subject = self.subject(key).into();
        let ack = || {
            publish_patiently(
                &self.js,
                &subject,
                || {
                    PublishMessage::build()
                        .payload(value.clone())
                        .headers(headers.clone())
                },
                NO_STREAM_PATIENCE,
            )
        };
        match &self.guard {
            None => Self::outcome(ack().await),
            // Boxed: the race would hold the publish twice in every caller's future.
            Some(guard) => match guard
                .watch(
                    |r| guard.concerns_bucket(r, Scope::Key(key)),
                    Box::pin(ack()),
                )
                .await
            {
                Ok(ack) => Self::outcome(ack),
                Err(refusal) => Err(WriteError::Refused(refusal)),
            },
        }
    }

    fn outcome(
        ack: Result<
            async_nats::jetstream::publish::PublishAck,
            async_nats::jetstream::context::PublishError,
        >,
    ) -> Result<u64, WriteError> {
        match ack {
            Ok(ack) => Ok(ack.sequence),
            Err(e) if refused_for_sequence(&e) => Err(WriteError::WrongRevision),
            Err(e) => Err(WriteError::Other(Box::new(e))),
        }
    }

    /// Writes `key` if its last revision is `revision` (0: the key has never been written or its
    /// markers are gone), with a per-message TTL if given. Returns the new revision.
    pub(crate) async fn update(
        &self,
        key: &str,
        value: Bytes,
        revision: u64,
        ttl: Option<Duration>,
    ) -> Result<u64, WriteError> {
        let mut headers = HeaderMap::new();
        Fence::subject_at(revision).apply(&mut headers);
        if let Some(ttl) = ttl {
            apply_ttl(&mut headers, ttl);
        }
        self.publish(key, headers, value).await
    }

    /// Creates `key` if it holds no value (never written, deleted, or expired), with an optional
    /// TTL. `Exists` when it holds a value.
    pub(crate) async fn create(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<u64, WriteError> {
        let mut expected = 0;
        for _ in 0..5 {
            match self.update(key, value.clone(), expected, ttl).await {
                Err(WriteError::WrongRevision) => {}
                other => return other,
            }
            match self.entry(key).await {
                Ok(Some(e)) if e.operation == kv::Operation::Put => return Err(WriteError::Exists),
                // A delete or expiry marker: write over it.
                Ok(Some(e)) => expected = e.revision,
                // Gone in between (a marker expired), or a replica behind: try again from scratch.
                Ok(None) => expected = 0,
                Err(e) => return Err(e),
            }
        }
        Err(WriteError::WrongRevision)
    }

    /// Writes `key` only if `fence_key`'s last revision is `fence_revision`: the leader's map write,
    /// refused by the server once the lease has moved on.
    pub(crate) async fn fenced_put(
        &self,
        key: &str,
        value: Bytes,
        fence_key: &str,
        fence_revision: u64,
    ) -> Result<u64, WriteError> {
        let mut headers = HeaderMap::new();
        Fence {
            last_sequence: fence_revision,
            of_subject: Some(&self.subject(fence_key)),
        }
        .apply(&mut headers);
        self.publish(key, headers, value).await
    }

    /// Marks `key` purged if `fence` holds, leaving a marker that expires: what a record's
    /// expiry looks like to a watcher (a failed member). Written by the leader when the member's
    /// liveness key is gone, or by a node that confirmed the member dead, each fenced on the
    /// liveness key's revision it read (so a member that beat since keeps its record).
    pub(crate) async fn purge(&self, key: &str, fence: Fence<'_>) -> Result<u64, WriteError> {
        let mut headers = HeaderMap::new();
        fence.apply(&mut headers);
        headers.insert(KV_OPERATION, "PURGE");
        apply_ttl(&mut headers, MARKER_TTL);
        self.publish(key, headers, Bytes::new()).await
    }

    /// Writes `key` unconditionally (a remembered actor's mark).
    pub(crate) async fn put(&self, key: &str, value: Bytes) -> Result<u64, WriteError> {
        self.publish(key, HeaderMap::new(), value).await
    }

    /// Purges `key` unconditionally, leaving a marker that expires.
    pub(crate) async fn remove(&self, key: &str) -> Result<u64, WriteError> {
        let mut headers = HeaderMap::new();
        headers.insert(KV_OPERATION, "PURGE");
        apply_ttl(&mut headers, MARKER_TTL);
        self.publish(key, headers, Bytes::new()).await
    }

    /// The keys under `prefix` that hold a value, read by batched direct gets (no consumer:
    /// nothing is left on the server). The bucket keeps one message per key.
    pub(crate) async fn keys_under(
        &self,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Vec<String>, aether_core::StoreError> {
        const PAGE: usize = 1024;
        let stream = format!("KV_{}", self.kv.name);
        let filter = format!("{}{prefix}>", self.prefix);
        let context = || format!("listing the keys under {prefix} of {stream}");
        let client = self.js.client();
        let mut keys = Vec::new();
        let mut from = 1;
        loop {
            let page = aether_nats::direct::batch(
                &client, &stream, &filter, from, PAGE, timeout, &context,
            )
            .await?;
            let Some(last) = page.last().map(|r| r.seq) else {
                break;
            };
            let full = page.len() >= PAGE;
            for record in page {
                let deleted = record
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(KV_OPERATION))
                    .is_some_and(|op| op.as_str() != "PUT");
                if let Some(key) = record.subject.strip_prefix(&self.prefix)
                    && !deleted
                {
                    keys.push(key.to_owned());
                }
            }
            if !full {
                break;
            }
            from = last + 1;
        }
        Ok(keys)
    }

    /// Deletes `key` if its last revision is `revision`, leaving a marker that expires.
    pub(crate) async fn delete(&self, key: &str, revision: u64) -> Result<u64, WriteError> {
        let mut headers = HeaderMap::new();
        Fence::subject_at(revision).apply(&mut headers);
        headers.insert(KV_OPERATION, "DEL");
        apply_ttl(&mut headers, MARKER_TTL);
        self.publish(key, headers, Bytes::new()).await
    }
}
