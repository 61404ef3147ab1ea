//! # aether-store-jetstream
//!
//! [`JetStreamEventStore`]: Aether's production event store on NATS JetStream (nats-server 2.12
//! or newer). It implements [`aether_core::EventStore`], [`aether_core::EventStoreWithErrors`]
//! and [`aether_core::SnapshotStore`] with the same rules as every Aether store, and makes the
//! version check atomic **across processes**: the server refuses a write whose expected last
//! subject sequence is stale.
//!
//! The NATS layout (stream, subjects, headers, bucket, actor id encoding) is in [`layout`] and in
//! the project's `docs/nats-layout.md`.

mod cache;
mod config;
mod error;
pub mod layout;
mod metrics;
pub mod reminders;
mod store;

/// Permission refusals heard on the connection ([`permissions::PermissionWatch`], see
/// [`JetStreamConfig::permissions`]; defined in `aether-nats`).
pub use aether_nats::permissions;
/// The oldest supported nats-server and the version parser (defined in `aether-nats`).
pub use aether_nats::server_version;
/// The async-nats version this crate is built on, so callers connect with a matching client.
pub use async_nats;
pub use config::{DEFAULT_CACHE_CAPACITY, DEFAULT_MAX_REPLAY_CONSUMERS, JetStreamConfig, Storage};
pub use error::ConfigError;
pub use reminders::JetStreamReminders;
pub use store::{JetStreamEventStore, ReadStats, stream_problems};
