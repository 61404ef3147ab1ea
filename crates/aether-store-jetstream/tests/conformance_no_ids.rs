//! The aether-testkit conformance suite on a single nats-server with
//! `JetStreamConfig::message_ids(false)`: single appends carry no `Nats-Msg-Id`, and every rule
//! (idempotent retries included) must still hold.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

async fn harness() -> common::JetStreamHarness {
    common::JetStreamHarness::single()
        .await
        .without_message_ids()
}

aether_testkit::event_store_conformance!(harness);
