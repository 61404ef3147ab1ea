//! [`JetStreamEventStore`]: events in a JetStream stream, snapshots in a KV bucket.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use aether_core::{
    ActorSnapshot, Event, EventBroadcaster, EventStore, EventStoreWithErrors, EventStored,
    EventStream, Namespace, ReplayError, ReplayResult, SnapshotStore, StoreError, VersionConflict,
    limits,
};
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::push::OrderedConfig;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{
    Config as StreamConfig, LastRawMessageErrorKind, RetentionPolicy, StorageType,
};
use async_nats::jetstream::{self, kv};
use async_nats::{HeaderMap, HeaderValue};
use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::cache::Bounded;
use crate::config::{JetStreamConfig, Storage};
use crate::error::{ConfigError, backend, jetstream_code};
use crate::layout;

/// JetStream error codes that mean "the expected last subject sequence did not match".
const WRONG_LAST_SEQUENCE: [u64; 2] = [10071, 10164];
/// Atomic batch errors meaning "these message ids are already stored / being stored": a retried
/// batch. Treated like a conflict, so the store re-reads the actor and recognises the retry.
const BATCH_DUPLICATE_IDS: [u64; 2] = [10201, 10158];
/// JetStream: message larger than the stream's maximum message size.
const MESSAGE_TOO_LARGE: u64 = 10054;
/// How many times an append is re-sent after finding the version cache stale.
const MAX_STALE_RETRIES: usize = 10;
/// Attempts at creating the stream or bucket when the server times out.
const SETUP_ATTEMPTS: usize = 3;
/// Room left for headers when checking an event against the server's `max_payload`.
const HEADER_ALLOWANCE: usize = 512;

/// What this store knows about an actor's last stored event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Known {
    version: u64,
    /// Stream sequence of the subject's last message (0: the subject is empty); `None` when only
    /// the version is known (from `update_version_cache`): the next append reads it first.
    seq: Option<u64>,
    /// Id of the last event, if the last message is a valid event.
    last_id: Option<Uuid>,
}

/// Per-actor state: appends to one actor through one store are serialized by `write`.
struct ActorSlot {
    /// The actor's subject, encoded once.
    subject: String,
    write: tokio::sync::Mutex<()>,
    known: Mutex<Option<Known>>,
}

impl ActorSlot {
    fn known(&self) -> Option<Known> {
        *self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_known(&self, known: Option<Known>) {
        *self.known.lock().unwrap_or_else(PoisonError::into_inner) = known;
    }

    /// Records a fresher view; an older one (lower sequence) never replaces a newer one.
    fn observe(&self, known: Known) {
        let mut slot = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none_or(|k| k.seq.is_none() || k.seq <= known.seq) {
            *slot = Some(known);
        }
    }
}

/// A snapshot as kept in the KV bucket: the snapshot and the stream sequence of the event at its
/// version (0 if unknown), so replay after the snapshot can start there.
#[derive(Serialize, Deserialize)]
struct SnapshotRecord {
    snapshot: ActorSnapshot,
    sequence: u64,
}

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

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    stream_name: String,
    subject_prefix: String,
    namespace: Option<Namespace>,
    broadcast_namespace: Namespace,
    snapshots: kv::Store,
    /// Per-actor slots (version cache, write serialisation), least recently used evicted.
    actors: Bounded<Arc<ActorSlot>>,
    /// actor -> (snapshot version, stream sequence of that version), to start replays there.
    checkpoints: Bounded<(u64, u64)>,
    broadcaster: RwLock<Option<Arc<dyn EventBroadcaster>>>,
    closed: AtomicBool,
    max_event_bytes: usize,
    /// `Err(reason)` when the server or stream cannot do atomic batches.
    atomic_batches: Result<(), String>,
    request_timeout: Duration,
}

