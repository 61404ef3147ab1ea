//! JetStream API error codes by name ([`ErrorCode`]'s constants), finding the code inside an
//! async-nats error, and the groups of codes that mean one thing to Aether.

use aether_core::ServerLimit;
pub use async_nats::jetstream::ErrorCode;

/// The JetStream API error code inside `err` or its source chain, if the server refused.
///
/// Operations whose error kind carries the server's refusal (creating a stream or a consumer)
/// are read through [`crate::classify::NatsError::code`], which knows those kinds.
pub fn jetstream_code(err: &(dyn std::error::Error + 'static)) -> Option<ErrorCode> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(js) = e.downcast_ref::<async_nats::jetstream::Error>() {
            return Some(js.error_code());
        }
        cur = e.source();
    }
    None
}

/// The expected last (subject) sequence did not match: someone else wrote first. A replicated
/// stream answers with the second code while another write to the subject is still in flight.
pub fn is_wrong_last_sequence(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::STREAM_WRONG_LAST_SEQUENCE | ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT
    )
}

/// An atomic batch holds message ids the stream already stores (or is storing): a retried batch.
pub fn is_duplicate_in_batch(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::ATOMIC_PUBLISH_CONTAINS_DUPLICATE_MESSAGE
            | ErrorCode::STREAM_DUPLICATE_MESSAGE_CONFLICT
    )
}

/// The message is larger than the stream's maximum message size.
pub fn is_message_too_large(code: ErrorCode) -> bool {
    code == ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM
}

/// JetStream is not enabled on the server, or not for the account.
pub fn is_jetstream_disabled(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::JETSTREAM_NOT_ENABLED | ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT
    )
}

/// A stream of that name exists (with another configuration).
pub fn is_stream_name_in_use(code: ErrorCode) -> bool {
    code == ErrorCode::STREAM_NAME_EXIST
}

/// The JetStream cluster cannot serve the request yet, and will once it settles: no suitable
/// peers for placement (a cluster just formed, or a peer offline for the moment), JetStream
/// temporarily unavailable, or no meta leader to handle it (an election under way).
pub fn is_cluster_settling(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::CLUSTER_NO_PEERS
            | ErrorCode::CLUSTER_NOT_AVAILABLE
            | ErrorCode::CLUSTER_NOT_LEADER
    )
}

/// The account's resources are exhausted; for a publish that means its storage or its memory,
/// as the stream keeps messages on disk or in memory.
pub fn is_account_resources(code: ErrorCode) -> bool {
    code == ErrorCode::ACCOUNT_RESOURCES_EXCEEDED
}

/// The server limit a refusal reports, if it reports one.
pub fn server_limit(code: ErrorCode) -> Option<ServerLimit> {
    match code {
        ErrorCode::MAXIMUM_CONSUMERS_LIMIT => Some(ServerLimit::Consumers),
        ErrorCode::ATOMIC_PUBLISH_TOO_MANY_INFLIGHT => Some(ServerLimit::InFlightBatches),
        ErrorCode::MEMORY_RESOURCES_EXCEEDED => Some(ServerLimit::Memory),
        ErrorCode::STORAGE_RESOURCES_EXCEEDED => Some(ServerLimit::Storage),
        ErrorCode::ACCOUNT_RESOURCES_EXCEEDED | ErrorCode::INSUFFICIENT_RESOURCES => {
            Some(ServerLimit::Resources)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The numbers are the server's contract; the names are how the rest of Aether speaks of them.
    #[test]
    fn codes_keep_their_numbers() {
        assert_eq!(server_limit(ErrorCode(10026)), Some(ServerLimit::Consumers));
        assert_eq!(
            server_limit(ErrorCode(10210)),
            Some(ServerLimit::InFlightBatches)
        );
        assert_eq!(server_limit(ErrorCode(10028)), Some(ServerLimit::Memory));
        assert_eq!(server_limit(ErrorCode(10047)), Some(ServerLimit::Storage));
        assert_eq!(server_limit(ErrorCode(10002)), Some(ServerLimit::Resources));
        assert_eq!(server_limit(ErrorCode(10023)), Some(ServerLimit::Resources));
        assert_eq!(server_limit(ErrorCode(10071)), None);
        assert!(is_wrong_last_sequence(ErrorCode(10071)));
        assert!(is_wrong_last_sequence(ErrorCode(10164)));
        assert!(is_duplicate_in_batch(ErrorCode(10201)));
        assert!(is_duplicate_in_batch(ErrorCode(10158)));
        assert!(is_message_too_large(ErrorCode(10054)));
        assert!(is_jetstream_disabled(ErrorCode(10039)));
        assert!(is_jetstream_disabled(ErrorCode(10076)));
        assert!(is_stream_name_in_use(ErrorCode(10058)));
        assert!(is_cluster_settling(ErrorCode(10005)));
        assert!(is_cluster_settling(ErrorCode(10008)));
        assert!(is_cluster_settling(ErrorCode(10009)));
        assert!(!is_cluster_settling(ErrorCode(10058)));
        assert!(is_account_resources(ErrorCode(10002)));
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn finds_the_code_in_a_source_chain() {
        let js: async_nats::jetstream::Error = serde_json::from_str(
            r#"{"code": 400, "err_code": 10026, "description": "maximum consumers limit reached"}"#,
        )
        .unwrap();
        assert_eq!(
            jetstream_code(&js),
            Some(ErrorCode::MAXIMUM_CONSUMERS_LIMIT)
        );
        let wrapped = Wrapped(js);
        assert_eq!(
            jetstream_code(&wrapped),
            Some(ErrorCode::MAXIMUM_CONSUMERS_LIMIT)
        );
        let io = std::io::Error::other("no code here");
        assert_eq!(jetstream_code(&io), None);
    }

    /// An operation's error around the server's refusal, as async-nats's `Other` kinds are.
    #[derive(Debug)]
    struct Wrapped(async_nats::jetstream::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("operation failed")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
}
