//! Opening a [`JetStreamEventStore`]: the server checks (JetStream enabled, version for atomic
//! batches), the configuration checks, and creating or reusing the stream and the snapshot bucket.

use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};

use aether_core::Namespace;
use async_nats::jetstream::stream::{Config as StreamConfig, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, kv};

use super::{Inner, JetStreamEventStore};
use crate::cache::Bounded;
use crate::config::{JetStreamConfig, Storage};
use crate::error::{ConfigError, jetstream_code};
use crate::layout;
use crate::metrics::{CacheMetrics, StoreMetrics};
use crate::server_version::{MIN_SERVER_VERSION, parse_server_version};

/// Attempts at creating the stream or bucket when the server times out.
const SETUP_ATTEMPTS: usize = 3;
/// JetStream's "no suitable peers for placement": a cluster with a peer offline for the moment
/// (it lagged under load, or is restarting). Creating is tried again for a few seconds.
const NO_PLACEMENT: u64 = 10005;
const PLACEMENT_ATTEMPTS: usize = 12;

/// The wait before placement attempt `attempt + 1`: 100 ms more each time, at most 1 s
/// (about 7 s in all).
fn placement_backoff(attempt: usize) -> std::time::Duration {
    std::time::Duration::from_millis(100 * attempt.min(10) as u64)
}
/// Room left for headers when checking an event against the server's `max_payload`.
const HEADER_ALLOWANCE: usize = 512;

fn desired_stream(
    name: &str,
    subject_prefix: &str,
    config: &JetStreamConfig,
    atomic: bool,
) -> StreamConfig {
    StreamConfig {
        name: name.to_owned(),
        subjects: vec![format!("{subject_prefix}*")],
        retention: RetentionPolicy::Limits,
        storage: match config.storage {
            Storage::File => StorageType::File,
            Storage::Memory => StorageType::Memory,
        },
        num_replicas: config.replicas,
        max_age: config.max_age.unwrap_or_default(),
        duplicate_window: config.duplicate_window,
        deny_delete: true,
        deny_purge: true,
        allow_direct: true,
        allow_atomic_publish: atomic,
        // The server counts headers too.
        max_message_size: config
            .max_event_bytes
            .and_then(|m| i32::try_from(m.saturating_add(HEADER_ALLOWANCE)).ok())
            .unwrap_or_default(),
        description: config.description.clone(),
        ..Default::default()
    }
}

/// Every setting of `found` that this store cannot work with, compared with `want`.
fn incompatibilities(found: &StreamConfig, want: &StreamConfig) -> Vec<String> {
    let pair = |f: &dyn fmt::Debug, w: &dyn fmt::Debug| (format!("{f:?}"), format!("{w:?}"));
    let mut settings = vec![
        ("subjects", pair(&found.subjects, &want.subjects)),
        ("retention", pair(&found.retention, &want.retention)),
        ("storage", pair(&found.storage, &want.storage)),
        ("replicas", pair(&found.num_replicas, &want.num_replicas)),
        ("max_age", pair(&found.max_age, &want.max_age)),
        ("deny_delete", pair(&found.deny_delete, &want.deny_delete)),
        ("deny_purge", pair(&found.deny_purge, &want.deny_purge)),
    ];
    if want.allow_atomic_publish {
        settings.push(("allow_atomic", pair(&found.allow_atomic_publish, &true)));
    }
    // Limits that would silently delete events (0 or -1 mean "no limit").
    let unlimited = |v: i64| {
        if v > 0 {
            format!("{v}")
        } else {
            "unlimited".to_owned()
        }
    };
    settings.push((
        "max_msgs",
        (unlimited(found.max_messages), "unlimited".to_owned()),
    ));
    settings.push((
        "max_bytes",
        (unlimited(found.max_bytes), "unlimited".to_owned()),
    ));
    settings.push((
        "max_msgs_per_subject",
        (
            unlimited(found.max_messages_per_subject),
            "unlimited".to_owned(),
        ),
    ));
    settings
        .into_iter()
        .filter(|(_, (found, want))| found != want)
        .map(|(what, (found, want))| format!("{what}: found {found}, need {want}"))
        .collect()
}

/// The JetStream error code of a failed stream creation.
fn create_stream_code(e: &async_nats::jetstream::context::CreateStreamError) -> Option<u64> {
    use async_nats::jetstream::context::CreateStreamErrorKind;
    match e.kind() {
        CreateStreamErrorKind::JetStream(err) => Some(err.error_code().0),
        _ => jetstream_code(e),
    }
}

