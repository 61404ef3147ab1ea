//! Schema evolution: upcasters turn an event stored in an older shape into the current one,
//! before anything decodes it into a typed value.
//!
//! Every event carries the schema version of its payload's shape ([`Event::schema_version`]; 1
//! when absent on the wire). Code that changes an event's shape registers one **step** per older
//! version: a pure function from the event at version `n` (its type, version and payload as a
//! dynamic [`Value`]) to the event at version `n + 1`, to an event of another type (a rename),
//! or to several events (a split). [`Upcasters::upcast`] walks the steps until every resulting
//! event is at its type's current version. A type's current version is one more than the highest
//! version a step starts from (1 without steps); writers stamp it on new events.
//!
//! ```
//! use aether_core::{Event, upcast::Upcasters};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // v1 stored {"amount": 5}; v2 renamed the field to "cents"; v3 added "currency".
//! let upcasters = Upcasters::new()
//!     .rename_field("Deposited", 1, "amount", "cents")
//!     .add_field("Deposited", 2, "currency", "EUR");
//! assert_eq!(upcasters.current_version("Deposited"), 3);
//!
//! #[derive(serde::Serialize)]
//! struct V1 { amount: u64 }
//! let stored = Event::new("account-1", "Deposited", 7, &V1 { amount: 5 })?;
//!
//! #[derive(serde::Deserialize, Debug, PartialEq)]
//! struct Deposited { cents: u64, currency: String }
//! let current: Vec<Event> = upcasters.upcast(stored)?.collect();
//! assert_eq!(current[0].schema_version(), 3);
//! assert_eq!(current[0].decode::<Deposited>()?, Deposited { cents: 5, currency: "EUR".into() });
//! # Ok(()) }
//! ```
//!
//! **Where the fields are.** A payload is usually a map of field names to values. The runtime
//! stores an actor's event enum externally tagged: a struct variant `Deposited { .. }` is the map
//! `{"Deposited": {..fields..}}`, a unit variant the string `"Deposited"`. The field helpers
//! ([`EventShape::set_field`], [`Upcasters::rename_field`], ...) look through such a tag (a
//! one-entry map whose key is the event type), and [`EventShape::retype`] renames the tag with
//! the type, so the same one-line upcaster serves both forms.
//!
//! **Guarantees.** Steps are called with panics caught; a step that fails, panics, produces an
//! event that does not progress (same type, version not higher), loops through types for more
//! than [`MAX_STEPS`] steps or splits into more than [`MAX_EVENTS`] events is an
//! [`UpcastError`] naming the type and the versions, never a hang. Split events keep the stored
//! event's id, version, time and metadata.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use crate::error::{BoxError, CodecError, panic_message};
use crate::event::Event;
use crate::payload::{Payload, Value};

mod shape;
#[cfg(test)]
mod tests;

pub use shape::EventShape;

/// Most steps one stored event may take through the upcasters before it is reported as a loop.
pub const MAX_STEPS: usize = 64;
/// Most events one stored event may be split into.
pub const MAX_EVENTS: usize = 1024;

/// One step: the shape at `from` in, the shape(s) after the step out. One-to-one steps change
/// the shape in place (no list per event).
#[derive(Clone)]
enum Step {
    One(Arc<InPlace>),
    Many(Arc<Splitting>),
}

/// A one-to-one step: changes the shape in place.
type InPlace = dyn Fn(&mut EventShape) -> Result<(), BoxError> + Send + Sync;
/// A step that returns any number of shapes.
type Splitting = dyn Fn(EventShape) -> Result<Vec<EventShape>, BoxError> + Send + Sync;

/// One event type's steps, by the version each starts from, and its current version.
#[derive(Clone)]
struct TypeSteps {
    current: u32,
    steps: BTreeMap<u32, Step>,
}

/// The registered upcasting steps of an application, per (event type, schema version). Cheap to
/// clone (the steps are shared). See the [module documentation](self).
#[derive(Clone, Default)]
pub struct Upcasters {
    types: HashMap<Box<str>, TypeSteps>,
    /// Steps registered twice (the later one is kept); reported by [`Upcasters::check`].
    duplicates: Vec<(Box<str>, u32)>,
}

impl fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut steps: Vec<_> = self.steps().collect();
        steps.sort_unstable();
        f.debug_struct("Upcasters").field("steps", &steps).finish()
    }
}

