//! Compile-time checks: the public types are Send + Sync and the traits are object safe.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use aether_core::*;

fn is_send_sync<T: Send + Sync>() {}

#[test]
fn public_types_are_send_and_sync() {
    is_send_sync::<Event>();
    is_send_sync::<ActorSnapshot>();
    is_send_sync::<Namespace>();
    is_send_sync::<Payload>();
    is_send_sync::<StoreError>();
    is_send_sync::<ReplayResult>();
    is_send_sync::<Upcasters>();
    is_send_sync::<EventShape>();
    is_send_sync::<upcast::Upcasted>();
    is_send_sync::<Arc<dyn EventStore>>();
    is_send_sync::<Arc<dyn EventStoreWithErrors>>();
    is_send_sync::<Arc<dyn SnapshotStore>>();
    is_send_sync::<Arc<dyn EventBroadcaster>>();
    fn is_send<T: Send>() {}
    is_send::<EventStream>();
}

#[test]
fn store_errors_are_std_errors() {
    fn is_error<E: std::error::Error + Send + Sync + 'static>() {}
    is_error::<StoreError>();
    is_error::<CodecError>();
    is_error::<NamespaceError>();
    is_error::<BroadcastError>();
    is_error::<UpcastError>();
    let e = StoreError::from(VersionConflict::new("a", 1, 1));
    assert_eq!(
        e.to_string(),
        "version conflict for actor \"a\": current version is 1, attempted version 1"
    );
}
