//! The order-fulfilment flow running from an EventStorming model alone: no Rust code per
//! aggregate. A customer places an order; policies reserve stock, ship it, and mark the order
//! shipped.
//!
//! Run with `cargo run --example model_driven`.

use std::sync::Arc;

use aether::Namespace;
use aether::bus::{EventBus, Overflow, Pattern, SubscribeOptions};
use aether::model::Model;
use aether::runtime::{ModelRuntime, Runtime};
use aether::store::memory::InMemoryEventStore;
use futures::StreamExt;
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/model/order_fulfilment.yaml"
    );
    let model = Model::load(path)?;
    model.validate()?;
    println!(
        "model `{}`: {} elements, {} policies",
        model.name,
        model.element_count(),
        model.policies().count()
    );

    // Events go to a local bus after they are stored; the policies read them from there.
    let store = Arc::new(InMemoryEventStore::new());
    let bus = EventBus::new();
    let namespace = Namespace::new("orders")?;
    let models = ModelRuntime::new(
        model,
        Runtime::builder(store.clone())
            .snapshots(store)
            .bus(Arc::new(bus.clone()), namespace.clone()),
    )?;
    let everything =
        SubscribeOptions::default().overflow(Overflow::Wait(std::time::Duration::from_secs(5)));
    let policies = models.run_policies(bus.subscribe_with(Pattern::exact(&namespace), everything));
    let mut log = bus.subscribe(Pattern::exact(&namespace));

    // A command the model does not allow is refused with the reason.
    if let Err(e) = models
        .send("Order", "o-42", "PlaceOrder", json!({"sku": "SKU-7"}))
        .await
    {
        println!("refused: {e}");
    }

    models
        .send(
            "Order",
            "o-42",
            "PlaceOrder",
            json!({"sku": "SKU-7", "quantity": 3, "customer": "ada"}),
        )
        .await?;
    // Watch the flow: placed -> stock reserved -> parcel shipped -> order shipped.
    while let Some(event) = log.next().await {
        println!("  {:<14} {}", event.event_type(), event.actor_id());
        if event.event_type() == "OrderShipped" {
            break;
        }
    }

    for aggregate in ["Order", "Fulfilment"] {
        let (state, version) = models.state(aggregate, "o-42").await?;
        println!(
            "{aggregate} o-42 at version {version}: last event {:?}, fields {}",
            state.last_event.unwrap_or_default(),
            serde_json::Value::Object(state.fields)
        );
    }
    models.runtime().shutdown().await;
    policies.abort();
    Ok(())
}
