//! Validated namespaces and their injective storage names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::NamespaceError;

/// A logical boundary for events and subscriptions, e.g. `tenant-abc` or `eu.orders`.
///
/// A namespace is 1..=[`Namespace::MAX_LEN`] bytes of ASCII letters, digits, `-` and `_`, in
/// dot-separated non-empty tokens. The dots make it hierarchical for the bus (`eu.*`, `eu.>`);
/// nothing else in a namespace can act as a NATS wildcard or split a name.
///
/// [`Namespace::storage_token`] maps a namespace to a name usable in a JetStream stream or KV
/// bucket name. The mapping is **injective** — unlike the Go version, `a.b` and `a_b` never share
/// storage — and it stays injective on case-insensitive file systems:
///
/// ```
/// use aether_core::Namespace;
/// let a: Namespace = "a.b".parse()?;
/// let b: Namespace = "a_b".parse()?;
/// assert_ne!(a.storage_token(), b.storage_token());
/// assert_eq!(Namespace::from_storage_token(&a.storage_token()), Some(a));
/// # Ok::<(), aether_core::NamespaceError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace(String);

impl Namespace {
    /// Longest accepted namespace, in bytes.
    pub const MAX_LEN: usize = 64;

    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Self, NamespaceError> {
        let name = name.into();
        Self::check(&name)?;
        Ok(Self(name))
    }

    /// Whether `name` is a valid namespace, without allocating one (the error allocates).
    ///
    /// ```
    /// use aether_core::Namespace;
    /// assert!(Namespace::check("eu.orders").is_ok());
    /// assert!(Namespace::check("eu..orders").is_err());
    /// ```
    pub fn check(name: &str) -> Result<(), NamespaceError> {
        if name.is_empty() {
            return Err(NamespaceError::Empty);
        }
        if name.len() > Self::MAX_LEN {
            return Err(NamespaceError::TooLong {
                len: name.len(),
                max: Self::MAX_LEN,
            });
        }
        if let Some((index, ch)) = name
            .char_indices()
            .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
        {
            return Err(NamespaceError::InvalidChar {
                name: name.to_owned(),
                ch,
                index,
            });
        }
        if name.split('.').any(str::is_empty) {
            return Err(NamespaceError::EmptyToken {
                name: name.to_owned(),
            });
        }
        Ok(())
    }

    /// The namespace as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The dot-separated tokens.
    pub fn tokens(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }

    /// An injective encoding into `[a-z0-9_-]`, safe in stream, bucket and file names.
    ///
    /// Lowercase letters, digits and `-` are kept; `_` becomes `__`, `.` becomes `_-`, and an
    /// uppercase letter `X` becomes `_x`. Every escape starts with `_` and is two characters, so
    /// decoding is unambiguous ([`Namespace::from_storage_token`]); the result never contains a
    /// `.`, `*`, `>`, whitespace, path separator or uppercase letter.
    pub fn storage_token(&self) -> String {
        let mut out = String::with_capacity(self.0.len() + 4);
        for c in self.0.chars() {
            match c {
                '_' => out.push_str("__"),
                '.' => out.push_str("_-"),
                c if c.is_ascii_uppercase() => {
                    out.push('_');
                    out.push(c.to_ascii_lowercase());
                }
                c => out.push(c),
            }
        }
        out
    }

    /// Inverts [`Namespace::storage_token`]; `None` if `token` is not the output of it.
    pub fn from_storage_token(token: &str) -> Option<Self> {
        let mut out = String::with_capacity(token.len());
        let mut chars = token.chars();
        while let Some(c) = chars.next() {
            match c {
                '_' => match chars.next()? {
                    '_' => out.push('_'),
                    '-' => out.push('.'),
                    l if l.is_ascii_lowercase() => out.push(l.to_ascii_uppercase()),
                    _ => return None,
                },
                c if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' => out.push(c),
                _ => return None,
            }
        }
        Self::new(out).ok()
    }
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Namespace({:?})", self.0)
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Namespace {
    type Err = NamespaceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for Namespace {
    type Error = NamespaceError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl TryFrom<String> for Namespace {
    type Error = NamespaceError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl AsRef<str> for Namespace {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for Namespace {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Namespace {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rules() {
        for ok in [
            "tenant-abc",
            "a.b",
            "a_b",
            "A",
            "eu.orders.v2",
            "x".repeat(64).as_str(),
        ] {
            assert!(Namespace::new(ok).is_ok(), "{ok}");
        }
        assert_eq!(Namespace::new(""), Err(NamespaceError::Empty));
        for bad in ["a b", "a*", "a>", "a/b", "é", "a\nb", "tenant-*"] {
            assert!(
                matches!(Namespace::new(bad), Err(NamespaceError::InvalidChar { .. })),
                "{bad}"
            );
        }
        for bad in [".a", "a.", "a..b", "."] {
            assert!(
                matches!(Namespace::new(bad), Err(NamespaceError::EmptyToken { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            Namespace::new("x".repeat(65)),
            Err(NamespaceError::TooLong { len: 65, max: 64 })
        ));
    }

    #[test]
    fn go_collisions_are_gone() {
        let names = ["a.b", "a_b", "a__b", "a_-b", "A.b", "a.B", "ab", "a-b"];
        let tokens: std::collections::HashSet<_> = names
            .iter()
            .map(|n| Namespace::new(*n).unwrap().storage_token())
            .collect();
        assert_eq!(tokens.len(), names.len());
    }

    fn namespace() -> impl Strategy<Value = Namespace> {
        proptest::string::string_regex("[A-Za-z0-9_-]{1,8}(\\.[A-Za-z0-9_-]{1,8}){0,4}")
            .unwrap()
            .prop_filter_map("too long", |s| Namespace::new(s).ok())
    }

    proptest! {
        #[test]
        fn storage_token_is_injective(a in namespace(), b in namespace()) {
            let (ta, tb) = (a.storage_token(), b.storage_token());
            prop_assert_eq!(a == b, ta == tb);
            prop_assert_eq!(Namespace::from_storage_token(&ta), Some(a));
            prop_assert!(ta.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'));
        }
    }
}
