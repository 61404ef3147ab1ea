//! The cursor that reads an event's encoding field by field, each read naming its field in
//! errors.

use std::collections::BTreeMap;
use std::time::SystemTime;

use bytes::Bytes;
use rmp::Marker;
use uuid::Uuid;

use super::marker::describe;
use super::time::system_time;
use super::{
    CAUSATION_ID, CORRELATION_ID, DATA, ID, META, NANOS_PER_SEC, NIL, SCHEMA, TIME, TIMESTAMP,
    WireError,
};
use crate::event::Metadata;
use crate::payload::Payload;

/// A cursor over the encoded bytes. `field` arguments name the field being read, for errors
/// (`None`: the event map itself).
pub(super) struct Reader<'a> {
    pub(super) rest: &'a [u8],
    /// The whole input as `Bytes`, when the caller has it: payloads are sliced from it.
    pub(super) source: Option<&'a Bytes>,
}

impl<'a> Reader<'a> {
    pub(super) fn take(
        &mut self,
        n: usize,
        field: Option<&'static str>,
    ) -> Result<&'a [u8], WireError> {
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

    pub(super) fn array<const N: usize>(
        &mut self,
        field: Option<&'static str>,
    ) -> Result<[u8; N], WireError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    pub(super) fn marker(&mut self, field: Option<&'static str>) -> Result<Marker, WireError> {
        Ok(Marker::from_u8(self.array::<1>(field)?[0]))
    }

    pub(super) fn u8(&mut self, field: Option<&'static str>) -> Result<u8, WireError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(super) fn u16(&mut self, field: Option<&'static str>) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    pub(super) fn u32(&mut self, field: Option<&'static str>) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub(super) fn u64(&mut self, field: Option<&'static str>) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// The length that follows a str/bin/array/map/ext marker of the 8/16/32-bit kind.
    pub(super) fn len(
        &mut self,
        bits: u8,
        field: Option<&'static str>,
    ) -> Result<usize, WireError> {
        let len = match bits {
            8 => u32::from(self.u8(field)?),
            16 => u32::from(self.u16(field)?),
            _ => self.u32(field)?,
        };
        usize::try_from(len).map_err(|_| WireError::record("length does not fit in memory"))
    }

    /// The bytes of a str whose marker was just read.
    pub(super) fn str_bytes_after(
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

    pub(super) fn str_after(
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

    pub(super) fn bin_after(
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
    pub(super) fn str(&mut self, field: &'static str) -> Result<&'a str, WireError> {
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

    pub(super) fn string(&mut self, field: &'static str) -> Result<String, WireError> {
        self.str(field).map(str::to_owned)
    }

    /// `id`: bin 16, or the hyphenated UUID as a str (any case).
    pub(super) fn id(&mut self) -> Result<Uuid, WireError> {
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
    pub(super) fn uint(&mut self, field: &'static str) -> Result<u64, WireError> {
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

    /// `sv`: an unsigned integer in 1..=2³²-1, or nil (version 1).
    pub(super) fn schema(&mut self) -> Result<Option<u32>, WireError> {
        if self.rest.first() == Some(&NIL) {
            self.take(1, Some(SCHEMA))?;
            return Ok(None);
        }
        match u32::try_from(self.uint(SCHEMA)?) {
            Ok(0) => Err(WireError::field(
                SCHEMA,
                "schema version 0: versions start at 1",
            )),
            Ok(v) => Ok(Some(v)),
            Err(_) => Err(WireError::field(SCHEMA, "a schema version above 2^32-1")),
        }
    }

    /// `time`: the timestamp extension in its 32-, 64- or 96-bit form.
    pub(super) fn time(&mut self) -> Result<SystemTime, WireError> {
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
    pub(super) fn data(&mut self) -> Result<Option<Payload>, WireError> {
        let marker = self.marker(Some(DATA))?;
        if marker == Marker::Null {
            return Ok(None);
        }
        match self.bin_after(marker, DATA)? {
            Some(bytes) => Ok(Some(Payload::from_encoded(match self.source {
                Some(source) => source.slice_ref(bytes),
                None => Bytes::copy_from_slice(bytes),
            }))),
            None => Err(WireError::field(
                DATA,
                format!("expected a bin or nil, found {}", describe(marker)),
            )),
        }
    }

    /// `meta`: a map of str to str, or nil.
    pub(super) fn meta(&mut self) -> Result<Option<Metadata>, WireError> {
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
                CAUSATION_ID => meta.causation_id.replace(value.into()).is_some(),
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
    pub(super) fn skip_value(&mut self) -> Result<(), WireError> {
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