impl Upcasters {
    /// No steps: every event type is at version 1.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether no step is registered.
    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }

    /// The version new events of `event_type` are written at: one more than the highest
    /// version a step of that type starts from, 1 without steps.
    pub fn current_version(&self, event_type: &str) -> u32 {
        if self.types.is_empty() {
            return 1;
        }
        self.types.get(event_type).map_or(1, |t| t.current)
    }

    /// Every registered step as (event type, version it starts from), in no particular order.
    pub fn steps(&self) -> impl Iterator<Item = (&str, u32)> {
        self.types
            .iter()
            .flat_map(|(t, steps)| steps.steps.keys().map(move |v| (&**t, *v)))
    }

    /// Registers a one-to-one step for `event_type` at version `from`. The closure receives the
    /// shape with its version already set to `from + 1`; it changes the payload in place, and
    /// may [`retype`](EventShape::retype) it (then setting the version within the new type).
    #[must_use]
    pub fn step<F>(self, event_type: impl Into<String>, from: u32, step: F) -> Self
    where
        F: Fn(&mut EventShape) -> Result<(), BoxError> + Send + Sync + 'static,
    {
        self.register(event_type.into(), from, Step::One(Arc::new(step)))
    }

    /// Registers a step for `event_type` at version `from` that returns any number of events
    /// (a split into several, or none to drop the event). Each must be of another type, or of
    /// the same type at a higher version.
    #[must_use]
    pub fn split<F>(self, event_type: impl Into<String>, from: u32, step: F) -> Self
    where
        F: Fn(EventShape) -> Result<Vec<EventShape>, BoxError> + Send + Sync + 'static,
    {
        self.register(event_type.into(), from, Step::Many(Arc::new(step)))
    }

    fn register(mut self, event_type: String, from: u32, step: Step) -> Self {
        let event_type: Box<str> = event_type.into_boxed_str();
        let steps = self
            .types
            .entry(event_type.clone())
            .or_insert_with(|| TypeSteps {
                current: 1,
                steps: BTreeMap::new(),
            });
        steps.current = steps.current.max(from.saturating_add(1));
        if steps.steps.insert(from, step).is_some() {
            self.duplicates.push((event_type, from));
        }
        self
    }

    /// A step renaming field `old` to `new` (no change when the stored event lacks `old`).
    #[must_use]
    pub fn rename_field(
        self,
        event_type: impl Into<String>,
        from: u32,
        old: impl Into<String>,
        new: impl Into<String>,
    ) -> Self {
        let (old, new) = (old.into(), new.into());
        self.step(event_type, from, move |shape| {
            if let Some(value) = shape.remove_field(&old) {
                shape.set_field(&new, value)?;
            }
            Ok(())
        })
    }

    /// A step adding field `name` with `default` where the stored event lacks it.
    #[must_use]
    pub fn add_field(
        self,
        event_type: impl Into<String>,
        from: u32,
        name: impl Into<String>,
        default: impl Into<Value>,
    ) -> Self {
        let (name, default) = (name.into(), default.into());
        self.step(event_type, from, move |shape| {
            if shape.field(&name).is_none() {
                shape.set_field(&name, default.clone())?;
            }
            Ok(())
        })
    }

    /// A step removing field `name`.
    #[must_use]
    pub fn remove_field(
        self,
        event_type: impl Into<String>,
        from: u32,
        name: impl Into<String>,
    ) -> Self {
        let name = name.into();
        self.step(event_type, from, move |shape| {
            shape.remove_field(&name);
            Ok(())
        })
    }

    /// A step turning `old_type` events of version `from` into `new_type` events of version
    /// `new_version`, payload unchanged (its type tag renamed).
    #[must_use]
    pub fn rename_type(
        self,
        old_type: impl Into<String>,
        from: u32,
        new_type: impl Into<String>,
        new_version: u32,
    ) -> Self {
        let new_type = new_type.into();
        self.step(old_type, from, move |shape| {
            shape.retype(new_type.clone());
            shape.schema_version = new_version;
            Ok(())
        })
    }

    /// Checks the registration itself: no step registered twice, and every type's chain
    /// complete (a step from each version below its current one). Call it from a test or at
    /// start-up; [`Upcasters::upcast`] reports the same gaps when it meets them.
    pub fn check(&self) -> Result<(), UpcastError> {
        if let Some((event_type, from)) = self.duplicates.first() {
            return Err(UpcastError::DuplicateStep {
                event_type: event_type.to_string(),
                from: *from,
            });
        }
        let mut types: Vec<_> = self.types.iter().collect();
        types.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (event_type, steps) in types {
            if let Some(from) = (1..steps.current).find(|v| !steps.steps.contains_key(v)) {
                return Err(UpcastError::MissingStep {
                    event_type: event_type.to_string(),
                    from,
                    current: steps.current,
                });
            }
        }
        Ok(())
    }

    /// Whether `event` is already in its current shape (nothing to do).
    pub fn is_current(&self, event: &Event) -> bool {
        event.schema_version() == self.current_version(event.event_type())
    }

    /// `event` in its current shape: the event itself when it already is (no copy), else the
    /// event(s) its steps make of it, in order.
    pub fn upcast(&self, event: Event) -> Result<Upcasted, UpcastError> {
        let Some(shapes) = self.upcast_shapes(&event)? else {
            return Ok(Upcasted::One(Some(event)));
        };
        let events = shapes
            .into_iter()
            .map(|shape| rebuild(&event, shape))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Upcasted::Many(events.into_iter()))
    }

    /// The shapes `event` becomes, in order, or `None` when it is already current. For readers
    /// that decode the payload themselves ([`EventShape::decode`]) and need no new `Event`: the
    /// runtime's replay uses it.
    pub fn upcast_shapes(&self, event: &Event) -> Result<Option<Vec<EventShape>>, UpcastError> {
        let current = self.current_version(event.event_type());
        let version = event.schema_version();
        if version == current {
            return Ok(None);
        }
        if version > current {
            return Err(UpcastError::Newer {
                event_type: event.event_type().to_owned(),
                version,
                current,
            });
        }
        let data = event
            .payload()
            .to_value()
            .map_err(|source| UpcastError::Undecodable {
                event_type: event.event_type().to_owned(),
                version,
                source,
            })?;
        let mut shapes = Vec::with_capacity(1);
        let start = EventShape::new(event.event_type(), version, data);
        self.walk(start, 0, &mut shapes)?;
        Ok(Some(shapes))
    }

    /// Takes `shape` through its steps to its current version, pushing the results on `out`.
    fn walk(
        &self,
        mut shape: EventShape,
        depth: usize,
        out: &mut Vec<EventShape>,
    ) -> Result<(), UpcastError> {
        let steps = self.types.get(shape.event_type.as_str());
        let current = steps.map_or(1, |t| t.current);
        let from = shape.schema_version;
        if from == current {
            if out.len() >= MAX_EVENTS {
                return Err(UpcastError::TooManyEvents {
                    event_type: shape.event_type,
                    limit: MAX_EVENTS,
                });
            }
            out.push(shape);
            return Ok(());
        }
        if from > current {
            return Err(UpcastError::Newer {
                event_type: shape.event_type,
                version: from,
                current,
            });
        }
        if depth >= MAX_STEPS {
            return Err(UpcastError::Looped {
                event_type: shape.event_type,
                version: from,
                steps: MAX_STEPS,
            });
        }
        let Some(step) = steps.and_then(|t| t.steps.get(&from)) else {
            return Err(UpcastError::MissingStep {
                event_type: shape.event_type,
                from,
                current,
            });
        };
        let failed = |event_type: &str, outcome: std::thread::Result<BoxError>| match outcome {
            Ok(source) => UpcastError::Failed {
                event_type: event_type.to_owned(),
                from,
                source,
            },
            Err(panic) => UpcastError::Panicked {
                event_type: event_type.to_owned(),
                from,
                message: panic_message(panic.as_ref()),
            },
        };
        match step {
            Step::One(step) => {
                let stored_type = shape.event_type.clone();
                shape.schema_version = from.saturating_add(1);
                match catch_unwind(AssertUnwindSafe(|| step(&mut shape))) {
                    Ok(Ok(())) => {}
                    Ok(Err(source)) => return Err(failed(&stored_type, Ok(source))),
                    Err(panic) => return Err(failed(&stored_type, Err(panic))),
                }
                self.next(&stored_type, from, shape, depth, out)
            }
            Step::Many(step) => {
                let stored_type = shape.event_type.clone();
                let next = match catch_unwind(AssertUnwindSafe(|| step(shape))) {
                    Ok(Ok(next)) => next,
                    Ok(Err(source)) => return Err(failed(&stored_type, Ok(source))),
                    Err(panic) => return Err(failed(&stored_type, Err(panic))),
                };
                for shape in next {
                    self.next(&stored_type, from, shape, depth, out)?;
                }
                Ok(())
            }
        }
    }

    /// Checks that a step's result progressed, then walks it on.
    fn next(
        &self,
        stored_type: &str,
        from: u32,
        shape: EventShape,
        depth: usize,
        out: &mut Vec<EventShape>,
    ) -> Result<(), UpcastError> {
        if shape.event_type == stored_type && shape.schema_version <= from {
            return Err(UpcastError::NoProgress {
                event_type: stored_type.to_owned(),
                from,
                to: shape.schema_version,
            });
        }
        self.walk(shape, depth + 1, out)
    }
}

