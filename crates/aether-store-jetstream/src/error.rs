//! Errors of opening a store (failed calls on an open store are classified by
//! [`aether_nats::classify`]).

use aether_core::BoxError;

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
    /// The server refused a subject the setup needs for the user's permissions (reported at
    /// once with [`crate::JetStreamConfig::permissions`]; without it, a timeout).
    #[error("permission denied while {context}: the server refused {operation} to {subject:?}")]
    PermissionDenied {
        /// `"publish"` or `"subscribe"`.
        operation: &'static str,
        /// The refused subject.
        subject: String,
        /// What the store was doing.
        context: String,
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

/// Failed server calls become [`aether_core::StoreError`]s by aether-nats's one classification.
pub(crate) use aether_nats::classify::store_error as backend;
