//! # aether-runtime
//!
//! Event-sourced virtual actors on one node.
//!
//! - [`Actor`]: your domain logic, decider style — `handle(&self, &command) -> events | error`
//!   and `apply(&mut self, &event)`; the state is the actor value, stored event types come from
//!   the event enum's variant names.
//! - [`Runtime`]: actors by id ([`ActorRef::ask`] / [`ActorRef::tell`]). An actor is activated
//!   on its first message (latest snapshot, then only the later events), handles one command at
//!   a time (different actors in parallel), appends its events all-or-nothing at the expected
//!   version, applies them, and optionally publishes them on a bus. On a version conflict it
//!   folds in the other writer's events and runs the command again ([`RetryPolicy`]). Idle
//!   actors are passivated, the least recently used is evicted at the cap, a panicking handler
//!   only reloads its own actor, and [`Runtime::shutdown`] drains every mailbox.
//! - [`SnapshotPolicy`]: every N events, on passivation, with a lower bound.
//! - [`CommandMemory`]: how long (default 60 s) and how many command ids an actor remembers to
//!   apply a command sent again at most once.
//! - [`metrics`]: the names recorded through the `metrics` facade.
//! - Feature `model`: `Runtime::load_model` refuses commands and events an EventStorming model
//!   (`aether-model`) does not declare for the aggregate; `ModelRuntime` runs the model's
//!   aggregates and policies without Rust code per aggregate.
//!
//! The runtime sees stores only as `Arc<dyn EventStore>` / `Arc<dyn SnapshotStore>` and the bus
//! as `Arc<dyn EventBroadcaster>`, so the same actor runs on the memory store in tests and on
//! JetStream in production.

mod actor;
mod config;
mod context;
mod error;
pub mod metrics;
#[cfg(feature = "model")]
mod model;
pub mod reminders;
mod runtime;
pub mod testing;

pub use actor::{Actor, event_type_of};
pub use config::{
    COMMAND_HORIZON, CommandMemory, MAX_REMEMBERED_COMMANDS, REMEMBERED_COMMANDS, RetryPolicy,
    RuntimeConfig, SNAPSHOT_COMMAND_BYTES, SNAPSHOT_COMMANDS, SnapshotPolicy,
};
pub use context::{Context, Fired};
pub use error::AskError;
#[cfg(feature = "model")]
pub use model::{
    Causes, Deadlines, LoadModelError, MAX_CAUSES, ModelActor, ModelCommand, ModelError,
    ModelEvent, ModelRuntime,
};
pub use runtime::{ActorRef, Applied, Runtime, RuntimeBuilder, RuntimeStats, SHUTDOWN_WINDOW};
