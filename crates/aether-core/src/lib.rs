//! # aether-core
//!
//! The small, stable heart of Aether: the [`Event`] and [`ActorSnapshot`] types, the
//! [`EventStore`], [`EventStoreWithErrors`], [`SnapshotStore`] and [`EventBroadcaster`] traits
//! every layer composes through (as `Arc<dyn ...>`), the errors they return, validated
//! [`Namespace`]s, and the version rules of [`limits`] that every store enforces.
//!
//! It knows nothing of NATS or of an async runtime; implementations live in their own crates
//! (`aether-store-memory`, `aether-store-jetstream`, `aether-bus`).
//!
//! ```
//! use aether_core::{Event, StoreError, VersionConflict};
//! let conflict: StoreError = VersionConflict::new("order-1", 2, 2).into();
//! assert!(conflict.is_version_conflict());
//! assert_eq!(conflict.as_version_conflict().map(|c| c.current_version), Some(2));
//! ```

mod backoff;
mod command_id;
mod error;
mod event;
#[cfg(feature = "json")]
pub mod history;
pub mod limits;
mod namespace;
mod payload;
pub mod reminder;
mod snapshot;
mod store;
pub mod store_metrics;
pub mod upcast;
pub mod wire;

pub use backoff::Backoff;
pub use command_id::CommandId;
pub use error::{
    BoxError, BroadcastError, CodecError, EventError, NamespaceError, ServerLimit, StoreError,
    VersionConflict, error_chain, panic_message,
};
pub use event::{
    EVENT_STORED, Event, EventBuilder, EventStored, Metadata, ReplayError, ReplayResult,
};
pub use namespace::Namespace;
pub use payload::{Payload, Value};
pub use reminder::{Reminder, ReminderError, ReminderKey, ReminderStore, When};
pub use snapshot::{ActorSnapshot, CommandRecord};
pub use store::{
    EventBroadcaster, EventStore, EventStoreWithErrors, EventStream, SnapshotStore, VersionCache,
};
pub use upcast::{EventShape, UpcastError, Upcasters};
