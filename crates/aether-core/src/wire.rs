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

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rmp::Marker;
use uuid::Uuid;

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
    read_event(bytes)
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

    let fields = 5 + u32::from(has_data) + u32::from(meta_len > 0);
    rmp::encode::write_map_len(buf, fields).map_err(|e| written(ID, e))?;
    write_key(buf, ID)?;
    rmp::encode::write_bin(buf, event.id().as_bytes()).map_err(|e| written(ID, e))?;
    write_key(buf, TYPE)?;
    write_str(buf, TYPE, event.event_type())?;
    write_key(buf, ACTOR)?;
    write_str(buf, ACTOR, event.actor_id())?;
    write_key(buf, VERSION)?;
    rmp::encode::write_uint(buf, event.version()).map_err(|e| written(VERSION, e))?;
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

/// The data bytes of the timestamp extension for `time`: 8 bytes (64-bit form) when the seconds
/// fit in 34 bits, else 12 (96-bit form); `None` outside 64-bit seconds.
fn timestamp_data(time: SystemTime) -> Option<Vec<u8>> {
    let (secs, nanos) = unix_parts(time)?;
    Some(match u64::try_from(secs) {
        Ok(secs) if secs < 1 << 34 => ((u64::from(nanos) << 34) | secs).to_be_bytes().to_vec(),
        _ => {
            let mut data = nanos.to_be_bytes().to_vec();
            data.extend_from_slice(&secs.to_be_bytes());
            data
        }
    })
}

/// The time in the data bytes of a timestamp extension (4, 8 or 12 bytes).
fn time_from_data(data: &[u8]) -> Result<SystemTime, String> {
    let (secs, nanos) = match data.len() {
        4 => {
            let b: [u8; 4] = data.try_into().map_err(|_| "4 bytes".to_owned())?;
            (i64::from(u32::from_be_bytes(b)), 0)
        }
        8 => {
            let b: [u8; 8] = data.try_into().map_err(|_| "8 bytes".to_owned())?;
            let both = u64::from_be_bytes(b);
            let nanos = u32::try_from(both >> 34).unwrap_or(u32::MAX);
            (
                i64::try_from(both & ((1 << 34) - 1)).unwrap_or(i64::MAX),
                nanos,
            )
        }
        12 => {
            let (n, s) = data.split_at(4);
            let n: [u8; 4] = n.try_into().map_err(|_| "12 bytes".to_owned())?;
            let s: [u8; 8] = s.try_into().map_err(|_| "12 bytes".to_owned())?;
            (i64::from_be_bytes(s), u32::from_be_bytes(n))
        }
        other => {
            return Err(format!(
                "a timestamp of {other} bytes; the forms are 4, 8 and 12 bytes"
            ));
        }
    };
    if i128::from(nanos) >= NANOS_PER_SEC {
        return Err(format!("{nanos} nanoseconds is not below one second"));
    }
    system_time(secs, nanos).ok_or_else(|| format!("{secs} s since 1970 is out of range"))
}

/// Serde helpers that put a `SystemTime` into MessagePack (through rmp-serde) as the standard
/// timestamp extension (type -1), the form every MessagePack library reads — instead of serde's
/// `{secs_since_epoch, nanos_since_epoch}` struct. Use with `#[serde(with = "...")]`; the
/// `EventStored` notification does.
///
/// ```
/// #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
/// struct Stamped {
///     #[serde(with = "aether_core::wire::timestamp_ext")]
///     at: std::time::SystemTime,
/// }
/// let s = Stamped { at: std::time::SystemTime::UNIX_EPOCH };
/// let bytes = rmp_serde::to_vec_named(&s).unwrap();
/// assert_eq!(&bytes[bytes.len() - 10..bytes.len() - 8], &[0xd7, 0xff]); // fixext 8, type -1
/// assert_eq!(rmp_serde::from_slice::<Stamped>(&bytes).unwrap(), s);
/// ```
pub mod timestamp_ext {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serialize, Serializer, de, ser};

    /// rmp-serde writes a newtype struct of this name holding `(type, data)` as an extension.
    #[derive(Serialize, Deserialize)]
    #[serde(rename = "_ExtStruct")]
    struct Ext((i8, bytes::Bytes));

    /// Writes `time` as the timestamp extension.
    pub fn serialize<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
        let data = super::timestamp_data(*time)
            .ok_or_else(|| ser::Error::custom("the timestamp does not fit in 64-bit seconds"))?;
        Ext((super::TIMESTAMP, bytes::Bytes::from(data))).serialize(serializer)
    }

    /// Reads the timestamp extension (32-, 64- or 96-bit form).
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SystemTime, D::Error> {
        let Ext((ext_type, data)) = Ext::deserialize(deserializer)?;
        if ext_type != super::TIMESTAMP {
            return Err(de::Error::custom(format!(
                "expected the timestamp extension (type -1), found extension type {ext_type}"
            )));
        }
        super::time_from_data(&data).map_err(de::Error::custom)
    }
}

