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
        }
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