/// The production event store: events in a JetStream stream, snapshots in a KV bucket, with
/// optimistic concurrency enforced by the server.
///
/// - **Layout:** one stream per (store name, namespace), one subject per actor, the event id as
///   `Nats-Msg-Id`; see `docs/nats-layout.md`.
/// - **Concurrency:** every append carries `Nats-Expected-Last-Subject-Sequence` from a cache of
///   actor → (version, last sequence), so the server refuses a write if anyone else wrote that
///   actor meanwhile — across processes and nodes. A stale cache costs one retry, never a wrong
///   answer; a real conflict returns [`StoreError::VersionConflict`] with the true current version.
///   Appends to one actor through one store are serialized; different actors are pipelined.
/// - **Batches:** [`EventStore::save_events`] uses JetStream atomic batch publish (nats-server
///   2.12.1 or newer): all events or none.
/// - **Retries:** re-sending an event after a timeout stores it once.
/// - **Immutability:** the stream denies message delete and purge; retention is by age only.
///
/// ```no_run
/// use aether_core::{Event, EventStore};
/// use aether_store_jetstream::JetStreamEventStore;
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let store = JetStreamEventStore::new(client, "events").await?;
/// store.save_event(Event::new("order-1", "OrderPlaced", 1, &99.99)?).await?;
/// assert_eq!(store.get_latest_version("order-1").await?, 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct JetStreamEventStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for JetStreamEventStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStreamEventStore")
            .field("stream", &self.inner.stream_name)
            .field("namespace", &self.inner.namespace)
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut parts = v
        .trim_start_matches('v')
        .split(|c: char| !c.is_ascii_digit());
    Some((
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next().and_then(|p| p.parse().ok()).unwrap_or(0),
    ))
}

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
    if e.to_string()
        .to_lowercase()
        .contains("jetstream not enabled")
    {
        return ConfigError::JetStreamNotEnabled;
    }
    ConfigError::Server {
        context: context.to_owned(),
        source: Box::new(e),
    }
}

impl JetStreamEventStore {
    /// Opens (creating when missing) the store `store_name` with the default configuration
    /// (Go's `NewJetStreamEventStore(nc, "events")`).
    pub async fn new(client: async_nats::Client, store_name: &str) -> Result<Self, ConfigError> {
        Self::with_config(client, store_name, JetStreamConfig::default()).await
    }

    /// Opens the store `store_name` in `namespace` (Go's `NewJetStreamEventStoreWithNamespace`).
    pub async fn with_namespace(
        client: async_nats::Client,
        store_name: &str,
        namespace: Namespace,
    ) -> Result<Self, ConfigError> {
        Self::with_config(
            client,
            store_name,
            JetStreamConfig::default().namespace(namespace),
        )
        .await
    }

