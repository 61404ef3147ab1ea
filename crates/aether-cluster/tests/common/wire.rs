//! The call protocol as docs/cluster.md specifies it, written and read by hand (none of the
//! crate's own types), as a caller in another language or a forger would: calls of the bank
//! actor, and the fields of an answer.

use super::bank::Command;

/// A call of the bank actor (`account`) as docs/cluster.md specifies it.
pub fn call(actor: &str, id: &str, epoch: u64, command: &Command) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Call<'a> {
        #[serde(rename = "type")]
        actor_type: &'a str,
        actor: &'a str,
        id: &'a str,
        epoch: u64,
        cmd: Bytes,
    }
    struct Bytes(Vec<u8>);
    impl serde::Serialize for Bytes {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&self.0)
        }
    }
    rmp_serde::to_vec_named(&Call {
        actor_type: "account",
        actor,
        id,
        epoch,
        cmd: Bytes(rmp_serde::to_vec_named(command).expect("a command encodes")),
    })
    .expect("a call encodes")
}

/// Field `key` of an answer, read as a plain MessagePack map.
pub fn answer_field(bytes: &[u8], key: &str) -> Option<rmpv::Value> {
    let value = rmpv::decode::read_value(&mut &bytes[..]).expect("an answer is MessagePack");
    value
        .as_map()
        .expect("an answer is a map")
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v.clone())
}

/// The `status` of an answer.
pub fn status(bytes: &[u8]) -> String {
    answer_field(bytes, "status")
        .and_then(|v| v.as_str().map(str::to_owned))
        .expect("an answer has a status")
}

/// `status` and `version` of an answer.
pub fn status_and_version(bytes: &[u8]) -> (String, Option<u64>) {
    let version = answer_field(bytes, "version").and_then(|v| v.as_u64());
    (status(bytes), version)
}

/// `status` and `reason` of an answer.
pub fn status_and_reason(bytes: &[u8]) -> (String, Option<String>) {
    let reason = answer_field(bytes, "reason").and_then(|v| v.as_str().map(str::to_owned));
    (status(bytes), reason)
}
