//! Store configuration (the Go `JetStreamConfig`, plus what production needs).

use std::time::Duration;

use aether_core::Namespace;
use aether_nats::permissions::PermissionWatch;

/// Where the stream keeps its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Storage {
    /// On disk: survives a server restart. The default.
    #[default]
    File,
    /// In memory: fast, lost when the server stops.
    Memory,
}

/// Configuration of a [`crate::JetStreamEventStore`].
///
/// ```
/// use std::time::Duration;
/// use aether_store_jetstream::{JetStreamConfig, Storage};
/// let config = JetStreamConfig::default()
///     .namespace("tenant-abc".parse()?)
///     .max_age(Duration::from_secs(30 * 24 * 3600))
///     .replicas(3)
///     .storage(Storage::File);
/// # Ok::<(), aether_core::NamespaceError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JetStreamConfig {
    /// Namespace isolating the store's stream and bucket (Go's `Namespace`).
    pub namespace: Option<Namespace>,
    /// Events older than this expire (Go's `StreamRetention`); `None` keeps them forever.
    pub max_age: Option<Duration>,
    /// Number of replicas of the stream and bucket (Go's `ReplicaCount`): 1, 3 or 5.
    pub replicas: usize,
    /// File or memory storage.
    pub storage: Storage,
    /// How long the server remembers message ids to drop duplicates (default 2 minutes): the ids of
    /// batch records, and of single appends with [`Self::message_ids`] on.
    pub duplicate_window: Duration,
    /// Whether single-event appends also carry the event id as `Nats-Msg-Id` (default `false`).
    /// Batches always carry it.
    ///
    /// Off (the default), a retried append is still stored once and answered as a success: the
    /// expected last subject sequence refuses a second copy, and the store recognises its event
    /// as the actor's last record or, when others wrote after it, reads the record at its
    /// version. The server does less per append (no id to parse, hold and expire: about 20 %
    /// more appends per second with 100 writers on a 2-core machine) and holds no id memory
    /// during bursts.
    ///
    /// On, the server also drops a duplicate id within [`Self::duplicate_window`], which adds:
    /// the refusal of an event id reused for another version
    /// ([`StoreError::DuplicateEventId`](aether_core::StoreError::DuplicateEventId)) for single
    /// appends, and deduplication for other writers of this stream that publish without an
    /// expected sequence.
    pub message_ids: bool,
    /// Largest accepted encoded event in bytes; the server's `max_payload` caps it anyway.
    pub max_event_bytes: Option<usize>,
    /// Description stored on the stream.
    pub description: Option<String>,
    /// How long to wait for the server to answer a call (default 5 s).
    pub request_timeout: Duration,
    /// Actors whose version and position the store caches (default 100,000; least recently used
    /// evicted; 0 counts as 1). The cache only saves round trips: an evicted actor's position is
    /// read again on its next append. The snapshot checkpoints are bounded the same way. An entry
    /// costs about 250 bytes plus twice the actor id (ids are at most 1 KiB): ~30 MB at the default
    /// for short ids, at most ~330 MB for the longest.
    pub cache_capacity: usize,
    /// Replay consumers the store may hold on the server at once (default 16; 0: none). A read
    /// of more than a few hundred records uses one (the fastest way to stream a long history);
    /// it is deleted when the read ends. Reads beyond this bound, shorter reads, and reads the
    /// server refuses a consumer for (its consumer limit) use direct gets instead, which leave
    /// nothing on the server. Appends never use a consumer.
    pub max_replay_consumers: usize,
    /// The [`PermissionWatch`] installed on the store's connection, if any (default none). With
    /// it, a call the server refuses for the user's permissions fails at once with
    /// [`StoreError::PermissionDenied`](aether_core::StoreError::PermissionDenied) naming the
    /// refused subject (not transient: the runtime does not retry it), and opening fails with
    /// [`ConfigError::PermissionDenied`](crate::ConfigError::PermissionDenied). Without it, the
    /// server's refusal only reaches the connection's event callback, and the call times out
    /// ([`StoreError::Timeout`](aether_core::StoreError::Timeout), transient) after
    /// [`Self::request_timeout`].
    pub permissions: Option<PermissionWatch>,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        Self {
            namespace: None,
            max_age: None,
            replicas: 1,
            storage: Storage::File,
            duplicate_window: Duration::from_secs(120),
            message_ids: false,
            max_event_bytes: None,
            description: None,
            request_timeout: Duration::from_secs(5),
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            max_replay_consumers: DEFAULT_MAX_REPLAY_CONSUMERS,
            permissions: None,
        }
    }
}

/// Replay consumers a store may hold at once by default (see
/// [`JetStreamConfig::max_replay_consumers`]).
pub const DEFAULT_MAX_REPLAY_CONSUMERS: usize = 16;

/// Actors cached per store by default (see [`JetStreamConfig::cache_capacity`]).
pub const DEFAULT_CACHE_CAPACITY: usize = 100_000;

impl JetStreamConfig {
    /// Sets whether single-event appends carry `Nats-Msg-Id` (see the field).
    pub fn message_ids(mut self, on: bool) -> Self {
        self.message_ids = on;
        self
    }

    /// Sets how many replay consumers the store may hold at once (see the field).
    pub fn max_replay_consumers(mut self, max: usize) -> Self {
        self.max_replay_consumers = max;
        self
    }

    /// Sets how many actors the store caches (see the field).
    pub fn cache_capacity(mut self, capacity: usize) -> Self {
        self.cache_capacity = capacity;
        self
    }

    /// Sets the namespace.
    pub fn namespace(mut self, namespace: Namespace) -> Self {
        self.namespace = Some(namespace);
        self
    }

    /// Sets the retention (maximum event age).
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self
    }

    /// Sets the number of replicas.
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// Sets the storage kind.
    pub fn storage(mut self, storage: Storage) -> Self {
        self.storage = storage;
        self
    }

    /// Sets the duplicate window.
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }

    /// Sets the largest accepted encoded event.
    pub fn max_event_bytes(mut self, max: usize) -> Self {
        self.max_event_bytes = Some(max);
        self
    }

    /// Sets the stream description.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// Sets the request timeout.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Reports the server's permission refusals on the store's connection as
    /// [`StoreError::PermissionDenied`](aether_core::StoreError::PermissionDenied) at once (see
    /// the field). `watch` must be installed on the connection the store is opened with:
    ///
    /// ```no_run
    /// use aether_store_jetstream::permissions::PermissionWatch;
    /// use aether_store_jetstream::{JetStreamConfig, JetStreamEventStore};
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let watch = PermissionWatch::new();
    /// let client = watch
    ///     .install(async_nats::ConnectOptions::with_user_and_password("tenant-a".into(), "secret".into()))
    ///     .custom_inbox_prefix("_INBOX_tenant-a")
    ///     .connect("nats://127.0.0.1:4222")
    ///     .await?;
    /// let config = JetStreamConfig::default()
    ///     .namespace("tenant-a".parse()?)
    ///     .permissions(watch);
    /// let store = JetStreamEventStore::with_config(client, "events", config).await?;
    /// // An append to a subject the user may not publish to now fails at once:
    /// // StoreError::PermissionDenied { operation: "publish", subject: "ae.events_tenant-a.…", .. }
    /// # drop(store);
    /// # Ok(()) }
    /// ```
    pub fn permissions(mut self, watch: PermissionWatch) -> Self {
        self.permissions = Some(watch);
        self
    }
}