/// `time` as whole seconds since the Unix epoch (rounded down, so negative before 1970) and the
/// nanoseconds past them, as the timestamp extension has them.
fn unix_parts(time: SystemTime) -> Option<(i64, u32)> {
    let nanos = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i128::try_from(after.as_nanos()).ok()?,
        Err(before) => -i128::try_from(before.duration().as_nanos()).ok()?,
    };
    let secs = i64::try_from(nanos.div_euclid(NANOS_PER_SEC)).ok()?;
    let sub = u32::try_from(nanos.rem_euclid(NANOS_PER_SEC)).ok()?;
    Some((secs, sub))
}

/// The inverse of [`unix_parts`]; `None` if the platform's `SystemTime` cannot hold it.
fn system_time(secs: i64, nanos: u32) -> Option<SystemTime> {
    let whole = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))?
    } else {
        // In two steps: `i64::MIN` seconds is not a `Duration` a `SystemTime` can subtract at once.
        UNIX_EPOCH
            .checked_sub(Duration::from_secs((secs + 1).unsigned_abs()))?
            .checked_sub(Duration::from_secs(1))?
    };
    whole.checked_add(Duration::from_nanos(u64::from(nanos)))
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
    time: Option<SystemTime>,
    data: Option<Option<Payload>>,
    meta: Option<Option<Metadata>>,
}

fn read_event(bytes: &[u8]) -> Result<EventBuilder, WireError> {
    let mut r = Reader { rest: bytes };
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

/// A short name of the MessagePack type a marker starts, for error messages.
fn describe(marker: Marker) -> &'static str {
    match marker {
        Marker::FixPos(_)
        | Marker::FixNeg(_)
        | Marker::U8
        | Marker::U16
        | Marker::U32
        | Marker::U64
        | Marker::I8
        | Marker::I16
        | Marker::I32
        | Marker::I64 => "an integer",
        Marker::Null => "nil",
        Marker::True | Marker::False => "a bool",
        Marker::F32 | Marker::F64 => "a float",
        Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32 => "a str",
        Marker::Bin8 | Marker::Bin16 | Marker::Bin32 => "a bin",
        Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => "an array",
        Marker::FixMap(_) | Marker::Map16 | Marker::Map32 => "a map",
        Marker::FixExt1
        | Marker::FixExt2
        | Marker::FixExt4
        | Marker::FixExt8
        | Marker::FixExt16
        | Marker::Ext8
        | Marker::Ext16
        | Marker::Ext32 => "an extension",
        Marker::Reserved => "the reserved byte 0xc1",
    }
}

