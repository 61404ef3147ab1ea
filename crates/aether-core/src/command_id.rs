//! [`CommandId`]: the id of a command, recorded by its events as their causation id.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use smol_str::SmolStr;

/// The id of a command: what makes a re-sent command recognisable (the runtime's `ask_once`,
/// the cluster's calls) and what the command's events record as their causation id.
///
/// Any string. Ids up to 23 bytes (the cluster's own ids) live inline; a longer one (a UUID's
/// 36 characters) is copied once, when the id is made, into one shared allocation. Cloning
/// never allocates, so an id costs nothing per event. On the wire it is the string itself.
///
/// ```
/// use aether_core::CommandId;
/// let id = CommandId::from("payment-77");
/// let copy = id.clone(); // no allocation
/// assert_eq!(copy, "payment-77");
/// assert_eq!(id.as_str(), "payment-77");
/// ```
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CommandId(SmolStr);

impl CommandId {
    /// The id `id`.
    pub fn new(id: impl AsRef<str>) -> Self {
        Self(SmolStr::new(id))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl Deref for CommandId {
    type Target = str;

    fn deref(&self) -> &str {
        self.0.as_str()
    }
}

impl AsRef<str> for CommandId {
    fn as_ref(&self) -> &str {
        self.0.as_str()
    }
}

impl Borrow<str> for CommandId {
    fn borrow(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Debug for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0.as_str(), f)
    }
}

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

impl From<&str> for CommandId {
    fn from(id: &str) -> Self {
        Self(SmolStr::new(id))
    }
}

impl From<&String> for CommandId {
    fn from(id: &String) -> Self {
        Self(SmolStr::new(id))
    }
}

impl From<String> for CommandId {
    fn from(id: String) -> Self {
        Self(SmolStr::from(id))
    }
}

impl From<Box<str>> for CommandId {
    fn from(id: Box<str>) -> Self {
        Self(SmolStr::from(id))
    }
}

/// Keeps the shared string when the id is too long to live inline.
impl From<Arc<str>> for CommandId {
    fn from(id: Arc<str>) -> Self {
        Self(SmolStr::from(id))
    }
}

impl From<&Arc<str>> for CommandId {
    fn from(id: &Arc<str>) -> Self {
        Self(SmolStr::from(id.clone()))
    }
}

impl From<&CommandId> for CommandId {
    fn from(id: &CommandId) -> Self {
        id.clone()
    }
}

/// The hyphenated form, as `Uuid`'s `Display` writes it.
impl From<uuid::Uuid> for CommandId {
    fn from(id: uuid::Uuid) -> Self {
        let mut buf = uuid::Uuid::encode_buffer();
        Self(SmolStr::new(id.hyphenated().encode_lower(&mut buf)))
    }
}

impl From<CommandId> for String {
    fn from(id: CommandId) -> Self {
        id.0.into()
    }
}

impl PartialEq<str> for CommandId {
    fn eq(&self, other: &str) -> bool {
        self.0.as_str() == other
    }
}

impl PartialEq<&str> for CommandId {
    fn eq(&self, other: &&str) -> bool {
        self.0.as_str() == *other
    }
}

impl PartialEq<String> for CommandId {
    fn eq(&self, other: &String) -> bool {
        self.0.as_str() == other.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_live_inline_and_long_ones_are_shared() {
        let short = CommandId::from("0123456789abcdef-ffffff");
        assert_eq!(short.len(), 23);
        assert!(!short.0.is_heap_allocated());
        let long = CommandId::from(uuid::Uuid::nil());
        assert_eq!(long, "00000000-0000-0000-0000-000000000000");
        assert!(long.0.is_heap_allocated());
        let copy = long.clone();
        assert_eq!(copy.as_ptr(), long.as_ptr(), "a clone shares the bytes");
    }

    #[test]
    fn an_id_is_its_string_on_the_wire() {
        let id = CommandId::from("cmd-1");
        let bytes = rmp_serde::to_vec(&id).unwrap_or_default();
        assert_eq!(bytes, rmp_serde::to_vec("cmd-1").unwrap_or_default());
        let back: Result<CommandId, _> = rmp_serde::from_slice(&bytes);
        assert_eq!(back.ok(), Some(id));
    }
}
