//! Error types shared by every Aether store and layer.

use std::fmt;

/// A boxed error from a backend (NATS, I/O, ...), kept as the `source` of an Aether error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Encoding or decoding a MessagePack payload failed.
#[derive(Debug, thiserror::Error)]
#[error("failed to {op} `{type_name}` as MessagePack: {detail}")]
pub struct CodecError {
    op: CodecOp,
    type_name: &'static str,
    detail: String,
    #[source]
    source: Option<BoxError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CodecOp {
    Encode,
    Decode,
}

impl fmt::Display for CodecOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CodecOp::Encode => "encode",
            CodecOp::Decode => "decode",
        })
    }
}

impl CodecError {
    pub(crate) fn encode(
        type_name: &'static str,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            op: CodecOp::Encode,
            type_name,
            detail: e.to_string(),
            source: Some(Box::new(e)),
        }
    }

    pub(crate) fn decode(
        type_name: &'static str,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            op: CodecOp::Decode,
            type_name,
            detail: e.to_string(),
            source: Some(Box::new(e)),
        }
    }

    pub(crate) fn trailing_bytes(type_name: &'static str, n: usize) -> Self {
        Self {
            op: CodecOp::Decode,
            type_name,
            detail: format!("{n} trailing bytes after the value"),
            source: None,
        }
    }

    /// Whether this error came from decoding (as opposed to encoding).
    pub fn is_decode(&self) -> bool {
        self.op == CodecOp::Decode
    }

    /// The Rust type that was being encoded or decoded.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }
}

/// An event, actor id or event type that breaks Aether's rules (see [`crate::limits`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// The actor id is the empty string.
    #[error("actor id is empty")]
    EmptyActorId,
    /// The actor id is longer than [`crate::limits::MAX_ACTOR_ID_BYTES`].
    #[error("actor id is {len} bytes long; the limit is {max} bytes")]
    ActorIdTooLong {
        /// Length of the rejected id in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The event type is the empty string.
    #[error("event type is empty")]
    EmptyEventType,
    /// The event type is longer than [`crate::limits::MAX_EVENT_TYPE_BYTES`].
    #[error("event type is {len} bytes long; the limit is {max} bytes")]
    EventTypeTooLong {
        /// Length of the rejected event type in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The event type contains a control character (it travels in message headers).
    #[error("event type {event_type:?} contains a control character")]
    ControlCharInEventType {
        /// The rejected event type.
        event_type: String,
    },
    /// The schema version is 0 (versions start at 1).
    #[error("schema version 0 is not valid; schema versions start at 1")]
    InvalidSchemaVersion,
}

/// The version check failed: the actor's history moved on (or the attempted version was never
/// valid). Nothing was written.
///
/// The Rust form of Go's `VersionConflictError{ActorID, CurrentVersion, AttemptedVersion}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "version conflict for actor {actor_id:?}: current version is {current_version}, attempted version {attempted_version}"
)]
#[non_exhaustive]
pub struct VersionConflict {
    /// The actor whose history was being appended to.
    pub actor_id: String,
    /// The actor's latest stored version when the write was refused (0: no events).
    pub current_version: u64,
    /// The version the refused write tried to store.
    pub attempted_version: u64,
}

impl VersionConflict {
    /// Creates a conflict report.
    pub fn new(actor_id: impl Into<String>, current_version: u64, attempted_version: u64) -> Self {
        Self {
            actor_id: actor_id.into(),
            current_version,
            attempted_version,
        }
    }
}

