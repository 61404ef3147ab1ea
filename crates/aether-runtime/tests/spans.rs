//! Tracing spans carry the ids that join a command to its events, on a real JetStream store: the
//! command's span (`aether.runtime.command`) records the command id and the ids of the events it
//! caused; the store's append span (`aether.store.append`) inside it records the same event ids,
//! with the command id as causation id and the caller's correlation id.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aether_runtime::{Actor, Runtime};
use aether_store_jetstream::JetStreamEventStore;
use aether_testkit::nats::NatsServer;
use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Tally {
    n: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Added(u64);

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Actor for Tally {
    const TYPE: &'static str = "tally";
    type Command = u64;
    type Event = Added;
    type Error = Never;

    fn handle(&self, by: &u64) -> Result<Vec<Added>, Never> {
        Ok(vec![Added(*by), Added(1)])
    }

    fn apply(&mut self, Added(by): &Added) {
        self.n += by;
    }
}

/// A closed span: its name, its fields, and the name of its parent.
#[derive(Debug, Clone, Default)]
struct Seen {
    name: String,
    parent: Option<String>,
    fields: BTreeMap<String, String>,
}

#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

/// Records every span's fields (at creation and later `record`s) by span id.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<BTreeMap<u64, Seen>>>);

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let parent = ctx
            .span(id)
            .and_then(|s| s.parent())
            .map(|p| p.name().to_owned());
        self.0.lock().unwrap().insert(
            id.into_u64(),
            Seen {
                name: attrs.metadata().name().to_owned(),
                parent,
                fields: fields.0,
            },
        );
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut fields = Fields::default();
        values.record(&mut fields);
        if let Some(seen) = self.0.lock().unwrap().get_mut(&id.into_u64()) {
            seen.fields.extend(fields.0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_span_names_its_events_and_the_append_span_its_cause() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let server = NatsServer::start().await.unwrap();
    let store = Arc::new(
        JetStreamEventStore::new(server.connect().await.unwrap(), "spans")
            .await
            .unwrap(),
    );
    let runtime = Runtime::<Tally>::builder(store.clone()).build();
    let applied = runtime.ask_once("t-1", 5, "cmd-77").await.unwrap();
    assert_eq!(applied.version, 2);
    let stored = aether_core::EventStore::get_events(&*store, "t-1", 0)
        .await
        .unwrap();
    let ids: Vec<String> = stored.iter().map(|e| e.id().to_string()).collect();
    assert!(
        stored
            .iter()
            .all(|e| e.metadata().causation_id.as_deref() == Some("cmd-77"))
    );

    let spans: Vec<Seen> = capture.0.lock().unwrap().values().cloned().collect();
    let command = spans
        .iter()
        .find(|s| s.name == "aether.runtime.command")
        .unwrap_or_else(|| panic!("no command span in {spans:#?}"));
    assert_eq!(command.fields["actor_id"], "t-1");
    assert_eq!(command.fields["command_id"], "cmd-77");
    assert_eq!(command.fields["event_ids"], ids.join(","));
    assert_eq!(command.fields["version"], "2");
    let append = spans
        .iter()
        .find(|s| s.name == "aether.store.append")
        .unwrap_or_else(|| panic!("no append span in {spans:#?}"));
    assert_eq!(append.parent.as_deref(), Some("aether.runtime.command"));
    assert_eq!(append.fields["event_ids"], ids.join(","));
    assert_eq!(append.fields["causation_id"], "cmd-77");
    assert_eq!(append.fields["actor_id"], "t-1");
    assert_eq!(append.fields["events"], "2");
    assert!(
        spans.iter().any(|s| s.name == "aether.store.replay"
            && s.fields.get("actor_id").map(String::as_str) == Some("t-1")),
        "the activation's read has a span"
    );
}
