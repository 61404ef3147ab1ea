//! Actor snapshots: a captured state at a version, so activation need not replay everything.

use std::time::SystemTime;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::error::CodecError;
use crate::payload::{Payload, Value};

/// How many of a snapshot's newest command records are encoded under `commands`, the key every
/// reader knows; the older ones go under `earlier_commands`. Readers written before the runtime
/// remembered commands for a time kept the first 256 records of `commands`: this way those are
/// the newest 256, as they were then.
const COMMANDS_FOR_EVERY_READER: usize = 256;

/// An actor's state captured at `version` (Go's `ActorSnapshot`). The state is stored
/// MessagePack-encoded like event payloads.
///
/// Encoded as a map of its fields, but for `commands`: the newest 256 records under
/// `commands`, any older ones under `earlier_commands` (both oldest first, absent when empty).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "SnapshotOnWire")]
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
    /// The recent commands (by id) whose events are folded into `state`, oldest first, so that
    /// an actor activated from this snapshot still recognises a retried command (at-most-once
    /// effects across moves). The runtime writes the newest of those it remembers, bounded (see
    /// `aether_runtime::CommandMemory`). Empty unless commands were sent with ids; absent on the
    /// wire when empty, and ignored by readers that do not know it.
    pub commands: Vec<CommandRecord>,
    /// The version of the state's shape (and of the `apply` code that folded it) this snapshot
    /// was taken under: the runtime writes its actor's `Actor::STATE_VERSION` and discards a
    /// snapshot of another version (the actor then replays its events through the upcasters).
    /// 1 unless set; absent on the wire when 1.
    pub state_version: u32,
}

fn first_state() -> u32 {
    1
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's `skip_serializing_if` passes a reference
fn is_first_state(version: &u32) -> bool {
    *version == 1
}

// serde's `skip_serializing_if` passes a reference to the field.
fn no_records(records: &&[CommandRecord]) -> bool {
    records.is_empty()
}

/// An [`ActorSnapshot`] as encoded (borrowed): its fields, with `commands` split.
#[derive(Serialize)]
struct SnapshotToWire<'a> {
    actor_id: &'a str,
    version: u64,
    state: &'a Payload,
    timestamp: &'a SystemTime,
    /// The newest records (at most [`COMMANDS_FOR_EVERY_READER`]), oldest first.
    #[serde(skip_serializing_if = "no_records")]
    commands: &'a [CommandRecord],
    #[serde(skip_serializing_if = "is_first_state")]
    state_version: u32,
    /// The records before them, oldest first.
    #[serde(skip_serializing_if = "no_records")]
    earlier_commands: &'a [CommandRecord],
}

/// An [`ActorSnapshot`] as decoded: `earlier_commands` then `commands` are its commands.
#[derive(Deserialize)]
struct SnapshotOnWire {
    actor_id: String,
    version: u64,
    state: Payload,
    timestamp: SystemTime,
    #[serde(default)]
    commands: Vec<CommandRecord>,
    #[serde(default = "first_state")]
    state_version: u32,
    #[serde(default)]
    earlier_commands: Vec<CommandRecord>,
}

impl Serialize for ActorSnapshot {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let split = self
            .commands
            .len()
            .saturating_sub(COMMANDS_FOR_EVERY_READER);
        let (earlier, newest) = self.commands.split_at(split);
        SnapshotToWire {
            actor_id: &self.actor_id,
            version: self.version,
            state: &self.state,
            timestamp: &self.timestamp,
            commands: newest,
            state_version: self.state_version,
            earlier_commands: earlier,
        }
        .serialize(serializer)
    }
}

impl From<SnapshotOnWire> for ActorSnapshot {
    fn from(wire: SnapshotOnWire) -> Self {
        let mut commands = wire.earlier_commands;
        commands.extend(wire.commands);
        Self {
            actor_id: wire.actor_id,
            version: wire.version,
            state: wire.state,
            timestamp: wire.timestamp,
            commands,
            state_version: wire.state_version,
        }
    }
}

