//! Events: immutable facts about an actor.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

use crate::command_id::CommandId;
use crate::error::{CodecError, EventError};
use crate::limits;
use crate::payload::{Payload, Value};

/// Correlation, causation and free-form metadata carried by an event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Metadata {
    /// Id shared by every event of one business transaction or request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Id of the message (command or event) that caused this event: the runtime writes the
    /// command's id here. A [`CommandId`] is cheap to clone (no allocation per event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<CommandId>,
    /// Free-form string pairs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, String>,
}

impl Metadata {
    /// Whether no metadata is set at all.
    pub fn is_empty(&self) -> bool {
        self.correlation_id.is_none() && self.causation_id.is_none() && self.extra.is_empty()
    }
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct EventInner {
    id: Uuid,
    event_type: String,
    actor_id: String,
    version: u64,
    /// The payload's schema version (1 unless set): see [`Event::schema_version`].
    #[serde(default = "first_schema", skip_serializing_if = "is_first_schema")]
    schema_version: u32,
    payload: Payload,
    timestamp: SystemTime,
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    metadata: Metadata,
}

fn first_schema() -> u32 {
    1
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's `skip_serializing_if` passes a reference
fn is_first_schema(version: &u32) -> bool {
    *version == 1
}

/// An immutable fact about one actor: id, type, actor, version, payload, time and metadata.
///
/// `Event` is a shared, read-only value: cloning it is one reference-count increment, and no
/// method changes an event in place, so history returned by a store can never be altered through
/// the returned values. The payload is kept MessagePack-encoded; read it typed with
/// [`Event::decode`] or dynamically with [`Event::data`].
///
/// ```
/// use aether_core::Event;
/// # fn main() -> Result<(), aether_core::CodecError> {
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct OrderPlaced { total: f64, items: u32 }
///
/// let event = Event::builder("order-123", "OrderPlaced")
///     .version(1)
///     .payload(&OrderPlaced { total: 99.99, items: 3 })
///     .correlation_id("checkout-7")
///     .build()?;
///
/// assert_eq!(event.decode::<OrderPlaced>()?.items, 3);
/// assert_eq!(event.data()?["total"].as_f64(), Some(99.99));
/// # Ok(()) }
/// ```
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Event(Arc<EventInner>);

impl Event {
    /// Starts an event for `actor_id` of type `event_type`: version 1, a UUID v7 id, the current
    /// time, a `nil` payload and no metadata until set.
    pub fn builder(actor_id: impl Into<String>, event_type: impl Into<String>) -> EventBuilder {
        EventBuilder {
            id: None,
            event_type: event_type.into(),
            actor_id: actor_id.into(),
            version: 1,
            schema_version: 1,
            payload: Ok(Payload::nil()),
            timestamp: None,
            metadata: Metadata::default(),
        }
    }

    /// Shortcut for `Event::builder(actor_id, event_type).version(version).payload(payload).build()`.
    pub fn new<T: Serialize + ?Sized>(
        actor_id: impl Into<String>,
        event_type: impl Into<String>,
        version: u64,
        payload: &T,
    ) -> Result<Self, CodecError> {
        Self::builder(actor_id, event_type)
            .version(version)
            .payload(payload)
            .build()
    }

    /// The event id (UUID v7 unless set), also the deduplication key of stores.
    pub fn id(&self) -> Uuid {
        self.0.id
    }

    /// The event type, e.g. `"OrderPlaced"`.
    pub fn event_type(&self) -> &str {
        &self.0.event_type
    }

    /// The actor this event belongs to.
    pub fn actor_id(&self) -> &str {
        &self.0.actor_id
    }

    /// The event's version in its actor's history.
    pub fn version(&self) -> u64 {
        self.0.version
    }

    /// The schema version of the payload's shape for this event type: 1 for events written
    /// before the type's shape ever changed (and when the field is absent on the wire), then
    /// whatever the writer's code declared current. [`crate::upcast::Upcasters`] turn an older
    /// shape into the current one before typed decoding.
    pub fn schema_version(&self) -> u32 {
        self.0.schema_version
    }

    /// The encoded payload.
    pub fn payload(&self) -> &Payload {
        &self.0.payload
    }

    /// When the event was created.
    pub fn timestamp(&self) -> SystemTime {
        self.0.timestamp
    }

    /// Correlation, causation and free-form metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.0.metadata
    }

    /// Decodes the payload into `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, CodecError> {
        self.0.payload.decode()
    }

    /// Decodes the payload into a dynamic [`Value`] (Go's `event.Data`).
    pub fn data(&self) -> Result<Value, CodecError> {
        self.0.payload.to_value()
    }

