//! The aether-testkit conformance suite on the in-memory store.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use aether_core::Namespace;
use aether_store_memory::InMemoryEventStore;
use aether_testkit::{ConformanceStore, StoreHarness};
use async_trait::async_trait;

/// One backend per test; namespaces are views on it.
#[derive(Debug, Default)]
struct MemoryHarness {
    backend: InMemoryEventStore,
}

#[async_trait]
impl StoreHarness for MemoryHarness {
    async fn open(&self, namespace: Option<Namespace>) -> Arc<dyn ConformanceStore> {
        match namespace {
            Some(ns) => Arc::new(self.backend.with_namespace(ns)),
            None => Arc::new(self.backend.clone()),
        }
    }
}

async fn harness() -> MemoryHarness {
    MemoryHarness::default()
}

aether_testkit::event_store_conformance!(harness);
