//! Two nodes share events over NATS, and each node's event store learns about the other's writes.
//!
//! The Go project's cross-node broadcasting demo in Rust: two stores and two buses (two "nodes")
//! on one nats-server. Node 1 saves an event; its store announces it (EventStored) through its bus;
//! node 2's bus delivers it and drops node 2's stale cached version of that actor.
//!
//! ```text
//! cargo xtask nats && target/tools/nats-server/bin/nats-server -js     # a server, JetStream on
//! cargo run --example cross_node_broadcast
//! ```
//! `NATS_URL` picks another server (default `nats://127.0.0.1:4222`).

use std::sync::Arc;
use std::time::Duration;

use aether::bus::{NatsEventBus, Pattern};
use aether::store::jetstream::{JetStreamEventStore, async_nats};
use aether::{Event, EventStore, EventStored, Namespace};
use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let connect = || async_nats::connect(url.as_str());
    let (Ok(c1), Ok(c2), Ok(c3), Ok(c4)) = (
        connect().await,
        connect().await,
        connect().await,
        connect().await,
    ) else {
        eprintln!("cannot reach nats-server at {url}; start one with JetStream on, e.g.:");
        eprintln!("  cargo xtask nats && target/tools/nats-server/bin/nats-server -js");
        std::process::exit(2);
    };
    let namespace = Namespace::new("demo")?;

    // Node 1 and node 2: each a store and a bus.
    let store1 = JetStreamEventStore::with_namespace(c1, "orders", namespace.clone()).await?;
    let store2 =
        Arc::new(JetStreamEventStore::with_namespace(c2, "orders", namespace.clone()).await?);
    let bus1 = NatsEventBus::new(c3).await?;
    let bus2 = NatsEventBus::with_version_cache(c4, store2.clone()).await?;
    store1.set_broadcaster(Arc::new(bus1.clone()));
    println!("node 1 is {}, node 2 is {}", bus1.node_id(), bus2.node_id());

    let mut on_node2 = bus2.subscribe(Pattern::exact(&namespace)).await?;
    let mut stored_on_node2 = bus2
        .subscribe_to_event_stored(Pattern::exact(&namespace))
        .await?;

    // Node 1 publishes a domain event on the bus: node 2 receives it.
    let order = format!("order-{}", std::process::id());
    let placed = Event::new(order.as_str(), "OrderPlaced", 1, &99.99)?;
    bus1.publish(&namespace, &placed).await?;
    let got = tokio::time::timeout(Duration::from_secs(5), on_node2.next()).await?;
    if let Some(e) = got {
        println!(
            "node 2 received {} for {} from node 1",
            e.event_type(),
            e.actor_id()
        );
    }

    // Node 2 has cached version 1 of the order; node 1 then writes version 2.
    store2.save_event(placed).await?;
    println!("node 2 caches version {:?}", store2.cached_version(&order));
    store1
        .save_event(Event::new(order.as_str(), "OrderShipped", 2, &"FS123456")?)
        .await?;
    let note = tokio::time::timeout(Duration::from_secs(5), stored_on_node2.next()).await?;
    if let Some(note) = note {
        let stored: EventStored = note.decode()?;
        println!(
            "node 2 learned that {} reached version {}; its cached version is now {:?}",
            stored.actor_id,
            stored.version,
            store2.cached_version(&order)
        );
    }
    println!(
        "node 2 reads version {} from the server",
        store2.get_latest_version(&order).await?
    );
    bus1.stop();
    bus2.stop();
    Ok(())
}