    /// Opens the store with `config` (Go's `NewJetStreamEventStoreWithConfig`). Creates the
    /// stream and the snapshot bucket when missing, reuses compatible ones, and refuses a stream
    /// whose settings differ in a way that matters with [`ConfigError::IncompatibleStream`].
    pub async fn with_config(
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
        let atomic_batches = match parse_version(&server.version) {
            // 2.12.0 refuses message ids inside batches; 2.12.1 accepts them.
            Some(v) if v >= (2, 12, 1) => Ok(()),
            _ => Err(format!(
                "atomic batch appends need nats-server 2.12.1 or newer; the server is {}",
                server.version
            )),
        };
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
                actors: Bounded::new(config.cache_capacity),
                checkpoints: Bounded::new(config.cache_capacity),
                broadcaster: RwLock::new(None),
                closed: AtomicBool::new(false),
                max_event_bytes,
                atomic_batches,
                request_timeout: config.request_timeout,
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

    /// The stream holding this store's events.
    pub fn stream_name(&self) -> &str {
        &self.inner.stream_name
    }

    /// The store's namespace, if any.
    pub fn namespace(&self) -> Option<&Namespace> {
        self.inner.namespace.as_ref()
    }

    /// The subjects of all this store's events (`ae.<stream>.*`), for projections.
    pub fn subject_filter(&self) -> String {
        format!("{}*", self.inner.subject_prefix)
    }

    /// The subject holding `actor_id`'s events (see [`layout::actor_token`]).
    pub fn subject_for(&self, actor_id: &str) -> String {
        format!(
            "{}{}",
            self.inner.subject_prefix,
            layout::actor_token(actor_id)
        )
    }

    /// The version this store last saw for `actor_id`, without asking the server (Go's
    /// `GetCachedVersion`). `None` when the actor is not cached.
    pub fn cached_version(&self, actor_id: &str) -> Option<u64> {
        self.existing_slot(actor_id)
            .and_then(|s| s.known())
            .map(|k| k.version)
    }

    /// Tells the store that `actor_id` reached `version` elsewhere (Go's `UpdateVersionCache`,
    /// fed by EventStored notifications): when `version` is greater than the cached one, or the
    /// actor is not cached, [`cached_version`](Self::cached_version) returns `version` from now
    /// on. Its stream position is then unknown, so the next append reads it from the server
    /// first (one round trip, instead of a refused write). An equal or lower version changes
    /// nothing. The cache is bounded ([`JetStreamConfig::cache_capacity`]): notifications for
    /// any number of actors cannot grow memory.
    pub fn update_version_cache(&self, actor_id: &str, version: u64) {
        if version == 0 || self.inner.closed.load(Ordering::Relaxed) {
            return;
        }
        let slot = self.slot(actor_id);
        let mut known = slot.known.lock().unwrap_or_else(PoisonError::into_inner);
        if known.is_none_or(|k| k.version < version) {
            *known = Some(Known {
                version,
                seq: None,
                last_id: None,
            });
        }
    }

    /// A builder-style [`set_broadcaster`](Self::set_broadcaster), for construction (Go's
    /// `NewJetStreamEventStoreWithBroadcaster`):
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # async fn demo(client: aether_store_jetstream::async_nats::Client, bus: Arc<dyn aether_core::EventBroadcaster>) -> Result<(), Box<dyn std::error::Error>> {
    /// use aether_store_jetstream::JetStreamEventStore;
    /// let store = JetStreamEventStore::new(client, "events").await?.with_broadcaster(bus);
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn with_broadcaster(self, broadcaster: Arc<dyn EventBroadcaster>) -> Self {
        self.set_broadcaster(broadcaster);
        self
    }

    /// How many actors the store's version cache holds now (at most
    /// [`JetStreamConfig::cache_capacity`]).
    pub fn cached_actors(&self) -> usize {
        self.inner.actors.len()
    }

    /// Publishes an EventStored notification through `broadcaster` after each successful append
    /// (Go's `SetBroadcaster`), to the store's namespace (or, without one, to a namespace named
    /// like the store).
    pub fn set_broadcaster(&self, broadcaster: Arc<dyn EventBroadcaster>) {
        *self
            .inner
            .broadcaster
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(broadcaster);
    }

    /// Closes the store (Go's `Close`): later calls fail with [`StoreError::Unavailable`]. The
    /// connection belongs to the caller and stays open.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.actors.clear();
        self.inner.checkpoints.clear();
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.inner.closed.load(Ordering::Relaxed) {
            Err(StoreError::Unavailable {
                context: format!("using store {} after close", self.inner.stream_name),
                source: None,
            })
        } else {
            Ok(())
        }
    }

    fn existing_slot(&self, actor_id: &str) -> Option<Arc<ActorSlot>> {
        self.inner.actors.get(actor_id)
    }

    /// The actor's slot, created if needed. An evicted slot still in use by an append keeps
    /// working; a second slot for the same actor only loses the local serialisation, never
    /// correctness (the server checks every write's expected position).
    fn slot(&self, actor_id: &str) -> Arc<ActorSlot> {
        self.inner.actors.get_or_insert_with(actor_id, || {
            Arc::new(ActorSlot {
                subject: self.subject_for(actor_id),
                write: tokio::sync::Mutex::new(()),
                known: Mutex::new(None),
            })
        })
    }

    /// Reads the actor's last message from the stream leader (read-after-write on R3).
    async fn fetch_known(&self, actor_id: &str) -> Result<Known, StoreError> {
        let subject = self.subject_for(actor_id);
        let msg = match self
            .inner
            .stream
            .get_last_raw_message_by_subject(&subject)
            .await
        {
            Ok(msg) => msg,
            Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => {
                return Ok(Known {
                    version: 0,
                    seq: Some(0),
                    last_id: None,
                });
            }
            Err(e) => {
                return Err(backend(
                    format!("reading the last event of actor {actor_id:?}"),
                    e,
                ));
            }
        };
        match decode_event(&msg.payload, actor_id) {
            Ok(event) => Ok(Known {
                version: event.version(),
                seq: Some(msg.sequence),
                last_id: Some(event.id()),
            }),
            Err(reason) => {
                // A foreign, malformed message is last: the version is that of the last valid
                // event before it; the expected sequence is the malformed message's.
                tracing::warn!(
                    actor_id,
                    sequence = msg.sequence,
                    %reason,
                    "the actor's last message is not a valid event"
                );
                let version = self
                    .replay(actor_id, 0)
                    .try_fold(0u64, |max, item| async move {
                        Ok(match item {
                            Replayed::Event(e) => max.max(e.version()),
                            Replayed::Malformed(_) => max,
                        })
                    })
                    .await?;
                Ok(Known {
                    version,
                    seq: Some(msg.sequence),
                    last_id: None,
                })
            }
        }
    }

