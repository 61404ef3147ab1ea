//! The aether-testkit conformance suite on a 3-node nats-server cluster with R3 streams.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

async fn harness() -> common::JetStreamHarness {
    common::JetStreamHarness::cluster().await
}

aether_testkit::event_store_conformance!(harness);