    /// A builder that starts from this event (same id, payload, timestamp, metadata), for
    /// deriving a new event value — the stored original is never touched.
    pub fn to_builder(&self) -> EventBuilder {
        EventBuilder {
            id: Some(self.0.id),
            event_type: self.0.event_type.clone(),
            actor_id: self.0.actor_id.clone(),
            version: self.0.version,
            schema_version: self.0.schema_version,
            payload: Ok(self.0.payload.clone()),
            timestamp: Some(self.0.timestamp),
            metadata: self.0.metadata.clone(),
        }
    }

    /// Checks the actor id and event type against [`crate::limits`]. Stores call this on every
    /// append; the version rules are checked by the store against the stored history.
    pub fn validate(&self) -> Result<(), EventError> {
        if self.0.schema_version == 0 {
            return Err(EventError::InvalidSchemaVersion);
        }
        limits::validate_actor_id(&self.0.actor_id)?;
        limits::validate_event_type(&self.0.event_type)
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Event");
        d.field("id", &self.0.id)
            .field("event_type", &self.0.event_type)
            .field("actor_id", &self.0.actor_id)
            .field("version", &self.0.version);
        if self.0.schema_version != 1 {
            d.field("schema_version", &self.0.schema_version);
        }
        d.field("payload", &self.0.payload)
            .field("timestamp", &self.0.timestamp);
        if !self.0.metadata.is_empty() {
            d.field("metadata", &self.0.metadata);
        }
        d.finish()
    }
}

/// Builds an [`Event`]; see [`Event::builder`].
#[derive(Debug)]
#[must_use = "an EventBuilder does nothing until `build` is called"]
pub struct EventBuilder {
    id: Option<Uuid>,
    event_type: String,
    actor_id: String,
    version: u64,
    schema_version: u32,
    payload: Result<Payload, CodecError>,
    timestamp: Option<SystemTime>,
    metadata: Metadata,
}

impl EventBuilder {
    /// Sets the version (default 1). Stores refuse a version that is not above the actor's latest.
    pub fn version(mut self, version: u64) -> Self {
        self.version = version;
        self
    }

    /// Sets the event type (to derive an event of another type, as an upcaster does).
    pub fn event_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_type = event_type.into();
        self
    }

    /// Sets the payload's schema version (default 1; stores refuse 0). Write the version your
    /// code declares current for the event type ([`crate::upcast::Upcasters::current_version`]);
    /// the runtime does it for you.
    pub fn schema_version(mut self, schema_version: u32) -> Self {
        self.schema_version = schema_version;
        self
    }

    /// Encodes `payload` with MessagePack. An encoding error is reported by [`EventBuilder::build`].
    pub fn payload<T: Serialize + ?Sized>(mut self, payload: &T) -> Self {
        self.payload = Payload::encode(payload);
        self
    }

    /// Uses an already encoded payload.
    pub fn encoded_payload(mut self, payload: Payload) -> Self {
        self.payload = Ok(payload);
        self
    }

    /// Sets the id (default: a new UUID v7). Reusing the id of a stored event makes the append a
    /// retry of that event.
    pub fn id(mut self, id: Uuid) -> Self {
        self.id = Some(id);
        self
    }

    /// Sets the timestamp (default: now).
    pub fn timestamp(mut self, timestamp: SystemTime) -> Self {
        self.timestamp = Some(timestamp);
        self
    }

    /// Sets the correlation id.
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.metadata.correlation_id = Some(id.into());
        self
    }

    /// Sets the causation id.
    pub fn causation_id(mut self, id: impl Into<CommandId>) -> Self {
        self.metadata.causation_id = Some(id.into());
        self
    }

    /// Adds a free-form metadata pair.
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.extra.insert(key.into(), value.into());
        self
    }

    /// Replaces all metadata.
    pub fn metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Finishes the event. Fails only if the payload could not be encoded.
    pub fn build(self) -> Result<Event, CodecError> {
        Ok(Event(Arc::new(EventInner {
            id: self.id.unwrap_or_else(Uuid::now_v7),
            event_type: self.event_type,
            actor_id: self.actor_id,
            version: self.version,
            schema_version: self.schema_version,
            payload: self.payload?,
            timestamp: self.timestamp.unwrap_or_else(SystemTime::now),
            metadata: self.metadata,
        })))
    }
}

/// Event type of the notification a store publishes through its broadcaster after each
/// successful append (Go's `EventTypeEventStored`).
pub const EVENT_STORED: &str = "EventStored";