    async fn refresh(&self, slot: &ActorSlot, actor_id: &str) -> Result<Known, StoreError> {
        let known = self.fetch_known(actor_id).await?;
        slot.observe(known);
        Ok(known)
    }

    async fn append(&self, events: Vec<Event>) -> Result<(), StoreError> {
        self.check_open()?;
        let Some(first) = events.first() else {
            return Ok(());
        };
        // Structure and ids first; the version is checked against the real history below.
        match limits::check_append(0, &events) {
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
                    first.actor_id()
                ),
                reason.clone(),
            ));
        }
        let encoded = events
            .iter()
            .map(|e| {
                let mut bytes = Vec::with_capacity(e.payload().len() + 160);
                rmp_serde::encode::write_named(&mut bytes, e).map_err(|err| {
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
                Ok(Bytes::from(bytes))
            })
            .collect::<Result<Vec<_>, _>>()?;

        let actor_id = first.actor_id().to_owned();
        let slot = self.slot(&actor_id);
        let subject = &slot.subject;
        let _serialized = slot.write.lock().await;
        let last = events.last().unwrap_or(first);
        let is_retry = |k: &Known| k.version == last.version() && k.last_id == Some(last.id());

        // Not cached: assume a new actor (an empty subject) rather than asking first. The server
        // refuses the write if the subject is not empty, and then the truth is read once.
        let mut known = slot.known().unwrap_or(Known {
            version: 0,
            seq: Some(0),
            last_id: None,
        });
        let mut refreshed = false;
        let mut attempt_backoff = Duration::from_millis(2);
        for _ in 0..MAX_STALE_RETRIES {
            // The batch's structure was checked above; only its first version can conflict.
            if first.version() <= known.version {
                if is_retry(&known) {
                    return Ok(());
                }
                if refreshed {
                    return Err(
                        VersionConflict::new(actor_id, known.version, first.version()).into(),
                    );
                }
                // Versions only grow: the conflict stands, but report the true current version.
                known = Box::pin(self.refresh(&slot, &actor_id)).await?;
                refreshed = true;
                continue;
            }
            let Some(expected_seq) = known.seq else {
                // Only the version is known (told by `update_version_cache`): learn the position.
                known = Box::pin(self.refresh(&slot, &actor_id)).await?;
                refreshed = true;
                continue;
            };
            let result = if events.len() == 1 {
                self.publish_one(subject, first, &encoded[0], expected_seq)
                    .await
            } else {
                // Boxed: batches are rarer, and their future would swell every append's.
                Box::pin(self.publish_batch(subject, &events, &encoded, expected_seq)).await
            };
            match result {
                Ok(Published::Stored(seq)) => {
                    slot.set_known(Some(Known {
                        version: last.version(),
                        seq: Some(seq),
                        last_id: Some(last.id()),
                    }));
                    drop(_serialized);
                    self.broadcast(&events).await;
                    return Ok(());
                }
                Ok(Published::Duplicate(seq)) => {
                    // The server had this id already (within the duplicate window). Its answer
                    // names an older position, so forget the cache rather than trust it.
                    slot.set_known(None);
                    return Box::pin(self.verify_duplicate(first, seq)).await;
                }
                Err(PublishFailure::Conflict) => {
                    // Someone else wrote: learn the truth and decide again.
                    let sent = known.seq;
                    known = Box::pin(self.refresh(&slot, &actor_id)).await?;
                    refreshed = true;
                    if is_retry(&known) {
                        return Ok(());
                    }
                    if known.seq == sent {
                        // Refused although nothing moved: on replicated streams another write to
                        // this actor is still in flight (10164). Give it a moment.
                        attempt_backoff = (attempt_backoff * 2).min(Duration::from_millis(200));
                        tokio::time::sleep(attempt_backoff).await;
                    }
                }
                Err(PublishFailure::Error(e)) => {
                    // The outcome is unknown (a timeout may still be stored): forget the cache,
                    // so the next call reads the truth; a retry with the same ids is safe.
                    slot.set_known(None);
                    return Err(e);
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

    /// A publish was dropped as a duplicate of the id stored at `seq`: success if that is this
    /// very event (a retry), an error if the id belongs to another event.
    async fn verify_duplicate(&self, event: &Event, seq: u64) -> Result<(), StoreError> {
        let stored = self.inner.stream.get_raw_message(seq).await.map_err(|e| {
            backend(
                format!("reading the event stored under id {}", event.id()),
                e,
            )
        })?;
        let same = rmp_serde::from_slice::<Event>(&stored.payload).ok();
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
        let code = jetstream_code(&e);
        if matches!(e.kind(), PublishErrorKind::WrongLastSequence)
            || code.is_some_and(|c| WRONG_LAST_SEQUENCE.contains(&c))
        {
            return PublishFailure::Conflict;
        }
        let context = format!(
            "appending event {} (version {}) for actor {:?}",
            event.id(),
            event.version(),
            event.actor_id()
        );
        if matches!(e.kind(), PublishErrorKind::MaxPayloadExceeded)
            || code == Some(MESSAGE_TOO_LARGE)
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
            PublishErrorKind::StreamNotFound => StoreError::backend(
                format!(
                    "{context}: stream {} not found (deleted, or JetStream unavailable)",
                    self.inner.stream_name
                ),
                e,
            ),
            _ => backend(context, e),
        })
    }

    fn headers(event: &Event) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", event.id().to_string().as_str());
        headers.insert(HEADER_VERSION_NAME, event.version().to_string().as_str());
        headers.insert(
            HEADER_EVENT_TYPE_NAME,
            HeaderValue::from(event.event_type()),
        );
        headers
    }

    async fn publish_one(
        &self,
        subject: &str,
        event: &Event,
        bytes: &Bytes,
        expected_seq: u64,
    ) -> Result<Published, PublishFailure> {
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(5);
        loop {
            let msg = PublishMessage::build()
                .payload(bytes.clone())
                .headers(Self::headers(event))
                .expected_last_subject_sequence(expected_seq);
            let result = match self.inner.js.send_publish(subject.to_owned(), msg).await {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match result {
                Ok(ack) if ack.duplicate => return Ok(Published::Duplicate(ack.sequence)),
                Ok(ack) => return Ok(Published::Stored(ack.sequence)),
                // No responders: nothing received the message (a stream just created, or
                // between leaders). Nothing was stored, so sending again is safe.
                Err(e)
                    if matches!(e.kind(), PublishErrorKind::StreamNotFound)
                        && started.elapsed() + backoff < self.inner.request_timeout =>
                {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(250));
                }
                Err(e) => return Err(self.classify_publish(e, event, bytes.len())),
            }
        }
    }

    /// One all-or-nothing append with JetStream atomic batch publish (ADR-50).
    async fn publish_batch(
        &self,
        subject: &str,
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
            let mut headers = Self::headers(event);
            headers.insert("Nats-Batch-Id", batch_id.as_str());
            headers.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
            if i == 0 {
                headers.insert(
                    "Nats-Expected-Last-Subject-Sequence",
                    expected_seq.to_string().as_str(),
                );
            }
            let commit = i + 1 == n;
            if commit {
                headers.insert("Nats-Batch-Commit", "1");
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
                    if WRONG_LAST_SEQUENCE.contains(&err.err_code)
                        || BATCH_DUPLICATE_IDS.contains(&err.err_code)
                    {
                        return Err(PublishFailure::Conflict);
                    }
                    return Err(PublishFailure::Error(StoreError::backend(
                        context("appending"),
                        format!("JetStream error {}: {}", err.err_code, err.description),
                    )));
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
                    .publish_with_headers(subject.to_owned(), headers, bytes.clone())
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
        subject: &str,
        headers: HeaderMap,
        payload: &Bytes,
        retry_no_responders: bool,
    ) -> Result<async_nats::Message, StoreError> {
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(5);
        loop {
            let left = self.inner.request_timeout.saturating_sub(started.elapsed());
            let request = self.inner.client.request_with_headers(
                subject.to_owned(),
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
                    backoff = (backoff * 2).min(Duration::from_millis(250));
                }
                Ok(Err(e)) => return Err(backend(format!("sending to {subject}"), e)),
            }
        }
    }

    async fn broadcast(&self, events: &[Event]) {
        let broadcaster = self
            .inner
            .broadcaster
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(broadcaster) = broadcaster else {
            return;
        };
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
    fn replay(&self, actor_id: &str, from_version: u64) -> ReplayStream {
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

    fn remember_checkpoint(&self, record: &SnapshotRecord) {
        if record.sequence > 0 {
            self.inner.checkpoints.put(
                &record.snapshot.actor_id,
                (record.snapshot.version, record.sequence),
            );
        }
    }
}

const HEADER_VERSION_NAME: &str = layout::HEADER_VERSION;
const HEADER_EVENT_TYPE_NAME: &str = layout::HEADER_EVENT_TYPE;

/// Where a replay stops: the subject's last sequence when it started.
struct ReadTarget {
    actor_id: String,
    from: u64,
    last_sequence: u64,
    timeout: Duration,
}

/// A record read back from the stream.
enum Replayed {
    Event(Event),
    Malformed(ReplayError),
}

type ReplayStream = std::pin::Pin<Box<dyn Stream<Item = Result<Replayed, StoreError>> + Send>>;

/// Decodes a stored message; anything but a valid event of `actor_id` is malformed.
fn decode_event(payload: &[u8], actor_id: &str) -> Result<Event, String> {
    let event: Event =
        rmp_serde::from_slice(payload).map_err(|e| format!("not an Aether event: {e}"))?;
    if event.actor_id() != actor_id {
        return Err(format!(
            "event {} names actor {:?}, but is stored under actor {actor_id:?}",
            event.id(),
            event.actor_id()
        ));
    }
    Ok(event)
}

#[async_trait]
impl EventStore for JetStreamEventStore {
    async fn save_event(&self, event: Event) -> Result<(), StoreError> {
        self.append(vec![event]).await
    }

    async fn save_events(&self, events: Vec<Event>) -> Result<(), StoreError> {
        self.append(events).await
    }

    async fn get_events(
        &self,
        actor_id: &str,
        from_version: u64,
    ) -> Result<Vec<Event>, StoreError> {
        self.stream_events(actor_id, from_version)
            .try_collect()
            .await
    }

    fn stream_events(&self, actor_id: &str, from_version: u64) -> EventStream {
        self.replay(actor_id, from_version)
            .filter_map(|item| async move {
                match item {
                    Ok(Replayed::Event(e)) => Some(Ok(e)),
                    Ok(Replayed::Malformed(m)) => {
                        tracing::warn!(
                            position = m.position,
                            reason = %m.reason,
                            "skipping a malformed record during replay"
                        );
                        None
                    }
                    Err(e) => Some(Err(e)),
                }
            })
            .boxed()
    }

    /// Always asks the server, and refreshes the cache when it was stale (Go's
    /// `GetLatestVersion`).
    async fn get_latest_version(&self, actor_id: &str) -> Result<u64, StoreError> {
        self.check_open()?;
        limits::validate_actor_id(actor_id)?;
        let known = self.fetch_known(actor_id).await?;
        // Refresh a cached entry, but do not start caching actors that are only read.
        if let Some(slot) = self.existing_slot(actor_id) {
            slot.observe(known);
        }
        Ok(known.version)
    }
}

impl aether_core::VersionCache for JetStreamEventStore {
    fn update_version_cache(&self, actor_id: &str, version: u64) {
        JetStreamEventStore::update_version_cache(self, actor_id, version);
    }
}

#[async_trait]
impl EventStoreWithErrors for JetStreamEventStore {
    async fn get_events_with_errors(
        &self,
        actor_id: &str,
        from_version: u64,
    ) -> Result<ReplayResult, StoreError> {
        let mut events = Vec::new();
        let mut errors = Vec::new();
        let mut replay = self.replay(actor_id, from_version);
        while let Some(item) = replay.next().await {
            match item? {
                Replayed::Event(e) => events.push(e),
                Replayed::Malformed(m) => errors.push(m),
            }
        }
        Ok(ReplayResult::new(events, errors))
    }
}

#[async_trait]
impl SnapshotStore for JetStreamEventStore {
    async fn get_latest_snapshot(
        &self,
        actor_id: &str,
    ) -> Result<Option<ActorSnapshot>, StoreError> {
        self.check_open()?;
        limits::validate_actor_id(actor_id)?;
        let key = layout::actor_token(actor_id);
        let entry = self
            .inner
            .snapshots
            .entry(key)
            .await
            .map_err(|e| backend(format!("reading the snapshot of actor {actor_id:?}"), e))?;
        let Some(entry) = entry.filter(|e| matches!(e.operation, kv::Operation::Put)) else {
            return Ok(None);
        };
        let record: SnapshotRecord = rmp_serde::from_slice(&entry.value).map_err(|e| {
            StoreError::backend(
                format!("decoding the snapshot record of actor {actor_id:?}"),
                e,
            )
        })?;
        if record.snapshot.actor_id != actor_id {
            return Err(StoreError::backend(
                format!("reading the snapshot of actor {actor_id:?}"),
                format!(
                    "the record under its key belongs to actor {:?}",
                    record.snapshot.actor_id
                ),
            ));
        }
        self.remember_checkpoint(&record);
        Ok(Some(record.snapshot))
    }

    async fn save_snapshot(&self, snapshot: ActorSnapshot) -> Result<(), StoreError> {
        self.check_open()?;
        limits::validate_actor_id(&snapshot.actor_id)?;
        if snapshot.version == 0 {
            return Err(StoreError::InvalidSnapshot {
                actor_id: snapshot.actor_id,
                reason: "version must be greater than 0".into(),
            });
        }
        let actor_id = snapshot.actor_id.clone();
        let key = layout::actor_token(&actor_id);
        let sequence = self
            .existing_slot(&actor_id)
            .and_then(|s| s.known())
            .filter(|k| k.version == snapshot.version)
            .and_then(|k| k.seq)
            .unwrap_or(0);
        let record = SnapshotRecord { snapshot, sequence };
        let bytes = Bytes::from(rmp_serde::to_vec_named(&record).map_err(|e| {
            StoreError::backend(format!("encoding the snapshot of actor {actor_id:?}"), e)
        })?);
        let context = || format!("saving the snapshot of actor {actor_id:?}");
        // Compare-and-set on the bucket's revision, so concurrent savers cannot go backwards.
        for _ in 0..MAX_STALE_RETRIES {
            let current = self
                .inner
                .snapshots
                .entry(key.as_str())
                .await
                .map_err(|e| backend(context(), e))?;
            let outcome = match current {
                Some(entry) if matches!(entry.operation, kv::Operation::Put) => {
                    if let Ok(existing) = rmp_serde::from_slice::<SnapshotRecord>(&entry.value)
                        && existing.snapshot.version > record.snapshot.version
                    {
                        return Err(StoreError::InvalidSnapshot {
                            actor_id,
                            reason: format!(
                                "version {} is below the stored snapshot's version {}",
                                record.snapshot.version, existing.snapshot.version
                            ),
                        });
                    }
                    self.inner
                        .snapshots
                        .update(key.as_str(), bytes.clone(), entry.revision)
                        .await
                        .map(drop)
                        .map_err(|e| {
                            matches!(e.kind(), kv::UpdateErrorKind::WrongLastRevision)
                                .then_some(())
                                .ok_or_else(|| backend(context(), e))
                        })
                }
                _ => self
                    .inner
                    .snapshots
                    .create(key.as_str(), bytes.clone())
                    .await
                    .map(drop)
                    .map_err(|e| {
                        matches!(e.kind(), kv::CreateErrorKind::AlreadyExists)
                            .then_some(())
                            .ok_or_else(|| backend(context(), e))
                    }),
            };
            match outcome {
                Ok(()) => {
                    self.remember_checkpoint(&record);
                    return Ok(());
                }
                Err(Ok(())) => continue, // lost a race with another saver: look again
                Err(Err(e)) => return Err(e),
            }
        }
        Err(StoreError::backend(
            context(),
            "kept losing races with concurrent snapshot writers",
        ))
    }
}
