//! [`EventFilter`]: which events a subscriber or a projection wants, by event type and actor id
//! prefix. One type, used by the local bus and by projections, so both filter alike.

use aether_core::Event;

/// Keeps events by type and by actor id prefix; an unset part keeps everything.
///
/// ```
/// use aether_bus::EventFilter;
/// use aether_core::Event;
/// let filter = EventFilter::default().event_types(["OrderPlaced"]).actor_prefix("order-");
/// assert!(filter.matches(&Event::new("order-1", "OrderPlaced", 1, &()).unwrap()));
/// assert!(!filter.matches(&Event::new("cart-1", "OrderPlaced", 1, &()).unwrap()));
/// assert!(!filter.matches(&Event::new("order-1", "OrderShipped", 2, &()).unwrap()));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventFilter {
    /// Only these event types, if set.
    pub event_types: Option<Vec<String>>,
    /// Only actors whose id starts with this, if set (the "actor type", e.g. `order-`).
    pub actor_prefix: Option<String>,
}

impl EventFilter {
    /// Keeps only events of these types.
    pub fn event_types<I, S>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.event_types = Some(types.into_iter().map(Into::into).collect());
        self
    }

    /// Keeps only actors whose id starts with `prefix`.
    pub fn actor_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.actor_prefix = Some(prefix.into());
        self
    }

    /// Whether `event` passes.
    pub fn matches(&self, event: &Event) -> bool {
        self.event_types
            .as_ref()
            .is_none_or(|t| t.iter().any(|t| t == event.event_type()))
            && self
                .actor_prefix
                .as_ref()
                .is_none_or(|p| event.actor_id().starts_with(p.as_str()))
    }
}
