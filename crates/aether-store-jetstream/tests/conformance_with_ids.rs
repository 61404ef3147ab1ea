//! The aether-testkit conformance suite on a single nats-server with the opt-in
//! `JetStreamConfig::message_ids(true)`: single appends also carry `Nats-Msg-Id` (the server's
//! duplicate window), and every rule must hold the same as without.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

async fn harness() -> common::JetStreamHarness {
    common::JetStreamHarness::single().await.with_message_ids()
}

aether_testkit::event_store_conformance!(harness);
