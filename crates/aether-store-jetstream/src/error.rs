//! Errors of opening a store, and the mapping of async-nats errors to [`StoreError`].

use aether_core::{BoxError, ServerLimit, StoreError};
use async_nats::jetstream::ErrorCode;

/// Opening a [`crate::JetStreamEventStore`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The store name is not 1..=32 bytes of `[a-z0-9-]`.
    #[error("invalid store name {name:?}: use 1 to 32 lowercase ASCII letters, digits or '-'")]
    InvalidStoreName {
        /// The rejected name.
        name: String,
    },
    /// The configuration itself is invalid.
    #[error("invalid configuration: {reason}")]
    Invalid {
        /// What is wrong.
        reason: String,
    },
    /// A stream of that name exists with settings this store cannot work with.
    #[error("stream {stream:?} exists with an incompatible configuration: {differences}")]
    IncompatibleStream {
        /// The stream.
        stream: String,
        /// Every setting that differs, as `setting: found X, need Y`.
        differences: String,
    },
    /// The server does not have JetStream enabled (or the account has no JetStream).
    #[error("JetStream is not enabled on the server (start nats-server with -js)")]
    JetStreamNotEnabled,
    /// The server is older than this store needs.
    #[error("nats-server {version} is too old: {need}")]
    ServerTooOld {
        /// The server's version.
        version: String,
        /// What needs a newer one.
        need: String,
    },
    /// The server failed or refused the setup.
    #[error("setting up the store on the server failed while {context}")]
    Server {
        /// What the store was doing.
        context: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
}

/// The JetStream API error code inside an async-nats error's source chain, if any.
pub(crate) fn jetstream_code(err: &(dyn std::error::Error + 'static)) -> Option<u64> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(js) = e.downcast_ref::<async_nats::jetstream::Error>() {
            return Some(js.error_code().0);
        }
        cur = e.source();
    }
    None
}

/// The server limit a JetStream error code reports, if it reports one.
pub(crate) fn server_limit(code: u64) -> Option<ServerLimit> {
    match ErrorCode(code) {
        ErrorCode::MAXIMUM_CONSUMERS_LIMIT => Some(ServerLimit::Consumers),
        ErrorCode::ATOMIC_PUBLISH_TOO_MANY_INFLIGHT => Some(ServerLimit::InFlightBatches),
        ErrorCode::MEMORY_RESOURCES_EXCEEDED => Some(ServerLimit::Memory),
        ErrorCode::STORAGE_RESOURCES_EXCEEDED => Some(ServerLimit::Storage),
        ErrorCode::ACCOUNT_RESOURCES_EXCEEDED | ErrorCode::INSUFFICIENT_RESOURCES => {
            Some(ServerLimit::Resources)
        }
        _ => None,
    }
}

/// A refusal for a server limit, as the store reports it: [`StoreError::LimitReached`] (transient
/// when the limit clears by itself).
pub(crate) fn limit_reached(
    limit: ServerLimit,
    context: String,
    source: impl Into<BoxError>,
) -> StoreError {
    StoreError::LimitReached {
        limit,
        context,
        source: source.into(),
    }
}

/// How a failed NATS call is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// No answer in time: the outcome is unknown.
    Timeout,
    /// Nothing was done: nobody answered the request (no stream leader, server gone) or the
    /// connection is down. Safe to retry.
    Unavailable,
    /// Anything else.
    Other,
}

/// An async-nats error the store can classify by its `kind()` (never by its message text).
pub(crate) trait NatsError: std::error::Error + Send + Sync + 'static {
    /// The class of this failure.
    fn class(&self) -> Class;

    /// The JetStream API error code of the refusal, if the server refused.
    fn code(&self) -> Option<u64>
    where
        Self: Sized,
    {
        jetstream_code(self)
    }
}

macro_rules! classify_by_kind {
    ($($ty:ty => |$k:ident| $body:expr;)*) => {
        $(impl NatsError for $ty {
            fn class(&self) -> Class {
                let $k = self.kind();
                $body
            }
        })*
    };
}

use async_nats::jetstream::{consumer, context, kv, stream};

classify_by_kind! {
    async_nats::RequestError => |k| match k {
        async_nats::RequestErrorKind::TimedOut => Class::Timeout,
        async_nats::RequestErrorKind::NoResponders => Class::Unavailable,
        _ => Class::Other,
    };
    context::RequestError => |k| match k {
        context::RequestErrorKind::TimedOut => Class::Timeout,
        context::RequestErrorKind::NoResponders => Class::Unavailable,
        _ => Class::Other,
    };
    context::PublishError => |k| match k {
        context::PublishErrorKind::TimedOut => Class::Timeout,
        context::PublishErrorKind::BrokenPipe => Class::Unavailable,
        _ => Class::Other,
    };
    async_nats::PublishError => |k| match k {
        async_nats::client::PublishErrorKind::Send => Class::Unavailable,
        _ => Class::Other,
    };
    consumer::StreamError => |k| match k {
        consumer::StreamErrorKind::TimedOut => Class::Timeout,
        _ => Class::Other,
    };
    kv::EntryError => |k| match k {
        kv::EntryErrorKind::TimedOut => Class::Timeout,
        _ => Class::Other,
    };
    kv::UpdateError => |k| match k {
        kv::UpdateErrorKind::TimedOut => Class::Timeout,
        _ => Class::Other,
    };
}

