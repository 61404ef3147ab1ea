//! EventStorming models in the runtime: the order-fulfilment model running end to end on the
//! memory store and on JetStream, policies applied once under redelivery, and typed actors
//! checked against a model.

#![cfg(feature = "model")]
// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aether_bus::{
    EventBus, Overflow, Pattern, Projection, ProjectionConfig, ProjectionRunner, SubscribeOptions,
    Subscription,
};
use aether_core::{BoxError, Event, EventStore, Namespace};
use aether_model::{Format, Model};
use aether_runtime::{Actor, AskError, LoadModelError, ModelError, ModelRuntime, Runtime};
use aether_store_jetstream::JetStreamEventStore;
use aether_store_memory::InMemoryEventStore;
use aether_testkit::nats::NatsServer;
use async_trait::async_trait;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

fn model() -> Model {
    Model::load(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples/model/order_fulfilment.yaml"),
    )
    .unwrap()
}

fn ns() -> Namespace {
    Namespace::new("orders").unwrap()
}

fn waiter(bus: &EventBus, event_type: &str) -> Subscription {
    bus.subscribe_with(
        Pattern::exact(&ns()),
        SubscribeOptions::default().event_types([event_type]),
    )
}

async fn next(sub: &mut Subscription) -> Event {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("an event in time")
        .expect("open")
}

