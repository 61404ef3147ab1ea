//! The aether-testkit conformance suite on a single nats-server (R1 file streams).

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

async fn harness() -> common::JetStreamHarness {
    common::JetStreamHarness::single().await
}

aether_testkit::event_store_conformance!(harness);