/// Creating a consumer: the server's refusal is the error's kind, not its source.
impl NatsError for stream::ConsumerError {
    fn class(&self) -> Class {
        match self.kind() {
            stream::ConsumerErrorKind::TimedOut => Class::Timeout,
            _ => Class::Other,
        }
    }

    fn code(&self) -> Option<u64> {
        match self.kind() {
            stream::ConsumerErrorKind::JetStream(e) => Some(e.error_code().0),
            _ => jetstream_code(self),
        }
    }
}

/// Kinds without a timeout or "nothing done" case: classified by their cause, if any.
impl NatsError for stream::LastRawMessageError {
    fn class(&self) -> Class {
        Class::Other
    }
}

impl NatsError for consumer::push::OrderedError {
    fn class(&self) -> Class {
        Class::Other
    }
}

impl NatsError for kv::CreateError {
    fn class(&self) -> Class {
        Class::Other
    }
}

/// The class of the first classifiable error in `err`'s source chain (an operation's `Other`
/// often wraps the request or I/O error that says what happened).
fn cause_class(err: &(dyn std::error::Error + 'static)) -> Class {
    let mut cur = err.source();
    while let Some(e) = cur {
        let class = if let Some(e) = e.downcast_ref::<async_nats::RequestError>() {
            e.class()
        } else if let Some(e) = e.downcast_ref::<context::RequestError>() {
            e.class()
        } else if let Some(e) = e.downcast_ref::<context::PublishError>() {
            e.class()
        } else if let Some(e) = e.downcast_ref::<std::io::Error>() {
            match e.kind() {
                std::io::ErrorKind::TimedOut => Class::Timeout,
                std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::NotConnected => Class::Unavailable,
                _ => Class::Other,
            }
        } else {
            Class::Other
        };
        if class != Class::Other {
            return class;
        }
        cur = e.source();
    }
    Class::Other
}

/// Maps a failed server call to a [`StoreError`] with context, by the error's kind: a refusal
/// for a server limit is [`StoreError::LimitReached`], a timeout [`StoreError::Timeout`],
/// "nobody answered" or a broken connection [`StoreError::Unavailable`] (nothing was done),
/// anything else [`StoreError::Backend`].
pub(crate) fn backend<E: NatsError>(context: impl Into<String>, err: E) -> StoreError {
    let context = context.into();
    if let Some(limit) = err.code().and_then(server_limit) {
        return limit_reached(limit, context, err);
    }
    let class = match err.class() {
        Class::Other => cause_class(&err),
        class => class,
    };
    match class {
        Class::Timeout => StoreError::Timeout { context },
        Class::Unavailable => StoreError::Unavailable {
            context,
            source: Some(Box::new(err)),
        },
        Class::Other => StoreError::backend(context, err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::RequestErrorKind;
    use async_nats::jetstream::stream::LastRawMessageErrorKind;

    #[test]
    #[allow(clippy::unwrap_used)]
    fn server_limits_are_named_by_their_codes() {
        assert_eq!(server_limit(10026), Some(ServerLimit::Consumers));
        assert_eq!(server_limit(10210), Some(ServerLimit::InFlightBatches));
        assert_eq!(server_limit(10028), Some(ServerLimit::Memory));
        assert_eq!(server_limit(10047), Some(ServerLimit::Storage));
        assert_eq!(server_limit(10002), Some(ServerLimit::Resources));
        assert_eq!(server_limit(10023), Some(ServerLimit::Resources));
        assert_eq!(server_limit(10071), None);
        let reply: async_nats::jetstream::Error = serde_json::from_str(
            r#"{"code": 400, "err_code": 10026, "description": "maximum consumers limit reached"}"#,
        )
        .unwrap();
        let refused = stream::ConsumerError::new(stream::ConsumerErrorKind::JetStream(reply));
        let e = backend("starting a replay", refused);
        assert!(
            matches!(
                e,
                StoreError::LimitReached {
                    limit: ServerLimit::Consumers,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.is_transient());
    }

    #[test]
    fn failures_are_classified_by_kind_not_text() {
        let timeout = async_nats::RequestError::new(RequestErrorKind::TimedOut);
        assert!(matches!(backend("a", timeout), StoreError::Timeout { .. }));
        let nobody = async_nats::RequestError::new(RequestErrorKind::NoResponders);
        assert!(matches!(
            backend("b", nobody),
            StoreError::Unavailable { .. }
        ));
        // An operation's `Other` wrapping "no responders": nothing was done.
        let wrapped = stream::LastRawMessageError::with_source(
            LastRawMessageErrorKind::Other,
            async_nats::RequestError::new(RequestErrorKind::NoResponders),
        );
        assert!(matches!(
            backend("c", wrapped),
            StoreError::Unavailable { .. }
        ));
        // Text that merely mentions a timeout is not a timeout.
        let other = stream::LastRawMessageError::with_source(
            LastRawMessageErrorKind::Other,
            std::io::Error::other("the word timeout in a message"),
        );
        assert!(matches!(backend("d", other), StoreError::Backend { .. }));
    }
}
