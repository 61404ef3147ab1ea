//! Actor snapshots: a captured state at a version, so activation need not replay everything.

use std::time::SystemTime;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::error::CodecError;
use crate::payload::{Payload, Value};

/// An actor's state captured at `version` (Go's `ActorSnapshot`). The state is stored
/// MessagePack-encoded like event payloads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ActorSnapshot {
    /// The actor.
    pub actor_id: String,
    /// The version of the last event folded into `state`.
    pub version: u64,
    /// The encoded state.
    pub state: Payload,
    /// When the snapshot was taken.
    pub timestamp: SystemTime,
    /// The last commands (by id) whose events are folded into `state`, oldest first, so that an
    /// actor activated from this snapshot still recognises a retried command (at-most-once
    /// effects across moves). Empty unless commands were sent with ids; absent on the wire
    /// when empty, and ignored by readers that do not know it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<CommandRecord>,
    /// The version of the state's shape (and of the `apply` code that folded it) this snapshot
    /// was taken under: the runtime writes its actor's `Actor::STATE_VERSION` and discards a
    /// snapshot of another version (the actor then replays its events through the upcasters).
    /// 1 unless set; absent on the wire when 1.
    #[serde(default = "first_state", skip_serializing_if = "is_first_state")]
    pub state_version: u32,
}

fn first_state() -> u32 {
    1
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's `skip_serializing_if` passes a reference
fn is_first_state(version: &u32) -> bool {
    *version == 1
}

/// A command folded into an actor's state: its id (the causation id of its events) and the
/// versions of the events it caused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CommandRecord {
    /// The command id.
    pub id: String,
    /// Version of its first event.
    pub first: u64,
    /// Version of its last event.
    pub last: u64,
}

impl CommandRecord {
    /// A command `id` that caused the events at versions `first..=last`.
    pub fn new(id: impl Into<String>, first: u64, last: u64) -> Self {
        Self {
            id: id.into(),
            first,
            last,
        }
    }
}

impl ActorSnapshot {
    /// Captures `state` (any `Serialize` type) for `actor_id` at `version`, timestamped now.
    pub fn new<T: Serialize + ?Sized>(
        actor_id: impl Into<String>,
        version: u64,
        state: &T,
    ) -> Result<Self, CodecError> {
        Ok(Self::from_encoded(
            actor_id,
            version,
            Payload::encode(state)?,
        ))
    }

    /// A snapshot from an already encoded state, timestamped now.
    pub fn from_encoded(actor_id: impl Into<String>, version: u64, state: Payload) -> Self {
        Self {
            actor_id: actor_id.into(),
            version,
            state,
            timestamp: SystemTime::now(),
            commands: Vec::new(),
            state_version: 1,
        }
    }

    /// The same snapshot marked as taken under state version `state_version`.
    #[must_use]
    pub fn with_state_version(mut self, state_version: u32) -> Self {
        self.state_version = state_version;
        self
    }

    /// The same snapshot recording the last `commands` folded into its state.
    #[must_use]
    pub fn with_commands(mut self, commands: Vec<CommandRecord>) -> Self {
        self.commands = commands;
        self
    }

    /// Decodes the state into `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, CodecError> {
        self.state.decode()
    }

    /// Decodes the state into a dynamic [`Value`] (Go's `map[string]interface{}` state).
    pub fn data(&self) -> Result<Value, CodecError> {
        self.state.to_value()
    }
}
