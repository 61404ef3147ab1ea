//! # aether-bus
//!
//! Pub/sub for events, with namespace isolation:
//!
//! - [`EventBus`]: in process. Subscribers choose namespaces with a [`Pattern`] (NATS token rules:
//!   `*` one token, `>` the rest) and optional event-type / actor filters, and each gets a bounded
//!   buffer with a stated [`Overflow`] policy, so a slow subscriber cannot stall publishers or grow
//!   memory.
//! - `NatsEventBus` (feature `nats`, on by default): the same across nodes over core NATS
//!   subjects `aether.<namespace>`, with EventStored notifications that keep other nodes' version
//!   caches in step.
//! - [`ProjectionRunner`] (feature `nats`): durable projections over a JetStream event stream —
//!   the position is kept by the server, a failing handler is retried and then parked.
//!
//! Both implement [`aether_core::EventBroadcaster`], so a store can publish through them.

mod filter;
mod local;
pub mod metrics;
#[cfg(feature = "nats")]
mod nats;
mod pattern;
#[cfg(feature = "nats")]
mod projection;

/// Permission refusals heard on the connection ([`permissions::PermissionWatch`], see
/// [`NatsBusConfig::permissions`]; defined in `aether-nats`).
#[cfg(feature = "nats")]
pub use aether_nats::permissions;
pub use filter::EventFilter;
pub use local::{EventBus, Overflow, SubscribeOptions, Subscription};
#[cfg(feature = "nats")]
pub use nats::{
    BusError, NODE_REPLY_PREFIX, NatsBusConfig, NatsEventBus, RoundTripError, SUBJECT_PREFIX,
    round_trip, subject,
};
pub use pattern::{Pattern, PatternError};
#[cfg(feature = "nats")]
pub use projection::{
    Projection, ProjectionConfig, ProjectionError, ProjectionRunner, ProjectionStatus, StartFrom,
};
