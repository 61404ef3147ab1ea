//! Subscription patterns over namespaces, with NATS token rules.

use std::fmt;
use std::str::FromStr;

use aether_core::Namespace;

/// A namespace pattern: dot-separated tokens where `*` matches exactly one token and `>` (last
/// token only) matches one or more remaining tokens, as in NATS subjects.
///
/// ```
/// use aether_bus::Pattern;
/// use aether_core::Namespace;
/// let p: Pattern = "tenant.*".parse()?;
/// assert!(p.matches(&Namespace::new("tenant.a").unwrap()));
/// assert!(!p.matches(&Namespace::new("tenant.a.b").unwrap()));
/// assert!("tenant-*".parse::<Pattern>().is_err()); // not a wildcard in NATS: refused
/// # Ok::<(), aether_bus::PatternError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    raw: String,
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Token {
    Literal(String),
    One,
    Rest,
}

/// A pattern that breaks the token rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    /// The pattern is empty or has an empty token (leading, trailing or doubled `.`).
    #[error("pattern {pattern:?} has an empty token")]
    EmptyToken {
        /// The refused pattern.
        pattern: String,
    },
    /// A wildcard is part of a longer token, like `tenant-*`: NATS does not treat that as a
    /// wildcard, so neither does Aether.
    #[error(
        "pattern {pattern:?}: {token:?} mixes a wildcard with other characters; `*` and `>` must be whole tokens (e.g. `tenant.*`)"
    )]
    PartialWildcard {
        /// The refused pattern.
        pattern: String,
        /// The offending token.
        token: String,
    },
    /// `>` is not the last token.
    #[error("pattern {pattern:?}: `>` may only be the last token")]
    RestNotLast {
        /// The refused pattern.
        pattern: String,
    },
    /// A token has a character no namespace can contain.
    #[error(
        "pattern {pattern:?}: {token:?} has characters no namespace can contain (allowed: ASCII letters, digits, '-', '_')"
    )]
    InvalidChar {
        /// The refused pattern.
        pattern: String,
        /// The offending token.
        token: String,
    },
}

impl Pattern {
    /// Parses and checks a pattern.
    pub fn new(pattern: &str) -> Result<Self, PatternError> {
        let err_pattern = || pattern.to_owned();
        let parts: Vec<&str> = pattern.split('.').collect();
        let mut tokens = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let token = match *part {
                "" => {
                    return Err(PatternError::EmptyToken {
                        pattern: err_pattern(),
                    });
                }
                "*" => Token::One,
                ">" if i + 1 == parts.len() => Token::Rest,
                ">" => {
                    return Err(PatternError::RestNotLast {
                        pattern: err_pattern(),
                    });
                }
                t if t.contains(['*', '>']) => {
                    return Err(PatternError::PartialWildcard {
                        pattern: err_pattern(),
                        token: t.to_owned(),
                    });
                }
                t if t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
                {
                    Token::Literal(t.to_owned())
                }
                t => {
                    return Err(PatternError::InvalidChar {
                        pattern: err_pattern(),
                        token: t.to_owned(),
                    });
                }
            };
            tokens.push(token);
        }
        Ok(Self {
            raw: pattern.to_owned(),
            tokens,
        })
    }

    /// The pattern matching exactly `namespace`.
    pub fn exact(namespace: &Namespace) -> Self {
        Self {
            raw: namespace.as_str().to_owned(),
            tokens: namespace
                .tokens()
                .map(|t| Token::Literal(t.to_owned()))
                .collect(),
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Whether `namespace` matches.
    pub fn matches(&self, namespace: &Namespace) -> bool {
        let mut names = namespace.tokens();
        for token in &self.tokens {
            match token {
                Token::Rest => return names.next().is_some(),
                Token::One => {
                    if names.next().is_none() {
                        return false;
                    }
                }
                Token::Literal(l) => {
                    if names.next() != Some(l.as_str()) {
                        return false;
                    }
                }
            }
        }
        names.next().is_none()
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.raw)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl FromStr for Pattern {
    type Err = PatternError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for Pattern {
    type Error = PatternError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<&Namespace> for Pattern {
    fn from(ns: &Namespace) -> Self {
        Self::exact(ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(s: &str) -> Namespace {
        Namespace::new(s).unwrap()
    }

    #[test]
    fn token_rules() {
        let p = Pattern::new("a.*.c").unwrap();
        assert!(p.matches(&ns("a.b.c")));
        assert!(!p.matches(&ns("a.b")));
        assert!(!p.matches(&ns("a.b.c.d")));
        let p = Pattern::new("a.>").unwrap();
        assert!(p.matches(&ns("a.b")));
        assert!(p.matches(&ns("a.b.c")));
        assert!(!p.matches(&ns("a")));
        let p = Pattern::new(">").unwrap();
        assert!(p.matches(&ns("x")));
        let p = Pattern::new("*").unwrap();
        assert!(p.matches(&ns("x")));
        assert!(!p.matches(&ns("x.y")));
        assert!(Pattern::exact(&ns("a.b")).matches(&ns("a.b")));
        assert!(!Pattern::exact(&ns("a.b")).matches(&ns("a_b")));
    }

    #[test]
    fn refused_patterns() {
        for bad in [
            "", "a..b", ".a", "a.", "tenant-*", "a.>.b", "a b", "a.é", "*x",
        ] {
            assert!(Pattern::new(bad).is_err(), "{bad:?}");
        }
        let e = Pattern::new("tenant-*").unwrap_err().to_string();
        assert!(e.contains("whole tokens"), "{e}");
    }
}
