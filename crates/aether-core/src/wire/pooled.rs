//! Encoding into per-thread blocks, for bytes handed to a NATS client.

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};

use super::encode_event_into;
use crate::error::CodecError;
use crate::event::Event;

/// Size of the blocks events are encoded into.
const BLOCK: usize = 64 * 1024;
/// Larger encodings get their own allocation (so they do not keep a block alive), and a scratch
/// buffer that grew past this is given back.
const LARGE: usize = 16 * 1024;

struct Pool {
    /// Where an event is encoded first (reused).
    scratch: Vec<u8>,
    /// The current block: encodings are copied in and split off it.
    block: BytesMut,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool {
        scratch: Vec::new(),
        block: BytesMut::new(),
    });
}

/// Encodes `event` like [`encode_event`](super::encode_event), into bytes that share a 64 KiB
/// block with other events recently encoded on the same thread: no allocation per event.
///
/// For bytes handed to a NATS client: its connection task writes them out and drops them, most
/// often on another thread, and an allocation made on one thread and freed on another costs
/// more than the encoding itself (measured: publishing through async-nats took ~2x as long
/// with a fresh `Vec` per message as with bytes split off a shared block). A block is freed
/// when the last bytes split off it are dropped, so do not keep these bytes for long (a
/// long-lived one keeps its whole block); encodings over 16 KiB get their own allocation.
pub fn encode_event_pooled(event: &Event) -> Result<Bytes, CodecError> {
    POOL.with(|pool| match pool.try_borrow_mut() {
        Ok(mut pool) => pool.encode(event),
        // Not reachable (nothing below calls back in), but never a panic.
        Err(_) => super::encode_event(event).map(Bytes::from),
    })
}

impl Pool {
    fn encode(&mut self, event: &Event) -> Result<Bytes, CodecError> {
        self.scratch.clear();
        let encoded = encode_event_into(event, &mut self.scratch);
        let bytes = match encoded {
            Ok(()) if self.scratch.len() > LARGE => Ok(Bytes::copy_from_slice(&self.scratch)),
            Ok(()) => {
                if self.block.capacity() < self.scratch.len() {
                    self.block = BytesMut::with_capacity(BLOCK);
                }
                self.block.extend_from_slice(&self.scratch);
                Ok(self.block.split().freeze())
            }
            Err(e) => Err(e),
        };
        if self.scratch.capacity() > LARGE {
            self.scratch = Vec::new();
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::encode_event;

    fn event(i: usize) -> Event {
        // Payload sizes 0..3000 bytes, so blocks fill unevenly and are replaced many times.
        let payload = vec![(i % 251) as u8; (i * 37) % 3000];
        Event::new(format!("actor-{i}"), "Tested", i as u64 + 1, &payload)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn pooled_bytes_equal_the_plain_encoding_and_stay_intact() {
        let events: Vec<Event> = (0..5_000).map(event).collect();
        // All kept alive at once: later encodings must not write over earlier ones.
        let pooled: Vec<Bytes> = events
            .iter()
            .map(|e| encode_event_pooled(e).unwrap_or_else(|err| panic!("{err}")))
            .collect();
        for (e, bytes) in events.iter().zip(&pooled) {
            let plain = encode_event(e).unwrap_or_else(|err| panic!("{err}"));
            assert_eq!(bytes.as_ref(), plain.as_slice(), "event {}", e.version());
        }
    }

    #[test]
    fn large_and_refused_events() {
        let large =
            Event::new("big", "Tested", 1, &vec![7u8; 100_000]).unwrap_or_else(|e| panic!("{e}"));
        let plain = encode_event(&large).unwrap_or_else(|err| panic!("{err}"));
        let pooled = encode_event_pooled(&large).unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(pooled.as_ref(), plain.as_slice());

        let refused = Event::builder("a", "T")
            .meta("correlation_id", "x")
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(encode_event_pooled(&refused).is_err());
        // The pool is still usable afterwards.
        let next = event(3);
        let after = encode_event_pooled(&next).unwrap_or_else(|err| panic!("{err}"));
        let plain = encode_event(&next).unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(after.as_ref(), plain.as_slice());
    }
}
