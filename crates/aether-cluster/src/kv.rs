//! The cluster bucket: setup, and the revision-checked, TTL-carrying writes async-nats's KV API
//! does not offer (an update with a TTL, a write fenced by another key's revision).

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishErrorKind, kv};
use bytes::Bytes;

use crate::error::BoxError;

/// JetStream error codes meaning "the expected last sequence did not match".
const WRONG_LAST_SEQUENCE: [u64; 2] = [10071, 10164];

pub(crate) const H_EXPECTED_SEQ: &str = "Nats-Expected-Last-Subject-Sequence";
pub(crate) const H_EXPECTED_SUBJECT: &str = "Nats-Expected-Last-Subject-Sequence-Subject";
pub(crate) const H_TTL: &str = "Nats-TTL";
const H_KV_OPERATION: &str = "KV-Operation";

/// How long delete markers (graceful leave, expiry) stay in the bucket.
pub(crate) const MARKER_TTL: Duration = Duration::from_secs(60);

/// The bucket of cluster `name`.
/// Public: other tools find the bucket by this name.
pub fn bucket_name(cluster: &str) -> String {
    format!("aether-cluster-{cluster}")
}

/// How long a write is re-sent while the bucket's stream has no responders.
const NO_STREAM_PATIENCE: Duration = Duration::from_secs(5);

/// How long creating the bucket is tried again while the NATS cluster is still settling (the
/// request times out, or the metadata leader has no statistics from enough peers yet and answers
/// 10005, "no suitable peers for placement"). Creation is idempotent.
const SETUP_PATIENCE: Duration = Duration::from_secs(30);

/// JetStream's "no suitable peers for placement".
const NO_PLACEMENT: u64 = 10005;

/// Why a write did not happen.
#[derive(Debug)]
pub(crate) enum WriteError {
    /// The expected revision (or, for a fenced write, the fence key's revision) did not match.
    WrongRevision,
    /// The key exists (for a create).
    Exists,
    /// Anything else: the write may or may not have happened.
    Other(BoxError),
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::WrongRevision => f.write_str("wrong last revision"),
            Self::Exists => f.write_str("key exists"),
            Self::Other(e) => write!(f, "{e}"),
        }
    }
}

/// The JetStream API error code inside an error's source chain, if any.
fn jetstream_code(err: &(dyn std::error::Error + 'static)) -> Option<u64> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(js) = e.downcast_ref::<jetstream::Error>() {
            return Some(js.error_code().0);
        }
        cur = e.source();
    }
    None
}

/// The cluster's KV bucket with the writes the protocol needs.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    js: jetstream::Context,
    pub(crate) kv: kv::Store,
    /// `$KV.<bucket>.`
    prefix: String,
}

impl Bucket {
    /// Opens the bucket, creating it if it does not exist.
    pub(crate) async fn open(
        js: jetstream::Context,
        cluster: &str,
        replicas: usize,
    ) -> Result<Self, BoxError> {
        let name = bucket_name(cluster);
        let kv = match js.get_key_value(&name).await {
            Ok(kv) => kv,
            Err(_) => {
                let config = kv::Config {
                    bucket: name.clone(),
                    description: format!(
                        "Aether cluster {cluster}: node records, leader lease, shard map"
                    ),
                    history: 1,
                    num_replicas: replicas,
                    storage: jetstream::stream::StorageType::File,
                    max_value_size: 1024 * 1024,
                    limit_markers: Some(MARKER_TTL),
                    ..Default::default()
                };
                let deadline = tokio::time::Instant::now() + SETUP_PATIENCE;
                let mut pause = Duration::from_millis(50);
                loop {
                    match js.create_key_value(config.clone()).await {
                        Ok(kv) => break kv,
                        Err(e)
                            if tokio::time::Instant::now() < deadline
                                && (matches!(
                                    e.kind(),
                                    jetstream::context::CreateKeyValueErrorKind::TimedOut
                                ) || jetstream_code(&e) == Some(NO_PLACEMENT)) =>
                        {
                            tracing::warn!(bucket = %name, error = %e, "the NATS cluster cannot create the cluster bucket yet; trying again");
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(Duration::from_secs(1));
                        }
                        // Another node created it in between (or its config differs: then use it
                        // as is).
                        Err(create) => {
                            break js
                                .get_key_value(&name)
                                .await
                                .map_err(|_| Box::new(create) as BoxError)?;
                        }
                    }
                }
            }
        };
        Ok(Self {
            js,
            kv,
            prefix: format!("$KV.{name}."),
        })
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
        let started = tokio::time::Instant::now();
        let mut wait = Duration::from_millis(20);
        loop {
            let ack = self
                .js
                .publish_with_headers(self.subject(key), headers.clone(), value.clone())
                .await
                .map_err(|e| WriteError::Other(Box::new(e)))?;
            match ack.await {
                // No responders: nothing received the write (a bucket just created on another
                // server of a cluster, a stream between leaders). Sending again is safe.
                Err(e)
                    if e.kind() == PublishErrorKind::StreamNotFound
                        && started.elapsed() + wait < NO_STREAM_PATIENCE =>
                {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_millis(500));
                }
                other => return Self::outcome(other),
            }
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
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                Err(WriteError::WrongRevision)
            }
            Err(e) if jetstream_code(&e).is_some_and(|c| WRONG_LAST_SEQUENCE.contains(&c)) => {
                Err(WriteError::WrongRevision)
            }
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
        headers.insert(H_EXPECTED_SEQ, revision.to_string().as_str());
        if let Some(ttl) = ttl {
            headers.insert(H_TTL, ttl_header(ttl).as_str());
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
            match self.kv.entry(key).await {
                Ok(Some(e)) if e.operation == kv::Operation::Put => return Err(WriteError::Exists),
                // A delete or expiry marker: write over it.
                Ok(Some(e)) => expected = e.revision,
                // Gone in between (a marker expired), or a replica behind: try again from scratch.
                Ok(None) => expected = 0,
                Err(e) => return Err(WriteError::Other(Box::new(e))),
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
        headers.insert(H_EXPECTED_SEQ, fence_revision.to_string().as_str());
        headers.insert(H_EXPECTED_SUBJECT, self.subject(fence_key).as_str());
        self.publish(key, headers, value).await
    }

    /// Deletes `key` if its last revision is `revision`, leaving a marker that expires.
    pub(crate) async fn delete(&self, key: &str, revision: u64) -> Result<u64, WriteError> {
        let mut headers = HeaderMap::new();
        headers.insert(H_EXPECTED_SEQ, revision.to_string().as_str());
        headers.insert(H_KV_OPERATION, "DEL");
        headers.insert(H_TTL, ttl_header(MARKER_TTL).as_str());
        self.publish(key, headers, Bytes::new()).await
    }
}

/// `Nats-TTL` value: whole seconds (rounded up, at least 1), e.g. `5s`.
pub(crate) fn ttl_header(ttl: Duration) -> String {
    format!("{}s", whole_seconds(ttl))
}

/// Whole seconds, rounded up, at least 1: the server's TTL resolution.
pub(crate) fn whole_seconds(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}