/// Payload of an [`EVENT_STORED`] notification: which event was stored, for whom, at which
/// version. Other nodes use it to keep their version caches in step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct EventStored {
    /// Id of the stored event.
    pub event_id: Uuid,
    /// Its actor.
    pub actor_id: String,
    /// Its version.
    pub version: u64,
    /// When it was created (the stored event's `time`), as the MessagePack timestamp extension.
    #[serde(with = "crate::wire::timestamp_ext")]
    pub timestamp: SystemTime,
}

impl EventStored {
    /// The notification for `event`.
    pub fn for_event(event: &Event) -> Self {
        Self {
            event_id: event.id(),
            actor_id: event.actor_id().to_owned(),
            version: event.version(),
            timestamp: event.timestamp(),
        }
    }

    /// The notification as an event of type [`EVENT_STORED`] for the same actor and version.
    pub fn to_event(&self) -> Result<Event, CodecError> {
        Event::builder(self.actor_id.as_str(), EVENT_STORED)
            .version(self.version)
            .payload(self)
            .causation_id(self.event_id.to_string())
            .build()
    }
}

/// A stored record that a replay skipped, reported by
/// [`crate::EventStoreWithErrors::get_events_with_errors`] (Go's `ReplayError`): it could not be
/// read back as an [`Event`], or its version was not above the versions stored before it (a
/// writer that bypassed the version check).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayError {
    /// The record's position in the store (a stream sequence for JetStream).
    pub position: u64,
    /// Why it was skipped (for example `version 2 after 3`, `version 3 repeated`,
    /// `body does not decode: ...`).
    pub reason: String,
    /// The raw bytes, for inspection.
    pub raw: bytes::Bytes,
}

impl ReplayError {
    /// Creates a report.
    pub fn new(position: u64, reason: impl Into<String>, raw: bytes::Bytes) -> Self {
        Self {
            position,
            reason: reason.into(),
            raw,
        }
    }
}

/// The good events of a replay plus the malformed records that were skipped (Go's
/// `ReplayResult`).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ReplayResult {
    /// Events that decoded, in version order.
    pub events: Vec<Event>,
    /// Records that were skipped (undecodable, or out of version order), in position order.
    pub errors: Vec<ReplayError>,
}

impl ReplayResult {
    /// Creates a result.
    pub fn new(events: Vec<Event>, errors: Vec<ReplayError>) -> Self {
        Self { events, errors }
    }

    /// Whether any record was malformed.
    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_defaults_and_v7_ids() -> Result<(), CodecError> {
        let a = Event::builder("a", "T").build()?;
        let b = Event::builder("a", "T").build()?;
        assert_eq!(a.version(), 1);
        assert_eq!(a.id().get_version_num(), 7);
        assert!(a.id() < b.id(), "v7 ids are time ordered");
        assert!(a.data()?.is_nil());
        Ok(())
    }

    #[test]
    fn serde_round_trip() -> Result<(), Box<dyn std::error::Error>> {
        let e = Event::builder("order-1", "OrderPlaced")
            .version(4)
            .payload(&("x", 1))
            .causation_id("cmd-1")
            .meta("k", "v")
            .build()?;
        let bytes = rmp_serde::to_vec_named(&e)?;
        let back: Event = rmp_serde::from_slice(&bytes)?;
        assert_eq!(back, e);
        Ok(())
    }

    #[test]
    fn to_builder_leaves_original_untouched() -> Result<(), CodecError> {
        let e = Event::new("a", "T", 1, &1u8)?;
        let f = e.to_builder().version(2).build()?;
        assert_eq!(e.version(), 1);
        assert_eq!(f.version(), 2);
        assert_eq!(e.id(), f.id());
        Ok(())
    }
}

#[cfg(test)]
mod event_stored_tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    /// The notification's payload is language-neutral: the time is the MessagePack timestamp
    /// extension (so an event from before 1970 can be announced too), and it round-trips.
    #[test]
    fn event_stored_uses_the_timestamp_extension() {
        for at in [
            UNIX_EPOCH + Duration::new(1_700_000_000, 5),
            UNIX_EPOCH - Duration::from_secs(86_400),
        ] {
            let event = Event::builder("a", "T")
                .version(3)
                .timestamp(at)
                .build()
                .unwrap();
            let note = EventStored::for_event(&event);
            let bytes = rmp_serde::to_vec_named(&note).unwrap();
            assert!(
                bytes
                    .windows(2)
                    .any(|w| w == [0xd7, 0xff] || w == [0xc7, 12]),
                "a timestamp extension in {bytes:02x?}"
            );
            let back: EventStored = rmp_serde::from_slice(&bytes).unwrap();
            assert_eq!(back, note);
            let as_event = note.to_event().unwrap();
            assert_eq!(as_event.decode::<EventStored>().unwrap(), note);
        }
    }
}
