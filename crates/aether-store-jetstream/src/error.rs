//! Errors of opening a store, and the mapping of async-nats errors to [`StoreError`].

use aether_core::{BoxError, StoreError};

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

/// Permission problems come back as text from the server.
fn is_permission(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.to_string().to_lowercase().contains("permission") {
            return true;
        }
        cur = e.source();
    }
    false
}

/// Maps a failed server call to a [`StoreError`] with context.
pub(crate) fn backend<E>(context: impl Into<String>, err: E) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static,
{
    let context = context.into();
    let text = err.to_string().to_lowercase();
    if text.contains("timed out") || text.contains("timeout") {
        return StoreError::Timeout { context };
    }
    if is_permission(&err) {
        return StoreError::backend(format!("{context} (permission denied)"), err);
    }
    if text.contains("broken pipe")
        || text.contains("no responders")
        || text.contains("disconnected")
        || text.contains("connection")
    {
        return StoreError::Unavailable {
            context,
            source: Some(Box::new(err)),
        };
    }
    StoreError::backend(context, err)
}