/// The stored event's id, actor, version, time and metadata with the shape's type, schema
/// version and payload.
fn rebuild(stored: &Event, shape: EventShape) -> Result<Event, UpcastError> {
    let mut bytes = Vec::with_capacity(stored.payload().len() + 16);
    let encoded = rmpv::encode::write_value(&mut bytes, &shape.data);
    let payload = encoded
        .map_err(|e| CodecError::encode("rmpv::Value", e))
        .and_then(|()| {
            stored
                .to_builder()
                .event_type(shape.event_type.as_str())
                .schema_version(shape.schema_version)
                .encoded_payload(Payload::from_encoded(bytes))
                .build()
        });
    payload.map_err(|source| UpcastError::Undecodable {
        event_type: shape.event_type,
        version: shape.schema_version,
        source,
    })
}

/// The result of [`Upcasters::upcast`]: iterate it for the events in their current shape.
#[derive(Debug)]
#[non_exhaustive]
pub enum Upcasted {
    /// The event was current: here it is, untouched.
    One(Option<Event>),
    /// The events its steps made of it (none, one or several).
    Many(std::vec::IntoIter<Event>),
}

impl Iterator for Upcasted {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        match self {
            Upcasted::One(event) => event.take(),
            Upcasted::Many(events) => events.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Upcasted::One(event) => (
                usize::from(event.is_some()),
                Some(usize::from(event.is_some())),
            ),
            Upcasted::Many(events) => events.size_hint(),
        }
    }
}

