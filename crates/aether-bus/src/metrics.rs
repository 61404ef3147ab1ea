//! The bus's metric names (`aether_bus_*`, listed with types, labels and meanings in
//! `docs/metrics.md`) and handles, registered when a bus or projection is created: install the
//! metrics recorder before creating them.

use metrics::Counter;
#[cfg(feature = "nats")]
use metrics::Gauge;

/// Counter: events published, by `transport` (`local`: to this process's subscribers; `nats`:
/// to other nodes).
pub const PUBLISHED: &str = "aether_bus_published_total";
/// Counter: events handed to subscribers.
pub const DELIVERED: &str = "aether_bus_delivered_total";
/// Counter: events received from other nodes over NATS.
pub const RECEIVED: &str = "aether_bus_received_total";
/// Counter: events slow subscribers lost, by `overflow` (`drop_oldest`, `wait`).
pub const DROPPED: &str = "aether_bus_dropped_total";
/// Counter: messages on bus subjects that did not decode.
pub const UNDECODABLE: &str = "aether_bus_undecodable_total";
/// Counter: publishes and subscriptions the NATS bus refused because the server refused the
/// subject for the user's permissions, by `operation` (`publish`, `subscribe`). Only with a
/// permission watch (`NatsBusConfig::permissions`).
pub const REFUSED: &str = "aether_bus_refused_total";
/// Counter: events a projection applied, by `projection`.
pub const PROJECTION_APPLIED: &str = "aether_bus_projection_applied_total";
/// Gauge: events in the stream after the last one a projection acknowledged, by `projection`.
pub const PROJECTION_LAG: &str = "aether_bus_projection_lag_events";
/// Gauge: 1 while a projection is parked, else 0, by `projection`.
pub const PROJECTION_PARKED: &str = "aether_bus_projection_parked";

/// Every name above.
pub const ALL: [&str; 9] = [
    PUBLISHED,
    DELIVERED,
    RECEIVED,
    DROPPED,
    UNDECODABLE,
    REFUSED,
    PROJECTION_APPLIED,
    PROJECTION_LAG,
    PROJECTION_PARKED,
];

#[derive(Debug, Clone)]
pub(crate) struct LocalMetrics {
    pub(crate) published: Counter,
    pub(crate) delivered: Counter,
    pub(crate) dropped_oldest: Counter,
    pub(crate) dropped_wait: Counter,
}

impl Default for LocalMetrics {
    fn default() -> Self {
        Self {
            published: metrics::counter!(PUBLISHED, "transport" => "local"),
            delivered: metrics::counter!(DELIVERED),
            dropped_oldest: metrics::counter!(DROPPED, "overflow" => "drop_oldest"),
            dropped_wait: metrics::counter!(DROPPED, "overflow" => "wait"),
        }
    }
}

#[cfg(feature = "nats")]
#[derive(Debug, Clone)]
pub(crate) struct NatsMetrics {
    pub(crate) published: Counter,
    pub(crate) received: Counter,
    pub(crate) undecodable: Counter,
    pub(crate) refused_publish: Counter,
    pub(crate) refused_subscribe: Counter,
}

#[cfg(feature = "nats")]
impl NatsMetrics {
    pub(crate) fn new() -> Self {
        Self {
            published: metrics::counter!(PUBLISHED, "transport" => "nats"),
            received: metrics::counter!(RECEIVED),
            undecodable: metrics::counter!(UNDECODABLE),
            refused_publish: metrics::counter!(REFUSED, "operation" => "publish"),
            refused_subscribe: metrics::counter!(REFUSED, "operation" => "subscribe"),
        }
    }
}

#[cfg(feature = "nats")]
#[derive(Debug, Clone)]
pub(crate) struct ProjectionMetrics {
    pub(crate) applied: Counter,
    pub(crate) lag: Gauge,
    pub(crate) parked: Gauge,
}

#[cfg(feature = "nats")]
impl ProjectionMetrics {
    pub(crate) fn new(projection: &str) -> Self {
        let labels = [("projection", projection.to_owned())];
        Self {
            applied: metrics::counter!(PROJECTION_APPLIED, &labels),
            lag: metrics::gauge!(PROJECTION_LAG, &labels),
            parked: metrics::gauge!(PROJECTION_PARKED, &labels),
        }
    }
}
