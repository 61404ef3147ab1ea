//! Time on the wire: the MessagePack timestamp extension (type -1) to and from `SystemTime`, and
//! [`timestamp_ext`], the serde helpers that give other payloads (EventStored) the same form.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{NANOS_PER_SEC, TIMESTAMP};

/// The data bytes of the timestamp extension for `time`: 8 bytes (64-bit form) when the seconds
/// fit in 34 bits, else 12 (96-bit form); `None` outside 64-bit seconds.
pub(super) fn timestamp_data(time: SystemTime) -> Option<Vec<u8>> {
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
pub(super) fn time_from_data(data: &[u8]) -> Result<SystemTime, String> {
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
pub(super) fn unix_parts(time: SystemTime) -> Option<(i64, u32)> {
    let nanos = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i128::try_from(after.as_nanos()).ok()?,
        Err(before) => -i128::try_from(before.duration().as_nanos()).ok()?,
    };
    let secs = i64::try_from(nanos.div_euclid(NANOS_PER_SEC)).ok()?;
    let sub = u32::try_from(nanos.rem_euclid(NANOS_PER_SEC)).ok()?;
    Some((secs, sub))
}

/// The inverse of [`unix_parts`]; `None` if the platform's `SystemTime` cannot hold it.
pub(super) fn system_time(secs: i64, nanos: u32) -> Option<SystemTime> {
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
