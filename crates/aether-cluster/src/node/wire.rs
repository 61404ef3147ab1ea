//! What nodes send each other over core NATS: calls to an actor's owner and their answers, and
//! handoff confirmations. MessagePack maps with string keys, specified in docs/cluster.md.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Subject a node serves calls on.
pub(crate) fn call_subject(cluster: &str, node: &str) -> String {
    format!("aether-cluster.{cluster}.call.{node}")
}

/// Subject a node takes handoff confirmations on.
pub(crate) fn handoff_subject(cluster: &str, node: &str) -> String {
    format!("aether-cluster.{cluster}.handoff.{node}")
}

/// Subject on which callers report an owner that had no responders (body: its node id); the
/// nodes take the reports in one queue group, [`SUSPECT_QUEUE`], so one of them checks.
pub(crate) fn suspect_subject(cluster: &str) -> String {
    format!("aether-cluster.{cluster}.suspect")
}

/// The queue group of [`suspect_subject`].
pub(crate) const SUSPECT_QUEUE: &str = "aether-suspect";

/// The header that makes a request on a node's call subject a liveness probe: never answered,
/// it only asks the server whether the node still has its subscription ("no responders" if
/// not: its connection is gone).
pub(crate) const PROBE_HEADER: &str = "Aether-Probe";

/// A command for an actor, sent to the node that owns its shard.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Call {
    /// The actor type (`Actor::TYPE`).
    #[serde(rename = "type")]
    pub actor_type: String,
    /// The actor id.
    pub actor: String,
    /// The command id: the causation id of the events the command causes.
    pub id: String,
    /// The caller's shard map epoch.
    pub epoch: u64,
    /// The command, MessagePack.
    pub cmd: Bytes,
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Status {
    /// Handled: `version` and `events` are set.
    Ok,
    /// The actor refused the command: `error` holds its domain error.
    Rejected,
    /// The owner failed to handle it (store, activation, codec...): `reason` says why. Nothing
    /// was applied unless the store says otherwise; sending the same id again is safe.
    Failed,
    /// This node does not own the shard in its map (`epoch`): ask the map's owner.
    NotOwner,
    /// The shard is moving (leaving this node, or not yet handed to it): try again shortly.
    Moving,
    /// The call could not be understood (`reason`).
    BadRequest,
}

/// The answer to a [`Call`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Answer {
    pub status: Status,
    /// The answering node's map epoch.
    pub epoch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// The events appended, a MessagePack array.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Bytes>,
    /// The domain error, MessagePack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Bytes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// With `failed`: the owner's failure clears by itself (its store unavailable, timed out, or
    /// at a limit that clears), so the same call may succeed shortly. Absent: `false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub transient: bool,
}

impl Answer {
    pub(crate) fn status(status: Status, epoch: u64) -> Self {
        Self {
            status,
            epoch,
            version: None,
            events: None,
            error: None,
            reason: None,
            transient: false,
        }
    }

    pub(crate) fn with_reason(status: Status, epoch: u64, reason: impl Into<String>) -> Self {
        Self {
            reason: Some(reason.into()),
            ..Self::status(status, epoch)
        }
    }
}

/// A handoff confirmation: "the shards `shards` you own from map `epoch` on are drained here;
/// serve them."
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Confirmation {
    pub from: String,
    pub epoch: u64,
    pub shards: Vec<u32>,
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Bytes, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(value).map(Bytes::from)
}

pub(crate) use crate::record::decode;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_and_answers_round_trip_with_string_keys() {
        let call = Call {
            actor_type: "account".into(),
            actor: "a.b *".into(),
            id: "c-1".into(),
            epoch: 3,
            cmd: Bytes::from_static(&[0x05]),
        };
        let bytes = encode(&call).unwrap();
        let v: rmpv::Value = rmpv::decode::read_value(&mut &bytes[..]).unwrap();
        let keys: Vec<_> = v
            .as_map()
            .unwrap()
            .iter()
            .map(|(k, _)| k.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(keys, ["type", "actor", "id", "epoch", "cmd"]);
        let back: Call = decode(&bytes).unwrap();
        assert_eq!(
            (back.actor, back.cmd.as_ref()),
            ("a.b *".into(), &[5u8][..])
        );
        let answer = Answer::with_reason(Status::NotOwner, 9, "x");
        let back: Answer = decode(&encode(&answer).unwrap()).unwrap();
        assert_eq!(
            (back.status, back.epoch, back.version),
            (Status::NotOwner, 9, None)
        );
        assert_eq!(
            rmpv::decode::read_value(&mut &encode(&Status::NotOwner).unwrap()[..])
                .unwrap()
                .as_str(),
            Some("not_owner")
        );
    }

    #[test]
    fn a_transient_failure_says_so_and_older_answers_are_not_transient() {
        let answer = Answer {
            transient: true,
            ..Answer::with_reason(Status::Failed, 4, "store timed out")
        };
        let bytes = encode(&answer).unwrap();
        let v: rmpv::Value = rmpv::decode::read_value(&mut &bytes[..]).unwrap();
        let flag = v
            .as_map()
            .unwrap()
            .iter()
            .find(|(k, _)| k.as_str() == Some("transient"))
            .map(|(_, v)| v.as_bool());
        assert_eq!(flag, Some(Some(true)));
        assert!(decode::<Answer>(&bytes).unwrap().transient);
        // Written without the key (a permanent failure, or a node from before the key): false.
        let plain = encode(&Answer::with_reason(Status::Failed, 4, "no")).unwrap();
        let v: rmpv::Value = rmpv::decode::read_value(&mut &plain[..]).unwrap();
        assert!(
            v.as_map()
                .unwrap()
                .iter()
                .all(|(k, _)| k.as_str() != Some("transient"))
        );
        assert!(!decode::<Answer>(&plain).unwrap().transient);
    }

    proptest::proptest! {
        /// Fuzzing (`cargo xtask chaos` runs these with many more cases): whatever arrives on a
        /// call or handoff subject decodes to a value or an error, never a panic.
        #[test]
        fn fuzz_calls_answers_and_confirmations_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)
        ) {
            let _ = decode::<Call>(&bytes);
            let _ = decode::<Answer>(&bytes);
            let _ = decode::<Confirmation>(&bytes);
        }

        /// A valid call with one byte changed and cut short anywhere.
        #[test]
        fn fuzz_damaged_calls_never_panic(
            at in proptest::prelude::any::<usize>(),
            byte in proptest::prelude::any::<u8>(),
            cut in proptest::prelude::any::<usize>(),
        ) {
            let call = Call {
                actor_type: "account".into(),
                actor: "acct-1".into(),
                id: "c-1".into(),
                epoch: 7,
                cmd: Bytes::from_static(&[0x81, 0xa7, b'D', b'e', b'p', b'o', b's', b'i', b't', 0x05]),
            };
            let mut bytes = encode(&call).unwrap().to_vec();
            let i = at % bytes.len();
            bytes[i] = byte;
            bytes.truncate(cut % (bytes.len() + 1));
            let _ = decode::<Call>(&bytes);
            let _ = decode::<Confirmation>(&bytes);
        }
    }
}
