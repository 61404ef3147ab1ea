//! How a store is laid out on NATS: names, subjects, headers. Written up in docs/nats-layout.md.

use aether_core::Namespace;

use crate::error::ConfigError;

/// Header carrying the event's version, so consumers can filter without decoding.
pub const HEADER_VERSION: &str = "Aether-Version";
/// Header carrying the event's type.
pub const HEADER_EVENT_TYPE: &str = "Aether-Event-Type";
/// Header carrying the payload's schema version, on records whose version is not 1 (absent: 1).
pub const HEADER_SCHEMA_VERSION: &str = "Aether-Schema-Version";

/// Longest accepted store name, in bytes.
pub const MAX_STORE_NAME: usize = 32;

/// Checks a store name: 1..=32 bytes of lowercase ASCII letters, digits and `-`.
///
/// No `_` (it separates the store name from the namespace in the stream name) and no uppercase
/// (stream names become directory names, and some file systems ignore case).
pub fn validate_store_name(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_STORE_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::InvalidStoreName {
            name: name.to_owned(),
        })
    }
}

/// The stream name of a store: `<store>` or, in a namespace, `<store>_<namespace token>`.
///
/// Injective over (store name, namespace): store names hold no `_`, so the first `_` separates
/// the parts, and [`Namespace::storage_token`] is injective.
pub fn stream_name(store: &str, namespace: Option<&Namespace>) -> String {
    match namespace {
        Some(ns) => format!("{store}_{}", ns.storage_token()),
        None => store.to_owned(),
    }
}

/// The KV bucket holding the store's snapshots: `<stream>-snapshots`.
pub fn snapshot_bucket(stream: &str) -> String {
    format!("{stream}-snapshots")
}

/// The stream holding the reminders of a store's stream: `REMINDERS_<stream>` (uppercase, so never
/// a store's own stream name).
pub fn reminder_stream(stream: &str) -> String {
    format!("REMINDERS_{stream}")
}

/// The subjects of a store's reminders: `ar.<stream>.<s|f>.<type token>.<actor token>.<name
/// token>`, each token by [`actor_token`].
pub fn reminder_prefix(stream: &str) -> String {
    format!("ar.{stream}.")
}

/// The subjects of a store's stream: `ae.<stream>.<actor token>`.
pub fn subject_prefix(stream: &str) -> String {
    format!("ae.{stream}.")
}

/// Encodes an actor id as one subject token (and KV key), injectively: aether-nats's
/// [`token::encode`](aether_nats::token::encode), the one owner of the rule.
///
/// ASCII letters, digits and `-` are kept; `_` becomes `__`; every other byte of the UTF-8
/// encoding becomes `_` and two uppercase hex digits. So `order-123` stays readable, and `a.b`,
/// `*`, `>`, spaces or non-ASCII can neither split a subject nor act as a wildcard.
pub fn actor_token(actor_id: &str) -> String {
    aether_nats::token::encode(actor_id)
}

/// Inverts [`actor_token`]; `None` if `token` is not one of its outputs.
pub fn actor_from_token(token: &str) -> Option<String> {
    aether_nats::token::decode(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn readable_ids_stay_readable() {
        assert_eq!(actor_token("order-123"), "order-123");
        assert_eq!(actor_token("a_b"), "a__b");
        assert_eq!(actor_token("a.b"), "a_2Eb");
        assert_eq!(actor_token("*"), "_2A");
        assert_eq!(actor_token(">"), "_3E");
        assert_eq!(actor_token("a b"), "a_20b");
        assert_eq!(actor_token("\u{e9}"), "_C3_A9");
    }

    #[test]
    fn names() {
        let ns = Namespace::new("a.b").unwrap();
        let ns2 = Namespace::new("a_b").unwrap();
        assert_eq!(stream_name("events", None), "events");
        assert_ne!(
            stream_name("events", Some(&ns)),
            stream_name("events", Some(&ns2))
        );
        assert!(validate_store_name("events").is_ok());
        for bad in [
            "",
            "Events",
            "ev_ents",
            "ev.ents",
            "ev ents",
            &"x".repeat(33),
        ] {
            assert!(validate_store_name(bad).is_err(), "{bad}");
        }
        assert_eq!(snapshot_bucket("events"), "events-snapshots");
        assert_eq!(subject_prefix("events"), "ae.events.");
    }

    proptest! {
        #[test]
        fn actor_tokens_are_injective_and_safe(a in "\\PC{0,40}", b in "\\PC{0,40}") {
            let (ta, tb) = (actor_token(&a), actor_token(&b));
            prop_assert_eq!(a == b, ta == tb);
            prop_assert_eq!(actor_from_token(&ta), Some(a.clone()));
            prop_assert!(ta.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        }

        #[test]
        fn stream_names_are_injective(
            s1 in "[a-z0-9-]{1,8}", s2 in "[a-z0-9-]{1,8}",
            n1 in proptest::option::of("[A-Za-z0-9_-]{1,6}(\\.[A-Za-z0-9_-]{1,6}){0,2}"),
            n2 in proptest::option::of("[A-Za-z0-9_-]{1,6}(\\.[A-Za-z0-9_-]{1,6}){0,2}"),
        ) {
            let n1 = n1.map(|n| Namespace::new(n).unwrap());
            let n2 = n2.map(|n| Namespace::new(n).unwrap());
            let same = s1 == s2 && n1 == n2;
            prop_assert_eq!(same, stream_name(&s1, n1.as_ref()) == stream_name(&s2, n2.as_ref()));
        }
    }
}
