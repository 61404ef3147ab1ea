//! # Aether
//!
//! Distributed, event-sourced actor systems on NATS JetStream. This facade re-exports the layers;
//! each layer is also its own crate, so a project can depend on just what it needs.
//!
//! | feature | what you get | crate |
//! | --- | --- | --- |
//! | (always) | events, snapshots, namespaces, store traits, errors | `aether-core` |
//! | `memory` (default) | [`store::memory::InMemoryEventStore`] | `aether-store-memory` |
//! | `jetstream` | `store::jetstream::JetStreamEventStore` | `aether-store-jetstream` |
//! | `bus` | `bus::EventBus`, `bus::NatsEventBus`, `bus::ProjectionRunner` | `aether-bus` |
//! | `runtime` | `runtime::Actor`, `runtime::Runtime` (virtual actors, snapshots) | `aether-runtime` |
//! | `model` | `model::Model` (EventStorming models), `runtime::ModelRuntime` | `aether-model` |
//! | `cluster` | `cluster::ClusterNode` (actors reachable from every node, shard handoff, failover), `cluster::ClusterClient` (calls without joining), `cluster::ClusterManager` (membership, leader, shard map on NATS KV); turns on `runtime` | `aether-cluster` |
//! | `metrics` | `metrics::install_prometheus` (every layer's metrics over HTTP), `metrics::names` | `metrics-exporter-prometheus` |
//! | `full` | all of the above | |
//!
//! Only `jetstream`, `bus` and `cluster` bring in a NATS client; `memory`, `runtime`, `model`
//! and `metrics` build without one.
//!
//! ```
//! use aether::{Event, EventStore};
//! # #[cfg(feature = "memory")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let rt = tokio::runtime::Builder::new_current_thread().build()?;
//! # rt.block_on(async {
//! let store = aether::store::memory::InMemoryEventStore::new();
//! store.save_event(Event::new("order-123", "OrderPlaced", 1, &99.99)?).await?;
//! assert_eq!(store.get_latest_version("order-123").await?, 1);
//! # Ok(()) })
//! # }
//! # #[cfg(not(feature = "memory"))]
//! # fn main() {}
//! ```
//!
//! See the project's README for the key concepts and `docs/architecture.md` for the map.

pub use aether_core::*;

/// The event bus: in process, across nodes, durable projections.
#[cfg(feature = "bus")]
pub mod bus {
    pub use aether_bus::*;
}

/// The actor runtime: event-sourced virtual actors with snapshots.
#[cfg(feature = "runtime")]
pub mod runtime {
    pub use aether_runtime::*;
}

/// The cluster: membership, leader election, shards, the shard map, and location-transparent
/// actors (routing, handoff, failover).
#[cfg(feature = "cluster")]
pub mod cluster {
    pub use aether_cluster::*;
}

/// EventStorming models: types, loading, validation, diagrams.
#[cfg(feature = "model")]
pub mod model {
    pub use aether_model::*;
}

#[cfg(feature = "metrics")]
pub mod metrics;

/// Event store implementations.
pub mod store {
    /// The in-process store.
    #[cfg(feature = "memory")]
    pub mod memory {
        pub use aether_store_memory::*;
    }

    /// The production store on NATS JetStream.
    #[cfg(feature = "jetstream")]
    pub mod jetstream {
        pub use aether_store_jetstream::*;
    }
}

/// The README's code examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