/// A command folded into an actor's state: its id (the causation id of its events), the
/// versions of the events it caused, and when it was applied.
///
/// ```
/// use aether_core::CommandRecord;
/// let record = CommandRecord::new("payment-77", 3, 4).at(1_767_225_600_000);
/// assert_eq!(record.at, Some(1_767_225_600_000));
/// assert_eq!(CommandRecord::new("payment-77", 3, 4).at, None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CommandRecord {
    /// The command id.
    pub id: String,
    /// Version of its first event.
    pub first: u64,
    /// Version of its last event.
    pub last: u64,
    /// When the command was applied: the timestamp of its first event, in milliseconds since
    /// the Unix epoch. `None` in records written before it existed (a reader treats those as
    /// old); absent on the wire when `None`, and ignored by readers that do not know it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<u64>,
}

impl CommandRecord {
    /// A command `id` that caused the events at versions `first..=last`, with no time.
    pub fn new(id: impl Into<String>, first: u64, last: u64) -> Self {
        Self {
            id: id.into(),
            first,
            last,
            at: None,
        }
    }

    /// The same record, applied at `millis` milliseconds since the Unix epoch.
    #[must_use]
    pub fn at(mut self, millis: u64) -> Self {
        self.at = Some(millis);
        self
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

    /// The same snapshot recording the recent `commands` folded into its state, oldest first.
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

#[cfg(test)]
mod tests {
    // Test code: a failed expectation panics.
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    /// A snapshot as an older writer encoded it: its command records without `at`.
    #[derive(Serialize)]
    struct OldRecord {
        id: &'static str,
        first: u64,
        last: u64,
    }

    #[test]
    fn command_times_round_trip_and_are_absent_when_unknown() {
        let snapshot = ActorSnapshot::new("a", 4, &7u32)
            .unwrap()
            .with_commands(vec![
                CommandRecord::new("old", 1, 2),
                CommandRecord::new("new", 3, 4).at(1_767_225_600_123),
            ]);
        let bytes = rmp_serde::to_vec_named(&snapshot).unwrap();
        let back: ActorSnapshot = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, snapshot);
        assert_eq!(back.commands[1].at, Some(1_767_225_600_123));

        // Only the record with a time carries the key.
        let value = rmpv::decode::read_value(&mut bytes.as_slice()).unwrap();
        let commands = value
            .as_map()
            .unwrap()
            .iter()
            .find(|(k, _)| k.as_str() == Some("commands"))
            .map(|(_, v)| v.as_array().unwrap().clone())
            .unwrap();
        let keys = |record: &rmpv::Value| -> Vec<String> {
            record
                .as_map()
                .unwrap()
                .iter()
                .map(|(k, _)| k.as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(keys(&commands[0]), ["id", "first", "last"]);
        assert_eq!(keys(&commands[1]), ["id", "first", "last", "at"]);
    }

    /// A reader from before `earlier_commands`: the fields it knew, unknown keys ignored.
    #[derive(Deserialize)]
    struct OldReader {
        version: u64,
        commands: Vec<CommandRecord>,
    }

    #[test]
    fn the_newest_256_records_are_where_every_reader_looks() {
        let records: Vec<_> = (0..300)
            .map(|i| CommandRecord::new(format!("c{i}"), i + 1, i + 1).at(i))
            .collect();
        let snapshot = ActorSnapshot::new("a", 300, &())
            .unwrap()
            .with_commands(records.clone());
        let bytes = rmp_serde::to_vec_named(&snapshot).unwrap();
        let back: ActorSnapshot = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back.commands, records, "all of them, oldest first");
        assert_eq!(back, snapshot);

        // An older reader keeps the first 256 of `commands`: the newest 256.
        let old: OldReader = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(old.version, 300);
        assert_eq!(old.commands.len(), 256);
        assert_eq!(old.commands[0].id, "c44");
        assert_eq!(old.commands[255].id, "c299");

        // Up to 256, there is no `earlier_commands` key.
        let few = snapshot.with_commands(records[..256].to_vec());
        let value =
            rmpv::decode::read_value(&mut rmp_serde::to_vec_named(&few).unwrap().as_slice())
                .unwrap();
        assert!(
            value
                .as_map()
                .unwrap()
                .iter()
                .all(|(k, _)| k.as_str() != Some("earlier_commands"))
        );
    }

    #[test]
    fn records_written_without_a_time_still_decode() {
        let old = rmp_serde::to_vec_named(&OldRecord {
            id: "pay-1",
            first: 1,
            last: 2,
        })
        .unwrap();
        let record: CommandRecord = rmp_serde::from_slice(&old).unwrap();
        assert_eq!(record, CommandRecord::new("pay-1", 1, 2));
        assert_eq!(record.at, None);
    }
}
