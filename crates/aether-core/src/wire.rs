//! The one encoding of an [`Event`] as bytes on NATS: the body of a stored record (JetStream
//! store), of a bus message (`NatsEventBus`) and of what a projection reads. Every crate goes
//! through these functions, so the format has one owner.
//!
//! The format is specified, language-neutral MessagePack, written and read by hand here (not
//! derived from `Event`'s serde implementation), so that a program in any language can write and
//! read events without Aether. `docs/nats-layout.md` ("Event encoding") is the specification; in
//! short, a map with string keys:
//!
//! | key | MessagePack type | required |
//! | --- | --- | --- |
//! | `id` | bin 16 (the UUID's bytes); readers also take the hyphenated UUID as str | yes |
//! | `type` | str | yes |
//! | `actor` | str | yes |
//! | `v` | uint | yes |
//! | `sv` | uint ≥ 1: the payload's schema version; absent or nil means 1 (written only when not 1) | no |
//! | `time` | timestamp extension (type -1; 32-, 64- or 96-bit) | yes |
//! | `data` | bin: the payload, itself MessagePack; absent or nil means the nil payload | no |
//! | `meta` | map str → str (`correlation_id`, `causation_id`, anything else is extra) | no |
//!
//! Unknown keys are ignored; a missing required field, a wrong type, a key given twice or trailing
//! bytes are a [`CodecError`] naming the field.
//!
//! ```
//! use aether_core::{Event, wire};
//! let event = Event::new("order-1", "OrderPlaced", 1, &99.5).unwrap();
//! let bytes = wire::encode_event(&event).unwrap();
//! assert_eq!(wire::decode_event(&bytes).unwrap(), event);
//! ```

use std::fmt;
use std::time::SystemTime;

use bytes::Bytes;
use rmp::Marker;
use uuid::Uuid;

mod marker;
mod pooled;
mod reader;
mod time;

use marker::describe;
pub use pooled::encode_event_pooled;
use reader::Reader;
use time::timestamp_data;
pub use time::timestamp_ext;

use crate::error::CodecError;
use crate::event::{Event, EventBuilder, Metadata};
use crate::payload::Payload;

/// The MessagePack extension type of timestamps.
const TIMESTAMP: i8 = -1;
/// MessagePack `nil`; a payload of exactly this byte is the nil payload, written as no `data`.
const NIL: u8 = 0xc0;
const NANOS_PER_SEC: i128 = 1_000_000_000;

const ID: &str = "id";
const TYPE: &str = "type";
const ACTOR: &str = "actor";
const VERSION: &str = "v";
const SCHEMA: &str = "sv";
const TIME: &str = "time";
const DATA: &str = "data";
const META: &str = "meta";
const CORRELATION_ID: &str = "correlation_id";
const CAUSATION_ID: &str = "causation_id";

/// Encodes `event` as the bytes Aether writes to NATS.
///
/// Fails only for an event the format cannot represent: a [`Metadata::extra`] key named
/// `correlation_id` or `causation_id` (those names are the fields of [`Metadata`] on the wire), or
/// a string or payload longer than 4 GiB.
pub fn encode_event(event: &Event) -> Result<Vec<u8>, CodecError> {
    let guess = 64
        + event.payload().len()
        + event.actor_id().len()
        + event.event_type().len()
        + if event.metadata().is_empty() { 0 } else { 128 };
    let mut bytes = Vec::with_capacity(guess);
    encode_event_into(event, &mut bytes)?;
    Ok(bytes)
}

/// Appends the encoding of `event` to `buf` (to reuse a buffer). On error `buf` is left as it was.
pub fn encode_event_into(event: &Event, buf: &mut Vec<u8>) -> Result<(), CodecError> {
    let start = buf.len();
    write_event(event, buf).map_err(|e| {
        buf.truncate(start);
        CodecError::encode("Event", e)
    })
}

/// Decodes an event from the bytes Aether writes to NATS (or any writer following the format).
pub fn decode_event(bytes: &[u8]) -> Result<Event, CodecError> {
    read_event(bytes, None)
        .map_err(|e| CodecError::decode("Event", e))?
        .build()
}

