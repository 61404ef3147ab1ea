//! An async-nats failure classified by its `kind()` and its causes' kinds, never by message text:
//! a timeout (outcome unknown), "nothing was done" (nobody answered, the connection is down), or
//! other; and mapped to [`StoreError`] with context, naming the server limit a refusal reports.

use aether_core::{BoxError, ServerLimit, StoreError};
use async_nats::jetstream::{consumer, context, kv, stream};

use crate::codes::{ErrorCode, is_cluster_settling, jetstream_code, server_limit};

/// A refusal for a server limit, as a store reports it: [`StoreError::LimitReached`] (transient
/// when the limit clears by itself).
pub fn limit_reached(
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
pub enum Class {
    /// No answer in time: the outcome is unknown.
    Timeout,
    /// Nothing was done: nobody answered the request (no stream leader, server gone) or the
    /// connection is down. Safe to retry.
    Unavailable,
    /// Anything else.
    Other,
}

/// An async-nats error Aether can classify by its `kind()` (never by its message text).
pub trait NatsError: std::error::Error + Send + Sync + 'static {
    /// The class of this failure.
    fn class(&self) -> Class;

    /// The JetStream API error code of the refusal, if the server refused.
    fn code(&self) -> Option<ErrorCode>
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
        // "No responders": no stream took the message (none, or between leaders).
        context::PublishErrorKind::BrokenPipe | context::PublishErrorKind::StreamNotFound => {
            Class::Unavailable
        }
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
    stream::PurgeError => |k| match k {
        stream::PurgeErrorKind::TimedOut => Class::Timeout,
        stream::PurgeErrorKind::Request => Class::Unavailable,
        _ => Class::Other,
    };
    consumer::pull::MessagesError => |k| match k {
        consumer::pull::MessagesErrorKind::MissingHeartbeat
        | consumer::pull::MessagesErrorKind::NoResponders
        | consumer::pull::MessagesErrorKind::Pull => Class::Unavailable,
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

    fn code(&self) -> Option<ErrorCode> {
        match self.kind() {
            stream::ConsumerErrorKind::JetStream(e) => Some(e.error_code()),
            _ => jetstream_code(self),
        }
    }
}

/// A direct get (what a KV read is on a stream that allows them): a 503 status means no server
/// serves direct gets for the stream yet (its replicas are starting), nothing was read.
impl NatsError for stream::DirectGetError {
    fn class(&self) -> Class {
        match self.kind() {
            stream::DirectGetErrorKind::TimedOut => Class::Timeout,
            stream::DirectGetErrorKind::ErrorResponse(status, _)
                if status == async_nats::StatusCode::NO_RESPONDERS =>
            {
                Class::Unavailable
            }
            _ => Class::Other,
        }
    }
}

/// Reading a subject's last message: no timeout or "nothing done" kind (classified by its
/// cause, if any); the server's refusal is the error's kind.
impl NatsError for stream::LastRawMessageError {
    fn class(&self) -> Class {
        Class::Other
    }

    fn code(&self) -> Option<ErrorCode> {
        match self.kind() {
            stream::LastRawMessageErrorKind::JetStream(e) => Some(e.error_code()),
            _ => jetstream_code(self),
        }
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

/// Reading a stream's info (binding to it): the server's refusal (no such stream) is the
/// error's kind; a timeout or "no responders" is its cause.
impl NatsError for context::GetStreamError {
    fn class(&self) -> Class {
        Class::Other
    }

    fn code(&self) -> Option<ErrorCode> {
        match self.kind() {
            context::GetStreamErrorKind::JetStream(e) => Some(e.error_code()),
            _ => jetstream_code(self),
        }
    }
}

/// Creating a stream: the server's refusal is the error's kind, not its source.
impl NatsError for context::CreateStreamError {
    fn class(&self) -> Class {
        match self.kind() {
            context::CreateStreamErrorKind::TimedOut => Class::Timeout,
            _ => Class::Other,
        }
    }

    fn code(&self) -> Option<ErrorCode> {
        match self.kind() {
            context::CreateStreamErrorKind::JetStream(e) => Some(e.error_code()),
            _ => jetstream_code(self),
        }
    }
}

impl NatsError for context::CreateKeyValueError {
    fn class(&self) -> Class {
        match self.kind() {
            context::CreateKeyValueErrorKind::TimedOut => Class::Timeout,
            _ => Class::Other,
        }
    }
}

/// The class of `err`: its own kind, or else the first classifiable kind among its causes.
pub fn class_of<E: NatsError>(err: &E) -> Class {
    match err.class() {
        // "JetStream temporarily unavailable", no meta leader, no peers yet: an election or a
        // restart under way, nothing was done, and it clears by itself (seen as code 10008
        // while servers were killed under load by `cargo xtask chaos`).
        Class::Other if err.code().is_some_and(is_cluster_settling) => Class::Unavailable,
        Class::Other => cause_class(err),
        class => class,
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
        } else if let Some(e) = e.downcast_ref::<stream::DirectGetError>() {
            class_of(e)
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
pub fn store_error<E: NatsError>(context: impl Into<String>, err: E) -> StoreError {
    let context = context.into();
    if let Some(limit) = err.code().and_then(server_limit) {
        return StoreError::LimitReached {
            limit,
            context,
            source: Box::new(err),
        };
    }
    match class_of(&err) {
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
    fn a_refused_consumer_names_the_limit() {
        let reply: async_nats::jetstream::Error = serde_json::from_str(
            r#"{"code": 400, "err_code": 10026, "description": "maximum consumers limit reached"}"#,
        )
        .unwrap();
        let refused = stream::ConsumerError::new(stream::ConsumerErrorKind::JetStream(reply));
        let e = store_error("starting a replay", refused);
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
    #[allow(clippy::unwrap_used)]
    fn a_cluster_that_is_settling_is_unavailable_not_a_backend_failure() {
        let reply: async_nats::jetstream::Error = serde_json::from_str(
            r#"{"code": 503, "err_code": 10008, "description": "JetStream system temporarily unavailable"}"#,
        )
        .unwrap();
        let refused = stream::LastRawMessageError::new(LastRawMessageErrorKind::JetStream(reply));
        let e = store_error("reading the last event", refused);
        assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}");
        assert!(e.is_transient());
    }

    #[test]
    fn failures_are_classified_by_kind_not_text() {
        let timeout = async_nats::RequestError::new(RequestErrorKind::TimedOut);
        assert!(matches!(
            store_error("a", timeout),
            StoreError::Timeout { .. }
        ));
        let nobody = async_nats::RequestError::new(RequestErrorKind::NoResponders);
        assert!(matches!(
            store_error("b", nobody),
            StoreError::Unavailable { .. }
        ));
        // An operation's `Other` wrapping "no responders": nothing was done.
        let wrapped = stream::LastRawMessageError::with_source(
            LastRawMessageErrorKind::Other,
            async_nats::RequestError::new(RequestErrorKind::NoResponders),
        );
        assert!(matches!(
            store_error("c", wrapped),
            StoreError::Unavailable { .. }
        ));
        // Text that merely mentions a timeout is not a timeout.
        let other = stream::LastRawMessageError::with_source(
            LastRawMessageErrorKind::Other,
            std::io::Error::other("the word timeout in a message"),
        );
        assert!(matches!(
            store_error("d", other),
            StoreError::Backend { .. }
        ));
    }

    #[test]
    fn a_kv_read_nobody_served_yet_is_unavailable() {
        use async_nats::jetstream::kv::{EntryError, EntryErrorKind};
        use async_nats::jetstream::stream::{DirectGetError, DirectGetErrorKind};
        // What a KV read returns while the bucket's replicas are starting (seen on a new R3
        // cluster): the direct get's 503, wrapped in the read's `Other`.
        let starting = EntryError::with_source(
            EntryErrorKind::Other,
            DirectGetError::new(DirectGetErrorKind::ErrorResponse(
                async_nats::StatusCode::NO_RESPONDERS,
                "no responders".to_owned(),
            )),
        );
        let e = store_error("reading a snapshot", starting);
        assert!(
            matches!(e, StoreError::Unavailable { .. }) && e.is_transient(),
            "{e:?}"
        );
        // Another refusal of the read is not.
        let refused = EntryError::with_source(
            EntryErrorKind::Other,
            DirectGetError::new(DirectGetErrorKind::ErrorResponse(
                async_nats::StatusCode::REQUEST_TERMINATED,
                "terminated".to_owned(),
            )),
        );
        assert!(matches!(
            store_error("reading a snapshot", refused),
            StoreError::Backend { .. }
        ));
    }
}