/// Errors of the event and snapshot store operations.
///
/// Match on [`StoreError::VersionConflict`] or call [`StoreError::is_version_conflict`] where Go
/// code would write `errors.Is(err, ErrVersionConflict)`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another writer got there first, or the attempted version is not above the latest.
    #[error(transparent)]
    VersionConflict(#[from] VersionConflict),
    /// The event breaks a rule of [`crate::limits`] (actor id, event type).
    #[error("invalid event: {0}")]
    InvalidEvent(#[from] EventError),
    /// A multi-event append was refused before anything was written.
    #[error("invalid batch for actor {actor_id:?}: {reason}")]
    InvalidBatch {
        /// The actor of the batch's first event.
        actor_id: String,
        /// What is wrong with the batch.
        reason: String,
    },
    /// A snapshot was refused.
    #[error("invalid snapshot for actor {actor_id:?}: {reason}")]
    InvalidSnapshot {
        /// The snapshot's actor.
        actor_id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A payload or stored record could not be encoded or decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The event's id is already stored for another event (ids are deduplication keys: a new
    /// event needs a new id). Nothing was written.
    #[error(
        "event id {event_id} is already stored as version {stored_version} of actor {stored_actor_id:?}; a new event needs a new id"
    )]
    DuplicateEventId {
        /// The reused id.
        event_id: uuid::Uuid,
        /// The actor of the stored event with that id.
        stored_actor_id: String,
        /// Its version.
        stored_version: u64,
    },
    /// The event (encoded) is larger than the backend accepts.
    #[error(
        "event {event_id} for actor {actor_id:?} is {size} bytes encoded; the limit is {max} bytes"
    )]
    TooLarge {
        /// The actor.
        actor_id: String,
        /// The refused event's id.
        event_id: uuid::Uuid,
        /// Encoded size in bytes.
        size: usize,
        /// The backend's limit in bytes.
        max: usize,
    },
    /// The backend cannot be reached or went away during the call. The operation may or may not
    /// have taken effect; retrying an append with the same event id is safe.
    #[error("store backend unavailable while {context}")]
    Unavailable {
        /// What the store was doing.
        context: String,
        /// The underlying failure.
        #[source]
        source: Option<BoxError>,
    },
    /// The backend did not answer in time. Retrying an append with the same event id is safe.
    #[error("timed out while {context}")]
    Timeout {
        /// What the store was doing.
        context: String,
    },
    /// The backend refused the operation because one of its limits is reached. Nothing was
    /// written. [`StoreError::is_transient`] tells whether the limit clears by itself (others
    /// finish their work: retry later) or needs an operator (raise the limit, free space).
    #[error("store backend refused {context}: {limit}")]
    LimitReached {
        /// Which limit.
        limit: ServerLimit,
        /// What the store was doing.
        context: String,
        /// The server's refusal.
        #[source]
        source: BoxError,
    },
    /// The server refused the operation for the user's permissions: they forbid publishing
    /// to, or subscribing to, `subject`. Not transient: the same call is refused again until an
    /// operator grants the permission. A refused publish wrote nothing; when the refused
    /// subject is the reply inbox, the request went out and its outcome is unknown (as after a
    /// timeout, retrying an append with the same event ids is safe once the permission is
    /// granted).
    #[error("permission denied while {context}: the server refused {operation} to {subject:?}")]
    PermissionDenied {
        /// `"publish"` or `"subscribe"`.
        operation: &'static str,
        /// The refused subject.
        subject: String,
        /// What the store was doing.
        context: String,
    },
    /// The backend refused or failed the operation for another reason.
    #[error("store backend error while {context}")]
    Backend {
        /// What the store was doing.
        context: String,
        /// The underlying failure.
        #[source]
        source: BoxError,
    },
}

/// The text of `e` and of its sources, joined by ": " (for logs and for reasons carried as text).
///
/// ```
/// let e = aether_core::StoreError::backend("reading", "permission denied");
/// assert_eq!(aether_core::error_chain(&e), "store backend error while reading: permission denied");
/// ```
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(source) = next {
        text.push_str(": ");
        text.push_str(&source.to_string());
        next = source.source();
    }
    text
}

impl CodecError {
    /// The same error, its source as text (see [`StoreError::detached`]).
    fn detached(&self) -> CodecError {
        CodecError {
            op: self.op,
            type_name: self.type_name,
            detail: self.detail.clone(),
            source: self.source.as_ref().map(|s| error_chain(s.as_ref()).into()),
        }
    }
}