/// Like [`decode_event`], but the event's payload shares `bytes` (a received message's body)
/// instead of being copied out of it.
pub fn decode_event_shared(bytes: &Bytes) -> Result<Event, CodecError> {
    read_event(bytes, Some(bytes))
        .map_err(|e| CodecError::decode("Event", e))?
        .build()
}

/// What is wrong with an event's encoding, and in which field.
#[derive(Debug)]
struct WireError {
    field: Option<&'static str>,
    problem: String,
}

impl WireError {
    fn field(field: &'static str, problem: impl Into<String>) -> Self {
        Self {
            field: Some(field),
            problem: problem.into(),
        }
    }

    fn record(problem: impl Into<String>) -> Self {
        Self {
            field: None,
            problem: problem.into(),
        }
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.field {
            Some(field) => write!(f, "field `{field}`: {}", self.problem),
            None => f.write_str(&self.problem),
        }
    }
}

impl std::error::Error for WireError {}

// ---------------------------------------------------------------------------------------------
// Writing

fn write_event(event: &Event, buf: &mut Vec<u8>) -> Result<(), WireError> {
    let payload = event.payload().as_bytes();
    let has_data = payload != [NIL];
    let meta = event.metadata();
    for reserved in [CORRELATION_ID, CAUSATION_ID] {
        if meta.extra.contains_key(reserved) {
            return Err(WireError::field(
                META,
                format!(
                    "the extra key `{reserved}` is reserved for the Metadata field of that name"
                ),
            ));
        }
    }
    let meta_len = usize::from(meta.correlation_id.is_some())
        + usize::from(meta.causation_id.is_some())
        + meta.extra.len();

    let schema = event.schema_version();
    let fields = 5 + u32::from(schema != 1) + u32::from(has_data) + u32::from(meta_len > 0);
    rmp::encode::write_map_len(buf, fields).map_err(|e| written(ID, e))?;
    write_key(buf, ID)?;
    rmp::encode::write_bin(buf, event.id().as_bytes()).map_err(|e| written(ID, e))?;
    write_key(buf, TYPE)?;
    write_str(buf, TYPE, event.event_type())?;
    write_key(buf, ACTOR)?;
    write_str(buf, ACTOR, event.actor_id())?;
    write_key(buf, VERSION)?;
    rmp::encode::write_uint(buf, event.version()).map_err(|e| written(VERSION, e))?;
    if schema != 1 {
        if schema == 0 {
            return Err(WireError::field(
                SCHEMA,
                "schema version 0: versions start at 1",
            ));
        }
        write_key(buf, SCHEMA)?;
        rmp::encode::write_uint(buf, u64::from(schema)).map_err(|e| written(SCHEMA, e))?;
    }
    write_key(buf, TIME)?;
    write_time(buf, event.timestamp())?;
    if has_data {
        write_key(buf, DATA)?;
        let len = len32(DATA, payload.len())?;
        rmp::encode::write_bin_len(buf, len).map_err(|e| written(DATA, e))?;
        buf.extend_from_slice(payload);
    }
    if meta_len > 0 {
        write_key(buf, META)?;
        rmp::encode::write_map_len(buf, len32(META, meta_len)?).map_err(|e| written(META, e))?;
        let fields = [
            (CORRELATION_ID, meta.correlation_id.as_deref()),
            (CAUSATION_ID, meta.causation_id.as_deref()),
        ];
        for (key, value) in fields {
            if let Some(value) = value {
                write_str(buf, META, key)?;
                write_str(buf, META, value)?;
            }
        }
        for (key, value) in &meta.extra {
            write_str(buf, META, key)?;
            write_str(buf, META, value)?;
        }
    }
    Ok(())
}

fn write_key(buf: &mut Vec<u8>, key: &'static str) -> Result<(), WireError> {
    write_str(buf, key, key)
}

fn write_str(buf: &mut Vec<u8>, field: &'static str, s: &str) -> Result<(), WireError> {
    rmp::encode::write_str_len(buf, len32(field, s.len())?).map_err(|e| written(field, e))?;
    buf.extend_from_slice(s.as_bytes());
    Ok(())
}