fn setup_error<E: std::error::Error + Send + Sync + 'static>(context: &str, e: E) -> ConfigError {
    // 10039 / 10076: JetStream not enabled (for the account).
    if let Some(10039 | 10076) = jetstream_code(&e) {
        return ConfigError::JetStreamNotEnabled;
    }
    // By kind, never by message text.
    if let Some(e) = (&e as &(dyn std::error::Error + 'static))
        .downcast_ref::<async_nats::jetstream::context::CreateStreamError>()
        && matches!(
            e.kind(),
            async_nats::jetstream::context::CreateStreamErrorKind::JetStreamUnavailable
        )
    {
        return ConfigError::JetStreamNotEnabled;
    }
    ConfigError::Server {
        context: context.to_owned(),
        source: Box::new(e),
    }
}

impl JetStreamEventStore {
    /// Opens the store with `config`: the body of [`JetStreamEventStore::with_config`].
    pub(super) async fn open(
        client: async_nats::Client,
        store_name: &str,
        config: JetStreamConfig,
    ) -> Result<Self, ConfigError> {
        layout::validate_store_name(store_name)?;
        if !(1..=5).contains(&config.replicas) {
            return Err(ConfigError::Invalid {
                reason: format!("replicas must be 1 to 5, not {}", config.replicas),
            });
        }
        let server = client.server_info();
        if !server.jetstream {
            return Err(ConfigError::JetStreamNotEnabled);
        }
        let atomic_batches = match parse_server_version(&server.version) {
            // 2.12.0 refuses message ids inside batches; 2.12.1 accepts them.
            Some(v) if v >= MIN_SERVER_VERSION => Ok(()),
            _ => Err(format!(
                "atomic batch appends need nats-server {}.{}.{} or newer; the server is {}",
                MIN_SERVER_VERSION.0, MIN_SERVER_VERSION.1, MIN_SERVER_VERSION.2, server.version
            )),
        };
        let batch_direct_get = parse_server_version(&server.version) >= Some((2, 11, 0));
        let js = jetstream::ContextBuilder::new()
            .timeout(config.request_timeout)
            .build(client.clone());
        let stream_name = layout::stream_name(store_name, config.namespace.as_ref());
        let subject_prefix = layout::subject_prefix(&stream_name);
        let want = desired_stream(
            &stream_name,
            &subject_prefix,
            &config,
            atomic_batches.is_ok(),
        );

        let stream = Self::open_stream(&js, &want).await?;
        let bucket = layout::snapshot_bucket(&stream_name);
        let mut attempts = 0;
        let snapshots = loop {
            attempts += 1;
            if let Ok(kv) = js.get_key_value(&bucket).await {
                break kv;
            }
            let created = js
                .create_key_value(kv::Config {
                    bucket: bucket.clone(),
                    description: format!("Aether snapshots of stream {stream_name}"),
                    history: 1,
                    storage: want.storage,
                    num_replicas: config.replicas,
                    ..Default::default()
                })
                .await;
            match created {
                Ok(kv) => break kv,
                Err(e)
                    if attempts < SETUP_ATTEMPTS
                        && matches!(
                            e.kind(),
                            async_nats::jetstream::context::CreateKeyValueErrorKind::TimedOut
                        ) =>
                {
                    tracing::warn!(%bucket, "creating the snapshot bucket timed out; trying again");
                }
                Err(e)
                    if attempts < PLACEMENT_ATTEMPTS
                        && jetstream_code(&e) == Some(NO_PLACEMENT) =>
                {
                    tracing::warn!(%bucket, error = %e, "no peers to place the snapshot bucket on yet; trying again");
                    tokio::time::sleep(placement_backoff(attempts)).await;
                }
                Err(e) => {
                    return Err(setup_error(
                        &format!("creating snapshot bucket {bucket}"),
                        e,
                    ));
                }
            }
        };
        let max_payload = server.max_payload.saturating_sub(HEADER_ALLOWANCE);
        let max_event_bytes = config
            .max_event_bytes
            .map_or(max_payload, |m| m.min(max_payload));
        let broadcast_namespace = match &config.namespace {
            Some(ns) => ns.clone(),
            None => Namespace::new(store_name).map_err(|e| ConfigError::Invalid {
                reason: e.to_string(),
            })?,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                js,
                stream,
                stream_name,
                subject_prefix,
                namespace: config.namespace,
                broadcast_namespace,
                snapshots,
                actors: Bounded::new(config.cache_capacity, CacheMetrics::new("versions")),
                checkpoints: Bounded::new(config.cache_capacity, CacheMetrics::new("checkpoints")),
                broadcaster: RwLock::new(None),
                closed: AtomicBool::new(false),
                max_event_bytes,
                message_ids: config.message_ids,
                atomic_batches,
                batch_direct_get,
                replay_consumers: Arc::new(tokio::sync::Semaphore::new(
                    config.max_replay_consumers,
                )),
                batch_slots: tokio::sync::Semaphore::new(super::append::BATCHES_PER_STREAM),
                request_timeout: config.request_timeout,
                stats: super::ReadCounters::default(),
                metrics: StoreMetrics::new(),
            }),
        })
    }

    async fn open_stream(
        js: &jetstream::Context,
        want: &StreamConfig,
    ) -> Result<jetstream::stream::Stream, ConfigError> {
        // Create; if it exists (or another process created it first), check what is there.
        // Creating with the same configuration is idempotent, so a timed-out attempt (a busy
        // cluster placing replicas) is simply made again, a few times.
        let mut attempts = 0;
        let created = loop {
            attempts += 1;
            match js.create_stream(want.clone()).await {
                Err(e)
                    if attempts < SETUP_ATTEMPTS
                        && matches!(
                            e.kind(),
                            async_nats::jetstream::context::CreateStreamErrorKind::TimedOut
                        ) =>
                {
                    tracing::warn!(stream = %want.name, "creating the stream timed out; trying again");
                }
                Err(e)
                    if attempts < PLACEMENT_ATTEMPTS
                        && create_stream_code(&e) == Some(NO_PLACEMENT) =>
                {
                    tracing::warn!(stream = %want.name, error = %e, "no peers to place the stream on yet; trying again");
                    tokio::time::sleep(placement_backoff(attempts)).await;
                }
                other => break other,
            }
        };
        let existing = match created {
            Ok(stream) => return Ok(stream),
            Err(e) => match create_stream_code(&e) {
                // Stream name already in use (with a different configuration).
                Some(10058) => js
                    .get_stream(&want.name)
                    .await
                    .map_err(|e| setup_error(&format!("reading stream {}", want.name), e))?,
                _ => return Err(setup_error(&format!("creating stream {}", want.name), e)),
            },
        };
        let found = &existing.cached_info().config;
        let diffs = incompatibilities(found, want);
        if diffs.is_empty() {
            Ok(existing)
        } else {
            Err(ConfigError::IncompatibleStream {
                stream: want.name.clone(),
                differences: diffs.join("; "),
            })
        }
    }
}
