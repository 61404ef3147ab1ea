//! Shared test support: a conformance harness over a real nats-server or cluster.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use aether_core::Namespace;
use aether_store_jetstream::{JetStreamConfig, JetStreamEventStore, layout};
use aether_testkit::nats::{NatsCluster, NatsServer};
use aether_testkit::{ConformanceStore, StoreHarness};
use async_trait::async_trait;
use bytes::Bytes;

/// Keeps the server (or cluster) alive for as long as the harness lives.
#[derive(Debug)]
pub(crate) enum Servers {
    Single(Box<NatsServer>),
    Cluster(NatsCluster),
}

/// Cluster tests run one at a time: three servers per test is what a small machine can host
/// without R3 set-up timing out.
static CLUSTER_GATE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Debug)]
pub(crate) struct JetStreamHarness {
    pub(crate) servers: Servers,
    pub(crate) client: async_nats::Client,
    pub(crate) replicas: usize,
    /// `JetStreamConfig::message_ids` of the stores it opens.
    pub(crate) message_ids: bool,
    /// Last, so the servers are gone before the next cluster test starts.
    _gate: Option<tokio::sync::MutexGuard<'static, ()>>,
}

impl JetStreamHarness {
    pub(crate) async fn single() -> Self {
        let server = NatsServer::start().await.expect("start nats-server");
        let client = server.connect().await.expect("connect");
        Self {
            _gate: None,
            servers: Servers::Single(Box::new(server)),
            client,
            replicas: 1,
            message_ids: false,
        }
    }

    pub(crate) async fn cluster() -> Self {
        let gate = CLUSTER_GATE.lock().await;
        let cluster = NatsCluster::start(3).await.expect("start a 3-node cluster");
        let client = cluster.connect().await.expect("connect");
        Self {
            _gate: Some(gate),
            servers: Servers::Cluster(cluster),
            client,
            replicas: 3,
            message_ids: false,
        }
    }

    pub(crate) fn config(&self) -> JetStreamConfig {
        // Six servers on a small machine can be slow to place an R3 stream: be patient.
        JetStreamConfig::default()
            .replicas(self.replicas)
            .request_timeout(std::time::Duration::from_secs(20))
            .message_ids(self.message_ids)
    }

    /// Stores opened by this harness append single events with `Nats-Msg-Id` too (the opt-in).
    #[allow(dead_code)] // not every test binary uses it
    pub(crate) fn with_message_ids(mut self) -> Self {
        self.message_ids = true;
        self
    }

    pub(crate) async fn store(&self, namespace: Option<Namespace>) -> JetStreamEventStore {
        let mut config = self.config();
        config.namespace = namespace;
        JetStreamEventStore::with_config(self.client.clone(), "events", config)
            .await
            .expect("open the store")
    }
}

#[async_trait]
impl StoreHarness for JetStreamHarness {
    async fn open(&self, namespace: Option<Namespace>) -> Arc<dyn ConformanceStore> {
        Arc::new(self.store(namespace).await)
    }

    async fn inject_malformed(
        &self,
        _store: &Arc<dyn ConformanceStore>,
        actor_id: &str,
        raw: Bytes,
    ) -> bool {
        let subject = format!(
            "{}{}",
            layout::subject_prefix(&layout::stream_name("events", None)),
            layout::actor_token(actor_id)
        );
        let js = async_nats::jetstream::new(self.client.clone());
        js.publish(subject, raw)
            .await
            .expect("publish")
            .await
            .expect("ack");
        true
    }
}