/// Why an event could not be brought to its current shape. Every variant names the event type
/// and the versions involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpcastError {
    /// The stored event is newer than this code knows: written by a later deploy.
    #[error(
        "event type {event_type} is stored at schema version {version}, newer than this code's {current}: deploy the code (and upcasters) that wrote it"
    )]
    Newer {
        /// The event type.
        event_type: String,
        /// Its stored schema version.
        version: u32,
        /// The current version known here.
        current: u32,
    },
    /// No step upgrades this type from this version.
    #[error(
        "no upcaster for event type {event_type} from schema version {from} (current version {current})"
    )]
    MissingStep {
        /// The event type.
        event_type: String,
        /// The version no step starts from.
        from: u32,
        /// The type's current version.
        current: u32,
    },
    /// A step was registered twice.
    #[error("two upcasters for event type {event_type} from schema version {from}")]
    DuplicateStep {
        /// The event type.
        event_type: String,
        /// The version both start from.
        from: u32,
    },
    /// A step returned an error.
    #[error("the upcaster for event type {event_type} from schema version {from} failed: {source}")]
    Failed {
        /// The event type.
        event_type: String,
        /// The version the step starts from.
        from: u32,
        /// The step's error.
        source: BoxError,
    },
    /// A step panicked.
    #[error(
        "the upcaster for event type {event_type} from schema version {from} panicked: {message}"
    )]
    Panicked {
        /// The event type.
        event_type: String,
        /// The version the step starts from.
        from: u32,
        /// The panic's message.
        message: String,
    },
    /// A step returned the same type at a version that is not higher.
    #[error(
        "the upcaster for event type {event_type} from schema version {from} returned version {to} of the same type: a step must raise the version or change the type"
    )]
    NoProgress {
        /// The event type.
        event_type: String,
        /// The version the step starts from.
        from: u32,
        /// The version it returned.
        to: u32,
    },
    /// The steps went round in circles (through other types).
    #[error(
        "upcasting event type {event_type} (at schema version {version}) took more than {steps} steps: the upcasters loop"
    )]
    Looped {
        /// Where the walk was when it gave up.
        event_type: String,
        /// Its version then.
        version: u32,
        /// The limit.
        steps: usize,
    },
    /// A split made more events than [`MAX_EVENTS`].
    #[error("upcasting made more than {limit} events (at event type {event_type})")]
    TooManyEvents {
        /// The type of the event over the limit.
        event_type: String,
        /// The limit.
        limit: usize,
    },
    /// The payload is not MessagePack (or a step's result could not be encoded).
    #[error(
        "the payload of event type {event_type} at schema version {version} cannot be upcast: {source}"
    )]
    Undecodable {
        /// The event type.
        event_type: String,
        /// Its schema version.
        version: u32,
        /// The codec's error.
        source: CodecError,
    },
}