/// The 64-bit form when the seconds fit in 34 bits (1970 to 2514), else the 96-bit form.
fn write_time(buf: &mut Vec<u8>, time: SystemTime) -> Result<(), WireError> {
    let data = timestamp_data(time)
        .ok_or_else(|| WireError::field(TIME, "the timestamp does not fit in 64-bit seconds"))?;
    // 8 or 12 bytes: always fits the length.
    let len = u32::try_from(data.len()).unwrap_or(12);
    rmp::encode::write_ext_meta(buf, len, TIMESTAMP).map_err(|e| written(TIME, e))?;
    buf.extend_from_slice(&data);
    Ok(())
}

fn len32(field: &'static str, len: usize) -> Result<u32, WireError> {
    u32::try_from(len)
        .map_err(|_| WireError::field(field, format!("{len} bytes is over the 4 GiB limit")))
}

/// Writing to a `Vec` does not fail; this keeps the (impossible) error typed anyway.
fn written(field: &'static str, e: impl fmt::Display) -> WireError {
    WireError::field(field, format!("writing failed: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Reading

/// The fields read so far; `Some` once seen (a second sighting is an error).
#[derive(Default)]
struct Fields {
    id: Option<Uuid>,
    event_type: Option<String>,
    actor: Option<String>,
    version: Option<u64>,
    schema: Option<Option<u32>>,
    time: Option<SystemTime>,
    data: Option<Option<Payload>>,
    meta: Option<Option<Metadata>>,
}

/// `source`, when given, is `bytes` as `Bytes`: the payload is then sliced from it, not copied.
fn read_event(bytes: &[u8], source: Option<&Bytes>) -> Result<EventBuilder, WireError> {
    let mut r = Reader {
        rest: bytes,
        source,
    };
    let entries = match r.marker(None)? {
        Marker::FixMap(n) => u32::from(n),
        Marker::Map16 => u32::from(r.u16(None)?),
        Marker::Map32 => r.u32(None)?,
        other => {
            return Err(WireError::record(format!(
                "an event is a MessagePack map, found {}",
                describe(other)
            )));
        }
    };
    let mut f = Fields::default();
    for _ in 0..entries {
        let key = match r.marker(None)? {
            m @ (Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32) => {
                r.str_after(m, None)?
            }
            other => {
                return Err(WireError::record(format!(
                    "the event map's keys are strings, found {}",
                    describe(other)
                )));
            }
        };
        match key {
            ID => once(&mut f.id, ID, r.id()?)?,
            TYPE => once(&mut f.event_type, TYPE, r.string(TYPE)?)?,
            ACTOR => once(&mut f.actor, ACTOR, r.string(ACTOR)?)?,
            VERSION => once(&mut f.version, VERSION, r.uint(VERSION)?)?,
            SCHEMA => once(&mut f.schema, SCHEMA, r.schema()?)?,
            TIME => once(&mut f.time, TIME, r.time()?)?,
            DATA => once(&mut f.data, DATA, r.data()?)?,
            META => once(&mut f.meta, META, r.meta()?)?,
            _ => r.skip_value()?,
        }
    }
    if !r.rest.is_empty() {
        return Err(WireError::record(format!(
            "{} trailing bytes after the event",
            r.rest.len()
        )));
    }
    let missing = |field| WireError::field(field, "missing (it is required)");
    let mut event = Event::builder(
        f.actor.ok_or_else(|| missing(ACTOR))?,
        f.event_type.ok_or_else(|| missing(TYPE))?,
    )
    .id(f.id.ok_or_else(|| missing(ID))?)
    .version(f.version.ok_or_else(|| missing(VERSION))?)
    .schema_version(f.schema.flatten().unwrap_or(1))
    .timestamp(f.time.ok_or_else(|| missing(TIME))?)
    .encoded_payload(f.data.flatten().unwrap_or_else(Payload::nil));
    if let Some(meta) = f.meta.flatten() {
        event = event.metadata(meta);
    }
    Ok(event)
}

fn once<T>(slot: &mut Option<T>, field: &'static str, value: T) -> Result<(), WireError> {
    if slot.is_some() {
        return Err(WireError::field(field, "given twice"));
    }
    *slot = Some(value);
    Ok(())
}

#[cfg(test)]
mod tests;