impl StoreError {
    /// A copy of this error for another receiver (several callers waiting on one failed
    /// operation; `StoreError` is not `Clone` because its sources are boxed): the same variant
    /// and fields, so [`Self::is_transient`] and [`Self::is_version_conflict`] answer the same,
    /// with each boxed source replaced by its message (and its sources' messages).
    pub fn detached(&self) -> StoreError {
        let text = |source: &BoxError| -> BoxError { error_chain(source.as_ref()).into() };
        match self {
            StoreError::VersionConflict(c) => StoreError::VersionConflict(c.clone()),
            StoreError::InvalidEvent(i) => StoreError::InvalidEvent(i.clone()),
            StoreError::InvalidBatch { actor_id, reason } => StoreError::InvalidBatch {
                actor_id: actor_id.clone(),
                reason: reason.clone(),
            },
            StoreError::InvalidSnapshot { actor_id, reason } => StoreError::InvalidSnapshot {
                actor_id: actor_id.clone(),
                reason: reason.clone(),
            },
            StoreError::Codec(c) => StoreError::Codec(c.detached()),
            StoreError::DuplicateEventId {
                event_id,
                stored_actor_id,
                stored_version,
            } => StoreError::DuplicateEventId {
                event_id: *event_id,
                stored_actor_id: stored_actor_id.clone(),
                stored_version: *stored_version,
            },
            StoreError::TooLarge {
                actor_id,
                event_id,
                size,
                max,
            } => StoreError::TooLarge {
                actor_id: actor_id.clone(),
                event_id: *event_id,
                size: *size,
                max: *max,
            },
            StoreError::Unavailable { context, source } => StoreError::Unavailable {
                context: context.clone(),
                source: source.as_ref().map(text),
            },
            StoreError::Timeout { context } => StoreError::Timeout {
                context: context.clone(),
            },
            StoreError::LimitReached {
                limit,
                context,
                source,
            } => StoreError::LimitReached {
                limit: *limit,
                context: context.clone(),
                source: text(source),
            },
            StoreError::PermissionDenied {
                operation,
                subject,
                context,
            } => StoreError::PermissionDenied {
                operation,
                subject: subject.clone(),
                context: context.clone(),
            },
            StoreError::Backend { context, source } => StoreError::Backend {
                context: context.clone(),
                source: text(source),
            },
        }
    }

    /// `true` for [`StoreError::PermissionDenied`]: the user's permissions forbid a subject the
    /// call needs. Never transient.
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, StoreError::PermissionDenied { .. })
    }

    /// `true` for [`StoreError::VersionConflict`]: the Rust form of
    /// `errors.Is(err, ErrVersionConflict)`.
    pub fn is_version_conflict(&self) -> bool {
        matches!(self, StoreError::VersionConflict(_))
    }

    /// `true` for [`StoreError::Unavailable`] and [`StoreError::Timeout`]: the backend was
    /// unreachable, electing a leader or slow, and the operation may or may not have taken effect.
    /// Retrying an append **with the same event ids** is safe (a stored one is recognised, never
    /// stored twice); the runtime does so within `RetryPolicy::transient_budget`.
    ///
    /// A [`StoreError::LimitReached`] is transient when its limit clears by itself
    /// ([`ServerLimit::clears_by_itself`]).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Unavailable { .. } | StoreError::Timeout { .. } => true,
            StoreError::LimitReached { limit, .. } => limit.clears_by_itself(),
            _ => false,
        }
    }

    /// The conflict details, if this is a version conflict: the Rust form of `errors.As`.
    pub fn as_version_conflict(&self) -> Option<&VersionConflict> {
        match self {
            StoreError::VersionConflict(c) => Some(c),
            _ => None,
        }
    }

    /// Builds a [`StoreError::Backend`] from any error.
    pub fn backend(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        StoreError::Backend {
            context: context.into(),
            source: source.into(),
        }
    }
}

/// A limit of the backend's server that refused an operation (see [`StoreError::LimitReached`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ServerLimit {
    /// The most consumers the server, account or stream may hold at once.
    Consumers,
    /// The most concurrent atomic batches a stream accepts.
    InFlightBatches,
    /// The memory the account or server may use for stored messages.
    Memory,
    /// The disk space the account or server may use for stored messages.
    Storage,
    /// Another resource limit of the account or server.
    Resources,
}

impl ServerLimit {
    /// Whether the limit clears without an operator: held only while other operations are
    /// under way (consumers, batches in flight), so a later retry succeeds. Memory, storage and
    /// other resource limits need the limit raised or space freed.
    pub fn clears_by_itself(self) -> bool {
        matches!(self, ServerLimit::Consumers | ServerLimit::InFlightBatches)
    }
}

impl fmt::Display for ServerLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServerLimit::Consumers => {
                "the server's consumer limit is reached (for the server, the account or the \
                 stream); it clears as other reads end"
            }
            ServerLimit::InFlightBatches => {
                "the stream has as many atomic batches in flight as the server accepts; it \
                 clears as they commit"
            }
            ServerLimit::Memory => {
                "the memory limit for stored messages is reached (of the account or the \
                 server): raise it or free memory"
            }
            ServerLimit::Storage => {
                "the storage limit is reached (of the account or the server): raise it or free \
                 disk space"
            }
            ServerLimit::Resources => {
                "a resource limit of the account or the server is reached: raise it"
            }
        })
    }
}

