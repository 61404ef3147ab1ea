//! The one encoding of an [`Event`] as bytes on NATS: the body of a stored record (JetStream
//! store), of a bus message (`NatsEventBus`) and of what a projection reads. Every crate goes
//! through these functions, so the format has one owner; `docs/nats-layout.md` specifies it.
//!
//! ```
//! use aether_core::{Event, wire};
//! let event = Event::new("order-1", "OrderPlaced", 1, &99.5).unwrap();
//! let bytes = wire::encode_event(&event).unwrap();
//! assert_eq!(wire::decode_event(&bytes).unwrap(), event);
//! ```

use crate::error::CodecError;
use crate::event::Event;

/// Encodes `event` as the bytes Aether writes to NATS.
pub fn encode_event(event: &Event) -> Result<Vec<u8>, CodecError> {
    let mut bytes = Vec::with_capacity(event.payload().len() + 160);
    encode_event_into(event, &mut bytes)?;
    Ok(bytes)
}

/// Appends the encoding of `event` to `buf` (to reuse a buffer).
pub fn encode_event_into(event: &Event, buf: &mut Vec<u8>) -> Result<(), CodecError> {
    rmp_serde::encode::write_named(buf, event).map_err(|e| CodecError::encode("Event", e))
}

/// Decodes an event from the bytes Aether writes to NATS.
pub fn decode_event(bytes: &[u8]) -> Result<Event, CodecError> {
    rmp_serde::from_slice(bytes).map_err(|e| CodecError::decode("Event", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let event = Event::new("a", "T", 3, &("x", 1)).unwrap();
        let mut buf = vec![];
        encode_event_into(&event, &mut buf).unwrap();
        assert_eq!(buf, encode_event(&event).unwrap());
        assert_eq!(decode_event(&buf).unwrap(), event);
        let err = decode_event(b"not an event").unwrap_err();
        assert!(err.to_string().contains("decode `Event`"), "{err}");
    }
}
