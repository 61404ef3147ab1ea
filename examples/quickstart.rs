//! Aether's quick start: event sourcing on the in-memory store.
//!
//! Places and ships an order, rebuilds its state by replaying the events, then shows optimistic
//! concurrency: a stale write is refused with a version conflict, and a reload-and-retry succeeds.
//!
//! Run it with `cargo run --example quickstart`.

use aether::store::memory::InMemoryEventStore;
use aether::{Event, EventStore};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct OrderPlaced {
    total: f64,
    items: u32,
}

#[derive(Serialize, Deserialize)]
struct OrderShipped {
    carrier: String,
    tracking: String,
}

/// The order's state, derived only from its events.
#[derive(Debug, Default)]
struct Order {
    status: String,
    total: f64,
    items: u32,
    carrier: String,
    tracking: String,
}

impl Order {
    fn apply(&mut self, event: &Event) -> Result<(), aether::CodecError> {
        match event.event_type() {
            "OrderPlaced" => {
                let placed: OrderPlaced = event.decode()?;
                self.status = "placed".into();
                self.total = placed.total;
                self.items = placed.items;
            }
            "OrderShipped" => {
                let shipped: OrderShipped = event.decode()?;
                self.status = "shipped".into();
                self.carrier = shipped.carrier;
                self.tracking = shipped.tracking;
            }
            _ => {}
        }
        Ok(())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // An in-memory event store (use the JetStream store in production).
    let store = InMemoryEventStore::new();
    let order_id = "order-123";

    // Events are facts; each gets the next version of the order's history.
    let placed = OrderPlaced {
        total: 99.99,
        items: 3,
    };
    store
        .save_event(Event::new(order_id, "OrderPlaced", 1, &placed)?)
        .await?;
    let shipped = OrderShipped {
        carrier: "FastShip".into(),
        tracking: "FS123456".into(),
    };
    store
        .save_event(Event::new(order_id, "OrderShipped", 2, &shipped)?)
        .await?;

    // Replay the events to rebuild the state.
    let events = store.get_events(order_id, 0).await?;
    let mut order = Order::default();
    for event in &events {
        order.apply(event)?;
    }
    println!("Order state after replaying {} events:", events.len());
    println!("  Status: {}", order.status);
    println!("  Total: ${:.2}", order.total);
    println!("  Tracking: {}", order.tracking);

    // The same payload, read dynamically (Go's map[string]interface{}).
    let data = events[0].data()?;
    println!(
        "  Items (dynamic read of {}): {}",
        events[0].event_type(),
        data["items"]
    );

    // Optimistic concurrency: a writer that still believes the order is at version 1 loses.
    let stale = Event::builder(order_id, "OrderCancelled")
        .version(2)
        .build()?;
    match store.save_event(stale).await {
        Err(err) if err.is_version_conflict() => {
            if let Some(c) = err.as_version_conflict() {
                println!(
                    "Version conflict caught: actor {} is at version {}, attempted version {}",
                    c.actor_id, c.current_version, c.attempted_version
                );
            }
            // Reload and retry with the next version.
            let current = store.get_latest_version(order_id).await?;
            let retry = Event::builder(order_id, "OrderCancelled")
                .version(current + 1)
                .build()?;
            store.save_event(retry).await?;
            println!("Retried at version {}: stored", current + 1);
        }
        Err(err) => return Err(err.into()),
        Ok(()) => return Err("a stale write was accepted".into()),
    }
    Ok(())
}