/// A namespace name that breaks the rules of [`crate::Namespace`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NamespaceError {
    /// The name is empty.
    #[error("namespace is empty")]
    Empty,
    /// The name is longer than [`crate::Namespace::MAX_LEN`].
    #[error("namespace is {len} bytes long; the limit is {max}")]
    TooLong {
        /// Length of the rejected name.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The name contains a character outside `[A-Za-z0-9_-]` and the `.` separator.
    #[error(
        "namespace {name:?} contains {ch:?} at byte {index}; allowed are ASCII letters, digits, '-', '_' and '.' between tokens"
    )]
    InvalidChar {
        /// The rejected name.
        name: String,
        /// The offending character.
        ch: char,
        /// Its byte offset.
        index: usize,
    },
    /// The name has an empty dot-separated token (leading, trailing or doubled `.`).
    #[error("namespace {name:?} has an empty token (leading, trailing or doubled '.')")]
    EmptyToken {
        /// The rejected name.
        name: String,
    },
}

/// Publishing an event through an [`crate::EventBroadcaster`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BroadcastError {
    /// The broadcaster was stopped or closed.
    #[error("broadcaster is closed")]
    Closed,
    /// The event could not be encoded for the wire.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The server refused the publish for the user's permissions (a subject they may not
    /// publish to). Not transient.
    #[error("permission denied: the server refused {operation} to {subject:?}")]
    PermissionDenied {
        /// `"publish"` or `"subscribe"`.
        operation: &'static str,
        /// The refused subject.
        subject: String,
    },
    /// The transport failed.
    #[error("broadcast failed while {context}")]
    Transport {
        /// What the broadcaster was doing.
        context: String,
        /// The underlying failure.
        #[source]
        source: BoxError,
    },
}

/// The message of a caught panic (`std::panic::catch_unwind`'s payload): its text when it was a
/// string, else a placeholder. Every place that turns a caught panic into an error uses it.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_that_clears_by_itself_is_transient_and_named() {
        let refused = |limit| StoreError::LimitReached {
            limit,
            context: "starting a replay of actor \"a\"".into(),
            source: "maximum consumers limit reached".into(),
        };
        assert!(refused(ServerLimit::Consumers).is_transient());
        assert!(refused(ServerLimit::InFlightBatches).is_transient());
        assert!(!refused(ServerLimit::Storage).is_transient());
        assert!(!refused(ServerLimit::Memory).is_transient());
        let denied = StoreError::PermissionDenied {
            operation: "publish",
            subject: "ae.events.a".into(),
            context: "appending".into(),
        };
        assert!(!denied.is_transient() && denied.is_permission_denied());
        let text = refused(ServerLimit::Storage).to_string();
        assert!(
            text.starts_with(
                "store backend refused starting a replay of actor \"a\": the storage limit"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_store_failure_told_again_keeps_its_kind_and_message() {
        let cases = [
            StoreError::Timeout {
                context: "reading".into(),
            },
            StoreError::Unavailable {
                context: "reading".into(),
                source: Some("connection reset".into()),
            },
            StoreError::LimitReached {
                limit: ServerLimit::Consumers,
                context: "replaying".into(),
                source: "maximum consumers reached".into(),
            },
            StoreError::LimitReached {
                limit: ServerLimit::Storage,
                context: "appending".into(),
                source: "insufficient resources".into(),
            },
            StoreError::VersionConflict(VersionConflict::new("a", 3, 2)),
            StoreError::backend("reading", "permission denied"),
            StoreError::PermissionDenied {
                operation: "publish",
                subject: "ae.events.a".into(),
                context: "appending".into(),
            },
        ];
        for original in cases {
            let again = original.detached();
            assert_eq!(again.is_transient(), original.is_transient(), "{original}");
            assert_eq!(again.is_version_conflict(), original.is_version_conflict());
            assert_eq!(
                again.is_permission_denied(),
                original.is_permission_denied()
            );
            assert_eq!(error_chain(&again), error_chain(&original));
        }
    }
}
