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
use aether_nats::classify::NatsError;
use aether_nats::codes::{is_jetstream_disabled, is_stream_name_in_use, jetstream_code};
use aether_nats::server_version::{MIN_SERVER_VERSION, parse_server_version};
use aether_nats::settle::{SETTLE_PATIENCE, while_settling};

use crate::error::ConfigError;
use crate::layout;
use crate::metrics::{CacheMetrics, StoreMetrics};

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

/// What an existing stream has that no Aether store could work with: its subjects, retention,
/// `deny_delete` / `deny_purge`, and limits that would silently delete events. Storage, replicas
/// and `max_age` are a store's configuration, taken as found. Empty: the stream is fit for a
/// store of its name (what `aether store info` checks).
pub fn stream_problems(found: &StreamConfig) -> Vec<String> {
    let mut want = desired_stream(
        &found.name,
        &layout::subject_prefix(&found.name),
        &JetStreamConfig::default(),
        false,
    );
    want.storage = found.storage;
    want.num_replicas = found.num_replicas;
    want.max_age = found.max_age;
    incompatibilities(found, &want)
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

fn setup_error<E: std::error::Error + Send + Sync + 'static>(context: &str, e: E) -> ConfigError {
    if jetstream_code(&e).is_some_and(is_jetstream_disabled) {
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

        let guard = config
            .permissions
            .clone()
            .map(|watch| Arc::new(super::permissions::Guard::new(watch, &client, &stream_name)));
        let (stream, snapshots) = match &guard {
            None => Self::open_stream_and_bucket(&js, &want, &config).await?,
            Some(guard) => guard
                .watch(None, Self::open_stream_and_bucket(&js, &want, &config))
                .await
                .map_err(|refusal| ConfigError::PermissionDenied {
                    operation: refusal.operation.as_str(),
                    subject: refusal.subject,
                    context: format!("opening the store of stream {stream_name}"),
                })??,
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
                guard,
                stats: super::ReadCounters::default(),
                metrics: StoreMetrics::new(),
            }),
        })
    }

    /// The stream ([`Self::open_stream`]) and the snapshot bucket, created when missing.
    async fn open_stream_and_bucket(
        js: &jetstream::Context,
        want: &StreamConfig,
        config: &JetStreamConfig,
    ) -> Result<(jetstream::stream::Stream, kv::Store), ConfigError> {
        let stream = Self::open_stream(js, want).await?;
        let stream_name = &want.name;
        let bucket = layout::snapshot_bucket(stream_name);
        let snapshots = match js.get_key_value(&bucket).await {
            Ok(kv) => kv,
            // Creating with one configuration is idempotent: tried again while the NATS cluster
            // settles (timeouts, no suitable peers yet).
            Err(_) => while_settling(
                &format!("creating snapshot bucket {bucket}"),
                SETTLE_PATIENCE,
                || {
                    js.create_key_value(kv::Config {
                        bucket: bucket.clone(),
                        description: format!("Aether snapshots of stream {stream_name}"),
                        history: 1,
                        storage: want.storage,
                        num_replicas: config.replicas,
                        ..Default::default()
                    })
                },
            )
            .await
            .map_err(|e| setup_error(&format!("creating snapshot bucket {bucket}"), e))?,
        };
        Ok((stream, snapshots))
    }

    async fn open_stream(
        js: &jetstream::Context,
        want: &StreamConfig,
    ) -> Result<jetstream::stream::Stream, ConfigError> {
        // Bind first: an existing stream needs only the right to read its info, so a user that
        // may not create streams (a reader, a tenant's service) can open it. Create only when it
        // is missing; if another process creates it first, bind to theirs. Both are tried again
        // while the NATS cluster settles (a busy cluster placing replicas times out or has no
        // peers yet); creating with one configuration is idempotent.
        let what = format!("reading stream {}", want.name);
        let existing =
            match while_settling(&what, SETTLE_PATIENCE, || js.get_stream(&want.name)).await {
                Ok(stream) => stream,
                Err(e) if is_missing(&e) => {
                    let created = while_settling(
                        &format!("creating stream {}", want.name),
                        SETTLE_PATIENCE,
                        || js.create_stream(want.clone()),
                    )
                    .await;
                    match created {
                        Ok(stream) => return Ok(stream),
                        // Created by someone else in between: see what is there.
                        Err(e) if e.code().is_some_and(is_stream_name_in_use) => js
                            .get_stream(&want.name)
                            .await
                            .map_err(|e| setup_error(&what, e))?,
                        Err(e) => {
                            return Err(setup_error(&format!("creating stream {}", want.name), e));
                        }
                    }
                }
                Err(e) => return Err(setup_error(&what, e)),
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

/// Whether getting a stream failed because there is no such stream.
fn is_missing(e: &jetstream::context::GetStreamError) -> bool {
    e.code() == Some(jetstream::ErrorCode::STREAM_NOT_FOUND)
}