/// A cursor over the encoded bytes. `field` arguments name the field being read, for errors
/// (`None`: the event map itself).
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: Option<&'static str>) -> Result<&'a [u8], WireError> {
        if n > self.rest.len() {
            let problem = format!("truncated: {n} bytes announced, {} left", self.rest.len());
            return Err(match field {
                Some(field) => WireError::field(field, problem),
                None => WireError::record(problem),
            });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: Option<&'static str>) -> Result<[u8; N], WireError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn marker(&mut self, field: Option<&'static str>) -> Result<Marker, WireError> {
        Ok(Marker::from_u8(self.array::<1>(field)?[0]))
    }

    fn u8(&mut self, field: Option<&'static str>) -> Result<u8, WireError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: Option<&'static str>) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: Option<&'static str>) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: Option<&'static str>) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// The length that follows a str/bin/array/map/ext marker of the 8/16/32-bit kind.
    fn len(&mut self, bits: u8, field: Option<&'static str>) -> Result<usize, WireError> {
        let len = match bits {
            8 => u32::from(self.u8(field)?),
            16 => u32::from(self.u16(field)?),
            _ => self.u32(field)?,
        };
        usize::try_from(len).map_err(|_| WireError::record("length does not fit in memory"))
    }

    /// The bytes of a str whose marker was just read.
    fn str_bytes_after(
        &mut self,
        marker: Marker,
        field: Option<&'static str>,
    ) -> Result<Option<&'a [u8]>, WireError> {
        let len = match marker {
            Marker::FixStr(n) => usize::from(n),
            Marker::Str8 => self.len(8, field)?,
            Marker::Str16 => self.len(16, field)?,
            Marker::Str32 => self.len(32, field)?,
            _ => return Ok(None),
        };
        self.take(len, field).map(Some)
    }

    fn str_after(
        &mut self,
        marker: Marker,
        field: Option<&'static str>,
    ) -> Result<&'a str, WireError> {
        let bytes = self.str_bytes_after(marker, field)?.unwrap_or_default();
        std::str::from_utf8(bytes).map_err(|e| {
            let problem = format!("a str that is not UTF-8: {e}");
            match field {
                Some(field) => WireError::field(field, problem),
                None => WireError::record(problem),
            }
        })
    }

    fn bin_after(
        &mut self,
        marker: Marker,
        field: &'static str,
    ) -> Result<Option<&'a [u8]>, WireError> {
        let len = match marker {
            Marker::Bin8 => self.len(8, Some(field))?,
            Marker::Bin16 => self.len(16, Some(field))?,
            Marker::Bin32 => self.len(32, Some(field))?,
            _ => return Ok(None),
        };
        self.take(len, Some(field)).map(Some)
    }

    /// A str field (`type`, `actor`, `meta` entries).
    fn str(&mut self, field: &'static str) -> Result<&'a str, WireError> {
        match self.marker(Some(field))? {
            m @ (Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32) => {
                self.str_after(m, Some(field))
            }
            other => Err(WireError::field(
                field,
                format!("expected a str, found {}", describe(other)),
            )),
        }
    }

    fn string(&mut self, field: &'static str) -> Result<String, WireError> {
        self.str(field).map(str::to_owned)
    }

    /// `id`: bin 16, or the hyphenated UUID as a str (any case).
    fn id(&mut self) -> Result<Uuid, WireError> {
        let marker = self.marker(Some(ID))?;
        if let Some(bytes) = self.bin_after(marker, ID)? {
            return <[u8; 16]>::try_from(bytes)
                .map(Uuid::from_bytes)
                .map_err(|_| {
                    WireError::field(ID, format!("a bin of {} bytes, expected 16", bytes.len()))
                });
        }
        if let Some(bytes) = self.str_bytes_after(marker, Some(ID))? {
            // 36 characters is the hyphenated form only (simple is 32, braced 38, URN 45).
            return std::str::from_utf8(bytes)
                .ok()
                .filter(|s| s.len() == 36)
                .and_then(|s| Uuid::try_parse(s).ok())
                .ok_or_else(|| {
                    WireError::field(
                        ID,
                        format!(
                            "the str {:?} is not a hyphenated UUID",
                            String::from_utf8_lossy(bytes)
                        ),
                    )
                });
        }
        Err(WireError::field(
            ID,
            format!(
                "expected bin 16 or a hyphenated UUID str, found {}",
                describe(marker)
            ),
        ))
    }

    /// An unsigned integer; a signed format holding a value >= 0 is the same integer.
    fn uint(&mut self, field: &'static str) -> Result<u64, WireError> {
        let f = Some(field);
        let negative =
            || WireError::field(field, "expected an unsigned integer, found a negative one");
        match self.marker(f)? {
            Marker::FixPos(n) => Ok(u64::from(n)),
            Marker::U8 => self.u8(f).map(u64::from),
            Marker::U16 => self.u16(f).map(u64::from),
            Marker::U32 => self.u32(f).map(u64::from),
            Marker::U64 => self.u64(f),
            Marker::I8 => u64::try_from(i8::from_be_bytes(self.array(f)?)).map_err(|_| negative()),
            Marker::I16 => {
                u64::try_from(i16::from_be_bytes(self.array(f)?)).map_err(|_| negative())
            }
            Marker::I32 => {
                u64::try_from(i32::from_be_bytes(self.array(f)?)).map_err(|_| negative())
            }
            Marker::I64 => {
                u64::try_from(i64::from_be_bytes(self.array(f)?)).map_err(|_| negative())
            }
            Marker::FixNeg(_) => Err(negative()),
            other => Err(WireError::field(
                field,
                format!("expected an unsigned integer, found {}", describe(other)),
            )),
        }
    }

    /// `time`: the timestamp extension in its 32-, 64- or 96-bit form.
    fn time(&mut self) -> Result<SystemTime, WireError> {
        let f = Some(TIME);
        let marker = self.marker(f)?;
        let len = match marker {
            Marker::FixExt4 => 4,
            Marker::FixExt8 => 8,
            Marker::Ext8 => self.len(8, f)?,
            other => {
                return Err(WireError::field(
                    TIME,
                    format!(
                        "expected the timestamp extension (type -1), found {}",
                        describe(other)
                    ),
                ));
            }
        };
        let ext_type = i8::from_be_bytes(self.array(f)?);
        if ext_type != TIMESTAMP {
            return Err(WireError::field(
                TIME,
                format!(
                    "expected the timestamp extension (type -1), found extension type {ext_type}"
                ),
            ));
        }
        let (secs, nanos) = match len {
            4 => (i64::from(self.u32(f)?), 0),
            8 => {
                let both = self.u64(f)?;
                // The upper 30 bits are the nanoseconds, the lower 34 the seconds.
                let nanos = u32::try_from(both >> 34).unwrap_or(u32::MAX);
                (
                    i64::try_from(both & ((1 << 34) - 1)).unwrap_or(i64::MAX),
                    nanos,
                )
            }
            12 => {
                let nanos = self.u32(f)?;
                (i64::from_be_bytes(self.array(f)?), nanos)
            }
            other => {
                return Err(WireError::field(
                    TIME,
                    format!("a timestamp of {other} bytes; the forms are 4, 8 and 12 bytes"),
                ));
            }
        };
        if i128::from(nanos) >= NANOS_PER_SEC {
            return Err(WireError::field(
                TIME,
                format!("{nanos} nanoseconds is not below one second"),
            ));
        }
        system_time(secs, nanos).ok_or_else(|| {
            WireError::field(
                TIME,
                format!("{secs} s since 1970 is out of this platform's time range"),
            )
        })
    }

    /// `data`: bin, or nil (the nil payload).
    fn data(&mut self) -> Result<Option<Payload>, WireError> {
        let marker = self.marker(Some(DATA))?;
        if marker == Marker::Null {
            return Ok(None);
        }
        match self.bin_after(marker, DATA)? {
            Some(bytes) => Ok(Some(Payload::from_encoded(Bytes::copy_from_slice(bytes)))),
            None => Err(WireError::field(
                DATA,
                format!("expected a bin or nil, found {}", describe(marker)),
            )),
        }
    }

    /// `meta`: a map of str to str, or nil.
    fn meta(&mut self) -> Result<Option<Metadata>, WireError> {
        let f = Some(META);
        let entries = match self.marker(f)? {
            Marker::Null => return Ok(None),
            Marker::FixMap(n) => u32::from(n),
            Marker::Map16 => u32::from(self.u16(f)?),
            Marker::Map32 => self.u32(f)?,
            other => {
                return Err(WireError::field(
                    META,
                    format!("expected a map or nil, found {}", describe(other)),
                ));
            }
        };
        let mut meta = Metadata::default();
        let mut extra = BTreeMap::new();
        for _ in 0..entries {
            let key = self.str(META)?;
            let value = self.string(META)?;
            let again = match key {
                CORRELATION_ID => meta.correlation_id.replace(value).is_some(),
                CAUSATION_ID => meta.causation_id.replace(value).is_some(),
                _ => extra.insert(key.to_owned(), value).is_some(),
            };
            if again {
                return Err(WireError::field(
                    META,
                    format!("the key {key:?} is given twice"),
                ));
            }
        }
        meta.extra = extra;
        Ok((!meta.is_empty()).then_some(meta))
    }

    /// Skips one value of any type (an unknown key's), without recursion.
    fn skip_value(&mut self) -> Result<(), WireError> {
        let mut pending: u64 = 1;
        while pending > 0 {
            pending -= 1;
            // Every pending value takes at least one byte: a huge announced count fails here.
            if pending > self.rest.len() as u64 {
                return Err(WireError::record(
                    "truncated: an unknown key's value announces more items than bytes are left",
                ));
            }
            let (bytes, items) = match self.marker(None)? {
                Marker::FixPos(_)
                | Marker::FixNeg(_)
                | Marker::Null
                | Marker::True
                | Marker::False => (0, 0),
                Marker::U8 | Marker::I8 => (1, 0),
                Marker::U16 | Marker::I16 => (2, 0),
                Marker::U32 | Marker::I32 | Marker::F32 => (4, 0),
                Marker::U64 | Marker::I64 | Marker::F64 => (8, 0),
                Marker::FixStr(n) => (usize::from(n), 0),
                Marker::Str8 | Marker::Bin8 => (self.len(8, None)?, 0),
                Marker::Str16 | Marker::Bin16 => (self.len(16, None)?, 0),
                Marker::Str32 | Marker::Bin32 => (self.len(32, None)?, 0),
                Marker::FixExt1 => (2, 0),
                Marker::FixExt2 => (3, 0),
                Marker::FixExt4 => (5, 0),
                Marker::FixExt8 => (9, 0),
                Marker::FixExt16 => (17, 0),
                Marker::Ext8 => (self.len(8, None)? + 1, 0),
                Marker::Ext16 => (self.len(16, None)? + 1, 0),
                Marker::Ext32 => (self.len(32, None)? + 1, 0),
                Marker::FixArray(n) => (0, u64::from(n)),
                Marker::Array16 => (0, u64::from(self.u16(None)?)),
                Marker::Array32 => (0, u64::from(self.u32(None)?)),
                Marker::FixMap(n) => (0, 2 * u64::from(n)),
                Marker::Map16 => (0, 2 * u64::from(self.u16(None)?)),
                Marker::Map32 => (0, 2 * u64::from(self.u32(None)?)),
                Marker::Reserved => {
                    return Err(WireError::record(
                        "an unknown key's value holds the reserved byte 0xc1",
                    ));
                }
            };
            self.take(bytes, None)?;
            pending += items;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(e: &Event) -> Vec<u8> {
        encode_event(e).unwrap_or_else(|err| panic!("{err}"))
    }

    fn decode_err(bytes: &[u8]) -> String {
        match decode_event(bytes) {
            Ok(e) => panic!("decoded {e:?}"),
            Err(err) => {
                assert!(err.is_decode());
                err.to_string()
            }
        }
    }

    /// A hand-built event map: the entries are given pre-encoded.
    fn map(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = vec![];
        rmp::encode::write_map_len(&mut out, entries.len() as u32).unwrap();
        for (k, v) in entries {
            rmp::encode::write_str(&mut out, k).unwrap();
            out.extend_from_slice(v);
        }
        out
    }

    fn str_value(s: &str) -> Vec<u8> {
        let mut out = vec![];
        rmp::encode::write_str(&mut out, s).unwrap();
        out
    }

    const ID_BIN: [u8; 18] = [
        0xc4, 16, 0x01, 0x90, 0x00, 0x00, 0x00, 0x00, 0x70, 0x00, 0x80, 0x00, 0, 0, 0, 0, 0, 1,
    ];
    const TIME_64: [u8; 10] = [0xd7, 0xff, 0, 0, 0, 0, 0x65, 0x53, 0xf1, 0x00];

    fn valid_entries() -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("id", ID_BIN.to_vec()),
            ("type", str_value("T")),
            ("actor", str_value("a")),
            ("v", vec![3]),
            ("time", TIME_64.to_vec()),
        ]
    }

    fn build(entries: &[(&'static str, Vec<u8>)]) -> Vec<u8> {
        let borrowed: Vec<(&str, &[u8])> = entries.iter().map(|(k, v)| (*k, &v[..])).collect();
        map(&borrowed)
    }

    #[test]
    fn round_trips_and_refuses_garbage() {
        let event = Event::new("a", "T", 3, &("x", 1)).unwrap();
        let mut buf = vec![7];
        encode_event_into(&event, &mut buf).unwrap();
        assert_eq!(buf[1..], encode(&event));
        assert_eq!(decode_event(&buf[1..]).unwrap(), event);
        let err = decode_event(b"not an event").unwrap_err();
        assert!(err.to_string().contains("decode `Event`"), "{err}");
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        let event = Event::builder("a", "T")
            .id(Uuid::from_bytes(ID_BIN[2..].try_into().unwrap()))
            .version(3)
            .timestamp(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
            .build()
            .unwrap();
        let mut expected = vec![0x85];
        expected.extend(str_value("id"));
        expected.extend(ID_BIN);
        expected.extend(str_value("type"));
        expected.extend(str_value("T"));
        expected.extend(str_value("actor"));
        expected.extend(str_value("a"));
        expected.extend(str_value("v"));
        expected.push(3);
        expected.extend(str_value("time"));
        expected.extend(TIME_64);
        assert_eq!(
            encode(&event),
            expected,
            "nil payload and no metadata: 5 keys"
        );
        assert_eq!(decode_event(&expected).unwrap(), event);
        assert_eq!(decode_event(&build(&valid_entries())).unwrap(), event);

        let full = event
            .to_builder()
            .payload(&1u8)
            .correlation_id("c")
            .meta("k", "v")
            .build()
            .unwrap();
        let mut expected_full = expected.clone();
        expected_full[0] = 0x87;
        expected_full.extend(str_value("data"));
        expected_full.extend([0xc4, 1, 1]);
        expected_full.extend(str_value("meta"));
        expected_full.push(0x82);
        for s in ["correlation_id", "c", "k", "v"] {
            expected_full.extend(str_value(s));
        }
        assert_eq!(encode(&full), expected_full);
    }

    /// The annotated example of `docs/nats-layout.md`, "Event encoding".
    #[test]
    fn the_documented_example_is_exact() {
        #[derive(serde::Serialize)]
        struct Placed {
            total: f64,
        }
        let event = Event::builder("order-1", "OrderPlaced")
            .id(Uuid::parse_str("0190a5c8-3b2e-7c4d-8e5f-0123456789ab").unwrap())
            .timestamp(UNIX_EPOCH + Duration::new(1_719_835_200, 123_456_789))
            .payload(&Placed { total: 99.5 })
            .correlation_id("c-1")
            .build()
            .unwrap();
        let documented = concat!(
            "87a26964c4100190a5c83b2e7c4d8e5f0123456789aba474797065ab4f72646572506c61636564a5616374",
            "6f72a76f726465722d31a17601a474696d65d7ff1d6f345466829a40a464617461c41081a5746f74616c",
            "cb4058e00000000000a46d65746181ae636f7272656c6174696f6e5f6964a3632d31",
        );
        let hex: String = encode(&event).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, documented);
    }

    #[test]
    fn timestamps_use_the_64_bit_form_when_it_fits_else_96() {
        let at = |secs: i64, nanos: u32| {
            let e = Event::builder("a", "T")
                .timestamp(system_time(secs, nanos).unwrap())
                .build()
                .unwrap();
            let bytes = encode(&e);
            assert_eq!(decode_event(&bytes).unwrap(), e);
            let pos = bytes.windows(5).position(|w| w == b"\xa4time").unwrap();
            bytes[pos + 5..].to_vec()
        };
        let sixty_four = at(1, 999_999_999);
        assert_eq!(sixty_four[..2], [0xd7, 0xff]);
        assert_eq!(
            u64::from_be_bytes(sixty_four[2..10].try_into().unwrap()),
            (999_999_999 << 34) | 1
        );
        assert_eq!(at(0, 0)[..2], [0xd7, 0xff]);
        assert_eq!(at((1 << 34) - 1, 5)[..2], [0xd7, 0xff]);
        for (secs, nanos) in [(1 << 34, 0), (-1, 5), (i64::MIN, 1), (i64::MAX, 0)] {
            let bytes = at(secs, nanos);
            assert_eq!(bytes[..3], [0xc7, 12, 0xff], "{secs}");
            assert_eq!(u32::from_be_bytes(bytes[3..7].try_into().unwrap()), nanos);
            assert_eq!(i64::from_be_bytes(bytes[7..15].try_into().unwrap()), secs);
        }
        // Before 1970 the seconds round down and the nanoseconds count up from there.
        let before = UNIX_EPOCH - Duration::from_nanos(1);
        assert_eq!(unix_parts(before), Some((-1, 999_999_999)));
        assert_eq!(system_time(-1, 999_999_999), Some(before));
    }

    #[test]
    fn reads_the_32_bit_timestamp_and_the_string_id() {
        let mut entries = valid_entries();
        entries[0].1 = str_value("01900000-0000-7000-8000-000000000001");
        entries[4].1 = vec![0xd6, 0xff, 0x65, 0x53, 0xf1, 0x00];
        let lower = decode_event(&build(&entries)).unwrap();
        entries[0].1 = str_value(&"01900000-0000-7000-8000-000000000001".to_uppercase());
        let upper = decode_event(&build(&entries)).unwrap();
        let canonical = decode_event(&build(&valid_entries())).unwrap();
        assert_eq!(lower, canonical);
        assert_eq!(upper, canonical);
    }

    #[test]
    fn optional_fields_may_be_nil_and_unknown_keys_are_skipped() {
        let mut entries = valid_entries();
        entries.push(("data", vec![0xc0]));
        entries.push(("meta", vec![0xc0]));
        entries.push(("specversion", str_value("1.0")));
        // An unknown key holding every kind of value, nested.
        let mut nested = vec![0x93, 0xcb];
        nested.extend(1.5f64.to_be_bytes());
        nested.extend([0x81, 0xa1, b'k', 0xd4, 0x05, 0x00]);
        nested.extend([0xdc, 0x00, 0x02, 0xc3, 0xc4, 0x01, 0xff]);
        entries.push(("x-future", nested));
        entries.push(("meta2", vec![0x80]));
        let event = decode_event(&build(&entries)).unwrap();
        assert_eq!(event, decode_event(&build(&valid_entries())).unwrap());
        assert!(event.data().unwrap().is_nil());
        assert!(event.metadata().is_empty());
        // An empty meta map is no metadata either.
        let mut entries = valid_entries();
        entries.push(("meta", vec![0x80]));
        assert!(
            decode_event(&build(&entries))
                .unwrap()
                .metadata()
                .is_empty()
        );
    }

    #[test]
    fn errors_name_the_field() {
        let with = |key: &'static str, value: Vec<u8>| {
            let mut entries = valid_entries();
            entries.retain(|(k, _)| *k != key);
            entries.push((key, value));
            build(&entries)
        };
        let without = |key: &str| {
            let mut entries = valid_entries();
            entries.retain(|(k, _)| *k != key);
            build(&entries)
        };
        for key in ["id", "type", "actor", "v", "time"] {
            let err = decode_err(&without(key));
            assert!(err.contains(&format!("field `{key}`: missing")), "{err}");
        }
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                with("id", vec![0xc4, 2, 1, 2]),
                "field `id`: a bin of 2 bytes",
            ),
            (with("id", str_value("not-a-uuid")), "field `id`: the str"),
            (
                with("id", str_value("0190000000007000800000000000000100000")),
                "field `id`: the str",
            ),
            (with("id", vec![0x01]), "field `id`: expected bin 16"),
            (
                with("type", vec![0x01]),
                "field `type`: expected a str, found an integer",
            ),
            (
                with("actor", vec![0xa2, 0xff, 0xfe]),
                "field `actor`: a str that is not UTF-8",
            ),
            (
                with("v", str_value("1")),
                "field `v`: expected an unsigned integer",
            ),
            (
                with("v", vec![0xff]),
                "field `v`: expected an unsigned integer, found a negative",
            ),
            (
                with("time", vec![0x01]),
                "field `time`: expected the timestamp extension",
            ),
            (
                with("time", vec![0xd6, 0x05, 0, 0, 0, 0]),
                "field `time`: expected the timestamp extension (type -1), found extension type 5",
            ),
            (
                with("time", vec![0xd7, 0xff, 0xff, 0xff, 0xff, 0xfc, 0, 0, 0, 0]),
                "field `time`: 1073741823 nanoseconds",
            ),
            (
                with("time", vec![0xc7, 2, 0xff, 0, 0]),
                "field `time`: a timestamp of 2 bytes",
            ),
            (
                with("data", str_value("x")),
                "field `data`: expected a bin or nil",
            ),
            (
                with("meta", vec![0x91, 0xa0]),
                "field `meta`: expected a map or nil",
            ),
            (
                with("meta", vec![0x81, 0xa1, b'k', 0x01]),
                "field `meta`: expected a str",
            ),
            (
                with(
                    "meta",
                    [
                        vec![0x82],
                        str_value("k"),
                        str_value("1"),
                        str_value("k"),
                        str_value("2"),
                    ]
                    .concat(),
                ),
                "field `meta`: the key \"k\" is given twice",
            ),
            (with("id", vec![0xc4, 20, 1]), "field `id`: truncated"),
        ];
        for (bytes, expected) in cases {
            let err = decode_err(&bytes);
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
            );
        }
        let mut twice = valid_entries();
        twice.push(("v", vec![4]));
        assert!(decode_err(&build(&twice)).contains("field `v`: given twice"));
        let mut trailing = build(&valid_entries());
        trailing.push(0xc0);
        assert!(decode_err(&trailing).contains("1 trailing bytes after the event"));
        assert!(
            decode_err(&[0x91, 0xc0]).contains("an event is a MessagePack map, found an array")
        );
        assert!(decode_err(&[0x81, 0x01, 0x01]).contains("keys are strings"));
        assert!(decode_err(&[]).contains("truncated"));
        assert!(decode_err(&[0xdf, 0xff, 0xff, 0xff, 0xff]).contains("truncated"));
        let mut huge = valid_entries();
        huge.push(("x", vec![0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0]));
        assert!(decode_err(&build(&huge)).contains("truncated"));
    }

    #[test]
    fn reserved_extra_keys_are_refused_on_encode() {
        for key in ["correlation_id", "causation_id"] {
            let e = Event::builder("a", "T").meta(key, "x").build().unwrap();
            let mut buf = vec![1, 2];
            let err = encode_event_into(&e, &mut buf).unwrap_err();
            assert!(!err.is_decode());
            assert!(err.to_string().contains("field `meta`"), "{err}");
            assert_eq!(buf, [1, 2], "nothing is left behind");
        }
    }

    #[test]
    fn a_typical_envelope_is_small() {
        #[derive(serde::Serialize)]
        struct Line {
            sku: String,
            qty: u32,
            price: f64,
        }
        #[derive(serde::Serialize)]
        struct OrderPlaced {
            customer: String,
            lines: Vec<Line>,
            total: f64,
            currency: String,
        }
        let payload = OrderPlaced {
            customer: "customer-1234".into(),
            lines: (0..3)
                .map(|i| Line {
                    sku: format!("sku-{i:05}"),
                    qty: i + 1,
                    price: 19.99,
                })
                .collect(),
            total: 119.94,
            currency: "EUR".into(),
        };
        let event = Event::builder("order-42", "OrderPlaced")
            .version(7)
            .payload(&payload)
            .build()
            .unwrap();
        let bytes = encode(&event);
        let content = event.payload().len() + "order-42".len() + "OrderPlaced".len();
        let envelope = bytes.len() - content;
        // For comparison: the 0.1 format (rmp-serde's derived encoding of `Event`).
        let old = rmp_serde::to_vec_named(&event).unwrap().len();
        println!(
            "{} bytes: payload {} + actor and type {} + envelope {envelope} (0.1 format: {old})",
            bytes.len(),
            event.payload().len(),
            content - event.payload().len(),
        );
        assert_eq!(envelope, 60);
    }

    fn time_strategy() -> impl Strategy<Value = SystemTime> {
        prop_oneof![
            // Around now, in the 64-bit form.
            (0i64..(1 << 34), 0u32..1_000_000_000),
            // Anywhere, including before 1970 and far future.
            (any::<i64>(), 0u32..1_000_000_000),
        ]
        .prop_filter_map("not representable here", |(secs, nanos)| {
            let after = Duration::new(secs.unsigned_abs(), nanos);
            if secs >= 0 {
                UNIX_EPOCH.checked_add(after)
            } else {
                // secs < 0: secs.unsigned_abs() whole seconds before, then `nanos` forward.
                UNIX_EPOCH
                    .checked_sub(Duration::from_secs(secs.unsigned_abs() - 1))
                    .and_then(|t| t.checked_sub(Duration::from_secs(1)))
                    .and_then(|t| t.checked_add(Duration::from_nanos(u64::from(nanos))))
            }
        })
    }

    fn metadata_strategy() -> impl Strategy<Value = Metadata> {
        (
            proptest::option::of(".*"),
            proptest::option::of(".*"),
            proptest::collection::btree_map(".*", ".*", 0..4),
        )
            .prop_map(|(correlation_id, causation_id, mut extra)| {
                extra.remove(CORRELATION_ID);
                extra.remove(CAUSATION_ID);
                Metadata {
                    correlation_id,
                    causation_id,
                    extra,
                }
            })
    }

    fn event_strategy() -> impl Strategy<Value = Event> {
        (
            any::<u128>(),
            ".*",
            ".*",
            any::<u64>(),
            time_strategy(),
            prop_oneof![
                Just(vec![NIL]),
                proptest::collection::vec(any::<u8>(), 0..300)
            ],
            metadata_strategy(),
        )
            .prop_map(|(id, actor, event_type, version, time, payload, meta)| {
                Event::builder(actor, event_type)
                    .id(Uuid::from_u128(id))
                    .version(version)
                    .timestamp(time)
                    .encoded_payload(Payload::from_encoded(payload))
                    .metadata(meta)
                    .build()
                    .unwrap()
            })
    }

    proptest! {
        #[test]
        fn every_event_round_trips(event in event_strategy()) {
            let bytes = encode(&event);
            prop_assert_eq!(decode_event(&bytes).unwrap(), event.clone());
            // Time parts survive the conversion both ways.
            let (secs, nanos) = unix_parts(event.timestamp()).unwrap();
            prop_assert_eq!(system_time(secs, nanos), Some(event.timestamp()));
        }

        #[test]
        fn the_envelope_is_at_most_64_bytes_for_short_fields(
            actor in "[a-z0-9-]{1,31}",
            event_type in "[A-Za-z]{1,31}",
            version in 1u64..(1 << 32),
            secs in 0u64..(1 << 34),
            nanos in 0u32..1_000_000_000,
            payload in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let event = Event::builder(actor.as_str(), event_type.as_str())
                .version(version)
                .timestamp(UNIX_EPOCH + Duration::new(secs, nanos))
                .encoded_payload(Payload::from_encoded(payload.clone()))
                .build()
                .unwrap();
            let envelope = encode(&event).len() - payload.len() - actor.len() - event_type.len();
            prop_assert!(envelope <= 64, "{} bytes", envelope);
        }

        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_event(&bytes);
        }

        #[test]
        fn damaged_events_never_panic(event in event_strategy(), at in any::<usize>(), byte in any::<u8>()) {
            let mut bytes = encode(&event);
            let at = at % bytes.len();
            bytes[at] = byte;
            let _ = decode_event(&bytes);
            let _ = decode_event(&bytes[..at]);
        }
    }
}
