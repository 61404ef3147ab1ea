//! The causes a model-driven aggregate already handled: the most recent, in a bounded list.

use serde::{Deserialize, Serialize};

/// How many handled causes a model aggregate remembers. A trigger redelivered after this many
/// newer causes reached the same aggregate would be applied again; redelivery (a projection
/// restart, a bus reconnect) happens long before that in practice.
pub const MAX_CAUSES: usize = 10_000;

/// The most recent causes an aggregate handled, oldest first, at most [`MAX_CAUSES`]. Stored
/// as a list of strings (an older snapshot's set reads back as one).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Causes {
    order: std::collections::VecDeque<String>,
    seen: std::collections::HashSet<String>,
}

impl Causes {
    /// Whether `cause` was handled (among the remembered ones).
    pub fn contains(&self, cause: &str) -> bool {
        self.seen.contains(cause)
    }

    /// Remembers `cause`, forgetting the oldest beyond [`MAX_CAUSES`].
    pub fn insert(&mut self, cause: String) {
        if self.seen.insert(cause.clone()) {
            self.order.push_back(cause);
            while self.order.len() > MAX_CAUSES {
                if let Some(old) = self.order.pop_front() {
                    self.seen.remove(&old);
                }
            }
        }
    }

    /// How many causes are remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The remembered causes, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.order.iter().map(String::as_str)
    }
}

impl Serialize for Causes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(&self.order)
    }
}

impl<'de> Deserialize<'de> for Causes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let list = Vec::<String>::deserialize(deserializer)?;
        let mut causes = Causes::default();
        for cause in list {
            causes.insert(cause);
        }
        Ok(causes)
    }
}
