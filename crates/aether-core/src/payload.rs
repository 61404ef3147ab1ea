//! MessagePack payload encoding.
//!
//! Every payload and snapshot state in Aether is stored encoded with
//! [rmp-serde](https://docs.rs/rmp-serde) using named fields (a MessagePack map for a struct), so
//! that the same bytes can be read back as a typed value or as a dynamic [`Value`].

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::error::CodecError;

/// A dynamic MessagePack value: the Rust form of Go's `map[string]interface{}`.
///
/// Index a map by key with `value["total"]` (a missing key gives [`Value::Nil`]) and read leaves
/// with `as_f64`, `as_str`, `as_u64`, ...
pub use rmpv::Value;

/// Encoded bytes of a payload or a snapshot state (MessagePack).
///
/// Cheap to clone (reference counted) and immutable: no method hands out a mutable view of the
/// bytes, so a stored payload can never be changed through a value returned by a store.
#[derive(Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Payload(Bytes);

impl Payload {
    /// Encodes `value` as MessagePack with named fields.
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Self, CodecError> {
        // Room for a typical event up front: growing from empty would reallocate ~5 times.
        let mut buf = Vec::with_capacity(256);
        rmp_serde::encode::write_named(&mut buf, value)
            .map(|()| Self(Bytes::from(buf)))
            .map_err(|e| CodecError::encode(std::any::type_name::<T>(), e))
    }

    /// Wraps bytes that are already MessagePack-encoded. They are not checked here; a malformed
    /// payload is reported when it is decoded.
    pub fn from_encoded(bytes: impl Into<Bytes>) -> Self {
        Self(bytes.into())
    }

    /// An empty payload (MessagePack `nil`), for events that carry no data.
    pub fn nil() -> Self {
        Self(Bytes::from_static(&[0xc0]))
    }

    /// Decodes the payload into `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, CodecError> {
        rmp_serde::from_slice(&self.0)
            .map_err(|e| CodecError::decode(std::any::type_name::<T>(), e))
    }

    /// Decodes the payload into a dynamic [`Value`].
    pub fn to_value(&self) -> Result<Value, CodecError> {
        let mut rest: &[u8] = &self.0;
        let value = rmpv::decode::read_value(&mut rest)
            .map_err(|e| CodecError::decode("rmpv::Value", e))?;
        if rest.is_empty() {
            Ok(value)
        } else {
            Err(CodecError::trailing_bytes("rmpv::Value", rest.len()))
        }
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The encoded bytes as a cheap, shared [`Bytes`] handle.
    pub fn bytes(&self) -> Bytes {
        self.0.clone()
    }

    /// Size of the encoded payload in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the encoded payload has no bytes at all (not even a MessagePack `nil`).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_value() {
            Ok(v) => write!(f, "Payload({v})"),
            Err(_) => write!(f, "Payload(<{} undecodable bytes>)", self.0.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Order {
        total: f64,
        items: u32,
    }

    #[test]
    fn typed_and_dynamic_views_agree() -> Result<(), CodecError> {
        let p = Payload::encode(&Order {
            total: 99.99,
            items: 3,
        })?;
        assert_eq!(
            p.decode::<Order>()?,
            Order {
                total: 99.99,
                items: 3
            }
        );
        let v = p.to_value()?;
        assert_eq!(v["total"].as_f64(), Some(99.99));
        assert_eq!(v["items"].as_u64(), Some(3));
        assert!(v["missing"].is_nil());
        Ok(())
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let p = Payload::from_encoded(vec![0xc1, 0xff, 0x00]);
        assert!(p.decode::<Order>().is_err());
        assert!(p.to_value().is_err());
        let p = Payload::from_encoded(vec![0xc0, 0xc0]);
        let err = p
            .to_value()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("trailing"), "{err}");
        assert!(format!("{p:?}").contains("undecodable"));
    }
}