/// Checks the final states of order `id` after the whole flow ran.
async fn assert_fulfilled(models: &ModelRuntime, id: &str) {
    let (order, order_version) = models.state("Order", id).await.unwrap();
    assert_eq!(order.last_event.as_deref(), Some("OrderShipped"));
    assert_eq!(order.fields["sku"], json!("SKU-1"));
    assert_eq!(order.fields["quantity"], json!(2));
    assert_eq!(order.fields["customer"], json!("ada"));
    assert_eq!(order_version, 2, "OrderPlaced, OrderShipped");
    let (fulfilment, fulfilment_version) = models.state("Fulfilment", id).await.unwrap();
    assert_eq!(fulfilment.last_event.as_deref(), Some("ParcelShipped"));
    assert_eq!(fulfilment_version, 2, "StockReserved, ParcelShipped");
    for state in [&order, &fulfilment] {
        assert!(
            state.counts.values().all(|&n| n == 1),
            "each event once: {:?}",
            state.counts
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_flow_runs_from_the_model_on_the_memory_store() {
    let store = Arc::new(InMemoryEventStore::new());
    let bus = EventBus::new();
    let models = ModelRuntime::new(
        model(),
        Runtime::builder(store.clone()).bus(Arc::new(bus.clone()), ns()),
    )
    .unwrap();
    // Policies read every event; `Wait` so none is dropped.
    let feed = bus.subscribe_with(
        Pattern::exact(&ns()),
        SubscribeOptions::default().overflow(Overflow::Wait(WAIT)),
    );
    let policies = models.run_policies(feed);
    let mut shipped = waiter(&bus, "OrderShipped");

    let placed = models
        .send(
            "Order",
            "o-1",
            "PlaceOrder",
            json!({"sku": "SKU-1", "quantity": 2, "customer": "ada"}),
        )
        .await
        .unwrap();
    assert_eq!(placed.events[0].name, "OrderPlaced");
    assert_eq!(next(&mut shipped).await.actor_id(), "Order:o-1");
    assert_fulfilled(&models, "o-1").await;
    // Redelivery: every stored event goes through the policies again; nothing is applied twice.
    let before: Vec<u64> = futures::future::join_all(
        ["Order:o-1", "Fulfilment:o-1"].map(|id| store.get_latest_version(id)),
    )
    .await
    .into_iter()
    .map(Result::unwrap)
    .collect();
    for id in ["Order:o-1", "Fulfilment:o-1"] {
        for event in store.get_events(id, 1).await.unwrap() {
            models.react(&event).await.unwrap();
        }
    }
    for (id, v) in ["Order:o-1", "Fulfilment:o-1"].into_iter().zip(before) {
        assert_eq!(
            store.get_latest_version(id).await.unwrap(),
            v,
            "{id}: no new events"
        );
    }
    assert_fulfilled(&models, "o-1").await;
    models.runtime().shutdown().await;
    policies.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_checked_against_the_model() {
    let models = ModelRuntime::new(
        model(),
        Runtime::builder(Arc::new(InMemoryEventStore::new())),
    )
    .unwrap();
    let refused = |r: Result<_, AskError<ModelError>>| match r {
        Err(AskError::Rejected { source, .. }) => source,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let place = |data| models.send("Order", "x", "PlaceOrder", data);
    assert!(matches!(
        refused(place(json!({"sku": "a", "quantity": 1})).await),
        ModelError::MissingField { field, .. } if field == "customer"
    ));
    assert!(matches!(
        refused(place(json!({"sku": "a", "quantity": "one", "customer": "c"})).await),
        ModelError::WrongType { field, .. } if field == "quantity"
    ));
    assert!(matches!(
        refused(place(json!({"sku": "a", "quantity": 1, "customer": "c", "color": "red"})).await),
        ModelError::UndeclaredField { field, .. } if field == "color"
    ));
    assert!(matches!(
        refused(place(json!([1, 2])).await),
        ModelError::NotAnObject { .. }
    ));
    assert!(matches!(
        refused(models.send("Order", "x", "Teleport", json!({})).await),
        ModelError::UnknownCommand { .. }
    ));
    assert!(matches!(
        refused(models.send("Spaceship", "x", "Launch", json!({})).await),
        ModelError::UnknownAggregate(_)
    ));
    models.runtime().shutdown().await;
}

// A typed actor checked against a model.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Order {
    placed: bool,
}

#[derive(Debug, Serialize, Deserialize)]
enum OrderEvent {
    OrderPlaced { sku: String },
    OrderTeleported,
}

#[derive(Debug)]
enum OrderCommand {
    PlaceOrder,
    Teleport,
    Sneaky,
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Actor for Order {
    const TYPE: &'static str = "Order";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = Never;

    fn handle(&self, command: &OrderCommand) -> Result<Vec<OrderEvent>, Never> {
        Ok(match command {
            OrderCommand::PlaceOrder => vec![OrderEvent::OrderPlaced { sku: "a".into() }],
            OrderCommand::Teleport | OrderCommand::Sneaky => vec![OrderEvent::OrderTeleported],
        })
    }

    fn apply(&mut self, _: &OrderEvent) {
        self.placed = true;
    }

    fn command_type(command: &OrderCommand) -> Option<&str> {
        match command {
            OrderCommand::PlaceOrder => Some("PlaceOrder"),
            OrderCommand::Teleport => Some("Teleport"),
            OrderCommand::Sneaky => None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loaded_model_refuses_undeclared_commands_and_events() {
    let store = Arc::new(InMemoryEventStore::new());
    let runtime = Runtime::<Order>::builder(store.clone()).build();
    runtime.load_model(&model()).unwrap();
    assert!(matches!(
        runtime.load_model(&model()),
        Err(LoadModelError::AlreadyLoaded(_))
    ));
    runtime.ask("o", OrderCommand::PlaceOrder).await.unwrap();
    let undeclared = runtime.ask("o", OrderCommand::Teleport).await.unwrap_err();
    assert!(
        matches!(&undeclared, AskError::NotInModel { reason, .. } if reason.contains("no command `Teleport`")),
        "{undeclared}"
    );
    let wrong_event = runtime.ask("o", OrderCommand::Sneaky).await.unwrap_err();
    assert!(
        matches!(&wrong_event, AskError::NotInModel { reason, .. } if reason.contains("OrderTeleported")),
        "{wrong_event}"
    );
    assert_eq!(
        store.get_latest_version("o").await.unwrap(),
        1,
        "nothing stored for refusals"
    );

    let other = Runtime::<Order>::builder(store).build();
    let mut bad = model();
    bad.contexts[0].aggregates[0].commands[0]
        .emits
        .push("Nowhere".into());
    assert!(matches!(
        other.load_model(&bad),
        Err(LoadModelError::Invalid(_))
    ));
    let unrelated = Model::parse("name: x\n", Format::Yaml).unwrap();
    assert!(matches!(
        other.load_model(&unrelated),
        Err(LoadModelError::NoSuchAggregate(_))
    ));
    runtime.shutdown().await;
}

/// Feeds a durable projection's events to the model's policies (at least once).
struct Policies(ModelRuntime);

#[async_trait]
impl Projection for Policies {
    async fn apply(&self, event: &Event, _position: u64) -> Result<(), BoxError> {
        self.0
            .react(event)
            .await
            .map(drop)
            .map_err(|e| Box::new(e) as BoxError)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_flow_runs_on_jetstream_with_durable_policies() {
    let server = NatsServer::start().await.unwrap();
    let client = server.connect().await.unwrap();
    let store = Arc::new(
        JetStreamEventStore::new(client.clone(), "fulfilment")
            .await
            .unwrap(),
    );
    let bus = EventBus::new(); // only to know when the flow is done
    let models = ModelRuntime::new(
        model(),
        Runtime::builder(store.clone())
            .snapshots(store.clone())
            .bus(Arc::new(bus.clone()), ns()),
    )
    .unwrap();
    let js = async_nats::jetstream::new(client);
    let config = ProjectionConfig::new("policies", store.stream_name(), store.subject_filter());
    let policies = Arc::new(Policies(models.clone()));
    let runner = ProjectionRunner::start(js.clone(), config.clone(), policies.clone())
        .await
        .unwrap();
    let mut shipped = waiter(&bus, "OrderShipped");

    models
        .send(
            "Order",
            "o-1",
            "PlaceOrder",
            json!({"sku": "SKU-1", "quantity": 2, "customer": "ada"}),
        )
        .await
        .unwrap();
    next(&mut shipped).await;
    assert_fulfilled(&models, "o-1").await;

    // Redeliver everything: rebuild the policy projection from the first event.
    runner.stop();
    let last = js
        .get_stream(store.stream_name())
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .last_sequence;
    let mut again = ProjectionRunner::rebuild(js, config, policies)
        .await
        .unwrap();
    again.caught_up_to(last).await;
    // Redelivered events applied no command twice.
    assert_fulfilled(&models, "o-1").await;
    again.stop();
    models.runtime().shutdown().await;
}
