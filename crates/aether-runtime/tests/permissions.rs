//! A command whose events the server refuses for the user's permissions: with a permission watch
//! on the store's connection the store says so at once (`StoreError::PermissionDenied`, not
//! transient), so the runtime answers the ask promptly instead of retrying a timeout for its
//! transient budget.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use aether_core::{Namespace, StoreError};
use aether_runtime::{Actor, AskError, Runtime};
use aether_store_jetstream::{JetStreamConfig, JetStreamEventStore};
use aether_testkit::tenancy::{self, Authorization};
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Counter {
    total: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Counted {
    Added(u64),
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Actor for Counter {
    const TYPE: &'static str = "counter";
    type Command = u64;
    type Event = Counted;
    type Error = Never;

    fn handle(&self, n: &u64) -> Result<Vec<Counted>, Never> {
        Ok(vec![Counted::Added(*n)])
    }

    fn apply(&mut self, Counted::Added(n): &Counted) {
        self.total += n;
    }
}

/// `writer` may use store `events` in namespace `tenant-a`, except actor `forbidden`'s subject.
const WRITER: &str = r#"{
        publish: {
          allow: ["ae.events_tenant-a.*", "$JS.API.>", "$KV.events_tenant-a-snapshots.>"]
          deny: ["ae.events_tenant-a.forbidden"]
        }
        subscribe: { allow: ["_INBOX_writer.>"] }
    }"#;

fn config() -> JetStreamConfig {
    JetStreamConfig::default().namespace(Namespace::new("tenant-a").unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_append_is_answered_at_once_and_not_retried() {
    let server = Authorization::with_operator()
        .restricted_user("writer", "w", WRITER)
        .start("runtime-permissions")
        .await
        .unwrap();
    let operator = tenancy::connect_operator(&server).await.unwrap();
    JetStreamEventStore::with_config(operator, "events", config())
        .await
        .unwrap();

    let (client, watch) = tenancy::connect_watched(&server, "writer", "w", Some("_INBOX_writer"))
        .await
        .unwrap();
    let store = Arc::new(
        JetStreamEventStore::with_config(client, "events", config().permissions(watch))
            .await
            .unwrap(),
    );
    let runtime = Runtime::<Counter>::builder(store).build();
    assert_eq!(runtime.actor("allowed").ask(2).await.unwrap().version, 1);

    let started = Instant::now();
    let refused = runtime.actor("forbidden").ask(1).await;
    let took = started.elapsed();
    match &refused {
        Err(AskError::Store { source, .. }) => match source.as_ref() {
            StoreError::PermissionDenied {
                operation, subject, ..
            } => {
                assert_eq!(*operation, "publish");
                assert_eq!(subject, "ae.events_tenant-a.forbidden");
            }
            other => panic!("expected a permission refusal, got {other:?}"),
        },
        other => panic!("expected a store failure, got {other:?}"),
    }
    let err = refused.unwrap_err();
    assert!(!err.is_transient(), "{err}");
    // The runtime retries transient failures for its budget (20 s by default): this one was not.
    assert!(took < Duration::from_secs(2), "the ask took {took:?}");
    eprintln!("a refused ask answered in {took:?}: {err}");
    // The actor is still usable for what is allowed.
    assert_eq!(runtime.actor("allowed").ask(3).await.unwrap().version, 2);
    runtime.shutdown().await;
}
