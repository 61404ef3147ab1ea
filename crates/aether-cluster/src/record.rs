//! What each node writes into the cluster bucket: its membership record, its liveness key, the
//! leader lease and the cluster's fixed settings. MessagePack maps with string keys, specified in docs/cluster.md.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A node's lifecycle status, as written in its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum NodeStatus {
    /// Serving: the leader places shards on it.
    Active,
    /// Leaving gracefully: the leader moves its shards away and places none on it.
    Leaving,
}

/// A node's membership record (key `nodes.<id>`): written when the node joins and when its
/// status changes, never by heartbeats (those renew its [`alive.<id>`](crate::KEY_ALIVE_PREFIX)
/// key, which only the leader follows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NodeRecord {
    /// The node id (also the key's last token).
    pub id: String,
    /// Free-form labels the user configured (zone, address, ...).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Relative capacity (weight) for capacity-aware placement; 0 takes no shards there.
    pub capacity: u32,
    /// Load as the node reported it (for example active actors) when the record was last
    /// written; the current figure is in its liveness key, which the leader reads.
    #[serde(default)]
    pub load: u64,
    /// Lifecycle status.
    pub status: NodeStatus,
    /// When the node started, milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// The aether-cluster version the node runs.
    pub version: String,
    /// The shard count the node was configured with.
    pub shard_count: u32,
    /// A UUID new for every start of the node: tells a restarted node with the same id, or a
    /// second process using it, from this one.
    pub incarnation: String,
}

/// A node's liveness key (`alive.<id>`), renewed by every heartbeat with the failure timeout
/// as its TTL. Only the leader follows these keys: when one is gone, it fails the member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AliveRecord {
    /// The writer's incarnation (as in its record).
    pub incarnation: String,
    /// Its current load.
    #[serde(default)]
    pub load: u64,
}

/// The leader lease (key `leader`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LeaseRecord {
    /// The holder.
    pub node: String,
    /// The holder's term: the KV revision at which it created the lease. Absent in the creating
    /// write itself (its own revision is the term).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
}

/// The cluster's fixed settings (key `config`), written once by the first node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ClusterSettings {
    pub shard_count: u32,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(crate) fn encode<T: Serialize>(value: &T) -> bytes::Bytes {
    // Plain structs of strings, integers and maps always serialise into a Vec.
    rmp_serde::to_vec_named(value).unwrap_or_default().into()
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
) -> Result<T, rmp_serde::decode::Error> {
    rmp_serde::from_slice(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_ignore_unknown_keys() {
        let rec = NodeRecord {
            id: "n1".into(),
            metadata: BTreeMap::from([("zone".into(), "a".into())]),
            capacity: 3,
            load: 9,
            status: NodeStatus::Leaving,
            started_at_ms: 1,
            version: "0.1.0".into(),
            shard_count: 1024,
            incarnation: "i".into(),
        };
        assert_eq!(decode::<NodeRecord>(&encode(&rec)).unwrap(), rec);
        #[derive(Serialize)]
        struct Future<'a> {
            #[serde(flatten)]
            rec: &'a NodeRecord,
            extra: u8,
        }
        let bytes = encode(&Future {
            rec: &rec,
            extra: 1,
        });
        assert_eq!(decode::<NodeRecord>(&bytes).unwrap(), rec);
        let lease = LeaseRecord {
            node: "n1".into(),
            term: None,
        };
        assert_eq!(decode::<LeaseRecord>(&encode(&lease)).unwrap(), lease);
    }

    proptest::proptest! {
        /// Fuzzing (`cargo xtask chaos` runs these with many more cases): whatever a KV key
        /// holds decodes to a record or an error, never a panic.
        #[test]
        fn fuzz_kv_records_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)
        ) {
            let _ = decode::<NodeRecord>(&bytes);
            let _ = decode::<LeaseRecord>(&bytes);
            let _ = decode::<ClusterSettings>(&bytes);
            let _ = crate::map::ShardMap::decode(&bytes);
        }

        /// A valid shard map with one byte changed and cut short anywhere.
        #[test]
        fn fuzz_damaged_shard_maps_never_panic(
            at in proptest::prelude::any::<usize>(),
            byte in proptest::prelude::any::<u8>(),
            cut in proptest::prelude::any::<usize>(),
        ) {
            let owners: Vec<std::sync::Arc<str>> = (0..16).map(|i| format!("n{}", i % 3).into()).collect();
            let map = crate::map::ShardMap::new(4, 2, "n0", 16, owners);
            let mut bytes = map.encode();
            let i = at % bytes.len();
            bytes[i] = byte;
            bytes.truncate(cut % (bytes.len() + 1));
            let _ = crate::map::ShardMap::decode(&bytes);
        }
    }
}
